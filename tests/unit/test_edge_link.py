"""The shared edge link's connect bookkeeping and the relay's reconnect back-off, without a
broker: the SDK's client factory is replaced by one whose connects never return."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from edgelink import link as edgelink
from relay.iothub import RefusalBackoff


class HangingClient:
    """An SDK client whose connect never returns, and whose network thread never runs."""

    made: list[HangingClient] = []
    creating = threading.Event()  # set: creating a client hangs too (a slow SDK start)

    def __init__(self) -> None:
        self.connected = False
        self.shut_down = False
        HangingClient.made.append(self)

    @classmethod
    def create_from_edge_environment(cls, **_: Any) -> HangingClient:
        if cls.creating.is_set():
            threading.Event().wait(5)
        return cls()

    def connect(self) -> None:
        threading.Event().wait(5)

    def shutdown(self) -> None:
        self.shut_down = True


def test_a_connect_still_making_its_client_is_not_judged_by_the_previous_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stale `_connecting` (the client of an earlier, given-up connect, whose network
    thread is down) let a hung connect be given up after the short time limit, so a second
    client connected under the module's identity beside it."""
    HangingClient.made.clear()
    HangingClient.creating.clear()
    monkeypatch.setattr(edgelink, "IoTHubModuleClient", HangingClient)
    monkeypatch.setattr(edgelink, "_network_thread_down", lambda client: True)
    link = edgelink.EdgeLink(lambda client: None, call_timeout_s=0.1, recreate_after_s=30)
    with pytest.raises(edgelink.CallTimeout):
        link.open()  # the first client's connect hangs
    time.sleep(0.15)
    HangingClient.creating.set()
    with pytest.raises(edgelink.CallTimeout):
        link.open()  # gives the first up (no network thread); the next hangs making its client
    assert HangingClient.made[0].shut_down
    time.sleep(0.15)
    with pytest.raises(ConnectionError, match="has not returned yet"):
        link.open()  # that one has no client yet: it gets recreate_after_s, not 0.1 s
    assert len(HangingClient.made) == 1


def test_reconnects_after_refused_inputs_back_off_and_reset_once_one_is_stored() -> None:
    backoff = RefusalBackoff(initial_s=0.05, max_s=0.2)
    assert not backoff.waiting()
    assert [backoff.refused() for _ in range(4)] == [0.05, 0.1, 0.2, 0.2]
    assert backoff.waiting()
    time.sleep(0.25)
    assert not backoff.waiting()
    backoff.refused()
    backoff.stored()
    assert not backoff.waiting() and backoff.refused() == 0.05
