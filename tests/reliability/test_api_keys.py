"""API keys on both front ends: refused without one, accepted with any valid one, never logged."""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scorer.auth import ApiKeys
from scorer.client import GrpcClient, HttpClient, ScoringFailed
from scorer.core import Scorer, ScorerConfig
from scorer.generated import scoring_pb2
from scorer.http import OPEN_ENDPOINTS, create_app
from scorer.model import inspect_export
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


# The first path segment of every open route: a project name that must open nothing.
OPEN_SEGMENTS = ("ui", "docs", "healthz", "readyz", "openapi.json", "")


def protected_requests(demo_dir: Path) -> list[tuple[str, str]]:
    """(method, path) of every route that needs a key, read off the app's URL map, with each
    path parameter set to each open route's first segment."""
    app = create_app(
        Scorer(inspect_export(demo_dir / "models" / "colors"), ScorerConfig("c", "1")),
        keys=ApiKeys([OLD]),
    )
    wanted = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in OPEN_ENDPOINTS:
            continue
        for segment in OPEN_SEGMENTS if rule.arguments else ("",):
            path = re.sub(r"<(?:[^:>]+:)?[^>]+>", segment or "x", rule.rule)
            wanted += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return wanted


def spellings(path: str) -> list[str]:
    """The path as sent, its first letter percent-encoded, and in absolute form."""
    encoded = f"/%{ord(path[1]):02X}{path[2:]}" if path[1:2].isalnum() else path
    return [path, encoded, f"http://scorer{path}"]


def test_every_route_but_the_open_ones_needs_a_key_whatever_the_spelling(
    server: ScorerProcess, demo_dir: Path, image: bytes
) -> None:
    """Generated from the URL map, so a route added later is covered: no project name equal
    to an open route's first segment (`/ui/image` opened every scoring route), no
    percent-encoding and no absolute-form target gets past the key."""
    requests_made = 0
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for method, path in protected_requests(demo_dir):
        for target in spellings(path):
            connection.request(method, target, image if method == "POST" else None,
                               {"Content-Type": "image/jpeg"})  # fmt: skip
            response = connection.getresponse()
            body = response.read()
            assert response.status == 401, f"{method} {target}: {response.status} {body[:80]!r}"
            requests_made += 1
    assert requests_made > 100
    for path in ("/", "/docs", "/openapi.json", "/healthz", "/readyz", "/ui/app.js"):
        assert requests.get(server.url + path).status_code == 200, path


def test_every_grpc_method_but_health_needs_a_key_given_once(
    server: ScorerProcess, image: bytes
) -> None:
    """Generated from the service's descriptor; a key sent twice is refused, as on HTTP,
    never one of the two picked."""
    service = scoring_pb2.DESCRIPTOR.services_by_name["Scoring"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        for method in service.methods:
            request = getattr(scoring_pb2, method.input_type.name)()
            path = f"/{service.full_name}/{method.name}"
            response_type = getattr(scoring_pb2, method.output_type.name)
            for metadata in ((), (("authorization", f"Bearer {OLD}"),) * 2):
                if method.client_streaming:
                    call = channel.stream_stream(
                        path, scoring_pb2.ScoreRequest.SerializeToString, response_type.FromString
                    )
                    with pytest.raises(grpc.RpcError) as refused:
                        list(call(iter([request]), metadata=metadata, timeout=10))
                else:
                    call = channel.unary_unary(
                        path, type(request).SerializeToString, response_type.FromString
                    )
                    with pytest.raises(grpc.RpcError) as refused:
                        call(request, metadata=metadata, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, path


def test_a_key_header_given_twice_is_refused(server: ScorerProcess, image: bytes) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("POST", "/score")
    for value in (f"Bearer {OLD}", f"Bearer {NEW}"):
        connection.putheader("Authorization", value)
    connection.putheader("Content-Type", "image/jpeg")
    connection.putheader("Content-Length", str(len(image)))
    connection.endheaders(image)
    assert connection.getresponse().status == 401
