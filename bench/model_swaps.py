#!/usr/bin/env python3
"""Model updates under load: how long a swap takes, what clients see, what memory does.

Starts the scorer on the demo `colors` export, then swaps `--swaps` times between two
exports through the admin route while 8 clients score without pause, as
`tests/reliability/test_model_swaps.py` does, and prints the answers by status, the swap
times and the worker's RSS after swaps 1, 10 and the last.

    .venv/bin/python bench/model_swaps.py [--swaps 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import make_demo_models  # noqa: E402

from tests.model_server import model_server  # noqa: E402
from tests.scorer_process import ScorerProcess, scorer_env  # noqa: E402
from tests.swap_driver import KEY, swap_under_load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--swaps", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, model_server() as models:
        work = Path(folder)
        make_demo_models.main(["", str(work / "demo")])
        demo = work / "demo"
        env = scorer_env(
            demo / "models" / "colors",
            work / "cache",
            PROVIDERS="cpu",
            API_KEYS=KEY,
            MODEL_ALLOW_HTTP="true",
            MODEL_ALLOWED_ADDRESSES="127.0.0.1",
            MODEL_STORE=str(work / "store"),
        )
        server = ScorerProcess(env)
        try:
            server.wait_ready()
            report = swap_under_load(
                server,
                models,
                (demo / "models" / "colors", demo / "models" / "squares"),
                (demo / "images" / "red.jpg").read_bytes(),
                swaps=args.swaps,
            )
        finally:
            server.stop()
    print(f"\n{args.swaps} swaps, 8 clients scoring throughout")
    print(f"answers: {report.answers}, by status: {dict(report.statuses)}")
    print(f"answers whose predictions do not fit their version: {len(report.wrong_version)}")
    swap_ms = sorted(s * 1000 for s in report.swap_s)
    print(f"swap time: median {statistics.median(swap_ms):.0f} ms, max {swap_ms[-1]:.0f} ms")
    rss = report.rss_mb
    print(f"worker RSS after swap 1: {rss[0]:.0f} MB, 10: {rss[min(9, len(rss) - 1)]:.0f} MB,"
          f" {len(rss)}: {rss[-1]:.0f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
