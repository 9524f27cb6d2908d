#!/usr/bin/env python3
"""This working tree's scorer (or `--head`'s) against another revision's, side by side: is a
change faster?

Both scorers run at once on the same model (git worktrees in a temporary folder); one
keep-alive client sends `POST /score` to each in alternating blocks of 50, so
both see the same machine. Printed: p50 and p90 latency as the client sees it, and the
worker's CPU time per request (from /proc), with the change's difference.

    .venv/bin/python bench/revisions.py --base HEAD~1 [--head REV] [--model DIR] [--image FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "modules" / "scorer")]

from scorer.client import HttpClient  # noqa: E402

from tests.scorer_process import ScorerProcess, cpu_seconds, scorer_env, worker_pid  # noqa: E402

SHARED = REPO.parent / "shared"
BLOCK = 50


def start(tree: Path, model: Path, cache: Path) -> ScorerProcess:
    env = scorer_env(model, cache, PROVIDERS="cpu")
    env["PYTHONPATH"] = str(tree / "modules" / "scorer")
    server = ScorerProcess(env, cwd=tree)
    server.wait_ready()
    return server


def checkout(revision: str, folder: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(folder), revision],
        check=True,
    )
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--head", help="the revision to measure (default: this working tree)")
    catdog = SHARED / "models" / "cv-cls-catdog-negative-opset7"
    parser.add_argument("--model", type=Path, default=catdog)
    parser.add_argument("--image", type=Path, default=SHARED / "images" / "chelsea.jpg")
    parser.add_argument("--blocks", type=int, default=30, help="blocks of 50 per side")
    args = parser.parse_args()
    image = args.image.read_bytes()
    with tempfile.TemporaryDirectory() as work:
        trees = {f"base ({args.base})": checkout(args.base, Path(work) / "base")}
        trees[f"head ({args.head})" if args.head else "this tree"] = (
            checkout(args.head, Path(work) / "head") if args.head else REPO
        )
        servers: dict[str, ScorerProcess] = {}
        try:
            servers = {
                name: start(tree, args.model.resolve(), Path(work) / f"cache{i}")
                for i, (name, tree) in enumerate(trees.items())
            }
            clients = {name: HttpClient(s.url) for name, s in servers.items()}
            workers = {name: worker_pid(s.proc.pid) for name, s in servers.items()}
            latencies: dict[str, list[float]] = {name: [] for name in servers}
            cpu = dict.fromkeys(servers, 0.0)
            for name in servers:  # warm both up
                for _ in range(BLOCK):
                    clients[name].score(image)
            for block in range(args.blocks):
                names = list(servers) if block % 2 else list(reversed(servers))
                for name in names:
                    before = cpu_seconds(workers[name])
                    for _ in range(BLOCK):
                        started = time.perf_counter()
                        clients[name].score(image)
                        latencies[name].append((time.perf_counter() - started) * 1000)
                    cpu[name] += cpu_seconds(workers[name]) - before
        finally:
            for server in servers.values():
                server.stop()
            for tree in trees.values():
                if tree != REPO:
                    subprocess.run(
                        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)]
                    )
    print(f"model {args.model.name}, image {args.image.name}, {args.blocks} x {BLOCK} each")
    figures = {}
    for name, values in latencies.items():
        ordered = sorted(values)
        figures[name] = (
            statistics.median(ordered),
            ordered[int(len(ordered) * 0.9)],
            cpu[name] / len(values) * 1000,
        )
        p50, p90, per_request = figures[name]
        print(f"{name:24} p50 {p50:6.2f} ms  p90 {p90:6.2f} ms  CPU {per_request:5.2f} ms/request")
    (b50, _, bcpu), (n50, _, ncpu) = figures.values()
    change = n50 / b50 - 1
    print(f"{'change':24} p50 {n50 - b50:+6.2f} ms ({change:+.1%})  CPU {ncpu - bcpu:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
