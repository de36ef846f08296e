"""The byte layout of a log's segments and checkpoints file, and the helpers that read it.

A segment is ``b"SDRLOG01" | store_id (16) | first_index u64be`` then whole batches::

    batch   = b"BTCH" | first_index u64 | count u32 | payload_len u32 | record* | trailer
    record  = length u32 | entry                       (entry: see sampledrec.log.format)
    trailer = b"ROOT" | tree_size u64 | n u8 | n x 32-byte hashes (the compact range)

The checkpoints file is a run of records too (``u32be length | signed note``). The writer, crash
recovery, verification, the column reader and the proofs all read these bytes through the
helpers here, each as strictly as it needs: :func:`skip_batch` trusts the hashes (catching up
with another writer), :func:`parse_batch` recomputes them (recovery), :func:`iter_batches`
only frames them (readers). ``docs/log-format.md`` (sections 2 and 3) is the specification.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

from ..errors import LogCorrupt
from . import hashing
from .merkle import CompactRange
from .storage import LogStorage, SegmentBytes, log_storage, segment_name

__all__ = [
    "BATCH_HEADER",
    "BATCH_MAGIC",
    "MIN_RECORD",
    "SEGMENT_BYTES",
    "SEG_HEADER",
    "SEG_MAGIC",
    "TRAILER_HEAD",
    "TRAILER_MAGIC",
    "U32",
    "BatchSpan",
    "batch_extent",
    "iter_batches",
    "last_trailer",
    "parse_batch",
    "read_trailer",
    "skip_batch",
    "split_records",
    "trailer_bytes",
]

SEG_MAGIC: Final = b"SDRLOG01"
BATCH_MAGIC: Final = b"BTCH"
TRAILER_MAGIC: Final = b"ROOT"
SEG_HEADER: Final = struct.Struct(">8s16sQ")
BATCH_HEADER: Final = struct.Struct(">4sQII")
TRAILER_HEAD: Final = struct.Struct(">4sQB")
U32: Final = struct.Struct(">I")
#: The writer starts a new segment when the current one has reached this size (read at each
#: use, so that tests can make segments small).
SEGMENT_BYTES = 64 << 20
MIN_RECORD: Final = 14  # a 4-byte length and the 10-byte entry header


def trailer_bytes(cr: CompactRange) -> bytes:
    """The trailer that records ``cr``, the compact range of the log after a batch."""
    return TRAILER_HEAD.pack(TRAILER_MAGIC, cr.size, len(cr.hashes)) + b"".join(cr.hashes)


def split_records(data: bytes) -> tuple[list[bytes], int]:
    """Split u32-length-prefixed records; returns them and the end of the last whole one."""
    out = []
    pos = 0
    while pos + 4 <= len(data):
        (n,) = U32.unpack_from(data, pos)
        if pos + 4 + n > len(data):
            break
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out, pos


def read_trailer(data: SegmentBytes, pos: int) -> tuple[CompactRange, int] | None:
    """The compact range a trailer at ``pos`` records and the offset after it, or ``None`` if
    no well-formed trailer lies wholly there."""
    if pos + TRAILER_HEAD.size > len(data):
        return None
    magic, size, n = TRAILER_HEAD.unpack_from(data, pos)
    pos += TRAILER_HEAD.size
    if magic != TRAILER_MAGIC or pos + 32 * n > len(data) or n != bin(size).count("1"):
        return None
    hashes = [data[pos + 32 * i : pos + 32 * (i + 1)] for i in range(n)]
    return CompactRange(size, hashes), pos + 32 * n


def last_trailer(data: SegmentBytes) -> CompactRange | None:
    """The compact range recorded by the trailer that ends a segment's ``data`` (the log's after
    the segment's last batch), found from the end without reading the batches (a trailer holds
    ``popcount(tree_size)`` hashes), or ``None`` if no well-formed trailer ends it."""
    for n in range(65):
        pos = len(data) - TRAILER_HEAD.size - 32 * n
        if pos < SEG_HEADER.size:
            break
        got = read_trailer(data, pos)
        if got is not None and got[1] == len(data):
            return got[0]
    return None


def batch_extent(tail: bytes) -> int | None:
    """The length of the batch at the start of ``tail`` if it lies wholly inside ``tail``
    (whatever its content), else ``None`` (it runs past the end: a torn write)."""
    if len(tail) < BATCH_HEADER.size:
        return None
    _, _, _, plen = BATCH_HEADER.unpack_from(tail, 0)
    trailer_at = BATCH_HEADER.size + plen
    if trailer_at + TRAILER_HEAD.size > len(tail):
        return None
    n = tail[trailer_at + TRAILER_HEAD.size - 1]
    end = trailer_at + TRAILER_HEAD.size + 32 * n
    return end if end <= len(tail) else None


def skip_batch(data: bytes, pos: int) -> tuple[CompactRange, int] | None:
    """Read a batch's header and trailer without hashing it (for catching up): the range its
    trailer records and the offset after it, or ``None`` if it is not a whole batch."""
    if pos + BATCH_HEADER.size > len(data):
        return None
    magic, first, count, plen = BATCH_HEADER.unpack_from(data, pos)
    if magic != BATCH_MAGIC or not 1 <= count <= plen // MIN_RECORD:
        return None
    got = read_trailer(data, pos + BATCH_HEADER.size + plen)
    if got is None or got[0].size != first + count:
        return None
    return got


def parse_batch(data: bytes, pos: int, cr: CompactRange) -> tuple[CompactRange, int] | None:
    """Fully check one batch starting at ``pos`` against the range before it: its records
    re-hashed onto ``cr`` must give its trailer. The new range and the offset after the batch,
    or ``None``."""
    if pos + BATCH_HEADER.size > len(data):
        return None
    magic, first, count, plen = BATCH_HEADER.unpack_from(data, pos)
    start = pos + BATCH_HEADER.size
    if (
        magic != BATCH_MAGIC
        or first != cr.size
        or start + plen > len(data)
        or not 1 <= count <= plen // MIN_RECORD
    ):
        return None
    work = cr.copy()
    got = hashing.hash_records(data[start : start + plen], 0, count, work)
    if got is None or got[0] != plen:
        return None
    trailer = read_trailer(data, start + plen)
    if trailer is None or trailer[0] != work:
        return None
    return work, trailer[1]


class BatchSpan(NamedTuple):
    """Where one batch lies in its segment's bytes ``data``: its header at ``at``, its records
    in ``data[start:end]`` (the first being entry ``first``), the next batch at ``next``."""

    data: SegmentBytes
    at: int
    first: int
    entries: int
    start: int
    end: int
    next: int


def iter_batches(
    log: LogStorage | str | os.PathLike[str], *, mapped: bool = False
) -> Iterator[BatchSpan]:
    """Every batch of every segment of ``log`` (a :class:`~.storage.LogStorage`, or the path
    of a local log folder), in order; :class:`LogCorrupt` at a damaged batch header or trailer.
    ``mapped``: segments are memory-mapped instead of read, where the storage can (large
    logs)."""
    storage = log_storage(log)
    expected: int | None = None  # the index the next batch must start at
    for seg in storage.segments():
        if expected is not None and seg != expected:
            raise LogCorrupt(
                f"{segment_name(seg)} starts at entry {seg}, but the entries before it end at "
                f"{expected}: a segment is missing or out of place"
            )
        expected = seg
        data = storage.map_segment(seg) if mapped else storage.read_segment(seg)
        pos = SEG_HEADER.size
        while pos + BATCH_HEADER.size <= len(data):
            magic, first, count, plen = BATCH_HEADER.unpack_from(data, pos)
            start = pos + BATCH_HEADER.size
            trailer = read_trailer(data, start + plen)
            if magic != BATCH_MAGIC or trailer is None:
                raise LogCorrupt(f"{segment_name(seg)}: damaged batch at offset {pos}")
            if first != expected:
                # Readers number entries from the batch headers: a header that does not follow
                # on would renumber (or overflow) everything after it.
                raise LogCorrupt(
                    f"{segment_name(seg)}: the batch at offset {pos} claims to start at entry "
                    f"{first}, where entry {expected} comes next"
                )
            yield BatchSpan(data, pos, first, count, start, start + plen, trailer[1])
            expected = first + count
            pos = trailer[1]
