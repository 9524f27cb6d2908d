"""Where TensorRT keeps its engines: one folder per model, runtime and GPU, so none is stale.

A TensorRT engine is only valid for the exact model, TensorRT release and GPU it was built
on; ONNX Runtime's own cache check does not cover all of these. The folder name is a hash
of all of them (plus FP16), so an updated model, image or device builds a new engine
instead of loading one that fails or, worse, runs wrongly. Standard library only.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from .atomic import write_atomically

log = logging.getLogger(__name__)

T = TypeVar("T")
KEY_FILE = "key.json"
# ONNX Runtime's words when an engine in the cache cannot be deserialized (its TensorRT
# provider, tensorrt_execution_provider.cc); the session is then not created.
UNREADABLE_ENGINE = "TensorRT EP could not deserialize engine from cache"

TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")
# Jetson: the board and the L4T release; discrete GPUs: the model and the driver.
GPU_FILES = (
    "/proc/device-tree/model",
    "/etc/nv_tegra_release",
    "/proc/driver/nvidia/gpus/*/information",
    "/proc/driver/nvidia/version",
)


def tensorrt_version() -> str:
    """TensorRT's library version as it reports it, or "none" where it is not installed."""
    for name in TENSORRT_LIBRARIES:
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        return str(library.getInferLibVersion())
    return "none"


def gpu_identity() -> str:
    """The first line of each file naming this machine's GPU and driver (Jetson or discrete)."""
    lines = []
    for pattern in GPU_FILES:
        for path in sorted(glob.glob(pattern)):
            try:
                text = Path(path).read_text(errors="replace").replace("\x00", "").strip()
            except OSError:
                continue
            lines.append(text.splitlines()[0] if text else "")
    return " | ".join(lines) or "unknown"


def runtime_key(
    model_sha256: str,
    onnxruntime_version: str,
    fp16: bool,
    input_shape: Sequence[int | str] = (),
    profile: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Everything an engine depends on: with the input's declared shape and the shape profile,
    a YOLO export stretched to its fixed size and one sized by pixel count (a graph with free
    height and width, a profile for its sizes) keep engines apart."""
    return {
        "model": model_sha256,
        "onnxruntime": onnxruntime_version,
        "tensorrt": tensorrt_version(),
        "gpu": gpu_identity(),
        "fp16": str(fp16).lower(),
        "input": "x".join(str(side) for side in input_shape),
        "profile": json.dumps(dict(profile or {}), sort_keys=True),
    }


def engine_folder(root: Path, key: dict[str, str]) -> Path:
    """`<root>/tensorrt/<model>-<hash of the key>`, created, with the key beside the engines.

    Raises OSError when it cannot be created (a read-only or foreign-owned volume).
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / "tensorrt" / f"{key['model'][:12]}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    described = folder / KEY_FILE
    if not described.exists():
        write_atomically(described, json.dumps(key, indent=2).encode())
    return folder


def has_engine(folder: Path) -> bool:
    """Whether an earlier start left a built engine here."""
    return any(folder.glob("*.engine"))


def discard_engines(folder: Path) -> list[str]:
    """Remove what TensorRT wrote in `folder` (engines, their profiles, the timing cache),
    keeping the key; the names removed."""
    removed = []
    for path in sorted(folder.iterdir()):
        if path.name != KEY_FILE and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def opened_past_a_broken_engine(open_session: Callable[[], T], folder: Path | None) -> T:
    """`open_session()`, once more on an emptied engine folder when ONNX Runtime cannot read
    the engine cached there.

    ONNX Runtime writes an engine straight to its final name, so a write cut short (power
    lost during a minutes-long build on a Jetson, a full volume) leaves a truncated engine,
    and every later start failed on it: a module restarted by IoT Edge for good, with no one
    at the device to clear the cache. The engine is built again instead (minutes, once).
    """
    try:
        return open_session()
    except Exception as error:
        if folder is None or UNREADABLE_ENGINE not in str(error):
            raise
        removed = discard_engines(folder)
        log.warning(
            "the TensorRT engine cached in %s cannot be read (a write cut short?): removed %s;"
            " building it again",
            folder,
            ", ".join(removed) or "nothing",
        )
    return open_session()
