#!/usr/bin/env python3
"""What the app a worker thread runs costs around the core, in one process, no sockets.

Three targets, in interleaved blocks of calls on one thread:
- **core**: `Scorer.score` (decode, preprocess, run, decode the outputs);
- **app**: the Flask app on `POST /score`, called as the worker's thread calls it
  (`exchange.call_app` on a parsed request): routing, the slot, options, the body, the
  core, the JSON answer, the hooks;
- **app, fixed answer**: the same app around a scorer that answers one fixed result at
  once: the app's own code with no inference between two calls.

    .venv/bin/python bench/app_cost.py [--model DIR] [--image FILE] [--blocks 12]

The difference between "app" and "core" against "app, fixed answer" says how much of the
app's cost is its code and how much is that code (and the core's) running after another
inference has been through the CPU's caches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / p) for p in ("", "modules/scorer", "scripts")]

import h11  # noqa: E402
import make_demo_models  # noqa: E402
from scorer import heap  # noqa: E402
from scorer.core import Result, ScoreOptions, Scorer  # noqa: E402
from scorer.exchange import Peer, call_app, wsgi_environ  # noqa: E402
from scorer.http import create_app  # noqa: E402
from scorer.model import inspect_export  # noqa: E402
from scorer.session import open_session  # noqa: E402
from scorer.settings import Settings  # noqa: E402
from scorer.worker_app import model_options, scorer_config  # noqa: E402

CALLS_PER_BLOCK = 40
PEER = Peer(("127.0.0.1", 40000), ("127.0.0.1", 8080), "http")


class FixedAnswer(Scorer):
    """Answers every image with one result at once: the app's own cost, no inference."""

    def __init__(self, scorer: Scorer, result: Result) -> None:
        super().__init__(scorer.spec, scorer.config)
        self.result = result

    def score(self, image: bytes, options: ScoreOptions | None = None) -> Result:
        return self.result


def app_call(scorer: Scorer, image: bytes) -> Callable[[], object]:
    """One `POST /score` of `image`, as the worker's thread runs it."""
    app = create_app(scorer)
    request = h11.Request(
        method="POST",
        target="/score",
        headers=[
            ("Host", "scorer"),
            ("Content-Type", "image/jpeg"),
            ("Content-Length", str(len(image))),
        ],
    )
    return lambda: call_app(app, wsgi_environ(request, image, PEER))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an export folder (default: demo squares-yolo)")
    parser.add_argument("--image", type=Path, help="a JPEG (default: the demo's squares.jpg)")
    parser.add_argument("--blocks", type=int, default=12)
    args = parser.parse_args()
    demo = Path(tempfile.mkdtemp(prefix="app-cost-"))
    if args.model is None or args.image is None:
        make_demo_models.main(["make_demo_models.py", str(demo)])
    model = args.model or demo / "models" / "squares-yolo"
    image = (args.image or demo / "images" / "squares.jpg").read_bytes()

    heap.keep_request_memory()  # as the worker does
    settings = Settings.from_env({"SCORER_PROVIDERS": "cpu"})
    spec = inspect_export(model, model_options(settings), demo)
    scorer = Scorer(spec, scorer_config(settings, spec))
    scorer.load(lambda s: open_session(s, ["CPUExecutionProvider"]))
    targets: dict[str, Callable[[], object]] = {
        "core": lambda: scorer.score(image),
        "app": app_call(scorer, image),
        "app, fixed answer": app_call(FixedAnswer(scorer, scorer.score(image)), image),
    }
    for call in targets.values():  # warm every path
        for _ in range(CALLS_PER_BLOCK):
            call()
    medians: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(args.blocks):
        for name, call in targets.items():
            samples = []
            for _ in range(CALLS_PER_BLOCK):
                started = time.perf_counter()
                call()
                samples.append((time.perf_counter() - started) * 1000)
            medians[name].append(statistics.median(samples))
    p50 = {name: statistics.median(values) for name, values in medians.items()}
    spread = {name: f"{min(values):.3f}-{max(values):.3f}" for name, values in medians.items()}
    added = p50["app"] - p50["core"]
    own = p50["app, fixed answer"]
    print(f"{model.name}, {len(image)} bytes, {args.blocks} blocks of {CALLS_PER_BLOCK}, p50:")
    for name in targets:
        print(f"  {name:18} {p50[name]:6.3f} ms (blocks {spread[name]})")
    print(
        f"  the app adds {added:.3f} ms to the core: its own code {own:.3f} ms when nothing runs"
        f" between, and {added - own:.3f} ms more for running after an inference"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
