"""Nothing is lost: 1,000 results through broker restarts and a kill -9 of the relay."""

from __future__ import annotations

import json
import random
import threading
import time

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
        },
    )
    settings = relay_settings(device)
    relay = device.module("relay", **settings)
    device.wait_connected("relay")
    rng = random.Random(5)
    labels = ["alarm" if rng.random() < 0.1 else "normal" for _ in range(RESULTS)]
    ids = [f"result-{i:04d}" for i in range(RESULTS)]
    injected = threading.Event()

    def inject() -> None:
        # Bursts, as from several cameras at once, so inputs queue up inside the relay.
        for i, (rid, label) in enumerate(zip(ids, labels, strict=True)):
            device.hub.inject("relay", "results", result(label, 0.9, rid), rid)
            if i % 50 == 49:
                time.sleep(0.3)
        injected.set()

    def recovered(handled_before: int) -> bool:
        try:
            status, stats = device.hub.call("relay", "getStats", {}, timeout=5)
        except AssertionError:  # no answer yet: still reconnecting
            return False
        return status == 200 and stats["results"] > handled_before

    feeder = threading.Thread(target=inject, daemon=True)
    feeder.start()
    broker = device.brokers["relay"]
    for outage in ("broker", "kill -9", "broker"):
        # Each outage strikes while results flow, once the relay is back from the last one.
        wait_for(lambda: recovered(0), 60, f"the relay to handle results\n{relay.log}")
        handled = device.hub.call("relay", "getStats", {})[1]["results"]
        assert handled < RESULTS, "the outages came too late to matter"
        if outage == "broker":
            broker.restart(down_for=1.0)
        else:
            relay.kill()
            relay = device.module("relay", **settings)
        wait_for(lambda h=handled: recovered(h), 60, f"recovery from {outage}\n{relay.log}")
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
