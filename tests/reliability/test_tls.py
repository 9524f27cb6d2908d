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
        checked = process.health_check()  # the image's, which has no client certificate
        assert checked.returncode == 0, checked.stderr
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


def served_serial(url: str, ca: str) -> int:
    """The serial number of the certificate a new TLS connection gets."""
    import socket
    import ssl

    from cryptography import x509

    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as secure,
    ):
        der = secure.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_an_iot_edge_certificate_serves_both_ports_and_is_renewed_in_time(
    demo_dir: Path, tmp_path: Path
) -> None:
    import datetime
    import time

    from tests.edge.harness import EdgeCa, WorkloadApi

    edge_ca = EdgeCa(lifetime=datetime.timedelta(seconds=6))  # renewed after about 5 s
    workload = WorkloadApi(tmp_path / "workload.sock", "", edge_ca)
    ca = tmp_path / "edge-ca.pem"
    ca.write_text(edge_ca.pem)
    env = scorer_env(
        demo_dir / "models" / "colors", tmp_path, PROVIDERS="cpu", TLS="edge", EDGE="off"
    )
    env.update(
        IOTEDGE_WORKLOADURI=workload.uri,
        IOTEDGE_DEVICEID="jetson-01",
        IOTEDGE_MODULEID="scorer",
        IOTEDGE_GATEWAYHOSTNAME="127.0.0.1",
        IOTEDGE_IOTHUBHOSTNAME="hub.azure-devices.net",
        IOTEDGE_MODULEGENERATIONID="gen-1",
        IOTEDGE_APIVERSION="2019-01-30",
    )
    process = ScorerProcess(env, ca=ca)
    try:
        process.wait_ready()
        first = served_serial(process.url, str(ca))
        client = GrpcClient(process.grpc_target, ca_file=str(ca))
        image = (demo_dir / "images" / "blue.jpg").read_bytes()
        assert client.score(image)["predictions"][0]["tagName"] == "blue"
        deadline = time.monotonic() + 30
        while served_serial(process.url, str(ca)) == first:
            assert time.monotonic() < deadline, "the certificate was not renewed"
            time.sleep(0.5)
        assert edge_ca.issued >= 2
        assert "TLS certificate renewed from IoT Edge" in process.log
        renewed = GrpcClient(process.grpc_target, ca_file=str(ca))  # a new gRPC connection
        assert renewed.score(image)["predictions"][0]["tagName"] == "blue"
        client.close()
        renewed.close()
    finally:
        process.stop()
        workload.close()
