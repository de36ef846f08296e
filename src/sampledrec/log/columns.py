"""The log as the auditor reads it: decision entries as numpy columns, everything else decoded.

An audit looks at every decision of the log (millions of them) and at a handful of other
entries (policies, key commitments, recordings, tombstones). :func:`read_log` gives the first as
:class:`Decisions`, one numpy array per field in log order, with the call references and agents
already unsealed, and the second as decoded :class:`~sampledrec.log.format.Entry` objects.

:func:`~sampledrec.log.format.decode_entry` is the reference: the optional C accelerator reads
the decisions of the usual shape column-wise (``_decisionscan.c``), and every other record, or all
of them without the accelerator, goes through ``decode_entry``. Both give the same columns
(tests/test_auditlog.py compares them on logs with odd entries). Both follow the decision layout
of :data:`~sampledrec.log.format.DECISION`; the fields are named as there.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..errors import LogCorrupt
from . import hashing
from .format import DECISION, T_DECISION, Entry, decode_entry
from .segments import SEG_HEADER, BatchSpan, iter_batches, split_records
from .storage import LogStorage, SegmentBytes
from .writer import SealingKeys

__all__ = [
    "Decisions",
    "LogContents",
    "RefMatcher",
    "call_firsts",
    "concat_contents",
    "concat_decisions",
    "counted_once",
    "decisions_from_entries",
    "read_batches",
    "read_log",
]

#: ref_kind values
NO_REF: Final = 0  # erased, not readable, or absent
STR_REF: Final = 1
BYTES_REF: Final = 2
_CLAMP: Final = 2**62  # integers that do not fit a column are clamped (they are findings anyway)
_U64: Final = 2**64

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]


@dataclass(eq=False)
class Decisions:
    """The decision entries of a log, one array per field, in log order.

    Text and small-domain fields are codes into lists (``epoch`` into ``epochs`` ...; ``agent``
    is -1 where there is none). ``attributes`` indexes ``attribute_sets``, the distinct texts of
    the logged attributes (compact JSON, as logged; -1 where the decision has none, or its
    personal fields are unreadable): few distinct values, so a check parses each once.
    ``threshold_ok`` is False where the threshold is missing or does not fit 64 bits;
    ``reason`` is -1 where it is missing. Call references are the rows
    ``refs[i, :ref_len[i]]``, of kind ``ref_kind`` (0: erased or unreadable, 1: text as UTF-8,
    2: bytes).
    """

    index: I64
    time_us: npt.NDArray[np.uint64]
    epoch: I32
    epochs: list[str]
    version: I32
    versions: list[bytes]
    rule: I32
    rules: list[str]
    threshold: npt.NDArray[np.uint64]
    threshold_ok: npt.NDArray[np.bool_]
    draw: npt.NDArray[np.uint64]
    has_draw: npt.NDArray[np.bool_]
    reason: I64
    agent: I32
    agents: list[str]
    attributes: I32
    attribute_sets: list[str]
    ref_kind: npt.NDArray[np.uint8]
    ref_len: I64
    refs: npt.NDArray[np.uint8]
    ref_fp: npt.NDArray[np.uint64]  # :func:`ref_fingerprints` of each reference (0: none)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def ref(self, i: int) -> str | bytes | None:
        kind = int(self.ref_kind[i])
        if kind == NO_REF:
            return None
        raw = self.refs[i, : int(self.ref_len[i])].tobytes()
        return raw.decode("utf-8") if kind == STR_REF else raw

    def ref_text(self, i: int) -> str | None:
        """The reference as the audit shows it: text as is, bytes as ``hex:...``."""
        ref = self.ref(i)
        return ref_text(ref) if ref is not None else None

    def agent_name(self, i: int) -> str | None:
        code = int(self.agent[i])
        return self.agents[code] if code >= 0 else None

    def attributes_text(self, i: int) -> str | None:
        """The attributes decision ``i`` logged, as logged (JSON text), or None."""
        code = int(self.attributes[i])
        return self.attribute_sets[code] if code >= 0 else None


def ref_text(ref: str | bytes) -> str:
    return ref if isinstance(ref, str) else "hex:" + ref.hex()


@dataclass
class LogContents:
    decisions: Decisions
    others: list[Entry] = field(default_factory=list)  # every other entry, in log order
    error: str | None = None  # why the log could not be read to the end
    one_by_one: int = 0  # decisions decoded entry by entry (not column-wise)


# -- building the columns ------------------------------------------------------------------------


class _Codes:
    """Global codes of values met batch by batch."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._code: dict[Any, int] = {}

    def code(self, value: Any) -> int:
        c = self._code.get(value)
        if c is None:
            c = self._code[value] = len(self.values)
            self.values.append(value)
        return c

    def lut(self, values: list[Any]) -> I32:
        """Map a batch's codes to global ones; index -1 (no value) maps to -1."""
        return np.asarray([*map(self.code, values), -1], dtype=np.int32)


