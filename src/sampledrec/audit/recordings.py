"""The ``recordings`` check: every recording, as the log tells it, against the decisions, the
files and the keys; the catalog only where the log cannot say (wrapped keys; the members of
holds logged before ``hold`` entries named them).

From the log:

- every ``recording_opened`` has an earlier positive (``sampled``) decision for its call
  reference; the decision it was made under is the one whose rule and policy version it names
  and whose time plus that rule's retention (in that logged policy version) is its logged
  ``expires_at``; its epoch is that decision's epoch;
- at most one recording per decided call (epoch and reference), aborted ones included: the
  library opens one recording per decision;
- no recording of a call for which an ``objection`` decision is logged;
- every recording with a ``recording_sealed`` entry and no tombstone (``recording_aborted``,
  ``expired``, ``erasure`` with outcome ``erased``) has its file, whose SHA-256 (streamed from
  the store's blob store, read-only) is the logged ``ciphertext_sha256``; a recording opened
  in the log with no file and no tombstone disappeared without one;
- a tombstoned recording has no file left, and none of the wrapped keys the catalog still
  holds for it (its own, its holds') unwraps;
- a recording past its logged expiry has a tombstone, unless a hold keeps it: a hold that the
  log records as placed, naming the recording (its ``recording_ids``), not released, and
  active at the audit's time by its logged ``until``. A hold logged before ``hold`` entries
  named their recordings (no ``recording_ids``) keeps today's rule, with a note: its members
  and end are the catalog's;
- every bucket or hold key that a ``key_destroyed`` entry names is absent from the key store
  (``KeyStore.has_bucket``): a destroyed key restored from a copy is a finding;
- no file in the blob store that no ``recording_opened`` names.

And the catalog against the log: a catalog row without ``recording_opened`` (except an aborted
one: a recorder that crashed before its entry was durable), another call reference, another
sealed expiry, an effective expiry extended without a logged hold that names it (or, for a
hold logged without names, that has it among its catalog members), a catalog hold member that
its logged ``hold`` entry does not name, a hold with more members than the log counted,
``expired``/``erased`` without a tombstone.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..errors import SampledrecError
from ..log.columns import Decisions, RefMatcher, ref_text
from ..log.format import (
    T_ERASURE,
    T_EXPIRED,
    T_HOLD,
    T_KEY_DESTROYED,
    T_RECORDING_ABORTED,
    T_RECORDING_OPENED,
    T_RECORDING_SEALED,
    Entry,
    from_micros,
    parse_hold_recording_ids,
    to_micros,
)
from ..retention.sweep import ACCESS_RETENTION_MONTHS, CALLS_RETENTION_MONTHS, HELD_UNTIL
from ..sampling.record import REASONS
from ..vault.recorder import blob_name, bucket_of
from .evidence import CatalogView, Evidence, Files
from .findings import AuditReport

__all__ = [
    "JOINED_TYPES",
    "OtherNodes",
    "check_recordings",
    "kept_until_month",
    "month_of_kid",
]

_SAMPLED: Final = REASONS.index("sampled")
_OBJECTION: Final = REASONS.index("objection")
_CHUNK: Final = 1 << 20


def month_of_kid(kid: str | None) -> int | None:
    """The month index (year x 12 + month - 1) of a sealing key id ``calls/YYYY-MM``."""
    if kid is None:
        return None
    _, _, ym = kid.partition("/")
    if len(ym) != 7 or ym[4] != "-" or not (ym[:4].isdigit() and ym[5:].isdigit()):
        return None
    month = int(ym[5:])
    return int(ym[:4]) * 12 + month - 1 if 1 <= month <= 12 else None


def kept_until_month(month: int, *, calls: bool = True) -> int:
    """The month index on whose first day the log's details sealed in ``month`` may be
    destroyed (retention.sweep: call references :data:`CALLS_RETENTION_MONTHS` months after
    their month, access details ``ACCESS_RETENTION_MONTHS``)."""
    keep = CALLS_RETENTION_MONTHS if calls else ACCESS_RETENTION_MONTHS
    return month + keep + 1


def _month(moment: datetime) -> int:
    return moment.year * 12 + moment.month - 1


MAX_OPEN_DELAY_US: Final = 24 * 3600 * 1_000_000  # a recording opens within a day of its decision


def _in_period(time_us: int, period: tuple[str, str]) -> bool:
    """Whether a time's UTC day is in a kit's period (first and last day included)."""
    try:
        day = from_micros(time_us).date().isoformat()
    except (OverflowError, ValueError, OSError):
        return False
    return period[0] <= day <= period[1]


def _month_text(month: int) -> str:
    return f"{month // 12:04d}-{month % 12 + 1:02d}-01"


@dataclass
class _Logged:
    """One recording as the log tells it."""

    rid: str
    index: int
    time_us: int
    bucket: str | None
    expires_at: int | None
    rule: str | None
    version: bytes | None
    ref: str | None
    kid: str | None
    ref_sealed: bool
    sha256: bytes | None = None
    sealed_at: int | None = None
    tomb: tuple[str, int] | None = None  # (aborted | expired | erased, entry index)
    tomb_node: str | None = None  # the node whose log has the tombstone, if another's
    call: int = -1  # the decision row of its call's first decision, once matched
    file: str | None = None


@dataclass(frozen=True)
class OtherNodes:
    """What the other nodes' logs of a deployment say about recordings, for one node's
    ``recordings`` check (:mod:`sampledrec.audit.nodes`): a sweep, an erasure, a hold or a
    recovery runs on one node and logs there, about recordings that other nodes opened.

    ``entries``: the other nodes' tombstones (``recording_aborted``, ``expired``,
    ``erasure``), ``recording_sealed`` and ``hold`` entries, each with its node's name, each
    node's in log order. ``opened``: every recording that some node's log opened, by id, with
    that node's name."""

    entries: Sequence[tuple[str, Entry]] = ()
    opened: Mapping[str, str] = field(default_factory=dict)


