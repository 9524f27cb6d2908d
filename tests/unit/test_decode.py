"""Output decoding for every export format, on crafted tensors with hand-computed answers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scorer import decode
from scorer.decode import LabelMismatch, YoloOptions

LABELS = ("cat", "dog", "Negative")


def test_classification_sorts_by_probability_and_keeps_tag_ids() -> None:
    predictions = decode.classification(np.array([[0.2, 0.7, 0.1]], np.float32), LABELS)
    assert [(p.tag_name, p.tag_id) for p in predictions] == [
        ("dog", 1),
        ("cat", 0),
        ("Negative", 2),
    ]
    assert predictions[0].probability == pytest.approx(0.7)
    assert all(p.box is None for p in predictions)


def test_classification_accepts_fp16_outputs() -> None:
    predictions = decode.classification(np.array([[0.25, 0.5, 0.25]], np.float16), LABELS)
    assert predictions[0].tag_name == "dog"
    assert isinstance(predictions[0].probability, float)


def test_classification_rejects_wrong_label_count() -> None:
    with pytest.raises(LabelMismatch, match="2 scores for 3 labels"):
        decode.classification(np.array([[0.5, 0.5]]), LABELS)


def test_zipmap_sequence_of_maps_in_label_order() -> None:
    loss = [{"Negative": 0.1, "cat": 0.85, "dog": 0.05}]
    assert decode.zipmap_probabilities(loss, LABELS).tolist() == pytest.approx([0.85, 0.05, 0.1])


def test_zipmap_bare_map_of_winml_exports() -> None:
    loss = {"cat": np.array([0.3], np.float32), "dog": np.array([0.6]), "Negative": [0.1]}
    assert decode.zipmap_probabilities(loss, LABELS).tolist() == pytest.approx([0.3, 0.6, 0.1])


def test_zipmap_with_other_tags_than_labels_is_a_mismatch() -> None:
    with pytest.raises(LabelMismatch, match=r"differ from labels\.txt"):
        decode.zipmap_probabilities([{"cat": 0.5, "bird": 0.5, "dog": 0.0}], LABELS)


def test_zipmap_batch_of_two_is_refused() -> None:
    with pytest.raises(LabelMismatch, match="one map per image"):
        decode.zipmap_probabilities([{}, {}], LABELS)


def test_detected_boxes_become_left_top_width_height_best_first() -> None:
    boxes = np.array([[[0.1, 0.2, 0.4, 0.6], [0.5, 0.5, 0.9, 0.7]]], np.float32)
    predictions = decode.detected_boxes(
        boxes, np.array([[0.3, 0.9]]), np.array([[2, 0]], np.int64), LABELS
    )
    assert [p.tag_name for p in predictions] == ["cat", "Negative"]
    best = predictions[0].box
    assert (best.left, best.top, best.width, best.height) == pytest.approx((0.5, 0.5, 0.4, 0.2))
    other = predictions[1].box
    assert (other.left, other.top, other.width, other.height) == pytest.approx((0.1, 0.2, 0.3, 0.4))


def test_detected_boxes_are_clipped_to_the_image() -> None:
    predictions = decode.detected_boxes(
        np.array([[[-0.2, 0.5, 1.3, 1.1]]]), np.array([[0.8]]), np.array([[1]]), LABELS
    )
    box = predictions[0].box
    assert (box.left, box.top, box.width, box.height) == pytest.approx((0.0, 0.5, 1.0, 0.5))


def test_detected_class_outside_labels_is_a_mismatch() -> None:
    with pytest.raises(LabelMismatch, match="class 3"):
        decode.detected_boxes(np.zeros((1, 1, 4)), np.ones((1, 1)), np.array([[3]]), LABELS)


def _grid(height: int, width: int, classes: int, anchors: int = 5) -> np.ndarray:
    """A YOLO output with every objectness very low: nothing detected unless a test sets it."""
    grid = np.zeros((height, width, anchors, 5 + classes), np.float32)
    grid[..., 4] = -20.0
    return grid


def _as_output(grid: np.ndarray) -> np.ndarray:
    height, width, anchors, depth = grid.shape
    return grid.reshape(height, width, anchors * depth).transpose(2, 0, 1)[None]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_yolo_box_from_one_cell_matches_hand_computation() -> None:
    grid = _grid(4, 4, 2)
    # row 1, column 2, anchor 3: tx=0.5, ty=-0.5, tw=0.2, th=-0.1, objectness logit 3
    grid[1, 2, 3, :5] = [0.5, -0.5, 0.2, -0.1, 3.0]
    grid[1, 2, 3, 5:] = [2.0, 0.0]
    predictions = decode.yolo(_as_output(grid), ("a", "b"), YoloOptions())
    anchor_w, anchor_h = decode.DEFAULT_ANCHORS[3]
    x = (_sigmoid(0.5) + 2) / 4
    y = (_sigmoid(-0.5) + 1) / 4
    w = math.exp(0.2) * anchor_w / 4
    h = math.exp(-0.1) * anchor_h / 4
    objectness = _sigmoid(3.0)
    p_a = math.exp(2) / (math.exp(2) + 1) * objectness
    p_b = 1 / (math.exp(2) + 1) * objectness
    left, top = max(x - w / 2, 0.0), max(y - h / 2, 0.0)
    right, bottom = min(x + w / 2, 1.0), min(y + h / 2, 1.0)
    assert p_b > 0.1  # class b of the same box is above the threshold too, but one box
    # takes part, so NMS stops after one pick (the script's `min(max_detections, boxes)`).
    assert [(p.tag_name, round(p.probability, 5)) for p in predictions] == [("a", round(p_a, 5))]
    box = predictions[0].box
    assert (box.left, box.top, box.width, box.height) == pytest.approx(
        (left, top, right - left, bottom - top), abs=1e-5
    )


def test_yolo_without_sigmoid_on_xy_uses_raw_offsets() -> None:
    grid = _grid(2, 2, 1)
    grid[0, 0, 0, :5] = [0.25, 0.5, 0.0, 0.0, 5.0]
    options = YoloOptions(sigmoid_xy=False)
    box = decode.yolo(_as_output(grid), ("a",), options)[0].box
    w, h = decode.DEFAULT_ANCHORS[0][0] / 2, decode.DEFAULT_ANCHORS[0][1] / 2
    assert box.left == pytest.approx(max(0.25 / 2 - w / 2, 0.0), abs=1e-6)
    assert box.top == pytest.approx(max(0.5 / 2 - h / 2, 0.0), abs=1e-6)
    with_sigmoid = decode.yolo(_as_output(grid), ("a",), YoloOptions())[0].box
    assert with_sigmoid.left != pytest.approx(box.left)


def _two_overlapping_boxes(classes: tuple[int, int]) -> np.ndarray:
    grid = _grid(2, 2, 2)
    for anchor, (cls, objectness) in enumerate(zip(classes, (4.0, 3.0), strict=True)):
        grid[0, 0, anchor, :5] = [0.0, 0.0, 0.0, 0.0, objectness]
        grid[0, 0, anchor, 5 + cls] = 10.0
    return _as_output(grid)


SAME_ANCHORS = YoloOptions(anchors=((1.0, 1.0),) * 5)  # two anchors of one cell: one box


def test_yolo_per_class_nms_keeps_overlapping_boxes_of_other_classes() -> None:
    predictions = decode.yolo(_two_overlapping_boxes((0, 1)), ("a", "b"), SAME_ANCHORS)
    assert sorted(p.tag_name for p in predictions if p.probability > 0.5) == ["a", "b"]


def test_yolo_per_class_nms_suppresses_same_class_overlap() -> None:
    predictions = decode.yolo(_two_overlapping_boxes((0, 0)), ("a", "b"), SAME_ANCHORS)
    assert [p.tag_name for p in predictions if p.probability > 0.5] == ["a"]


def test_yolo_global_nms_suppresses_overlap_across_classes() -> None:
    options = dataclasses.replace(SAME_ANCHORS, nms_per_class=False)
    predictions = decode.yolo(_two_overlapping_boxes((0, 1)), ("a", "b"), options)
    assert [p.tag_name for p in predictions] == ["a"]


def test_nms_stops_after_as_many_picks_as_boxes_above_the_threshold() -> None:
    """Two boxes above 0.10, one of them with two classes above it: two predictions, not
    three (per-class NMS would give the first box back under its second class)."""
    grid = _grid(4, 4, 2)
    grid[0, 0, 0, :5] = [0.0, 0.0, 0.0, 0.0, 5.0]
    grid[0, 0, 0, 5:] = [1.0, 0.5]  # a and b both well above 0.10
    grid[3, 3, 0, :5] = [0.0, 0.0, 0.0, 0.0, 5.0]
    grid[3, 3, 0, 5:] = [0.0, 3.0]  # a far-away box, mostly b
    predictions = decode.yolo(_as_output(grid), ("a", "b"), YoloOptions())
    assert len(predictions) == 2
    assert [p.tag_name for p in predictions] == ["b", "a"]
    limited = decode.yolo(_as_output(grid), ("a", "b"), YoloOptions(max_detections=1))
    assert [p.tag_name for p in limited] == ["b"]


def test_yolo_threshold_and_max_detections() -> None:
    grid = _grid(3, 3, 1)
    for row in range(3):
        for col in range(3):
            grid[row, col, 0, :5] = [0.0, 0.0, -3.0, -3.0, 2.0 + row + col / 10]
    output = _as_output(grid)
    assert len(decode.yolo(output, ("a",), YoloOptions(max_detections=4))) == 4
    assert decode.yolo(output, ("a",), YoloOptions(prob_threshold=0.99)) == []


def test_yolo_channel_count_must_fit_labels() -> None:
    with pytest.raises(LabelMismatch, match="channels"):
        decode.yolo(np.zeros((1, 5 * 7, 2, 2), np.float32), ("a", "b", "c"), YoloOptions())
