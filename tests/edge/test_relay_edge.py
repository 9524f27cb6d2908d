"""The relay as a real process against a real broker and the real SDK."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid

from tests.edge.conftest import EdgeDevice
from tests.edge.harness import wait_for
from tests.scorer_process import free_port


def relay_settings(device: EdgeDevice, **extra: str) -> dict[str, str]:
    return {
        "RELAY_SPOOL_PATH": str(device.folder / "spool" / "relay.db"),
        "RELAY_RETRY_INITIAL_S": "0.1",
        "RELAY_RETRY_MAX_S": "1",
        "RELAY_REPORT_INTERVAL_S": "1",
        "RELAY_SEND_TIMEOUT_S": "3",
        "RELAY_CALL_TIMEOUT_S": "3",
        "RELAY_RECREATE_AFTER_S": "2",
        "RELAY_METRICS_PORT": str(free_port()),
        **extra,
    }


def result(label: str, probability: float, rid: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": rid or str(uuid.uuid4()),
            "created": "2026-11-25T10:00:00.000Z",
            "model": {"name": "m", "version": "1", "kind": "classification"},
            "predictions": [{"probability": probability, "tagId": 0, "tagName": label}],
        }
    ).encode()


def test_alert_reaches_upstream_with_properties(device: EdgeDevice) -> None:
    device.hub.set_desired("relay", {"alerts": [{"label": "fire", "minProbability": 0.8}]})
    device.module("relay", **relay_settings(device))
    device.wait_connected("relay")
    device.hub.inject("relay", "results", result("fire", 0.93), "m-1")
    (alert,) = wait_for(lambda: device.hub.upstream_of("alert"), 20, "the alert")
    props = alert["properties"]
    assert props["type"] == "alert" and props["label"] == "fire"
    assert props["$.ct"] == "application/json" and props["$.ce"] == "utf-8"
    assert props["$.mid"]
    assert json.loads(alert["payload"])["matches"][0]["probability"] == 0.93


def test_twin_policy_changes_apply_live_and_bad_types_are_rejected(device: EdgeDevice) -> None:
    device.module("relay", **relay_settings(device))
    device.wait_connected("relay")
    device.hub.inject("relay", "results", result("smoke", 0.95), "before")
    wait_for(lambda: device.hub.call("relay", "getStats", {})[1]["results"] == 1, 20, "result 1")
    assert device.hub.upstream_of("alert") == []

    device.hub.set_desired("relay", {"alerts": [{"label": "smoke", "minProbability": 0.9}]})
    wait_for(
        lambda: device.hub.reported["relay"].get("policy", {}).get("alerts"),
        20,
        "the new policy in reported properties",
    )
    device.hub.inject("relay", "results", result("smoke", 0.95), "after")
    wait_for(lambda: device.hub.upstream_of("alert"), 20, "an alert under the new policy")

    device.hub.set_desired("relay", {"minProbability": "high", "maxMessagesPerMinute": 7})
    wait_for(lambda: device.hub.reported["relay"].get("policyErrors"), 20, "the rejection")
    reported = device.hub.reported["relay"]
    assert "minProbability" in reported["policyErrors"]
    assert reported["policy"]["minProbability"] == 0.5
    assert reported["policy"]["maxMessagesPerMinute"] == 7


def test_methods_get_stats_flush_and_unknown(device: EdgeDevice) -> None:
    device.hub.set_desired("relay", {"summaryWindowSeconds": 3600, "maxMessagesPerMinute": 0})
    device.module("relay", **relay_settings(device))
    device.wait_connected("relay")
    for i in range(5):
        device.hub.inject("relay", "results", result("cat", 0.5 + i / 10), f"m{i}")
    wait_for(lambda: device.hub.call("relay", "getStats", {})[1]["results"] == 5, 20, "5 results")
    status, flushed = device.hub.call("relay", "flush", {"timeoutSeconds": 10})
    assert status == 200 and flushed["flushed"] is True and flushed["queued"] == 0
    (summary,) = device.hub.upstream_of("summary")
    body = json.loads(summary["payload"])
    assert body["frames"] == 5 and body["labels"]["cat"]["frames"] == 5
    assert body["labels"]["cat"]["maxProbability"] == 0.9
    status, answer = device.hub.call("relay", "reboot", {})
    assert status == 404 and "getStats" in answer["error"]


def test_sigterm_keeps_what_it_could_not_send_and_sends_it_after_restart(
    device: EdgeDevice,
) -> None:
    device.hub.set_desired("relay", {"summaryWindowSeconds": 2, "maxMessagesPerMinute": 0})
    settings = relay_settings(device, RELAY_GRACEFUL_TIMEOUT_S="2")
    relay = device.module("relay", **settings)
    device.wait_connected("relay")
    for i in range(3):
        device.hub.inject("relay", "results", result("dog", 0.7), f"m{i}")
    wait_for(lambda: device.hub.call("relay", "getStats", {})[1]["results"] == 3, 20, "results")
    device.brokers["relay"].stop()
    wait_for(lambda: "send failed" in relay.log, 20, "the summary to fail to send")
    assert relay.stop() == 0
    assert "1 messages stay spooled" in relay.log
    assert device.hub.upstream_of("summary") == []

    device.brokers["relay"].start()
    device.module("relay", **settings)
    (summary,) = wait_for(lambda: device.hub.upstream_of("summary"), 30, "the kept summary")
    assert json.loads(summary["payload"])["frames"] == 3


def test_metrics_endpoint_serves_the_same_counters_as_get_stats(device: EdgeDevice) -> None:
    """What the IoT Edge metrics collector scrapes (http://relay:9601/metrics on the device)."""
    settings = relay_settings(device)
    device.module("relay", **settings)
    device.wait_connected("relay")
    for i in range(3):
        device.hub.inject("relay", "results", result("cat", 0.9), f"metrics-{i}")
    wait_for(lambda: device.hub.call("relay", "getStats", {})[1]["results"] == 3, 20, "results")
    url = f"http://127.0.0.1:{settings['RELAY_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    assert "relay_results_total 3.0" in text  # counters that no longer move
    stats = device.hub.call("relay", "getStats", {})[1]
    assert f"relay_rejected_inputs_total {float(stats['rejected'])}" in text
    assert "relay_queued_messages " in text  # a gauge: it may move between the two reads


def test_a_poison_input_is_dead_lettered_and_a_hundred_good_ones_go_on_across_a_restart(
    device: EdgeDevice,
) -> None:
    device.hub.set_desired(
        "relay", {"alerts": [{"label": "fire", "minProbability": 0.5}], "alertCooldownSeconds": 0}
    )
    settings = relay_settings(device)
    relay = device.module("relay", **settings)
    device.wait_connected("relay")
    poison = json.dumps(
        {"id": "p", "predictions": [{"tagName": "fire", "probability": 0.9, "boundingBox": 7}]}
    ).encode()
    device.hub.inject("relay", "results", poison, "poison")
    for i in range(100):
        device.hub.inject("relay", "results", result("fire", 0.9, f"good-{i}"), f"good-{i}")
    wait_for(lambda: len(device.hub.upstream_of("alert")) >= 100, 60, "100 alerts")
    stats = device.hub.call("relay", "getStats", {})[1]
    assert stats["rejected"] == 1 and stats["results"] == 100
    assert relay.stop() == 0
    device.hub.reported["relay"].clear()  # wait for the new process's own report
    again = device.module("relay", **settings)  # no crash loop: it starts and serves
    device.wait_connected("relay")
    status, stats = device.hub.call("relay", "getStats", {})
    assert status == 200 and stats["rejected"] == 1
    assert again.process is not None and again.process.poll() is None


def test_an_alert_with_five_thousand_detections_arrives_and_a_later_one_is_not_held_up(
    device: EdgeDevice,
) -> None:
    device.hub.set_desired(
        "relay", {"alerts": [{"label": "defect", "minProbability": 0.5}], "alertCooldownSeconds": 0}
    )
    device.module("relay", **relay_settings(device))
    device.wait_connected("relay")
    crowded = {
        "id": "crowded",
        "created": "2026-11-25T10:00:00.000Z",
        "predictions": [
            {
                "tagName": "defect",
                "probability": 0.5 + (i % 400) / 1000,
                "boundingBox": {"left": 0.1, "top": 0.2, "width": 0.05, "height": 0.05},
            }
            for i in range(5000)
        ],
    }
    device.hub.inject("relay", "results", json.dumps(crowded).encode(), "crowded")
    device.hub.inject("relay", "results", result("defect", 0.97, "after"), "after")
    wait_for(lambda: len(device.hub.upstream_of("alert")) >= 2, 30, "2 alerts")
    alerts = device.hub.upstream_of("alert")
    bodies = {json.loads(a["payload"])["resultId"]: json.loads(a["payload"]) for a in alerts}
    assert bodies["crowded"]["truncated"] > 0
    assert len(bodies["crowded"]["matches"]) + bodies["crowded"]["truncated"] == 5000
    assert len(alerts[0]["payload"]) <= 256 * 1024
    assert "after" in bodies


def test_a_hung_edgehub_leaves_one_client_and_traffic_resumes(device: EdgeDevice) -> None:
    """edgeHub paused for 30 s with its TCP connections open: calls time out, the client is
    replaced, and no second client under the module's identity is left behind (two would
    take the connection from each other, over and over, in the broker's log)."""
    device.hub.set_desired("relay", {"alerts": [{"label": "fire"}], "alertCooldownSeconds": 0})
    settings = relay_settings(
        device,
        RELAY_CALL_TIMEOUT_S="2",
        RELAY_SEND_TIMEOUT_S="2",
        RELAY_RECREATE_AFTER_S="3",
    )
    relay = device.module("relay", **settings)
    device.wait_connected("relay")
    broker = device.brokers["relay"]
    broker.pause()
    time.sleep(30)
    broker.resume()
    device.hub.inject("relay", "results", result("fire", 0.9, "after-hang"), "after-hang")
    wait_for(lambda: device.hub.upstream_of("alert"), 90, f"the alert\n{relay.log}")
    # Connects that were abandoned while the broker hung may still complete once it answers
    # again; each shuts its own client down. Within a minute one client must be left: ten
    # seconds without any connection taking over another under the module's identity.
    for _ in range(6):
        start = len(broker.log())
        time.sleep(10)
        if "already connected, closing old connection" not in broker.log()[start:]:
            break
    else:
        raise AssertionError(f"clients kept taking over each other:\n{broker.log()[-3000:]}")
    device.hub.inject("relay", "results", result("fire", 0.8, "settled"), "settled")
    wait_for(lambda: len(device.hub.upstream_of("alert")) >= 2, 30, "an alert after settling")
    assert relay.process is not None and relay.process.poll() is None


def test_a_broker_restart_in_a_burst_of_alerts_loses_none_and_needs_no_slow_recreation(
    device: EdgeDevice,
) -> None:
    """edgeHub restarts 0.1 s into 300 alerts. With the slow path (a new client after
    RELAY_RECREATE_AFTER_S of failures) set to 120 s, everything arriving well before that
    shows the link came back by itself or by the dead-thread check, not by waiting."""
    device.hub.set_desired("relay", {"alerts": [{"label": "fire"}], "alertCooldownSeconds": 0})
    relay = device.module("relay", **relay_settings(device, RELAY_RECREATE_AFTER_S="120"))
    device.wait_connected("relay")
    burst = threading.Thread(
        target=lambda: [
            device.hub.inject("relay", "results", result("fire", 0.9, f"a{i}"), f"a{i}")
            for i in range(300)
        ]
    )
    burst.start()
    time.sleep(0.1)
    device.brokers["relay"].restart(down_for=0.5)
    burst.join()
    wait_for(
        lambda: (
            len({json.loads(a["payload"])["resultId"] for a in device.hub.upstream_of("alert")})
            == 300
        ),
        90,
        f"all 300 alerts upstream\n{relay.log}",
    )
    assert "the link has failed for" not in relay.log


def test_results_go_upstream_in_one_batch_and_rejected_inputs_as_notices(
    device: EdgeDevice,
) -> None:
    device.hub.set_desired(
        "relay",
        {"maxMessagesPerMinute": 100, "resultBatchSeconds": 2, "sendRejected": True},
    )
    device.module("relay", **relay_settings(device))
    device.wait_connected("relay")
    for i in range(10):
        device.hub.inject("relay", "results", result("cat", 0.9, rid=f"r{i}"), f"m{i}")
    device.hub.inject("relay", "results", b'{"predictions": {"cat": 1}}', "m-bad")
    (batch,) = wait_for(lambda: device.hub.upstream_of("results"), 20, "the batch")
    body = json.loads(batch["payload"])
    assert body["count"] == 10 and [r["resultId"] for r in body["results"]] == [
        f"r{i}" for i in range(10)
    ]
    (notice,) = wait_for(lambda: device.hub.upstream_of("rejected"), 20, "the notice")
    assert json.loads(notice["payload"])["messageId"] == "m-bad"
    stats = device.hub.call("relay", "getStats", {})[1]
    assert stats["sent"] == 11 and stats["upstreamMessages"] == 2 and stats["rejected"] == 1
    assert device.hub.upstream_of("result") == []
