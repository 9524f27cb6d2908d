"""Container health check: exit 0 when the relay's main loop beat recently and its forwarder
is delivering (the heartbeat says `stalled` otherwise). Stdlib only."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DEFAULT_HEARTBEAT = "/tmp/relay-heartbeat"
STALE_AFTER_S = 60.0


def main() -> int:
    path = Path(os.environ.get("RELAY_HEARTBEAT_PATH") or DEFAULT_HEARTBEAT)
    try:
        age = time.time() - path.stat().st_mtime
        status = path.read_text().strip()
    except OSError as error:
        print(f"unhealthy: no heartbeat ({error})", file=sys.stderr)
        return 1
    if age > STALE_AFTER_S:
        print(f"unhealthy: last heartbeat {age:.0f} s ago", file=sys.stderr)
        return 1
    if age < -STALE_AFTER_S:  # written before the clock was set back: no proof of life now
        print(f"unhealthy: last heartbeat {-age:.0f} s ahead of the clock", file=sys.stderr)
        return 1
    if status.startswith("stalled"):
        print(f"unhealthy: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
