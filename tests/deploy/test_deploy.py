"""scripts/deploy against a local HTTPS stand-in for IoT Hub's REST API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.edge.harness import make_certificates
from tests.schemas import errors

EDGE_AGENT_ANSWERS = {
    "GetModuleLogs": [{"id": "scorer", "payload": "<6> 2026-11-30 scorer ready\n"}],
    "UploadSupportBundle": {"status": "NotStarted", "message": "", "correlationId": "c0ffee"},
}
KEY = base64.b64encode(b"test-shared-access-key-0123456789").decode()
DEVICE = "jetson-01"


ModelBehaviour = Callable[[str, dict[str, Any]], dict[str, Any]]


class Fleet:
    """Devices with twin tags, whose scorers answer a desired `model` as `behaviour` says;
    evaluates deployments as IoT Hub does: a target condition picks devices, the highest
    priority deployment sets a module's desired property, metric queries count module twins
    (the query shapes `scripts/deploy` sends)."""

    def __init__(self, tags: dict[str, dict[str, str]], behaviour: ModelBehaviour) -> None:
        self.tags = tags
        self.behaviour = behaviour

    @staticmethod
    def targets(condition: str, tags: dict[str, str]) -> bool:
        match = re.fullmatch(r"tags\.(\w+)='([^']*)'", condition)
        return bool(match) and tags.get(match.group(1)) == match.group(2)

    def desired_model(self, device: str, configurations: list[dict[str, Any]]) -> Any:
        setting = [
            c
            for c in configurations
            if self.targets(c["targetCondition"], self.tags[device])
            and "properties.desired.model" in c["content"]["modulesContent"].get("scorer", {})
        ]
        if not setting:
            return None
        best = max(setting, key=lambda c: c["priority"])
        return best["content"]["modulesContent"]["scorer"]["properties.desired.model"]

    def scorer_twin(self, device: str, configurations: list[dict[str, Any]]) -> dict[str, Any]:
        desired = self.desired_model(device, configurations)
        reported = self.behaviour(device, desired) if desired else {}
        return {
            "moduleId": "scorer",
            "properties": {"desired": {"model": desired}, "reported": {"model": reported}},
        }

    @staticmethod
    def matches(query: str, twin: dict[str, Any]) -> bool:
        where = query.split(" WHERE ", 1)[1]
        for condition in where.split(" AND "):
            path, _, literal = condition.partition(" = ")
            value: Any = twin
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value != literal.strip("'").replace("''", "'"):
                return False
        return True

    def evaluate(self, configuration: dict[str, Any], all_of: list[dict[str, Any]]) -> None:
        targeted = [
            d for d, t in self.tags.items() if self.targets(configuration["targetCondition"], t)
        ]
        twins = [self.scorer_twin(d, all_of) for d in self.tags]
        configuration["systemMetrics"] = {
            "results": {"targetedCount": len(targeted), "appliedCount": len(targeted)},
            "queries": {},
        }
        queries = configuration.get("metrics", {}).get("queries", {})
        configuration["metrics"] = {
            "queries": queries,
            "results": {
                name: sum(self.matches(query, twin) for twin in twins)
                for name, query in queries.items()
                if "moduleId = 'scorer'" in query
            },
        }


class HubStub:
    """Records every request; answers like IoT Hub, or with `fail_with` when set."""

    def __init__(self, folder: Path) -> None:
        ca, cert, key = make_certificates(folder, ["127.0.0.1"])
        self.folder = folder
        self.ca = ca
        self.requests: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self.agent_twin: dict[str, Any] = {}
        self.configurations: dict[str, dict[str, Any]] = {}
        self.fleet: Fleet | None = None
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                url = urllib.parse.urlsplit(self.path)
                stub.requests.append(
                    {
                        "method": self.command,
                        "path": urllib.parse.unquote(url.path),
                        "query": urllib.parse.parse_qs(url.query),
                        "authorization": self.headers.get("Authorization", ""),
                        "body": body,
                    }
                )
                status, answer = stub.answer(self.command, urllib.parse.unquote(url.path), body)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if self.fail_with:
            return self.fail_with, {"Message": f"ErrorCode:Simulated;{self.fail_with}"}
        if path.endswith("/applyConfigurationContent"):
            return 204, None  # as IoT Hub answers it
        if path == "/configurations":
            return 200, [self.evaluated(c) for c in self.configurations.values()]
        if path.startswith("/configurations/"):
            name = path.removeprefix("/configurations/")
            if method == "PUT":
                if name in self.configurations:  # deployments are immutable
                    return 409, {"Message": f"ErrorCode:ConfigurationAlreadyExists;{name}"}
                self.configurations[name] = {**body, "etag": "AAAA"}
                return 200, self.configurations[name]
            if name not in self.configurations:
                return 404, {"Message": f"ErrorCode:ConfigurationNotFound;{name}"}
            if method == "DELETE":
                del self.configurations[name]
                return 204, None
            return 200, self.evaluated(self.configurations[name])
        if path.endswith("/modules/$edgeAgent/methods"):
            return 200, {"status": 200, "payload": EDGE_AGENT_ANSWERS[body["methodName"]]}
        if path.endswith("/modules/$edgeAgent"):
            return 200, self.agent_twin
        if path.endswith("/methods"):
            return 200, {"status": 200, "payload": {"queued": 0, "method": body["methodName"]}}
        if method == "PATCH":
            return 200, {"deviceId": DEVICE, "properties": body.get("properties", {})}
        return 404, {"Message": "no such route in the stub"}

    def evaluated(self, configuration: dict[str, Any]) -> dict[str, Any]:
        """The configuration with its metrics as IoT Hub computes them now."""
        if self.fleet is not None:
            self.fleet.evaluate(configuration, list(self.configurations.values()))
        return configuration

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubStub]:
    stub = HubStub(tmp_path)
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("config")
    env = {**os.environ, "CONTAINER_REGISTRY_PASSWORD": "secret"}
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "genconfig"),
            "--env",
            str(REPO / ".env.example"),
            "--out",
            str(out),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return out / "deployment.arm64v8.json"


def deploy(hub: HubStub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "IOTHUB_CONNECTION_STRING"}
    env.update(
        DEPLOY_HISTORY_DIR=str(hub.folder / "history"),
        IOTHUB_CONNECTION_STRING=(
            f"HostName={hub.host};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        ),
        REQUESTS_CA_BUNDLE=str(hub.ca),
    )
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "deploy"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def assert_valid_sas(request: dict[str, Any], host: str) -> None:
    scheme, _, token = request["authorization"].partition(" ")
    assert scheme == "SharedAccessSignature"
    fields = {k: v[0] for k, v in urllib.parse.parse_qs(token).items()}
    assert fields["skn"] == "iothubowner"
    assert urllib.parse.unquote(fields["sr"]).lower() == host.lower()
    assert int(fields["se"]) > time.time()
    signed = (urllib.parse.quote(fields["sr"], safe="") + "\n" + fields["se"]).encode()
    expected = base64.b64encode(hmac.new(base64.b64decode(KEY), signed, hashlib.sha256).digest())
    assert fields["sig"] == expected.decode()


def test_device_deploy_posts_the_manifest(hub: HubStub, manifest: Path) -> None:
    result = deploy(hub, "device", DEVICE, "--manifest", str(manifest))
    assert result.returncode == 0, result.stderr
    (request,) = hub.requests
    assert request["method"] == "POST"
    assert request["path"] == f"/devices/{DEVICE}/applyConfigurationContent"
    assert request["query"]["api-version"]
    assert_valid_sas(request, hub.host)
    assert request["body"]["modulesContent"] == json.loads(manifest.read_text())["modulesContent"]
    assert (
        errors(
            "azure-iot-edge-deployment-2.0.json",
            {"modulesContent": request["body"]["modulesContent"]},
        )
        == []
    )


def test_fleet_deploy_creates_a_configuration_with_metrics(hub: HubStub, manifest: Path) -> None:
    result = deploy(
        hub,
        "fleet",
        "scorer-v1",
        "--target-condition",
        "tags.site='plant-1'",
        "--priority",
        "10",
        "--manifest",
        str(manifest),
    )
    assert result.returncode == 0, result.stderr
    (request,) = hub.requests
    assert (request["method"], request["path"]) == ("PUT", "/configurations/scorer-v1")
    assert_valid_sas(request, hub.host)
    body = request["body"]
    assert body["targetCondition"] == "tags.site='plant-1'" and body["priority"] == 10
    assert (
        errors(
            "azure-iot-edge-deployment-2.0.json",
            {"modulesContent": body["content"]["modulesContent"]},
        )
        == []
    )
    assert set(body["metrics"]["queries"]) == {"reportedSuccessfulCount", "reportedFailedCount"}
    assert "[[scorer-v1]]" in body["metrics"]["queries"]["reportedSuccessfulCount"]


def test_layered_deploy_owns_only_its_paths(hub: HubStub, manifest: Path) -> None:
    result = deploy(
        hub,
        "fleet",
        "scorer-layer",
        "--target-condition",
        "tags.gpu=true",
        "--priority",
        "20",
        "--layered",
        "--manifest",
        str(manifest),
    )
    assert result.returncode == 0, result.stderr
    content = hub.requests[0]["body"]["content"]["modulesContent"]
    assert set(content["$edgeAgent"]) == {
        "properties.desired.modules.scorer",
        "properties.desired.modules.relay",
    }
    assert "properties.desired.routes.scorerToRelay" in content["$edgeHub"]
    deployed = json.loads(manifest.read_text())["modulesContent"]["relay"]["properties.desired"]
    assert (
        content["relay"]["properties.desired.summaryWindowSeconds"]
        == deployed["summaryWindowSeconds"]
    )


def _agent_twin(manifest: Path, running: bool, code: int = 200) -> dict[str, Any]:
    desired = json.loads(manifest.read_text())["modulesContent"]["$edgeAgent"]["properties.desired"]
    modules = {
        name: {
            "runtimeStatus": "running" if running else "backoff",
            "settings": {"image": module["settings"]["image"]},
            "restartCount": 0 if running else 5,
            "exitCode": 0 if running else 1,
        }
        for group in ("systemModules", "modules")
        for name, module in desired[group].items()
    }
    return {
        "deviceId": DEVICE,
        "moduleId": "$edgeAgent",
        "properties": {
            "desired": {**desired, "$version": 7},
            "reported": {
                "lastDesiredVersion": 7,
                "lastDesiredStatus": {"code": code, "description": ""},
                "systemModules": {
                    k: v for k, v in modules.items() if k in ("edgeAgent", "edgeHub")
                },
                "modules": {k: v for k, v in modules.items() if k not in ("edgeAgent", "edgeHub")},
            },
        },
    }


def test_status_reports_convergence(hub: HubStub, manifest: Path) -> None:
    hub.agent_twin = _agent_twin(manifest, running=True)
    result = deploy(hub, "status", DEVICE, "--timeout", "5", "--interval", "0.1")
    assert result.returncode == 0, result.stderr
    assert "scorer: running, image as desired" in result.stdout
    assert "rollout complete" in result.stdout
    assert hub.requests[0]["path"] == f"/twins/{DEVICE}/modules/$edgeAgent"


def test_status_fails_on_a_crash_looping_module(hub: HubStub, manifest: Path) -> None:
    hub.agent_twin = _agent_twin(manifest, running=False)
    result = deploy(hub, "status", DEVICE, "--timeout", "5", "--interval", "0.1")
    assert result.returncode == 1 and "rollout failed" in result.stderr
    assert "scorer: backoff" in result.stdout and "restarts 5" in result.stdout


def test_twin_sets_desired_properties(hub: HubStub) -> None:
    result = deploy(hub, "twin", DEVICE, "relay", "minProbability=0.7", 'labels=["defect"]')
    assert result.returncode == 0, result.stderr
    (request,) = hub.requests
    assert (request["method"], request["path"]) == ("PATCH", f"/twins/{DEVICE}/modules/relay")
    assert request["body"]["properties"]["desired"] == {"minProbability": 0.7, "labels": ["defect"]}


def test_call_invokes_a_direct_method(hub: HubStub) -> None:
    result = deploy(hub, "call", DEVICE, "relay", "flush", '{"timeoutSeconds": 5}')
    assert result.returncode == 0, result.stderr
    (request,) = hub.requests
    assert (request["method"], request["path"]) == (
        "POST",
        f"/twins/{DEVICE}/modules/relay/methods",
    )
    assert request["body"]["methodName"] == "flush"
    assert request["body"]["payload"] == {"timeoutSeconds": 5}
    assert json.loads(result.stdout)["payload"]["method"] == "flush"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "refused the credentials"),
        (404, f"not found on IoT Hub: device {DEVICE}"),
        (409, "already exists"),
        (429, "throttling"),
    ],
)
def test_hub_errors_become_one_clear_line(
    hub: HubStub, manifest: Path, status: int, message: str
) -> None:
    hub.fail_with = status
    result = deploy(hub, "device", DEVICE, "--manifest", str(manifest))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_connection_string_only_from_the_environment(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "IOTHUB_CONNECTION_STRING"}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "deploy"), "status", DEVICE],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "IOTHUB_CONNECTION_STRING is not set" in result.stderr


def fleet(hub: HubStub, manifest: Path, name: str, priority: int) -> None:
    result = deploy(
        hub, "fleet", name, "--target-condition", "tags.site='plant-1'", "--priority",
        str(priority), "--manifest", str(manifest),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_list_show_and_delete_deployments(hub: HubStub, manifest: Path) -> None:
    fleet(hub, manifest, "scorer-v1", 10)
    fleet(hub, manifest, "scorer-v2", 20)
    listed = deploy(hub, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert rows == ["scorer-v2", "scorer-v1"]  # highest priority first
    shown = deploy(hub, "show", "scorer-v1")
    assert shown.returncode == 0 and json.loads(shown.stdout)["priority"] == 10
    deleted = deploy(hub, "delete", "scorer-v2")
    assert deleted.returncode == 0, deleted.stderr
    assert hub.requests[-1]["method"] == "DELETE"
    assert list(hub.configurations) == ["scorer-v1"]
    gone = deploy(hub, "show", "scorer-v2")
    assert gone.returncode == 1 and "not found on IoT Hub: deployment scorer-v2" in gone.stderr


def test_rollback_device_reapplies_the_deployment_before_the_last(
    hub: HubStub, manifest: Path, tmp_path: Path
) -> None:
    first = json.loads(manifest.read_text())
    second = json.loads(manifest.read_text())
    second["modulesContent"]["relay"]["properties.desired"]["minProbability"] = 0.9
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(second))
    assert deploy(hub, "rollback", "device", DEVICE).returncode == 1  # nothing kept yet
    for path in (manifest, newer):
        assert deploy(hub, "device", DEVICE, "--manifest", str(path)).returncode == 0
    result = deploy(hub, "rollback", "device", DEVICE)
    assert result.returncode == 0, result.stderr
    assert hub.requests[-1]["path"] == f"/devices/{DEVICE}/applyConfigurationContent"
    assert hub.requests[-1]["body"]["modulesContent"] == first["modulesContent"]


def test_rollback_fleet_puts_the_older_content_above_the_newer(
    hub: HubStub, manifest: Path
) -> None:
    fleet(hub, manifest, "scorer-v1", 10)
    fleet(hub, manifest, "scorer-v2", 20)
    result = deploy(hub, "rollback", "fleet", "scorer-v2", "--to", "scorer-v1")
    assert result.returncode == 0, result.stderr
    (rollback_id,) = [c for c in hub.configurations if c.startswith("scorer-v1-rollback-")]
    created = hub.configurations[rollback_id]
    assert created["priority"] == 21
    assert created["targetCondition"] == "tags.site='plant-1'"
    assert created["content"] == hub.configurations["scorer-v1"]["content"]
    assert f"[[{rollback_id}]]" in created["metrics"]["queries"]["reportedSuccessfulCount"]


def test_logs_come_from_edge_agent_get_module_logs(hub: HubStub) -> None:
    result = deploy(hub, "logs", DEVICE, "scorer", "--tail", "50", "--since", "1h")
    assert result.returncode == 0, result.stderr
    (request,) = hub.requests
    assert request["path"] == f"/twins/{DEVICE}/modules/$edgeAgent/methods"
    assert request["body"]["methodName"] == "GetModuleLogs"
    assert request["body"]["payload"] == {
        "schemaVersion": "1.0",
        "items": [{"id": "scorer", "filter": {"tail": 50, "since": "1h"}}],
        "encoding": "none",
        "contentType": "text",
    }
    assert result.stdout == "<6> 2026-11-30 scorer ready\n"


def test_support_bundle_upload(hub: HubStub) -> None:
    sas = "https://store.blob.core.windows.net/bundles?sv=2024&sig=x"
    result = deploy(hub, "logs", DEVICE, "--bundle", sas)
    assert result.returncode == 0, result.stderr
    body = hub.requests[0]["body"]
    assert body["methodName"] == "UploadSupportBundle"
    assert body["payload"] == {"schemaVersion": "1.0", "sasUrl": sas, "since": "1d"}
    assert "c0ffee" in result.stdout


def test_metrics_layer_deploys_as_it_is(hub: HubStub, tmp_path: Path) -> None:
    out = tmp_path / "config"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "genconfig"), "--env", str(REPO / ".env.example"),
         "--template", str(REPO / "deployment.metrics.template.json"), "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    result = deploy(
        hub, "fleet", "metrics", "--target-condition", "tags.metrics=true", "--priority", "30",
        "--layered", "--manifest", str(out / "deployment.metrics.arm64v8.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    content = hub.configurations["metrics"]["content"]["modulesContent"]
    assert list(content["$edgeAgent"]) == ["properties.desired.modules.metricsCollector"]


RINGS = {"c1": "canary", "p1": "pilot", "p2": "pilot", "a1": "all", "a2": "all", "a3": "all"}


def _ready(device: str, desired: dict[str, Any]) -> dict[str, Any]:
    return {"version": desired["version"], "state": "ready", "target": None}


def _rollout(hub: HubStub, version: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return deploy(
        hub,
        "rollout",
        "start",
        "--version",
        version,
        "--url",
        f"https://models.example/{version}.zip",
        "--sha256",
        "AB" * 32,
        "--poll",
        "0.01",
        "--ring-timeout",
        "5",
        *extra,
    )


def test_a_model_rolls_out_ring_by_ring_with_rising_priority(hub: HubStub) -> None:
    hub.fleet = Fleet({d: {"ring": r} for d, r in RINGS.items()}, _ready)
    result = _rollout(hub, "2026.12.1")
    assert result.returncode == 0, result.stderr
    created = [r["body"] for r in hub.requests if r["method"] == "PUT"]
    assert [c["id"] for c in created] == [
        "model-2026-12-1-canary",
        "model-2026-12-1-pilot",
        "model-2026-12-1-all",
    ]
    assert [c["priority"] for c in created] == [100, 101, 102]
    assert [c["targetCondition"] for c in created] == [
        "tags.ring='canary'",
        "tags.ring='pilot'",
        "tags.ring='all'",
    ]
    model = created[0]["content"]["modulesContent"]["scorer"]["properties.desired.model"]
    assert model == {
        "version": "2026.12.1",
        "url": "https://models.example/2026.12.1.zip",
        "sha256": "ab" * 32,
        "rollout": "model-2026-12-1-canary",
    }
    assert "1/1 ready" in result.stdout and "2/2 ready" in result.stdout
    status = deploy(hub, "rollout", "status", "--version", "2026.12.1")
    assert status.returncode == 0 and status.stdout.count("ready") == 3
    assert "3/3 ready, 0 failed" in status.stdout  # the ring `all`: the devices tagged so


def test_a_failing_canary_stops_the_rollout_and_is_rolled_back(hub: HubStub) -> None:
    def canary_fails_v2(device: str, desired: dict[str, Any]) -> dict[str, Any]:
        if desired["version"] == "v2" and RINGS[device] == "canary":
            return {"version": "v1", "state": "failed", "target": "v2", "lastError": "warm-up"}
        return _ready(device, desired)

    hub.fleet = Fleet({d: {"ring": r} for d, r in RINGS.items()}, canary_fails_v2)
    assert _rollout(hub, "v1").returncode == 0
    failed = _rollout(hub, "v2")
    assert failed.returncode == 1
    assert "ring canary of v2 failed (1 device(s) failed to install v2)" in failed.stderr
    assert "rolled back to v1" in failed.stderr
    assert "model-v2-canary" not in hub.configurations  # deleted
    assert "model-v2-pilot" not in hub.configurations  # never created
    back = hub.configurations["model-v1-canary-rollback"]
    assert back["priority"] > max(
        c["priority"] for c in hub.configurations.values() if c is not back
    )
    assert back["labels"]["rollbackOf"] == "model-v2-canary"
    assert hub.fleet.desired_model("c1", list(hub.configurations.values()))["version"] == "v1"


def test_a_ring_that_does_not_get_ready_in_time_fails(hub: HubStub) -> None:
    def stuck(device: str, desired: dict[str, Any]) -> dict[str, Any]:
        return {"version": "old", "state": "downloading", "target": desired["version"]}

    hub.fleet = Fleet({d: {"ring": r} for d, r in RINGS.items()}, stuck)
    result = _rollout(hub, "v9", "--ring-timeout", "0.2")
    assert result.returncode == 1
    assert "not 100% ready within 0.2 s" in result.stderr
    assert "no earlier rollout to return to" in result.stderr
    assert hub.configurations == {}
