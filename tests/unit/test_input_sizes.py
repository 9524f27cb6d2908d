"""The input sizes prepared before serving: every size a pixel-count export will get, and a
TensorRT profile that covers them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scorer import imaging
from scorer.imaging import Preprocessing
from scorer.input_sizes import input_sizes, tensorrt_profile
from scorer.vocabulary import CropMethod, ResizeMethod

BY_PIXEL_COUNT = Preprocessing(target_size=(512, 512), resize_method=ResizeMethod.BY_PIXEL_COUNT)


def random_images(max_aspect: float, count: int) -> list[tuple[int, int]]:
    """Image sizes up to 8,000 pixels a side, elongated up to `max_aspect` either way."""
    rng = np.random.default_rng(7)
    sizes = []
    for _ in range(count):
        long_side = int(rng.integers(16, 8000))
        short_side = math.ceil(long_side / rng.uniform(1.0, max_aspect))
        sizes.append((long_side, short_side) if rng.random() < 0.5 else (short_side, long_side))
    return sizes


@pytest.mark.parametrize("max_aspect", [1.0, 1.8, 2.5, 4.0])
def test_every_image_within_the_aspect_range_gets_one_of_the_sizes(max_aspect: float) -> None:
    sizes = set(input_sizes(BY_PIXEL_COUNT, max_aspect))
    images = random_images(max_aspect, 20_000)
    cameras = [(1920, 1080), (1080, 1920), (640, 480), (4000, 3000), (1000, 1000), (7, 7)]
    images += [(w, h) for w, h in cameras if max(w / h, h / w) <= max_aspect]
    met = {imaging.resized_size(width, height, BY_PIXEL_COUNT) for width, height in images}
    assert met <= sizes
    assert all(width % 32 == 0 and height % 32 == 0 for width, height in sizes)


def test_the_sizes_are_few_and_the_range_only_adds_to_them() -> None:
    square = input_sizes(BY_PIXEL_COUNT, 1.0)
    cameras = input_sizes(BY_PIXEL_COUNT, 2.5)
    assert (512, 512) in square and len(square) <= 3
    assert set(square) < set(cameras) and len(cameras) <= 40  # warm-up runs each once
    assert (672, 384) in cameras and (384, 672) in cameras  # 16:9, landscape and portrait


def test_an_export_of_one_input_size_has_that_size_only() -> None:
    assert input_sizes(Preprocessing(target_size=(224, 224)), 2.5) == ((224, 224),)
    cropped = Preprocessing(
        target_size=(256, 256),
        resize_method=ResizeMethod.BY_SHORTER_SIDE,
        crop_method=CropMethod.CENTER,
        crop_size=(224, 224),
    )
    assert input_sizes(cropped, 2.5) == ((224, 224),)


def test_a_bounded_aspect_keeps_any_image_inside_the_profile() -> None:
    """On TensorRT the engine takes the profile's box only: images more elongated than the
    range are sized as if at its edge; the rest exactly as the export's script sizes them."""
    bounded = dataclasses.replace(BY_PIXEL_COUNT, max_aspect=2.5)
    sizes = input_sizes(bounded, 2.5)
    profile = tensorrt_profile("data", sizes, (512, 512))
    low = [int(side) for side in profile["trt_profile_min_shapes"].split(":")[1].split("x")]
    high = [int(side) for side in profile["trt_profile_max_shapes"].split(":")[1].split("x")]
    extremes = [(10000, 10), (10, 10000), (4000, 100), (2600, 1000), (7, 3), (20000, 15000)]
    for width, height in extremes + random_images(16.0, 2000):
        fitted = imaging.resized_size(width, height, bounded)
        assert fitted in sizes
        assert low[3] <= fitted[0] <= high[3] and low[2] <= fitted[1] <= high[2]
    for width, height in random_images(2.5, 2000):
        assert imaging.resized_size(width, height, bounded) == imaging.resized_size(
            width, height, BY_PIXEL_COUNT
        )
    assert imaging.resized_size(10000, 10, BY_PIXEL_COUNT) == (16192, 32)  # unbounded: as before


def test_the_profile_spans_the_sizes_and_is_tuned_for_the_target() -> None:
    sizes = ((320, 800), (512, 512), (800, 320))
    assert tensorrt_profile("data", sizes, (512, 512)) == {
        "trt_profile_min_shapes": "data:1x3x320x320",
        "trt_profile_opt_shapes": "data:1x3x512x512",
        "trt_profile_max_shapes": "data:1x3x800x800",
    }