#: The entry types of other nodes' logs that a node's ``recordings`` check joins.
JOINED_TYPES: Final = frozenset(
    {T_RECORDING_ABORTED, T_EXPIRED, T_ERASURE, T_RECORDING_SEALED, T_HOLD}
)


def _in_time_order(
    own: Sequence[Entry], elsewhere: OtherNodes | None
) -> Iterator[tuple[Entry, str | None]]:
    """This log's entries (node None) in log order, the other nodes' merged in by time."""
    if elsewhere is None or not elsewhere.entries:
        yield from ((e, None) for e in own)
        return
    per_node: dict[str, list[tuple[Entry, str | None]]] = defaultdict(list)
    for node, e in elsewhere.entries:
        if e.type in JOINED_TYPES:
            per_node[node].append((e, node))
    streams: list[list[tuple[Entry, str | None]]] = [[(e, None) for e in own]]
    streams.extend(per_node.values())
    yield from heapq.merge(*streams, key=_entry_time)


def _entry_time(pair: tuple[Entry, str | None]) -> int:
    return pair[0].time_us


def _ignored(*args: Any, **kwargs: Any) -> None:
    """What another node's entry would report: its own node's audit does."""


def _check_release(
    rep: AuditReport, facts: _LogFacts, hold_id: str, index: int, logged: Any
) -> None:
    """A ``released`` entry names every recording the hold kept: those its ``placed`` entry
    named (the catalog's members when it was released, which only placing adds)."""
    if hold_id not in facts.holds_placed:
        rep.add(
            "recordings",
            f"hold {hold_id} is released in the log, which never recorded it placed",
            index=index,
            evidence={"hold_id": hold_id},
        )
        return
    placed = facts.hold_names.get(hold_id)
    released = parse_hold_recording_ids(logged)
    if placed is None or released is None:
        return  # logged before entries named recordings: counted only
    if set(released) != placed:
        rep.add(
            "recordings",
            f"hold {hold_id}'s released entry names other recordings than its placed entry",
            index=index,
            evidence={
                "hold_id": hold_id,
                "placed_index": facts.holds_placed[hold_id][0],
                "not_placed": sorted(set(released) - placed)[:20],
                "not_released": sorted(placed - set(released))[:20],
            },
        )


