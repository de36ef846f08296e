"""Repairing a damaged decision log: ``DecisionLog.repair``, ``Store.repair_log`` and
``sampledrec log repair`` (docs/operations.md, "When the log is damaged").

The log is damaged in several ways, on each storage the library ships. Opening it then refuses
and names the repair. The repair keeps every byte from the first damaged point on, unchanged,
outside the log; cuts the log back to its last good batch; logs a ``log_gap`` entry and signs a
fresh checkpoint; and the store decides again. Verification accepts the repaired log but reports
the gap as a failure, with the range lost and the hash of what was set aside, for good. A crash
at any step of the repair leaves a log that still needs it, never a third state.

The layout is parsed here with the independent parser of ``tests/test_log.py``, so that the
damage, and what the repair must set aside, are aimed without sampledrec's own reader.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import sampledrec.log.segments
from sampledrec import FixedClock, Store
from sampledrec.audit.verify import audit_verify
from sampledrec.cli.app import main
from sampledrec.errors import InvalidArgument, LogCorrupt, LogRepairRefused
from sampledrec.log import DecisionLog, LogStorage, RepairReport, iter_entries, verify_log
from sampledrec.log.format import T_DECISION, T_KEY_COMMIT, T_LOG_GAP, T_POLICY, Entry
from sampledrec.log.storage import LocalLogStorage, segment_name
from sampledrec.log.verify import LogReport
from sampledrec.testing import MemoryLogStorage

from .conftest import CliRun
from .test_backends import LOG_STORAGES, open_log_storage
from .test_log import (
    BATCH_HEADER,
    Batch,
    export,
    make_store,
    parse_segment,
    split_checkpoints,
)
from .test_log_storage import ORIGIN, STORE_ID, Deployment

DAMAGES = ["flip-last-segment", "flip-earlier-segment", "truncate", "delete-segment", "checkpoints"]
SEGMENT_BYTES = 2560  # small segments, so that a log of a few dozen decisions has several


# -- a log, and its damage ------------------------------------------------------------------------


def fill(dep: Deployment, batches: int = 16) -> None:
    """Decisions in ``batches`` batches, a signed checkpoint after each, closed."""
    with dep.create() as log:
        sampler = dep.sampler(log)
        for b in range(batches):
            for i in range(3):
                sampler.decide(f"call-{b}-{i}")
            log.flush()
            log.checkpoint()


def layout(storage: LogStorage) -> dict[int, list[Batch]]:
    return {first: parse_segment(storage.read_segment(first)) for first in storage.segments()}


def note_size(note: bytes) -> int:
    return int(note.split(b"\n")[1])


@dataclass
class Damaged:
    """A damaged log, and what its repair must do: keep ``kept`` entries and set aside
    ``pieces`` ((name, offset, bytes), in order); the log held ``lost_to`` entries."""

    dep: Deployment
    before: list[Entry]  # the entries, read before the damage
    kept: int
    pieces: list[tuple[str, int, bytes]]
    lost_to: int
    checkpoints_set_aside: int

    @property
    def storage(self) -> LogStorage:
        return self.dep.storage

    @property
    def sha256(self) -> str:
        return hashlib.sha256(b"".join(data for _, _, data in self.pieces)).hexdigest()


def expected_pieces(
    storage: LogStorage, seg: int, offset: int, kept: int, from_record: int | None = None
) -> tuple[list[tuple[str, int, bytes]], int]:
    """What a repair that cuts the log at ``offset`` of segment ``seg`` (``kept`` entries) must
    set aside, read from the damaged log: the rest of that segment, every later segment, and the
    checkpoint records from the first one past ``kept`` (or ``from_record``) on."""
    pieces = []
    data = storage.read_segment(seg)
    if offset < len(data):
        pieces.append((segment_name(seg), offset, data[offset:]))
    for later in storage.segments():
        if later > seg:
            pieces.append((segment_name(later), 0, storage.read_segment(later)))
    cps = storage.read_checkpoints()
    records = split_checkpoints(cps)
    if from_record is None:
        from_record = next(
            (i for i, (_, note) in enumerate(records) if note_size(note) > kept), len(records)
        )
    if from_record < len(records):
        at = records[from_record][0]
        pieces.append(("checkpoints", at, cps[at:]))
    return pieces, len(records) - from_record


def flip_at(storage: LogStorage, seg: int, offset: int) -> None:
    byte = storage.read_segment(seg, offset)[:1]
    with storage.lock():
        storage.write_segment(seg, offset, bytes([byte[0] ^ 0x01]))


def damage(dep: Deployment, how: str) -> Damaged:
    """Damage the filled log of ``dep`` in one way."""
    storage = dep.storage
    before = list(iter_entries(storage, dep.keyring))
    segs = layout(storage)
    firsts = sorted(segs)
    assert len(firsts) >= 3, "the log needs several segments"
    records = split_checkpoints(storage.read_checkpoints())
    if how.startswith("flip"):
        seg = firsts[-1] if how == "flip-last-segment" else firsts[1]
        batch = segs[seg][len(segs[seg]) // 2]
        flip_at(storage, seg, batch.records[0][0] + 12)  # a byte of an entry
        pieces, n = expected_pieces(storage, seg, batch.start, batch.first)
        return Damaged(dep, before, batch.first, pieces, len(before), n)
    if how == "truncate":
        seg = firsts[-1]
        batch = segs[seg][-1]  # covered by the checkpoint written at close
        assert note_size(records[-1][1]) == batch.first + batch.count
        with storage.lock():
            storage.truncate_segment(seg, batch.start + 30)
        pieces, n = expected_pieces(storage, seg, batch.start, batch.first)
        return Damaged(dep, before, batch.first, pieces, len(before), n)
    if how == "delete-segment":
        gone = firsts[1]
        if isinstance(storage, LocalLogStorage):
            (storage.folder / segment_name(gone)).unlink()
        else:
            with storage.lock():
                storage.set_aside_segment(gone)  # out of the log: deleted, for the log
        pieces, n = expected_pieces(storage, firsts[0], len(storage.read_segment(0)), gone)
        return Damaged(dep, before, gone, pieces, len(before), n)
    if how == "checkpoints":
        j = len(records) // 2
        at, note = records[j]
        line = note.split(b"\n")[1]
        with storage.lock():
            storage.write_checkpoints(at + 4 + note.index(line), b"x" * len(line))
        last = firsts[-1]
        pieces, n = expected_pieces(
            storage, last, len(storage.read_segment(last)), len(before), from_record=j
        )
        return Damaged(dep, before, len(before), pieces, len(before), n)
    raise AssertionError(how)


def repair(dep: Deployment, **kw: Any) -> RepairReport:
    kw.setdefault("principal", "ops-admin")
    kw.setdefault("reason", "disk error on the log volume (ticket 4711)")
    return DecisionLog.repair(
        dep.storage, dep.keyring, origin=ORIGIN, store_id=STORE_ID, clock=dep.clock, **kw
    )


def verify(dep: Deployment, **kw: Any) -> LogReport:
    return verify_log(dep.storage, store_id=STORE_ID, public_key=dep.public_key, **kw)


def failed_checks(report: LogReport) -> set[str]:
    return {f.check for f in report.findings}


def state(storage: LogStorage) -> tuple[dict[int, bytes], bytes, dict[str, bytes], bytes | None]:
    return (
        {first: storage.read_segment(first) for first in storage.segments()},
        storage.read_checkpoints(),
        storage.set_aside_tails(),
        storage.pending_repair(),
    )


def decision_refs(entries: list[Entry]) -> list[Any]:
    return [e.fields["call_ref"] for e in entries if e.type == T_DECISION]


@pytest.fixture(params=LOG_STORAGES)
def dep(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Deployment:
    monkeypatch.setattr(sampledrec.log.segments, "SEGMENT_BYTES", SEGMENT_BYTES)
    deployment = Deployment(open_log_storage(request.param, tmp_path)())
    fill(deployment)
    return deployment


# -- damage, refusal, repair, and the store working again ----------------------------------------


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_log_is_repaired_and_the_gap_reported(dep: Deployment, how: str) -> None:
    damaged = damage(dep, how)
    storage = damaged.storage
    if how == "flip-earlier-segment":
        # Opening re-reads only the last segment (the others' trailers): damage earlier on is
        # found by verification (and the audit), not by opening. The writer went on.
        dep.open().close()
        damaged = rescan(damaged)
    else:
        with pytest.raises(LogCorrupt, match="sampledrec log repair"):
            dep.open()
    assert not verify(dep).ok

    report = repair(dep)

    # The damaged part is kept outside the log, byte for byte.
    assert [(p.name, p.offset) for p in report.pieces] == [(n, o) for n, o, _ in damaged.pieces]
    aside = storage.set_aside_tails()
    for piece, (_, _, data) in zip(report.pieces, damaged.pieces, strict=True):
        assert piece.kept_at is not None
        assert aside[piece.kept_at] == data
        assert piece.sha256 == hashlib.sha256(data).hexdigest()
        assert piece.size == len(data)
    assert report.set_aside_sha256 == damaged.sha256
    assert report.index == damaged.kept
    assert report.lost_to == damaged.lost_to
    assert report.checkpoints_set_aside == damaged.checkpoints_set_aside
    assert not report.resumed
    assert storage.pending_repair() is None
    # What the log kept is what it held before the damage point, unchanged.
    kept = list(iter_entries(storage, dep.keyring))
    assert [e.raw for e in kept[: damaged.kept]] == [e.raw for e in damaged.before[: damaged.kept]]
    gap = kept[damaged.kept]
    assert gap.type == T_LOG_GAP
    assert gap.fields["lost_from"] == damaged.kept
    assert gap.fields["lost_to"] == damaged.lost_to
    assert gap.fields["set_aside_sha256"].hex() == damaged.sha256
    assert gap.fields["principal"] == "ops-admin"
    assert gap.fields["reason"] == "disk error on the log volume (ticket 4711)"
    assert json.loads(gap.fields["set_aside"]) == [p.to_json() for p in report.pieces]
    assert report.checkpoint.size == len(kept)

    # The store decides again.
    with dep.open() as log:
        assert not log.recovery
        sampler = dep.sampler(log)
        for i in range(3):
            sampler.decide(f"after-{i}")
    after = list(iter_entries(storage, dep.keyring))
    assert decision_refs(after) == decision_refs(damaged.before[: damaged.kept]) + [
        f"after-{i}" for i in range(3)
    ]

    # Verification accepts the repaired log but reports the gap: a FAIL, with its evidence.
    result = verify(dep)
    assert failed_checks(result) == {"gaps"}, result.findings
    gaps = [f for f in result.findings if f.index == damaged.kept]
    assert len(gaps) == 1
    evidence = gaps[0].evidence
    assert evidence is not None
    assert evidence["lost_from"] == damaged.kept
    assert evidence["lost_to"] == damaged.lost_to
    assert evidence["entries_lost"] == damaged.lost_to - damaged.kept
    assert evidence["set_aside_sha256"] == damaged.sha256
    assert evidence["checkpoints_set_aside"] == damaged.checkpoints_set_aside
    assert [p["kept_at"] for p in evidence["set_aside"]] == [p.kept_at for p in report.pieces]
    assert result.gaps == [evidence]
    assert result.to_json()["checks"]["gaps"] == "FAIL"
    if damaged.lost_to > damaged.kept:
        assert f"entries {damaged.kept}..{damaged.lost_to - 1}" in gaps[0].message
    else:
        assert "no entry was lost" in gaps[0].message


def rescan(damaged: Damaged) -> Damaged:
    """The same damage, after a writer appended to the log (a batch, a checkpoint): what the
    repair must set aside grew. (A flipped entry byte leaves the framing parseable.)"""
    storage = damaged.storage
    segs = layout(storage)
    seg, batch = next((s, b) for s in segs for b in segs[s] if b.first == damaged.kept)
    pieces, n = expected_pieces(storage, seg, batch.start, damaged.kept)
    size = max(b.first + b.count for batches in segs.values() for b in batches)
    return Damaged(damaged.dep, damaged.before, damaged.kept, pieces, size, n)


def test_a_log_cut_at_a_batch_boundary_below_its_checkpoint(dep: Deployment) -> None:
    storage = dep.storage
    size = len(list(iter_entries(storage)))
    last = storage.segments()[-1]
    batch = layout(storage)[last][-1]
    with storage.lock():
        storage.truncate_segment(last, batch.start)  # what is cut is gone: only checkpoints
    with pytest.raises(LogCorrupt, match=r"truncated; .*sampledrec log repair"):
        dep.open()
    pieces, n = expected_pieces(storage, last, batch.start, batch.first)
    assert [name for name, _, _ in pieces] == ["checkpoints"]

    report = repair(dep)
    assert report.index == batch.first
    assert report.lost_to == size  # as far as the checkpoints set aside show
    assert report.checkpoints_set_aside == n
    assert [(p.name, p.offset) for p in report.pieces] == [(nm, o) for nm, o, _ in pieces]
    assert storage.set_aside_tails()[report.pieces[0].kept_at or ""] == pieces[0][2]
    assert "signed checkpoints cover" in report.damage
    assert failed_checks(verify(dep)) == {"gaps"}


def test_a_signed_fork_is_cut_back_to_the_last_checkpoint_both_share(
    dep: Deployment, tmp_path: Path
) -> None:
    # Two copies of one log, each grown in its own way with checkpoints signed by the same key:
    # each verifies on its own. With the other's checkpoints, the trailers all verify but a
    # signed checkpoint does not hold the log's root: the log is kept up to the last checkpoint
    # both agree on.
    storage = dep.storage
    if isinstance(storage, LocalLogStorage):
        (tmp_path / "fork").mkdir()
        forked: LogStorage = LocalLogStorage(tmp_path / "fork" / "log")
    else:
        forked = MemoryLogStorage()
    fork = Deployment(clone(storage, forked))
    fork.keyring, fork.clock = dep.keyring, dep.clock
    shared = len(list(iter_entries(storage)))
    for d, tag in ((dep, "ours"), (fork, "theirs")):
        with d.open() as log:
            sampler = d.sampler(log)
            for b in range(3):
                sampler.decide(f"{tag}-{b}")
                log.flush()
                log.checkpoint()
    assert verify(dep).ok and verify(fork).ok
    ours, theirs = storage.read_checkpoints(), forked.read_checkpoints()
    common = 0
    while common < min(len(ours), len(theirs)) and ours[common] == theirs[common]:
        common += 1
    with storage.lock():
        storage.truncate_checkpoints(0)
        storage.write_checkpoints(0, theirs)
    records = split_checkpoints(theirs)
    agreed = [note for at, note in records if at + 4 + len(note) <= common]
    fork_point = note_size(agreed[-1])
    assert fork_point >= shared

    report = repair(dep)
    assert report.index == fork_point
    assert "is not the one this signed checkpoint holds" in report.damage
    cps = report.pieces[-1]
    assert cps.name == "checkpoints"
    assert cps.offset == records[len(agreed)][0]
    kept = list(iter_entries(storage, dep.keyring))
    assert [e.fields.get("call_ref") for e in kept if e.type == T_DECISION][-1] != "ours-2"
    assert failed_checks(verify(dep)) == {"gaps"}


def test_repairing_a_healthy_log_is_refused_and_changes_nothing(dep: Deployment) -> None:
    before = state(dep.storage)
    with pytest.raises(LogRepairRefused, match="nothing to repair"):
        repair(dep)
    assert state(dep.storage) == before
    assert verify(dep).ok


def test_a_torn_tail_is_left_to_opening(dep: Deployment) -> None:
    storage = dep.storage
    last = storage.segments()[-1]
    end = len(storage.read_segment(last))
    torn = BATCH_HEADER.pack(b"BTCH", 10_000, 3, 500) + b"half a record"
    with storage.lock():
        storage.write_segment(last, end, torn)
    before = state(storage)
    with pytest.raises(LogRepairRefused, match="opening the log sets aside by itself"):
        repair(dep)
    assert state(storage) == before
    with dep.open() as log:
        assert log.recovery.dropped_bytes == len(torn)
    assert verify(dep).ok


def test_a_damaged_first_batch_leaves_nothing_to_keep(dep: Deployment) -> None:
    first = layout(dep.storage)[0][0]
    flip_at(dep.storage, 0, first.records[0][0] + 12)
    before = state(dep.storage)
    with pytest.raises(LogRepairRefused, match="first batch"):
        repair(dep)
    assert state(dep.storage) == before


def test_a_repair_needs_a_reason_and_a_principal(dep: Deployment) -> None:
    damage(dep, "truncate")
    before = state(dep.storage)
    with pytest.raises(InvalidArgument, match="reason"):
        repair(dep, reason="  ")
    with pytest.raises(InvalidArgument, match="who"):
        repair(dep, principal="")
    assert state(dep.storage) == before


def test_a_log_of_another_key_is_not_repaired(dep: Deployment) -> None:
    damage(dep, "truncate")
    before = state(dep.storage)
    other = Deployment(dep.storage)
    other.keyring = type(dep.keyring)(seed=b"another store's keyring")
    with pytest.raises(LogRepairRefused, match="not damage but another log"):
        repair(other)
    assert state(dep.storage) == before


def test_a_repaired_log_can_be_damaged_and_repaired_again(dep: Deployment) -> None:
    first = damage(dep, "truncate")
    one = repair(dep)
    with dep.open() as log:
        sampler = dep.sampler(log)
        for b in range(8):
            sampler.decide(f"second-{b}")
            log.flush()
            log.checkpoint()
    second = damage(dep, "flip-last-segment")
    assert second.kept > one.index
    two = repair(dep)
    assert two.index == second.kept
    result = verify(dep)
    assert failed_checks(result) == {"gaps"}
    assert [g["lost_from"] for g in result.gaps] == [first.kept, second.kept]


# -- a crash during the repair ---------------------------------------------------------------


class Crash(Exception):
    """The process died here."""


MUTATING = frozenset(
    {
        "create",
        "create_segment",
        "write_segment",
        "truncate_segment",
        "write_checkpoints",
        "truncate_checkpoints",
        "set_aside",
        "set_aside_segment",
        "set_pending_repair",
    }
)


class Faulty:
    """A log storage that dies at its ``crash_at``-th change (counting from 0): the change is
    not made, except a write, which is torn (half of it is written)."""

    def __init__(self, inner: LogStorage, crash_at: int | None = None) -> None:
        self.inner = inner
        self.crash_at = crash_at
        self.changes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in MUTATING:
            return attr

        def change(*args: Any) -> Any:
            if len(self.changes) == self.crash_at:
                if name in ("write_segment", "write_checkpoints"):
                    *where, data = args
                    attr(*where, data[: len(data) // 2])
                raise Crash(name)
            self.changes.append(name)
            return attr(*args)

        return change


def clone(storage: LogStorage, new: LogStorage) -> LogStorage:
    """A copy of ``storage``'s log in ``new`` (through the protocol only)."""
    new.create()
    with new.lock():
        for first in storage.segments():
            new.create_segment(first, storage.read_segment(first))
        new.write_checkpoints(0, storage.read_checkpoints())
    return new


