"""Beyond the in-flight budget a request is refused at once, never queued; health never waits."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.http_answers import responses
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


def test_thousands_of_requests_sent_ahead_beyond_the_budget_are_each_refused_in_order(
    start_scorer: Callable[..., ScorerProcess], slow_model_dir: Path
) -> None:
    """One client pipelines 2,000 requests while the only slot is taken: each gets its 429,
    in order, on the same connection, and the worker lives on (they were once answered
    recursively: past Python's recursion limit that ended the event loop)."""
    server = start_scorer(slow_model_dir, PROVIDERS="cpu", MAX_INFLIGHT="1")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 10, 200)).save(buffer, "PNG")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(
            requests.post,
            server.url + "/score",
            data=buffer.getvalue(),
            headers={"Content-Type": "image/png"},
            timeout=120,
        )
        deadline = time.monotonic() + 30  # until the slow request holds the slot
        while "scorer_inflight_requests 1.0" not in requests.get(server.url + "/metrics").text:
            assert time.monotonic() < deadline and not held.done()
            time.sleep(0.05)
        one = (
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1\r\n\r\nx"
        )
        last = one.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            received = pool.submit(read_until_closed, sock)
            sock.sendall(one * 1999 + last)
            answers = responses(received.result(), 2000)
        assert held.result().status_code == 200
    assert [head.status_code for head, _ in answers] == [429] * 2000
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_the_admin_api_answers_while_every_slot_is_scoring(
    start_scorer: Callable[..., ScorerProcess], slow_model_dir: Path
) -> None:
    """The loop's gate counted every POST as scoring: under full load
    `POST /admin/model/rollback`, when an operator needs it most, got 429."""
    key = "admin-key-0123456789abcdef"
    server = start_scorer(
        slow_model_dir, PROVIDERS="cpu", MAX_INFLIGHT="2", THREADS="6", API_KEYS=key
    )
    auth = {"Authorization": f"Bearer {key}"}
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, "PNG")

    def post(_: int) -> int:
        return requests.post(
            server.url + "/score",
            data=buffer.getvalue(),
            headers={"Content-Type": "image/png", **auth},
            timeout=60,
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        burst = [pool.submit(post, i) for i in range(CLIENTS * 2)]
        time.sleep(0.2)
        rollback = requests.post(server.url + "/admin/model/rollback", headers=auth, timeout=60)
        status = requests.get(server.url + "/admin/model", headers=auth, timeout=60)
        codes = {f.result() for f in burst}
    assert codes == {200, 429}  # the slots were all taken meanwhile
    assert rollback.status_code == 400  # answered: there is no previous version
    assert rollback.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert status.status_code == 200 and status.json()["state"] == "ready"