@dataclass
class _LogFacts:
    opened: dict[str, _Logged] = field(default_factory=dict)
    destroyed: list[tuple[int, str]] = field(default_factory=list)  # (index, key name)
    holds_placed: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (index, n)
    holds_released: dict[str, int] = field(default_factory=dict)
    # id -> the recordings its placed entry names; None: logged before entries named them
    hold_names: dict[str, frozenset[str] | None] = field(default_factory=dict)
    hold_until: dict[str, int | None] = field(default_factory=dict)  # id -> logged until
    hold_placed_at: dict[str, int] = field(default_factory=dict)  # id -> its placed entry's time

    def named_holds(self, rid: str) -> list[str]:
        """The holds the log records as placed, naming ``rid``, and not released."""
        return [
            h
            for h, names in self.hold_names.items()
            if names is not None and rid in names and h not in self.holds_released
        ]


def _read_facts(
    rep: AuditReport, others: Sequence[Entry], elsewhere: OtherNodes | None = None
) -> _LogFacts:
    facts = _LogFacts()
    opened = facts.opened
    opened_elsewhere = {} if elsewhere is None else elsewhere.opened
    for e, node in _in_time_order(others, elsewhere):
        fl = e.fields
        add = rep.add if node is None else _ignored
        if e.type == T_RECORDING_OPENED:
            rid = str(fl.get("recording_id"))
            if rid in opened:
                add(
                    "recordings",
                    f"the recording was opened twice in the log (first at entry "
                    f"{opened[rid].index})",
                    index=e.index,
                    recording_id=rid,
                )
                continue
            ref = fl.get("call_ref")
            version = fl.get("policy_version")
            expires = fl.get("expires_at")
            opened[rid] = _Logged(
                rid=rid,
                index=e.index,
                time_us=e.time_us,
                bucket=fl.get("bucket") if isinstance(fl.get("bucket"), str) else None,
                expires_at=expires if isinstance(expires, int) else None,
                rule=fl.get("rule") if isinstance(fl.get("rule"), str) else None,
                version=version if isinstance(version, bytes) else None,
                ref=ref_text(ref) if isinstance(ref, str | bytes) and ref else None,
                kid=e.kid,
                ref_sealed=e.sealed,
            )
        elif e.type == T_RECORDING_SEALED:
            rid = str(fl.get("recording_id"))
            rec = opened.get(rid)
            if rec is None:
                if rid not in opened_elsewhere:  # else: a recovery by another node, its own
                    add(
                        "recordings",
                        "a recording_sealed entry for a recording the log never opened",
                        index=e.index,
                        recording_id=rid,
                    )
                continue
            if node is not None and rec.sealed_at is not None:
                continue  # sealed here; this log's entry is the one to check
            digest = fl.get("ciphertext_sha256")
            rec.sha256 = digest if isinstance(digest, bytes) else b""
            rec.sealed_at = e.index
        elif e.type in (T_RECORDING_ABORTED, T_EXPIRED, T_ERASURE):
            if e.type == T_ERASURE and fl.get("outcome") != "erased":
                continue  # deferred (a hold keeps it): no tombstone
            kind = {T_RECORDING_ABORTED: "aborted", T_EXPIRED: "expired", T_ERASURE: "erased"}
            rid = str(fl.get("recording_id"))
            rec = opened.get(rid)
            if rec is None:
                # aborted: a crash before the opened entry; opened elsewhere: a sweep, an
                # erasure or a recovery that ran on this node, checked by the opener's audit.
                if e.type != T_RECORDING_ABORTED and rid not in opened_elsewhere:
                    add(
                        "recordings",
                        f"an {kind[e.type]} tombstone for a recording the log never opened",
                        index=e.index,
                        recording_id=rid,
                    )
                continue
            if rec.tomb is None:
                rec.tomb = (kind[e.type], e.index)
                rec.tomb_node = node
                if (
                    e.type == T_EXPIRED
                    and rec.expires_at is not None
                    and e.time_us < rec.expires_at
                ):
                    by = "" if node is None else f" (logged by node {node})"
                    rep.add(
                        "recordings",
                        f"an expired tombstone{by} dated before the recording's logged expiry: "
                        "it was destroyed early (an early destruction is an erasure, logged as "
                        "one)",
                        index=e.index,
                        recording_id=rid,
                        evidence={
                            "expired_at": _iso(e.time_us),
                            "expires_at": _iso(rec.expires_at),
                            "opened_index": rec.index,
                            **({} if node is None else {"tombstone_node": node}),
                        },
                    )
        elif e.type == T_KEY_DESTROYED:
            facts.destroyed.append((e.index, str(fl.get("key"))))
        elif e.type == T_HOLD:
            hold_id = str(fl.get("hold_id"))
            if fl.get("action") == "placed":
                if hold_id in facts.holds_placed:
                    continue
                count = fl.get("recordings")
                facts.holds_placed[hold_id] = (e.index, count if isinstance(count, int) else 0)
                facts.hold_placed_at[hold_id] = e.time_us
                until = fl.get("until")
                facts.hold_until[hold_id] = until if isinstance(until, int) else None
                names = parse_hold_recording_ids(fl.get("recording_ids"))
                if names is None and "recording_ids" in fl:
                    add(
                        "recordings",
                        "the hold entry's recording_ids is not a JSON list of strings: it "
                        "holds nothing",
                        index=e.index,
                        evidence={"hold_id": hold_id},
                    )
                    names = []
                facts.hold_names[hold_id] = None if names is None else frozenset(names)
            elif fl.get("action") == "released":
                if hold_id in facts.holds_released:
                    continue
                facts.holds_released[hold_id] = e.index
                if node is None:
                    _check_release(rep, facts, hold_id, e.index, fl.get("recording_ids"))
    return facts