@pytest.mark.parametrize("how", ["delete-segment", "flip-last-segment", "checkpoints"])
def test_a_crash_at_any_step_of_a_repair_leaves_it_to_finish(
    dep: Deployment, how: str, tmp_path: Path
) -> None:
    damaged = damage(dep, how)
    local = isinstance(dep.storage, LocalLogStorage)

    def copy(k: int) -> Deployment:
        if local:
            (tmp_path / f"crash-{k}").mkdir()
            new: LogStorage = LocalLogStorage(tmp_path / f"crash-{k}" / "log")
        else:
            new = MemoryLogStorage()
        other = Deployment(clone(dep.storage, new))
        other.keyring, other.clock = dep.keyring, dep.clock
        return other

    counting = Faulty(copy(-1).storage)
    reference = DecisionLog.repair(
        counting,
        dep.keyring,
        origin=ORIGIN,
        store_id=STORE_ID,
        principal="ops-admin",
        reason="disk error",
        clock=dep.clock,
    )
    steps = counting.changes
    assert steps[-1] == "set_pending_repair" and len(steps) >= 6, steps

    for crash_at in range(len(steps)):
        attempt = copy(crash_at)
        faulty = Faulty(attempt.storage, crash_at)
        with pytest.raises(Crash):
            DecisionLog.repair(
                faulty,
                dep.keyring,
                origin=ORIGIN,
                store_id=STORE_ID,
                principal="ops-admin",
                reason="disk error",
                clock=dep.clock,
            )
        storage = attempt.storage
        where = f"crash at change {crash_at} ({steps[crash_at]})"
        # Still needs the repair: it refuses to open, and verification does not pass ...
        with pytest.raises(LogCorrupt, match="sampledrec log repair"):
            attempt.open()
        assert not verify(attempt).ok, where
        # ... and no byte of the damaged part is lost: in the log, or set aside.
        aside = {hashlib.sha256(d).digest() for d in storage.set_aside_tails().values()}
        for name, offset, data in damaged.pieces:
            if hashlib.sha256(data).digest() in aside:
                continue
            if name == "checkpoints":
                assert storage.read_checkpoints(offset) == data, where
            else:
                first = int(name[4:16])
                assert storage.read_segment(first, offset) == data, where

        # Repairing again finishes it, to the same result.
        planned = "set_pending_repair" in steps[:crash_at]  # the plan was stored
        report = repair(attempt, reason="disk error")
        assert report.resumed == planned, where
        assert report.index == reference.index
        assert report.set_aside_sha256 == reference.set_aside_sha256 == damaged.sha256
        assert [(p.name, p.offset, p.sha256) for p in report.pieces] == [
            (p.name, p.offset, p.sha256) for p in reference.pieces
        ]
        held = storage.set_aside_tails()
        for piece, (_, _, data) in zip(report.pieces, damaged.pieces, strict=True):
            assert piece.kept_at is not None
            assert held[piece.kept_at] == data, where
        assert storage.pending_repair() is None
        result = verify(attempt)
        assert failed_checks(result) == {"gaps"}, (where, result.findings)
        assert len(result.gaps) == 1, where
        with attempt.open() as log:
            attempt.sampler(log).decide(f"after crash {crash_at}")
        assert failed_checks(verify(attempt)) == {"gaps"}, where


