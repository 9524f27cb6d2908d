"""Beyond the in-flight budget a request is refused at once, never queued; health never waits."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.scorer_process import ScorerProcess

pytestmark = pytest.mark.reliability

CLIENTS = 8  # four times the budget of 2


def test_a_burst_beyond_capacity_gets_only_200_and_immediate_429(
    start_scorer: Callable[..., ScorerProcess], slow_model_dir: Path
) -> None:
    server = start_scorer(slow_model_dir, PROVIDERS="cpu", MAX_INFLIGHT="2", THREADS="6")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, "PNG")
    body = buffer.getvalue()

    def post(_: int) -> tuple[int, float]:
        started = time.perf_counter()
        response = requests.post(
            server.url + "/score", data=body, headers={"Content-Type": "image/png"}, timeout=60
        )
        return response.status_code, time.perf_counter() - started

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        burst = [pool.submit(post, i) for i in range(CLIENTS * 2)]
        time.sleep(0.2)
        asked = time.perf_counter()
        health = requests.get(server.url + "/healthz", timeout=60)
        health_seconds = time.perf_counter() - asked
        metrics = requests.get(server.url + "/metrics", timeout=60)
        answers = [f.result() for f in burst]
    assert health.status_code == 200 and metrics.status_code == 200
    codes = {code for code, _ in answers}
    assert codes == {200, 429}, answers
    refused = [seconds for code, seconds in answers if code == 429]
    scored = [seconds for code, seconds in answers if code == 200]
    # answered at once: every refusal, and the health check, before the fastest scored request
    assert max(refused) < min(scored) and health_seconds < min(scored)
    count = f'scorer_requests_total{{code="OVERLOADED"}} {float(len(refused))}'
    assert count in requests.get(server.url + "/metrics").text


def test_an_inference_past_its_timeout_stops_the_scorer_with_a_failing_status(
    start_scorer: Callable[..., ScorerProcess], slow_model_dir: Path
) -> None:
    """A model made to run long stands for a hung GPU: the watchdog ends the process."""
    server = start_scorer(slow_model_dir, PROVIDERS="cpu", INFERENCE_TIMEOUT_S="0.2")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(buffer, "PNG")
    with contextlib.suppress(requests.ConnectionError):  # the process may go before it answers
        requests.post(
            server.url + "/score",
            data=buffer.getvalue(),
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
    assert server.proc.wait(30) != 0
    assert "over SCORER_INFERENCE_TIMEOUT_S=0.2" in server.log
    assert "stopping the scorer so that it is restarted" in server.log
