"""The store's SQLite files on the decision path leave WAL checkpoints to a thread of their own
(sampledrec._hazmat.sqlite.BackgroundCheckpoints), so that no decision's commit copies the
journal into the file and waits for its fsyncs."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sampledrec._hazmat.sqlite import (
    INLINE_CHECKPOINT_PAGES,
    BackgroundCheckpoints,
    open_checkpointed_db,
    open_ledger_db,
)
from sampledrec.errors import StoreError
from sampledrec.sampling.caps import SqliteCapLedger
from sampledrec.sampling.decided import SqliteDecidedCalls

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def _fill(db: sqlite3.Connection, rows: int) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS t (k BLOB PRIMARY KEY, v TEXT) WITHOUT ROWID")
    for _ in range(rows):  # one commit each, at random keys: a page or more per commit
        db.execute("INSERT INTO t VALUES (?, ?)", (os.urandom(16), "x" * 200))


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sampledrec-checkpoint-")]


def test_commits_leave_checkpoints_to_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    # Its own thread, made with it, ticks only after an hour: here nothing checkpoints.
    db, idle = open_checkpointed_db(path, what="a test file", synchronous="NORMAL", every=3600)
    idle.close()
    try:
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == INLINE_CHECKPOINT_PAGES
        _fill(db, 3000)  # past SQLite's own 1,000-page checkpoint
        wal = Path(f"{path}-wal")
        # Nothing was copied inline: the journal holds every page, the file only its first.
        assert wal.stat().st_size > 1000 * 4096
        before = path.stat().st_size
        assert before <= 2 * 4096
        checkpoints = BackgroundCheckpoints(path, every=0.01)
        try:
            deadline = time.monotonic() + 60
            while path.stat().st_size == before and time.monotonic() < deadline:
                time.sleep(0.01)
            assert path.stat().st_size > 100 * 4096, "the thread never checkpointed"
        finally:
            checkpoints.close()
        # Checkpointed (not only grown): a reader finds every row in the file.
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 3000
    finally:
        db.close()


def test_a_default_connection_still_checkpoints_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    db = open_ledger_db(path, what="a test file", synchronous="NORMAL")
    try:
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        _fill(db, 3000)
        assert path.stat().st_size > 100 * 4096
    finally:
        db.close()


def test_the_thread_never_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.sqlite"
    checkpoints = BackgroundCheckpoints(path, every=0.001)
    time.sleep(0.1)  # many ticks
    checkpoints.close()
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_indexes_stop_their_thread_on_close(tmp_path: Path) -> None:
    before = len(_checkpointers())
    decided = SqliteDecidedCalls(tmp_path / "decided.sqlite", now=NOW)
    caps = SqliteCapLedger(tmp_path / "caps.sqlite", now=NOW)
    assert len(_checkpointers()) == before + 2
    decided.close()
    caps.close()
    assert len(_checkpointers()) == before


def test_the_owner_only_mode_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "decided.sqlite"
    index = SqliteDecidedCalls(path, now=NOW)
    try:
        for name in (path, Path(f"{path}-wal")):
            if name.exists():
                assert name.stat().st_mode & 0o077 == 0, name
    finally:
        index.close()


def test_an_index_that_cannot_be_opened_leaves_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "decided.sqlite"
    other = sqlite3.connect(path)  # some other program's file of the same name
    other.execute("CREATE TABLE meta (unrelated INTEGER)")
    other.commit()
    other.close()
    before = len(_checkpointers())
    with pytest.raises(StoreError, match="cannot open the decided-calls index"):
        SqliteDecidedCalls(path, now=NOW)
    assert len(_checkpointers()) == before