# -- checkpoints exported before the repair -------------------------------------------------------


def flip_entry(store: Path, index: int) -> Batch:
    """Flip a byte of entry ``index`` of a store's (one-segment) log; returns its batch."""
    seg = store / "log" / "seg-000000000000.log"
    data = bytearray(seg.read_bytes())
    batch = next(b for b in parse_segment(bytes(data)) if b.first <= index < b.first + b.count)
    offset, _ = batch.records[index - batch.first]
    data[offset + 12] ^= 0x01
    seg.write_bytes(bytes(data))
    return batch


def store_verify(path: Path, **kw: Any) -> LogReport:
    store = Store.open(path)
    return verify_log(path, store_id=store.store_id, public_key=store.public_key, **kw)


def test_a_checkpoint_exported_before_the_repair_no_longer_verifies(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = make_store(path, [f"call-{i}" for i in range(5)])
    before = export(path, tmp_path / "before.json")
    with store.open_log() as log:
        sampler = store.sampler(clock=FixedClock("2030-01-01T10:00:00Z"), log=log)
        for i in range(5):
            sampler.decide(f"later-{i}")
    assert store_verify(path, checkpoint_file=before).ok
    decision = next(e.index for e in iter_entries(path / "log") if e.type == T_DECISION)
    batch = flip_entry(path, decision)
    with pytest.raises(LogCorrupt, match="sampledrec log repair"):
        store.open_log()

    report = store.repair_log("a bad sector in the log", principal="dpo-liaison")
    assert report.index == batch.first

    result = store_verify(path, checkpoint_file=before)
    assert failed_checks(result) == {"gaps", "exported"}
    (exported,) = [f for f in result.findings if f.check == "exported"]
    assert "repaired after this checkpoint was exported" in exported.message
    assert exported.index == report.index  # the gap entry
    # A checkpoint exported after the repair holds: only the gap remains.
    after = export(path, tmp_path / "after.json")
    assert failed_checks(store_verify(path, checkpoint_file=after)) == {"gaps"}


# -- what the log lost is logged again, so that later decisions can be checked --------------------


def test_lost_key_commitments_and_policies_are_logged_again(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = make_store(path, ["call-A", "call-B", "call-C"])
    entries = list(iter_entries(path / "log"))
    policy = next(e.index for e in entries if e.type == T_POLICY)
    commits = [e for e in entries if e.type == T_KEY_COMMIT]
    assert policy < commits[0].index
    shutil.copytree(path, tmp_path / "bare")
    batch = flip_entry(path, policy)
    flip_entry(tmp_path / "bare", policy)
    assert batch.first <= policy

    report = store.repair_log("the log volume was restored from a damaged snapshot")
    assert report.restored == 1 + len(store.keyring.epoch_ids())
    with store.open_log() as log:
        store.sampler(clock=FixedClock("2030-01-01T11:00:00Z"), log=log).decide("after")
    result = store_verify(path)
    assert failed_checks(result) == {"gaps"}, result.findings
    relogged = [e for e in iter_entries(path / "log") if e.index > report.index][: report.restored]
    assert [e.type for e in relogged] == [T_POLICY] + [T_KEY_COMMIT] * (report.restored - 1)
    assert {(e.fields["epoch_id"], e.fields["commitment"]) for e in relogged[1:]} >= {
        (e.fields["epoch_id"], e.fields["commitment"]) for e in commits
    }

    # Without them, the decisions after the repair would name a key and a policy the log
    # does not hold any more.
    bare = Store.open(tmp_path / "bare")
    DecisionLog.repair(
        bare.log_storage,
        bare.keyring,
        origin=bare.origin,
        store_id=bare.store_id,
        principal="ops",
        reason="no restore",
    )
    with bare.open_log() as log:
        bare.sampler(clock=FixedClock("2030-01-01T11:00:00Z"), log=log).decide("after")
    assert {"keys", "policies"} <= failed_checks(store_verify(tmp_path / "bare"))


# -- the CLI and the audit ---------------------------------------------------------------------


def test_the_cli_names_the_repair_and_repairs(tmp_path: Path, cli: CliRun) -> None:
    store = tmp_path / "store"
    assert cli("init", store)[0] == 0
    for i in range(4):
        assert cli("decide", "--store", store, "--call-ref", f"c{i}")[0] == 0
    seg = store / "log" / "seg-000000000000.log"
    last = parse_segment(seg.read_bytes())[-1]
    with open(seg, "r+b") as fh:
        fh.truncate(last.start + 25)  # inside a batch a checkpoint covers
    tail = seg.read_bytes()[last.start :]

    code, out = cli("decide", "--store", store, "--call-ref", "c9", "--json")
    assert code == 1
    assert "sampledrec log repair" in json.loads(out)["error"]
    assert cli("log", "repair", "--store", store)[0] == 2  # --reason is required

    code, out = cli("log", "repair", "--store", store, "--reason", "disk full", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["repaired"] and doc["gap_entry"] == last.first == doc["lost_from"]
    assert doc["set_aside"][0]["name"] == "seg-000000000000.log"
    assert Path(doc["set_aside"][0]["kept_at"]).read_bytes() == tail

    code, out = cli("log", "repair", "--store", store, "--reason", "again")
    assert code == 1 and out == ""
    assert cli("decide", "--store", store, "--call-ref", "c9")[0] == 0

    code, out = cli("log", "verify", "--store", store, "--json")
    assert code == 1
    verdict = json.loads(out)
    assert verdict["checks"]["gaps"] == "FAIL"
    assert [c for c, v in verdict["checks"].items() if v == "FAIL"] == ["gaps"]
    assert verdict["gaps"][0]["lost_from"] == last.first
    code, text = cli("log", "verify", "--store", store)
    assert "FAIL gaps: the log was repaired at entry" in text


def test_the_cli_repair_reports_in_text(tmp_path: Path, cli: CliRun) -> None:
    store = tmp_path / "store"
    assert cli("init", store)[0] == 0
    assert cli("decide", "--store", store, "--call-ref", "c0")[0] == 0
    seg = store / "log" / "seg-000000000000.log"
    last = parse_segment(seg.read_bytes())[-1]
    with open(seg, "r+b") as fh:
        fh.truncate(last.start + 25)
    code, text = cli("log", "repair", "--store", store, "--reason", "disk full")
    assert code == 0
    assert "Repaired the log" in text and "tell the DPO" in text
    assert f"the log was cut back to {last.first} entries" in text


def test_the_audit_reports_the_gap_with_its_evidence(tmp_path: Path) -> None:
    day = "2030-03-04T10:00:00Z"
    store = Store.init(tmp_path / "store", simulated=True)
    clock = FixedClock(day)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(10):
            sampler.decide(f"call-{i:03d}")
            log.flush()
    batch = parse_segment((tmp_path / "store" / "log" / "seg-000000000000.log").read_bytes())[-3]
    flip_entry(tmp_path / "store", batch.first)
    report = store.repair_log("audit test", clock=clock)
    keys = store.reveal_keys(now=datetime(2030, 3, 5, 0, 0, 1, tzinfo=UTC))
    store.write_revealed(keys, tmp_path / "revealed.json")

    audit = audit_verify(
        tmp_path / "store", tmp_path / "revealed.json", now=datetime(2030, 3, 5, 12, tzinfo=UTC)
    )
    assert audit.status("log") == "FAIL"
    (gap,) = [f for f in audit.findings if f.check == "log" and f.message.startswith("gaps:")]
    assert gap.index == report.index
    assert gap.evidence["lost_from"] == report.index
    assert gap.evidence["set_aside_sha256"] == report.set_aside_sha256
    assert "AUDIT FAILED" in audit.to_text()
    doc = audit.to_json()
    assert doc["checks"]["log"] == "FAIL"
    assert main(["log", "verify", "--store", str(tmp_path / "store")], out=io.StringIO()) == 1


def test_an_interrupted_repair_is_reported_by_verification(tmp_path: Path) -> None:
    storage = MemoryLogStorage()
    dep = Deployment(storage)
    fill(dep, batches=3)
    with storage.lock():
        storage.set_pending_repair(b"{}")
    result = verify(dep)
    assert failed_checks(result) == {"gaps"}
    assert "repair of the log is under way or was interrupted" in result.findings[0].message
    with pytest.raises(LogCorrupt, match="interrupted"):
        dep.open()
    with pytest.raises(LogCorrupt, match="cannot be read"):
        repair(dep)


def test_the_gap_entry_round_trips_through_the_format() -> None:
    from sampledrec.log.format import FIELDS, TYPE_NAMES, decode_entry, header, split_personal

    assert TYPE_NAMES[T_LOG_GAP] == "log_gap"
    public, personal = split_personal(
        T_LOG_GAP,
        {"lost_from": 7, "lost_to": 9, "set_aside_sha256": bytes(32), "principal": "me"},
    )
    assert personal == b"\x20\x02me"  # who repaired is a personal field (sealed)
    entry = decode_entry(7, header(T_LOG_GAP, 0) + public)
    assert entry.type_name == "log_gap"
    assert entry.fields == {"lost_from": 7, "lost_to": 9, "set_aside_sha256": bytes(32)}
    assert sorted(FIELDS[T_LOG_GAP]) == [*range(1, 10), 0x20]
