#!/usr/bin/env python3
"""ONNX Runtime's intra-op spinning, on and off, in the server: throughput, latency and CPU
per request at 1, 2 and 4 HTTP clients, interleaved over repetitions so both settings see
the same machine.

CPU per request is the worker's user + system time (from /proc) over the requests it
answered, the front end's share included.

    .venv/bin/python bench/ort_threads.py [--model DIR] [--requests 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / p) for p in ("", "bench", "modules/scorer", "scripts")]

import make_demo_models  # noqa: E402
from scorer.client import HttpClient  # noqa: E402
from scoring import concurrently  # noqa: E402

from tests.scorer_process import ScorerProcess, cpu_seconds, scorer_env, worker_pid  # noqa: E402

CLIENTS = (1, 2, 4)


def measure(model: Path, images: list[bytes], spinning: bool, requests: int, cache: Path) -> dict:
    env = scorer_env(model, cache, PROVIDERS="cpu", ORT_SPINNING=str(spinning).lower())
    server = ScorerProcess(env)
    rows = {}
    try:
        server.wait_ready()
        pid = worker_pid(server.proc.pid)

        def caller() -> tuple:
            client = HttpClient(server.url)
            return client.score, client.close

        for clients in CLIENTS:
            before = cpu_seconds(pid)
            rate, latencies = concurrently(caller, images, clients, requests)
            answered = len(latencies) + clients * 2 * len(images)
            rows[clients] = (
                rate,
                statistics.median(latencies),
                (cpu_seconds(pid) - before) / answered * 1000,
            )
    finally:
        server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an export folder (default: demo squares-yolo)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        demo = Path(work) / "demo"
        make_demo_models.main(["", str(demo)])
        model = args.model or demo / "models" / "squares-yolo"
        images = [p.read_bytes() for p in sorted((demo / "images").glob("*.jpg"))]
        photos = REPO.parent / "shared" / "images"
        if args.model and photos.is_dir():
            images = [p.read_bytes() for p in sorted(photos.glob("*.jpg"))]
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for _ in range(args.repeat):
            for spinning in (True, False):
                cache = Path(work) / "cache"
                runs[spinning].append(measure(model, images, spinning, args.requests, cache))
    print(f"\n{model.name}, {os.cpu_count()} cores, median of {args.repeat} interleaved runs")
    print(f"{'clients':>7} {'spinning':>9} {'req/s':>8} {'p50 ms':>8} {'CPU ms/req':>11}")
    for clients in CLIENTS:
        for spinning in (True, False):
            rate, p50, cpu = (
                statistics.median(run[clients][i] for run in runs[spinning]) for i in range(3)
            )
            print(
                f"{clients:>7} {'on' if spinning else 'off':>9} {rate:8.1f} {p50:8.2f} {cpu:11.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
