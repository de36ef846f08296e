"""The rules and caps of the ``decisions`` check, replayed from what each decision logged.

A decision logs, sealed with its call reference, the call's attributes that the rules of its
policy version name (``attributes``, compact JSON; docs/log-format.md). From them the audit
recomputes which rule applied (:meth:`~sampledrec.sampling.policy.Policy.rule_for` of the
version the decision names) and compares it with the logged rule. The work is done once per
distinct (policy version, attributes) pair, so a log of millions of decisions costs a few
thousand ``rule_for`` calls.

Caps: a ``cap_reached`` decision is replayed like a ``sampled`` one. Its rule must have a cap
in its policy version, it must name an agent, and the agent's selected calls under the rule
(by name, as the samplers' ledger counts them) in one of the rule's cap periods (the UTC day,
the ISO week: :func:`~sampledrec.sampling.caps.cap_periods`) must already be at the cap:
counting the selections logged before it, or those dated at most :data:`TIME_SLACK` after it
(several processes log their batches independently: a selection the ledger counted first can
reach the log a little later), each call once.

A decision under a rule with a per-agent cap that logs no agent escapes the cap: a sampler
refuses such a call (docs/decisions/0017-rules-replayable.md), so it is a finding, except an
objection (never recorded) and the decisions logged before decisions logged their attributes
(older samplers recorded them uncapped: counted in a note).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..log.columns import I64, Decisions
from ..log.format import from_micros
from ..sampling.caps import cap_periods
from ..sampling.record import REASONS
from .findings import AuditReport
from .timeline import MAX_TIME_US, TIME_SLACK

__all__ = ["check_cap_reached", "check_rules", "compact", "parse_attributes"]

_SAMPLED, _NOT_SAMPLED, _OBJECTION, _CAP = range(4)
_DAY_US: Final = 86_400_000_000
_SLACK_US: Final = int(TIME_SLACK.total_seconds()) * 1_000_000
_PERIODS: Final = (("max_per_agent_per_day", 0), ("max_per_agent_per_week", 1))


def compact(keys: I64, space: int) -> tuple[I64, I64]:
    """``(values, codes)``: the distinct values of ``keys`` (integers from 0 to ``space - 1``),
    ascending, and each key's index among them. Counting into a table when the space is small
    (the usual case: a few rules, thresholds, agents, attribute sets), sorting otherwise."""
    if space <= 4 * keys.size + 1024:
        present = np.bincount(keys, minlength=space) > 0
        values = np.flatnonzero(present)
        lut = np.cumsum(present) - 1
        return values, lut[keys]
    values, codes = np.unique(keys, return_inverse=True)
    return values, codes.ravel()


def parse_attributes(text: str) -> dict[str, str] | None:
    """The attributes a decision logged, or None when they are not a JSON object of text
    values (what a sampler writes: ``Policy.attributes_json``)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return value


def _rows_text(d: Decisions, i: int) -> dict[str, Any]:
    """Where a decision is, for a finding."""
    return {
        "index": int(d.index[i]),
        "call_ref": d.ref_text(i),
        "epoch_id": d.epochs[int(d.epoch[i])],
    }


