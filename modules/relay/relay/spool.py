"""The relay's durable state on the module volume: outgoing messages, window stats, seen ids.

SQLite in WAL mode with `synchronous=FULL`: a transaction that returned is on disk, through a
`kill -9` or a power cut. Each incoming result is handled in one transaction (mark it seen,
fold it into the window, spool what it sends), so after a crash a result is either fully
accounted for or not at all, and a redelivered duplicate is recognised and skipped.

Storage that lies about what it wrote (SD cards and eMMC under power cuts do) can still leave
a file SQLite calls corrupt. Such a spool is set aside whole (`relay.db.corrupt`, the last one
only, for an offline `.recover`) and the relay starts on an empty one, counting it: a spool
that failed every start would stop every result from then on, with no one at the device.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import policy as rules
from .policy import LabelStats, MessageKind, Outgoing

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (result_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS window_labels (
    label TEXT PRIMARY KEY, frames INTEGER, detections INTEGER, max_probability REAL,
    first_seen TEXT, last_seen TEXT
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alert_state (
    label TEXT PRIMARY KEY, last_sent REAL NOT NULL, suppressed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, message_id TEXT NOT NULL,
    reason TEXT NOT NULL, excerpt BLOB NOT NULL
);
"""
log = logging.getLogger(__name__)
DEAD_LETTERS_KEPT = 1000  # the newest; the count of all is the `rejected` counter
WAL_BYTES = 4 * 1024 * 1024  # the write-ahead log is checkpointed and cut back to this
MIN_SPOOL_BYTES = 2 * WAL_BYTES  # room for the log, the tables' own pages and some messages
EXCERPT_BYTES = 512
# SQLite's own verdicts on a file that is not (or no longer) a sound database: the primary
# codes SQLITE_CORRUPT and SQLITE_NOTADB (sqlite3.h); Python gives them from 3.11 on.
CORRUPT_CODES = (11, 26)
CORRUPT_SUFFIX = ".corrupt"


class Counter(str, enum.Enum):
    """The counters kept with the spool (in its `counters` table, by these names)."""

    SENT = "sent"  # spooled messages edgeHub took (a batch of results counts each)
    UPSTREAM = "upstream_messages"  # messages sent to edgeHub
    ALERTS_SUPPRESSED = "alerts_suppressed"
    EXPIRED_RESULTS = "expired_results"
    RESULTS = "results"
    ALERTS = "alerts"
    DUPLICATES = "duplicates"
    REJECTED = "rejected"
    DROPPED_ALERT = "dropped_alert"
    DROPPED_RESULT = "dropped_result"
    DROPPED_RESULTS = "dropped_results"
    DROPPED_SUMMARY = "dropped_summary"
    DROPPED_REJECTED = "dropped_rejected"
    SPOOLS_SET_ASIDE = "spools_set_aside"  # corrupt spools replaced by an empty one
    WINDOW_START = "window_start"
    WINDOW_FRAMES = "window_frames"
    WINDOW_SENT = "window_sent"
    WINDOW_FOLDED = "window_folded"

    @classmethod
    def dropped(cls, kind: MessageKind) -> Counter:
        return cls(f"dropped_{kind.value}")


SEEN_KEPT = 50_000  # ids remembered for de-duplication; far beyond any redelivery window


class SpoolCorrupt(Exception):
    """SQLite finds the spool file damaged; the message says how."""


class StorageFull(Exception):
    """No room for a write (the volume is full, or the spool is at its bound with nothing
    left to drop but alerts); nothing was changed."""


def is_storage_full(error: BaseException) -> bool:
    """True for `StorageFull` and SQLite's "database or disk is full" (SQLITE_FULL)."""
    return isinstance(error, StorageFull) or (
        isinstance(error, sqlite3.OperationalError)
        and getattr(error, "sqlite_errorname", "") == "SQLITE_FULL"
    )


@contextmanager
def waits_for_room(what: str) -> Iterator[None]:
    """Run a write that can wait: on a full volume, log that `what` waits and carry on."""
    try:
        yield
    except (sqlite3.OperationalError, StorageFull) as error:
        if not is_storage_full(error):
            raise
        log.warning("volume full: %s", what)


@dataclasses.dataclass(frozen=True)
class ResultRun:
    """The results at the spool's head, in order, that can go up as one message."""

    seqs: list[int]
    bodies: list[bytes]
    first_spooled: float  # when the oldest of them was spooled
    complete: bool  # nothing more can join: the next message is no result, or would not fit


