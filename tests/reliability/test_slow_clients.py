"""Slow, stalled and malformed HTTP clients never hold scoring capacity, and each gets its code."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scorer.client import GrpcClient

from tests.http_answers import responses
from tests.scorer_process import ScorerProcess

pytestmark = pytest.mark.reliability

MAX_BODY = 200_000
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def server(start_scorer: Callable[..., ScorerProcess], demo_dir: Path) -> ScorerProcess:
    return start_scorer(
        demo_dir / "models" / "colors",
        PROVIDERS="cpu",
        MAX_BODY_BYTES=str(MAX_BODY),
        CLIENT_TIMEOUT_S="2",
    )


def connect(server: ScorerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """Status, headers and body of one HTTP/1.1 response (the server closes after errors)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


@pytest.fixture
def patient_server(start_scorer: Callable[..., ScorerProcess], demo_dir: Path) -> ScorerProcess:
    """A client timeout long enough that the hostile connections stay for the whole test."""
    return start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu", CLIENT_TIMEOUT_S="120")


@pytest.fixture
def hostile_connections(patient_server: ScorerProcess) -> Iterator[list[socket.socket]]:
    """200 slowloris connections (headers never finished) and 200 stalled bodies."""
    server = patient_server
    with ExitStack() as stack:
        held = []
        for i in range(400):
            sock = stack.enter_context(connect(server))
            if i % 2:
                sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                sock.sendall(
                    b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                    b"Content-Length: 150000\r\n\r\n\xff\xd8\xff"
                )
            held.append(sock)
        yield held


def test_slowloris_and_stalled_bodies_leave_scoring_health_and_grpc_working(
    patient_server: ScorerProcess, hostile_connections: list[socket.socket], demo_dir: Path
) -> None:
    server = patient_server
    image = (demo_dir / "images" / "red.jpg").read_bytes()
    headers = {"Content-Type": "image/jpeg"}
    for _ in range(10):
        response = requests.post(server.url + "/score", data=image, headers=headers, timeout=5)
        assert response.status_code == 200
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    assert requests.get(server.url + "/metrics", timeout=5).status_code == 200
    client = GrpcClient(server.grpc_target)
    try:
        assert client.score(image)["predictions"][0]["tagName"] == "red"
    finally:
        client.close()
    with grpc.insecure_channel(server.grpc_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
    for sock in hostile_connections:  # still held open by the clients, still unanswered
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)


def test_a_stalled_body_gets_408_in_json_after_the_client_timeout(server: ScorerProcess) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
        status, headers, body = answer(sock)
        assert (status, error_code(body)) == (408, "REQUEST_TIMEOUT")
        assert "SCORER_CLIENT_TIMEOUT_S" in json.loads(body)["error"]["message"]
        assert headers["content-type"] == "application/json"
        assert time.monotonic() - started < 10
    assert (
        'scorer_requests_total{code="REQUEST_TIMEOUT"} 1.0'
        in requests.get(server.url + "/metrics").text
    )


def test_a_chunked_body_over_the_limit_is_413_never_cut_and_scored(server: ScorerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"\xff" * 50_000
        try:
            for _ in range(6):  # 300 kB against a 200 kB limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server may answer and stop reading before the client is done
        status, _, body = answer(sock)
    assert (status, error_code(body)) == (413, "BODY_TOO_LARGE")
    assert "SCORER_MAX_BODY_BYTES" in json.loads(body)["error"]["message"]


def test_an_announced_body_over_the_limit_is_refused_before_it_is_sent(
    server: ScorerProcess,
) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        status, _, body = answer(sock)  # no "100 Continue": the answer is final
    assert (status, error_code(body)) == (413, "BODY_TOO_LARGE")


def test_expect_100_continue_gets_continue_then_the_result(
    server: ScorerProcess, demo_dir: Path
) -> None:
    image = (demo_dir / "images" / "green.jpg").read_bytes()
    with connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(image)
        )
        status, _, _ = answer(sock)
        assert status == 100
        sock.sendall(image)
        status, _, body = answer(sock)
        while status == 100:  # gunicorn may repeat the interim answer; HTTP allows it
            status, _, body = answer(sock)
    assert status == 200 and json.loads(body)["predictions"][0]["tagName"] == "green"


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
            "MALFORMED_REQUEST",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
            431,
            "HEADERS_TOO_LARGE",
        ),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI_TOO_LONG"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400, "MALFORMED_REQUEST"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "MALFORMED_REQUEST"),  # gRPC, wrong port
        # methods are case-sensitive: `post` was served as POST, past the loop's 429 gate
        (b"post /score HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 400, "MALFORMED_REQUEST"),
        (b"GET /healthz HTTP/1.1\rHost: x\rX: y\r\n\r\n", 400, "MALFORMED_REQUEST"),  # was 431
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "MALFORMED_REQUEST"),  # was 401
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=999999-\r\n\r\n",
            416,
            "RANGE_NOT_SATISFIABLE",
        ),
    ],
    ids=[
        "bad-chunk-size",
        "huge-headers",
        "long-uri",
        "bad-header-name",
        "http2-preface",
        "lower-case-method",
        "bare-cr",
        "options-asterisk",
        "unsatisfiable-range",
    ],
)
def test_malformed_requests_get_their_code_in_json(
    server: ScorerProcess, request_bytes: bytes, status: int, code: str
) -> None:
    with connect(server) as sock:
        sock.sendall(request_bytes)
        got, headers, body = answer(sock)
    assert (got, error_code(body)) == (status, code)
    assert headers["content-type"] == "application/json"