def check_recordings(
    rep: AuditReport,
    ev: Evidence,
    d: Decisions,
    firsts: npt.NDArray[np.int64],
    others: Sequence[Entry],
    policies: Mapping[bytes, Any],
    at: datetime,
    *,
    elsewhere: OtherNodes | None = None,
) -> None:
    """Run the ``recordings`` check (module docstring). ``elsewhere``: for one node's log of a
    deployment, what the other nodes' logs say (:class:`OtherNodes`)."""
    facts = _read_facts(rep, others, elsewhere)
    cat = ev.catalog()
    blobs, keys = ev.files, ev.keys
    files = blobs.names()
    checked: dict[str, int] = defaultdict(int)
    rep.checked["recordings"] = checked
    opened = facts.opened
    if not opened and not cat.rows and not files and not facts.destroyed:
        rep.ran.add("recordings")
        rep.skip("recordings", "no recording in the log, the catalog or the blob store")
        return
    rep.ran.add("recordings")
    now_us = to_micros(at)
    at_month = _month(at)

    # The decisions of every recorded call reference (log or catalog), matched exactly.
    wanted = sorted(
        {r.ref for r in opened.values() if r.ref is not None}
        | {row.call_ref for rid, row in cat.rows.items() if rid not in opened and row.call_ref}
    )
    by_ref: dict[str, list[int]] = defaultdict(list)
    with_ref = np.flatnonzero(d.ref_kind > 0)
    matched = RefMatcher(d, wanted).match(with_ref)
    for j in np.flatnonzero(matched >= 0).tolist():
        by_ref[wanted[int(matched[j])]].append(int(with_ref[j]))

    def reason(row: int) -> str:
        code = int(d.reason[row])
        return REASONS[code] if 0 <= code < len(REASONS) else f"#{code}"

    def unwraps(rid: str, bucket: str | None, expires: Sequence[int | None]) -> bool:
        return keys.readable(rid, bucket, expires, cat)

    def held(rid: str) -> bool:
        # A hold whose entry names its recordings: the log alone (names, logged until).
        rec = opened.get(rid)
        for hold_id in facts.named_holds(rid):
            until = facts.hold_until.get(hold_id)
            placed_at = facts.hold_placed_at.get(hold_id, 0)
            if rec is not None and rec.expires_at is not None and placed_at >= rec.expires_at:
                continue  # placed after the recording had expired: it cannot bring it back
            if until is None or until > now_us:
                return True
        # A hold logged before entries named them: its members and end from the catalog.
        return any(
            h.active(now_us)
            and h.hold_id in facts.holds_placed
            and facts.hold_names.get(h.hold_id) is None
            and h.hold_id not in facts.holds_released
            for h, _ in cat.members.get(rid, [])
        )

    legacy = sorted(h for h, names in facts.hold_names.items() if names is None)
    if legacy:
        rep.notes.append(
            f"{len(legacy)} hold(s) logged before hold entries named their recordings "
            f"({', '.join(legacy[:5])}{', ...' if len(legacy) > 5 else ''}): which recordings "
            "they hold is taken from the catalog"
        )

    per_call: dict[int, list[str]] = defaultdict(list)
    for rec in opened.values():
        checked["opened"] += 1
        where = {"index": rec.index, "recording_id": rec.rid}
        # -- the call and its decision --------------------------------------------------------
        if rec.ref is None:
            if not rec.ref_sealed:
                rep.add("recordings", "recording_opened names no call reference", **where)
            else:
                month = month_of_kid(rec.kid)
                if ev.period is not None and not _in_period(rec.time_us, ev.period):
                    checked["outside_period"] += 1
                elif month is not None and at_month < kept_until_month(month):
                    rep.add(
                        "recordings",
                        f"the recording's call reference is unreadable (sealed under {rec.kid}) "
                        "while it should still be kept",
                        evidence={"kept_until": _month_text(kept_until_month(month))},
                        **where,
                    )
                else:
                    checked["call_references_erased"] += 1
        else:
            rows = [r for r in by_ref.get(rec.ref, []) if firsts[r] == r]  # each call's first
            _match_decision(rep, d, rec, rows, policies, reason, where)
            if rec.call >= 0:
                per_call[int(firsts[rec.call]) if firsts[rec.call] >= 0 else rec.call].append(
                    rec.rid
                )
            if any(int(d.reason[row]) == _OBJECTION for row in by_ref.get(rec.ref, [])):
                rep.add(
                    "recordings",
                    "a recording of a caller who objected",
                    call_ref=rec.ref,
                    **where,
                )
        # -- its file, its keys, its expiry ---------------------------------------------------
        _check_state(rep, rec, blobs, files, unwraps, held, now_us, checked, where)

    for call, rids in per_call.items():
        if len(rids) > 1:
            rep.add(
                "recordings",
                f"{len(rids)} recordings of one decided call (at most one per call)",
                index=int(d.index[call]),
                call_ref=d.ref_text(call),
                epoch_id=d.epochs[int(d.epoch[call])],
                evidence={"recordings": rids},
            )
    checked["calls_recorded"] = len(per_call)

    # -- destroyed keys really gone ---------------------------------------------------------------
    for index, key in facts.destroyed:
        if not key.startswith(("bucket-", "hold-")):
            continue
        checked["destroyed_keys"] += 1
        try:
            present = keys.has_key(key)
        except (SampledrecError, ValueError) as exc:
            rep.add("recordings", f"cannot tell whether key {key!r} exists: {exc}", index=index)
            continue
        if present:
            rep.add(
                "recordings",
                f"the log says key {key} was destroyed, but the key store still holds it "
                "(restored from a copy?): what it wrapped is readable again",
                index=index,
                evidence={"key": key},
            )

    # -- files the log does not know --------------------------------------------------------------
    known = {rec.file for rec in opened.values() if rec.file is not None}
    for name in sorted(files - known):
        rep.add(
            "recordings",
            "a file in the blob store that no recording_opened entry names",
            evidence={"file": name},
        )

    _check_catalog(rep, cat, facts, d, by_ref, reason, checked)


