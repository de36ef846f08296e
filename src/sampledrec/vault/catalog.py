"""The recordings catalog: one row per recording, behind the :class:`Catalog` protocol.

The default backend is SQLite in the store (``catalog.sqlite``, WAL mode, so readers do not block
the recorder); :class:`~sampledrec.vault.postgres.PostgresCatalog` keeps it in a PostgreSQL
database instead (docs/decisions/0026-postgresql.md). A row holds the recording's
metadata and its *wrapped* data key (never the key in clear), stored when the recording is
opened, so that a crash mid-call leaves a recording that can be recovered or destroyed, never an
orphan. Personal fields (call reference, caller pseudonym, agent) are removed when the recording
expires (see the retention module).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import StoreError

__all__ = [
    "Catalog",
    "Hold",
    "RecordingRow",
    "Recovery",
    "SealedNote",
    "SqliteCatalog",
    "Status",
    "SubjectRequest",
]

Status = Literal["open", "sealed", "truncated", "aborted", "expiring", "expired", "erased"]
Recovery = Literal["sealed", "truncated", "destroyed"]
"""What crash recovery (``Vault.recover``) decided for a recording left open: keep the
container as it is, keep its verified prefix re-sealed, or destroy it."""


@dataclass
class RecordingRow:
    """A recording's catalog entry. Times are microseconds since 1970 (UTC)."""

    recording_id: str
    call_ref: str | None  # text as given, or "hex:<hex>" for a binary reference
    rule: str
    purpose: str
    policy_version: str
    epoch_id: str
    decision_index: int
    started_at: int
    expires_at_sealed: int
    expires_at: int  # effective: holds and releases change it
    bucket: str
    wrapped_key: bytes | None  # None once crypto-shredded
    audio_format: str
    file: str  # the sealed container's name in the store's blob store (vault.blobs)
    status: Status = "open"
    ended_at: int | None = None
    duration_ms: int | None = None
    plaintext_bytes: int | None = None
    ciphertext_bytes: int | None = None
    ciphertext_sha256: str | None = None
    caller_pseudonym: str | None = None
    agent: str | None = None
    pauses: list[tuple[int, int]] = field(default_factory=list)
    truncated: bool = False
    # The call attributes given when recording (``Vault.record(attrs=...)``), as text; what
    # role scopes are matched against. Empty for recordings made before they were stored.
    attrs: dict[str, str] = field(default_factory=dict)
    # The journal of a crash recovery in progress (``Vault.recover``), written before the
    # recording's blob is replaced or deleted; the row stays ``open`` meanwhile. ``recovery``
    # is the outcome decided, ``recovery_sha256`` the SHA-256 (hex) of the container the
    # recording keeps (None when it is destroyed), and ``recovery_log_size`` the log's size when
    # the journal was written: the entry that recovery logs has an index at least that. All
    # None when no recovery is in progress; the update that seals the row clears them.
    recovery: Recovery | None = None
    recovery_sha256: str | None = None
    recovery_log_size: int | None = None
    # The node of a deployment whose log opened the recording (None for a store of its own,
    # and for recordings opened before rows named it): whose recovery it is after a crash,
    # and what another node marks lost when that node is lost for good (0035).
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["id"] = doc.pop("recording_id")
        doc.pop("wrapped_key")
        for name in ("recovery", "recovery_sha256", "recovery_log_size"):
            doc.pop(name)  # the recovery's own bookkeeping: the row says "open" meanwhile
        doc["pauses"] = [list(p) for p in self.pauses]
        return doc


@dataclass
class Hold:
    """A legal hold: while active, its recordings' data keys are wrapped (also) by the hold's
    key, so destroying their expiry bucket does not erase them. Times in µs since 1970."""

    hold_id: str
    reason: str
    created_at: int
    until: int | None = None
    released_at: int | None = None

    def active(self, now_us: int) -> bool:
        return self.released_at is None and (self.until is None or now_us < self.until)


@dataclass
class SubjectRequest:
    """A data-subject request (access/export or erasure), due one month after receipt.

    ``identity_*`` record how the requester's identity was verified (never a copy of an ID
    document nor its number): the method (one of
    :data:`~sampledrec.retention.subjects.IDENTITY_METHODS`), a short description, who
    recorded it and when (µs since 1970); ``identity_method`` is None until then."""

    request_id: str
    kind: str  # export | erase
    caller_pseudonym: str | None
    received_at: int
    deadline: int
    status: str  # open | done | deferred
    detail: str = ""
    completed_at: int | None = None
    identity_method: str | None = None
    identity_note: str = ""
    identity_verified_by: str | None = None
    identity_verified_at: int | None = None

    @property
    def identity_verified(self) -> bool:
        """Whether the requester's identity has been recorded as verified."""
        return self.identity_method is not None


