"""Model versions on the module's volume: `<store>/<version>/` and a `current.json` pointer.

The pointer is replaced atomically, so a restart (or a power cut mid-update) serves exactly
the version that was promoted last, never half of one, and never falls back to the image's
default model once an update was promoted. The previous version is kept for rollback; older
ones are pruned.

Version names and the store's own files never meet: the store's files are `*.json` (the
pointer, the failure record) and `.*` (staging folders, files being written), and a version
name may be neither (`VERSION_RULE`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_atomically
from .cache import cache_root

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)
POINTER = "current.json"
FAILURE = "failed.json"
STAGING_PREFIX = ".incoming-"
# One rule for every version name (the twin's, the admin route's, the OpenAPI document's):
# 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, not ending in
# `.json`, so that no version can take the name of one of the store's own files.
VERSION_PATTERN = r"^(?!.*\.[Jj][Ss][Oo][Nn]$)[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VERSION_RULE = (
    "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, not ending in"
    " '.json' (the store's own files)"
)
VERSION = re.compile(VERSION_PATTERN)


class StoreError(ValueError):
    """A version name or a pointer the store cannot use."""


@dataclasses.dataclass(frozen=True)
class Promoted:
    """What the pointer says: the version served, its model's hash, the one before it."""

    version: str
    sha256: str
    previous: str | None


@dataclasses.dataclass(frozen=True)
class Failure:
    """A requested model that failed for a reason trying again cannot mend, kept so that a
    restart does not download it again. The request is kept as a digest: its URL may carry
    a SAS token, which is never written to the volume."""

    request: str
    version: str
    error: str
    at: str


def check_version(version: str) -> str:
    """A version name usable as a folder name, or StoreError."""
    if not VERSION.fullmatch(version):
        raise StoreError(f"version {version!r}: {VERSION_RULE}")
    return version


class ModelStore:
    """Versions unpacked under `root`; `keep` of them at most (the current and the previous
    always among them)."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = root
        self.keep = max(2, keep)

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelStore:
        """`SCORER_MODEL_STORE`, else `models/` in the cache."""
        root = settings.model_store or cache_root(settings.model_dir, settings.cache_dir) / "models"
        return cls(root, settings.model_keep)

    def folder(self, version: str) -> Path:
        return self.root / check_version(version)

    def current(self) -> Promoted | None:
        """The promoted version, or None (never promoted, or its folder is gone)."""
        try:
            data = json.loads((self.root / POINTER).read_text())
            promoted = Promoted(data["version"], data["sha256"], data.get("previous"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StoreError(f"{self.root / POINTER}: unreadable ({error})") from None
        return promoted if self.folder(promoted.version).is_dir() else None

    def _promoted_or_none(self) -> Promoted | None:
        """The pointer, or None when it is missing or unreadable."""
        try:
            return self.current()
        except StoreError:
            return None

    def staging(self) -> Path:
        """A fresh folder on the store's volume to unpack into (renamed into place after)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))

    def recover(self) -> list[str]:
        """At start, before any update runs: remove what a stop left behind (staging
        folders, with the partial download a SIGTERM left in them) and folders at the
        store's own file names (a version named `current.json` by an earlier release, which
        failed every later update); the names removed."""
        if not self.root.is_dir():
            return []
        removed = []
        for path in self.root.iterdir():
            stale = path.name.startswith(STAGING_PREFIX) or path.name in (POINTER, FAILURE)
            if stale and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        if removed:
            log.warning("model store: removed what an earlier run left: %s", ", ".join(removed))
        return removed

    def install(self, version: str, unpacked: Path) -> Path:
        """Move an unpacked version into place (an existing one of that name is replaced)."""
        folder = self.folder(version)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(unpacked, folder)
        return folder

    def promote(self, version: str, sha256: str) -> Promoted:
        """Point at `version` (atomically), remembering the one before; prune old ones. A
        damaged pointer is replaced."""
        before = self._promoted_or_none()
        previous = before.previous if before and before.version == version else None
        if before and before.version != version:
            previous = before.version
        promoted = Promoted(check_version(version), sha256, previous)
        self._write(POINTER, dataclasses.asdict(promoted))
        self.prune()
        return promoted

    def _write(self, name: str, data: dict[str, str | None]) -> None:
        """Replace the file `name` atomically: a power cut leaves the old one or the new."""
        write_atomically(self.root / name, json.dumps(data).encode(), durable=True)

    def failure(self) -> Failure | None:
        """The request that failed for good last, or None (an unreadable record is none)."""
        try:
            return Failure(**json.loads((self.root / FAILURE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def remember_failure(self, failure: Failure) -> None:
        self._write(FAILURE, dataclasses.asdict(failure))

    def forget_failure(self) -> None:
        (self.root / FAILURE).unlink(missing_ok=True)

    def discard(self, version: str) -> None:
        """Remove a version that failed to load, unless it is the current or previous one
        (an unreadable pointer names neither: the version failed, so it is not served)."""
        promoted = self._promoted_or_none()
        if promoted is None or version not in (promoted.version, promoted.previous):
            shutil.rmtree(self.folder(version), ignore_errors=True)

    def prune(self) -> None:
        """Remove versions beyond `keep` (oldest first) and left-over staging folders; with
        an unreadable pointer, no version (which are current and previous is unknown)."""
        promoted = self._promoted_or_none()
        kept = {promoted.version, promoted.previous} if promoted else set()
        folders = sorted(
            (p for p in self.root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
        )
        for path in folders:
            if path.name.startswith(STAGING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
        if promoted is None and (self.root / POINTER).exists():
            return
        versions = [p for p in folders if VERSION.fullmatch(p.name) and p.name not in kept]
        for path in versions[: max(0, len(versions) - (self.keep - len(kept)))]:
            shutil.rmtree(path, ignore_errors=True)
