"""Image bytes -> the model's input tensor, exactly as Custom Vision's reference does it."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import threading
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import Code, ScoringError
from .heap import give_back_memory
from .vocabulary import CropMethod, PixelRange, ResizeMethod

ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How the model wants its pixels; built from the export's metadata by `model.py`."""

    target_size: tuple[int, int]  # (width, height)
    resize_method: ResizeMethod = ResizeMethod.STRETCH
    crop_method: CropMethod = CropMethod.NONE
    crop_size: tuple[int, int] | None = None
    bgr: bool = False
    pixel_range: PixelRange = PixelRange.NOMINAL_0_255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dtype: type = np.float32
    # ByPixelCountAlign32 only: an image more elongated than this is sized as if it were this
    # elongated, so its input stays within a TensorRT profile built for that range.
    max_aspect: float | None = None

    @property
    def resampling(self) -> Image.Resampling:
        """Bicubic for ByPixelCountAlign32: the script in YOLO exports calls Pillow's
        `resize` without a filter, which is bicubic for RGB; bilinear for the rest, as the
        classification references do."""
        if self.resize_method is ResizeMethod.BY_PIXEL_COUNT:
            return Image.Resampling.BICUBIC
        return Image.Resampling.BILINEAR

    def draft_size(self) -> tuple[int, int]:
        """The smallest decode that keeps twice the model's resolution on both sides."""
        side = 2 * max(*self.target_size, *(self.crop_size or (0, 0)))
        return side, side


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """Guards against oversized and malicious images."""

    max_pixels: int = 40_000_000  # decoded, and resized for the model
    jpeg_draft: bool = True
    max_decode_bytes: int = 400_000_000
    # Width:height (or height:width) at most: beyond 16:1 the script in Custom Vision's YOLO
    # exports fails, and a 1x10,000 image made a 256x2,560,000 one for the model.
    max_aspect: float = 16.0


# Bytes per pixel of Pillow's decoded modes (anything else: 4).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "RGB": 3, "YCbCr": 3, "RGBA": 4, "CMYK": 4}
BIG_DECODE_BYTES = 64 * 1024 * 1024  # after one this large, memory goes back to the system


def decode_cost(mode: str, size: tuple[int, int]) -> int:
    """Peak bytes to decode an image and make it RGB: the decoded pixels, the RGB copy, and
    room for the alpha flattening or EXIF turn of the largest intermediate."""
    width, height = size
    decoded = MODE_BYTES.get(mode, 8 if mode.startswith("I;16") else 4)
    return width * height * (decoded + 3 + max(decoded, 3))


