"""What the scorer derives from models (rewritten graphs, TensorRT engines) does not pile up on
a device updated for months: the most recently used of each kind are kept, the rest go."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from scorer import cache, engine_cache
from scorer.model import inspect_export
from scorer.settings import Settings
from scorer.worker_app import session_opener

from tests.unit.test_model import _save, yolo_model

CPU_ONLY = ["CPUExecutionProvider"]


def aged(path: Path, seconds_ago: float) -> Path:
    when = path.stat().st_mtime - seconds_ago
    os.utime(path, (when, when))
    return path


def written(path: Path) -> Path:
    path.write_bytes(b"derived")
    return path


def test_the_most_recently_used_of_each_kind_are_kept(tmp_path: Path) -> None:
    graphs = [aged(written(tmp_path / f"free-dims-{i:016x}.onnx"), 100 - i) for i in range(5)]
    upgraded = written(tmp_path / "upgraded-0123456789abcdef-opset13.onnx")
    engines = [
        aged(engine_cache.engine_folder(tmp_path, {"model": f"{i:064x}"}), 100 - i)
        for i in range(4)
    ]
    store = tmp_path / "models" / "v1"
    store.mkdir(parents=True)
    other = tmp_path / "notes.txt"
    other.write_text("not derived from a model")
    cache.mark_used(tmp_path, graphs[0], engines[0])  # the oldest, used just now
    removed = cache.prune(tmp_path, keep=2)
    assert set(removed) == {*graphs[1:4], *engines[1:3]}
    assert {p for p in tmp_path.glob("free-dims-*")} == {graphs[0], graphs[4]}
    assert set((tmp_path / "tensorrt").iterdir()) == {engines[0], engines[3]}
    assert upgraded.exists() and store.is_dir() and other.exists()  # not derived, or kept
    assert cache.prune(tmp_path, keep=2) == []  # nothing more to remove


def test_marking_never_touches_what_is_outside_the_cache(tmp_path: Path) -> None:
    model = tmp_path / "model" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"m")
    before = aged(model, 1000).stat().st_mtime
    cache.mark_used(tmp_path / "cache", model, None)
    assert model.stat().st_mtime == before  # a read-only model mount is never written


def yolo_version(tmp_path: Path, version: int) -> Path:
    """A YOLO export of its own content (and so its own free-size graph in the cache)."""
    exported = yolo_model(["x", "y"])
    weights = exported.graph.initializer[0]
    changed = onnx.numpy_helper.to_array(weights) + np.float32(version)
    weights.CopyFrom(onnx.numpy_helper.from_array(changed, weights.name))
    return _save(tmp_path / f"v{version}", exported, ["x", "y"])


def test_opening_model_after_model_keeps_the_graphs_of_the_last_few(tmp_path: Path) -> None:
    """Six YOLO model versions, each with its own free-size graph, opened one after another
    with SCORER_MODEL_KEEP=2: the cache keeps three graphs, the current one among them."""
    cache_dir = tmp_path / "cache"
    settings = Settings.from_env({"SCORER_CACHE_DIR": str(cache_dir), "SCORER_MODEL_KEEP": "2"})
    open_model = session_opener(settings, CPU_ONLY)
    for version in range(6):
        spec = inspect_export(yolo_version(tmp_path, version), cache_dir=cache_dir)
        open_model(spec)
        graphs = set(cache_dir.glob("free-dims-*.onnx"))
        assert spec.onnx_path in graphs and len(graphs) == min(version + 1, 3)


def test_the_graph_of_the_model_served_is_never_removed(tmp_path: Path) -> None:
    """Updates that fail after their model was opened (a canary, say) open model after model
    while the first one is still served: its graph stays, however many come and go."""
    cache_dir = tmp_path / "cache"
    settings = Settings.from_env({"SCORER_CACHE_DIR": str(cache_dir), "SCORER_MODEL_KEEP": "1"})
    open_model = session_opener(settings, CPU_ONLY)
    served_spec = inspect_export(yolo_version(tmp_path, 0), cache_dir=cache_dir)
    served = open_model(served_spec)
    for version in range(1, 6):
        candidate = open_model(inspect_export(yolo_version(tmp_path, version), cache_dir=cache_dir))
        assert served_spec.onnx_path.exists(), version
        del candidate  # refused: nothing holds it any more
    assert len(set(cache_dir.glob("free-dims-*.onnx"))) == 2
    assert served.spec is served_spec
