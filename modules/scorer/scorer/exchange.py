"""One HTTP/1.1 exchange on a request the event loop has already read whole: the WSGI
environ from h11's parse, the app's answer as the bytes to send.

The worker's event loop parses every request with h11 before a thread touches it. Handing
the thread that parse (instead of the raw bytes for gunicorn's parser to read again) and
sending the answer as one write, head and body together, takes a second parse, a body
reader and one of two wake-ups of the client off every request (docs/BENCHMARKS.md has the
figures). h11 keeps the connection's state: keep-alive, HTTP/1.0, HEAD, pipelined requests.
No sockets here: a parsed request in, bytes out.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import http
import io
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import h11

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SERVER = b"scorer"


@dataclasses.dataclass(frozen=True)
class Peer:
    """Where a connection comes from and arrives: what WSGI tells the app about it."""

    client: tuple[str, int]
    server: tuple[str, int]
    scheme: str  # "http" or "https"


@dataclasses.dataclass
class Answer:
    """What the app returned, before framing."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@functools.lru_cache(maxsize=1)
def _http_date(second: int) -> bytes:
    return email.utils.formatdate(second, usegmt=True).encode()


def path_and_query(target: bytes) -> tuple[str, str]:
    """The decoded path (what the app routes on) and the raw query of a request target, in
    origin form or a proxy's absolute form."""
    if not target.startswith(b"/"):  # absolute form (a proxy's) or "*"
        parts = urllib.parse.urlsplit(target)
        target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
    path, _, query = target.partition(b"?")
    return urllib.parse.unquote_to_bytes(path).decode("latin-1"), query.decode("latin-1")


def wsgi_environ(request: h11.Request, body: bytes, peer: Peer) -> dict[str, Any]:
    """PEP 3333's environ for a whole request (the body is in memory, so its length is
    known even when it came chunked)."""
    path, query = path_and_query(request.target)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": peer.server[0],
        "SERVER_PORT": str(peer.server[1]),
        "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "REMOTE_ADDR": peer.client[0],
        "REMOTE_PORT": str(peer.client[1]),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": peer.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers:
        if b"_" in name:  # as gunicorn: X_Key and X-Key would be one name in the environ
            continue
        text = value.decode("latin-1")
        if name == b"content-type":
            environ["CONTENT_TYPE"] = text
        elif name != b"content-length":  # the body's real length is set above
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def call_app(app: WsgiApp, environ: dict[str, Any]) -> Answer:
    """Run the app and collect its whole answer (every answer of the scorer is small)."""
    started: list[Answer] = []
    chunks: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and started and chunks:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [
            Answer(
                int(status.split(" ", 1)[0]),
                [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
                b"",
            )
        ]
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    answer = started[0]
    answer.body = b"".join(chunks)
    return answer


def _reason(answer: Answer) -> bytes:
    try:
        return http.HTTPStatus(answer.status).phrase.encode()
    except ValueError:
        return b""


def render(connection: h11.Connection, answer: Answer, close: bool = False) -> bytes:
    """The answer framed on this connection (h11 decides keep-alive, HEAD and HTTP/1.0);
    `close` ends the connection after it."""
    headers = [(n, v) for n, v in answer.headers if n.lower() not in (b"date", b"server")]
    headers += [(b"Date", _http_date(int(time.time()))), (b"Server", SERVER)]
    if close:
        headers.append((b"Connection", b"close"))
    response = h11.Response(status_code=answer.status, headers=headers, reason=_reason(answer))
    data = connection.send(response)
    if answer.body:  # none for HEAD or 304: werkzeug leaves it out
        data = (data or b"") + (connection.send(h11.Data(data=answer.body)) or b"")
    return (data or b"") + (connection.send(h11.EndOfMessage()) or b"")


def keeps_alive(connection: h11.Connection) -> bool:
    """Whether the connection serves another request, and if so, gets ready for it."""
    if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
        connection.start_next_cycle()
        return True
    return False
