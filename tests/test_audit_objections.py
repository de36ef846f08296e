"""The objection list against the audit (docs/decisions/0018-objections-logged.md).

A dishonest operator, holding every key, cheats around objections on a copy of the honest store
of tests/test_audit_attacks.py (one objector, logged before the calls), with the library's
internals; the audit must FAIL with the evidence, from the store and from the auditor's kit
(the ``via`` fixture runs every test both ways). Honest stores whose list changes between
decisions, and an old store whose list is migrated, pass.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from sampledrec import FixedClock, ObjectionList, Sampler, Store
from sampledrec.audit.kit import audit_kit, write_kit
from sampledrec.errors import NotSelected
from sampledrec.retention.sweep import Retention
from sampledrec.sampling.sampler import Decision
from sampledrec.vault.audio import synthetic_speech
from sampledrec.vault.recorder import Vault

from . import test_audit_attacks as attacks
from . import test_auditor_guide as guide
from .recording import write_call
from .test_audit_attacks import OBJECTOR, OPERATOR_AT, _audit, _forged, _found, operator

# The attack tests' fixtures: their honest store, a private copy of it, and both ways.
honest, case, via = attacks.honest, attacks.case, attacks.via
demo_kit = guide.demo_kit  # a demo store (three objectors) and its kit

NEWCOMER = "+33 7 11 11 11 11"  # a caller who objects later


def _pseudonym(store: Store, number: str) -> str:
    return ObjectionList(store.keyring.pseudonym_key(), region=store.region).pseudonym(number)


def _objection_entry(case: Path, pseudonym: str) -> int:
    """The log index of the entry that added ``pseudonym`` to the list."""
    from sampledrec.log.format import T_OBJECTION
    from sampledrec.log.writer import iter_entries

    store = Store.open(case / "store")
    for e in iter_entries(store.log_storage, store.keyring):
        if e.type == T_OBJECTION and e.fields["caller_pseudonym"].hex() == pseudonym:
            return e.index
    raise AssertionError(pseudonym)


# -- the attacks -----------------------------------------------------------------------------------


def test_an_objector_decided_without_their_caller_pseudonym(case: Path) -> None:
    with operator(case) as op:
        # A sampler that is not given the objection list, nor the caller: it draws.
        blind = Sampler(op.store.policy(OPERATOR_AT), op.store.keyring, clock=op.clock, log=op.log)
        for i in range(200):
            d = blind.decide(f"blind-{i}", {"queue": "support"})
            if d.record:
                break
        assert d.record and d.caller_pseudonym is None
        op.record(d)
    rep = _audit(case)
    assert rep.status("objections") == "FAIL" and not rep.ok
    (bad,) = _found(rep, "objections", "selected without its caller's pseudonym")
    assert bad["call_ref"] == d.call_ref and bad["epoch_id"] == "2026-03-06"
    assert bad["evidence"]["on_the_list"] == 1 and bad["evidence"]["reason"] == "sampled"
    assert bad["evidence"]["list_held_callers_since"] == "2026-03-02T08:00:00+00:00"


def test_an_objectors_call_logged_as_sampled_with_their_pseudonym(case: Path) -> None:
    with operator(case) as op:
        p = _pseudonym(op.store, OBJECTOR)
        for i in range(200):
            forged = _forged(op.store, "2026-03-06", f"forced-{i}", OPERATOR_AT)
            if forged.reason == "sampled":
                break
        ticket = op.log.append_decision(forged._replace(caller_pseudonym=p))
        index = op.wait(ticket)
        rule = op.store.policy(OPERATOR_AT).rule_named("default")
        decision = Decision(
            forged.call_ref, True, "sampled", rule.name, rule.purpose, rule.rate,
            forged.threshold, forged.draw, forged.epoch_id, forged.policy_version,
            OPERATOR_AT, None, None, ticket,
        )  # fmt: skip
        rid = op.record(decision)  # the vault is not told the caller: it cannot refuse
    rep = _audit(case)
    (bad,) = _found(rep, "objections", "a caller on the objection list was decided sampled")
    assert bad["index"] == index and bad["call_ref"] == forged.call_ref
    assert bad["evidence"]["caller_pseudonym"] == p
    assert bad["evidence"]["listed_at"] == _objection_entry(case, p)
    assert bad["evidence"]["listed_since"] == "2026-03-02T08:00:00+00:00"
    (rec,) = _found(rep, "recordings", "a recording of a caller on the objection list")
    assert rec["recording_id"] == rid and rec["evidence"]["decision_index"] == index
    assert rec["evidence"]["caller_pseudonym"] == p


def test_an_objector_taken_off_the_list_on_disk_without_a_log_entry(case: Path) -> None:
    path = case / "store" / "objections.txt"
    p = _pseudonym(Store.open(case / "store"), OBJECTOR)
    assert path.read_text().splitlines() == [p]
    path.write_text("")  # the operator edits the file: the objector's calls are drawn again
    with operator(case) as op:
        for i in range(200):
            d = op.sampler.decide(f"again-{i}", {"queue": "support"}, caller=OBJECTOR)
            if d.record:
                break
        assert d.record and d.caller_pseudonym == p
        rid = op.record(d)
    rep = _audit(case)
    assert rep.status("objections") == "FAIL"
    (dropped,) = _found(rep, "objections", "removed without a log entry")
    assert dropped["evidence"]["removed_without_log_entry"] == 1
    assert dropped["evidence"]["examples"] == [p]
    assert dropped["index"] == dropped["evidence"]["added_at"][0] == _objection_entry(case, p)
    ignored = _found(rep, "objections", "a caller on the objection list was decided")
    assert d.call_ref in {f["call_ref"] for f in ignored}
    (rec,) = _found(rep, "recordings", "a recording of a caller on the objection list")
    assert rec["recording_id"] == rid


def test_a_caller_put_on_the_list_on_disk_without_a_log_entry(case: Path) -> None:
    path = case / "store" / "objections.txt"
    p = _pseudonym(Store.open(case / "store"), NEWCOMER)
    path.write_text(path.read_text() + p + "\n")
    rep = _audit(case)
    assert rep.status("objections") == "FAIL" and rep.status("decisions") == "PASS"
    (bad,) = _found(rep, "objections", "never added in the log")
    assert bad["evidence"] == {"added_without_log_entry": 1, "examples": [p]}


def test_a_caller_recorded_after_they_were_put_on_the_list(case: Path) -> None:
    with operator(case) as op:
        for i in range(200):
            d = op.sampler.decide(f"late-{i}", {"queue": "support"}, caller=NEWCOMER)
            if d.record:
                break
        assert d.record  # decided before the caller objected: nothing wrong yet
        op.store.objections(clock=op.clock, log=op.log).add(NEWCOMER)
        op.clock.set(OPERATOR_AT + timedelta(minutes=5))
        with pytest.raises(NotSelected, match="the caller objected since the decision"):
            op.record(d)  # the vault asks the list before it opens a recording
        rid = op.record(d._replace(caller_pseudonym=None))  # the operator hides the caller
    rep = _audit(case)
    assert rep.status("objections") == "PASS"  # the decision itself was right
    (bad,) = _found(rep, "recordings", "a recording of a caller on the objection list")
    assert bad["recording_id"] == rid and bad["call_ref"] == d.call_ref
    assert bad["evidence"]["caller_pseudonym"] == d.caller_pseudonym
    assert bad["evidence"]["listed_at"] == _objection_entry(case, str(d.caller_pseudonym))


def test_a_decision_within_a_minute_of_an_objection_may_not_know_it(case: Path) -> None:
    # A running sampler re-reads the list about once a second: a decision just after the
    # caller was added may still have used the list without them. Later, it may not.
    with operator(case) as op:
        op.store.objections(clock=op.clock, log=op.log).add(NEWCOMER)
        p = _pseudonym(op.store, NEWCOMER)
        found = []
        for i in range(400):
            forged = _forged(op.store, "2026-03-06", f"stale-{i}", OPERATOR_AT)
            if forged.reason == "sampled":
                found.append(forged)
            if len(found) == 2:
                break
        soon, late = found
        op.wait(op.log.append_decision(soon._replace(caller_pseudonym=p)))
        late_at = OPERATOR_AT + timedelta(seconds=61)
        op.wait(op.log.append_decision(late._replace(caller_pseudonym=p, decided_at=late_at)))
    rep = _audit(case)
    bad = _found(rep, "objections", "a caller on the objection list was decided sampled")
    assert [f["call_ref"] for f in bad] == [late.call_ref]


# -- honest stores ---------------------------------------------------------------------------------

POLICY = """
[default]
rate = "0.5"
purpose = "quality"
justification = "Test: a high rate, so that every kind of decision occurs"
retention = "10 days"
"""
DAY1 = datetime(2026, 3, 10, 9, tzinfo=UTC)
DAY2 = datetime(2026, 3, 11, 9, tzinfo=UTC)
LATER = datetime(2026, 3, 12, 12, tzinfo=UTC)
A, B, C = "+33 6 01 02 03 04", "+33 6 05 06 07 08", "+33 6 09 10 11 12"
OTHERS = [f"+33 6 40 00 00 {i:02d}" for i in range(20)]


def _record(vault: Vault, d: Decision, seed: int) -> None:
    if d.record:
        write_call(vault, d, synthetic_speech(0.1, seed=seed), chunk_size=1024)


def _reveal(store: Store, base: Path) -> None:
    keys = store.reveal_keys(now=LATER)
    store.write_revealed(keys, base / "revealed.json")


def test_an_honest_store_whose_list_changes_between_decisions_passes(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(POLICY)
    store = Store.init(
        tmp_path / "store", policy=tmp_path / "p.toml", clock=FixedClock(DAY1 - timedelta(1))
    )
    store.objections(clock=FixedClock(DAY1)).add_all([A, B])
    clock = FixedClock(DAY1 + timedelta(minutes=5))
    decided: list[Decision] = []
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        callers = [A, B, *OTHERS]
        for i in range(44):
            decided.append(sampler.decide(f"a-{i}", caller=callers[i % len(callers)]))
            _record(vault, decided[-1], i)
        batch = sampler.decide_batch(
            [f"b-{i}" for i in range(44)], callers=[callers[i % len(callers)] for i in range(44)]
        )
        decided += list(batch)
        _record(vault, next(d for d in batch if d.record), 100)
        clock.set(DAY1 + timedelta(hours=3))
        store.objections(clock=clock, log=log).remove(A)  # A withdrew their objection
        # A sampler re-reads the list at most once a second (REFRESH_SECONDS, on the monotonic
        # clock); a new one reads it now, so A's next calls are drawn however fast this runs.
        sampler = store.sampler(clock=clock, log=log)
        clock.set(DAY1 + timedelta(hours=3, minutes=5))
        of_a = []
        for i in range(20):
            decided.append(sampler.decide(f"c-{i}", caller=A if i % 2 else OTHERS[i]))
            _record(vault, decided[-1], 200 + i)
            of_a += [decided[-1]] if i % 2 else []
        # At rate 0.5 one of A's ten calls is sampled but for one store in 1,024: make it sure.
        for i in range(20, 80):
            if any(d.reason == "sampled" for d in of_a):
                break
            decided.append(sampler.decide(f"c-{i}", caller=A))
            _record(vault, decided[-1], 200 + i)
            of_a.append(decided[-1])
        unnamed = sampler.decide("c-unnamed")  # B still objects: an unnamed caller may be B
        decided.append(unnamed)
    store.objections(clock=FixedClock(DAY2)).add(C)
    clock = FixedClock(DAY2 + timedelta(minutes=1, seconds=1))
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(20):
            decided.append(sampler.decide(f"d-{i}", caller=(A, B, C, OTHERS[i])[i % 4]))
            _record(vault, decided[-1], 300 + i)
    _reveal(store, tmp_path)

    a, b, c = (_pseudonym(store, n) for n in (A, B, C))
    reasons = {(d.caller_pseudonym, d.reason) for d in decided}
    assert (a, "sampled") in reasons and (b, "objection") in reasons and (c, "objection") in reasons
    assert unnamed.reason == "objection" and unnamed.caller_pseudonym is None
    rep = _audit(tmp_path, now=LATER)
    assert rep.ok, rep.to_text()
    checked = rep.to_json()["results"]["objections"]["checked"]
    assert checked == {
        "changes": 4,
        "listed": 2,
        "decisions_checked": len(decided),
        "on_the_list_now": 2,
    }
    assert "objections   PASS     4 changes, 2 listed" in rep.to_text()


def test_an_old_stores_list_is_migrated_and_passes(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(POLICY)
    store = Store.init(
        tmp_path / "store", policy=tmp_path / "p.toml", clock=FixedClock(DAY1 - timedelta(1))
    )
    clock = FixedClock(DAY1)
    with store.open_log(clock=clock) as log:
        store.sampler(clock=clock, log=log).epoch_key(DAY1)  # the day's key, committed
        # What an earlier version did: the list saved with no log entry, and decisions that
        # honour it without logging its changes.
        old_list = ObjectionList.load(store.keyring.pseudonym_key(), store.path / "objections.txt")
        p = old_list.add(A)
        old = Sampler(store.policy(DAY1), store.keyring, clock=clock, objections=old_list, log=log)
        before = [old.decide(f"old-{i}", caller=(A, *OTHERS)[i % 4]) for i in range(12)]
    meta = json.loads((store.path / "store.json").read_text())
    del meta["objections_logged"]
    (store.path / "store.json").write_text(json.dumps(meta))
    assert {d.reason for d in before if d.caller_pseudonym == p} == {"objection"}

    clock = FixedClock(DAY1 + timedelta(hours=1))
    reopened = Store.open(store.path)
    with reopened.open_log(clock=clock) as log:
        sampler = reopened.sampler(clock=clock, log=log)  # logs the list once, as migrated
        after = [sampler.decide(f"new-{i}", caller=(A, *OTHERS)[i % 4]) for i in range(12)]
    assert {d.reason for d in after if d.caller_pseudonym == p} == {"objection"}
    _reveal(reopened, tmp_path)
    rep = _audit(tmp_path, now=LATER)
    assert rep.ok, rep.to_text()
    assert rep.to_json()["results"]["objections"]["checked"]["changes"] == 1
    assert any("logged as migrated at entry" in n for n in rep.notes)


@pytest.mark.parametrize("via", ["kit"])  # a kit for a period: the store holds every key
def test_a_kit_for_a_period_replays_the_list_from_what_it_can_read(
    tmp_path: Path, via: str
) -> None:
    # The objector was added in February; a kit for March holds only calls/2026-03: the entry
    # that added them cannot be read, so the replay is partial, and says so, without a FAIL.
    (tmp_path / "p.toml").write_text(POLICY)
    early = datetime(2026, 2, 26, 9, tzinfo=UTC)
    store = Store.init(
        tmp_path / "store", policy=tmp_path / "p.toml", clock=FixedClock(early - timedelta(1))
    )
    store.objections(clock=FixedClock(early)).add(A)
    store.objections(clock=FixedClock(DAY1)).add(B)
    clock = FixedClock(DAY1 + timedelta(minutes=5))
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        decided = [sampler.decide(f"k-{i}", caller=(A, B, *OTHERS)[i % 6]) for i in range(30)]
    assert {d.reason for d in decided[::6]} == {"objection"}  # A's calls
    kit = tmp_path / "kit"
    write_kit(store, kit, now=LATER, first_day=date(2026, 3, 1), last_day=date(2026, 3, 31))
    rep = audit_kit(kit, recordings=tmp_path / "store", now=LATER)
    assert rep.ok, rep.to_text()
    assert rep.to_json()["results"]["objections"]["checked"] == {
        "changes": 2,
        "listed": 1,  # B: A's entry cannot be read
        "decisions_checked": 30,
        "on_the_list_now": 2,
    }
    assert any("1 changes of the objection list cannot be read" in n for n in rep.notes)
    assert any("1 callers on the list are not in the readable changes" in n for n in rep.notes)


# -- the auditor guide's program ---------------------------------------------------------------


@pytest.mark.parametrize("via", ["kit"])
def test_the_guides_program_replays_the_demos_objection_list(
    demo_kit: tuple[Path, Path], tmp_path: Path, via: str
) -> None:
    base, kit = demo_kit
    program = guide._programs(tmp_path).with_name("sdr_objections.py")
    (block,) = (b for b in guide._python_blocks("auditor-guide.md") if "sdr_objections.py" in b)
    program.write_text(block)
    done = guide._run(program, str(kit))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3 callers on the list; every decision agrees"
    # The operator takes an objector off the list on disk: the program, copied out of the
    # guide and run without sampledrec, says so.
    store = tmp_path / "store"
    shutil.copytree(base / "store", store)
    listed = (store / "objections.txt").read_text().splitlines()
    (store / "objections.txt").write_text("".join(p + "\n" for p in listed[1:]))
    at = json.loads((kit / "kit.json").read_text())["made_at"]
    write_kit(Store.open(store), tmp_path / "kit", now=datetime.fromisoformat(at))
    done = guide._run(program, str(tmp_path / "kit"))
    assert (
        done.stdout.strip()
        == "the list is not the log's: 0 never added, 1 removed without a log entry"
    )


# -- after 13 months -------------------------------------------------------------------------------


def _a_year_and_more(base: Path) -> Store:
    """An objector added in January 2025; the sweep of March 2026 destroys calls/2025-01, the
    key that sealed the entry adding them, after logging the list again; calls on both sides."""
    (base / "p.toml").write_text(POLICY)
    start = datetime(2025, 1, 10, 8, tzinfo=UTC)
    store = Store.init(
        base / "store", policy=base / "p.toml", clock=FixedClock(start - timedelta(1))
    )
    store.objections(clock=FixedClock(start)).add(A)
    for at, tag in (
        (start + timedelta(hours=1), "old"),
        (datetime(2026, 3, 2, 12, tzinfo=UTC), "new"),
    ):
        clock = FixedClock(at)
        with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
            if tag == "new":
                swept = Retention(vault, clock=clock).sweep()
                assert "calls/2025-01" in swept.log_keys_destroyed
            sampler = store.sampler(clock=clock, log=log)
            for i in range(8):
                d = sampler.decide(f"{tag}-{i}", caller=(A, *OTHERS)[i % 4])
                assert (d.reason == "objection") == (i % 4 == 0)
    keys = store.reveal_keys(now=datetime(2026, 3, 5, tzinfo=UTC))
    store.write_revealed(keys, base / "revealed.json")
    return store


AFTER = datetime(2026, 3, 5, 12, tzinfo=UTC)


def test_the_list_logged_again_before_its_key_is_destroyed_still_replays(tmp_path: Path) -> None:
    _a_year_and_more(tmp_path)
    rep = _audit(tmp_path, now=AFTER)
    assert rep.ok, rep.to_text()
    checked = rep.to_json()["results"]["objections"]["checked"]
    assert checked["changes"] == 2 and checked["listed"] == 1 and checked["on_the_list_now"] == 1
    assert any("1 changes of the objection list cannot be read" in n for n in rep.notes)


def test_an_objector_of_more_than_a_year_taken_off_the_list_on_disk(tmp_path: Path) -> None:
    store = _a_year_and_more(tmp_path)
    p = _pseudonym(store, A)
    (store.path / "objections.txt").write_text("")
    rep = _audit(tmp_path, now=AFTER)
    (bad,) = _found(rep, "objections", "removed without a log entry")
    assert bad["evidence"]["examples"] == [p]


def test_a_caller_left_out_when_the_list_is_logged_again(tmp_path: Path) -> None:
    # The operator empties the file just before the sweep: the list logged again lacks them.
    (tmp_path / "p.toml").write_text(POLICY)
    start = datetime(2025, 1, 10, 8, tzinfo=UTC)
    store = Store.init(tmp_path / "store", policy=tmp_path / "p.toml", clock=FixedClock(start))
    store.objections(clock=FixedClock(start)).add_all([A, B])
    (store.path / "objections.txt").write_text(_pseudonym(store, B) + "\n")
    clock = FixedClock(datetime(2025, 1, 20, tzinfo=UTC))
    with store.open_log(clock=clock) as log:
        assert store.log_objection_list(log, clock.now()) == 1
    keys = store.reveal_keys(now=AFTER)
    store.write_revealed(keys, tmp_path / "revealed.json")
    rep = _audit(tmp_path, now=AFTER)
    (bad,) = _found(rep, "objections", "left out when it was logged again")
    assert bad["evidence"]["examples"] == [_pseudonym(store, A)]
