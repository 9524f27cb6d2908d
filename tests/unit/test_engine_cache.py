"""TensorRT engine folders: keyed by everything an engine depends on, never stale, never shared."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from scorer import engine_cache
from scorer.errors import ModelError


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
    with caplog.at_level(logging.INFO, "scorer"), EngineBuildProgress(folder, 0.01):
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
    with caplog.at_level(logging.INFO, "scorer"), EngineBuildProgress(folder, 0.01):
        time.sleep(0.05)
    assert [r.getMessage() for r in caplog.records] == [f"reusing the TensorRT engine in {folder}"]


# How ONNX Runtime's TensorRT provider refuses a truncated engine, as the scorer sees it
# (its session.open_session wraps ONNX Runtime's error in a ModelError).
UNREADABLE = (
    "/cache/m.onnx: ONNX Runtime cannot load it ([ONNXRuntimeError] : 1 : FAIL : TensorRT EP"
    " could not deserialize engine from cache: /cache/tensorrt/x/TensorrtExecutionProvider_"
    "TRTKernel_graph_main_1_0_0_fp16_sm87.engine)"
)


def engine_folder_with_a_build(tmp_path: Path) -> Path:
    folder = engine_cache.engine_folder(tmp_path, key())
    for name in ("graph_1_sm87.engine", "graph_1_sm87.profile", "cache_sm87.timing"):
        (folder / name).write_bytes(b"cut short")
    return folder


def test_discarding_engines_keeps_only_the_key(tmp_path: Path) -> None:
    folder = engine_folder_with_a_build(tmp_path)
    removed = engine_cache.discard_engines(folder)
    assert removed == ["cache_sm87.timing", "graph_1_sm87.engine", "graph_1_sm87.profile"]
    assert [path.name for path in folder.iterdir()] == ["key.json"]


def test_an_engine_onnx_runtime_cannot_read_is_discarded_and_built_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = engine_folder_with_a_build(tmp_path)
    attempts: list[bool] = []

    def open_session() -> str:
        attempts.append(engine_cache.has_engine(folder))
        if len(attempts) == 1:
            raise ModelError(UNREADABLE)
        return "a session"

    with caplog.at_level(logging.WARNING, logger="scorer.engine_cache"):
        assert engine_cache.opened_past_a_broken_engine(open_session, folder) == "a session"
    assert attempts == [True, False]  # the second try found no engine to read
    assert "cannot be read (a write cut short?)" in caplog.text


def test_other_failures_and_a_second_failure_are_not_retried_for_ever(tmp_path: Path) -> None:
    folder = engine_folder_with_a_build(tmp_path)

    def unrelated() -> str:
        raise ModelError("/cache/m.onnx: ONNX Runtime cannot load it (out of memory)")

    with pytest.raises(ModelError, match="out of memory"):
        engine_cache.opened_past_a_broken_engine(unrelated, folder)
    assert engine_cache.has_engine(folder)  # nothing discarded for another failure
    calls = []

    def always_unreadable() -> str:
        calls.append(1)
        raise ModelError(UNREADABLE)

    with pytest.raises(ModelError, match="could not deserialize"):
        engine_cache.opened_past_a_broken_engine(always_unreadable, folder)
    assert len(calls) == 2
    with pytest.raises(ModelError, match="could not deserialize"):  # no cache: nothing to clear
        engine_cache.opened_past_a_broken_engine(always_unreadable, None)
    assert len(calls) == 3
