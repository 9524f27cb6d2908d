"""Both protocol tables cover every error code; the committed stubs match the contract."""

from __future__ import annotations

import subprocess
from pathlib import Path

from scorer.core import Code
from scorer.http import HTTP_STATUS
from scorer.rpc import GRPC_STATUS

from tests.conftest import REPO


def test_every_code_is_in_both_tables() -> None:
    assert set(GRPC_STATUS) == set(Code) == set(HTTP_STATUS)


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    subprocess.run([str(REPO / "scripts" / "gen_proto"), str(tmp_path)], check=True)
    committed = REPO / "modules" / "scorer" / "scorer" / "generated"
    fresh = tmp_path / "scorer" / "generated"
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
    for name in names:
        assert (fresh / name).read_text() == (committed / name).read_text(), (
            f"{name} is stale: run scripts/gen_proto and commit the result"
        )
