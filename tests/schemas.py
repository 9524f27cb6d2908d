"""IoT Edge deployment schemas from ../shared/schemas, resolved locally (never the network)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from tests.conftest import SHARED

SCHEMAS = SHARED / "schemas"
BASE = "https://json.schemastore.org/"


def validator(name: str) -> jsonschema.Draft4Validator:
    """A validator for `name` (e.g. azure-iot-edge-deployment-template-4.0.json)."""
    if not SCHEMAS.is_dir():
        pytest.skip(f"{SCHEMAS} is absent: the IoT Edge schemas are not available here")
    registry: Registry = Registry()
    for path in SCHEMAS.glob("*.json"):
        resource = Resource.from_contents(json.loads(path.read_text()), DRAFT4)
        registry = registry.with_resource(BASE + path.name, resource)
    schema = registry[BASE + name].contents
    return jsonschema.Draft4Validator(schema, registry=registry)


def errors(name: str, document: Any) -> list[str]:
    """Every violation, as `path: message` lines (empty when the document is valid)."""
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(name).iter_errors(document)
    ]
