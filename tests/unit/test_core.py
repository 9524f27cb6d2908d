"""The core: options, readiness, the shared in-flight budget and its counters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from scorer.core import Code, ScoreOptions, Scorer, ScorerConfig, ScoringError
from scorer.model import inspect_export


@pytest.fixture
def colors(demo_dir: Path, make_scorer: Callable[..., Scorer]) -> Scorer:
    return make_scorer(demo_dir / "models" / "colors")


def _image(demo_dir: Path, name: str) -> bytes:
    return (demo_dir / "images" / name).read_bytes()


def test_result_has_the_container_shape_plus_model_timing_provider(
    colors: Scorer, demo_dir: Path
) -> None:
    body = colors.score(_image(demo_dir, "green.jpg")).to_dict()
    assert set(body) == {
        "id",
        "project",
        "iteration",
        "created",
        "predictions",
        "model",
        "timing",
        "provider",
    }
    assert body["predictions"][0]["tagName"] == "green"
    assert set(body["predictions"][0]) == {"probability", "tagId", "tagName"}
    assert body["model"]["kind"] == "classification"
    assert body["provider"] == "CPUExecutionProvider"
    assert body["created"].endswith("Z")
    assert body["timing"]["totalMs"] >= body["timing"]["inferenceMs"] > 0


def test_threshold_and_max_predictions(colors: Scorer, demo_dir: Path) -> None:
    image = _image(demo_dir, "blue.jpg")
    assert len(colors.score(image).predictions) == 3
    assert [p.tag_name for p in colors.score(image, ScoreOptions(threshold=0.5)).predictions] == [
        "blue"
    ]
    assert len(colors.score(image, ScoreOptions(max_predictions=2)).predictions) == 2


def test_configured_defaults_apply_when_the_request_says_nothing(
    demo_dir: Path, make_scorer: Callable[..., Scorer]
) -> None:
    scorer = make_scorer(demo_dir / "models" / "colors", default_max_predictions=1)
    assert len(scorer.score(_image(demo_dir, "red.jpg")).predictions) == 1


@pytest.mark.parametrize(
    "options",
    [ScoreOptions(threshold=1.5), ScoreOptions(threshold=-0.1), ScoreOptions(max_predictions=-1)],
)
def test_out_of_range_options_are_invalid_argument(
    colors: Scorer, demo_dir: Path, options: ScoreOptions
) -> None:
    with pytest.raises(ScoringError) as caught:
        colors.score(_image(demo_dir, "red.jpg"), options)
    assert caught.value.code is Code.INVALID_ARGUMENT


def test_not_ready_before_load(demo_dir: Path) -> None:
    scorer = Scorer(inspect_export(demo_dir / "models" / "colors"), ScorerConfig("c", "1"))
    assert not scorer.ready
    with pytest.raises(ScoringError) as caught:
        scorer.score(_image(demo_dir, "red.jpg"))
    assert caught.value.code is Code.NOT_READY


def test_empty_image_is_empty_body(colors: Scorer) -> None:
    with pytest.raises(ScoringError) as caught:
        colors.score(b"")
    assert caught.value.code is Code.EMPTY_BODY


def test_in_flight_budget_refuses_at_once_when_full(
    demo_dir: Path, make_scorer: Callable[..., Scorer]
) -> None:
    scorer = make_scorer(demo_dir / "models" / "colors", max_inflight=2)
    with scorer.admit(), scorer.admit():
        with pytest.raises(ScoringError) as caught, scorer.admit():
            pass
        assert caught.value.code is Code.OVERLOADED
    with scorer.admit():  # slots come back
        pass


def test_errors_inside_admission_are_counted_by_code(colors: Scorer) -> None:
    with pytest.raises(ScoringError), colors.admit():
        colors.score(b"junk")
    sample = colors.metrics.registry.get_sample_value(
        "scorer_requests_total", {"code": "INVALID_IMAGE"}
    )
    assert sample == 1.0


def test_model_info_reports_providers_and_hash(colors: Scorer) -> None:
    info = colors.model_info()
    assert info["providers"] == ["CPUExecutionProvider"]
    assert len(info["sha256"]) == 64 and info["labels"] == ["red", "green", "blue"]
    assert info["inputShape"] == [1, 3, 224, 224] and info["ready"] is True
