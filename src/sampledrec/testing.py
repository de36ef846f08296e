"""In-memory fakes for tests and examples: a keyring and a keystore that never touch the
disk, a recordings catalog, a blob store and a decision log's storage in memory, a caps ledger
and a decided-calls index in memory, and a clock that stays where it is put. Not for production
use: the keys (and counts, rows, recordings, decided calls and log entries) die with the process.

Each fake passes the same contract suite as the real backends (``tests/test_backends.py``, and
``tests/test_keystore.py`` for key stores): :class:`MemoryCatalog` behaves like
:class:`~sampledrec.vault.catalog.SqliteCatalog`, :class:`MemoryBlobStore` like
:class:`~sampledrec.vault.blobs.LocalBlobStore`, :class:`MemoryLogStorage` like
:class:`~sampledrec.log.storage.LocalLogStorage` and :class:`MemoryDecidedCalls` like
:class:`~sampledrec.sampling.decided.SqliteDecidedCalls`, errors included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from .clock import FixedClock
from .errors import StoreError, StoreLocked
from .keys.memory import MemoryKeyring, MemoryKeyStore
from .log.storage import CHECKPOINTS, segment_name
from .sampling.caps import MemoryCapLedger
from .sampling.decided import MemoryDecidedCalls
from .vault.blobs import BlobWriter, check_blob_name
from .vault.catalog import REQUEST_UPDATABLE, Hold, RecordingRow, SealedNote, SubjectRequest

__all__ = [
    "FixedClock",
    "MemoryBlobStore",
    "MemoryCapLedger",
    "MemoryCatalog",
    "MemoryDecidedCalls",
    "MemoryKeyStore",
    "MemoryKeyring",
    "MemoryLogStorage",
]

_ROW_COLUMNS = frozenset(f.name for f in dataclasses.fields(RecordingRow))
_HOLD_COLUMNS = frozenset({"reason", "until", "released_at"})


class MemoryCatalog:
    """A :class:`~sampledrec.vault.catalog.Catalog` held in memory, thread-safe.

    Same semantics as :class:`~sampledrec.vault.catalog.SqliteCatalog`: ``get`` of an unknown
    id is ``None``, updating an unknown id does nothing, an unknown column is a
    :class:`ValueError`, adding an existing id (or using a closed catalog) is a
    :class:`~sampledrec.errors.StoreError`, and lists come in the same order. Rows are copies:
    changing one changes nothing stored.

    >>> catalog = MemoryCatalog()
    >>> catalog.add(RecordingRow("rec-1", None, "r", "p", "v1", "2027-05-22", 0, 1, 2, 2,
    ...                          "bucket-2027-05-22", b"wrapped", "wav", "bucket/rec-1.sdr"))
    >>> catalog.update("rec-1", status="sealed", pauses=[[10, 20]])
    >>> row = catalog.get("rec-1")
    >>> row.status, row.pauses, catalog.get("rec-2")
    ('sealed', [(10, 20)], None)
    """

    def __init__(self) -> None:
        self._rows: dict[str, RecordingRow] = {}
        self._holds: dict[str, Hold] = {}
        self._members: dict[tuple[str, str], bytes | None] = {}  # (hold, recording) -> key
        self._requests: dict[str, SubjectRequest] = {}
        self._notes: dict[str, SealedNote] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryCatalog({len(self._rows)} recordings)"

    @contextlib.contextmanager
    def _open(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StoreError("this MemoryCatalog is closed")
            yield

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # -- recordings ---------------------------------------------------------------------------

    def add(self, row: RecordingRow) -> None:
        stored = _stored(row)
        with self._open():
            if row.recording_id in self._rows:
                raise StoreError(f"the catalog already has a recording {row.recording_id!r}")
            self._rows[row.recording_id] = stored

    def update(self, recording_id: str, **changes: Any) -> None:
        self.update_many([recording_id], **changes)

    def update_many(self, recording_ids: Sequence[str], **changes: Any) -> None:
        """Apply the same changes to many recordings, all or none."""
        _check_columns("catalog", changes, _ROW_COLUMNS)
        with self._open():
            rows = dict(self._rows)  # swapped in whole once every change has applied
            for recording_id in recording_ids:
                old = rows.pop(recording_id, None)
                if old is None:
                    continue
                new = _stored(dataclasses.replace(old, **changes))
                if new.recording_id in rows:
                    raise StoreError(f"the catalog already has a recording {new.recording_id!r}")
                rows[new.recording_id] = new
            self._rows = rows

    def get(self, recording_id: str) -> RecordingRow | None:
        with self._open():
            row = self._rows.get(recording_id)
        return None if row is None else _stored(row)

    def find(
        self, *, status: Sequence[str] | None = None, caller_pseudonym: str | None = None
    ) -> list[RecordingRow]:
        with self._open():
            rows = [
                _stored(r)
                for r in self._rows.values()
                if (status is None or r.status in status)
                and (caller_pseudonym is None or r.caller_pseudonym == caller_pseudonym)
            ]
        return sorted(rows, key=lambda r: (r.started_at, r.recording_id))

    def __iter__(self) -> Iterator[RecordingRow]:
        return iter(self.find())

    # -- holds --------------------------------------------------------------------------------

    def add_hold(self, hold: Hold) -> None:
        with self._open():
            if hold.hold_id in self._holds:
                raise StoreError(f"the catalog already has a hold {hold.hold_id!r}")
            self._holds[hold.hold_id] = dataclasses.replace(hold)

    def get_hold(self, hold_id: str) -> Hold | None:
        with self._open():
            hold = self._holds.get(hold_id)
        return None if hold is None else dataclasses.replace(hold)

    def holds(self) -> list[Hold]:
        with self._open():
            held = [dataclasses.replace(h) for h in self._holds.values()]
        return sorted(held, key=lambda h: (h.created_at, h.hold_id))

    def update_hold(self, hold_id: str, **changes: Any) -> None:
        _check_columns("hold", changes, _HOLD_COLUMNS)
        with self._open():
            if hold_id in self._holds:
                self._holds[hold_id] = dataclasses.replace(self._holds[hold_id], **changes)

    def add_hold_member(self, hold_id: str, recording_id: str, wrapped_key: bytes) -> None:
        with self._open():
            self._members[hold_id, recording_id] = _bytes(wrapped_key)

    def hold_members(self, hold_id: str) -> list[tuple[str, bytes | None]]:
        with self._open():
            return sorted((r, key) for (h, r), key in self._members.items() if h == hold_id)

    def holds_of(self, recording_id: str) -> list[tuple[Hold, bytes | None]]:
        with self._open():
            found = [
                (dataclasses.replace(self._holds[h]), key)
                for (h, r), key in self._members.items()
                if r == recording_id and h in self._holds
            ]
        return sorted(found, key=lambda pair: (pair[0].created_at, pair[0].hold_id))

    def forget_hold_key(self, hold_id: str, recording_id: str) -> None:
        with self._open():
            if (hold_id, recording_id) in self._members:
                self._members[hold_id, recording_id] = None

    # -- data-subject requests ----------------------------------------------------------------

    def add_request(self, request: SubjectRequest) -> None:
        with self._open():
            if request.request_id in self._requests:
                raise StoreError(f"the catalog already has a request {request.request_id!r}")
            self._requests[request.request_id] = dataclasses.replace(request)

    def update_request(self, request_id: str, **changes: Any) -> None:
        _check_columns("request", changes, REQUEST_UPDATABLE)
        with self._open():
            if request_id in self._requests:
                self._requests[request_id] = dataclasses.replace(
                    self._requests[request_id], **changes
                )

    def requests(self, *, status: Sequence[str] | None = None) -> list[SubjectRequest]:
        with self._open():
            found = [
                dataclasses.replace(q)
                for q in self._requests.values()
                if status is None or q.status in status
            ]
        return sorted(found, key=lambda q: (q.received_at, q.request_id))

    # -- review notes -------------------------------------------------------------------------

    def add_note(self, note: SealedNote) -> None:
        with self._open():
            if note.note_id in self._notes:
                raise StoreError(f"the catalog already has a note {note.note_id!r}")
            self._notes[note.note_id] = dataclasses.replace(note, sealed=bytes(note.sealed))

    def notes_of(self, recording_id: str) -> list[SealedNote]:
        with self._open():
            found = [n for n in self._notes.values() if n.recording_id == recording_id]
        return sorted(found, key=lambda n: (n.created_at, n.note_id))

    def delete_notes(self, recording_ids: Sequence[str]) -> int:
        wanted = set(recording_ids)
        with self._open():
            gone = [k for k, n in self._notes.items() if n.recording_id in wanted]
            for k in gone:
                del self._notes[k]
        return len(gone)


def _check_columns(table: str, changes: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"unknown {table} columns {sorted(unknown)}")


def _bytes(value: bytes | None) -> bytes | None:
    return None if value is None else bytes(value)


def _stored(row: RecordingRow) -> RecordingRow:
    """A copy of ``row`` that shares nothing mutable with it, its fields as SQLite gives them
    back (pauses as a list of tuples, attrs as a dict sorted by key, truncated as a bool)."""
    return dataclasses.replace(
        row,
        wrapped_key=_bytes(row.wrapped_key),
        pauses=[(start, end) for start, end in row.pauses],
        truncated=bool(row.truncated),
        attrs=dict(sorted(dict(row.attrs or {}).items())),
    )


class MemoryBlobStore:
    """A :class:`~sampledrec.vault.blobs.BlobStore` held in memory, thread-safe.

    Like :class:`~sampledrec.vault.blobs.LocalBlobStore`: what a writer wrote is readable at
    once (as a prefix of the blob being written), :meth:`put` replaces a blob whole,
    :meth:`open` gives a seekable snapshot, names are checked with
    :func:`~sampledrec.vault.blobs.check_blob_name`, and a missing blob is a
    :class:`FileNotFoundError` (an existing one, for :meth:`create`, a :class:`FileExistsError`).

    >>> blobs = MemoryBlobStore()
    >>> writer = blobs.create("bucket-2027-05-22/a.sdr")
    >>> writer.write(b"sealed "), blobs.size("bucket-2027-05-22/a.sdr")
    (7, 7)
    >>> writer.write(b"bytes"); writer.close()
    5
    >>> with blobs.open("bucket-2027-05-22/a.sdr") as fh:
    ...     _ = fh.seek(7)
    ...     fh.read(5), blobs.list("bucket-")
    (b'bytes', ['bucket-2027-05-22/a.sdr'])
    """

    def __init__(self) -> None:
        self._blobs: dict[str, bytearray] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryBlobStore({len(self._blobs)} blobs)"

    def create(self, name: str) -> BlobWriter:
        check_blob_name(name)
        with self._lock:
            if name in self._blobs:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
            self._blobs[name] = bytearray()
        return _MemoryBlobWriter(self, name)

    def put(self, name: str, data: bytes) -> None:
        check_blob_name(name)
        content = bytearray(data)
        with self._lock:
            self._blobs[name] = content

    def open(self, name: str) -> BinaryIO:
        check_blob_name(name)
        with self._lock:
            return io.BytesIO(bytes(self._blob(name)))

    def size(self, name: str) -> int:
        check_blob_name(name)
        with self._lock:
            return len(self._blob(name))

    def exists(self, name: str) -> bool:
        check_blob_name(name)
        with self._lock:
            return name in self._blobs

    def delete(self, name: str) -> bool:
        check_blob_name(name)
        with self._lock:
            return self._blobs.pop(name, None) is not None

    def list(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(name for name in self._blobs if name.startswith(prefix))

    def _append(self, name: str, data: bytes) -> None:
        with self._lock:
            self._blob(name).extend(data)

    def _blob(self, name: str) -> bytearray:
        """The blob's content; the caller holds the lock."""
        try:
            return self._blobs[name]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name) from None


