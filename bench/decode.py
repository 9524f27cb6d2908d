#!/usr/bin/env python3
"""YOLO decoding (boxes, softmax, NMS) on a quiet and on a crowded frame: time per call.

The crowded frame is a 32x32 grid (a 1024x1024 input) of 5 anchors and 80 classes where
every one of its 5,120 boxes is above the threshold: the most work NMS can be given.

    .venv/bin/python bench/decode.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "modules" / "scorer")]

from scorer import decode  # noqa: E402


def grid(side: int, classes: int, crowded: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    channels = 5 * (5 + classes)
    output = rng.normal(0, 1, (1, channels, side, side)).astype(np.float32)
    cells = output[0].reshape(5, 5 + classes, side, side)
    cells[:, 4] = 8.0 if crowded else -8.0  # every box sure, or none
    if not crowded:
        cells[0, 4, 2:4, 2:4] = 6.0  # four boxes in a quiet frame
    best = rng.integers(0, classes, (5, side, side))
    np.put_along_axis(cells[:, 5:], best[:, None], 6.0, axis=1)  # one likely class per box
    return output


def above_threshold(output: np.ndarray, classes: int) -> int:
    """Boxes whose best class probability is above 0.10, as NMS sees them."""
    height, width = output.shape[2:]
    cells = output[0].reshape(5, 5 + classes, height, width)
    logits = cells[:, 5:] - cells[:, 5:].max(axis=1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    best = probabilities.max(axis=1) / (1 + np.exp(-cells[:, 4]))
    return int((best > 0.10).sum())


def per_call_ms(output: np.ndarray, labels: tuple[str, ...], repeat: int = 50) -> float:
    options = decode.YoloOptions()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        decode.yolo(output, labels, options)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> int:
    print(f"{'frame':44} {'boxes above 0.10':>16} {'ms/decode':>10}")
    for name, side, classes, crowded in (
        ("quiet: 13x13 grid, 3 classes", 13, 3, False),
        ("quiet: 16x16 grid, 80 classes", 16, 80, False),
        ("crowded: 16x16 grid, 80 classes", 16, 80, True),
        ("crowded: 32x32 grid (1024x1024), 80 classes", 32, 80, True),
    ):
        labels = tuple(f"c{i}" for i in range(classes))
        output = grid(side, classes, crowded)
        boxes = above_threshold(output, classes)
        print(f"{name:44} {boxes:>16} {per_call_ms(output, labels):10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