def test_a_request_with_both_length_and_chunking_is_answered_then_closed(
    server: ScorerProcess,
) -> None:
    """RFC 9112 §6.1: a proxy framing by Content-Length would read the rest as a second
    request (the classic desync), so the connection must end after the answer."""
    with connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        status, headers, _ = answer(sock)
        assert (status, headers["connection"]) == (400, "close")  # an empty body: EMPTY_BODY
        sock.settimeout(5)
        assert sock.recv(65536) == b""  # closed: the smuggled request was never answered


def test_keep_alive_connections_serve_request_after_request(
    server: ScorerProcess, demo_dir: Path
) -> None:
    session = requests.Session()
    image = (demo_dir / "images" / "blue.jpg").read_bytes()
    for _ in range(5):
        response = session.post(
            server.url + "/score", data=image, headers={"Content-Type": "image/jpeg"}, timeout=5
        )
        assert response.json()["predictions"][0]["tagName"] == "blue"
    time.sleep(0.5)  # an idle kept-alive connection waits in the poller, not in a thread
    assert session.get(server.url + "/healthz", timeout=5).status_code == 200


def test_control_characters_in_a_path_do_not_forge_log_lines(server: ScorerProcess) -> None:
    requests.get(server.url + "/model%0aFAKE%20200%20OK", timeout=5)
    deadline = time.monotonic() + 10  # the log line travels through a pipe to this process
    while "/model\\x0aFAKE 200 OK" not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "/model\\x0aFAKE 200 OK" in server.log
    assert "\nFAKE 200 OK" not in server.log


def test_requests_sent_ahead_on_one_connection_are_answered_in_order(
    server: ScorerProcess, demo_dir: Path
) -> None:
    images = [(demo_dir / "images" / f"{c}.jpg").read_bytes() for c in ("red", "blue")]
    pipelined = b"".join(
        [
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: %d\r\n\r\n" % len(images[0]) + images[0],
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(images[1]) + images[1],
        ]
    )
    with connect(server) as sock:
        sock.sendall(pipelined)  # all three at once: the server reads past the first
        data = b""
        while chunk := sock.recv(65536):  # the last one asked to close
            data += chunk
    (first, red), (second, _), (third, blue) = responses(data)
    assert [head.status_code for head in (first, second, third)] == [200, 200, 200]
    assert json.loads(red)["predictions"][0]["tagName"] == "red"
    assert json.loads(blue)["predictions"][0]["tagName"] == "blue"


def test_an_http_1_0_client_gets_its_answer_and_the_connection_closes(
    server: ScorerProcess, demo_dir: Path
) -> None:
    image = (demo_dir / "images" / "green.jpg").read_bytes()
    with connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.0\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: %d\r\n\r\n" % len(image) + image
        )
        status, _, body = answer(sock)
        assert sock.recv(1) == b""  # closed after the answer, as HTTP/1.0 expects
    assert status == 200 and json.loads(body)["predictions"][0]["tagName"] == "green"


def test_bytes_held_by_requests_still_arriving_are_bounded_and_refusals_counted(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    """Five stalled clients hold 950 KB of a 1 MB budget: the next one to send that much
    is refused (429, counted), one waiting to send as much is told before it sends (no
    "100 Continue"); once the stalled ones time out, requests go through again."""
    server = start_scorer(
        demo_dir / "models" / "colors",
        PROVIDERS="cpu",
        MAX_BODY_BYTES=str(MAX_BODY),
        READ_BUDGET_BYTES="1000000",
        CLIENT_TIMEOUT_S="2",
    )
    head = (
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: %d\r\n\r\n" % MAX_BODY
    )
    with ExitStack() as stack:
        for _ in range(5):
            stalled = stack.enter_context(connect(server))
            stalled.sendall(head + b"\xff" * 190_000)  # most of a body, then nothing
        deadline = time.monotonic() + 10  # until the server has read what they sent
        while gauge(server, "scorer_http_receiving_bytes") < 5 * 190_000:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert gauge(server, "scorer_http_receiving_bytes") <= 1_000_000
        assert gauge(server, "scorer_http_connections") >= 6  # and this scrape's own
        with connect(server) as sock:
            sock.sendall(head + b"\xff" * 190_000)
            status, headers, body = answer(sock)
        assert (status, error_code(body)) == (429, "OVERLOADED")
        assert "SCORER_READ_BUDGET_BYTES" in json.loads(body)["error"]["message"]
        assert headers["retry-after"] == "1"
        with connect(server) as sock:  # a client waiting to send its body is told before
            sock.sendall(head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
            status, _, body = answer(sock)
        assert (status, error_code(body)) == (429, "OVERLOADED")
        deadline = time.monotonic() + 10  # past the client timeout they are ended (408)
        while gauge(server, "scorer_http_receiving_bytes") > 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        image = (demo_dir / "images" / "red.jpg").read_bytes()
        scored = requests.post(
            server.url + "/score", data=image, headers={"Content-Type": "image/jpeg"}, timeout=5
        )
        assert scored.json()["predictions"][0]["tagName"] == "red"
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert 'scorer_requests_total{code="OVERLOADED"} 2.0' in metrics
    assert 'scorer_requests_total{code="REQUEST_TIMEOUT"} 5.0' in metrics


def gauge(server: ScorerProcess, name: str) -> float:
    """One unlabelled metric's value, as /metrics shows it now."""
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    return float(re.search(rf"^{name} (\S+)$", metrics, re.M)[1])  # type: ignore[index]
