"""TensorRT engine folders: keyed by everything an engine depends on, never stale, never shared."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from scorer import engine_cache


def key(**changes: str) -> dict[str, str]:
    base = {"model": "ab" * 32, "onnxruntime": "1.20.0", "tensorrt": "100300", "gpu": "Orin"}
    return {**base, "fp16": "true", **changes}


def test_the_same_model_runtime_and_gpu_reuse_one_folder(tmp_path: Path) -> None:
    assert engine_cache.engine_folder(tmp_path, key()) == engine_cache.engine_folder(
        tmp_path, key()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"model": "cd" * 32},
        {"onnxruntime": "1.21.0"},
        {"tensorrt": "100700"},
        {"gpu": "Xavier"},
        {"fp16": "false"},
    ],
)
def test_any_change_of_model_runtime_gpu_or_precision_gets_a_new_folder(
    tmp_path: Path, change: dict[str, str]
) -> None:
    assert engine_cache.engine_folder(tmp_path, key()) != engine_cache.engine_folder(
        tmp_path, key(**change)
    )


def test_the_folder_says_what_it_was_built_for(tmp_path: Path) -> None:
    folder = engine_cache.engine_folder(tmp_path, key())
    assert folder.parent == tmp_path / "tensorrt" and folder.name.startswith("ab" * 6)
    assert json.loads((folder / "key.json").read_text()) == key()
    assert not engine_cache.has_engine(folder)
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_1_sm87.engine").write_bytes(b"x")
    assert engine_cache.has_engine(folder)


def test_a_cache_that_cannot_be_created_raises_oserror(tmp_path: Path) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(OSError):
        engine_cache.engine_folder(blocked, key())


def test_the_runtime_key_names_this_machine() -> None:
    runtime = engine_cache.runtime_key("ef" * 32, "1.31.1", fp16=True)
    assert runtime["model"] == "ef" * 32 and runtime["fp16"] == "true"
    assert runtime["tensorrt"] and runtime["gpu"]  # "none" / "unknown" on a CPU machine


def test_a_stretched_and_a_pixel_count_input_keep_their_engines_apart(tmp_path: Path) -> None:
    """A YOLO export on TensorRT stretched to its declared size, and sized by pixel count
    (free height and width, a profile for its sizes), are two engines of one model; so are
    two profiles (another SCORER_YOLO_MAX_ASPECT)."""
    stretched = engine_cache.runtime_key("ef" * 32, "1.31.1", True, (1, 3, 416, 416))
    profile = {"trt_profile_min_shapes": "data:1x3x320x320"}
    sized = engine_cache.runtime_key("ef" * 32, "1.31.1", True, (1, 3, "height", "width"), profile)
    wider = engine_cache.runtime_key(
        "ef" * 32, "1.31.1", True, (1, 3, "height", "width"), {**profile, "x": "y"}
    )
    folders = {engine_cache.engine_folder(tmp_path, k) for k in (stretched, sized, wider)}
    assert len(folders) == 3
    assert engine_cache.engine_folder(tmp_path, sized) in folders  # the same key: the same one


def test_a_first_engine_build_is_announced_and_ticks_until_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from scorer.worker_app import EngineBuildProgress

    folder = engine_cache.engine_folder(tmp_path, key())
    with caplog.at_level(logging.INFO, "scorer"), EngineBuildProgress(str(folder), 0.01):
        time.sleep(0.1)  # the engine builds during warm-up, before ready
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith(f"building the TensorRT engine into {folder}")
    assert any(m.startswith("still building the TensorRT engine") for m in messages)
    assert messages[-1].startswith("TensorRT engine built in")


def test_a_restart_reuses_the_engine_it_built(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from scorer.worker_app import EngineBuildProgress

    folder = engine_cache.engine_folder(tmp_path, key())
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_1_sm87.engine").write_bytes(b"x")
    with caplog.at_level(logging.INFO, "scorer"), EngineBuildProgress(str(folder), 0.01):
        time.sleep(0.05)
    assert [r.getMessage() for r in caplog.records] == [f"reusing the TensorRT engine in {folder}"]
