"""Repairing a damaged log: where the damage starts, and what a repair sets aside.

Opening a log recovers by itself from one kind of damage only: a torn last batch that no
checkpoint covers, which is what a crash leaves (section 11 of ``docs/log-format.md``). Anything
else (a batch that does not verify before the end, a segment missing or not of this log, a batch
cut short below a checkpoint, a checkpoint that does not parse or verify) stops the writer, and
only a deliberate repair, :meth:`DecisionLog.repair <sampledrec.log.writer.DecisionLog.repair>`
(``sampledrec log repair``), lets the store work again. This module is the repair's reading
half:

- :func:`survey` walks the log as verification does (every batch re-hashed, every stored
  checkpoint's signature checked against the log's key) and finds the first damaged point;
- :class:`RepairPlan` is what the repair does about it: the log is cut back to the last good
  batch boundary before that point, and everything from there on (the rest of that segment, every
  later segment, the checkpoint records from the first one that is bad or covers what is cut) is
  set aside byte for byte, with its SHA-256; then a ``log_gap`` entry records the gap (its fields:
  :func:`gap_values`), followed by a fresh signed checkpoint.

The writer carries the plan out, and stores it beside the log while it does
(:meth:`~.storage.LogStorage.set_pending_repair`), so that a crash at any step leaves a log that
still needs the repair (and refuses to open) or a repaired one, never a third state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from ..errors import CheckpointError, LogCorrupt, LogRepairRefused
from .checkpoint import Checkpoint, verify_checkpoint
from .format import T_LOG_CREATED, Entry, decode_entry
from .merkle import CompactRange
from .segments import (
    BATCH_HEADER,
    BATCH_MAGIC,
    MIN_RECORD,
    SEG_HEADER,
    SEG_MAGIC,
    batch_extent,
    parse_batch,
    read_trailer,
    split_records,
)
from .storage import CHECKPOINTS, LogStorage, segment_name

__all__ = [
    "PLAN_FORMAT",
    "Piece",
    "RepairPlan",
    "RepairReport",
    "Survey",
    "gap_values",
    "survey",
]

#: The ``format`` of a repair's plan, as the storage keeps it while the repair is under way.
PLAN_FORMAT: Final = "sampledrec-log-repair"
_SIG_LINE: Final = "\n\u2014 ".encode()


@dataclass
class Piece:
    """Bytes a repair sets aside: the tail of a segment (copied out, then the segment is cut),
    a whole segment (moved out of the log), or the tail of the checkpoints file."""

    name: str  # a segment's name, or "checkpoints"
    offset: int  # where the bytes started in it
    size: int
    sha256: str  # hex
    segment: int | None = None  # the segment's first entry index (None: the checkpoints)
    whole: bool = False
    kept_at: str | None = None  # where the storage keeps them, once they are set aside

    def to_json(self) -> dict[str, Any]:
        """How the ``log_gap`` entry lists the piece."""
        return {
            "name": self.name,
            "offset": self.offset,
            "bytes": self.size,
            "sha256": self.sha256,
            "kept_at": self.kept_at,
        }


@dataclass
class RepairPlan:
    """What a repair does: the log is cut back to ``size`` entries, ending at ``segment_end``
    in segment ``segment``, with the compact range ``hashes``; ``pieces`` are set aside (their
    bytes concatenated in order hash to ``sha256``); the checkpoints file is cut back to
    ``checkpoints_cut`` bytes. ``restore`` are the records re-logged after the gap entry."""

    damage: str
    size: int
    hashes: list[bytes]
    segment: int
    segment_end: int
    lost_to: int
    checkpoints_cut: int
    checkpoints_set_aside: int
    pieces: list[Piece]
    sha256: str
    time_us: int = 0
    principal: str = ""
    reason: str = ""
    restore: list[bytes] = field(default_factory=list)

    @property
    def set_aside_bytes(self) -> int:
        return sum(p.size for p in self.pieces)

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["hashes"] = [h.hex() for h in self.hashes]
        doc["restore"] = [r.hex() for r in self.restore]
        return (json.dumps({"format": PLAN_FORMAT, "version": 1, **doc}, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> RepairPlan:
        try:
            doc = json.loads(data)
            if doc.pop("format") != PLAN_FORMAT or doc.pop("version") != 1:
                raise ValueError("not a repair plan of this version")
            doc["hashes"] = [bytes.fromhex(h) for h in doc["hashes"]]
            doc["restore"] = [bytes.fromhex(r) for r in doc["restore"]]
            doc["pieces"] = [Piece(**p) for p in doc["pieces"]]
            return cls(**doc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LogCorrupt(
                f"the plan of an interrupted repair of the log cannot be read ({exc}); it was "
                "damaged: ask for support before touching the log"
            ) from None


def gap_values(plan: RepairPlan) -> dict[str, Any]:
    """The fields of the ``log_gap`` entry that records ``plan`` (``docs/log-format.md``)."""
    return {
        "lost_from": plan.size,
        "lost_to": plan.lost_to,
        "damage": plan.damage,
        "set_aside_bytes": plan.set_aside_bytes,
        "set_aside_sha256": bytes.fromhex(plan.sha256),
        "set_aside": json.dumps([p.to_json() for p in plan.pieces], separators=(",", ":")),
        "checkpoints_set_aside": plan.checkpoints_set_aside,
        "reason": plan.reason,
        "restored": len(plan.restore),
        "principal": plan.principal,
    }


@dataclass
class Survey:
    """What :func:`survey` found: ``plan`` is ``None`` when nothing is damaged;
    ``torn_tail_only`` when the only damage is what opening the log sets aside by itself (a
    torn last batch that no checkpoint covers, a torn last checkpoint record). ``kept`` holds
    the entries of the types asked for, among those the repair keeps."""

    plan: RepairPlan | None
    torn_tail_only: bool = False
    kept: list[Entry] = field(default_factory=list)


@dataclass
class _Boundary:
    """The end of a good batch: in the segment at ``index`` of the listing, at ``end``."""

    index: int
    end: int
    cr: CompactRange


def survey(
    storage: LogStorage,
    *,
    store_id: bytes,
    origin: str,
    public_key: bytes,
    keep_types: frozenset[int] = frozenset(),
) -> Survey:
    """Find the first damaged point of the log in ``storage`` and plan its repair.

    Every batch is re-hashed and checked against its trailer; every stored checkpoint must
    parse, be canonical, be signed by ``public_key`` under ``origin``, not repeat or go back,
    and have the log's root at its size. Raises :class:`~sampledrec.errors.LogRepairRefused`
    when the log is not this store's (another store id or key) or nothing before the damage can
    be kept.
    """
    where = storage.location()
    segs = storage.segments()
    if not segs:
        raise LogRepairRefused(
            f"{where} has no segment: there is nothing to keep; restore the log from a backup"
        )
    try:
        cps = storage.read_checkpoints()
    except FileNotFoundError:
        raise LogRepairRefused(
            f"{where}: the checkpoints file is missing; put back a copy (or an empty file) "
            "before repairing"
        ) from None

    # 1. The stored checkpoints, in file order, up to the first one that is bad.
    notes, whole_end = split_records(cps)
    offsets = []
    pos = 0
    for note in notes:
        offsets.append(pos)
        pos += 4 + len(note)
    good: list[Checkpoint] = []
    cp_bad: int | None = None  # the first record set aside
    cp_problems: list[str] = []
    seen: set[bytes] = set()
    for i, note in enumerate(notes):
        try:
            cp = verify_checkpoint(note, origin, public_key)
            if note.count(_SIG_LINE) != 1:
                raise CheckpointError("it carries other signature lines")
            if note in seen:
                raise CheckpointError("it repeats an earlier one")
            if good and cp.size < good[-1].size:
                raise CheckpointError("its size is smaller than the one before it")
        except CheckpointError as exc:
            cp_bad = i
            cp_problems.append(f"{CHECKPOINTS}#{i}: the checkpoint record does not verify ({exc})")
            break
        seen.add(note)
        good.append(cp)
    wanted = {cp.size for cp in good}

    # 2. The segments, batch by batch, up to the first damage.
    cr = CompactRange()
    last = _Boundary(-1, 0, cr)
    marks: dict[int, _Boundary] = {}
    kept: list[Entry] = []
    problems: list[str] = []
    damaged: tuple[int, int] | None = None  # (index in segs, offset) where the walk stopped
    first_entry: bytes | None = None
    expected = 0
    for i, first in enumerate(segs):
        name = segment_name(first)
        if first != expected:
            problems.append(
                f"{name}: the segment starts at entry {first} but the segments before it end at "
                f"entry {expected} (a segment is missing, renamed or reordered)"
            )
            damaged = (i, 0)
            break
        data = storage.read_segment(first)
        if len(data) < SEG_HEADER.size:
            problems.append(f"{name}: the segment header is cut short")
            damaged = (i, 0)
            break
        magic, sid, hdr_first = SEG_HEADER.unpack_from(data, 0)
        if magic != SEG_MAGIC or sid != store_id or hdr_first != first:
            problems.append(f"{name}: the segment header is not this log's")
            damaged = (i, 0)
            break
        pos = SEG_HEADER.size
        while pos < len(data):
            got = parse_batch(data, pos, cr)
            if got is None:
                problems.append(_what_is_wrong(name, data, pos, cr))
                damaged = (i, pos)
                break
            if first_entry is None or keep_types:
                start = pos + BATCH_HEADER.size
                plen = BATCH_HEADER.unpack_from(data, pos)[3]
                records, _ = split_records(data[start : start + plen])
                if first_entry is None:
                    first_entry = records[0]
                for k, rec in enumerate(records):
                    if rec[1] in keep_types:
                        kept.append(decode_entry(cr.size + k, rec))
            cr, pos = got
            last = _Boundary(i, pos, cr)
            if cr.size in wanted:
                marks[cr.size] = last
        if damaged is not None:
            break
        if pos == SEG_HEADER.size:
            problems.append(f"{name}: the segment holds no batch")
            damaged = (i, 0)
            break
        expected = cr.size

    # 3. The checkpoints against what is kept: none may cover more, each must have its root.
    cut = last
    for j, cp in enumerate(good):
        if cp.size > cut.cr.size:
            cp_bad = j  # it covers entries that are set aside: a consequence, not a cause
            break
        mark = marks.get(cp.size)
        if mark is None or mark.cr.root() != cp.root:
            # Signed, but the log's root at its size differs: entries before it were changed
            # (and their trailers recomputed). Keep only what the checkpoint before it signed.
            problems.append(
                f"{CHECKPOINTS}#{j}: the log's root at size {cp.size} is not the one this "
                "signed checkpoint holds (entries before it were changed)"
            )
            cut = marks[good[j - 1].size] if j else _Boundary(-1, 0, CompactRange())
            cp_bad = j
            break
    problems += cp_problems
    torn_checkpoint = whole_end < len(cps)
    if not problems and cp_bad is None:
        return Survey(None, torn_tail_only=torn_checkpoint)

    # Opening recovers by itself from a torn last batch that no checkpoint covers (and a torn
    # last checkpoint record): that is no work for a repair.
    if (
        damaged is not None
        and len(problems) == 1
        and cp_bad is None
        and damaged == (len(segs) - 1, cut.end)
        and cut is last
        and cut.index == damaged[0]
    ):
        data = storage.read_segment(segs[-1])
        extent = batch_extent(data[cut.end :])
        if extent is None or cut.end + extent == len(data):
            return Survey(None, torn_tail_only=True)

    if cut.cr.size == 0:
        raise LogRepairRefused(
            f"{where}: the log's first batch is damaged ({'; '.join(problems)}): nothing before "
            "the damage can be kept; restore the log from a backup"
        )
    _check_identity(first_entry, store_id=store_id, origin=origin, public_key=public_key)

    # 4. What is set aside: the rest of the segment the cut is in, every later segment, and the
    # checkpoint records from the first bad one (or the first past the cut) on.
    pieces: list[Piece] = []
    total = hashlib.sha256()
    lost_to = cut.cr.size
    seg = segs[cut.index]
    data = storage.read_segment(seg)
    if cut.end < len(data):
        tail = data[cut.end :]
        pieces.append(_piece(segment_name(seg), cut.end, tail, total, segment=seg))
        lost_to = max(lost_to, _sizes_shown(tail, 0))
    for later in segs[cut.index + 1 :]:
        data = storage.read_segment(later)
        pieces.append(_piece(segment_name(later), 0, data, total, segment=later, whole=True))
        lost_to = max(lost_to, later, _sizes_shown(data, SEG_HEADER.size))
    cp_cut = offsets[cp_bad] if cp_bad is not None else whole_end
    set_aside_records = notes[cp_bad:] if cp_bad is not None else []
    for note in set_aside_records:
        with contextlib.suppress(CheckpointError):
            lost_to = max(lost_to, verify_checkpoint(note, origin, public_key).size)
    if cp_cut < len(cps):
        pieces.append(_piece(CHECKPOINTS, cp_cut, cps[cp_cut:], total))
    if not problems:  # only checkpoints past what the segments hold
        problems.append(
            f"{CHECKPOINTS}#{cp_bad}: signed checkpoints cover {lost_to} entries but the "
            f"segments hold {cut.cr.size} (the log was cut short at a batch boundary)"
        )
    plan = RepairPlan(
        damage="; ".join(problems),
        size=cut.cr.size,
        hashes=list(cut.cr.hashes),
        segment=seg,
        segment_end=cut.end,
        lost_to=lost_to,
        checkpoints_cut=cp_cut,
        checkpoints_set_aside=len(set_aside_records),
        pieces=pieces,
        sha256=total.hexdigest(),
    )
    return Survey(plan, kept=[e for e in kept if e.index < plan.size])


def _piece(
    name: str,
    offset: int,
    data: bytes,
    total: Any,
    *,
    segment: int | None = None,
    whole: bool = False,
) -> Piece:
    total.update(data)
    digest = hashlib.sha256(data).hexdigest()
    return Piece(name, offset, len(data), digest, segment=segment, whole=whole)


def _what_is_wrong(name: str, data: bytes, pos: int, cr: CompactRange) -> str:
    """Why the batch at ``pos`` of a segment's ``data`` does not verify, in words."""
    left = len(data) - pos
    if left < BATCH_HEADER.size:
        return f"{name}@{pos}: {left} bytes after the last whole batch (a batch cut short)"
    magic, first, count, plen = BATCH_HEADER.unpack_from(data, pos)
    if magic != BATCH_MAGIC:
        return f"{name}@{pos}: no batch header where the next batch should start"
    if first != cr.size:
        return f"{name}@{pos}: the batch claims to start at entry {first}, not {cr.size}"
    if not 1 <= count <= plen // MIN_RECORD:
        return f"{name}@{pos}: the batch header is damaged (count {count}, payload {plen} bytes)"
    if batch_extent(data[pos:]) is None:
        return f"{name}@{pos}: the batch of entries {first}..{first + count - 1} is cut short"
    return (
        f"{name}@{pos}: the batch of entries {first}..{first + count - 1} does not verify (an "
        "entry, a length or its trailer was changed)"
    )


