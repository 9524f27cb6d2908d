"""API keys, checked the same way for both front ends.

A client presents a key as `Authorization: Bearer <key>` (HTTP, or gRPC metadata
`authorization`), or as Custom Vision's cloud header `Prediction-Key: <key>`, so a client of
the cloud prediction API switches to the device by changing only its address and key.
Several keys may be valid at once, which is how they are rotated. Keys are compared in
constant time and never logged. Health and readiness stay open for probes.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

# Routes a probe (or a browser before it has the key) may call without a key: health, and
# the operator's page and API document, which hold no data (the page asks for the key).
OPEN_HTTP_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/openapi.json"})
OPEN_HTTP_PREFIXES = ("/ui/",)  # the page's scripts and styles
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/",)
CHALLENGE = 'Bearer realm="scorer"'


class ApiKeys:
    """The valid keys; with none configured, every request is let through."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def accepts(self, presented: str | None) -> bool:
        """Whether `presented` is one of the keys; every key is compared, whatever matches."""
        if not self.enabled:
            return True
        if not presented:
            return False
        candidate = presented.encode()
        matches = [hmac.compare_digest(candidate, key) for key in self._keys]
        return any(matches)

    def __repr__(self) -> str:  # never the keys themselves
        return f"ApiKeys({len(self._keys)} keys)"


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in HTTP headers or gRPC metadata (lower-case names), if any."""
    authorization = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("prediction-key") or headers.get("Prediction-Key") or None


def is_open(path: str) -> bool:
    """Whether an HTTP path is served without a key."""
    return path in OPEN_HTTP_PATHS or path.startswith(OPEN_HTTP_PREFIXES)


NO_KEYS = ApiKeys(())  # the default: every request is let through
