"""Every Dockerfile: lint-clean, and its steps replayed without Docker in a fresh venv."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.deploy.dockerfile import Stage, context_of, stages
from tests.edge.harness import module_environment, wait_for
from tests.scorer_process import free_port

DOCKERFILES = sorted([*REPO.glob("modules/*/Dockerfile*"), *REPO.glob("base_images/*/Dockerfile*")])
MODULE_DOCKERFILES = [p for p in DOCKERFILES if p.parent.parent.name == "modules"]
HADOLINT = Path(sys.executable).parent / "hadolint"


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_there_is_an_image_for_every_platform_of_every_module() -> None:
    import json

    for module in ("scorer", "relay"):
        platforms = json.loads((REPO / "modules" / module / "module.json").read_text())["image"][
            "tag"
        ]["platforms"]
        assert set(platforms) == {"arm64v8", "amd64", "amd64.cpu"}
        for dockerfile in platforms.values():
            assert (REPO / "modules" / module / dockerfile).is_file()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_id)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", MODULE_DOCKERFILES, ids=_id)
def test_final_image_is_pinned_non_root_with_healthcheck_and_the_readme_entry_point(
    dockerfile: Path,
) -> None:
    *builders, final = stages(dockerfile)
    module = dockerfile.parent.name
    assert final.cmd == ["python", "-m", module]
    assert final.healthcheck == ["python", "-m", f"{module}.healthcheck"]
    assert final.user.isdigit() and int(final.user) > 0
    for stage in (*builders, final):
        assert ":" in stage.base or stage.base.startswith("${"), stage.base
        assert not stage.base.endswith(":latest")
    assert not any(word in run for run in final.runs for word in ("gcc", "build-essential"))
    if module == "scorer":
        assert set(final.expose) == {"8080", "50051"}


def _fresh_venv(folder: Path, requirements: list[Path]) -> Path:
    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / "bin" / "python"
    arguments = [arg for r in requirements for arg in ("-r", str(r))]
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *arguments],
        check=True,
    )
    return python


def _copied(dockerfile: Path, final: Stage, root: Path) -> Path:
    """The final stage's files as COPY puts them, from the module's build context; its
    WORKDIR, where the CMD runs (so what the image lacks, the replay lacks too)."""
    context = context_of(dockerfile)
    for source, destination, workdir in final.copies:
        target = root / workdir.lstrip("/") / destination
        if (context / source).is_dir():
            shutil.copytree(context / source, target, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(context / source, target)
    return root / final.workdir.lstrip("/")


def _replay(
    dockerfile: Path, extra_requirements: list[Path], env: dict[str, str], tmp_path: Path
) -> None:
    """Install what the image installs, run its CMD with its ENV, pass its HEALTHCHECK."""
    final = stages(dockerfile)[-1]
    requirements = [dockerfile.parent / r for s in stages(dockerfile) for r in s.requirements]
    python = _fresh_venv(tmp_path / "venv", requirements + extra_requirements)
    run_env = {**final.env, **env, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}"}
    app = _copied(dockerfile, final, tmp_path / "image")
    process = subprocess.Popen(
        [str(python), *final.cmd[1:]],
        cwd=app,
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def healthy() -> bool:
            assert process.poll() is None, f"CMD exited: {process.stdout.read()}"
            check = subprocess.run(
                [str(python), *final.healthcheck[1:]],
                cwd=app,
                env=run_env,
                capture_output=True,
            )
            return check.returncode == 0

        wait_for(healthy, 120, f"{_id(dockerfile)} to pass its HEALTHCHECK", interval=0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


SCORER_REPLAYS = {
    "Dockerfile.amd64.cpu": [],
    "Dockerfile.amd64": [],
    # The Jetson image gets onnxruntime-gpu from its base image; the CPU wheel stands in here.
    "Dockerfile.arm64v8": [REPO / "modules" / "scorer" / "requirements-onnxruntime-cpu.txt"],
}


@pytest.mark.parametrize("name", sorted(SCORER_REPLAYS))
def test_scorer_image_replayed_passes_its_healthcheck(
    name: str, demo_dir: Path, tmp_path: Path
) -> None:
    env = {
        "SCORER_MODEL_DIR": str(demo_dir / "models" / "colors"),
        "SCORER_CACHE_DIR": str(tmp_path / "cache"),
        "SCORER_HTTP_PORT": str(free_port()),
        "SCORER_GRPC_PORT": "0",
        "SCORER_HOST": "127.0.0.1",
        "SCORER_HEARTBEAT_PATH": str(tmp_path / "heartbeat"),
        "HOME": str(tmp_path),
    }
    _replay(REPO / "modules" / "scorer" / name, SCORER_REPLAYS[name], env, tmp_path)
    assert not (tmp_path / "heartbeat").exists()  # the worker took it away as it stopped


def test_relay_image_replayed_passes_its_healthcheck(device, tmp_path: Path) -> None:
    env = module_environment("relay", device.brokers["relay"], device.workload)
    env.update(
        RELAY_SPOOL_PATH=str(tmp_path / "spool" / "relay.db"),
        RELAY_HEARTBEAT_PATH=str(tmp_path / "heartbeat"),
        RELAY_METRICS_PORT=str(free_port()),
        HOME=str(tmp_path),
    )
    _replay(REPO / "modules" / "relay" / "Dockerfile", [], env, tmp_path)
    assert time.time() - (tmp_path / "heartbeat").stat().st_mtime < 60