def _match_decision(
    rep: AuditReport,
    d: Decisions,
    rec: _Logged,
    rows: list[int],
    policies: Mapping[bytes, Any],
    reason: Any,
    where: dict[str, Any],
) -> None:
    """Find the positive decision ``rec`` was made under; findings when there is none."""
    earlier = [row for row in rows if int(d.index[row]) < rec.index]
    positive = [row for row in earlier if int(d.reason[row]) == _SAMPLED]
    if not positive:
        rep.add(
            "recordings",
            "no positive decision earlier in the log for the recorded call",
            call_ref=rec.ref,
            evidence={"decisions": {str(int(d.index[r])): reason(r) for r in rows[:20]}},
            **where,
        )
        return
    same = [
        row
        for row in positive
        if d.rules[int(d.rule[row])] == rec.rule and d.versions[int(d.version[row])] == rec.version
    ]
    if not same:
        last = positive[-1]
        rep.add(
            "recordings",
            "the recording names another rule or policy version than its call's positive decision",
            call_ref=rec.ref,
            evidence={
                "recording_rule": rec.rule,
                "recording_policy_version": None if rec.version is None else rec.version.hex(),
                "decision_index": int(d.index[last]),
                "decision_rule": d.rules[int(d.rule[last])],
                "decision_policy_version": d.versions[int(d.version[last])].hex(),
            },
            **where,
        )
        return
    policy = policies.get(rec.version or b"")
    rule = None
    if policy is not None and rec.rule is not None:
        try:
            rule = policy.rule_named(rec.rule)
        except KeyError:
            rule = None
    if rule is None:
        rep.add(
            "recordings",
            f"rule {rec.rule!r} is not in the logged policy version the recording names",
            call_ref=rec.ref,
            **where,
        )
        return
    expected: dict[int, int | None] = {}
    for row in same:
        try:
            expected[row] = to_micros(rule.retention.expires_at(from_micros(int(d.time_us[row]))))
        except (OverflowError, ValueError, OSError):
            expected[row] = None  # a time no calendar has: the time check reports it
    chosen = [row for row in same if expected[row] == rec.expires_at]
    if not chosen:
        last = same[-1]
        rep.add(
            "recordings",
            f"the recording's expiry is not its decision's time plus the retention of rule "
            f"{rec.rule!r} ({rule.retention})",
            call_ref=rec.ref,
            evidence={
                "logged_expires_at": None if rec.expires_at is None else _iso(rec.expires_at),
                "expected_expires_at": _iso(expected[last]),
                "decision_index": int(d.index[last]),
                "decision_time": _iso(int(d.time_us[last])),
            },
            **where,
        )
        rec.call = last
        return
    rec.call = chosen[-1]
    late = rec.time_us - int(d.time_us[rec.call])
    if late > MAX_OPEN_DELAY_US:
        rep.add(
            "recordings",
            "the recording was opened more than a day after its call's decision: a recording "
            "is opened when the call is (another call's audio under an old selection?)",
            call_ref=rec.ref,
            evidence={
                "decision_index": int(d.index[rec.call]),
                "decision_time": _iso(int(d.time_us[rec.call])),
                "opened_at": _iso(rec.time_us),
            },
            **where,
        )
    assert rec.expires_at is not None
    try:
        bucket = bucket_of(rec.expires_at)
    except (OverflowError, ValueError, OSError):
        bucket = None
    if rec.bucket != bucket:
        rep.add(
            "recordings",
            "the recording's bucket is not the UTC day of its expiry",
            evidence={"bucket": rec.bucket, "expected": bucket},
            **where,
        )


