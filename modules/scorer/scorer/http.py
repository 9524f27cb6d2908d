"""HTTP front end: `create_app(scorer)` translates requests to `Scorer.score` and back."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import openapi
from .auth import CHALLENGE, NO_KEYS, ApiKeys, RepeatedKeyHeader, presented_key
from .core import Code, ScoreOptions, Scorer, ScoringError
from .errors import error_document
from .fetch import FetchPolicy, fetch_image
from .http_errors import HTTP_STATUS, RETRY_LATER, printable
from .model_update import ModelRequest, ModelUpdater, UpdateConflict
from .openapi import API_VERSION, CONTAINER_PREFIXES

log = logging.getLogger(__name__)


RAW_IMAGE_TYPES = (
    "image/jpeg",
    "image/jpg",
    "image/png",
    "image/bmp",
    "image/x-ms-bmp",
    "application/octet-stream",
)
MULTIPART = "multipart/form-data"
PAGES = Path(__file__).parent / "static"  # the operator's page: plain HTML, CSS and JS
MAX_FORM_PARTS = 16  # an image and a few fields; werkzeug's default is 1,000
# The routes served without a key, by the endpoint they matched (never by the text of a
# path: the container's routes take any project name, `ui` included): health and
# readiness for probes, the page with its static files and the API reference, which hold
# no data (the page asks for the key).
OPEN_ENDPOINTS = frozenset({"healthz", "readyz", "page", "reference", "openapi_document", "static"})
# The routes that score: `POST /score` and the container's `image` and `url` routes.
SCORING_ENDPOINTS = ("score", "image:", "url:")
# werkzeug's refusals other than 404 and 405 (answered with the allowed methods), by status
HTTP_EXCEPTION_CODES = {
    400: Code.INVALID_ARGUMENT,
    413: Code.BODY_TOO_LARGE,
    414: Code.URI_TOO_LONG,
    416: Code.RANGE_NOT_SATISFIABLE,
    431: Code.HEADERS_TOO_LARGE,
}


def error_response(code: Code, message: str) -> Response:
    """The one error body of ARCHITECTURE.md, with its HTTP status."""
    response = jsonify(error_document(code, message))
    response.status_code = HTTP_STATUS[code]
    if code in RETRY_LATER:
        response.headers["Retry-After"] = "1"
    if code is Code.UNAUTHENTICATED:
        response.headers["WWW-Authenticate"] = CHALLENGE
    return response


def _query_options() -> ScoreOptions:
    def number(name: str, parse: Callable[[str], Any]) -> Any:
        text = request.args.get(name)
        if text is None or text == "":
            return None
        try:
            return parse(text)
        except ValueError:
            raise ScoringError(Code.INVALID_ARGUMENT, f"{name}={text!r} is not a number") from None

    options = ScoreOptions(number("threshold", float), number("maxPredictions", int))
    options.validate()
    return options


def _multipart_image(preferred: tuple[str, ...]) -> bytes:
    files = request.files
    for name in preferred:
        if name in files:
            return bytes(files[name].read())
    for name in preferred:
        if name in request.form:
            try:  # a form field carries bytes only if they survived as Latin-1 text
                return request.form[name].encode("latin-1")
            except UnicodeEncodeError:
                raise ScoringError(
                    Code.INVALID_IMAGE,
                    f"form field {name!r} is text, not image bytes: send the image as a file",
                ) from None
    if files:
        return bytes(next(iter(files.values())).read())
    raise ScoringError(
        Code.EMPTY_BODY, f"multipart body has no file (send it in the field {preferred[0]!r})"
    )


def _score_body() -> bytes:
    """The image of `POST /score`: a raw body of an image type, or a multipart file."""
    mimetype = request.mimetype
    if mimetype == MULTIPART:
        return _multipart_image(("image",))
    if mimetype and mimetype not in RAW_IMAGE_TYPES:
        raise ScoringError(
            Code.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type {mimetype} is not accepted; send image/jpeg, image/png, image/bmp,"
            f" application/octet-stream or {MULTIPART}",
        )
    return request.get_data(cache=False)


def _container_body() -> bytes:
    """The image of the container's `/image`: field `imageData` (file or form) or raw body."""
    if request.mimetype in (MULTIPART, "application/x-www-form-urlencoded") and (
        request.files or request.form
    ):
        return _multipart_image(("imageData",))
    return request.get_data(cache=False)


