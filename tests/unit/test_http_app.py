"""The Flask app around a scorer that is not ready yet (no socket: Flask's test client)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from scorer.core import Code, Scorer, ScorerConfig
from scorer.http import HTTP_STATUS, create_app
from scorer.model import inspect_export


def test_every_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(Code)


def test_before_warm_up_readyz_and_score_answer_503_not_ready(demo_dir: Path) -> None:
    scorer = Scorer(inspect_export(demo_dir / "models" / "colors"), ScorerConfig("c", "1"))
    client = create_app(scorer).test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["error"]["code"] == "NOT_READY"
    assert ready.headers["Retry-After"] == "1"
    body = (demo_dir / "images" / "red.jpg").read_bytes()
    scored = client.post("/score", data=body, content_type="image/jpeg")
    assert scored.status_code == 503 and scored.json["error"]["code"] == "NOT_READY"
    assert client.get("/model").json["ready"] is False


def test_successes_are_logged_at_debug_and_failures_always(
    demo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = create_app(
        Scorer(inspect_export(demo_dir / "models" / "colors"), ScorerConfig("colors", "1"))
    ).test_client()
    with caplog.at_level(logging.INFO, logger="scorer.http"):
        assert client.get("/healthz").status_code == 200
        assert client.post("/score").status_code == 503  # not loaded: NOT_READY
    assert [r.getMessage().split()[:3] for r in caplog.records] == [["POST", "/score", "503"]]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="scorer.http"):
        client.get("/healthz")
    assert [r.getMessage().split()[:3] for r in caplog.records] == [["GET", "/healthz", "200"]]