def check_rules(
    rep: AuditReport,
    d: Decisions,
    found: Sequence[Any],
    which: I64,
    policies: dict[bytes, Any],
) -> None:
    """Recompute each decision's rule from its logged attributes; find the decisions without
    attributes after the first that has them, and those under a capped rule without an agent.

    ``found[which[i]]`` is what decision ``i``'s (policy version, rule) names: ``status`` 0
    when found, with the ``rule``; the ``decisions`` check reports the others.
    """
    n = len(d)
    if not n:
        return
    status = np.asarray([f.status for f in found], dtype=np.int8)[which]
    readable = d.ref_kind > 0  # the sealed fields were opened: absent means absent
    has = d.attributes >= 0
    # From the first decision that logs its attributes, every decision logs them: a sampler
    # that writes them never stops (upgrade every process of a store together).
    since = int(np.argmax(has)) if has.any() else n
    before = int(np.count_nonzero(readable[:since]))
    rep.counts["decisions_without_attributes"] = before
    if before:
        rep.notes.append(
            f"{before:,} decisions were logged before decisions logged the attributes their "
            "rule matched on: their rules were not recomputed"
            + ("" if since < n else " (no decision of this log logs them)")
        )
    missing = np.flatnonzero(readable[since:] & ~has[since:]) + since
    rep.add_listed(
        "decisions",
        [
            (
                "the decision does not log the attributes its rule matched on, while the "
                f"decisions logged since entry {int(d.index[since])} do",
                {**_rows_text(d, i), "evidence": {"rule": d.rules[int(d.rule[i])]}},
            )
            for i in missing.tolist()
        ],
        "decisions without their attributes",
    )

    # The rule of each distinct (policy version, attributes), recomputed.
    on = has & (status == 0)
    every = bool(on.all())  # the usual case: no copies of the columns
    rows = np.arange(n) if every else np.flatnonzero(on)

    def take(column: Any) -> Any:
        return column if every else column[rows]

    recomputed = 0
    if rows.size:
        width = len(d.attribute_sets)
        pair = take(d.version).astype(np.int64) * width + take(d.attributes)
        pairs, code = compact(pair, len(d.versions) * width)
        rule_codes = {name: c for c, name in enumerate(d.rules)}
        expected = np.full(pairs.size, -1, dtype=np.int64)  # -1: unreadable, -2: another rule
        names: list[str | None] = []
        parsed: list[dict[str, str] | None] = []
        for k, p in enumerate(pairs.tolist()):
            v, a = divmod(p, width)
            attrs = parse_attributes(d.attribute_sets[a])
            parsed.append(attrs)
            if attrs is None:
                names.append(None)
                continue
            name = policies[d.versions[v]].rule_for(attrs).name
            names.append(name)
            expected[k] = rule_codes.get(name, -2)
        got = expected[code]
        bad_text = got == -1
        rep.add_listed(
            "decisions",
            [
                (
                    "the logged attributes cannot be read (not a JSON object of text values)",
                    {
                        **_rows_text(d, i),
                        "evidence": {"attributes": d.attributes_text(i)},
                    },
                )
                for i in rows[bad_text].tolist()
            ],
            "decisions whose attributes cannot be read",
        )
        wrong = np.flatnonzero(~bad_text & (got != take(d.rule)))
        rep.add_listed(
            "decisions",
            [
                (
                    "decided under a rule the call's attributes do not match",
                    {
                        **_rows_text(d, int(rows[j])),
                        "evidence": {
                            "logged_rule": d.rules[int(d.rule[rows[j]])],
                            "expected_rule": names[int(code[j])],
                            "attributes": parsed[int(code[j])],
                            "policy_version": d.versions[int(d.version[rows[j]])].hex(),
                        },
                    },
                )
                for j in wrong.tolist()
            ],
            "decisions under a rule their attributes do not match",
        )
        recomputed = int(np.count_nonzero(~bad_text))
    rep.counts["decisions_rules_recomputed"] = recomputed

    # A capped rule, and no agent to count the call against.
    capped = np.asarray([f.status == 0 and f.rule.has_cap for f in found], dtype=bool)[which]
    unnamed = capped & readable & (d.agent < 0) & (d.reason != _OBJECTION) & (d.reason != _CAP)
    old = np.flatnonzero(unnamed[:since])
    if old.size:
        rep.notes.append(
            f"{old.size:,} decisions logged before decisions logged their attributes are under "
            "a rule with a per-agent cap without an agent: samplers of that time recorded such "
            "calls uncapped"
        )
    rep.add_listed(
        "decisions",
        [
            (
                f"decided under rule {d.rules[int(d.rule[i])]!r}, which caps recordings per "
                "agent, without an agent: the cap could not count the call",
                {
                    **_rows_text(d, i),
                    "evidence": {
                        "rule": d.rules[int(d.rule[i])],
                        "reason": _reason(int(d.reason[i])),
                        "policy_version": d.versions[int(d.version[i])].hex(),
                    }
                    | _caps(found[int(which[i])].rule),
                },
            )
            for i in (np.flatnonzero(unnamed[since:]) + since).tolist()
        ],
        "decisions under a capped rule without an agent",
    )


