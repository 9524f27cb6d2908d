"""API keys on both front ends: refused without one, accepted with any valid one, never logged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scorer.client import GrpcClient, HttpClient, ScoringFailed
from scorer.settings import Settings

from tests.scorer_process import ScorerProcess

pytestmark = pytest.mark.reliability

OLD, NEW = "old-key-0123456789abcdef", "new-key-fedcba9876543210"


@pytest.fixture
def server(start_scorer: Callable[..., ScorerProcess], demo_dir: Path) -> ScorerProcess:
    return start_scorer(demo_dir / "models" / "colors", PROVIDERS="cpu", API_KEYS=f"{OLD},{NEW}")


@pytest.fixture
def image(demo_dir: Path) -> bytes:
    return (demo_dir / "images" / "red.jpg").read_bytes()


def score(server: ScorerProcess, image: bytes, **headers: str) -> requests.Response:
    return requests.post(
        server.url + "/score", data=image, headers={"Content-Type": "image/jpeg", **headers}
    )


def test_http_without_a_valid_key_is_401_with_a_challenge(
    server: ScorerProcess, image: bytes
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key-000000000000"}, {"Prediction-Key": ""}):
        response = score(server, image, **headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "UNAUTHENTICATED"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(server.url + "/model").status_code == 401
    assert requests.get(server.url + "/metrics").status_code == 401


def test_both_rotation_keys_and_both_headers_are_accepted(
    server: ScorerProcess, image: bytes
) -> None:
    assert score(server, image, Authorization=f"Bearer {OLD}").status_code == 200
    assert score(server, image, **{"Prediction-Key": NEW}).status_code == 200
    client = HttpClient(server.url, api_key=NEW)
    assert client.score(image)["predictions"][0]["tagName"] == "red"
    client.close()


def test_probes_stay_open(server: ScorerProcess) -> None:
    assert requests.get(server.url + "/healthz").status_code == 200
    assert requests.get(server.url + "/readyz").status_code == 200


def test_grpc_needs_the_key_in_metadata_but_health_does_not(
    server: ScorerProcess, image: bytes
) -> None:
    anonymous = GrpcClient(server.grpc_target)
    with pytest.raises(ScoringFailed) as refused:
        anonymous.score(image)
    assert refused.value.code == "UNAUTHENTICATED"
    anonymous.close()
    keyed = GrpcClient(server.grpc_target, api_key=OLD)
    assert keyed.score(image)["predictions"][0]["tagName"] == "red"
    assert [r["predictions"][0]["tagName"] for r in keyed.stream([keyed.request(image)])] == ["red"]
    keyed.close()
    with grpc.insecure_channel(server.grpc_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(), timeout=5).status == 1


def test_keys_are_never_logged_or_shown(server: ScorerProcess, image: bytes) -> None:
    score(server, image, Authorization="Bearer wrong-key-000000000000")
    assert OLD not in server.log and NEW not in server.log and "wrong-key" not in server.log
    settings = Settings.from_env({"SCORER_API_KEYS": f"{OLD},{NEW}"})
    assert OLD not in repr(settings)
    with pytest.raises(ValueError, match="<hidden>"):
        Settings.from_env({"SCORER_API_KEYS": "short"})
