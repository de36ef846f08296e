"""Which calls have been decided, and how: the :class:`DecidedCalls` protocol and its backends.

``decide`` is idempotent (DESIGN.md §4): asking again about a call already decided in the epoch
returns the first decision, whatever the new request says, in any process of the store
(docs/decisions/0015-idempotent-decide.md). The samplers of a store share an index of first
decisions for that: before a decision is returned and logged, its call's entry is written to
the index, unless the call is already there, in which case the earlier decision is the answer.

A call is named as in the caps ledger: its reference's kind (``b"\\x01"`` text, ``b"\\x02"``
bytes: the audit tells ``"c1"`` from ``b"c1"``) and its full AES-CMAC tag under the epoch key
(the draw is bytes 1 to 7 of the name). Without the epoch key that says nothing about the call
reference, which is never kept. The index keeps what a repeat needs to answer like the first
decision: reason, rule (with its purpose, rate and threshold), policy version, the caller's
pseudonym, the time, the attributes its rule was chosen by (to log an identical copy), and
whether its log entry is known to be durable.

- :class:`SqliteDecidedCalls` (``STORE/decided.sqlite``; what a store's logged sampler uses):
  one small SQLite write per new call, committed before the decision is returned (see the class
  for why ``synchronous=NORMAL`` is enough there, and when the store re-reads its log).
- :class:`~sampledrec.sampling.postgres.PostgresDecidedCalls`: a table of a PostgreSQL
  database (what a store whose catalog is on PostgreSQL uses), shared by every process and host
  that uses it (docs/decisions/0026-postgresql.md).
- :class:`MemoryDecidedCalls`: one process's memory (the fake of ``sampledrec.testing``).
"""

from __future__ import annotations

import operator
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, NamedTuple, Protocol, runtime_checkable

from .._hazmat.sqlite import boot_id, open_checkpointed_db
from ..errors import StoreError
from .caps import KEEP_DAYS
from .record import REASONS, Reason

__all__ = [
    "DecidedCalls",
    "FirstDecision",
    "MemoryDecidedCalls",
    "SqliteDecidedCalls",
    "prune_before",
]

_REASON_CODES: Final = {reason: code for code, reason in enumerate(REASONS)}
_BY_KEY: Final = operator.itemgetter(0, 1)  # a row's (epoch_id, call)
_EPOCH_US: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)


class FirstDecision(NamedTuple):
    """The first decision of one call in one epoch, as the index keeps it.

    ``call`` is the reference's kind and full CMAC tag (module docstring). ``logged`` says that
    its decision entry is known to be durable in the log (at ``log_index`` when known): a
    sampler in another process can then answer a repeat without logging anything.
    ``attributes`` is what the decision logged of the call's attributes
    (:meth:`~sampledrec.sampling.policy.Policy.attributes_json`), so that a copy of its entry
    logs the same.
    """

    epoch_id: str
    call: bytes
    reason: Reason
    rule: str
    purpose: str
    rate: str
    policy_version: str
    threshold: int
    caller_pseudonym: str | None
    decided_at: datetime
    logged: bool = False
    log_index: int | None = None
    attributes: str | None = None

    @property
    def draw(self) -> int:
        """The call's 56-bit draw: bytes 1 to 7 of its name (the first 7 of its tag)."""
        return int.from_bytes(self.call[1:8], "big")


@runtime_checkable
class DecidedCalls(Protocol):
    """The first decision of every call decided in the recent epochs, for a whole store."""

    def remember(self, decisions: Sequence[FirstDecision]) -> list[FirstDecision | None]:
        """For each decision in order, as one atomic step: if its call (``epoch_id``, ``call``)
        is not remembered yet (nor earlier in ``decisions``), remember it and answer ``None``;
        otherwise answer the call's first decision. What is remembered is durable, for every
        other handle on the same index, before this returns."""
        ...

    def get(self, epoch_id: str, call: bytes) -> FirstDecision | None:
        """The first decision of a call, or ``None`` if it is not remembered."""
        ...

    def mark_logged(self, calls: Sequence[tuple[str, bytes]]) -> None:
        """Note that the first decisions of these ``(epoch_id, call)`` are durable in the log."""
        ...

    def prune(self, now: datetime) -> None:
        """Forget the calls of epochs more than :data:`~sampledrec.sampling.caps.KEEP_DAYS`
        days before ``now`` (give the real time, never a simulated one ahead of it)."""
        ...

    def close(self) -> None: ...


