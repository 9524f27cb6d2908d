"""The relay's Prometheus text: every getStats counter, valid exposition format."""

from __future__ import annotations

from relay.metrics import METRICS, render

STATS = {
    "queued": 2,
    "queuedBytes": 512,
    "sent": 40,
    "upstreamMessages": 31,
    "deliveryStalledSeconds": 2.5,
    "dropped": 1,
    "droppedAlerts": 0,
    "results": 1000,
    "alerts": 12,
    "duplicates": 3,
    "rejected": 1,
    "spoolsSetAside": 0,
    "lastError": None,
    "lastErrorTime": None,
    "lastSentTime": "2026-11-30T01:00:00.000Z",
}


def test_every_counter_is_exposed_with_help_and_type() -> None:
    text = render(STATS)
    for key, (name, kind, _) in METRICS.items():
        assert f"# TYPE {name} {kind}\n{name} {float(STATS[key])}\n" in text
    assert "relay_last_sent_timestamp_seconds 1796000400.0" in text


def test_no_last_sent_time_means_no_timestamp_metric() -> None:
    assert "relay_last_sent_timestamp_seconds" not in render({**STATS, "lastSentTime": None})
