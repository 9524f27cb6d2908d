"""Image bytes -> tensor: formats, guards, orientation, colour order, range and resizing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scorer import imaging
from scorer.errors import Code, ScoringError
from scorer.imaging import DecodeLimits, Preprocessing
from scorer.vocabulary import CropMethod, PixelRange, ResizeMethod

LIMITS = DecodeLimits(max_pixels=10_000_000, jpeg_draft=False)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _code(data: bytes, limits: DecodeLimits = LIMITS) -> Code:
    with pytest.raises(ScoringError) as caught:
        imaging.decode_image(data, limits)
    return caught.value.code


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])
def test_jpeg_png_and_bmp_are_accepted(fmt: str) -> None:
    image = imaging.decode_image(_encode(Image.new("RGB", (8, 6), (200, 10, 10)), fmt), LIMITS)
    assert image.size == (8, 6) and image.mode == "RGB"


def test_gif_is_an_invalid_image() -> None:
    assert _code(_encode(Image.new("RGB", (4, 4)), "GIF")) is Code.INVALID_IMAGE


def test_random_bytes_are_an_invalid_image() -> None:
    assert _code(b"not an image at all") is Code.INVALID_IMAGE


def test_truncated_jpeg_is_invalid_image() -> None:
    data = _encode(Image.effect_noise((256, 256), 60).convert("RGB"), "JPEG")
    assert _code(data[: len(data) // 2]) is Code.INVALID_IMAGE


def test_too_many_pixels_is_image_too_large_before_decoding() -> None:
    data = _encode(Image.new("RGB", (4000, 3000)), "PNG")
    with pytest.raises(ScoringError) as caught:
        imaging.decode_image(data, DecodeLimits(max_pixels=1_000_000))
    assert caught.value.code is Code.IMAGE_TOO_LARGE
    assert "4000x3000" in caught.value.message


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = imaging.decode_image(_encode(stored, "PNG", exif=exif), LIMITS)
    assert image.size == (20, 40)
    assert image.getpixel((10, 5))[0] > 200  # the red half is on top once upright


def test_rgba_is_flattened_on_white_and_grayscale_becomes_rgb() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert imaging.decode_image(_encode(rgba, "PNG"), LIMITS).getpixel((0, 0)) == (255, 255, 255)
    gray = Image.new("L", (4, 4), 77)
    assert imaging.decode_image(_encode(gray, "PNG"), LIMITS).getpixel((0, 0)) == (77, 77, 77)


def test_palette_png_becomes_rgb() -> None:
    palette = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P")
    assert imaging.decode_image(_encode(palette, "PNG"), LIMITS).mode == "RGB"


def test_bgr_0_255_tensor() -> None:
    prep = Preprocessing(target_size=(4, 2), bgr=True)
    tensor = imaging.to_tensor(Image.new("RGB", (8, 4), (10, 20, 30)), prep)
    assert tensor.shape == (1, 3, 2, 4) and tensor.dtype == np.float32
    assert tensor[0, :, 0, 0].tolist() == [30, 20, 10]


@pytest.mark.parametrize(
    ("pixel_range", "expected"),
    [
        (PixelRange.NOMINAL_0_255, 255.0),
        (PixelRange.NORMALIZED_0_1, 1.0),
        (PixelRange.NORMALIZED_1_1, 1.0),
    ],
)
def test_pixel_range(pixel_range: PixelRange, expected: float) -> None:
    prep = Preprocessing(target_size=(2, 2), pixel_range=pixel_range)
    tensor = imaging.to_tensor(Image.new("RGB", (2, 2), (255, 0, 0)), prep)
    assert tensor[0, 0, 0, 0] == pytest.approx(expected)
    minimum = -1.0 if pixel_range is PixelRange.NORMALIZED_1_1 else 0.0
    assert tensor[0, 1, 0, 0] == pytest.approx(minimum)


def test_mean_and_std_normalisation() -> None:
    prep = Preprocessing(
        target_size=(2, 2),
        pixel_range=PixelRange.NORMALIZED_0_1,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.5, 1),
    )
    tensor = imaging.to_tensor(Image.new("RGB", (2, 2), (255, 255, 255)), prep)
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([2.0, 1.0, 0.5])


def test_fp16_tensor() -> None:
    prep = Preprocessing(target_size=(3, 3), dtype=np.float16)
    assert imaging.to_tensor(Image.new("RGB", (5, 5)), prep).dtype == np.float16


def test_by_shorter_side_then_centre_crop() -> None:
    prep = Preprocessing(
        target_size=(256, 256),
        resize_method=ResizeMethod.BY_SHORTER_SIDE,
        crop_method=CropMethod.CENTER,
        crop_size=(224, 224),
    )
    assert imaging.resized_size(640, 480, prep) == (341, 256)
    image = Image.new("RGB", (640, 480))
    image.paste((255, 255, 255), (320 - 10, 240 - 10, 320 + 10, 240 + 10))
    tensor = imaging.to_tensor(image, prep)
    assert tensor.shape == (1, 3, 224, 224)
    assert tensor[0, 0, 112, 112] == pytest.approx(255)  # the centre stays the centre


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((3000, 2000), (640, 416)),  # 3:2: 13 rows, where rounding up gave 14
        ((2000, 3000), (416, 640)),
        ((1000, 1000), (512, 512)),
        ((1920, 1080), (672, 384)),  # 16:9
        ((640, 480), (576, 448)),
        ((7, 3), (768, 320)),  # tiny: scaled up
        ((10, 10), (512, 512)),
        ((20000, 15000), (576, 448)),  # huge
        ((4000, 100), (3232, 64)),  # 80 / 32 = 2.5 rounds to even: 2 (not 3)
        ((10000, 10), (16192, 32)),  # a side the script would make 0 is 32
    ],
)
def test_by_pixel_count_align32_is_the_export_scripts_arithmetic(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    """Expected sides worked out from the script shipped in YOLO exports: truncate
    `side * sqrt(512*512 / (w*h))`, then `32 * round(side / 32)`."""
    prep = Preprocessing(target_size=(512, 512), resize_method=ResizeMethod.BY_PIXEL_COUNT)
    assert imaging.resized_size(*size, prep) == expected


def test_by_pixel_count_align32_resamples_as_pillow_does_by_default() -> None:
    """The export's script calls `resize` without a filter: Pillow's default for RGB."""
    image = Image.effect_noise((300, 200), 60).convert("RGB")
    prep = Preprocessing(target_size=(512, 512), resize_method=ResizeMethod.BY_PIXEL_COUNT)
    size = imaging.resized_size(300, 200, prep)
    expected = np.asarray(image.resize(size), np.float32).transpose(2, 0, 1)[None]
    assert np.array_equal(imaging.to_tensor(image, prep), expected)


def test_by_pixel_count_align32_keeps_aspect_and_area() -> None:
    prep = Preprocessing(target_size=(512, 512), resize_method=ResizeMethod.BY_PIXEL_COUNT)
    width, height = imaging.resized_size(1920, 1080, prep)
    assert width % 32 == 0 and height % 32 == 0
    assert width / height == pytest.approx(1920 / 1080, rel=0.05)
    assert width * height == pytest.approx(512 * 512, rel=0.15)


def test_jpeg_draft_decodes_large_images_at_reduced_scale() -> None:
    data = _encode(Image.new("RGB", (3200, 2400), (30, 200, 40)), "JPEG")
    prep = Preprocessing(target_size=(224, 224))
    drafted = imaging.decode_image(data, DecodeLimits(jpeg_draft=True), prep)
    full = imaging.decode_image(data, DecodeLimits(jpeg_draft=False), prep)
    assert full.size == (3200, 2400)
    assert drafted.size == (800, 600)  # 1/4 scale still keeps twice the model's size


def test_draft_size_is_twice_the_model_input() -> None:
    assert Preprocessing(target_size=(224, 224)).draft_size() == (448, 448)


def test_decode_cost_counts_bytes_per_pixel_and_the_copies() -> None:
    from scorer.imaging import decode_cost

    assert decode_cost("RGB", (100, 100)) == 100 * 100 * (3 + 3 + 3)
    assert decode_cost("RGBA", (100, 100)) == 100 * 100 * (4 + 3 + 4)
    assert decode_cost("I;16", (100, 100)) > decode_cost("L", (100, 100))


def test_an_image_whose_decode_would_take_too_much_memory_is_refused() -> None:
    from scorer.imaging import DecodeLimits, decode_image

    buffer = io.BytesIO()
    Image.new("RGBA", (600, 400), (1, 2, 3, 4)).save(buffer, "PNG")
    limits = DecodeLimits(max_pixels=10_000_000, max_decode_bytes=600 * 400 * 10)
    with pytest.raises(ScoringError, match="SCORER_MAX_DECODE_BYTES") as refused:
        decode_image(buffer.getvalue(), limits)
    assert refused.value.code is Code.IMAGE_TOO_LARGE


def test_the_decode_budget_makes_a_decode_wait_for_its_share() -> None:
    import threading

    from scorer.imaging import DecodeBudget

    budget = DecodeBudget(100)
    entered = threading.Event()

    def second_decode() -> None:
        with budget.hold(50):
            entered.set()

    with budget.hold(80):
        second = threading.Thread(target=second_decode)
        second.start()
        assert not entered.wait(0.2)  # 80 + 50 > 100: it waits
    assert entered.wait(5)  # released: it goes
    second.join()


CROP_EXPORT = Preprocessing(
    target_size=(256, 256),
    resize_method=ResizeMethod.BY_SHORTER_SIDE,
    crop_method=CropMethod.CENTER,
    crop_size=(224, 224),
)
EVERY_SIZING = {
    "stretch": Preprocessing(target_size=(224, 224)),
    "shorter-side": Preprocessing(
        target_size=(256, 256), resize_method=ResizeMethod.BY_SHORTER_SIDE
    ),
    "shorter-side-crop": CROP_EXPORT,
    "pixel-count": Preprocessing(target_size=(416, 416), resize_method=ResizeMethod.BY_PIXEL_COUNT),
}


@pytest.mark.parametrize("size", [(1, 10_000), (10_000, 1), (20_000_000, 1), (17, 1)])
@pytest.mark.parametrize("sizing", sorted(EVERY_SIZING))
def test_an_elongated_image_is_refused_from_its_header_for_every_sizing(
    size: tuple[int, int], sizing: str
) -> None:
    """A 1x10,000 PNG of 100 bytes was resized to 256x2,560,000 (2.7 GB) by the short-side
    exports and 20,000,000x1 to 1.86 Mx32 by YOLO ones off TensorRT."""
    with pytest.raises(ScoringError) as refused:
        imaging.check_size(*size, DecodeLimits(), EVERY_SIZING[sizing])
    assert refused.value.code is Code.IMAGE_TOO_LARGE
    assert "SCORER_MAX_IMAGE_ASPECT" in refused.value.message


def test_the_image_sized_for_the_model_is_bounded_like_the_decoded_one() -> None:
    """The short side to 256 makes a 16:1 image of 10 x 160 into 256 x 4,096 pixels: over
    a limit of a million, refused, though the decoded image was 1,600 pixels."""
    prep = EVERY_SIZING["shorter-side"]
    with pytest.raises(ScoringError, match="sized for the model it would be 256x4096"):
        imaging.check_size(10, 160, DecodeLimits(max_pixels=1_000_000), prep)
    imaging.check_size(10, 160, DecodeLimits(max_pixels=1_000_000), CROP_EXPORT)  # 224²


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (301, 199), (4000, 250), (256, 300)])
def test_the_centre_crop_taken_in_source_coordinates_is_the_reference_resize_then_crop(
    size: tuple[int, int],
) -> None:
    """Custom Vision's reference resizes the short side to 256, then crops the centre
    224x224; resizing only the crop's region of the source gives the same pixels (within
    one level of rounding) without the rest."""
    image = Image.effect_noise(size, 80).convert("RGB")
    resized_w, resized_h = imaging.resized_size(*size, CROP_EXPORT)
    left, top = (resized_w - 224) // 2, (resized_h - 224) // 2
    reference = image.resize((resized_w, resized_h), Image.Resampling.BILINEAR).crop(
        (left, top, left + 224, top + 224)
    )
    expected = np.asarray(reference, np.float32).transpose(2, 0, 1)[None]
    tensor = imaging.to_tensor(image, CROP_EXPORT)
    assert tensor.shape == expected.shape
    assert np.abs(tensor - expected).max() <= 1.0
