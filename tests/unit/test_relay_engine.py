"""The relay engine on a real SQLite spool: accounting, de-duplication, bounds, ordering."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from relay.policy import MAX_MESSAGE_BYTES, AlertRule, MessageKind, Outgoing, Policy
from relay.relay import Forwarder, Outcome, Relay
from relay.spool import MIN_SPOOL_BYTES, WAL_BYTES, Spool, StorageFull

from tests.unit.test_policy import result


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "relay.db", max_bytes=10_000_000)


def bodies(spool: Spool) -> list[dict]:
    return [json.loads(m.body) for _, m in spool.oldest(10_000)]


def test_alerts_results_and_summary_account_for_every_result(spool: Spool) -> None:
    clock = Clock()
    relay = Relay(spool, Policy(0.5, (), (AlertRule("fire", 0.8),), 60, 2), clock)
    relay.handle(json.dumps(result(("fire", 0.9), rid="a")).encode())
    for i in range(5):
        relay.handle(json.dumps(result(("smoke", 0.6), rid=f"s{i}")).encode())
    relay.handle(json.dumps(result(("smoke", 0.1), rid="low")).encode())
    clock.now += 61
    assert relay.close_window() == 1
    kinds = [b["type"] for b in bodies(spool)]
    assert kinds == ["alert", "result", "result", "summary"]
    summary = bodies(spool)[-1]
    assert summary["frames"] == 7 and summary["sentIndividually"] == 2 and summary["folded"] == 3
    assert summary["labels"]["smoke"]["frames"] == 5
    assert summary["labels"]["fire"]["maxProbability"] == 0.9


def test_a_duplicate_delivery_is_counted_once(spool: Spool) -> None:
    relay = Relay(spool, Policy(0.0, (), (AlertRule("x", 0.0),)))
    payload = json.dumps(result(("x", 0.5), rid="same")).encode()
    assert relay.handle(payload) == "accepted"
    assert relay.handle(payload) == "duplicate"
    assert spool.depth()[0] == 1
    assert spool.counters()["duplicates"] == 1


def test_state_survives_reopening_the_spool(tmp_path: Path) -> None:
    clock = Clock()
    first = Spool(tmp_path / "r.db", 10_000_000)
    Relay(first, Policy(0.0), clock).handle(json.dumps(result(("a", 0.5), rid="1")).encode())
    first.close()
    second = Spool(tmp_path / "r.db", 10_000_000)
    relay = Relay(second, Policy(0.0, max_messages_per_minute=0), clock)
    assert relay.handle(json.dumps(result(("a", 0.5), rid="1")).encode()) == "duplicate"
    clock.now += 3600
    relay.close_window()
    assert bodies(second)[-1]["frames"] == 1


def test_applied_policy_survives_a_restart_with_rejected_values_kept(tmp_path: Path) -> None:
    first = Spool(tmp_path / "r.db", 10_000_000)
    assert first.saved_policy() is None
    relay = Relay(first, Policy())
    relay.apply_desired({"alerts": [{"label": "fire", "minProbability": 0.8}]})
    relay.apply_desired({"minProbability": "high"})  # rejected: the alert rule stays
    first.close()
    second = Spool(tmp_path / "r.db", 10_000_000)
    restored = Relay(second, Policy())
    restored.apply_desired(second.saved_policy() or {})
    assert restored.policy.alerts == (AlertRule("fire", 0.8),)
    assert restored.policy_errors == {}
    restored.handle(json.dumps(result(("fire", 0.9), rid="1")).encode())
    assert [b["type"] for b in bodies(second)] == ["alert"]


def test_a_poison_input_is_dead_lettered_with_its_reason_and_the_next_ones_go_on(
    spool: Spool,
) -> None:
    relay = Relay(spool, Policy(0.0, alerts=(AlertRule("fire", 0.5),)))
    spool.receive("m0", b'{"predictions": [{"tagName": "fire", "boundingBox": 7}]}')
    assert relay.handle(b'{"predictions": [{"tagName": "fire", "boundingBox": 7}]}', "m0") == (
        "rejected"
    )
    assert spool.unhandled() == []  # out of the inbox: never replayed into a crash
    (dead,) = spool.dead_letters()
    assert dead[1] == "m0" and "probability" in dead[2] and dead[3].startswith(b'{"predictions"')
    for i in range(100):
        assert relay.handle(json.dumps(result(("fire", 0.9), rid=f"r{i}")).encode()) == "accepted"
    counters = spool.counters()
    assert counters["rejected"] == 1 and counters["results"] == 100 and counters["alerts"] == 100


def test_a_message_the_hub_refuses_as_too_large_is_dead_lettered_not_retried(
    spool: Spool,
) -> None:
    relay = Relay(spool, Policy(0.0, alerts=(AlertRule("a", 0.0),)))
    relay.handle(json.dumps(result(("a", 0.5), rid="big")).encode())
    relay.handle(json.dumps(result(("a", 0.6), rid="next")).encode())
    sent: list[Outgoing] = []

    def send(message: Outgoing) -> None:
        if json.loads(message.body)["resultId"] == "big":
            raise ValueError("Size of message can not exceed 256 KB.")
        sent.append(message)

    forwarder = Forwarder(spool, send, retry_initial_s=0.01, retry_max_s=0.01)
    forwarder.start()
    assert forwarder.drain(10)
    forwarder.stop()
    assert [json.loads(m.body)["resultId"] for m in sent] == ["next"]
    assert "refused" in spool.dead_letters()[0][2]


def test_the_forwarder_outlives_a_failing_spool_and_is_restarted_if_it_dies(
    spool: Spool,
) -> None:
    relay = Relay(spool, Policy(0.0, alerts=(AlertRule("a", 0.0),)))
    relay.handle(json.dumps(result(("a", 0.5), rid="one")).encode())
    sent: list[Outgoing] = []
    failures = iter([OSError("disk I/O error"), OSError("database or disk is full")])
    original = spool.oldest

    def flaky_oldest(limit: int = 32, max_age_s: float = 0.0, now: float = 0.0) -> list:
        for failure in failures:
            raise failure
        return original(limit, max_age_s, now)

    spool.oldest = flaky_oldest  # type: ignore[method-assign]
    forwarder = Forwarder(spool, sent.append, retry_initial_s=0.01, retry_max_s=0.01)
    forwarder.start()
    assert forwarder.drain(10) and len(sent) == 1 and forwarder.errors == 2
    forwarder.stop()
    assert forwarder.alive()  # stopped on purpose: not restarted


def test_size_bound_counts_every_page_and_drops_oldest_non_alerts_first(tmp_path: Path) -> None:
    bound = MIN_SPOOL_BYTES
    spool = Spool(tmp_path / "r.db", max_bytes=bound)
    with spool.transaction() as db:
        spool.enqueue(db, Outgoing(MessageKind.ALERT, b"a" * 1000, "alert-1"))
    results = 0
    while spool.counters().get("dropped_result", 0) == 0:
        with spool.transaction() as db:
            spool.enqueue(db, Outgoing(MessageKind.RESULT, b"r" * 1000, f"result-{results}"))
            assert spool.pages_bytes(db) <= bound - WAL_BYTES
        results += 1
    kept = [m.message_id for _, m in spool.oldest(limit=100_000)]
    assert kept[0] == "alert-1" and kept[-1] == f"result-{results - 1}"
    assert "result-0" not in kept

    # Pages of other tables count too: remembered ids leave less room for messages.
    with spool.transaction() as db:
        for i in range(20_000):
            Spool.mark_seen(db, f"seen-{i:06d}-" + "x" * 40)
        spool.enqueue(db, Outgoing(MessageKind.RESULT, b"r" * 1000, "after-seen"))
        assert spool.pages_bytes(db) <= bound - WAL_BYTES
    assert spool.depth()[0] < len(kept) - 100
    assert Path(str(tmp_path / "r.db")).stat().st_size <= bound


def test_received_inputs_wait_in_the_inbox_until_handled(spool: Spool) -> None:
    relay = Relay(spool, Policy(0.0))
    spool.receive("m1", json.dumps(result(("a", 0.5), rid="1")).encode())
    assert [mid for mid, _ in spool.unhandled()] == ["m1"]
    relay.handle(spool.unhandled()[0][1], "m1")
    assert spool.unhandled() == []


def test_forwarder_sends_in_order_and_keeps_failures_spooled(spool: Spool) -> None:
    with spool.transaction() as db:
        for i in range(5):
            spool.enqueue(db, Outgoing(MessageKind.RESULT, b"{}", f"m{i}"))
    sent: list[str] = []
    fail_once = threading.Event()

    def send(message: Outgoing) -> None:
        if message.message_id == "m2" and not fail_once.is_set():
            fail_once.set()
            raise ConnectionError("link down")
        sent.append(message.message_id)

    forwarder = Forwarder(spool, send, retry_initial_s=0.01)
    forwarder.start()
    assert forwarder.drain(5)
    forwarder.stop()
    assert sent == ["m0", "m1", "m2", "m3", "m4"]
    assert forwarder.state.last_error == "ConnectionError: link down"
    assert spool.counters()["sent"] == 5


def test_a_label_in_view_for_seconds_sends_one_alert_per_episode_with_a_count(
    spool: Spool,
) -> None:
    """A dog in view for 5 s at 10 frames/s: one alert, then one for the next episode that
    says how many matches the cool-down held back."""
    clock = Clock()
    relay = Relay(spool, Policy(0.5, alerts=(AlertRule("dog"),), alert_cooldown_s=60), clock)
    for frame in range(50):
        relay.handle(json.dumps(result(("dog", 0.9), rid=f"a{frame}")).encode())
        clock.now += 0.1
    clock.now += 120  # the dog comes back two minutes later
    relay.handle(json.dumps(result(("dog", 0.8), rid="b0")).encode())
    alerts = [b for b in bodies(spool) if b["type"] == "alert"]
    assert len(alerts) == 2
    assert "suppressedSinceLast" not in alerts[0] and alerts[1]["suppressedSinceLast"] == 49
    assert spool.counters()["alerts_suppressed"] == 49


def test_alerts_go_ahead_of_a_backlog_and_stale_results_expire(spool: Spool) -> None:
    clock = Clock()
    policy = Policy(0.0, alerts=(AlertRule("fire", 0.5),), max_messages_per_minute=1000)
    relay = Relay(spool, policy, clock)
    for i in range(5):
        relay.handle(json.dumps(result(("cat", 0.3), rid=f"r{i}")).encode())
    relay.handle(json.dumps(result(("fire", 0.9), rid="alarm")).encode())
    order = [m.kind.value for _, m in spool.oldest(10, now=clock.now)]
    assert order == ["alert"] + ["result"] * 5
    later = clock.now + 7200  # two hours offline
    left = spool.oldest(10, max_age_s=3600, now=later)
    assert [m.kind.value for _, m in left] == ["alert"]
    assert spool.counters()["expired_results"] == 5


def test_at_the_bound_alerts_are_never_dropped_the_write_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "r.db", max_bytes=MIN_SPOOL_BYTES)
    relay = Relay(spool, Policy(0.0, alerts=(AlertRule("fire", 0.5),)))
    spooled = 0
    with pytest.raises(StorageFull):
        while True:  # alerts only: nothing may be dropped to make room
            relay.handle(json.dumps(result(("fire", 0.9), rid=f"a{spooled}")).encode())
            spooled += 1
    assert spooled > 100 and spool.depth()[0] == spooled
    assert spool.counters().get("dropped_alert", 0) == 0
    with pytest.raises(StorageFull):  # an input is refused too: edgeHub keeps it
        spool.receive("m-late", b"{}" * 10_000)
    assert spool.unhandled() == []
    # Once alerts leave, there is room again.
    spool.acknowledge([seq for seq, _ in spool.oldest(limit=50)])
    spool.receive("m-late", b"{}")
    assert relay.handle(json.dumps(result(("fire", 0.9), rid="after")).encode()) == "accepted"


def test_the_inbox_counts_toward_the_bound_and_makes_room_by_dropping_results(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "r.db", max_bytes=MIN_SPOOL_BYTES)
    with spool.transaction() as db:
        for i in range(5000):
            spool.enqueue(db, Outgoing(MessageKind.RESULT, b"r" * 1000, f"r{i}"))
    before = spool.depth()[0]
    for i in range(100):
        spool.receive(f"m{i}", b"x" * 1000)
    assert len(spool.unhandled()) == 100 and spool.depth()[0] < before
    assert spool.depth()[0] == 5000 - spool.counters()["dropped_result"]  # each drop counted


def test_results_go_up_in_batches_alerts_at_once_and_a_flush_sends_what_is_held(
    spool: Spool,
) -> None:
    policy = Policy(
        0.0, alerts=(AlertRule("fire", 0.5),), max_messages_per_minute=1000, result_batch_s=3600
    )
    relay = Relay(spool, policy)
    sent: list[Outgoing] = []
    forwarder = Forwarder(spool, sent.append, policy=lambda: relay.policy)
    relay.wakeup = forwarder.wake
    forwarder.start()
    for i in range(20):
        relay.handle(json.dumps(result(("cat", 0.3), rid=f"r{i}")).encode())
    relay.handle(json.dumps(result(("fire", 0.9), rid="alarm")).encode())
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert [m.kind for m in sent] == [MessageKind.ALERT]  # the results wait for their batch
    assert spool.depth()[0] == 20 and forwarder.stalled_s() < 2
    assert forwarder.drain(5)
    forwarder.stop()
    assert [m.kind for m in sent] == [MessageKind.ALERT, MessageKind.RESULTS]
    batch = json.loads(sent[1].body)
    assert [r["resultId"] for r in batch["results"]] == [f"r{i}" for i in range(20)]
    counters = spool.counters()
    assert counters["sent"] == 21 and counters["upstream_messages"] == 2


def test_a_batch_is_sent_once_its_oldest_result_waited_and_never_exceeds_the_hub_limit(
    spool: Spool,
) -> None:
    big = b'{"type":"result","pad":"' + b"x" * 100_000 + b'"}'
    with spool.transaction() as db:
        for i in range(5):
            spool.enqueue(db, Outgoing(MessageKind.RESULT, big, f"big{i}"), now=time.time())
    sent: list[Outgoing] = []
    forwarder = Forwarder(spool, sent.append, policy=lambda: Policy(result_batch_s=0.3))
    forwarder.start()
    deadline = time.monotonic() + 5
    while spool.depth()[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    forwarder.stop()
    assert [json.loads(m.body)["count"] for m in sent] == [2, 2, 1]
    assert all(len(m.body) <= MAX_MESSAGE_BYTES for m in sent)


def test_a_rejected_input_goes_up_once_as_a_notice_when_the_policy_says_so(
    spool: Spool,
) -> None:
    relay = Relay(spool, Policy(send_rejected=True))
    assert relay.handle(b'{"predictions": 7}', "m-bad") == "rejected"
    (notice,) = bodies(spool)
    assert notice["type"] == "rejected" and notice["messageId"] == "m-bad"
    assert notice["reason"] == "predictions is not a list"
    quiet = Relay(spool, Policy())
    assert quiet.handle(b'{"predictions": 7}', "m-bad-2") == "rejected"
    assert len(bodies(spool)) == 1 and spool.counters()["rejected"] == 2


def test_a_refused_notice_is_dead_lettered_without_a_notice_of_its_own(spool: Spool) -> None:
    relay = Relay(spool, Policy(send_rejected=True))
    relay.handle(b"[]", "m-bad")

    def refuse(message: Outgoing) -> None:
        raise ValueError("refused")

    forwarder = Forwarder(spool, refuse, policy=lambda: relay.policy)
    forwarder.start()
    assert forwarder.drain(5)
    forwarder.stop()
    assert spool.counters()["rejected"] == 2 and spool.depth()[0] == 0


def test_delivery_stall_is_measured_while_messages_wait(spool: Spool) -> None:
    with spool.transaction() as db:
        spool.enqueue(db, Outgoing(MessageKind.SUMMARY, b"{}", "s"))

    def down(message: Outgoing) -> None:
        raise ConnectionError("edgeHub away")

    forwarder = Forwarder(spool, down, retry_initial_s=0.05, retry_max_s=0.05)
    forwarder.start()
    time.sleep(0.5)
    forwarder.stop()
    assert forwarder.stalled_s() >= 0.4 and forwarder.state.last_error


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"predictions": [{"tagName": "a", "probability": 1' + b"0" * 3999 + b"}]}",
    ],
    ids=["nested-100000-deep", "4000-digit-probability"],
)
def test_input_that_broke_the_parser_is_refused_at_the_door_with_one_warning(
    spool: Spool, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """RecursionError and OverflowError passed the door's `except ValueError` and reached
    the generic handler: an ERROR with a traceback per input."""
    relay = Relay(spool, Policy(), Clock())
    with caplog.at_level("WARNING"):
        assert relay.handle(payload, "m1") is Outcome.REJECTED
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert not any(r.exc_info for r in caplog.records)