class DecodeBudget:
    """Bytes that concurrent decodes may hold together; a decode waits for its share.

    Slots bound how many requests score at once; this bounds what their decodes cost, so
    sixteen 40-megapixel PNGs at once do not take gigabytes of an 8 GB Jetson.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        cost = min(cost, self.capacity)
        with self._condition:
            self._condition.wait_for(lambda: self._free >= cost)
            self._free -= cost
        try:
            yield
        finally:
            with self._condition:
                self._free += cost
                self._condition.notify_all()


def check_size(width: int, height: int, limits: DecodeLimits, prep: Preprocessing | None) -> None:
    """IMAGE_TOO_LARGE for an image whose decode, or the image made of it for the model, is
    beyond the limits: bounded by what is computed, not only by what is sent."""
    if width * height > limits.max_pixels:
        raise ScoringError(
            Code.IMAGE_TOO_LARGE,
            f"image is {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels} (SCORER_MAX_IMAGE_PIXELS)",
        )
    if width and height and max(width / height, height / width) > limits.max_aspect:
        raise ScoringError(
            Code.IMAGE_TOO_LARGE,
            f"image is {width}x{height}, more elongated than {limits.max_aspect:g}:1 "
            "(SCORER_MAX_IMAGE_ASPECT)",
        )
    if prep is not None and width and height:
        model_w, model_h = model_image_size(width, height, prep)
        if model_w * model_h > limits.max_pixels:
            raise ScoringError(
                Code.IMAGE_TOO_LARGE,
                f"image is {width}x{height}; sized for the model it would be {model_w}x"
                f"{model_h} pixels, over the limit of {limits.max_pixels} "
                "(SCORER_MAX_IMAGE_PIXELS)",
            )


def decode_image(
    data: bytes,
    limits: DecodeLimits,
    prep: Preprocessing | None = None,
    budget: DecodeBudget | None = None,
) -> Image.Image:
    """Decode JPEG/PNG/BMP bytes into upright 3-channel RGB, or raise a `ScoringError`;
    with `prep`, what the model's sizing would make of it is bounded too."""
    try:
        # Our own limits are checked from the header, before any pixel is decoded; Pillow's
        # bomb check (a process-wide setting) only fires first for truly absurd sizes.
        image: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = image.size
        check_size(width, height, limits, prep)
        if limits.jpeg_draft and prep is not None and image.format == "JPEG":
            image.draft("RGB", prep.draft_size())  # decoded at 1/2, 1/4 or 1/8 scale
        cost = decode_cost(image.mode, image.size)
        if cost > limits.max_decode_bytes:
            raise ScoringError(
                Code.IMAGE_TOO_LARGE,
                f"decoding this {width}x{height} {image.mode} image takes about {cost} bytes; "
                f"the limit is {limits.max_decode_bytes} (SCORER_MAX_DECODE_BYTES)",
            )
        with budget.hold(cost) if budget else contextlib.nullcontext():
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            image = _to_rgb(image)
        if cost >= BIG_DECODE_BYTES:
            give_back_memory()
    except ScoringError:
        raise
    except UnidentifiedImageError:
        raise ScoringError(Code.INVALID_IMAGE, "body is not a JPEG, PNG or BMP image") from None
    except Image.DecompressionBombError:
        raise ScoringError(
            Code.IMAGE_TOO_LARGE,
            f"image has more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; the limit is "
            f"{limits.max_pixels} (SCORER_MAX_IMAGE_PIXELS)",
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ScoringError(Code.INVALID_IMAGE, f"image cannot be decoded: {error}") from None
    if width == 0 or height == 0:
        raise ScoringError(Code.INVALID_IMAGE, "image has no pixels")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency on white and convert any mode (L, P, CMYK, I;16) to RGB."""
    if image.mode in ("P", "RGBA", "LA", "PA"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if array.max() > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def resized_size(width: float, height: float, prep: Preprocessing) -> tuple[int, int]:
    """The (width, height) the image is resized to before any crop."""
    target_w, target_h = prep.target_size
    if prep.resize_method is ResizeMethod.STRETCH:
        return target_w, target_h
    if prep.resize_method is ResizeMethod.BY_SHORTER_SIDE:
        shorter = min(target_w, target_h)
        scale = shorter / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    # ByPixelCountAlign32, with the arithmetic of the script in Custom Vision's YOLO exports:
    # about target_w*target_h pixels, aspect kept, each side truncated and then rounded to
    # 32s by Python's `round` (half to even). A side it would make 0 (an image over 16x as
    # wide as high) is 32 here, where the script fails.
    if prep.max_aspect is not None:
        width, height = min(width, height * prep.max_aspect), min(height, width * prep.max_aspect)
    ratio = math.sqrt(target_w * target_h / (width * height))
    return (
        max(32, 32 * round(int(width * ratio) / 32)),
        max(32, 32 * round(int(height * ratio) / 32)),
    )


def _centre_crop(size: tuple[int, int], prep: Preprocessing) -> tuple[int, int] | None:
    """The (left, top) of the centre crop within the resized image, when it fits in it."""
    if prep.crop_method is not CropMethod.CENTER or not prep.crop_size:
        return None
    (width, height), (crop_w, crop_h) = size, prep.crop_size
    if crop_w > width or crop_h > height:
        return None
    return (width - crop_w) // 2, (height - crop_h) // 2


def model_image_size(width: int, height: int, prep: Preprocessing) -> tuple[int, int]:
    """The largest image made for the model from a `width` x `height` one: the resized one,
    or only its centre crop when the crop is taken before resizing (`to_tensor`)."""
    size = resized_size(width, height, prep)
    if _centre_crop(size, prep) is not None and prep.crop_size:
        return prep.crop_size
    return size


def to_tensor(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """RGB image -> `[1, 3, H, W]` in the model's colour order, range and dtype.

    Resize then centre-crop, as Custom Vision's reference does, computed as one resize of
    the crop's region in the source's coordinates (Pillow's `box`): the same sampling
    positions and filter, without ever making the part of the resized image the crop
    throws away (256x2,560,000 pixels for a 1x10,000 image)."""
    size = resized_size(image.width, image.height, prep)
    crop = _centre_crop(size, prep)
    if crop is not None and prep.crop_size:
        (left, top), (crop_w, crop_h) = crop, prep.crop_size
        scale_x, scale_y = image.width / size[0], image.height / size[1]
        box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
        image = image.resize(prep.crop_size, prep.resampling, box=box)
    else:
        if image.size != size:
            image = image.resize(size, prep.resampling)
        if prep.crop_method is CropMethod.CENTER and prep.crop_size:
            crop_w, crop_h = prep.crop_size
            left = max(0, (image.width - crop_w) // 2)
            top = max(0, (image.height - crop_h) // 2)
            image = image.crop((left, top, left + crop_w, top + crop_h))
    pixels: np.ndarray = np.asarray(image, dtype=np.float32)
    if prep.bgr:
        pixels = pixels[:, :, ::-1]
    if prep.pixel_range is PixelRange.NORMALIZED_0_1:
        pixels = pixels / 255.0
    elif prep.pixel_range is PixelRange.NORMALIZED_1_1:
        pixels = pixels / 127.5 - 1.0
    if prep.mean != (0.0, 0.0, 0.0) or prep.std != (1.0, 1.0, 1.0):
        pixels = (pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    tensor = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
    return tensor.astype(prep.dtype, copy=False)
