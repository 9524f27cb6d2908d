"""Unpack a Custom Vision export zip that came over the network, trusting nothing in it.

Refused: names that are absolute, climb out (`..`), carry a drive or a backslash path, or
are symbolic links (zip-slip); names that are empty or given twice; more than `max_entries`
files; more than `max_bytes` in all or an entry compressed more than `max_ratio` times (zip
bombs). Sizes are counted while writing, not taken from the zip's own headers. Whatever
Python raises on a bad archive is an `ArchiveError` (final: the same zip fails the same way);
only a failing volume (a full disk) stays an `OSError`.
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20
# The volume failing, not the archive: a later try may do
VOLUME_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


class ArchiveError(ValueError):
    """The zip cannot be unpacked safely; the message says why."""


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int = 1 << 30  # unpacked, all entries together
    max_ratio: int = 100  # unpacked / compressed, per entry (ONNX weights compress ~1.1x)
    max_entries: int = 200


def _safe_name(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    path = PurePosixPath(name)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"{name!r} is a symbolic link")
    if not path.parts or path.parts == (".",):
        raise ArchiveError(f"{name!r} names no file")
    if "\\" in name or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        raise ArchiveError(f"{name!r} points outside the archive's folder")
    return path


def unpack(archive: Path, target: Path, limits: ArchiveLimits = ArchiveLimits()) -> None:
    """Unpack `archive` into the new folder `target` (removed again if anything is refused)."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            entries = bundle.infolist()
            if len(entries) > limits.max_entries:
                raise ArchiveError(f"{len(entries)} entries; at most {limits.max_entries}")
            target.mkdir(parents=True)
            written = 0
            seen: set[PurePosixPath] = set()
            for info in entries:
                relative = _safe_name(info)
                if relative in seen and not info.is_dir():
                    raise ArchiveError(f"{info.filename!r} is in the archive twice")
                seen.add(relative)
                if info.file_size > limits.max_ratio * max(info.compress_size, 1):
                    raise ArchiveError(
                        f"{info.filename!r} unpacks {info.file_size} bytes from "
                        f"{info.compress_size}: more than {limits.max_ratio}x"
                    )
                destination = target.joinpath(*relative.parts)
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as source, destination.open("xb") as sink:
                    while chunk := source.read(CHUNK):
                        written += len(chunk)
                        if written > limits.max_bytes:
                            raise ArchiveError(f"unpacks to more than {limits.max_bytes} bytes")
                        sink.write(chunk)
    except ArchiveError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    except OSError as error:
        shutil.rmtree(target, ignore_errors=True)
        if error.errno in VOLUME_ERRNOS:
            raise
        raise ArchiveError(f"cannot be unpacked ({error.strerror or error})") from None
    except Exception as error:  # noqa: BLE001 - zipfile's many ways to fail on a bad zip
        shutil.rmtree(target, ignore_errors=True)
        raise ArchiveError(f"not a readable zip ({type(error).__name__}: {error})") from None


def export_folder(unpacked: Path) -> Path:
    """The folder holding the export: the top, or its one subfolder when the zip has one."""
    children = [p for p in unpacked.iterdir() if not p.name.startswith("__MACOSX")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return unpacked
