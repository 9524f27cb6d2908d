"""The one list of failures both front ends report, and the exception that carries them."""

from __future__ import annotations

import enum


class Code(str, enum.Enum):
    """Every way a request can fail; `http.py` and `rpc.py` each map all of them."""

    EMPTY_BODY = "EMPTY_BODY"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    INVALID_IMAGE = "INVALID_IMAGE"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    URL_NOT_ALLOWED = "URL_NOT_ALLOWED"
    URL_FETCH_FAILED = "URL_FETCH_FAILED"
    NOT_READY = "NOT_READY"
    OVERLOADED = "OVERLOADED"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    URI_TOO_LONG = "URI_TOO_LONG"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RANGE_NOT_SATISFIABLE = "RANGE_NOT_SATISFIABLE"
    CONFLICT = "CONFLICT"
    INTERNAL = "INTERNAL"


def error_document(code: Code, message: str) -> dict[str, dict[str, str]]:
    """The one error body of every HTTP answer: `{"error": {"code", "message"}}`."""
    return {"error": {"code": code.value, "message": message}}


class ScoringError(Exception):
    """A failure with its `Code` and a message the client can act on."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ModelError(ValueError):
    """The export cannot be served; the message names the file and the problem."""


def one_line(error: BaseException) -> str:
    """An exception as one log line: our errors say it all; others also name their type."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (ModelError, RuntimeError)):
        return text
    return f"{type(error).__name__}: {text}"
