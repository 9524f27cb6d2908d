"""How the worker's C heap (glibc malloc) treats the memory each request borrows.

Every request allocates and frees the same few megabytes (the decoded picture, its resized
copy, the input tensor, ONNX Runtime's buffers). With glibc's defaults in this process, those
blocks went back to the kernel after each request and were faulted in again by the next:
about 2,000 page faults, a third of a detection request's time on the development VM
(docs/BENCHMARKS.md). Fixed thresholds keep blocks up to `MMAP_THRESHOLD` (a 1080p frame
decoded) in the heap and at most `TRIM_THRESHOLD` of free heap per arena; larger blocks
(huge images) are mapped and unmapped as before, so a burst of them leaves less behind than
glibc's own moving threshold did (bench/memory.py). Through glibc's `mallopt`; with another
C library nothing is changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging

log = logging.getLogger(__name__)

# mallopt's parameters (<malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024
# (32 and 64 MB kept 230 MB more after a burst of 36-megapixel images; 16 and 32 MB, 90 MB)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, loaded once (each large decode asks for it again)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): its allocator is left as it is
        return None


def keep_request_memory() -> bool:
    """Keep the blocks a request borrows in the heap between requests; whether it applied."""
    libc = _libc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not applied:
        log.warning("glibc refused the heap thresholds; requests may fault memory in again")
    return applied


def give_back_memory() -> None:
    """Return freed heap to the system after a very large decode (beyond what is kept)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)
