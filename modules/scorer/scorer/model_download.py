"""Download a model export over HTTPS: resumable, bounded in size and time, checked by hash.

A `.part` file keeps what arrived; the next try asks for the rest (`Range`) and starts over
only if the server does not answer 206. Every read gets only what is left of one deadline,
so a server trickling bytes cannot hold the update for longer (a stalled read ends after at
most 30 s, and the next try resumes). The file is renamed into
place only once its SHA-256 matches.

The URL comes from the twin or an admin request, so it is held to the rules of `/url`
(`addresses`): the first request and every redirect connect only to an address checked after
resolution, never to loopback, link-local (cloud metadata) or private ranges unless listed
(`SCORER_MODEL_ALLOWED_ADDRESSES`); a refused address is refused before connecting, so no
answer from inside the plant ever shapes an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .addresses import AddressRefused, AddressRules, connect

CHUNK = 1 << 16


class DownloadError(ValueError):
    """The model could not be downloaded or is not the one asked for; says why. `final`:
    trying again cannot help (a refusal, a limit, the deadline); not final: the network
    failed, now or after every attempt, and a later try may do."""

    def __init__(self, message: str, final: bool = True) -> None:
        super().__init__(message)
        self.final = final


@dataclasses.dataclass(frozen=True)
class DownloadLimits:
    max_bytes: int = 1 << 30
    deadline_s: float = 900.0
    allow_http: bool = False  # plain HTTP only where a setting allows it (a lab, a test)
    attempts: int = 3  # tries within the deadline, each resuming the last
    rules: AddressRules = AddressRules(private=True)  # which addresses it may connect to


def check_url(url: str, allow_http: bool) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme != "https" and not (allow_http and scheme == "http"):
        raise DownloadError(
            f"model URLs must be https (got {scheme or 'none'}); SCORER_MODEL_ALLOW_HTTP allows"
            " http"
        )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed only to URLs the first one could have been (https)."""

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        check_url(newurl, self.allow_http)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _CheckedHTTPConnection(http.client.HTTPConnection):
    """A connection to the checked address of its host (resolved once, here)."""

    rules = AddressRules(private=True)

    def connect(self) -> None:
        self.sock = connect(self.host, self.port, self.rules, self.timeout)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    """The same, with TLS verified against the host's name (the system's trust store)."""

    rules = AddressRules(private=True)
    tls = ssl.create_default_context()

    def connect(self) -> None:
        sock: socket.socket = connect(self.host, self.port, self.rules, self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


class _CheckedHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's handlers on the checked connections, for the first URL and every redirect."""

    def __init__(self, rules: AddressRules) -> None:
        urllib.request.HTTPHandler.__init__(self)
        urllib.request.HTTPSHandler.__init__(self)
        self.rules = rules

    def _checked(
        self, kind: type[_CheckedHTTPConnection] | type[_CheckedHTTPSConnection]
    ) -> Callable[..., http.client.HTTPConnection]:
        def made(host: str, **options: Any) -> http.client.HTTPConnection:
            connection = kind(host, **options)
            connection.rules = self.rules
            return connection

        return made

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._checked(_CheckedHTTPConnection), req)

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._checked(_CheckedHTTPSConnection), req)


def _opener(limits: DownloadLimits) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        _CheckedRedirects(limits.allow_http), _CheckedHandler(limits.rules)
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _content_length(text: str | None) -> int | None:
    """The announced length, or DownloadError for one that is not a number."""
    if text is None:
        return None
    if not text.strip().isdigit():
        raise DownloadError(f"the server sent an invalid Content-Length ({text[:20]!r})")
    return int(text)


def _fetch_rest(url: str, part: Path, limits: DownloadLimits, deadline: float) -> None:
    """Append what is missing of `url` to `part`; raises on a failure of this try."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "customvision-scorer", "Range": f"bytes={have}-"}
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadError("deadline passed")
    try:
        response = _opener(limits).open(
            urllib.request.Request(url, headers=headers), timeout=min(left, 30.0)
        )
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # asked past the end: the part is complete
            return
        raise DownloadError(f"HTTP {error.code} {error.reason}", error.code < 500) from None
    except AddressRefused as error:  # before connecting, on the first URL or a redirect
        raise DownloadError(
            f"{error}; list it in SCORER_MODEL_ALLOWED_ADDRESSES to allow it"
        ) from None
    with response:
        mode = "ab" if response.status == 206 else "wb"  # 200: the server does not resume
        if mode == "wb":
            have = 0
        length = _content_length(response.headers.get("Content-Length"))
        if length is not None and have + length > limits.max_bytes:
            raise DownloadError(f"{have + length} bytes; the limit is {limits.max_bytes}")
        with part.open(mode) as sink:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DownloadError(f"not complete within {limits.deadline_s:g} s")
                chunk = response.read1(CHUNK)
                if not chunk:
                    break
                have += len(chunk)
                if have > limits.max_bytes:
                    raise DownloadError(f"more than the {limits.max_bytes}-byte limit")
                sink.write(chunk)
        if length is not None and mode == "wb" and have != length:
            raise DownloadError(f"connection closed after {have} of {length} bytes", False)


def download(url: str, target: Path, sha256: str, limits: DownloadLimits) -> Path:
    """`url` saved as `target` once its SHA-256 is `sha256`; resumes `target.part`."""
    check_url(url, limits.allow_http)
    part = target.with_name(target.name + ".part")
    deadline = time.monotonic() + limits.deadline_s
    last_error = "no attempt"
    for attempt in range(limits.attempts):
        try:
            _fetch_rest(url, part, limits, deadline)
            break
        except (DownloadError, OSError, http.client.HTTPException) as error:
            last_error = str(error) or type(error).__name__
            if isinstance(error, DownloadError) and error.final:
                raise
            if attempt == limits.attempts - 1 or time.monotonic() >= deadline:
                raise DownloadError(f"download failed: {last_error}", final=False) from None
    actual = _sha256(part)
    if actual != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"SHA-256 is {actual}, not the {sha256.lower()} asked for")
    os.replace(part, target)
    return target
