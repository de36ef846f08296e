"""Rules and caps replayed by the audit, against a dishonest operator.

An honest, non-simulated store uses several rules (matched on queue, direction and campaign),
a daily and a weekly per-agent cap, calls decided one by one and in batches, and the carrier's
call records with attribute columns; it passes. Then each test takes a copy and cheats on it
as an operator holding every key would, writing decision entries with the library's own log
(the sampler refuses some of these cheats: the operator goes around it), and checks that the
audit reports FAIL on the right check with the evidence.

All times are in the past (2026-03), so that keys are revealed by the real clock.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Store, draw
from sampledrec.audit.verify import AuditReport, audit_verify
from sampledrec.keys.keyring import epoch_id_at
from sampledrec.log.columns import read_log
from sampledrec.log.writer import DecisionLog
from sampledrec.sampling import DecisionRecord, Policy, Sampler
from sampledrec.sampling.record import Reason
from sampledrec.testing import MemoryKeyring

POLICY = """
[[rules]]
name = "outbound_sales"
match = { queue = "sales", direction = "outbound" }
rate = "0.5"
justification = "Pilot of the outbound sales script, reviewed weekly by QA"
purpose = "quality"
retention = "10 days"
max_per_agent_per_day = 2

[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.25"
purpose = "quality"
retention = "10 days"
max_per_agent_per_week = 3

[[rules]]
name = "campaigns"
match = { campaign = ["spring", "summer"] }
rate = "0.2"
purpose = "training"
retention = "5 days"

[default]
rate = "0.1"
purpose = "quality"
retention = "3 days"
"""
INIT = datetime(2026, 3, 2, 8, tzinfo=UTC)
DAY1 = datetime(2026, 3, 2, 9, tzinfo=UTC)  # a Monday: both days are in one ISO week
DAY2 = datetime(2026, 3, 3, 9, tzinfo=UTC)
REVEAL_AT = datetime(2026, 3, 4, 0, 0, 1, tzinfo=UTC)
OPERATOR_AT = datetime(2026, 3, 6, 13, tzinfo=UTC)  # when the operator cheats
AUDIT_AT = datetime(2026, 3, 6, 20, tzinfo=UTC)
CALLS = 160  # a day
ATTRIBUTES = ("agent", "campaign", "direction", "queue")


def _attrs(i: int) -> dict[str, str]:
    """Calls of every rule: outbound sales (3 agents, 2 a day each), inbound sales (2 agents,
    3 a week each), campaigns (with or without an agent), the rest."""
    kind = i % 4
    if kind == 0:
        return {"queue": "sales", "direction": "outbound", "agent": f"a{(i // 4) % 3}"}
    if kind == 1:
        return {"queue": "sales", "direction": "inbound", "agent": f"b{(i // 4) % 2}"}
    if kind == 2:
        attrs = {"campaign": ("spring", "summer")[(i // 4) % 2], "queue": "support"}
        return attrs | ({"agent": "c0"} if i % 3 else {})
    return {"queue": "support", "campaign": "autumn", "direction": "inbound"}


@dataclass
class Honest:
    base: Path
    refs: list[str]


def _cdr(path: Path, rows: list[tuple[str, datetime, dict[str, str]]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["call_ref", "start_time", *ATTRIBUTES, "trunk"])
        for ref, at, attrs in rows:
            out.writerow([ref, at.isoformat(), *(attrs.get(a, "") for a in ATTRIBUTES), "t1"])


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Honest:
    base = tmp_path_factory.mktemp("rules")
    (base / "p.toml").write_text(POLICY)
    store = Store.init(base / "store", policy=base / "p.toml", clock=FixedClock(INIT))
    rows: list[tuple[str, datetime, dict[str, str]]] = []
    # Day 1: one call at a time.
    clock = FixedClock(DAY1)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(CALLS):
            ref = f"d1-{i:03d}"
            sampler.decide(ref, _attrs(i))
            rows.append((ref, DAY1, _attrs(i)))
    # Day 2: the same kinds of calls in two batches.
    clock = FixedClock(DAY2)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for half in range(2):
            picked = range(half * CALLS // 2, (half + 1) * CALLS // 2)
            refs = [f"d2-{i:03d}" for i in picked]
            cols = {a: [_attrs(i).get(a) for i in picked] for a in ATTRIBUTES}
            sampler.decide_batch(refs, cols)
            rows += [(ref, DAY2, _attrs(i)) for ref, i in zip(refs, picked, strict=True)]
    keys = store.reveal_keys(now=REVEAL_AT)
    store.write_revealed(keys, base / "revealed.json")
    _cdr(base / "cdr.csv", rows)
    return Honest(base, [ref for ref, _, _ in rows])


@pytest.fixture
def case(honest: Honest, tmp_path: Path) -> Path:
    """A private copy of the honest store, for one test to cheat on."""
    shutil.copytree(honest.base / "store", tmp_path / "store")
    shutil.copy(honest.base / "revealed.json", tmp_path / "revealed.json")
    shutil.copy(honest.base / "cdr.csv", tmp_path / "cdr.csv")
    return tmp_path


def _audit(case: Path, **kw: Any) -> AuditReport:
    kw.setdefault("now", AUDIT_AT)
    rep = audit_verify(case / "store", case / "revealed.json", **kw)
    json.dumps(rep.to_json())  # what --json prints: every finding's evidence is JSON
    return rep


def _found(rep: AuditReport, check: str, text: str) -> list[dict[str, Any]]:
    return [f.to_json() for f in rep.findings if f.check == check and text in f.message]


@dataclass
class Operator:
    store: Store
    log: DecisionLog
    sampler: Sampler
    clock: FixedClock

    def forge(
        self,
        prefix: str,
        rule: str,
        reason: Reason,
        attrs: dict[str, str],
        *,
        agent: str | None = None,
        attributes: str | None = "",
        at: datetime | None = None,
    ) -> tuple[int, DecisionRecord]:
        """Log a decision as the operator writes it: a correct draw under the epoch's key,
        the rule, threshold and reason chosen, ``attrs`` logged as the call's attributes
        (``attributes`` instead, if given; None: none). Returns its index and the record."""
        at = at or self.clock.now()
        epoch = epoch_id_at(at)
        policy = self.store.policy(at)
        chosen = policy.rule_named(rule)
        key = self.store.keyring.epoch_key(epoch)
        for k in range(5000):
            ref = f"{prefix}-{k}"
            r = draw(key, ref)
            if (r < chosen.threshold) == (reason in ("sampled", "cap_reached")):
                break
        record = DecisionRecord(
            epoch_id=epoch,
            policy_version=policy.version,
            rule=rule,
            threshold=chosen.threshold,
            reason=reason,
            draw=r,
            call_ref=ref,
            agent=agent,
            caller_pseudonym=None,
            decided_at=at,
            attributes=policy.attributes_json(attrs) if attributes == "" else attributes,
        )
        return self.log.wait_durable(self.log.append_decision(record)), record


@contextlib.contextmanager
def operator(case: Path) -> Iterator[Operator]:
    store = Store.open(case / "store")
    clock = FixedClock(OPERATOR_AT)
    with store.open_log(clock=clock) as log:
        yield Operator(store, log, store.sampler(clock=clock, log=log), clock)


# -- the honest store ----------------------------------------------------------------------------


def test_an_honest_store_with_several_rules_caps_and_attributes_passes(honest: Honest) -> None:
    rep = audit_verify(
        honest.base / "store",
        honest.base / "revealed.json",
        cdr=honest.base / "cdr.csv",
        now=AUDIT_AT,
    )
    assert rep.verdict == "PASS", rep.to_text()
    doc = rep.to_json()
    assert doc["checks"] == dict.fromkeys(doc["checks"], "PASS") | {"recordings": "SKIPPED"}
    decisions = doc["results"]["decisions"]["checked"]
    assert decisions["recomputed"] == decisions["rules_recomputed"] == 2 * CALLS
    assert decisions["caps_reached_replayed"] == rep.counts["decisions_cap_reached"] > 0
    cdr = doc["results"]["cdr"]["checked"]
    # queue, direction, campaign and agent of each call, where the call has them
    assert cdr["attribute_values_compared"] == 2 * sum(len(_attrs(i)) for i in range(CALLS))
    keyring = Store.open(honest.base / "store").keyring
    d = read_log(honest.base / "store" / "log", keyring).decisions
    rules = {d.rules[c] for c in d.rule.tolist()}
    assert rules == {"outbound_sales", "sales", "campaigns", "default"}
    assert set(d.attribute_sets) >= {
        '{"direction":"outbound","queue":"sales"}',
        '{"campaign":"spring","queue":"support"}',
    }
    assert not rep.notes or all("attributes" not in n for n in rep.notes)


def test_decide_and_decide_batch_log_the_same_bytes(tmp_path: Path) -> None:
    class Sink:
        def __init__(self) -> None:
            self.records: list[DecisionRecord] = []

        def append_decision(self, record: DecisionRecord) -> int:
            self.records.append(record)
            return len(self.records)

    policy = Policy.from_toml(POLICY, source="test")
    one, many = Sink(), Sink()
    clock = FixedClock(DAY1)
    single = Sampler(policy, MemoryKeyring(seed=b"same"), clock=clock, log=one)
    batch = Sampler(policy, MemoryKeyring(seed=b"same"), clock=clock, log=many)
    refs = [f"c-{i}" for i in range(200)]
    for i, ref in enumerate(refs):
        single.decide(ref, _attrs(i))
    batch.decide_batch(refs, {a: [_attrs(i).get(a) for i in range(200)] for a in ATTRIBUTES})
    assert many.records == one.records
    assert {r.reason for r in one.records} >= {"sampled", "not_sampled", "cap_reached"}

    log = DecisionLog(tmp_path, MemoryKeyring(seed=b"k"), origin="o", store_id=bytes(16))

    def encoded(records: list[DecisionRecord]) -> bytes:
        log._sealer.counter = 0  # the same keystream for both
        return log._records([(i + 1, r) for i, r in enumerate(records)])

    assert encoded(many.records) == encoded(one.records)


# -- rules ---------------------------------------------------------------------------------------


def test_a_call_decided_under_a_rule_its_attributes_do_not_match(case: Path) -> None:
    # An outbound sales call (50%, capped) logged under the default rule (10%, no cap).
    attrs = {"queue": "sales", "direction": "outbound"}
    with operator(case) as op:
        index, record = op.forge("mislabelled", "default", "not_sampled", attrs, agent="a0")
    rep = _audit(case)
    assert rep.status("decisions") == "FAIL"
    (bad,) = _found(rep, "decisions", "decided under a rule the call's attributes do not match")
    assert bad["index"] == index and bad["call_ref"] == record.call_ref
    assert bad["evidence"] == {
        "logged_rule": "default",
        "expected_rule": "outbound_sales",
        "attributes": attrs,
        "policy_version": record.policy_version,
    }


def test_a_decision_that_leaves_out_its_attributes(case: Path) -> None:
    with operator(case) as op:
        index, _ = op.forge("bare", "default", "sampled", {}, attributes=None)
        unread, _ = op.forge("garbled", "default", "not_sampled", {}, attributes="queue=sales")
    rep = _audit(case)
    (bare,) = _found(rep, "decisions", "does not log the attributes its rule matched on")
    assert bare["index"] == index and bare["evidence"] == {"rule": "default"}
    (garbled,) = _found(rep, "decisions", "the logged attributes cannot be read")
    assert garbled["index"] == unread and garbled["evidence"] == {"attributes": "queue=sales"}


# -- caps ----------------------------------------------------------------------------------------


def test_a_selected_call_logged_as_cap_reached_on_a_rule_without_a_cap(case: Path) -> None:
    attrs = {"campaign": "spring"}
    with operator(case) as op:
        index, record = op.forge("hidden", "campaigns", "cap_reached", attrs, agent="c0")
    rep = _audit(case)
    (bad,) = _found(rep, "decisions", "logged as cap reached under rule 'campaigns'")
    assert "which has no cap in its policy version" in bad["message"]
    assert bad["index"] == index and bad["call_ref"] == record.call_ref
    assert bad["evidence"] == {"rule": "campaigns", "policy_version": record.policy_version}


def test_a_selected_call_logged_as_cap_reached_below_the_cap(case: Path) -> None:
    attrs = {"queue": "sales", "direction": "outbound", "agent": "yan"}
    with operator(case) as op:
        # One honest selection for a new agent (the daily cap is 2), then a forged refusal.
        d = next(
            d
            for d in (op.sampler.decide(f"yan-{k}", attrs) for k in range(100))
            if d.reason == "sampled"
        )
        assert d.rule == "outbound_sales"
        index, record = op.forge("yan-hidden", "outbound_sales", "cap_reached", attrs, agent="yan")
    rep = _audit(case)
    (bad,) = _found(rep, "decisions", "logged as cap reached, but agent 'yan' had 1 of 2")
    assert bad["index"] == index and bad["call_ref"] == record.call_ref
    assert bad["evidence"] == {
        "rule": "outbound_sales",
        "agent": "yan",
        "periods": {"D2026-03-06": {"selected": 1, "cap": 2}},
    }
    assert rep.status("decisions") == "FAIL"


def test_cap_reached_counts_selections_logged_a_little_later(case: Path) -> None:
    """Processes log their batches independently: a selection the ledger counted before a
    refusal may reach the log after it, dated a little before or after. Within a minute of the
    refusal it counts; a selection dated later does not."""
    attrs = {"queue": "sales", "direction": "outbound"}
    t = OPERATOR_AT
    with operator(case) as op:
        op.forge("vic-1", "outbound_sales", "sampled", attrs, agent="vic", at=t)
        ok, _ = op.forge("vic-2", "outbound_sales", "cap_reached", attrs, agent="vic", at=t)
        op.forge("vic-3", "outbound_sales", "sampled", attrs, agent="vic", at=t)  # logged later
        op.forge("wes-1", "outbound_sales", "sampled", attrs, agent="wes", at=t)
        late, _ = op.forge("wes-2", "outbound_sales", "cap_reached", attrs, agent="wes", at=t)
        op.forge(
            "wes-3", "outbound_sales", "sampled", attrs, agent="wes", at=t + timedelta(minutes=2)
        )
    rep = _audit(case)
    (bad,) = _found(rep, "decisions", "logged as cap reached, but agent")
    assert bad["index"] == late and "'wes' had 1 of 2" in bad["message"]
    assert rep.checked["decisions"]["caps_reached_replayed"] == rep.counts["decisions_cap_reached"]
    assert not [f for f in rep.findings if f.index == ok]  # vic's second selection counted


def test_a_capped_rule_decided_without_the_agent(case: Path) -> None:
    attrs = {"queue": "sales", "direction": "inbound"}
    with operator(case) as op:
        with pytest.raises(ValueError, match="caps recordings per agent"):
            op.sampler.decide("dodge-0", attrs)  # the library refuses it...
        index, record = op.forge("dodge", "sales", "sampled", attrs)  # ...the operator does not
        nameless, _ = op.forge("dodge-cap", "sales", "cap_reached", attrs)
    rep = _audit(case)
    (bad,) = _found(rep, "decisions", "which caps recordings per agent, without an agent")
    assert bad["index"] == index and bad["call_ref"] == record.call_ref
    assert bad["evidence"] == {
        "rule": "sales",
        "reason": "sampled",
        "policy_version": record.policy_version,
        "max_per_agent_per_week": 3,
    }
    (capped,) = _found(rep, "decisions", "logged as cap reached without an agent")
    assert capped["index"] == nameless
    # With the carrier's records, which name the agent who took the call:
    with open(case / "cdr.csv", "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow(
            [record.call_ref, OPERATOR_AT.isoformat(), "b0", "", "inbound", "sales", ""]
        )
    rep = _audit(case, cdr=case / "cdr.csv")
    (agent,) = _found(rep, "cdr", "give another 'agent'")
    assert agent["index"] == index and agent["evidence"]["logged"] is None
    assert agent["evidence"]["carrier"] == "b0"


# -- the carrier's call records ------------------------------------------------------------------


def test_attributes_that_disagree_with_the_carriers_call_records(case: Path) -> None:
    # The carrier routed an outbound sales call of agent a0; the operator tells the sampler it
    # was a support call without an agent (10%, no cap).
    truth = {"queue": "sales", "direction": "outbound", "agent": "a0"}
    with operator(case) as op:
        d = op.sampler.decide("cheat-1", {"queue": "support"})
        op.log.flush()
    assert d.rule == "default"
    with open(case / "cdr.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    rows.append(["cheat-1", OPERATOR_AT.isoformat(), *(truth.get(a, "") for a in ATTRIBUTES), ""])
    # and an honest call of agent a0 that the carrier gives to a9 (line 2: d1-000)
    assert rows[1][0] == "d1-000" and rows[1][2] == "a0"
    rows[1][2] = "a9"
    with open(case / "cdr.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    rep = _audit(case, cdr=case / "cdr.csv")
    assert rep.status("cdr") == "FAIL"
    found = {
        (f["call_ref"], f["evidence"]["attribute"]): f
        for f in _found(rep, "cdr", "the carrier's call records give another")
    }
    # Not the agent of cheat-1: a call of an uncapped rule may be decided before its agent is
    # known. The attributes that chose its rule are compared.
    assert set(found) == {("cheat-1", "queue"), ("cheat-1", "direction"), ("d1-000", "agent")}
    queue = found[("cheat-1", "queue")]
    assert queue["call_ref"] == "cheat-1" and queue["epoch_id"] == "2026-03-06"
    assert queue["evidence"] == {
        "attribute": "queue",
        "logged": "support",
        "carrier": "sales",
        "rule": "default",
        "cdr_row": len(rows),
    }
    assert found[("cheat-1", "direction")]["evidence"]["logged"] is None
    agent = found[("d1-000", "agent")]
    assert agent["evidence"] == {
        "attribute": "agent",
        "logged": "a0",
        "carrier": "a9",
        "rule": "outbound_sales",
        "cdr_row": 2,
    }
