"""Download a model export over HTTPS: resumable, bounded in size and time, checked by hash.

A `.part` file keeps what arrived; the next try asks for the rest (`Range`) and starts over
only if the server does not answer 206. Every read gets only what is left of one deadline,
so a server trickling bytes cannot hold the update for longer (a stalled read ends after at
most 30 s, and the next try resumes). The file is renamed into
place only once its SHA-256 matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

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


def _opener(allow_http: bool) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_CheckedRedirects(allow_http))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_rest(url: str, part: Path, limits: DownloadLimits, deadline: float) -> None:
    """Append what is missing of `url` to `part`; raises on a failure of this try."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "customvision-scorer", "Range": f"bytes={have}-"}
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadError("deadline passed")
    try:
        response = _opener(limits.allow_http).open(
            urllib.request.Request(url, headers=headers), timeout=min(left, 30.0)
        )
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # asked past the end: the part is complete
            return
        raise DownloadError(f"HTTP {error.code} {error.reason}", error.code < 500) from None
    with response:
        mode = "ab" if response.status == 206 else "wb"  # 200: the server does not resume
        if mode == "wb":
            have = 0
        length = response.headers.get("Content-Length")
        if length is not None and have + int(length) > limits.max_bytes:
            raise DownloadError(f"{have + int(length)} bytes; the limit is {limits.max_bytes}")
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
        if length is not None and mode == "wb" and have != int(length):
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
