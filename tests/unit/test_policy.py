"""The relay's policy: pure functions, checked on hand-made results."""

from __future__ import annotations

import json
import re

import pytest
from relay import policy as rules
from relay.policy import AlertRule, LabelStats, Policy, WindowTotals


def result(*predictions: tuple[str, float], rid: str = "r1") -> dict:
    return {
        "id": rid,
        "created": "2026-11-25T10:00:00.000Z",
        "model": {"name": "m", "version": "1", "kind": "detection"},
        "predictions": [{"tagName": t, "probability": p, "tagId": 0} for t, p in predictions],
    }


def test_filter_keeps_labels_above_the_minimum() -> None:
    policy = Policy(min_probability=0.5, labels=("defect",))
    kept = rules.kept_detections(result(("defect", 0.9), ("defect", 0.4), ("ok", 0.99)), policy)
    assert [(d.label, d.probability) for d in kept] == [("defect", 0.9)]


def test_empty_label_list_keeps_every_label() -> None:
    kept = rules.kept_detections(result(("a", 0.6), ("b", 0.7)), Policy(min_probability=0.5))
    assert {d.label for d in kept} == {"a", "b"}


def test_alert_rules_match_on_their_own_threshold_ignoring_the_filter() -> None:
    policy = Policy(min_probability=0.9, labels=("x",), alerts=(AlertRule("fire", 0.3),))
    matches = rules.alert_matches(result(("fire", 0.35), ("fire", 0.2)), policy)
    assert [(d.label, d.probability) for d in matches] == [("fire", 0.35)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"predictions": {"a": 1}}', "predictions is not a list"),
        (b'{"predictions": [3]}', "predictions[0] is not an object"),
        (b'{"predictions": [{"tagName": 3, "probability": 0.5}]}', "tagName"),
        (b'{"predictions": [{"tagName": "a", "probability": true}]}', "probability"),
        (b'{"predictions": [{"tagName": "a", "probability": NaN}]}', "NaN"),
        (b'{"predictions": [{"tagName": "a", "probability": Infinity}]}', "Infinity"),
        (b'{"predictions": [{"tagName": "a", "probability": 1.5}]}', "from 0 to 1"),
        (
            b'{"predictions": [{"tagName": "a", "probability": 0.5, "boundingBox": [1, 2]}]}',
            "boundingBox",
        ),
        (b'{"id": 7, "predictions": []}', "id is not a string"),
        # RecursionError and OverflowError went past the door to the generic handler
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"predictions": [{"tagName": "a", "probability": 1' + b"0" * 3999 + b"}]}", "from 0"),
        (
            b'{"predictions": [{"tagName": "a", "probability": 0.5, "boundingBox": {"left": 1'
            + b"0" * 3999
            + b', "top": 0, "width": 0, "height": 0}}]}',
            "boundingBox",
        ),
    ],
)
def test_malformed_results_are_refused_at_the_door_with_the_reason(
    payload: bytes, reason: str
) -> None:
    with pytest.raises(rules.InvalidResult, match=re.escape(reason)):
        rules.parse_result(payload)


def test_a_well_formed_result_passes_the_door() -> None:
    parsed = rules.parse_result(json.dumps(result(("cat", 0.9))).encode())
    assert [d.label for d in rules.detections(parsed)] == ["cat"]


def test_bodies_are_strict_json() -> None:
    with pytest.raises(ValueError):
        rules.encode({"probability": float("nan")})


def test_an_alert_with_thousands_of_detections_fits_iot_hub_and_says_what_it_left_out() -> None:
    many = result(*((f"defect-{i:05d}", 0.5 + (i % 500) / 1000) for i in range(5000)))
    for p in many["predictions"]:  # detections carry boxes: 5,000 of them are ~400 KB
        p["boundingBox"] = {"left": 0.123456, "top": 0.234567, "width": 0.1, "height": 0.2}
    matches = rules.detections(many)
    alert = rules.alert_message(many, matches)
    body = json.loads(alert.body)
    assert len(alert.body) <= rules.BODY_LIMIT
    assert len(body["matches"]) + body["truncated"] == 5000 and body["truncated"] > 0
    kept = [m["probability"] for m in body["matches"]]
    assert min(kept) >= max(
        d.probability for d in matches if d.label not in {m["label"] for m in body["matches"]}
    )  # the most probable ones were kept


def test_a_small_alert_is_not_marked_truncated() -> None:
    small = result(("defect", 0.9))
    assert "truncated" not in json.loads(rules.alert_message(small, rules.detections(small)).body)


def test_fold_of_forty_thousand_labels_counts_each_once() -> None:
    d = rules.Detection
    found = [d(f"label-{i}", 0.5) for i in range(40_000)] + [d("label-0", 0.9)]
    window = rules.fold({}, found, "2026-01-01T00:00:01Z")
    assert len(window) == 40_000
    stamp = "2026-01-01T00:00:01Z"
    assert window["label-0"] == LabelStats(1, 2, 0.9, stamp, stamp)


def test_fold_accumulates_frames_detections_max_and_times() -> None:
    d = rules.Detection
    window = rules.fold({}, [d("a", 0.6), d("a", 0.8), d("b", 0.7)], "2026-01-01T00:00:01Z")
    window.update(rules.fold(window, [d("a", 0.9)], "2026-01-01T00:00:05Z"))
    assert window["a"] == LabelStats(2, 3, 0.9, "2026-01-01T00:00:01Z", "2026-01-01T00:00:05Z")
    assert window["b"] == LabelStats(1, 1, 0.7, "2026-01-01T00:00:01Z", "2026-01-01T00:00:01Z")


