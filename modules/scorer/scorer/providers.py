"""Execution providers: which ones really initialise here, in TensorRT -> CUDA -> CPU order.

ONNX Runtime writes its own log lines straight to the process's stdout/stderr; a CPU-only
machine with `onnxruntime-gpu` would start with a wall of CUDA errors. While we probe and
create sessions those lines are captured at the file-descriptor level and re-emitted through
`logging`, so operators see them only at the level they asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import glob
import grp
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnx import TensorProto, helper

log = logging.getLogger(__name__)
ort_log = logging.getLogger("onnxruntime")

TENSORRT = "TensorrtExecutionProvider"
GPU_PREFERENCE = (TENSORRT, "CUDAExecutionProvider")
CPU = "CPUExecutionProvider"
_SEVERITY = {"V": logging.DEBUG, "I": logging.DEBUG, "W": logging.WARNING, "E": logging.ERROR}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOAD_ERROR = re.compile(r"with error: (.*)")
# Device nodes a CUDA context opens: Jetson's nvmap/nvhost/nvgpu (JetPack 5 and 6), and the
# nvidia*/DRI render nodes of discrete GPUs. On Jetson they belong to `video` (and `render`).
GPU_DEVICE_NODES = (
    "/dev/nvmap",
    "/dev/nvhost-ctrl*",
    "/dev/nvgpu/igpu0/*",
    "/dev/nvidiactl",
    "/dev/nvidia[0-9]*",
)


class FallbackReason(str, enum.Enum):
    """Why `auto` did not keep a GPU provider that this onnxruntime build has."""

    NO_GPU = "no_gpu"  # no GPU device node at all: a CPU machine
    PERMISSION_DENIED = "permission_denied"  # a device node exists but this user cannot open it
    INIT_FAILED = "init_failed"  # libraries missing, driver mismatch, out of memory, ...


@dataclasses.dataclass(frozen=True)
class Fallback:
    """A GPU provider that `auto` dropped, and why, for logs, `/model`, metrics and the twin."""

    provider: str
    reason: FallbackReason
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"provider": self.provider, "reason": self.reason.value, "detail": self.detail}


def gpu_device_nodes() -> list[str]:
    """The GPU device nodes present here (none on a CPU machine)."""
    return sorted(node for pattern in GPU_DEVICE_NODES for node in glob.glob(pattern))


def can_open(node: str) -> bool:
    """Whether this process may read and write a device node."""
    return os.access(node, os.R_OK | os.W_OK)


def device_node_problem(
    nodes: Sequence[str], accessible: Callable[[str], bool] = can_open
) -> str | None:
    """The first node this process may not open, named with its owning group, or None."""
    for node in nodes:
        if not accessible(node):
            gid = os.stat(node).st_gid
            try:
                group = grp.getgrgid(gid).gr_name
            except KeyError:
                group = "?"
            return (
                f"permission denied on {node} (group {group}, gid {gid}; this process runs as "
                f"uid {os.getuid()} in groups {sorted(os.getgroups())}): add that group to the "
                "module (GroupAdd in its createOptions)"
            )
    return None


def classify_failure(
    provider: str, why: str, nodes: Sequence[str], accessible: Callable[[str], bool] = can_open
) -> Fallback:
    """Name the reason a GPU provider failed: no GPU, a device node we may not open, or other."""
    if not nodes:
        return Fallback(provider, FallbackReason.NO_GPU, f"no GPU device node here ({why})")
    problem = device_node_problem(nodes, accessible)
    if problem is not None:
        return Fallback(provider, FallbackReason.PERMISSION_DENIED, problem)
    return Fallback(provider, FallbackReason.INIT_FAILED, why)


def ort_severity(level: int) -> int:
    """ONNX Runtime's severity (0 verbose .. 4 fatal) for a Python logging level."""
    if level <= logging.DEBUG:
        return 1
    if level <= logging.WARNING:
        return 2
    return 3


