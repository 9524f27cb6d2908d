"""A spool file SQLite finds damaged is set aside, and the relay starts on an empty spool
instead of failing every start; what is merely unreachable is not mistaken for damage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from relay.policy import MessageKind, Outgoing
from relay.spool import Counter, Spool

MAX_BYTES = 10_000_000


def spool_of(path: Path, messages: int) -> bytes:
    """A closed spool holding `messages` alerts; its file's bytes."""
    spool = Spool(path, MAX_BYTES)
    for i in range(messages):
        with spool.transaction() as db:
            spool.enqueue(db, Outgoing(MessageKind.ALERT, b"a" * 500, f"alert-{i}"))
    spool.close()
    return path.read_bytes()


def test_a_file_that_is_not_a_database_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "relay.db"
    path.write_bytes(b"\x00garbage left by a power cut" * 100)
    spool = Spool(path, MAX_BYTES)
    assert spool.depth() == (0, 0)
    assert spool.counters()[Counter.SPOOLS_SET_ASIDE.value] == 1
    assert (tmp_path / "relay.db.corrupt").read_bytes().startswith(b"\x00garbage")
    assert "file is not a database" in caplog.text
    with spool.transaction() as db:  # the new spool works
        spool.enqueue(db, Outgoing(MessageKind.ALERT, b"{}", "after"))
    assert spool.depth()[0] == 1


def test_a_spool_damaged_inside_is_found_at_start_and_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    original = spool_of(path, 300)
    page = 4096
    assert len(original) > 20 * page
    damaged = bytearray(original)
    damaged[10 * page : 12 * page] = b"\xff" * (2 * page)  # two pages of the outbox's tree
    path.write_bytes(bytes(damaged))
    spool = Spool(path, MAX_BYTES)
    assert spool.depth() == (0, 0)
    assert spool.counters()[Counter.SPOOLS_SET_ASIDE.value] == 1
    assert (tmp_path / "relay.db.corrupt").read_bytes() == bytes(damaged)


def test_a_sound_spool_keeps_its_messages_and_sets_nothing_aside(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    spool_of(path, 30)
    spool = Spool(path, MAX_BYTES)
    assert spool.depth()[0] == 30
    assert Counter.SPOOLS_SET_ASIDE.value not in spool.counters()
    assert not (tmp_path / "relay.db.corrupt").exists()


def test_only_the_last_damaged_spool_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    for round_ in range(3):
        path.write_bytes(f"damaged {round_}".encode() * 100)
        Spool(path, MAX_BYTES).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relay.db", "relay.db.corrupt"]
    assert (tmp_path / "relay.db.corrupt").read_bytes().startswith(b"damaged 2")


def test_a_spool_that_cannot_be_opened_is_not_taken_for_damaged(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    path.mkdir()  # a folder where the file should be: SQLite cannot open it at all
    with pytest.raises(sqlite3.OperationalError):
        Spool(path, MAX_BYTES)
    assert path.is_dir() and not (tmp_path / "relay.db.corrupt").exists()
