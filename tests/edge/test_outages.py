"""Nothing is lost: 1,000 results through broker restarts and a kill -9 of the relay."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

from tests.conftest import fill
from tests.edge.conftest import EdgeDevice
from tests.edge.harness import wait_for
from tests.edge.test_relay_edge import relay_settings, result

RESULTS = 1000


def test_alerts_arrive_and_summaries_account_for_every_result(device: EdgeDevice) -> None:
    device.hub.set_desired(
        "relay",
        {
            "alerts": [{"label": "alarm", "minProbability": 0.5}],
            "summaryWindowSeconds": 2,
            "maxMessagesPerMinute": 0,
            "alertCooldownSeconds": 0,  # every matching result alerts: none may be lost
        },
    )
    settings = relay_settings(device)
    relay = device.module("relay", **settings)
    device.wait_connected("relay")
    rng = random.Random(5)
    labels = ["alarm" if rng.random() < 0.1 else "normal" for _ in range(RESULTS)]
    ids = [f"result-{i:04d}" for i in range(RESULTS)]
    injected = threading.Event()
    outages = ("broker", "kill -9", "broker")
    # The feeder asks for each outage in the middle of a burst and does not run far ahead of
    # it, so every outage strikes while results flow, however fast this machine is.
    strike_at = {220 + 250 * n: n for n in range(len(outages))}
    struck = [threading.Event() for _ in outages]

    def inject() -> None:
        for i, (rid, label) in enumerate(zip(ids, labels, strict=True)):
            if i in strike_at:
                ready[strike_at[i]].set()
            if i - 150 in strike_at:
                struck[strike_at[i - 150]].wait(120)
            device.hub.inject("relay", "results", result(label, 0.9, rid), rid)
            if i % 50 == 49:  # bursts, as from several cameras, so inputs queue in the relay
                time.sleep(0.3)
        injected.set()

    ready = [threading.Event() for _ in outages]

    def handled() -> int | None:
        try:
            status, stats = device.hub.call("relay", "getStats", {}, timeout=5)
        except AssertionError:  # no answer yet: still reconnecting
            return None
        return stats["results"] if status == 200 else None

    feeder = threading.Thread(target=inject, daemon=True)
    feeder.start()
    broker = device.brokers["relay"]
    for n, outage in enumerate(outages):
        assert ready[n].wait(120), f"the feeder stalled before outage {n + 1}\n{relay.log}"
        before = wait_for(handled, 60, f"the relay to answer\n{relay.log}")
        if outage == "broker":
            broker.restart(down_for=1.0)
        else:
            relay.kill()
            relay = device.module("relay", **settings)
        struck[n].set()
        wait_for(lambda b=before: (handled() or 0) > b, 60, f"recovery from {outage}\n{relay.log}")
    assert injected.wait(180), "the feeder did not finish"

    def drained() -> bool:
        try:
            status, stats = device.hub.call("relay", "flush", {"timeoutSeconds": 10}, timeout=15)
        except AssertionError:  # no answer yet (the relay may be reconnecting): ask again
            return False
        return status == 200 and stats["results"] == RESULTS and stats["queued"] == 0

    wait_for(drained, 120, f"all {RESULTS} results handled, spool empty\n{relay.log}", interval=1)

    alerts = {json.loads(m["payload"])["resultId"] for m in device.hub.upstream_of("alert")}
    expected_alerts = {rid for rid, label in zip(ids, labels, strict=True) if label == "alarm"}
    assert alerts == expected_alerts

    windows: dict[str, dict] = {}
    for message in device.hub.upstream_of("summary"):
        body = json.loads(message["payload"])
        windows[body["windowId"]] = body  # a redelivered duplicate has the same windowId
    assert sum(w["frames"] for w in windows.values()) == RESULTS
    per_label = {
        label: sum(w["labels"].get(label, {}).get("frames", 0) for w in windows.values())
        for label in ("alarm", "normal")
    }
    assert per_label == {"alarm": labels.count("alarm"), "normal": labels.count("normal")}


def test_full_volume_withholds_acknowledgement_starts_and_resumes_when_space_returns(
    device: EdgeDevice, small_volume: Path
) -> None:
    device.hub.set_desired(
        "relay",
        {"alerts": [{"label": "alarm", "minProbability": 0.5}], "alertCooldownSeconds": 0},
    )
    settings = relay_settings(device, RELAY_SPOOL_PATH=str(small_volume / "relay.db"))
    relay = device.module("relay", **settings)
    device.wait_connected("relay")

    def alerts_upstream() -> set[str]:
        return {json.loads(m["payload"])["resultId"] for m in device.hub.upstream_of("alert")}

    before = [f"before-{i}" for i in range(5)]
    for rid in before:
        device.hub.inject("relay", "results", result("alarm", 0.9, rid), rid)
    wait_for(lambda: alerts_upstream() >= set(before), 30, f"alerts before\n{relay.log}")

    ballast = fill(small_volume)
    during = [f"during-{i}" for i in range(20)]
    for rid in during:
        device.hub.inject("relay", "results", result("alarm", 0.9, rid), rid)
    time.sleep(5)  # full for a while: every input reaches the relay, which must stay up
    assert relay.process is not None and relay.process.poll() is None, relay.log

    relay.kill()  # and a start-up on the full volume works
    relay = device.module("relay", **settings)
    # (each connect ends as edgeHub redelivers what cannot be stored: it stays up, retrying)
    time.sleep(5)
    assert relay.process is not None and relay.process.poll() is None, relay.log

    ballast.unlink()
    try:
        wait_for(lambda: alerts_upstream() >= set(before + during), 90, "", interval=0.5)
    except AssertionError:
        raise AssertionError(f"not every alert arrived after space returned\n{relay.log}") from None
    status, stats = device.hub.call("relay", "getStats", {}, timeout=10)
    assert status == 200 and stats["results"] == len(before) + len(during), stats
