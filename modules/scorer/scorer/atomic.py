"""Files replaced whole: a reader, a crash or a power cut finds the old content or the new,
and a write that fails (a full volume) leaves nothing behind, so that retrying it at every
start cannot fill the volume a little more each time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(target: Path, data: bytes, durable: bool = False) -> None:
    """Replace `target` with `data`, readable and writable by this user only (0600, as
    `mkstemp` makes files); `durable`: on disk before it replaces the old file (for what a
    power cut must not lose), not only in the page cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, removed on failure
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    )
    partial = Path(handle.name)
    try:
        with handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
