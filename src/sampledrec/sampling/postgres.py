"""The caps ledger and the decided-calls index in PostgreSQL, shared by a deployment's nodes.

:class:`PostgresCapLedger` (a :class:`~sampledrec.sampling.caps.CapLedger`) and
:class:`PostgresDecidedCalls` (a :class:`~sampledrec.sampling.decided.DecidedCalls`) keep what
:class:`~sampledrec.sampling.caps.SqliteCapLedger` and
:class:`~sampledrec.sampling.decided.SqliteDecidedCalls` keep, with the same keys (a call is its
epoch and its kind byte + AES-CMAC tag; agents are keyed pseudonyms when a key is given), so
that per-agent caps and idempotent decisions hold across every node of the database, not only
across the processes of one host. Both pass the contract suite (``tests/test_backends.py``).

Transactions run at READ COMMITTED; docs/decisions/0026-postgresql.md says why that is enough:

- **First decisions**: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` on the call's key. Of two
  nodes inserting the same call at once, one inserts; the other waits for its commit, inserts
  nothing, and reads the winner's row in its next statement (each statement of a READ COMMITTED
  transaction sees every commit made before it started).
- **Caps**: a batch first takes the row locks of every ``(rule, agent, period)`` count it may
  change (an upsert that inserts the missing ones at 0, in key order), then claims its calls
  (``ON CONFLICT DO NOTHING``, in key order), then counts. Deciders of one agent therefore take
  turns, each reading the counts its predecessor committed, and a call is counted by the one
  transaction that claimed it. Locks are always taken in key order, counts before calls, so no
  two deciders wait for each other; PostgreSQL's deadlock detector and a retry would settle it
  anyway.

Commits are durable before a decision is returned (``synchronous_commit`` is never off for
these sessions). The tables are versioned (components ``caps`` and ``decided`` in
``schema_version``) and pruned like the SQLite files (:data:`~sampledrec.sampling.caps.KEEP_DAYS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from .._hazmat.postgres import Migration, PgConnection
from .caps import CapAnswer, CapRequest, agent_pseudonym, prune_cutoffs
from .decided import FirstDecision, prune_before
from .record import REASONS, Reason

if TYPE_CHECKING:
    from .._hazmat.postgres import PgConn

__all__ = ["PostgresCapLedger", "PostgresDecidedCalls"]

_EPOCH_US: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_ROUNDS: Final = 3  # tries to settle a call whose row vanished between two statements (pruned)

CAPS_MIGRATIONS: Final = (
    Migration(
        1,
        "per-agent counts, and the answer given to each capped call",
        """
CREATE TABLE cap_counts (
    rule TEXT COLLATE "C" NOT NULL,
    agent TEXT COLLATE "C" NOT NULL,
    period TEXT COLLATE "C" NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (rule, agent, period)
);
CREATE TABLE capped_calls (
    epoch_id TEXT COLLATE "C" NOT NULL,
    tag BYTEA NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (epoch_id, tag)
);
""",
    ),
)

DECIDED_MIGRATIONS: Final = (
    Migration(
        1,
        "the first decision of each call in the recent epochs",
        """
CREATE TABLE decided_calls (
    epoch_id TEXT COLLATE "C" NOT NULL,
    call BYTEA NOT NULL,
    reason TEXT NOT NULL,
    rule TEXT NOT NULL,
    purpose TEXT NOT NULL,
    rate TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    threshold BIGINT NOT NULL,
    caller_pseudonym TEXT,
    decided_at BIGINT NOT NULL,
    logged BOOLEAN NOT NULL DEFAULT false,
    log_index BIGINT,
    attributes TEXT,
    PRIMARY KEY (epoch_id, call)
);
""",
    ),
)


def _vanished(what: str) -> Exception:
    """A row that a statement saw in conflict and the next did not find: pruned in between.
    Raised as a serialization failure, so that the transaction is rolled back and tried again."""
    from psycopg.errors import SerializationFailure

    return SerializationFailure(f"{what} vanished between two statements (pruned); try again")


# --------------------------------------------------------------------------------------------
# The caps ledger

_LOCK_COUNTS: Final = b"""
INSERT INTO cap_counts AS c (rule, agent, period, count)
SELECT rule, agent, period, 0 FROM unnest(%s::text[], %s::text[], %s::text[])
    AS k(rule, agent, period)
