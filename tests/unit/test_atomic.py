"""Files replaced whole, and nothing left behind by a write that fails."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
from scorer.atomic import write_atomically

SCORER = Path(__file__).resolve().parents[2] / "modules" / "scorer"


@pytest.mark.parametrize("durable", [False, True])
def test_the_file_is_replaced_whole(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "deeper" / "pointer.json"
    write_atomically(target, b"first", durable)
    write_atomically(target, b"second", durable)
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["pointer.json"]
    assert target.stat().st_mode & 0o777 == 0o600  # keys and certificates go this way too


def test_a_write_the_volume_refuses_leaves_the_old_file_and_nothing_else(tmp_path: Path) -> None:
    """A file size limit stands in for a full volume: the write fails part-way through."""
    target = tmp_path / "pointer.json"
    target.write_bytes(b"old")
    script = (
        "import resource, sys; from pathlib import Path\n"
        f"sys.path.insert(0, {str(SCORER)!r})\n"
        "from scorer.atomic import write_atomically\n"
        "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))\n"
        "try:\n"
        f"    write_atomically(Path({str(target)!r}), b'x' * 100_000)\n"
        "except OSError as error:\n"
        "    print(error.errno)\n"
    )
    refused = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert refused.stdout.strip() == str(errno.EFBIG)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["pointer.json"]
