"""A dishonest operator against the audit.

One honest, non-simulated store is built once with every feature in use (two days of calls,
caps, an objection, recordings, an aborted recording, legal holds placed and released, a
data-subject erasure, a retry, several processes deciding at once, revealed keys, a sweep that
expires recordings and destroys keys); it passes with every check PASS. Then each test takes a
copy and cheats on it as an operator holding every key would, with the library's own
internals (the store's DecisionLog, keyring, catalog and files), and checks that the audit
reports FAIL with the evidence.

All times are in the past (2026-03), so that keys are revealed by the real clock and the store
is not simulated: its times are held to the rules of the ``time`` check.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from sampledrec import FixedClock, Store, draw
from sampledrec.audit.kit import audit_kit, write_kit
from sampledrec.audit.verify import AuditReport, audit_verify
from sampledrec.log.format import (
    T_HOLD,
    T_KEY_COMMIT,
    T_KEY_DESTROYED,
    T_RECORDING_ABORTED,
    T_RECORDING_SEALED,
    hold_recording_ids,
)
from sampledrec.log.writer import DecisionLog, iter_entries
from sampledrec.retention.subjects import IdentityCheck, SubjectRequests
from sampledrec.retention.sweep import HELD_UNTIL, Retention
from sampledrec.sampling import DecisionRecord
from sampledrec.sampling.policy import RetentionPeriod
from sampledrec.sampling.sampler import Decision, Sampler
from sampledrec.vault.audio import synthetic_speech
from sampledrec.vault.catalog import Hold, SqliteCatalog
from sampledrec.vault.recorder import Principal, Vault

from .recording import PCM, write_call
from .together import run_together

POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.25"
purpose = "quality"
retention = "10 days"
max_per_agent_per_day = 2

[default]
rate = "0.25"
purpose = "quality"
retention = "3 days"
"""
INIT = datetime(2026, 3, 2, 8, tzinfo=UTC)
DAY1 = datetime(2026, 3, 2, 9, tzinfo=UTC)
DAY2 = datetime(2026, 3, 3, 9, tzinfo=UTC)
REVEAL_AT = datetime(2026, 3, 4, 0, 0, 1, tzinfo=UTC)
SWEEP_AT = datetime(2026, 3, 6, 12, tzinfo=UTC)
OPERATOR_AT = datetime(2026, 3, 6, 13, tzinfo=UTC)  # when the operator cheats
AUDIT_AT = datetime(2026, 3, 6, 20, tzinfo=UTC)
OBJECTOR = "+33 6 99 99 99 99"
DPO = Principal("dana", ("dpo",))
CALLS = 120  # a day: sales (3 agents, capped at 2 a day) and support

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sampledrec import FixedClock, Store
    path, tag, at = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    store = Store.open(path)
    clock = FixedClock(at)
    while not (path.parent / "go").exists():
        time.sleep(0.01)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(15):
            caller = f"+33 6 30 0{tag[-1]} 00 {i:02d}"
            sampler.decide(f"{tag}-{i}", {"queue": "support"}, caller=caller)
    print("done", flush=True)
    """
)


def _attrs(i: int) -> dict[str, str]:
    if i % 2:
        return {"queue": "support"}
    return {"queue": "sales", "agent": f"a{(i // 2) % 3}"}


def _caller(day: int, i: int) -> str:
    return OBJECTOR if (day, i) == (1, 7) else f"+33 6 1{day} 00 {i // 100:02d} {i % 100:02d}"


@dataclass
class Honest:
    base: Path
    aborted: str
    held: str
    released: str
    erased: str
    live: list[str]  # sealed, kept at AUDIT_AT, no hold
    expired: list[str]  # expired by the sweep
    refs: list[str]


def _day(store: Store, at: datetime, day: int, ids: dict[str, Any]) -> None:
    clock = FixedClock(at)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(CALLS):
            ref = f"d{day}-{i:03d}"
            ids["refs"].append(ref)
            d = sampler.decide(ref, _attrs(i), caller=_caller(day, i))
            if not d.record:
                continue
            audio = synthetic_speech(0.1, seed=i)
            if day == 1 and not ids["aborted"] and d.rule == "sales":
                rec = vault.record(d, audio_format=PCM, chunk_size=1024)
                rec.write(audio[:320])
                rec.abort()  # the caller objected during the call
                ids["aborted"] = rec.recording_id
                continue
            rid = write_call(vault, d, audio, chunk_size=1024, attrs=_attrs(i))
            ids["recorded"].append((rid, d.rule, _caller(day, i)))
        first, again = (sampler.decide(f"d{day}-000", _attrs(0)) for _ in range(2))
        # Retries: the first decision again, not logged again (decide is idempotent, #12).
        assert first == again and first.repeat and again.repeat
        if day != 1:
            return
        default = [rid for rid, rule, _ in ids["recorded"] if rule == "default"]
        sales = [(rid, caller) for rid, rule, caller in ids["recorded"] if rule == "sales"]
        assert len(default) >= 2 and sales
        retention = Retention(vault, clock=clock)
        clock.set(at + timedelta(hours=4))
        retention.hold([default[0]], reason="Case 1: a customer dispute")
        second = retention.hold([default[1]], reason="Case 2: settled since")
        clock.set(at + timedelta(hours=5))
        retention.release(second.hold_id)
        ids["held"], ids["released"] = default[0], default[1]
        clock.set(at + timedelta(hours=6))
        erased, phone = sales[0]
        assert SubjectRequests(store, vault, log).subject_erase(
            phone, principal=DPO, identity=IdentityCheck("callback_to_number")
        ) == [(erased, "erased")]
        ids["erased"] = erased


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Honest:
    base = tmp_path_factory.mktemp("honest")
    (base / "p.toml").write_text(POLICY)
    store = Store.init(base / "store", policy=base / "p.toml", clock=FixedClock(INIT))
    store.objections(clock=FixedClock(INIT)).add(OBJECTOR)  # logged before the calls
    ids: dict[str, Any] = {"refs": [], "recorded": [], "aborted": None}
    _day(store, DAY1, 1, ids)
    _day(store, DAY2, 2, ids)
    # Several processes deciding at once, each with its own writer.
    at = (DAY2 + timedelta(hours=3)).isoformat()
    argvs = [[str(store.path), f"p{k}", at] for k in range(2)]
    assert run_together(WORKER, argvs, base / "go") == ["done\n"] * 2
    ids["refs"] += [f"p{k}-{i}" for k in range(2) for i in range(15)]
    keys = store.reveal_keys(now=REVEAL_AT)
    assert {k.epoch_id for k in keys} == {"2026-03-02", "2026-03-03"}
    store.write_revealed(keys, base / "revealed.json")
    shutil.copytree(base / "store", base / "before-sweep")
    clock = FixedClock(SWEEP_AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        swept = Retention(vault, clock=clock).sweep()
    assert swept.expired and swept.buckets_destroyed
    rows = {r.recording_id: r for r in SqliteCatalog(base / "store" / "catalog.sqlite").find()}
    special = {ids["held"], ids["released"], ids["erased"], ids["aborted"]}
    live = [
        rid for rid, _, _ in ids["recorded"] if rid not in special and rows[rid].status == "sealed"
    ]
    expired = [rid for rid, r in rows.items() if r.status == "expired"]
    assert ids["released"] in expired and len(live) >= 2
    rows_csv = "".join(
        f"{ref},{(DAY1 if ref.startswith('d1') else DAY2).isoformat()}\n" for ref in ids["refs"]
    )
    (base / "cdr.csv").write_text("call_ref,start_time\n" + rows_csv)
    return Honest(
        base,
        ids["aborted"],
        ids["held"],
        ids["released"],
        ids["erased"],
        live,
        expired,
        ids["refs"],
    )


@pytest.fixture
def case(honest: Honest, tmp_path: Path) -> Path:
    """A private copy of the honest store (``case / "store"``), for one test to cheat on."""
    shutil.copytree(honest.base / "store", tmp_path / "store")
    shutil.copy(honest.base / "revealed.json", tmp_path / "revealed.json")
    return tmp_path


_VIA = ["store"]


@pytest.fixture(autouse=True, params=["store", "kit"])
def via(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs twice: the operator's own audit of the store, and an outsider's from
    the auditor's kit (made after the cheating) with the store's recordings read-only."""
    _VIA[0] = request.param
    yield request.param
    _VIA[0] = "store"