class _Builder:
    def __init__(self) -> None:
        self.epochs, self.versions, self.rules, self.agents = _Codes(), _Codes(), _Codes(), _Codes()
        self.attributes = _Codes()
        self.chunks: list[dict[str, Any]] = []
        self.slow: list[Entry] = []

    def add_columns(self, first: int, out: tuple[Any, ...]) -> npt.NDArray[np.bool_]:
        """Add what ``decision_columns`` read; returns which records it did not read."""
        (_, lens, rec, time, thr, draw, hasd, reason, codes, kind, width, rlen, refs, fp) = out[:14]
        epochs, versions, rules, agents, attributes = out[14:]
        nrec = len(lens) // 4
        rest = np.ones(nrec, dtype=bool)
        r = np.frombuffer(rec, dtype=np.uint64).astype(np.int64)
        rest[r] = False
        m = r.shape[0]
        if not m:
            return rest
        c = np.frombuffer(codes, dtype=np.int32).reshape(m, 5)
        self.chunks.append(
            {
                "index": r + first,
                "time_us": np.frombuffer(time, dtype=np.uint64),
                "epoch": self.epochs.lut(epochs)[c[:, 0]],
                "version": self.versions.lut(versions)[c[:, 1]],
                "rule": self.rules.lut(rules)[c[:, 2]],
                "agent": self.agents.lut(agents)[c[:, 3]],
                "attributes": self.attributes.lut(attributes)[c[:, 4]],
                "threshold": np.frombuffer(thr, dtype=np.uint64),
                "threshold_ok": np.ones(m, dtype=bool),
                "draw": np.frombuffer(draw, dtype=np.uint64),
                "has_draw": np.frombuffer(hasd, dtype=np.uint8).astype(bool),
                "reason": np.minimum(np.frombuffer(reason, dtype=np.uint64), _CLAMP).astype(
                    np.int64
                ),
                "ref_kind": np.frombuffer(kind, dtype=np.uint8),
                "ref_len": np.frombuffer(rlen, dtype=np.int32).astype(np.int64),
                "refs": np.frombuffer(refs, dtype=np.uint8).reshape(m, width),
                "ref_fp": np.frombuffer(fp, dtype=np.uint64),
            }
        )
        return rest

    def add_entry(self, e: Entry) -> None:
        self.slow.append(e)

    def _slow_chunk(self) -> dict[str, Any]:
        rows = self.slow
        m = len(rows)
        fl = [e.fields for e in rows]
        d = DECISION
        refs: list[bytes] = []
        kinds: list[int] = []
        for e, f in zip(rows, fl, strict=True):
            ref = f.get(d.call_ref.name)
            if isinstance(ref, str | bytes) and not e.sealed:
                kinds.append(STR_REF if isinstance(ref, str) else BYTES_REF)
                refs.append(ref.encode("utf-8") if isinstance(ref, str) else ref)
            else:
                kinds.append(NO_REF)
                refs.append(b"")
        width = max([1, *map(len, refs)])
        mat = np.zeros((m, width), dtype=np.uint8)
        for j, raw in enumerate(refs):
            mat[j, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        thr = [f.get(d.threshold.name) for f in fl]
        thr_ok = [isinstance(t, int) and 0 <= t < _U64 for t in thr]
        draws = [f.get(d.draw.name) for f in fl]
        has_draw = [isinstance(x, int) for x in draws]
        agents = [f.get(d.agent.name) for f in fl]
        attrs = [f.get(d.attributes.name) for f in fl]
        return {
            "index": np.asarray([e.index for e in rows], dtype=np.int64),
            "time_us": np.asarray([e.time_us for e in rows], dtype=np.uint64),
            "epoch": np.asarray(
                [self.epochs.code(str(f.get(d.epoch_id.name, ""))) for f in fl], dtype=np.int32
            ),
            "version": np.asarray(
                [self.versions.code(bytes(f.get(d.policy_version.name, b""))) for f in fl],
                dtype=np.int32,
            ),
            "rule": np.asarray(
                [self.rules.code(str(f.get(d.rule.name, ""))) for f in fl], dtype=np.int32
            ),
            "agent": np.asarray(
                [self.agents.code(a) if isinstance(a, str) else -1 for a in agents], np.int32
            ),
            "attributes": np.asarray(
                [self.attributes.code(a) if isinstance(a, str) else -1 for a in attrs], np.int32
            ),
            "threshold": np.asarray(
                [t if ok else 0 for t, ok in zip(thr, thr_ok, strict=True)], dtype=np.uint64
            ),
            "threshold_ok": np.asarray(thr_ok, dtype=bool),
            "draw": np.asarray(
                [min(x, _U64 - 1) if isinstance(x, int) else 0 for x in draws],
                dtype=np.uint64,
            ),
            "has_draw": np.asarray(has_draw, dtype=bool),
            "reason": np.asarray([_reason_value(f.get(d.reason.name)) for f in fl], dtype=np.int64),
            "ref_kind": np.asarray(kinds, dtype=np.uint8),
            "ref_len": np.asarray(list(map(len, refs)), dtype=np.int64),
            "refs": mat,
            "ref_fp": ref_fingerprints(
                np.asarray(kinds, dtype=np.uint8), np.asarray(list(map(len, refs))), mat
            ),
        }

    def build(self) -> Decisions:
        chunks = list(self.chunks)
        if self.slow:
            chunks.append(self._slow_chunk())
        if not chunks:
            chunks = [_empty_chunk()]
        width = max(c["refs"].shape[1] for c in chunks)
        n = sum(c["index"].shape[0] for c in chunks)
        refs = np.zeros((n, width), dtype=np.uint8)
        s = 0
        for c in chunks:
            m = c["refs"].shape[0]
            refs[s : s + m, : c["refs"].shape[1]] = c["refs"]
            s += m
        cols: dict[str, Any] = {
            k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if k != "refs"
        }
        cols["refs"] = refs
        if self.slow:  # back to log order
            order = np.argsort(cols["index"], kind="stable")
            cols = {k: v[order] for k, v in cols.items()}
        lists: dict[str, Any] = {}
        for name, codes, listed in (
            ("epoch", self.epochs, "epochs"),
            ("version", self.versions, "versions"),
            ("rule", self.rules, "rules"),
            ("agent", self.agents, "agents"),
            ("attributes", self.attributes, "attribute_sets"),
        ):
            cols[name], lists[listed] = _canonical(
                cols[name], codes.values, missing=name in ("agent", "attributes")
            )
        return Decisions(**lists, **cols)

    def drop_from(self, index: int) -> None:
        """Forget the decisions read column-wise at or after entry ``index`` (the reading
        stopped at a damaged entry there: nothing after it counts)."""
        for c in self.chunks:
            keep = c["index"] < index
            if not keep.all():
                for k in c:
                    c[k] = c[k][keep]


def _canonical(codes: I32, values: list[Any], *, missing: bool) -> tuple[I32, list[Any]]:
    """The codes renumbered so that the list holds the values in use only, sorted: the same
    whatever order the batches met them in. ``missing``: codes may be -1 (no value; kept)."""
    if not values:
        return codes, []
    counts = np.bincount(codes + 1, minlength=len(values) + 1)[1:] if missing else None
    if counts is None:
        counts = np.bincount(codes, minlength=len(values))
    order = sorted(np.flatnonzero(counts).tolist(), key=lambda c: values[c])
    if order == list(range(len(values))):
        return codes, values  # already canonical: no need to rewrite the column
    lut = np.full(len(values) + 1, -1, dtype=np.int32)
    lut[order] = np.arange(len(order), dtype=np.int32)
    return lut[codes], [values[c] for c in order]


def _reason_value(reason: Any) -> int:
    return max(-1, min(reason, _CLAMP)) if isinstance(reason, int) else -1


def decisions_from_entries(entries: list[Entry]) -> Decisions:
    """Columns from decoded decision entries (what :func:`read_log` does without the
    accelerator; also handy to build small sets of decisions in tests)."""
    builder = _Builder()
    for e in entries:
        builder.add_entry(e)
    return builder.build()


def _empty_chunk() -> dict[str, Any]:
    e = np.empty(0, dtype=np.int64)
    i32 = np.empty(0, dtype=np.int32)
    u64 = np.empty(0, dtype=np.uint64)
    b = np.empty(0, dtype=bool)
    return {
        "index": e,
        "time_us": u64,
        "epoch": i32,
        "version": i32,
        "rule": i32,
        "agent": i32,
        "attributes": i32,
        "threshold": u64,
        "threshold_ok": b,
        "draw": u64,
        "has_draw": b,
        "reason": e,
        "ref_kind": np.empty(0, dtype=np.uint8),
        "ref_len": e,
        "refs": np.zeros((0, 1), dtype=np.uint8),
        "ref_fp": u64,
    }


# -- reading -------------------------------------------------------------------------------------


def read_log(
    log: LogStorage | str | os.PathLike[str],
    keyring: Any,
    *,
    accelerated: bool = True,
    progress: Callable[[int], None] | None = None,
) -> LogContents:
    """Read every entry of ``log`` (a storage, or the path of a local log folder), opening
    sealed fields with ``keyring``
    (anything with ``sealing_key(kid)``). Damage stops the reading: what was read before it is
    returned, with ``error`` saying why (verification reports the damage itself).
    ``progress(n)`` is told of every ``n`` bytes read."""
    return read_batches(
        iter_batches(log, mapped=True), keyring, accelerated=accelerated, progress=progress
    )


def read_batches(
    batches: Iterable[BatchSpan],
    keyring: Any,
    *,
    accelerated: bool = True,
    progress: Callable[[int], None] | None = None,
) -> LogContents:
    """:func:`read_log` over some batches, in log order (for instance one segment's: the
    contents of consecutive stretches of a log join with :func:`concat_contents`)."""
    reader = _Reader(keyring, accelerated=accelerated)
    error = None
    try:
        for b in batches:
            reader.batch(b.data, b.start, b.end, b.first)
            if progress is not None:  # the segment's header with its first batch
                progress(b.next - b.at + (b.at if b.at == SEG_HEADER.size else 0))
    except (LogCorrupt, ValueError) as exc:
        error = str(exc)
    return reader.result(error)


def concat_contents(parts: Sequence[LogContents]) -> LogContents:
    """The contents of consecutive stretches of a log as one, as :func:`read_log` would read
    them at once: the reading stops at the first stretch that could not be read to its end."""
    used: list[LogContents] = []
    for part in parts:
        used.append(part)
        if part.error is not None:
            break
    if len(used) == 1:
        return used[0]
    return LogContents(
        concat_decisions([p.decisions for p in used]),
        [e for p in used for e in p.others],
        used[-1].error if used else None,
        sum(p.one_by_one for p in used),
    )


_CODED: Final = (
    ("epoch", "epochs"),
    ("version", "versions"),
    ("rule", "rules"),
    ("agent", "agents"),
    ("attributes", "attribute_sets"),
)


def concat_decisions(parts: Sequence[Decisions]) -> Decisions:
    """Decisions of consecutive stretches of a log as one :class:`Decisions`, in log order, its
    coded fields renumbered into the sorted lists of the values in use (as :func:`read_log`
    gives them, whatever stretch met a value first)."""
    if not parts:
        return decisions_from_entries([])
    full = [p for p in parts if len(p)] or [parts[0]]
    lists: dict[str, Any] = {}
    cols: dict[str, Any] = {}
    for name, listed in _CODED:
        values = sorted({v for p in full for v in getattr(p, listed)})
        lists[listed] = values
        code = {v: i for i, v in enumerate(values)}
        cols[name] = _joined(
            [
                # A stretch whose list is already the whole one (the usual case: every
                # stretch met the same few epochs, rules, agents) keeps its codes as they are.
                getattr(p, name)
                if getattr(p, listed) == values
                else np.asarray([code[v] for v in getattr(p, listed)] + [-1], dtype=np.int32)[
                    getattr(p, name)
                ]
                for p in full
            ]
        )
    width = max(p.refs.shape[1] for p in full)
    refs = _joined([p.refs for p in full]) if all(p.refs.shape[1] == width for p in full) else None
    if refs is None:
        refs = np.zeros((sum(len(p) for p in full), width), dtype=np.uint8)
        at = 0
        for p in full:
            refs[at : at + len(p), : p.refs.shape[1]] = p.refs
            at += len(p)
    cols["refs"] = refs
    for f in dataclasses.fields(Decisions):
        if f.name not in cols and f.name not in lists:
            cols[f.name] = _joined([getattr(p, f.name) for p in full])
    return Decisions(**lists, **cols)


def _joined(arrays: Sequence[Any]) -> Any:
    """``arrays`` one after the other: without a copy (a read-only view) when they are
    read-only views of consecutive rows of one array (as the Dask audit's joining process
    lays a log's segments out: rows once written are never written again), else
    concatenated."""
    first = arrays[0]
    base = first.base
    if (
        len(arrays) > 1
        and isinstance(base, np.ndarray)
        and not any(a.flags.writeable for a in arrays)
        and base.flags.c_contiguous
        and base.ndim == first.ndim
        and base.shape[1:] == first.shape[1:]
        and base.dtype == first.dtype
    ):
        start = first.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        at = start
        row = base.strides[0]
        for a in arrays:
            if (
                a.base is not base
                or not a.flags.c_contiguous
                or a.__array_interface__["data"][0] - base.__array_interface__["data"][0] != at
            ):
                break
            at += a.shape[0] * row
        else:
            if start % row == 0:
                view = base[start // row : at // row]
                view.flags.writeable = False
                return view
    return np.concatenate(arrays)


class _Reader:
    """Reads batches of records (u32 length, entry) into decision columns and other entries."""

    def __init__(self, keyring: Any, *, accelerated: bool = True) -> None:
        self.keys = SealingKeys(keyring)
        self.fast = hashing.native if accelerated else None
        self.builder = _Builder()
        self.others: list[Entry] = []
        self.hash_key = os.urandom(16)  # keys the C reader's tables: no value can flood them

    def batch(self, data: SegmentBytes, start: int, end: int, first: int) -> None:
        """The records in ``data[start:end]``, the first being entry ``first``."""
        if self.fast is None:
            records, _ = split_records(data[start:end])
            rest = list(enumerate(records))
        else:
            out = self.fast.decision_columns(data, start, end, self.keys.key_for, self.hash_key)
            left = self.builder.add_columns(first, out)
            offs = np.frombuffer(out[0], dtype=np.uint64)
            lens = np.frombuffer(out[1], dtype=np.uint32)
            rest = [
                (i, data[int(offs[i]) : int(offs[i]) + int(lens[i])])
                for i in np.flatnonzero(left).tolist()
            ]
        for i, raw in rest:
            try:
                e = decode_entry(first + i, raw, self.keys.unseal)
            except ValueError:
                self.builder.drop_from(first + i)
                raise
            (self.builder.add_entry if e.type == T_DECISION else self.others.append)(e)

    def result(self, error: str | None = None) -> LogContents:
        return LogContents(
            self.builder.build(), self.others, error, one_by_one=len(self.builder.slow)
        )


# -- calls: which decisions are about the same call ----------------------------------------------

_FNV_BASIS: Final = np.uint64(1469598103934665603)
_FNV_PRIME: Final = np.uint64(1099511628211)


def ref_fingerprints(
    kind: npt.NDArray[np.uint8], length: npt.NDArray[Any], refs: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint64]:
    """FNV-1a 64 of each reference's kind byte then its bytes (0 where kind is 0), as the C
    reader computes it. Only ever a hint: equal references give equal fingerprints, and
    wherever a match matters the bytes are compared, because anyone who chooses call
    references could make two fingerprints collide."""
    h = np.full(kind.shape[0], _FNV_BASIS, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (h ^ kind.astype(np.uint64)) * _FNV_PRIME
        for j in range(refs.shape[1]):
            on = j < length
            h = np.where(on, (h ^ refs[:, j].astype(np.uint64)) * _FNV_PRIME, h)
    out: npt.NDArray[np.uint64] = np.where(kind > 0, h, np.uint64(0))
    return out


def call_firsts(d: Decisions) -> I64:
    """For each decision, the row of the first decision of the same call (same epoch, same
    reference), itself for the first; -1 where the reference is erased or unreadable."""
    if hashing.native is not None:
        raw = hashing.native.call_firsts(
            np.ascontiguousarray(d.epoch, dtype=np.int32),
            np.ascontiguousarray(d.ref_kind),
            np.ascontiguousarray(d.ref_len, dtype=np.int64),
            np.ascontiguousarray(d.refs),
            d.refs.shape[1],
            os.urandom(16),  # a fresh hash key: nobody can choose references that collide
        )
        out: I64 = np.frombuffer(raw, dtype=np.int64)
        return out
    return _call_firsts_sorted(d)


def counted_once(firsts: I64) -> npt.NDArray[np.bool_]:
    """Which decisions count for their call (retries count once): the first of each call, and
    every decision whose reference is gone (there is nothing to tell them apart by)."""
    out: npt.NDArray[np.bool_] = (firsts < 0) | (firsts == np.arange(firsts.size))
    return out


def _call_firsts_sorted(d: Decisions) -> I64:
    """:func:`call_firsts` without the accelerator: sort, then compare neighbours exactly."""
    out = np.full(len(d), -1, dtype=np.int64)
    has = np.flatnonzero(d.ref_kind > 0)
    if not has.size:
        return out
    with np.errstate(over="ignore"):
        fp = d.ref_fp[has] ^ (d.epoch[has].astype(np.uint64) * _FNV_PRIME)
    order = np.argsort(fp, kind="stable")  # equal fingerprints stay in log order
    rows = has[order]
    fs = fp[order]
    same = np.zeros(rows.size, dtype=bool)
    same[1:] = fs[1:] == fs[:-1]
    j = np.flatnonzero(same)
    a, b = rows[j - 1], rows[j]
    exact = (
        (d.epoch[a] == d.epoch[b])
        & (d.ref_kind[a] == d.ref_kind[b])
        & (d.ref_len[a] == d.ref_len[b])
        & (d.refs[a] == d.refs[b]).all(axis=1)
    )
    if not exact.all():  # a fingerprint collision: group on the whole keys instead
        return _call_firsts_exact(d, has, out)
    starts = np.flatnonzero(~same)
    out[rows] = rows[starts][np.cumsum(~same) - 1]
    return out


def _call_firsts_exact(d: Decisions, has: I64, out: I64) -> I64:
    m = has.size
    key = np.zeros((m, 8 + d.refs.shape[1]), dtype=np.uint8)
    key[:, :4] = d.epoch[has].astype(">i4").view(np.uint8).reshape(m, 4)
    key[:, 4] = d.ref_kind[has]
    key[:, 5:8] = d.ref_len[has].astype(">i4").view(np.uint8).reshape(m, 4)[:, 1:]
    key[:, 8:] = d.refs[has]
    void = np.ascontiguousarray(key).view(np.dtype((np.void, key.shape[1]))).ravel()
    _, first, inverse = np.unique(void, return_index=True, return_inverse=True)
    out[has] = has[first[inverse.ravel()]]
    return out


class RefMatcher:
    """Exact matching of the decisions' call references against a set of reference texts (as
    the audit shows them: text as is, bytes as ``hex:...``), or with :meth:`exact`, against
    references given as ``str`` (text) or ``bytes`` (binary), the kind compared too."""

    def __init__(self, d: Decisions, texts: list[str]) -> None:
        ids: list[int] = []
        kinds: list[int] = []
        raws: list[bytes] = []
        for i, t in enumerate(texts):
            ids.append(i)
            kinds.append(STR_REF)
            raws.append(t.encode("utf-8", "surrogatepass"))
            if t.startswith("hex:"):
                try:
                    raw = bytes.fromhex(t[4:])
                except ValueError:
                    continue
                ids.append(i)
                kinds.append(BYTES_REF)
                raws.append(raw)
        self._build(d, ids, kinds, raws)

    @classmethod
    def exact(cls, d: Decisions, refs: list[str | bytes]) -> RefMatcher:
        """A matcher of ``refs`` by kind and bytes: ``"c1"`` matches the text reference only,
        ``b"c1"`` the binary one only."""
        self = cls.__new__(cls)
        kinds = [STR_REF if isinstance(r, str) else BYTES_REF for r in refs]
        raws = [r.encode("utf-8", "surrogatepass") if isinstance(r, str) else r for r in refs]
        self._build(d, list(range(len(refs))), kinds, raws)
        return self

    def _build(self, d: Decisions, ids: list[int], kinds: list[int], raws: list[bytes]) -> None:
        self.d = d
        self.index: dict[tuple[int, bytes], int] = {}
        for i, k, raw in zip(ids, kinds, raws, strict=True):
            self.index.setdefault((k, raw), i)
        width = max([1, d.refs.shape[1], *map(len, raws)])
        mat = np.zeros((len(raws), width), dtype=np.uint8)
        for j, raw in enumerate(raws):
            mat[j, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.kinds = np.asarray(kinds, dtype=np.uint8)
        self.lens = np.asarray(list(map(len, raws)), dtype=np.int64)
        self.mat = mat
        fp = ref_fingerprints(self.kinds, self.lens, mat)
        self.order = np.argsort(fp, kind="stable")
        self.fps = fp[self.order]

    def match(self, rows: I64) -> I64:
        """For each decision row, the index in ``texts`` of its reference, or -1."""
        d = self.d
        out = np.full(rows.size, -1, dtype=np.int64)
        if not rows.size or not self.fps.size:
            return out
        fp = d.ref_fp[rows]
        pos = np.minimum(np.searchsorted(self.fps, fp), self.fps.size - 1)
        hit = np.flatnonzero((self.fps[pos] == fp) & (d.ref_kind[rows] > 0))
        if not hit.size:
            return out
        r, c = rows[hit], self.order[pos[hit]]
        w = d.refs.shape[1]
        exact = (
            (d.ref_kind[r] == self.kinds[c])
            & (d.ref_len[r] == self.lens[c])
            & (self.lens[c] <= w)
            & (d.refs[r] == self.mat[c, :w]).all(axis=1)
        )
        out[hit[exact]] = self.ids[c[exact]]
        # Equal fingerprints but not the first candidate's reference: look at them one by one.
        for j in hit[~exact].tolist():
            r1 = int(rows[j])
            key = (int(d.ref_kind[r1]), d.refs[r1, : int(d.ref_len[r1])].tobytes())
            out[j] = self.index.get(key, -1)
        return out
