"""The sampler: reasons, objections, caps, idempotency, and decide_batch == decide."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampledrec import Decision, FixedClock, ObjectionList, Policy, Sampler, draw, threshold
from sampledrec.errors import InvalidArgument, InvalidCallRef
from sampledrec.sampling.keyed import call_ref_bytes
from sampledrec.testing import MemoryKeyring

POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.5"
justification = "Pilot month for the new sales script, reviewed weekly by QA"
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = 2
max_per_agent_per_week = 3

[[rules]]
name = "support"
match = { queue = "support", direction = "inbound" }
rate = "0.2"
purpose = "training"
retention = "3 months"

[[rules]]
name = "never"
match = { queue = "internal" }
rate = "0"
purpose = "quality"
retention = "1 month"

[default]
rate = "0.1"
purpose = "quality"
retention = "6 months"
"""

T0 = "2026-11-23T09:00:00Z"  # a Monday


def make(seed: bytes = b"k", at: str = T0, **kw: object) -> tuple[Sampler, FixedClock]:
    clock = FixedClock(at)
    policy = Policy.from_toml(POLICY, source="test")
    return Sampler(policy, MemoryKeyring(seed=seed), clock=clock, **kw), clock  # type: ignore[arg-type]


def test_decision_matches_the_spec() -> None:
    sampler, clock = make()
    keyring = sampler._keyring
    d = sampler.decide("call-1", {"queue": "support", "direction": "inbound", "agent": "a1"})
    key = keyring.epoch_key("2026-11-23")
    assert d.epoch_id == "2026-11-23"
    assert d.draw == draw(key.secret_bytes(), "call-1")
    assert d.rule == "support" and d.purpose == "training" and d.rate == "0.2"
    assert d.threshold == threshold("0.2")
    assert d.record == (d.draw < d.threshold)
    assert d.reason == ("sampled" if d.record else "not_sampled")
    assert d.policy_version == sampler.policy.version
    assert d.decided_at == clock.now()
    assert d.agent == "a1"
    doc = d.to_json()
    assert doc["draw"] == str(d.draw) and doc["threshold"] == str(d.threshold)


def test_reasons_cover_sampled_and_not_sampled() -> None:
    sampler, _ = make()
    reasons = {sampler.decide(f"c{i}", {"queue": "x"}).reason for i in range(200)}
    assert reasons == {"sampled", "not_sampled"}
    # New calls (the c{i} are decided: asking again would only repeat their decisions).
    assert all(not sampler.decide(f"i{i}", {"queue": "internal"}).record for i in range(200))


def test_keys_created_ahead_and_reported() -> None:
    seen: list[str] = []
    sampler, clock = make(on_new_keys=lambda keys: seen.extend(k.epoch_id for k in keys))
    sampler.decide("a")
    assert seen == [f"2026-11-{d}" for d in range(23, 30)]
    clock.advance(days=1)
    sampler.decide("b")
    assert seen[-1] == "2026-11-30" and len(seen) == 8


def test_same_ref_same_epoch_same_decision_and_new_epoch_new_draw() -> None:
    sampler, clock = make()
    a = sampler.decide("ref-x", {"queue": "y"})
    assert sampler.decide(b"ref-x", {"queue": "y"}).draw == a.draw
    clock.advance(days=1)
    assert sampler.decide("ref-x", {"queue": "y"}).draw != a.draw


def test_objection_attribute_never_records() -> None:
    sampler, _ = make()
    for value in (True, "true", "yes", "1", "TRUE"):
        for i in range(50):  # new calls for each value (a repeat would answer for the first)
            attrs = {"queue": "sales", "agent": "a", "objection": value}
            d = sampler.decide(f"o{value!r}-{i}", attrs)
            assert not d.record and d.reason == "objection" and not d.repeat
    d = sampler.decide("o-new", {"queue": "x", "objection": "false"})
    assert d.reason != "objection"


def test_objection_list_by_caller_number() -> None:
    keyring = MemoryKeyring(seed=b"o")
    objections = ObjectionList(keyring.pseudonym_key())
    objections.add("+33 6 12 34 56 78")
    policy = Policy.from_toml(POLICY, source="test")
    sampler = Sampler(policy, keyring, clock=FixedClock(T0), objections=objections)
    for i in range(50):
        d = sampler.decide(f"c{i}", {"queue": "sales"}, caller="0033612345678")
        assert d.reason == "objection" and not d.record
        assert d.caller_pseudonym is not None and "612345678" not in d.caller_pseudonym
    assert any(
        sampler.decide(f"c{i}", {"queue": "x"}, caller="+441234567890").record for i in range(100)
    )


