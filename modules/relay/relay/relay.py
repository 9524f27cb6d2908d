"""The relay's engine: each result through the policy into the spool; the spool to IoT Hub.

Knows nothing of the Azure SDK: `Forwarder` sends through any callable, so tests and the
real `iothub.HubLink` plug in the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import policy as rules
from .policy import Outgoing, Policy
from .spool import Counter, Spool, waits_for_room

log = logging.getLogger(__name__)


def iso(timestamp: float) -> str:
    return (
        datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Outcome(str, enum.Enum):
    """What became of one input."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"  # dead-lettered with its reason


class Relay:
    """Applies the policy to each result in one durable transaction; closes summary windows."""

    def __init__(self, spool: Spool, policy: Policy, clock: Callable[[], float] = time.time):
        self.spool = spool
        self.clock = clock
        self._policy = policy
        self._policy_errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._minute = -1
        self._sent_this_minute = 0
        self.wakeup: Callable[[], None] = lambda: None
        with (
            waits_for_room("the summary window starts once there is room"),
            spool.transaction() as db,
        ):
            if spool.counter(db, Counter.WINDOW_START, -1) < 0:
                spool.set_counter(db, Counter.WINDOW_START, clock())

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def policy_errors(self) -> dict[str, str]:
        return dict(self._policy_errors)

    def apply_desired(self, desired: dict[str, Any]) -> dict[str, str]:
        """Apply twin desired properties live; returns the rejected keys with reasons."""
        with self._lock:
            self._policy, errors = rules.apply_desired(self._policy, desired)
            self._policy_errors = errors
            with waits_for_room("the policy applies but is not saved yet"):
                self.spool.save_policy(self._policy.to_twin())
        if errors:
            log.warning("desired properties rejected: %s", errors)
        log.info("policy now %s", self._policy.to_twin())
        return errors

    def _rate_allows(self, now: float) -> bool:
        minute = rules.minute_of(now)
        if minute != self._minute:
            self._minute, self._sent_this_minute = minute, 0
        if self._sent_this_minute >= self._policy.max_messages_per_minute:
            return False
        self._sent_this_minute += 1
        return True

    def handle(self, payload: bytes, message_id: str = "") -> Outcome:
        """Take one result; what became of it."""
        now = self.clock()
        try:
            result = rules.parse_result(payload)
        except rules.InvalidResult as error:
            with self._lock, self.spool.transaction() as db:
                if message_id:
                    self.spool.forget_received(db, message_id)
                self.spool.dead_letter(
                    db, message_id, str(error), payload, iso(now), self._policy.send_rejected
                )
            log.warning("input %s rejected: %s", message_id or "(no id)", error)
            return Outcome.REJECTED
        result_id = result.get("id") or message_id or hashlib.sha256(payload).hexdigest()
        with self._lock, self.spool.transaction() as db:
            if message_id:
                self.spool.forget_received(db, message_id)
            if self.spool.was_seen(db, result_id):
                self.spool.add_counter(db, Counter.DUPLICATES)
                return Outcome.DUPLICATE
            self.spool.mark_seen(db, result_id)
            kept = rules.kept_detections(result, self._policy)
            matches = rules.alert_matches(result, self._policy)
            seen_at = result.get("created") or iso(now)
            self.spool.update_window(db, rules.fold(self.spool.window(db), kept, seen_at))
            self.spool.add_counter(db, Counter.RESULTS)
            self.spool.add_counter(db, Counter.WINDOW_FRAMES)
            if matches:
                self._alert(db, result, matches, now)
            elif kept:
                if self._rate_allows(now):
                    self.spool.enqueue(db, rules.result_message(result, kept), now)
                    self.spool.add_counter(db, Counter.WINDOW_SENT)
                else:
                    self.spool.add_counter(db, Counter.WINDOW_FOLDED)
        self.wakeup()
        return Outcome.ACCEPTED

    def _alert(
        self, db: Any, result: dict[str, Any], matches: list[rules.Detection], now: float
    ) -> None:
        """Spool an alert, unless its label is cooling down: then count it for the next one."""
        label = max(matches, key=lambda d: d.probability).label
        state = self.spool.alert_state(db, label)
        cooldown = self._policy.alert_cooldown_s
        if state is not None and cooldown > 0 and now - state[0] < cooldown:
            self.spool.set_alert_state(db, label, state[0], state[1] + 1)
            self.spool.add_counter(db, Counter.ALERTS_SUPPRESSED)
            return
        suppressed = state[1] if state is not None else 0
        self.spool.enqueue(db, rules.alert_message(result, matches, suppressed), now)
        self.spool.set_alert_state(db, label, now, 0)
        self.spool.add_counter(db, Counter.ALERTS)

    def close_window(self, force: bool = False) -> int:
        """Spool the summary when the window is over (or now, with `force`); parts spooled."""
        now = self.clock()
        with self._lock, self.spool.transaction() as db:
            start = self.spool.counter(db, Counter.WINDOW_START, now)
            if not force and now - start < self._policy.summary_window_s:
                return 0
            frames = int(self.spool.counter(db, Counter.WINDOW_FRAMES))
            messages: list[Outgoing] = []
            if frames:
                totals = rules.WindowTotals(
                    iso(start),
                    iso(now),
                    frames,
                    int(self.spool.counter(db, Counter.WINDOW_SENT)),
                    int(self.spool.counter(db, Counter.WINDOW_FOLDED)),
                )
                messages = rules.summary_messages(totals, self.spool.window(db))
            for message in messages:
                self.spool.enqueue(db, message, now)
            self.spool.clear_window(db)
            for name in (Counter.WINDOW_FRAMES, Counter.WINDOW_SENT, Counter.WINDOW_FOLDED):
                self.spool.set_counter(db, name, 0)
            self.spool.set_counter(db, Counter.WINDOW_START, now)
        if messages:
            self.wakeup()
        return len(messages)


