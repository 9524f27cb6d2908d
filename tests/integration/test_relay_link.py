"""Seeing paho's dead network thread inside the real SDK client (paho's loop thread runs)."""

from __future__ import annotations

import base64

import pytest
from azure.iot.device import IoTHubModuleClient
from edgelink import mqtt_transport, network_thread_dead

KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def client() -> IoTHubModuleClient:
    """A real SDK client that is never connected (no broker is contacted)."""
    return IoTHubModuleClient.create_from_connection_string(
        f"HostName=hub.example;DeviceId=jetson-01;ModuleId=relay;SharedAccessKey={KEY}"
    )


def test_this_sdk_version_exposes_paho_inside_its_transport(client: IoTHubModuleClient) -> None:
    paho = getattr(mqtt_transport(client), "_mqtt_client", None)
    assert paho is not None and hasattr(paho, "_thread")


def test_a_client_that_believes_it_is_connected_without_a_network_thread_is_dead(
    client: IoTHubModuleClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not network_thread_dead(client)  # not connected: nothing to say
    monkeypatch.setattr(type(client), "connected", property(lambda self: True))
    assert network_thread_dead(client)  # "connected", and paho's thread is gone
    paho = mqtt_transport(client)._mqtt_client
    paho.loop_start()  # a live network thread again
    try:
        assert not network_thread_dead(client)
    finally:
        paho.loop_stop()
    assert network_thread_dead(client)
