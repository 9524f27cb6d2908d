"""The relay's link to edgeHub: the only file importing `azure.iot.device`.

The SDK's calls can block without end (a send in flight across a dropped link, `get_twin`,
reported patches while connected), so each runs in a worker thread with a timeout. Worse, the
SDK's MQTT library (paho-mqtt 1.6) lets an `ssl.SSLEOFError` kill its network thread when the
broker goes away mid-write: the client then never notices the disconnect, never reconnects and
never receives again. So every failed or timed-out call counts against the link, and when it
stays broken past `recreate_after_s` the client is shut down and created afresh (the periodic
twin report doubles as the heartbeat when nothing else is sent).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from azure.iot.device import IoTHubModuleClient, Message, MethodResponse

from .policy import Outgoing

log = logging.getLogger(__name__)

MethodHandler = Callable[[str, Any], tuple[int, Any]]


class CallTimeout(TimeoutError):
    """An SDK call did not return in time; the link is treated as broken."""


def mqtt_transport(client: IoTHubModuleClient) -> Any:
    """The SDK's MQTT transport inside its pipeline (a private part: None if not found)."""
    stage = getattr(getattr(client, "_mqtt_pipeline", None), "_pipeline", None)
    while stage is not None and getattr(stage, "transport", None) is None:
        stage = getattr(stage, "next", None)
    return getattr(stage, "transport", None)


def network_thread_dead(client: IoTHubModuleClient) -> bool:
    """True when the SDK believes it is connected but paho's network thread has ended.

    paho-mqtt 1.6 can lose that thread to an SSLEOFError when the broker goes away mid-write;
    the SDK then never notices the broken link and every call hangs. Seeing it lets the link
    be recreated at once instead of after a minute of failed calls. False when it cannot tell.
    """
    paho = getattr(mqtt_transport(client), "_mqtt_client", None)
    if paho is None or not client.connected:
        return False
    thread = getattr(paho, "_thread", None)
    return thread is None or not thread.is_alive()


def _install_durable_receipt(
    client: IoTHubModuleClient, keep: Callable[[str, bytes], None]
) -> bool:
    """Make `keep(message_id, payload)` run before the MQTT PUBACK of every input message.

    The SDK acknowledges an input to the broker as soon as it has queued it internally, before
    our handler runs; a `kill -9` in between would lose the result. Its MQTT transport calls
    `on_mqtt_message_received_handler` synchronously before paho sends the PUBACK, so wrapping
    that one handler stores each input first. `keep` must be quick and durable.
    Returns False (and the relay runs without it) if this SDK version is shaped differently.
    """
    transport = mqtt_transport(client)
    original = getattr(transport, "on_mqtt_message_received_handler", None)
    if transport is None or original is None:
        log.warning("durable receipt unavailable in this SDK version; kill -9 may lose inputs")
        return False

    def receive(topic: str, payload: bytes) -> None:
        if "/inputs/" in topic:
            properties = urllib.parse.parse_qs(topic.rsplit("/", 1)[-1])
            message_id = properties.get("$.mid", [""])[0]
            if message_id:
                keep(message_id, payload)
        original(topic, payload)

    transport.on_mqtt_message_received_handler = receive
    return True


