"""Is a request complete yet? Incremental HTTP/1.1 framing with h11, before any thread runs it.

The worker feeds every byte a client sends into one `RequestFrame` per request, in its event
loop. Only a request whose headers and whole body have arrived goes to a thread, so a slow,
stalled or hostile client holds no thread and no scoring slot. Framing errors and limits
are decided here, with the scorer's own error codes: a body announced or sent beyond the
limit is 413 at once (chunked bodies included, never cut and scored), broken chunking and
malformed headers 400, oversized headers 431. No sockets here: bytes in, a verdict out.
"""

from __future__ import annotations

import dataclasses
import enum

import h11

from .errors import Code

# h11's hint for a framing error -> our code
STATUS_CODES = {
    400: Code.MALFORMED_REQUEST,
    413: Code.BODY_TOO_LARGE,
    414: Code.MALFORMED_REQUEST,
    431: Code.HEADERS_TOO_LARGE,
}


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
    """Tracks one request's framing; `feed` returns how far it got."""

    def __init__(self, max_body_bytes: int, max_header_bytes: int = 16 * 1024) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self._parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._body_bytes = 0
        self.received = 0
        self.rejection: Rejection | None = None
        self.expects_continue = False  # the client waits for "100 Continue" before its body
        self.method = b""

    def feed(self, data: bytes) -> Progress:
        """Take the next bytes of the request."""
        self.received += len(data)
        self._parser.receive_data(data)
        while True:
            try:
                event = self._parser.next_event()
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
                self._body_bytes += len(event.data)
                if self._body_bytes > self.max_body_bytes:
                    return self._too_large()
            elif isinstance(event, h11.EndOfMessage):
                return Progress.COMPLETE
            else:  # ConnectionClosed or PAUSED: nothing more will come for this request
                return self._reject(Code.MALFORMED_REQUEST, "the request ended before it was whole")

    def _check_headers(self, request: h11.Request) -> Progress | None:
        self.method = request.method
        headers = dict(request.headers)
        length = headers.get(b"content-length")
        if length is not None and int(length) > self.max_body_bytes:
            return self._too_large()
        self.expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        return None

    def _why(self, error: h11.RemoteProtocolError) -> str:
        if error.error_status_hint == 431:
            return f"request headers are larger than {self.max_header_bytes} bytes"
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
