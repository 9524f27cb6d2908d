"""The page at GET /: scoring a real photo, drawing detections, errors, the key prompt, a
phone's screen; each drawn result checked against the API's own answer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO, SHARED_IMAGES
from tests.scorer_process import ScorerProcess

SHARED_MODELS = REPO.parent / "shared" / "models"
KEY = "page-test-key-0123456789"


def screenshot(page: Any, name: str, tmp_path: Path) -> None:
    """Into docs/screenshots with UPDATE_SCREENSHOTS=1 (what the README shows), else tmp."""
    folder = REPO / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def set_threshold(page: Any, value: float) -> None:
    page.eval_on_selector(
        "#threshold",
        "(slider, value) => { slider.value = value; slider.dispatchEvent(new Event('input')); }",
        value,
    )


def shown(page: Any, list_id: str) -> list[dict[str, str]]:
    return page.eval_on_selector_all(f"#{list_id} li", "items => items.map(i => ({...i.dataset}))")


def api_answer(server: ScorerProcess, image: bytes, threshold: float) -> list[dict]:
    answer = requests.post(
        server.url + "/score", data=image, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    answer.raise_for_status()
    return [p for p in answer.json()["predictions"] if p["probability"] >= threshold]


def test_a_real_photo_is_scored_and_its_bars_are_the_apis_answer(
    start_scorer: Callable[..., ScorerProcess], page: Any, tmp_path: Path
) -> None:
    model = SHARED_MODELS / "cv-cls-catdog-negative-opset7"
    photos = sorted(SHARED_IMAGES.glob("*.jpg")) if SHARED_IMAGES.is_dir() else []
    if not model.is_dir() or not photos:
        pytest.skip(f"needs {model} and photos in {SHARED_IMAGES}")
    server = start_scorer(model, PROVIDERS="cpu")
    photo = next((p for p in photos if p.name == "chelsea.jpg"), photos[0])  # a cat
    page.goto(server.url + "/")
    page.wait_for_selector("#model dd")
    page.set_input_files("#image", str(photo))
    page.wait_for_selector("#bars li")
    expected = api_answer(server, photo.read_bytes(), 0.5)
    bars = shown(page, "bars")
    assert [b["tag"] for b in bars] == [p["tagName"] for p in expected]
    set_threshold(page, 0.0)  # the slider filters the same answer, without scoring again
    everything = api_answer(server, photo.read_bytes(), 0.0)
    bars = shown(page, "bars")
    assert [b["tag"] for b in bars] == [p["tagName"] for p in everything]
    for bar, prediction in zip(bars, everything, strict=True):
        assert float(bar["probability"]) == pytest.approx(prediction["probability"], abs=1e-6)
    assert "CPUExecutionProvider" in page.inner_text("#timing")
    assert "cv-cls-catdog-negative-opset7" in page.inner_text("#model")
    screenshot(page, "classification", tmp_path)


def test_detections_are_drawn_where_the_api_puts_them(
    start_scorer: Callable[..., ScorerProcess], page: Any, demo_dir: Path, tmp_path: Path
) -> None:
    server = start_scorer(demo_dir / "models" / "squares", PROVIDERS="cpu")
    image = demo_dir / "images" / "squares.jpg"
    page.goto(server.url + "/")
    page.set_input_files("#image", str(image))
    page.wait_for_selector("#boxes li")
    expected = api_answer(server, image.read_bytes(), 0.5)
    boxes = shown(page, "boxes")
    assert [b["tag"] for b in boxes] == [p["tagName"] for p in expected]
    for box, prediction in zip(boxes, expected, strict=True):
        sides = ("left", "top", "width", "height")
        drawn = [float(box[k]) for k in sides]
        assert drawn == pytest.approx([prediction["boundingBox"][k] for k in sides], abs=1e-6)
    assert page.eval_on_selector("#canvas", "c => [c.width, c.height]") == [640, 480]
    assert page.is_hidden("#bars")
    screenshot(page, "detection", tmp_path)


def test_a_file_that_is_no_image_shows_the_scorers_error(
    start_scorer: Callable[..., ScorerProcess], page: Any, demo_dir: Path, tmp_path: Path
) -> None:
    server = start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu")
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    page.goto(server.url + "/")
    page.set_input_files("#image", str(text))
    page.wait_for_selector("#error:not([hidden])")
    assert "INVALID_IMAGE" in page.inner_text("#error")


def test_with_keys_on_the_page_asks_once_and_keeps_the_key_for_the_tab(
    start_scorer: Callable[..., ScorerProcess], page: Any, demo_dir: Path
) -> None:
    server = start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu", API_KEYS=KEY)
    page.goto(server.url + "/")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key", "wrong-key-000000000000")
    page.click("#key-form button")
    page.wait_for_selector("#key-error:not([hidden])")
    page.fill("#key", KEY)
    page.click("#key-form button")
    page.wait_for_selector("#model dd")
    assert "colors" in page.inner_text("#model")
    page.set_input_files("#image", str(demo_dir / "images" / "red.jpg"))
    page.wait_for_selector("#bars li")
    assert shown(page, "bars")[0]["tag"] == "red"
    page.reload()  # the same tab: no second prompt
    page.wait_for_selector("#model dd")
    assert not page.is_visible("#key-dialog")


def test_every_control_is_labelled_and_a_phone_screen_needs_no_sideways_scroll(
    start_scorer: Callable[..., ScorerProcess], browser: Any, demo_dir: Path
) -> None:
    server = start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu")
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = phone.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#model dd")
        unlabelled = page.eval_on_selector_all(
            "input", "inputs => inputs.filter(i => !i.labels || !i.labels.length).map(i => i.id)"
        )
        assert unlabelled == []
        overflow = page.evaluate(
            "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth"
        )
        assert overflow <= 0
        page.keyboard.press("Tab")  # the first stop is the image picker
        assert page.evaluate("document.activeElement.id") == "image"
    finally:
        phone.close()
