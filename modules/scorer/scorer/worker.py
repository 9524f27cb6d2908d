"""gunicorn's threaded worker, made to read every request whole before a thread touches it.

gthread hands a connection to a pool thread as soon as it becomes readable, and the thread
then blocks reading headers and body at the client's pace: sixteen slow or stalled clients
held every thread. Here the event loop reads instead, without blocking, feeding the bytes
to a `RequestFrame`; only a complete request is handed to a thread, which finds it already
buffered. Reading has a deadline (`SCORER_CLIENT_TIMEOUT_S`, answered 408), bodies over the
limit are refused as soon as they are announced or exceed it (413), broken framing is 400,
and connections that send nothing cost a file descriptor, not a thread. gunicorn's own
rejections are answered in the scorer's JSON error shape. It also stops the gRPC server
gracefully on SIGTERM and the IoT Edge publisher at exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import http
import json
import logging
import selectors
import socket
import ssl
import time
from functools import partial
from typing import Any

from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine, ParseException
from gunicorn.workers.gthread import TConn, ThreadWorker

from .errors import Code, error_document
from .http_errors import HTTP_STATUS, printable
from .request_frame import Progress, RequestFrame

log = logging.getLogger("scorer.http")

READ_CHUNK = 64 * 1024
# "try again when readable", for plain sockets and for TLS
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
DRAIN_S = 2.0  # after refusing a request, read and discard what the client still sends
DRAIN_BYTES = 1 << 20


def error_response(code: Code, message: str, close: bool = True) -> bytes:
    """A whole HTTP/1.1 error response in the JSON shape, closing the connection or not."""
    body = json.dumps(error_document(code, message)).encode()
    status = HTTP_STATUS[code]
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        + ("Retry-After: 1\r\n" if code in (Code.OVERLOADED, Code.NOT_READY) else "")
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode("latin-1") + body


class ReplaySocket:
    """A client socket whose first `recv`s return what the event loop already read."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending = bytearray()
        self.handshaken = False

    def replay(self, data: bytes) -> None:
        self._pending += data

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self._pending:
            chunk = bytes(self._pending[:size])
            del self._pending[:size]
            return chunk
        return self._sock.recv(size, flags)

    def forget(self) -> None:
        """Drop what was read for a request answered without the app (kept-alive 429)."""
        self._pending.clear()

    def raw_recv(self, size: int) -> bytes:
        """Read from the socket itself: under TLS, finish the handshake first, and take
        everything already decrypted (the poller does not see what TLS buffered)."""
        if isinstance(self._sock, ssl.SSLSocket):
            if not self.handshaken:
                self._sock.do_handshake()  # raises "want read" until the client has sent enough
                self.handshaken = True
            data = self._sock.recv(size)
            while data and self._sock.pending():
                data += self._sock.recv(self._sock.pending())
            return data
        return self._sock.recv(size)

    def fileno(self) -> int:
        return self._sock.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@dataclasses.dataclass
class Reading:
    """A request being read in the event loop."""

    conn: TConn
    frame: RequestFrame
    deadline: float
    continued: bool = False


@dataclasses.dataclass
class Draining:
    """A refused connection: its answer is sent; what the client still sends is discarded."""

    conn: TConn
    deadline: float
    discarded: int = 0


