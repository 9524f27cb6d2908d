#!/usr/bin/env python3
"""Ours against the field, in one run: the floor, ours over HTTP and gRPC, a naive Flask app
(classification) and a reference pipeline served the peer's way (the steps of the script in
Custom Vision's detection exports, under Flask's threaded server; `bench/peers/`).

Every HTTP server is asked by the same lean keep-alive client (`scorer.client.HttpClient`),
and ours runs twice: with its default (ONNX Runtime's threads do not spin) and with the
peers' (ONNX Runtime's default: they spin after each run), so the front ends compare at
equal work. Every server is measured in blocks of requests at 1, 2, 4 and 8 clients; the
blocks of the targets alternate in a shuffled order, repeated `--repeat` times, so each sees
the same machine. Printed per model: p50 latency and its ratio to the floor (median and
range over the repetitions), requests per second, CPU time per request from /proc (the
process that scores) and its ratio to the floor's, resident memory, and cold start (process
start to its first answer).

    .venv/bin/python bench/peers.py [--requests 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / p) for p in ("", "bench", "modules/scorer", "scripts")]

import make_demo_models  # noqa: E402
import onnxruntime as ort  # noqa: E402
import requests  # noqa: E402
from scorer import heap, imaging  # noqa: E402
from scorer.client import GrpcClient, HttpClient  # noqa: E402
from scorer.model import inspect_export  # noqa: E402
from scorer.session import open_session  # noqa: E402

from tests.scorer_process import (  # noqa: E402
    ScorerProcess,
    cpu_seconds,
    free_port,
    memory_mb,
    scorer_env,
    worker_pid,
)

LEVELS = (1, 2, 4, 8)
SHARED = REPO.parent / "shared"
Call = Callable[[bytes], Any]


class Peer:
    """A peer app (`bench/peers/<script>`) on a free port."""

    def __init__(self, script: str, model: Path) -> None:
        self.port = free_port()
        started = time.perf_counter()
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - open as long as the peer runs
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "peers" / script), str(model), str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.cold_start_s = 0.0
        self.started = started

    def wait(self, image: bytes) -> None:
        """Until its first answer (its cold start); a peer that cannot answer ends the run."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                answer = requests.post(self.url + "/score", data=image, timeout=5)
            except requests.RequestException:
                time.sleep(0.05)
                continue
            if answer.ok:
                self.cold_start_s = time.perf_counter() - self.started
                return
            break
        self.stop()
        self.log.seek(0)
        raise SystemExit(f"the peer does not answer:\n{self.log.read()[-3000:]}")

    def caller(self) -> tuple[Call, Callable[[], None]]:
        """The same lean keep-alive client as ours gets: the servers are measured, not it."""
        return _client(HttpClient(self.url))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def block(make: Callable[[], tuple[Call, Callable[[], None]]], images: list[bytes],
          clients: int, requests_each: int) -> tuple[float, list[float]]:  # fmt: skip
    """(requests/s, latencies in ms) of `clients` callers, each `requests_each` requests."""

    def run(seed: int) -> list[float]:
        call, close = make()
        try:
            call(images[0])  # a connection, and a warm path
            samples = []
            for i in range(requests_each):
                started = time.perf_counter()
                call(images[(seed + i) % len(images)])
                samples.append((time.perf_counter() - started) * 1000)
            return samples
        finally:
            close()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        latencies = [x for r in pool.map(run, range(clients)) for x in r]
        elapsed = time.perf_counter() - started
    return (len(latencies) + clients) / elapsed, latencies


def shipped_env(model: Path, cache: Path, **settings: str) -> dict[str, str]:
    """Ours as the module images run it (they set MALLOC_ARENA_MAX=2), on the CPU."""
    return {**scorer_env(model, cache, PROVIDERS="cpu", **settings), "MALLOC_ARENA_MAX": "2"}


