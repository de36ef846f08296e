"""Where one decision log's bytes are kept: the :class:`LogStorage` protocol and its local backend.

A log is made of *segments*, each named by the index of its first entry and only ever appended
to, and one *checkpoints* file (``docs/log-format.md``, sections 1 to 3). Around them: the
writers' lock, and the torn tails that crash recovery sets aside (they were never durable, but
are kept for an operator to look at), and the plan of a repair under way (``DecisionLog.repair``
cuts a damaged log back to its last good batch, after setting the rest aside: whole segments
too). :class:`LogStorage` is everything the writer, recovery, repair, verification, the column
reader and the proofs do with those bytes, and nothing more; what the bytes mean is theirs
(:mod:`.segments`).

:class:`LocalLogStorage` keeps the log as ``docs/log-format.md`` lays it out::

    STORE/
      log/                       the log folder: segments and checkpoints, nothing else
        seg-000000000000.log     a segment, named after its first entry index
        checkpoints
      .seg-<12 digits>.log.new-<pid>    a segment being born (renamed into log/ once whole)
      log.lock                   the writers' lock (flock)
      log.repair                 the plan of a repair under way (only while one is)
      recovered/                 what recovery and repair set aside: torn tails, damaged parts

Everything beside ``log/`` lives outside it because every byte in ``log/`` is covered by
verification. Folders are 0700, files 0600; a segment is born whole (written and fsynced
beside the folder, renamed in, the folder fsynced), and every append, truncation and
checkpoint is fsynced before it returns. An in-memory fake is
:class:`sampledrec.testing.MemoryLogStorage`; every backend passes the contract suite in
``tests/test_backends.py``.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Final, Protocol, TypeAlias, runtime_checkable

from .._hazmat.files import fsync_dir, write_atomic, write_new
from .._hazmat.locking import wait_for_flock

__all__ = [
    "CHECKPOINTS",
    "LocalLogStorage",
    "LogStorage",
    "SegmentBytes",
    "log_storage",
    "segment_first",
    "segment_name",
]

#: The checkpoints file's name (in the log folder, and in verification's findings).
CHECKPOINTS: Final = "checkpoints"
_SEGMENT: Final = re.compile(r"seg-([0-9]{12})\.log", re.ASCII)

#: A segment's bytes as a backend gives them for reading: ``bytes``, or a read-only
#: memory map of the local file (no copy, for the audit's reader of large logs).
SegmentBytes: TypeAlias = bytes | mmap.mmap


def segment_name(first: int) -> str:
    """The name of the segment whose first entry is ``first``: ``seg-`` + 12 digits + ``.log``
    (its file name in the local backend, and where verification's findings point)."""
    return f"seg-{first:012d}.log"


def segment_first(name: str) -> int | None:
    """The first entry index a segment's name gives, or ``None`` if ``name`` is not exactly a
    segment's name (12 ASCII digits, nothing around them)."""
    m = _SEGMENT.fullmatch(name)
    return int(m.group(1)) if m else None


@runtime_checkable
class LogStorage(Protocol):
    """The bytes of one decision log. Implementations: :class:`LocalLogStorage`,
    :class:`sampledrec.testing.MemoryLogStorage`.

    Segments are named by their first entry index. Reading, writing or truncating a segment that
    does not exist, or the checkpoints of a log that was never created, raises
    :class:`FileNotFoundError`; creating what exists raises :class:`FileExistsError`. Whatever
    a write, a truncation or :meth:`create_segment` returned for is durable and seen by every
    other handle on the same log. Writers hold :meth:`lock` around everything they change.
    """

    def location(self) -> str:
        """Where the log is, for messages (the local backend: its folder)."""
        ...

    def exists(self) -> bool:
        """Whether the log was created (it may still hold no segment)."""
        ...

    def create(self) -> None:
        """Create an empty log: no segment, an empty checkpoints file."""
        ...

    def lock(self, timeout: float = 30.0) -> AbstractContextManager[None]:
        """Hold the writers' exclusive lock (across threads, handles and processes);
        :class:`~sampledrec.errors.StoreLocked` when another holder keeps it ``timeout`` s."""
        ...

    def segments(self) -> list[int]:
        """The first entry index of every segment, ascending (``[]`` before the first one, or
        when the log was never created)."""
        ...

    def read_segment(self, first: int, start: int = 0) -> bytes:
        """A copy of the segment's bytes from offset ``start`` to its end."""
        ...

    def map_segment(self, first: int) -> SegmentBytes:
        """The segment's bytes for reading, without a copy where the backend can (a local file
        is memory-mapped). Read-only; do not keep it across a truncation of the segment."""
        ...

    def tail_sizes(self, first: int) -> tuple[int, int]:
        """The sizes of segment ``first`` and of the checkpoints file, as cheaply as the
        backend can: the writer asks before each batch whether another process wrote since
        its last one (nothing to read back if both are what it wrote)."""
        ...

    def create_segment(self, first: int, data: bytes) -> None:
        """Create a segment holding ``data``, atomically: it appears whole or not at all."""
        ...

    def write_segment(self, first: int, at: int, data: bytes) -> None:
        """Write ``data`` into the segment at offset ``at`` (its end, as the writer knows it:
        a torn write left there is overwritten) and make it durable."""
        ...

    def truncate_segment(self, first: int, size: int) -> None:
        """Cut the segment to its first ``size`` bytes, durably."""
        ...

    def read_checkpoints(self, start: int = 0) -> bytes:
        """The checkpoints file's bytes from offset ``start`` to its end."""
        ...

    def write_checkpoints(self, at: int, data: bytes) -> None:
        """Write ``data`` into the checkpoints file at offset ``at`` (its end, as the writer
        knows it) and make it durable."""
        ...

    def truncate_checkpoints(self, size: int) -> None:
        """Cut the checkpoints file to its first ``size`` bytes, durably."""
        ...

    def set_aside(self, name: str, offset: int, data: bytes) -> str:
        """Keep ``data``, a torn tail that recovery cut from ``name`` (a segment's name or
        ``checkpoints``) at ``offset``, outside the log; returns where it went, for the report.
        It is never read back into the log."""
        ...

    def set_aside_segment(self, first: int) -> str:
        """Move the whole segment out of the log, durably, to where :meth:`set_aside` keeps
        its tails, byte for byte; returns where it went. Only a repair does this, to a segment
        after the damaged point of a log; the segment is never read back into the log."""
        ...

    def set_aside_tails(self) -> dict[str, bytes]:
        """What was set aside so far (tails and whole segments), by where :meth:`set_aside` and
        :meth:`set_aside_segment` said it went."""
        ...

    def pending_repair(self) -> bytes | None:
        """The plan of a repair under way, as :meth:`set_pending_repair` last stored it, or
        ``None``. It is kept beside the log, not in it; while it is there the log is being
        repaired: the writer refuses to open it and verification reports it."""
        ...

    def set_pending_repair(self, plan: bytes | None) -> None:
        """Store the plan of a repair under way, whole or not at all, durably (replacing the
        one stored); ``None`` removes it, durably, when the repair is complete."""
        ...

    def strays(self) -> list[str]:
        """Names that the log's place holds besides its segments and checkpoints (other or
        hidden files, folders, links, a segment or checkpoints that is not a plain file),
        sorted: data the tree does not cover, which verification reports."""
        ...

    def size(self) -> int:
        """The bytes of every segment together (what verification reads)."""
        ...


def log_storage(log: LogStorage | str | os.PathLike[str], *, in_store: bool = False) -> LogStorage:
    """``log`` itself, or the local log at the path ``log``: the log's folder (``STORE/log``),
    or with ``in_store`` the store folder that holds it."""
    if isinstance(log, str | os.PathLike):
        return LocalLogStorage.in_store(log) if in_store else LocalLogStorage(log)
    return log


class LocalLogStorage:
    """A log in a local folder (``STORE/log``), with its lock, segments being born and
    set-aside tails beside the folder, in its parent (module docstring).

    Nothing touches the disk until a method is called: a storage can be made for a log that
    does not exist yet.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     log = LocalLogStorage.in_store(tmp)
    ...     log.create()
    ...     with log.lock():
    ...         log.create_segment(0, b"header and first batch")
    ...         log.write_segment(0, 22, b", second batch")
    ...     log.segments(), log.read_segment(0, 11), log.size(), log.strays()
    ([0], b'first batch, second batch', 36, [])
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._parent = self.folder.parent
        self._lock_path = self._parent / f"{self.folder.name}.lock"
        self._repair_path = self._parent / f"{self.folder.name}.repair"
        self._aside = self._parent / "recovered"
        self._checkpoints_path = str(self.folder / CHECKPOINTS)  # paths the writer stats
        self._segment_paths: dict[int, str] = {}

    @classmethod
    def in_store(cls, store: str | os.PathLike[str]) -> LocalLogStorage:
        """The log of the store folder ``store``: ``store/log``."""
        return cls(Path(store) / "log")

    def __repr__(self) -> str:
        return f"LocalLogStorage({str(self.folder)!r})"

    def location(self) -> str:
        return str(self.folder)

    def _segment(self, first: int) -> Path:
        return self.folder / segment_name(first)

    # -- the log as a whole --------------------------------------------------------------------

    def exists(self) -> bool:
        return self.folder.is_dir()

    def create(self) -> None:
        self.folder.mkdir(mode=0o700)
        write_new(self.folder / CHECKPOINTS, b"")
        fsync_dir(self.folder)
        fsync_dir(self._parent)

    @contextlib.contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        # Outside the log folder: every file in it is log data.
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            wait_for_flock(
                fd,
                timeout=timeout,
                poll=0.002,
                held=f"{self._lock_path} is held by another process for more than "
                f"{timeout:g} s; check for a stuck sampledrec process",
            )
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def segments(self) -> list[int]:
        try:
            with os.scandir(self.folder) as it:
                found = [
                    first
                    for item in it
                    if (first := segment_first(item.name)) is not None
                    and item.is_file(follow_symlinks=False)
                ]
        except FileNotFoundError:
            return []
        return sorted(found)

    def strays(self) -> list[str]:
        try:
            with os.scandir(self.folder) as it:
                return sorted(
                    item.name
                    for item in it
                    if not (
                        (item.name == CHECKPOINTS or segment_first(item.name) is not None)
                        and item.is_file(follow_symlinks=False)
                    )
                )
        except FileNotFoundError:
            return []

    def size(self) -> int:
        return sum(self._segment(first).stat().st_size for first in self.segments())

    # -- segments ------------------------------------------------------------------------------

    def read_segment(self, first: int, start: int = 0) -> bytes:
        with open(self._segment(first), "rb") as fh:
            fh.seek(start)
            return fh.read()

    def map_segment(self, first: int) -> SegmentBytes:
        with open(self._segment(first), "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return b""
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def tail_sizes(self, first: int) -> tuple[int, int]:
        path = self._segment_paths.get(first)
        if path is None:
            path = self._segment_paths[first] = str(self._segment(first))
        return os.stat(path).st_size, os.stat(self._checkpoints_path).st_size

    def create_segment(self, first: int, data: bytes) -> None:
        seg = self._segment(first)
        if seg.exists():  # the writers' lock is held: nobody creates it meanwhile
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(seg))
        # Born whole: written and fsynced beside the folder (never inside: every file in it is
        # log data), then renamed in. A crash leaves either no segment or a complete one.
        tmp = self._parent / f".{seg.name}.new-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        write_new(tmp, data)
        os.rename(tmp, seg)
        fsync_dir(self.folder)

    def write_segment(self, first: int, at: int, data: bytes) -> None:
        _write_at(self._segment(first), at, data)

    def truncate_segment(self, first: int, size: int) -> None:
        _truncate(self._segment(first), size)

    # -- checkpoints ---------------------------------------------------------------------------

    def read_checkpoints(self, start: int = 0) -> bytes:
        with open(self.folder / CHECKPOINTS, "rb") as fh:
            fh.seek(start)
            return fh.read()

    def write_checkpoints(self, at: int, data: bytes) -> None:
        _write_at(self.folder / CHECKPOINTS, at, data)

    def truncate_checkpoints(self, size: int) -> None:
        _truncate(self.folder / CHECKPOINTS, size)

    # -- what recovery and repair set aside ----------------------------------------------------

    def _aside_path(self, name: str, offset: int) -> Path:
        """A free name in ``recovered/`` for bytes of ``name`` from ``offset`` (the lock is
        held: nobody takes it meanwhile)."""
        if not self._aside.is_dir():
            self._aside.mkdir(mode=0o700, exist_ok=True)
            fsync_dir(self._parent)
        stem = f"{name}.{offset}.{int(time.time())}"
        dest = self._aside / f"{stem}.bin"
        n = 1
        while os.path.lexists(dest):
            dest = self._aside / f"{stem}-{n}.bin"
            n += 1
        return dest

    def set_aside(self, name: str, offset: int, data: bytes) -> str:
        dest = self._aside_path(name, offset)
        write_atomic(dest, data)  # whole or not at all, and its folder entry durable
        return str(dest)

    def set_aside_segment(self, first: int) -> str:
        seg = self._segment(first)
        if not seg.is_file() or seg.is_symlink():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(seg))
        dest = self._aside_path(seg.name, 0)
        # Linked, then unlinked: never replaces a file, and a crash between the two leaves the
        # segment in both places (a repair then sets it aside again), never in neither.
        os.link(seg, dest)
        fsync_dir(self._aside)
        os.unlink(seg)
        fsync_dir(self.folder)
        return str(dest)

    def set_aside_tails(self) -> dict[str, bytes]:
        if not self._aside.is_dir():
            return {}
        return {
            str(p): p.read_bytes()
            for p in sorted(self._aside.iterdir())
            if p.is_file() and not p.name.startswith(".")  # not a temporary file
        }

    def pending_repair(self) -> bytes | None:
        try:
            return self._repair_path.read_bytes()
        except FileNotFoundError:
            return None

    def set_pending_repair(self, plan: bytes | None) -> None:
        if plan is not None:
            write_atomic(self._repair_path, plan, replace=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self._repair_path.unlink()
            fsync_dir(self._parent)


def _write_at(path: Path, at: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, at)
            view, at = view[n:], at + n
        os.fsync(fd)
    finally:
        os.close(fd)


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