def _sizes_shown(data: bytes, pos: int) -> int:
    """The largest log size that the batches framed from ``pos`` on claim (0 if none): how far
    the bytes set aside show that the log went. Stops at the first batch it cannot frame."""
    top = 0
    while pos + BATCH_HEADER.size <= len(data):
        magic, first, count, plen = BATCH_HEADER.unpack_from(data, pos)
        if magic != BATCH_MAGIC or not 1 <= count <= plen // MIN_RECORD:
            break
        got = read_trailer(data, pos + BATCH_HEADER.size + plen)
        if got is None or got[0].size != first + count:
            break
        top = max(top, first + count)
        pos = got[1]
    return top


def _check_identity(
    entry: bytes | None, *, store_id: bytes, origin: str, public_key: bytes
) -> None:
    """A repair is for damage, not for a log that another store or key wrote: refuse those."""
    try:
        created = decode_entry(0, entry) if entry is not None else None
    except ValueError:
        created = None
    f = created.fields if created is not None else {}
    if (
        created is None
        or created.type != T_LOG_CREATED
        or f.get("store_id") != store_id
        or f.get("origin") != origin
        or f.get("public_key") != public_key
    ):
        raise LogRepairRefused(
            "the log's first entry is not this store's log_created (another store id, origin or "
            "signing key than the keyring's): this is not damage but another log; repair refused"
        )