ON CONFLICT (rule, agent, period) DO UPDATE SET count = c.count
RETURNING rule, agent, period, count
"""
_CLAIM_CALLS: Final = b"""
INSERT INTO capped_calls (epoch_id, tag, answer)
SELECT epoch_id, tag, 'cap_reached' FROM unnest(%s::text[], %s::bytea[]) AS k(epoch_id, tag)
ON CONFLICT (epoch_id, tag) DO NOTHING
RETURNING epoch_id, tag
"""
_EARLIER_ANSWERS: Final = b"""
SELECT c.epoch_id, c.tag, c.answer FROM capped_calls c
JOIN unnest(%s::text[], %s::bytea[]) AS k(epoch_id, tag)
    ON c.epoch_id = k.epoch_id AND c.tag = k.tag
"""
_SAMPLED: Final = b"""
UPDATE capped_calls c SET answer = 'sampled'
FROM unnest(%s::text[], %s::bytea[]) AS k(epoch_id, tag)
WHERE c.epoch_id = k.epoch_id AND c.tag = k.tag
"""
_SET_COUNTS: Final = b"""
UPDATE cap_counts c SET count = k.count
FROM unnest(%s::text[], %s::text[], %s::text[], %s::integer[]) AS k(rule, agent, period, count)
WHERE c.rule = k.rule AND c.agent = k.agent AND c.period = k.period
"""

_Counter = tuple[str, str, str]  # (rule, agent, period)
_Call = tuple[str, bytes]  # (epoch_id, call)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as columns (one list per column), for ``unnest`` of arrays."""
    return [[r[i] for r in rows] for i in range(width)]


