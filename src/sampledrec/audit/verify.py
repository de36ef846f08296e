"""The auditor's side: independent verification of a store against its log and revealed keys.

:func:`audit_verify` runs six checks, each PASS or FAIL with findings that carry their evidence
(the log entry index, the recording id, the call reference):

- ``log``: :func:`sampledrec.log.verify_log` (tree, signatures, checkpoints, an exported
  checkpoint when given); any finding fails the check;
- ``keys``: every revealed key matches its commitment and the commitment the log recorded;
- ``decisions``: every decision of a revealed epoch is recomputed (the draw with
  :func:`~sampledrec.sampling.draw_many`, the threshold from the policy version logged before
  it, the reason, the per-agent caps replayed in log order);
- ``recordings``: the catalog against the log (a positive, durable decision per recording, no
  recording of an objecting caller, nothing readable or kept past its expiry);
- ``cdr``: with the carrier's call records, completeness both ways;
- ``statistics``: declared vs realised rates per rule and per (rule, agent), exact
  Clopper-Pearson intervals and two-sided exact binomial tests with Holm's correction. A group
  fails when its Holm-adjusted p-value is below :data:`STAT_ALPHA` (0.001): a strict threshold,
  so that a correct store fails by chance about once in a thousand audits at most.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .._hazmat.cmac import draws_rows
from ..clock import SYSTEM_CLOCK
from ..errors import InvalidArgument, KeyDestroyed, SampledrecError
from ..log.columns import I64, Decisions, RefMatcher, call_firsts, counted_once, read_log, ref_text
from ..log.format import (
    T_ERASURE,
    T_EXPIRED,
    T_KEY_COMMIT,
    T_POLICY,
    T_RECORDING_OPENED,
    from_micros,
    to_micros,
)
from ..log.verify import CheckedReport
from ..sampling.caps import cap_periods
from ..sampling.keyed import MAX_CALL_REF_BYTES
from ..sampling.record import REASONS
from .stats import binom_cdf, binom_sf, binom_test, clopper_pearson, holm

__all__ = [
    "CHECKS",
    "STAT_ALPHA",
    "AuditFinding",
    "AuditReport",
    "GroupStats",
    "audit_verify",
    "binom_cdf",
    "binom_sf",
    "binom_test",
    "clopper_pearson",
    "holm",
]

CHECKS: Final = ("log", "keys", "decisions", "recordings", "cdr", "statistics")
STAT_ALPHA: Final = 0.001
MIN_GROUP: Final = 20
_SAMPLED, _NOT_SAMPLED, _OBJECTION, _CAP = range(4)
_TWO56: Final = 2**56


@dataclass
class AuditFinding:
    check: str
    message: str
    index: int | None = None
    recording_id: str | None = None
    call_ref: str | None = None
    epoch_id: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"check": self.check, "message": self.message}
        for k in ("index", "recording_id", "call_ref", "epoch_id"):
            v = getattr(self, k)
            if v is not None:
                doc[k] = v
        if self.evidence:
            doc["evidence"] = self.evidence
        return doc


@dataclass
class GroupStats:
    rule: str
    agent: str | None
    rate: float
    eligible: int
    selected: int
    low: float
    high: float
    p_value: float
    p_holm: float = 1.0

    @property
    def realised(self) -> float:
        return self.selected / self.eligible if self.eligible else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "agent": self.agent,
            "declared_rate": self.rate,
            "eligible": self.eligible,
            "selected": self.selected,
            "realised_rate": self.realised,
            "ci95": [self.low, self.high],
            "p_value": self.p_value,
            "p_holm": self.p_holm,
            "verdict": "FAIL" if self.p_holm < STAT_ALPHA else "PASS",
        }


@dataclass
class AuditReport(CheckedReport):
    store: str
    at: datetime
    simulated: bool = False
    findings: list[AuditFinding] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    groups: list[GroupStats] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def status(self, check: str) -> str:
        if self.failed(check):
            return "FAIL"
        return "PASS" if check in self.ran else "SKIPPED"

    def add(self, check: str, message: str, **kw: Any) -> None:
        self.findings.append(AuditFinding(check, message, **kw))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": "PASS" if self.ok else "FAIL",
            "store": self.store,
            "at": self.at.isoformat(),
            "simulated": self.simulated,
            "checks": {c: self.status(c) for c in CHECKS},
            "counts": dict(self.counts),
            "statistics": {"alpha_holm": STAT_ALPHA, "groups": [g.to_json() for g in self.groups]},
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
        }

    def to_text(self) -> str:
        lines = [f"audit of {self.store} at {self.at.isoformat()}"]
        if self.simulated:
            lines[0] += " [SIMULATED store]"
        for c in CHECKS:
            lines.append(f"  {c:<12} {self.status(c)}")
        for k, v in sorted(self.counts.items()):
            lines.append(f"  {k}: {v:,}")
        for f in self.findings:
            where = ", ".join(
                x
                for x in (
                    None if f.index is None else f"entry {f.index}",
                    None if f.recording_id is None else f"recording {f.recording_id}",
                    None if f.call_ref is None else f"call {f.call_ref}",
                    None if f.epoch_id is None else f"epoch {f.epoch_id}",
                )
                if x
            )
            lines.append(f"FAIL {f.check}: {f.message}" + (f" ({where})" if where else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append("AUDIT PASSED" if self.ok else "AUDIT FAILED")
        return "\n".join(lines)


# -- the audit -----------------------------------------------------------------------------------


def _read_cdr(path: Path) -> list[tuple[str, str]]:
    """``(call_ref, start_time)`` rows of a carrier's call records (CSV or Parquet)."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise InvalidArgument(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow); "
                "or give the call records as CSV"
            ) from None
        table = pq.read_table(path)
        names = set(table.column_names)
        if not {"call_ref", "start_time"} <= names:
            raise InvalidArgument(f"{path}: the columns call_ref and start_time are required")
        refs = [str(v) for v in table.column("call_ref").to_pylist()]
        starts = [str(v) for v in table.column("start_time").to_pylist()]
        return list(zip(refs, starts, strict=True))
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or ())
        if not {"call_ref", "start_time"} <= cols:
            raise InvalidArgument(
                f"{path}: a CSV with a header naming at least call_ref and start_time is needed"
            )
        return [(row["call_ref"], row["start_time"]) for row in reader if row.get("call_ref")]


