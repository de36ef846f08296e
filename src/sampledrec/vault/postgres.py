"""The recordings catalog in PostgreSQL: :class:`PostgresCatalog`, shared by a deployment's nodes.

Same rows, holds and requests as :class:`~sampledrec.vault.catalog.SqliteCatalog`, and the same
contract suite (``tests/test_backends.py``). Times are BIGINT microseconds, ``pauses`` and
``attrs`` JSONB, wrapped keys BYTEA; ids sort bytewise (``COLLATE "C"``) whatever the database's
locale, as in SQLite. The schema is versioned (component ``catalog`` in ``schema_version``,
migrated under an advisory lock: docs/decisions/0026-postgresql.md). Every method is one
statement, so one transaction at READ COMMITTED: readers see an
:meth:`~PostgresCatalog.update_many` whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import Any, Final

from .._hazmat.postgres import Migration, PgConnection
from .catalog import REQUEST_UPDATABLE, Hold, RecordingRow, SealedNote, SubjectRequest

__all__ = ["PostgresCatalog"]

_COLUMNS: Final = [f.name for f in fields(RecordingRow)]
_REQUEST_COLUMNS: Final = [f.name for f in fields(SubjectRequest)]
_HOLD_COLUMNS: Final = "hold_id, reason, created_at, until, released_at"

MIGRATIONS: Final = (
    Migration(
        1,
        "recordings, holds, hold members and data-subject requests",
        """
CREATE TABLE recordings (
    recording_id TEXT COLLATE "C" PRIMARY KEY,
    call_ref TEXT,
    rule TEXT NOT NULL,
    purpose TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    epoch_id TEXT NOT NULL,
    decision_index BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    expires_at_sealed BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    bucket TEXT NOT NULL,
    wrapped_key BYTEA,
    audio_format TEXT NOT NULL,
    file TEXT NOT NULL,
    status TEXT NOT NULL,
    ended_at BIGINT,
    duration_ms BIGINT,
    plaintext_bytes BIGINT,
    ciphertext_bytes BIGINT,
    ciphertext_sha256 TEXT,
    caller_pseudonym TEXT,
    agent TEXT,
    pauses JSONB NOT NULL DEFAULT '[]',
    truncated BOOLEAN NOT NULL DEFAULT false,
    attrs JSONB NOT NULL DEFAULT '{}',
    recovery TEXT,
    recovery_sha256 TEXT,
    recovery_log_size BIGINT
);
CREATE INDEX recordings_status ON recordings (status);
CREATE INDEX recordings_expiry ON recordings (expires_at);
CREATE INDEX recordings_caller ON recordings (caller_pseudonym);
CREATE INDEX recordings_bucket ON recordings (bucket);
CREATE INDEX recordings_start ON recordings (started_at, recording_id);
CREATE TABLE holds (
    hold_id TEXT COLLATE "C" PRIMARY KEY,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    until BIGINT,
    released_at BIGINT
);
CREATE TABLE hold_members (
    hold_id TEXT COLLATE "C" NOT NULL,
    recording_id TEXT COLLATE "C" NOT NULL,
    wrapped_key BYTEA,
    PRIMARY KEY (hold_id, recording_id)
);
CREATE INDEX hold_members_recording ON hold_members (recording_id);
CREATE TABLE requests (
    request_id TEXT COLLATE "C" PRIMARY KEY,
    kind TEXT NOT NULL,
    caller_pseudonym TEXT,
    received_at BIGINT NOT NULL,
    deadline BIGINT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    completed_at BIGINT,
    identity_method TEXT,
    identity_note TEXT NOT NULL DEFAULT '',
    identity_verified_by TEXT,
    identity_verified_at BIGINT
);
""",
    ),
    Migration(
        2,
        "review notes, sealed",
        """
