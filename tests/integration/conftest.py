"""Start the real scorer (`python -m scorer`, gunicorn) on 127.0.0.1 with a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.scorer_process import ScorerProcess, scorer_env

MAX_BODY = 1_000_000
MAX_PIXELS = 2_000_000


@pytest.fixture(scope="module")
def colors(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScorerProcess]:
    """One scorer on the demo colour model with small body and pixel limits, per module."""
    process = ScorerProcess(
        scorer_env(
            demo_dir / "models" / "colors",
            tmp_path_factory.mktemp("colors"),
            MAX_BODY_BYTES=str(MAX_BODY),
            MAX_IMAGE_PIXELS=str(MAX_PIXELS),
            PROVIDERS="cpu",  # its tests assert CPU, also on a machine with a GPU
        )
    )
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture
def start_scorer(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ScorerProcess]]:
    """Factory: start a scorer for a model folder with extra settings; stopped after the test."""
    started: list[ScorerProcess] = []
    cache = tmp_path_factory.mktemp("cache")

    def start(model_dir: Path, wait: bool = True, **settings: str) -> ScorerProcess:
        process = ScorerProcess(scorer_env(model_dir, cache, **settings))
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
