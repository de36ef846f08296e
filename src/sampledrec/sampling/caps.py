"""Per-agent caps, counted per store: the :class:`CapLedger` protocol and its backends.

A rule may cap the calls selected under it per agent and per UTC day or ISO week (docs/decisions
0002 and 0010). The audit replays the caps over the whole log, so the counts must be the store's,
not one sampler process's: several samplers (threads, processes on the store's host, a restart
in the middle of the day) must see and update the same counts, one decision at a time.

A ledger answers, for a call whose draw selected it under a capped rule: "sampled" (and counts
it) or "cap_reached". It also remembers the answer per (epoch, call), so that a retry of the same
call, in any process, gets the same answer and is not counted twice. Calls are remembered by
their reference's kind (text or bytes) and full AES-CMAC tag under the epoch key (the draw is its
first 7 bytes): without the key that says nothing about the call reference. Agents are kept as
keyed pseudonyms when the ledger is given a key (the store's sampler gives it one).

- :class:`SqliteCapLedger` (``STORE/caps.sqlite``; what :meth:`sampledrec.Store.sampler` uses):
  every answer is one SQLite write transaction (``BEGIN IMMEDIATE``, so processes take turns),
  durable (``synchronous=FULL``) before the decision is returned, so that a crash can only leave
  a call counted that was never logged (never the reverse, which could exceed a cap). Only calls
  that a capped rule selected pay for it. SQLite's WAL needs the file on a local filesystem.
- :class:`~sampledrec.sampling.postgres.PostgresCapLedger`: tables of a PostgreSQL database
  (what a store whose catalog is on PostgreSQL uses), shared by every process and host that
  uses it (docs/decisions/0026-postgresql.md).
- :class:`MemoryCapLedger`: one process's memory (a bare :class:`~sampledrec.Sampler`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import sqlite3
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from .._hazmat.sqlite import open_checkpointed_db
from ..errors import StoreError

__all__ = [
    "CapLedger",
    "CapRequest",
    "MemoryCapLedger",
    "SqliteCapLedger",
    "agent_pseudonym",
    "cap_agent",
    "cap_periods",
    "prune_cutoffs",
]

CapAnswer = Literal["sampled", "cap_reached"]
KEEP_DAYS = 15  # counts and remembered calls older than this are dropped (weeks are 7 days)


class CapRequest(NamedTuple):
    """A call selected by its draw under a capped rule: ``limits`` are ``(period, cap)`` pairs
    (see :func:`cap_periods`)."""

    epoch_id: str
    call: bytes  # names the call: its reference's kind, then its AES-CMAC tag under the epoch key
    rule: str
    agent: str
    limits: tuple[tuple[str, int], ...]


def cap_agent(agent: str) -> str:
    """The agent as caps count it: one agent however its id is spelled (Unicode NFKC, case
    folded, surrounding spaces dropped), so that ``a0``, ``A0`` and a full-width ``a0``
    (U+FF41 U+FF10) share one count; the audit counts them the same way.

    >>> cap_agent(" A0 ") == cap_agent("\uff41\uff10") == "a0"
    True
    """
    return unicodedata.normalize("NFKC", agent).casefold().strip()


def cap_periods(
    now: datetime, per_day: int | None, per_week: int | None
) -> tuple[tuple[str, int], ...]:
    """The periods a decision at ``now`` counts in: ``D2026-11-22`` (UTC day) and ``W2026-47``
    (ISO week), each with its cap; the audit names them the same way."""
    if now.tzinfo is not None:
        now = now.astimezone(UTC)
    out = []
    if per_day is not None:
        out.append((f"D{now.date().isoformat()}", per_day))
    if per_week is not None:
        year, week, _ = now.isocalendar()
        out.append((f"W{year}-{week:02d}", per_week))
    return tuple(out)


def prune_cutoffs(now: datetime) -> tuple[str, str, str]:
    """What a ledger keeps at ``now``: the first day period (``D...``), week period (``W...``)
    and epoch id not older than :data:`KEEP_DAYS`; anything before them may be dropped."""
    cutoff = now.astimezone(UTC) - timedelta(days=KEEP_DAYS)
    year, week, _ = cutoff.isocalendar()
    day = cutoff.date().isoformat()
    return f"D{day}", f"W{year}-{week:02d}", day


def agent_pseudonym(key: bytes | None, agent: str) -> str:
    """The agent as a ledger keeps it: a keyed pseudonym (32 hex digits) when the ledger has a
    ``key``, else as given."""
    if key is None:
        return agent
    raw = b"sampledrec/v1/cap-agent\x00" + agent.encode("utf-8", "surrogatepass")
    return hmac.new(key, raw, hashlib.sha256).hexdigest()[:32]


@runtime_checkable
class CapLedger(Protocol):
    """Counts selected calls against per-agent caps, for a whole store."""

    def decide(self, requests: Sequence[CapRequest]) -> list[CapAnswer]:
        """Answer each request in order (as if one after the other), atomically."""
        ...

    def close(self) -> None: ...


class MemoryCapLedger:
    """A ledger in one process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._calls: dict[tuple[str, bytes], CapAnswer] = {}

    def decide(self, requests: Sequence[CapRequest]) -> list[CapAnswer]:
        with self._lock:
            return [self._one(r) for r in requests]

    def _one(self, req: CapRequest) -> CapAnswer:
        earlier = self._calls.get((req.epoch_id, req.call))
        if earlier is not None:
            return earlier
        keys = [(req.rule, req.agent, period) for period, _ in req.limits]
        full = any(
            self._counts.get(k, 0) >= cap for k, (_, cap) in zip(keys, req.limits, strict=True)
        )
        answer: CapAnswer = "cap_reached" if full else "sampled"
        if not full:
            for k in keys:
                self._counts[k] = self._counts.get(k, 0) + 1
        self._calls[(req.epoch_id, req.call)] = answer
        return answer

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cap_counts (
    rule TEXT NOT NULL,
    agent TEXT NOT NULL,
    period TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (rule, agent, period)
);
CREATE TABLE IF NOT EXISTS capped_calls (
    epoch_id TEXT NOT NULL,
    tag BLOB NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (epoch_id, tag)
);
"""


class SqliteCapLedger:
    """The store's ledger in SQLite; safe to share between threads and processes of one host.

    ``now`` prunes what is older than :data:`KEEP_DAYS` (give the real time, not a simulated
    one ahead of it); ``agent_key`` keeps agents as keyed pseudonyms instead of names.
    """

    def __init__(
        self, path: str | Path, *, now: datetime | None = None, agent_key: bytes | None = None
    ) -> None:
        self.path = Path(path)
        self._agent_key = agent_key
        self._db, self._checkpoints = open_checkpointed_db(
            self.path, what="the caps ledger", synchronous="FULL"
        )
        try:
            self._db.executescript(_SCHEMA)
            if now is not None:
                self._prune(now)
        except sqlite3.Error as exc:
            self._db.close()
            self._checkpoints.close()
            raise StoreError(
                f"{self.path}: cannot open the caps ledger ({exc}); check that the store "
                "folder is writable by this user"
            ) from None
        self._lock = threading.Lock()

    def _agent(self, agent: str) -> str:
        return agent_pseudonym(self._agent_key, agent)

    def _prune(self, now: datetime) -> None:
        day, week, epoch = prune_cutoffs(now)
        with self._transaction():
            self._db.execute(
                "DELETE FROM cap_counts WHERE (period LIKE 'D%' AND period < ?) "
                "OR (period LIKE 'W%' AND period < ?)",
                (day, week),
            )
            self._db.execute("DELETE FROM capped_calls WHERE epoch_id < ?", (epoch,))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
        try:
            yield
            db.execute("COMMIT")  # durable (synchronous=FULL) before anybody acts on it
        except BaseException:
            if db.in_transaction:  # a failed COMMIT may already have rolled back
                db.execute("ROLLBACK")
            raise

    def decide(self, requests: Sequence[CapRequest]) -> list[CapAnswer]:
        if not requests:
            return []
        with self._lock:
            try:
                with self._transaction():
                    return [self._one(r) for r in requests]
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: the caps ledger failed ({exc})") from None

    def _one(self, req: CapRequest) -> CapAnswer:
        db = self._db
        row = db.execute(
            "SELECT answer FROM capped_calls WHERE epoch_id = ? AND tag = ?",
            (req.epoch_id, req.call),
        ).fetchone()
        if row is not None:
            return "cap_reached" if row[0] == "cap_reached" else "sampled"
        agent = self._agent(req.agent)
        full = False
        for period, cap in req.limits:
            got = db.execute(
                "SELECT count FROM cap_counts WHERE rule = ? AND agent = ? AND period = ?",
                (req.rule, agent, period),
            ).fetchone()
            full = full or (got[0] if got is not None else 0) >= cap
        answer: CapAnswer = "cap_reached" if full else "sampled"
        if not full:
            db.executemany(
                "INSERT INTO cap_counts (rule, agent, period, count) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (rule, agent, period) DO UPDATE SET count = count + 1",
                [(req.rule, agent, period) for period, _ in req.limits],
            )
        db.execute(
            "INSERT INTO capped_calls (epoch_id, tag, answer) VALUES (?, ?, ?)",
            (req.epoch_id, req.call, answer),
        )
        return answer

    def replay(self, items: Sequence[tuple[CapRequest, CapAnswer]]) -> None:
        """Write answers already given (rebuilding the ledger from the log): a ``sampled`` one
        counts, every one is remembered; nothing is checked against the caps."""
        with self._lock, self._transaction():
            for req, answer in items:
                agent = self._agent(req.agent)
                if answer == "sampled":
                    self._db.executemany(
                        "INSERT INTO cap_counts (rule, agent, period, count) VALUES (?, ?, ?, 1) "
                        "ON CONFLICT (rule, agent, period) DO UPDATE SET count = count + 1",
                        [(req.rule, agent, period) for period, _ in req.limits],
                    )
                if req.call:
                    self._db.execute(
                        "INSERT OR IGNORE INTO capped_calls (epoch_id, tag, answer) "
                        "VALUES (?, ?, ?)",
                        (req.epoch_id, req.call, answer),
                    )

    def close(self) -> None:
        self._checkpoints.close()
        with self._lock:
            self._db.close()
