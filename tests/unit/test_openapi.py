"""The OpenAPI document: valid OpenAPI 3.1, in step with the routes, the error codes and the
committed copy in docs/."""

from __future__ import annotations

import json
from pathlib import Path

from scorer.core import Scorer, ScorerConfig
from scorer.errors import Code
from scorer.http import create_app
from scorer.model import inspect_export
from scorer.openapi import API_VERSION, document

from tests.conftest import REPO


def test_the_committed_copy_is_the_served_document() -> None:
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert committed == document(API_VERSION), "stale: run scripts/gen_openapi"


def test_every_flask_route_is_documented_and_nothing_else(demo_dir: Path) -> None:
    app = create_app(
        Scorer(inspect_export(demo_dir / "models" / "colors"), ScorerConfig("colors", "1"))
    )
    served = {
        (rule.rule.replace("<", "{").replace(">", "}"), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {
        (path, method)
        for path, methods in document(API_VERSION)["paths"].items()
        for method in methods
    }
    assert served == documented


def test_the_error_schema_names_every_code() -> None:
    error = document(API_VERSION)["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["properties"]["code"]["enum"] == [c.value for c in Code]


def test_it_is_valid_openapi_3_1() -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(document(API_VERSION))
    assert len(list(schema.get_all_operations())) == sum(
        len(methods) for methods in document(API_VERSION)["paths"].values()
    )


def test_the_relays_own_metrics_are_what_the_page_reads() -> None:
    """The scorer parses the relay's /metrics as the relay renders it (both modules' code)."""
    from relay.metrics import render
    from scorer.relay_status import parse

    stats = {
        "queued": 3,
        "queuedBytes": 900,
        "sent": 40,
        "upstreamMessages": 12,
        "deliveryStalledSeconds": 0.0,
        "dropped": 1,
        "droppedAlerts": 0,
        "results": 100,
        "alerts": 2,
        "duplicates": 0,
        "rejected": 5,
        "spoolsSetAside": 1,
        "lastSentTime": "2026-11-30T01:00:00.000Z",
    }
    assert parse(render(stats)) == {
        "queued": 3.0,
        "sent": 40.0,
        "upstreamMessages": 12.0,
        "dropped": 1.0,
        "rejected": 5.0,
        "deliveryStalledSeconds": 0.0,
        "spoolsSetAside": 1.0,
        "lastSentTimestamp": 1796000400.0,
    }
