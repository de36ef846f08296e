"""One connection to a PostgreSQL database, for the backends that keep a store's shared state
there (the catalog, the caps ledger, the decided-calls index; docs/decisions/0026-postgresql.md).

- :func:`redact_dsn` and :func:`dsn_has_password`: a DSN (URL or ``key=value`` form) as it may
  be shown, with any password replaced by ``***``; nothing here ever prints a password.
- :class:`PgConnection`: one psycopg 3 connection shared by the threads of one handle under a
  lock, in autocommit mode, each unit of work in its own transaction at READ COMMITTED, retried
  when PostgreSQL aborts it for a deadlock or a serialization failure; reconnected on next use
  after the server dropped it; every psycopg error mapped to a :class:`StoreError` naming the
  redacted DSN.
- :class:`Migration` and the versioned migrations: each component (``"catalog"``, ``"caps"``,
  ``"decided"``) lists its schema changes by version; the ``schema_version`` table records
  those applied. A handle that finds its component behind applies the missing ones in one
  transaction under a transaction-scoped advisory lock, so that several nodes starting at once
  migrate once (the others wait, then find nothing left to do).

psycopg is imported when a connection is first opened (the ``postgres`` extra), so that the
library imports without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple, TypeVar

from ..errors import StoreError

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    PgConn = psycopg.Connection[TupleRow]
    """A psycopg connection whose rows are tuples (what :meth:`PgConnection.run` passes)."""

__all__ = [
    "MIGRATION_LOCK",
    "Migration",
    "PgConnection",
    "advisory_lock",
    "advisory_lock_id",
    "dsn_has_password",
    "redact_dsn",
]

T = TypeVar("T")

# The advisory lock that migrations hold (a fixed 64-bit id: every sampledrec node of one
# database takes the same one; other applications are unlikely to pick it).
MIGRATION_LOCK: Final = int.from_bytes(
    hashlib.sha256(b"sampledrec/v1/schema-migrations").digest()[:8], "big", signed=True
)
_RETRIES: Final = 8  # deadlocks and serialization failures are retried this many times
_SQLSTATE_RETRY: Final = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_KEYWORD_PASSWORD: Final = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]*)", re.I)
_URL: Final = re.compile(r"\s*postgres(?:ql)?://", re.I)
# user:password@ right after the scheme (a password's own '@', '/', '?' or '#' is %-encoded)
_URL_USER_PASSWORD: Final = re.compile(r"^(\s*postgres(?:ql)?://[^@/?#:]*:)([^@/?#]*)@", re.I)
_URL_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)([^&#]*)", re.I)
_SCHEMA_VERSION_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_version (
    component TEXT COLLATE "C" NOT NULL,
    version INTEGER NOT NULL,
    summary TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


class Migration(NamedTuple):
    """One step of a component's schema: its version (1, 2, ... in order), a line saying what
    it changes (kept in ``schema_version``), and its SQL (several statements, no parameters)."""

    version: int
    summary: str
    sql: str


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password, if any, replaced by ``***`` (URL or ``key=value`` form);
    anything else is left as it was.

    >>> redact_dsn("postgresql://rec:s3cret@db.example/sampledrec?sslmode=require")
    'postgresql://rec:***@db.example/sampledrec?sslmode=require'
    >>> redact_dsn("host=db user=rec password='it s3cret' dbname=sampledrec")
    'host=db user=rec password=*** dbname=sampledrec'
    """
    if _URL.match(dsn):
        dsn = _URL_USER_PASSWORD.sub(lambda m: m.group(1) + "***@", dsn)
        return _URL_QUERY_PASSWORD.sub(lambda m: m.group(1) + "***", dsn)
    return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + "***", dsn)


def dsn_has_password(dsn: str) -> bool:
    """Whether ``dsn`` carries a password (in a URL's user part or query, or a ``password``
    key)."""
    return _password_of(dsn) is not None


def _password_of(dsn: str) -> str | None:
    """The DSN's password, if any."""
    found = _secrets_of(dsn)
    return found[-1] if found else None


def _secrets_of(dsn: str) -> list[str]:
    """Every password the DSN spells, as written and as meant (%-decoded, unquoted), to scrub
    them from messages that might quote them; the one libpq uses last."""
    if _URL.match(dsn):
        found = [m.group(2) for m in _URL_USER_PASSWORD.finditer(dsn)]
        found += [m.group(2) for m in _URL_QUERY_PASSWORD.finditer(dsn)]
        return [s for f in found if f for s in dict.fromkeys((f, urllib.parse.unquote(f)))]
    out = []
    for m in _KEYWORD_PASSWORD.finditer(dsn):
        value = m.group(2)
        if value.startswith("'"):
            out.append(value[1:-1])
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if value:
            out.append(value)
    return out


