"""Where the scorer may write: its cache folder (upgraded and rewritten graphs, TensorRT
engines, model versions)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