CREATE TABLE notes (
    note_id TEXT COLLATE "C" PRIMARY KEY,
    recording_id TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    sealed BYTEA NOT NULL
);
CREATE INDEX notes_recording ON notes (recording_id);
""",
    ),
    Migration(
        3,
        "recordings name the node that opened them",
        'ALTER TABLE recordings ADD COLUMN node TEXT COLLATE "C"',
    ),
)


class PostgresCatalog:
    """The catalog in a PostgreSQL database named by ``dsn`` (a libpq URL or ``key=value``
    string; its password, if any, is never shown: ``repr`` and errors redact it). Safe for the
    threads of one process (one connection, taken in turns) and for any number of processes and
    nodes (PostgreSQL's own locking). Needs the ``postgres`` extra (psycopg 3)."""

    def __init__(self, dsn: str) -> None:
        self._db = PgConnection(dsn, what="the catalog", component="catalog", migrations=MIGRATIONS)

    def __repr__(self) -> str:
        return f"PostgresCatalog({self._db.where!r})"

    def close(self) -> None:
        self._db.close()

    # Every method is one statement, so one transaction of its own (autocommit).

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.run(
            lambda conn: conn.execute(sql.encode(), params).fetchall(), atomic=False
        )

    def _do(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.run(lambda conn: conn.execute(sql.encode(), params), atomic=False)

    def add(self, row: RecordingRow) -> None:
        marks = ",".join(["%s"] * len(_COLUMNS))
        self._do(
            f"INSERT INTO recordings ({','.join(_COLUMNS)}) VALUES ({marks})",
            [_to_sql(name, getattr(row, name)) for name in _COLUMNS],
        )

    def update(self, recording_id: str, **changes: Any) -> None:
        sets, values = _assignments(changes)
        if sets:
            self._do(
                f"UPDATE recordings SET {sets} WHERE recording_id = %s", [*values, recording_id]
            )

    def update_many(self, recording_ids: Sequence[str], **changes: Any) -> None:
        """Apply the same changes to many recordings, in one transaction."""
        sets, values = _assignments(changes)
        if not sets or not recording_ids:
            return
        self._do(
            f"UPDATE recordings SET {sets} WHERE recording_id = ANY(%s::text[])",
            [*values, list(recording_ids)],
        )

    def get(self, recording_id: str) -> RecordingRow | None:
        got = self._all(
            f"SELECT {','.join(_COLUMNS)} FROM recordings WHERE recording_id = %s", [recording_id]
        )
        return _row(got[0]) if got else None

    def find(
        self, *, status: Sequence[str] | None = None, caller_pseudonym: str | None = None
    ) -> list[RecordingRow]:
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ANY(%s::text[])")
            params.append(list(status))
        if caller_pseudonym is not None:
            where.append("caller_pseudonym = %s")
            params.append(caller_pseudonym)
        sql = f"SELECT {','.join(_COLUMNS)} FROM recordings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at, recording_id"
        return [_row(r) for r in self._all(sql, params)]

    def __iter__(self) -> Iterator[RecordingRow]:
        return iter(self.find())

    # -- holds --------------------------------------------------------------------------------

    def add_hold(self, hold: Hold) -> None:
        self._do(
            f"INSERT INTO holds ({_HOLD_COLUMNS}) VALUES (%s, %s, %s, %s, %s)",
            [hold.hold_id, hold.reason, hold.created_at, hold.until, hold.released_at],
        )

    def get_hold(self, hold_id: str) -> Hold | None:
        got = self._all(f"SELECT {_HOLD_COLUMNS} FROM holds WHERE hold_id = %s", [hold_id])
        return Hold(*got[0]) if got else None

    def holds(self) -> list[Hold]:
        rows = self._all(f"SELECT {_HOLD_COLUMNS} FROM holds ORDER BY created_at, hold_id")
        return [Hold(*r) for r in rows]

    def update_hold(self, hold_id: str, **changes: Any) -> None:
        allowed = {"reason", "until", "released_at"}
        if set(changes) - allowed:
            raise ValueError(f"unknown hold columns {sorted(set(changes) - allowed)}")
        if changes:
            sets = ", ".join(f"{k} = %s" for k in changes)
            self._do(f"UPDATE holds SET {sets} WHERE hold_id = %s", [*changes.values(), hold_id])

    def add_hold_member(self, hold_id: str, recording_id: str, wrapped_key: bytes) -> None:
        self._do(
            "INSERT INTO hold_members (hold_id, recording_id, wrapped_key) VALUES (%s, %s, %s) "
            "ON CONFLICT (hold_id, recording_id) DO UPDATE SET wrapped_key = excluded.wrapped_key",
            [hold_id, recording_id, wrapped_key],
        )

    def hold_members(self, hold_id: str) -> list[tuple[str, bytes | None]]:
        rows = self._all(
            "SELECT recording_id, wrapped_key FROM hold_members WHERE hold_id = %s "
            "ORDER BY recording_id",
            [hold_id],
        )
        return [(r[0], r[1]) for r in rows]

    def holds_of(self, recording_id: str) -> list[tuple[Hold, bytes | None]]:
        rows = self._all(
            "SELECT h.hold_id, h.reason, h.created_at, h.until, h.released_at, m.wrapped_key "
            "FROM hold_members m JOIN holds h ON h.hold_id = m.hold_id "
            "WHERE m.recording_id = %s ORDER BY h.created_at, h.hold_id",
            [recording_id],
        )
        return [(Hold(*r[:5]), r[5]) for r in rows]

    def forget_hold_key(self, hold_id: str, recording_id: str) -> None:
        self._do(
            "UPDATE hold_members SET wrapped_key = NULL WHERE hold_id = %s AND recording_id = %s",
            [hold_id, recording_id],
        )

    # -- data-subject requests ----------------------------------------------------------------

    def add_request(self, request: SubjectRequest) -> None:
        marks = ",".join(["%s"] * len(_REQUEST_COLUMNS))
        self._do(
            f"INSERT INTO requests ({','.join(_REQUEST_COLUMNS)}) VALUES ({marks})",
            [getattr(request, name) for name in _REQUEST_COLUMNS],
        )

    def update_request(self, request_id: str, **changes: Any) -> None:
        if set(changes) - REQUEST_UPDATABLE:
            raise ValueError(f"unknown request columns {sorted(set(changes) - REQUEST_UPDATABLE)}")
        if changes:
            sets = ", ".join(f"{k} = %s" for k in changes)
            self._do(
                f"UPDATE requests SET {sets} WHERE request_id = %s", [*changes.values(), request_id]
            )

    def requests(self, *, status: Sequence[str] | None = None) -> list[SubjectRequest]:
        sql = f"SELECT {','.join(_REQUEST_COLUMNS)} FROM requests"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ANY(%s::text[])"
            params.append(list(status))
        sql += " ORDER BY received_at, request_id"
        return [SubjectRequest(*r) for r in self._all(sql, params)]

    # -- review notes -------------------------------------------------------------------------

    def add_note(self, note: SealedNote) -> None:
        self._do(
            "INSERT INTO notes (note_id, recording_id, created_at, sealed) VALUES (%s, %s, %s, %s)",
            [note.note_id, note.recording_id, note.created_at, bytes(note.sealed)],
        )

    def notes_of(self, recording_id: str) -> list[SealedNote]:
        rows = self._all(
            "SELECT note_id, recording_id, created_at, sealed FROM notes "
            "WHERE recording_id = %s ORDER BY created_at, note_id",
            [recording_id],
        )
        return [SealedNote(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def delete_notes(self, recording_ids: Sequence[str]) -> int:
        ids = list(recording_ids)
        if not ids:
            return 0
        rows = self._all(
            "DELETE FROM notes WHERE recording_id = ANY(%s::text[]) RETURNING note_id", [ids]
        )
        return len(rows)


def _assignments(changes: dict[str, Any]) -> tuple[str, list[Any]]:
    """``col = %s, ...`` and its values, for known recording columns only (names are checked
    against the row's fields before they reach the SQL)."""
    unknown = set(changes) - set(_COLUMNS)
    if unknown:
        raise ValueError(f"unknown catalog columns {sorted(unknown)}")
    sets = ", ".join(f"{k} = %s" for k in changes)
    return sets, [_to_sql(k, v) for k, v in changes.items()]


def _to_sql(name: str, value: Any) -> Any:
    from psycopg.types.json import Jsonb

    if name == "pauses":
        return Jsonb([list(p) for p in value])
    if name == "attrs":
        return Jsonb(dict(value or {}))
    if name == "truncated":
        return bool(value)
    return value


def _row(values: Sequence[Any]) -> RecordingRow:
    data = dict(zip(_COLUMNS, values, strict=True))
    data["pauses"] = [tuple(p) for p in data["pauses"] or []]
    data["attrs"] = dict(data["attrs"] or {})
    return RecordingRow(**data)