@dataclass(frozen=True)
class SealedNote:
    """A review note on a recording as the catalog keeps it: sealed (author and text inside
    ``sealed``, AES-256-GCM under a key derived from the recording's data key:
    :mod:`sampledrec.vault.notes`), never in clear. ``created_at`` in µs since 1970."""

    note_id: str
    recording_id: str
    created_at: int
    sealed: bytes = field(repr=False)


@runtime_checkable
class Catalog(Protocol):
    """Where recordings are listed. Implementations: :class:`SqliteCatalog`,
    :class:`~sampledrec.vault.postgres.PostgresCatalog`,
    :class:`sampledrec.testing.MemoryCatalog`; every backend passes the contract suite in
    ``tests/test_backends.py``."""

    def add(self, row: RecordingRow) -> None: ...

    def update(self, recording_id: str, **changes: Any) -> None: ...

    def update_many(self, recording_ids: Sequence[str], **changes: Any) -> None: ...

    def get(self, recording_id: str) -> RecordingRow | None: ...

    def find(
        self, *, status: Sequence[str] | None = None, caller_pseudonym: str | None = None
    ) -> list[RecordingRow]: ...

    def close(self) -> None: ...

    # holds
    def add_hold(self, hold: Hold) -> None: ...

    def get_hold(self, hold_id: str) -> Hold | None: ...

    def holds(self) -> list[Hold]: ...

    def update_hold(self, hold_id: str, **changes: Any) -> None: ...

    def add_hold_member(self, hold_id: str, recording_id: str, wrapped_key: bytes) -> None: ...

    def hold_members(self, hold_id: str) -> list[tuple[str, bytes | None]]: ...

    def holds_of(self, recording_id: str) -> list[tuple[Hold, bytes | None]]: ...

    def forget_hold_key(self, hold_id: str, recording_id: str) -> None: ...

    # data-subject requests
    def add_request(self, request: SubjectRequest) -> None: ...

    def update_request(self, request_id: str, **changes: Any) -> None: ...

    def requests(self, *, status: Sequence[str] | None = None) -> list[SubjectRequest]: ...

    # review notes (sealed)
    def add_note(self, note: SealedNote) -> None: ...

    def notes_of(self, recording_id: str) -> list[SealedNote]: ...

    def delete_notes(self, recording_ids: Sequence[str]) -> int: ...


