"""The ``cdr`` check: the log against the carrier's call records (CDR).

A CDR is a CSV file with a header line (or a Parquet file, with pyarrow) of one row per carrier
call, with the columns (docs/auditor-guide.md, "Carrier call records"):

- ``call_id`` (optional): the carrier's own id of the call; two rows with one ``call_id`` are
  one call;
- ``call_ref``: the call reference as text (its UTF-8 bytes), or ``call_ref_hex``: a binary
  reference as hexadecimal; one of them per row. In a file without a ``call_ref_hex`` column
  (the format before it), ``call_ref`` may also give a binary reference as ``hex:`` followed
  by its hexadecimal bytes;
- ``start_time`` (ISO 8601; without an offset, UTC): when the call started; may be empty.

The rules: every carrier reference has a decision and every decided reference is a carrier
reference (matched by exact bytes and kind: the text ``c1`` and the bytes ``c1`` differ); one
carrier call matched by two different decided references is a re-roll; a call's start time
falls in the epoch (the UTC day) of each decision of its reference.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..errors import InvalidArgument
from ..log.columns import I64, Decisions, RefMatcher, ref_text
from .findings import AuditReport
from .timeline import epoch_day

__all__ = ["CdrRows", "check_cdr", "read_cdr"]

_EPOCH0: Final = date(1970, 1, 1).toordinal()
_NONE: Final = -1  # no start time for the reference
_MANY: Final = -2  # the reference's rows start on several days


@dataclass
class CdrRows:
    """The rows of a CDR: ``refs[k]`` (``str`` for text, ``bytes`` for binary), ``call_ids[k]``
    (``None`` without the column), ``days[k]`` (the UTC day number of the start time, ``None``
    without one), ``starts[k]`` (the start time as given) and ``lines[k]`` (its line or row
    number, for the evidence)."""

    refs: list[str | bytes] = field(default_factory=list)
    call_ids: list[str | None] = field(default_factory=list)
    days: list[int | None] = field(default_factory=list)
    starts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    has_call_id: bool = False
    skipped: int = 0  # rows with no reference at all

    def add(self, line: int, ref: str | bytes, call_id: str | None, start: Any) -> None:
        self.refs.append(ref)
        self.call_ids.append(call_id or None)
        text, day = _start(start, line)
        self.starts.append(text)
        self.days.append(day)
        self.lines.append(line)


def _start(value: Any, line: int) -> tuple[str, int | None]:
    if value is None or value == "":
        return "", None
    if isinstance(value, datetime):
        at = value
    else:
        text = str(value).strip()
        if not text:
            return "", None
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(
                f"row {line}: start_time {text!r} is not an ISO 8601 time"
            ) from None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat(), at.date().toordinal() - _EPOCH0


def _ref(text: Any, hexed: Any, line: int, legacy: bool) -> str | bytes | None:
    """The reference of a row from its ``call_ref`` and ``call_ref_hex`` cells."""
    if isinstance(text, bytes | bytearray | memoryview):  # a binary Parquet column
        text = bytes(text)
    has_text = text is not None and text != ""
    has_hex = hexed is not None and hexed != ""
    if has_text and has_hex:
        raise InvalidArgument(f"row {line}: both call_ref and call_ref_hex are given; give one")
    if has_hex:
        try:
            return bytes.fromhex(str(hexed))
        except ValueError:
            raise InvalidArgument(
                f"row {line}: call_ref_hex {str(hexed)[:80]!r} is not hexadecimal"
            ) from None
    if not has_text:
        return None
    if isinstance(text, bytes):
        return text
    ref = str(text)
    if legacy and ref.startswith("hex:"):
        try:
            return bytes.fromhex(ref[4:])
        except ValueError:
            return ref
    return ref


def read_cdr(path: Path) -> CdrRows:
    """Read a carrier's call records (CSV, or Parquet when the name ends in ``.parquet``);
    raises :class:`InvalidArgument` naming the file and the row when they cannot be read."""
    try:
        return _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_csv(path)
    except InvalidArgument as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise InvalidArgument(f"{path}: {exc}") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: the call records cannot be read: {exc}") from None


def _columns(names: set[str]) -> bool:
    """Check the header; True for a file in the format without ``call_ref_hex``."""
    if "start_time" not in names or not names & {"call_ref", "call_ref_hex"}:
        raise InvalidArgument(
            "a header naming call_ref (or call_ref_hex) and start_time is needed "
            "(and call_id for the re-roll check)"
        )
    return "call_ref_hex" not in names


def _read_csv(path: Path) -> CdrRows:
    rows = CdrRows()
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            names = set(reader.fieldnames or ())
            legacy = _columns(names)
            rows.has_call_id = "call_id" in names
            for row in reader:
                line = reader.line_num
                ref = _ref(row.get("call_ref"), row.get("call_ref_hex"), line, legacy)
                if ref is None:
                    rows.skipped += 1
                    continue
                rows.add(line, ref, row.get("call_id"), row.get("start_time"))
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"the call records are not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise InvalidArgument(f"the call records are not valid CSV: {exc}") from None
    return rows


def _read_parquet(path: Path) -> CdrRows:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidArgument(
            "reading Parquet needs pyarrow (pip install 'sampledrec[parquet]'); "
            "or give the call records as CSV"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own errors for damaged files
        raise InvalidArgument(f"not a readable Parquet file: {exc}") from None
    names = set(table.column_names)
    legacy = _columns(names)
    n = table.num_rows

    def col(name: str) -> list[Any]:
        return table.column(name).to_pylist() if name in names else [None] * n

    rows = CdrRows(has_call_id="call_id" in names)
    for k, (text, hexed, cid, start) in enumerate(
        zip(col("call_ref"), col("call_ref_hex"), col("call_id"), col("start_time"), strict=True)
    ):
        ref = _ref(text, hexed, k + 1, legacy)
        if ref is None:
            rows.skipped += 1
            continue
        rows.add(k + 1, ref, None if cid is None else str(cid), start)
    return rows


def check_cdr(rep: AuditReport, d: Decisions, cdr: CdrRows) -> None:
    """The ``cdr`` check (the module docstring)."""
    # The distinct references, and the rows of each.
    refs: list[str | bytes] = []
    rows_of: list[list[int]] = []
    number: dict[tuple[type, str | bytes], int] = {}
    for k, ref in enumerate(cdr.refs):
        u = number.setdefault((type(ref), ref), len(refs))
        if u == len(refs):
            refs.append(ref)
            rows_of.append([])
        rows_of[u].append(k)
    rep.counts["cdr_calls"] = len(refs)
    with_ref = np.flatnonzero(d.ref_kind > 0)
    matched = RefMatcher.exact(d, refs).match(with_ref)
    on = matched >= 0
    rows, ref_of = with_ref[on], matched[on]  # decision rows matched, and their reference
    # The first decision of each reference: its index, for the evidence.
    first = np.full(len(refs), -1, dtype=np.int64)
    hit, at = np.unique(ref_of, return_index=True)  # rows are in log order
    first[hit] = rows[at]
    decided = first >= 0

    # 1. Completeness, both ways.
    for u in np.flatnonzero(~decided).tolist():
        cids = sorted({c for k in rows_of[u] if (c := cdr.call_ids[k]) is not None})
        rep.add(
            "cdr",
            "a carrier call has no decision in the log",
            call_ref=ref_text(refs[u]),
            evidence={"call_id": cids[0] if len(cids) == 1 else cids} if cids else {},
        )
    strangers: dict[str, int] = {}
    for i in with_ref[~on].tolist():
        strangers.setdefault(d.ref_text(i) or "", int(d.index[i]))
    for ref, index in sorted(strangers.items()):
        rep.add(
            "cdr",
            "a decision for a reference that is not a carrier call (a re-rolled or "
            "invented reference)",
            index=index,
            call_ref=ref,
        )

    # 2. Re-rolls: one carrier call, two decided references.
    rerolls = _check_rerolls(rep, d, cdr, refs, rows_of, first)

    # 3. Start times in the decisions' epochs.
    outside, undated = _check_epochs(rep, d, cdr, refs, rows_of, rows, ref_of)

    rep.checked["cdr"] = {
        "carrier_calls": len(refs),
        "carrier_calls_with_a_decision": int(np.count_nonzero(decided)),
        "decisions_matched": int(rows.size),
        "carrier_call_ids": len({c for c in cdr.call_ids if c is not None}),
        "rerolls": rerolls,
        "start_times_checked": int(rows.size) - undated,
        "started_outside_the_epoch": outside,
    }
    unreadable = len(d) - with_ref.size
    if unreadable:
        rep.notes.append(
            f"{unreadable} decisions have erased call references and were not matched "
            "against the call records"
        )
    if not cdr.has_call_id:
        rep.notes.append(
            "the call records have no call_id column: re-rolls (one carrier call decided "
            "under two references) were not looked for"
        )
    if cdr.skipped:
        rep.notes.append(f"{cdr.skipped} rows of the call records have no call reference")


def _check_rerolls(
    rep: AuditReport,
    d: Decisions,
    cdr: CdrRows,
    refs: list[str | bytes],
    rows_of: list[list[int]],
    first: I64,
) -> int:
    refs_of_call: dict[str, list[int]] = defaultdict(list)
    for u, ks in enumerate(rows_of):
        if first[u] < 0:
            continue
        for cid in dict.fromkeys(c for k in ks if (c := cdr.call_ids[k]) is not None):
            refs_of_call[cid].append(u)
    items: list[tuple[str, dict[str, Any]]] = []
    for cid, us in sorted(refs_of_call.items()):
        if len(us) < 2:
            continue
        us = sorted(us, key=lambda u: int(first[u]))
        indexes = [int(d.index[int(first[u])]) for u in us]
        items.append(
            (
                "re-roll: one carrier call is decided under two references",
                {
                    "index": indexes[1],
                    "call_ref": ref_text(refs[us[1]]),
                    "epoch_id": d.epochs[int(d.epoch[int(first[us[1]])])],
                    "evidence": {
                        "call_id": cid,
                        "call_refs": [ref_text(refs[u]) for u in us],
                        "indexes": indexes,
                    },
                },
            )
        )
    rep.add_listed("cdr", items, "re-rolled carrier calls")
    return len(items)


def _check_epochs(
    rep: AuditReport,
    d: Decisions,
    cdr: CdrRows,
    refs: list[str | bytes],
    rows_of: list[list[int]],
    rows: I64,
    ref_of: I64,
) -> tuple[int, int]:
    """Each matched decision's epoch against its reference's start day(s); returns the number
    of decisions outside and of decisions whose reference has no start time."""
    ref_day = np.full(len(refs), _NONE, dtype=np.int64)
    for u, ks in enumerate(rows_of):
        days = {day for k in ks if (day := cdr.days[k]) is not None}
        if days:
            ref_day[u] = days.pop() if len(days) == 1 else _MANY
    days_of_epoch = np.asarray(
        [-3 if (e := epoch_day(x)) is None else e for x in d.epochs] or [-3], dtype=np.int64
    )
    dec_day = days_of_epoch[d.epoch[rows]] if rows.size else np.zeros(0, dtype=np.int64)
    want = ref_day[ref_of]
    undated = int(np.count_nonzero(want == _NONE))
    bad = (want >= 0) & (dec_day != want)
    for j in np.flatnonzero(want == _MANY).tolist():  # several start days: any of them
        u = int(ref_of[j])
        bad[j] = int(dec_day[j]) not in {cdr.days[k] for k in rows_of[u]}
    seen: set[tuple[int, int]] = set()
    items: list[tuple[str, dict[str, Any]]] = []
    for j in np.flatnonzero(bad).tolist():
        u, i = int(ref_of[j]), int(rows[j])
        if (u, int(d.epoch[i])) in seen:  # retries: once per reference and epoch
            continue
        seen.add((u, int(d.epoch[i])))
        ks = [k for k in rows_of[u] if cdr.days[k] is not None]
        items.append(
            (
                "a carrier call started outside the epoch of its decision",
                {
                    "index": int(d.index[i]),
                    "call_ref": ref_text(refs[u]),
                    "epoch_id": d.epochs[int(d.epoch[i])],
                    "evidence": {
                        "start_time": [cdr.starts[k] for k in ks]
                        if len(ks) > 1
                        else cdr.starts[ks[0]],
                        "cdr_row": [cdr.lines[k] for k in ks] if len(ks) > 1 else cdr.lines[ks[0]],
                    }
                    | ({"call_id": cdr.call_ids[ks[0]]} if cdr.call_ids[ks[0]] is not None else {}),
                },
            )
        )
    rep.add_listed("cdr", items, "carrier calls started outside their decision's epoch")
    if undated:
        rep.notes.append(
            f"{undated} decisions match carrier calls without a start time: their epoch was "
            "not checked against the call records"
        )
    return len(items), undated