@contextlib.contextmanager
def native_output_to_logging(expected_failures: bool = False) -> Iterator[list[str]]:
    """Capture what native code prints to fds 1 and 2 and forward it line by line to logging.

    With `expected_failures` (provider probing), errors are logged at DEBUG: a missing CUDA
    on a CPU machine is the normal case there and is summarised in one INFO line instead.
    Yields a list that holds the captured lines once the block has ended.
    """
    lines: list[str] = []
    python_output = io.StringIO()  # onnxruntime's Python layer print()s its fallback notes
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            with (
                contextlib.redirect_stdout(python_output),
                contextlib.redirect_stderr(python_output),
            ):
                yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            capture.seek(0)
            text = python_output.getvalue() + capture.read().decode("utf-8", "replace")
            for raw in text.splitlines():
                line = _ANSI.sub("", raw).strip()
                if not line or set(line) <= {"*"}:
                    continue
                lines.append(line)
                match = re.search(r"\[([VIWEF]):onnxruntime", line)
                level = _SEVERITY.get(match.group(1), logging.ERROR) if match else logging.INFO
                if expected_failures:
                    level = logging.DEBUG
                ort_log.log(level, "%s", line)


def _probe_model() -> bytes:
    """A one-node graph, enough to make a provider load its libraries and initialise."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


def provider_works(name: str, options: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Whether `name` really initialises here, with the reason when it does not."""
    if name == CPU:
        return True, ""
    if name not in ort.get_available_providers():
        return False, "not in this onnxruntime build"
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    try:
        with native_output_to_logging(expected_failures=True) as lines:
            session = ort.InferenceSession(
                _probe_model(), session_options, providers=[(name, options or {}), CPU]
            )
    except Exception as error:  # noqa: BLE001 - any native failure means "not usable"
        return False, str(error).splitlines()[0][:200]
    if name not in session.get_providers():
        reasons = [m.group(1) for m in map(_LOAD_ERROR.search, lines) if m]
        return False, reasons[0] if reasons else "it did not initialise (no GPU or drivers)"
    return True, ""


def tensorrt_options(fp16: bool, cache_dir: Path | None) -> dict[str, Any]:
    """TensorRT provider options: FP16 and an engine cache so restarts skip the engine build."""
    options: dict[str, Any] = {"trt_fp16_enable": fp16}
    if cache_dir is not None:
        options.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(cache_dir),
            trt_timing_cache_enable=True,
            trt_timing_cache_path=str(cache_dir),
        )
    return options


ProviderList = list[str | tuple[str, dict[str, Any]]]


def resolve(requested: Sequence[str], trt: dict[str, Any]) -> tuple[ProviderList, list[Fallback]]:
    """Provider list for the session, and the installed GPU providers `auto` had to drop.

    `auto` keeps the GPU providers that work, then CPU; dropping one that this build has is
    logged at WARNING when the machine has a GPU (INFO on a CPU machine). An explicit list is
    the operator's demand: a provider in it that does not initialise stops the start with a
    clear error instead of silently falling back.
    """
    options = {TENSORRT: trt}
    chosen: ProviderList = []
    nodes = gpu_device_nodes()
    if tuple(requested) == ("auto",):
        fallbacks: list[Fallback] = []
        for name in GPU_PREFERENCE:
            works, why = provider_works(name, options.get(name))
            if works:
                chosen.append((name, options[name]) if name in options else name)
            elif name not in ort.get_available_providers():
                log.info("%s unavailable: %s", name, why)
            else:
                fallback = classify_failure(name, why, nodes)
                fallbacks.append(fallback)
                quiet = fallback.reason is FallbackReason.NO_GPU
                log.log(
                    logging.INFO if quiet else logging.WARNING,
                    "%s dropped (%s): %s",
                    name,
                    fallback.reason.value,
                    fallback.detail,
                )
        return [*chosen, CPU], fallbacks
    for name in requested:
        works, why = provider_works(name, options.get(name))
        if not works:
            if name in ort.get_available_providers():
                why = classify_failure(name, why, nodes).detail
            raise RuntimeError(f"execution provider {name} was requested but {why}")
        chosen.append((name, options[name]) if name in options else name)
    return chosen, []
