"""The deployment templates: valid, wired as the architecture says, one per platform family."""

from __future__ import annotations

import copy
import json
import re

import pytest
from relay.policy import Policy, apply_desired

from tests.conftest import REPO
from tests.edge.harness import parse_routes
from tests.schemas import errors

# template -> what it must give the scorer to reach the GPU
TEMPLATES = {
    "deployment.template.json": "jetson",
    "deployment.gpu.template.json": "x86 gpu",
    "deployment.cpu.template.json": "cpu",
}
ENV_EXAMPLE = (REPO / ".env.example").read_text()


def load(name: str) -> dict:
    return json.loads((REPO / name).read_text())


def agent_of(template: dict) -> dict:
    return template["modulesContent"]["$edgeAgent"]["properties.desired"]


def scorer_host_config(template: dict) -> dict:
    return agent_of(template)["modules"]["scorer"]["settings"]["createOptions"]["HostConfig"]


@pytest.fixture(params=sorted(TEMPLATES))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_template_validates_against_the_template_schema(name: str) -> None:
    assert errors("azure-iot-edge-deployment-template-4.0.json", load(name)) == []


def _with_serialised_create_options(agent: dict) -> dict:
    """The edgeAgent section as deployed: createOptions become JSON strings."""
    deployed = json.loads(json.dumps(agent))
    desired = deployed["properties.desired"]
    for group in ("systemModules", "modules"):
        for module in desired[group].values():
            settings = module["settings"]
            settings["createOptions"] = json.dumps(settings.get("createOptions", {}))
    return deployed


def test_edge_agent_and_edge_hub_validate_against_their_schemas(name: str) -> None:
    content = load(name)["modulesContent"]
    agent = _with_serialised_create_options(content["$edgeAgent"])
    assert errors("azure-iot-edgeagent-deployment-1.1.json", {"$edgeAgent": agent}) == []
    assert errors("azure-iot-edgehub-deployment-1.2.json", {"$edgeHub": content["$edgeHub"]}) == []


def test_system_modules_are_iot_edge_1_6_lts_on_a_patch_tag(name: str) -> None:
    template = load(name)
    system = agent_of(template)["systemModules"]
    for module, image in (("edgeAgent", "azureiotedge-agent"), ("edgeHub", "azureiotedge-hub")):
        assert re.fullmatch(
            rf"mcr\.microsoft\.com/{image}:1\.6\.\d+", system[module]["settings"]["image"]
        )
    assert agent_of(template)["schemaVersion"] == "1.1"
    assert template["modulesContent"]["$edgeHub"]["properties.desired"]["schemaVersion"] == "1.2"


def test_edge_agent_and_edge_hub_keep_their_state_on_the_host(name: str) -> None:
    """Without it edgeHub's store-and-forward queue is lost whenever edgeHub is recreated."""
    for module in agent_of(load(name))["systemModules"].values():
        folder = module["env"]["StorageFolder"]["value"]
        binds = module["settings"]["createOptions"]["HostConfig"]["Binds"]
        assert any(
            bind.startswith("${EDGE_STORAGE_DIR}/") and bind.endswith(":" + folder)
            for bind in binds
        )


def test_devices_get_pull_only_registry_credentials(name: str) -> None:
    registry = agent_of(load(name))["runtime"]["settings"]["registryCredentials"]["registry"]
    assert registry["username"] == "${CONTAINER_REGISTRY_PULL_USERNAME}"
    assert registry["password"] == "${CONTAINER_REGISTRY_PULL_PASSWORD}"


def test_routes_wire_scorer_to_relay_to_upstream(name: str) -> None:
    template = load(name)
    assert sorted(parse_routes(template)) == [
        ("relay", "upstream", "$upstream"),
        ("scorer", "results", "relay/results"),
    ]
    hub = template["modulesContent"]["$edgeHub"]["properties.desired"]
    assert hub["storeAndForwardConfiguration"]["timeToLiveSecs"] > 0