class HubLink:
    """One module client with timeouts, reconnect-by-recreate, and handlers set before connect."""

    def __init__(
        self,
        input_name: str,
        output_name: str,
        on_input: Callable[[bytes, str], None],
        on_desired: Callable[[dict[str, Any]], None],
        on_method: MethodHandler,
        keep_input: Callable[[str, bytes], None],
        call_timeout_s: float = 10.0,
        send_timeout_s: float = 15.0,
        recreate_after_s: float = 60.0,
        connection_retry_s: int = 10,
    ) -> None:
        self.input_name = input_name
        self.output_name = output_name
        self.on_input = on_input
        self.on_desired = on_desired
        self.on_method = on_method
        self.keep_input = keep_input
        self.call_timeout_s = call_timeout_s
        self.send_timeout_s = send_timeout_s
        self.recreate_after_s = recreate_after_s
        self.connection_retry_s = connection_retry_s
        self._client: IoTHubModuleClient | None = None
        self._calls: concurrent.futures.ThreadPoolExecutor | None = None
        self._broken_since: float | None = None
        self._lock = threading.Lock()
        self._recreating = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create the client from the IoT Edge environment, set handlers, connect."""
        with self._lock:
            self._calls = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="sdk")
        self._call(self._create_and_connect, self.call_timeout_s)
        log.info("connected to edgeHub")

    def _create_and_connect(self) -> None:
        client = IoTHubModuleClient.create_from_edge_environment(
            connection_retry_interval=self.connection_retry_s
        )
        # Before the handlers: setting them subscribes, and inputs may arrive at once.
        _install_durable_receipt(client, self.keep_input)
        client.on_message_received = self._message
        client.on_twin_desired_properties_patch_received = self.on_desired
        client.on_method_request_received = self._method
        client.connect()
        self._client = client

    def close(self) -> None:
        """Shut the client down without waiting forever for a hung SDK."""
        with self._lock:
            client, calls = self._client, self._calls
            self._client = self._calls = None
        if client is not None and calls is not None:
            try:
                calls.submit(client.shutdown).result(self.call_timeout_s)
            except Exception as error:  # noqa: BLE001 - shutting down: log and move on
                log.warning("client shutdown did not complete: %s", error)
            calls.shutdown(wait=False, cancel_futures=True)

    def check(self) -> None:
        """Recreate the client at once if its network thread is dead (called every second)."""
        client = self._client
        if client is None or not network_thread_dead(client):
            return
        if not self._recreating.acquire(blocking=False):
            return
        try:
            log.warning("the MQTT network thread has ended: recreating the client now")
            self.close()
            self.open()
            self._broken_since = None
        except Exception as error:  # noqa: BLE001 - the next check or call tries again
            log.warning("recreating the client failed: %s", error)
        finally:
            self._recreating.release()

    def _recreate_if_stuck(self) -> None:
        """Count a failure; past `recreate_after_s` of failures, replace the client."""
        if self._broken_since is None:
            self._broken_since = time.monotonic()
            return
        broken_for = time.monotonic() - self._broken_since
        if broken_for <= self.recreate_after_s or not self._recreating.acquire(blocking=False):
            return
        try:
            log.warning("edgeHub link broken for %.0f s: recreating the client", broken_for)
            self.close()
            self.open()
            self._broken_since = None
        finally:
            self._recreating.release()

    def _call(self, function: Callable[..., Any], timeout: float, *args: Any) -> Any:
        """Run an SDK call with a time limit; every failure counts against the link."""
        calls = self._calls
        if calls is None:
            self._recreate_if_stuck()
            raise ConnectionError("not connected")
        future = calls.submit(function, *args)
        try:
            result = future.result(timeout)
        except concurrent.futures.TimeoutError:
            self._recreate_if_stuck()
            raise CallTimeout(f"{function.__name__} took longer than {timeout:g} s") from None
        except Exception:
            self._recreate_if_stuck()
            raise
        self._broken_since = None
        return result

    def _sdk(self, name: str) -> Callable[..., Any]:
        """A method of the current client, looked up when the call runs (it may be replaced)."""

        def call(*args: Any) -> Any:
            client = self._client
            if client is None:
                raise ConnectionError("not connected")
            return getattr(client, name)(*args)

        call.__name__ = name
        return call

    # --- what the relay calls -----------------------------------------------------------------

    def send(self, message: Outgoing) -> None:
        """Send to the output; raises on failure so the message stays spooled."""
        sdk_message = Message(  # type: ignore[no-untyped-call]  # the SDK has no hints
            message.body,
            message_id=message.message_id,
            content_encoding="utf-8",
            content_type="application/json",
        )
        sdk_message.custom_properties.update(message.properties)
        send = self._sdk("send_message_to_output")
        self._call(send, self.send_timeout_s, sdk_message, self.output_name)

    def desired(self) -> dict[str, Any]:
        """The whole desired section of the twin."""
        twin: dict[str, Any] = self._call(self._sdk("get_twin"), self.call_timeout_s)
        desired: dict[str, Any] = twin.get("desired", {})
        return desired

    def report(self, patch: dict[str, Any]) -> None:
        self._call(self._sdk("patch_twin_reported_properties"), self.call_timeout_s, patch)

    # --- SDK handlers -------------------------------------------------------------------------

    def _message(self, message: Any) -> None:
        if message.input_name != self.input_name:
            log.warning("message on unexpected input %r ignored", message.input_name)
            return
        data = message.data if isinstance(message.data, bytes) else str(message.data).encode()
        self.on_input(data, message.message_id or "")

    def _method(self, request: Any) -> None:
        status, payload = self.on_method(request.name, request.payload)
        response = MethodResponse.create_from_method_request(request, status, payload)
        self._call(self._sdk("send_method_response"), self.call_timeout_s, response)
