"""Model updates while serving: download, check, unpack, load and warm a new export in the
background, check it on the export's canary images if it has any, then swap it in; the
current model answers every request until then.

A failure at any step leaves the current model serving and is reported (`state: failed`,
`lastError`, with URLs' query strings and absolute paths taken out: it goes to IoT Hub). One
update runs at a time; a request that arrives meanwhile runs after it (only the newest one
waiting is kept: it supersedes the one waiting before, and says so). A rollback is refused
while an update runs or waits (`UpdateConflict`): which version is "previous" is only known
once it ends.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import hashlib
import json
import logging
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import archive
from .core import ScoreOptions, Scorer, Served, utc_timestamp, warmed_up
from .errors import redact
from .model import ModelSpec
from .model_download import DownloadError, DownloadLimits, download
from .model_store import Failure, ModelStore, Promoted, StoreError, check_version

if TYPE_CHECKING:
    from .session import LoadedModel

log = logging.getLogger(__name__)
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
CANARY = Path("canary") / "expected.json"  # in the export: {"image file": "expected top tag"}
# A failure of the volume, which may mend (space freed, a disk back): not remembered as the
# request's own failure, so the twin's next reconnect tries again. Any other error inside an
# update (a bad archive or model, whatever Python raises for it) is final.
PASSING_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
)


class UpdateConflict(ValueError):
    """Refused while an update runs or waits (HTTP 409)."""


class CanaryFailed(ValueError):
    """The new model's top tags disagree with those its export expects."""


def check_canary(scorer: Scorer, candidate: Served, export: Path) -> int:
    """Score the export's canary images (if it has any) on the candidate before it is
    promoted; raise CanaryFailed naming the images whose top tag differs. How many passed."""
    expected_file = export / CANARY
    if not expected_file.is_file():
        return 0
    try:
        expected = json.loads(expected_file.read_text())
    except (OSError, ValueError) as error:
        raise CanaryFailed(f"{CANARY}: not readable JSON ({error})") from None
    if not isinstance(expected, dict) or not all(
        isinstance(k, str) and _plain_file_name(k) and isinstance(v, str)
        for k, v in expected.items()
    ):
        raise CanaryFailed(f"{CANARY}: expected {{image file name: top tag}}")
    wrong = []
    for name, tag in expected.items():
        image = expected_file.parent / name
        if not image.is_file() or image.is_symlink():
            raise CanaryFailed(f"{CANARY}: the canary image {name!r} is not in the export")
        result = scorer.score_on(candidate, image.read_bytes(), ScoreOptions(threshold=0.0))
        top = result.predictions[0].tag_name if result.predictions else None
        if top != tag:
            wrong.append(f"{name}: {top} (expected {tag})")
    if wrong:
        raise CanaryFailed(f"canary images disagree: {'; '.join(wrong[:5])}")
    return len(expected)


def _plain_file_name(name: str) -> bool:
    """A name of a file in the canary folder itself: no folder, no `.` or `..`."""
    return bool(name) and name not in (".", "..") and not set(name) & {"/", "\\", "\0"}


class UpdateState(str, enum.Enum):
    """Where the model update stands; the reported property `model.state`."""

    READY = "ready"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    WARMING = "warming"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Job:
    """One update to run: what it does, the version it serves, its first state."""

    run: Callable[[], None]
    target: str
    first: UpdateState


@dataclasses.dataclass(frozen=True)
class Admission:
    """What became of a request: `started` (now or once the running update ends: `queued`),
    and the waiting version it `superseded`, which will not be installed."""

    started: bool
    queued: bool = False
    superseded: str | None = None

    def __bool__(self) -> bool:
        return self.started


@dataclasses.dataclass(frozen=True)
class ModelRequest:
    """A model to serve: the twin's desired `model` (or the admin route's body)."""

    version: str
    url: str
    sha256: str

    @classmethod
    def parse(cls, value: Any) -> ModelRequest:
        """Checked fields, or ValueError saying which one is wrong."""
        if not isinstance(value, Mapping):
            raise ValueError('must be {"version": ..., "url": "https://...", "sha256": ...}')
        version, url, sha256 = value.get("version"), value.get("url"), value.get("sha256")
        if not isinstance(version, str):
            raise ValueError("version must be a string")
        check_version(version)
        if not isinstance(url, str) or not url:
            raise ValueError("url must be a string")
        check_url_text(url)
        if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
            raise ValueError("sha256 must be 64 hex digits")
        return cls(version, url, sha256.lower())

    def digest(self) -> str:
        """Names this request without its URL's secrets (a SAS token), for the store."""
        fields = json.dumps(dataclasses.astuple(self)).encode()
        return hashlib.sha256(fields).hexdigest()


