"""The relay's link to edgeHub: the only file importing `azure.iot.device`.

The SDK's calls can block without end (a send in flight across a dropped link, `get_twin`,
reported patches while connected), so each runs in a worker thread with a timeout; when the
link stays broken past `recreate_after_s` the client is shut down and created afresh.
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


def _install_durable_receipt(client: IoTHubModuleClient, keep: Callable[[str, bytes], None]):
    """Make `keep(message_id, payload)` run before the MQTT PUBACK of every input message.

    The SDK acknowledges an input to the broker as soon as it has queued it internally, before
    our handler runs; a `kill -9` in between would lose the result. Its MQTT transport calls
    `on_mqtt_message_received_handler` synchronously before paho sends the PUBACK, so wrapping
    that one handler stores each input first. `keep` must be quick and durable.
    Returns False (and the relay runs without it) if this SDK version is shaped differently.
    """
    stage = getattr(getattr(client, "_mqtt_pipeline", None), "_pipeline", None)
    while stage is not None and getattr(stage, "transport", None) is None:
        stage = getattr(stage, "next", None)
    transport = getattr(stage, "transport", None)
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

    # --- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create the client from the IoT Edge environment, set handlers, connect."""
        with self._lock:
            client = IoTHubModuleClient.create_from_edge_environment(
                connection_retry_interval=self.connection_retry_s
            )
            client.on_message_received = self._message
            client.on_twin_desired_properties_patch_received = self.on_desired
            client.on_method_request_received = self._method
            _install_durable_receipt(client, self.keep_input)
            self._client = client
            self._calls = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="sdk")
        self._call(client.connect, self.call_timeout_s)
        log.info("connected to edgeHub")

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

    def _recreate_if_stuck(self) -> None:
        if self._broken_since is None:
            self._broken_since = time.monotonic()
        elif time.monotonic() - self._broken_since > self.recreate_after_s:
            log.warning(
                "edgeHub link broken for %.0f s: recreating the client",
                time.monotonic() - self._broken_since,
            )
            self._broken_since = None
            self.close()
            self.open()

    def _call(self, function: Callable[..., Any], timeout: float, *args: Any) -> Any:
        calls = self._calls
        if calls is None:
            raise ConnectionError("no client")
        future = calls.submit(function, *args)
        try:
            result = future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise CallTimeout(f"{function.__name__} took longer than {timeout:g} s") from None
        return result

    # --- what the relay calls -----------------------------------------------------------------

    def send(self, message: Outgoing) -> None:
        """Send to the output; raises on failure so the message stays spooled."""
        client = self._client
        if client is None:
            self._recreate_if_stuck()
            raise ConnectionError("not connected")
        sdk_message = Message(
            message.body,
            message_id=message.message_id,
            content_encoding="utf-8",
            content_type="application/json",
        )
        sdk_message.custom_properties.update(message.properties)
        try:
            self._call(
                client.send_message_to_output, self.send_timeout_s, sdk_message, self.output_name
            )
        except Exception:
            self._recreate_if_stuck()
            raise
        self._broken_since = None

    def desired(self) -> dict[str, Any]:
        """The whole desired section of the twin."""
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        return self._call(client.get_twin, self.call_timeout_s).get("desired", {})

    def report(self, patch: dict[str, Any]) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        self._call(client.patch_twin_reported_properties, self.call_timeout_s, patch)

    # --- SDK handlers -------------------------------------------------------------------------

    def _message(self, message: Any) -> None:
        if message.input_name != self.input_name:
            log.warning("message on unexpected input %r ignored", message.input_name)
            return
        data = message.data if isinstance(message.data, bytes) else str(message.data).encode()
        self.on_input(data, message.message_id or "")

    def _method(self, request: Any) -> None:
        status, payload = self.on_method(request.name, request.payload)
        client = self._client
        if client is not None:
            response = MethodResponse.create_from_method_request(request, status, payload)
            self._call(client.send_method_response, self.call_timeout_s, response)
