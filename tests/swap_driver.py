"""Model swaps under load against a running scorer: clients score without pause while the
admin route swaps between two exports. Shared by the test and the benchmark."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from tests.model_server import ModelServer, export_zip
from tests.scorer_process import ScorerProcess, memory_mb, worker_pid

KEY = "swap-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclasses.dataclass
class SwapReport:
    statuses: Counter[int]
    wrong_version: list[str]  # answers whose predictions do not fit the version they name
    answers: int
    rss_mb: list[float]  # the worker's RSS after each swap
    swap_s: list[float]  # from the request to `ready` on the new version


def swap_under_load(
    server: ScorerProcess,
    models: ModelServer,
    exports: tuple[Path, Path],
    image: bytes,
    swaps: int,
    clients: int = 8,
) -> SwapReport:
    """Swap `swaps` times, alternating the two exports (a classification and a detection
    one), while `clients` threads score `image`; every answer must be 200 and its
    predictions of the kind of the version it names."""
    sources = [models.add(f"/{i}.zip", export_zip(folder)) for i, folder in enumerate(exports)]
    kind_of: dict[str, str] = {}
    report = SwapReport(Counter(), [], 0, [], [])
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.post(
                    server.url + "/score",
                    data=image,
                    headers={"Content-Type": "image/jpeg", **AUTH},
                    timeout=30,
                )
                with lock:
                    report.statuses[answer.status_code] += 1
                    report.answers += 1
                    if answer.status_code != 200:
                        continue
                    body = answer.json()
                    version = body["model"]["version"]
                    boxed = all("boundingBox" in p for p in body["predictions"])
                    expected = kind_of.get(version)
                    if expected is not None and expected != (
                        "detection" if boxed and body["predictions"] else "classification"
                    ):
                        report.wrong_version.append(version)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    pid = worker_pid(server.proc.pid)
    try:
        for number in range(swaps):
            url, digest = sources[number % 2]
            version = f"v{number + 1}"
            with lock:
                kind_of[version] = "classification" if number % 2 == 0 else "detection"
            started = time.monotonic()
            reply = requests.post(
                server.url + "/admin/model",
                json={"version": version, "url": url, "sha256": digest},
                headers=AUTH,
                timeout=30,
            )
            assert reply.status_code == 202, reply.text
            while True:
                status = requests.get(server.url + "/admin/model", headers=AUTH, timeout=30).json()
                if status["state"] == "failed":
                    raise AssertionError(f"swap to {version} failed: {status['lastError']}")
                if status["state"] == "ready" and status["version"] == version:
                    break
                time.sleep(0.02)
            report.swap_s.append(time.monotonic() - started)
            report.rss_mb.append(memory_mb(pid, "VmRSS"))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    return report
