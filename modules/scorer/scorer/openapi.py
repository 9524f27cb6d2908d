"""The HTTP API as an OpenAPI 3.1 document, built from the same tables the server uses (the
error codes and their statuses, the container routes), so the two cannot drift apart.

Served at `GET /openapi.json`; `docs/openapi.json` is the same document, written by
`scripts/gen_openapi` (a test keeps them equal).
"""

from __future__ import annotations

import re
from typing import Any

from .errors import Code
from .http_errors import HTTP_STATUS
from .model_store import VERSION_PATTERN, VERSION_RULE
from .vocabulary import Binding

# The routes of Custom Vision's exported container, so its clients only change the address.
API_VERSION = "1.0.0"  # of this HTTP contract; raised when it changes
CONTAINER_PREFIXES = (
    "",
    "/<project>",
    "/<project>/classify/iterations/<published_name>",
    "/<project>/detect/iterations/<published_name>",
)
IMAGE_TYPES = ("image/jpeg", "image/png", "image/bmp", "application/octet-stream")
# A key is needed only when keys are set: no security, or either scheme.
SECURED: list[dict[str, list[str]]] = [{}, {"bearer": []}, {"predictionKey": []}]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": [code.value for code in Code]},
                    "message": {"type": "string"},
                },
            }
        },
    },
    "BoundingBox": {
        "type": "object",
        "description": "Normalised to the image: 0..1 of its width and height.",
        "required": ["left", "top", "width", "height"],
        "properties": {k: {"type": "number"} for k in ("left", "top", "width", "height")},
    },
    "Prediction": {
        "type": "object",
        "required": ["probability", "tagId", "tagName"],
        "properties": {
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "tagId": {"type": "integer", "minimum": 0},
            "tagName": {"type": "string"},
            "boundingBox": {"$ref": "#/components/schemas/BoundingBox"},
        },
    },
    "Result": {
        "type": "object",
        "description": "Custom Vision's container answer, plus model, timing and provider.",
        "required": ["id", "project", "iteration", "created", "predictions", "model"],
        "properties": {
            "id": {"type": "string"},
            "project": {"type": "string"},
            "iteration": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "predictions": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Prediction"},
            },
            "model": {
                "type": "object",
                "required": ["name", "version", "kind"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "kind": {"type": "string", "enum": ["classification", "detection"]},
                },
            },
            "timing": {
                "type": "object",
                "properties": {
                    k: {"type": "number"} for k in ("decodeMs", "inferenceMs", "totalMs")
                },
            },
            "provider": {"type": "string"},
        },
    },
    "Model": {
        "type": "object",
        "required": ["name", "version", "kind", "labels", "sha256", "ready"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "kind": {"type": "string", "enum": ["classification", "detection"]},
            "format": {"type": "string"},
            "labels": {"type": "array", "items": {"type": "string"}},
            "inputName": {"type": "string"},
            "inputShape": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "-1 for a side that follows the image",
            },
            "inputType": {"type": "string", "enum": ["float32", "float16"]},
            "providers": {"type": "array", "items": {"type": "string"}},
            "providerFallbacks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {k: {"type": "string"} for k in ("provider", "reason", "detail")},
                },
            },
            "sha256": {"type": "string"},
            "ready": {"type": "boolean"},
            "warmInputSizes": {
                "type": "integer",
                "description": "input sizes run before ready (each size of a YOLO export on a GPU)",
            },
            "ioBinding": {
                "type": "string",
                "enum": [binding.value for binding in Binding],
                "description": "where fixed-size inputs are bound (SCORER_IO_BINDING)",
            },
        },
    },
    "EdgeStatus": {
        "type": "object",
        "required": ["publisher", "relay"],
        "properties": {
            "publisher": {
                "type": ["object", "null"],
                "description": "results to the output `results`: connected, queued, sent, dropped",
            },
            "relay": {
                "type": ["object", "null"],
                "description": "from the relay's /metrics: reachable, queued, sent, dropped, ...",
                "properties": {"reachable": {"type": "boolean"}},
            },
        },
    },
    "ModelRequest": {
        "type": "object",
        "required": ["version", "url", "sha256"],
        "properties": {
            "version": {"type": "string", "pattern": VERSION_PATTERN, "description": VERSION_RULE},
            "url": {"type": "string", "description": "https URL of the export zip"},
            "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
        },
    },
    "ModelUpdate": {
        "type": "object",
        "required": ["state"],
        "properties": {
            "version": {"type": ["string", "null"]},
            "sha256": {"type": "string"},
            "state": {
                "type": "string",
                "enum": ["ready", "downloading", "verifying", "warming", "failed"],
            },
            "target": {"type": ["string", "null"]},
            "queued": {
                "type": ["string", "null"],
                "description": "the version waiting for the running update (the newest asked)",
            },
            "superseded": {
                "type": ["string", "null"],
                "description": "in an update's answer: the waiting version it replaced",
            },
            "previous": {"type": ["string", "null"]},
            "lastError": {"type": ["string", "null"]},
            "updatedAt": {"type": ["string", "null"]},
        },
    },
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _errors(*codes: Code) -> dict[str, Any]:
    """The error answers a route gives; `default` covers the rest (any status, same shape)."""
    answers: dict[str, Any] = {}
    for code in codes:
        status = str(HTTP_STATUS[code])
        described = answers.setdefault(status, _json("Error", ""))
        described["description"] = ", ".join(filter(None, (described["description"], code.value)))
    answers["default"] = _json("Error", "any other failure, in the same shape")
    return answers


