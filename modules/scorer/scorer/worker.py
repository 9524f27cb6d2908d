"""gunicorn's threaded worker, made to read every request whole before a thread touches it.

gthread hands a connection to a pool thread as soon as it becomes readable, and the thread
then blocks reading headers and body at the client's pace: sixteen slow or stalled clients
held every thread. Here the event loop reads instead, without blocking, feeding the bytes
to a `RequestFrame`; only a complete request is handed to a thread, which finds it already
parsed and buffered, runs the app on h11's parse and sends the answer in one write
(`exchange`; gunicorn's parser and response writer are not used). Reading has a deadline
(`SCORER_CLIENT_TIMEOUT_S`, answered 408), bodies over the limit are refused as soon as they
are announced or exceed it (413), broken framing is 400, every refusal is in the scorer's
JSON error shape, and connections that send nothing cost a file descriptor, not a thread.
Connections cannot be hoarded: at the connection limit the longest-idle one is closed to
admit a new one, one client address holds at most a share of the table, and an answer the
client does not read goes back to the event loop (a buffer, never a thread, and a bounded
total of unsent bytes).
gunicorn still runs the process: the master, signals, graceful stop, the listeners and the
thread pool. The worker also stops the gRPC server gracefully on SIGTERM and the IoT Edge
publisher at exit.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import logging
import selectors
import socket
import ssl
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from .errors import Code, error_document
from .exchange import Answer, Peer, call_app, keeps_alive, path_and_query, render, wsgi_environ
from .heartbeat import Heartbeat, status_of
from .http_errors import HTTP_STATUS, RETRY_LATER
from .request_frame import Progress, RequestFrame, http_connection

log = logging.getLogger("scorer.http")

READ_CHUNK = 64 * 1024
# "try again when readable", for plain sockets and for TLS
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
DRAIN_S = 2.0  # after a closing answer, read and discard what the client still sends
DRAIN_BYTES = 1 << 20
# accept() failing for want of a descriptor or of kernel memory: stop accepting this long
# (as asyncio does) while the open connections are served and free theirs
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_PAUSE_S = 1.0
# The kernel's send buffer of a client connection: Linux grows one to 4 MB (tcp_wmem) for a
# client that does not read, kernel memory a thousand connections would multiply; 256 KB
# is more than a plant network's bandwidth-delay product and holds any answer of ours but
# the page's largest files, whose rest the loop sends.
SEND_BUFFER_BYTES = 256 * 1024


def error_answer(code: Code, message: str) -> Answer:
    """An error in the scorer's JSON shape, as the app would answer it."""
    headers = [(b"Content-Type", b"application/json")]
    if code in RETRY_LATER:
        headers.append((b"Retry-After", b"1"))
    body = json.dumps(error_document(code, message), separators=(",", ":")) + "\n"  # as Flask's
    return Answer(HTTP_STATUS[code], headers, body.encode())


def closing_error(code: Code, message: str) -> bytes:
    """An error answer that ends the connection, framed without the connection's h11 state
    (which may be broken)."""
    return render(http_connection(), error_answer(code, message), close=True)


def send_now(sock: socket.socket, data: bytes) -> int:
    """Send what the socket takes without blocking; how many bytes went."""
    sock.setblocking(False)
    view, sent = memoryview(data), 0
    try:
        while sent < len(data):
            sent += sock.send(view[sent:])
    except WOULD_BLOCK:
        pass
    return sent


