"""The relay module across restarts with a poison input in its durable inbox (a real socket:
the module serves /metrics)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from relay.__main__ import MAX_ATTEMPTS, RelayModule
from relay.policy import AlertRule, MessageKind, Outgoing, Policy
from relay.relay import Relay
from relay.settings import Settings
from relay.spool import MIN_SPOOL_BYTES, Spool, StorageFull

from tests.scorer_process import free_port
from tests.unit.test_policy import result


def test_an_input_that_crashes_its_handling_is_quarantined_after_three_starts(
    tmp_path: Path,
) -> None:
    """The crash loop of a poison input: each start tries it once more, then lets it go."""
    settings = Settings(spool_path=tmp_path / "relay.db", metrics_port=free_port())
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    spool.receive("poison", json.dumps(result(("a", 0.5), rid="p")).encode())
    spool.close()
    for start in range(MAX_ATTEMPTS + 1):
        module = RelayModule(settings)

        def crash(payload: bytes, message_id: str = "") -> str:
            raise RuntimeError("a bug that this input triggers")

        module.relay.handle = crash  # type: ignore[method-assign]
        module.replay_unhandled()  # what `run` does first at every start
        module.metrics.server.server_close()
        module.spool.close()
        reopened = Spool(settings.spool_path, settings.spool_max_bytes)
        left = reopened.unhandled()
        reopened.close()
        assert bool(left) == (start < MAX_ATTEMPTS)
    final = Spool(settings.spool_path, settings.spool_max_bytes)
    assert final.counters()["rejected"] == 1
    assert f"failed {MAX_ATTEMPTS} times" in final.dead_letters()[0][2]


def test_a_left_over_input_at_the_bound_waits_and_is_handled_once_alerts_leave(
    tmp_path: Path,
) -> None:
    """At start, on a spool at its bound with only alerts: the left-over input waits in the
    inbox (not quarantined, no crash) and the main loop handles it once there is room."""
    settings = Settings(
        spool_path=tmp_path / "relay.db", spool_max_bytes=MIN_SPOOL_BYTES, metrics_port=0
    )
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    relay = Relay(spool, Policy(0.0, alerts=(AlertRule("fire", 0.5),)))
    relay.apply_desired({})  # saves the policy, as a running relay does
    spooled = 0
    with pytest.raises(StorageFull):
        while True:
            relay.handle(json.dumps(result(("fire", 0.9), rid=f"a{spooled}")).encode())
            spooled += 1
    # An alert that arrived (stored before the spool filled) but was never handled:
    late = json.dumps(result(*[("fire", 0.9)] * 300, rid="late")).encode()  # ~20 KB alert
    with spool.transaction() as db:
        db.execute("INSERT INTO inbox(message_id, payload) VALUES ('late', ?)", (late,))
    spool.close()

    module = RelayModule(settings)
    try:
        module.replay_unhandled()
        assert module.inbox_waiting.is_set()
        assert [mid for mid, _ in module.spool.unhandled()] == ["late"]
        assert module.spool.counters().get("rejected", 0) == 0
        module.spool.acknowledge([seq for seq, _ in module.spool.oldest(limit=100)])
        module.accepting.set()  # as `run` does once connected
        module.tick()
        assert module.spool.unhandled() == [] and not module.inbox_waiting.is_set()
        assert module.spool.counters()["results"] == spooled + 1
    finally:
        module.metrics.server.server_close()
        module.spool.close()


def test_the_heartbeat_turns_unhealthy_when_nothing_is_delivered_for_too_long(
    tmp_path: Path,
) -> None:
    heartbeat = tmp_path / "heartbeat"
    settings = Settings(
        spool_path=tmp_path / "relay.db",
        metrics_port=0,
        heartbeat_path=heartbeat,
        stall_after_s=0.2,
    )
    module = RelayModule(settings)

    def health() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relay.healthcheck"],
            env={**os.environ, "RELAY_HEARTBEAT_PATH": str(heartbeat)},
            capture_output=True,
            text=True,
            check=False,
        )

    try:
        assert health().returncode == 1  # no heartbeat yet
        module.forwarder.start()  # nothing spooled, no link: idle is not a stall
        time.sleep(0.5)
        module.beat()
        assert health().returncode == 0
        ahead = time.time() + 3600  # the clock was set back an hour since that beat
        os.utime(heartbeat, (ahead, ahead))
        assert "last heartbeat 3600 s ahead of the clock" in health().stderr
        module.beat()
        module.relay.close_window(force=True)  # nothing to summarise: still nothing queued
        with module.spool.transaction() as db:
            module.spool.enqueue(db, Outgoing(MessageKind.SUMMARY, b"{}", "s"))
        module.forwarder.wake()
        time.sleep(0.5)  # the send fails (not connected) and nothing moves
        module.beat()
        checked = health()
        assert checked.returncode == 1 and "stalled: 1 messages" in checked.stderr
    finally:
        module.forwarder.stop()
        module.metrics.server.server_close()
        module.spool.close()
