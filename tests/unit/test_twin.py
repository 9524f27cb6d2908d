"""The scorer's twin as pure functions, and the bounded result queue behind the output."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter
from scorer import twin
from scorer.core import Result, Timing
from scorer.decode import Prediction
from scorer.result_queue import ResultQueue


def test_desired_properties_apply_and_bad_ones_keep_their_value() -> None:
    defaults, errors = twin.apply_desired(
        twin.EdgeDefaults(),
        {"$version": 3, "threshold": 0.4, "maxPredictions": 5, "publishResults": False},
    )
    assert errors == {}
    assert defaults == twin.EdgeDefaults(0.4, 5, False)
    assert defaults.to_twin() == {"threshold": 0.4, "maxPredictions": 5, "publishResults": False}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("threshold", 1.5),
        ("threshold", True),
        ("maxPredictions", -1),
        ("maxPredictions", 2.5),
        ("publishResults", "yes"),
        ("colour", "blue"),
    ],
)
def test_a_wrong_desired_value_is_rejected_with_its_reason(key: str, value: object) -> None:
    before = twin.EdgeDefaults(0.3, 2, True)
    after, errors = twin.apply_desired(before, {key: value, "threshold": 0.6} | {key: value})
    assert key in errors
    if key != "threshold":
        assert after == twin.EdgeDefaults(0.6, 2, True)
    else:
        assert after == before


def test_request_counts_come_from_the_metrics() -> None:
    registry = CollectorRegistry()
    requests = Counter("scorer_requests", "answers", ["code"], registry=registry)
    requests.labels("ok").inc(3)
    requests.labels("BAD_IMAGE").inc()
    assert twin.request_counts(registry) == {"ok": 3, "BAD_IMAGE": 1}


def _result(probability: float, rid: str = "r") -> Result:
    return Result(
        rid,
        "2026-11-30T00:00:00.000Z",
        (Prediction(probability, 0, "a"),),
        "m",
        "1",
        "classification",
        Timing(1.0, 2.0, 3.0),
        "cpu",
    )


def test_the_queue_drops_and_counts_when_full_and_never_blocks() -> None:
    results = ResultQueue(2)
    for i in range(5):
        results.publish(_result(0.5, f"r{i}"))
    assert len(results) == 2 and results.dropped == 3
    taken = results.take(0.01)
    assert taken is not None and taken[0] == "r0"
    assert json.loads(taken[1])["predictions"][0]["probability"] == 0.5
    results.take(0.01)
    assert results.take(0.01) is None


def test_a_disabled_queue_takes_nothing() -> None:
    results = ResultQueue(2)
    results.enabled = False
    results.publish(_result(0.5))
    assert len(results) == 0 and results.dropped == 0
