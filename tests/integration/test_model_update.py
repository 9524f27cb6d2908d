"""Model updates in process: resumable, checked downloads from a local server (a real
socket), and the updater swapping real ONNX Runtime sessions while refusing bad exports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from scorer.model_download import DownloadError, DownloadLimits, download
from scorer.model_update import ModelRequest, ModelUpdater

from tests.conftest import fill
from tests.model_server import ModelServer, export_zip, model_server
from tests.scorer_process import free_port
from tests.updates import LAB, LOOPBACK, settled, started_updater, zip_entries


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with model_server() as running:
        yield running


def test_a_broken_download_resumes_where_it_stopped(server: ModelServer, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000
    url, digest = server.add("/m.zip", data)
    server.cut["/m.zip"] = 300_000
    saved = download(url, tmp_path / "m.zip", digest, LAB)
    assert saved.read_bytes() == data
    assert server.ranges == ["bytes=0-", "bytes=300000-"]
    assert not (tmp_path / "m.zip.part").exists()


def test_downloads_refuse_http_a_wrong_hash_the_size_limit_and_a_missing_file(
    server: ModelServer, tmp_path: Path
) -> None:
    url, digest = server.add("/m.zip", b"x" * 5000)
    with pytest.raises(DownloadError, match="must be https"):
        download(url, tmp_path / "a", digest, DownloadLimits())
    with pytest.raises(DownloadError, match="SHA-256 is"):
        download(url, tmp_path / "b", "0" * 64, LAB)
    assert not (tmp_path / "b.part").exists() and not (tmp_path / "b").exists()
    with pytest.raises(DownloadError, match="limit is 1000"):
        download(url, tmp_path / "c", digest, DownloadLimits(1000, 30, True, rules=LOOPBACK))
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url + "/nothing.zip", tmp_path / "d", digest, LAB)


@pytest.fixture
def updater(demo_dir: Path, tmp_path: Path) -> ModelUpdater:
    return started_updater(demo_dir, tmp_path)


def test_an_update_swaps_the_model_and_every_bad_one_leaves_it_serving(
    updater: ModelUpdater, server: ModelServer, demo_dir: Path
) -> None:
    red = (demo_dir / "images" / "red.jpg").read_bytes()
    url, digest = server.add("/squares.zip", export_zip(demo_dir / "models" / "squares"))
    assert updater.request(ModelRequest("v2", url, digest))
    status = settled(updater)
    assert status["state"] == "ready" and status["version"] == "v2" and not status["lastError"]
    result = updater.scorer.score(red)
    assert result.model_version == "v2" and result.kind == "detection"
    assert not updater.request(ModelRequest("v2", url, digest))  # served already: nothing to do

    export = export_zip(demo_dir / "models" / "colors")
    bad = {
        "slip": (zip_entries({"../evil": b"x", "model.onnx": b"x"}), None, "outside"),
        "bomb": (zip_entries({"big.bin": b"\0" * 50_000_000}), None, "more than 100x"),
        "checksum": (export, "0" * 64, "SHA-256 is"),
        "truncated": (export[: len(export) // 2], None, "not a readable zip"),
        "not-an-export": (zip_entries({"README.md": b"hello"}), None, "missing"),
    }
    for name, (data, claimed, why) in bad.items():
        url, digest = server.add(f"/{name}.zip", data)
        updater.request(ModelRequest(f"bad-{name}", url, claimed or digest))
        status = settled(updater)
        assert status["state"] == "failed" and why in status["lastError"], name
        assert status["version"] == "v2", name  # still serving what it served
        assert updater.scorer.score(red).model_version == "v2"
    stored = sorted(p.name for p in updater.store.root.iterdir())
    assert stored == ["current.json", "failed.json", "v2"]  # failed.json: the last failure
    assert updater.store.failure() is not None
    assert updater.store.failure().version == "bad-not-an-export"


def test_rollback_serves_the_previous_version_again(
    updater: ModelUpdater, server: ModelServer, demo_dir: Path
) -> None:
    with pytest.raises(ValueError, match="no previous version"):
        updater.rollback()
    for version, model in (("v2", "squares"), ("v3", "colors")):
        url, digest = server.add(f"/{version}.zip", export_zip(demo_dir / "models" / model))
        updater.request(ModelRequest(version, url, digest))
        assert settled(updater)["version"] == version
    assert updater.rollback() == "v2"
    status = settled(updater)
    assert status["version"] == "v2" and status["previous"] == "v3"
    assert updater.scorer.score((demo_dir / "images" / "red.jpg").read_bytes()).kind == "detection"


def test_a_model_that_disagrees_with_its_canary_images_is_not_promoted(
    updater: ModelUpdater, server: ModelServer, demo_dir: Path
) -> None:
    export = {p.name: p.read_bytes() for p in (demo_dir / "models" / "colors").iterdir()}
    red = (demo_dir / "images" / "red.jpg").read_bytes()
    for version, expected in (("agrees", "red"), ("disagrees", "blue")):
        bundle = zip_entries(
            {
                **export,
                "canary/red.jpg": red,
                "canary/expected.json": json.dumps({"red.jpg": expected}).encode(),
            }
        )
        url, digest = server.add(f"/{version}.zip", bundle)
        updater.request(ModelRequest(version, url, digest))
        status = settled(updater)
    assert status["state"] == "failed"
    assert "canary images disagree: red.jpg: red (expected blue)" in status["lastError"]
    assert status["version"] == "agrees"  # the one that agreed keeps serving


def test_a_damaged_store_pointer_neither_breaks_the_status_nor_an_update(
    updater: ModelUpdater, server: ModelServer, demo_dir: Path
) -> None:
    updater.store.root.mkdir(parents=True)
    (updater.store.root / "current.json").write_text("{half a file")
    assert updater.status()["previous"] is None  # no exception: the status still answers
    url, digest = server.add("/v2.zip", export_zip(demo_dir / "models" / "squares"))
    assert updater.request(ModelRequest("v2", url, digest))
    assert settled(updater)["state"] == "ready"
    assert updater.store.current() is not None and updater.store.current().version == "v2"


def test_a_model_that_failed_for_good_is_not_downloaded_again_until_it_changes(
    updater: ModelUpdater, server: ModelServer, demo_dir: Path
) -> None:
    """The twin asks for its desired model again at every reconnect: one with a wrong hash
    is fetched once, not at each of them; a corrected one, or an operator asking, is."""
    export = export_zip(demo_dir / "models" / "squares")
    url, digest = server.add("/v2.zip", export)
    wrong = ModelRequest("v2", url, "0" * 64)
    assert updater.request(wrong)
    assert "SHA-256 is" in settled(updater)["lastError"]
    fetched = len(server.ranges)
    for _ in range(3):  # three reconnects
        assert not updater.request(wrong)
    assert len(server.ranges) == fetched and updater.status()["state"] == "failed"
    assert updater.request(wrong, retry_failed=True)  # POST /admin/model
    assert settled(updater)["state"] == "failed" and len(server.ranges) > fetched
    assert updater.request(ModelRequest("v2", url, digest))  # the desired model corrected
    assert settled(updater)["version"] == "v2"


def test_a_model_that_failed_for_good_is_not_downloaded_again_after_a_restart(
    updater: ModelUpdater, server: ModelServer, demo_dir: Path, tmp_path: Path
) -> None:
    """The failure is kept in the store (without the URL's SAS token): the restarted module
    reports it and does not fetch the model when the twin asks for it again."""
    url, _ = server.add("/v2.zip", export_zip(demo_dir / "models" / "squares"))
    wrong = ModelRequest("v2", url + "?sig=secret-token", "0" * 64)
    assert updater.request(wrong)
    before = settled(updater)
    fetched = len(server.ranges)
    restarted = started_updater(demo_dir, tmp_path)
    after = restarted.status()
    assert (after["state"], after["lastError"]) == ("failed", before["lastError"])
    assert not restarted.request(wrong) and len(server.ranges) == fetched
    assert not any("secret-token" in path.read_text() for path in tmp_path.glob("store/*.json"))
    assert restarted.request(ModelRequest("v2", url, "1" * 64))  # a changed request is tried
    settled(restarted)
    assert len(server.ranges) > fetched


def test_a_model_the_network_failed_to_bring_is_tried_again(
    updater: ModelUpdater, server: ModelServer, demo_dir: Path
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/v2.zip"  # connections are refused
    url, digest = server.add("/v2.zip", export_zip(demo_dir / "models" / "squares"))
    offline = ModelRequest("v2", unreachable, digest)
    assert updater.request(offline)
    assert "download failed" in settled(updater)["lastError"]
    assert updater.request(offline)  # at the next reconnect it is tried again
    assert settled(updater)["state"] == "failed"
    assert updater.request(ModelRequest("v2", url, digest))
    assert settled(updater)["version"] == "v2"


def test_an_update_onto_a_full_volume_fails_for_now_and_leaves_nothing_behind(
    server: ModelServer, demo_dir: Path, tmp_path: Path, small_volume: Path
) -> None:
    store = small_volume / "store"
    updater = started_updater(demo_dir, tmp_path, store)
    red = (demo_dir / "images" / "red.jpg").read_bytes()
    url, digest = server.add("/v2.zip", export_zip(demo_dir / "models" / "squares"))
    ballast = fill(small_volume)
    assert updater.request(ModelRequest("v2", url, digest))
    status = settled(updater)
    assert status["state"] == "failed" and "No space left on device" in status["lastError"]
    assert updater.scorer.score(red).model_version == "image-default"  # still serving
    assert not [p for p in small_volume.rglob("*") if p.is_file() and p != ballast]
    ballast.unlink()  # space returns: a full volume was no verdict on the model
    assert updater.request(ModelRequest("v2", url, digest))
    assert settled(updater)["version"] == "v2"