def _audit(case: Path, **kw: Any) -> AuditReport:
    kw.setdefault("now", AUDIT_AT)
    if _VIA[0] == "kit":
        kit = case / f"kit-{len(list(case.glob('kit-*')))}"
        write_kit(Store.open(case / "store"), kit, now=kw["now"])
        rep = audit_kit(kit, recordings=case / "store", revealed_keys=case / "revealed.json", **kw)
        # Nothing in the kit opens what the access/ keys seal, nor signs, nor unwraps.
        kids = {k["kid"] for k in json.loads((kit / "sealing-keys.json").read_text())["keys"]}
        assert all(k.startswith("calls/") for k in kids)
    else:
        rep = audit_verify(case / "store", case / "revealed.json", **kw)
    json.dumps(rep.to_json())  # what --json prints: every finding's evidence is JSON
    assert rep.to_text().splitlines()[-1] in ("AUDIT PASSED", "AUDIT FAILED")
    return rep


def _found(rep: AuditReport, check: str, text: str) -> list[dict[str, Any]]:
    """The findings of ``check`` whose message contains ``text``."""
    return [f.to_json() for f in rep.findings if f.check == check and text in f.message]


@dataclass
class Operator:
    store: Store
    log: DecisionLog
    vault: Vault
    clock: FixedClock
    sampler: Sampler

    def decide_until(self, prefix: str, want: str, attrs: dict[str, str] | None = None) -> Decision:
        """Decide new calls until one gets the reason ``want``."""
        for i in range(500):
            caller = f"+33 7 00 00 {i // 100:02d} {i % 100:02d}"  # while one objects, known
            d = self.sampler.decide(f"{prefix}-{i}", attrs or {"queue": "support"}, caller=caller)
            if d.reason == want:
                return d
        raise AssertionError(f"no {want} decision in 500 calls")

    def record(self, d: Decision, seed: int = 0) -> str:
        return write_call(self.vault, d, synthetic_speech(0.1, seed=seed), chunk_size=1024)

    def wait(self, ticket: int) -> int:
        return self.log.wait_durable(ticket)


