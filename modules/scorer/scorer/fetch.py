"""Fetch an image from a URL for `POST /url`, as narrowly as a device on a plant network must.

- Only `host[:port]` pairs of `SCORER_URL_ALLOWED_HOSTS` (an entry without a port allows
  the scheme's default port only), for the URL and every redirect.
- The name is resolved here and the address checked before connecting (`addresses`, the
  rules model downloads follow too): a listed name that resolves to a loopback, link-local
  (cloud metadata), multicast or unspecified address is refused, unless that address itself
  is listed.
- One deadline for resolving, connecting, the TLS handshake, headers and body together
  (`SCORER_URL_TIMEOUT_S`): every socket wait gets only what is left of it, so a server
  trickling its body cannot hold a request longer.
- A size limit on the body while it streams; errors say what happened without echoing the
  operating system's error text (no port-scan oracle).
The HTTP/1.1 response is parsed by h11, as the worker parses requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
import ssl
import time
import urllib.parse

import h11

from .addresses import AddressRefused, AddressRules, Unresolvable, connect
from .errors import Code, ScoringError

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 3
USER_AGENT = "customvision-scorer"


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """Which hosts the device may be made to contact, and how much it may download."""

    allowed_hosts: tuple[str, ...]  # "host" or "host:port", lower case
    max_bytes: int
    timeout_s: float


@dataclasses.dataclass(frozen=True)
class Target:
    """A checked URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


def parse_url(url: str) -> Target:
    """The URL's parts, or INVALID_ARGUMENT for anything but an absolute http(s) URL."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ScoringError(Code.INVALID_ARGUMENT, "url contains spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ScoringError(Code.INVALID_ARGUMENT, "url must be an absolute http(s) URL")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ScoringError(Code.INVALID_ARGUMENT, "url has an invalid port") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname.lower(), port, path)


def allowed(target: Target, policy: FetchPolicy) -> bool:
    """`host:port` listed, or `host` listed and the port is the scheme's default."""
    default = target.port == DEFAULT_PORTS[target.scheme]
    return target.name in policy.allowed_hosts or (default and target.host in policy.allowed_hosts)


def _check_allowed(target: Target, policy: FetchPolicy) -> None:
    if not allowed(target, policy):
        raise ScoringError(
            Code.URL_NOT_ALLOWED, f"{target.name} is not in SCORER_URL_ALLOWED_HOSTS"
        )


def _address_rules(target: Target, policy: FetchPolicy) -> AddressRules:
    """Internal addresses allowed for this target: those listed as such (`10.0.0.5`, or
    `10.0.0.5:<the target's port>`) in SCORER_URL_ALLOWED_HOSTS."""
    listed = []
    for entry in policy.allowed_hosts:
        suffix = f":{target.port}"
        for text in (entry, entry[: -len(suffix)] if entry.endswith(suffix) else ""):
            with contextlib.suppress(ValueError):
                listed.append(ipaddress.ip_network(text.strip("[]")))
    return AddressRules(tuple(listed))


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self, target: Target) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise ScoringError(
                Code.URL_FETCH_FAILED,
                f"{target.name} did not deliver the image within {self.seconds:g} s "
                "(SCORER_URL_TIMEOUT_S)",
            )
        return remaining


def _connect(target: Target, policy: FetchPolicy, deadline: _Deadline) -> socket.socket:
    try:
        sock = connect(
            target.host, target.port, _address_rules(target, policy), deadline.left(target)
        )
    except Unresolvable:
        raise ScoringError(Code.URL_FETCH_FAILED, f"cannot resolve {target.host}") from None
    except AddressRefused as error:
        raise ScoringError(
            Code.URL_NOT_ALLOWED,
            f"{error}; list that address itself in SCORER_URL_ALLOWED_HOSTS to allow it",
        ) from None
    except OSError:
        raise ScoringError(Code.URL_FETCH_FAILED, f"cannot connect to {target.name}") from None
    if target.scheme == "http":
        return sock
    try:
        return ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
    except (OSError, ssl.SSLError):
        sock.close()
        raise ScoringError(
            Code.URL_FETCH_FAILED, f"TLS with {target.name} failed (certificate or protocol)"
        ) from None


def _get(target: Target, policy: FetchPolicy, deadline: _Deadline) -> tuple[int, str, bytes]:
    """(status, Location header, body) of one GET."""
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target.path,
        headers=[
            ("Host", target.host if target.port == DEFAULT_PORTS[target.scheme] else target.name),
            ("User-Agent", USER_AGENT),
            ("Accept", "image/*"),
            ("Connection", "close"),
        ],
    )
    status, location, body = 0, "", bytearray()
    with _connect(target, policy, deadline) as sock:
        try:
            sock.settimeout(deadline.left(target))
            sock.sendall(client.send(request) + client.send(h11.EndOfMessage()))
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    sock.settimeout(deadline.left(target))
                    client.receive_data(sock.recv(64 * 1024))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    location = dict(event.headers).get(b"location", b"").decode("latin-1")
                    if status != 200:
                        return status, location, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > policy.max_bytes:
                        raise ScoringError(
                            Code.BODY_TOO_LARGE,
                            f"the image at {target.name} is larger than the {policy.max_bytes}"
                            "-byte limit (SCORER_MAX_BODY_BYTES)",
                        )
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, location, bytes(body)
        except TimeoutError:  # every wait was given only what was left of the deadline
            raise ScoringError(
                Code.URL_FETCH_FAILED,
                f"{target.name} did not deliver the image within {deadline.seconds:g} s "
                "(SCORER_URL_TIMEOUT_S)",
            ) from None
        except h11.ProtocolError:
            raise ScoringError(
                Code.URL_FETCH_FAILED, f"{target.name} sent a malformed HTTP response"
            ) from None
        except OSError:
            raise ScoringError(
                Code.URL_FETCH_FAILED, f"the connection to {target.name} failed"
            ) from None


def fetch_image(url: str, policy: FetchPolicy) -> bytes:
    """The body at `url`, or a `ScoringError` saying why not."""
    deadline = _Deadline(policy.timeout_s)
    target = parse_url(url)
    for _ in range(MAX_REDIRECTS + 1):
        _check_allowed(target, policy)
        status, location, body = _get(target, policy, deadline)
        if status == 200:
            return body
        if status in (301, 302, 303, 307, 308) and location:
            base = f"{target.scheme}://{target.name}{target.path}"
            target = parse_url(urllib.parse.urljoin(base, location))
            continue
        raise ScoringError(Code.URL_FETCH_FAILED, f"{target.name} answered HTTP {status}")
    raise ScoringError(Code.URL_FETCH_FAILED, f"more than {MAX_REDIRECTS} redirects")