def audit_verify(
    store_path: str | Path,
    revealed_keys_path: str | Path,
    *,
    checkpoint: str | Path | None = None,
    cdr: str | Path | None = None,
    keyring: Any | None = None,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> AuditReport:
    """Audit a store; raises :class:`StoreError` / :class:`InvalidArgument` when it cannot run.

    ``keyring`` opens the log's sealed call references (default: the store's own keyring);
    ``now`` is the audit time for expiry checks (default: the real clock).
    """
    from ..log.verify import verify_log
    from ..store import Store, read_revealed

    store = Store.open(store_path)
    at = now or SYSTEM_CLOCK.now()
    rep = AuditReport(store=str(store.path), at=at, simulated=store.simulated)
    try:
        revealed = read_revealed(revealed_keys_path)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"{revealed_keys_path}: not a revealed-keys file ({exc})") from None
    if cdr is not None:
        cdr_rows = _read_cdr(Path(cdr))

    # 1. log -----------------------------------------------------------------------------------
    logrep = verify_log(
        store.log_storage,
        checkpoint_file=Path(checkpoint) if checkpoint is not None else None,
        store_id=store.store_id,
        public_key=store.public_key,
        progress=progress,
    )
    # Then read it once: decisions as columns, the other entries decoded. (Reading it on another
    # thread while it is verified gained nothing on a 2-vCPU machine: measured.)
    contents = read_log(
        store.log_storage,
        keyring if keyring is not None else store.keyring,
        progress=progress,
    )
    rep.ran.add("log")
    rep.simulated = rep.simulated or logrep.simulated
    rep.counts["log_entries"] = logrep.size
    for f in logrep.findings:
        rep.add(
            "log",
            f"{f.check}: {f.message}",
            index=f.index,
            evidence=({"where": f.where} if f.where else {}) | (f.evidence or {}),
        )

    decisions = contents.decisions
    commits: dict[str, tuple[int, bytes]] = {}
    policies: dict[bytes, Any] = {}
    opened: dict[str, tuple[int, str | None]] = {}
    tombstones: dict[str, int] = {}
    from ..sampling.policy import Policy

    for e in contents.others:
        fl = e.fields
        if e.type == T_KEY_COMMIT:
            commits.setdefault(str(fl.get("epoch_id")), (e.index, bytes(fl["commitment"])))
        elif e.type == T_POLICY:
            version = bytes(fl.get("version", b""))
            try:
                pol = Policy.from_dict(json.loads(bytes(fl.get("canonical", b""))))
            except (SampledrecError, ValueError) as exc:
                rep.add("decisions", f"a logged policy cannot be read: {exc}", index=e.index)
                continue
            if pol.version != version.hex():
                rep.add(
                    "decisions",
                    "a logged policy does not rebuild to its version id",
                    index=e.index,
                    evidence={"logged": version.hex(), "rebuilt": pol.version},
                )
                continue
            policies.setdefault(version, pol)
        elif e.type == T_RECORDING_OPENED:
            ref = fl.get("call_ref")
            opened[str(fl.get("recording_id"))] = (
                e.index,
                ref_text(ref) if isinstance(ref, str | bytes) and not e.sealed else None,
            )
        elif e.type in (T_EXPIRED, T_ERASURE):
            if e.type == T_ERASURE and fl.get("outcome") not in (None, "erased"):
                continue
            tombstones.setdefault(str(fl.get("recording_id")), e.index)
    if contents.error is not None:
        rep.add("log", f"the log cannot be decoded: {contents.error}")
        rep.notes.append("the log could not be read to the end: later checks are incomplete")

    # 2. keys -----------------------------------------------------------------------------------
    rep.ran.add("keys")
    keys: dict[str, bytes] = {}
    for k in revealed:
        logged = commits.get(k.epoch_id)
        if not k.matches_commitment():
            rep.add(
                "keys",
                "the revealed key does not match its commitment",
                epoch_id=k.epoch_id,
                evidence={"commitment": k.commitment.hex()},
            )
        elif logged is None:
            rep.add("keys", "no commitment for this epoch in the log", epoch_id=k.epoch_id)
        elif logged[1] != k.commitment:
            rep.add(
                "keys",
                "the revealed key's commitment is not the one the log recorded",
                index=logged[0],
                epoch_id=k.epoch_id,
                evidence={"logged": logged[1].hex(), "revealed": k.commitment.hex()},
            )
        else:
            keys[k.epoch_id] = k.key
    rep.counts["keys_revealed"] = len(revealed)
    rep.counts["keys_verified"] = len(keys)

    # 3. decisions ------------------------------------------------------------------------------
    rep.ran.add("decisions")
    firsts = call_firsts(decisions)  # the first decision of each call
    is_first = counted_once(firsts)
    _check_decisions(rep, decisions, firsts, is_first, keys, policies)

    # 4. recordings -----------------------------------------------------------------------------
    rep.ran.add("recordings")
    _check_recordings(rep, store, decisions, opened, tombstones, at)

    # 5. cdr ------------------------------------------------------------------------------------
    if cdr is not None:
        rep.ran.add("cdr")
        _check_cdr(rep, decisions, cdr_rows)

    # 6. statistics -----------------------------------------------------------------------------
    rep.ran.add("statistics")
    _check_statistics(rep, decisions, is_first)
    if rep.simulated:
        rep.notes.append("this store is SIMULATED (made by 'sampledrec demo' or init --simulated)")
    return rep


