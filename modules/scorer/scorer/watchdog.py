"""Ends the scorer when it can no longer answer: a hung inference or a failed GPU.

IoT Edge restarts a module whose process exits, and ignores Docker's HEALTHCHECK; a scorer
stuck inside ONNX Runtime would otherwise stay "ready" and silent for ever. The watchdog
checks once a second; past `SCORER_INFERENCE_TIMEOUT_S` (or after a device error) it marks
the scorer failed, so `/readyz` answers 503, and calls `on_fatal`, which ends the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .core import Scorer

log = logging.getLogger(__name__)


class Watchdog:
    """A daemon thread watching one scorer's inferences."""

    def __init__(
        self,
        scorer: Scorer,
        timeout_s: float,
        on_fatal: Callable[[str], None],
        interval_s: float = 1.0,
    ) -> None:
        self.scorer = scorer
        self.timeout_s = timeout_s
        self.on_fatal = on_fatal
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    def check(self) -> str | None:
        """The reason to stop now, if any (and the scorer marked failed with it)."""
        running = self.scorer.longest_inference_s()
        if running > self.timeout_s:
            self.scorer.fail(
                f"an inference has run for {running:.0f} s, over SCORER_INFERENCE_TIMEOUT_S="
                f"{self.timeout_s:g}: the model or the device is stuck"
            )
        return self.scorer.failure

    def _watch(self) -> None:
        while not self.stopped.wait(self.interval_s):
            reason = self.check()
            if reason is not None:
                log.critical("stopping the scorer so that it is restarted: %s", reason)
                self.on_fatal(reason)
                return