def _scoring(summary: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": SECURED,
        "parameters": [
            {
                "name": "threshold",
                "in": "query",
                "schema": {"type": "number", "minimum": 0, "maximum": 1},
                "description": "lowest probability returned (default: the scorer's)",
            },
            {
                "name": "maxPredictions",
                "in": "query",
                "schema": {"type": "integer", "minimum": 0},
                "description": "at most this many predictions; 0: all",
            },
        ],
        "requestBody": {"required": True, "content": body},
        "responses": {
            "200": _json("Result", "the predictions"),
            **_errors(
                Code.EMPTY_BODY,
                Code.INVALID_IMAGE,
                Code.INVALID_ARGUMENT,
                Code.UNAUTHENTICATED,
                Code.URL_NOT_ALLOWED,
                Code.BODY_TOO_LARGE,
                Code.UNSUPPORTED_MEDIA_TYPE,
                Code.OVERLOADED,
                Code.URL_FETCH_FAILED,
                Code.NOT_READY,
            ),
        },
    }


IMAGE_BODY = {
    **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES},
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "format": "binary"},
                "imageData": {"type": "string", "format": "binary"},
            },
        }
    },
}
URL_BODY = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["url"],
            "properties": {"url": {"type": "string", "format": "uri"}},
        }
    }
}


def _openapi_path(flask_rule: str) -> tuple[str, list[dict[str, Any]]]:
    """A Flask rule as an OpenAPI path, with its path parameters."""
    names = re.findall(r"<(\w+)>", flask_rule)
    path = re.sub(r"<(\w+)>", r"{\1}", flask_rule)
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in names
    ]
    return path, parameters


def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API."""
    paths: dict[str, Any] = {
        "/score": {"post": _scoring("Score an image", IMAGE_BODY)},
    }
    for prefix in CONTAINER_PREFIXES:
        for suffix in ("", "/nostore"):
            for kind, body, what in (
                ("image", IMAGE_BODY, "an image (Custom Vision container route)"),
                ("url", URL_BODY, "the image at a URL the device fetches (off by default)"),
            ):
                path, parameters = _openapi_path(f"{prefix}/{kind}{suffix}")
                operation = _scoring(f"Score {what}", body)
                if parameters:
                    operation["parameters"] = parameters + operation["parameters"]
                paths[path] = {"post": operation}
    open_route: dict[str, Any] = {"security": [{}]}
    paths |= {
        "/healthz": {
            "get": {
                **open_route,
                "summary": "The process is alive",
                "responses": {"200": {"description": "alive"}},
            }
        },
        "/readyz": {
            "get": {
                **open_route,
                "summary": "200 once the model is loaded and warm",
                "responses": {
                    "200": {"description": 'ready: `{"status": "ready"}` (details: `/model`)'},
                    **_errors(Code.NOT_READY),
                },
            }
        },
        "/model": {
            "get": {
                "summary": "The model served",
                "security": SECURED,
                "responses": {
                    "200": _json("Model", "kind, labels, input, providers, hash"),
                    **_errors(Code.UNAUTHENTICATED),
                },
            }
        },
        "/edge": {
            "get": {
                "summary": "The IoT Edge publisher's and the relay's state (nulls outside it)",
                "security": SECURED,
                "responses": {
                    "200": _json("EdgeStatus", "publisher and relay"),
                    **_errors(Code.UNAUTHENTICATED),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": SECURED,
                "responses": {
                    "200": {
                        "description": "exposition text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(Code.UNAUTHENTICATED),
                },
            }
        },
        "/admin/model": {
            "get": {
                "summary": "Where the model update stands (only with API keys on)",
                "security": SECURED,
                "responses": {
                    "200": _json("ModelUpdate", "the update's state"),
                    **_errors(Code.UNAUTHENTICATED, Code.NOT_FOUND),
                },
            },
            "post": {
                "summary": "Install and serve a model version (only with API keys on)",
                "security": SECURED,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ModelRequest"}
                        }
                    },
                },
                "responses": {
                    "200": _json("ModelUpdate", "that version is served already"),
                    "202": _json("ModelUpdate", "the update runs"),
                    **_errors(Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED, Code.NOT_FOUND),
                },
            },
        },
        "/admin/model/rollback": {
            "post": {
                "summary": "Serve the previous version again (only with API keys on)",
                "security": SECURED,
                "responses": {
                    "202": _json("ModelUpdate", "the rollback runs"),
                    **_errors(
                        Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED, Code.NOT_FOUND, Code.CONFLICT
                    ),
                },
            }
        },
        "/openapi.json": {
            "get": {
                **open_route,
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
    }
    for page, what in (("/", "The operator's page"), ("/docs", "This API, rendered")):
        paths[page] = {
            "get": {
                **open_route,
                "summary": what,
                "responses": {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Custom Vision scorer",
            "version": version,
            "description": (
                "Scores images with a Custom Vision ONNX export on the device. Every error "
                "has the shape {error: {code, message}}; with API keys set, every route but "
                "/healthz, /readyz, the pages and this document needs one."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "predictionKey": {"type": "apiKey", "in": "header", "name": "Prediction-Key"},
            },
        },
    }