@contextlib.contextmanager
def operator(case: Path, at: datetime = OPERATOR_AT) -> Iterator[Operator]:
    store = Store.open(case / "store")
    clock = FixedClock(at)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        yield Operator(store, log, vault, clock, store.sampler(clock=clock, log=log))


def _catalog(case: Path) -> SqliteCatalog:
    return SqliteCatalog(case / "store" / "catalog.sqlite")


def _sealed_hash(case: Path, rid: str) -> str:
    for e in iter_entries(case / "store" / "log"):
        if e.type == T_RECORDING_SEALED and e.fields["recording_id"] == rid:
            return bytes(e.fields["ciphertext_sha256"]).hex()
    raise AssertionError(rid)


# -- the honest store ----------------------------------------------------------------------------


def test_an_honest_store_with_every_feature_passes_every_check(honest: Honest, case: Path) -> None:
    rep = _audit(case, cdr=honest.base / "cdr.csv")
    assert rep.ok and rep.verdict == "PASS", rep.to_text()
    doc = rep.to_json()
    assert doc["checks"] == dict.fromkeys(doc["checks"], "PASS")
    res = doc["results"]
    assert res["decisions"]["checked"]["recomputed"] == 2 * CALLS + 30
    assert res["decisions"]["why"] is None
    assert res["recordings"]["checked"]["files_hashed"] == len(honest.live) + 1  # + the held
    assert res["recordings"]["checked"]["held_past_expiry"] == 1
    assert res["recordings"]["checked"]["tombstones"] == len(honest.expired) + 2
    assert res["recordings"]["checked"]["destroyed_keys"] >= 2  # a bucket and a hold key
    assert res["time"]["checked"]["commitments"] >= 8
    assert rep.counts["decisions_cap_reached"] > 0 and rep.counts["decisions_objection"] == 1
    text = rep.to_text()
    assert "decisions    PASS" in text and f"{len(honest.live) + 1} files hashed" in text
    assert text.endswith("AUDIT PASSED")


