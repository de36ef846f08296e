"""Verification of a decision log: every byte, every hash, every signature, and the rules.

:func:`verify_log` re-hashes the whole tree from the entries and checks, with findings that name
the file, offset and entry index of anything wrong:

- ``files``: ``log/`` holds only segments named after their first entry and ``checkpoints``;
- ``structure``: segment headers, batch headers, lengths and trailers parse, nothing trails;
- ``tree``: each batch trailer equals the compact range recomputed from the entries;
- ``checkpoints``: every stored checkpoint is signed by the log's key and matches the tree at its
  size; none is larger than the log (truncation); every checkpoint the log records is present;
- ``exported``: with an exported checkpoint, the log still has that root at that size and the
  exported epoch-key commitments (a log rewritten and re-signed after the export fails here);
- ``keys``: every epoch key used by a decision was committed, once, before its first use;
- ``policies``: every decision names a policy version logged before it.

Decision entries are checked column-wise with numpy, and hashing runs in C when the accelerator
is built, so verification runs at a good fraction of raw SHA-256 speed.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from . import _hashing
from .checkpoint import Checkpoint, CheckpointError, parse_vkey, verify_checkpoint, vkey
from .log import (
    BATCH_HEADER,
    BATCH_MAGIC,
    CHECKPOINTS,
    SEG_HEADER,
    SEG_MAGIC,
    _read_trailer,
    _split_records,
    segment_name,
)
from .logformat import (
    T_CHECKPOINT,
    T_DECISION,
    T_KEY_COMMIT,
    T_LOG_CREATED,
    T_POLICY,
    decode_entry,
)
from .merkle import CompactRange

__all__ = ["EXPORT_FORMAT", "Finding", "LogReport", "export_checkpoint", "verify_log"]

EXPORT_FORMAT: Final = "sampledrec-checkpoint"
_SEG_RE: Final = re.compile(r"^seg-(\d{12})\.log$")
CHECKS: Final = ("files", "structure", "tree", "checkpoints", "exported", "keys", "policies")


@dataclass
class Finding:
    check: str
    message: str
    where: str | None = None
    index: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class LogReport:
    size: int = 0
    root: bytes = b""
    bytes_verified: int = 0
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    exported_checked: bool = False
    simulated: bool = False
    origin: str | None = None
    public_key: bytes | None = None
    entries_by_type: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def failed(self, check: str) -> bool:
        return any(f.check == check for f in self.findings)

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
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not an exported sampledrec checkpoint")
    name, public_key = parse_vkey(doc["vkey"])
    cp = verify_checkpoint(doc["checkpoint"].encode("utf-8"), name, public_key)
    return cp, public_key, list(doc.get("commitments", []))


class _Scan:
    """What hashing gathers for the semantic checks: every entry's type, the first use of each
    (epoch, policy version) run of decisions, and the few entries that are not decisions."""

    def __init__(self) -> None:
        self.types: list[npt.NDArray[np.uint8]] = []
        self.first_uses: list[tuple[int, bytes, bytes]] = []  # (index, epoch id, version)
        self.others: list[tuple[int, bytes]] = []  # (index, entry) of non-decision entries


def verify_log(
    store_path: Path,
    *,
    checkpoint_file: Path | None = None,
    store_id: bytes | None = None,
    progress: Callable[[int], None] | None = None,
) -> LogReport:
    """Verify ``STORE/log/``; returns a report whose ``findings`` list every failure."""
    log_path = Path(store_path) / "log"
    rep = LogReport()
    if not log_path.is_dir():
        rep.findings.append(Finding("files", "the log folder is missing", str(log_path)))
        return rep

    # -- files ----------------------------------------------------------------------------------
    segments: list[tuple[int, Path]] = []
    has_checkpoints = False
    for item in sorted(log_path.iterdir()):
        m = _SEG_RE.match(item.name)
        if m and item.is_file() and not item.is_symlink():
            segments.append((int(m.group(1)), item))
        elif item.name == CHECKPOINTS and item.is_file() and not item.is_symlink():
            has_checkpoints = True
        else:
            rep.findings.append(
                Finding("files", "unexpected file in the log folder (not covered)", item.name)
            )
    if not has_checkpoints:
        rep.findings.append(Finding("files", "the checkpoints file is missing", CHECKPOINTS))
    if not segments:
        rep.findings.append(Finding("files", "no log segment: the log was deleted", "log/"))
        return rep

    # -- stored checkpoints ----------------------------------------------------------------------
    stored: list[Checkpoint] = []
    if has_checkpoints:
        data = (log_path / CHECKPOINTS).read_bytes()
        notes, end = _split_records(data)
        rep.bytes_verified += end
        if end != len(data):
            rep.findings.append(
                Finding(
                    "structure",
                    f"{len(data) - end} bytes after the last whole checkpoint record "
                    "(a torn write not yet recovered, or tampering)",
                    f"{CHECKPOINTS}@{end}",
                )
            )
        for i, note in enumerate(notes):
            try:
                stored.append(Checkpoint.parse(note))
            except CheckpointError as exc:
                rep.findings.append(Finding("checkpoints", f"record {i}: {exc}", CHECKPOINTS))
    exported: Checkpoint | None = None
    exported_key: bytes | None = None
    exported_commitments: list[dict[str, Any]] = []
    if checkpoint_file is not None:
        try:
            exported, exported_key, exported_commitments = _load_export(Path(checkpoint_file))
        except (CheckpointError, ValueError, KeyError, OSError) as exc:
            rep.findings.append(Finding("exported", f"exported checkpoint unusable: {exc}"))
    wanted = {cp.size for cp in stored}
    if exported is not None:
        wanted.add(exported.size)
    roots_at: dict[int, bytes] = {}

    # -- segments, batches, tree -----------------------------------------------------------------
    cr = CompactRange()
    scan = _Scan()
    expected_first = 0
    first_store_id = store_id
    for seg_first, seg in segments:
        where = seg.name
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
        data = _map(seg)
        if len(data) < SEG_HEADER.size:
            rep.findings.append(Finding("structure", "truncated segment header", where))
            break
        magic, sid, hdr_first = SEG_HEADER.unpack_from(data, 0)
        if first_store_id is None:
            first_store_id = sid
        if magic != SEG_MAGIC or sid != first_store_id or hdr_first != seg_first:
            rep.findings.append(
                Finding("structure", "segment header does not match this log", where)
            )
            break
        batches, pos = _walk(data, cr.size)
        broken = pos < len(data)
        # Leaf hashing releases the GIL: hash the segment's batches on two threads, then add
        # them to the tree in order (node hashing is sequential by nature).
        view = memoryview(data)
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(
                    _hashing.leaf_records, view[b.start : b.start + b.plen], 0, b.count, PROBE
                )
                for b in batches
            ]
            for b, fut in zip(batches, futures, strict=True):
                got = fut.result()
                if got is None or got[0] != b.plen:
                    broken, pos = True, b.pos
                    break
                _, offs, probes, leaves = got
                _extend_noting_roots(cr, leaves, wanted, roots_at)
                if b.trailer != cr:
                    rep.findings.append(
                        Finding(
                            "tree",
                            f"the entries of batch {b.first}..{b.first + b.count - 1} do not "
                            "hash to its recorded tree: an entry, a length or the trailer was "
                            "changed",
                            f"{where}@{b.pos}",
                            b.first,
                        )
                    )
                    for other in futures:
                        other.cancel()
                    return _finish(
                        rep,
                        cr,
                        scan,
                        stored,
                        exported,
                        exported_key,
                        exported_commitments,
                        roots_at,
                    )
                _gather(scan, data, offs.astype(np.int64) + b.start, probes, b.first)
                if progress is not None:
                    progress(b.end - b.pos)
        del view
        rep.bytes_verified += pos
        if broken:
            rep.findings.append(
                Finding(
                    "structure",
                    f"{len(data) - pos} bytes at the end of the segment are not a whole, valid "
                    "batch (a crash not yet recovered, or tampering)",
                    f"{where}@{pos}",
                    cr.size,
                )
            )
            if seg is not segments[-1][1]:
                break
        expected_first = cr.size
    return _finish(rep, cr, scan, stored, exported, exported_key, exported_commitments, roots_at)


@dataclass
class _Batch:
    pos: int  # offset of the batch header
    first: int
    count: int
    start: int  # offset of the first record
    plen: int
    trailer: CompactRange
    end: int  # offset after the trailer


def _walk(data: Any, first: int) -> tuple[list[_Batch], int]:
    """The batches of a segment from their headers and trailers (no hashing yet), and the
    offset where the whole, well-formed batches end."""
    out = []
    pos = SEG_HEADER.size
    expected = first
    while pos + BATCH_HEADER.size <= len(data):
        magic, bfirst, count, plen = BATCH_HEADER.unpack_from(data, pos)
        start = pos + BATCH_HEADER.size
        if magic != BATCH_MAGIC or bfirst != expected or start + plen > len(data):
            break
        trailer = _read_trailer(data, start + plen)
        if trailer is None or trailer[0].size != bfirst + count:
            break
        out.append(_Batch(pos, bfirst, count, start, plen, trailer[0], trailer[1]))
        expected = bfirst + count
        pos = trailer[1]
    return out, pos


def _extend_noting_roots(
    cr: CompactRange, leaves: bytes, wanted: set[int], roots_at: dict[int, bytes]
) -> None:
    """Add concatenated leaf hashes to ``cr``, noting the root at every wanted size."""
    base = cr.size
    count = len(leaves) // 32
    if base in wanted:
        roots_at[base] = cr.root()
    done = 0
    for cut in sorted(s - base for s in wanted if base < s <= base + count):
        _hashing.extend_concat(cr, leaves[done * 32 : cut * 32])
        roots_at[cr.size] = cr.root()
        done = cut
    _hashing.extend_concat(cr, leaves[done * 32 :])


def _map(path: Path) -> Any:
    """The file's bytes, memory-mapped (no copy); an empty file gives ``b""``."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return b""
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