_COLUMNS = [f.name for f in fields(RecordingRow)]
_REQUEST_COLUMNS = [f.name for f in fields(SubjectRequest)]
# What update_request may change: not a request's id, kind, receipt or deadline.
REQUEST_UPDATABLE = frozenset(_REQUEST_COLUMNS) - {"request_id", "kind", "received_at", "deadline"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    recording_id TEXT PRIMARY KEY,
    call_ref TEXT,
    rule TEXT NOT NULL,
    purpose TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    epoch_id TEXT NOT NULL,
    decision_index INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    expires_at_sealed INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    bucket TEXT NOT NULL,
    wrapped_key BLOB,
    audio_format TEXT NOT NULL,
    file TEXT NOT NULL,
    status TEXT NOT NULL,
    ended_at INTEGER,
    duration_ms INTEGER,
    plaintext_bytes INTEGER,
    ciphertext_bytes INTEGER,
    ciphertext_sha256 TEXT,
    caller_pseudonym TEXT,
    agent TEXT,
    pauses TEXT NOT NULL DEFAULT '[]',
    truncated INTEGER NOT NULL DEFAULT 0,
    attrs TEXT NOT NULL DEFAULT '{}',
    recovery TEXT,
    recovery_sha256 TEXT,
    recovery_log_size INTEGER,
    node TEXT
);
CREATE INDEX IF NOT EXISTS recordings_status ON recordings(status);
CREATE INDEX IF NOT EXISTS recordings_expiry ON recordings(expires_at);
CREATE INDEX IF NOT EXISTS recordings_caller ON recordings(caller_pseudonym);
CREATE INDEX IF NOT EXISTS recordings_bucket ON recordings(bucket);
CREATE TABLE IF NOT EXISTS holds (
    hold_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    until INTEGER,
    released_at INTEGER
);
CREATE TABLE IF NOT EXISTS hold_members (
    hold_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    wrapped_key BLOB,
    PRIMARY KEY (hold_id, recording_id)
);
CREATE INDEX IF NOT EXISTS hold_members_recording ON hold_members(recording_id);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    caller_pseudonym TEXT,
    received_at INTEGER NOT NULL,
    deadline INTEGER NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    completed_at INTEGER,
    identity_method TEXT,
    identity_note TEXT NOT NULL DEFAULT '',
    identity_verified_by TEXT,
    identity_verified_at INTEGER
);
CREATE TABLE IF NOT EXISTS notes (
    note_id TEXT PRIMARY KEY,
    recording_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    sealed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_recording ON notes(recording_id);
"""


class SqliteCatalog:
    """The catalog in one SQLite file (WAL journal, 0600), safe for threads of one process and
    for several processes (SQLite's own locking)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        created = not self.path.exists()
        if created:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        try:
            self._db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # Deleted content (wrapped keys, personal fields) is overwritten, not left in free
            # pages where a copy of the file could still show it.
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(_SCHEMA)
            _migrate(self._db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the catalog {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SqliteCatalog({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"catalog {self.path}: {exc}") from exc

    def add(self, row: RecordingRow) -> None:
        values = [_to_sql(name, getattr(row, name)) for name in _COLUMNS]
        marks = ",".join("?" * len(_COLUMNS))
        self._exec(f"INSERT INTO recordings ({','.join(_COLUMNS)}) VALUES ({marks})", values)

    def update(self, recording_id: str, **changes: Any) -> None:
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown catalog columns {sorted(unknown)}")
        if not changes:
            return
        sets = ",".join(f"{k}=?" for k in changes)
        values = [_to_sql(k, v) for k, v in changes.items()]
        self._exec(f"UPDATE recordings SET {sets} WHERE recording_id=?", [*values, recording_id])

    def update_many(self, recording_ids: Sequence[str], **changes: Any) -> None:
        """Apply the same changes to many recordings, in one transaction."""
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown catalog columns {sorted(unknown)}")
        if not recording_ids or not changes:
            return
        sets = ",".join(f"{k}=?" for k in changes)
        values = [_to_sql(k, v) for k, v in changes.items()]
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        f"UPDATE recordings SET {sets} WHERE recording_id=?",
                        [[*values, rid] for rid in recording_ids],
                    )
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"catalog {self.path}: {exc}") from exc

    def get(self, recording_id: str) -> RecordingRow | None:
        cur = self._exec(
            f"SELECT {','.join(_COLUMNS)} FROM recordings WHERE recording_id=?", [recording_id]
        )
        got = cur.fetchone()
        return None if got is None else _row(got)

    def find(
        self, *, status: Sequence[str] | None = None, caller_pseudonym: str | None = None
    ) -> list[RecordingRow]:
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append(f"status IN ({','.join('?' * len(status))})")
            params.extend(status)
        if caller_pseudonym is not None:
            where.append("caller_pseudonym=?")
            params.append(caller_pseudonym)
        sql = f"SELECT {','.join(_COLUMNS)} FROM recordings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at, recording_id"
        return [_row(r) for r in self._exec(sql, params).fetchall()]

    def __iter__(self) -> Iterator[RecordingRow]:
        return iter(self.find())

    # -- holds --------------------------------------------------------------------------------

    def add_hold(self, hold: Hold) -> None:
        self._exec(
            "INSERT INTO holds (hold_id, reason, created_at, until, released_at) "
            "VALUES (?,?,?,?,?)",
            [hold.hold_id, hold.reason, hold.created_at, hold.until, hold.released_at],
        )

    def get_hold(self, hold_id: str) -> Hold | None:
        got = self._exec(
            "SELECT hold_id, reason, created_at, until, released_at FROM holds WHERE hold_id=?",
            [hold_id],
        ).fetchone()
        return None if got is None else Hold(*got)

    def holds(self) -> list[Hold]:
        rows = self._exec(
            "SELECT hold_id, reason, created_at, until, released_at FROM holds "
            "ORDER BY created_at, hold_id"
        ).fetchall()
        return [Hold(*r) for r in rows]

    def update_hold(self, hold_id: str, **changes: Any) -> None:
        allowed = {"reason", "until", "released_at"}
        if set(changes) - allowed:
            raise ValueError(f"unknown hold columns {sorted(set(changes) - allowed)}")
        if not changes:
            return
        sets = ",".join(f"{k}=?" for k in changes)
        self._exec(f"UPDATE holds SET {sets} WHERE hold_id=?", [*changes.values(), hold_id])

    def add_hold_member(self, hold_id: str, recording_id: str, wrapped_key: bytes) -> None:
        self._exec(
            "INSERT OR REPLACE INTO hold_members (hold_id, recording_id, wrapped_key) "
            "VALUES (?,?,?)",
            [hold_id, recording_id, wrapped_key],
        )

    def hold_members(self, hold_id: str) -> list[tuple[str, bytes | None]]:
        rows = self._exec(
            "SELECT recording_id, wrapped_key FROM hold_members WHERE hold_id=? "
            "ORDER BY recording_id",
            [hold_id],
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def holds_of(self, recording_id: str) -> list[tuple[Hold, bytes | None]]:
        rows = self._exec(
            "SELECT h.hold_id, h.reason, h.created_at, h.until, h.released_at, m.wrapped_key "
            "FROM hold_members m JOIN holds h ON h.hold_id = m.hold_id "
            "WHERE m.recording_id=? ORDER BY h.created_at, h.hold_id",
            [recording_id],
        ).fetchall()
        return [(Hold(*r[:5]), r[5]) for r in rows]

    def forget_hold_key(self, hold_id: str, recording_id: str) -> None:
        self._exec(
            "UPDATE hold_members SET wrapped_key=NULL WHERE hold_id=? AND recording_id=?",
            [hold_id, recording_id],
        )

    # -- data-subject requests ----------------------------------------------------------------

    def add_request(self, request: SubjectRequest) -> None:
        marks = ",".join("?" * len(_REQUEST_COLUMNS))
        self._exec(
            f"INSERT INTO requests ({','.join(_REQUEST_COLUMNS)}) VALUES ({marks})",
            [getattr(request, name) for name in _REQUEST_COLUMNS],
        )

    def update_request(self, request_id: str, **changes: Any) -> None:
        if set(changes) - REQUEST_UPDATABLE:
            raise ValueError(f"unknown request columns {sorted(set(changes) - REQUEST_UPDATABLE)}")
        if not changes:
            return
        sets = ",".join(f"{k}=?" for k in changes)
        self._exec(
            f"UPDATE requests SET {sets} WHERE request_id=?", [*changes.values(), request_id]
        )

    def requests(self, *, status: Sequence[str] | None = None) -> list[SubjectRequest]:
        sql = f"SELECT {','.join(_REQUEST_COLUMNS)} FROM requests"
        params: list[Any] = []
        if status is not None:
            sql += f" WHERE status IN ({','.join('?' * len(status))})"
            params.extend(status)
        sql += " ORDER BY received_at, request_id"
        return [SubjectRequest(*r) for r in self._exec(sql, params).fetchall()]

    # -- review notes -------------------------------------------------------------------------

    def add_note(self, note: SealedNote) -> None:
        self._exec(
            "INSERT INTO notes (note_id, recording_id, created_at, sealed) VALUES (?, ?, ?, ?)",
            [note.note_id, note.recording_id, note.created_at, bytes(note.sealed)],
        )

    def notes_of(self, recording_id: str) -> list[SealedNote]:
        rows = self._exec(
            "SELECT note_id, recording_id, created_at, sealed FROM notes WHERE recording_id = ? "
            "ORDER BY created_at, note_id",
            [recording_id],
        ).fetchall()
        return [SealedNote(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def delete_notes(self, recording_ids: Sequence[str]) -> int:
        removed = 0
        ids = list(recording_ids)
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            cur = self._exec(
                f"DELETE FROM notes WHERE recording_id IN ({','.join('?' * len(part))})", part
            )
            removed += max(cur.rowcount, 0)
        return removed


# Columns added after a store's catalog may have been created, by table, with their SQL
# definitions.
_ADDED_COLUMNS = {
    "recordings": {
        "attrs": "TEXT NOT NULL DEFAULT '{}'",
        "recovery": "TEXT",
        "recovery_sha256": "TEXT",
        "recovery_log_size": "INTEGER",
        "node": "TEXT",
    },
    "requests": {
        "identity_method": "TEXT",
        "identity_note": "TEXT NOT NULL DEFAULT ''",
        "identity_verified_by": "TEXT",
        "identity_verified_at": "INTEGER",
    },
}


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a catalog made by an earlier version up to the current schema."""
    for table, added in _ADDED_COLUMNS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})").fetchall()}
        for name, definition in added.items():
            if name not in have:
                try:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # another process added it first
                        raise
    # Recordings were named by their path in the store before blob stores named them.
    db.execute("UPDATE recordings SET file = substr(file, 12) WHERE file LIKE 'recordings/%'")


def _to_sql(name: str, value: Any) -> Any:
    if name == "pauses":
        return json.dumps([list(p) for p in value])
    if name == "attrs":
        return json.dumps(dict(value or {}), sort_keys=True, ensure_ascii=False)
    if name == "truncated":
        return int(bool(value))
    return value


def _row(values: Sequence[Any]) -> RecordingRow:
    data = dict(zip(_COLUMNS, values, strict=True))
    data["pauses"] = [tuple(p) for p in json.loads(data["pauses"] or "[]")]
    data["truncated"] = bool(data["truncated"])
    data["attrs"] = json.loads(data["attrs"] or "{}")
    return RecordingRow(**data)
