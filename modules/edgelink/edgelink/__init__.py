"""The IoT Edge module link shared by the scorer and the relay (`EdgeLink`)."""

from .link import CallTimeout, EdgeLink, mqtt_transport, network_thread_dead

__all__ = ["CallTimeout", "EdgeLink", "mqtt_transport", "network_thread_dead"]