class PostgresCapLedger:
    """The caps ledger of a deployment, in the PostgreSQL database named by ``dsn``.

    ``now`` prunes what is older than :data:`~sampledrec.sampling.caps.KEEP_DAYS` (give the real
    time, not a simulated one ahead of it); ``agent_key`` keeps agents as keyed pseudonyms.
    Needs the ``postgres`` extra (psycopg 3); the DSN's password is never shown.
    """

    def __init__(
        self, dsn: str, *, now: datetime | None = None, agent_key: bytes | None = None
    ) -> None:
        self._agent_key = agent_key
        self._db = PgConnection(
            dsn, what="the caps ledger", component="caps", migrations=CAPS_MIGRATIONS
        )
        if now is not None:
            try:
                self._prune(now)
            except BaseException:
                self._db.close()
                raise

    def __repr__(self) -> str:
        return f"PostgresCapLedger({self._db.where!r})"

    def _prune(self, now: datetime) -> None:
        day, week, epoch = prune_cutoffs(now)

        def work(conn: PgConn) -> None:
            conn.execute(
                "DELETE FROM cap_counts WHERE (period LIKE 'D%%' AND period < %s) "
                "OR (period LIKE 'W%%' AND period < %s)",
                [day, week],
            )
            conn.execute("DELETE FROM capped_calls WHERE epoch_id < %s", [epoch])

        self._db.run(work)

    def decide(self, requests: Sequence[CapRequest]) -> list[CapAnswer]:
        if not requests:
            return []
        agents = [agent_pseudonym(self._agent_key, r.agent) for r in requests]
        counters = sorted({(r.rule, a, p) for r, a in zip(requests, agents, strict=True)
                           for p, _ in r.limits})  # fmt: skip
        calls = sorted({(r.epoch_id, r.call) for r in requests})

        def work(conn: PgConn) -> list[CapAnswer]:
            counts: dict[_Counter, int] = {}
            if counters:  # locked until this transaction ends: deciders of an agent take turns
                for rule, agent, period, n in conn.execute(
                    _LOCK_COUNTS, _columns(counters, 3)
                ).fetchall():
                    counts[(rule, agent, period)] = int(n)
            claimed = {
                (e, bytes(t)) for e, t in conn.execute(_CLAIM_CALLS, _columns(calls, 2)).fetchall()
            }
            earlier: dict[_Call, CapAnswer] = {}
            others = [c for c in calls if c not in claimed]
            if others:
                for e, t, given in conn.execute(_EARLIER_ANSWERS, _columns(others, 2)).fetchall():
                    earlier[(e, bytes(t))] = "sampled" if given == "sampled" else "cap_reached"
                if len(earlier) != len(others):
                    raise _vanished("a capped call's answer")
            answers: list[CapAnswer] = []
            changed: set[_Counter] = set()
            for req, agent in zip(requests, agents, strict=True):
                call = (req.epoch_id, req.call)
                if call in earlier:
                    answers.append(earlier[call])
                    continue
                keys = [(req.rule, agent, period) for period, _ in req.limits]
                full = any(counts[k] >= cap for k, (_, cap) in zip(keys, req.limits, strict=True))
                answer: CapAnswer = "cap_reached" if full else "sampled"
                if not full:
                    for k in keys:
                        counts[k] += 1
                        changed.add(k)
                earlier[call] = answer  # a repeat later in the batch gets the same answer
                answers.append(answer)
            sampled = [c for c in calls if c in claimed and earlier[c] == "sampled"]
            if sampled:
                conn.execute(_SAMPLED, _columns(sampled, 2))
            if changed:
                rows = [(*k, counts[k]) for k in sorted(changed)]
                conn.execute(_SET_COUNTS, _columns(rows, 4))
            return answers

        return self._db.run(work)

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------------------------
# The decided-calls index

_FIELDS: Final = (
    "epoch_id, call, reason, rule, purpose, rate, policy_version, threshold, "
    "caller_pseudonym, decided_at, logged, log_index, attributes"
)
_REMEMBER: Final = f"""
INSERT INTO decided_calls ({_FIELDS})
SELECT * FROM unnest(%s::text[], %s::bytea[], %s::text[], %s::text[], %s::text[], %s::text[],
    %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::boolean[], %s::bigint[], %s::text[])
ON CONFLICT (epoch_id, call) DO NOTHING
RETURNING epoch_id, call
""".encode()
_FIRSTS: Final = f"""
SELECT {", ".join("d." + f for f in _FIELDS.split(", "))} FROM decided_calls d
JOIN unnest(%s::text[], %s::bytea[]) AS k(epoch_id, call)
    ON d.epoch_id = k.epoch_id AND d.call = k.call
""".encode()
_MARK_LOGGED: Final = b"""
UPDATE decided_calls d SET logged = true
FROM unnest(%s::text[], %s::bytea[]) AS k(epoch_id, call)
WHERE d.epoch_id = k.epoch_id AND d.call = k.call
"""


def _decision_row(d: FirstDecision) -> tuple[Any, ...]:
    return (
        d.epoch_id,
        d.call,
        d.reason,
        d.rule,
        d.purpose,
        d.rate,
        d.policy_version,
        d.threshold,
        d.caller_pseudonym,
        (d.decided_at - _EPOCH_US) // _US,
        d.logged,
        d.log_index,
        d.attributes,
    )


def _first_decision(row: Sequence[Any]) -> FirstDecision:
    epoch_id, call, reason, rule, purpose, rate, version, threshold, pseudonym = row[:9]
    at, logged, log_index, attributes = row[9:]
    if reason not in REASONS:
        raise AssertionError(f"the decided-calls index holds an unknown reason {reason!r}")
    why: Reason = reason
    return FirstDecision(
        epoch_id,
        bytes(call),
        why,
        rule,
        purpose,
        rate,
        version,
        int(threshold),
        pseudonym,
        _EPOCH_US + int(at) * _US,
        bool(logged),
        None if log_index is None else int(log_index),
        attributes,
    )


