"""The real Custom Vision exports in ../shared/models against the reference processing.

The reference is written here independently of `imaging.py`, from ../shared/models/README.md:
EXIF orientation, RGB, bilinear stretch to the input size, BGR planes, raw 0..255 (the
2018 exports carry no NominalPixelRange), then a bare `InferenceSession.run`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps
from scorer.core import Scorer
from scorer.model import ModelKind, inspect_export

from tests.conftest import SHARED_MODELS, require_shared, shared_model_dirs

TOLERANCE = 1e-4  # same pixels, same session: only float summation order may differ
PHOTOS = ("chelsea.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg")
CATDOG = SHARED_MODELS / "cv-cls-catdog-negative-opset7"
FOOD = SHARED_MODELS / "cv-cls-food-winml-opset1"
LOADABLE = ["cv-cls-catdog-negative-opset7", "cv-cls-hemlock-cherry-opset7"]


def reference_probabilities(session: ort.InferenceSession, photo: Path, labels: list[str]):
    image = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
    size = session.get_inputs()[0].shape[2]
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    tensor = np.asarray(image, np.float32)[:, :, ::-1].transpose(2, 0, 1)[None].copy()
    loss = session.run(["loss"], {session.get_inputs()[0].name: tensor})[0]
    probabilities = loss[0] if isinstance(loss, list) else loss
    return {label: float(np.ravel(probabilities[label])[0]) for label in labels}


@pytest.fixture(params=LOADABLE)
def loadable_export(request: pytest.FixtureRequest) -> Path:
    return require_shared(SHARED_MODELS / request.param)


def test_shared_models_folder_holds_exports() -> None:
    require_shared(SHARED_MODELS)
    assert len(shared_model_dirs()) >= 3


@pytest.mark.parametrize(
    "folder",
    ["cv-cls-catdog-negative-opset7", "cv-cls-hemlock-cherry-opset7", "cv-cls-food-winml-opset1"],
)
def test_real_export_kind_is_zipmap_classification(folder: str, tmp_path: Path) -> None:
    spec = inspect_export(require_shared(SHARED_MODELS / folder), cache_dir=tmp_path)
    assert spec.kind is ModelKind.CLASSIFICATION_ZIPMAP
    assert spec.preprocessing.target_size == (227, 227)
    assert spec.preprocessing.bgr and spec.preprocessing.pixel_range == "NominalRange_0_255"


def _generated_images(folder: Path) -> list[Path]:
    """Synthetic inputs beside the photos: noise, a gradient, grayscale, RGBA, odd sizes."""
    rng = np.random.default_rng(11)
    noise = Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8))
    gradient = Image.fromarray(
        np.dstack([np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (120, 1))] * 3)
    )
    gray = Image.fromarray(rng.integers(0, 256, (227, 227), dtype=np.uint8), "L")
    images = {"noise.jpg": noise, "gradient.png": gradient, "gray.bmp": gray}
    paths = []
    for name, image in images.items():
        image.save(folder / name)
        paths.append(folder / name)
    return paths


def test_predictions_match_the_reference_processing(
    loadable_export: Path,
    shared_images: Path,
    make_scorer: Callable[..., Scorer],
    tmp_path: Path,
) -> None:
    scorer = make_scorer(loadable_export)
    session = ort.InferenceSession(
        str(loadable_export / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    labels = list(scorer.spec.labels)
    for photo in [shared_images / p for p in PHOTOS] + _generated_images(tmp_path):
        expected = reference_probabilities(session, photo, labels)
        got = {p.tag_name: p.probability for p in scorer.score(photo.read_bytes()).predictions}
        assert got == pytest.approx(expected, abs=TOLERANCE), photo


def test_catdog_known_answers(shared_images: Path, make_scorer: Callable[..., Scorer]) -> None:
    scorer = make_scorer(require_shared(CATDOG))
    answers = {
        "chelsea.jpg": "cat",
        "coffee.jpg": "Negative",
        "rocket.jpg": "Negative",
        "astronaut.jpg": "Negative",
    }
    for photo, label in answers.items():
        best = scorer.score((shared_images / photo).read_bytes()).predictions[0]
        assert (best.tag_name, best.probability > 0.99) == (label, True), photo


def test_exif_rotated_photo_scores_like_its_upright_twin(
    shared_images: Path, make_scorer: Callable[..., Scorer]
) -> None:
    scorer = make_scorer(require_shared(CATDOG))
    upright = scorer.score((shared_images / "chelsea.jpg").read_bytes()).predictions
    rotated = scorer.score(
        (shared_images / "chelsea-exif-orientation-6.jpg").read_bytes()
    ).predictions
    assert rotated[0].tag_name == upright[0].tag_name == "cat"
    assert {p.tag_name: p.probability for p in rotated} == pytest.approx(
        {p.tag_name: p.probability for p in upright}, abs=0.01
    )


def test_legacy_winml_export_is_upgraded_and_gives_a_probability_per_label(
    shared_images: Path, make_scorer: Callable[..., Scorer]
) -> None:
    scorer = make_scorer(require_shared(FOOD))
    assert scorer.spec.upgraded
    for photo in PHOTOS:
        predictions = scorer.score((shared_images / photo).read_bytes()).predictions
        assert sorted(p.tag_name for p in predictions) == sorted(scorer.spec.labels)
        assert all(0.0 <= p.probability <= 1.0 for p in predictions)


def test_legacy_upgrade_is_cached_once_per_model(tmp_path: Path) -> None:
    first = inspect_export(require_shared(FOOD), cache_dir=tmp_path)
    stamp = first.onnx_path.stat().st_mtime_ns
    second = inspect_export(FOOD, cache_dir=tmp_path)
    assert second.onnx_path == first.onnx_path and second.onnx_path.stat().st_mtime_ns == stamp
    assert first.onnx_path.parent == tmp_path


def _upscaled_jpeg(photo: Path, factor: int) -> bytes:
    image = Image.open(photo).convert("RGB")
    image = image.resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_jpeg_draft_keeps_predictions_within_tolerance(
    loadable_export: Path, shared_images: Path, make_scorer: Callable[..., Scorer]
) -> None:
    """Draft mode is on by default only because this holds on the real exports."""
    from scorer.imaging import DecodeLimits

    drafted = make_scorer(loadable_export, limits=DecodeLimits(jpeg_draft=True))
    full = make_scorer(loadable_export, limits=DecodeLimits(jpeg_draft=False))
    for photo in PHOTOS:
        data = _upscaled_jpeg(shared_images / photo, 4)
        a = {p.tag_name: p.probability for p in drafted.score(data).predictions}
        b = {p.tag_name: p.probability for p in full.score(data).predictions}
        assert max(a, key=a.get) == max(b, key=b.get), photo
        assert a == pytest.approx(b, abs=0.02), photo
