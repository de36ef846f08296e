"""The deployment audit's join of decisions across nodes, in columns (``_join_decisions`` in
sampledrec.audit.nodes), against the call-by-call reading it replaced, kept here as the
reference: for each call, each node's first decision; the earliest (time, then node name, then
index) wins; another node's decision with another outcome is a finding. Generated nodes share
calls, decide them at the same or other times, with other outcomes, by text or bytes, or with
the reference erased. With a policy that caps agents, the winners the caps across nodes count
are each call's, once, in the order of the calls."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sampledrec.audit.findings import AuditReport
from sampledrec.audit.nodes import _CAP, _SAMPLED, _join_caps, _join_decisions
from sampledrec.log.columns import (
    call_firsts,
    concat_decisions,
    counted_once,
    decisions_from_entries,
)
from sampledrec.log.format import DECISION, T_DECISION, Entry
from sampledrec.sampling.policy import Policy
from sampledrec.sampling.record import REASONS

REFS = ["c-1", "c-2", "c-3", b"c-1", b"\x00\x01", None]
EPOCHS = ["2026-03-01", "2026-03-02"]
RULES = ["sales", "default"]
AT = datetime(2026, 3, 9, tzinfo=UTC)


Call = tuple[int, str, int, Any, int]  # time, node, index, its node's decisions, row


def _calls(joined: list[tuple[str, Any, Any]]) -> dict[tuple[str, bool, bytes], list[Call]]:
    """Each call's first decision on each node, call by call, in the order calls first appear."""
    calls: dict[tuple[str, bool, bytes], list[Call]] = defaultdict(list)
    for name, d, _ in joined:
        if not len(d):
            continue
        for i in counted_once(call_firsts(d)).nonzero()[0].tolist():
            ref = d.ref(i)
            if ref is None:
                continue
            raw = ref.encode("utf-8") if isinstance(ref, str) else bytes(ref)
            key = (d.epochs[int(d.epoch[i])], isinstance(ref, str), raw)
            calls[key].append((int(d.time_us[i]), name, int(d.index[i]), d, i))
    return calls


def _reference(rep: AuditReport, joined: list[tuple[str, Any, Any]]) -> None:
    """The call-by-call join (the audit's before it worked in columns)."""
    calls = _calls(joined)
    several = 0
    for (epoch, _, _), found in calls.items():
        found.sort(key=lambda x: (x[0], x[1], x[2]))
        _, node0, index0, d0, i0 = found[0]
        several += len({x[1] for x in found}) > 1

        def outcome(d: Any, i: int) -> tuple[int, str, bytes, int]:
            return (
                int(d.reason[i]),
                d.rules[int(d.rule[i])],
                bytes(d.versions[int(d.version[i])]),
                int(d.threshold[i]),
            )

        for _, node, index, d, i in found[1:]:
            if node != node0 and outcome(d, i) != outcome(d0, i0):
                rep.add(
                    "decisions",
                    f"decided {REASONS[int(d.reason[i])]} under rule {d.rules[int(d.rule[i])]!r} "
                    f"on node {node}, after node {node0} decided it "
                    f"{REASONS[int(d0.reason[i0])]} under rule {d0.rules[int(d0.rule[i0])]!r}: "
                    "a call decided on two nodes must get the first decision",
                    index=index,
                    call_ref=d.ref_text(i),
                    epoch_id=epoch,
                    evidence={"node": node, "first_node": node0, "first_index": index0},
                )
    rep.checked.setdefault("decisions", {})["calls_decided_on_several_nodes"] = several


_decision = st.tuples(
    st.integers(0, 5),  # time
    st.integers(0, len(EPOCHS) - 1),
    st.integers(0, len(REFS) - 1),
    st.sampled_from([0, 1, 2]),  # reason code
    st.integers(0, len(RULES) - 1),
    st.sampled_from([b"\x01", b"\x02"]),  # policy version
    st.sampled_from([10, 20]),  # threshold
)


def _node(rows: list[tuple[int, int, int, int, int, bytes, int]]) -> Any:
    d = DECISION
    return decisions_from_entries(
        [
            Entry(
                index=3 * k + 1,
                type=T_DECISION,
                time_us=1_000_000 * t,
                fields={
                    d.epoch_id.name: EPOCHS[e],
                    d.rule.name: RULES[r],
                    d.policy_version.name: v,
                    d.threshold.name: th,
                    d.reason.name: reason,
                    **({} if REFS[ref] is None else {d.call_ref.name: REFS[ref]}),
                },
            )
            for k, (t, e, ref, reason, r, v, th) in enumerate(rows)
        ]
    )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(_decision, max_size=12), min_size=1, max_size=4),
    st.permutations(["node-b", "node-a", "node-c", "node-d"]),
)
def test_the_join_in_columns_says_what_the_call_by_call_join_said(
    nodes: list[list[Any]], names: list[str]
) -> None:
    joined: list[tuple[str, Any, Any]] = [
        (names[k], _node(rows), []) for k, rows in enumerate(nodes)
    ]
    every = concat_decisions([d for _, d, _ in joined])
    expected, got = AuditReport(store="x", at=AT), AuditReport(store="x", at=AT)
    _reference(expected, joined)
    _join_decisions(got, joined, every, call_firsts(every), {})
    assert got.to_json()["findings"] == expected.to_json()["findings"]
    assert got.checked == expected.checked
    if any(len(rows) for rows in nodes):
        assert len(every) == sum(map(len, nodes))