class PgConnection:
    """One connection to the database named by ``dsn``, for one backend handle.

    ``what`` names the backend in errors ("the catalog"). ``component`` and ``migrations`` are
    its schema: they are brought up to date when the connection is opened (see the module
    docstring). Every :meth:`run` holds the handle's lock (threads take turns), so one
    transaction is in progress at a time.
    """

    def __init__(
        self,
        dsn: str,
        *,
        what: str,
        component: str,
        migrations: Sequence[Migration],
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise StoreError(f"{what}: the PostgreSQL DSN must be non-empty text, not {dsn!r:.20}")
        self._dsn = dsn
        self._secrets = sorted(set(_secrets_of(dsn)), key=len, reverse=True)
        self.where = redact_dsn(dsn)
        self.what = what
        self._lock = threading.Lock()
        self._closed = False
        self._conn = self._connect()
        try:
            self.run(lambda conn: _migrate(conn, component, migrations, what))
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"PgConnection({self.where!r})"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def failed(self, exc: BaseException) -> StoreError:
        """A :class:`StoreError` for a failure of this backend (the password never shown)."""
        detail = self._scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        return StoreError(f"{self.what} on PostgreSQL ({self.where}) failed: {detail}")

    def _connect(self) -> PgConn:
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict, make_conninfo
        except ImportError:
            raise StoreError(
                f"{self.what} is on PostgreSQL ({self.where}), which needs psycopg 3: "
                "pip install 'sampledrec[postgres]'"
            ) from None
        try:
            params = conninfo_to_dict(self._dsn)
            extra: dict[str, str | int] = {}
            if "connect_timeout" not in params:
                extra["connect_timeout"] = 10  # never wait forever for a server that is gone
            if "application_name" not in params:
                extra["application_name"] = "sampledrec"
            conn = psycopg.Connection.connect(make_conninfo(self._dsn, **extra), autocommit=True)
        except psycopg.Error as exc:
            raise self.failed(exc) from None
        try:
            conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
            # Commits must be durable before a decision is returned (docs/decisions/0026):
            # a server whose default turns that off does not decide for this session.
            got = conn.execute("SHOW synchronous_commit").fetchone()
            if got is not None and str(got[0]).lower() == "off":
                conn.execute("SET synchronous_commit TO on")
        except psycopg.Error as exc:
            conn.close()
            raise self.failed(exc) from None
        return conn

    def run(self, work: Callable[[PgConn], T], *, atomic: bool = True) -> T:
        """``work(connection)`` in one transaction, committed when it returns (with
        ``atomic=False``, each of its statements is a transaction of its own: one round trip
        less for a single statement). A deadlock or a serialization failure rolls it back and
        runs ``work`` again (so it must recompute whatever it computes from the database); any
        other database error is a :class:`StoreError`, as is using the handle after
        :meth:`close`."""
        import psycopg

        with self._lock:
            if self._closed:
                raise StoreError(f"{self.what} on PostgreSQL ({self.where}) is closed")
            if self._conn.broken:  # the server dropped it: try a new one
                self._conn.close()
                self._conn = self._connect()
            for attempt in range(_RETRIES + 1):
                try:
                    if not atomic:
                        return work(self._conn)
                    with self._conn.transaction():
                        return work(self._conn)
                except psycopg.Error as exc:
                    if exc.sqlstate in _SQLSTATE_RETRY and attempt < _RETRIES:
                        time.sleep(random.uniform(0, 0.002 * 2**attempt))
                        continue
                    raise self.failed(exc) from None
            raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the connection; closing again is harmless."""
        with self._lock:
            self._closed = True
            self._conn.close()


def advisory_lock_id(name: str) -> int:
    """A 64-bit advisory lock id for ``name`` (the same on every node)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def advisory_lock(dsn: str, lock_id: int, *, what: str, timeout: float = 30.0) -> Iterator[None]:
    """Hold the session-level advisory lock ``lock_id`` of the database ``dsn``, on a
    connection of its own, for the ``with`` block: one holder at a time across every node of
    the database. A connection that dies (the node crashed) releases it. Waiting longer than
    ``timeout`` seconds raises :class:`StoreError`."""
    conn = PgConnection(dsn, what=what, component="", migrations=())
    try:
        ms = max(1, int(timeout * 1000))

        def take(c: PgConn) -> None:
            c.execute(f"SET lock_timeout = {ms}")
            c.execute("SELECT pg_advisory_lock(%s)", [lock_id])

        try:
            conn.run(take, atomic=False)
        except StoreError as exc:
            if "lock timeout" in str(exc):
                raise StoreError(
                    f"{what} is held by another node for more than {timeout:g} s; wait for it "
                    "to finish or check for a stuck process"
                ) from None
            raise
        yield
    finally:
        conn.close()  # ends the session: the lock goes with it


def _migrate(
    conn: PgConn,
    component: str,
    migrations: Sequence[Migration],
    what: str,
) -> None:
    """Bring ``component``'s schema to its last migration (the caller's transaction)."""
    latest = migrations[-1].version if migrations else 0
    if not component:
        return  # a connection for locks only: no schema of its own
    if [m.version for m in migrations] != list(range(1, latest + 1)):
        raise AssertionError(f"{component}: migrations must be numbered 1, 2, ... in order")

    def applied() -> int:
        found = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if found is None or not found[0]:
            return 0
        got = conn.execute(
            "SELECT coalesce(max(version), 0) FROM schema_version WHERE component = %s",
            [component],
        ).fetchone()
        return int(got[0]) if got is not None else 0

    have = applied()  # most openings: up to date, no lock taken
    if have < latest:
        # Serialises the nodes that start at once; released when this transaction ends.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        conn.execute(_SCHEMA_VERSION_TABLE)
        have = applied()  # another node may have migrated while this one waited
        for step in migrations[have:]:
            conn.execute(step.sql.encode())
            conn.execute(
                "INSERT INTO schema_version (component, version, summary) VALUES (%s, %s, %s)",
                [component, step.version, step.summary],
            )
        have = max(have, latest)
    if have > latest:
        raise StoreError(
            f"{what}'s schema in the database is at version {have}, newer than this sampledrec "
            f"knows ({latest}): upgrade sampledrec on this node before using the database"
        )
