"""Raw model outputs -> predictions, for every Custom Vision export format. Pure numpy."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_ANCHORS = ((0.573, 0.677), (1.87, 2.06), (3.34, 5.47), (7.88, 3.53), (9.77, 9.17))


@dataclasses.dataclass(frozen=True)
class BoundingBox:
    """A box normalised to the original image, as Custom Vision reports it."""

    left: float
    top: float
    width: float
    height: float


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One tag with its probability, and its box for detection models."""

    probability: float
    tag_id: int
    tag_name: str
    box: BoundingBox | None = None


@dataclasses.dataclass(frozen=True)
class YoloOptions:
    """Post-processing of the older YOLOv2 detection head (see the models README)."""

    anchors: tuple[tuple[float, float], ...] = DEFAULT_ANCHORS
    sigmoid_xy: bool = True
    nms_per_class: bool = True
    nms_iou: float = 0.45
    prob_threshold: float = 0.10
    max_detections: int = 20


class LabelMismatch(ValueError):
    """The model's outputs name or count tags that `labels.txt` does not have."""


def classification(probabilities: np.ndarray, labels: Sequence[str]) -> list[Prediction]:
    """One prediction per label from a `[classes]` probability vector, most probable first."""
    probabilities = np.asarray(probabilities, dtype=np.float32).reshape(-1)
    if probabilities.size != len(labels):
        raise LabelMismatch(f"model gives {probabilities.size} scores for {len(labels)} labels")
    order = np.argsort(-probabilities, kind="stable")
    return [Prediction(float(probabilities[i]), int(i), labels[i]) for i in order]


def zipmap_probabilities(loss: object, labels: Sequence[str]) -> np.ndarray:
    """Probabilities in label order from a ZipMap output: a map or a list with one map."""
    if isinstance(loss, Sequence) and not isinstance(loss, (str, bytes)):
        if len(loss) != 1:
            raise LabelMismatch(f"expected one map per image, got {len(loss)}")
        loss = loss[0]
    if not isinstance(loss, Mapping):
        raise LabelMismatch(f"expected a map of label -> probability, got {type(loss).__name__}")
    missing = [label for label in labels if label not in loss]
    if missing or len(loss) != len(labels):
        raise LabelMismatch(f"model tags {sorted(loss)} differ from labels.txt {list(labels)}")
    return np.array([float(np.ravel(loss[label])[0]) for label in labels], dtype=np.float32)


def _box_from_corners(x1: float, y1: float, x2: float, y2: float) -> BoundingBox:
    """A clipped `(left, top, width, height)` box from corners, in plain floats."""
    x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
    x1, x2 = sorted((min(max(x1, 0.0), 1.0), min(max(x2, 0.0), 1.0)))
    y1, y2 = sorted((min(max(y1, 0.0), 1.0), min(max(y2, 0.0), 1.0)))
    return BoundingBox(x1, y1, x2 - x1, y2 - y1)


def detected_boxes(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, labels: Sequence[str]
) -> list[Prediction]:
    """Predictions from the newer `detected_boxes/scores/classes` outputs, best first."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    if not len(boxes) == len(scores) == len(classes):
        raise LabelMismatch("detected_boxes, detected_scores and detected_classes differ in length")
    if classes.size and (classes.min() < 0 or classes.max() >= len(labels)):
        raise LabelMismatch(f"model gives class {int(classes.max())} for {len(labels)} labels")
    order = np.argsort(-scores, kind="stable")
    return [
        Prediction(
            float(scores[i]), int(classes[i]), labels[classes[i]], _box_from_corners(*boxes[i])
        )
        for i in order
    ]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one `(left, top, width, height)` box against many."""
    left = np.maximum(box[0], others[:, 0])
    top = np.maximum(box[1], others[:, 1])
    right = np.minimum(box[0] + box[2], others[:, 0] + others[:, 2])
    bottom = np.minimum(box[1] + box[3], others[:, 1] + others[:, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = box[2] * box[3] + others[:, 2] * others[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def yolo(output: np.ndarray, labels: Sequence[str], options: YoloOptions) -> list[Prediction]:
    """Boxes from the older raw `[1, A*(5+C), H, W]` grid, then NMS as Custom Vision's script."""
    num_classes = len(labels)
    anchors = np.asarray(options.anchors, dtype=np.float32)
    output = np.asarray(output, dtype=np.float32)
    _, channels, height, width = output.shape
    if channels != len(anchors) * (5 + num_classes):
        raise LabelMismatch(
            f"grid has {channels} channels; {len(anchors)} anchors x (5 + {num_classes} labels)"
            f" needs {len(anchors) * (5 + num_classes)}"
        )
    # A view of the output as (anchor, channel, row, column): nothing is copied.
    grid = output[0].reshape(len(anchors), 5 + num_classes, height, width)
    objectness = _sigmoid(grid[:, 4])
    # A box's class probabilities are its objectness times a softmax (at most 1): one whose
    # objectness is not above the threshold cannot pass it, so it is never decoded. The
    # rest come in (row, column, anchor) order, as the script reads them.
    rows, cols, anchor = np.nonzero(objectness.transpose(1, 2, 0) > options.prob_threshold)
    cells = grid[anchor, :, rows, cols]  # (boxes, 5 + classes)
    tx, ty = cells[:, 0], cells[:, 1]
    if options.sigmoid_xy:
        tx, ty = _sigmoid(tx), _sigmoid(ty)
    x = (tx + cols) / width
    y = (ty + rows) / height
    w = np.exp(cells[:, 2]) * anchors[anchor, 0] / width
    h = np.exp(cells[:, 3]) * anchors[anchor, 1] / height
    logits = cells[:, 5:]
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = exp / exp.sum(axis=-1, keepdims=True) * objectness[anchor, rows, cols][:, None]
    boxes = np.stack([x - w / 2, y - h / 2, w, h], axis=-1).astype(np.float32)
    return _non_max_suppression(boxes, probs, labels, options)


def _non_max_suppression(
    boxes: np.ndarray, probs: np.ndarray, labels: Sequence[str], options: YoloOptions
) -> list[Prediction]:
    """Greedy NMS as the script in Custom Vision's exports does it: boxes whose best class is
    above the threshold take part; each pick zeroes only its class on the boxes overlapping
    it (so a box may come back under its next class), and picking stops after
    `min(max_detections, boxes taking part)` picks or when the best left is under the
    threshold."""
    keep = probs.max(axis=1) > options.prob_threshold
    boxes, probs = boxes[keep], probs[keep].copy()
    best = probs.max(axis=1)  # each box's best class probability, kept up to date
    picked: list[Prediction] = []
    limit = min(options.max_detections, len(boxes))
    while len(picked) < limit:
        index = int(np.argmax(best))
        tag = int(np.argmax(probs[index]))
        probability = float(probs[index, tag])
        if probability < options.prob_threshold:
            break
        left, top, width, height = (float(v) for v in boxes[index])
        picked.append(
            Prediction(
                probability,
                tag,
                labels[tag],
                _box_from_corners(left, top, left + width, top + height),
            )
        )
        overlapping = _iou(boxes[index], boxes) > options.nms_iou
        overlapping[index] = True
        if options.nms_per_class:
            probs[overlapping, tag] = 0.0
        else:
            probs[overlapping, :] = 0.0
        best[overlapping] = probs[overlapping].max(axis=1)  # only those rows changed
    return picked
