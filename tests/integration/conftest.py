"""Start the real scorer (`python -m scorer`, gunicorn) on 127.0.0.1 with a free port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import REPO

LISTENING = re.compile(r"HTTP listening on http://127\.0\.0\.1:(\d+)")


class ScorerProcess:
    """A running `python -m scorer` with its log, address and exit status."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.port: int | None = None
        self._listening = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scorer"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                self._listening.set()
        self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, timeout: float = 30) -> None:
        if not self._listening.wait(timeout) or self.port is None:
            raise AssertionError(f"scorer did not start listening:\n{self.log}")

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_listening()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"scorer exited with {self.proc.returncode}:\n{self.log}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"scorer never became ready:\n{self.log}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def scorer_env(model_dir: Path, cache_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a scorer on a free port, as the README starts it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update(
        PYTHONPATH=str(REPO / "modules" / "scorer"),
        SCORER_MODEL_DIR=str(model_dir),
        SCORER_CACHE_DIR=str(cache_dir),
        SCORER_HOST="127.0.0.1",
        SCORER_HTTP_PORT="0",
        SCORER_GRPC_PORT="0",
    )
    env.update({f"SCORER_{k.upper()}": v for k, v in settings.items()})
    return env


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
    channels, layers = 64, 10
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
