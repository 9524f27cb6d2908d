"""Start the real scorer (`python -m scorer`, gunicorn) on 127.0.0.1 with a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