def check_cap_reached(
    rep: AuditReport,
    d: Decisions,
    is_first: npt.NDArray[np.bool_],
    found: Sequence[Any],
    which: I64,
) -> None:
    """Replay every ``cap_reached`` decision (each call once): its rule has a cap in its
    policy version, it names an agent, and the agent's count was at the cap (module
    docstring)."""
    status = np.asarray([f.status for f in found], dtype=np.int8)[which]
    caps = np.flatnonzero(is_first & (d.reason == _CAP) & (status == 0))
    if not caps.size:
        return
    capped = np.asarray([f.status == 0 and f.rule.has_cap for f in found], dtype=bool)
    items: list[tuple[str, dict[str, Any]]] = []
    for i in caps[~capped[which[caps]]].tolist():
        items.append(
            (
                f"logged as cap reached under rule {d.rules[int(d.rule[i])]!r}, which has no "
                "cap in its policy version",
                {
                    **_rows_text(d, i),
                    "evidence": {
                        "rule": d.rules[int(d.rule[i])],
                        "policy_version": d.versions[int(d.version[i])].hex(),
                    },
                },
            )
        )
    on_capped = caps[capped[which[caps]]]
    for i in on_capped[(d.agent[on_capped] < 0) & (d.ref_kind[on_capped] > 0)].tolist():
        items.append(
            (
                "logged as cap reached without an agent: no count could have reached the cap",
                {**_rows_text(d, i), "evidence": {"rule": d.rules[int(d.rule[i])]}},
            )
        )
    rep.add_listed("decisions", items, "cap reached decisions of rules without caps or agents")

    replay = on_capped[(d.agent[on_capped] >= 0) & (d.time_us[on_capped] <= np.uint64(MAX_TIME_US))]
    rep.counts["decisions_cap_reached_replayed"] = int(replay.size)
    if not replay.size:
        return
    # The selections the samplers' ledger counted: first decisions, sampled, with an agent,
    # under a rule capped in their own policy version.
    counted = np.flatnonzero(
        is_first
        & (d.reason == _SAMPLED)
        & (d.agent >= 0)
        & capped[which]
        & (d.time_us <= np.uint64(MAX_TIME_US))
    )
    rows = np.concatenate([counted, replay])
    days = (d.time_us[rows] // np.uint64(_DAY_US)).astype(np.int64)
    uniq, day_code = np.unique(days, return_inverse=True)
    day_code = day_code.ravel()
    named = [cap_periods(from_micros(int(x) * _DAY_US), 1, 1) for x in uniq.tolist()]
    day_names = [dn for (dn, _), _ in named]
    weeks, week_of_day = np.unique(np.asarray([w for _, (w, _) in named]), return_inverse=True)
    period_of = (day_code, week_of_day.ravel()[day_code])
    period_names = (day_names, weeks.tolist())
    # For each cap_reached decision and each of its rule's periods: (count, cap, period name).
    at_cap = np.zeros(replay.size, dtype=bool)
    seen: list[list[tuple[int, int, str]]] = [[] for _ in range(replay.size)]
    m = counted.size
    for attr, p in _PERIODS:
        limits = np.asarray(
            [
                -1 if f.status != 0 or getattr(f.rule, attr) is None else getattr(f.rule, attr)
                for f in found
            ],
            dtype=np.int64,
        )[which[rows]]
        s_on = np.flatnonzero(limits[:m] >= 0)
        c_on = np.flatnonzero(limits[m:] >= 0)
        if not c_on.size:
            continue
        both = np.concatenate([s_on, c_on + m])
        r = rows[both]
        group = np.unique(
            np.stack([d.rule[r], d.agent[r], period_of[p][both]], axis=1),
            axis=0,
            return_inverse=True,
        )[1].ravel()
        gs, gc = group[: s_on.size], group[s_on.size :]
        # selections logged before the decision, in its group
        span = len(d) + 1
        by_row = np.sort(gs * span + rows[s_on])
        before = np.searchsorted(by_row, gc * span + replay[c_on]) - np.searchsorted(
            by_row, gc * span
        )
        # selections dated at most TIME_SLACK after it, in its group
        times = d.time_us[rows[s_on]].astype(np.int64)
        until = d.time_us[replay[c_on]].astype(np.int64) + _SLACK_US
        t, t_code = np.unique(np.concatenate([times, until]), return_inverse=True)
        t_code = t_code.ravel()
        width = t.size + 1
        by_time = np.sort(gs * width + t_code[: s_on.size])
        dated = np.searchsorted(by_time, gc * width + t_code[s_on.size :], side="right") - (
            np.searchsorted(by_time, gc * width)
        )
        count = np.maximum(before, dated)
        cap = limits[m:][c_on]
        at_cap[c_on] |= count >= cap
        for j, k, c, q in zip(
            c_on.tolist(),
            count.tolist(),
            cap.tolist(),
            period_of[p][m:][c_on].tolist(),
            strict=True,
        ):
            seen[j].append((k, c, period_names[p][q]))
    items = []
    for j in np.flatnonzero(~at_cap).tolist():
        i = int(replay[j])
        agent, rule = d.agent_name(i), d.rules[int(d.rule[i])]
        items.append(
            (
                f"logged as cap reached, but agent {agent!r} had "
                + " and ".join(f"{k} of {c} in {name}" for k, c, name in seen[j])
                + f" selected calls under rule {rule!r}: the cap was not reached",
                {
                    **_rows_text(d, i),
                    "evidence": {
                        "rule": rule,
                        "agent": agent,
                        "periods": {name: {"selected": k, "cap": c} for k, c, name in seen[j]},
                    },
                },
            )
        )
    rep.add_listed("decisions", items, "cap reached decisions below the cap")


def _caps(rule: Any) -> dict[str, int]:
    return {
        attr: getattr(rule, attr) for attr, _ in _PERIODS if getattr(rule, attr, None) is not None
    }


def _reason(code: int) -> str:
    return REASONS[code] if 0 <= code < len(REASONS) else f"#{code}"
