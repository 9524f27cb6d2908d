"""The relay's counters as Prometheus text on `GET /metrics`, for IoT Edge's metrics collector.

Standard library only: the relay image carries nothing but the device SDK. The port is
reachable from other modules on the IoT Edge network (http://relay:9601/metrics), not
published on the host.
"""

from __future__ import annotations

import datetime
import http.server
import threading
from collections.abc import Callable
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# stats() key -> (metric, type, help)
METRICS = {
    "queued": ("relay_queued_messages", "gauge", "Messages in the spool waiting for edgeHub"),
    "queuedBytes": ("relay_queued_bytes", "gauge", "Bytes of the messages in the spool"),
    "sent": ("relay_sent_messages_total", "counter", "Spooled messages edgeHub acknowledged"),
    "upstreamMessages": (
        "relay_upstream_messages_total",
        "counter",
        "Messages sent to edgeHub (a batch of results is one)",
    ),
    "deliveryStalledSeconds": (
        "relay_delivery_stalled_seconds",
        "gauge",
        "How long spooled messages have waited with none delivered",
    ),
    "dropped": ("relay_dropped_messages_total", "counter", "Messages dropped at the spool bound"),
    "droppedAlerts": ("relay_dropped_alerts_total", "counter", "Alerts dropped at the bound"),
    "results": ("relay_results_total", "counter", "Scorer results handled"),
    "alerts": ("relay_alerts_total", "counter", "Alert messages spooled"),
    "duplicates": ("relay_duplicate_results_total", "counter", "Redelivered results skipped"),
    "rejected": ("relay_rejected_inputs_total", "counter", "Inputs dead-lettered (and why)"),
    "spoolsSetAside": (
        "relay_spools_set_aside_total",
        "counter",
        "Corrupt spool files set aside for an empty one (their messages not sent)",
    ),
}


def _epoch(iso_time: str) -> float:
    return datetime.datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


def render(stats: dict[str, Any]) -> str:
    """Prometheus exposition text of one `getStats` answer."""
    lines = []
    for key, (name, kind, text) in METRICS.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {float(stats[key])}"]
    if stats.get("lastSentTime"):
        name = "relay_last_sent_timestamp_seconds"
        lines += [
            f"# HELP {name} When edgeHub last acknowledged a message (Unix time)",
            f"# TYPE {name} gauge",
            f"{name} {_epoch(stats['lastSentTime'])}",
        ]
    return "\n".join(lines) + "\n"


class MetricsServer:
    """`GET /metrics` on a port of its own, answered from `stats()` at each scrape."""

    def __init__(
        self,
        port: int,
        stats: Callable[[], dict[str, Any]],
        host: str = "0.0.0.0",
        client_timeout_s: float = 10.0,
    ):
        class Handler(http.server.BaseHTTPRequestHandler):
            # each connection has a thread: one that sends nothing must not keep it for good
            timeout = client_timeout_s

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render(stats()).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # a scrape every few minutes is not worth a log line

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
