"""The part of a log whose batches follow one another, as the audit reads it.

The column reader (:func:`sampledrec.log.columns.read_log`) takes each batch header's
``first_index`` as given. A damaged or forged header (``first_index`` = 2**64 - 1, or an index
that goes back) would give it entry numbers that are not the log's. Verification reports such a
batch; the audit then reads the log only up to it, through :class:`InOrderLog`, a read-only view
of the storage that ends each segment where its batches stop following one another (the right
magic, ``first_index`` the next entry's, a count the payload can hold, a trailer that closes
the batch at ``first_index + count``), and hides the segments after one that was cut.
"""

from __future__ import annotations

from typing import NamedTuple

from ..log.segments import (
    BATCH_HEADER,
    BATCH_MAGIC,
    MIN_RECORD,
    SEG_HEADER,
    SEG_MAGIC,
    BatchSpan,
    read_trailer,
)
from ..log.storage import LogStorage, SegmentBytes, segment_name

__all__ = ["Cut", "InOrderLog", "in_order_batches"]


class Cut(NamedTuple):
    """Where the view stops: the segment, the offset of the first batch left out."""

    segment: int
    offset: int

    def __str__(self) -> str:
        return f"{segment_name(self.segment)} at offset {self.offset}"


class InOrderLog:
    """A read-only view of a :class:`~sampledrec.log.storage.LogStorage` that shows only the
    batches that follow one another from entry 0 (module docstring). It has the storage's
    reading methods only: it is no storage backend (nothing can write through it)."""

    def __init__(self, storage: LogStorage) -> None:
        self._storage = storage
        self._ends: dict[int, int] = {}  # segment -> end of its in-order batches
        self._segments: list[int] | None = None
        self.cut: Cut | None = None

    def _walk(self) -> list[int]:
        if self._segments is not None:
            return self._segments
        shown: list[int] = []
        expected = 0
        for seg in self._storage.segments():
            data = self._storage.map_segment(seg)
            ok = len(data) >= SEG_HEADER.size and seg == expected
            if ok:
                magic, _, first = SEG_HEADER.unpack_from(data, 0)
                ok = magic == SEG_MAGIC and first == seg
            if not ok:
                self.cut = Cut(seg, 0)
                break
            spans = in_order_batches(data, seg)
            pos = spans[-1].next if spans else SEG_HEADER.size
            if spans:
                expected = spans[-1].first + spans[-1].entries
            self._ends[seg] = pos
            shown.append(seg)
            if pos != len(data):
                self.cut = Cut(seg, pos)
                break
        self._segments = shown
        return shown

    # -- reading ------------------------------------------------------------------------------

    def location(self) -> str:
        return self._storage.location()

    def exists(self) -> bool:
        return self._storage.exists()

    def segments(self) -> list[int]:
        return list(self._walk())

    def map_segment(self, first: int) -> SegmentBytes:
        self._walk()
        data = self._storage.map_segment(first)
        end = self._ends.get(first, 0)
        return data if end == len(data) else bytes(data[:end])

    def read_segment(self, first: int, start: int = 0) -> bytes:
        return bytes(self.map_segment(first)[start:])

    def read_checkpoints(self, start: int = 0) -> bytes:
        return self._storage.read_checkpoints(start)

    def set_aside_tails(self) -> dict[str, bytes]:
        return self._storage.set_aside_tails()

    def strays(self) -> list[str]:
        return self._storage.strays()

    def size(self) -> int:
        return sum(self._ends.get(seg, 0) for seg in self._walk())


def in_order_batches(data: SegmentBytes, first: int) -> list[BatchSpan]:
    """The batches of a segment's ``data`` (whose first entry is ``first``) that follow one
    another from its header on: the right magic, each batch's ``first_index`` the next
    entry's, a count the payload can hold, a trailer that closes it at ``first_index + count``.
    """
    out: list[BatchSpan] = []
    pos = SEG_HEADER.size
    expected = first
    while pos + BATCH_HEADER.size <= len(data):
        magic, bfirst, count, plen = BATCH_HEADER.unpack_from(data, pos)
        start = pos + BATCH_HEADER.size
        trailer = (
            read_trailer(data, start + plen)
            if magic == BATCH_MAGIC and bfirst == expected and 1 <= count <= plen // MIN_RECORD
            else None
        )
        if trailer is None or trailer[0].size != bfirst + count:
            break
        out.append(BatchSpan(data, pos, bfirst, count, start, start + plen, trailer[1]))
        expected, pos = bfirst + count, trailer[1]
    return out
