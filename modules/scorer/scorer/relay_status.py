"""The relay's state as the scorer's page shows it: read from the relay's own `/metrics`
(on the IoT Edge module network, `http://relay:9601/metrics`), if it answers in time."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

# relay metric -> the name the page shows it under
SHOWN = {
    "relay_queued_messages": "queued",
    "relay_sent_messages_total": "sent",
    "relay_upstream_messages_total": "upstreamMessages",
    "relay_dropped_messages_total": "dropped",
    "relay_rejected_inputs_total": "rejected",
    "relay_delivery_stalled_seconds": "deliveryStalledSeconds",
    "relay_spools_set_aside_total": "spoolsSetAside",
    "relay_last_sent_timestamp_seconds": "lastSentTimestamp",
}
LINE = re.compile(r"^([a-z_]+) (\S+)$")


def parse(text: str) -> dict[str, float]:
    """The shown figures of a Prometheus exposition text (unlabelled samples only)."""
    figures: dict[str, float] = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if match and match.group(1) in SHOWN:
            figures[SHOWN[match.group(1)]] = float(match.group(2))
    return figures


def fetch(url: str, timeout_s: float = 1.0) -> dict[str, Any]:
    """`{"reachable": True, ...figures}`, or `{"reachable": False, "error": why}`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read(1 << 20).decode("utf-8", "replace")
    except (OSError, ValueError) as error:
        return {"reachable": False, "error": f"{type(error).__name__}: {error}"[:200]}
    return {"reachable": True, **parse(text)}
