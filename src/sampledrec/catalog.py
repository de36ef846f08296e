"""The recordings catalog: one row per recording, behind the :class:`Catalog` protocol.

The default backend is SQLite at ``STORE/catalog.sqlite`` (WAL mode, so readers do not block the
recorder); a PostgreSQL backend can implement the same protocol. A row holds the recording's
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

from .errors import StoreError

__all__ = ["Catalog", "RecordingRow", "SqliteCatalog", "Status"]

Status = Literal["open", "sealed", "truncated", "aborted", "expired", "erased"]


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
    wrapped_key: bytes
    audio_format: str
    file: str  # relative to the store
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

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["id"] = doc.pop("recording_id")
        doc.pop("wrapped_key")
        doc["pauses"] = [list(p) for p in self.pauses]
        return doc


@runtime_checkable
class Catalog(Protocol):
    """Where recordings are listed. Implementations: :class:`SqliteCatalog`."""

    def add(self, row: RecordingRow) -> None: ...

    def update(self, recording_id: str, **changes: Any) -> None: ...

    def get(self, recording_id: str) -> RecordingRow | None: ...

    def find(
        self, *, status: Sequence[str] | None = None, caller_pseudonym: str | None = None
    ) -> list[RecordingRow]: ...

    def close(self) -> None: ...


_COLUMNS = [f.name for f in fields(RecordingRow)]
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
    truncated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS recordings_status ON recordings(status);
CREATE INDEX IF NOT EXISTS recordings_expiry ON recordings(expires_at);
CREATE INDEX IF NOT EXISTS recordings_caller ON recordings(caller_pseudonym);
CREATE INDEX IF NOT EXISTS recordings_bucket ON recordings(bucket);
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
            self._db.executescript(_SCHEMA)
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
        sets = ",".join(f"{k}=?" for k in changes)
        values = [_to_sql(k, v) for k, v in changes.items()]
        self._exec(f"UPDATE recordings SET {sets} WHERE recording_id=?", [*values, recording_id])

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


def _to_sql(name: str, value: Any) -> Any:
    if name == "pauses":
        return json.dumps([list(p) for p in value])
    if name == "truncated":
        return int(bool(value))
    return value


def _row(values: Sequence[Any]) -> RecordingRow:
    data = dict(zip(_COLUMNS, values, strict=True))
    data["pauses"] = [tuple(p) for p in json.loads(data["pauses"] or "[]")]
    data["truncated"] = bool(data["truncated"])
    return RecordingRow(**data)