def check_url_text(url: str) -> None:
    """ValueError, never quoting the URL (it may carry a SAS token), for one no HTTP client
    should be given: spaces, control or non-ASCII characters (a careless paste), or no
    http(s) scheme and host."""
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise ValueError("url contains spaces, control or non-ASCII characters")
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("https", "http") or not rest.split("/", 1)[0]:
        raise ValueError("url must be an absolute https URL")


def failure_text(error: Exception) -> str:
    """How a failed update is reported (`lastError`, logged, remembered): one line, without
    query strings (SAS tokens) or absolute paths."""
    return redact(f"{type(error).__name__}: {' '.join(str(error).split())}")[:500]


def passing(error: Exception) -> bool:
    """Whether a failure may mend by itself (the network, the volume): worth another try."""
    if isinstance(error, DownloadError):
        return not error.final
    return isinstance(error, OSError) and error.errno in PASSING_ERRNOS


class ModelUpdater:
    """Drives one update at a time against the scorer and the versioned store."""

    def __init__(
        self,
        scorer: Scorer,
        store: ModelStore,
        inspect: Callable[[Path], ModelSpec],
        open_model: Callable[[ModelSpec], LoadedModel],
        limits: DownloadLimits,
        unpack_limits: archive.ArchiveLimits,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.scorer = scorer
        self.store = store
        self.inspect = inspect
        self.open_model = open_model
        self.limits = limits
        self.unpack_limits = unpack_limits
        self.on_change = on_change
        self.state = UpdateState.READY
        self.last_error: str | None = None
        self.updated_at: str | None = None
        self.target: str | None = None  # the version being installed
        self._lock = threading.RLock()
        self._waiting: Job | None = None  # the newest request that waits for the running one
        self._busy = False
        # The last request that failed for a reason trying again cannot mend (a wrong hash,
        # a refused or oversized download, a bad archive or model, a canary), kept in the
        # store. The twin asks for it again at every reconnect and after every restart: it
        # is not downloaded again until it changes.
        if failure := store.failure():
            self.state, self.last_error, self.updated_at = (
                UpdateState.FAILED,
                failure.error,
                failure.at,
            )

    def _promoted(self) -> Promoted | None:
        """The store's pointer; an unreadable one counts as none (the next promotion
        rewrites it), so a damaged file never turns a status or a request into a failure."""
        try:
            return self.store.current()
        except StoreError as error:
            log.warning("model store: %s", error)
            return None

    def status(self) -> dict[str, Any]:
        """The reported property `model` (and `getModel`'s answer)."""
        served = self.scorer.served
        promoted = self._promoted()
        waiting = self._waiting
        return {
            "version": served.version if served else None,
            "sha256": self.scorer.spec.sha256,
            "state": self.state.value,
            "target": self.target,
            "queued": waiting.target if waiting else None,
            "previous": promoted.previous if promoted else None,
            "lastError": self.last_error,
            "updatedAt": self.updated_at,
        }

    def request(self, wanted: ModelRequest, retry_failed: bool = False) -> Admission:
        """Install and serve `wanted` in the background; not started if it is served
        already, or failed for good before (unless `retry_failed`: an operator asking again).

        A version name stands for one content: the current version is not fetched again,
        and the previous one is served from the store (as a rollback)."""
        promoted = self._promoted()
        if promoted is not None and wanted.version == promoted.version:
            return Admission(started=False)
        failure = self.store.failure()
        if failure and failure.request == wanted.digest() and not retry_failed:
            log.info("model update: not trying version %s again, it failed: %s",
                     wanted.version, failure.error)  # fmt: skip
            return Admission(started=False)
        if promoted is not None and wanted.version == promoted.previous:
            return self._serve_stored(wanted.version)
        return self._run(lambda: self._install(wanted), wanted.version, UpdateState.DOWNLOADING)

    def rollback(self) -> str:
        """Serve the previous version again (in the background); its name. Refused while an
        update runs or waits: the previous version is the one before *it* only once it ends
        (before, a rollback accepted then failed when the update pruned its target)."""
        with self._lock:
            if self._busy:
                waiting = f", {self._waiting.target} waits" if self._waiting else ""
                raise UpdateConflict(
                    f"an update is under way (to {self.target}{waiting}); roll back once it"
                    " has ended"
                )
            promoted = self._promoted()
            if promoted is None or promoted.previous is None:
                raise ValueError("there is no previous version to roll back to")
            self._serve_stored(promoted.previous)
        return promoted.previous

    def _serve_stored(self, version: str) -> Admission:
        """Serve a version the store still has (the previous one) again."""
        folder = self.store.folder(version)
        return self._run(lambda: self._serve(version, folder), version)

    @property
    def busy(self) -> bool:
        """An update is running or waiting to."""
        with self._lock:
            return self._busy

    def _run(
        self, job: Callable[[], None], target: str, first: UpdateState = UpdateState.VERIFYING
    ) -> Admission:
        """Start `job` now, or after the running one (the newest waiting job wins, and the
        admission says which one it superseded). A job started now shows its `first` state
        before this returns (never the last update's outcome); it is reported to IoT Hub
        from the job's own thread, not the caller's. Called with the lock held or not."""
        step = Job(job, target, first)
        with self._lock:  # reentrant: a rollback decides under it
            if self._busy:
                superseded, self._waiting = self._waiting, step
                if superseded is not None:
                    log.info("model update: version %s superseded by %s before it started",
                             superseded.target, target)  # fmt: skip
                replaced = superseded.target if superseded is not None else None
                return Admission(True, queued=True, superseded=replaced)
            self._busy = True
            self._begin(step)
        worker = threading.Thread(target=self._worker, args=(step,), name="model-update")
        worker.daemon = True
        worker.start()
        return Admission(True)

    def _begin(self, step: Job) -> None:
        self.target, self.last_error, self.state = step.target, None, step.first
        self.updated_at = utc_timestamp("seconds")

    def _worker(self, step: Job) -> None:
        next_step: Job | None = step
        while next_step is not None:
            self.on_change()  # its first state
            try:
                next_step.run()
            except Exception as error:  # noqa: BLE001 - any failure: report it, keep serving
                text = failure_text(error)
                self._set(UpdateState.FAILED, text)
                log.error("model update to %s failed; still serving %s: %s",
                          self.target, self.status()["version"], text)  # fmt: skip
            with self._lock:
                next_step, self._waiting = self._waiting, None
                if next_step is None:
                    self._busy = False
                else:
                    self._begin(next_step)

    def _set(self, state: UpdateState, error: str | None = None) -> None:
        self.state = state
        if state is UpdateState.FAILED:
            self.last_error = error
        self.updated_at = utc_timestamp("seconds")
        self.on_change()

    def _install(self, wanted: ModelRequest) -> None:
        try:
            self._download_and_serve(wanted)
        except Exception as error:
            if passing(error):  # the network or the volume (a full disk) may mend
                self._forget_failure()
            else:
                self._remember(Failure(wanted.digest(), wanted.version, failure_text(error),
                                       utc_timestamp("seconds")))  # fmt: skip
            raise
        self._forget_failure()

    def _remember(self, failure: Failure) -> None:
        try:
            self.store.remember_failure(failure)
        except OSError as error:  # a full volume: the failure is still reported
            log.warning("model update: cannot record the failure in the store: %s", error)

    def _forget_failure(self) -> None:
        try:
            self.store.forget_failure()
        except OSError as error:
            log.warning("model update: cannot clear the failure in the store: %s", error)

    def _download_and_serve(self, wanted: ModelRequest) -> None:
        log.info("model update: downloading version %s", wanted.version)
        staging = self.store.staging()
        try:
            bundle = download(wanted.url, staging / "export.zip", wanted.sha256, self.limits)
            self._set(UpdateState.VERIFYING)
            archive.unpack(bundle, staging / "unpacked", self.unpack_limits)
            bundle.unlink()
            folder = self.store.install(wanted.version, staging / "unpacked")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            self._serve(wanted.version, folder)
        except Exception:
            self.store.discard(wanted.version)  # never left where a restart could find it
            raise

    def _serve(self, version: str, folder: Path) -> None:
        """Check, load, warm and swap in an unpacked version (its state: verifying)."""
        export = archive.export_folder(folder)
        spec = self.inspect(export)
        self._set(UpdateState.WARMING)
        model = warmed_up(self.open_model(spec), version)
        candidate = Served(model, self.scorer.config.model_name, version)
        if checked := check_canary(self.scorer, candidate, export):
            log.info("model update: %d canary images agree with version %s", checked, version)
        # Promoted first: should writing the pointer fail (a full volume), nothing changed.
        self.store.promote(version, spec.sha256)
        self.scorer.swap(model, candidate.name, version)
        log.info("model update: now serving version %s", version)
        self.target = None
        self._set(UpdateState.READY)
