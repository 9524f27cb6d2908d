"""`POST /url` against upstreams that trickle, redirect, refuse, and URLs built to abuse it."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.scorer_process import ScorerProcess, free_port

pytestmark = pytest.mark.reliability


class Upstream(http.server.BaseHTTPRequestHandler):
    image = b""

    def do_GET(self) -> None:
        if self.path == "/trickle.jpg":  # headers at once, then a byte every 0.3 s
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            for byte in self.image[:100]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.3)
            return
        if self.path == "/away":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/x")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream(demo_dir: Path) -> Iterator[str]:
    Upstream.image = (demo_dir / "images" / "red.jpg").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def url_scorer(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> Callable[[str], ScorerProcess]:
    """A scorer with /url on, allowed to fetch from the given `host:port` entries."""
    return lambda allowed: start_scorer(
        demo_dir / "models" / "colors",
        PROVIDERS="cpu",
        URL_ENABLED="true",
        URL_ALLOWED_HOSTS=allowed,
        URL_TIMEOUT_S="1",
    )


@pytest.fixture
def scorer(url_scorer: Callable[[str], ScorerProcess], upstream: str) -> ScorerProcess:
    return url_scorer(upstream)


def fetch(scorer: ScorerProcess, url: str) -> requests.Response:
    return requests.post(scorer.url + "/url", json={"url": url}, timeout=30)


def code_of(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_the_listed_upstream_serves(scorer: ScorerProcess, upstream: str) -> None:
    response = fetch(scorer, f"http://{upstream}/red.jpg")
    assert response.json()["predictions"][0]["tagName"] == "red"


def test_a_trickling_body_is_cut_at_the_one_total_deadline(
    scorer: ScorerProcess, upstream: str
) -> None:
    started = time.monotonic()
    response = fetch(scorer, f"http://{upstream}/trickle.jpg")
    elapsed = time.monotonic() - started
    assert code_of(response) == (502, "URL_FETCH_FAILED")
    assert "SCORER_URL_TIMEOUT_S" in response.json()["error"]["message"]
    assert elapsed < 100 * 0.3  # the whole trickle would take 30 s; the deadline is 1 s


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/a\r\nX-Injected: 1", "http:///nohost.jpg", "ftp://example.com/a.jpg"],
    ids=["crlf", "no-host", "not-http"],
)
def test_bad_urls_are_400(scorer: ScorerProcess, url: str) -> None:
    assert code_of(fetch(scorer, url)) == (400, "INVALID_ARGUMENT")


def test_the_allow_list_checks_the_port(scorer: ScorerProcess) -> None:
    response = fetch(scorer, f"http://127.0.0.1:{free_port()}/red.jpg")
    assert code_of(response) == (403, "URL_NOT_ALLOWED")


def test_a_listed_name_that_resolves_to_loopback_is_refused(
    url_scorer: Callable[[str], ScorerProcess], upstream: str
) -> None:
    port = upstream.split(":")[1]
    server = url_scorer(f"localhost:{port}")
    response = fetch(server, f"http://localhost:{port}/red.jpg")
    assert code_of(response) == (403, "URL_NOT_ALLOWED")
    assert "internal address" in response.json()["error"]["message"]


def test_a_redirect_is_checked_like_the_url(scorer: ScorerProcess, upstream: str) -> None:
    assert code_of(fetch(scorer, f"http://{upstream}/away")) == (403, "URL_NOT_ALLOWED")


def test_errors_do_not_echo_socket_error_text(
    url_scorer: Callable[[str], ScorerProcess],
) -> None:
    closed = free_port()
    server = url_scorer(f"127.0.0.1:{closed}")
    response = fetch(server, f"http://127.0.0.1:{closed}/red.jpg")
    assert code_of(response) == (502, "URL_FETCH_FAILED")
    message = response.json()["error"]["message"]
    assert message == f"cannot connect to 127.0.0.1:{closed}"
    assert "Errno" not in message and "refused" not in message.lower()
