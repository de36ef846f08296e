"""The store's SQLite files that several processes share: the caps ledger, the decided-calls
index (sampledrec.sampling) and the console's accounts (sampledrec.accounts).

Each is owner-only (0600, set back to 0600 if found otherwise), in WAL mode (so that readers
never wait for the one writer), on a local filesystem (WAL needs shared memory between the
processes of one host: a network share is refused), with ``secure_delete`` on (pruned rows do
not linger in free pages). :func:`boot_id` tells whether the machine restarted since a file was
last written, for files whose commits are not fsynced one by one (``synchronous=NORMAL``).

The files on the decision path (the decided-calls index, the caps ledger) are checkpointed by a
thread of their own (:class:`BackgroundCheckpoints`): left to SQLite, every thousandth page
committed makes its commit also copy the journal into the file and fsync both, a stall of a few
milliseconds for the call being decided and every request queued behind it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Final, Literal

from ..errors import StoreError

__all__ = [
    "BOOT_ID_FILE",
    "BackgroundCheckpoints",
    "boot_id",
    "open_checkpointed_db",
    "open_ledger_db",
]

BOOT_ID_FILE: Final = Path("/proc/sys/kernel/random/boot_id")
#: With :class:`BackgroundCheckpoints`, a commit still checkpoints inline once the journal holds
#: this many pages (about 80 MB): a bound should the thread fall behind, never the usual case.
INLINE_CHECKPOINT_PAGES: Final = 20_000


def open_ledger_db(
    path: Path,
    *,
    what: str,
    synchronous: Literal["FULL", "NORMAL"],
) -> sqlite3.Connection:
    """Open (creating it owner-only) the SQLite file at ``path`` for one of the store's shared
    files.

    ``what`` names it in errors ("the caps ledger", "the accounts file"). The connection is in
    autocommit mode (``isolation_level=None``: transactions are explicit) and may be shared by
    threads under the caller's lock. Raises :class:`StoreError` when the file cannot be opened
    or SQLite cannot use its WAL journal there. Its commits checkpoint the journal themselves,
    as SQLite does by default; :func:`open_checkpointed_db` leaves that to a thread.
    """
    if sqlite3.sqlite_version_info < (3, 24):
        raise StoreError(
            f"{what} needs SQLite 3.24 or later; this Python has {sqlite3.sqlite_version}"
        )
    db: sqlite3.Connection | None = None
    try:
        with contextlib.suppress(FileExistsError):  # owner-only: it concerns calls and agents
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if path.stat().st_mode & 0o077 and path.stat().st_uid == os.geteuid():
            os.chmod(path, 0o600)  # e.g. restored from a backup with other modes
        db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"{path}: SQLite cannot use its WAL journal here (got {mode!r}); keep the store "
                "on a local filesystem, not a network share"
            )
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA secure_delete=ON")
    except (OSError, sqlite3.Error) as exc:
        if db is not None:
            db.close()
        raise StoreError(
            f"{path}: cannot open {what} ({exc}); check that the store folder is writable by "
            "this user"
        ) from None
    except StoreError:
        if db is not None:
            db.close()
        raise
    return db


def open_checkpointed_db(
    path: Path,
    *,
    what: str,
    synchronous: Literal["FULL", "NORMAL"],
    every: float = 0.2,
) -> tuple[sqlite3.Connection, BackgroundCheckpoints]:
    """:func:`open_ledger_db` for a file on the decision path: its connection's commits leave
    the journal's checkpoints to a :class:`BackgroundCheckpoints` (every ``every`` seconds)
    started with it, and checkpoint inline only past :data:`INLINE_CHECKPOINT_PAGES`. Both are
    made here, together, and returned; the caller closes both."""
    db = open_ledger_db(path, what=what, synchronous=synchronous)
    try:
        db.execute(f"PRAGMA wal_autocheckpoint={INLINE_CHECKPOINT_PAGES}")
    except sqlite3.Error as exc:
        db.close()
        raise StoreError(f"{path}: cannot open {what} ({exc})") from None
    return db, BackgroundCheckpoints(path, every=every)


class BackgroundCheckpoints:
    """Checkpoints the WAL journal of the SQLite file at ``path`` every ``every`` seconds, from
    a daemon thread with a connection of its own, until :meth:`close`.

    A passive checkpoint never blocks a writer (SQLite lets commits go on appending to the
    journal meanwhile) and the thread holds no interpreter lock while SQLite works, so a commit
    on a connection of :func:`open_checkpointed_db` never copies pages nor waits for an fsync
    but its own. A checkpoint that fails (the file is busy, or gone) is tried again at
    the next tick; until one succeeds the connections' own bound applies
    (:data:`INLINE_CHECKPOINT_PAGES`).
    """

    def __init__(self, path: Path, *, every: float = 0.2) -> None:
        self.path = path
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"sampledrec-checkpoint-{path.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.every):
                try:
                    if db is None:  # mode=rw: never create the file (nor with other modes)
                        uri = f"{self.path.resolve().as_uri()}?mode=rw"
                        db = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    continue  # busy, or the file is being replaced: the next tick tries again
        finally:
            if db is not None:
                db.close()

    def close(self) -> None:
        """Stop the thread (the journal is checkpointed by whoever commits next)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()


def boot_id() -> str | None:
    """This boot of the machine's kernel (Linux), or None where the system does not say.

    A commit that was written but not fsynced survives the crash of a process (it is in the
    operating system's cache) but not the crash of the machine, which always ends its boot: a
    file that records the boot in which it was last written knows when recent commits may be
    lost.
    """
    try:
        text = BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return text or None
