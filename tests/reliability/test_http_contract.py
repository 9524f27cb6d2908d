"""The HTTP contract checked against the live server: schemathesis generates requests from
/openapi.json (bounded) and checks every answer: no 5xx, statuses, content types, headers
and bodies as documented."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.scorer_process import ScorerProcess

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    )
)
KEY = "contract-test-key-0123456789"


def schemathesis(
    server: ScorerProcess, workdir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """The CLI run from `workdir`, where it keeps its cache (not in the checkout)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            server.url + "/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "15",
            "--seed",
            "20261130",
            "--no-color",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=workdir,
    )


@pytest.mark.parametrize("keys", [False, True], ids=["open", "with-keys"])
def test_every_answer_conforms_to_the_openapi_document(
    start_scorer: Callable[..., ScorerProcess], demo_dir: Path, tmp_path: Path, keys: bool
) -> None:
    settings = {"PROVIDERS": "cpu", **({"API_KEYS": KEY} if keys else {})}
    server = start_scorer(demo_dir / "models" / "squares", **settings)
    header = ["-H", f"Authorization: Bearer {KEY}"] if keys else []
    result = schemathesis(server, tmp_path, *header)
    assert result.returncode == 0, result.stdout[-6000:]
    assert " passed" in result.stdout and "Traceback" not in server.log