def test_daily_and_weekly_caps_in_decision_order() -> None:
    sampler, clock = make()
    attrs = {"queue": "sales", "agent": "alice"}
    day1 = [sampler.decide(f"d1-{i}", attrs) for i in range(40)]
    sampled = [d for d in day1 if d.reason == "sampled"]
    assert len(sampled) == 2  # daily cap
    below = [d for d in day1 if d.draw < d.threshold]
    assert [d.reason for d in below[2:]] == ["cap_reached"] * (len(below) - 2)
    assert all(not d.record for d in below[2:])
    # Another agent has their own count.
    assert (
        sum(sampler.decide(f"b-{i}", {"queue": "sales", "agent": "bob"}).record for i in range(40))
        == 2
    )
    clock.advance(days=1)
    day2 = [sampler.decide(f"d2-{i}", attrs) for i in range(40)]
    assert sum(d.record for d in day2) == 1  # weekly cap of 3
    clock.advance(days=7)
    day9 = [sampler.decide(f"d9-{i}", attrs) for i in range(40)]
    assert sum(d.record for d in day9) == 2  # a new ISO week


def test_retry_of_capped_call_does_not_count_twice() -> None:
    sampler, _ = make()
    attrs = {"queue": "sales", "agent": "carol"}
    first = [sampler.decide(f"r-{i}", attrs) for i in range(20)]
    again = [sampler.decide(f"r-{i}", attrs) for i in range(20)]
    assert first == again
    assert sum(d.record for d in first) == 2


def test_a_call_without_agent_under_a_capped_rule_is_refused() -> None:
    # Nobody to count it against: recorded, it would escape the cap unseen (the audit reports
    # such a decision), so it is refused before anything is decided, whatever its draw.
    sink = _Sink()
    sampler, _ = make(log=sink)
    for i in range(20):
        with pytest.raises(InvalidArgument, match="rule 'sales' caps recordings per agent"):
            sampler.decide(f"n-{i}", {"queue": "sales"})
    with pytest.raises(InvalidArgument, match=r"call 1 of the batch: rule 'sales' caps"):
        sampler.decide_batch(["b-0", "b-1"], {"queue": ["sales"] * 2, "agent": ["a", None]})
    assert sink.records == []  # nothing decided, logged or counted
    # An objection needs no count; a repeat keeps its first decision; other rules need nothing.
    assert sampler.decide("o-1", {"queue": "sales", "objection": "yes"}).reason == "objection"
    first = sampler.decide("r-1", {"queue": "sales", "agent": "a"})
    again = sampler.decide("r-1", {"queue": "sales"})
    assert again.repeat and again._replace(agent="a") == first
    batch = sampler.decide_batch(
        ["r-1", "r-2", "r-2"], {"queue": ["sales"] * 3, "agent": [None, "b", None]}
    )
    assert batch.repeat is not None and batch.repeat.tolist() == [True, False, True]
    assert sampler.decide("s-1", {"queue": "support"}).agent is None


def test_bad_inputs() -> None:
    sampler, _ = make()
    with pytest.raises(InvalidCallRef):
        sampler.decide("")
    with pytest.raises(TypeError):
        sampler.decide(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        sampler.decide_batch(["a", "b"], {"queue": ["x"]})
    with pytest.raises(InvalidArgument):
        Sampler("policy.toml", MemoryKeyring())  # type: ignore[arg-type]


def test_new_policy_version_is_named() -> None:
    sampler, _ = make()
    old = sampler.policy.version
    sampler.set_policy(Policy.from_toml(POLICY.replace('rate = "0.1"', 'rate = "0.2"')))
    d = sampler.decide("p")
    assert d.policy_version != old and d.rate == "0.2"


QUEUES = st.sampled_from(["sales", "support", "internal", "other", None])
DIRECTIONS = st.sampled_from(["inbound", "outbound", None])
AGENTS = st.sampled_from(["a1", "a2", "a3", None])
OBJ = st.sampled_from([None, None, None, "true", False])


@settings(max_examples=40, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.integers(0, 40), QUEUES, DIRECTIONS, AGENTS, OBJ), min_size=1, max_size=120
    ),
    form=st.sampled_from(["list", "S", "U"]),
)
def test_decide_batch_equals_decide_call_by_call(
    calls: list[tuple[int, str | None, str | None, str | None, object]], form: str
) -> None:
    refs = [f"call-{n}" for n, *_ in calls]  # duplicates on purpose: retries
    cols: dict[str, list[object]] = {
        "queue": [c[1] for c in calls],
        "direction": [c[2] for c in calls],
        # the capped sales rule refuses calls without an agent: mostly, give one
        "agent": [c[3] or ("a1" if c[1] == "sales" and c[0] % 8 else None) for c in calls],
        "objection": [c[4] for c in calls],
    }
    one, _ = make(seed=b"same")
    many, _ = make(seed=b"same")
    singles = []
    batch_refs: object = refs if form == "list" else np.asarray(refs, dtype=form)
    for i, ref in enumerate(refs):
        attrs = {k: v[i] for k, v in cols.items() if v[i] is not None}
        try:
            singles.append(one.decide(ref, attrs))
        except InvalidArgument as exc:  # refused: so is the batch, at the same call
            with pytest.raises(InvalidArgument, match=re.escape(f"call {i} of the batch: {exc}")):
                many.decide_batch(batch_refs, cols)  # type: ignore[arg-type]
            return
    batch = many.decide_batch(batch_refs, cols)  # type: ignore[arg-type]
    assert len(batch) == len(singles)
    assert batch.draws.dtype == np.uint64 and batch.record.dtype == np.bool_
    for single, got in zip(singles, batch, strict=True):
        assert isinstance(got, Decision)
        assert (got.record, got.reason, got.rule, got.draw, got.threshold, got.agent) == (
            single.record,
            single.reason,
            single.rule,
            single.draw,
            single.threshold,
            single.agent,
        )
        assert call_ref_bytes(got.call_ref) == call_ref_bytes(single.call_ref)


