"""What the operator's page shows of IoT Edge: the relay's state read over HTTP from the
relay's real metrics server, and `GET /edge` of the scorer."""

from __future__ import annotations

import socket
from pathlib import Path

from relay.metrics import MetricsServer
from scorer.core import Scorer, ScorerConfig
from scorer.http import create_app
from scorer.model import inspect_export
from scorer.relay_status import fetch

from tests.unit.test_relay_metrics import STATS


def test_the_relays_state_is_read_from_its_metrics_server_or_reported_unreachable() -> None:
    server = MetricsServer(0, lambda: STATS, host="127.0.0.1")
    server.start()
    try:
        state = fetch(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.stop()
    assert state["reachable"] is True and state["sent"] == STATS["sent"]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    gone = fetch(f"http://127.0.0.1:{port}/metrics", timeout_s=0.5)
    assert gone["reachable"] is False and "Connection refused" in gone["error"]


def test_get_edge_answers_nulls_outside_iot_edge_and_the_status_under_it(demo_dir: Path) -> None:
    scorer = Scorer(inspect_export(demo_dir / "models" / "colors"), ScorerConfig("colors", "1"))
    outside = create_app(scorer).test_client().get("/edge")
    assert outside.json == {"publisher": None, "relay": None}
    state = {"publisher": {"connected": True, "sent": 7}, "relay": {"reachable": False}}
    inside = create_app(scorer, edge_status=lambda: state).test_client().get("/edge")
    assert inside.json == state


def test_the_relays_metrics_server_closes_a_connection_that_sends_nothing() -> None:
    """Each connection holds a thread there: a silent one is let go after the client timeout,
    and scrapes are answered meanwhile."""
    server = MetricsServer(0, lambda: STATS, host="127.0.0.1", client_timeout_s=0.5)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
            assert fetch(f"http://127.0.0.1:{server.port}/metrics")["reachable"] is True
            assert silent.recv(1) == b""  # closed by the server, well before the 10 s here
    finally:
        server.stop()
