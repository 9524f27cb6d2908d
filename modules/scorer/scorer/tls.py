"""TLS for both front ends: from PEM files, or from IoT Edge's workload API, renewed in time.

With `SCORER_TLS=edge` the module asks IoT Edge for a server certificate signed by the
device's edge CA (`POST /modules/{module}/genid/{generation}/certificate/server` on the
workload socket), as edgeHub does for its own, and asks again when 80 % of its lifetime has
passed: new HTTP handshakes get the new certificate at once (the `SSLContext` reloads it) and
so do new gRPC connections (dynamic server credentials). Clients trust the edge CA.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import json
import logging
import socket
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .atomic import write_atomically
from .vocabulary import CertificateSource

log = logging.getLogger(__name__)

RENEW_AT = 0.8  # of a certificate's lifetime
EDGE_CERTIFICATE_DAYS = 90
RETRY_S = 30.0


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key, and the CA its clients' certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        """For HTTP: TLS 1.2 or newer, client certificates required when a CA is given."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(self.client_ca))
        return context

    def grpc_configuration(self) -> Any:
        import grpc

        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
        )


class TlsSource:
    """The certificate in force, and a way to be told when it changes."""

    def __init__(self, files: TlsFiles, renew: Callable[[], datetime.datetime] | None = None):
        self.files = files
        self.version = 0
        self.expires: datetime.datetime | None = None  # of an IoT Edge certificate
        self._renew = renew  # fetches a new certificate into `files`; returns its expiry
        self._listeners: list[Callable[[TlsFiles], None]] = []
        self._lock = threading.Lock()

    def server_context(self) -> ssl.SSLContext:
        """An HTTP context that follows renewals (new handshakes get the new certificate)."""
        context = self.files.server_context()
        self._listeners.append(
            lambda files: context.load_cert_chain(str(files.cert), str(files.key))
        )
        return context

    def grpc_credentials(self) -> Any:
        """gRPC server credentials that follow renewals too."""
        import grpc

        seen = [self.version]

        def current() -> Any:
            with self._lock:
                if self.version == seen[0]:
                    return None  # unchanged: gRPC keeps the configuration it has
                seen[0] = self.version
                return self.files.grpc_configuration()

        return grpc.dynamic_ssl_server_credentials(
            self.files.grpc_configuration(),
            current,
            require_client_authentication=self.files.client_ca is not None,
        )

    def renewed(self) -> None:
        with self._lock:
            self.version += 1
        for listener in self._listeners:
            listener(self.files)

    def keep_renewing(self) -> None:
        """Renew at 80 % of each certificate's lifetime, in a daemon thread (this process)."""
        if self._renew is None or self.expires is None:
            return
        renew = self._renew

        def loop(expires: datetime.datetime = self.expires) -> None:
            stop = threading.Event()
            while True:
                now = datetime.datetime.now(datetime.timezone.utc)
                stop.wait(max(1.0, (expires - now).total_seconds() * RENEW_AT))
                try:
                    expires = renew()
                except (OSError, ValueError, KeyError) as error:
                    log.error("TLS certificate not renewed (%s); retry in %.0f s", error, RETRY_S)
                    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
                        seconds=RETRY_S / RENEW_AT
                    )
                    continue
                self.renewed()
                log.info("TLS certificate renewed from IoT Edge; valid until %s", expires)

        threading.Thread(target=loop, name="tls-renewal", daemon=True).start()


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the workload API's unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class EdgeCertificates:
    """Server certificates from IoT Edge's workload API for this module."""

    def __init__(self, environ: Mapping[str, str], common_name: str, folder: Path) -> None:
        uri = urllib.parse.urlsplit(environ["IOTEDGE_WORKLOADURI"])
        if uri.scheme != "unix":
            raise ValueError(f"IOTEDGE_WORKLOADURI {uri.geturl()} is not a unix socket")
        self.socket_path = uri.path
        self.module = environ["IOTEDGE_MODULEID"]
        self.generation = environ["IOTEDGE_MODULEGENERATIONID"]
        self.api_version = environ["IOTEDGE_APIVERSION"]
        self.common_name = common_name
        self.files = TlsFiles(folder / "server.pem", folder / "server.key")

    def fetch(self) -> datetime.datetime:
        """Ask for a certificate, write it (key readable by this user only); its expiry."""
        expiration = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            days=EDGE_CERTIFICATE_DAYS
        )
        body = json.dumps(
            {"commonName": self.common_name, "expiration": expiration.isoformat()}
        ).encode()
        path = (
            f"/modules/{urllib.parse.quote(self.module, safe='')}/genid/"
            f"{urllib.parse.quote(self.generation, safe='')}/certificate/server"
            f"?api-version={urllib.parse.quote(self.api_version)}"
        )
        connection = _UnixConnection(self.socket_path, timeout=30)
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
        if response.status not in (200, 201):
            raise OSError(f"workload API answered {response.status}: {answer[:200]!r}")
        document = json.loads(answer)
        # Only this user reads them (write_atomically's files are 0600, as mkstemp makes them)
        write_atomically(self.files.key, document["privateKey"]["bytes"].encode())
        write_atomically(self.files.cert, document["certificate"].encode())
        return datetime.datetime.fromisoformat(document["expiration"].replace("Z", "+00:00"))


def from_settings(settings: Any, environ: Mapping[str, str]) -> TlsSource | None:
    """The TLS in force for these settings; None: plain HTTP and gRPC. Under IoT Edge the
    first certificate is fetched here; `TlsSource.expires` says when to renew it."""
    if settings.tls is CertificateSource.EDGE:
        folder = Path(tempfile.mkdtemp(prefix="scorer-tls-"))
        name = settings.tls_common_name or environ["IOTEDGE_GATEWAYHOSTNAME"]
        edge = EdgeCertificates(environ, name, folder)
        source = TlsSource(edge.files, renew=edge.fetch)
        source.expires = edge.fetch()
        return source
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return TlsSource(
        TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    )