def _check_state(
    rep: AuditReport,
    rec: _Logged,
    blobs: Files,
    files: set[str],
    unwraps: Any,
    held: Any,
    now_us: int,
    checked: dict[str, int],
    where: dict[str, Any],
) -> None:
    if rec.bucket is None:
        rep.add("recordings", "recording_opened names no bucket", **where)
        return
    try:
        rec.file = blob_name(rec.bucket, rec.rid)
        present = blobs.exists(rec.file)
    except (SampledrecError, ValueError) as exc:
        rep.add("recordings", f"the logged bucket and id do not name a file: {exc}", **where)
        return
    expires = rec.expires_at
    if rec.tomb is not None:
        kind, tomb_index = rec.tomb
        checked["tombstones"] += 1
        if rec.tomb_node is not None:
            checked["tombstones_on_other_nodes"] += 1
        ev = {"tombstone": kind, "tombstone_index": tomb_index, "file": rec.file}
        if rec.tomb_node is not None:
            ev["tombstone_node"] = rec.tomb_node
        if present:
            rep.add(
                "recordings",
                f"the log says the recording was {kind} but its file is still there",
                evidence=ev,
                **where,
            )
        if unwraps(rec.rid, rec.bucket, [expires]):
            rep.add(
                "recordings",
                f"the log says the recording was {kind} but a wrapped key the catalog holds "
                "for it still unwraps",
                evidence=ev,
                **where,
            )
        return
    if rec.sealed_at is not None:
        checked["sealed"] += 1
        expected = (rec.sha256 or b"").hex()
        if not present:
            rep.add(
                "recordings",
                "the recording's file is missing, and the log has no tombstone for it (expired, "
                "erased or aborted): it disappeared without one",
                evidence={"file": rec.file, "expected_sha256": expected, "actual": "missing"},
                **where,
            )
        else:
            try:
                actual, size = blobs.sha256(rec.file)
            except OSError as exc:
                rep.add(
                    "recordings",
                    f"the recording's file cannot be read: {exc}",
                    evidence={"file": rec.file, "expected_sha256": expected},
                    **where,
                )
            else:
                checked["files_hashed" if blobs.hashed else "hashes_declared"] += 1
                checked["bytes_hashed" if blobs.hashed else "bytes_declared"] += size
                if actual != expected:
                    rep.add(
                        "recordings",
                        "the recording's file is not the one sealed: its SHA-256 is not the "
                        "ciphertext_sha256 of its recording_sealed entry",
                        evidence={
                            "file": rec.file,
                            "expected_sha256": expected,
                            "actual_sha256": actual,
                            "bytes": size,
                            "sealed_index": rec.sealed_at,
                        },
                        **where,
                    )
    elif not present:
        rep.add(
            "recordings",
            "opened in the log, never sealed, no file and no tombstone: it disappeared without "
            "one (or its recorder crashed and 'recordings recover' was not run)",
            evidence={"file": rec.file},
            **where,
        )
    else:
        checked["not_sealed_yet"] += 1
    if expires is not None and expires <= now_us:
        if held(rec.rid):
            checked["held_past_expiry"] += 1
            return
        readable = present and bool(unwraps(rec.rid, rec.bucket, [expires]))
        ev = {
            "expires_at": _iso(expires),
            "file_present": present,
            "key_unwraps": readable,
        }
        rep.add(
            "recordings",
            "kept past its expiry: no expired or erasure tombstone in the log, and no logged, "
            "active hold keeps it",
            evidence=ev,
            **where,
        )
        if readable:
            rep.add(
                "recordings",
                "still readable after its expiry (file present and key unwraps)",
                evidence=ev,
                **where,
            )


