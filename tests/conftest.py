"""Fixtures shared by every test folder: demo models, the real exports, scorers in process."""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable
from pathlib import Path

import make_demo_models
import pytest
from scorer.core import Scorer, ScorerConfig
from scorer.model import ModelOptions, inspect_export

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MODELS = SHARED / "models"
SHARED_IMAGES = SHARED / "images"


def shared_model_dirs() -> list[Path]:
    """Every real Custom Vision export in ../shared/models (empty when the folder is absent)."""
    if not SHARED_MODELS.is_dir():
        return []
    return sorted(p for p in SHARED_MODELS.iterdir() if (p / "model.onnx").is_file())


def free_port() -> int:
    """A TCP port nothing listens on now (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