# -- recordings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "truncate", "swap"])
def test_a_recording_file_changed_after_it_was_sealed(honest: Honest, case: Path, how: str) -> None:
    rid, other = honest.live[0], honest.live[1]
    row = _catalog(case).get(rid)
    assert row is not None
    path = case / "store" / "recordings" / row.file
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    elif how == "truncate":
        del data[len(data) // 2 :]
    else:  # another call's audio under this recording's name
        other_row = _catalog(case).get(other)
        assert other_row is not None
        data = bytearray((case / "store" / "recordings" / other_row.file).read_bytes())
    path.write_bytes(bytes(data))
    rep = _audit(case)
    assert rep.status("recordings") == "FAIL" and not rep.ok
    (bad,) = _found(rep, "recordings", "its SHA-256 is not the ciphertext_sha256")
    assert bad["recording_id"] == rid
    assert bad["evidence"]["expected_sha256"] == _sealed_hash(case, rid)
    assert bad["evidence"]["actual_sha256"] != bad["evidence"]["expected_sha256"]
    assert bad["evidence"]["bytes"] == len(data)


def test_a_recording_deleted_without_a_tombstone(honest: Honest, case: Path) -> None:
    rid = honest.live[0]
    row = _catalog(case).get(rid)
    assert row is not None
    (case / "store" / "recordings" / row.file).unlink()
    with sqlite3.connect(case / "store" / "catalog.sqlite") as db:  # and its row, too
        db.execute("DELETE FROM recordings WHERE recording_id = ?", (rid,))
    rep = _audit(case)
    (bad,) = _found(rep, "recordings", "disappeared without one")
    assert bad["recording_id"] == rid and isinstance(bad["index"], int)
    assert bad["evidence"]["actual"] == "missing"
    assert bad["evidence"]["expected_sha256"] == _sealed_hash(case, rid)


def test_a_recording_marked_expired_in_the_catalog_only(honest: Honest, case: Path) -> None:
    rid = honest.live[0]
    catalog = _catalog(case)
    row = catalog.get(rid)
    assert row is not None
    (case / "store" / "recordings" / row.file).unlink()
    catalog.update(rid, status="expired", wrapped_key=None)
    catalog.close()
    rep = _audit(case)
    assert _found(rep, "recordings", "disappeared without one")[0]["recording_id"] == rid
    assert _found(rep, "recordings", "expired without a tombstone")[0]["recording_id"] == rid


def test_an_unselected_call_recorded(case: Path) -> None:
    with operator(case) as op:
        d = op.decide_until("x", "not_sampled")
        rid = op.record(d._replace(record=True, reason="sampled"))  # the operator forces it
    rep = _audit(case)
    (bad,) = _found(rep, "recordings", "no positive decision earlier")
    assert bad["recording_id"] == rid and bad["call_ref"] == d.call_ref
    assert set(bad["evidence"]["decisions"].values()) == {"not_sampled"}


def test_a_caller_who_objected_recorded(case: Path) -> None:
    with operator(case) as op:
        d = op.sampler.decide("objector-call", {"queue": "support"}, caller=OBJECTOR)
        assert d.reason == "objection"
        # Forced, and the caller hidden from the vault, which refuses a listed caller.
        rid = op.record(d._replace(record=True, reason="sampled", caller_pseudonym=None))
    rep = _audit(case)
    assert _found(rep, "recordings", "a caller who objected")[0]["recording_id"] == rid
    assert _found(rep, "recordings", "no positive decision")[0]["recording_id"] == rid


def test_a_second_recording_under_a_selected_call_hidden_as_aborted(case: Path) -> None:
    with operator(case) as op:
        d = op.decide_until("y", "sampled")
        first = op.record(d, seed=1)
        second = op.record(d, seed=2)  # another call's audio under the selected reference
        op.wait(op.log.append(T_RECORDING_ABORTED, {"recording_id": second, "reason": "oops"}))
    catalog = _catalog(case)
    catalog.update(second, status="aborted")  # the file is kept
    catalog.close()
    rep = _audit(case)
    (two,) = _found(rep, "recordings", "2 recordings of one decided call")
    assert sorted(two["evidence"]["recordings"]) == sorted([first, second])
    assert two["call_ref"] == d.call_ref
    (kept,) = _found(rep, "recordings", "was aborted but its file is still there")
    assert kept["recording_id"] == second


def test_a_recording_kept_longer_than_its_rule(case: Path) -> None:
    longer = RetentionPeriod.parse("400 days").expires_at
    with operator(case) as op:
        d = op.decide_until("z", "sampled")
        with mock.patch.object(RetentionPeriod, "expires_at", lambda self, start: longer(start)):
            rid = op.record(d)
    rep = _audit(case)
    (bad,) = _found(rep, "recordings", "expiry is not its decision's time plus the retention")
    assert bad["recording_id"] == rid
    ev = bad["evidence"]
    assert ev["expected_expires_at"] == (OPERATOR_AT + timedelta(days=3)).isoformat()
    assert ev["logged_expires_at"] == (OPERATOR_AT + timedelta(days=400)).isoformat()


def test_an_expiry_extended_in_the_catalog(honest: Honest, case: Path) -> None:
    catalog = _catalog(case)
    a, b = honest.live[0], honest.live[1]
    row = catalog.get(a)
    assert row is not None
    catalog.update(a, expires_at=row.expires_at + 86_400_000_000 * 30)
    catalog.update(b, expires_at=HELD_UNTIL)  # "held", by no hold at all
    catalog.close()
    rep = _audit(case)
    bad = _found(rep, "recordings", "the catalog extends the recording's expiry")
    assert {f["recording_id"] for f in bad} == {a, b}


def test_a_hold_the_log_never_recorded(honest: Honest, case: Path) -> None:
    rid = honest.live[0]
    catalog = _catalog(case)
    catalog.add_hold(Hold("secret-hold", "keep it", created_at=0))
    catalog.add_hold_member("secret-hold", rid, b"")
    catalog.update(rid, expires_at=HELD_UNTIL)
    row = catalog.get(rid)
    catalog.close()
    assert row is not None
    rep = _audit(case)
    assert _found(rep, "recordings", "hold secret-hold in the catalog")[0]["evidence"] == {
        "hold_id": "secret-hold"
    }
    assert _found(rep, "recordings", "no hold the log records")[0]["recording_id"] == rid
    # Past its logged expiry, the unlogged hold does not keep it.
    later = _audit(case, now=datetime(2026, 3, 20, tzinfo=UTC))
    kept = _found(later, "recordings", "kept past its expiry")
    assert rid in {f["recording_id"] for f in kept}


def test_a_recording_slipped_into_a_logged_hold(honest: Honest, case: Path) -> None:
    catalog = _catalog(case)
    ((hold, _),) = catalog.holds_of(honest.held)
    catalog.add_hold_member(hold.hold_id, honest.live[0], b"")
    catalog.update(honest.live[0], expires_at=HELD_UNTIL)
    catalog.close()
    rep = _audit(case)
    (bad,) = _found(rep, "recordings", f"hold {hold.hold_id} keeps 2 recordings")
    assert bad["evidence"] == {"hold_id": hold.hold_id, "catalog": 2, "logged": 1}


def test_a_recording_still_marked_held_after_its_hold_was_released(
    honest: Honest, case: Path
) -> None:
    catalog = _catalog(case)
    catalog.update(honest.released, status="sealed", expires_at=HELD_UNTIL)  # as if never let go
    catalog.close()
    rep = _audit(case)
    (bad,) = _found(rep, "recordings", "no hold the log records names it")
    assert bad["recording_id"] == honest.released and bad["evidence"]["holds"]


def test_destroyed_bucket_keys_restored_from_a_copy(honest: Honest, case: Path) -> None:
    before = honest.base / "before-sweep" / "keys" / "buckets"
    now = case / "store" / "keys" / "buckets"
    restored = sorted(p.name for p in before.iterdir() if not (now / p.name).exists())
    assert restored
    for name in restored:
        shutil.copy2(before / name, now / name)
    rep = _audit(case)
    bad = _found(rep, "recordings", "but the key store still holds it")
    assert {f["evidence"]["key"] + ".key" for f in bad} == set(restored)
    assert all(isinstance(f["index"], int) for f in bad)


def test_a_backup_of_expired_recordings_restored(honest: Honest, case: Path) -> None:
    before = honest.base / "before-sweep"
    for sub in ("keys", "recordings"):
        shutil.copytree(before / sub, case / "store" / sub, dirs_exist_ok=True)
    for f in before.glob("catalog.sqlite*"):
        shutil.copy2(f, case / "store" / f.name)
    rep = _audit(case)
    files = {f["recording_id"] for f in _found(rep, "recordings", "its file is still there")}
    keys = {f["recording_id"] for f in _found(rep, "recordings", "still unwraps")}
    assert set(honest.expired) <= files and set(honest.expired) <= keys
    assert _found(rep, "recordings", "but the key store still holds it")


def test_recordings_kept_past_their_expiry(honest: Honest, case: Path) -> None:
    rep = _audit(case, now=datetime(2026, 3, 20, tzinfo=UTC))  # no sweep since the 6th
    kept = {f["recording_id"] for f in _found(rep, "recordings", "kept past its expiry")}
    assert set(honest.live) <= kept and honest.held not in kept  # the hold still keeps it
    readable = _found(rep, "recordings", "still readable after its expiry")
    assert readable and all(f["evidence"]["key_unwraps"] for f in readable)


# -- time and epochs -----------------------------------------------------------------------------


def _forged(
    store: Store, epoch: str, ref: str, decided_at: datetime, key_epoch: str | None = None
) -> DecisionRecord:
    """A decision as the operator writes it: a correct draw under ``epoch``'s key."""
    policy = store.policy(decided_at)
    rule = policy.rule_named("default")
    r = draw(store.keyring.epoch_key(key_epoch or epoch), ref)
    return DecisionRecord(
        epoch_id=epoch,
        policy_version=policy.version,
        rule="default",
        threshold=rule.threshold,
        reason="sampled" if r < rule.threshold else "not_sampled",
        draw=r,
        call_ref=ref,
        agent=None,
        caller_pseudonym=None,
        decided_at=decided_at,
        attributes=policy.attributes_json({}),
    )


def test_a_decision_backdated_into_an_ended_epoch(case: Path) -> None:
    with operator(case) as op:
        late = _forged(op.store, "2026-03-03", "late-call", DAY2 + timedelta(hours=5))
        index = op.wait(op.log.append_decision(late))
    rep = _audit(case)
    assert rep.status("decisions") == "PASS"  # the draw itself is right
    (bad,) = _found(rep, "time", "entry times run backwards")
    assert bad["index"] == index
    assert bad["evidence"]["time"] == (DAY2 + timedelta(hours=5)).isoformat()
    assert bad["evidence"]["earlier_entry_time"] >= SWEEP_AT.isoformat()


def test_a_forged_decision_under_a_far_future_epoch(case: Path) -> None:
    with operator(case) as op:
        (key,) = op.store.keyring.ensure_epochs(["2026-05-01"])
        commit = op.wait(
            op.log.append(T_KEY_COMMIT, {"epoch_id": "2026-05-01", "commitment": key.commitment})
        )
        index = op.wait(
            op.log.append_decision(_forged(op.store, "2026-05-01", "future-call", OPERATOR_AT))
        )
    rep = _audit(case)
    assert rep.status("time") == "FAIL"
    (ahead,) = _found(rep, "time", "committed 55.5 days before the epoch begins")
    assert ahead["index"] == commit and ahead["epoch_id"] == "2026-05-01"
    (misdated,) = _found(rep, "time", "are not dated on that UTC day")
    assert misdated["index"] == index and misdated["call_ref"] == "future-call"


def test_a_policy_used_before_it_takes_effect(case: Path, tmp_path: Path) -> None:
    (tmp_path / "p2.toml").write_text(POLICY.replace('rate = "0.25"', 'rate = "0.2"'))
    store = Store.open(case / "store")
    later = OPERATOR_AT + timedelta(days=10)
    policy = store.apply_policy(
        tmp_path / "p2.toml", effective_at=later, clock=FixedClock(OPERATOR_AT)
    )
    with operator(case) as op:
        eager = Sampler(policy, op.store.keyring, clock=op.clock, log=op.log)
        d = eager.decide("eager-call", {"queue": "support"})
        op.log.flush()
    assert d.policy_version == policy.version
    rep = _audit(case)
    (bad,) = _found(rep, "time", "whose effective_at is still in the future")
    assert bad["call_ref"] == "eager-call"
    assert bad["evidence"]["policy_version"] == policy.version
    assert bad["evidence"]["effective_at"] == later.isoformat()
    assert bad["evidence"]["in_force"] == store.policy(OPERATOR_AT).version


def test_one_call_decided_in_two_epochs(case: Path) -> None:
    with operator(case) as op:
        op.sampler.decide("d1-010", _attrs(10))  # decided on the 2nd already: a new draw
        op.log.flush()
    rep = _audit(case)
    (bad,) = _found(rep, "time", "decided in 2 epochs")
    assert bad["call_ref"] == "d1-010"
    assert bad["evidence"]["epochs"] == ["2026-03-02", "2026-03-06"]


# -- decisions and keys --------------------------------------------------------------------------


def test_an_ended_epochs_key_withheld(case: Path) -> None:
    doc = json.loads((case / "revealed.json").read_text())
    doc["epochs"] = [e for e in doc["epochs"] if e["epoch_id"] != "2026-03-03"]
    (case / "revealed.json").write_text(json.dumps(doc))
    rep = _audit(case)
    (bad,) = _found(rep, "decisions", "epoch 2026-03-03 has ended")
    assert "was not revealed" in bad["message"] and bad["epoch_id"] == "2026-03-03"
    assert bad["evidence"]["decisions"] == CALLS + 30
    assert rep.status("keys") == "PASS"  # what was revealed is right


def test_no_key_revealed_at_all(case: Path) -> None:
    doc = json.loads((case / "revealed.json").read_text())
    doc["epochs"] = []
    (case / "revealed.json").write_text(json.dumps(doc))
    rep = _audit(case)
    assert rep.verdict == "FAIL"
    assert {f["epoch_id"] for f in _found(rep, "decisions", "has ended")} == {
        "2026-03-02",
        "2026-03-03",
    }
    assert rep.status("keys") == "SKIPPED" and rep.why("keys") == "no epoch key revealed"


def test_call_references_shredded_early(case: Path) -> None:
    with operator(case) as op:
        assert op.store.keyring.destroy_sealing_key("calls/2026-03")
        op.wait(op.log.append(T_KEY_DESTROYED, {"key": "calls/2026-03", "reason": "oops"}))
    rep = _audit(case)
    (early,) = _found(rep, "keys", "shredded before their retention ended")
    assert early["evidence"]["kept_until"] == "2027-05-01"
    (refs,) = _found(rep, "decisions", "cannot be read (sealed under calls/2026-03)")
    assert refs["evidence"]["decisions"] == 2 * CALLS + 30
    assert _found(rep, "recordings", "call reference is unreadable")


def test_a_sealing_key_logged_destroyed_but_kept(case: Path) -> None:
    with operator(case) as op:
        op.wait(op.log.append(T_KEY_DESTROYED, {"key": "access/2026-03", "reason": "done"}))
    rep = _audit(case)
    (bad,) = _found(rep, "keys", "access/2026-03 was destroyed, but the keyring still holds it")
    assert isinstance(bad["index"], int)
    (early,) = _found(rep, "keys", "access details sealed under access/2026-03 were shredded")
    assert early["evidence"]["kept_until"] == "2027-04-01"


def test_a_hold_released_in_the_log_that_was_never_placed(case: Path) -> None:
    with operator(case) as op:
        op.wait(
            op.log.append(
                T_HOLD,
                {"hold_id": "ghost", "action": "released", "recordings": 0, "recording_ids": "[]"},
            )
        )
    rep = _audit(case)
    (bad,) = _found(rep, "recordings", "hold ghost is released in the log, which never")
    assert bad["evidence"] == {"hold_id": "ghost"}


def test_a_release_that_names_other_recordings_than_the_hold_kept(
    honest: Honest, case: Path
) -> None:
    """The operator places a hold on one recording, then logs its release naming another (to
    account for a recording it had slipped into the hold in the catalog)."""
    with operator(case) as op:
        hold = Retention(op.vault, clock=op.clock).hold(
            [honest.live[0]], reason="case 12", until=None, principal=DPO
        )
        op.wait(
            op.log.append(
                T_HOLD,
                {
                    "hold_id": hold.hold_id,
                    "action": "released",
                    "recordings": 2,
                    "recording_ids": hold_recording_ids(honest.live[:2]),
                },
            )
        )
    rep = _audit(case)
    (bad,) = _found(rep, "recordings", "released entry names other recordings")
    assert bad["evidence"]["not_placed"] == [honest.live[1]]
    assert bad["evidence"]["not_released"] == []
