"""IoT Edge played offline with real parts (see ../shared/EDGE_TESTING.md).

- `Broker`: a real mosquitto with TLS on its own loopback address, port 8883, persistent, one
  per module client (twin and method topics carry no module name).
- `WorkloadApi`: IoT Edge's workload API on a unix socket (trust bundle, HMAC signing).
- `HubSide`: the hub and edgeHub's routing, as MQTT clients on every broker: answers twin
  GETs, records reported properties, pushes desired patches, invokes direct methods, and
  forwards module outputs along the `routes` of deployment.template.json.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEVICE = "edge-device-1"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05):
    """Poll until `condition()` is truthy; fail the test naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def make_certificates(folder: Path, addresses: list[str]) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for the broker addresses: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return paths


class Broker:
    """mosquitto with TLS on `address`:8883, persisting sessions across restarts."""

    def __init__(self, address: str, folder: Path, certificates: tuple[Path, Path, Path]):
        self.address = address
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        ca, cert, key = certificates
        lines = [
            f"listener 8883 {address}",
            f"cafile {ca}",
            f"certfile {cert}",
            f"keyfile {key}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {folder / 'data'}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            f"log_dest file {folder / 'mosquitto.log'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops privileges and cannot read the keys
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)])
        wait_for(self._accepting, 10, f"mosquitto on {self.address}:8883")

    def _accepting(self) -> bool:
        try:
            with socket.create_connection((self.address, 8883), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)

    def restart(self, down_for: float = 0.5) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def pause(self) -> None:
        """A hung edgeHub: the process stops answering, its TCP connections stay open."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


class _UnixHttpServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class EdgeCa:
    """The device's edge CA: issues module server certificates of a chosen lifetime."""

    def __init__(self, lifetime: datetime.timedelta = datetime.timedelta(days=90)) -> None:
        self.lifetime = lifetime
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge CA (test)")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.issued = 0

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def server_certificate(self, common_name: str) -> dict[str, Any]:
        """What the workload API answers: key, certificate and expiration."""
        now = datetime.datetime.now(datetime.timezone.utc)
        expires = now + self.lifetime
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(common_name)]
        with contextlib.suppress(ValueError):
            names.append(x509.IPAddress(ipaddress.ip_address(common_name)))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(expires)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.issued += 1
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "privateKey": {"type": "key", "bytes": key_pem},
            "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode() + self.pem,
            "expiration": expires.isoformat(),
        }


