"""Relay: scorer results in over IoT Edge routes, filtered and summarised, durably to IoT Hub."""
