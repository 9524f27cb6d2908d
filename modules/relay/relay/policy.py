"""What goes up to IoT Hub: pure functions of a result, the policy and the window state.

The policy comes from the module twin's desired properties. Nothing here does I/O or keeps
time; callers pass `now` in and persist what these functions return.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

# IoT Hub's device-to-cloud message limit; bodies are kept under it with room for properties.
MAX_MESSAGE_BYTES = 256 * 1024
PROPERTY_ALLOWANCE = 4 * 1024


@dataclasses.dataclass(frozen=True)
class AlertRule:
    """Send at once every result with `label` at `min_probability` or more."""

    label: str
    min_probability: float


@dataclasses.dataclass(frozen=True)
class Policy:
    """The relay's behaviour; every field maps to one desired property of the module twin."""

    min_probability: float = 0.5
    labels: tuple[str, ...] = ()  # empty: every label
    alerts: tuple[AlertRule, ...] = ()
    summary_window_s: float = 60.0
    max_messages_per_minute: int = 60  # individual non-alert results; 0: summaries only

    def to_twin(self) -> dict[str, Any]:
        """The desired-property form of this policy, echoed in reported properties."""
        return {
            "minProbability": self.min_probability,
            "labels": list(self.labels),
            "alerts": [
                {"label": a.label, "minProbability": a.min_probability} for a in self.alerts
            ],
            "summaryWindowSeconds": self.summary_window_s,
            "maxMessagesPerMinute": self.max_messages_per_minute,
        }


def _probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("must be a number from 0 to 1")
    return float(value)


def _labels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of label names")
    return tuple(value)


def _alerts(value: Any) -> tuple[AlertRule, ...]:
    if not isinstance(value, list):
        raise ValueError('must be a list of {"label": ..., "minProbability": ...}')
    rules = []
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("label"), str):
            raise ValueError('each alert needs a "label" string')
        rules.append(AlertRule(item["label"], _probability(item.get("minProbability", 0.0))))
    return tuple(rules)


