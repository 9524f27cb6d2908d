"""The bounded queue between replies and the edgeHub output: a publish never waits."""

from __future__ import annotations

import json
import logging
import queue

from .core import Result

log = logging.getLogger(__name__)


class ResultQueue:
    """A `ResultSink`: results encoded once, queued; dropped (and counted) when full, so a
    slow or absent edgeHub never delays or fails a reply."""

    def __init__(self, size: int) -> None:
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(size)
        self.enabled = True
        self.dropped = 0

    def publish(self, result: Result) -> None:
        if not self.enabled:
            return
        body = json.dumps(result.to_dict(), separators=(",", ":"), allow_nan=False)
        try:
            self._queue.put_nowait((result.id, body.encode("utf-8")))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("edgeHub output queue full: %d results dropped so far", self.dropped)

    def take(self, timeout: float) -> tuple[str, bytes] | None:
        """The oldest (result id, body), waiting up to `timeout`; None if there is none."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __len__(self) -> int:
        return self._queue.qsize()
