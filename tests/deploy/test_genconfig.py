"""scripts/genconfig: the same output as `iotedgedev genconfig`, valid, and strict."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.schemas import errors

IOTEDGEDEV = REPO / ".venv-iotedgedev" / "bin" / "iotedgedev"
# platform -> (its template, the file genconfig writes)
PLATFORMS = {
    "arm64v8": ("deployment.template.json", "deployment.arm64v8.json"),
    "amd64": ("deployment.gpu.template.json", "deployment.gpu.amd64.json"),
    "amd64.cpu": ("deployment.cpu.template.json", "deployment.cpu.amd64.cpu.json"),
}


@pytest.fixture
def solution(tmp_path: Path) -> Path:
    """A copy of the solution with a .env made from .env.example and a long createOptions."""
    for template in REPO.glob("deployment*.template.json"):
        shutil.copy(template, tmp_path / template.name)
    for module in ("scorer", "relay"):
        (tmp_path / "modules" / module).mkdir(parents=True)
        shutil.copy(REPO / "modules" / module / "module.json", tmp_path / "modules" / module)
    env = (
        (REPO / ".env.example")
        .read_text()
        .replace(
            "MODEL_HOST_DIR=/var/lib/customvision/model",
            # an inline comment and a ${VAR} reference, read as iotedgedev reads them
            "MODEL_ROOT=/var/lib/customvision\n"
            "MODEL_HOST_DIR=${MODEL_ROOT}/" + "a-very-long-folder-name/" * 20 + "model"
            "  # the export",
        )
    )
    # an inline comment after a tuned value, whatever the example's default is
    env = re.sub(r"^SCORER_THREADS=.*$", "SCORER_THREADS=32  # tuned here", env, flags=re.M)
    (tmp_path / ".env").write_text(env)
    return tmp_path


def _clean_env() -> dict[str, str]:
    names = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    return {k: v for k, v in os.environ.items() if k not in names and k != "CONTAINER_TAG"}


def genconfig(
    solution: Path,
    platform: str,
    env: dict[str, str] | None = None,
    template: str | None = None,
):
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "genconfig"),
            "--platform",
            platform,
            "--template",
            str(solution / (template or PLATFORMS[platform][0])),
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
    template, written = PLATFORMS[platform]
    theirs = subprocess.run(
        [str(IOTEDGEDEV), "genconfig", "-f", template, "-P", platform],
        cwd=solution,
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert genconfig(solution, platform).returncode == 0
    ours = (solution / "ours" / written).read_text()
    assert ours == (solution / "config" / written).read_text()
    agent = json.loads(ours)["modulesContent"]["$edgeAgent"]["properties.desired"]
    scorer = agent["modules"]["scorer"]
    assert scorer["settings"]["image"].endswith(f":0.1.0-{platform}")
    assert "createOptions01" in scorer["settings"]  # the long bind was split at 512
    # the .env's inline comment and ${VAR} reference mean what they mean to iotedgedev
    assert scorer["env"]["SCORER_THREADS"] == {"value": "32"}
    assert "/var/lib/customvision/a-very-long" in "".join(
        v for k, v in scorer["settings"].items() if k.startswith("createOptions")
    )


@pytest.mark.parametrize("platform", PLATFORMS)
def test_generated_deployment_validates(solution: Path, platform: str) -> None:
    assert genconfig(solution, platform).returncode == 0
    manifest = json.loads((solution / "ours" / PLATFORMS[platform][1]).read_text())
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
    manifest = json.loads((solution / "ours" / "deployment.gpu.amd64.json").read_text())
    relay = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["relay"]
    assert relay["settings"]["image"] == "other.azurecr.io/customvision-relay:0.1.0-rc1-amd64"


def test_metrics_layer_expands_and_merges_into_a_valid_deployment(solution: Path) -> None:
    """iotedgedev cannot expand a layered template; ours does, the same way."""
    assert genconfig(solution, "arm64v8").returncode == 0
    result = genconfig(solution, "arm64v8", template="deployment.metrics.template.json")
    assert result.returncode == 0, result.stderr
    layer = json.loads((solution / "ours" / "deployment.metrics.arm64v8.json").read_text())
    base = json.loads((solution / "ours" / "deployment.arm64v8.json").read_text())
    content = base["modulesContent"]
    for module, paths in layer["modulesContent"].items():
        for path, value in paths.items():  # how IoT Hub applies a layer: by property path
            *parents, leaf = path.removeprefix("properties.desired.").split(".")
            target = content[module]["properties.desired"]
            for key in parents:
                target = target.setdefault(key, {})
            target[leaf] = value
    collector = content["$edgeAgent"]["properties.desired"]["modules"]["metricsCollector"]
    assert isinstance(collector["settings"]["createOptions"], str)
    endpoints = collector["env"]["MetricsEndpointsCSV"]["value"].split(",")
    assert "http://scorer:8080/metrics" in endpoints and "http://relay:9601/metrics" in endpoints
    assert collector["env"]["ScrapeFrequencyInSecs"] == {"value": "300"}
    assert errors("azure-iot-edge-deployment-2.0.json", base) == []
    agent = {"$edgeAgent": content["$edgeAgent"]}
    assert errors("azure-iot-edgeagent-deployment-1.1.json", agent) == []
    assert errors("azure-iot-edgehub-deployment-1.2.json", {"$edgeHub": content["$edgeHub"]}) == []
