"""TLS for both front ends from PEM files, with optional client certificates."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path


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

    def grpc_credentials(self) -> object:
        """For gRPC: the same certificate, key and client CA."""
        import grpc

        client_ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
