"""What goes up to IoT Hub: pure functions of a result, the policy and the window state.

The policy comes from the module twin's desired properties. Nothing here does I/O or keeps
time; callers pass `now` in and persist what these functions return.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from edgelink.desired import apply_fields, flag, probability, whole_number

# IoT Hub's device-to-cloud message limit; bodies are kept under it with room for properties.
MAX_MESSAGE_BYTES = 256 * 1024
PROPERTY_ALLOWANCE = 4 * 1024


@dataclasses.dataclass(frozen=True)
class AlertRule:
    """Send at once every result with `label` at `min_probability` or more (None: at the
    policy's `minProbability`, so a rule never fires on noise)."""

    label: str
    min_probability: float | None = None


@dataclasses.dataclass(frozen=True)
class Policy:
    """The relay's behaviour; every field maps to one desired property of the module twin."""

    min_probability: float = 0.5
    labels: tuple[str, ...] = ()  # empty: every label
    alerts: tuple[AlertRule, ...] = ()
    summary_window_s: float = 60.0
    max_messages_per_minute: int = 60  # individual non-alert results; 0: summaries only
    alert_cooldown_s: float = 0.0  # per label: one alert per episode, later ones counted
    max_message_age_s: float = 0.0  # results older than this are not sent (0: no limit)
    result_batch_s: float = 0.0  # results spooled within this long go up as one message
    send_rejected: bool = False  # each dead-lettered input also goes up once, as `rejected`

    def alert_threshold(self, rule: AlertRule) -> float:
        return self.min_probability if rule.min_probability is None else rule.min_probability

    def to_twin(self) -> dict[str, Any]:
        """The desired-property form of this policy, echoed in reported properties."""
        return {
            "minProbability": self.min_probability,
            "labels": list(self.labels),
            "alerts": [
                {"label": a.label}
                if a.min_probability is None
                else {"label": a.label, "minProbability": a.min_probability}
                for a in self.alerts
            ],
            "summaryWindowSeconds": self.summary_window_s,
            "maxMessagesPerMinute": self.max_messages_per_minute,
            "alertCooldownSeconds": self.alert_cooldown_s,
            "maxMessageAgeSeconds": self.max_message_age_s,
            "resultBatchSeconds": self.result_batch_s,
            "sendRejected": self.send_rejected,
        }


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
        threshold = item.get("minProbability")
        rule_threshold = None if threshold is None else probability(threshold)
        rules.append(AlertRule(item["label"], rule_threshold))
    return tuple(rules)


def _window(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise ValueError("must be a number of seconds, 1 or more")
    return float(value)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ValueError("must be a number of seconds, 0 or more")
    return float(value)


def _batch_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
        raise ValueError("must be a number of seconds from 0 to 3600")
    return float(value)


DESIRED_FIELDS = {
    "minProbability": ("min_probability", probability),
    "labels": ("labels", _labels),
    "alerts": ("alerts", _alerts),
    "summaryWindowSeconds": ("summary_window_s", _window),
    "maxMessagesPerMinute": ("max_messages_per_minute", whole_number),
    "alertCooldownSeconds": ("alert_cooldown_s", _seconds),
    "maxMessageAgeSeconds": ("max_message_age_s", _seconds),
    "resultBatchSeconds": ("result_batch_s", _batch_seconds),
    "sendRejected": ("send_rejected", flag),
}


def apply_desired(policy: Policy, desired: Mapping[str, Any]) -> tuple[Policy, dict[str, str]]:
    """The policy with the valid desired keys applied, and an error per rejected key.

    A key with a wrong type or value leaves that field as it was; unknown keys are reported.
    """
    return apply_fields(policy, desired, DESIRED_FIELDS)


@dataclasses.dataclass(frozen=True)
class Detection:
    """One prediction that passed the policy's filter."""

    label: str
    probability: float
    box: Mapping[str, float] | None = None


class InvalidResult(ValueError):
    """An input that is not a scorer result this relay can handle; the message says why."""


MAX_LABEL_CHARS = 256
BOX_FIELDS = ("left", "top", "width", "height")


MAX_EXACT_INT = 2**53  # beyond it an integer has no float (math.isfinite overflowed)


def _finite(value: Any) -> bool:
    # `True` is an int in Python but never a probability or a coordinate
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_EXACT_INT
    return isinstance(value, float) and math.isfinite(value)


def _reject_constant(name: str) -> Any:
    raise InvalidResult(f"{name} is not a number JSON allows")


def parse_result(payload: bytes) -> dict[str, Any]:
    """A scorer result, checked at the door: types, finiteness, ranges. Raises InvalidResult."""
    try:
        result = json.loads(payload, parse_constant=_reject_constant)
    except InvalidResult:
        raise
    except ValueError as error:  # includes bad UTF-8 and integers over 4,300 digits
        raise InvalidResult(f"not JSON ({error})") from None
    except RecursionError:  # the parser's stack, not the process's
        raise InvalidResult("not JSON (nested too deeply)") from None
    if not isinstance(result, dict):
        raise InvalidResult("not a JSON object")
    for key in ("id", "created"):
        if key in result and not isinstance(result[key], str):
            raise InvalidResult(f"{key} is not a string")
    predictions = result.get("predictions", [])
    if not isinstance(predictions, list):
        raise InvalidResult("predictions is not a list")
    for index, p in enumerate(predictions):
        where = f"predictions[{index}]"
        if not isinstance(p, dict):
            raise InvalidResult(f"{where} is not an object")
        label = p.get("tagName")
        if not isinstance(label, str) or not label or len(label) > MAX_LABEL_CHARS:
            raise InvalidResult(f"{where}.tagName is not a label of 1-{MAX_LABEL_CHARS} characters")
        if not _finite(p.get("probability")) or not 0 <= p["probability"] <= 1:
            raise InvalidResult(f"{where}.probability is not a number from 0 to 1")
        box = p.get("boundingBox")
        if box is not None and (
            not isinstance(box, dict) or not all(_finite(box.get(k)) for k in BOX_FIELDS)
        ):
            raise InvalidResult(f"{where}.boundingBox is not left/top/width/height numbers")
    return result


def detections(result: Mapping[str, Any]) -> list[Detection]:
    """The predictions of a result that `parse_result` accepted."""
    return [
        Detection(
            p["tagName"],
            float(p["probability"]),
            {k: float(p["boundingBox"][k]) for k in BOX_FIELDS} if p.get("boundingBox") else None,
        )
        for p in result.get("predictions", [])
    ]


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
        if any(
            r.label == d.label and d.probability >= policy.alert_threshold(r) for r in policy.alerts
        )
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
    """The window's stats for the labels of one result, updated with its detections.

    One pass over the detections (a result with 40,000 labels must not take seconds)."""
    count: dict[str, int] = {}
    best: dict[str, float] = {}
    for d in detections:
        count[d.label] = count.get(d.label, 0) + 1
        best[d.label] = max(best.get(d.label, 0.0), d.probability)
    updated: dict[str, LabelStats] = {}
    for label in sorted(count):
        old = window.get(label)
        updated[label] = (
            LabelStats(1, count[label], best[label], seen_at, seen_at)
            if old is None
            else LabelStats(
                old.frames + 1,
                old.detections + count[label],
                max(old.max_probability, best[label]),
                min(old.first_seen, seen_at),
                max(old.last_seen, seen_at),
            )
        )
    return updated


class MessageKind(str, enum.Enum):
    """What a message upstream is; its application property `type`."""

    ALERT = "alert"
    RESULT = "result"
    RESULTS = "results"  # spooled results sent as one message (`resultBatchSeconds`)
    SUMMARY = "summary"
    REJECTED = "rejected"  # an input that was dead-lettered (`sendRejected`)


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """A message for IoT Hub: JSON body, routing properties and a unique id."""

    kind: MessageKind
    body: bytes
    message_id: str
    label: str = ""

    @property
    def properties(self) -> dict[str, str]:
        props = {"type": self.kind.value}
        if self.label:
            props["label"] = self.label
        return props


def encode(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; never NaN or Infinity, which JSON does not have."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


BODY_LIMIT = MAX_MESSAGE_BYTES - PROPERTY_ALLOWANCE


def _fitting(
    make: Callable[[list[Detection], int], dict[str, Any]], found: list[Detection]
) -> bytes:
    """The body with as many detections as fit IoT Hub's message size, most probable first;
    `truncated` counts those left out (a message that does not fit would block the spool)."""
    body = encode(make(found, 0))
    if len(body) <= BODY_LIMIT:
        return body
    ranked = sorted(found, key=lambda d: d.probability, reverse=True)
    low, high = 0, len(ranked)  # the most detections that fit, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if len(encode(make(ranked[:middle], len(ranked) - middle))) <= BODY_LIMIT:
            low = middle
        else:
            high = middle - 1
    return encode(make(ranked[:low], len(ranked) - low))


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


def _message(
    kind: MessageKind,
    field: str,
    result: Mapping[str, Any],
    found: list[Detection],
    extra: Mapping[str, Any] | None = None,
) -> Outgoing:
    top = max(found, key=lambda d: d.probability)

    def make(chosen: list[Detection], truncated: int) -> dict[str, Any]:
        body = {"type": kind.value, **_source(result), **(extra or {})}
        body[field] = [_detection_json(d) for d in chosen]
        return {**body, "truncated": truncated} if truncated else body

    return Outgoing(kind, _fitting(make, found), str(uuid.uuid4()), top.label)


def alert_message(
    result: Mapping[str, Any], matches: list[Detection], suppressed: int = 0
) -> Outgoing:
    """An alert for one result, labelled with its most probable match; `suppressed` counts
    the label's matches held back by the cool-down since its last alert."""
    extra = {"suppressedSinceLast": suppressed} if suppressed else None
    return _message(MessageKind.ALERT, "matches", result, matches, extra)


def result_message(result: Mapping[str, Any], kept: list[Detection]) -> Outgoing:
    """One filtered result, labelled with its most probable detection."""
    return _message(MessageKind.RESULT, "detections", result, kept)


def results_message(bodies: list[bytes], message_id: str) -> Outgoing:
    """Result bodies spooled one by one, sent as one message: IoT Hub throttles and bills per
    message (in 4 KB units), so one message of many results costs far less than many."""
    body = b'{"type":"%s","count":%d,"results":[%s]}' % (
        MessageKind.RESULTS.value.encode(),
        len(bodies),
        b",".join(bodies),
    )
    return Outgoing(MessageKind.RESULTS, body, message_id)


# What a batch adds around its result bodies: the wrapper, and a comma per body.
RESULTS_OVERHEAD = len(results_message([], "").body)
REJECTED_EXCERPT_CHARS = 512


def rejected_message(message_id: str, reason: str, payload: bytes, at: str) -> Outgoing:
    """The notice of one dead-lettered input: why, and the start of what it was (text)."""
    body = {
        "type": MessageKind.REJECTED.value,
        "messageId": message_id,
        "reason": reason[:500],
        "at": at,
        "excerpt": payload[:REJECTED_EXCERPT_CHARS].decode("utf-8", "replace"),
    }
    return Outgoing(MessageKind.REJECTED, encode(body), str(uuid.uuid4()))


@dataclasses.dataclass(frozen=True)
class WindowTotals:
    """Counts over a summary window beside the per-label stats."""

    start: str
    end: str
    frames: int  # every result received in the window
    sent: int  # of those, sent individually as `result` messages
    folded: int  # of those, held back by the rate cap and only summarised here


def summary_messages(
    totals: WindowTotals, labels: Mapping[str, LabelStats], limit: int = BODY_LIMIT
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

    def body(chunk: list[tuple[str, dict[str, Any]]], part: int, parts: int) -> dict[str, Any]:
        return {
            "type": MessageKind.SUMMARY.value,
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

    # Sizes are added up entry by entry (re-encoding each growing part was quadratic).
    empty = len(encode(body([], 99999, 99999)))
    chunks: list[list[tuple[str, dict[str, Any]]]] = [[]]
    size = empty
    for entry in entries:
        grows = len(encode(dict([entry]))) - 2 + 1  # `"label":{...}` and a comma
        if chunks[-1] and size + grows > limit:
            chunks.append([])
            size = empty
        chunks[-1].append(entry)
        size += grows
    parts = len(chunks)
    return [
        Outgoing(MessageKind.SUMMARY, encode(body(chunk, i + 1, parts)), f"{window_id}-{i + 1}")
        for i, chunk in enumerate(chunks)
    ]


def minute_of(now: float) -> int:
    """The rate cap's bucket for a time in seconds."""
    return math.floor(now / 60)
