"""The watchdog and device errors: a scorer that can no longer answer says so and stops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from scorer.core import Scorer, ScoringError
from scorer.watchdog import Watchdog


@pytest.fixture
def scorer(make_scorer: Callable[..., Scorer], demo_dir: Path) -> Scorer:
    return make_scorer(demo_dir / "models" / "colors")


def test_a_device_error_fails_the_scorer_for_good(scorer: Scorer, demo_dir: Path) -> None:
    assert scorer.served is not None
    model = scorer.served.model

    def broken(tensor: object) -> list:
        raise RuntimeError(
            "[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory access"
        )

    model.run = broken  # type: ignore[method-assign]
    image = (demo_dir / "images" / "red.jpg").read_bytes()
    with pytest.raises(RuntimeError):
        scorer.score(image)
    assert not scorer.ready and "device error" in (scorer.failure or "")
    with pytest.raises(ScoringError, match="restarting"):
        scorer.score(image)
    fatal: list[str] = []
    assert Watchdog(scorer, 60, fatal.append).check() == scorer.failure


def test_an_input_error_is_not_a_device_error(scorer: Scorer) -> None:
    with pytest.raises(ScoringError):
        scorer.score(b"not an image")
    assert scorer.ready and scorer.failure is None


def test_a_long_inference_trips_the_watchdog(scorer: Scorer) -> None:
    watchdog = Watchdog(scorer, timeout_s=5, on_fatal=lambda reason: None)
    assert watchdog.check() is None
    scorer._running[0] = 0.0  # an inference that started at the clock's origin, long ago
    reason = watchdog.check()
    assert reason is not None and "SCORER_INFERENCE_TIMEOUT_S=5" in reason
    assert not scorer.ready
