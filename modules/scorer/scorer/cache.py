"""Where the scorer may write: its cache folder (upgraded and rewritten graphs, TensorRT
engines, model versions), and how long what it derived from a model stays there."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

# What the scorer derives from a model, in kinds that are pruned apart: rewritten graphs and
# TensorRT engine folders (one per model, runtime, GPU and shape). Model versions (`models/`)
# are the store's, and it prunes them itself.
DERIVED_FILES = ("free-dims-*.onnx", "upgraded-*.onnx")
ENGINES = "tensorrt"


def cache_root(directory: Path, configured: Path | None) -> Path:
    """The configured cache, else `.cache` beside the model, else a temporary folder.

    Under IoT Edge the model folder is mounted read-only and the cache is a volume of its own.
    """
    if configured is not None:
        return configured
    candidate = directory / ".cache"
    if os.access(directory, os.W_OK) or os.access(candidate, os.W_OK):
        return candidate
    return Path(tempfile.gettempdir()) / "scorer-cache"


def mark_used(root: Path, *paths: Path | None) -> None:
    """Mark derived files or folders in `root` as used now: pruning keeps the most recent."""
    for path in paths:
        if path is not None and path.is_relative_to(root):
            with contextlib.suppress(OSError):
                os.utime(path)


def prune(root: Path, keep: int) -> list[Path]:
    """Remove what was derived from models beyond the `keep` most recently used of each kind;
    what was removed. Each model version (and each runtime or JetPack update) leaves its own
    graphs and engines: a device updated for months would otherwise fill its volume."""
    kinds = [list(root.glob(pattern)) for pattern in DERIVED_FILES]
    kinds.append([path for path in (root / ENGINES).glob("*") if path.is_dir()])
    removed = []
    for paths in kinds:
        by_use = sorted(paths, key=_last_use, reverse=True)
        for path in by_use[keep:]:
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:
                continue  # gone already, or not ours to remove: tried again next time
            removed.append(path)
    return removed


def _last_use(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