# (logged reason, draw below the threshold) -> what is wrong with that decision.
_REASON_CONTRADICTIONS: Final = {
    (_SAMPLED, False): "logged as sampled but the draw is not below the threshold",
    (_NOT_SAMPLED, True): "logged as not sampled but the draw is below the threshold",
    (_CAP, False): "logged as cap reached but the draw is not below the threshold",
}


@dataclass(frozen=True)
class _RuleInForce:
    """What a decision's (policy version, rule) names: 0 found, 1 no such policy version logged,
    2 no such rule in it; then the rule's threshold and caps."""

    status: int
    rule: Any = None


def _compact(keys: I64, space: int) -> tuple[I64, I64]:
    """``(values, codes)``: the distinct values of ``keys`` (integers from 0 to ``space - 1``),
    ascending, and each key's index among them. Counting into a table when the space is small
    (the usual case: a few rules, thresholds, agents), sorting otherwise."""
    if space <= 4 * keys.size + 1024:
        present = np.bincount(keys, minlength=space) > 0
        values = np.flatnonzero(present)
        lut = np.cumsum(present) - 1
        return values, lut[keys]
    values, codes = np.unique(keys, return_inverse=True)
    return values, codes.ravel()


def _rules_in_force(d: Decisions, policies: dict[bytes, Any]) -> tuple[list[_RuleInForce], I64]:
    """The distinct (policy version, rule) pairs of the decisions, and each decision's pair."""
    width = max(1, len(d.rules))
    pairs, which = _compact(d.version.astype(np.int64) * width + d.rule, len(d.versions) * width)
    found = []
    for p in pairs.tolist():
        v, r = divmod(p, width)
        pol = policies.get(d.versions[v])
        if pol is None:
            found.append(_RuleInForce(1))
            continue
        try:
            found.append(_RuleInForce(0, pol.rule_named(d.rules[r])))
        except KeyError:
            found.append(_RuleInForce(2))
    return found, which


