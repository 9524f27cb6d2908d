"""The scorer's module twin, as pure functions: desired properties applied to the serving
defaults, and the status that reported properties and `getStatus` carry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from edgelink.desired import apply_fields, flag, probability, whole_number
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


DESIRED_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "threshold": ("threshold", probability),
    "maxPredictions": ("max_predictions", whole_number),
    "publishResults": ("publish_results", flag),
}


def apply_desired(
    defaults: EdgeDefaults, desired: Mapping[str, Any]
) -> tuple[EdgeDefaults, dict[str, str]]:
    """The defaults with the valid desired keys applied, and an error per rejected key (a
    rejected key keeps its value)."""
    return apply_fields(defaults, desired, DESIRED_FIELDS)


def request_counts(registry: CollectorRegistry) -> dict[str, int]:
    """Requests answered so far, by error code (`ok` for successes), from the metrics."""
    return {
        sample.labels["code"]: int(sample.value)
        for metric in registry.collect()
        if metric.name == "scorer_requests"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