def _check_catalog(
    rep: AuditReport,
    cat: CatalogView,
    facts: _LogFacts,
    d: Decisions,
    by_ref: dict[str, list[int]],
    reason: Any,
    checked: dict[str, int],
) -> None:
    opened = facts.opened
    for rid, row in cat.rows.items():
        checked["catalog_rows"] += 1
        rec = opened.get(rid)
        if rec is None:
            if row.status == "aborted":
                continue  # a recorder that crashed before its opened entry was durable
            rep.add(
                "recordings",
                "the recording has no recording_opened entry in the log",
                recording_id=rid,
                call_ref=row.call_ref,
            )
            if row.call_ref is not None:
                rows = by_ref.get(row.call_ref, [])
                if not any(int(d.reason[r]) == _SAMPLED for r in rows):
                    rep.add(
                        "recordings",
                        "no positive decision earlier in the log for the recorded call",
                        recording_id=rid,
                        call_ref=row.call_ref,
                        evidence={"decisions": {str(int(d.index[r])): reason(r) for r in rows}},
                    )
                if any(int(d.reason[r]) == _OBJECTION for r in rows):
                    rep.add(
                        "recordings",
                        "a recording of a caller who objected",
                        recording_id=rid,
                        call_ref=row.call_ref,
                    )
            continue
        where = {"index": rec.index, "recording_id": rid}
        if row.call_ref is not None and rec.ref is not None and row.call_ref != rec.ref:
            rep.add(
                "recordings",
                "the catalog's call reference differs from the logged one",
                call_ref=row.call_ref,
                evidence={"logged": rec.ref},
                **where,
            )
        if rec.expires_at is not None and row.expires_at_sealed != rec.expires_at:
            rep.add(
                "recordings",
                "the catalog's sealed expiry differs from the logged expiry",
                evidence={
                    "catalog": _iso(row.expires_at_sealed),
                    "logged": _iso(rec.expires_at),
                },
                **where,
            )
        if rec.expires_at is not None and row.expires_at != rec.expires_at:
            holds = [h for h, _ in cat.members.get(rid, [])]
            logged = facts.named_holds(rid) + [
                h.hold_id
                for h in holds
                if h.hold_id in facts.holds_placed
                and facts.hold_names.get(h.hold_id) is None
                and h.hold_id not in facts.holds_released
            ]
            if row.expires_at != HELD_UNTIL or not logged:
                rep.add(
                    "recordings",
                    "the catalog extends the recording's expiry, and no hold the log records "
                    "names it",
                    evidence={
                        "catalog_expires_at": "held"
                        if row.expires_at == HELD_UNTIL
                        else _iso(row.expires_at),
                        "logged_expires_at": _iso(rec.expires_at),
                        "holds": [h.hold_id for h in holds],
                    },
                    **where,
                )
        if row.status in ("expired", "erased") and rec.tomb is None:
            rep.add("recordings", f"{row.status} without a tombstone in the log", **where)
        if rec.file is not None and row.file != rec.file:
            rep.add(
                "recordings",
                "the catalog names another file than the logged bucket and id give",
                evidence={"catalog": row.file, "logged": rec.file},
                **where,
            )
    per_hold: dict[str, int] = defaultdict(int)
    for rid, members in cat.members.items():
        for h, _ in members:
            per_hold[h.hold_id] += 1
            names = facts.hold_names.get(h.hold_id)
            if names is None:
                continue  # unlogged (reported below), or logged before entries named them
            checked["hold_members"] += 1
            if rid not in names:
                rep.add(
                    "recordings",
                    f"hold {h.hold_id} keeps recording {rid} in the catalog, but the log's hold "
                    "entry does not name it",
                    index=facts.holds_placed[h.hold_id][0],
                    recording_id=rid,
                    evidence={
                        "hold_id": h.hold_id,
                        "catalog_member": rid,
                        "logged_recordings": sorted(names)[:20],
                    },
                )
    for hold_id, count in per_hold.items():
        placed = facts.holds_placed.get(hold_id)
        checked["holds"] += 1
        if placed is None:
            rep.add(
                "recordings",
                f"hold {hold_id} in the catalog keeps {count} recordings, but the log never "
                "recorded it",
                evidence={"hold_id": hold_id},
            )
        elif count > placed[1]:
            rep.add(
                "recordings",
                f"hold {hold_id} keeps {count} recordings in the catalog, but the log recorded "
                f"{placed[1]} when it was placed",
                index=placed[0],
                evidence={"hold_id": hold_id, "catalog": count, "logged": placed[1]},
            )


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    try:
        return from_micros(us).isoformat()
    except (OverflowError, ValueError, OSError):
        return str(us)
