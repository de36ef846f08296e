"""Verification of a decision log: every byte, every hash, every signature, and the rules.

:func:`verify_log` re-hashes the whole tree from the entries and checks, with findings that name
the file, offset and entry index of anything wrong:

- ``files``: ``log/`` holds only segments named after their first entry and ``checkpoints``;
- ``structure``: segment headers, batch headers, lengths and trailers parse, nothing trails;
- ``tree``: each batch trailer equals the compact range recomputed from the entries;
- ``checkpoints``: every stored checkpoint is signed by the log's key and matches the tree at its
  size; none is larger than the log (truncation); every checkpoint the log records is present;
- ``gaps``: the log was never repaired: each ``log_gap`` entry (``sampledrec log repair`` cut the
  log back after damage) is a failure with its evidence (the entries lost, the SHA-256 of what
  was set aside and where it is kept, who repaired and why), and so is a repair under way;
- ``exported``: with an exported checkpoint, the log still has that root at that size and the
  exported epoch-key commitments (a log rewritten and re-signed after the export fails here);
- ``keys``: every epoch key used by a decision was committed, once, before its first use;
- ``policies``: every decision names a policy version logged before it.

Decision entries are checked column-wise with numpy, and hashing runs in C when the accelerator
is built, so verification runs at a good fraction of raw SHA-256 speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import CheckpointError
from . import hashing as _hashing
from . import segments as _segments
from .checkpoint import Checkpoint, parse_vkey, verify_checkpoint, vkey
from .format import (
    DECISION,
    ENTRY_HEADER,
    T_CHECKPOINT,
    T_DECISION,
    T_KEY_COMMIT,
    T_LOG_CREATED,
    T_LOG_GAP,
    T_POLICY,
    TYPE_NAMES,
    Entry,
    decode_entry,
)
from .merkle import CompactRange, subtrees
from .segments import (
    BATCH_HEADER,
    BATCH_MAGIC,
    MIN_RECORD,
    SEG_HEADER,
    SEG_MAGIC,
    read_trailer,
    split_records,
)
from .storage import CHECKPOINTS, LogStorage, SegmentBytes, log_storage, segment_name

__all__ = [
    "EXPORT_FORMAT",
    "CheckedReport",
    "Finding",
    "LogReport",
    "LogVerification",
    "SegmentCheck",
    "export_checkpoint",
    "verify_log",
    "verify_segment",
]

EXPORT_FORMAT: Final = "sampledrec-checkpoint"
CHECKS: Final = (
    "files",
    "structure",
    "identity",
    "tree",
    "checkpoints",
    "gaps",
    "exported",
    "keys",
    "policies",
)


@dataclass
class Finding:
    check: str
    message: str
    where: str | None = None
    index: int | None = None
    evidence: dict[str, Any] | None = None  # what backs the finding, for a report (a gap's)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


class _HasCheck(Protocol):
    check: str


class CheckedReport:
    """What every verification report shares: its findings, each naming the check it fails.
    The report is ok when nothing was found."""

    findings: Sequence[_HasCheck]

    @property
    def ok(self) -> bool:
        return not self.findings

    def failed(self, check: str) -> bool:
        return any(f.check == check for f in self.findings)


@dataclass
class LogReport(CheckedReport):
    size: int = 0
    root: bytes = b""
    bytes_verified: int = 0
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    exported_checked: bool = False
    simulated: bool = False
    store_id_seen: bytes | None = None
    expected_key: bytes | None = None
    origin: str | None = None
    public_key: bytes | None = None
    entries_by_type: dict[str, int] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)  # each repair: its evidence
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "size": self.size,
            "root": self.root.hex(),
            "bytes_verified": self.bytes_verified,
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "exported_checkpoint_checked": self.exported_checked,
            "simulated": self.simulated,
            "entries_by_type": self.entries_by_type,
            "gaps": self.gaps,
            "checks": {c: ("FAIL" if self.failed(c) else "PASS") for c in CHECKS},
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
        }


def export_checkpoint(
    cp: Checkpoint, public_key: bytes, commitments: list[tuple[int, str, bytes]]
) -> bytes:
    """The JSON document ``sampledrec log checkpoint --out`` writes for a DPO or auditor."""
    doc = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "origin": cp.origin,
        "vkey": vkey(cp.origin, public_key),
        "size": cp.size,
        "checkpoint": cp.note.decode("utf-8"),
        "commitments": [
            {"index": i, "epoch_id": e, "commitment": c.hex()} for i, e, c in commitments
        ],
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _load_export(path: Path) -> tuple[Checkpoint, bytes, list[dict[str, Any]]]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not an exported sampledrec checkpoint")
    vk, note, commitments = doc.get("vkey"), doc.get("checkpoint"), doc.get("commitments", [])
    if not isinstance(vk, str) or not isinstance(note, str) or not isinstance(commitments, list):
        raise CheckpointError(
            f"{path}: 'vkey' and 'checkpoint' must be text and 'commitments' a list"
        )
    try:
        note_bytes = note.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{path}: 'checkpoint' is not valid Unicode text") from None
    for c in commitments:
        if not (
            isinstance(c, dict)
            and isinstance(c.get("epoch_id"), str)
            and isinstance(c.get("commitment"), str)
        ):
            raise CheckpointError(f"{path}: a commitment is not {{epoch_id, commitment}} text")
    name, public_key = parse_vkey(vk)
    cp = verify_checkpoint(note_bytes, name, public_key)
    return cp, public_key, commitments


class _Scan:
    """What hashing gathers for the semantic checks: every entry's type, the first use of each
    (epoch, policy version) run of decisions, and the few entries that are not decisions."""

    def __init__(self) -> None:
        self.types: list[npt.NDArray[np.uint8]] = []
        self.first_uses: list[tuple[int, bytes, bytes]] = []  # (index, epoch id, version)
        self.others: list[tuple[int, bytes]] = []  # (index, entry) of non-decision entries
        self.first: int | None = None  # the index of the first entry scanned

    def extend(self, other: _Scan, upto: int) -> None:
        """Add what ``other`` (the scan of the entries after these) found before entry
        ``upto``."""
        types = np.concatenate(other.types) if other.types else np.empty(0, dtype=np.uint8)
        start = other.first if other.first is not None else upto
        self.types.append(types[: max(0, upto - start)])
        self.first_uses += [u for u in other.first_uses if u[0] < upto]
        self.others += [o for o in other.others if o[0] < upto]


def verify_log(
    log: LogStorage | str | os.PathLike[str],
    *,
    checkpoint_file: Path | None = None,
    store_id: bytes | None = None,
    public_key: bytes | None = None,
    progress: Callable[[int], None] | None = None,
) -> LogReport:
    """Verify the log in ``log`` (a storage, or a store folder: its ``log/``); returns a report
    whose ``findings`` list every failure.

    ``public_key`` is the key the log must be signed with, taken from *outside* the log (the
    store's keyring, or a verifier key given to an auditor): a log re-created and re-signed
    with another key then fails. ``store_id`` (from ``store.json``) likewise pins the log to
    its store. With ``checkpoint_file`` (an exported checkpoint), truncations and rewrites after
    the export are detected too.

    Each segment is verified on its own (:func:`verify_segment`), then the segments are joined
    (:meth:`LogVerification.finish`); an audit runs the same two steps with the segments
    verified in parallel, in other processes or on other machines.
    """
    plan = LogVerification.start(log, checkpoint_file=checkpoint_file)
    return plan.finish(
        lambda seg: verify_segment(plan.storage, seg, wanted=plan.wanted, progress=progress),
        store_id=store_id,
        public_key=public_key,
    )


@dataclass
class LogVerification:
    """A log's verification before and after its segments: :meth:`start` reads the folder's
    files and the checkpoints (small), :meth:`finish` joins what :func:`verify_segment` found in
    each segment, in log order, into the report."""

    storage: LogStorage
    rep: LogReport
    segments: list[int] = field(default_factory=list)
    #: The tree sizes whose roots a checkpoint (stored or exported) names.
    wanted: frozenset[int] = frozenset()
    stored: list[Checkpoint] = field(default_factory=list)
    exported: Checkpoint | None = None
    exported_key: bytes | None = None
    exported_commitments: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False  # nothing more to verify (no log, no segment)

    @classmethod
    def start(
        cls, log: LogStorage | str | os.PathLike[str], *, checkpoint_file: Path | None = None
    ) -> LogVerification:
        storage = log_storage(log, in_store=True)
        rep = LogReport()
        plan = cls(storage, rep)
        if not storage.exists():
            rep.findings.append(Finding("files", "the log folder is missing", storage.location()))
            plan.done = True
            return plan
        if storage.pending_repair() is not None:
            rep.findings.append(
                Finding(
                    "gaps",
                    "a repair of the log is under way or was interrupted: the log is being cut "
                    "back after damage ('sampledrec log repair' finishes it)",
                    storage.location(),
                )
            )

        # -- files ------------------------------------------------------------------------------
        strays = storage.strays()
        for name in strays:
            rep.findings.append(
                Finding("files", "unexpected file in the log folder (not covered)", name)
            )
        checkpoints_data: bytes | None = None
        if CHECKPOINTS not in strays:
            with contextlib.suppress(FileNotFoundError):
                checkpoints_data = storage.read_checkpoints()
        if checkpoints_data is None:
            rep.findings.append(Finding("files", "the checkpoints file is missing", CHECKPOINTS))
        plan.segments = storage.segments()
        if not plan.segments:
            rep.findings.append(Finding("files", "no log segment: the log was deleted", "log/"))
            plan.done = True
            return plan

        # -- stored checkpoints -----------------------------------------------------------------
        if checkpoints_data is not None:
            notes, end = split_records(checkpoints_data)
            rep.bytes_verified += end
            if end != len(checkpoints_data):
                rep.findings.append(
                    Finding(
                        "structure",
                        f"{len(checkpoints_data) - end} bytes after the last whole checkpoint "
                        "record (a torn write not yet recovered, or tampering)",
                        f"{CHECKPOINTS}@{end}",
                    )
                )
            seen_notes: set[bytes] = set()
            for i, note in enumerate(notes):
                try:
                    plan.stored.append(Checkpoint.parse(note))
                except CheckpointError as exc:
                    rep.findings.append(Finding("checkpoints", f"record {i}: {exc}", CHECKPOINTS))
                    continue
                if note in seen_notes:
                    rep.findings.append(
                        Finding(
                            "checkpoints", f"record {i} repeats an earlier checkpoint", CHECKPOINTS
                        )
                    )
                seen_notes.add(note)
        if checkpoint_file is not None:
            try:
                plan.exported, plan.exported_key, plan.exported_commitments = _load_export(
                    Path(checkpoint_file)
                )
            except (CheckpointError, ValueError, KeyError, OSError) as exc:
                rep.findings.append(Finding("exported", f"exported checkpoint unusable: {exc}"))
        wanted = {cp.size for cp in plan.stored}
        if plan.exported is not None:
            wanted.add(plan.exported.size)
        plan.wanted = frozenset(wanted)
        return plan

    def finish(
        self,
        check: Callable[[int], SegmentCheck],
        *,
        store_id: bytes | None = None,
        public_key: bytes | None = None,
    ) -> LogReport:
        """The report, from ``check(segment)``: what :func:`verify_segment` found in each
        segment (asked in log order, and only as far as the verification goes)."""
        rep = self.rep
        if self.done:
            return rep
        # The tree from entry 0, joined segment by segment: each segment's range of subtrees
        # merged onto the tree before it, and the roots its checkpoints name the same way.
        cr = CompactRange()
        scan = _Scan()
        roots_at: dict[int, bytes] = {}
        expected_first = 0
        first_store_id = store_id
        last_segment = self.segments[-1]

        def finish() -> LogReport:
            return _finish(
                rep,
                cr,
                scan,
                self.stored,
                self.exported,
                self.exported_key,
                self.exported_commitments,
                roots_at,
            )

        for seg_first in self.segments:
            where = segment_name(seg_first)
            if seg_first != expected_first:
                rep.findings.append(
                    Finding(
                        "structure",
                        f"segment starts at entry {seg_first}, expected {expected_first} "
                        "(a segment is missing, renamed or reordered)",
                        where,
                    )
                )
                break
            got = check(seg_first)
            if seg_first != last_segment and got.length < _segments.SEGMENT_BYTES:
                rep.findings.append(
                    Finding(
                        "structure",
                        "a segment other than the last is smaller than the segment size: "
                        "segments were split, merged or cut",
                        where,
                    )
                )
            if got.header is None:
                rep.findings.append(Finding("structure", "truncated segment header", where))
                break
            magic, sid, hdr_first = got.header
            if first_store_id is None:
                first_store_id = sid
            if magic != SEG_MAGIC or sid != first_store_id or hdr_first != seg_first:
                rep.findings.append(
                    Finding("structure", "segment header does not match this log", where)
                )
                break
            if not got.batches and not got.broken:
                rep.findings.append(
                    Finding(
                        "structure", "a segment holds no batch (it was added or emptied)", where
                    )
                )
            # The first batch whose trailer is not the tree: where the segment's own check
            # stopped, or the first whose trailer claims another tree before the segment.
            failed = got.failed
            for claim in got.claims:
                if failed is not None and failed.first <= claim.batch.first:
                    break
                real = cr.copy()
                real.merge(got.left_range(claim.at))
                if real.hashes != claim.hashes:
                    failed = claim.batch
                    break
            if failed is not None and failed is not got.failed:
                # The segment went on past it: verify it again, up to that batch only.
                got = verify_segment(self.storage, seg_first, wanted=self.wanted, stop=failed.first)
            limit = failed.first + failed.entries if failed is not None else got.tree.size
            for finding in got.malformed:
                if failed is None or (finding.index or 0) < limit:
                    rep.findings.append(finding)
            for size, part in sorted(got.roots.items()):
                if size <= limit:
                    at = cr.copy()
                    at.merge(part)
                    roots_at[size] = at.root()
            cr.merge(got.tree)
            upto = failed.first if failed is not None else got.tree.size
            scan.extend(got.scan, upto)
            if failed is not None:
                rep.findings.append(
                    Finding(
                        "tree",
                        f"the entries of batch {failed.first}..{failed.first + failed.entries - 1} "
                        "do not hash to its recorded tree: an entry, a length or the trailer was "
                        "changed",
                        f"{where}@{failed.pos}",
                        failed.first,
                    )
                )
                return finish()
            rep.bytes_verified += got.pos
            if got.broken:
                rep.findings.append(
                    Finding(
                        "structure",
                        f"{got.length - got.pos} bytes at the end of the segment are not a whole, "
                        "valid batch (a crash not yet recovered, or tampering)",
                        f"{where}@{got.pos}",
                        cr.size,
                    )
                )
                if seg_first != last_segment:
                    break
            expected_first = cr.size
        rep.store_id_seen = first_store_id
        if store_id is not None and first_store_id is not None and first_store_id != store_id:
            rep.findings.append(
                Finding("identity", "the log's segments belong to another store (store id differs)")
            )
        rep.expected_key = public_key
        return finish()


class BatchAt(NamedTuple):
    """A batch of a segment: its first entry, how many, the offset of its header."""

    first: int
    entries: int
    pos: int


class TreeClaim(NamedTuple):
    """What the trailers of a segment's batches say about the tree before the segment: from
    ``batch`` on, the compact range of entries ``[0, at)`` is ``hashes`` (``at`` being where
    the segment's own subtrees start to be whole)."""

    batch: BatchAt
    at: int
    hashes: list[bytes]


@dataclass
class SegmentCheck:
    """What :func:`verify_segment` found in one segment, verified on its own, without the
    entries before it: small enough to send from one process or machine to another.

    The segment's leaves give ``tree``, the compact range of its entries ``[segment, end)``
    (perfect subtrees, merged onto the tree before it by :meth:`LogVerification.finish`). Each
    batch trailer records the whole tree's range: its subtrees inside the segment are compared
    here; the rest, the range before the segment, changes only when one of the segment's own
    subtrees becomes whole, and is kept as ``claims`` for the join to check against the real
    tree (a handful per segment)."""

    segment: int
    length: int  # bytes
    header: tuple[bytes, bytes, int] | None  # magic, store id, first entry; None: truncated
    batches: int  # whole, well-formed batches the walk found
    pos: int  # where the batches that verified end
    broken: bool  # bytes after them
    tree: CompactRange
    left: list[bytes]  # the segment's whole subtrees from its first entry on
    claims: list[TreeClaim]
    failed: BatchAt | None  # the batch whose trailer differs inside the segment (stopped there)
    malformed: list[Finding]
    scan: _Scan
    roots: dict[int, CompactRange]  # for each wanted size in the segment: [segment, size)

    def left_range(self, at: int) -> CompactRange:
        """The segment's entries ``[segment, at)`` as its whole subtrees."""
        n = len(subtrees(self.segment, at))
        return CompactRange(at, self.left[:n], begin=self.segment)


class _Growing:
    """The compact range of a segment's leaves, grown batch by batch: the whole subtrees from
    its first entry (each as large as its start's alignment allows), then a range from 0 over
    the leaves after them, which the C accelerator extends."""

    def __init__(self, begin: int) -> None:
        self.begin = begin
        self.at = begin  # where ``tail`` starts
        self.left: list[bytes] = []
        self.tail = CompactRange()

    @property
    def end(self) -> int:
        return self.at + self.tail.size

    def grow(self, leaves: bytes) -> None:
        done = 0
        count = len(leaves) // 32
        while done < count:
            whole = self.at & -self.at if self.at else 1 << 64
            take = min(count - done, whole - self.tail.size)
            _hashing.extend_concat(self.tail, leaves[done * 32 : (done + take) * 32])
            done += take
            if self.tail.size == whole:
                self.left.append(self.tail.hashes[0])
                self.at += whole
                self.tail = CompactRange()

    def range(self) -> CompactRange:
        return CompactRange(self.end, self.left + self.tail.hashes, begin=self.begin)


def verify_segment(
    log: LogStorage | str | os.PathLike[str],
    segment: int,
    *,
    wanted: Collection[int] = (),
    stop: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SegmentCheck:
    """Verify one segment of ``log`` on its own: its header, batches and entries, the leaves'
    subtrees and what its trailers record (:class:`SegmentCheck`). ``wanted``: tree sizes whose
    ranges to note (checkpoints); ``stop``: stop after the batch that starts at that entry."""
    storage = log_storage(log, in_store=True)
    data = storage.map_segment(segment)
    scan = _Scan()
    tree = _Growing(segment)
    out = SegmentCheck(
        segment,
        len(data),
        None,
        0,
        0,
        False,
        CompactRange(segment, begin=segment),
        [],
        [],
        None,
        [],
        scan,
        {},
    )
    if len(data) < SEG_HEADER.size:
        return out
    out.header = SEG_HEADER.unpack_from(data, 0)
    batches, pos = _walk(data, segment)
    out.batches = len(batches)
    broken = pos < len(data)
    where = segment_name(segment)
    marks = sorted(w for w in wanted if segment <= w)
    if segment in wanted:
        out.roots[segment] = tree.range()
    view = memoryview(data)
    for b in batches:
        got = _hashing.leaf_records(view[b.start : b.start + b.plen], 0, b.count, PROBE)
        if got is None or got[0] != b.plen:
            broken, pos = True, b.pos
            break
        _, offs, probes, leaves, well_formed = got
        if not well_formed.all():
            bad = int(np.flatnonzero(~well_formed)[0])
            out.malformed.append(
                Finding(
                    "structure",
                    "an entry is not a well-formed v1 entry (version, header, fields)",
                    f"{where}@{b.pos}",
                    b.first + bad,
                )
            )
        done = 0
        for cut in [w - b.first for w in marks if b.first < w <= b.first + b.count]:
            tree.grow(leaves[done * 32 : cut * 32])
            out.roots[b.first + cut] = tree.range()
            done = cut
        tree.grow(leaves[done * 32 :])
        # The trailer's subtrees inside the segment are the tail's; those before it, the range
        # of [0, tree.at), are a claim about the entries before the segment.
        claimed = b.trailer.hashes
        high = len(claimed) - len(tree.tail.hashes)
        batch = BatchAt(b.first, b.count, b.pos)
        if claimed[high:] != tree.tail.hashes:
            out.failed = batch
            break
        if (
            not out.claims
            or out.claims[-1].at != tree.at
            or out.claims[-1].hashes != claimed[:high]
        ):
            out.claims.append(TreeClaim(batch, tree.at, claimed[:high]))
        _gather(scan, data, offs.astype(np.int64) + b.start, probes, b.first)
        if progress is not None:
            progress(b.end - b.pos)
        if stop is not None and b.first >= stop:
            break
    del view
    out.pos, out.broken = pos, broken
    out.tree, out.left = tree.range(), tree.left
    return out


@dataclass
class _Batch:
    pos: int  # offset of the batch header
    first: int
    count: int
    start: int  # offset of the first record
    plen: int
    trailer: CompactRange
    end: int  # offset after the trailer


def _walk(data: SegmentBytes, first: int) -> tuple[list[_Batch], int]:
    """The batches of a segment from their headers and trailers (no hashing yet), and the
    offset where the whole, well-formed batches end."""
    out = []
    pos = SEG_HEADER.size
    expected = first
    while pos + BATCH_HEADER.size <= len(data):
        magic, bfirst, count, plen = BATCH_HEADER.unpack_from(data, pos)
        start = pos + BATCH_HEADER.size
        if (
            magic != BATCH_MAGIC
            or bfirst != expected
            or not 1 <= count <= plen // MIN_RECORD
            or start + plen > len(data)
        ):
            break
        trailer = read_trailer(data, start + plen)
        if trailer is None or trailer[0].size != bfirst + count:
            break
        out.append(_Batch(pos, bfirst, count, start, plen, trailer[0], trailer[1]))
        expected = bfirst + count
        pos = trailer[1]
    return out, pos


# A decision's first two fields, its epoch id and policy version, have fixed sizes (format.DECISION)
# and one-byte lengths, so they lie at fixed offsets: the verifier reads them from each entry's
# first PROBE bytes without decoding it. For the v1 layout:
#   header (10) | 0x01 0x0A epoch (10) | 0x02 0x20 version (32)
_EPOCH_TAG_AT: Final = ENTRY_HEADER.size
_EPOCH_AT: Final = _EPOCH_TAG_AT + 2
_VERSION_TAG_AT: Final = _EPOCH_AT + DECISION.epoch_id.size
_VERSION_AT: Final = _VERSION_TAG_AT + 2
_VERSION_END: Final = _VERSION_AT + DECISION.policy_version.size
PROBE: Final = -(-_VERSION_END // 8) * 8  # in whole 64-bit words, compared as such below
# The words of a probe that hold the epoch id and policy version, and in each the bits of those
# bytes (the words are read little-endian: byte k of a word is bits 8k..8k+7).
_RUN_WORDS: Final = slice(_EPOCH_AT // 8, PROBE // 8)
_RUN_MASKS: Final = np.asarray(
    [
        sum(
            0xFF << 8 * (b - 8 * w)
            for b in range(8 * w, 8 * w + 8)
            if _EPOCH_AT <= b < _VERSION_END
        )
        for w in range(_RUN_WORDS.start, _RUN_WORDS.stop)
    ],
    dtype=np.uint64,
)


def _gather(
    scan: _Scan,
    data: Any,
    offsets: npt.NDArray[np.int64],
    probes: npt.NDArray[np.uint8],
    first: int,
) -> None:
    types = probes[:, 1]
    if scan.first is None:
        scan.first = first
    scan.types.append(types)
    is_dec = types == T_DECISION
    dec = np.flatnonzero(is_dec)
    if dec.size:
        rows = probes if dec.size == probes.shape[0] else probes[dec]  # all of them: no copy
        layout_ok = (
            (rows[:, _EPOCH_TAG_AT] == DECISION.epoch_id.tag)
            & (rows[:, _EPOCH_TAG_AT + 1] == DECISION.epoch_id.size)
            & (rows[:, _VERSION_TAG_AT] == DECISION.policy_version.tag)
            & (rows[:, _VERSION_TAG_AT + 1] == DECISION.policy_version.size)
        )
        if not layout_ok.all():
            scan.others.append((first + int(dec[np.flatnonzero(~layout_ok)[0]]), b""))
        # Decisions come in long runs with the same epoch and policy: keep each run's first.
        # The epoch and version bytes are compared as 64-bit words (masked), not byte by byte.
        # Word by word (a column each), OR-ed together: no (rows x words) temporaries.
        w = np.ascontiguousarray(rows).view("<u8")
        differ = np.zeros(max(0, w.shape[0] - 1), dtype=np.uint64)
        for k, mask in zip(range(_RUN_WORDS.start, _RUN_WORDS.stop), _RUN_MASKS, strict=True):
            col = w[:, k]
            differ |= (col[1:] ^ col[:-1]) & mask
        starts = np.flatnonzero(np.concatenate(([True], differ != 0)))
        for j in starts.tolist():
            scan.first_uses.append(
                (
                    first + int(dec[j]),
                    bytes(rows[j, _EPOCH_AT:_VERSION_TAG_AT]),
                    bytes(rows[j, _VERSION_AT:_VERSION_END]),
                )
            )
    for j in np.flatnonzero(~is_dec).tolist():
        off = int(offsets[j])
        (n,) = struct.unpack_from(">I", data, off - 4)
        scan.others.append((first + j, bytes(data[off : off + n])))


def _finish(
    rep: LogReport,
    cr: CompactRange,
    scan: _Scan,
    stored: list[Checkpoint],
    exported: Checkpoint | None,
    exported_key: bytes | None,
    exported_commitments: list[dict[str, Any]],
    roots_at: dict[int, bytes],
) -> LogReport:
    rep.size = cr.size
    rep.root = cr.root()
    roots_at.setdefault(0, CompactRange().root())
    types = np.concatenate(scan.types) if scan.types else np.empty(0, dtype=np.uint8)
    if types.size == 0 or types[0] != T_LOG_CREATED:
        rep.findings.append(
            Finding(
                "identity",
                "the log does not start with its log_created entry: it was emptied or replaced",
                index=0,
            )
        )
    counts = np.bincount(types, minlength=256)
    rep.entries_by_type = {
        TYPE_NAMES.get(t, f"0x{t:02x}"): int(counts[t]) for t in np.flatnonzero(counts).tolist()
    }

    # Non-decision entries, decoded one by one (there are few).
    commits: dict[str, tuple[int, bytes]] = {}
    policies: dict[bytes, int] = {}
    recorded_cps: list[tuple[int, int, bytes]] = []
    gaps: list[Entry] = []
    for index, raw in scan.others:
        if not raw:
            rep.findings.append(
                Finding(
                    "structure", "decision entry does not start with epoch and policy", index=index
                )
            )
            continue
        try:
            entry = decode_entry(index, raw)
        except ValueError as exc:
            rep.findings.append(Finding("structure", f"malformed entry: {exc}", index=index))
            continue
        f = entry.fields
        if entry.type == T_LOG_CREATED:
            if index != 0:
                rep.findings.append(Finding("identity", "a second log_created entry", index=index))
                continue
            origin, key, sid = f.get("origin"), f.get("public_key"), f.get("store_id")
            if not isinstance(origin, str) or not isinstance(key, bytes) or len(key) != 32:
                rep.findings.append(
                    Finding("identity", "log_created lacks its origin or a 32-byte key", index=0)
                )
                continue
            rep.origin, rep.public_key = origin, key
            rep.simulated = bool(f.get("simulated"))
            if rep.expected_key is not None and key != rep.expected_key:
                rep.findings.append(
                    Finding(
                        "identity",
                        "the log is signed by another key than the store's (or the verifier key "
                        "given): it was re-created or re-keyed",
                        index=0,
                    )
                )
            if rep.store_id_seen is not None and sid != rep.store_id_seen:
                rep.findings.append(
                    Finding("identity", "log_created names another store id than its segments")
                )
        elif entry.type == T_KEY_COMMIT:
            epoch, commitment = str(f.get("epoch_id")), bytes(f.get("commitment", b""))
            if epoch in commits and commits[epoch][1] != commitment:
                rep.findings.append(
                    Finding(
                        "keys",
                        f"epoch {epoch} was committed twice with different keys "
                        f"(entries {commits[epoch][0]} and {index})",
                        index=index,
                    )
                )
            commits.setdefault(epoch, (index, commitment))
        elif entry.type == T_POLICY:
            version, canonical = f.get("version", b""), f.get("canonical", b"")
            if not isinstance(canonical, bytes) or hashlib.sha256(canonical).digest() != version:
                rep.findings.append(
                    Finding(
                        "policies",
                        "a policy entry's version is not the SHA-256 of its canonical form",
                        index=index,
                    )
                )
            policies.setdefault(version, index)
        elif entry.type == T_CHECKPOINT:
            recorded_cps.append((index, f.get("size", -1), f.get("root", b"")))
        elif entry.type == T_LOG_GAP:
            gaps.append(entry)
            finding = _gap_finding(entry)
            rep.findings.append(finding)
            rep.gaps.append(finding.evidence or {})

    # Checkpoints stored in the log folder.
    rep.checkpoints = len(stored)
    prev, prev_time = -1, -1
    for i, cp in enumerate(stored):
        where = f"{CHECKPOINTS}#{i}"
        if rep.public_key is not None and rep.origin is not None:
            try:
                verify_checkpoint(cp.note, rep.origin, rep.public_key)
            except CheckpointError as exc:
                rep.findings.append(Finding("checkpoints", str(exc), where))
            else:
                if cp.note.count("\n\u2014 ".encode()) != 1:
                    rep.findings.append(
                        Finding("checkpoints", "a checkpoint carries extra signature lines", where)
                    )
        if cp.size < prev:
            rep.findings.append(Finding("checkpoints", "checkpoint sizes go backwards", where))
        if (cp.time_us or 0) < prev_time:
            rep.notes.append(
                f"{where}: signed at an earlier time than the checkpoint before it (a clock "
                "step back, or checkpoints reordered)"
            )
        prev = max(prev, cp.size)
        prev_time = max(prev_time, cp.time_us or 0)
        if cp.size > cr.size:
            rep.findings.append(
                Finding(
                    "checkpoints",
                    f"checkpoint of {cp.size} entries but the log holds {cr.size}: "
                    "the log was truncated below a signed checkpoint",
                    where,
                )
            )
        elif roots_at.get(cp.size) != cp.root:
            rep.findings.append(
                Finding(
                    "checkpoints",
                    f"the log's root at size {cp.size} differs from the signed checkpoint: "
                    "entries before it were changed",
                    where,
                    cp.size,
                )
            )
    if stored:
        rep.latest_checkpoint = max(cp.size for cp in stored)
        tail = cr.size - rep.latest_checkpoint
        if tail > 0:
            rep.notes.append(f"{tail} entries after the latest checkpoint are not signed yet")
    elif cr.size:
        rep.findings.append(Finding("checkpoints", "the log has entries but no checkpoint"))
    if exported is None:
        rep.notes.append(
            "without an exported checkpoint (--checkpoint), a log cut back together with its "
            "latest checkpoints cannot be told from an older log: keep exports outside the store"
        )
    stored_pairs = {(cp.size, cp.root) for cp in stored}
    for index, size, root in recorded_cps:
        if (size, root) in stored_pairs:
            continue
        repair = next(
            (g for g in gaps if g.index > index and g.fields.get("checkpoints_set_aside")), None
        )
        if repair is not None:
            rep.findings.append(
                Finding(
                    "gaps",
                    f"the log records a checkpoint of size {size} that the repair logged at "
                    f"entry {repair.index} set aside",
                    CHECKPOINTS,
                    index,
                )
            )
        else:
            rep.findings.append(
                Finding(
                    "checkpoints",
                    f"the log records a checkpoint of size {size} that the checkpoints file "
                    "no longer holds (checkpoints were deleted)",
                    CHECKPOINTS,
                    index,
                )
            )

    # An exported checkpoint kept outside the store.
    if exported is not None:
        rep.exported_checked = True
        if rep.public_key is not None and exported_key != rep.public_key:
            rep.findings.append(
                Finding(
                    "exported",
                    "the log is signed by another key than the exported checkpoint: "
                    "it was re-created or re-keyed",
                )
            )
        # A repair after the export cut back entries that it covers: the log can no longer be
        # consistent with it, and the gap entry says why.
        repaired = [g for g in gaps if g.index < exported.size]
        if (exported.size > cr.size or roots_at.get(exported.size) != exported.root) and repaired:
            first = repaired[0]
            rep.findings.append(
                Finding(
                    "exported",
                    f"the log was repaired after this checkpoint was exported: the repair logged "
                    f"at entry {first.index} cut the log back to {first.index} entries and set "
                    f"aside the rest, which the exported checkpoint (of {exported.size} "
                    "entries) covers; the log is no longer consistent with it",
                    index=first.index,
                )
            )
        elif exported.size > cr.size:
            rep.findings.append(
                Finding(
                    "exported",
                    f"the exported checkpoint covers {exported.size} entries, the log only "
                    f"{cr.size}: the log was truncated after the export",
                )
            )
        elif roots_at.get(exported.size) != exported.root:
            rep.findings.append(
                Finding(
                    "exported",
                    f"the log's root at size {exported.size} is not the exported checkpoint's: "
                    "the log was rewritten after the export",
                    index=exported.size,
                )
            )
        for c in exported_commitments:
            got = commits.get(c.get("epoch_id", ""))
            if got is None or got[1].hex() != c.get("commitment"):
                rep.findings.append(
                    Finding(
                        "exported",
                        f"epoch {c.get('epoch_id')}: the exported commitment is not in the log"
                        + (" (it may have been in what a repair set aside)" if gaps else ""),
                    )
                )

    # Decisions: epoch keys committed before first use, policy versions logged before use.
    first_epoch: dict[str, int] = {}
    first_version: dict[bytes, int] = {}
    for index, epoch_b, version in scan.first_uses:
        epoch = epoch_b.decode("ascii", "replace")
        if epoch not in first_epoch or index < first_epoch[epoch]:
            first_epoch[epoch] = index
        if version not in first_version or index < first_version[version]:
            first_version[version] = index
    for epoch, first_use in sorted(first_epoch.items()):
        got = commits.get(epoch)
        if got is None:
            rep.findings.append(
                Finding(
                    "keys",
                    f"epoch {epoch} is used but its key was never committed",
                    index=first_use,
                )
            )
        elif got[0] > first_use:
            rep.findings.append(
                Finding(
                    "keys",
                    f"epoch {epoch} is used at entry {first_use} before its commitment at "
                    f"entry {got[0]}",
                    index=first_use,
                )
            )
    for version, first_use in first_version.items():
        logged = policies.get(version)
        if logged is None or logged > first_use:
            rep.findings.append(
                Finding(
                    "policies",
                    f"policy {version.hex()[:16]} is used at entry {first_use} but was "
                    "not logged before it",
                    index=first_use,
                )
            )
    return rep


def _gap_finding(entry: Entry) -> Finding:
    """The failure that a ``log_gap`` entry is, with its evidence: a repaired log is never
    clean, whatever else verifies."""
    f = entry.fields
    lost_from, lost_to = f.get("lost_from"), f.get("lost_to")
    digest = f.get("set_aside_sha256")
    try:
        pieces = json.loads(f.get("set_aside", ""))
        kept = [str(p["kept_at"]) for p in pieces]
    except (ValueError, TypeError, KeyError):
        pieces, kept = None, []
    first = lost_from if isinstance(lost_from, int) else -1
    end = lost_to if isinstance(lost_to, int) else -1
    well_formed = (
        first == entry.index
        and end >= first
        and isinstance(digest, bytes)
        and len(digest) == 32
        and pieces is not None
    )
    lost = end - first if well_formed else None
    digest_hex = digest.hex() if isinstance(digest, bytes) else None
    evidence = {
        "gap_entry": entry.index,
        "repaired_at": entry.time.isoformat(),
        "lost_from": lost_from,
        "lost_to": lost_to,
        "entries_lost": lost,
        "checkpoints_set_aside": f.get("checkpoints_set_aside"),
        "damage": f.get("damage"),
        "reason": f.get("reason"),
        "set_aside_bytes": f.get("set_aside_bytes"),
        "set_aside_sha256": digest_hex,
        "set_aside": pieces,
        "restored": f.get("restored", 0),
    }
    if lost is None:
        return Finding(
            "gaps",
            "a log_gap entry that is malformed or does not sit where the log was cut (it names "
            f"entry {lost_from} as the first lost): the log was repaired, or tampered with",
            index=entry.index,
            evidence=evidence,
        )
    what = (
        f"entries {first}..{end - 1} of the log as it was before ({lost:,}, "
        "as far as the bytes set aside show) were lost"
        if lost
        else "no entry was lost"
    )
    cps = f.get("checkpoints_set_aside") or 0
    if cps:
        what += f", and {cps} signed checkpoint records were set aside"
    return Finding(
        "gaps",
        f"the log was repaired at entry {entry.index} ({entry.time.isoformat()}): {what}; "
        f"{f.get('set_aside_bytes', 0):,} bytes set aside, SHA-256 {digest_hex}, kept at "
        f"{', '.join(kept) or '(nowhere named)'}; damage: {f.get('damage')}; reason given: "
        f"{f.get('reason')}",
        index=entry.index,
        evidence=evidence,
    )