def measure(model: Path, images: list[bytes], peer_script: str, args: argparse.Namespace,
            cache: Path) -> dict[str, Any]:  # fmt: skip
    spec = inspect_export(model, cache_dir=cache)
    heap.keep_request_memory()  # the floor keeps its memory between calls, as our worker does
    floor_model = open_session(spec, ["CPUExecutionProvider"])
    limits = imaging.DecodeLimits()

    def floor_caller() -> tuple[Call, Callable[[], None]]:
        def call(image: bytes) -> Any:
            picture = imaging.decode_image(image, limits, spec.preprocessing.draft_size())
            return floor_model.run(imaging.to_tensor(picture, spec.preprocessing))

        return call, lambda: None

    started = time.perf_counter()
    ours = ScorerProcess(shipped_env(model, cache))
    ours.wait_ready()
    ours_cold = time.perf_counter() - started
    # The peers keep ONNX Runtime's default: its threads spin after every run.
    spinning = ScorerProcess(shipped_env(model, cache, ORT_SPINNING="1"))
    spinning.wait_ready()
    peer = Peer(peer_script, model)
    peer.wait(images[0])
    targets: dict[str, tuple[Callable[[], tuple[Call, Callable[[], None]]], int]] = {
        "floor (in process)": (floor_caller, os.getpid()),  # its CPU: this process
        "ours HTTP": (lambda: _client(HttpClient(ours.url)), worker_pid(ours.proc.pid)),
        "ours gRPC": (lambda: _client(GrpcClient(ours.grpc_target)), worker_pid(ours.proc.pid)),
        "ours HTTP, ORT spinning": (
            lambda: _client(HttpClient(spinning.url)),
            worker_pid(spinning.proc.pid),
        ),
        f"peer ({peer_script})": (peer.caller, peer.proc.pid),
    }
    results: dict[str, dict[int, list[tuple[float, float, float]]]] = {
        name: {c: [] for c in LEVELS} for name in targets
    }
    rng = random.Random(7)
    try:
        for _ in range(args.repeat):
            for clients in LEVELS:
                order = list(targets)
                rng.shuffle(order)
                for name in order:
                    make, pid = targets[name]
                    before = cpu_seconds(pid)
                    rate, latencies = block(make, images, clients, max(5, args.requests // clients))
                    cpu = (cpu_seconds(pid) - before) / (len(latencies) + clients) * 1000
                    results[name][clients].append((statistics.median(latencies), rate, cpu))
        memory = {
            "ours": memory_mb(worker_pid(ours.proc.pid), "VmRSS")
            + memory_mb(ours.proc.pid, "VmRSS"),
            "peer": memory_mb(peer.proc.pid, "VmRSS"),
        }
    finally:
        ours.stop()
        spinning.stop()
        peer.stop()
    return {
        "results": results,
        "memory": memory,
        "cold": {"ours": ours_cold, "peer": peer.cold_start_s},
    }


def _client(client: Any) -> tuple[Call, Callable[[], None]]:
    return client.score, client.close


def report(name: str, measured: dict[str, Any]) -> None:
    results = measured["results"]
    floor = results["floor (in process)"]
    print(f"\n{name}  (median [min-max] over repetitions; CPU ms per request of the server;")
    print(" the floor's CPU is this process's, its client threads included)")
    print(f"{'target':28} {'clients':>7} {'p50 ms':>8} {'p50/floor':>18} {'req/s':>8} "
          f"{'CPU ms':>7} {'CPU/floor':>9}")  # fmt: skip
    for target, levels in results.items():
        for clients, runs in levels.items():
            ratios = [r[0] / f[0] for r, f in zip(runs, floor[clients], strict=True)]
            p50 = statistics.median(r[0] for r in runs)
            rate = statistics.median(r[1] for r in runs)
            cpu = statistics.median(r[2] for r in runs)
            floor_cpu = statistics.median(f[2] for f in floor[clients])
            spread = f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
            print(f"{target:28} {clients:>7} {p50:8.2f} {spread:>18} {rate:8.1f} {cpu:7.2f} "
                  f"{cpu / floor_cpu:9.2f}")  # fmt: skip
    memory, cold = measured["memory"], measured["cold"]
    print(f"RSS: ours {memory['ours']:.0f} MB (master + worker), peer {memory['peer']:.0f} MB;"
          f" cold start: ours {cold['ours']:.1f} s, peer {cold['peer']:.1f} s")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60, help="per block of one client")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as work:
        demo = Path(work) / "demo"
        make_demo_models.main(["", str(demo)])
        photos = sorted((SHARED / "images").glob("*.jpg")) if (SHARED / "images").is_dir() else []
        images = [p.read_bytes() for p in photos] or [
            p.read_bytes() for p in sorted((demo / "images").glob("*.jpg"))
        ]
        runs = [("detection: demo squares-yolo", demo / "models" / "squares-yolo",
                 "reference_flask.py")]  # fmt: skip
        catdog = SHARED / "models" / "cv-cls-catdog-negative-opset7"
        classification = catdog if catdog.is_dir() else demo / "models" / "colors"
        runs.append((f"classification: {classification.name}", classification, "naive_flask.py"))
        for name, model, script in runs:
            report(name, measure(model, images, script, args, Path(work) / "cache"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
