"""API keys, checked the same way for both front ends.

A client presents a key as `Authorization: Bearer <key>` (HTTP, or gRPC metadata
`authorization`), or as Custom Vision's cloud header `Prediction-Key: <key>`, so a client of
the cloud prediction API switches to the device by changing only its address and key.
Several keys may be valid at once, which is how they are rotated. Keys are compared in
constant time and never logged. Which routes are open (health, readiness, the page) is
decided by each front end on the route it matched, never on the text of a path.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

# gRPC services a probe calls without a key (matched on the whole service name).
OPEN_GRPC_SERVICES = frozenset({"grpc.health.v1.Health"})
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


class RepeatedKeyHeader(ValueError):
    """A request carried a key header more than once: refused, never one of them picked."""


KEY_HEADERS = ("authorization", "prediction-key")


def presented_key(headers: Iterable[tuple[str, str]]) -> str | None:
    """The key in HTTP headers or gRPC metadata, as (name, value) pairs in any case, if
    any; RepeatedKeyHeader when a key header comes more than once (which one a proxy or a
    library would keep differs, so neither is)."""
    found: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in KEY_HEADERS:
            if key in found:
                raise RepeatedKeyHeader(f"the {name} header is given more than once")
            found[key] = value
    scheme, _, token = found.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return found.get("prediction-key") or None


def is_open_grpc(method: str) -> bool:
    """Whether a gRPC method (`/package.Service/Method`) is served without a key."""
    service = method.lstrip("/").partition("/")[0]
    return service in OPEN_GRPC_SERVICES


NO_KEYS = ApiKeys(())  # the default: every request is let through