class ScorerWorker(ThreadWorker):
    """gthread with whole-request reading in the event loop, deadlines and JSON rejections."""

    def init_process(self) -> None:
        self.reading: dict[TConn, Reading] = {}
        self.draining: dict[TConn, Draining] = {}
        # Connections whose POST (every POST route scores) is with a thread: at most
        # SCORER_MAX_INFLIGHT, so a request beyond it is refused here, not queued.
        self.scoring: set[TConn] = set()
        tls = self.app.tls
        self.tls_context = tls.server_context() if tls is not None else None  # follows renewals
        super().init_process()  # loads the app, then runs the loop

    # --- reading requests in the event loop ---------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, client = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        if self.tls_context is not None:  # the handshake happens in the loop, like the reading
            sock = self.tls_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        conn = TConn(self.cfg, ReplaySocket(sock), client, listener.getsockname())
        self.start_reading(conn)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection sends its next request: read it here, not in a thread."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.start_reading(conn)

    def start_reading(self, conn: TConn) -> None:
        limits = self.app.settings
        reading = Reading(
            conn, RequestFrame(limits.max_body_bytes), time.monotonic() + limits.client_timeout_s
        )
        self.reading[conn] = reading
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_request_bytes, reading)
        )

    def on_request_bytes(self, reading: Reading, _sock: Any) -> None:
        conn = reading.conn
        try:
            data = conn.sock.raw_recv(READ_CHUNK)
        except WOULD_BLOCK:
            return
        except OSError:  # a reset, or a failed TLS handshake
            data = b""
        if not data:  # the client went away before its request was whole
            self.stop_reading(reading)
            self.drop(conn)
            return
        conn.sock.replay(data)
        progress = reading.frame.feed(data)
        if progress is Progress.NEED_MORE:
            if reading.frame.expects_continue and not reading.continued:
                reading.continued = True
                self.send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self.stop_reading(reading)
        rejection = reading.frame.rejection
        if rejection is not None:
            self.refuse(conn, rejection.code, rejection.message)
            return
        if reading.frame.method == b"POST":
            budget = self.app.settings.max_inflight
            if len(self.scoring) >= budget:
                self.overloaded(conn, budget)
                return
            self.scoring.add(conn)
        conn.data_ready = True  # the whole request is buffered: the thread will not wait
        self.enqueue_req(conn)

    def overloaded(self, conn: TConn, budget: int) -> None:
        """429 at once, and the connection kept: a busy client need not reconnect to retry."""
        self.app.scorer.metrics.error(Code.OVERLOADED.value)
        conn.sock.forget()
        message = f"{budget} requests are being scored; retry shortly (SCORER_MAX_INFLIGHT)"
        self.send_quietly(conn, error_response(Code.OVERLOADED, message, close=False))
        self.start_reading(conn)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        self.scoring.discard(conn)
        super().finish_request(conn, fs)

    def stop_reading(self, reading: Reading) -> None:
        del self.reading[reading.conn]
        self.poller.unregister(reading.conn.sock)

    def drop(self, conn: TConn) -> None:
        self.nr_conns -= 1
        conn.close()

    @staticmethod
    def send_quietly(conn: TConn, data: bytes) -> None:
        """Best effort on a non-blocking socket: a small answer fits in the send buffer."""
        with contextlib.suppress(OSError):
            conn.sock.send(data)

    def refuse(self, conn: TConn, code: Code, message: str) -> None:
        """Answer from the event loop, then drain briefly so the client can read the answer."""
        self.app.scorer.metrics.error(code.value)
        log.info("refused a request from %s: %s %s", conn.client, code.value, message)
        self.send_quietly(conn, error_response(code, message))
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.drop(conn)
            return
        draining = Draining(conn, time.monotonic() + DRAIN_S)
        self.draining[conn] = draining
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_drain, draining))

    def on_drain(self, draining: Draining, _sock: Any) -> None:
        try:
            data = draining.conn.sock.raw_recv(READ_CHUNK)
        except WOULD_BLOCK:
            return
        except OSError:
            data = b""
        draining.discarded += len(data)
        if not data or draining.discarded > DRAIN_BYTES:
            self.stop_draining(draining)

    def stop_draining(self, draining: Draining) -> None:
        del self.draining[draining.conn]
        self.poller.unregister(draining.conn.sock)
        self.drop(draining.conn)

    def murder_pending(self) -> None:
        """Also end requests not whole by their deadline (408), and finished drains."""
        super().murder_pending()
        now = time.monotonic()
        for reading in [r for r in self.reading.values() if r.deadline <= now]:
            self.stop_reading(reading)
            if reading.frame.received:
                timeout = self.app.settings.client_timeout_s
                self.refuse(
                    reading.conn,
                    Code.REQUEST_TIMEOUT,
                    f"the request was not received in full within {timeout:g} s "
                    "(SCORER_CLIENT_TIMEOUT_S)",
                )
            else:  # connected and never asked anything: nothing to answer
                self.drop(reading.conn)
        for draining in [d for d in self.draining.values() if d.deadline <= now]:
            self.stop_draining(draining)

    # --- gunicorn's own rejections, in the JSON shape -------------------------------------

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if not isinstance(exc, ParseException):
            super().handle_error(req, client, addr, exc)
            return
        if isinstance(exc, LimitRequestLine):
            code = Code.URI_TOO_LONG
        elif isinstance(exc, LimitRequestHeaders):
            code = Code.HEADERS_TOO_LARGE
        else:
            code = Code.MALFORMED_REQUEST
        message = printable(str(exc))[:200]
        self.app.scorer.metrics.error(code.value)
        log.info("refused a request from %s: %s %s", addr, code.value, message)
        with contextlib.suppress(OSError):
            client.sendall(error_response(code, message))

    # --- graceful stop of the gRPC server and the publisher -------------------------------

    def handle_exit(self, sig: int, frame: Any) -> None:
        grpc_server = getattr(self.app, "grpc_server", None)
        if grpc_server is not None:
            # Refuse new calls now; in-flight ones get the grace period to finish.
            self.grpc_stopped = grpc_server.stop(self.cfg.graceful_timeout)
        super().handle_exit(sig, frame)

    def run(self) -> None:
        super().run()
        stopped = getattr(self, "grpc_stopped", None)
        if stopped is not None:
            stopped.wait(self.cfg.graceful_timeout)
        publisher = getattr(self.app, "edge_publisher", None)
        if publisher is not None:
            publisher.stop()