def prune_before(now: datetime) -> str:
    """The first epoch id still kept at ``now``: epochs (``YYYY-MM-DD``) before it are dropped."""
    return (now.astimezone(UTC).date() - timedelta(days=KEEP_DAYS)).isoformat()


class MemoryDecidedCalls:
    """An index in one process's memory (threads share it; processes do not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, bytes], FirstDecision] = {}
        self._closed = False

    def _open(self) -> dict[tuple[str, bytes], FirstDecision]:
        if self._closed:  # as the SQLite index, whose connection is gone
            raise StoreError("the decided-calls index is closed")
        return self._calls

    def remember(self, decisions: Sequence[FirstDecision]) -> list[FirstDecision | None]:
        out: list[FirstDecision | None] = []
        with self._lock:
            calls = self._open()
            for d in decisions:
                earlier = calls.setdefault((d.epoch_id, d.call), d)
                out.append(None if earlier is d else earlier)
        return out

    def get(self, epoch_id: str, call: bytes) -> FirstDecision | None:
        with self._lock:
            return self._open().get((epoch_id, call))

    def mark_logged(self, calls: Sequence[tuple[str, bytes]]) -> None:
        with self._lock:
            known = self._open()
            for name in calls:
                d = known.get(name)
                if d is not None and not d.logged:
                    known[name] = d._replace(logged=True)

    def prune(self, now: datetime) -> None:
        cutoff = prune_before(now)
        with self._lock:
            known = self._open()
            for name in [n for n in known if n[0] < cutoff]:
                del known[name]

    def close(self) -> None:
        self._closed = True


_SCHEMA = """
CREATE TABLE IF NOT EXISTS decided_rules (
    id INTEGER PRIMARY KEY,
    policy_version TEXT NOT NULL,
    rule TEXT NOT NULL,
    purpose TEXT NOT NULL,
    rate TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    UNIQUE (policy_version, rule)
);
CREATE TABLE IF NOT EXISTS decided_calls (
    epoch_id TEXT NOT NULL,
    call BLOB NOT NULL,
    reason INTEGER NOT NULL,
    rule_id INTEGER NOT NULL,
    caller_pseudonym TEXT,
    decided_at INTEGER NOT NULL,
    logged INTEGER NOT NULL DEFAULT 0,
    log_index INTEGER,
    attributes_id INTEGER,
    PRIMARY KEY (epoch_id, call)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decided_attributes (
    id INTEGER PRIMARY KEY,
    attributes TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_INSERT: Final = (
    "INSERT OR IGNORE INTO decided_calls (epoch_id, call, reason, rule_id, caller_pseudonym, "
    "decided_at, logged, log_index, attributes_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_REPLAY: Final = (
    "INSERT INTO decided_calls (epoch_id, call, reason, rule_id, caller_pseudonym, decided_at, "
    "logged, log_index, attributes_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
    "(epoch_id, call) DO UPDATE SET logged = 1, log_index = coalesce(log_index, "
    "excluded.log_index)"
)
_SELECT: Final = (
    "SELECT c.reason, r.rule, r.purpose, r.rate, r.policy_version, r.threshold, "
    "c.caller_pseudonym, c.decided_at, c.logged, c.log_index, a.attributes FROM decided_calls c "
    "JOIN decided_rules r ON r.id = c.rule_id LEFT JOIN decided_attributes a "
    "ON a.id = c.attributes_id WHERE c.epoch_id = ? AND c.call = ?"
)


class SqliteDecidedCalls:
    """The store's index in SQLite; safe to share between threads and processes of one host.

    Every :meth:`remember` of a new call is one SQLite commit before it returns: processes
    take turns (``INSERT OR IGNORE`` on the call's key), so two of them asking about the same
    call at once get one first decision. Commits are not fsynced one by one
    (``synchronous=NORMAL``): a committed entry survives the crash of any process, since it is
    in the operating system's cache, but not a crash of the machine. The log's entries, which
    are fsynced, could then outlive their index entries, and a retry be decided anew. So the
    file records the boot in which it was last used (:func:`~sampledrec._hazmat.sqlite.
    boot_id`): when it was written in an earlier boot, :attr:`unclean` is true, and
    :meth:`sampledrec.Store.sampler` re-reads the recent decisions from the log into it
    (:meth:`replay`) before anything is decided. Where the system does not tell its boot, every
    commit is fsynced (``synchronous=FULL``) instead and the index is never unclean.

    ``now`` prunes epochs more than :data:`~sampledrec.sampling.caps.KEEP_DAYS` days old (give
    the real time, not a simulated one ahead of it).
    """

    def __init__(self, path: str | Path, *, now: datetime | None = None) -> None:
        self.path = Path(path)
        self._boot = boot_id()
        self._db, self._checkpoints = open_checkpointed_db(
            self.path,
            what="the decided-calls index",
            synchronous="NORMAL" if self._boot is not None else "FULL",
        )
        self._lock = threading.Lock()
        self._rule_ids: dict[tuple[str, str], int] = {}
        self._attributes_ids: dict[str, int] = {}
        self._last_at: tuple[datetime | None, int] = (None, 0)
        try:
            self._db.executescript(_SCHEMA)
            self._add_attributes_column()
            row = self._db.execute("SELECT value FROM meta WHERE name = 'boot_id'").fetchone()
            #: Written in an earlier boot (or never): commits may have been lost since.
            self.unclean = self._boot is not None and (row is None or row[0] != self._boot)
            if now is not None:
                self.prune(now)
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()
            self._checkpoints.close()
            raise StoreError(
                f"{self.path}: cannot open the decided-calls index ({exc}); check that the "
                "store folder is writable by this user"
            ) from None

    def _add_attributes_column(self) -> None:
        """An index from before decisions logged their attributes gets the column (another
        process opening it at the same moment may add it first)."""

        def has_it() -> bool:
            return any(
                c[1] == "attributes_id"
                for c in self._db.execute("PRAGMA table_info(decided_calls)")
            )

        if has_it():
            return
        try:
            self._db.execute("ALTER TABLE decided_calls ADD COLUMN attributes_id INTEGER")
        except sqlite3.OperationalError:
            if not has_it():
                raise

    def _failed(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"{self.path}: the decided-calls index failed ({exc})")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT may already have rolled back
                db.execute("ROLLBACK")
            raise

    def _rule_id(self, d: FirstDecision) -> int:
        key = (d.policy_version, d.rule)
        found = self._rule_ids.get(key)
        if found is None:
            db = self._db
            db.execute(
                "INSERT OR IGNORE INTO decided_rules (policy_version, rule, purpose, rate, "
                "threshold) VALUES (?, ?, ?, ?, ?)",
                (d.policy_version, d.rule, d.purpose, d.rate, d.threshold),
            )
            found = int(
                db.execute(
                    "SELECT id FROM decided_rules WHERE policy_version = ? AND rule = ?", key
                ).fetchone()[0]
            )
            self._rule_ids[key] = found
        return found

    def _attributes_id(self, text: str) -> int:
        """The id of a distinct attributes text (a few per policy: kept once, not per call)."""
        found = self._attributes_ids.get(text)
        if found is None:
            db = self._db
            db.execute("INSERT OR IGNORE INTO decided_attributes (attributes) VALUES (?)", (text,))
            found = int(
                db.execute(
                    "SELECT id FROM decided_attributes WHERE attributes = ?", (text,)
                ).fetchone()[0]
            )
            if len(self._attributes_ids) >= 4096:
                self._attributes_ids.clear()
            self._attributes_ids[text] = found
        return found

    def _row(self, d: FirstDecision) -> tuple[object, ...]:
        at = d.decided_at
        if at is not self._last_at[0]:  # a batch's decisions share one time: computed once
            self._last_at = (at, (at - _EPOCH_US) // _US)
        return (
            d.epoch_id,
            d.call,
            _REASON_CODES[d.reason],
            self._rule_id(d),
            d.caller_pseudonym,
            self._last_at[1],
            int(d.logged),
            d.log_index,
            None if d.attributes is None else self._attributes_id(d.attributes),
        )

    def remember(self, decisions: Sequence[FirstDecision]) -> list[FirstDecision | None]:
        if not decisions:
            return []
        with self._lock:
            try:
                # A rule seen for the first time is committed first (harmless if nothing else
                # is), so that a rolled back transaction below never takes a cached rule id.
                rows = [self._row(d) for d in decisions]
                if len(rows) == 1:  # the single decision: one autocommitted statement
                    if self._db.execute(_INSERT, rows[0]).rowcount == 1:
                        return [None]
                    return [self._get(decisions[0].epoch_id, decisions[0].call)]
                with self._transaction() as db:
                    # In key order: neighbouring keys share B-tree pages (about a quarter
                    # faster on a large index); the order of answers is restored below.
                    if db.executemany(_INSERT, sorted(rows, key=_BY_KEY)).rowcount == len(rows):
                        return [None] * len(rows)  # all new: the usual case
                    db.execute("ROLLBACK")  # some were known: call by call, in order
                    db.execute("BEGIN IMMEDIATE")
                    out: list[FirstDecision | None] = []
                    for d, row in zip(decisions, rows, strict=True):
                        new = db.execute(_INSERT, row).rowcount == 1
                        out.append(None if new else self._get(d.epoch_id, d.call))
                    return out
            except sqlite3.Error as exc:
                raise self._failed(exc) from None

    def _get(self, epoch_id: str, call: bytes) -> FirstDecision | None:
        found = self._db.execute(_SELECT, (epoch_id, call)).fetchone()
        if found is None:
            return None
        reason, rule, purpose, rate, version, threshold, pseudonym, at, logged, index, attrs = found
        return FirstDecision(
            epoch_id,
            call,
            REASONS[reason],
            rule,
            purpose,
            rate,
            version,
            threshold,
            pseudonym,
            _EPOCH_US + at * _US,
            bool(logged),
            index,
            attrs,
        )

    def get(self, epoch_id: str, call: bytes) -> FirstDecision | None:
        with self._lock:
            try:
                return self._get(epoch_id, call)
            except sqlite3.Error as exc:
                raise self._failed(exc) from None

    def mark_logged(self, calls: Sequence[tuple[str, bytes]]) -> None:
        if not calls:
            return
        with self._lock:
            try:
                with self._transaction() as db:
                    db.executemany(
                        "UPDATE decided_calls SET logged = 1 WHERE epoch_id = ? AND call = ?",
                        calls,
                    )
            except sqlite3.Error as exc:
                raise self._failed(exc) from None

    def prune(self, now: datetime) -> None:
        with self._lock:
            try:
                with self._transaction() as db:
                    db.execute("DELETE FROM decided_calls WHERE epoch_id < ?", (prune_before(now),))
            except sqlite3.Error as exc:
                raise self._failed(exc) from None

    def replay(self, decisions: Sequence[FirstDecision]) -> None:
        """Write first decisions read back from the log (each call's first entry, logged):
        a call not remembered is added, a remembered one is marked logged (its first decision
        is kept, whatever the log says after it). Then the index is clean for this boot."""
        with self._lock:
            try:
                with self._transaction() as db:
                    for d in decisions:
                        db.execute(_REPLAY, self._row(d._replace(logged=True)))
                    if self._boot is not None:
                        db.execute(
                            "INSERT INTO meta (name, value) VALUES ('boot_id', ?) "
                            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                            (self._boot,),
                        )
            except sqlite3.Error as exc:
                raise self._failed(exc) from None
        self.unclean = False

    def close(self) -> None:
        self._checkpoints.close()
        with self._lock:
            self._db.close()
