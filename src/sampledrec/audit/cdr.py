"""The ``cdr`` check: the log against the carrier's call records (CDR).

A CDR is a CSV file with a header line (or a Parquet file, with pyarrow) of one row per carrier
call, with the columns (docs/auditor-guide.md, "Carrier call records"):

- ``call_id`` (optional): the carrier's own id of the call; two rows with one ``call_id`` are
  one call;
- ``call_ref``: the call reference as text (its UTF-8 bytes), or ``call_ref_hex``: a binary
  reference as hexadecimal; one of them per row. In a file without a ``call_ref_hex`` column
  (the format before it), ``call_ref`` may also give a binary reference as ``hex:`` followed
  by its hexadecimal bytes;
- ``start_time`` (ISO 8601; without an offset, UTC): when the call started; may be empty;
- any other column is kept by name: one named like a call attribute that the policy's rules
  match on, or like its agent attribute (``queue``, ``campaign``, ``agent`` ...), is compared
  with what the decisions logged.

The rules: every carrier reference has a decision and every decided reference is a carrier
reference (matched by exact bytes and kind: the text ``c1`` and the bytes ``c1`` differ); one
carrier call matched by two different decided references is a re-roll; a call's start time
falls in the epoch (the UTC day) of each decision of its reference; the attributes a call's
first decision logged agree with the carrier's columns of the same names.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgument
from ..log.columns import I64, Decisions, RefMatcher, ref_text
from ..sampling.policy import attr_text
from .findings import AuditReport
from .rules import parse_attributes
from .timeline import epoch_day

__all__ = ["CdrRows", "check_cdr", "read_cdr"]

_EPOCH0: Final = date(1970, 1, 1).toordinal()
_NONE: Final = -1  # no start time for the reference
_MANY: Final = -2  # the reference's rows start on several days
#: The columns with a meaning of their own: every other one is kept, by name.
KNOWN_COLUMNS: Final = frozenset({"call_id", "call_ref", "call_ref_hex", "start_time"})
_NO_VALUE: Final = -1  # the decision logged no value for the attribute, or the CDR gives none
_MANY_VALUES: Final = -2  # the reference's rows give several values
_NOT_COMPARED: Final = -3  # the decision's policy does not use the column, or logged nothing


@dataclass
class CdrRows:
    """The rows of a CDR: ``refs[k]`` (``str`` for text, ``bytes`` for binary), ``call_ids[k]``
    (``None`` without the column), ``days[k]`` (the UTC day number of the start time, ``None``
    without one), ``starts[k]`` (the start time as given) and ``lines[k]`` (its line or row
    number, for the evidence). ``columns[name][k]`` is the text of any other column (``None``
    where the cell is empty), as the policy compares attribute values."""

    refs: list[str | bytes] = field(default_factory=list)
    call_ids: list[str | None] = field(default_factory=list)
    days: list[int | None] = field(default_factory=list)
    starts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    has_call_id: bool = False
    skipped: int = 0  # rows with no reference at all
    columns: dict[str, list[str | None]] = field(default_factory=dict)
    _interned: dict[str, str] = field(default_factory=dict, repr=False)

    def add(
        self,
        line: int,
        ref: str | bytes,
        call_id: str | None,
        start: Any,
        other: dict[str, Any] | None = None,
    ) -> None:
        self.refs.append(ref)
        self.call_ids.append(call_id or None)
        text, day = _start(start, line)
        self.starts.append(text)
        self.days.append(day)
        self.lines.append(line)
        for name, cells in self.columns.items():
            value = None if other is None else other.get(name)
            if value is None or value == "":
                cells.append(None)
            else:  # few distinct values (queues, agents): one copy of each
                value = attr_text(value)
                cells.append(self._interned.setdefault(value, value))


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
            rows.columns = {n: [] for n in sorted(names - KNOWN_COLUMNS) if n}
            for row in reader:
                line = reader.line_num
                ref = _ref(row.get("call_ref"), row.get("call_ref_hex"), line, legacy)
                if ref is None:
                    rows.skipped += 1
                    continue
                rows.add(line, ref, row.get("call_id"), row.get("start_time"), row)
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
    rows.columns = {n: [] for n in sorted(names - KNOWN_COLUMNS) if n}
    other = {n: col(n) for n in rows.columns}
    for k, (text, hexed, cid, start) in enumerate(
        zip(col("call_ref"), col("call_ref_hex"), col("call_id"), col("start_time"), strict=True)
    ):
        ref = _ref(text, hexed, k + 1, legacy)
        if ref is None:
            rows.skipped += 1
            continue
        cells = {n: v[k] for n, v in other.items()}
        rows.add(k + 1, ref, None if cid is None else str(cid), start, cells)
    return rows


def check_cdr(
    rep: AuditReport,
    d: Decisions,
    cdr: CdrRows,
    policies: dict[bytes, Any] | None = None,
    is_first: npt.NDArray[np.bool_] | None = None,
) -> None:
    """The ``cdr`` check (the module docstring). ``policies`` (the logged policy versions, by
    version id) say which columns are call attributes; ``is_first`` marks the first decision
    of each call, whose attributes are compared (all decisions without it)."""
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

    # 4. The carrier's attribute columns against what the calls' first decisions logged.
    firsts = np.ones(rows.size, dtype=bool) if is_first is None else is_first[rows]
    compared = _check_attributes(rep, d, cdr, refs, rows[firsts], ref_of[firsts], rows_of, policies)

    rep.checked["cdr"] = {
        "carrier_calls": len(refs),
        "carrier_calls_with_a_decision": int(np.count_nonzero(decided)),
        "decisions_matched": int(rows.size),
        "carrier_call_ids": len({c for c in cdr.call_ids if c is not None}),
        "rerolls": rerolls,
        "start_times_checked": int(rows.size) - undated,
        "started_outside_the_epoch": outside,
    }
    if compared:
        rep.checked["cdr"]["attribute_values_compared"] = compared
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


def _check_attributes(
    rep: AuditReport,
    d: Decisions,
    cdr: CdrRows,
    refs: list[str | bytes],
    rows: I64,
    ref_of: I64,
    rows_of: list[list[int]],
    policies: dict[bytes, Any] | None,
) -> int:
    """Each carrier column named like a call attribute of the decisions' policies (one their
    rules match on, or the agent attribute) against the value the decision logged; returns
    the number of values compared. A cell left empty is not compared; a value the carrier
    gives and the decision does not is a finding."""
    if not policies or not cdr.columns or not rows.size:
        return 0
    # Per policy version (a code of d.versions): its agent attribute and rule attributes.
    agent_of: dict[int, str] = {}
    rule_attrs: dict[int, frozenset[str]] = {}
    for v, version_id in enumerate(d.versions):
        pol = policies.get(version_id)
        if pol is not None:
            agent_of[v] = pol.agent_attribute
            rule_attrs[v] = frozenset(pol.rule_attributes)
    named = set(agent_of.values()).union(*rule_attrs.values())
    wanted = sorted(n for n in cdr.columns if n in named)
    if not wanted:
        return 0
    texts: dict[str, int] = {}  # every value met, coded

    def code(value: str | None) -> int:
        return _NO_VALUE if value is None else texts.setdefault(value, len(texts))

    parsed = [parse_attributes(t) for t in d.attribute_sets]
    version, attrs = d.version[rows].astype(np.int64), d.attributes[rows]
    # the distinct (policy version, attributes) of the decisions: each looked at once
    width = len(d.attribute_sets) + 1
    pairs, pair_of = np.unique(version * width + attrs + 1, return_inverse=True)
    pair_of = pair_of.ravel()
    agents = np.asarray([code(a) for a in d.agents] + [_NO_VALUE], dtype=np.int64)
    # Where a decision names no agent, the carrier's agent is compared only under a capped rule
    # (leaving the agent out takes the call out of the cap): elsewhere the agent may well be
    # unknown when the call is decided, and changes nothing.
    rule_width = max(1, len(d.rules))
    rule_pairs, rule_pair_of = np.unique(version * rule_width + d.rule[rows], return_inverse=True)
    capped = np.asarray(
        [_capped(policies, d, *divmod(p, rule_width)) for p in rule_pairs.tolist()] or [False],
        dtype=bool,
    )[rule_pair_of.ravel()]
    agent_counts = (d.agent[rows] >= 0) | capped
    items: list[tuple[str, dict[str, Any]]] = []
    compared = without = 0
    # the reference of each row of the call records
    ref_of_row = np.empty(len(cdr.refs), dtype=np.int64)
    for u, ks in enumerate(rows_of):
        ref_of_row[ks] = u
    versions = range(len(d.versions))
    for name in wanted:
        # The carrier's value of each reference: none, one, or several (_MANY_VALUES).
        cells = np.asarray([code(c) for c in cdr.columns[name]], dtype=np.int64)
        given = cells >= 0
        low = np.full(len(rows_of), len(texts), dtype=np.int64)
        high = np.full(len(rows_of), _NO_VALUE, dtype=np.int64)
        np.minimum.at(low, ref_of_row[given], cells[given])
        np.maximum.at(high, ref_of_row[given], cells[given])
        carrier = np.where(high < 0, _NO_VALUE, np.where(low == high, high, _MANY_VALUES))
        # The decisions' values: the agent field for the agent attribute, else the attributes.
        as_agent = np.asarray([agent_of.get(v) == name for v in versions] or [False])[version]
        # an agent that a rule matches on changes the rule: compared even where none is logged
        matched_on = np.asarray([name in rule_attrs.get(v, ()) for v in versions] or [False])
        compared_agent = as_agent & (agent_counts | matched_on[version])
        logged = np.full(rows.size, _NOT_COMPARED, dtype=np.int64)
        logged[compared_agent] = agents[d.agent[rows[compared_agent]]]
        values = np.full(pairs.size, _NOT_COMPARED, dtype=np.int64)
        for k, p in enumerate(pairs.tolist()):
            v, a = divmod(p, width)
            if a == 0 or name not in rule_attrs.get(v, ()) or agent_of.get(v) == name:
                continue  # no attributes logged, or not an attribute of the decision's rules
            got = parsed[a - 1]
            if got is not None:  # unreadable: already a finding of the decisions check
                values[k] = code(got.get(name))
        logged[~as_agent] = values[pair_of[~as_agent]]
        want = carrier[ref_of]
        on = (logged != _NOT_COMPARED) & (want != _NO_VALUE)
        without += int(np.count_nonzero((want != _NO_VALUE) & (attrs < 0) & ~as_agent))
        compared += int(np.count_nonzero(on))
        bad = on & (logged != want)
        column = cdr.columns[name]
        text_of = [*texts, None]  # codes are given in order; -1 (none) is the last
        for j in np.flatnonzero(on & (want == _MANY_VALUES)).tolist():  # any of them will do
            bad[j] = text_of[int(logged[j])] not in {column[k] for k in rows_of[ref_of[j]]}
        for j in np.flatnonzero(bad).tolist():
            u, i = int(ref_of[j]), int(rows[j])
            ks = [k for k in rows_of[u] if column[k] is not None]
            carried = sorted({c for k in ks if (c := column[k]) is not None})
            evidence: dict[str, Any] = {
                "attribute": name,
                "logged": text_of[int(logged[j])],
                "carrier": carried[0] if len(carried) == 1 else carried,
                "rule": d.rules[int(d.rule[i])],
                "cdr_row": [cdr.lines[k] for k in ks] if len(ks) > 1 else cdr.lines[ks[0]],
            }
            if cdr.call_ids[ks[0]] is not None:
                evidence["call_id"] = cdr.call_ids[ks[0]]
            items.append(
                (
                    f"the carrier's call records give another {name!r} than the decision logged",
                    {
                        "index": int(d.index[i]),
                        "call_ref": ref_text(refs[u]),
                        "epoch_id": d.epochs[int(d.epoch[i])],
                        "evidence": evidence,
                    },
                )
            )
    items.sort(key=lambda item: int(item[1]["index"]))
    rep.add_listed("cdr", items, "decisions whose attributes differ from the call records")
    if without:
        rep.notes.append(
            f"{without:,} carrier attribute values were not compared: their decisions were "
            "logged before decisions logged their attributes"
        )
    return compared


def _capped(policies: dict[bytes, Any], d: Decisions, version: int, rule: int) -> bool:
    """Whether the rule a decision names has a per-agent cap in its policy version."""
    pol = policies.get(d.versions[version])
    try:
        return pol is not None and bool(pol.rule_named(d.rules[rule]).has_cap)
    except KeyError:
        return False