class ClientConnection(TConn):
    """A client connection with its h11 state, which lasts across its requests."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.http = http_connection()
        scheme = "https" if isinstance(sock, ssl.SSLSocket) else "http"
        self.peer = Peer(tuple(client[:2]), tuple(server[:2]), scheme)
        self.frame: RequestFrame | None = None  # the request being read or answered
        self.handshaken = False
        self.unsent = b""  # what the answering thread could not send without blocking
        self.address = self.peer.client[0]

    def receive(self, size: int) -> bytes:
        """Read what the client sent without blocking: under TLS, finish the handshake first
        (it raises "want read" until the client has sent enough), and take everything
        already decrypted (the poller does not see what TLS buffered)."""
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket):
            if not self.handshaken:
                sock.do_handshake()
                self.handshaken = True
            data = sock.recv(size)
            while data and sock.pending():
                data += sock.recv(sock.pending())
            return data
        return bytes(sock.recv(size))


@dataclasses.dataclass
class Reading:
    """A request being read in the event loop."""

    conn: ClientConnection
    deadline: float
    continued: bool = False

    @property
    def frame(self) -> RequestFrame:
        """The request's framing: the connection's current frame (the thread finds it there)."""
        assert self.conn.frame is not None
        return self.conn.frame


@dataclasses.dataclass
class Writing:
    """An answer the client has not read in full yet: sent from the loop as it reads."""

    conn: ClientConnection
    deadline: float
    keep: bool  # whether the connection serves another request once this is sent


@dataclasses.dataclass
class Draining:
    """A closing connection: its answer is sent; what the client still sends is discarded."""

    conn: ClientConnection
    deadline: float
    discarded: int = 0


class ScorerWorker(ThreadWorker):
    """gthread with whole-request reading in the event loop, deadlines, JSON refusals and
    the app run on the loop's parse.

    One turn of the loop dispatches every event `select` returned, so a connection closed by
    an earlier callback of the same turn (the longest-idle one, closed to admit a new one)
    may still have an event queued: each callback first checks that its connection is still
    in the state it was registered for."""

    def init_process(self) -> None:
        self.reading: dict[ClientConnection, Reading] = {}
        self.draining: dict[ClientConnection, Draining] = {}
        # Connections whose request to a route that scores is with a thread: at most
        # SCORER_MAX_INFLIGHT, so a request beyond it is refused here, not queued. Which
        # routes score is the app's routing (`http.scoring_routes`): the admin API, health,
        # metrics and the page never take a slot.
        self.scoring: set[ClientConnection] = set()
        # Bytes held by requests still arriving: without a bound, a thousand connections
        # each sending most of a maximal body and stalling would hold gigabytes.
        self.held = 0
        self.writing: dict[ClientConnection, Writing] = {}
        self.unsent = 0  # bytes of answers waiting for clients to read them
        # open connections by client address
        self.per_client: collections.Counter[str] = collections.Counter()
        settings = self.app.settings
        self.client_share = settings.max_client_connections or max(1, settings.max_connections // 2)
        self.accept_paused_until = 0.0
        tls = self.app.tls
        self.tls_context = tls.server_context() if tls is not None else None  # follows renewals
        self.heartbeat = Heartbeat(self.app.settings.heartbeat_path)
        self.heartbeat.stop()  # a worker before this one may have left `ready` behind
        super().init_process()  # loads the app, then runs the loop

    def load_wsgi(self) -> None:
        super().load_wsgi()
        metrics = self.app.scorer.metrics  # read when /metrics is scraped
        metrics.http_connections.set_function(lambda: self.nr_conns)
        metrics.http_receiving_bytes.set_function(lambda: self.held)
        metrics.http_unsent_bytes.set_function(lambda: self.unsent)

    def notify(self) -> None:
        """gunicorn's heartbeat to the arbiter, at every turn of the loop; ours, for the
        image's health check, goes with it."""
        super().notify()
        scorer = self.app.scorer
        if scorer is not None:
            self.heartbeat.beat(status_of(scorer.ready, scorer.failure))

    # --- reading requests in the event loop ---------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, client = listener.accept()
        except OSError as error:
            if error.errno in OUT_OF_DESCRIPTORS:
                self.pause_accepting(error)
            elif error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        if not self.make_room(str(client[0])):
            self.app.scorer.metrics.http_connections_refused.inc()
            sock.close()  # nothing to say yet: under TLS it could not even be read
            return
        self.nr_conns += 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        if self.tls_context is not None:  # the handshake happens in the loop, like the reading
            sock = self.tls_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        conn = ClientConnection(self.cfg, sock, client, listener.getsockname())
        self.per_client[conn.address] += 1
        self.start_reading(conn)

    # --- the connection table: nobody hoards it --------------------------------------------

    def make_room(self, address: str) -> bool:
        """Whether a new connection from `address` may be taken: within the address's share
        and the table, closing the longest-idle connection (of that address when it is over
        its share) to make room; False when every connection in the way is busy."""
        if self.per_client[address] >= self.client_share and not self.evict_idle(address):
            return False
        return self.nr_conns < self.worker_connections or self.evict_idle()

    def idle(self, address: str | None = None) -> ClientConnection | None:
        """The longest-idle connection (of `address`): kept alive between requests first,
        then connected without having sent a byte; None when all are busy."""
        kept: collections.deque[ClientConnection] = self.keepalived_conns
        for conn in kept:
            if address is None or conn.address == address:
                return conn
        for reading in self.reading.values():  # in the order they started
            if reading.frame.received == 0 and address in (None, reading.conn.address):
                return reading.conn
        return None

    def evict_idle(self, address: str | None = None) -> bool:
        """Close the longest-idle connection (of `address`); whether there was one."""
        conn = self.idle(address)
        if conn is None:
            return False
        if conn in self.reading:
            self.stop_reading(self.reading[conn])
        else:
            self.keepalived_conns.remove(conn)
            self.poller.unregister(conn.sock)
        self.app.scorer.metrics.http_connections_evicted.inc()
        self.drop(conn)
        return True

    def murder_keepalived(self, force: bool = False) -> None:
        """Close kept-alive connections idle for SCORER_IDLE_CONNECTION_S (all: `force`)."""
        now = time.monotonic()
        while self.keepalived_conns and (force or self.keepalived_conns[0].timeout <= now):
            conn = self.keepalived_conns.popleft()
            self.poller.unregister(conn.sock)
            self.drop(conn)

    def pause_accepting(self, error: OSError) -> None:
        """Out of descriptors: stop accepting for a moment instead of ending the worker (and
        every request in it); the connection waits in the listen queue meanwhile."""
        self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
        self.set_accept_enabled(False)
        self.app.scorer.metrics.http_accept_pauses.inc()
        log.warning(
            "cannot accept a connection (%s): not accepting for %g s",
            error.strerror,
            ACCEPT_PAUSE_S,
        )

    def set_accept_enabled(self, enabled: bool) -> None:
        """gthread's loop enables accepting whenever the table has room; here also at the
        limit while an idle connection can make room; never while a pause for want of
        descriptors lasts."""
        if not enabled and self.nr_conns >= self.worker_connections:
            enabled = self.idle() is not None
        super().set_accept_enabled(enabled and time.monotonic() >= self.accept_paused_until)

    def on_client_socket_readable(self, conn: ClientConnection, client: Any) -> None:
        """A kept-alive connection sends its next request: read it here, not in a thread."""
        if conn not in self.keepalived_conns:  # closed earlier in this turn (made room)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        reading = self.start_reading(conn)
        if reading is not None:
            self.on_request_bytes(reading, client)  # readable now: no need to wait for it

    def start_reading(self, conn: ClientConnection) -> Reading | None:
        """Read the connection's next request. Requests the client sent ahead (pipelining)
        may be whole already: each is answered or dispatched at once, one after the other
        (not recursively: a client may send thousands, each refused with 429); then there
        is nothing to read yet (None)."""
        limits = self.app.settings
        while True:
            conn.frame = RequestFrame(conn.http, limits.max_body_bytes)
            reading = Reading(conn, time.monotonic() + limits.client_timeout_s)
            if not conn.http.trailing_data[0] or reading.frame.feed() is Progress.NEED_MORE:
                break
            if not self.on_request_read(reading):
                return None
        self.reading[conn] = reading
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_request_bytes, reading)
        )
        return reading

    def on_request_bytes(self, reading: Reading, _sock: Any) -> None:
        conn = reading.conn
        if self.reading.get(conn) is not reading:  # closed earlier in this turn (made room)
            return
        try:
            data = conn.receive(READ_CHUNK)
        except WOULD_BLOCK:
            return
        except OSError:  # a reset, or a failed TLS handshake
            data = b""
        if not data:  # the client went away before its request was whole
            self.stop_reading(reading)
            self.drop(conn)
            return
        if self.held + len(data) > self.app.settings.read_budget_bytes:
            self.over_read_budget(reading)
            return
        self.held += len(data)  # and the frame counts what it was fed (`received`)
        progress = reading.frame.feed(data)
        if progress is Progress.NEED_MORE:
            if reading.frame.expects_continue and not reading.continued:
                # A client that waits before sending its body learns now if it cannot fit.
                if self.held + reading.frame.announced > self.app.settings.read_budget_bytes:
                    self.over_read_budget(reading)
                    return
                reading.continued = True
                self.send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self.stop_reading(reading)
        if self.on_request_read(reading):
            self.start_reading(reading.conn)

    def over_read_budget(self, reading: Reading) -> None:
        """429: requests still arriving hold, or with this one would hold, too much."""
        self.stop_reading(reading)
        budget = self.app.settings.read_budget_bytes
        self.refuse(
            reading.conn,
            Code.OVERLOADED,
            f"requests still arriving hold more than {budget} bytes; retry shortly "
            "(SCORER_READ_BUDGET_BYTES)",
        )

    def on_request_read(self, reading: Reading) -> bool:
        """The request is whole or refused: answer the refusal here, or hand it to a
        thread, which finds it parsed and buffered (the only hand-off of a request).
        Whether the connection's next request is to be read now (after a kept-alive 429)."""
        conn, frame = reading.conn, reading.frame
        if frame.rejection is not None:
            self.refuse(conn, frame.rejection.code, frame.rejection.message)
            return False
        assert frame.request is not None  # whole: its head was parsed
        path, _ = path_and_query(frame.request.target)
        if self.app.scores(frame.method.decode("ascii"), path):
            budget = self.app.settings.max_inflight
            if len(self.scoring) >= budget:
                return self.overloaded(conn, budget)
            self.scoring.add(conn)
        self.enqueue_req(conn)
        return False

    def overloaded(self, conn: ClientConnection, budget: int) -> bool:
        """429 at once; the connection is kept (a busy client need not reconnect to retry)
        unless the answer did not fit in its send buffer (a client that does not read)."""
        self.app.scorer.metrics.error(Code.OVERLOADED.value)
        message = f"{budget} requests are being scored; retry shortly (SCORER_MAX_INFLIGHT)"
        answer = render(conn.http, error_answer(Code.OVERLOADED, message))
        if self.send_quietly(conn, answer) and keeps_alive(conn.http):
            return True
        self.close_softly(conn)
        return False

    # --- in a thread: the app on the parsed request ---------------------------------------

    def handle(self, conn: ClientConnection) -> bool:
        """Run the app on the request the loop read and send its answer in one write;
        whether the connection serves another request."""
        frame = conn.frame
        assert frame is not None and frame.request is not None
        try:
            answer = call_app(self.wsgi, wsgi_environ(frame.request, bytes(frame.body), conn.peer))
            data = render(conn.http, answer, close=not self.alive or frame.must_close)
        except Exception:  # the app answers its own errors: this is a bug
            log.exception("cannot answer %s %s", frame.method.decode(), conn.peer.client)
            data = closing_error(Code.INTERNAL, "internal error; logged")
            conn.http = http_connection()  # this one ended in an error: never reused
        try:
            conn.unsent = data[send_now(conn.sock, data) :]  # the rest: from the loop
        except OSError:
            return False
        return self.alive and keeps_alive(conn.http)

    def finish_request(self, conn: ClientConnection, fs: Any) -> None:
        """Back on the loop: wait for the connection's next request, or close it."""
        self.scoring.discard(conn)
        try:
            keep = bool(fs.result())
        except Exception:  # `handle` answers its errors: log anything else
            log.exception("a request's thread failed")
            keep = False
        if conn.unsent:
            self.start_writing(conn, keep)
        else:
            self.after_answer(conn, keep)

    def after_answer(self, conn: ClientConnection, keep: bool) -> None:
        """The answer is sent: wait for the connection's next request, or close it."""
        if not keep:
            self.close_softly(conn)
        elif conn.http.trailing_data[0]:  # sent ahead: the poller will not see those bytes
            self.start_reading(conn)
        else:
            conn.set_timeout()
            self.keepalived_conns.append(conn)
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
            )
            if not self._accepting:  # at the limit, this idle one can make room
                self.set_accept_enabled(self.nr_conns < self.worker_connections)

    # --- answers the client does not read yet: from the loop, never a thread ---------------

    def start_writing(self, conn: ClientConnection, keep: bool) -> None:
        """Send the rest of an answer as the client reads it; a client that does not read
        within SCORER_CLIENT_TIMEOUT_S, or whose answer would take the unsent bytes past
        SCORER_SEND_BUDGET_BYTES, is closed."""
        if self.unsent + len(conn.unsent) > self.app.settings.send_budget_bytes:
            self.app.scorer.metrics.http_unread_answers_dropped.inc()
            log.info("closed %s: answers not read by their clients hold too much", conn.client)
            self.drop(conn)
            return
        self.unsent += len(conn.unsent)
        writing = Writing(conn, time.monotonic() + self.app.settings.client_timeout_s, keep)
        self.writing[conn] = writing
        self.poller.register(conn.sock, selectors.EVENT_WRITE, partial(self.on_writable, writing))

    def on_writable(self, writing: Writing, _sock: Any) -> None:
        conn = writing.conn
        if self.writing.get(conn) is not writing:  # ended earlier in this turn
            return
        try:
            sent = send_now(conn.sock, conn.unsent)
        except OSError:
            self.stop_writing(writing)
            self.drop(conn)
            return
        self.unsent -= sent
        conn.unsent = conn.unsent[sent:]
        if not conn.unsent:
            self.stop_writing(writing)
            self.after_answer(conn, writing.keep)

    def stop_writing(self, writing: Writing) -> None:
        del self.writing[writing.conn]
        self.unsent -= len(writing.conn.unsent)
        writing.conn.unsent = b""
        self.poller.unregister(writing.conn.sock)

    # --- closing -------------------------------------------------------------------------

    def stop_reading(self, reading: Reading) -> None:
        del self.reading[reading.conn]
        self.held -= reading.frame.received
        self.poller.unregister(reading.conn.sock)

    def drop(self, conn: ClientConnection) -> None:
        self.nr_conns -= 1
        self.per_client[conn.address] -= 1
        if not self.per_client[conn.address]:
            del self.per_client[conn.address]
        conn.close()

    @staticmethod
    def send_quietly(conn: ClientConnection, data: bytes) -> bool:
        """Best effort on a non-blocking socket (a small answer fits in the send buffer of
        a client that reads); whether all of it went."""
        try:
            return send_now(conn.sock, data) == len(data)
        except OSError:
            return False

    def refuse(self, conn: ClientConnection, code: Code, message: str) -> None:
        """Answer from the event loop, then close."""
        self.app.scorer.metrics.error(code.value)
        log.info("refused a request from %s: %s %s", conn.client, code.value, message)
        self.send_quietly(conn, closing_error(code, message))
        self.close_softly(conn)

    def close_softly(self, conn: ClientConnection) -> None:
        """Half-close, then read and discard briefly what the client still sends, so that
        the kernel does not reset the connection before the client read its answer."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.drop(conn)
            return
        draining = Draining(conn, time.monotonic() + DRAIN_S)
        self.draining[conn] = draining
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_drain, draining))

    def on_drain(self, draining: Draining, _sock: Any) -> None:
        if self.draining.get(draining.conn) is not draining:  # ended earlier in this turn
            return
        try:
            data = draining.conn.receive(READ_CHUNK)
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
        for writing in [w for w in self.writing.values() if w.deadline <= now]:
            self.app.scorer.metrics.http_unread_answers_dropped.inc()
            self.stop_writing(writing)
            self.drop(writing.conn)

    # --- graceful stop of the gRPC server and the publisher -------------------------------

    def handle_exit(self, sig: int, frame: Any) -> None:
        grpc_server = getattr(self.app, "grpc_server", None)
        if grpc_server is not None:
            # Refuse new calls now; in-flight ones get the grace period to finish.
            self.grpc_stopped = grpc_server.stop(self.cfg.graceful_timeout)
        super().handle_exit(sig, frame)

    def run(self) -> None:
        super().run()
        self.heartbeat.stop()
        stopped = getattr(self, "grpc_stopped", None)
        if stopped is not None:
            stopped.wait(self.cfg.graceful_timeout)
        publisher = getattr(self.app, "edge_publisher", None)
        if publisher is not None:
            publisher.stop()
