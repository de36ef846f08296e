"""Red team: a dishonest operator holding every key, against ``audit verify`` (store and kit).

Each test cheats on a copy of the honest store of tests/test_audit_attacks.py with the
library's internals, in ways the other attack tests do not try, and asserts what the audit
SHOULD report. Tests of cheats the audit does not catch yet are marked
``xfail(strict=True)`` with the gap in their reason: when the audit learns to catch one, the
test XPASSes and strict mode makes the suite say so (then drop the mark, as was done for the
repeat under another rule, the late recording, the late hold, the early tombstone, the UUID in
two forms, the backdated decision in a simulated store and the objection lifted for a few
minutes, which is a note: a caller may withdraw an objection and object again). Tests of limits that
are such by design (docs/auditor-guide.md, "What the audit from a kit cannot see") pin the
limit, so that a change in it is noticed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from sampledrec import FixedClock, Store, draw
from sampledrec.audit.kit import audit_kit, write_kit
from sampledrec.audit.verify import AuditReport, audit_verify
from sampledrec.keys.keyring import epoch_id_at
from sampledrec.log.format import T_EXPIRED, T_HOLD, hold_recording_ids
from sampledrec.retention.sweep import HELD_UNTIL
from sampledrec.sampling import DecisionRecord
from sampledrec.sampling.sampler import LOGGED_EARLIER
from sampledrec.vault import recorder as recorder_module
from sampledrec.vault.catalog import Hold, SqliteCatalog

from . import test_audit_attacks as attacks
from .test_audit_attacks import AUDIT_AT, OBJECTOR, OPERATOR_AT, Honest, _audit, _found, operator

honest, case = attacks.honest, attacks.case


@pytest.fixture(params=["store", "kit"])
def via(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test both ways (not autouse here: the kit-only tests do not take it)."""
    attacks._VIA[0] = request.param
    yield request.param
    attacks._VIA[0] = "store"