def test_messages_carry_type_label_and_unique_ids() -> None:
    r = result(("cat", 0.7), ("dog", 0.95))
    detections = rules.kept_detections(r, Policy(min_probability=0.5))
    alert = rules.alert_message(r, detections)
    other = rules.result_message(r, detections)
    assert alert.properties == {"type": "alert", "label": "dog"}
    assert other.properties == {"type": "result", "label": "dog"}
    assert alert.message_id != other.message_id
    body = json.loads(alert.body)
    assert body["resultId"] == "r1" and len(body["matches"]) == 2


def test_summary_fits_and_splits_under_the_hub_limit() -> None:
    labels = {
        f"label-{i:05d}-" + "x" * 200: LabelStats(
            i, i, 0.5, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"
        )
        for i in range(3000)
    }
    totals = WindowTotals("s", "e", frames=5000, sent=10, folded=7)
    parts = rules.summary_messages(totals, labels)
    assert len(parts) > 1
    bodies = [json.loads(p.body) for p in parts]
    assert all(len(p.body) <= rules.MAX_MESSAGE_BYTES - rules.PROPERTY_ALLOWANCE for p in parts)
    assert sum(len(b["labels"]) for b in bodies) == 3000
    assert {b["parts"] for b in bodies} == {len(parts)}
    assert all(b["frames"] == 5000 and b["folded"] == 7 for b in bodies)
    assert len({p.message_id for p in parts}) == len(parts)


def test_small_summary_is_one_message() -> None:
    stats = {"a": LabelStats(1, 2, 0.9, "t1", "t2")}
    (only,) = rules.summary_messages(WindowTotals("s", "e", 3, 1, 0), stats)
    body = json.loads(only.body)
    assert only.properties == {"type": "summary"}
    assert body["labels"]["a"] == {
        "frames": 1,
        "detections": 2,
        "maxProbability": 0.9,
        "firstSeen": "t1",
        "lastSeen": "t2",
    }


def test_desired_properties_apply_and_echo() -> None:
    desired = {
        "$version": 4,
        "minProbability": 0.7,
        "labels": ["defect"],
        "alerts": [{"label": "fire", "minProbability": 0.2}],
        "summaryWindowSeconds": 30,
        "maxMessagesPerMinute": 5,
        "alertCooldownSeconds": 60,
        "maxMessageAgeSeconds": 3600,
        "resultBatchSeconds": 10,
        "sendRejected": True,
    }
    policy, errors = rules.apply_desired(Policy(), desired)
    assert errors == {}
    assert policy == Policy(
        0.7, ("defect",), (AlertRule("fire", 0.2),), 30.0, 5, 60.0, 3600.0, 10.0, True
    )
    assert policy.to_twin() == {k: v for k, v in desired.items() if k != "$version"}


def test_an_alert_rule_without_a_minimum_takes_the_policy_minimum() -> None:
    policy, errors = rules.apply_desired(Policy(), {"alerts": [{"label": "dog"}]})
    assert errors == {} and policy.alerts == (AlertRule("dog", None),)
    faint = result(("dog", 2.7e-24), ("dog", 0.6))
    assert [d.probability for d in rules.alert_matches(faint, policy)] == [0.6]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("minProbability", "high"),
        ("minProbability", 1.5),
        ("minProbability", True),
        ("labels", "defect"),
        ("alerts", [{"minProbability": 0.5}]),
        ("summaryWindowSeconds", 0),
        ("maxMessagesPerMinute", 2.5),
        ("resultBatchSeconds", 3601),
        ("resultBatchSeconds", -1),
        ("sendRejected", 1),
        ("colour", "blue"),
    ],
)
def test_a_wrong_desired_value_is_rejected_and_the_rest_applied(key: str, value: object) -> None:
    before = Policy(min_probability=0.4)
    policy, errors = rules.apply_desired(
        before,
        {key: value, "maxMessagesPerMinute": 9} if key != "maxMessagesPerMinute" else {key: value},
    )
    assert key in errors
    if key != "maxMessagesPerMinute":
        assert policy.max_messages_per_minute == 9
    assert policy.min_probability == 0.4


def test_a_batch_of_results_is_one_strict_json_message_holding_each_result() -> None:
    singles = [
        rules.result_message(result(("dog", 0.9), rid=f"r{i}"), [rules.Detection("dog", 0.9)])
        for i in range(3)
    ]
    batch = rules.results_message([m.body for m in singles], "first+3")
    body = json.loads(batch.body)
    assert body["type"] == "results" and body["count"] == 3
    assert [r["resultId"] for r in body["results"]] == ["r0", "r1", "r2"]
    assert batch.properties == {"type": "results"} and batch.message_id == "first+3"
    overhead = len(batch.body) - sum(len(m.body) for m in singles)
    assert overhead <= rules.RESULTS_OVERHEAD + len(singles)


def test_a_rejected_notice_is_small_and_keeps_only_an_excerpt() -> None:
    payload = b'{"predictions": "' + b"x" * 100_000 + b'\xff"}'
    notice = rules.rejected_message("m1", "predictions is not a list", payload, "t")
    body = json.loads(notice.body)
    assert body["type"] == "rejected" and body["messageId"] == "m1"
    assert body["reason"] == "predictions is not a list"
    assert len(body["excerpt"]) == rules.REJECTED_EXCERPT_CHARS
    assert len(notice.body) < 2048 and notice.properties == {"type": "rejected"}
