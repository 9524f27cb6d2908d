"""The one list of failures both front ends report, and the exception that carries them."""

from __future__ import annotations

import enum
import re


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


URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
# an absolute path: a slash not inside a word, a URL or a relative path
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"<>]*")
QUERY = re.compile(r"\?[^\s'\"<>]*")


def _url_without_secrets(match: re.Match[str]) -> str:
    scheme, _, rest = match.group().partition("://")
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]  # user:password@ never shown
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    return f"{scheme}://{host}{slash}{path}"


def _path_name(match: re.Match[str]) -> str:
    path = re.split(r"[?#]", match.group(), maxsplit=1)[0]
    return path.rstrip("/").rpartition("/")[2] or "/"


def redact(text: str) -> str:
    """Text that can go to a log, the twin or an answer: URLs without their query strings
    (a SAS token is one) or user names, absolute paths cut to their last name (the store's
    layout is nobody's business upstream), and any other query string dropped."""
    text = URL.sub(_url_without_secrets, text)
    text = ABSOLUTE_PATH.sub(_path_name, text)
    return QUERY.sub("?…", text)
