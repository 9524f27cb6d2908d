"""JPEGs POSTed to the scorer come out at $upstream as alerts and summaries, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.edge.conftest import EdgeDevice, ModuleProcess
from tests.edge.harness import wait_for
from tests.edge.test_relay_edge import relay_settings
from tests.model_server import export_zip, model_server
from tests.scorer_process import LISTENING


def start_scorer(device: EdgeDevice, demo_dir: Path, **settings: str) -> tuple[ModuleProcess, str]:
    """The scorer on the demo colour model under the emulated IoT Edge, ready and connected."""
    scorer = device.module(
        "scorer",
        SCORER_MODEL_DIR=str(demo_dir / "models" / "colors"),
        SCORER_CACHE_DIR=str(device.folder / "cache"),
        SCORER_HOST="127.0.0.1",
        SCORER_HTTP_PORT="0",
        SCORER_GRPC_PORT="0",
        SCORER_EDGE_REPORT_INTERVAL_S="1",
        **settings,
    )
    port = wait_for(
        lambda: next(
            (m.group(1) for line in scorer.lines if (m := LISTENING.search(line))),
            None,
        ),
        30,
        f"the scorer to listen\n{scorer.log}",
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(url + "/readyz").status_code == 200, 30, "scorer ready")
    device.wait_connected("scorer")
    return scorer, url


def test_scored_results_reach_upstream_as_alerts_and_summaries(
    device: EdgeDevice, demo_dir: Path
) -> None:
    device.hub.set_desired(
        "relay",
        {
            "alerts": [{"label": "red", "minProbability": 0.9}],
            "summaryWindowSeconds": 3600,
            "maxMessagesPerMinute": 0,
            "alertCooldownSeconds": 0,  # every matching result alerts: none may be lost
        },
    )
    device.module("relay", **relay_settings(device))
    device.wait_connected("relay")
    _, url = start_scorer(device, demo_dir)

    images = [demo_dir / "images" / f"{c}.jpg" for c in ("red", "green", "blue", "red", "squares")]
    results = []
    for i in range(30):
        image = images[i % len(images)].read_bytes()
        response = requests.post(url + "/score", data=image, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200
        results.append(response.json())

    wait_for(
        lambda: device.hub.call("relay", "getStats", {})[1]["results"] == len(results),
        30,
        "every result at the relay",
    )
    status, flushed = device.hub.call("relay", "flush", {"timeoutSeconds": 10})
    assert status == 200 and flushed["flushed"]

    expected_alerts = {
        r["id"]: [
            p["probability"]
            for p in r["predictions"]
            if p["tagName"] == "red" and p["probability"] >= 0.9
        ]
        for r in results
    }
    expected_alerts = {k: v for k, v in expected_alerts.items() if v}
    alerts = {}
    for message in device.hub.upstream_of("alert"):
        body = json.loads(message["payload"])
        alerts[body["resultId"]] = [m["probability"] for m in body["matches"]]
    assert alerts == expected_alerts

    (summary,) = device.hub.upstream_of("summary")
    body = json.loads(summary["payload"])
    assert body["frames"] == len(results)
    expected: dict[str, dict] = {}
    for r in results:
        kept = [p for p in r["predictions"] if p["probability"] >= 0.5]
        for label in {p["tagName"] for p in kept}:
            mine = [p["probability"] for p in kept if p["tagName"] == label]
            stats = expected.setdefault(label, {"frames": 0, "detections": 0, "max": 0.0})
            stats["frames"] += 1
            stats["detections"] += len(mine)
            stats["max"] = max(stats["max"], *mine)
    got = {
        label: {"frames": s["frames"], "detections": s["detections"], "max": s["maxProbability"]}
        for label, s in body["labels"].items()
    }
    assert got == expected


def test_scorer_twin_and_get_status(device: EdgeDevice, demo_dir: Path) -> None:
    device.module("relay", **relay_settings(device))
    device.wait_connected("relay")
    _, url = start_scorer(device, demo_dir)
    image = (demo_dir / "images" / "green.jpg").read_bytes()

    def score() -> list[dict]:
        response = requests.post(url + "/score", data=image, headers={"Content-Type": "image/jpeg"})
        return response.json()["predictions"]

    assert len(score()) == 3
    device.hub.set_desired("scorer", {"threshold": 0.5, "maxPredictions": "two"})
    wait_for(lambda: len(score()) == 1, 20, "the desired threshold to apply")
    wait_for(lambda: device.hub.reported["scorer"].get("desiredErrors"), 20, "the rejection")
    reported = device.hub.reported["scorer"]
    assert "maxPredictions" in reported["desiredErrors"]
    assert reported["defaults"]["maxPredictions"] == 0

    def status_once_a_result_is_sent() -> tuple[int, dict] | None:
        # Results go to edgeHub from the publisher's own thread: the first may still be on
        # its way when the scoring above is done.
        status, answer = device.hub.call("scorer", "getStatus", {})
        return (status, answer) if status != 200 or answer["publisher"]["sent"] >= 1 else None

    status, answer = wait_for(status_once_a_result_is_sent, 20, "a result published")
    assert status == 200
    assert answer["providers"] == ["CPUExecutionProvider"]
    assert answer["model"]["name"] == "colors"
    assert answer["requests"]["OK"] >= 2
    assert answer["publisher"]["sent"] >= 1

    sent_before = device.hub.call("relay", "getStats", {})[1]["results"]
    device.hub.set_desired("scorer", {"publishResults": False})
    wait_for(
        lambda: device.hub.reported["scorer"]["defaults"]["publishResults"] is False,
        20,
        "publishing off",
    )
    score()
    status, stats = device.hub.call("relay", "flush", {"timeoutSeconds": 5})
    assert stats["results"] == sent_before


def test_scorer_replies_during_an_outage_counts_drops_and_recovers(
    device: EdgeDevice, demo_dir: Path
) -> None:
    device.module("relay", **relay_settings(device))
    device.wait_connected("relay")
    scorer, base = start_scorer(
        device,
        demo_dir,
        SCORER_EDGE_CALL_TIMEOUT_S="2",
        SCORER_EDGE_RECREATE_AFTER_S="2",
        SCORER_EDGE_QUEUE_SIZE="5",
    )
    url = base + "/score"
    image = (demo_dir / "images" / "red.jpg").read_bytes()

    def score() -> int:
        return requests.post(url, data=image, headers={"Content-Type": "image/jpeg"}).status_code

    device.brokers["scorer"].stop()
    assert [score() for _ in range(20)] == [200] * 20  # no reply waits for edgeHub
    device.brokers["scorer"].start()

    def status() -> dict | None:
        try:
            code, answer = device.hub.call("scorer", "getStatus", {}, timeout=3)
        except AssertionError:
            return None
        return answer if code == 200 else None

    recovered = wait_for(status, 60, f"the scorer to answer again\n{scorer.log}")
    assert recovered["publisher"]["dropped"] >= 14  # 20 results, 5 queued, 1 in flight

    before = device.hub.call("relay", "getStats", {})[1]["results"]
    for _ in range(3):
        assert score() == 200
    wait_for(
        lambda: device.hub.call("relay", "getStats", {})[1]["results"] >= before + 3,
        30,
        f"results to flow again after the outage\n{scorer.log}",
    )


def test_a_model_update_through_the_twin_is_reported_and_rolled_back_by_method(
    device: EdgeDevice, demo_dir: Path
) -> None:
    """The scorer's desired `model`: every state reported, the new version answering, a bad
    one refused while the good one serves, `rollbackModel` returning to the one before."""
    device.module("relay", **relay_settings(device))
    device.wait_connected("relay")
    _, url = start_scorer(
        device, demo_dir, SCORER_MODEL_ALLOW_HTTP="true", SCORER_MODEL_ALLOWED_ADDRESSES="127.0.0.1"
    )
    red = (demo_dir / "images" / "red.jpg").read_bytes()

    def model() -> dict:
        return device.hub.reported["scorer"].get("model", {})

    with model_server() as models:
        for version, folder in (("v2", "squares"), ("v3", "colors")):
            link, digest = models.add(f"/{version}.zip", export_zip(demo_dir / "models" / folder))
            device.hub.set_desired(
                "scorer", {"model": {"version": version, "url": link, "sha256": digest}}
            )
            wait_for(
                lambda v=version: model().get("version") == v and model().get("state") == "ready",
                60,
                f"{version} reported ready",
            )
        answer = requests.post(url + "/score", data=red, headers={"Content-Type": "image/jpeg"})
        assert answer.json()["model"]["version"] == "v3"
        assert model()["previous"] == "v2" and model()["kind"] == "classification"

        link, _ = models.add("/bad.zip", b"not a zip")
        device.hub.set_desired(
            "scorer", {"model": {"version": "v4", "url": link, "sha256": "0" * 64}}
        )
        wait_for(lambda: model().get("state") == "failed", 60, "the bad update reported failed")
        assert "SHA-256" in model()["lastError"] and model()["version"] == "v3"

    status, answer = device.hub.call("scorer", "rollbackModel", {})
    assert status == 202 and answer == {"rollingBackTo": "v2"}
    wait_for(lambda: model().get("version") == "v2", 60, "the rollback reported")
    answer = requests.post(url + "/score", data=red, headers={"Content-Type": "image/jpeg"})
    assert answer.json()["model"] == {"kind": "detection", "name": "colors", "version": "v2"}
    status, answer = device.hub.call("scorer", "getModel", {})
    assert status == 200 and answer["version"] == "v2" and answer["state"] == "ready"
