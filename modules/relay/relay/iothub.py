"""The relay's side of its edgeHub link: its input, output, twin and methods, and the
durable receipt of inputs. The client's lifecycle (time limits, recreation, one client at a
time) is the shared `edgelink.EdgeLink`; the Azure SDK is imported only here and there."""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from azure.iot.device import IoTHubModuleClient, Message, MethodResponse
from edgelink import EdgeLink, mqtt_transport

from .policy import Outgoing
from .spool import StorageFull

log = logging.getLogger(__name__)

MethodHandler = Callable[[str, Any], tuple[int, Any]]


class InputNotAcknowledged(BaseException):
    """An input that could not be stored must not be acknowledged, or it would be lost.

    MQTT 3.1.1 has no negative acknowledgement: the only way to keep edgeHub holding a QoS 1
    message is to never send its PUBACK. The SDK and paho catch `Exception` around the
    handler and then acknowledge, so this derives from `BaseException`: it ends paho's network
    thread before the PUBACK, `EdgeLink.check` replaces the client within a second, and edgeHub
    redelivers the message to the new one (the session is persistent) until it can be stored.
    """


class RefusalBackoff:
    """How long to wait before reconnecting after refusing an input (a full volume).

    Each refusal ends the client (see `InputNotAcknowledged`) and edgeHub redelivers the same
    input to the next one at once, so reconnecting at once would churn connections every
    second while the volume stays full. The wait doubles with each refusal in a row, up to
    `max_s`, so the forwarder still gets connected windows to send (and free space) in; an
    input stored again resets it."""

    def __init__(self, initial_s: float = 1.0, max_s: float = 16.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._delay = 0.0
        self._until = 0.0
        self._lock = threading.Lock()

    def refused(self) -> float:
        """Count a refusal; the seconds to wait before the next connect."""
        with self._lock:
            self._delay = min(self.max_s, self._delay * 2 or self.initial_s)
            self._until = time.monotonic() + self._delay
            return self._delay

    def stored(self) -> None:
        with self._lock:
            self._delay = 0.0
            self._until = 0.0

    def waiting(self) -> bool:
        """True while a reconnect should wait."""
        return time.monotonic() < self._until


def _install_durable_receipt(
    client: IoTHubModuleClient, keep: Callable[[str, bytes], None], backoff: RefusalBackoff
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
                try:
                    keep(message_id, payload)
                except StorageFull as error:
                    wait = backoff.refused()
                    log.error(
                        "input %s not acknowledged, edgeHub keeps it (reconnecting in %.0f s): %s",
                        message_id,
                        wait,
                        error,
                    )
                    raise InputNotAcknowledged(str(error)) from error
                backoff.stored()
        original(topic, payload)

    transport.on_mqtt_message_received_handler = receive
    return True


class HubLink:
    """The relay's module client: its input arrives durably, results leave on its output."""

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
    ) -> None:
        self.input_name = input_name
        self.output_name = output_name
        self.on_input = on_input
        self.on_desired = on_desired
        self.on_method = on_method
        self.keep_input = keep_input
        self.send_timeout_s = send_timeout_s
        self.refusals = RefusalBackoff()
        self.link = EdgeLink(self._configure, call_timeout_s, recreate_after_s)

    def _configure(self, client: IoTHubModuleClient) -> None:
        # Before the handlers: setting them subscribes, and inputs may arrive at once.
        _install_durable_receipt(client, self.keep_input, self.refusals)
        client.on_message_received = self._message
        client.on_twin_desired_properties_patch_received = self.on_desired
        client.on_method_request_received = self._method

    def open(self) -> None:
        self.link.open()

    def close(self) -> None:
        self.link.close()

    def check(self) -> None:
        """A dead MQTT network thread: a new client now, not a minute later; after refusing
        an input, once its back-off has passed."""
        if not self.refusals.waiting():
            self.link.check()

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
        self.link.call(
            "send_message_to_output", sdk_message, self.output_name, timeout=self.send_timeout_s
        )

    def desired(self) -> dict[str, Any]:
        """The whole desired section of the twin."""
        twin: dict[str, Any] = self.link.call("get_twin")
        desired: dict[str, Any] = twin.get("desired", {})
        return desired

    def report(self, patch: dict[str, Any]) -> None:
        self.link.call("patch_twin_reported_properties", patch)

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
        self.link.call("send_method_response", response)