def test_a_call_decided_otherwise_on_a_later_node_is_a_finding() -> None:
    early = (1, 0, 0, 1, 0, b"\x01", 10)  # c-1 not sampled under sales at t=1
    later = (2, 0, 0, 0, 0, b"\x01", 10)  # c-1 sampled at t=2, on another node
    joined: list[tuple[str, Any, Any]] = [
        ("node-b", _node([later]), []),
        ("node-a", _node([early]), []),
    ]
    every = concat_decisions([d for _, d, _ in joined])
    rep = AuditReport(store="x", at=AT)
    _join_decisions(rep, joined, every, call_firsts(every), {})
    (finding,) = rep.findings
    assert finding.evidence == {"node": "node-b", "first_node": "node-a", "first_index": 1}
    assert rep.checked["decisions"]["calls_decided_on_several_nodes"] == 1
    assert np.asarray(REASONS)[0] in finding.message


# -- caps across nodes: the winners handed to the cap check, in the order of the calls ---------

CAPPED = Policy.from_toml(
    """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.2"
purpose = "quality"
retention = "10 days"
max_per_agent_per_day = 1
max_per_agent_per_week = 2

[default]
rate = "0.1"
purpose = "quality"
retention = "3 days"
max_per_agent_per_day = 2
"""
)
CAPPED_VERSION = bytes.fromhex(CAPPED.version)
AGENTS = [None, "ann", "bob"]
DAY0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1e6)
_capped_decision = st.tuples(
    st.integers(0, 30),  # time, in 8-hour steps: several days and weeks
    st.integers(0, len(EPOCHS) - 1),
    st.integers(0, len(REFS) - 1),
    st.sampled_from([_SAMPLED, _SAMPLED, _CAP, 1, 2]),  # mostly what the caps count
    st.sampled_from(["sales", "default", "gone"]),  # "gone": a rule the policy lacks
    st.sampled_from([CAPPED_VERSION, CAPPED_VERSION, b"\x02"]),  # b"\x02": unknown policy
    st.integers(0, len(AGENTS) - 1),
)


def _capped_node(rows: list[tuple[int, int, int, int, str, bytes, int]]) -> Any:
    d = DECISION
    return decisions_from_entries(
        [
            Entry(
                index=3 * k + 1,
                type=T_DECISION,
                time_us=DAY0 + 8 * 3600 * 1_000_000 * t,
                fields={
                    d.epoch_id.name: EPOCHS[e],
                    d.rule.name: rule,
                    d.policy_version.name: v,
                    d.threshold.name: 10,
                    d.reason.name: reason,
                    **({} if AGENTS[a] is None else {d.agent.name: AGENTS[a]}),
                    **({} if REFS[ref] is None else {d.call_ref.name: REFS[ref]}),
                },
            )
            for k, (t, e, ref, reason, rule, v, a) in enumerate(rows)
        ]
    )


def _reference_winners(joined: list[tuple[str, Any, Any]]) -> list[Call]:
    """Each call's winner, call by call, in the order the calls first appear."""
    return [min(found, key=lambda x: (x[0], x[1], x[2])) for found in _calls(joined).values()]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(_capped_decision, max_size=14), min_size=1, max_size=4),
    st.permutations(["node-b", "node-a", "node-c", "node-d"]),
)
def test_caps_across_nodes_count_each_calls_winner_once(
    nodes: list[list[Any]], names: list[str]
) -> None:
    """The caps across nodes see each call's winner once, whether the call was decided once
    (it wins alone) or on several nodes, and in the order of the calls (the order of the
    cap-reached findings)."""
    joined: list[tuple[str, Any, Any]] = [
        (names[k], _capped_node(rows), []) for k, rows in enumerate(nodes)
    ]
    every = concat_decisions([d for _, d, _ in joined])
    policies = {CAPPED_VERSION: CAPPED}
    expected, got = AuditReport(store="x", at=AT), AuditReport(store="x", at=AT)
    _reference(expected, joined)
    _join_caps(expected, _reference_winners(joined), policies)
    _join_decisions(got, joined, every, call_firsts(every), policies)
    assert got.to_json()["findings"] == expected.to_json()["findings"]
    assert got.checked == expected.checked
    assert dict(got.counts) == dict(expected.counts)
