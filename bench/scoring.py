#!/usr/bin/env python3
"""Scoring overhead, measured against a baseline of the same run.

For every demo model and every export in ../shared/models, on the same images:
  (a) decode + preprocess + bare `InferenceSession.run`   (the baseline)
  (b) `Scorer.score` in process
  (c) HTTP `POST /score`, one client on a keep-alive connection
  (d) HTTP at 1, 2, 4 and 8 concurrent clients (throughput)
and prints p50/p95 latency, requests/s and the ratios (b)/(a), (c)/(a).

Usage: .venv/bin/python bench/scoring.py [--requests N] [--json FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "modules" / "scorer"), str(REPO / "scripts")]

import make_demo_models  # noqa: E402
import onnxruntime as ort  # noqa: E402
from scorer import imaging  # noqa: E402
from scorer.core import Scorer, ScorerConfig  # noqa: E402
from scorer.model import inspect_export  # noqa: E402
from scorer.session import open_session  # noqa: E402

from tests.scorer_process import ScorerProcess, scorer_env  # noqa: E402

SHARED = REPO.parent / "shared"
CONCURRENCY = (1, 2, 4, 8)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(call: Callable[[bytes], object], images: list[bytes], count: int) -> list[float]:
    """Milliseconds per call, cycling through the images, after a short warm-up."""
    for image in images * 3:
        call(image)
    samples = []
    for i in range(count):
        started = time.perf_counter()
        call(images[i % len(images)])
        samples.append((time.perf_counter() - started) * 1000)
    return samples


class KeepAliveClient:
    """One persistent HTTP/1.1 connection. http.client keeps the client's own cost small, so
    the figures show the server's overhead rather than a client library's."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port)

    def score(self, image: bytes) -> bytes:
        self.connection.request(
            "POST", "/score", body=image, headers={"Content-Type": "image/jpeg"}
        )
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        return body

    def close(self) -> None:
        self.connection.close()


def concurrent_rate(
    port: int, images: list[bytes], clients: int, count: int
) -> tuple[float, list[float]]:
    """Requests/s and latencies with `clients` keep-alive connections sharing `count` requests."""
    per_client = max(1, count // clients)

    def client(seed: int) -> list[float]:
        latencies = []
        connection = KeepAliveClient(port)
        try:
            for i in range(per_client):
                started = time.perf_counter()
                connection.score(images[(seed + i) % len(images)])
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            connection.close()
        return latencies

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    latencies = [x for r in results for x in r]
    return len(latencies) / elapsed, latencies


def bench_model(name: str, model_dir: Path, images: list[bytes], count: int, cache: Path) -> dict:
    spec = inspect_export(model_dir, cache_dir=cache)
    session = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
    outputs = list(spec.output_names)
    limits = imaging.DecodeLimits()
    draft = spec.preprocessing.draft_size()

    def bare(image: bytes) -> object:
        tensor = imaging.to_tensor(imaging.decode_image(image, limits, draft), spec.preprocessing)
        return session.run(outputs, {spec.input_name: tensor})

    scorer = Scorer(spec, ScorerConfig(name, "bench"))
    scorer.load(lambda s: open_session(s, ["CPUExecutionProvider"]))

    server = ScorerProcess(scorer_env(model_dir, cache, PROVIDERS="cpu"))
    try:
        server.wait_ready()
        assert server.port is not None
        client = KeepAliveClient(server.port)
        row = {
            "model": name,
            "a_bare": timed(bare, images, count),
            "b_scorer": timed(scorer.score, images, count),
            "c_http": timed(client.score, images, count),
        }
        client.close()
        row["d_http"] = {
            clients: concurrent_rate(server.port, images, clients, count) for clients in CONCURRENCY
        }
    finally:
        server.stop()
    return row


def models_and_images(demo: Path) -> list[tuple[str, Path, list[bytes]]]:
    demo_images = [p.read_bytes() for p in sorted((demo / "images").glob("*.jpg"))]
    found = [(f"demo/{m.name}", m, demo_images) for m in sorted((demo / "models").iterdir())]
    if (SHARED / "models").is_dir() and (SHARED / "images").is_dir():
        photos = [p.read_bytes() for p in sorted((SHARED / "images").glob("*.jpg"))]
        for folder in sorted((SHARED / "models").iterdir()):
            if (folder / "model.onnx").is_file():
                found.append((folder.name, folder, photos))
    else:
        print(f"note: {SHARED} not found; real exports skipped", file=sys.stderr)
    return found


def report(rows: list[dict]) -> None:
    print(
        f"\n{platform.node()} | {platform.processor() or platform.machine()} | "
        f"onnxruntime {ort.__version__} CPUExecutionProvider | python {platform.python_version()}"
    )
    print(f"{'model':34} {'stage':18} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'/(a) p50':>9}")
    for row in rows:
        base = statistics.median(row["a_bare"])
        for key, label in (
            ("a_bare", "(a) bare run"),
            ("b_scorer", "(b) Scorer.score"),
            ("c_http", "(c) HTTP keep-alive"),
        ):
            samples = row[key]
            p50 = statistics.median(samples)
            print(
                f"{row['model']:34} {label:18} {p50:8.2f} {percentile(samples, 0.95):8.2f} "
                f"{1000 / statistics.mean(samples):8.1f} {p50 / base:9.2f}"
            )
        for clients, (rate, latencies) in row["d_http"].items():
            p50 = statistics.median(latencies)
            print(
                f"{row['model']:34} {f'(d) HTTP x{clients}':18} {p50:8.2f} "
                f"{percentile(latencies, 0.95):8.2f} {rate:8.1f} {p50 / base:9.2f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per stage")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        demo = Path(work) / "demo"
        make_demo_models.main(["make_demo_models.py", str(demo)])
        rows = [
            bench_model(name, folder, images, args.requests, Path(work) / "cache")
            for name, folder, images in models_and_images(demo)
        ]
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
