"""The parts of building the Jetson base image that can run here: release, daemon, wheel."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO


def _load(path: Path) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(path.stem.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


build = _load(REPO / "scripts" / "build_base_image")
wheel = _load(REPO / "base_images" / "onnxruntime-jetson" / "fetch_wheel.py")

JP6 = (
    "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
    "DATE: Fri Sep 13 04:36:44 UTC 2024\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia"
)
JP5 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: x"


def test_release_file_gives_the_l4t_version_and_its_jetpack_image() -> None:
    assert build.parse_tegra_release(JP6) == "r36.4.0"
    assert build.base_for("r36.4.0") == ("jp6", "nvcr.io/nvidia/l4t-jetpack:r36.4.0")
    assert build.parse_tegra_release(JP5) == "r35.4.1"
    assert build.base_for("r35.4.1")[0] == "jp5"


def test_unknown_release_text_or_version_is_refused() -> None:
    with pytest.raises(build.BuildError, match="Jetson"):
        build.parse_tegra_release("Ubuntu 22.04")
    with pytest.raises(build.BuildError, match="not supported"):
        build.base_for("r32.7.1")


def test_daemon_json_with_nvidia_default_runtime_passes() -> None:
    config = {
        "default-runtime": "nvidia",
        "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
    }
    assert build.daemon_json_problem(json.dumps(config)) is None


@pytest.mark.parametrize("text", [None, "{}", '{"runtimes": {}, "log-driver": "local"}'])
def test_missing_default_runtime_prints_the_exact_change(text: str | None) -> None:
    problem = build.daemon_json_problem(text)
    wanted = json.loads(problem.split("restart docker`:\n", 1)[1])
    assert wanted["default-runtime"] == "nvidia"
    assert wanted["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    if text and "log-driver" in text:
        assert wanted["log-driver"] == "local"  # the rest of the file is kept


def test_broken_daemon_json_is_named() -> None:
    assert "not valid JSON" in build.daemon_json_problem("{oops")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--disable-pip-version-check",
            "onnxruntime-gpu",
            "six",
            "-d",
            str(folder),
        ],
        check=True,
    )
    return {p.name.split("-")[0]: p for p in folder.glob("*.whl")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_onnxruntime_gpu_wheel_passes(wheels: dict[str, Path]) -> None:
    real = wheels["onnxruntime_gpu"]
    assert wheel.check_wheel(real, _sha(real)).startswith("onnxruntime")


def test_wrong_checksum_fails(wheels: dict[str, Path]) -> None:
    with pytest.raises(wheel.WheelError, match="SHA-256"):
        wheel.check_wheel(wheels["onnxruntime_gpu"], "0" * 64)


def test_a_wheel_of_another_project_fails(wheels: dict[str, Path]) -> None:
    other = wheels["six"]
    with pytest.raises(wheel.WheelError, match="not onnxruntime-gpu"):
        wheel.check_wheel(other, _sha(other))


def test_an_html_page_fails_the_build_with_a_clear_message(tmp_path: Path) -> None:
    page = tmp_path / "onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl"
    page.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "base_images" / "onnxruntime-jetson" / "fetch_wheel.py"),
            "--sha256",
            _sha(page),
            "--file",
            str(page),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "is an HTML page, not a wheel" in result.stderr


def test_build_script_refuses_off_a_jetson(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "build_base_image"),
            "--wheel-url",
            "http://x",
            "--wheel-sha256",
            "0" * 64,
            "--release-file",
            str(tmp_path / "nv_tegra_release"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "run this on the Jetson" in result.stderr
