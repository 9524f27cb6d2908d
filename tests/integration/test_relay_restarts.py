"""The relay module across restarts with a poison input in its durable inbox (a real socket:
the module serves /metrics)."""

from __future__ import annotations

import json
from pathlib import Path

from relay.spool import Spool

from tests.conftest import free_port
from tests.unit.test_policy import result


def test_an_input_that_crashes_its_handling_is_quarantined_after_three_starts(
    tmp_path: Path,
) -> None:
    """The crash loop of a poison input: each start tries it once more, then lets it go."""
    from relay.__main__ import MAX_ATTEMPTS, RelayModule
    from relay.settings import Settings

    settings = Settings(spool_path=tmp_path / "relay.db", metrics_port=free_port())
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    spool.receive("poison", json.dumps(result(("a", 0.5), rid="p")).encode())
    spool.close()
    for start in range(MAX_ATTEMPTS + 1):
        module = RelayModule(settings)

        def crash(payload: bytes, message_id: str = "") -> str:
            raise RuntimeError("a bug that this input triggers")

        module.relay.handle = crash  # type: ignore[method-assign]
        module.replay_unhandled()  # what `run` does first at every start
        module.metrics.server.server_close()
        module.spool.close()
        reopened = Spool(settings.spool_path, settings.spool_max_bytes)
        left = reopened.unhandled()
        reopened.close()
        assert bool(left) == (start < MAX_ATTEMPTS)
    final = Spool(settings.spool_path, settings.spool_max_bytes)
    assert final.counters()["rejected"] == 1
    assert f"failed {MAX_ATTEMPTS} times" in final.dead_letters()[0][2]
