"""The auditor's side: independent verification of a store against its log and revealed keys.

:func:`audit_verify` runs eight checks (:data:`CHECKS`), each PASS, FAIL or SKIPPED, with what
it checked (counts) and findings that carry their evidence (the log entry index, the recording
id, the call reference, the epoch):

- ``log``: :func:`sampledrec.log.verify_log` (tree, signatures, checkpoints, an exported
  checkpoint when given); any finding fails the check;
- ``keys``: every revealed key matches its commitment and the commitment the log recorded;
  every sealing key the log says was destroyed is gone, and none was destroyed before its
  retention ended;
- ``decisions``: every decision of a revealed epoch is recomputed (the draw with
  :func:`~sampledrec.sampling.draw_many`, the threshold from the policy version logged before
  it, the reason, the per-agent caps replayed in log order); every decision's rule recomputed
  from the attributes it logged, every ``cap_reached`` replayed, and no capped rule without an
  agent (:mod:`sampledrec.audit.rules`); an ended epoch with decisions and no revealed key, and
  call references unreadable while they should still be kept, are findings;
- ``time``: entry times in order, each decision in the epoch of its UTC day, keys committed a
  bounded time ahead, the policy in force, one epoch per reference
  (:mod:`sampledrec.audit.timeline`);
- ``objections``: the objection list replayed from its logged changes: no caller on it decided
  as if they had not objected, no call selected without its caller while someone objected, the
  list as it stands equal to the replayed one (:mod:`sampledrec.audit.objections`);
- ``recordings``: the recordings as the log tells them, against the decisions, the files'
  SHA-256, the tombstones, the destroyed keys and the catalog
  (:mod:`sampledrec.audit.recordings`);
- ``cdr``: with the carrier's call records, completeness both ways (references matched by exact
  bytes and kind), no carrier call decided under two references (a re-roll), each call's
  start time in its decision's epoch, the carrier's attribute columns against the logged
  attributes (:mod:`sampledrec.audit.cdr`);
- ``statistics``: declared vs realised rates per rule and per (rule, agent), exact
  Clopper-Pearson intervals and two-sided exact binomial tests with Holm's correction. A group
  fails when its Holm-adjusted p-value is below :data:`STAT_ALPHA` (0.001): a strict threshold,
  so that a correct store fails by chance about once in a thousand audits at most.

**The verdict rule.** A check FAILs when it has a finding, is SKIPPED (with the reason) when it
had nothing to check, and PASSes otherwise. Whatever should have been verified and could not
be is a finding, never a SKIPPED. The audit is PASS only when no check FAILed and no core check
(log, keys, decisions) was SKIPPED while the log holds what it is about; FAIL when a check
FAILed; INCOMPLETE otherwise (for example: decisions whose epochs have not ended yet, so that
no key could be revealed). Only PASS exits 0 (:mod:`sampledrec.audit.findings`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

from ..clock import SYSTEM_CLOCK
from ..errors import SampledrecError
from ..keys.keyring import epoch_end
from ..log.columns import (
    I64,
    Decisions,
    call_firsts,
    counted_once,
)
from ..log.format import T_KEY_COMMIT, T_KEY_DESTROYED, T_POLICY, from_micros, to_micros
from ..log.storage import LogStorage
from ..log.verify import LogVerification
from ..sampling.caps import cap_agent, cap_periods
from ..sampling.keyed import MAX_CALL_REF_BYTES
from ..sampling.record import REASONS
from .cdr import check_cdr, read_cdr
from .evidence import Evidence, store_evidence
from .findings import CHECKS, CORE_CHECKS, STAT_ALPHA, AuditFinding, AuditReport, GroupStats
from .logview import InOrderLog
from .objections import check_objections
from .partitions import (
    EMPTY_MISMATCHES,
    DrawMismatches,
    InProcess,
    LogPartition,
    PartRunner,
    candidate_keys,
    join_entries,
    partitions,
)
from .recordings import OtherNodes, check_recordings, kept_until_month, month_of_kid
from .revealed import read_revealed_keys
from .rules import check_cap_reached, check_rules
from .rules import compact as _compact
from .stats import binom_cdf, binom_sf, binom_test, clopper_pearson, holm
from .timeline import MAX_TIME_US, LoggedPolicy, check_time, epoch_day
from .witness import trusted_witnesses, witness_hook

__all__ = [
    "CHECKS",
    "CORE_CHECKS",
    "STAT_ALPHA",
    "AuditFinding",
    "AuditReport",
    "GroupStats",
    "audit_evidence",
    "audit_verify",
    "binom_cdf",
    "binom_sf",
    "binom_test",
    "clopper_pearson",
    "holm",
    "log_partitions",
]

MIN_GROUP: Final = 20
_SAMPLED, _NOT_SAMPLED, _OBJECTION, _CAP = range(4)
_TWO56: Final = 2**56
_MONTH0: Final = 1970 * 12  # month index of 1970-01


# -- the audit -----------------------------------------------------------------------------------


def audit_verify(
    store_path: str | Path,
    revealed_keys_path: str | Path,
    *,
    checkpoint: str | Path | None = None,
    cdr: str | Path | None = None,
    keyring: Any | None = None,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
    witnesses: Sequence[str] = (),
    quorum: int | None = None,
    cosigned: Sequence[str | Path] = (),
) -> AuditReport:
    """Audit a store as its operator holds it; raises :class:`StoreError` /
    :class:`InvalidArgument` when it cannot run (the store is missing, the revealed-keys file
    or the call records cannot be read).

    ``keyring`` opens the log's sealed call references (default: the store's own keyring);
    ``now`` is the audit time: which epochs have ended, what has expired, which call
    references must still be readable (default: the real clock). ``witnesses`` (``NAME=VKEY``
    each), ``quorum`` and ``cosigned`` (more cosigned-checkpoint files) add the ``witnesses``
    check (:mod:`sampledrec.audit.witness`). An outsider audits from the auditor's kit instead
    (:func:`sampledrec.audit.kit.audit_kit`).
    """
    from ..store import Store

    store = Store.open(store_path)
    return audit_evidence(
        store_evidence(store, keyring),
        read_revealed_keys(revealed_keys_path),
        checkpoint=checkpoint,
        cdr=cdr,
        progress=progress,
        now=now,
        witnesses=witnesses,
        quorum=quorum,
        cosigned=cosigned,
    )


def log_partitions(
    ev: Evidence, revealed: Sequence[Any], checkpoint: str | Path | None = None
) -> tuple[LogVerification, list[LogPartition], dict[str, list[bytes]]]:
    """What :func:`audit_evidence` has its runner check of ``ev``'s log: the verification's
    plan (with the exported ``checkpoint``), the log's partitions, and the revealed keys
    that a partition may draw with."""
    plan = LogVerification.start(
        ev.log, checkpoint_file=Path(checkpoint) if checkpoint is not None else None
    )
    parts = [] if plan.done else partitions(ev.log, plan.segments)
    return plan, parts, candidate_keys(revealed)


def audit_evidence(
    ev: Evidence,
    revealed: list[Any],
    *,
    checkpoint: str | Path | None = None,
    cdr: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
    witnesses: Sequence[str] = (),
    quorum: int | None = None,
    cosigned: Sequence[str | Path] = (),
    runner: PartRunner | None = None,
    caps_across_nodes: bool = False,
    other_logs: frozenset[str] = frozenset(),
    elsewhere: OtherNodes | None = None,
) -> AuditReport:
    """The eight checks over what ``ev`` holds (a store, or an auditor's kit), with the
    ``revealed`` epoch keys (:func:`sampledrec.audit.revealed.read_revealed_keys`).

    ``runner`` checks the log's partitions (default: in this process); the report is the same
    whichever runs them (:mod:`sampledrec.audit.partitions`).

    ``caps_across_nodes``: ``ev`` is one node's log of a deployment, whose caps count every
    node's selections: a ``cap_reached`` is then replayed, and the statistics counted, across
    the nodes' logs (:mod:`sampledrec.audit.nodes`), not from this log alone; ``other_logs``
    are the other nodes' origins, whose checkpoints the ``cosigned`` files may hold too.
    ``elsewhere``: for such a node, what the other nodes' logs say about recordings (their
    tombstones, seals and holds), joined into its ``recordings`` check."""
    from ..sampling.policy import Policy

    at = now or SYSTEM_CLOCK.now()
    trusted = trusted_witnesses(witnesses, quorum, cosigned)  # a usage error before any work
    rep = AuditReport(store=ev.label, at=at, simulated=ev.simulated)
    rep.notes.extend(ev.notes)
    if cdr is not None:
        cdr_rows = read_cdr(Path(cdr))
    keyring = ev.sealing

    # 1. log -----------------------------------------------------------------------------------
    # The log in partitions (its segments), each verified and read on its own, then joined
    # (sampledrec.audit.partitions): here on two threads, or on Dask with ``runner``.
    plan, parts, candidates = log_partitions(ev, revealed, checkpoint)
    checks, segment_entries = (runner or InProcess()).run(
        parts, plan.wanted, ev.sealing, candidates, progress
    )
    by_segment = {c.segment: c for c in checks}
    logrep = plan.finish(by_segment.__getitem__, store_id=ev.store_id, public_key=ev.public_key)
    joined = join_entries(segment_entries)
    contents = joined.contents
    view = InOrderLog(ev.log)  # read again only for the objections' callers, if any
    if joined.cut is not None:
        rep.notes.append(
            f"the log's batches stop following one another in {joined.cut}: the audit read the "
            "log up to there (the log check reports the damage)"
        )
    rep.ran.add("log")
    rep.expected["log"] = "the store has a log"
    rep.simulated = rep.simulated or logrep.simulated
    rep.counts["log_entries"] = logrep.size
    rep.checked["log"] = {
        "entries": logrep.size,
        "bytes": logrep.bytes_verified,
        "checkpoints": logrep.checkpoints,
        "exported_checkpoints": int(logrep.exported_checked),
    }
    for f in logrep.findings:
        rep.add(
            "log",
            f"{f.check}: {f.message}",
            index=f.index,
            evidence=({"where": f.where} if f.where else {}) | (f.evidence or {}),
        )
    if logrep.size == 0 and not logrep.findings:
        rep.add("log", "the log holds no entry")
    # 1b. witnesses: the log against the checkpoints they cosigned -----------------------------
    witness_hook(rep, ev, logrep, trusted, quorum, [Path(p) for p in cosigned], other_logs)

    decisions = contents.decisions
    commits: dict[str, tuple[int, bytes]] = {}
    policies: dict[bytes, Any] = {}
    logged_policies: list[LoggedPolicy] = []
    for e in contents.others:
        fl = e.fields
        if e.type == T_KEY_COMMIT:
            commits.setdefault(str(fl.get("epoch_id")), (e.index, bytes(fl.get("commitment", b""))))
        elif e.type == T_POLICY:
            version = bytes(fl.get("version", b""))
            effective = fl.get("effective_at")
            logged_policies.append(
                LoggedPolicy(
                    e.index, e.time_us, version, effective if isinstance(effective, int) else 0
                )
            )
            try:
                pol = Policy.from_dict(json.loads(bytes(fl.get("canonical", b""))))
            except (SampledrecError, ValueError, TypeError, RecursionError) as exc:
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
    if contents.error is not None:
        rep.add("log", f"the log cannot be decoded: {contents.error}")
        rep.notes.append("the log could not be read to the end: later checks are incomplete")

    # 2. keys -----------------------------------------------------------------------------------
    keys = _check_keys(rep, revealed, commits, contents.others, ev.sealing_present, at)
    if len(decisions):
        rep.expected["keys"] = f"the log has {len(decisions):,} decisions"
        rep.expected["decisions"] = f"the log has {len(decisions):,} decisions"

    # 3. decisions ------------------------------------------------------------------------------
    rep.ran.add("decisions")
    firsts = call_firsts(decisions)  # the first decision of each call
    is_first = counted_once(firsts)
    mismatches = {
        epoch: joined.draws.get((epoch, candidates[epoch].index(key)), EMPTY_MISMATCHES)
        for epoch, key in keys.items()
        if key in candidates.get(epoch, [])
    }
    _check_decisions(
        rep,
        decisions,
        firsts,
        is_first,
        keys,
        policies,
        mismatches,
        cap_reached=not caps_across_nodes,
    )
    _check_unverifiable(rep, decisions, keys, revealed, at, ev.period)

    # 4. time -----------------------------------------------------------------------------------
    check_time(rep, decisions, contents.others, logged_policies, simulated=logrep.simulated)

    # 5. recordings -----------------------------------------------------------------------------
    check_recordings(rep, ev, decisions, firsts, contents.others, policies, at, elsewhere=elsewhere)
    rep.counts["recordings"] = rep.checked["recordings"].get("opened", 0)

    # 5b. objections: the list replayed from the log (its recordings findings: recordings) ------
    check_objections(
        rep,
        decisions,
        contents.others,
        cast(LogStorage, view),
        keyring,
        _current_objections(rep, ev),
        at,
        ev.period,
    )

    # 6. cdr ------------------------------------------------------------------------------------
    if cdr is not None:
        rep.ran.add("cdr")
        check_cdr(rep, decisions, cdr_rows, policies, is_first)
    else:
        rep.skip("cdr", "no carrier call records given (--cdr)")

    # 7. statistics -----------------------------------------------------------------------------
    # One node's log of a deployment also holds copies of calls first decided on other nodes
    # (logged before a recording): its own rates are not a sample; the deployment's audit
    # counts each call once over every node (sampledrec.audit.nodes).
    if not caps_across_nodes:
        rep.ran.add("statistics")
        check_statistics(rep, decisions, is_first)
    if rep.simulated:
        rep.notes.append("this store is SIMULATED (made by 'sampledrec demo' or init --simulated)")
    return rep


def _current_objections(rep: AuditReport, ev: Evidence) -> frozenset[str] | None:
    """The objection list as it stands (the store's, or the kit's), if it can be read."""
    if ev.objections is None:
        return None
    try:
        return ev.objections()
    except (OSError, ValueError, SampledrecError) as exc:
        rep.notes.append(f"objections: the current objection list cannot be read: {exc}")
        return None


def _check_keys(
    rep: AuditReport,
    revealed: list[Any],
    commits: dict[str, tuple[int, bytes]],
    others: list[Any],
    sealing_present: Callable[[], set[str]] | None,
    at: datetime,
) -> dict[str, bytes]:
    """The ``keys`` check; returns the revealed keys that match the logged commitments."""
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
        elif k.epoch_id in keys and keys[k.epoch_id] != k.key:
            rep.add("keys", "two different keys revealed for one epoch", epoch_id=k.epoch_id)
        else:
            keys[k.epoch_id] = k.key
    early = [k.epoch_id for k in revealed if epoch_end(k.epoch_id) > at]
    if early:
        rep.notes.append(
            f"keys: {len(early)} revealed keys are of epochs that had not ended at the audit's "
            f"time ({', '.join(sorted(early)[:5])}): their draws could be predicted"
        )
    rep.counts["keys_revealed"] = len(revealed)
    rep.counts["keys_verified"] = len(keys)
    checked = {"revealed": len(revealed), "verified": len(keys)}

    # The log's sealing keys: what the log says was destroyed is gone, and not too early.
    try:
        present = sealing_present() if sealing_present is not None else None
    except (AttributeError, SampledrecError, OSError):
        present = None
    destroyed = 0
    for e in others:
        if e.type != T_KEY_DESTROYED:
            continue
        kid = str(e.fields.get("key"))
        month = month_of_kid(kid)
        if month is None or not kid.startswith(("calls/", "access/")):
            continue
        destroyed += 1
        if present is not None and kid in present:
            rep.add(
                "keys",
                f"the log says sealing key {kid} was destroyed, but the keyring still holds it",
                index=e.index,
                evidence={"key": kid},
            )
        destroyed_month = _month_index(from_micros(min(e.time_us, MAX_TIME_US)))
        calls = kid.startswith("calls/")
        until = kept_until_month(month, calls=calls)
        if destroyed_month < until:
            rep.add(
                "keys",
                (
                    f"the call references sealed under {kid} were shredded before their "
                    "retention ended: their decisions can no longer be recomputed"
                    if calls
                    else f"the access details sealed under {kid} were shredded before their "
                    "retention ended: who accessed what can no longer be read"
                ),
                index=e.index,
                evidence={
                    "destroyed_at": from_micros(min(e.time_us, MAX_TIME_US)).isoformat(),
                    "kept_until": _month_start(until),
                },
            )
    if destroyed:
        checked["sealing_keys_destroyed"] = destroyed
    rep.checked["keys"] = checked
    if not revealed:
        rep.skip("keys", "no epoch key revealed")
    return keys


def _month_index(moment: datetime) -> int:
    return moment.year * 12 + moment.month - 1


def _month_start(month: int) -> str:
    return f"{month // 12:04d}-{month % 12 + 1:02d}-01"


def _check_unverifiable(
    rep: AuditReport,
    d: Decisions,
    keys: dict[str, bytes],
    revealed: list[Any],
    at: datetime,
    period: tuple[str, str] | None = None,
) -> None:
    """What should have been verified and could not be: an ended epoch with decisions whose
    key is not revealed (or does not match), and call references unreadable while they
    should still be kept. Then the decisions check's verdict when it recomputed nothing.

    With a ``period`` (an auditor's kit limited to some days), decisions of epochs outside it
    are not due: they are counted as outside the period."""
    n = len(d)
    outside = np.zeros(len(d.epochs), dtype=bool)
    if period is not None:
        outside = np.asarray([not (period[0] <= e <= period[1]) for e in d.epochs], dtype=bool)
        if n and outside.any():
            rep.counts["decisions_outside_period"] = int(np.count_nonzero(outside[d.epoch]))
    revealed_ids = {k.epoch_id for k in revealed}
    counts = np.bincount(d.epoch, minlength=len(d.epochs)) if n else np.zeros(0, np.int64)
    at_us = to_micros(at)
    for code, epoch in enumerate(d.epochs):
        if epoch in keys or not counts[code] or outside[code]:
            continue
        day = epoch_day(epoch)
        if day is None or (day + 1) * 86_400_000_000 > at_us:
            continue  # not a UTC day (the time check says so), or not ended yet
        first = int(np.flatnonzero(d.epoch == code)[0])
        rep.add(
            "decisions",
            f"epoch {epoch} has ended and has {int(counts[code]):,} decisions, but "
            + (
                "its revealed key does not match the logged commitment"
                if epoch in revealed_ids
                else "its key was not revealed"
            )
            + ": they cannot be recomputed",
            index=int(d.index[first]),
            epoch_id=epoch,
            evidence={
                "decisions": int(counts[code]),
                "ended_at": from_micros((day + 1) * 86_400_000_000).isoformat(),
            },
        )
    # Call references unreadable while their sealing key (calls/YYYY-MM of the decision's
    # time) should still exist.
    if n:
        gone = np.flatnonzero((d.ref_kind == 0) & ~outside[d.epoch])
        if gone.size:
            months = (
                np.minimum(d.time_us[gone], np.uint64(2**62))
                .astype(np.int64)
                .astype("datetime64[us]")
                .astype("datetime64[M]")
                .astype(np.int64)
                + _MONTH0
            )
            kept = kept_until_month(0) + months > _month_index(at)  # key not destroyed yet
            if kept.any():
                rows = gone[kept]
                ms, at_row, cnt = np.unique(months[kept], return_index=True, return_counts=True)
                items = []
                for m, j, c in zip(ms.tolist(), at_row.tolist(), cnt.tolist(), strict=True):
                    i = int(rows[j])
                    kid = f"calls/{m // 12:04d}-{m % 12 + 1:02d}"
                    items.append(
                        (
                            f"{c:,} decisions have call references that cannot be read (sealed "
                            f"under {kid}) while they should be kept until "
                            f"{_month_start(kept_until_month(m))}: they cannot be recomputed",
                            {
                                "index": int(d.index[i]),
                                "epoch_id": d.epochs[int(d.epoch[i])],
                                "evidence": {"decisions": c, "key": kid},
                            },
                        )
                    )
                rep.add_listed("decisions", items, "months of unreadable call references")
    recomputed = rep.counts.get("decisions_recomputed", 0)
    rep.checked["decisions"] = {
        "decisions": n,
        "recomputed": recomputed,
        "not_yet_verifiable": rep.counts.get("decisions_not_yet_verifiable", 0),
        "not_recomputable": rep.counts.get("decisions_not_recomputable", 0),
    }
    if period is not None:
        rep.checked["decisions"]["outside_period"] = rep.counts.get("decisions_outside_period", 0)
    for name, what in (
        ("decisions_rules_recomputed", "rules_recomputed"),
        ("decisions_cap_reached_replayed", "caps_reached_replayed"),
    ):
        if rep.counts.get(name):
            rep.checked["decisions"][what] = rep.counts[name]
    if recomputed:
        return
    if not n:
        rep.skip("decisions", "the log has no decisions")
    elif not keys:
        rep.skip("decisions", "no epoch key revealed")
    elif not any(e in keys for e in d.epochs):
        rep.skip("decisions", "no revealed key is of an epoch that has decisions")
    else:
        rep.skip("decisions", "every call reference of the revealed epochs was erased")


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


def _shown(d: Decisions, name: str, row: int) -> Any:
    """A decision's field as evidence: text for the coded columns, numbers as numbers."""
    if name == "reason":
        code = int(d.reason[row])
        return REASONS[code] if 0 <= code < len(REASONS) else code
    if name == "rule":
        return d.rules[int(d.rule[row])] if d.rule[row] >= 0 else None
    if name == "policy_version":
        return d.versions[int(d.version[row])].hex() if d.version[row] >= 0 else None
    if name == "agent":
        return d.agents[int(d.agent[row])] if d.agent[row] >= 0 else None
    if name == "attributes":
        return d.attribute_sets[int(d.attributes[row])] if d.attributes[row] >= 0 else None
    return int(getattr(d, name)[row])


def _check_decisions(
    rep: AuditReport,
    d: Decisions,
    firsts: I64,
    is_first: npt.NDArray[np.bool_],
    keys: dict[str, bytes],
    policies: dict[bytes, Any],
    mismatches: dict[str, DrawMismatches],
    *,
    cap_reached: bool = True,
) -> None:
    n = len(d)
    rep.counts["decisions"] = n
    rep.counts["decisions_objection"] = int(np.count_nonzero(d.reason == _OBJECTION))
    rep.counts["decisions_cap_reached"] = int(np.count_nonzero(d.reason == _CAP))

    # The same call decided twice in one epoch: the later entry is a copy of the first (the
    # sampler answers a repeat with the first decision). A repeat under another rule, policy,
    # agent or attributes would give the call another retention or cap count.
    again = np.flatnonzero(~is_first)
    first = firsts[again]
    fields: dict[str, npt.NDArray[Any]] = {
        "reason": d.reason,
        "rule": d.rule,
        "policy_version": d.version,
        "threshold": d.threshold,
        "draw": d.draw,
        "agent": d.agent,
        "attributes": d.attributes,
    }
    differs = {name: col[again] != col[first] for name, col in fields.items()}
    any_diff = np.zeros(again.size, dtype=bool)
    for mask in differs.values():
        any_diff |= mask
    for j in np.flatnonzero(any_diff).tolist():
        i, f = int(again[j]), int(first[j])
        names = [name for name, mask in differs.items() if mask[j]]
        rep.add(
            "decisions",
            "the same call was decided twice in one epoch, and the later entry is not a copy "
            f"of the first (entry {int(d.index[f])}): its {', '.join(names)} differ"
            + (" (different reasons)" if "reason" in names else ""),
            index=int(d.index[i]),
            call_ref=d.ref_text(i),
            epoch_id=d.epochs[int(d.epoch[i])],
            evidence={
                name: {"first": _shown(d, name, f), "later": _shown(d, name, i)} for name in names
            },
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
    # ... and recomputed in the partitions (draw_mismatches), which kept those that disagree.
    recomputed = 0
    for epoch in d.epochs:
        if epoch not in keys:
            continue
        found_draws = mismatches.get(epoch, EMPTY_MISMATCHES)
        recomputed += found_draws.recomputed
        for i, r in zip(found_draws.rows.tolist(), found_draws.draws.tolist(), strict=True):
            why = int(d.reason[i])
            below = r < int(d.threshold[i])
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
            wrong = _REASON_CONTRADICTIONS.get((why, below))
            if wrong is not None:
                rep.add("decisions", wrong, evidence=ev, **where)
    rep.counts["decisions_recomputed"] = recomputed
    check_rules(rep, d, found, which, policies)
    counted = _cap_agents(d)  # one agent however its id is spelled, as the samplers count
    _check_caps(rep, counted, is_first, found, which)
    if cap_reached:
        check_cap_reached(rep, counted, is_first, found, which)


def _cap_agents(d: Decisions) -> Decisions:
    """``d`` with its agents as caps count them (:func:`~sampledrec.sampling.caps.cap_agent`):
    ``a0`` and ``A0`` are one agent, and the cap holds for both together."""
    canon = [cap_agent(a) for a in d.agents]
    names = sorted(set(canon))
    if names == d.agents:
        return d
    code = {name: i for i, name in enumerate(names)}
    lut = np.asarray([code[c] for c in canon] + [-1], dtype=np.int32)  # lut[-1]: no agent
    return dataclasses.replace(d, agent=lut[d.agent], agents=names)


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
    sel = np.flatnonzero(
        is_first
        & (d.reason == _SAMPLED)
        & (d.agent >= 0)
        & capped[which]
        & (d.time_us <= np.uint64(MAX_TIME_US))  # later: a finding of the time check
    )
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


def check_statistics(rep: AuditReport, d: Decisions, is_first: npt.NDArray[np.bool_]) -> None:
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
    rep.checked["statistics"] = {
        "groups_tested": len(stats),
        "groups_too_small": rep.counts.get("statistics_groups_skipped", 0),
    }
    if not stats:
        rep.skip("statistics", f"no rule or (rule, agent) group has {MIN_GROUP} calls or more")
