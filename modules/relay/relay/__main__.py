"""`python -m relay`: results from the scorer, through the policy and the spool, to IoT Hub."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

from .iothub import HubLink
from .metrics import MetricsServer
from .policy import MessageKind, Policy
from .relay import Forwarder, Relay, iso
from .settings import Settings, SettingsError
from .spool import Counter, Spool, is_storage_full, waits_for_room

log = logging.getLogger("relay")
MAX_ATTEMPTS = 3  # starts an input may fail at before it is quarantined


class RelayModule:
    """Wires spool, relay, forwarder and the edgeHub link; answers twin and methods."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_path, settings.spool_max_bytes)
        self.relay = Relay(self.spool, Policy())
        saved = self.spool.saved_policy()
        if saved is not None:
            # Inputs left over from before a restart are handled under the policy that was
            # in force when they arrived, never under code defaults (which have no alerts).
            self.relay.apply_desired(saved)
        self.accepting = threading.Event()
        self.stopping = threading.Event()
        self.inbox_waiting = threading.Event()  # inputs kept but not handled: the volume was full
        self.link = HubLink(
            settings.input_name,
            settings.output_name,
            on_input=self.on_input,
            on_desired=self.on_desired,
            on_method=self.on_method,
            keep_input=self.spool.receive,
            call_timeout_s=settings.call_timeout_s,
            send_timeout_s=settings.send_timeout_s,
            recreate_after_s=settings.recreate_after_s,
        )
        self.forwarder = Forwarder(
            self.spool,
            self.link.send,
            settings.retry_initial_s,
            settings.retry_max_s,
            policy=lambda: self.relay.policy,
        )
        self.relay.wakeup = self.forwarder.wake
        self.metrics = MetricsServer(settings.metrics_port, self.stats)

    def on_input(self, payload: bytes, message_id: str) -> None:
        if not self.accepting.is_set():
            return  # stopping: it stays in the durable inbox and is handled after restart
        try:
            self.relay.handle(payload, message_id)
        except Exception as error:
            if self.wait_in_inbox(error, message_id):
                return
            log.exception("input %s could not be handled; quarantined", message_id)
            self.quarantine(
                message_id, payload, f"handling failed: {type(error).__name__}: {error}"
            )

    def wait_in_inbox(self, error: Exception, message_id: str) -> bool:
        """True if `error` is a full volume: the input stays in the inbox, handled later."""
        if not is_storage_full(error):
            return False
        log.warning("volume full: input %s waits in the inbox", message_id)
        self.inbox_waiting.set()
        return True

    def quarantine(self, message_id: str, payload: bytes, reason: str) -> None:
        announce = self.relay.policy.send_rejected
        self.spool.quarantine_input(message_id, payload, reason, iso(time.time()), announce)

    def on_desired(self, desired: dict[str, Any]) -> None:
        self.relay.apply_desired(desired)
        self.report()

    def stats(self) -> dict[str, Any]:
        queued, queued_bytes = self.spool.depth()
        counters = self.spool.counters()
        state = self.forwarder.state
        return {
            "queued": queued,
            "queuedBytes": queued_bytes,
            "sent": int(counters.get(Counter.SENT, 0)),
            "upstreamMessages": int(counters.get(Counter.UPSTREAM, 0)),
            "dropped": int(sum(counters.get(Counter.dropped(k), 0) for k in MessageKind)),
            "droppedAlerts": int(counters.get(Counter.DROPPED_ALERT, 0)),
            "results": int(counters.get(Counter.RESULTS, 0)),
            "alerts": int(counters.get(Counter.ALERTS, 0)),
            "duplicates": int(counters.get(Counter.DUPLICATES, 0)),
            "rejected": int(counters.get(Counter.REJECTED, 0)),
            "alertsSuppressed": int(counters.get(Counter.ALERTS_SUPPRESSED, 0)),
            "expiredResults": int(counters.get(Counter.EXPIRED_RESULTS, 0)),
            "spoolsSetAside": int(counters.get(Counter.SPOOLS_SET_ASIDE, 0)),
            "forwarderErrors": self.forwarder.errors,
            "deliveryStalledSeconds": round(self.forwarder.stalled_s(), 1),
            "lastError": state.last_error or None,
            "lastErrorTime": state.last_error_time or None,
            "lastSentTime": state.last_sent_time or None,
        }

    def report(self) -> None:
        errors = self.relay.policy_errors
        patch = {
            "policy": self.relay.policy.to_twin(),
            # null clears keys of an earlier report in the twin
            "policyErrors": errors or None,
            "stats": self.stats(),
        }
        try:
            self.link.report(patch)
        except Exception as error:  # noqa: BLE001 - reporting is best effort; retried later
            log.warning("reported properties not sent: %s", error)

    def on_method(self, name: str, payload: Any) -> tuple[int, Any]:
        if name == "getStats":
            return 200, self.stats()
        if name == "flush":
            timeout = self.settings.graceful_timeout_s
            if isinstance(payload, dict) and isinstance(
                payload.get("timeoutSeconds"), (int, float)
            ):
                timeout = float(payload["timeoutSeconds"])
            self.relay.close_window(force=True)
            flushed = self.forwarder.drain(timeout)
            return 200, {"flushed": flushed, **self.stats()}
        return 404, {"error": f"unknown method {name!r}; use getStats or flush"}

    def replay_unhandled(self) -> None:
        """Handle inputs that were received but not handled before the last stop.

        Each try is counted first, so an input that crashes the relay while it is handled is
        quarantined after MAX_ATTEMPTS starts instead of crashing every start for ever."""
        pending = self.spool.unhandled()
        for message_id, payload in pending:
            try:
                attempts = self.spool.attempt(message_id)
            except Exception as error:
                if not self.wait_in_inbox(error, message_id):
                    raise
                return  # the main loop handles what is left once there is room
            if attempts > MAX_ATTEMPTS:
                self.quarantine(message_id, payload, f"handling failed {MAX_ATTEMPTS} times")
                log.error("input %s failed %d times; quarantined", message_id, MAX_ATTEMPTS)
                continue
            self.on_input_at_start(payload, message_id)
        if pending:
            log.info("handled %d inputs left from before the restart", len(pending))

    def handle_waiting(self) -> None:
        """Handle inputs kept while the volume was full, oldest first, once there is room.

        One that a live handler takes at the same moment is counted as a duplicate, never
        handled twice."""
        self.inbox_waiting.clear()
        for message_id, payload in self.spool.unhandled():
            self.on_input(payload, message_id)
            if self.inbox_waiting.is_set():
                return  # still full; the next tick tries again

    def tick(self) -> None:
        """The main loop's periodic work; a full volume delays it, never ends the process."""
        with waits_for_room("summary and waiting inputs delayed"):
            if self.inbox_waiting.is_set():
                self.handle_waiting()
            self.relay.close_window()

    def on_input_at_start(self, payload: bytes, message_id: str) -> None:
        """Like `on_input`, but a failure is left for the attempt count to quarantine."""
        try:
            self.relay.handle(payload, message_id)
        except Exception as error:
            if not self.wait_in_inbox(error, message_id):
                log.exception("input %s could not be handled at start", message_id)

    def connect(self) -> None:
        delay = self.settings.retry_initial_s
        while not self.stopping.is_set():
            try:
                self.link.open()
                return
            except Exception as error:  # noqa: BLE001 - keep trying; the spool is safe
                log.warning("cannot connect to edgeHub yet (%s); retrying in %.1f s", error, delay)
                self.link.close()
                self.stopping.wait(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    def run(self) -> None:
        self.metrics.start()
        self.replay_unhandled()
        self.forwarder.start()  # the spool from before the restart goes first, in order
        self.connect()
        try:
            self.relay.apply_desired(self.link.desired())
        except Exception as error:  # noqa: BLE001 - the desired patch handler catches up
            log.warning("twin not read at start (%s); using the current policy", error)
        self.accepting.set()
        self.replay_unhandled()
        self.report()
        last_report = time.monotonic()
        while not self.stopping.wait(1.0):
            self.beat()
            self.link.check()  # a dead MQTT network thread: a new client now, not in a minute
            self.tick()
            if time.monotonic() - last_report >= self.settings.report_interval_s:
                self.report()
                last_report = time.monotonic()

    def beat(self) -> None:
        """Write the heartbeat the image's health check reads: it stops if the forwarder
        cannot be revived, and says `stalled` once messages have waited past
        `RELAY_STALL_AFTER_S` without the spool's head moving (edgeHub not taking them)."""
        if not self.forwarder.alive():
            return
        stalled = self.forwarder.stalled_s()
        status = "ok"
        if stalled > self.settings.stall_after_s:
            queued, _ = self.spool.depth()
            status = f"stalled: {queued} messages, none delivered for {stalled:.0f} s"
        self.settings.heartbeat_path.write_text(status + "\n")

    def shutdown(self) -> None:
        """Stop taking input, send what can be sent in the grace period, keep the rest."""
        self.accepting.clear()
        flushed = self.forwarder.drain(self.settings.graceful_timeout_s)
        queued, _ = self.spool.depth()
        log.info(
            "stopping: %s; %d messages stay spooled", "all sent" if flushed else "timeout", queued
        )
        self.forwarder.stop()
        self.metrics.stop()
        self.link.close()
        self.spool.close()


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"relay: cannot start: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        module = RelayModule(settings)
    except OSError as error:  # the spool's volume, or the metrics port
        print(f"relay: cannot start: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: module.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: module.stopping.set())
    try:
        module.run()
    finally:
        module.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