class PostgresDecidedCalls:
    """The decided-calls index of a deployment, in the PostgreSQL database named by ``dsn``.

    Every :meth:`remember` writes its new calls in one statement (so one transaction),
    committed (durably) before it returns; of two nodes remembering the same call at once, one
    gets ``None`` and the other the first's decision. ``now`` prunes epochs more than
    :data:`~sampledrec.sampling.caps.KEEP_DAYS` days old. Never :attr:`unclean`: the database,
    not a file's boot, says what was committed. Needs the ``postgres`` extra (psycopg 3); the
    DSN's password is never shown.
    """

    unclean = False

    def __init__(self, dsn: str, *, now: datetime | None = None) -> None:
        self._db = PgConnection(
            dsn,
            what="the decided-calls index",
            component="decided",
            migrations=DECIDED_MIGRATIONS,
        )
        if now is not None:
            try:
                self.prune(now)
            except BaseException:
                self._db.close()
                raise

    def __repr__(self) -> str:
        return f"PostgresDecidedCalls({self._db.where!r})"

    def remember(self, decisions: Sequence[FirstDecision]) -> list[FirstDecision | None]:
        if not decisions:
            return []
        firsts: dict[_Call, int] = {}
        for i, d in enumerate(decisions):
            firsts.setdefault((d.epoch_id, d.call), i)
        keys = sorted(firsts)  # in key order: nodes lock the keys they share in one order

        def work(conn: PgConn) -> tuple[set[_Call], dict[_Call, FirstDecision]]:
            inserted: set[_Call] = set()
            earlier: dict[_Call, FirstDecision] = {}
            left = keys
            for _ in range(_ROUNDS):
                rows = [_decision_row(decisions[firsts[k]]) for k in left]
                got = conn.execute(_REMEMBER, _columns(rows, 13)).fetchall()
                inserted.update((e, bytes(c)) for e, c in got)
                others = [k for k in left if k not in inserted]
                if others:
                    for row in conn.execute(_FIRSTS, _columns(others, 2)).fetchall():
                        first = _first_decision(row)
                        earlier[(first.epoch_id, first.call)] = first
                left = [k for k in others if k not in earlier]
                if not left:
                    return inserted, earlier
            raise _vanished("a decided call")

        # Not one transaction: the insert is atomic by itself, and the reads after it see
        # every commit made before they start (READ COMMITTED), the winners' included.
        inserted, earlier = self._db.run(work, atomic=False)
        out: list[FirstDecision | None] = []
        for i, d in enumerate(decisions):
            key = (d.epoch_id, d.call)
            if key in inserted:
                out.append(None if firsts[key] == i else decisions[firsts[key]])
            else:
                out.append(earlier[key])
        return out

    def get(self, epoch_id: str, call: bytes) -> FirstDecision | None:
        rows = self._db.run(
            lambda conn: conn.execute(_FIRSTS, [[epoch_id], [bytes(call)]]).fetchall(),
            atomic=False,
        )
        return _first_decision(rows[0]) if rows else None

    def mark_logged(self, calls: Sequence[tuple[str, bytes]]) -> None:
        if calls:
            keys = sorted(set(calls))
            self._db.run(lambda conn: conn.execute(_MARK_LOGGED, _columns(keys, 2)), atomic=False)

    def prune(self, now: datetime) -> None:
        cutoff = prune_before(now)
        self._db.run(
            lambda conn: conn.execute("DELETE FROM decided_calls WHERE epoch_id < %s", [cutoff]),
            atomic=False,
        )

    def close(self) -> None:
        self._db.close()
