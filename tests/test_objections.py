"""The objection list: keyed pseudonyms only, saved all or nothing, every change logged first;
the sampler, which logs the caller's pseudonym and records no unnamed caller while anyone
objects."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Policy, Sampler, Store
from sampledrec.errors import InvalidArgument, StoreError
from sampledrec.log.format import T_ACCESS, T_OBJECTION, Entry
from sampledrec.log.writer import iter_entries
from sampledrec.sampling.objections import PENDING_FILE, ObjectionChange, ObjectionList
from sampledrec.testing import MemoryKeyring

from .test_decision_record import ListSink

KEY = b"k" * 32


def test_add_all_checks_every_number_before_saving(tmp_path: Path) -> None:
    path = tmp_path / "objections.txt"
    path.write_text("")
    objections = ObjectionList.load(KEY, path)
    with pytest.raises(InvalidArgument, match=r"number 2 of 3: .*nothing was added"):
        objections.add_all(["+33 6 12 34 56 78", "12", "+33 6 98 76 54 32"])
    assert path.read_text() == "" and len(objections) == 0
    pseudonyms = objections.add_all(["+33 6 12 34 56 78", "0033 6 98 76 54 32"])
    assert path.read_text().splitlines() == pseudonyms
    assert "+33 6 12 34 56 78" in objections and len(objections) == 2
    assert ObjectionList.load(KEY, path).contains_pseudonym(pseudonyms[1])


def test_additions_from_two_lists_are_all_kept(tmp_path: Path) -> None:
    # Two processes (here: two lists loaded before either adds) each add callers; the store's
    # lock and the re-read before the atomic write keep both sets.
    path = tmp_path / "objections.txt"
    lock = threading.Lock()
    first = ObjectionList.load(KEY, path, lock=lambda: lock)
    second = ObjectionList.load(KEY, path, lock=lambda: lock)
    a = first.add("+33 6 12 34 56 78")
    b = second.add("+33 6 98 76 54 32")
    assert ObjectionList.load(KEY, path).contains_pseudonym(a)
    assert ObjectionList.load(KEY, path).contains_pseudonym(b)
    assert sorted(path.read_text().splitlines()) == sorted([a, b])


# -- every change logged first (docs/decisions/0018-objections-logged.md) --------------------------

A, B, C = "+33 6 12 34 56 78", "+33 6 98 76 54 32", "+44 20 7946 0018"


def test_removals_are_saved_and_every_change_is_told_before_the_file_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "objections.txt"
    told: list[tuple[ObjectionChange, list[str]]] = []

    def hook(change: ObjectionChange) -> None:
        # Told first: the file does not hold the change yet, the pending change is saved.
        told.append((change, path.read_text().splitlines() if path.exists() else []))
        assert (tmp_path / PENDING_FILE).exists()

    objections = ObjectionList.load(KEY, path, on_change=hook)
    a, b = objections.add_all([A, B])
    assert objections.add(A) == a  # already on it: nothing to tell
    assert objections.remove_all([A, C]) == [a, objections.pseudonym(C)]  # C never was
    assert path.read_text().splitlines() == [b] and not (tmp_path / PENDING_FILE).exists()
    assert told == [
        (ObjectionChange("added", (a, b)), []),
        (ObjectionChange("removed", (a,)), [a, b]),
    ]
    with pytest.raises(InvalidArgument, match=r"number 1 of 1: .*nothing was removed"):
        objections.remove_all(["12"])
    assert objections.pseudonyms() == {b}


def test_a_change_logged_before_a_crash_is_finished_when_the_list_is_loaded_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "objections.txt"
    logged: list[ObjectionChange] = []

    def crash_after_logging(change: ObjectionChange) -> None:
        logged.append(change)
        raise KeyboardInterrupt  # the process dies once the change is in the log

    with pytest.raises(KeyboardInterrupt):
        ObjectionList.load(KEY, path, on_change=crash_after_logging).add(A)
    assert not path.exists() or path.read_text() == ""  # the file was never changed
    assert (tmp_path / PENDING_FILE).exists()
    # Loaded without a hook (a read-only use): nothing is finished.
    assert len(ObjectionList.load(KEY, path)) == 0
    again = ObjectionList.load(KEY, path, on_change=logged.append)
    assert logged == [ObjectionChange("added", (again.pseudonym(A),))] * 2  # logged again
    assert again.pseudonyms() == {again.pseudonym(A)} and A in again
    assert path.read_text().splitlines() == [again.pseudonym(A)]
    assert not (tmp_path / PENDING_FILE).exists()


def test_a_damaged_pending_change_is_refused(tmp_path: Path) -> None:
    (tmp_path / PENDING_FILE).write_text('{"action": "edited", "pseudonyms": ["x"]}')
    with pytest.raises(StoreError, match="not a pending change of the objection list"):
        ObjectionList.load(KEY, tmp_path / "objections.txt", on_change=lambda change: None)


def test_a_list_sees_callers_added_elsewhere(tmp_path: Path, monkeypatch: Any) -> None:
    import sampledrec.sampling.objections as module

    path = tmp_path / "objections.txt"
    running = ObjectionList.load(KEY, path)  # a long-running sampler's
    assert running.is_empty()
    ObjectionList.load(KEY, path).add(A)
    assert running.is_empty()  # read again at most once a second
    monkeypatch.setattr(module, "REFRESH_SECONDS", 0.0)
    assert not running.is_empty() and A in running and len(running) == 1


# -- the store logs every change -------------------------------------------------------------------


def _objection_entries(store: Store) -> list[Entry]:
    return [e for e in iter_entries(store.log_storage, store.keyring) if e.type == T_OBJECTION]


def test_the_store_logs_each_change_one_entry_per_caller_before_saving(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    at = datetime(2026, 3, 2, 9, tzinfo=UTC)
    objections = store.objections(clock=FixedClock(at), principal="dana")
    a, b = objections.add_all([A, B])
    objections.remove(A)
    entries = _objection_entries(store)
    assert [(e.fields["action"], e.fields["caller_pseudonym"].hex()) for e in entries] == [
        ("added", a),
        ("added", b),
        ("removed", a),
    ]
    assert all(e.kid == "calls/2026-03" and e.time == at for e in entries)
    assert all("migrated" not in e.fields for e in entries)
    # Who changed the list: an access entry (sealed under access/, not in an auditor's kit).
    accesses = [
        e
        for e in iter_entries(store.log_storage, store.keyring)
        if e.type == T_ACCESS and e.fields.get("action") == "objections"
    ]
    assert [(e.fields["principal"], e.fields["detail"]) for e in accesses] == [
        ("dana", "added 2 callers"),
        ("dana", "removed 1 caller"),
    ]
    assert all(e.kid == "access/2026-03" for e in accesses)
    assert store.objection_pseudonyms() == {b}
    assert json.loads((store.path / "store.json").read_text())["objections_logged"] is True


def test_an_old_stores_list_is_logged_once_as_migrated(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    meta = json.loads((store.path / "store.json").read_text())
    del meta["objections_logged"]  # as a store made before changes were logged
    (store.path / "store.json").write_text(json.dumps(meta))
    listed = ObjectionList.load(store.keyring.pseudonym_key(), store.path / "objections.txt")
    a, b = listed.add_all([A, B])  # as that version saved them: no log entry
    old = Store.open(store.path)
    assert old.objection_pseudonyms() == {a, b} and not _objection_entries(old)  # read only
    old.objections()
    entries = _objection_entries(old)
    assert [(e.fields["action"], e.fields["migrated"]) for e in entries] == [("added", True)] * 2
    assert {e.fields["caller_pseudonym"].hex() for e in entries} == {a, b}
    Store.open(store.path).objections()  # once only
    assert len(_objection_entries(old)) == 2
    assert json.loads((store.path / "store.json").read_text())["objections_logged"] is True


# -- the sampler -------------------------------------------------------------------------------


SAMPLING = """
[default]
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call is recorded, so that only objections stop it"
retention = "3 days"
"""


def test_while_anyone_objects_a_call_without_its_caller_is_not_recorded() -> None:
    keyring = MemoryKeyring(seed=b"o")
    objections = ObjectionList(keyring.pseudonym_key())
    policy = Policy.from_toml(SAMPLING, source="test")
    sampler = Sampler(policy, keyring, clock=FixedClock("2026-03-02T09:00Z"), objections=objections)
    assert sampler.decide("before").reason == "sampled"  # nobody objects yet
    objections.add(A)
    unnamed = sampler.decide("unnamed")
    assert unnamed.reason == "objection" and not unnamed.record
    assert unnamed.caller_pseudonym is None
    named = sampler.decide("named", caller=B)
    assert named.record and named.caller_pseudonym == objections.pseudonym(B)
    batch = sampler.decide_batch(["b-unnamed", "b-named", "b-objector"], callers=[None, B, A])
    assert batch.reasons.tolist() == ["objection", "sampled", "objection"]
    assert sampler.decide_batch(["b-none"]).reasons.tolist() == ["objection"]
    # A repeat without the caller asks about the first decision's caller: known and not on
    # the list, it is recorded; never known, it may be an objector's now.
    assert sampler.decide("named").record
    again = sampler.decide("before")
    assert again.repeat and again.reason == "sampled" and not again.record


def test_decide_batch_logs_the_caller_pseudonym_as_decide_does() -> None:
    keyring = MemoryKeyring(seed=b"o")
    objections = ObjectionList(keyring.pseudonym_key())
    objections.add(A)
    policy = Policy.from_toml(SAMPLING, source="test")
    refs = [f"c{i}" for i in range(6)]
    callers = [A, B, None, C, B, A]
    one, many = ListSink(), ListSink()
    clock = FixedClock("2026-03-02T09:00Z")
    by_one = Sampler(policy, keyring, clock=clock, objections=objections, log=one)
    by_batch = Sampler(policy, keyring, clock=clock, objections=objections, log=many)
    decided = [by_one.decide(r, caller=c) for r, c in zip(refs, callers, strict=True)]
    batch = by_batch.decide_batch(refs, callers=callers)
    assert list(batch) == decided
    assert one.records == many.records
    assert [r.caller_pseudonym for r in many.records] == [
        None if c is None else objections.pseudonym(c) for c in callers
    ]
    assert [r.reason for r in many.records] == [
        "objection", "sampled", "objection", "sampled", "sampled", "objection"
    ]  # fmt: skip


def test_the_cli_adds_and_removes_callers_each_change_logged(
    tmp_path: Path, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    store = Store.init(tmp_path / "s")
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(f"{A}\n{B}\n")
    code, doc = cli_json("objections", "add", "--store", store.path, "--file", numbers)
    assert code == 0 and doc == {"read": 2, "added": 2, "total": 2}
    numbers.write_text(f"{B}\n{C}\n")  # C was never on the list
    code, doc = cli_json("objections", "remove", "--store", store.path, "--file", numbers)
    assert code == 0 and doc == {"read": 2, "removed": 1, "total": 1}
    actions = [e.fields["action"] for e in _objection_entries(store)]
    assert actions == ["added", "added", "removed"]
    numbers.write_text("12\n")
    code, doc = cli_json("objections", "remove", "--store", store.path, "--file", numbers)
    assert code == 2 and "nothing was done" in str(doc)
    assert len(_objection_entries(store)) == 3


# -- the audit reads every decision's caller -----------------------------------------------------


@pytest.mark.parametrize("accelerated", [True, False])
def test_the_audit_reads_each_decisions_caller_as_decode_entry_does(
    tmp_path: Path, monkeypatch: Any, accelerated: bool
) -> None:
    import numpy as np

    from sampledrec.audit import objections as audit
    from sampledrec.log import hashing
    from sampledrec.log.columns import read_log
    from sampledrec.log.format import DECISION, FIELDS, T_DECISION, Field, from_micros

    store = Store.init(tmp_path / "s")
    objections = store.objections(clock=FixedClock("2026-03-02T08:00Z"))
    objections.add_all([A, B])
    clock = FixedClock("2026-03-02T09:00Z")
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(40):
            ref: str | bytes = f"c{i}" if i % 3 else f"c{i}".encode()
            caller = (A, B, C, None)[i % 4]
            attrs = {"agent": "é" * (i % 5)} if i % 2 else {}
            sampler.decide(ref if i % 7 else "r" * 256, attrs, caller=caller)  # long: escaped
        sampler.decide_batch([f"b{i}" for i in range(10)], callers=[A, None, C, B, A] * 2)
        # A decision with a personal field of a higher tag (one added by a later version).
        later = {**FIELDS[T_DECISION], 0x23: Field(0x23, "attributes", "str")}
        monkeypatch.setitem(FIELDS, T_DECISION, later)
        record = sampler.decide("x-later", caller=C)
        values = {f.name: getattr(record, f.name, None) for f in DECISION}
        values |= {
            "policy_version": bytes.fromhex(record.policy_version),
            "reason": 0,
            "caller_pseudonym": bytes.fromhex(objections.pseudonym(A)),
            "attributes": "queue=sales",
        }
        log.wait_durable(log.append(T_DECISION, values, at=from_micros(1_772_442_000_000_000)))
        monkeypatch.undo()
    keyring = store.keyring
    if not accelerated:
        monkeypatch.setattr(hashing, "native", None)
    d = read_log(store.log_storage, keyring).decisions
    callers = audit.Callers(np.full(len(d), audit.NOT_READ, dtype=np.int32))
    a, b = (callers.code_of(bytes.fromhex(objections.pseudonym(n))) for n in (A, B))
    audit.read_callers(store.log_storage, keyring, d, 0, callers)
    expected = []
    for e in iter_entries(store.log_storage, keyring):
        if e.type == T_DECISION:
            p = e.fields.get("caller_pseudonym")
            expected.append(audit.NO_CALLER if p is None else callers.known(p))
    assert callers.code.tolist() == expected
    assert {a, b, audit.OTHER_CALLER, audit.NO_CALLER} == set(expected)
    assert expected[-1] == a  # read past the field of the higher tag

    # Without the calls/ key, nothing can be read.
    class NoKeys:
        def sealing_key(self, kid: str) -> None:
            return None

    hidden = audit.Callers(np.full(len(d), audit.NOT_READ, dtype=np.int32))
    audit.read_callers(store.log_storage, NoKeys(), d, 0, hidden)
    assert set(hidden.code.tolist()) == {audit.UNREADABLE}


def test_the_cli_says_why_a_call_without_its_caller_is_not_recorded(
    tmp_path: Path, cli: Callable[..., tuple[int, str]]
) -> None:
    store = Store.init(tmp_path / "s")
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(f"{A}\n")
    assert cli("objections", "add", "--store", store.path, "--file", numbers)[0] == 0
    code, text = cli("decide", "--store", store.path, "--call-ref", "unnamed-1")
    assert code == 0 and text.startswith("do not record (objection)")
    assert "the caller was not given while someone objects" in text
