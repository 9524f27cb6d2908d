"""The scorer under IoT Edge: results to the output `results`, module twin, direct methods.

The only scorer file importing `azure.iot.device`, and imported only when the scorer runs
under IoT Edge (or a setting asks). Publishing goes through a bounded queue and one sender
thread, so it never delays or fails a reply; what the queue has to drop is counted and
reported. The client's lifecycle (time limits, recreation, one client at a time) is the
shared `edgelink.EdgeLink`, the same as the relay's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from azure.iot.device import IoTHubModuleClient, Message, MethodResponse
from edgelink import EdgeLink

from . import twin
from .core import Scorer
from .model_update import ModelRequest, ModelUpdater
from .result_queue import ResultQueue

log = logging.getLogger(__name__)


class EdgePublisher:
    """Sends the result queue to the output on the shared edge link; answers the twin and
    the direct methods. The queue is the scorer's `ResultSink`."""

    def __init__(
        self,
        scorer: Scorer,
        updater: ModelUpdater,
        output: str = "results",
        queue_size: int = 1000,
        call_timeout_s: float = 10.0,
        recreate_after_s: float = 60.0,
        report_interval_s: float = 30.0,
    ) -> None:
        self.scorer = scorer
        self.updater = updater
        updater.on_change = self._report  # every step of a model update, as it happens
        self.output = output
        self.call_timeout_s = call_timeout_s
        self.report_interval_s = report_interval_s
        self.link = EdgeLink(self._configure, call_timeout_s, recreate_after_s)
        self.results = ResultQueue(queue_size)
        self.defaults = twin.EdgeDefaults(scorer.default_threshold, scorer.default_max_predictions)
        self.desired_errors: dict[str, str] = {}
        self.sent = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-publisher", daemon=True)

    # --- client lifecycle ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.link.healthy

    def _configure(self, client: IoTHubModuleClient) -> None:
        client.on_twin_desired_properties_patch_received = self._on_desired
        client.on_method_request_received = self._on_method

    def _open(self) -> None:
        self.link.open()
        twin: dict[str, Any] = self.link.call("get_twin")
        self._apply_desired(twin.get("desired", {}))
        log.info("publishing results to output %r", self.output)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.call_timeout_s + 1)
        self.link.close()

    # --- sender ---------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.5
        last_report = 0.0
        pending: tuple[str, bytes] | None = None
        while not self._stop.is_set():
            try:
                self.link.check()  # a dead MQTT network thread: a new client now
                if not self.link.is_open:
                    self._open()
                    self._report()
                    last_report = time.monotonic()
                if pending is None:
                    pending = self.results.take(timeout=1.0)
                if pending is None:
                    continue
                message = Message(  # type: ignore[no-untyped-call]  # the SDK has no hints
                    pending[1],
                    message_id=pending[0],
                    content_type="application/json",
                    content_encoding="utf-8",
                )
                self.link.call("send_message_to_output", message, self.output)
                self.sent += 1
                pending, delay = None, 0.5
            except Exception as error:  # noqa: BLE001 - keep the result, back off, retry
                self.last_error = f"{type(error).__name__}: {error}"[:300]
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self.link.is_open and time.monotonic() - last_report > self.report_interval_s:
                # Doubles as the heartbeat: a report that fails counts against the link.
                self._report()
                last_report = time.monotonic()

    # --- twin and methods ------------------------------------------------------------------------

    def _apply_desired(self, desired: Mapping[str, Any]) -> None:
        serving = {k: v for k, v in desired.items() if k != "model"}
        self.defaults, self.desired_errors = twin.apply_desired(self.defaults, serving)
        if desired.get("model") is not None:
            try:
                self.updater.request(ModelRequest.parse(desired["model"]))
            except ValueError as error:
                self.desired_errors["model"] = str(error)
        self.scorer.default_threshold = self.defaults.threshold
        self.scorer.default_max_predictions = self.defaults.max_predictions
        self.results.enabled = self.defaults.publish_results
        if self.desired_errors:
            log.warning("desired properties rejected: %s", self.desired_errors)

    def _on_desired(self, patch: dict[str, Any]) -> None:
        self._apply_desired(patch)
        self._report()

    def status(self) -> dict[str, Any]:
        """What `getStatus` answers and the reported properties carry."""
        return {
            # The served model and where its update stands: version, sha256, state, previous,
            # lastError, updatedAt.
            "model": {
                **{k: v for k, v in self.scorer.model_info().items() if k != "labels"},
                **self.updater.status(),
            },
            "providers": list(self.scorer.providers),
            "defaults": self.defaults.to_twin(),
            "requests": twin.request_counts(self.scorer.metrics.registry),
            "publisher": self.publisher_state(),
        }

    def publisher_state(self) -> dict[str, Any]:
        """The output's side of the status (also on the operator's page)."""
        return {
            "connected": self.connected,
            "queued": len(self.results),
            "sent": self.sent,
            "dropped": self.results.dropped,
            "lastError": self.last_error or None,
        }

    def _report(self) -> None:
        """Send reported properties; a failure counts against the link, the next retries."""
        try:
            if self.link.is_open:
                patch = {**self.status(), "desiredErrors": self.desired_errors or None}
                self.link.call("patch_twin_reported_properties", patch)
        except Exception as error:  # noqa: BLE001 - best effort; the next report retries
            log.warning("reported properties not sent: %s", error)

    def _on_method(self, request: Any) -> None:
        if request.name == "getStatus":
            status, payload = 200, self.status()
        elif request.name == "getModel":
            status, payload = 200, self.updater.status()
        elif request.name == "rollbackModel":
            try:
                status, payload = 202, {"rollingBackTo": self.updater.rollback()}
            except ValueError as error:
                status, payload = 409, {"error": str(error)}
        else:
            known = "getStatus, getModel or rollbackModel"
            status, payload = 404, {"error": f"unknown method {request.name!r}; use {known}"}
        response = MethodResponse.create_from_method_request(request, status, payload)
        self.link.call("send_method_response", response)
