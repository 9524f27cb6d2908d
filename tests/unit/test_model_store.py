"""Unpacking exports that came over the network, and the versioned model store."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest
from scorer.archive import ArchiveError, ArchiveLimits, export_folder, unpack
from scorer.model_store import Failure, ModelStore, StoreError, check_version
from scorer.model_update import ModelRequest


def _zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, "/etc/passwd")
    return path


def test_an_export_zip_unpacks_into_its_folder(tmp_path: Path) -> None:
    bundle = _zip(tmp_path / "e.zip", {"model.onnx": b"onnx", "labels.txt": b"a\n"})
    unpack(bundle, tmp_path / "out")
    assert (tmp_path / "out" / "labels.txt").read_bytes() == b"a\n"
    assert export_folder(tmp_path / "out") == tmp_path / "out"
    nested = _zip(tmp_path / "n.zip", {"export/model.onnx": b"x", "export/labels.txt": b"a"})
    unpack(nested, tmp_path / "nested")
    assert export_folder(tmp_path / "nested") == tmp_path / "nested" / "export"


@pytest.mark.parametrize(
    ("entries", "symlink", "why"),
    [
        ({"../evil.txt": b"x"}, None, "outside"),
        ({"/etc/cron.d/evil": b"x"}, None, "outside"),
        ({"a/../../evil": b"x"}, None, "outside"),
        ({"C:/evil": b"x"}, None, "outside"),
        ({"model.onnx": b"x"}, "labels.txt", "symbolic link"),
        ({"bomb.bin": b"\0" * 20_000_000}, None, "more than 100x"),
        ({f"f{i}": b"x" for i in range(201)}, None, "201 entries"),
    ],
)
def test_a_hostile_zip_is_refused_and_leaves_nothing(
    tmp_path: Path, entries: dict[str, bytes], symlink: str | None, why: str
) -> None:
    bundle = _zip(tmp_path / "e.zip", entries, symlink)
    with pytest.raises(ArchiveError, match=why):
        unpack(bundle, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_the_total_size_is_counted_while_writing(tmp_path: Path) -> None:
    bundle = _zip(tmp_path / "e.zip", {"a": b"x" * 600, "b": b"y" * 600})
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        unpack(bundle, tmp_path / "out", ArchiveLimits(max_bytes=1000, max_ratio=1000))
    assert not (tmp_path / "out").exists()


def test_a_truncated_or_foreign_file_is_not_a_readable_zip(tmp_path: Path) -> None:
    whole = _zip(tmp_path / "e.zip", {"model.onnx": b"x" * 10_000}).read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.zip").write_bytes(b"just text")
    for name in ("cut.zip", "text.zip"):
        with pytest.raises(ArchiveError, match="not a readable zip"):
            unpack(tmp_path / name, tmp_path / name.replace(".zip", ""))


def _installed(store: ModelStore, version: str) -> Path:
    staging = store.staging()
    (staging / "labels.txt").write_text(version)
    return store.install(version, staging)


def test_the_store_promotes_keeps_the_previous_and_prunes_the_rest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", keep=2)
    assert store.current() is None
    for number, version in enumerate(("v1", "v2", "v3", "v4")):
        _installed(store, version)
        promoted = store.promote(version, f"{number:064x}")
    assert promoted.version == "v4" and promoted.previous == "v3"
    left = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert left == ["current.json", "v3", "v4"]  # no temporary files, no older versions
    reopened = ModelStore(tmp_path / "store").current()  # what a restart reads
    assert reopened == promoted
    back = store.promote("v3", "0" * 64)  # a rollback is a promotion of the previous
    assert back.version == "v3" and back.previous == "v4"


def test_a_pointer_to_a_missing_folder_or_garbage_is_not_served(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    _installed(store, "v1")
    store.promote("v1", "0" * 64)
    (tmp_path / "store" / "v1" / "labels.txt").unlink()
    (tmp_path / "store" / "v1").rmdir()
    assert store.current() is None
    (tmp_path / "store" / "current.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        store.current()


@pytest.mark.parametrize("version", ["", "../up", ".hidden", "a/b", "x" * 65, "v 1"])
def test_version_names_that_are_no_folder_names_are_refused(version: str) -> None:
    with pytest.raises(StoreError):
        check_version(version)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("v2", "must be"),
        ({"version": 2, "url": "https://x", "sha256": "0" * 64}, "version"),
        ({"version": "../x", "url": "https://x", "sha256": "0" * 64}, "version"),
        ({"version": "v2", "sha256": "0" * 64}, "url"),
        ({"version": "v2", "url": "https://x", "sha256": "abc"}, "64 hex"),
    ],
)
def test_a_model_request_names_what_is_wrong(value: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        ModelRequest.parse(value)


def test_a_model_request_takes_the_hash_in_lower_case() -> None:
    wanted = ModelRequest.parse({"version": "v2", "url": "https://x/m.zip", "sha256": "AB" * 32})
    assert wanted == ModelRequest("v2", "https://x/m.zip", "ab" * 32)


def test_the_failure_record_survives_a_new_store_and_a_damaged_one_is_none(
    tmp_path: Path,
) -> None:
    request = ModelRequest("v2", "https://h/v2.zip?sig=token", "a" * 64)
    store = ModelStore(tmp_path)
    assert store.failure() is None
    store.remember_failure(
        Failure(request.digest(), "v2", "ValueError: bad", "2026-11-30T00:00:00Z")
    )
    again = ModelStore(tmp_path).failure()
    assert again is not None and again.request == request.digest() and again.error.endswith("bad")
    assert request.digest() != ModelRequest("v2", "https://h/v2.zip", "a" * 64).digest()
    (tmp_path / "failed.json").write_text("[1, 2")
    assert store.failure() is None
    (tmp_path / "failed.json").write_text('{"unexpected": 1}')
    assert store.failure() is None
    store.forget_failure()
    store.forget_failure()  # nothing to forget: no error
    assert store.failure() is None
