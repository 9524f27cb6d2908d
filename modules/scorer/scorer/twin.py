"""The scorer's module twin, as pure functions: desired properties applied to the serving
defaults, and the status that reported properties and `getStatus` carry."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry


@dataclasses.dataclass(frozen=True)
class EdgeDefaults:
    """What the twin sets; every field maps to one desired property."""

    threshold: float = 0.0
    max_predictions: int = 0  # 0: all
    publish_results: bool = True

    def to_twin(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "maxPredictions": self.max_predictions,
            "publishResults": self.publish_results,
        }


def _threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("must be a number from 0 to 1")
    return float(value)


def _max_predictions(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 (all) or more")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


DESIRED_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "threshold": ("threshold", _threshold),
    "maxPredictions": ("max_predictions", _max_predictions),
    "publishResults": ("publish_results", _flag),
}


def apply_desired(
    defaults: EdgeDefaults, desired: Mapping[str, Any]
) -> tuple[EdgeDefaults, dict[str, str]]:
    """The defaults with the valid desired keys applied, and an error per rejected key (a
    rejected key keeps its value). Twin metadata (`$version`, ...) is ignored."""
    changes: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, value in desired.items():
        if key.startswith("$"):
            continue
        if key not in DESIRED_FIELDS:
            errors[key] = "unknown property"
            continue
        field, parse = DESIRED_FIELDS[key]
        try:
            changes[field] = parse(value)
        except ValueError as error:
            errors[key] = f"{error} (got {json.dumps(value)})"
    return dataclasses.replace(defaults, **changes), errors


def request_counts(registry: CollectorRegistry) -> dict[str, int]:
    """Requests answered so far, by error code (`ok` for successes), from the metrics."""
    return {
        sample.labels["code"]: int(sample.value)
        for metric in registry.collect()
        if metric.name == "scorer_requests"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