def _window(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise ValueError("must be a number of seconds, 1 or more")
    return float(value)


def _per_minute(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


DESIRED_FIELDS = {
    "minProbability": ("min_probability", _probability),
    "labels": ("labels", _labels),
    "alerts": ("alerts", _alerts),
    "summaryWindowSeconds": ("summary_window_s", _window),
    "maxMessagesPerMinute": ("max_messages_per_minute", _per_minute),
}


def apply_desired(policy: Policy, desired: Mapping[str, Any]) -> tuple[Policy, dict[str, str]]:
    """The policy with the valid desired keys applied, and an error per rejected key.

    A key with a wrong type or value leaves that field as it was; unknown keys are reported.
    Twin metadata (`$version`, ...) is ignored.
    """
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
    return dataclasses.replace(policy, **changes), errors


@dataclasses.dataclass(frozen=True)
class Detection:
    """One prediction that passed the policy's filter."""

    label: str
    probability: float
    box: Mapping[str, float] | None = None


def detections(result: Mapping[str, Any]) -> list[Detection]:
    """The well-formed predictions of a scorer result (malformed entries are skipped)."""
    found = []
    for p in result.get("predictions", []):
        label, probability = p.get("tagName"), p.get("probability")
        if isinstance(label, str) and isinstance(probability, (int, float)):
            found.append(Detection(label, float(probability), p.get("boundingBox")))
    return found


def kept_detections(result: Mapping[str, Any], policy: Policy) -> list[Detection]:
    """Predictions at or above the minimum probability, of the labels to keep."""
    return [
        d
        for d in detections(result)
        if d.probability >= policy.min_probability
        and (not policy.labels or d.label in policy.labels)
    ]


def alert_matches(result: Mapping[str, Any], policy: Policy) -> list[Detection]:
    """Predictions that match an alert rule; alerts ignore the label filter and minimum."""
    return [
        d
        for d in detections(result)
        if any(r.label == d.label and d.probability >= r.min_probability for r in policy.alerts)
    ]


@dataclasses.dataclass(frozen=True)
class LabelStats:
    """One label's figures over a summary window."""

    frames: int
    detections: int
    max_probability: float
    first_seen: str
    last_seen: str


def fold(
    window: Mapping[str, LabelStats], detections: list[Detection], seen_at: str
) -> dict[str, LabelStats]:
    """The window's stats for the labels of one result, updated with its detections."""
    updated: dict[str, LabelStats] = {}
    for label in sorted({d.label for d in detections}):
        mine = [d for d in detections if d.label == label]
        best = max(d.probability for d in mine)
        old = window.get(label)
        updated[label] = (
            LabelStats(1, len(mine), best, seen_at, seen_at)
            if old is None
            else LabelStats(
                old.frames + 1,
                old.detections + len(mine),
                max(old.max_probability, best),
                min(old.first_seen, seen_at),
                max(old.last_seen, seen_at),
            )
        )
    return updated


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """A message for IoT Hub: JSON body, routing properties and a unique id."""

    kind: str  # alert | result | summary
    body: bytes
    message_id: str
    label: str = ""

    @property
    def properties(self) -> dict[str, str]:
        props = {"type": self.kind}
        if self.label:
            props["label"] = self.label
        return props


def encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _detection_json(d: Detection) -> dict[str, Any]:
    item: dict[str, Any] = {"label": d.label, "probability": d.probability}
    if d.box is not None:
        item["boundingBox"] = dict(d.box)
    return item


def _source(result: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "resultId": result.get("id", ""),
        "created": result.get("created", ""),
        "model": result.get("model", {}),
    }


def alert_message(result: Mapping[str, Any], matches: list[Detection]) -> Outgoing:
    """An alert for one result, labelled with its most probable match."""
    top = max(matches, key=lambda d: d.probability)
    body = {"type": "alert", **_source(result), "matches": [_detection_json(d) for d in matches]}
    return Outgoing("alert", encode(body), str(uuid.uuid4()), top.label)


def result_message(result: Mapping[str, Any], kept: list[Detection]) -> Outgoing:
    """One filtered result, labelled with its most probable detection."""
    top = max(kept, key=lambda d: d.probability)
    body = {"type": "result", **_source(result), "detections": [_detection_json(d) for d in kept]}
    return Outgoing("result", encode(body), str(uuid.uuid4()), top.label)


@dataclasses.dataclass(frozen=True)
class WindowTotals:
    """Counts over a summary window beside the per-label stats."""

    start: str
    end: str
    frames: int  # every result received in the window
    sent: int  # of those, sent individually as `result` messages
    folded: int  # of those, held back by the rate cap and only summarised here


def summary_messages(
    totals: WindowTotals,
    labels: Mapping[str, LabelStats],
    limit: int = MAX_MESSAGE_BYTES - PROPERTY_ALLOWANCE,
) -> list[Outgoing]:
    """The window's summary, split into parts that each fit IoT Hub's message size.

    Every part repeats the window totals and names its `part`/`parts`; the labels are spread
    over the parts, so summing `labels` over all parts gives the window.
    """
    entries = [
        (
            label,
            {
                "frames": s.frames,
                "detections": s.detections,
                "maxProbability": s.max_probability,
                "firstSeen": s.first_seen,
                "lastSeen": s.last_seen,
            },
        )
        for label, s in sorted(labels.items())
    ]
    window_id = str(uuid.uuid4())

    def body(chunk: list[tuple[str, dict]], part: int, parts: int) -> dict[str, Any]:
        return {
            "type": "summary",
            "windowId": window_id,
            "windowStart": totals.start,
            "windowEnd": totals.end,
            "frames": totals.frames,
            "sentIndividually": totals.sent,
            "folded": totals.folded,
            "part": part,
            "parts": parts,
            "labels": dict(chunk),
        }

    chunks: list[list[tuple[str, dict]]] = [[]]
    for entry in entries:
        candidate = [*chunks[-1], entry]
        if chunks[-1] and len(encode(body(candidate, 99999, 99999))) > limit:
            chunks.append([entry])
        else:
            chunks[-1] = candidate
    parts = len(chunks)
    return [
        Outgoing("summary", encode(body(chunk, i + 1, parts)), f"{window_id}-{i + 1}")
        for i, chunk in enumerate(chunks)
    ]


def minute_of(now: float) -> int:
    """The rate cap's bucket for a time in seconds."""
    return math.floor(now / 60)
