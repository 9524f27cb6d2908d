"""Fixtures shared by every test folder: demo models, the real exports, scorers in process."""

from __future__ import annotations

import errno
import functools
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import make_demo_models
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scorer.core import Scorer, ScorerConfig
from scorer.model import ModelOptions, inspect_export

from tests.scorer_process import ScorerProcess, scorer_env

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MODELS = SHARED / "models"
SHARED_IMAGES = SHARED / "images"


def shared_model_dirs() -> list[Path]:
    """Every real Custom Vision export in ../shared/models (empty when the folder is absent)."""
    if not SHARED_MODELS.is_dir():
        return []
    return sorted(p for p in SHARED_MODELS.iterdir() if (p / "model.onnx").is_file())


@functools.cache
def cuda_works() -> bool:
    """Whether CUDA really initialises here (a GPU, its driver and onnxruntime-gpu)."""
    from scorer import providers

    return providers.provider_works("CUDAExecutionProvider")[0]


def require_shared(path: Path) -> Path:
    """The path, or a skip that says why the real-model tests cannot run."""
    if not path.exists():
        pytest.skip(f"{path} is absent: real Custom Vision exports/photos are not available here")
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo models and images, generated fresh for this test session."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_models.main(["make_demo_models.py", str(out)])
    return out


@pytest.fixture(scope="session")
def demo_answers(demo_dir: Path) -> dict[str, dict]:
    return json.loads((demo_dir / "images" / "answers.json").read_text())


@pytest.fixture(scope="session")
def shared_images() -> Path:
    return require_shared(SHARED_IMAGES)


@pytest.fixture(scope="session")
def make_scorer(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Scorer]:
    """Build a loaded, CPU-only scorer for a model folder, with optional config overrides."""
    from scorer.session import open_session

    cache = tmp_path_factory.mktemp("model-cache")

    def build(model_dir: Path, options: ModelOptions | None = None, **config) -> Scorer:
        spec = inspect_export(model_dir, options or ModelOptions(), cache)
        scorer = Scorer(spec, ScorerConfig(model_dir.name, "test", **config))
        scorer.load(lambda s: open_session(s, ["CPUExecutionProvider"]))
        return scorer

    return build


@pytest.fixture
def start_scorer(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ScorerProcess]]:
    """Factory: start a scorer for a model folder with extra settings; stopped after the test."""
    started: list[ScorerProcess] = []
    cache = tmp_path_factory.mktemp("cache")

    def start(
        model_dir: Path,
        wait: bool = True,
        nofile: tuple[int, int] | None = None,
        **settings: str,
    ) -> ScorerProcess:
        process = ScorerProcess(scorer_env(model_dir, cache, **settings), nofile=nofile)
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def slow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification export whose every run takes a long while: stacked 3x3 convolutions.

    Lets tests see the scorer before warm-up ends and keep a request in flight.
    """
    folder = tmp_path_factory.mktemp("slow-model")
    rng = np.random.default_rng(0)
    channels, layers = 128, 40
    nodes = [
        helper.make_node("Conv", ["data", "w0"], ["h0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (channels, 3, 3, 3)).astype(np.float32), "w0")
    ]
    for i in range(1, layers):
        nodes.append(
            helper.make_node(
                "Conv", [f"h{i - 1}", f"w{i}"], [f"h{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            )
        )
        inits.append(
            numpy_helper.from_array(
                rng.normal(0, 0.05, (channels, channels, 3, 3)).astype(np.float32), f"w{i}"
            )
        )
    nodes += [
        helper.make_node("ReduceMean", [f"h{layers - 1}"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["pooled", "fc"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["model_output"], axis=1),
    ]
    inits.append(numpy_helper.from_array(rng.normal(0, 1, (2, channels)).astype(np.float32), "fc"))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("model_output", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "labels.txt").write_text("a\nb\n")
    return folder


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, so the test can fill it without filling the machine."""
    folder = tmp_path / "volume"
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(volume: Path) -> Path:
    """Write a ballast file until the volume refuses more; the file, to free it later."""
    ballast = volume / "ballast"
    with ballast.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return ballast