def _check_decisions(
    rep: AuditReport,
    d: Decisions,
    firsts: I64,
    is_first: npt.NDArray[np.bool_],
    keys: dict[str, bytes],
    policies: dict[bytes, Any],
) -> None:
    n = len(d)
    rep.counts["decisions"] = n
    rep.counts["decisions_objection"] = int(np.count_nonzero(d.reason == _OBJECTION))
    rep.counts["decisions_cap_reached"] = int(np.count_nonzero(d.reason == _CAP))

    # The same call decided twice in one epoch must agree.
    again = np.flatnonzero(~is_first)
    for i in again[d.reason[again] != d.reason[firsts[again]]].tolist():
        rep.add(
            "decisions",
            "the same call was decided twice in one epoch with different reasons "
            f"(first at entry {int(d.index[firsts[i]])})",
            index=int(d.index[i]),
            call_ref=d.ref_text(i),
            epoch_id=d.epochs[int(d.epoch[i])],
        )

    # Policy and threshold: checked for every decision (the rule is public).
    found, which = _rules_in_force(d, policies)
    status = np.asarray([f.status for f in found], dtype=np.int8)[which]
    expected = np.asarray(
        [f.rule.threshold if f.status == 0 else 0 for f in found], dtype=np.uint64
    )[which]
    known_reason = (d.reason >= 0) & (d.reason < len(REASONS))
    for i in np.flatnonzero(
        (status != 0) | ~d.threshold_ok | (d.threshold != expected) | ~known_reason
    ).tolist():
        version = d.versions[int(d.version[i])].hex()
        index = int(d.index[i])
        if status[i] == 1:
            rep.add(
                "decisions",
                "the decision names a policy version that was not logged",
                index=index,
                evidence={"policy_version": version},
            )
            continue
        rule_name = d.rules[int(d.rule[i])]
        if status[i] == 2:
            rep.add(
                "decisions",
                f"rule {rule_name!r} is not in the policy version in force",
                index=index,
                evidence={"policy_version": version},
            )
            continue
        rule = found[int(which[i])].rule
        if not d.threshold_ok[i] or int(d.threshold[i]) != rule.threshold:
            logged = str(int(d.threshold[i])) if d.threshold_ok[i] else "missing or malformed"
            rep.add(
                "decisions",
                f"the threshold does not match rule {rule_name!r} (rate {rule.rate})",
                index=index,
                evidence={"logged": logged, "expected": str(rule.threshold)},
            )
        if not known_reason[i]:
            rep.add("decisions", f"unknown reason code {int(d.reason[i])}", index=index)

    # Every draw of a revealed epoch, recomputed.
    has_ref = d.ref_kind > 0
    revealed = np.zeros(len(d.epochs) + 1, dtype=bool)
    revealed[[j for j, e in enumerate(d.epochs) if e in keys]] = True
    in_revealed = revealed[d.epoch]
    rep.counts["decisions_not_yet_verifiable"] = int(np.count_nonzero(~in_revealed))
    rep.counts["decisions_not_recomputable"] = int(np.count_nonzero(in_revealed & ~has_ref))
    valid = (d.ref_len >= 1) & (d.ref_len <= MAX_CALL_REF_BYTES)
    for i in np.flatnonzero(in_revealed & has_ref & ~valid).tolist():
        rep.add(
            "decisions",
            f"the logged call reference is {int(d.ref_len[i])} bytes long: not a reference "
            f"that can be drawn (1 to {MAX_CALL_REF_BYTES} bytes)",
            index=int(d.index[i]),
            epoch_id=d.epochs[int(d.epoch[i])],
        )
    recomputed = 0
    for code, epoch in enumerate(d.epochs):
        if epoch not in keys:
            continue
        sel = np.flatnonzero((d.epoch == code) & has_ref & valid)
        if not sel.size:
            continue

        def rows(column: Any, sel: Any = sel) -> Any:  # all of them (the usual case): no copy
            return column if sel.size == n else column[sel]

        lengths = rows(d.ref_len)
        width = int(lengths.max())
        whole = sel.size == n and width == d.refs.shape[1]
        msgs = d.refs if whole else np.ascontiguousarray(d.refs[sel, :width])
        draws = draws_rows(keys[epoch], msgs, None if int(lengths.min()) == width else lengths)
        recomputed += sel.size
        reason = rows(d.reason)
        below = draws < rows(d.threshold)
        ok = (~rows(d.has_draw) | (rows(d.draw) == draws)) & np.where(
            (reason == _SAMPLED) | (reason == _CAP), below, ~below | (reason != _NOT_SAMPLED)
        )
        for j in np.flatnonzero(~ok).tolist():
            i = int(sel[j])
            r, why = int(draws[j]), int(reason[j])
            ev = {"draw": str(r), "threshold": str(int(d.threshold[i])), "reason": _reason(why)}
            where = {"index": int(d.index[i]), "call_ref": d.ref_text(i), "epoch_id": epoch}
            if d.has_draw[i] and int(d.draw[i]) != r:
                ev["logged_draw"] = str(int(d.draw[i]))
                rep.add(
                    "decisions",
                    "the logged draw is not the draw recomputed from the revealed key",
                    evidence=ev,
                    **where,
                )
            wrong = _REASON_CONTRADICTIONS.get((why, bool(below[j])))
            if wrong is not None:
                rep.add("decisions", wrong, evidence=ev, **where)
    rep.counts["decisions_recomputed"] = recomputed
    _check_caps(rep, d, is_first, found, which)


