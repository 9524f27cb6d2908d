"""The worker's heartbeat file, which the image's health check reads.

The health check used to ask `/readyz` over HTTP on 127.0.0.1, and everything that guards
that port stood between it and the answer: with TLS on, a plain request got no answer;
with client certificates required, no request could; with every connection taken, it
waited in the listen queue. So the container said "unhealthy" about a scorer that served.
Now the worker's event loop writes its state to a file (at most once a second, as its loop
turns), and the check reads that: fresh and `ready` is healthy. A loop that stops turning
stops the beat, as a closed port would have. Standard library only: the health check runs
it in a fresh interpreter every 30 s.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from pathlib import Path

from .atomic import write_atomically

log = logging.getLogger("scorer.heartbeat")

BEAT_INTERVAL_S = 1.0
# The loop turns at least once a second (its poller waits 1 s at most); this much silence
# means it is stuck, well before gunicorn's arbiter ends the worker (120 s).
STALE_AFTER_S = 30.0


class State(str, enum.Enum):
    """What the heartbeat says, as the first word of the file."""

    LOADING = "loading"  # the model is being opened or warmed up
    READY = "ready"
    FAILED = "failed"  # the watchdog gave up on the session; the process is ending


class Heartbeat:
    """Writes the worker's state when it changes, and touches the file once a second.

    A file that cannot be written (a full or read-only disk) is logged once and never stops
    the loop that beats: the scorer serves on, and the health check says why it cannot tell.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written: str | None = None
        self.next_beat = 0.0
        self.failing = False

    def beat(self, status: str) -> None:
        now = time.monotonic()
        if status == self.written and now < self.next_beat:
            return
        self.next_beat = now + BEAT_INTERVAL_S
        try:
            if status == self.written:
                os.utime(self.path)
            else:
                write_atomically(self.path, (status + "\n").encode())  # never half a status
                self.written = status
        except OSError as error:
            self.written = None  # write it whole once the disk takes it again
            if not self.failing:
                log.warning("cannot write the heartbeat %s: %s", self.path, error)
            self.failing = True
            return
        self.failing = False

    def stop(self) -> None:
        """The worker is ending: no heartbeat, so no one reads its last state as current."""
        self.written = None
        try:
            self.path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("cannot remove the heartbeat %s: %s", self.path, error)


def status_of(ready: bool, failure: str | None) -> str:
    """The heartbeat line for a scorer's state."""
    if failure is not None:
        return f"{State.FAILED.value}: {failure}"
    return State.READY.value if ready else State.LOADING.value


def problem(path: Path, now: float | None = None) -> str | None:
    """Why the scorer is not healthy according to its heartbeat, or None when it is."""
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
        status = path.read_text().strip()
    except OSError as error:
        return f"no heartbeat ({error})"
    if age > STALE_AFTER_S:
        return f"the worker's last heartbeat was {age:.0f} s ago ({status})"
    # A clock set back (a Jetson without a backed-up clock, corrected by NTP) leaves a beat
    # "in the future" that would look fresh for good after the loop died; a live loop
    # touches the file again within a second.
    if age < -STALE_AFTER_S:
        return f"the worker's last heartbeat is {-age:.0f} s ahead of the clock ({status})"
    if status != State.READY.value:
        return status
    return None
