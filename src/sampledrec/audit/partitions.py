"""The audit's log in independent partitions: what each one checks on its own, and the join.

A partition is a stretch of one log: :class:`LogPartition`, a log and some of its consecutive
segments. Each is checked with no knowledge of the entries before it, in this process or in
another one (:mod:`sampledrec.audit.distributed` runs them on Dask):

- :func:`verify_part`: each segment's structure, leaf hashes, the Merkle compact range of its
  entries (the perfect subtrees that cover them) and what its batch trailers claim about the
  tree before it (:func:`sampledrec.log.verify.verify_segment`);
- :func:`read_part`: the batches that follow one another, read into decision columns and
  decoded entries, and every draw of a revealed epoch recomputed (:func:`draw_mismatches`),
  of which only those that contradict the log come back.

The join (:func:`join_entries`, and :meth:`sampledrec.log.verify.LogVerification.finish` for
the tree) takes them in log order: it merges the compact ranges into the root that the signed
checkpoints must have, concatenates the decision columns, and leaves the checks that span the
log (first decisions and repeats, caps, recordings, call records, statistics) to
:func:`sampledrec.audit.verify.audit_evidence`, as for a log read at once. The single-process
audit runs the same functions in this process (:class:`InProcess`): one code path, so the
report is the same however the work is spread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from .._hazmat.cmac import draws_rows
from ..log.columns import (
    I64,
    Decisions,
    LogContents,
    concat_contents,
    decisions_from_entries,
    read_batches,
)
from ..log.segments import SEG_HEADER, SEG_MAGIC, BatchSpan
from ..log.storage import LocalLogStorage, LogStorage
from ..log.verify import SegmentCheck, verify_segment
from ..sampling.keyed import MAX_CALL_REF_BYTES
from .logview import Cut, in_order_batches

__all__ = [
    "DrawMismatches",
    "InProcess",
    "LogPartition",
    "PartRunner",
    "SegmentEntries",
    "draw_mismatches",
    "join_entries",
    "partitions",
    "read_part",
    "verify_part",
]

_SAMPLED, _NOT_SAMPLED, _OBJECTION, _CAP = range(4)
U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class LogPartition:
    """Consecutive ``segments`` (by first entry) of one log: ``log`` is its storage, or the
    path of its folder where the partition runs (a worker reads the files itself)."""

    log: Any
    segments: tuple[int, ...]

    def storage(self) -> LogStorage:
        return LocalLogStorage(self.log) if isinstance(self.log, str) else self.log


def partitions(log: Any, segments: Sequence[int], *, per_part: int = 1) -> list[LogPartition]:
    """The log's segments as partitions of ``per_part`` segments each, in log order."""
    return [
        LogPartition(log, tuple(segments[i : i + per_part]))
        for i in range(0, len(segments), per_part)
    ]


# -- on their own ----------------------------------------------------------------------------------


def verify_part(
    part: LogPartition,
    wanted: frozenset[int],
    progress: Callable[[int], None] | None = None,
) -> list[SegmentCheck]:
    """Each segment of ``part`` verified on its own; ``wanted``: the checkpoints' tree sizes."""
    storage = part.storage()
    return [verify_segment(storage, s, wanted=wanted, progress=progress) for s in part.segments]


@dataclass
class DrawMismatches:
    """What recomputing one epoch's draws with one key found: the rows whose logged draw or
    reason contradicts the draw recomputed (and those draws), and how many were recomputed."""

    rows: I64
    draws: U64
    recomputed: int


@dataclass
class SegmentEntries:
    """One segment read as the audit reads it: only the batches that follow one another."""

    segment: int
    shown: bool  # its header is this segment's (else the reading stops before it)
    end: int  # where its batches stop following one another (offset)
    length: int
    next_index: int  # the entry after its last batch read
    contents: LogContents
    fatal: str | None = None  # the columns could not be built at all
    # (epoch id, index of the candidate key) -> what recomputing found
    draws: dict[tuple[str, int], DrawMismatches] = field(default_factory=dict)


def read_part(
    part: LogPartition,
    sealing: Any,
    keys: Mapping[str, Sequence[bytes]],
    progress: Callable[[int], None] | None = None,
) -> list[SegmentEntries]:
    """Each segment of ``part`` read into columns (sealed fields opened with ``sealing``), and
    its draws recomputed with each candidate key of ``keys`` (epoch id -> revealed keys)."""
    storage = part.storage()
    out = []
    for seg in part.segments:
        data = storage.map_segment(seg)
        shown = (
            len(data) >= SEG_HEADER.size
            and SEG_HEADER.unpack_from(data, 0)[0] == SEG_MAGIC
            and SEG_HEADER.unpack_from(data, 0)[2] == seg
        )
        spans: list[BatchSpan] = in_order_batches(data, seg) if shown else []
        end = spans[-1].next if spans else SEG_HEADER.size
        got = SegmentEntries(
            seg,
            shown,
            end if shown else 0,
            len(data),
            spans[-1].first + spans[-1].entries if spans else seg,
            LogContents(decisions_from_entries([])),
        )
        try:
            got.contents = read_batches(spans, sealing, progress=progress)
        except (ValueError, OverflowError) as exc:
            got.fatal = f"{exc}"
        d = got.contents.decisions
        for epoch, candidates in keys.items():
            if epoch in d.epochs:
                for j, key in enumerate(candidates):
                    got.draws[(epoch, j)] = draw_mismatches(d, epoch, key)
        out.append(got)
    return out


