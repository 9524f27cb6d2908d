"""Is a request complete yet? Incremental HTTP/1.1 framing with h11, before any thread runs it.

The worker feeds every byte a client sends into one `RequestFrame` per request, in its event
loop. Only a request whose headers and whole body have arrived goes to a thread, so a slow,
stalled or hostile client holds no thread and no scoring slot. Framing errors and limits
are decided here, with the scorer's own error codes: a body announced or sent beyond the
limit is 413 at once (chunked bodies included, never cut and scored), broken chunking and
malformed headers 400, oversized headers 431, a request line over gunicorn's limit 414.
The frame keeps the parsed request and its body for the thread (`exchange`), and works on
the connection's one h11 state, so bytes a client sent ahead (pipelining) start the next
request. No sockets here: bytes in, a verdict out.
"""

from __future__ import annotations

import dataclasses
import enum
import re

import h11

from .errors import Code

# h11's hint for a framing error -> our code
STATUS_CODES = {
    400: Code.MALFORMED_REQUEST,
    413: Code.BODY_TOO_LARGE,
    414: Code.MALFORMED_REQUEST,
    431: Code.HEADERS_TOO_LARGE,
}
MAX_REQUEST_LINE = 4094  # bytes, as gunicorn's limit_request_line
MAX_HEADER_BYTES = 16 * 1024  # the whole head; h11 checks it only while incomplete
MAX_FIELD_BYTES = 8190  # one header line, and at most MAX_FIELDS of them, as gunicorn's limits
MAX_FIELDS = 100
# A CR not followed by LF in the head: RFC 9112 §2.2 lets a server refuse it as 400
BARE_CR = re.compile(rb"\r(?!\n)")
HEAD_END = re.compile(rb"\r?\n\r?\n")


def http_connection() -> h11.Connection:
    """The parsing and framing state of one client connection, across its requests."""
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)


class Progress(enum.Enum):
    """Where a request stands after the bytes fed so far."""

    NEED_MORE = "need_more"
    COMPLETE = "complete"
    REJECTED = "rejected"


@dataclasses.dataclass(frozen=True)
class Rejection:
    """Why a request is answered from the event loop without running the app."""

    code: Code
    message: str


class RequestFrame:
    """Tracks one request's framing on a connection; `feed` returns how far it got."""

    def __init__(self, connection: h11.Connection, max_body_bytes: int) -> None:
        self.connection = connection
        self.max_body_bytes = max_body_bytes
        self.body = bytearray()
        self.received = 0
        self.rejection: Rejection | None = None
        self.expects_continue = False  # the client waits for "100 Continue" before its body
        self.announced = 0  # the body's Content-Length (0 when chunked or none)
        self.request: h11.Request | None = None
        # The answer must end the connection: the request had both Content-Length and
        # Transfer-Encoding (RFC 9112 §6.1), so a proxy may have framed it otherwise.
        self.must_close = False
        self._head = b""  # the head as far as it arrived, while it has not ended

    @property
    def method(self) -> bytes:
        return self.request.method if self.request is not None else b""

    def feed(self, data: bytes = b"") -> Progress:
        """Take the next bytes of the request (none: see whether those already buffered,
        sent ahead of time, make it whole)."""
        if data:
            self.received += len(data)
            if self.request is None and self._bare_cr(data):
                return self._reject(
                    Code.MALFORMED_REQUEST, "malformed HTTP request: a CR without LF in the head"
                )
            self.connection.receive_data(data)
        while True:
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as error:
                hint = error.error_status_hint
                code = STATUS_CODES.get(hint, Code.MALFORMED_REQUEST)
                return self._reject(code, self._why(error))
            if event is h11.NEED_DATA:
                return Progress.NEED_MORE
            if isinstance(event, h11.Request):
                refused = self._check_headers(event)
                if refused is not None:
                    return refused
            elif isinstance(event, h11.Data):
                if len(self.body) + len(event.data) > self.max_body_bytes:
                    return self._too_large()
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Progress.COMPLETE
            else:  # ConnectionClosed or PAUSED: nothing more will come for this request
                return self._reject(Code.MALFORMED_REQUEST, "the request ended before it was whole")

    def _bare_cr(self, data: bytes) -> bool:
        """Whether the head so far has a CR without its LF (kept across reads: a CR may end
        one read and its LF start the next)."""
        head = self._head + data
        end = HEAD_END.search(head)
        if end is not None:
            head = head[: end.end()]
        if BARE_CR.search(head[:-1] if head.endswith(b"\r") else head):
            return True
        self._head = head[-(MAX_HEADER_BYTES + 1) :]
        return False

    def _check_headers(self, request: h11.Request) -> Progress | None:
        self.request = request
        if request.method != request.method.upper():
            return self._reject(
                Code.MALFORMED_REQUEST,
                f"method {request.method.decode('ascii', 'backslashreplace')!r}: methods are "
                "case-sensitive (RFC 9110 §9.1); send it in capitals",
            )
        if request.target == b"*":
            return self._reject(
                Code.MALFORMED_REQUEST, "asterisk-form (OPTIONS *) is not served here"
            )
        if request.http_version not in (b"1.0", b"1.1"):  # e.g. a gRPC client on this port
            return self._reject(
                Code.MALFORMED_REQUEST,
                f"HTTP/{request.http_version.decode()} is not spoken here: this port serves "
                "HTTP/1.1 (gRPC has its own port, SCORER_GRPC_PORT)",
            )
        line = len(request.method) + len(request.target) + len(b" HTTP/1.1")
        if line > MAX_REQUEST_LINE:
            return self._reject(
                Code.URI_TOO_LONG, f"the request line is longer than {MAX_REQUEST_LINE} bytes"
            )
        sizes = [len(name) + len(value) + 4 for name, value in request.headers]
        if len(sizes) > MAX_FIELDS or sum(sizes) + line > MAX_HEADER_BYTES:
            return self._reject(
                Code.HEADERS_TOO_LARGE,
                f"the request has more than {MAX_FIELDS} headers or {MAX_HEADER_BYTES} bytes "
                "of them",
            )
        if max(sizes, default=0) > MAX_FIELD_BYTES:
            return self._reject(
                Code.HEADERS_TOO_LARGE, f"a request header is longer than {MAX_FIELD_BYTES} bytes"
            )
        headers = dict(request.headers)
        self.must_close = b"content-length" in headers and b"transfer-encoding" in headers
        self.announced = int(headers.get(b"content-length", 0))
        if self.announced > self.max_body_bytes:
            return self._too_large()
        self.expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        return None

    def _why(self, error: h11.RemoteProtocolError) -> str:
        if error.error_status_hint == 431:
            return f"request headers are larger than {MAX_HEADER_BYTES} bytes"
        # h11 quotes the offending bytes: keep the message short and printable
        text = str(error)[:120].encode("ascii", "backslashreplace").decode()
        return f"malformed HTTP request: {text}"

    def _too_large(self) -> Progress:
        return self._reject(
            Code.BODY_TOO_LARGE,
            f"request body is larger than the {self.max_body_bytes}-byte limit "
            "(SCORER_MAX_BODY_BYTES)",
        )

    def _reject(self, code: Code, message: str) -> Progress:
        self.rejection = Rejection(code, message)
        return Progress.REJECTED
