"""The audit of an auditor's kit on Dask: its log's partitions checked by Dask workers.

``sampledrec audit verify --kit DIR --workers N`` starts a local cluster of ``N`` worker
processes (one thread each); ``--scheduler ADDRESS`` uses a running one. Dask comes with the
optional extra ``dask`` (``pip install 'sampledrec[dask]'``).

What goes to the workers is small: each task names a partition (the kit's log folder and
some segments), the checkpoints' tree sizes, and the revealed epoch keys (of ended epochs, as
the kit holds them). The workers read the log's segments and the kit's ``sealing-keys.json``
from the kit folder themselves: with a remote scheduler, the kit must be on storage that every
worker reads at the same path. What comes back is each segment's compact range and claims,
its decision columns and the few draws that disagree with the log: one task per partition,
each answer fetched as soon as it is ready. The decision columns (about 110 bytes a decision)
come back over the network from a remote cluster; a local cluster's workers write them to a
private folder in shared memory (``/dev/shm``) that this process reads and deletes at once,
several times cheaper than Dask's sockets (docs/decisions/0037-audit-spool.md). The join, and
every check that spans the log, run in this process, exactly as in the single-process audit
(:mod:`sampledrec.audit.partitions`): the report is the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..errors import InvalidArgument, StoreError
from ..log.storage import segment_name
from ..log.verify import SegmentCheck
from .kit import open_kit
from .partitions import LogPartition, SegmentEntries, read_part, verify_part

__all__ = [
    "CONNECT_TIMEOUT",
    "DaskRunner",
    "Spooled",
    "dask_runner",
    "small_pages",
    "spool_columns",
    "unspool_columns",
]

#: Seconds to wait for a scheduler given by its address.
CONNECT_TIMEOUT = 10.0
#: Where a local cluster's workers leave their decision columns (memory, never a disk).
SHARED_MEMORY: Final = "/dev/shm"
_ALIGN: Final = 64  # each column of a spool file starts at a multiple of this


@dataclass(frozen=True)
class Spooled:
    """A segment's decision columns in a spool file: each column's field name, dtype, shape
    and offset."""

    path: str
    size: int
    columns: tuple[tuple[str, str, tuple[int, ...], int], ...]


def spool_columns(entries: Sequence[SegmentEntries], folder: str) -> list[Spooled | None]:
    """Write each segment's decision columns to a file of its own in ``folder``, and leave
    empty columns (of the same types) in their place; None for a segment sent as it is:
    without decisions, or whose file could not be written (``folder`` full, as a container's
    small ``/dev/shm`` can be, or gone)."""
    out: list[Spooled | None] = []
    for e in entries:
        d = e.contents.decisions
        arrays = [
            (f.name, np.ascontiguousarray(getattr(d, f.name)))
            for f in dataclasses.fields(d)
            if isinstance(getattr(d, f.name), np.ndarray)
        ]
        written = _spool_file(arrays, folder, e.segment) if len(d) else None
        out.append(written)
        if written is None:
            continue
        empty: dict[str, Any] = {
            name: np.empty((0, *a.shape[1:]), dtype=a.dtype) for name, a in arrays
        }
        e.contents.decisions = dataclasses.replace(d, **empty)
    return out


def _spool_file(arrays: list[tuple[str, Any]], folder: str, segment: int) -> Spooled | None:
    """``arrays`` (name, array) in a new file in ``folder``; None (and no file) on failure."""
    try:
        fd, path = tempfile.mkstemp(dir=folder, prefix=f"seg-{segment}-", suffix=".cols")
    except OSError:
        return None
    layout = []
    at = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for name, a in arrays:
                pad = -at % _ALIGN
                fh.write(bytes(pad))
                at += pad
                fh.write(a.reshape(-1).view(np.uint8).data)
                layout.append((name, a.dtype.str, tuple(a.shape), at))
                at += a.nbytes
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return Spooled(path, at, tuple(layout))


def unspool_columns(
    entries: Sequence[SegmentEntries], spooled: Sequence[Spooled | None], folder: str
) -> None:
    """Put back the columns that :func:`spool_columns` wrote in ``folder``, read straight into
    new arrays (one copy, by the kernel: mapping the files instead costs a page fault per
    4 KiB when the columns are joined), and delete their files. A file named outside
    ``folder`` is refused (:class:`~sampledrec.errors.StoreError`): this process deletes
    what it reads."""
    for e, s in zip(entries, spooled, strict=True):
        if s is None:
            continue
        cols: dict[str, Any] = {}
        with _open_spooled(s, folder) as fh:
            for name, dtype, shape, at in s.columns:
                cols[name] = _read_into(fh, at, np.empty(shape, dtype=np.dtype(dtype)))
        os.unlink(s.path)
        e.contents.decisions = dataclasses.replace(e.contents.decisions, **cols)


def _open_spooled(s: Spooled, folder: str) -> Any:
    """The spool file of ``s``, opened to read; :class:`StoreError` if it is not in
    ``folder`` (the joining process deletes what it reads)."""
    if os.path.dirname(os.path.realpath(s.path)) != os.path.realpath(folder):
        raise StoreError(f"a worker's columns are not in the spool folder {folder}: {s.path}")
    return open(s.path, "rb", buffering=0)


def _read_into(fh: Any, at: int, column: Any) -> Any:
    """``column`` filled with the bytes of ``fh`` from offset ``at``; returns it."""
    _read_exactly(fh, at, column.reshape(-1).view(np.uint8).data)
    return column


def _read_exactly(fh: Any, at: int, into: memoryview) -> None:
    fh.seek(at)
    done = 0
    while done < len(into):
        got = fh.readinto(into[done:])
        if not got:
            raise OSError(f"{fh.name}: the spooled columns end before offset {at + len(into)}")
        done += got


@contextmanager
def small_pages() -> Iterator[None]:
    """Within the block, numpy does not advise the kernel to back this process's large arrays
    with transparent huge pages (``madvise(MADV_HUGEPAGE)``, its default for arrays of 4 MiB and
    more); the setting it had comes back after. Where the kernel compacts memory to find huge
    pages on that advice (THP ``defrag`` set to ``madvise``, Debian's default), the audit's
    gigabytes of fresh columns cost seconds of page faults: filling a new 4 GiB array took
    4.7-11.7 s with the advice and 1.4 s without, on the test machine
    (docs/decisions/0042-small-pages.md). Without numpy's switch (a private function of numpy
    2), nothing changes."""
    multiarray: Any = importlib.import_module("numpy._core.multiarray")
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    if switch is None:
        yield
        return
    before = switch(False)
    try:
        yield
    finally:
        switch(before)


@functools.lru_cache(maxsize=4)
def _kit_sealing(kit: str, made: float) -> Any:
    """The kit's sealing keys, as :func:`~sampledrec.audit.kit.open_kit` reads them (once per
    worker process and kit)."""
    return open_kit(kit)[0].sealing


def check_kit_part(
    part: LogPartition,
    wanted: frozenset[int],
    kit: str,
    keys: Mapping[str, Sequence[bytes]],
    spool: str | None = None,
) -> tuple[list[SegmentCheck], list[SegmentEntries], list[Spooled | None]]:
    """One partition's whole work on a worker, in one task: :func:`~.partitions.verify_part`
    then :func:`~.partitions.read_part` (the segments' pages read from disk once, still in
    the page cache for the second pass), the kit's sealing keys read from the kit folder,
    in :func:`small_pages`.
    With ``spool`` (a folder that the joining process reads too), the decision columns are
    written there (:func:`spool_columns`) instead of going back with the answer."""
    made = (Path(kit) / "kit.json").stat().st_mtime
    with small_pages():
        checks = verify_part(part, wanted)
        entries = read_part(part, _kit_sealing(kit, made), keys)
        spooled: list[Spooled | None] = [None] * len(entries)
        if spool is not None:
            spooled = spool_columns(entries, spool)
    return checks, entries, spooled


class DaskRunner:
    """Runs the partitions of a kit's log on a Dask cluster through ``client``; ``spool``: a
    folder in which the workers leave the decision columns for this process (they must see
    it at the same path: a local cluster's), else they come back over the network."""

    def __init__(self, client: Any, kit: str | Path, spool: str | None = None) -> None:
        self.client = client
        self.kit = str(Path(kit).resolve())
        self.spool = spool
        self._together: list[_LaidOut | None] = [None]  # shared with for_kit's runners

    def for_kit(self, kit: str | Path) -> DaskRunner:
        """A runner of another kit's log on the same cluster (a deployment kit's nodes)."""
        runner = DaskRunner(self.client, kit, self.spool)
        runner._together = self._together
        return runner

    def lay_out_together(self, log_bytes: int | None) -> None:
        """Until called again with None, the logs this runner and its :meth:`for_kit`
        runners read (one after the other, as a deployment's audit reads its nodes) have their
        columns laid out one after the other in the same arrays (:class:`_LaidOut`), so that
        joining the nodes' decisions copies nothing either; ``log_bytes``: all those logs'."""
        laid = self._together[0]
        if laid is not None:
            laid.close()
        self._together[0] = (
            None if log_bytes is None or self.spool is None else _LaidOut(self.spool, log_bytes)
        )

    def run(
        self,
        parts: Sequence[LogPartition],
        wanted: frozenset[int],
        sealing: Any,
        keys: Mapping[str, Sequence[bytes]],
        progress: Callable[[int], None] | None,
    ) -> tuple[list[SegmentCheck], list[SegmentEntries]]:
        return self.submit(parts, wanted, sealing, keys, progress)()

    def submit(
        self,
        parts: Sequence[LogPartition],
        wanted: frozenset[int],
        sealing: Any,
        keys: Mapping[str, Sequence[bytes]],
        progress: Callable[[int], None] | None,
    ) -> Callable[[], tuple[list[SegmentCheck], list[SegmentEntries]]]:
        """:meth:`run` in two steps: the partitions go to the cluster now, and the function
        returned waits for their answers. Several logs' partitions (a deployment's nodes) are
        submitted before the first is waited for: the workers go from one log to the next,
        while this process takes in the answers."""
        as_completed: Any = importlib.import_module("distributed").as_completed  # untyped

        log = Path(self.kit) / "log"
        # Workers are told where the log is, never given its bytes.
        remote = [LogPartition(str(log), p.segments) for p in parts]
        sizes = [sum((log / segment_name(s)).stat().st_size for s in p.segments) for p in parts]
        futures = self.client.map(
            check_kit_part,
            remote,
            wanted=wanted,
            kit=self.kit,
            keys=keys,
            spool=self.spool,
            pure=False,
        )
        return functools.partial(self._collect, as_completed, futures, sizes, progress)

    def _collect(
        self,
        as_completed: Any,
        futures: list[Any],
        sizes: list[int],
        progress: Callable[[int], None] | None,
    ) -> tuple[list[SegmentCheck], list[SegmentEntries]]:
        slot = {f.key: i for i, f in enumerate(futures)}
        got: list[tuple[list[SegmentCheck], list[SegmentEntries]] | None] = [None] * len(futures)
        together = self._together[0]
        laid = together or (None if self.spool is None else _LaidOut(self.spool, sum(sizes)))
        unread: dict[int, tuple[list[SegmentEntries], list[Spooled | None]]] = {}
        next_part = 0
        # Each answer is fetched as soon as it is ready, while the workers go on with the
        # others (not all at the end), and released from its worker at once. Its spooled
        # columns are read once every partition before it was (into their place in the log).
        for future, answer in as_completed(futures, with_results=True):
            i = slot[future.key]
            checks, entries, spooled = answer
            got[i] = (checks, entries)
            future.release()
            if laid is not None:
                unread[i] = (entries, spooled)
                while next_part in unread:
                    laid.add(*unread.pop(next_part))
                    next_part += 1
            if progress is not None:
                progress(2 * sizes[i])  # both passes over its bytes
        done = [g for g in got if g is not None]
        if len(done) != len(got) or unread:  # as_completed yields every future, or raises
            raise RuntimeError("a partition's answer is missing")
        if laid is not None and laid is not together:
            laid.close()
        return [c for g in done for c in g[0]], [e for g in done for e in g[1]]


class _LaidOut:
    """The spooled decision columns of a log's partitions, read in log order one after the
    other into one array per column, so that joining them (:func:`~sampledrec.log.columns.
    concat_decisions`) copies nothing: at 10M decisions, memory touched once instead of twice
    (on a virtual machine, memory touched for the first time is the join's main cost: 0037).

    The arrays are sized from the first segment's decisions per byte (an estimate: memory that
    is never written is never used), the call references to the first segment's width
    (narrower ones padded with zeros, as the join pads them; wider ones are read into an array
    of their own, and the join copies the references). A segment that does not fit the arrays
    is read into arrays of its own as before (:func:`unspool_columns`), and the join copies.
    Once every partition is read the arrays are made read-only: the join's views may not be
    written through."""

    def __init__(self, folder: str, log_bytes: int) -> None:
        self.folder = folder
        self.log_bytes = log_bytes
        self.rows = 0  # rows written so far
        self.columns: dict[str, Any] | None = None
        self.capacity = 0

    def add(self, entries: list[SegmentEntries], spooled: list[Spooled | None]) -> None:
        """The next partition in log order: its segments' columns read (and their files
        deleted), each into its place."""
        for e, s in zip(entries, spooled, strict=True):
            if s is None or not self._fits(e, s):
                unspool_columns([e], [s], self.folder)
                continue
            assert self.columns is not None
            at = self.rows
            cols: dict[str, Any] = {}
            with _open_spooled(s, self.folder) as fh:
                for name, dtype, shape, offset in s.columns:
                    here = self.columns[name][at : at + shape[0]]
                    if here.shape[1:] == tuple(shape[1:]):
                        column = here  # in its place
                    else:  # call references: wider ones stay apart, narrower ones padded
                        column = np.empty(shape, dtype=np.dtype(dtype))
                    _read_into(fh, offset, column)
                    if column is not here and shape[1] < here.shape[1]:
                        here[:, : shape[1]] = column
                        here[:, shape[1] :] = 0
                        column = here
                    if column is here:
                        column.flags.writeable = False  # nothing writes through the join
                    cols[name] = column
            os.unlink(s.path)
            self.rows += s.columns[0][2][0]
            e.contents.decisions = dataclasses.replace(e.contents.decisions, **cols)

    def _fits(self, e: SegmentEntries, s: Spooled) -> bool:
        rows = {shape[0] for _, _, shape, _ in s.columns}
        if len(rows) != 1:
            return False
        if self.columns is None:
            per_byte = rows.pop() / max(1, e.length)
            self.capacity = math.ceil(self.log_bytes * per_byte * 1.25) + 1024
            self.columns = {
                name: np.empty((self.capacity, *shape[1:]), dtype=np.dtype(dtype))
                for name, dtype, shape, _ in s.columns
            }
            return True
        have = self.columns
        return (
            self.rows + rows.pop() <= self.capacity
            and len(s.columns) == len(have)
            and all(
                name in have
                and have[name].dtype == np.dtype(dtype)
                and have[name].ndim == len(shape)
                and (have[name].shape[1:] == tuple(shape[1:]) or name == "refs")
                for name, dtype, shape, _ in s.columns
            )
        )

    def close(self) -> None:
        """Every partition was added: the arrays become read-only."""
        for column in (self.columns or {}).values():
            column.flags.writeable = False


def _spool_folder() -> str | None:
    """A new private folder in shared memory for a local cluster's columns, or None (no
    shared memory: the columns come back over the network, never through a disk)."""
    if not os.path.isdir(SHARED_MEMORY) or not os.access(SHARED_MEMORY, os.W_OK):
        return None
    return tempfile.mkdtemp(prefix="sampledrec-audit-", dir=SHARED_MEMORY)  # mode 0700


@contextmanager
def dask_runner(
    kit: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    timeout: float | None = None,
) -> Iterator[DaskRunner]:
    """A :class:`DaskRunner` for the kit ``kit``: on the cluster whose scheduler listens at
    ``scheduler``, or on a local cluster of ``workers`` processes started (and stopped) here.
    :class:`~sampledrec.errors.StoreError` when the scheduler cannot be reached in ``timeout``
    seconds (default :data:`CONNECT_TIMEOUT`), :class:`~sampledrec.errors.InvalidArgument`
    when Dask is not installed. Within the block this process's large arrays get small pages
    (:func:`small_pages`): it lays out the columns of the whole log."""
    if (scheduler is None) == (workers is None):
        raise InvalidArgument("give either scheduler= (an address) or workers= (a number)")
    if workers is not None and workers < 1:
        raise InvalidArgument(f"--workers {workers} must be 1 or more")
    try:
        dd: Any = importlib.import_module("distributed")  # untyped: called as Any
    except ImportError:
        raise InvalidArgument(
            "--workers and --scheduler run the audit on Dask, which is not installed: "
            "pip install 'sampledrec[dask]'"
        ) from None
    if scheduler is not None:
        try:
            client = dd.Client(scheduler, timeout=timeout or CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise StoreError(
                f"cannot reach the Dask scheduler at {scheduler!r} ({exc}); start one "
                "('dask scheduler', and 'dask worker ADDRESS' on each machine) or audit on "
                "this machine with --workers N"
            ) from None
        with client, small_pages():
            yield DaskRunner(client, kit)
        return
    with (
        dd.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            # No dashboard, and the scheduler's HTTP routes on any free port (not 8787).
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
        ) as cluster,
        dd.Client(cluster) as client,
    ):
        spool = _spool_folder()
        try:
            with small_pages():  # this process lays out every worker's columns
                yield DaskRunner(client, kit, spool)
        finally:
            if spool is not None:
                shutil.rmtree(spool, ignore_errors=True)
