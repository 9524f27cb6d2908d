"""deployment.template.json: valid, wired as the architecture says, variables documented."""

from __future__ import annotations

import json
import re

from relay.policy import Policy, apply_desired

from tests.conftest import REPO
from tests.edge.harness import parse_routes
from tests.schemas import errors

TEMPLATE = json.loads((REPO / "deployment.template.json").read_text())
CONTENT = TEMPLATE["modulesContent"]


def test_template_validates_against_the_template_schema() -> None:
    assert errors("azure-iot-edge-deployment-template-4.0.json", TEMPLATE) == []


def _with_serialised_create_options(agent: dict) -> dict:
    """The edgeAgent section as deployed: createOptions become JSON strings."""
    deployed = json.loads(json.dumps(agent))
    desired = deployed["properties.desired"]
    for group in ("systemModules", "modules"):
        for module in desired[group].values():
            settings = module["settings"]
            settings["createOptions"] = json.dumps(settings.get("createOptions", {}))
    return deployed


def test_edge_agent_and_edge_hub_validate_against_their_schemas() -> None:
    agent = _with_serialised_create_options(CONTENT["$edgeAgent"])
    assert errors("azure-iot-edgeagent-deployment-1.1.json", {"$edgeAgent": agent}) == []
    assert errors("azure-iot-edgehub-deployment-1.2.json", {"$edgeHub": CONTENT["$edgeHub"]}) == []


def test_runtime_versions_and_images() -> None:
    agent = CONTENT["$edgeAgent"]["properties.desired"]
    assert agent["schemaVersion"] == "1.1"
    assert agent["systemModules"]["edgeAgent"]["settings"]["image"].endswith(
        "azureiotedge-agent:1.5"
    )
    assert agent["systemModules"]["edgeHub"]["settings"]["image"].endswith("azureiotedge-hub:1.5")
    assert CONTENT["$edgeHub"]["properties.desired"]["schemaVersion"] == "1.2"
    assert TEMPLATE["$schema-template"] == "4.0.0"


def test_routes_wire_scorer_to_relay_to_upstream() -> None:
    assert sorted(parse_routes(TEMPLATE)) == [
        ("relay", "upstream", "$upstream"),
        ("scorer", "results", "relay/results"),
    ]
    assert (
        CONTENT["$edgeHub"]["properties.desired"]["storeAndForwardConfiguration"]["timeToLiveSecs"]
        > 0
    )


def test_scorer_gets_the_gpu_the_model_volume_and_its_ports() -> None:
    scorer = CONTENT["$edgeAgent"]["properties.desired"]["modules"]["scorer"]
    host = scorer["settings"]["createOptions"]["HostConfig"]
    assert host["Runtime"] == "nvidia"
    assert any(bind.endswith(":/models/current") for bind in host["Binds"])
    assert set(host["PortBindings"]) == {"8080/tcp", "50051/tcp"}
    assert scorer["restartPolicy"] == "always"
    assert scorer["settings"]["image"] == "${MODULES.scorer}"


def test_relay_keeps_its_spool_on_a_volume() -> None:
    relay = CONTENT["$edgeAgent"]["properties.desired"]["modules"]["relay"]
    binds = relay["settings"]["createOptions"]["HostConfig"]["Binds"]
    spool = relay["env"]["RELAY_SPOOL_PATH"]["value"]
    assert any(spool.startswith(bind.split(":")[1]) for bind in binds)


def test_default_desired_properties_are_valid_for_the_modules() -> None:
    _, rejected = apply_desired(Policy(), CONTENT["relay"]["properties.desired"])
    assert rejected == {}
    from scorer.edge import DESIRED

    for key, value in CONTENT["scorer"]["properties.desired"].items():
        DESIRED[key](value)


def test_every_variable_is_in_env_example() -> None:
    text = (REPO / "deployment.template.json").read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (REPO / ".env.example").read_text(), re.M))
    assert used and used <= documented, used - documented