def test_scorer_reaches_the_gpu_the_way_its_platform_needs(name: str) -> None:
    host = scorer_host_config(load(name))
    family = TEMPLATES[name]
    if family == "jetson":
        assert host["Runtime"] == "nvidia"
        assert host["GroupAdd"] == ["${GPU_VIDEO_GROUP}", "${GPU_RENDER_GROUP}"]
    else:
        assert "Runtime" not in host and "GroupAdd" not in host
    requests = host.get("DeviceRequests", [])
    assert ([["gpu"]] in [r["Capabilities"] for r in requests]) == (family == "x86 gpu")


def test_cpu_deployment_runs_on_the_cpu_without_probing_for_a_gpu() -> None:
    scorer = agent_of(load("deployment.cpu.template.json"))["modules"]["scorer"]
    assert scorer["env"]["SCORER_PROVIDERS"] == {"value": "cpu"}


def test_model_is_read_only_and_caches_have_a_volume_of_their_own(name: str) -> None:
    scorer = agent_of(load(name))["modules"]["scorer"]
    binds = scorer["settings"]["createOptions"]["HostConfig"]["Binds"]
    assert "${MODEL_HOST_DIR}:/models/current:ro" in binds
    assert "${MODEL_CACHE_VOLUME}:/cache" in binds
    assert scorer["env"]["SCORER_MODEL_DIR"] == {"value": "/models/current"}
    assert scorer["env"]["SCORER_CACHE_DIR"] == {"value": "/cache"}


def test_ports_are_published_on_a_configurable_address_and_stop_waits_for_the_grace(
    name: str,
) -> None:
    options = agent_of(load(name))["modules"]["scorer"]["settings"]["createOptions"]
    bindings = options["HostConfig"]["PortBindings"]
    assert set(bindings) == {"8080/tcp", "50051/tcp"}
    assert all(b["HostIp"] == "${PUBLISH_ADDRESS}" for each in bindings.values() for b in each)
    graceful = float(re.search(r"^SCORER_GRACEFUL_TIMEOUT_S=(\S+)", ENV_EXAMPLE, re.M)[1])
    assert options["StopTimeout"] > graceful


def test_relay_keeps_its_spool_on_a_volume(name: str) -> None:
    relay = agent_of(load(name))["modules"]["relay"]
    binds = relay["settings"]["createOptions"]["HostConfig"]["Binds"]
    spool = relay["env"]["RELAY_SPOOL_PATH"]["value"]
    assert any(spool.startswith(bind.split(":")[1]) for bind in binds)


def test_every_module_setting_in_env_example_reaches_its_module(name: str) -> None:
    """Uncommented SCORER_*/RELAY_* lines are what a deployment controls from .env."""
    modules = agent_of(load(name))["modules"]
    for module, prefix in (("scorer", "SCORER_"), ("relay", "RELAY_")):
        wanted = set(re.findall(rf"^({prefix}[A-Z0-9_]+)=", ENV_EXAMPLE, re.M))
        assert wanted and wanted <= set(modules[module]["env"]), wanted - set(
            modules[module]["env"]
        )
        for variable, entry in modules[module]["env"].items():
            if variable in wanted and name != "deployment.cpu.template.json":
                assert entry == {"value": f"${{{variable}}}"}


def test_the_platform_templates_differ_only_in_gpu_access() -> None:
    """One deployment in three flavours: everything but the GPU access must stay in step."""

    def without_gpu(template: dict) -> dict:
        template = copy.deepcopy(template)
        for key in ("Runtime", "GroupAdd", "DeviceRequests"):
            scorer_host_config(template).pop(key, None)
        agent_of(template)["modules"]["scorer"]["env"].pop("SCORER_PROVIDERS")
        return template

    reference = without_gpu(load("deployment.template.json"))
    for other in ("deployment.gpu.template.json", "deployment.cpu.template.json"):
        assert without_gpu(load(other)) == reference, other


def test_default_desired_properties_are_valid_for_the_modules(name: str) -> None:
    content = load(name)["modulesContent"]
    _, rejected = apply_desired(Policy(), content["relay"]["properties.desired"])
    assert rejected == {}
    from scorer import twin

    _, rejected = twin.apply_desired(twin.EdgeDefaults(), content["scorer"]["properties.desired"])
    assert rejected == {}


def test_every_variable_is_in_env_example(name: str) -> None:
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", (REPO / name).read_text()))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE, re.M))
    assert used and used <= documented, used - documented