class WorkloadApi:
    """IoT Edge's workload API: `GET /trust-bundle`, `POST /modules/{m}/genid/{g}/sign` and
    `.../certificate/server` (module server certificates from `edge_ca`)."""

    def __init__(self, socket_path: Path, ca_pem: str, edge_ca: EdgeCa | None = None) -> None:
        self.socket_path = socket_path
        self.keys: dict[str, bytes] = {}
        self.edge_ca = edge_ca or EdgeCa()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if urllib.parse.urlsplit(self.path).path == "/trust-bundle":
                    self._reply(200, {"certificate": ca_pem})
                else:
                    self._reply(404, {"message": "not found"})

            def do_POST(self) -> None:
                match = re.match(r"/modules/([^/]+)/genid/[^/]+/sign", self.path)
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                if re.match(r"/modules/[^/]+/genid/[^/]+/certificate/server\?", self.path):
                    self._reply(201, api.edge_ca.server_certificate(request["commonName"]))
                    return
                if not match:
                    self._reply(404, {"message": "not found"})
                    return
                key = api.keys.setdefault(urllib.parse.unquote(match.group(1)), os.urandom(32))
                digest = hmac.new(key, base64.b64decode(request["data"]), hashlib.sha256)
                self._reply(200, {"digest": base64.b64encode(digest.digest()).decode()})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _UnixHttpServer(str(socket_path), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"unix://{self.socket_path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def module_environment(module: str, broker: Broker, workload: WorkloadApi) -> dict[str, str]:
    """The IOTEDGE_* variables IoT Edge gives a module, nothing inherited that could leak."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IOTEDGE_", "SCORER_", "RELAY_")) and k != "EdgeHubConnectionString"
    }
    env.update(
        IOTEDGE_WORKLOADURI=workload.uri,
        IOTEDGE_DEVICEID=DEVICE,
        IOTEDGE_MODULEID=module,
        IOTEDGE_GATEWAYHOSTNAME=broker.address,
        IOTEDGE_IOTHUBHOSTNAME="test-hub.azure-devices.net",
        IOTEDGE_MODULEGENERATIONID=f"gen-{module}",
        IOTEDGE_APIVERSION="2019-01-30",
    )
    return env


def _properties(topic_tail: str) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(topic_tail, keep_blank_values=True).items()}


def parse_routes(template: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(module, output, destination) per route; destination is `$upstream` or
    `module/input`. Route values are strings or {"route": ...} objects."""
    routes = template["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    parsed = []
    for value in routes.values():
        text = value["route"] if isinstance(value, dict) else value
        match = re.fullmatch(
            r"\s*FROM\s+/messages/modules/(\w+)/outputs/(\w+)\s+INTO\s+"
            r'(\$upstream|BrokeredEndpoint\("/modules/(\w+)/inputs/(\w+)"\))\s*',
            text,
        )
        if not match:
            raise AssertionError(f"route the test router cannot play: {text}")
        destination = (
            "$upstream" if match.group(3) == "$upstream" else (f"{match.group(4)}/{match.group(5)}")
        )
        parsed.append((match.group(1), match.group(2), destination))
    return parsed


class HubSide:
    """IoT Hub and edgeHub's router, as one MQTT client per module broker."""

    def __init__(
        self,
        brokers: dict[str, Broker],
        ca: Path,
        routes: list[tuple[str, str, str]],
        desired: dict[str, dict[str, Any]],
    ) -> None:
        self.brokers = brokers
        self.routes = routes
        self.lock = threading.Lock()
        self.desired = {m: {**d, "$version": 1} for m, d in desired.items()}
        self.reported: dict[str, dict[str, Any]] = {m: {} for m in brokers}
        self.upstream: list[dict[str, Any]] = []
        self.method_replies: dict[str, tuple[int, Any]] = {}
        self.clients: dict[str, mqtt.Client] = {}
        for module, broker in brokers.items():
            client = mqtt.Client(client_id=f"hub-side-{module}", clean_session=False)
            client.tls_set(ca_certs=str(ca))
            client.on_connect = self._subscriber(module)
            client.on_message = self._handler(module)
            client.connect(broker.address, 8883)
            client.loop_start()
            self.clients[module] = client
        for module in brokers:
            wait_for(lambda m=module: self.clients[m].is_connected(), 10, f"hub side on {module}")

    def _subscriber(self, module: str) -> Callable[..., None]:
        def on_connect(client: mqtt.Client, *_: Any) -> None:
            client.subscribe(
                [
                    (f"devices/{DEVICE}/modules/{module}/messages/events/#", 1),
                    ("$iothub/twin/GET/#", 1),
                    ("$iothub/twin/PATCH/properties/reported/#", 1),
                    ("$iothub/methods/res/#", 1),
                ]
            )

        return on_connect

    def _handler(self, module: str) -> Callable[..., None]:
        def on_message(client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
            topic = message.topic
            if topic.startswith("$iothub/twin/GET/"):
                rid = _properties(topic.split("?", 1)[1])["$rid"]
                with self.lock:
                    twin = {
                        "desired": self.desired.get(module, {"$version": 1}),
                        "reported": {**self.reported[module], "$version": 1},
                    }
                client.publish(f"$iothub/twin/res/200/?$rid={rid}", json.dumps(twin), qos=1)
            elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
                rid = _properties(topic.split("?", 1)[1])["$rid"]
                with self.lock:
                    _merge(self.reported[module], json.loads(message.payload))
                client.publish(f"$iothub/twin/res/204/?$rid={rid}&$version=2", b"", qos=1)
            elif topic.startswith("$iothub/methods/res/"):
                status = int(topic.split("/")[3])
                rid = _properties(topic.split("?", 1)[1])["$rid"]
                with self.lock:
                    self.method_replies[rid] = (status, json.loads(message.payload or b"null"))
            elif "/messages/events/" in topic:
                self._route(module, topic.split("/messages/events/", 1)[1], message.payload)

        return on_message

    def _route(self, module: str, tail: str, payload: bytes) -> None:
        properties = _properties(tail)
        output = properties.get("$.on", "")
        for source, source_output, destination in self.routes:
            if (source, source_output) != (module, output):
                continue
            if destination == "$upstream":
                with self.lock:
                    self.upstream.append({"payload": payload, "properties": properties})
            else:
                target, input_name = destination.split("/")
                forwarded = {k: v for k, v in properties.items() if k != "$.on"}
                query = urllib.parse.urlencode(forwarded)
                self.clients[target].publish(
                    f"devices/{DEVICE}/modules/{target}/inputs/{input_name}/{query}",
                    payload,
                    qos=1,
                )

    def inject(self, module: str, input_name: str, payload: bytes, message_id: str) -> None:
        """Deliver a message to a module's input as edgeHub would: retried until the broker
        has it, across broker restarts (so it may arrive twice, as from edgeHub)."""
        query = urllib.parse.urlencode(
            {"$.mid": message_id, "$.ct": "application/json", "$.ce": "utf-8"}
        )
        topic = f"devices/{DEVICE}/modules/{module}/inputs/{input_name}/{query}"
        client = self.clients[module]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if client.is_connected():
                info = client.publish(topic, payload, qos=1)
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    with contextlib.suppress(RuntimeError, ValueError):  # lost connection
                        info.wait_for_publish(5)
                    if info.is_published():
                        return
            time.sleep(0.05)
        raise AssertionError(f"could not deliver {message_id} to {module}")

    def set_desired(self, module: str, patch: dict[str, Any]) -> None:
        """Push a desired-properties patch, as the hub does when ops change the twin."""
        with self.lock:
            version = self.desired[module]["$version"] + 1
            self.desired[module].update(patch)
            self.desired[module]["$version"] = version
        self.clients[module].publish(
            f"$iothub/twin/PATCH/properties/desired/?$version={version}",
            json.dumps({**patch, "$version": version}),
            qos=1,
        )

    def call(self, module: str, name: str, payload: Any, timeout: float = 30) -> tuple[int, Any]:
        """Invoke a direct method and wait for its answer."""
        rid = uuid.uuid4().hex[:8]
        self.clients[module].publish(
            f"$iothub/methods/POST/{name}/?$rid={rid}", json.dumps(payload), qos=1
        )
        return wait_for(lambda: self.method_replies.get(rid), timeout, f"method {name}")

    def upstream_of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.upstream if m["properties"].get("type") == kind]

    def close(self) -> None:
        for client in self.clients.values():
            client.loop_stop()
            client.disconnect()


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch, as IoT Hub applies reported properties (null deletes)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