def _rewrite_kit_file(kit: Path, name: str, data: bytes) -> None:
    """The operator writes a kit file, and the manifest to match (it writes both)."""
    (kit / name).write_bytes(data)
    manifest = json.loads((kit / "kit.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (kit / "kit.json").write_text(json.dumps(manifest))


def _any_finding_about(rep: AuditReport, check: str, **match: Any) -> list[dict[str, Any]]:
    out = []
    for f in rep.findings:
        if f.check != check:
            continue
        doc = f.to_json()
        if all(doc.get(k) == v for k, v in match.items()):
            out.append(doc)
    return out


# -- 1. a repeat decision of one call, under another rule, for a longer retention ----------------


def test_a_repeat_decision_under_another_rule_gets_a_longer_retention(case: Path, via: str) -> None:
    with operator(case) as op:
        d = op.decide_until("rr", "sampled")  # default rule: kept 3 days
        assert d.rule == "default"
        policy = op.store.policy(d.decided_at)
        sales = policy.rule_named("sales")  # same rate here, kept 10 days
        repeat = DecisionRecord(
            epoch_id=d.epoch_id,
            policy_version=d.policy_version,
            rule="sales",
            threshold=sales.threshold,
            reason="sampled",
            draw=d.draw,
            call_ref=d.call_ref,
            agent="a0",
            caller_pseudonym=d.caller_pseudonym,
            decided_at=d.decided_at,
            attributes=policy.attributes_json({"queue": "sales"}),
        )
        index = op.wait(op.log.append_decision(repeat))
        rid = op.record(d._replace(rule="sales", agent="a0", log_ticket=LOGGED_EARLIER))
    rep = _audit(case)
    # The recording's expiry is the forged repeat's (10 days), not the call's (3 days).
    bad = _any_finding_about(rep, "decisions", index=index) + _any_finding_about(
        rep, "recordings", recording_id=rid
    )
    assert bad, rep.to_text()
    (copy,) = _found(rep, "decisions", "is not a copy of the first")
    assert copy["index"] == index
    assert copy["evidence"]["rule"] == {"first": "default", "later": "sales"}
    # The recording is matched with the call's first decision (default, 3 days), not the
    # forged repeat (sales, 10 days).
    (other,) = _found(rep, "recordings", "names another rule or policy version than its call's")
    assert other["recording_id"] == rid and other["evidence"]["decision_rule"] == "default"


# -- 2. one agent under several spellings, to escape a per-agent cap ----------------------------


def test_one_agent_spelled_three_ways_to_escape_the_cap(case: Path, via: str) -> None:
    """The operator logs, with a sampler of its own that counts agents by exact string,
    four selections of one agent under a rule capped at 2 a day: ``a0`` twice, ``A0`` and a
    full-width ``a0``. The store's samplers count them as one agent (``cap_agent``), and so
    does the audit."""
    with operator(case) as op:
        at = op.clock.now()
        epoch = epoch_id_at(at)
        policy = op.store.policy(at)
        sales = policy.rule_named("sales")
        key = op.store.keyring.epoch_key(epoch)
        refs = (f"spelled-{k}" for k in range(100_000))
        below = list(itertools.islice((r for r in refs if draw(key, r) < sales.threshold), 4))
        for ref, agent in zip(below, ["a0", "a0", "A0", "\uff410"], strict=True):
            record = DecisionRecord(
                epoch_id=epoch,
                policy_version=policy.version,
                rule="sales",
                threshold=sales.threshold,
                reason="sampled",
                draw=draw(key, ref),
                call_ref=ref,
                agent=agent,
                caller_pseudonym=None,
                decided_at=at,
                attributes=policy.attributes_json({"queue": "sales", "agent": agent}),
            )
            op.wait(op.log.append_decision(record))
    rep = _audit(case)
    over = _found(rep, "decisions", "over the cap")
    assert not rep.ok and over, rep.to_text()
    assert any("a0" in f["message"] for f in over)


def test_the_samplers_count_one_agent_however_it_is_spelled(case: Path) -> None:
    """The honest side of the same: the store's sampler refuses the third selection."""
    with operator(case) as op:
        got = []
        for k, agent in enumerate(["a0", "A0", "\uff410", " a0 "]):
            for i in range(500):
                d = op.sampler.decide(
                    f"spell{k}-{i}", {"queue": "sales", "agent": agent}, caller="+33 7 00 00 00 01"
                )
                if d.reason in ("sampled", "cap_reached"):
                    got.append(d.reason)
                    break
    # a0 had selections on this day already (the honest store): none of the four is a new one.
    assert "sampled" not in got[2:], got
    assert _audit(case).status("decisions") == "PASS"


# -- 3. another call recorded days later under a selected call's reference -----------------------


def test_another_call_recorded_days_later_under_a_selected_calls_reference(
    case: Path, via: str
) -> None:
    with operator(case) as op:
        d = op.decide_until("slot", "sampled", {"queue": "sales", "agent": "a1"})  # 10 days
        op.log.flush()
    later = OPERATOR_AT + timedelta(days=2)
    with operator(case, at=later) as op:
        rid = op.record(d._replace(log_ticket=LOGGED_EARLIER))
    rep = _audit(case, now=later + timedelta(hours=1))
    assert _any_finding_about(rep, "recordings", recording_id=rid), rep.to_text()
    (late,) = _found(rep, "recordings", "opened more than a day after its call's decision")
    assert late["recording_id"] == rid and "decision_index" in late["evidence"]


# -- 4. a hold placed after the recording expired --------------------------------------------------


def test_a_hold_placed_after_the_recording_expired(honest: Honest, case: Path, via: str) -> None:
    rid = honest.live[0]
    row = SqliteCatalog(case / "store" / "catalog.sqlite").get(rid)
    assert row is not None
    after = datetime.fromtimestamp(row.expires_at / 1e6, UTC) + timedelta(days=2)
    with operator(case, at=after) as op:
        hold_id = str(uuid.uuid4())
        op.wait(
            op.log.append(
                T_HOLD,
                {
                    "hold_id": hold_id,
                    "action": "placed",
                    "recordings": 1,
                    "until": None,
                    "recording_ids": hold_recording_ids([rid]),
                    "reason": "case 99",
                    "principal": "dana",
                },
            )
        )
    catalog = SqliteCatalog(case / "store" / "catalog.sqlite")
    catalog.add_hold(Hold(hold_id, "case 99", created_at=int(after.timestamp() * 1e6)))
    catalog.add_hold_member(hold_id, rid, b"")
    catalog.update(rid, expires_at=HELD_UNTIL)
    catalog.close()
    rep = _audit(case, now=after + timedelta(days=1))
    kept = {f["recording_id"] for f in _found(rep, "recordings", "kept past its expiry")}
    assert rid in kept, rep.to_text()


# -- 5. a recording destroyed early under an 'expired' tombstone -----------------------------------


def test_a_recording_destroyed_early_under_an_expired_tombstone(
    honest: Honest, case: Path, via: str
) -> None:
    rid = honest.live[0]
    catalog = SqliteCatalog(case / "store" / "catalog.sqlite")
    row = catalog.get(rid)
    assert row is not None and row.expires_at > int(OPERATOR_AT.timestamp() * 1e6)
    (case / "store" / "recordings" / row.file).unlink()
    catalog.update(rid, status="expired", wrapped_key=None)
    catalog.close()
    with operator(case) as op:
        index = op.wait(op.log.append(T_EXPIRED, {"recording_id": rid}))
    rep = _audit(case)
    bad = _any_finding_about(rep, "recordings", recording_id=rid, index=index)
    bad += _any_finding_about(rep, "recordings", recording_id=rid)
    assert bad, rep.to_text()
    (early,) = _found(rep, "recordings", "expired tombstone dated before")
    assert early["index"] == index and early["recording_id"] == rid


# -- 6. an objection lifted for a few minutes around a recorded call ------------------------------


def test_an_objection_lifted_for_minutes_around_a_recorded_call(case: Path, via: str) -> None:
    store = Store.open(case / "store")
    store.objections(clock=FixedClock(OPERATOR_AT)).remove(OBJECTOR)
    with operator(case, at=OPERATOR_AT + timedelta(minutes=2)) as op:
        for i in range(200):
            d = op.sampler.decide(f"lifted-{i}", {"queue": "support"}, caller=OBJECTOR)
            if d.reason == "sampled":
                break
        assert d.reason == "sampled"
        rid = op.record(d)
    store.objections(clock=FixedClock(OPERATOR_AT + timedelta(minutes=10))).add(OBJECTOR)
    rep = _audit(case)
    linked = _found(rep, "objections", "") + _any_finding_about(rep, "recordings", recording_id=rid)
    assert linked or any("removed" in n and "again" in n for n in rep.notes), rep.to_text()
    (note,) = [n for n in rep.notes if "added again" in n]
    assert "10 minutes later" in note and "1 of their calls were selected" in note


# -- 7. a recording's bucket later than its expiry (caught) ---------------------------------------


def test_a_recording_put_in_a_later_bucket_to_outlive_its_expiry(case: Path, via: str) -> None:
    """The key of a later day's bucket wraps it: the sweep would destroy it a year late."""
    real = recorder_module.bucket_of
    with (
        operator(case) as op,
        mock.patch.object(recorder_module, "bucket_of", lambda us: real(us + 400 * 86_400_000_000)),
    ):
        d = op.decide_until("late-bucket", "sampled")
        rid = op.record(d)
    rep = _audit(case)
    (bad,) = _found(rep, "recordings", "bucket is not the UTC day of its expiry")
    assert bad["recording_id"] == rid
    assert bad["evidence"]["expected"] < bad["evidence"]["bucket"]


# -- 8. kit manipulation ------------------------------------------------------------------------


def _kit(case: Path) -> Path:
    kit = case / "kit"
    write_kit(Store.open(case / "store"), kit, now=AUDIT_AT)
    return kit


def test_a_kit_that_leaves_out_a_months_calls_key_fails(case: Path) -> None:
    """The operator hands over a kit without calls/2026-03 (and says in the inventory that
    the key is gone): the month's references cannot be read while they must be kept."""
    kit = _kit(case)
    sealing = json.loads((kit / "sealing-keys.json").read_text())
    sealing["keys"] = [k for k in sealing["keys"] if k["kid"] != "calls/2026-03"]
    _rewrite_kit_file(kit, "sealing-keys.json", json.dumps(sealing).encode())
    inventory = json.loads((kit / "key-inventory.json").read_text())
    inventory["sealing_keys"] = [k for k in inventory["sealing_keys"] if k != "calls/2026-03"]
    _rewrite_kit_file(kit, "key-inventory.json", json.dumps(inventory).encode())
    rep = audit_kit(
        kit, recordings=case / "store", revealed_keys=case / "revealed.json", now=AUDIT_AT
    )
    assert rep.verdict == "FAIL"
    (refs,) = _found(rep, "decisions", "cannot be read (sealed under calls/2026-03)")
    assert refs["evidence"]["decisions"] == 2 * attacks.CALLS + 30
    assert _found(rep, "recordings", "call reference is unreadable")


def test_a_kit_whose_period_leaves_out_the_incriminating_day_says_so(case: Path) -> None:
    """By design (c): the operator chooses the kit's period. An unselected call recorded on
    the 6th, in a kit for the 2nd and 3rd only, is still caught: recordings are checked from
    the whole log, and only unreadable references are excused as outside the period."""
    with operator(case) as op:
        d = op.decide_until("x", "not_sampled")
        rid = op.record(d._replace(record=True, reason="sampled"))
    kit = case / "kit"
    write_kit(
        Store.open(case / "store"),
        kit,
        now=AUDIT_AT,
        first_day=date(2026, 3, 2),
        last_day=date(2026, 3, 3),
    )
    rep = audit_kit(kit, recordings=case / "store", now=AUDIT_AT)
    bad = _found(rep, "recordings", "")
    assert rep.verdict == "FAIL" and any(f["recording_id"] == rid for f in bad), rep.to_text()


def test_a_kit_inventory_that_hides_a_restored_key_is_a_documented_limit(
    honest: Honest, case: Path
) -> None:
    """By design (c), and said in docs/auditor-guide.md ("What the audit from a kit cannot
    see"): the key store's contents come from key-inventory.json, which the operator writes.
    A destroyed bucket key restored into the store and left out of the inventory passes the
    kit's audit; the operator's own audit of the store (``--store``) FAILs."""
    before = honest.base / "before-sweep" / "keys" / "buckets"
    now = case / "store" / "keys" / "buckets"
    restored = sorted(p.name for p in before.iterdir() if not (now / p.name).exists())
    for name in restored:
        shutil.copy2(before / name, now / name)
    own = audit_verify(case / "store", case / "revealed.json", now=AUDIT_AT)
    assert _found(own, "recordings", "but the key store still holds it")
    kit = _kit(case)
    inventory = json.loads((kit / "key-inventory.json").read_text())
    hidden = {n.removesuffix(".key") for n in restored}
    inventory["keys"] = [k for k in inventory["keys"] if k not in hidden]
    _rewrite_kit_file(kit, "key-inventory.json", json.dumps(inventory).encode())
    rep = audit_kit(
        kit, recordings=case / "store", revealed_keys=case / "revealed.json", now=AUDIT_AT
    )
    assert not _found(rep, "recordings", "but the key store still holds it")
    assert rep.verdict == "PASS", rep.to_text()


def test_a_kit_objection_list_edited_to_match_the_log_is_not_seen(case: Path) -> None:
    """By design (c), NOT stated in the guide's "What the audit from a kit cannot see":
    objections.json is the operator's copy. The objector taken off the store's list without
    a log entry FAILs the store's audit; a kit whose objections.json the operator rewrote to
    the logged list PASSes. (Their later calls are still checked against the replayed list,
    so the harm is caught when a call of theirs is decided.)"""
    store = Store.open(case / "store")
    listed = sorted(store.objection_pseudonyms())
    assert listed
    path = case / "store" / "objections.txt"
    text = path.read_text()
    path.write_text("".join(line + "\n" for line in text.splitlines() if listed[0] not in line))
    own = audit_verify(case / "store", case / "revealed.json", now=AUDIT_AT)
    assert own.status("objections") == "FAIL"
    kit = _kit(case)
    doc = {"format": "sampledrec-objections", "version": 1, "pseudonyms": listed}
    _rewrite_kit_file(kit, "objections.json", json.dumps(doc).encode())
    rep = audit_kit(
        kit, recordings=case / "store", revealed_keys=case / "revealed.json", now=AUDIT_AT
    )
    assert rep.status("objections") == "PASS", rep.to_text()


# -- 9. a UUID decided as text and again as its 16 bytes -----------------------------------------


def test_a_uuid_decided_as_text_then_as_bytes_for_a_second_draw(case: Path, via: str) -> None:
    with operator(case) as op:
        for _ in range(400):
            u = uuid.uuid4()
            text = op.sampler.decide(str(u), {"queue": "support"}, caller="+33 7 12 34 56 78")
            if text.reason != "not_sampled":
                continue
            again = op.sampler.decide(u.bytes, {"queue": "support"}, caller="+33 7 12 34 56 78")
            if again.reason == "sampled":
                break
        assert text.reason == "not_sampled" and again.reason == "sampled"
        op.record(again)
    rep = _audit(case)
    assert not rep.ok, rep.to_text()
    found = _found(rep, "time", "one UUID decided in one epoch both as text and as its 16")
    (both,) = [f for f in found if f["evidence"]["first_call_ref"] == str(u)]
    assert both["evidence"]["first_index"] < both["index"]


# -- 10. a production store initialised as "simulated" ------------------------------------------


def test_a_store_declared_simulated_hides_backdated_decisions(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(attacks.POLICY)
    store = Store.init(
        tmp_path / "store",
        policy=tmp_path / "p.toml",
        simulated=True,
        clock=FixedClock(attacks.INIT),
    )
    for at, tag in ((attacks.DAY1, "d1"), (attacks.DAY2, "d2")):
        clock = FixedClock(at)
        with store.open_log(clock=clock) as log:
            sampler = store.sampler(clock=clock, log=log)
            for i in range(40):
                sampler.decide(
                    f"{tag}-{i}", {"queue": "support"}, caller=f"+33 6 1{tag[1]} 00 00 {i:02d}"
                )
    store.write_revealed(store.reveal_keys(now=attacks.REVEAL_AT), tmp_path / "revealed.json")
    # Days later, with day 1's key known: a decision backdated into day 1.
    back = FixedClock(attacks.DAY1 + timedelta(hours=5))
    with store.open_log(clock=FixedClock(OPERATOR_AT)) as log:
        sampler = store.sampler(clock=back, log=log)
        d = sampler.decide("backdated", {"queue": "support"}, caller="+33 6 55 55 55 55")
        log.flush()
    rep = audit_verify(tmp_path / "store", tmp_path / "revealed.json", now=AUDIT_AT)
    assert d.epoch_id == "2026-03-02"
    assert rep.verdict == "FAIL", rep.to_text()
    (late,) = _found(rep, "time", "after that epoch's key was revealed")
    assert late["epoch_id"] == "2026-03-02" and late["call_ref"] == "backdated"
