"""Brokers, workload API, hub side and module processes for the edge tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.edge.harness import (
    MOSQUITTO,
    Broker,
    HubSide,
    WorkloadApi,
    make_certificates,
    module_environment,
    parse_routes,
    wait_for,
)

TEMPLATE = REPO / "deployment.template.json"
ADDRESSES = {"scorer": "127.0.0.2", "relay": "127.0.0.3"}


class ModuleProcess:
    """A module started the way its image starts it (`python -m <module>`)."""

    def __init__(self, module: str, env: dict[str, str]) -> None:
        self.module = module
        self.env = env
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            cwd=REPO,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip())

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


@pytest.fixture(scope="session")
def mosquitto_available() -> None:
    if not os.path.exists(MOSQUITTO):
        pytest.fail("mosquitto is not installed: scripts/setup --dev installs it")


class EdgeDevice:
    """Everything IoT Edge would run on one device, offline."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        ca, cert, key = make_certificates(folder, list(ADDRESSES.values()))
        self.ca = ca
        self.brokers = {
            m: Broker(address, folder / f"broker-{m}", (ca, cert, key))
            for m, address in ADDRESSES.items()
        }
        for broker in self.brokers.values():
            broker.start()
        self.workload = WorkloadApi(folder / "workload.sock", ca.read_text())
        template = json.loads(TEMPLATE.read_text())
        desired = {
            m: template["modulesContent"][m]["properties.desired"] for m in ("scorer", "relay")
        }
        self.hub = HubSide(self.brokers, ca, parse_routes(template), desired)
        self.modules: dict[str, ModuleProcess] = {}

    def module(self, name: str, **settings: str) -> ModuleProcess:
        env = module_environment(name, self.brokers[name], self.workload)
        env["PYTHONPATH"] = os.pathsep.join(str(REPO / "modules" / m) for m in ("scorer", "relay"))
        env.update(settings)
        process = ModuleProcess(name, env)
        process.start()
        self.modules[name] = process
        return process

    def wait_connected(self, name: str, timeout: float = 30) -> None:
        """A module is connected once it reported properties (so it subscribed first)."""
        wait_for(
            lambda: self.hub.reported[name],
            timeout,
            f"{name} to connect and report\n{self.modules[name].log}",
        )

    def close(self) -> None:
        for process in self.modules.values():
            process.stop()
        self.hub.close()
        for broker in self.brokers.values():
            broker.stop()
        self.workload.close()


@pytest.fixture
def device(tmp_path: Path, mosquitto_available: None) -> Iterator[EdgeDevice]:
    edge = EdgeDevice(tmp_path / "device")
    yield edge
    edge.close()
