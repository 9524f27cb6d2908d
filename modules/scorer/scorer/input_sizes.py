"""The input sizes a model will be given, so that all of them are prepared before it is ready.

An export sized by pixel count (`ByPixelCountAlign32`, YOLO exports) gets a few dozen sizes,
one per band of image aspect ratios; on a GPU the first run of each new size is slow (the
CUDA provider searches cuDNN's kernels for it, TensorRT needs an engine that covers it).
Every other export gets one size.
"""

from __future__ import annotations

import functools
import math

from .imaging import Preprocessing, resized_size
from .vocabulary import ResizeMethod

# Images this many pixels on their short side are swept across the aspect range: fine enough
# that every size the pixel-count arithmetic can produce in the range is met.
SWEEP_SIDE = 4096


@functools.lru_cache(maxsize=8)  # asked for the TensorRT profile, then by the session
def input_sizes(prep: Preprocessing, max_aspect: float) -> tuple[tuple[int, int], ...]:
    """Every (width, height) the model's input takes for images up to `max_aspect`:1 either way,
    sorted; one size for exports that are not sized by pixel count."""
    if prep.resize_method is not ResizeMethod.BY_PIXEL_COUNT or prep.crop_size is not None:
        return (prep.crop_size or prep.target_size,)
    sizes: set[tuple[int, int]] = set()
    for long_side in range(SWEEP_SIDE, math.floor(SWEEP_SIDE * max_aspect) + 1):
        sizes.add(resized_size(long_side, SWEEP_SIDE, prep))
        sizes.add(resized_size(SWEEP_SIDE, long_side, prep))
    return tuple(sorted(sizes))


def tensorrt_profile(
    input_name: str, sizes: tuple[tuple[int, int], ...], optimal: tuple[int, int]
) -> dict[str, str]:
    """TensorRT provider options for one engine that takes every size in `sizes`: the box from
    the smallest to the largest width and height, tuned for `optimal` (all width x height)."""

    def shape(width: int, height: int) -> str:
        return f"{input_name}:1x3x{height}x{width}"

    widths = [width for width, _ in sizes]
    heights = [height for _, height in sizes]
    return {
        "trt_profile_min_shapes": shape(min(widths), min(heights)),
        "trt_profile_opt_shapes": shape(*optimal),
        "trt_profile_max_shapes": shape(max(widths), max(heights)),
    }
