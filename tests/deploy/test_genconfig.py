"""scripts/genconfig: the same output as `iotedgedev genconfig`, valid, and strict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.schemas import errors

IOTEDGEDEV = REPO / ".venv-iotedgedev" / "bin" / "iotedgedev"
PLATFORMS = ("arm64v8", "amd64", "amd64.cpu")


@pytest.fixture
def solution(tmp_path: Path) -> Path:
    """A copy of the solution with a .env made from .env.example and a long createOptions."""
    for name in ("deployment.template.json", ".env.example"):
        shutil.copy(REPO / name, tmp_path / name)
    for module in ("scorer", "relay"):
        (tmp_path / "modules" / module).mkdir(parents=True)
        shutil.copy(REPO / "modules" / module / "module.json", tmp_path / "modules" / module)
    env = (
        (REPO / ".env.example")
        .read_text()
        .replace(
            "MODEL_HOST_DIR=/var/lib/customvision/model",
            "MODEL_HOST_DIR=/var/lib/customvision/" + "a-very-long-folder-name/" * 20 + "model",
        )
    )
    (tmp_path / ".env").write_text(env)
    return tmp_path


def _clean_env() -> dict[str, str]:
    names = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    return {k: v for k, v in os.environ.items() if k not in names and k != "CONTAINER_TAG"}


def genconfig(solution: Path, platform: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "genconfig"),
            "--platform",
            platform,
            "--template",
            str(solution / "deployment.template.json"),
            "--env",
            str(solution / ".env"),
            "--out",
            str(solution / "ours"),
        ],
        capture_output=True,
        text=True,
        env=env or _clean_env(),
    )


@pytest.mark.parametrize("platform", PLATFORMS)
def test_output_is_identical_to_iotedgedev(solution: Path, platform: str) -> None:
    if not IOTEDGEDEV.exists():
        pytest.fail("iotedgedev is missing: scripts/setup --dev installs it")
    theirs = subprocess.run(
        [str(IOTEDGEDEV), "genconfig", "-f", "deployment.template.json", "-P", platform],
        cwd=solution,
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert genconfig(solution, platform).returncode == 0
    ours = (solution / "ours" / f"deployment.{platform}.json").read_text()
    assert ours == (solution / "config" / f"deployment.{platform}.json").read_text()
    agent = json.loads(ours)["modulesContent"]["$edgeAgent"]["properties.desired"]
    scorer = agent["modules"]["scorer"]
    assert scorer["settings"]["image"].endswith(f":0.1.0-{platform}")
    assert "createOptions01" in scorer["settings"]  # the long bind was split at 512


@pytest.mark.parametrize("platform", PLATFORMS)
def test_generated_deployment_validates(solution: Path, platform: str) -> None:
    assert genconfig(solution, platform).returncode == 0
    manifest = json.loads((solution / "ours" / f"deployment.{platform}.json").read_text())
    assert errors("azure-iot-edge-deployment-2.0.json", manifest) == []
    content = manifest["modulesContent"]
    assert (
        errors("azure-iot-edgeagent-deployment-1.1.json", {"$edgeAgent": content["$edgeAgent"]})
        == []
    )
    assert errors("azure-iot-edgehub-deployment-1.2.json", {"$edgeHub": content["$edgeHub"]}) == []


def test_a_missing_variable_is_an_error_naming_it(solution: Path) -> None:
    env_file = solution / ".env"
    env_file.write_text(
        "\n".join(
            line
            for line in env_file.read_text().splitlines()
            if not line.startswith("MODEL_HOST_DIR=")
        )
    )
    result = genconfig(solution, "arm64v8")
    assert result.returncode == 2
    assert "no value for MODEL_HOST_DIR" in result.stderr
    assert not (solution / "ours").exists()


def test_the_environment_wins_over_env_file_and_container_tag_is_applied(solution: Path) -> None:
    env = {**_clean_env(), "CONTAINER_REGISTRY_SERVER": "other.azurecr.io", "CONTAINER_TAG": "rc1"}
    assert genconfig(solution, "amd64", env).returncode == 0
    manifest = json.loads((solution / "ours" / "deployment.amd64.json").read_text())
    relay = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["relay"]
    assert relay["settings"]["image"] == "other.azurecr.io/customvision-relay:0.1.0-rc1-amd64"
