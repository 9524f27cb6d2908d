"""The edge device fixture, for replaying the relay image against a real broker."""

from tests.edge.conftest import device, mosquitto_available  # noqa: F401 - fixtures
