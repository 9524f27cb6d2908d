#!/usr/bin/env python3
"""What preparing a session before serving buys, per execution provider, in process.

For each model (the demo models, and the exports in ../shared/models when present):
  - the floor: bare `InferenceSession.run` on a numpy input, p50;
  - ours: `LoadedModel.run` with IO binding off and on (fixed-size inputs), p50 / floor;
  - start: opening the session and warming up (every input size for the YOLO export),
    with an empty engine cache and again with the cache the first start left;
  - the first run of an input size not warmed up, against the next run of that size
    (what a camera's first frame would pay without `SCORER_WARM_EVERY_SIZE`);
  - on CUDA, each `SCORER_CUDNN_CONV_ALGO_SEARCH`: start and p50;
  - on TensorRT, FP16 against FP32.
Ratios are of the same run. Usage:
  .venv/bin/python bench/preparation.py [--provider cpu|cuda|tensorrt] [--runs N] [--shared DIR]
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
sys.path[:0] = [str(REPO), str(REPO / "modules" / "scorer"), str(REPO / "scripts")]

import make_demo_models  # noqa: E402
import numpy as np  # noqa: E402
from scorer.model import inspect_export  # noqa: E402
from scorer.session import LoadedModel  # noqa: E402
from scorer.settings import Settings  # noqa: E402
from scorer.vocabulary import CudnnSearch  # noqa: E402
from scorer.worker_app import model_options, session_opener  # noqa: E402

from bench import provider_choice  # noqa: E402
from bench.provider_choice import provider_names  # noqa: E402


def p50_ms(call: Callable[[], object], runs: int) -> float:
    for _ in range(5):
        call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def opener(provider: str, cache: Path, **environ: str) -> Callable[[Path], LoadedModel]:
    """Opens a model as the worker does, with `SCORER_*` settings from `environ`."""
    settings = Settings.from_env(
        {"SCORER_CACHE_DIR": str(cache), **{f"SCORER_{k}": v for k, v in environ.items()}}
    )
    tensorrt = provider == "tensorrt"
    open_model = session_opener(settings, provider_names(provider))

    def open_folder(folder: Path) -> LoadedModel:
        model = open_model(inspect_export(folder, model_options(settings, tensorrt), cache))
        if model.providers[0] != provider_names(provider)[0]:
            raise SystemExit(f"{provider_names(provider)[0]} does not run here: {model.providers}")
        return model

    return open_folder


def blank(model: LoadedModel, size: tuple[int, int] | None = None) -> np.ndarray:
    """Random pixels at `size`, or at the model's own input size when it has a fixed one."""
    prep = model.spec.preprocessing
    size = size or prep.crop_size or prep.target_size
    rng = np.random.default_rng(0)
    shape = (1, 3, size[1], size[0])
    return rng.random(shape, dtype=np.float32).astype(model.spec.preprocessing.dtype)


def bench_fixed(name: str, folder: Path, provider: str, runs: int, work: Path) -> None:
    """Floor, ours unbound and bound, and the start with an empty and a kept cache."""
    starts = []
    for _ in range(2):  # into an empty engine cache, then from the one it left
        started = time.perf_counter()
        bound = opener(provider, work / name, IO_BINDING="on")(folder)
        bound.warm_up()
        starts.append(time.perf_counter() - started)
    unbound = opener(provider, work / name, IO_BINDING="off")(folder)
    spec = bound.spec
    tensor = blank(bound)
    floor = p50_ms(
        lambda: bound.session.run(list(spec.output_names), {spec.input_name: tensor}), runs
    )
    off = p50_ms(lambda: unbound.run(tensor), runs)
    on = p50_ms(lambda: bound.run(tensor), runs)
    print(
        f"{name:28} floor {floor:7.3f} ms | ours, IO binding off {off:7.3f} ({off / floor:.2f}x)"
        f" on {on:7.3f} ({on / floor:.2f}x) | start {starts[0]:6.2f} s, cached {starts[1]:6.2f} s"
    )


def bench_sizes(folder: Path, provider: str, runs: int, work: Path) -> None:
    """A YOLO export sized by pixel count: warm-up of every size against first-run costs."""
    started = time.perf_counter()
    model = opener(provider, work / "yolo", WARM_EVERY_SIZE="on", YOLO_RESIZE="export")(folder)
    model.warm_up()
    start = time.perf_counter() - started
    cold = opener(provider, work / "yolo-cold", WARM_EVERY_SIZE="off", YOLO_RESIZE="export")(folder)
    cold.warm_up()
    firsts, nexts = [], []
    for size in model.warm_sizes[:: max(1, len(model.warm_sizes) // 6)]:
        tensor = blank(cold, size)
        started = time.perf_counter()
        cold.run(tensor)
        firsts.append((time.perf_counter() - started) * 1000)
        nexts.append(p50_ms(lambda tensor=tensor: cold.run(tensor), max(5, runs // 10)))
    print(
        f"{'squares-yolo (export sizes)':28} {len(model.warm_sizes)} sizes warmed in {start:.2f} s"
        f" | first run of a new size {statistics.median(firsts):.2f} ms (max"
        f" {max(firsts):.2f}) against {statistics.median(nexts):.2f} ms after"
    )


def bench_cudnn_search(name: str, folder: Path, runs: int, work: Path) -> None:
    """What each cuDNN algorithm search costs at start and buys per run."""
    figures = []
    for search in CudnnSearch:
        started = time.perf_counter()
        model = opener("cuda", work / f"cudnn-{search.value}", CUDNN_CONV_ALGO_SEARCH=search.value)(
            folder
        )
        model.warm_up()
        start = time.perf_counter() - started
        tensor = blank(model)
        run = p50_ms(lambda model=model, tensor=tensor: model.run(tensor), runs)
        figures.append(f"{search.value} start {start:.2f} s, {run:.3f} ms")
    print(f"{name:28} cuDNN search: " + " | ".join(figures))


def bench_fp16(folder: Path, runs: int, work: Path) -> None:
    times = {}
    for fp16 in ("false", "true"):
        model = opener("tensorrt", work / f"fp16-{fp16}", TRT_FP16=fp16)(folder)
        model.warm_up()
        tensor = blank(model)
        times[fp16] = p50_ms(lambda model=model, tensor=tensor: model.run(tensor), runs)
    print(
        f"{folder.name:28} TensorRT FP32 {times['false']:.3f} ms, FP16 {times['true']:.3f} ms"
        f" ({times['true'] / times['false']:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=sorted(provider_choice.SETTINGS), default="cpu")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        make_demo_models.main(["make_demo_models.py", str(work / "demo")])
        models = work / "demo" / "models"
        fixed = {"colors": models / "colors", "squares": models / "squares"}
        shared = args.shared / "models"
        if shared.is_dir():
            fixed.update(
                {p.name: p for p in sorted(shared.iterdir()) if (p / "model.onnx").exists()}
            )
        print(f"provider {args.provider}, {args.runs} runs per figure")
        for name, folder in fixed.items():
            bench_fixed(name, folder, args.provider, args.runs, work)
        bench_sizes(models / "squares-yolo", args.provider, args.runs, work)
        if args.provider == "cuda":
            for name, folder in fixed.items():
                bench_cudnn_search(name, folder, args.runs, work)
        if args.provider == "tensorrt":
            for folder in (models / "colors", models / "squares"):
                bench_fp16(folder, args.runs, work)


if __name__ == "__main__":
    main()
