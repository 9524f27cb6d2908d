"""Model updates on a running scorer under load, and after a restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.model_server import ModelServer, export_zip, model_server
from tests.scorer_process import ScorerProcess
from tests.swap_driver import AUTH, KEY, swap_under_load


@pytest.fixture
def models() -> Iterator[ModelServer]:
    with model_server() as running:
        yield running


def _updatable(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path, store: Path
) -> ScorerProcess:
    return start_scorer(
        demo_dir / "models" / "colors",
        PROVIDERS="cpu",
        API_KEYS=KEY,
        MODEL_ALLOW_HTTP="true",
        MODEL_ALLOWED_ADDRESSES="127.0.0.1",
        MODEL_STORE=str(store),
    )


def test_fifty_swaps_while_eight_clients_score_fail_no_request(
    start_scorer: Callable[..., ScorerProcess],
    demo_dir: Path,
    models: ModelServer,
    tmp_path: Path,
) -> None:
    server = _updatable(start_scorer, demo_dir, tmp_path / "store")
    report = swap_under_load(
        server,
        models,
        (demo_dir / "models" / "colors", demo_dir / "models" / "squares"),
        (demo_dir / "images" / "red.jpg").read_bytes(),
        swaps=50,
    )
    assert report.answers > 100
    assert dict(report.statuses) == {200: report.answers}  # no 4xx, no 5xx, none refused
    assert report.wrong_version == []
    # Each swap releases the session it replaced: memory after the 50th is that after the
    # 10th within 64 MB (allocator noise), not 40 sessions more.
    assert report.rss_mb[-1] - report.rss_mb[9] < 64, report.rss_mb
    assert "Traceback" not in server.log


def test_a_restart_serves_the_promoted_version_and_http_updates_need_keys(
    start_scorer: Callable[..., ScorerProcess],
    demo_dir: Path,
    models: ModelServer,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    server = _updatable(start_scorer, demo_dir, store)
    url, digest = models.add("/squares.zip", export_zip(demo_dir / "models" / "squares"))
    wanted = {"version": "2026-11-30", "url": url, "sha256": digest}
    assert requests.post(server.url + "/admin/model", json=wanted).status_code == 401
    bad = requests.post(server.url + "/admin/model", json={"version": "x"}, headers=AUTH)
    assert bad.status_code == 400 and "url" in bad.json()["error"]["message"]
    assert requests.post(server.url + "/admin/model", json=wanted, headers=AUTH).status_code == 202
    for _ in range(300):
        status = requests.get(server.url + "/admin/model", headers=AUTH).json()
        if status["state"] == "ready" and status["version"] == "2026-11-30":
            break
        time.sleep(0.05)
    assert requests.get(server.url + "/model", headers=AUTH).json()["kind"] == "detection"
    server.stop()

    again = _updatable(start_scorer, demo_dir, store)
    info = requests.get(again.url + "/model", headers=AUTH).json()
    assert info["version"] == "2026-11-30" and info["kind"] == "detection"

    keyless = start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu")
    refused = requests.post(keyless.url + "/admin/model", json=wanted)
    assert refused.status_code == 404 and "SCORER_API_KEYS" in refused.json()["error"]["message"]