@dataclasses.dataclass
class ForwarderState:
    """What the forwarder reports: its last error and when it last sent."""

    last_error: str = ""
    last_error_time: str = ""
    last_sent_time: str = ""
    connected: bool = False


class SendFailed(Exception):
    """Sending failed for a reason of the link, not of the message: it stays spooled."""


class Forwarder:
    """Sends the spool in order; a message leaves the spool only after `send` returned."""

    def __init__(
        self,
        spool: Spool,
        send: Callable[[Outgoing], None],
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        policy: Callable[[], Policy] = Policy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.clock = clock
        self.send = send
        self.policy = policy  # the one in force, read at each batch
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.state = ForwarderState()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushing = threading.Event()  # send held results now, do not wait for more
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self.errors = 0
        self.progress = time.monotonic()  # last time the spool's head moved, or was empty

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        """The forwarder thread runs; if it died anyway, it is started again here."""
        if self._thread.is_alive() or self._stop.is_set():
            return True
        log.error("the forwarder thread had ended; starting it again")
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()
        return self._thread.is_alive()

    def stalled_s(self) -> float:
        """How long messages have waited without the spool's head moving (0: none wait)."""
        if self.spool.depth()[0] == 0:
            return 0.0
        return time.monotonic() - self.progress

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        """Never ends on an error: a failing disk or database is logged, counted, retried."""
        delay = self.retry_initial_s
        while not self._stop.is_set():
            try:
                delay = self._send_some(delay)
            except Exception as error:  # noqa: BLE001 - the forwarder must outlive anything
                self.errors += 1
                log.error("forwarder error, retrying in %.1f s: %s", delay, error)
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)

    def _pause(self, seconds: float) -> None:
        """Wait for new messages (an alert must not wait), at most `seconds`."""
        self._wake.wait(seconds)
        self._wake.clear()

    def _next(self, policy: Policy) -> tuple[list[int], Outgoing] | float:
        """The next message to send and the spooled messages it carries, or the seconds to
        wait before one may be ready.

        With `resultBatchSeconds`, the results at the head go up as one message once the
        oldest has waited that long, or nothing more can join it (size, or a message of
        another kind behind them), or a flush asks for everything now."""
        now = self.clock()
        head = self.spool.oldest(limit=1, max_age_s=policy.max_message_age_s, now=now)
        if not head:
            self.progress = time.monotonic()  # nothing to send is progress too
            return 1.0
        seq, message = head[0]
        if message.kind is not rules.MessageKind.RESULT or policy.result_batch_s <= 0:
            return [seq], message
        run = self.spool.result_run(rules.BODY_LIMIT - rules.RESULTS_OVERHEAD)
        wait = run.first_spooled + policy.result_batch_s - now
        if not run.complete and wait > 0 and not self._flushing.is_set():
            self.progress = time.monotonic()  # holding results back is not a stall
            return min(wait, 1.0)
        batch_id = f"{message.message_id}+{len(run.seqs)}"
        return run.seqs, rules.results_message(run.bodies, batch_id)

    def send_ready(self, policy: Policy) -> float:
        """Send every message that is ready now, in order; the seconds until more may be.

        Raises `SendFailed` when the link fails: that message stays at the head."""
        while not self._stop.is_set():
            chosen = self._next(policy)
            if isinstance(chosen, float):
                return chosen
            seqs, message = chosen
            try:
                self.send(message)
            except ValueError as error:  # the SDK refuses the message itself (its size)
                log.error("message %s refused for good, dead-lettered: %s", seqs, error)
                for seq in seqs:
                    self.spool.quarantine_outgoing(
                        seq, f"refused: {error}", iso(self.clock()), policy.send_rejected
                    )
                continue
            except Exception as error:  # any other failure is the link's: keep it spooled
                raise SendFailed(f"{type(error).__name__}: {error}"[:300]) from error
            self.spool.acknowledge(seqs)
            self.progress = time.monotonic()
            self.state.last_sent_time = iso(self.clock())
            self.state.connected = True
        return 0.0

    def _send_some(self, delay: float) -> float:
        """Send from the spool's head until told to stop; the back-off to use next."""
        while not self._stop.is_set():
            try:
                wait = self.send_ready(self.policy())
            except SendFailed as failure:
                self.state.last_error = str(failure)
                self.state.last_error_time = iso(self.clock())
                self.state.connected = False
                log.warning("send failed, retrying in %.1f s: %s", delay, failure)
                self._stop.wait(delay)
                return min(delay * 2, self.retry_max_s)
            delay = self.retry_initial_s
            self._pause(wait)
        return delay

    def drain(self, timeout: float) -> bool:
        """Send everything now, held results too: True once the spool is empty, False if the
        timeout passed first."""
        deadline = time.monotonic() + timeout
        self._flushing.set()
        self.wake()
        try:
            while time.monotonic() < deadline:
                if self.spool.depth()[0] == 0:
                    return True
                time.sleep(0.05)
            return self.spool.depth()[0] == 0
        finally:
            self._flushing.clear()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
