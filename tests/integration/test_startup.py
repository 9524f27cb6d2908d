"""A bad setting or a bad export stops the start with one clear line, before serving."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from scorer.providers import provider_works

from tests.conftest import REPO
from tests.scorer_process import ScorerProcess, scorer_env, worker_pid


def _start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scorer"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _critical_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "cannot start" in line]


def test_bad_setting_stops_with_one_line(demo_dir: Path, tmp_path: Path) -> None:
    env = scorer_env(demo_dir / "models" / "colors", tmp_path, HTTP_PORT="eighty")
    result = _start(env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "scorer: cannot start: SCORER_HTTP_PORT='eighty': invalid literal for int() with base"
        " 10: 'eighty'"
    )


def test_missing_labels_stops_with_one_line_naming_the_file(demo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(demo_dir / "models" / "colors" / "model.onnx", folder)
    result = _start(scorer_env(folder, tmp_path))
    assert result.returncode == 2
    lines = _critical_lines(result)
    assert len(lines) == 1 and str(folder / "labels.txt") in lines[0]
    assert "Traceback" not in result.stderr


def test_label_count_mismatch_stops_the_start(demo_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(demo_dir / "models" / "colors", folder)
    (folder / "labels.txt").write_text("only-one\n")
    result = _start(scorer_env(folder, tmp_path))
    assert result.returncode == 2
    assert "3 classes but labels.txt has 1" in _critical_lines(result)[0]


@pytest.mark.skipif(
    provider_works("TensorrtExecutionProvider")[0], reason="TensorRT works here; nothing to refuse"
)
def test_insisting_on_an_unavailable_provider_stops_gunicorn(
    demo_dir: Path, tmp_path: Path
) -> None:
    env = scorer_env(demo_dir / "models" / "colors", tmp_path, PROVIDERS="tensorrt")
    result = _start(env)
    assert result.returncode != 0
    lines = _critical_lines(result)
    assert lines and "TensorrtExecutionProvider was requested" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("field", "name"),
    [("LabelFileName", "/etc/passwd"), ("ModelFileName", "../outside.onnx")],
)
def test_an_export_naming_files_outside_its_folder_stops_with_one_line(
    demo_dir: Path, tmp_path: Path, field: str, name: str
) -> None:
    folder = tmp_path / "export" / "model"
    shutil.copytree(demo_dir / "models" / "colors", folder)
    shutil.copy(folder / "model.onnx", folder.parent / "outside.onnx")
    (folder / "cvexport.manifest").write_text(json.dumps({field: name}))
    result = _start(scorer_env(folder, tmp_path))
    assert result.returncode == 2
    (line,) = _critical_lines(result)
    assert f"{field} {name!r} is outside the model folder" in line
    assert "Traceback" not in result.stderr


def test_a_label_mismatch_found_only_at_warm_up_stops_with_one_line(
    demo_dir: Path, tmp_path: Path
) -> None:
    """The output's size is symbolic, so only running the model shows 3 classes for 2 labels."""
    folder = tmp_path / "model"
    shutil.copytree(demo_dir / "models" / "colors", folder)
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "labels.txt").write_text("red\ngreen\n")
    result = _start(scorer_env(folder, tmp_path, PROVIDERS="cpu"))
    assert result.returncode != 0
    lines = _critical_lines(result)
    assert len(lines) == 1 and "label" in lines[0].lower()
    assert "Traceback" not in result.stdout + result.stderr


def test_the_master_never_loads_onnx_numpy_or_onnxruntime(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path
) -> None:
    """The export is checked in a forked child; the master keeps none of what it took
    (59 MiB of `onnx` and `numpy` before), while the worker has them all."""
    server = start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu")
    heavy = ("onnx_cpp2py_export", "_multiarray_umath", "onnxruntime_pybind11_state")

    def loaded(pid: int) -> set[str]:
        maps = Path(f"/proc/{pid}/maps").read_text()
        return {name for name in heavy if name in maps}

    assert loaded(server.proc.pid) == set()
    assert loaded(worker_pid(server.proc.pid)) >= {
        "_multiarray_umath",
        "onnxruntime_pybind11_state",
    }
