"""Fetch an image from a URL for `POST /url`: allow-listed hosts only, bounded size and time."""

from __future__ import annotations

import dataclasses
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .errors import Code, ScoringError


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """Which hosts the device may be made to contact, and how much it may download."""

    allowed_hosts: tuple[str, ...]
    max_bytes: int
    timeout_s: float


def _check_url(url: str, policy: FetchPolicy) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScoringError(Code.INVALID_ARGUMENT, "url must be an absolute http(s) URL")
    if parts.hostname.lower() not in policy.allowed_hosts:
        raise ScoringError(
            Code.URL_NOT_ALLOWED,
            f"host {parts.hostname} is not in SCORER_URL_ALLOWED_HOSTS",
        )


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed host, so a redirect cannot escape the list."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        _check_url(newurl, self.policy)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_image(url: str, policy: FetchPolicy) -> bytes:
    """The body at `url`, or a `ScoringError` saying why not."""
    _check_url(url, policy)
    opener = urllib.request.build_opener(_AllowListRedirects(policy))
    deadline = time.monotonic() + policy.timeout_s
    chunks: list[bytes] = []
    received = 0
    try:
        with opener.open(url, timeout=policy.timeout_s) as response:
            # The socket timeout bounds each read; the deadline bounds the whole download.
            while received <= policy.max_bytes:
                chunk = response.read(64 * 1024)
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
                if time.monotonic() > deadline:
                    raise ScoringError(
                        Code.URL_FETCH_FAILED,
                        f"{url} took longer than {policy.timeout_s:g} s to download",
                    )
    except ScoringError:
        raise
    except urllib.error.HTTPError as error:
        raise ScoringError(Code.URL_FETCH_FAILED, f"{url} answered HTTP {error.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ScoringError(Code.URL_FETCH_FAILED, f"cannot fetch {url}: {reason}") from None
    body = b"".join(chunks)
    if len(body) > policy.max_bytes:
        raise ScoringError(
            Code.BODY_TOO_LARGE, f"{url} is larger than the {policy.max_bytes}-byte limit"
        )
    return body
