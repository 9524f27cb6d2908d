"""A request's memory stays in the worker's heap for the next one instead of being given
back to the kernel and faulted in again (about 2,000 page faults per detection request,
a third of its time, before `heap.keep_request_memory`)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scorer.client import HttpClient

from tests.scorer_process import ScorerProcess, minor_faults, worker_pid

REQUESTS = 40


def camera_frame() -> bytes:
    """A 1280x720 JPEG with detail, as a factory camera sends."""
    pixels = np.random.default_rng(3).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_a_request_reuses_the_memory_of_the_one_before(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    server = start_scorer(demo_dir / "models" / "squares-yolo", PROVIDERS="cpu")
    client, frame = HttpClient(server.url), camera_frame()
    for _ in range(5):  # the first requests size the heap
        client.score(frame)
    worker = worker_pid(server.proc.pid)
    before = minor_faults(worker)
    for _ in range(REQUESTS):
        client.score(frame)
    per_request = (minor_faults(worker) - before) / REQUESTS
    # The decoded frame, its resized copy and the tensor are about 9 MB: 2,200 faults per
    # request if each request faulted them in again (measured with the thresholds unset).
    # Kept: under 1 here; 186 on a 16-core GPU machine running eight test processes at once,
    # where the same test alone counted under 1.
    assert per_request < 500, f"{per_request:.0f} page faults per request"