class Spool:
    """Thread-safe durable store; every public method is one transaction."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except SpoolCorrupt as error:
            set_aside = self._set_aside()
            log.critical(
                "the spool %s is corrupt (%s): set aside as %s, starting on an empty spool;"
                " the messages it held are not sent",
                path,
                error,
                set_aside,
            )
            self._db = self._open()
            with self.transaction() as db:
                self.add_counter(db, Counter.SPOOLS_SET_ASIDE)

    def _open(self) -> sqlite3.Connection:
        """The spool's connection, its schema in place, checked by SQLite's `quick_check`."""
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            # One process owns the spool: exclusive locking keeps WAL's index in memory, so
            # no `-shm` file has to be created, and a full volume does not prevent start-up.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._page_size: int = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_BYTES // self._page_size}")
            db.execute(f"PRAGMA journal_size_limit={WAL_BYTES}")
            verdict = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
            if verdict != ["ok"]:
                raise SpoolCorrupt("; ".join(verdict))
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(inbox)")}
            if "attempts" not in columns:  # a spool written by an earlier version
                db.execute("ALTER TABLE inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            if "created" not in columns:
                db.execute("ALTER TABLE outbox ADD COLUMN created REAL NOT NULL DEFAULT 0")
        except (sqlite3.DatabaseError, SpoolCorrupt) as error:
            db.close()
            code = getattr(error, "sqlite_errorcode", None)  # extended: the low byte is primary
            if code is not None and code & 0xFF in CORRUPT_CODES:
                raise SpoolCorrupt(str(error)) from error
            raise  # SpoolCorrupt itself, or the volume (unreadable, full, locked)
        return db

    def _set_aside(self) -> Path:
        """Move the corrupt file and its write-ahead log out of the way (over the last ones
        set aside, so that repeated corruption cannot fill the volume)."""
        target = self.path.with_name(self.path.name + CORRUPT_SUFFIX)
        for suffix in ("", "-wal"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                source.replace(Path(str(target) + suffix))
        return target

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work; rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (a full volume) leaves it open
                    self._db.execute("ROLLBACK")
                raise

    # --- used inside a transaction -------------------------------------------------------

    @staticmethod
    def was_seen(db: sqlite3.Connection, result_id: str) -> bool:
        return (
            db.execute("SELECT 1 FROM seen WHERE result_id=?", (result_id,)).fetchone() is not None
        )

    @staticmethod
    def mark_seen(db: sqlite3.Connection, result_id: str) -> None:
        rowid = db.execute("INSERT INTO seen(result_id) VALUES (?)", (result_id,)).lastrowid or 0
        if rowid % 1000 == 0:
            db.execute("DELETE FROM seen WHERE rowid <= ?", (rowid - SEEN_KEPT,))

    @staticmethod
    def window(db: sqlite3.Connection) -> dict[str, LabelStats]:
        rows = db.execute(
            "SELECT label, frames, detections, max_probability, first_seen, last_seen"
            " FROM window_labels"
        )
        return {row[0]: LabelStats(*row[1:]) for row in rows}

    @staticmethod
    def update_window(db: sqlite3.Connection, stats: dict[str, LabelStats]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO window_labels VALUES (?, ?, ?, ?, ?, ?)",
            [
                (label, s.frames, s.detections, s.max_probability, s.first_seen, s.last_seen)
                for label, s in stats.items()
            ],
        )

    @staticmethod
    def clear_window(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM window_labels")

    @staticmethod
    def counter(db: sqlite3.Connection, name: Counter, default: float = 0.0) -> float:
        row = db.execute("SELECT value FROM counters WHERE name=?", (name.value,)).fetchone()
        return default if row is None else row[0]

    @staticmethod
    def set_counter(db: sqlite3.Connection, name: Counter, value: float) -> None:
        db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (name.value, value))

    @classmethod
    def add_counter(cls, db: sqlite3.Connection, name: Counter, amount: float = 1) -> None:
        cls.set_counter(db, name, cls.counter(db, name) + amount)

    @staticmethod
    def alert_state(db: sqlite3.Connection, label: str) -> tuple[float, int] | None:
        """(when the label's last alert was spooled, matches suppressed since), if any."""
        row = db.execute(
            "SELECT last_sent, suppressed FROM alert_state WHERE label=?", (label,)
        ).fetchone()
        return None if row is None else (float(row[0]), int(row[1]))

    @staticmethod
    def set_alert_state(db: sqlite3.Connection, label: str, last: float, suppressed: int) -> None:
        db.execute("INSERT OR REPLACE INTO alert_state VALUES (?, ?, ?)", (label, last, suppressed))

    def pages_bytes(self, db: sqlite3.Connection) -> int:
        """Bytes of the database's pages in use, every table and index included."""
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    def _make_room(self, db: sqlite3.Connection) -> None:
        """Enforce the bound after a write: the oldest non-alert messages go first, counted.

        The bound is on everything the spool keeps on disk: the pages of every table (inbox,
        seen ids, dead letters, window) plus the write-ahead log's limit. Freed pages are
        reused, so the file stops growing there. Alerts are never dropped: with only alerts
        left, the write is refused (`StorageFull`, the transaction rolls back) and the input
        that caused it stays with edgeHub or in the inbox until the alerts are sent."""
        while self.pages_bytes(db) > self.max_bytes - WAL_BYTES:
            victim = db.execute(
                "SELECT seq, kind FROM outbox WHERE kind != ? ORDER BY seq LIMIT 1",
                (MessageKind.ALERT.value,),
            ).fetchone()
            if victim is None:
                raise StorageFull("the spool is at its bound with only alerts to send")
            db.execute("DELETE FROM outbox WHERE seq=?", (victim[0],))
            self.add_counter(db, Counter.dropped(MessageKind(victim[1])))

    def enqueue(self, db: sqlite3.Connection, message: Outgoing, now: float = 0.0) -> None:
        """Spool a message within the bound (see `_make_room`)."""
        db.execute(
            "INSERT OR IGNORE INTO outbox(kind, label, message_id, body, created) "
            "VALUES (?, ?, ?, ?, ?)",
            (message.kind.value, message.label, message.message_id, message.body, now),
        )
        self._make_room(db)

    @staticmethod
    def forget_received(db: sqlite3.Connection, message_id: str) -> None:
        db.execute("DELETE FROM inbox WHERE message_id=?", (message_id,))

    def dead_letter(
        self,
        db: sqlite3.Connection,
        message_id: str,
        reason: str,
        payload: bytes,
        at: str,
        announce: bool = False,
    ) -> None:
        """Keep what could not be handled or sent, with why, instead of retrying it for ever;
        with `announce`, a `rejected` notice of it is spooled to go up once."""
        db.execute(
            "INSERT INTO dead_letters(at, message_id, reason, excerpt) VALUES (?, ?, ?, ?)",
            (at, message_id, reason[:500], payload[:EXCERPT_BYTES]),
        )
        db.execute(
            "DELETE FROM dead_letters WHERE seq <= (SELECT MAX(seq) FROM dead_letters) - ?",
            (DEAD_LETTERS_KEPT,),
        )
        self.add_counter(db, Counter.REJECTED)
        if announce:
            self.enqueue(db, rules.rejected_message(message_id, reason, payload, at))

    # --- one transaction each --------------------------------------------------------------

    def receive(self, message_id: str, payload: bytes) -> None:
        """Keep a just-received input until it is handled (see iothub.py for why).

        Raises `StorageFull` on a full volume, or at the bound with only alerts spooled: the
        caller must then not acknowledge it."""
        try:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO inbox(message_id, payload) VALUES (?, ?)", (message_id, payload)
                )
                self._make_room(db)
        except sqlite3.OperationalError as error:
            if is_storage_full(error):
                raise StorageFull(str(error)) from error
            raise

    def unhandled(self) -> list[tuple[str, bytes]]:
        """Inputs received before a crash but never handled, oldest first."""
        with self._lock:
            return self._db.execute("SELECT message_id, payload FROM inbox ORDER BY seq").fetchall()

    def attempt(self, message_id: str) -> int:
        """Count one more try at handling a left-over input; how many tries so far."""
        with self.transaction() as db:
            db.execute("UPDATE inbox SET attempts = attempts + 1 WHERE message_id=?", (message_id,))
            row = db.execute(
                "SELECT attempts FROM inbox WHERE message_id=?", (message_id,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def quarantine_input(
        self, message_id: str, payload: bytes, reason: str, at: str, announce: bool = False
    ) -> None:
        """Move an input that keeps failing out of the inbox, into the dead letters."""
        with self.transaction() as db:
            self.forget_received(db, message_id)
            self.dead_letter(db, message_id, reason, payload, at, announce)

    def quarantine_outgoing(self, seq: int, reason: str, at: str, announce: bool = False) -> None:
        """Move a message the hub will never take (too large) out of the spool's head; a
        `rejected` notice is never itself announced (a notice of a notice could loop)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT message_id, body, kind FROM outbox WHERE seq=?", (seq,)
            ).fetchone()
            if row is not None:
                db.execute("DELETE FROM outbox WHERE seq=?", (seq,))
                notice = announce and row[2] != MessageKind.REJECTED.value
                self.dead_letter(db, row[0], reason, row[1], at, notice)

    def dead_letters(self, limit: int = 20) -> list[tuple[str, str, str, bytes]]:
        """The newest dead letters: (when, message id, reason, excerpt)."""
        with self._lock:
            return self._db.execute(
                "SELECT at, message_id, reason, excerpt FROM dead_letters ORDER BY seq DESC "
                "LIMIT ?",
                (limit,),
            ).fetchall()

    def oldest(
        self, limit: int = 32, max_age_s: float = 0.0, now: float = 0.0
    ) -> list[tuple[int, Outgoing]]:
        """The next messages to send: alerts ahead of any backlog, the rest in spool order.

        With `max_age_s`, results spooled longer ago than that are dropped first (counted):
        after a long outage, a stale result is worth less than the quota it would use."""
        if max_age_s > 0:
            with self.transaction() as db:
                expired = db.execute(
                    "DELETE FROM outbox WHERE kind=? AND created > 0 AND created < ?",
                    (MessageKind.RESULT.value, now - max_age_s),
                ).rowcount
                if expired:
                    self.add_counter(db, Counter.EXPIRED_RESULTS, expired)
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, body, message_id, label FROM outbox "
                "ORDER BY kind != ?, seq LIMIT ?",
                (MessageKind.ALERT.value, limit),
            ).fetchall()
        return [(row[0], Outgoing(MessageKind(row[1]), row[2], row[3], row[4])) for row in rows]

    def result_run(self, limit_bytes: int) -> ResultRun:
        """The results at the head of the spool, in order, while their bodies fit
        `limit_bytes` together (the first always). Alerts are passed over: they go first
        anyway, so one arriving now neither ends the run nor sends it early."""
        seqs: list[int] = []
        bodies: list[bytes] = []
        first_spooled, size, complete = 0.0, 0, False
        with self._lock:
            rows = self._db.execute("SELECT seq, kind, body, created FROM outbox ORDER BY seq")
            for seq, kind, body, created in rows:
                if kind == MessageKind.ALERT.value:
                    continue
                if kind != MessageKind.RESULT.value or (
                    bodies and size + len(body) + 1 > limit_bytes
                ):
                    complete = True
                    break
                if not seqs:
                    first_spooled = float(created)
                seqs.append(seq)
                bodies.append(body)
                size += len(body) + 1
            rows.close()
        return ResultRun(seqs, bodies, first_spooled, complete)

    def acknowledge(self, seqs: list[int]) -> None:
        """IoT Hub's edgeHub took the message (of these spooled ones): forget them, count."""
        with self.transaction() as db:
            for seq in seqs:
                if db.execute("DELETE FROM outbox WHERE seq=?", (seq,)).rowcount:
                    self.add_counter(db, Counter.SENT)
            self.add_counter(db, Counter.UPSTREAM)

    def depth(self) -> tuple[int, int]:
        """(messages, bytes) waiting in the spool."""
        with self._lock:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM outbox"
            ).fetchone()
        return int(count), int(size)

    def counters(self) -> dict[str, float]:
        """Every counter by its name (a `Counter` value)."""
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    def saved_policy(self) -> dict[str, Any] | None:
        """The policy in force at the last stop (its twin form), if one was ever applied."""
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE name='policy'").fetchone()
        return None if row is None else json.loads(row[0])

    def save_policy(self, policy: dict[str, Any]) -> None:
        """Persist the policy in force, so inputs left over at a restart are handled under it."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO state VALUES ('policy', ?)",
                (json.dumps(policy, allow_nan=False),),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
