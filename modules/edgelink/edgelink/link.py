"""One IoT Edge module client, kept working: the link both modules use to reach edgeHub.

The SDK's calls can block without end (a send in flight across a dropped link, `get_twin`,
reported patches while connected), so each runs in a worker thread with a time limit.
Worse, its MQTT library (paho-mqtt 1.6) can lose its network thread to an `SSLEOFError` when
the broker goes away mid-write; the client then never notices, never reconnects and never
receives again. So:

- handlers are set before `connect` (setting them subscribes; inputs may arrive at once);
- every call is time-limited, and every failure of the link counts against it; a call that
  fails because of what it was given (`ValueError`, `TypeError`) does not;
- the SDK's own reconnecting is off: a client that lost its connection is replaced at once
  (`check`, every second), so there is only ever one client trying to connect under the
  module's identity; with it on, clients abandoned while edgeHub hung kept reconnecting and
  taking the connection from each other once it answered again;
- past `recreate_after_s` of failures, or as soon as paho's network thread is seen dead, the
  client is replaced too: the previous client is always shut down before a new one is made,
  no new connect starts while an abandoned one is still pending, and a connect that outlives
  its time limit shuts down the client it made;
- calls run on daemon threads, so a hung SDK call neither blocks its caller past the time
  limit nor keeps the process from exiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from azure.iot.device import IoTHubModuleClient

log = logging.getLogger(__name__)

# A failure of what the call was given, not of the link: never a reason to reconnect.
CALLER_ERRORS = (ValueError, TypeError)


class CallTimeout(TimeoutError):
    """An SDK call did not return in time; the link is treated as broken."""


def mqtt_transport(client: IoTHubModuleClient) -> Any:
    """The SDK's MQTT transport inside its pipeline (a private part: None if not found)."""
    stage = getattr(getattr(client, "_mqtt_pipeline", None), "_pipeline", None)
    while stage is not None and getattr(stage, "transport", None) is None:
        stage = getattr(stage, "next", None)
    return getattr(stage, "transport", None)


def _network_thread_down(client: IoTHubModuleClient) -> bool:
    """True when paho's network thread is not running (never started, ended, or cleaned up):
    nothing the client waits for (a CONNACK, a PUBACK) can arrive. False when it cannot tell."""
    paho = getattr(mqtt_transport(client), "_mqtt_client", None)
    if paho is None:
        return False
    thread = getattr(paho, "_thread", None)
    return thread is None or not thread.is_alive()


def network_thread_dead(client: IoTHubModuleClient) -> bool:
    """True when the SDK believes it is connected but paho's network thread is not running."""
    return bool(client.connected) and _network_thread_down(client)


class _Call:
    """One SDK call on a daemon thread: a hung SDK can neither block the caller past its
    time limit nor keep the process from exiting (executor threads are joined at exit)."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        worker = threading.Thread(
            target=self._run, args=(function, args), name="edge-sdk", daemon=True
        )
        worker.start()

    def _run(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value = function(*args)
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits for it
            self._error = error
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float) -> Any:
        if not self._done.wait(timeout):
            raise CallTimeout(f"no answer within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self._value


class EdgeLink:
    """The module's one `IoTHubModuleClient`, created from the IoT Edge environment."""

    def __init__(
        self,
        configure: Callable[[IoTHubModuleClient], None],
        call_timeout_s: float = 10.0,
        recreate_after_s: float = 60.0,
    ) -> None:
        self.configure = configure  # sets the handlers, before connect
        self.call_timeout_s = call_timeout_s
        self.recreate_after_s = recreate_after_s
        self._pending_connect: _Call | None = None
        self._connecting: IoTHubModuleClient | None = None  # the client of the pending connect
        self._connect_started = 0.0
        self._client: IoTHubModuleClient | None = None
        self._broken_since: float | None = None
        self._lock = threading.Lock()
        self._replacing = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._client is not None

    @property
    def healthy(self) -> bool:
        """Open, and its last call did not fail."""
        return self._client is not None and self._broken_since is None

    # --- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """A new client: the previous one shut down first, handlers set, then connected."""
        self.close()
        if self._pending_connect is not None and not self._pending_connect.done():
            stuck = self._connecting
            pending_for = time.monotonic() - self._connect_started
            lost = stuck is not None and _network_thread_down(stuck)
            if pending_for < (self.call_timeout_s if lost else self.recreate_after_s):
                self._count_failure()
                raise ConnectionError("an earlier connect to edgeHub has not returned yet")
            # Past its time limit with no network thread (it ended mid-connect, e.g. on an
            # input that could not be stored), or hung past `recreate_after_s`: give up on it.
            # Should it still finish, it shuts its own client down (`abandoned`).
            log.warning("an earlier connect never returned; shutting that client down")
            if stuck is not None:
                _Call(stuck.shutdown)
        abandoned = False

        def create_and_connect() -> None:
            client = IoTHubModuleClient.create_from_edge_environment(connection_retry=False)
            self.configure(client)
            self._connecting = client
            client.connect()
            with self._lock:
                if not abandoned:
                    self._client = client
                    return
            log.warning("a connect finished after its time limit; shutting that client down")
            client.shutdown()

        self._connect_started = time.monotonic()
        self._connecting = None  # until this connect has made its client: never judge an old one
        connect = self._pending_connect = _Call(create_and_connect)
        try:
            connect.result(self.call_timeout_s)
        except CallTimeout:
            with self._lock:
                abandoned = True
            self._count_failure()
            raise CallTimeout(f"connect took longer than {self.call_timeout_s:g} s") from None
        except Exception:
            self._count_failure()
            raise
        self._broken_since = None
        log.info("connected to edgeHub")

    def close(self) -> None:
        """Shut the client down, without waiting for ever on the SDK."""
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        try:
            _Call(client.shutdown).result(self.call_timeout_s)
        except Exception as error:  # noqa: BLE001 - shutting down: log and move on
            log.warning("client shutdown did not complete: %s", error)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """`client.<method>(*args)` with a time limit; a failure counts against the link."""
        client = self._client
        if client is None:
            self._count_failure()
            raise ConnectionError("not connected to edgeHub")
        limit = timeout or self.call_timeout_s
        try:
            result = _Call(getattr(client, method), *args).result(limit)
        except CallTimeout:
            self._count_failure()
            raise CallTimeout(f"{method} took longer than {limit:g} s") from None
        except CALLER_ERRORS:
            raise
        except Exception:
            self._count_failure()
            raise
        self._broken_since = None
        return result

    def check(self) -> None:
        """Replace the client at once if it lost its connection (it does not reconnect by
        itself) or paho's network thread is dead. Call it every second."""
        client = self._client
        if client is None:
            return
        if not client.connected:
            self._replace("the connection to edgeHub was lost")
        elif network_thread_dead(client):
            self._replace("the MQTT network thread has ended")

    def _count_failure(self) -> None:
        """Past `recreate_after_s` of failures, replace the client."""
        now = time.monotonic()
        if self._broken_since is None:
            self._broken_since = now
        elif now - self._broken_since > self.recreate_after_s:
            self._replace(f"the link has failed for {now - self._broken_since:.0f} s")

    def _replace(self, why: str) -> None:
        if not self._replacing.acquire(blocking=False):
            return  # another thread is replacing it
        try:
            log.warning("%s: recreating the client", why)
            self._broken_since = None
            self.open()
        except Exception as error:  # noqa: BLE001 - the next call or check tries again
            log.warning("recreating the client failed: %s", error)
        finally:
            self._replacing.release()
