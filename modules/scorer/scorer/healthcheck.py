"""Container health check: exit 0 when the worker's heartbeat is fresh and says `ready`.

It reads the file the worker writes (`heartbeat.py` says why not `/readyz`). Standard
library only, and no settings but the one it needs: it runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .heartbeat import problem
from .settings import PREFIX, Settings


def main() -> int:
    default = Settings.heartbeat_path
    path = Path(os.environ.get(PREFIX + "HEARTBEAT_PATH") or default)
    found = problem(path)
    if found is not None:
        print(f"unhealthy: {found}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