def draw_mismatches(d: Decisions, epoch: str, key: bytes) -> DrawMismatches:
    """Recompute, with ``key``, the draw of every decision of ``epoch`` whose call reference
    can be drawn; the rows whose logged draw differs or whose reason contradicts it."""
    n = len(d)
    code = d.epochs.index(epoch)
    has_ref = d.ref_kind > 0
    valid = (d.ref_len >= 1) & (d.ref_len <= MAX_CALL_REF_BYTES)
    sel = np.flatnonzero((d.epoch == code) & has_ref & valid)
    if not sel.size:
        return DrawMismatches(np.empty(0, np.int64), np.empty(0, np.uint64), 0)

    def rows(column: Any) -> Any:  # all of them (the usual case): no copy
        return column if sel.size == n else column[sel]

    lengths = rows(d.ref_len)
    width = int(lengths.max())
    whole = sel.size == n and width == d.refs.shape[1]
    msgs = d.refs if whole else np.ascontiguousarray(d.refs[sel, :width])
    draws = draws_rows(key, msgs, None if int(lengths.min()) == width else lengths)
    reason = rows(d.reason)
    below = draws < rows(d.threshold)
    ok = (~rows(d.has_draw) | (rows(d.draw) == draws)) & np.where(
        (reason == _SAMPLED) | (reason == _CAP), below, ~below | (reason != _NOT_SAMPLED)
    )
    bad = np.flatnonzero(~ok)
    return DrawMismatches(sel[bad].astype(np.int64), draws[bad], int(sel.size))


# -- running them --------------------------------------------------------------------------------


class PartRunner(Protocol):
    """Runs the partitions' checks (:class:`InProcess`, or on Dask); returns, in log order,
    every segment's :class:`SegmentCheck` and :class:`SegmentEntries`."""

    def run(
        self,
        parts: Sequence[LogPartition],
        wanted: frozenset[int],
        sealing: Any,
        keys: Mapping[str, Sequence[bytes]],
        progress: Callable[[int], None] | None,
    ) -> tuple[list[SegmentCheck], list[SegmentEntries]]: ...


class InProcess:
    """The partitions checked in this process, on ``threads`` threads (hashing, reading and
    drawing spend most of their time in C without the GIL)."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads

    def run(
        self,
        parts: Sequence[LogPartition],
        wanted: frozenset[int],
        sealing: Any,
        keys: Mapping[str, Sequence[bytes]],
        progress: Callable[[int], None] | None,
    ) -> tuple[list[SegmentCheck], list[SegmentEntries]]:
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            checks = [pool.submit(verify_part, p, wanted, progress) for p in parts]
            entries = [pool.submit(read_part, p, sealing, keys, progress) for p in parts]
            return (
                [c for f in checks for c in f.result()],
                [e for f in entries for e in f.result()],
            )


# -- the join ------------------------------------------------------------------------------------


@dataclass
class JoinedEntries:
    """The log as read at once: its contents, where the reading stopped (``cut``), and each
    revealed epoch's draw mismatches with row numbers of the whole log."""

    contents: LogContents
    cut: Cut | None
    draws: dict[tuple[str, int], DrawMismatches]


def join_entries(segments: Iterable[SegmentEntries]) -> JoinedEntries:
    """The segments' readings in log order as one: the reading goes on while segments follow
    one another and stops after the first that is cut (as :class:`~.logview.InOrderLog`)."""
    used: list[SegmentEntries] = []
    cut: Cut | None = None
    expected = 0
    for s in segments:
        if not s.shown or s.segment != expected:
            cut = Cut(s.segment, 0)
            break
        used.append(s)
        expected = s.next_index
        if s.end != s.length:
            cut = Cut(s.segment, s.end)
            break
    parts: list[LogContents] = []
    for s in used:
        if s.fatal is not None:
            return JoinedEntries(LogContents(decisions_from_entries([]), [], s.fatal), cut, {})
        parts.append(s.contents)
        if s.contents.error is not None:
            break
    contents = concat_contents(parts) if parts else LogContents(decisions_from_entries([]))
    draws: dict[tuple[str, int], DrawMismatches] = {}
    offset = 0
    for s in used[: len(parts)]:
        for k, m in s.draws.items():
            got = draws.get(k)
            rows, values = m.rows + offset, m.draws
            if got is not None:
                rows = np.concatenate([got.rows, rows])
                values = np.concatenate([got.draws, values])
            draws[k] = DrawMismatches(rows, values, m.recomputed + (got.recomputed if got else 0))
        offset += len(s.contents.decisions)
    return JoinedEntries(contents, cut, draws)


def candidate_keys(revealed: Iterable[Any]) -> dict[str, list[bytes]]:
    """The revealed keys that match their own commitment, by epoch: the keys a partition may
    draw with (which of them the log committed to is known only at the join)."""
    out: dict[str, list[bytes]] = {}
    for k in revealed:
        if k.matches_commitment() and k.key not in out.get(k.epoch_id, []):
            out.setdefault(k.epoch_id, []).append(k.key)
    return out


EMPTY_MISMATCHES: Final = DrawMismatches(np.empty(0, np.int64), np.empty(0, np.uint64), 0)
