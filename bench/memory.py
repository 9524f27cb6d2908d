#!/usr/bin/env python3
"""Memory of the scorer under 16 concurrent worst-case images within the default limits.

Starts the scorer (the demo colour model, CPU, default limits) from a checkout, sends 16
36-megapixel PNGs at once (a smooth gradient, so each compresses to well under the 8 MB
body limit), then 16 36-megapixel JPEGs, sampling the worker's resident memory every 20 ms;
prints the peak (VmHWM), the resident size 10 s after the burst, and the answers' codes.

    .venv/bin/python bench/memory.py [--checkout DIR] [--arena-max N]
DIR: another checkout, for "before"; N: MALLOC_ARENA_MAX as the images set it (2; 0 unsets).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import make_demo_models  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402

from tests.scorer_process import ScorerProcess, memory_mb, scorer_env, worker_pid  # noqa: E402

SIDE = 6000
CLIENTS = 16


def worst_case(fmt: str) -> bytes:
    ramp = np.linspace(0, 255, SIDE, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (SIDE, 1)), np.tile(ramp[:, None], (1, SIDE)),
                       np.full((SIDE, SIDE), 90, np.uint8)], axis=2)  # fmt: skip
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def burst(server: ScorerProcess, body: bytes, mime: str) -> list[int]:
    def post(_: int) -> int:
        response = requests.post(
            server.url + "/score", data=body, headers={"Content-Type": mime}, timeout=300
        )
        return response.status_code

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(post, range(CLIENTS)))


def measure(checkout: Path, demo: Path, work: Path, arena_max: int) -> list[tuple[str, str]]:
    env = scorer_env(demo / "models" / "colors", work / "cache", PROVIDERS="cpu")
    env["PYTHONPATH"] = str(checkout / "modules" / "scorer")
    env.pop("MALLOC_ARENA_MAX", None)
    if arena_max:
        env["MALLOC_ARENA_MAX"] = str(arena_max)
    server = ScorerProcess(env)
    server.wait_ready()
    pid = worker_pid(server.proc.pid)
    rows = [("idle RSS", f"{memory_mb(pid, 'VmRSS'):.0f} MB")]
    try:
        for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
            body = worst_case(fmt)
            peak = [0.0]
            done = threading.Event()

            def sample(peak: list[float] = peak, done: threading.Event = done) -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], memory_mb(pid, "VmRSS"))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            codes = burst(server, body, mime)
            done.set()
            sampler.join()
            time.sleep(10)
            rows += [
                (f"{fmt} {len(body) / 1e6:.1f} MB x{CLIENTS}: codes", str(sorted(set(codes)))),
                (f"{fmt}: peak RSS during the burst", f"{peak[0]:.0f} MB"),
                (f"{fmt}: RSS 10 s later", f"{memory_mb(pid, 'VmRSS'):.0f} MB"),
            ]
        rows.append(("high-water mark (VmHWM)", f"{memory_mb(pid, 'VmHWM'):.0f} MB"))
    finally:
        server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=REPO)
    parser.add_argument("--arena-max", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        make_demo_models.main(["make_demo_models.py", str(work / "demo")])
        rows = measure(args.checkout.resolve(), work / "demo", work, args.arena_max)
    print(
        f"\nscorer from {args.checkout} | {os.cpu_count()} CPUs | {SIDE}x{SIDE} images | "
        f"MALLOC_ARENA_MAX={args.arena_max or 'unset'}"
    )
    for name, value in rows:
        print(f"{name:45} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
