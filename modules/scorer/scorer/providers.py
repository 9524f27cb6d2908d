"""Execution providers: which ones really initialise here, in TensorRT -> CUDA -> CPU order.

Each GPU provider is probed in a short-lived child process: a provider that fails to load
writes its errors (a wall of them on a CPU machine with `onnxruntime-gpu`) to the child's
stderr, which we read for the reason, and a driver that crashes takes only the child down.
The serving process's own file descriptors are never touched, so no other thread's output
is lost; ONNX Runtime's own logger follows our log level through its API.
"""

from __future__ import annotations

import dataclasses
import enum
import glob
import grp
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnx import TensorProto, helper

from .vocabulary import AUTO, CudnnSearch

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_PREFERENCE = (TENSORRT, CUDA)
CPU = "CPUExecutionProvider"
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
    """ONNX Runtime's severity (0 verbose .. 4 fatal) for a Python logging level: its errors
    always, its warnings at DEBUG only. On CUDA it warns at every start of the copies it
    added and of the nodes it left on the CPU: advice for whoever tunes a model, noise in an
    operator's log."""
    return 2 if level <= logging.DEBUG else 3


def _probe_model() -> bytes:
    """A one-node graph, enough to make a provider load its libraries and initialise."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return bytes(model.SerializeToString())


PROBE = """
import json, sys
import onnxruntime as ort
session = ort.InferenceSession(sys.stdin.buffer.read(),
                               providers=[sys.argv[1], "CPUExecutionProvider"])
print(json.dumps(session.get_providers()))
"""
PROBE_TIMEOUT_S = 300  # TensorRT's first initialisation on a Jetson can take a while


def provider_works(name: str) -> tuple[bool, str]:
    """Whether `name` really initialises here, with the reason when it does not."""
    if name == CPU:
        return True, ""
    if name not in ort.get_available_providers():
        return False, "not in this onnxruntime build"
    try:
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, name],
            input=_probe_model(),
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False, f"it did not initialise within {PROBE_TIMEOUT_S} s"
    output = probe.stdout.decode("utf-8", "replace").strip()
    used = json.loads(output.splitlines()[-1]) if probe.returncode == 0 and output else []
    if name in used:
        return True, ""
    # onnxruntime prints its fallback notes to stdout and native errors to stderr
    errors = _ANSI.sub("", probe.stderr.decode("utf-8", "replace") + "\n" + output)
    for line in errors.splitlines():
        log.debug("probe of %s: %s", name, line)
    reasons = (
        _LOAD_ERROR.findall(errors) or [line for line in errors.splitlines() if line.strip()][-1:]
    )
    return False, (reasons[0] if reasons else "it did not initialise (no GPU or drivers)")[:300]


def tensorrt_options(
    fp16: bool, cache_dir: Path | None, profile: dict[str, str] | None = None
) -> dict[str, Any]:
    """TensorRT provider options: FP16, an engine cache so restarts skip the engine build, and
    an explicit shape profile (`input_sizes.tensorrt_profile`) for inputs of several sizes."""
    options: dict[str, Any] = {"trt_fp16_enable": fp16, **(profile or {})}
    if cache_dir is not None:
        options.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(cache_dir),
            trt_timing_cache_enable=True,
            trt_timing_cache_path=str(cache_dir),
        )
    return options


def cuda_options(search: CudnnSearch, memory_limit_bytes: int) -> dict[str, Any]:
    """CUDA provider options: the kernel search, an arena that grows by what is asked (on a
    Jetson the GPU's memory is the device's RAM: growing by doubling can hold twice what the
    model needs), and that arena's limit when one is set (0: none)."""
    options: dict[str, Any] = {
        "cudnn_conv_algo_search": search.value,
        "arena_extend_strategy": "kSameAsRequested",
    }
    if memory_limit_bytes:
        options["gpu_mem_limit"] = memory_limit_bytes
    return options


ProviderList = list[str | tuple[str, dict[str, Any]]]


def with_options(names: Sequence[str], options: dict[str, dict[str, Any]]) -> ProviderList:
    """The session's provider list: each provider with its options, where it has some."""
    return [(name, options[name]) if name in options else name for name in names]


def resolve(requested: Sequence[str]) -> tuple[list[str], list[Fallback]]:
    """Providers for the session, and the installed GPU providers `auto` had to drop.

    `auto` keeps the GPU providers that work, then CPU; dropping one that this build has is
    logged at WARNING when the machine has a GPU (INFO on a CPU machine). An explicit list is
    the operator's demand: a provider in it that does not initialise stops the start with a
    clear error instead of silently falling back.
    """
    chosen: list[str] = []
    nodes = gpu_device_nodes()
    if tuple(requested) == (AUTO,):
        fallbacks: list[Fallback] = []
        for name in GPU_PREFERENCE:
            works, why = provider_works(name)
            if works:
                chosen.append(name)
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
        works, why = provider_works(name)
        if not works:
            if name in ort.get_available_providers():
                why = classify_failure(name, why, nodes).detail
            raise RuntimeError(f"execution provider {name} was requested but {why}")
        chosen.append(name)
    return chosen, []