# Fixed layout of a decision entry's first two fields (epoch id "YYYY-MM-DD", policy version):
#   header (10) | 0x01 0x0A epoch (10) | 0x02 0x20 version (32)
PROBE: Final = 56


def _gather(
    scan: _Scan,
    data: Any,
    offsets: npt.NDArray[np.int64],
    probes: npt.NDArray[np.uint8],
    first: int,
) -> None:
    types = probes[:, 1]
    scan.types.append(types)
    is_dec = types == T_DECISION
    dec = np.flatnonzero(is_dec)
    if dec.size:
        rows = probes[dec]
        layout_ok = (
            (rows[:, 10] == 0x01)
            & (rows[:, 11] == 10)
            & (rows[:, 22] == 0x02)
            & (rows[:, 23] == 32)
        )
        if not layout_ok.all():
            scan.others.append((first + int(dec[np.flatnonzero(~layout_ok)[0]]), b""))
        # Decisions come in long runs with the same epoch and policy: keep each run's first.
        key = rows[:, 12:56]
        starts = np.flatnonzero(np.concatenate(([True], np.any(key[1:] != key[:-1], axis=1))))
        for j in starts.tolist():
            scan.first_uses.append(
                (first + int(dec[j]), bytes(rows[j, 12:22]), bytes(rows[j, 24:56]))
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
    from .logformat import TYPE_NAMES

    counts = np.bincount(types, minlength=256)
    rep.entries_by_type = {
        TYPE_NAMES.get(t, f"0x{t:02x}"): int(counts[t]) for t in np.flatnonzero(counts).tolist()
    }

    # Non-decision entries, decoded one by one (there are few).
    commits: dict[str, tuple[int, bytes]] = {}
    policies: dict[bytes, int] = {}
    recorded_cps: list[tuple[int, int, bytes]] = []
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
                rep.findings.append(Finding("structure", "a second log_created entry", index=index))
            else:
                rep.origin = f.get("origin")
                rep.public_key = f.get("public_key")
                rep.simulated = bool(f.get("simulated"))
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
            policies.setdefault(f.get("version", b""), index)
        elif entry.type == T_CHECKPOINT:
            recorded_cps.append((index, f.get("size", -1), f.get("root", b"")))
    if cr.size and (types[0] != T_LOG_CREATED or rep.public_key is None):
        rep.findings.append(
            Finding("structure", "the log does not start with log_created", index=0)
        )

    # Checkpoints stored in the log folder.
    rep.checkpoints = len(stored)
    prev = -1
    for i, cp in enumerate(stored):
        where = f"{CHECKPOINTS}#{i}"
        if rep.public_key is None or rep.origin is None:
            break
        try:
            verify_checkpoint(cp.note, rep.origin, rep.public_key)
        except CheckpointError as exc:
            rep.findings.append(Finding("checkpoints", str(exc), where))
            continue
        if cp.size < prev:
            rep.findings.append(Finding("checkpoints", "checkpoints go backwards", where))
        prev = max(prev, cp.size)
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
    stored_pairs = {(cp.size, cp.root) for cp in stored}
    for index, size, root in recorded_cps:
        if (size, root) not in stored_pairs:
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
        if exported.size > cr.size:
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
                        f"epoch {c.get('epoch_id')}: the exported commitment is not in the log",
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


def expected_segment(first: int) -> str:
    return segment_name(first)
