"""Model updates in process for tests: an updater on the demo colour model with its store in
a temporary folder, downloading from the loopback model server (`model_server`)."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

from scorer.addresses import AddressRules
from scorer.archive import ArchiveLimits
from scorer.core import Scorer, ScorerConfig
from scorer.model import ModelOptions, inspect_export
from scorer.model_download import DownloadLimits
from scorer.model_store import ModelStore
from scorer.model_update import ModelUpdater, UpdateState
from scorer.session import open_session

LOOPBACK = AddressRules.parse(("127.0.0.1",), private=True)  # the model server's
LAB = DownloadLimits(max_bytes=1 << 24, deadline_s=30, allow_http=True, rules=LOOPBACK)


def started_updater(demo_dir: Path, tmp_path: Path, store: Path | None = None) -> ModelUpdater:
    """The updater of a scorer started on the demo colour model, its store in `tmp_path`
    (or in `store`)."""
    cache = tmp_path / "cache"
    spec = inspect_export(demo_dir / "models" / "colors", ModelOptions(), cache)
    scorer = Scorer(spec, ScorerConfig("colors", "image-default"))
    scorer.load(lambda s: open_session(s, ["CPUExecutionProvider"]))
    return ModelUpdater(
        scorer,
        ModelStore(store or tmp_path / "store"),
        inspect=lambda folder: inspect_export(folder, ModelOptions(), cache),
        open_model=lambda s: open_session(s, ["CPUExecutionProvider"]),
        limits=LAB,
        unpack_limits=ArchiveLimits(max_bytes=1 << 24),
    )


def settled(updater: ModelUpdater) -> dict:
    """The status once the update and any waiting one ended."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = updater.status()
        done = status["state"] in (UpdateState.READY.value, UpdateState.FAILED.value)
        if done and not updater.busy:
            return status
        time.sleep(0.02)
    raise AssertionError(f"the update did not settle: {updater.status()}")


def zip_entries(entries: dict[str, bytes]) -> bytes:
    """A zip of `entries` (name: content), compressed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return buffer.getvalue()
