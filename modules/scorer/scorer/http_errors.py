"""The HTTP status of every error code, which ones say when to retry, and log-safe text:
what the gunicorn worker class needs too. The master imports that class, so this module
imports nothing heavy."""

from __future__ import annotations

from .errors import Code

HTTP_STATUS: dict[Code, int] = {
    Code.EMPTY_BODY: 400,
    Code.UNSUPPORTED_MEDIA_TYPE: 415,
    Code.INVALID_IMAGE: 400,
    Code.IMAGE_TOO_LARGE: 413,
    Code.BODY_TOO_LARGE: 413,
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.URL_NOT_ALLOWED: 403,
    Code.URL_FETCH_FAILED: 502,
    Code.NOT_READY: 503,
    Code.OVERLOADED: 429,
    Code.MALFORMED_REQUEST: 400,
    Code.HEADERS_TOO_LARGE: 431,
    Code.URI_TOO_LONG: 414,
    Code.REQUEST_TIMEOUT: 408,
    Code.UNAUTHENTICATED: 401,
    Code.RANGE_NOT_SATISFIABLE: 416,
    Code.CONFLICT: 409,
    Code.INTERNAL: 500,
}
# Answered with `Retry-After: 1`: the request was fine, the scorer is busy or not ready yet.
RETRY_LATER = frozenset({Code.OVERLOADED, Code.NOT_READY})


def printable(text: str) -> str:
    """Text safe for one log line: control characters escaped, never a fake new line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