def test_decide_batch_reason_names_and_rule_names() -> None:
    sampler, _ = make()
    batch = sampler.decide_batch(
        np.asarray([f"x{i}" for i in range(1000)], dtype="S"),
        {"queue": np.asarray(["support"] * 1000), "direction": ["inbound"] * 1000},
    )
    assert set(batch.rule_names.tolist()) == {"support"}
    assert set(batch.reasons.tolist()) <= {"sampled", "not_sampled"}
    rate = batch.record.mean()
    assert 0.15 < rate < 0.25


def test_epoch_changes_at_utc_midnight() -> None:
    sampler, clock = make(at="2026-11-23T23:59:59.999Z")
    assert sampler.decide("m").epoch_id == "2026-11-23"
    clock.advance(milliseconds=1)
    assert sampler.decide("m").epoch_id == "2026-11-24"
    clock.set(clock.now() + timedelta(hours=5))
    assert sampler.decide_batch(["m"]).epoch_id == "2026-11-24"


# -- attributes the policy does not know (issue #12) -------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.records: list[object] = []

    def append_decision(self, record: object) -> int:
        self.records.append(record)
        return len(self.records)


def test_a_typo_in_an_attribute_name_warns_with_a_suggestion() -> None:
    from sampledrec.errors import UnknownAttributeWarning

    sampler, _ = make()
    with pytest.warns(UnknownAttributeWarning, match=r"'quue' .*did you mean 'queue'\?") as seen:
        d = sampler.decide("c1", {"quue": "sales", "agent": "a1"})
    assert d.rule == "default"  # where the typo sends the call: hence the warning
    assert [w.filename for w in seen] == [__file__]  # it points at the caller's line
    with pytest.warns(UnknownAttributeWarning, match="'quue'"):
        sampler.decide_batch(["c1", "c2"], {"quue": ["sales", "support"]})
    attrs = {"queue": "sales", "direction": "inbound", "objection": "no", "agent": "a1"}
    sampler.decide("c3", attrs)  # known names: no warning


def test_a_declared_policy_refuses_unknown_attributes_before_deciding() -> None:
    policy = Policy.from_toml(
        POLICY + '\n[attributes]\nnames = ["queue", "direction", "campaign"]\n', source="test"
    )
    sink = _Sink()
    sampler = Sampler(policy, MemoryKeyring(), clock=FixedClock(T0), log=sink)
    assert sampler.decide("c1", {"campaign": "spring", "queue": "support"}).rule == "default"
    with pytest.raises(InvalidArgument, match=r"attribute 'quue' .*did you mean 'queue'\?"):
        sampler.decide("c2", {"quue": "sales"})
    with pytest.raises(InvalidArgument, match="attribute 'quue'"):
        sampler.decide_batch(["c3"], {"quue": ["sales"]})
    assert len(sink.records) == 1  # nothing was decided (or logged) for the refused calls


def test_module_doctests() -> None:
    import doctest

    import sampledrec.sampling.sampler

    assert doctest.testmod(sampledrec.sampling.sampler).failed == 0


def test_an_agent_that_is_not_valid_unicode_is_refused_before_it_reaches_the_log() -> None:
    # JSON and Python strings allow lone surrogates; the log keeps the agent as UTF-8, and one
    # such record handed to the log's writer would stop it for every caller of the process.
    sampler, _ = make()
    with pytest.raises(InvalidArgument, match="lone surrogate"):
        sampler.decide("c1", {"agent": "a\ud800"})
    with pytest.raises(InvalidArgument, match="lone surrogate"):
        sampler.decide_batch(["c2", "c3"], {"agent": ["ok", "b\udfff"]})
    assert sampler.decide("c4", {"agent": "Zoë"}).agent == "Zoë"
