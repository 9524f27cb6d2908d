"""A cache volume with no room left (logs or images filled the device's disk): the scorer
still starts and serves the graphs it derives (YOLO exports with free input sizes, upgraded
legacy exports) from memory, and a write that failed leaves nothing behind on the volume."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import requests

from tests.conftest import SHARED_IMAGES, SHARED_MODELS, fill, require_shared
from tests.scorer_process import ScorerProcess

JPEG = {"Content-Type": "image/jpeg"}


def leftovers(volume: Path) -> list[str]:
    """What the scorer left in the cache volume besides its own folders."""
    return sorted(str(p.relative_to(volume)) for p in volume.rglob("*") if p.is_file())


def test_a_yolo_export_serves_at_its_scripts_sizes_with_the_cache_volume_full(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path, small_volume: Path
) -> None:
    fill(small_volume)
    server = start_scorer(
        demo_dir / "models" / "squares-yolo", PROVIDERS="cpu", CACHE_DIR=str(small_volume)
    )
    assert requests.get(server.url + "/model").json()["inputShape"][2:] == [-1, -1]
    answer = requests.post(
        server.url + "/score?threshold=0.5",
        data=(demo_dir / "images" / "squares.jpg").read_bytes(),
        headers=JPEG,
    )
    assert answer.status_code == 200
    assert {p["tagName"] for p in answer.json()["predictions"]} == {"red", "blue"}
    assert "serving that graph from memory" in server.log
    assert leftovers(small_volume) == ["ballast"]


def test_a_legacy_export_is_upgraded_in_memory_when_its_copy_does_not_fit(
    start_scorer: Callable[..., ScorerProcess], small_volume: Path
) -> None:
    """Room for part of the upgraded graph: the write fails half-way, and the part written
    is removed, so a crash-looping start cannot fill the volume a little more each time."""
    legacy = require_shared(SHARED_MODELS / "cv-cls-food-winml-opset1")
    photo = (require_shared(SHARED_IMAGES) / "coffee.jpg").read_bytes()
    os.truncate(fill(small_volume), 2 * 1024 * 1024)  # 2 MiB free; the graph is 2.8 MB
    full = start_scorer(legacy, PROVIDERS="cpu", CACHE_DIR=str(small_volume))
    roomy = start_scorer(legacy, PROVIDERS="cpu")
    from_memory = requests.post(full.url + "/score", data=photo, headers=JPEG).json()
    from_cache = requests.post(roomy.url + "/score", data=photo, headers=JPEG).json()
    assert from_memory["predictions"] == from_cache["predictions"]
    assert "serving that graph from memory" in full.log
    assert leftovers(small_volume) == ["ballast"]