@dataclass
class RepairReport:
    """What :meth:`DecisionLog.repair <sampledrec.log.writer.DecisionLog.repair>` did: the log
    was cut back to ``index`` entries, the ``log_gap`` entry took that index, and ``pieces``
    were set aside (their bytes, concatenated in order, hash to ``set_aside_sha256``)."""

    index: int
    lost_to: int
    damage: str
    pieces: list[Piece]
    set_aside_sha256: str
    checkpoints_set_aside: int
    restored: int
    checkpoint: Checkpoint
    resumed: bool = False  # it finished a repair that was interrupted

    @property
    def entries_lost(self) -> int:
        """Entries of the log before the repair that it no longer holds (at least)."""
        return self.lost_to - self.index

    @property
    def set_aside_bytes(self) -> int:
        return sum(p.size for p in self.pieces)

    def to_json(self) -> dict[str, Any]:
        return {
            "repaired": True,
            "resumed": self.resumed,
            "gap_entry": self.index,
            "lost_from": self.index,
            "lost_to": self.lost_to,
            "entries_lost": self.entries_lost,
            "checkpoints_set_aside": self.checkpoints_set_aside,
            "damage": self.damage,
            "set_aside_bytes": self.set_aside_bytes,
            "set_aside_sha256": self.set_aside_sha256,
            "set_aside": [p.to_json() for p in self.pieces],
            "restored": self.restored,
            "checkpoint": {"size": self.checkpoint.size, "root": self.checkpoint.root.hex()},
        }

    def __str__(self) -> str:
        lost = (
            f"entries {self.index}..{self.lost_to - 1} ({self.entries_lost:,}, as far as the "
            "bytes set aside show) are no longer in the log"
            if self.entries_lost
            else "no entry was lost"
        )
        lines = [
            f"damage: {self.damage}",
            f"the log was cut back to {self.index:,} entries; {lost}; "
            f"{self.checkpoints_set_aside} checkpoint records were set aside",
            f"set aside, byte for byte ({self.set_aside_bytes:,} bytes, SHA-256 "
            f"{self.set_aside_sha256}):",
        ]
        lines += [f"  {p.name}@{p.offset} ({p.size:,} bytes) -> {p.kept_at}" for p in self.pieces]
        lines.append(
            f"the gap is entry {self.index} (log_gap)"
            + (f", followed by {self.restored} re-logged entries" if self.restored else "")
            + f"; new checkpoint of {self.checkpoint.size:,} entries"
        )
        return "\n".join(lines)
