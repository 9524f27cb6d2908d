"""The worker's heartbeat file and the health check's reading of it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from scorer import heartbeat
from scorer.heartbeat import STALE_AFTER_S, Heartbeat, problem, status_of


def test_the_state_is_written_when_it_changes_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    beat = Heartbeat(path)
    beat.beat(status_of(ready=False, failure=None))
    assert problem(path) == "loading"
    beat.beat(status_of(ready=True, failure=None))  # at once, within the beat's interval
    assert problem(path) is None
    beat.beat(status_of(ready=False, failure="an inference ran 61 s"))
    assert problem(path) == "failed: an inference ran 61 s"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heartbeat"]


def test_an_unchanged_state_touches_the_file_once_an_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "heartbeat"
    clock = [1000.0]
    monkeypatch.setattr(heartbeat.time, "monotonic", lambda: clock[0])
    beat = Heartbeat(path)
    beat.beat("ready")
    os.utime(path, (0, 0))
    beat.beat("ready")  # the same turn of the loop: nothing written
    assert path.stat().st_mtime == 0
    clock[0] += heartbeat.BEAT_INTERVAL_S
    beat.beat("ready")
    assert time.time() - path.stat().st_mtime < 5


def test_a_heartbeat_gone_quiet_is_unhealthy_whatever_it_said(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    Heartbeat(path).beat("ready")
    now = path.stat().st_mtime
    assert problem(path, now=now + STALE_AFTER_S - 1) is None
    stale = problem(path, now=now + STALE_AFTER_S + 5)
    assert stale == f"the worker's last heartbeat was {STALE_AFTER_S + 5:.0f} s ago (ready)"
    # written before the clock was set back an hour: not fresh for another hour
    ahead = problem(path, now=now - 3600)
    assert ahead == "the worker's last heartbeat is 3600 s ahead of the clock (ready)"


def test_no_heartbeat_is_unhealthy_and_says_so(tmp_path: Path) -> None:
    found = problem(tmp_path / "absent")
    assert found is not None and found.startswith("no heartbeat")


def test_stopping_removes_the_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    beat = Heartbeat(path)
    beat.beat("ready")
    beat.stop()
    assert not path.exists()
    beat.beat("ready")  # a later beat writes it whole again
    assert problem(path) is None


def test_a_file_that_cannot_be_written_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the heartbeat's folder should be")
    beat = Heartbeat(blocked / "heartbeat")
    with caplog.at_level("WARNING", logger="scorer.heartbeat"):
        for ready in (False, True, True):
            beat.beat(status_of(ready, None))
        beat.stop()
    assert len(caplog.records) == 2  # the first failed write, and the failed removal
    assert "cannot write the heartbeat" in caplog.records[0].getMessage()
