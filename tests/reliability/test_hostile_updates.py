"""Model updates as a careless operator and a hostile model server drive them: the store
keeps its own names, no secret reaches a message, a rollback never races an update, a
download goes nowhere `/url` could not, and a bad archive is a final failure however Python
fails on it. In process, against a real model server on a socket."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from scorer.addresses import AddressRules
from scorer.auth import ApiKeys
from scorer.http import create_app
from scorer.model_store import ModelStore, StoreError
from scorer.model_update import ModelRequest, ModelUpdater, UpdateConflict

from tests.model_server import ModelServer, export_zip, model_server
from tests.updates import LAB, settled, started_updater, zip_entries

pytestmark = pytest.mark.reliability

KEY = "admin-key-0123456789abcdef"
SAS = "sv=2024-11-04&se=2027-01-01&sr=b&sp=r&sig=SECRETsignature%3D"


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with model_server() as running:
        yield running


@pytest.fixture
def updater(demo_dir: Path, tmp_path: Path) -> ModelUpdater:
    return started_updater(demo_dir, tmp_path)


@pytest.mark.parametrize("name", ["current.json", "failed.json", "v2.JSON"])
def test_a_version_can_never_take_a_name_of_the_stores_own_files(name: str) -> None:
    """`current.json` as a version unpacked into a folder of the pointer's name: every later
    update failed (`Is a directory`), and a restart did not mend it."""
    with pytest.raises(StoreError, match=r"not ending in '\.json'"):
        ModelRequest.parse({"version": name, "url": "https://h/m.zip", "sha256": "0" * 64})


def test_what_a_stop_left_in_the_store_is_removed_at_start(tmp_path: Path) -> None:
    """SIGTERM during a download left `.incoming-*/export.zip.part` (up to the model size
    limit) for good; an earlier release's version named `current.json` wedged the store."""
    store = ModelStore(tmp_path / "store")
    staging = store.staging()
    (staging / "export.zip.part").write_bytes(b"x" * 1000)
    (store.root / "current.json").mkdir()
    (store.root / "v1").mkdir()
    assert sorted(store.recover()) == sorted(["current.json", staging.name])
    assert sorted(p.name for p in store.root.iterdir()) == ["v1"]


