#!/usr/bin/env python3
"""Scoring overhead of each front end, measured against a baseline of the same run.

For every demo model and every export in ../shared/models, on the same images:
  (a) decode + preprocess + bare `InferenceSession.run`   (the baseline)
  (b) `Scorer.score` in process
  (c) HTTP `POST /score` on a keep-alive connection
  (e) gRPC `Score` (unary)
  (f) gRPC `ScoreStream`, frames sent in lock-step (one answer before the next frame)
then HTTP at 1, 2, 4 and 8 concurrent clients and gRPC unary and streams at 1 and 8.
Prints p50/p95 latency, requests/s and every p50 as a ratio of (a)'s.

Usage: .venv/bin/python bench/scoring.py [--requests N] [--provider cpu|cuda|tensorrt]
                                         [--shared DIR] [--json FILE]
The baseline and the scorer always run on the same execution provider.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "modules" / "scorer"), str(REPO / "scripts")]

import make_demo_models  # noqa: E402
import onnxruntime as ort  # noqa: E402
from scorer import heap, imaging  # noqa: E402
from scorer.client import GrpcClient, HttpClient, ScoringFailed  # noqa: E402
from scorer.core import Scorer, ScorerConfig  # noqa: E402
from scorer.model import inspect_export  # noqa: E402
from scorer.session import open_session  # noqa: E402

from bench import provider_choice  # noqa: E402
from bench.provider_choice import provider_names  # noqa: E402
from tests.scorer_process import ScorerProcess, scorer_env  # noqa: E402

Caller = Callable[[bytes], object]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(call: Caller, images: list[bytes], count: int, seed: int = 0) -> list[float]:
    """Milliseconds per call, cycling through the images, after a short warm-up."""
    for image in images * 2:
        call(image)
    samples = []
    for i in range(count):
        image = images[(seed + i) % len(images)]
        started = time.perf_counter()
        call(image)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


class LockStepStream:
    """One `ScoreStream` used like a call: send a frame, wait for its answer."""

    def __init__(self, client: GrpcClient) -> None:
        self.client = client
        self.frames: queue.Queue[Any] = queue.Queue()
        self.answers = client.stream(iter(self.frames.get, None))
        self.sent = 0

    def score(self, image: bytes) -> dict[str, Any]:
        self.sent += 1
        self.frames.put(self.client.request(image, str(self.sent)))
        answer = next(self.answers)
        if isinstance(answer, ScoringFailed):
            raise answer
        return answer

    def close(self) -> None:
        self.frames.put(None)
        for _ in self.answers:
            pass


def concurrently(
    make_caller: Callable[[], tuple[Caller, Callable[[], None]]],
    images: list[bytes],
    clients: int,
    count: int,
) -> tuple[float, list[float]]:
    """Requests/s and latencies of `clients` callers, each with its own connection."""

    def run(seed: int) -> list[float]:
        call, close = make_caller()
        try:
            return timed(call, images, max(1, count // clients), seed)
        finally:
            close()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        results = list(pool.map(run, range(clients)))
        elapsed = time.perf_counter() - started
    latencies = [x for r in results for x in r]
    # The warm-up calls ran inside the timed window too; count them for a fair rate.
    warm_up = clients * 2 * len(images)
    return (len(latencies) + warm_up) / elapsed, latencies


def bench_model(
    name: str, model_dir: Path, images: list[bytes], count: int, cache: Path, provider: str
) -> dict:
    session_providers, setting = provider_names(provider), provider_choice.SETTINGS[provider]
    spec = inspect_export(model_dir, cache_dir=cache)
    session = ort.InferenceSession(str(spec.onnx_path), providers=session_providers)
    if session.get_providers()[0] != session_providers[0]:
        raise SystemExit(f"{session_providers[0]} does not run here: {session.get_providers()}")
    outputs = list(spec.output_names)
    limits = imaging.DecodeLimits()
    draft = spec.preprocessing.draft_size()

    def bare(image: bytes) -> object:
        tensor = imaging.to_tensor(imaging.decode_image(image, limits, draft), spec.preprocessing)
        return session.run(outputs, {spec.input_name: tensor})

    scorer = Scorer(spec, ScorerConfig(name, "bench"))
    scorer.load(lambda s: open_session(s, list(session_providers)))

    server = ScorerProcess(scorer_env(model_dir, cache, PROVIDERS=setting))
    try:
        server.wait_ready()

        def http_caller() -> tuple[Caller, Callable[[], None]]:
            client = HttpClient(server.url)
            return client.score, client.close

        def unary_caller() -> tuple[Caller, Callable[[], None]]:
            client = GrpcClient(server.grpc_target)
            return client.score, client.close

        def stream_caller() -> tuple[Caller, Callable[[], None]]:
            client = GrpcClient(server.grpc_target)
            stream = LockStepStream(client)

            def close() -> None:
                stream.close()
                client.close()

            return stream.score, close

        row: dict[str, Any] = {"model": name, "single": {}, "concurrent": {}}
        row["single"]["(a) bare run"] = timed(bare, images, count)
        row["single"]["(b) Scorer.score"] = timed(scorer.score, images, count)
        for label, make in (
            ("(c) HTTP", http_caller),
            ("(e) gRPC unary", unary_caller),
            ("(f) gRPC stream", stream_caller),
        ):
            call, close = make()
            row["single"][label] = timed(call, images, count)
            close()
        for label, make, levels in (
            ("HTTP", http_caller, (1, 2, 4, 8)),
            ("gRPC unary", unary_caller, (1, 8)),
            ("gRPC stream", stream_caller, (1, 8)),
        ):
            for clients in levels:
                row["concurrent"][f"{label} x{clients}"] = concurrently(
                    make, images, clients, count
                )
    finally:
        server.stop()
    return row


def models_and_images(demo: Path, shared: Path) -> list[tuple[str, Path, list[bytes]]]:
    demo_images = [p.read_bytes() for p in sorted((demo / "images").glob("*.jpg"))]
    found = [(f"demo/{m.name}", m, demo_images) for m in sorted((demo / "models").iterdir())]
    if (shared / "models").is_dir() and (shared / "images").is_dir():
        photos = [p.read_bytes() for p in sorted((shared / "images").glob("*.jpg"))]
        for folder in sorted((shared / "models").iterdir()):
            if (folder / "model.onnx").is_file():
                found.append((folder.name, folder, photos))
    else:
        print(f"note: {shared} not found; real exports skipped", file=sys.stderr)
    return found


def report(rows: list[dict], provider: str) -> None:
    print(
        f"\n{platform.machine()} {platform.processor()} | onnxruntime {ort.__version__}"
        f" {provider_names(provider)[0]} | python {platform.python_version()}"
    )
    print(f"{'model':30} {'stage':18} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'p50/(a)':>8}")
    for row in rows:
        base = statistics.median(row["single"]["(a) bare run"])
        for label, samples in row["single"].items():
            p50 = statistics.median(samples)
            print(
                f"{row['model']:30} {label:18} {p50:8.2f} {percentile(samples, 0.95):8.2f}"
                f" {1000 / statistics.mean(samples):8.1f} {p50 / base:8.2f}"
            )
        for label, (rate, latencies) in row["concurrent"].items():
            p50 = statistics.median(latencies)
            print(
                f"{row['model']:30} {label:18} {p50:8.2f} {percentile(latencies, 0.95):8.2f}"
                f" {rate:8.1f} {p50 / base:8.2f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per stage")
    parser.add_argument("--provider", choices=sorted(provider_choice.SETTINGS), default="cpu")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="real exports")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    args = parser.parse_args()
    heap.keep_request_memory()  # (a) and (b) keep their memory between calls, as the worker does
    with tempfile.TemporaryDirectory() as work:
        demo = Path(work) / "demo"
        make_demo_models.main(["make_demo_models.py", str(demo)])
        rows = [
            bench_model(name, folder, images, args.requests, Path(work) / "cache", args.provider)
            for name, folder, images in models_and_images(demo, args.shared)
        ]
    report(rows, args.provider)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
