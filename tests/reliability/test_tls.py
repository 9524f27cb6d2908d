"""TLS on both ports from PEM files, and client certificates when a client CA is given."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from scorer.client import GrpcClient, HttpClient

from tests.edge.harness import make_certificates
from tests.scorer_process import ScorerProcess, scorer_env

pytestmark = pytest.mark.reliability


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    server = tmp_path / "server"
    server.mkdir()
    ca, cert, key = make_certificates(server, ["127.0.0.1"])
    clients = tmp_path / "clients"
    clients.mkdir()  # another CA, and a certificate it signed, for a client
    client_ca, client_cert, client_key = make_certificates(clients, ["127.0.0.2"])
    return {
        "ca": ca,
        "cert": cert,
        "key": key,
        "client_ca": client_ca,
        "client_cert": client_cert,
        "client_key": client_key,
    }


def start(demo_dir: Path, tmp_path: Path, certs: dict[str, Path], **extra: str) -> ScorerProcess:
    env = scorer_env(
        demo_dir / "models" / "colors",
        tmp_path,
        PROVIDERS="cpu",
        TLS_CERT_FILE=str(certs["cert"]),
        TLS_KEY_FILE=str(certs["key"]),
        **extra,
    )
    client_cert = (certs["client_cert"], certs["client_key"]) if extra else None
    process = ScorerProcess(env, ca=certs["ca"], client_cert=client_cert)
    process.wait_ready()
    return process


@pytest.fixture
def tls_server(
    demo_dir: Path, tmp_path: Path, certificates: dict[str, Path]
) -> Iterator[ScorerProcess]:
    process = start(demo_dir, tmp_path, certificates)
    yield process
    process.stop()


def test_https_and_grpc_over_tls_serve(
    tls_server: ScorerProcess, certificates: dict[str, Path], demo_dir: Path
) -> None:
    image = (demo_dir / "images" / "red.jpg").read_bytes()
    http_client = HttpClient(tls_server.url, ca_file=str(certificates["ca"]))
    assert http_client.score(image)["predictions"][0]["tagName"] == "red"
    http_client.close()
    session = requests.Session()  # keep-alive over TLS: several requests, one connection
    for _ in range(3):
        response = session.post(
            tls_server.url + "/score",
            data=image,
            headers={"Content-Type": "image/jpeg"},
            verify=str(certificates["ca"]),
        )
        assert response.status_code == 200
    grpc_client = GrpcClient(tls_server.grpc_target, ca_file=str(certificates["ca"]))
    assert grpc_client.score(image)["predictions"][0]["tagName"] == "red"
    grpc_client.close()


def test_plain_http_on_a_tls_port_gets_no_answer(tls_server: ScorerProcess) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_server.port}/healthz", timeout=5)
    assert requests.get(tls_server.url + "/healthz", **tls_server.tls_options).status_code == 200


def test_client_certificates_are_required_when_a_client_ca_is_set(
    demo_dir: Path, tmp_path: Path, certificates: dict[str, Path]
) -> None:
    process = start(
        demo_dir, tmp_path, certificates, TLS_CLIENT_CA_FILE=str(certificates["client_ca"])
    )
    try:
        with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
            requests.get(process.url + "/healthz", verify=str(certificates["ca"]), timeout=5)
        with_cert = requests.get(process.url + "/healthz", timeout=5, **process.tls_options)
        assert with_cert.status_code == 200
        anonymous = grpc.ssl_channel_credentials(certificates["ca"].read_bytes())
        with grpc.secure_channel(process.grpc_target, anonymous) as channel:
            get_model = channel.unary_unary("/scoring.v1.Scoring/GetModel")
            with pytest.raises(grpc.RpcError) as refused:
                get_model(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        client = (certificates["client_key"].read_bytes(), certificates["client_cert"].read_bytes())
        mutual = grpc.ssl_channel_credentials(certificates["ca"].read_bytes(), *client)
        with grpc.secure_channel(process.grpc_target, mutual) as channel:
            get_model = channel.unary_unary("/scoring.v1.Scoring/GetModel")
            assert get_model(b"", timeout=5)
    finally:
        process.stop()


def test_a_client_that_never_finishes_the_handshake_holds_nothing(
    tls_server: ScorerProcess,
) -> None:
    import socket

    stalled = [socket.create_connection(("127.0.0.1", tls_server.port)) for _ in range(50)]
    try:
        for sock in stalled:
            sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        response = requests.get(tls_server.url + "/healthz", timeout=5, **tls_server.tls_options)
        assert response.status_code == 200
    finally:
        for sock in stalled:
            sock.close()
