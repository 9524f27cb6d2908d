"""Requests as the worker's loop reads them (`RequestFrame`), answered through `exchange` by a
real Flask app, and the bytes a client gets back parsed by h11's client side. No sockets."""

from __future__ import annotations

import json

import pytest
from flask import Flask, Response, request
from scorer.errors import Code
from scorer.exchange import Peer, call_app, keeps_alive, render, wsgi_environ
from scorer.request_frame import (
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    MAX_REQUEST_LINE,
    Progress,
    RequestFrame,
    http_connection,
)

from tests.http_answers import responses

PEER = Peer(("10.0.0.7", 50123), ("0.0.0.0", 8080), "http")


def echo_app() -> Flask:
    """Says back what it was asked, as the scorer's app would see it."""
    app = Flask("echo")

    @app.route("/echo/<path:rest>", methods=["GET", "POST", "HEAD"])
    def echo(rest: str) -> Response:
        return Response(
            json.dumps(
                {
                    "path": request.path,
                    "rest": rest,
                    "args": request.args.to_dict(flat=False),
                    "body": request.get_data().decode("latin-1"),
                    "type": request.content_type,
                    "forwarded": request.headers.get("X-Many"),
                    "remote": request.remote_addr,
                    "scheme": request.scheme,
                }
            ),
            mimetype="application/json",
        )

    @app.get("/stream")
    def stream() -> Response:
        return Response((part for part in (b"one ", b"two ", b"three")), mimetype="text/plain")

    return app


def head_fields(data: bytes) -> list[tuple[bytes, bytes]]:
    lines = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, v in (line.split(b":", 1) for line in lines)]


def exchange(app: Flask, raw: bytes, max_body: int = 1000) -> tuple[bytes, bool]:
    """Feed `raw`, answer the request: the bytes sent and whether the connection is kept."""
    connection = http_connection()
    frame = RequestFrame(connection, max_body)
    assert frame.feed(raw) is Progress.COMPLETE, frame.rejection
    assert frame.request is not None
    answer = call_app(app.wsgi_app, wsgi_environ(frame.request, bytes(frame.body), PEER))
    data = render(connection, answer)
    return data, keeps_alive(connection)


def test_the_app_sees_path_query_body_and_headers_as_sent() -> None:
    raw = (
        b"POST /echo/a%20b/c?x=1&x=2&y=%C3%A9 HTTP/1.1\r\nHost: scorer\r\n"
        b"Content-Type: image/jpeg\r\nX-Many: one\r\nX-Many: two\r\nContent-Length: 5\r\n\r\nhello"
    )
    data, kept = exchange(echo_app(), raw)
    [(head, body)] = responses(data)
    seen = json.loads(body)
    assert head.status_code == 200 and kept
    assert seen["path"] == "/echo/a b/c" and seen["rest"] == "a b/c"
    assert seen["args"] == {"x": ["1", "2"], "y": ["é"]}
    assert seen["body"] == "hello" and seen["type"] == "image/jpeg"
    assert seen["forwarded"] == "one,two"
    assert (seen["remote"], seen["scheme"]) == ("10.0.0.7", "http")
    assert dict(head.headers)[b"content-type"] == b"application/json"
    assert b"date" in dict(head.headers)


def test_a_header_with_an_underscore_cannot_pass_for_one_with_a_dash() -> None:
    raw = b"GET /echo/x HTTP/1.1\r\nHost: s\r\nX_Many: forged\r\n\r\n"
    data, _ = exchange(echo_app(), raw)
    assert json.loads(responses(data)[0][1])["forwarded"] is None


def test_a_chunked_body_reaches_the_app_whole() -> None:
    raw = (
        b"POST /echo/x HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    data, _ = exchange(echo_app(), raw)
    assert json.loads(responses(data)[0][1])["body"] == "abcdefg"


def test_head_gets_the_length_and_no_body() -> None:
    data, kept = exchange(echo_app(), b"HEAD /echo/x HTTP/1.1\r\nHost: s\r\n\r\n")
    assert kept and data.endswith(b"\r\n\r\n")
    assert int(dict(head_fields(data))[b"content-length"]) > 0


def test_http_1_0_and_connection_close_end_the_connection() -> None:
    _, kept = exchange(echo_app(), b"GET /echo/x HTTP/1.0\r\n\r\n")
    assert not kept
    _, kept = exchange(echo_app(), b"GET /echo/x HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
    assert not kept


def test_a_streamed_answer_is_sent_in_one_piece() -> None:
    data, kept = exchange(echo_app(), b"GET /stream HTTP/1.1\r\nHost: s\r\n\r\n")
    [(head, body)] = responses(data)
    assert head.status_code == 200 and body == b"one two three" and kept


def test_requests_sent_ahead_are_answered_in_order_on_one_connection() -> None:
    connection = http_connection()
    raw = b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: s\r\n\r\n" % n for n in range(3))
    sent = b""
    frame = RequestFrame(connection, 1000)
    assert frame.feed(raw) is Progress.COMPLETE
    for n in range(3):
        assert frame.request is not None
        answer = call_app(echo_app().wsgi_app, wsgi_environ(frame.request, b"", PEER))
        sent += render(connection, answer)
        assert keeps_alive(connection)
        frame = RequestFrame(connection, 1000)
        assert frame.feed() is (Progress.COMPLETE if n < 2 else Progress.NEED_MORE)
    assert [json.loads(body)["rest"] for _, body in responses(sent)] == ["0", "1", "2"]


def test_close_is_announced_and_ends_the_connection() -> None:
    connection = http_connection()
    frame = RequestFrame(connection, 1000)
    frame.feed(b"GET /echo/x HTTP/1.1\r\nHost: s\r\n\r\n")
    assert frame.request is not None
    answer = call_app(echo_app().wsgi_app, wsgi_environ(frame.request, b"", PEER))
    data = render(connection, answer, close=True)
    assert (b"connection", b"close") in head_fields(data)
    assert not keeps_alive(connection)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nHost: x\r\n\r\n", Code.URI_TOO_LONG),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_FIELD_BYTES + b"\r\n\r\n",
            Code.HEADERS_TOO_LARGE,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * MAX_FIELDS + b"\r\n",
            Code.HEADERS_TOO_LARGE,
        ),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n", Code.BODY_TOO_LARGE),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n"
            + b"a" * 1001,
            Code.BODY_TOO_LARGE,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", Code.MALFORMED_REQUEST),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Code.MALFORMED_REQUEST),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            Code.MALFORMED_REQUEST,
        ),
    ],
    ids=[
        "long-line",
        "long-header",
        "many-headers",
        "announced-body",
        "chunked-body",
        "name",
        "http2-preface",
        "chunk",
    ],
)
def test_requests_beyond_the_limits_are_refused_with_their_code(raw: bytes, code: Code) -> None:
    frame = RequestFrame(http_connection(), 1000)
    assert frame.feed(raw) is Progress.REJECTED
    assert frame.rejection is not None and frame.rejection.code is code


def test_a_request_arriving_byte_by_byte_completes_once() -> None:
    raw = b"POST /echo/x HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n\r\nabc"
    frame = RequestFrame(http_connection(), 1000)
    progress = [frame.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert progress[-1] is Progress.COMPLETE
    assert set(progress[:-1]) == {Progress.NEED_MORE}
    assert bytes(frame.body) == b"abc" and frame.received == len(raw)