def test_discard_and_prune_survive_an_unreadable_pointer(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for version in ("v1", "v2", "v3"):
        (store.root / version).mkdir(parents=True)
    (store.root / "current.json").write_text("{half")
    store.discard("v3")  # raised StoreError
    store.prune()  # raised StoreError; keeps what it cannot tell apart
    assert sorted(p.name for p in store.root.iterdir()) == ["current.json", "v1", "v2"]


def failures_seen(updater: ModelUpdater, caplog: pytest.LogCaptureFixture) -> str:
    """Everything a failed update said: the status (the twin's `model`), the store's
    record and the log."""
    record = updater.store.root / "failed.json"
    stored = record.read_text() if record.exists() else ""
    return json.dumps(settled(updater)) + stored + caplog.text


def test_no_sas_token_or_store_path_in_any_failure_message(
    updater: ModelUpdater,
    server: ModelServer,
    demo_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A URL with a space (a careless paste) failed in `http.client` quoting the whole URL,
    token included, into `lastError` and the ERROR line; load errors quoted store paths."""
    url, digest = server.add("/good.zip", export_zip(demo_dir / "models" / "colors"))
    not_a_zip, not_a_zip_digest = server.add("/bad.zip", b"not a zip")
    no_model, no_model_digest = server.add("/empty.zip", zip_entries({"labels.txt": b"a"}))
    server.redirects["/moved.zip"] = f"https://127.0.0.1:1/elsewhere.zip?{SAS}"
    cases = {
        "space": (url.replace("/good", "/go od") + "?" + SAS, digest),
        "missing": (server.url + "/missing.zip?" + SAS, digest),
        "redirect": (server.url + "/moved.zip?" + SAS, digest),
        "checksum": (url + "?" + SAS, "0" * 64),
        "unpack": (not_a_zip + "?" + SAS, not_a_zip_digest),
        "load": (no_model + "?" + SAS, no_model_digest),
    }
    store_root = str(updater.store.root)
    with caplog.at_level(logging.INFO):
        for name, (target, sha) in cases.items():
            caplog.clear()
            updater.request(ModelRequest(f"v-{name}", target, sha), retry_failed=True)
            seen = failures_seen(updater, caplog)
            assert '"state": "failed"' in seen, name
            assert "SECRETsignature" not in seen and "sig=" not in seen, name
            assert store_root not in seen, name


def test_a_url_with_spaces_or_control_characters_is_refused_before_any_request() -> None:
    for url in (f"https://h/m.zip?{SAS} ", "https://h/m\n.zip", "https://h/m\x7f.zip"):
        with pytest.raises(ValueError) as refused:
            ModelRequest.parse({"version": "v2", "url": url, "sha256": "0" * 64})
        assert "SECRET" not in str(refused.value) and "m.zip" not in str(refused.value)


def test_a_rollback_is_refused_while_an_update_runs_and_a_superseded_one_is_named(
    updater: ModelUpdater, server: ModelServer, demo_dir: Path
) -> None:
    """Serving v2 (v1 before it): an update to v3 then a rollback at once were both
    accepted; v3 was promoted and v1 pruned, then the rollback failed: the operator asked to
    go back and the device went forward."""
    for version in ("v1", "v2"):
        url, digest = server.add(f"/{version}.zip", export_zip(demo_dir / "models" / "colors"))
        updater.request(ModelRequest(version, url, digest))
        assert settled(updater)["version"] == version
    url, digest = server.add("/v3.zip", export_zip(demo_dir / "models" / "squares"))
    server.hold.add("/v3.zip")
    assert updater.request(ModelRequest("v3", url, digest))
    assert server.held.wait(10)
    with pytest.raises(UpdateConflict, match="update is under way"):
        updater.rollback()
    admin = create_app(updater.scorer, keys=ApiKeys([KEY]), updater=updater).test_client()
    refused = admin.post("/admin/model/rollback", headers={"Authorization": f"Bearer {KEY}"})
    assert (refused.status_code, refused.json["error"]["code"]) == (409, "CONFLICT")
    first = updater.request(ModelRequest("v4", url, digest))
    second = updater.request(ModelRequest("v5", url, digest))
    assert (first.queued, first.superseded) == (True, None)
    assert (second.queued, second.superseded) == (True, "v4")
    assert updater.status()["queued"] == "v5"
    server.release.set()
    assert settled(updater)["version"] == "v5"
    assert updater.rollback() == "v3"  # once it ended, "previous" means the one before it
    assert settled(updater)["version"] == "v3"


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("http://127.0.0.2:{port}/m.zip", "internal address"),  # loopback, not listed
        ("http://169.254.169.254/latest/meta-data/", "internal address"),  # cloud metadata
        ("http://10.255.255.1/m.zip", "internal address"),  # the plant's private network
    ],
    ids=["loopback", "metadata", "private"],
)
def test_downloads_follow_the_address_rules_of_url_on_every_redirect(
    updater: ModelUpdater, server: ModelServer, target: str, why: str
) -> None:
    """A redirect to loopback and to 169.254.169.254 was followed, and its answer shaped the
    error. Now refused after resolution and before connecting, on the first URL too."""
    port = server.url.rsplit(":", 1)[1]
    server.redirects["/jump.zip"] = target.format(port=port)
    updater.request(ModelRequest("v2", server.url + "/jump.zip", "0" * 64))
    status = settled(updater)
    assert why in status["lastError"] and "SCORER_MODEL_ALLOWED_ADDRESSES" in status["lastError"]
    assert server.requested == ["/jump.zip"]
    strict = AddressRules(private=True)  # nothing listed: not even the model server
    updater.limits = dataclasses.replace(LAB, rules=strict)
    updater.request(ModelRequest("v3", server.url + "/m.zip", "0" * 64))
    assert why in settled(updater)["lastError"]
    assert server.requested == ["/jump.zip"]  # never connected


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([("model.onnx", b"a"), ("model.onnx", b"b")], "twice"),
        ([("./", b""), ("labels.txt", b"a")], "names no file"),
    ],
    ids=["same-name-twice", "dot-entry"],
)
def test_a_bad_archive_is_a_final_failure_whatever_python_raises(
    updater: ModelUpdater, server: ModelServer, entries: list[tuple[str, bytes]], why: str
) -> None:
    """A name given twice failed as an OSError, taken as passing, so every reconnect of the
    twin downloaded it again; `./` raised IndexError."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as bundle:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
        for name, data in entries:
            bundle.writestr(name, data)
    url, digest = server.add("/bad.zip", buffer.getvalue())
    wanted = ModelRequest("v2", url, digest)
    assert updater.request(wanted)
    assert why in settled(updater)["lastError"]
    fetched = len(server.requested)
    assert not updater.request(wanted)  # the twin's next reconnect: not downloaded again
    assert len(server.requested) == fetched


def test_a_canary_named_dot_dot_is_a_final_failure(
    updater: ModelUpdater, server: ModelServer, demo_dir: Path
) -> None:
    export = {p.name: p.read_bytes() for p in (demo_dir / "models" / "colors").iterdir()}
    bundle = zip_entries({**export, "canary/expected.json": json.dumps({"..": "red"}).encode()})
    url, digest = server.add("/canary.zip", bundle)
    wanted = ModelRequest("v2", url, digest)
    assert updater.request(wanted)
    assert "image file name" in settled(updater)["lastError"]
    assert not updater.request(wanted)


def test_a_content_length_that_is_no_number_is_explained(
    updater: ModelUpdater, server: ModelServer
) -> None:
    url, digest = server.add("/m.zip", b"x" * 100)
    server.lengths["/m.zip"] = "abc"
    updater.request(ModelRequest("v2", url, digest))
    assert "invalid Content-Length" in settled(updater)["lastError"]