def _check_caps(
    rep: AuditReport,
    d: Decisions,
    is_first: npt.NDArray[np.bool_],
    found: list[_RuleInForce],
    which: I64,
) -> None:
    """Per-agent caps, replayed in log order over distinct calls: the k-th selected call of an
    agent under a rule in a day (or ISO week) must not exceed that rule's cap."""
    capped = np.asarray([f.status == 0 and f.rule.has_cap for f in found], dtype=bool)
    sel = np.flatnonzero(is_first & (d.reason == _SAMPLED) & (d.agent >= 0) & capped[which])
    if not sel.size:
        return
    day = (d.time_us[sel] // np.uint64(86_400_000_000)).astype(np.int64)
    days, day_code = np.unique(day, return_inverse=True)
    # each day's period names, exactly as the samplers' ledger names them
    named = [cap_periods(from_micros(int(x) * 86_400_000_000), 1, 1) for x in days.tolist()]
    week_names, week_of_day = np.unique(np.asarray([w for _, (w, _) in named]), return_inverse=True)
    periods = (
        ("max_per_agent_per_day", day_code.ravel(), [dn for (dn, _), _ in named]),
        ("max_per_agent_per_week", week_of_day.ravel()[day_code.ravel()], week_names.tolist()),
    )
    for attr, period, names in periods:
        limits = np.asarray(
            [
                -1 if f.status != 0 or getattr(f.rule, attr) is None else getattr(f.rule, attr)
                for f in found
            ],
            dtype=np.int64,
        )[which[sel]]
        on = np.flatnonzero(limits >= 0)
        if not on.size:
            continue
        rows = sel[on]
        # (rule name, agent, period): the running count of each group in log order
        group = np.unique(
            np.stack([d.rule[rows], d.agent[rows], period[on]], axis=1),
            axis=0,
            return_inverse=True,
        )[1].ravel()
        order = np.argsort(group, kind="stable")
        g = group[order]
        starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
        count = np.empty(rows.size, dtype=np.int64)
        count[order] = np.arange(rows.size) - np.repeat(starts, np.diff(np.r_[starts, g.size]))
        count += 1
        for j in np.flatnonzero(count > limits[on]).tolist():
            i = int(rows[j])
            rep.add(
                "decisions",
                f"agent {d.agent_name(i)!r} has {int(count[j])} selected calls under rule "
                f"{d.rules[int(d.rule[i])]!r} in {names[int(period[on][j])]}, over the cap of "
                f"{int(limits[on][j])}",
                index=int(d.index[i]),
                call_ref=d.ref_text(i),
                epoch_id=d.epochs[int(d.epoch[i])],
            )


def _reason(code: int) -> str:
    return REASONS[code] if 0 <= code < len(REASONS) else f"#{code}"


def _check_recordings(
    rep: AuditReport,
    store: Any,
    decisions: Decisions,
    opened: dict[str, tuple[int, str | None]],
    tombstones: dict[str, int],
    at: datetime,
) -> None:
    from ..vault.recorder import data_key_aad

    catalog = store.open_catalog()
    try:
        rows = catalog.find()
        holds = {r.recording_id: catalog.holds_of(r.recording_id) for r in rows}
    finally:
        catalog.close()
    keystore = store.keystore
    blobs = store.blobs
    wanted = sorted(
        {r.call_ref for r in rows if r.call_ref is not None}
        | {op[1] for op in opened.values() if op[1] is not None}
    )
    by_ref: dict[str, list[tuple[int, int]]] = defaultdict(list)  # (entry index, reason)
    with_ref = np.flatnonzero(decisions.ref_kind > 0)
    matched = RefMatcher(decisions, wanted).match(with_ref)
    for j in np.flatnonzero(matched >= 0).tolist():
        i = int(with_ref[j])
        by_ref[wanted[int(matched[j])]].append((int(decisions.index[i]), int(decisions.reason[i])))
    objecting = {ref for ref, ds in by_ref.items() if any(r == _OBJECTION for _, r in ds)}
    now_us = to_micros(at)
    rep.counts["recordings"] = len(rows)

    def readable(row: Any) -> bool:
        aad = data_key_aad(row.recording_id, row.expires_at_sealed)
        wrapped = [(row.bucket, row.wrapped_key)] if row.wrapped_key is not None else []
        from ..vault.recorder import hold_bucket

        wrapped += [(hold_bucket(h.hold_id), w) for h, w in holds[row.recording_id] if w]
        for bucket, w in wrapped:
            try:
                keystore.unwrap(bucket, w, aad=aad)
                return True
            except (KeyDestroyed, SampledrecError, ValueError):
                continue
        return False

    for row in rows:
        rid = row.recording_id
        if row.status == "aborted":
            continue
        op = opened.get(rid)
        if op is None:
            rep.add(
                "recordings",
                "the recording has no recording_opened entry in the log",
                recording_id=rid,
                call_ref=row.call_ref,
            )
        ref = row.call_ref
        if ref is None and op is not None and op[1] is not None:
            ref = op[1]
        if op is not None and op[1] is not None and row.call_ref is not None and op[1] != ref:
            rep.add(
                "recordings",
                "the catalog's call reference differs from the logged one",
                index=op[0],
                recording_id=rid,
                call_ref=row.call_ref,
            )
        if ref is None:
            rep.counts["recordings_ref_erased"] += 1
        else:
            limit = op[0] if op is not None else None
            seen = by_ref.get(ref, [])
            if not any(r == _SAMPLED and (limit is None or i < limit) for i, r in seen):
                rep.add(
                    "recordings",
                    "no positive decision earlier in the log for the recorded call",
                    index=op[0] if op is not None else None,
                    recording_id=rid,
                    call_ref=ref,
                    evidence={"decisions": {str(i): _reason(r) for i, r in seen}},
                )
            if ref in objecting:
                rep.add(
                    "recordings",
                    "a recording of a caller who objected",
                    recording_id=rid,
                    call_ref=ref,
                )
        # Expiry.
        if row.expires_at <= now_us:
            file_there = blobs.exists(row.file)
            can_read = readable(row)
            ev = {
                "expires_at": from_micros(row.expires_at).isoformat(),
                "status": row.status,
                "file_present": file_there,
                "key_unwraps": can_read,
            }
            if row.status not in ("expired", "erased"):
                rep.add(
                    "recordings",
                    "kept past its expiry (not expired in the catalog)",
                    recording_id=rid,
                    evidence=ev,
                )
            if file_there and can_read:
                rep.add(
                    "recordings",
                    "still readable after its expiry (file present and key unwraps)",
                    recording_id=rid,
                    evidence=ev,
                )
            if row.status in ("expired", "erased") and rid not in tombstones:
                rep.add(
                    "recordings",
                    f"{row.status} without a tombstone in the log",
                    recording_id=rid,
                    evidence=ev,
                )
            rep.counts["recordings_past_expiry"] += 1
        elif row.status in ("expired", "erased"):
            if rid not in tombstones:
                rep.add(
                    "recordings",
                    f"{row.status} without a tombstone in the log",
                    recording_id=rid,
                )
            elif readable(row) and blobs.exists(row.file):
                rep.add("recordings", f"{row.status} but still readable", recording_id=rid)


def _check_cdr(rep: AuditReport, d: Decisions, cdr_rows: list[tuple[str, str]]) -> None:
    """Completeness both ways: every carrier call has a decision, every decided reference is
    a carrier call (a re-rolled or invented reference is not)."""
    carrier = sorted({r for r, _ in cdr_rows})
    rep.counts["cdr_calls"] = len(carrier)
    with_ref = np.flatnonzero(d.ref_kind > 0)
    matched = RefMatcher(d, carrier).match(with_ref)
    decided = np.zeros(len(carrier), dtype=bool)
    decided[matched[matched >= 0]] = True
    for j in np.flatnonzero(~decided).tolist():
        rep.add("cdr", "a carrier call has no decision in the log", call_ref=carrier[j])
    strangers: dict[str, int] = {}
    for i in with_ref[matched < 0].tolist():
        strangers.setdefault(d.ref_text(i) or "", int(d.index[i]))
    for ref, index in sorted(strangers.items()):
        rep.add(
            "cdr",
            "a decision for a reference that is not a carrier call (a re-rolled or "
            "invented reference)",
            index=index,
            call_ref=ref,
        )
    unreadable = len(d) - with_ref.size
    if unreadable:
        rep.notes.append(
            f"{unreadable} decisions have erased call references and were not matched "
            "against the call records"
        )


def _check_statistics(rep: AuditReport, d: Decisions, is_first: npt.NDArray[np.bool_]) -> None:
    # Counted: each call once, with a known reason other than an objection.
    counted = (
        is_first
        & d.threshold_ok
        & (d.reason != _OBJECTION)
        & (d.reason >= 0)
        & (d.reason < len(REASONS))
    )
    hit = counted & ((d.reason == _SAMPLED) | (d.reason == _CAP))
    # Thresholds: one per rule and policy version, so a sample finds them all (checked).
    thresholds = np.unique(d.threshold[:: max(1, len(d) // 4096)])
    thr_code = np.searchsorted(thresholds, d.threshold).clip(0, max(0, thresholds.size - 1))
    if len(d) and not (thresholds[thr_code] == d.threshold).all():
        thresholds, thr_code = np.unique(d.threshold, return_inverse=True)
    # One group per (rule, threshold), and one per (rule, threshold, agent): a group's number
    # is (rule x thresholds + threshold) x (agents + 1) + (agent + 1, or 0 for the rule's own).
    width = len(d.agents) + 1
    per_rule = (d.rule.astype(np.int64) * thresholds.size + thr_code.ravel()) * width
    per_agent = per_rule + d.agent + 1
    named = d.agent >= 0
    space = thresholds.size * max(1, len(d.rules)) * width
    if space <= 4 * len(d) + 1024:  # count straight into a table, rows left out in a last slot
        n_all = np.bincount(np.where(counted, per_rule, space), minlength=space + 1)
        k_all = np.bincount(np.where(hit, per_rule, space), minlength=space + 1)
        n_all += np.bincount(np.where(counted & named, per_agent, space), minlength=space + 1)
        k_all += np.bincount(np.where(hit & named, per_agent, space), minlength=space + 1)
        keys = np.flatnonzero(n_all[:space])
        n_of, k_of = n_all[keys], k_all[keys]
    else:
        key = np.concatenate([per_rule[counted], per_agent[counted & named]])
        hits = np.concatenate([hit[counted], hit[counted & named]])
        keys, codes = _compact(key, space)
        n_of = np.bincount(codes, minlength=keys.size)
        k_of = np.bincount(codes, weights=hits, minlength=keys.size).astype(np.int64)
    groups: dict[tuple[str, int, str | None], tuple[int, int]] = {}
    for code, n, k in zip(keys.tolist(), n_of.tolist(), k_of.tolist(), strict=True):
        rt, a = divmod(code, width)
        r, t = divmod(rt, thresholds.size)
        groups[(d.rules[r], int(thresholds[t]), d.agents[a - 1] if a else None)] = (n, int(k))
    stats: list[GroupStats] = []
    for (rule, thr, who), (n, k) in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
    ):
        if n < MIN_GROUP:
            rep.counts["statistics_groups_skipped"] += 1
            continue
        p = thr / _TWO56
        low, high = clopper_pearson(k, n)
        stats.append(GroupStats(rule, who, p, n, k, low, high, binom_test(k, n, p)))
    for g, adj in zip(stats, holm([g.p_value for g in stats]), strict=True):
        g.p_holm = adj
        if adj < STAT_ALPHA:
            rep.add(
                "statistics",
                f"rule {g.rule!r}"
                + (f" agent {g.agent!r}" if g.agent else "")
                + f": realised rate {g.realised:.4f} vs declared {g.rate:.4f} "
                f"(Holm-adjusted p = {adj:.3g} < {STAT_ALPHA})",
                evidence=g.to_json(),
            )
    rep.groups = stats