def _url_body() -> str:
    try:
        payload = json.loads(request.get_data(cache=False) or b"null")
    except ValueError:
        raise ScoringError(
            Code.INVALID_ARGUMENT, 'body must be JSON: {"url": "https://..."}'
        ) from None
    url = payload.get("url", payload.get("Url")) if isinstance(payload, dict) else None
    if not isinstance(url, str) or not url:
        raise ScoringError(Code.INVALID_ARGUMENT, 'body must be JSON: {"url": "https://..."}')
    return url


def scoring_routes(app: Flask) -> Callable[[str, str], bool]:
    """Whether a request (method, decoded path) goes to a route that scores, by the app's
    own routing: only those take one of the in-flight slots the worker's loop hands out, so
    the admin API, health, metrics and the page answer under full load."""
    adapter = app.url_map.bind("scorer")

    def scores(method: str, path: str) -> bool:
        try:
            endpoint, _ = adapter.match(path, method)
        except HTTPException:  # no route, a wrong method, a redirect: the app answers it
            return False
        return str(endpoint).startswith(SCORING_ENDPOINTS)

    return scores


def create_app(
    scorer: Scorer,
    fetch_policy: FetchPolicy | None = None,
    keys: ApiKeys = NO_KEYS,
    updater: ModelUpdater | None = None,
    edge_status: Callable[[], dict[str, Any]] | None = None,
) -> Flask:
    """A Flask app around one scorer; `fetch_policy` None keeps `POST /url` off; with `keys`,
    every route but health and readiness needs one of them, and `/admin/model` (updates
    through `updater`) exists only then."""
    app = Flask("scorer", static_folder=str(PAGES), static_url_path="/ui")
    app.config["MAX_CONTENT_LENGTH"] = scorer.config.max_body_bytes
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS

    def scored(read_image: Callable[[], bytes]) -> Response:
        with scorer.admit():
            options = _query_options()
            try:
                image = read_image()
            except RequestEntityTooLarge:
                limit = scorer.config.max_body_bytes
                if (request.content_length or 0) <= limit:  # the size was fine: too many parts
                    raise ScoringError(
                        Code.INVALID_ARGUMENT,
                        f"multipart body has more than {MAX_FORM_PARTS} parts; send one image",
                    ) from None
                raise ScoringError(
                    Code.BODY_TOO_LARGE,
                    f"request body is larger than the {limit}-byte limit (SCORER_MAX_BODY_BYTES)",
                ) from None
            return jsonify(scorer.score(image, options).to_dict())

    @app.post("/score")
    def score() -> Response:
        return scored(_score_body)

    def container_image(**_route: str) -> Response:
        return scored(_container_body)

    def container_url(**_route: str) -> Response:
        if fetch_policy is None:
            raise ScoringError(
                Code.URL_NOT_ALLOWED,
                "POST /url is off; set SCORER_URL_ENABLED=true and SCORER_URL_ALLOWED_HOSTS",
            )
        return scored(lambda: fetch_image(_url_body(), fetch_policy))

    for prefix in CONTAINER_PREFIXES:
        for suffix in ("", "/nostore"):
            app.add_url_rule(
                f"{prefix}/image{suffix}",
                view_func=container_image,
                methods=["POST"],
                endpoint=f"image:{prefix}{suffix}",
            )
            app.add_url_rule(
                f"{prefix}/url{suffix}",
                view_func=container_url,
                methods=["POST"],
                endpoint=f"url:{prefix}{suffix}",
            )

    @app.get("/")
    def page() -> Response:
        return app.send_static_file("index.html")

    @app.get("/docs")
    def reference() -> Response:
        return app.send_static_file("docs.html")

    @app.get("/openapi.json")
    def openapi_document() -> Response:
        return jsonify(openapi.document(API_VERSION))

    @app.get("/edge")
    def edge() -> Response:
        """The IoT Edge publisher's and the relay's state, for the page (nulls outside it)."""
        return jsonify(edge_status() if edge_status else {"publisher": None, "relay": None})

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "alive"})

    @app.get("/readyz")
    def readyz() -> Response:
        """Open to probes, so it says ready or not and nothing else (`/model` has the rest)."""
        if not scorer.ready:
            raise ScoringError(Code.NOT_READY, "the model is still loading or warming up")
        return jsonify({"status": "ready"})

    @app.get("/model")
    def model() -> Response:
        return jsonify(scorer.model_info())  # the same as gRPC GetModel

    def admin() -> ModelUpdater:
        if updater is None or not keys.enabled:
            raise ScoringError(
                Code.NOT_FOUND,
                "model updates over HTTP need API keys (SCORER_API_KEYS); under IoT Edge use"
                " the module twin's desired property `model`",
            )
        return updater

    @app.get("/admin/model")
    def admin_model() -> Response:
        return jsonify(admin().status())

    @app.post("/admin/model")
    def admin_update() -> tuple[Response, int]:
        updates = admin()
        try:
            wanted = ModelRequest.parse(request.get_json(silent=True))
        except ValueError as error:
            raise ScoringError(Code.INVALID_ARGUMENT, f"model update: {error}") from None
        admission = updates.request(wanted, retry_failed=True)  # an operator asking again
        answer = {**updates.status(), "superseded": admission.superseded}
        return jsonify(answer), 202 if admission.started else 200

    @app.post("/admin/model/rollback")
    def admin_rollback() -> tuple[Response, int]:
        updates = admin()
        try:
            updates.rollback()
        except UpdateConflict as error:
            raise ScoringError(Code.CONFLICT, str(error)) from None
        except ValueError as error:
            raise ScoringError(Code.INVALID_ARGUMENT, str(error)) from None
        return jsonify(updates.status()), 202

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(scorer.metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.before_request
    def authenticate() -> None:
        """After routing: open is a property of the route matched (`OPEN_ENDPOINTS`); a
        request that matched none needs a key too, so no route is found without one."""
        if request.endpoint in OPEN_ENDPOINTS or not keys.enabled:
            return
        message = "an API key is required: Authorization: Bearer <key> or Prediction-Key: <key>"
        try:
            if keys.accepts(presented_key(request.headers.items())):
                return
        except RepeatedKeyHeader as error:
            message = f"{error}; send one key"
        scorer.metrics.error(Code.UNAUTHENTICATED.value)
        raise ScoringError(Code.UNAUTHENTICATED, message)

    @app.after_request
    def log_request(response: Response) -> Response:
        """Every failure at INFO; successes only at DEBUG: a line per request cost 3-5 % of
        the throughput, and `/metrics` counts them anyway."""
        level = logging.INFO if response.status_code >= 400 else logging.DEBUG
        if log.isEnabledFor(level):
            elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
            log.log(
                level,
                "%s %s %d %.1f ms",
                request.method,
                printable(request.path),
                response.status_code,
                elapsed,
            )
        return response

    @app.errorhandler(ScoringError)
    def scoring_error(error: ScoringError) -> Response:
        return error_response(error.code, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 404:
            return error_response(Code.NOT_FOUND, f"no route {request.path}; see README")
        if error.code == 405:
            allowed = ", ".join(sorted(error.valid_methods or []))  # type: ignore[attr-defined]
            response = error_response(
                Code.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
            )
            response.headers["Allow"] = allowed
            return response
        status = error.code or 500
        if status < 500:  # the client's mistake: a 4xx of our shape, never a 5xx
            code = HTTP_EXCEPTION_CODES.get(status, Code.INVALID_ARGUMENT)
            return error_response(code, error.description or "bad request")
        log.warning("HTTP %s on %s: %s", status, printable(request.path), error.description)
        return error_response(Code.INTERNAL, error.description or "request failed")

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(Code.INTERNAL, f"internal error ({type(error).__name__}); logged")

    return app