class _MemoryBlobWriter:
    """Appends to one blob of a :class:`MemoryBlobStore` (by name, as a local file is appended
    to by path); refuses to write once closed."""

    def __init__(self, store: MemoryBlobStore, name: str) -> None:
        self._store = store
        self._name = name
        self._closed = False

    def write(self, data: bytes | memoryview) -> int:
        if self._closed:
            raise ValueError(f"the writer of blob {self._name!r} is closed")
        self._store._append(self._name, bytes(data))
        return len(data)

    def sync(self) -> None:
        """Nothing to do: what was written is already all there is."""

    def close(self) -> None:
        self._closed = True


class MemoryLogStorage:
    """A :class:`~sampledrec.log.storage.LogStorage` held in memory, thread-safe: the whole
    decision log (``DecisionLog``, recovery, ``verify_log``, ``read_log``, proofs) runs on it.

    Like :class:`~sampledrec.log.storage.LocalLogStorage`: a missing segment, or the
    checkpoints of a log never created, is a :class:`FileNotFoundError`, creating what exists a
    :class:`FileExistsError`, and :meth:`lock` excludes every other holder until it is released,
    :class:`~sampledrec.errors.StoreLocked` after ``timeout`` seconds. A memory log holds
    nothing but its segments and checkpoints, so it has no :meth:`strays`.

    >>> log = MemoryLogStorage()
    >>> log.create()
    >>> with log.lock():
    ...     log.create_segment(0, b"header and first batch")
    ...     log.write_segment(0, 22, b", second batch")
    >>> log.segments(), log.read_segment(0, 11), log.size()
    ([0], b'first batch, second batch', 36)
    """

    def __init__(self) -> None:
        self._segments: dict[int, bytearray] = {}
        self._checkpoints: bytearray | None = None  # None until the log is created
        self._aside: dict[str, bytes] = {}
        self._repair: bytes | None = None
        self._data = threading.Lock()  # guards the bytes above
        self._writers = threading.Lock()  # the writers' lock, held across calls

    def __repr__(self) -> str:
        return f"MemoryLogStorage({len(self._segments)} segments)"

    def location(self) -> str:
        return f"memory log {id(self):#x}"

    def exists(self) -> bool:
        with self._data:
            return self._checkpoints is not None

    def create(self) -> None:
        with self._data:
            if self._checkpoints is not None:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), self.location())
            self._checkpoints = bytearray()

    @contextlib.contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        if not self._writers.acquire(timeout=max(0.0, timeout)):
            raise StoreLocked(
                f"{self.location()} is locked by another writer for more than {timeout:g} s"
            )
        try:
            yield
        finally:
            self._writers.release()

    def segments(self) -> list[int]:
        with self._data:
            return sorted(self._segments)

    def read_segment(self, first: int, start: int = 0) -> bytes:
        with self._data:
            return bytes(self._segment(first)[start:])

    def map_segment(self, first: int) -> bytes:
        return self.read_segment(first)

    def tail_sizes(self, first: int) -> tuple[int, int]:
        with self._data:
            return len(self._segment(first)), len(self._checkpoints_file())

    def create_segment(self, first: int, data: bytes) -> None:
        content = bytearray(data)
        with self._data:
            if first in self._segments:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), segment_name(first))
            self._segments[first] = content

    def write_segment(self, first: int, at: int, data: bytes) -> None:
        with self._data:
            _write_at(self._segment(first), at, data)

    def truncate_segment(self, first: int, size: int) -> None:
        with self._data:
            del self._segment(first)[size:]

    def read_checkpoints(self, start: int = 0) -> bytes:
        with self._data:
            return bytes(self._checkpoints_file()[start:])

    def write_checkpoints(self, at: int, data: bytes) -> None:
        with self._data:
            _write_at(self._checkpoints_file(), at, data)

    def truncate_checkpoints(self, size: int) -> None:
        with self._data:
            del self._checkpoints_file()[size:]

    def set_aside(self, name: str, offset: int, data: bytes) -> str:
        with self._data:
            where = f"{self.location()}/recovered/{name}.{offset}.{len(self._aside)}"
            self._aside[where] = bytes(data)
        return where

    def set_aside_segment(self, first: int) -> str:
        with self._data:
            content = self._segment(first)
            where = f"{self.location()}/recovered/{segment_name(first)}.0.{len(self._aside)}"
            self._aside[where] = bytes(content)
            del self._segments[first]
        return where

    def set_aside_tails(self) -> dict[str, bytes]:
        with self._data:
            return dict(self._aside)

    def pending_repair(self) -> bytes | None:
        with self._data:
            return self._repair

    def set_pending_repair(self, plan: bytes | None) -> None:
        with self._data:
            self._repair = None if plan is None else bytes(plan)

    def strays(self) -> list[str]:
        return []

    def size(self) -> int:
        with self._data:
            return sum(map(len, self._segments.values()))

    def _segment(self, first: int) -> bytearray:
        """The segment's bytes; the caller holds ``_data``."""
        try:
            return self._segments[first]
        except KeyError:
            raise FileNotFoundError(
                errno.ENOENT, os.strerror(errno.ENOENT), segment_name(first)
            ) from None

    def _checkpoints_file(self) -> bytearray:
        """The checkpoints' bytes; the caller holds ``_data``."""
        if self._checkpoints is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), CHECKPOINTS)
        return self._checkpoints


def _write_at(content: bytearray, at: int, data: bytes) -> None:
    """Write ``data`` into ``content`` at ``at``, as a file is written (a gap is zeros)."""
    if at > len(content):
        content.extend(bytes(at - len(content)))
    content[at : at + len(data)] = data
