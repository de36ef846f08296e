"""Crash recovery of recordings (``Vault.recover``): journaled, idempotent, every chunk verified.

Each test starts from a store in which a crash left one recording ``open``, in one of four
ways (:data:`SCENARIOS`), then crashes recovery itself at one of its named steps
(``sampledrec.vault.recorder._RECOVERY_STEPS``, through the ``_fault`` hook), runs recovery
again on a fresh vault, and checks the end state: the row agrees with the blob's real SHA-256,
the log has exactly one entry for the recording, the audio read back is the verified prefix, and
the auditor's ``audit_verify`` passes. The crash is an exception here (what the process had
queued for the log may still become durable), and a real ``os._exit`` in a child process in
``test_a_killed_recovery_is_finished_by_the_next_run`` (it may not).

The stores are built once per scenario and copied for each test; the memory backends are
loaded from the copy, so that every test runs on both the SQLite catalog and local blobs and
on :class:`~sampledrec.testing.MemoryCatalog` and :class:`~sampledrec.testing.MemoryBlobStore`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Store
from sampledrec.audit.verify import audit_verify
from sampledrec.cli import main
from sampledrec.log.format import T_ACCESS, T_RECORDING_ABORTED, T_RECORDING_SEALED
from sampledrec.log.verify import verify_log
from sampledrec.log.writer import iter_entries
from sampledrec.testing import MemoryBlobStore, MemoryCatalog
from sampledrec.vault import recorder
from sampledrec.vault.audio import frames, synthetic_speech
from sampledrec.vault.catalog import RecordingRow, SqliteCatalog
from sampledrec.vault.container import read_header
from sampledrec.vault.recorder import Vault

from .recording import PCM, RECORD_REGULATED, new_store

AT = "2030-03-04T10:00:00Z"
REVEAL_AT = datetime(2030, 3, 5, 0, 0, 1, tzinfo=UTC)  # the day's epoch has ended
AUDIT_AT = datetime(2030, 3, 5, 12, tzinfo=UTC)  # before any recording expires
CHUNK = 1024
AUDIO = synthetic_speech(0.5, seed=4)  # 8000 bytes: 7 full chunks and 832 bytes
SEGMENT = CHUNK + 16

STEPS = recorder._RECOVERY_STEPS
WHOLE = ("journaled", "log appended", "log durable", "catalog updated")
REPLACED = ("journaled", "blob replaced", "log appended", "log durable", "catalog updated")
DELETED = ("journaled", "blob deleted", "log appended", "log durable", "catalog updated")


@dataclass(frozen=True)
class Scenario:
    """How a crash left a recording open, and what recovery must make of it."""

    outcome: str  # what recover() reports
    status: str  # the row's status afterwards
    steps: tuple[str, ...]  # the steps of recovery it goes through, in order


SCENARIOS = {
    # Killed mid-call: chunks sealed non-final, no final chunk. Its verified prefix is kept.
    "cut": Scenario("truncated", "truncated", REPLACED),
    # Killed after the file was sealed, before the catalog and the log said so: kept whole.
    "whole": Scenario("sealed", "sealed", WHOLE),
    # As "whole", and chunk 2 damaged since: the final chunk verifies, chunk 2 does not. Only
    # chunks 0 and 1 are kept, re-sealed, and the recording is marked truncated.
    "damaged": Scenario("truncated", "truncated", REPLACED),
    # Killed before a whole chunk was written: nothing to keep, the recording is destroyed.
    "empty": Scenario("destroyed", "aborted", DELETED),
}
DAMAGED_CHUNK = 2


class Crash(BaseException):
    """The process dies here (a BaseException, so that no ``except Exception`` stops it)."""


def crash_at(step: str) -> Callable[[str], None]:
    def fault(reached: str) -> None:
        if reached == step:
            raise Crash(step)

    return fault


# -- building the stores -------------------------------------------------------------------


def leave_open(store: Store, how: str) -> tuple[str, bytes]:
    """Record one call in ``store`` and crash as ``how`` says; returns the recording's id and
    the audio that recovery must keep of it."""
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        decision = store.sampler(clock=clock, log=log).decide("call-1", {"queue": "regulated"})
        assert decision.record and decision.log_ticket is not None
        log.wait_durable(decision.log_ticket)  # so that audio reaches the blob as it comes
        rec = vault.record(decision, audio_format=PCM, chunk_size=CHUNK)
        log.flush()  # and the recording's opened entry
        rid = rec.recording_id
        if how == "empty":
            rec.write(AUDIO[:640])  # less than a chunk: nothing but an empty blob
            return rid, b""
        for frame in frames(AUDIO, PCM, 20):
            rec.write(frame)
        if how == "cut":
            # The recorder is dropped: the process died. Chunks 0 to 6 reached the blob (each
            # once the next byte came); the last 832 bytes were still in memory.
            return rid, AUDIO[: 7 * CHUNK]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Vault, "_sealed", _die)
            with pytest.raises(Crash):
                rec.close()  # the file is sealed, then the process dies
        if how == "whole":
            return rid, AUDIO
        row = vault.catalog.get(rid)
        assert row is not None
        blob = bytearray(read_blob(vault, row))
        blob[read_header(bytes(blob)).header_len + DAMAGED_CHUNK * SEGMENT + 10] ^= 0x01
        vault.blobs.put(row.file, bytes(blob))
        return rid, AUDIO[: DAMAGED_CHUNK * CHUNK]


def _die(*args: object, **kwargs: object) -> None:
    raise Crash("after the file was sealed")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, bytes]]:
    """For each scenario, a simulated store left by that crash, with its revealed keys."""
    out = {}
    for how in SCENARIOS:
        base = tmp_path_factory.mktemp(f"left-{how}")
        store = new_store(base, RECORD_REGULATED, simulated=True)
        rid, keep = leave_open(store, how)
        store.write_revealed(store.reveal_keys(now=REVEAL_AT), base / "revealed.json")
        out[how] = (base, rid, keep)
    return out


@dataclass
class Case:
    """One test's copy of a store left by a crash, with the backends its vaults use."""

    store: Store
    revealed: Path
    rid: str
    keep: bytes
    scenario: Scenario
    backend: str
    catalog: MemoryCatalog | None = None
    blobs: MemoryBlobStore | None = None

    @contextlib.contextmanager
    def vault(self) -> Iterator[Vault]:
        """A fresh vault on the store (a new process, as far as the store can tell)."""
        clock = FixedClock(AT)
        with self.store.open_log(clock=clock) as log:
            vault = Vault(self.store, log, clock=clock, catalog=self.catalog, blobs=self.blobs)
            yield vault
            if self.catalog is None:
                vault.close()  # (a memory catalog is the one the next vault uses)

    def recover_crashing_at(self, step: str, monkeypatch: pytest.MonkeyPatch) -> bool:
        """Run recovery, dying at ``step``; whether it got there (and died)."""
        monkeypatch.setattr(recorder, "_fault", crash_at(step))
        try:
            with self.vault() as vault:
                vault.recover()
        except Crash:
            return True
        finally:
            monkeypatch.setattr(recorder, "_fault", None)
        return False


@pytest.fixture(params=["sqlite+local", "memory"])
def backend(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


def case_of(
    built: dict[str, tuple[Path, str, bytes]], how: str, backend: str, tmp_path: Path
) -> Case:
    base, rid, keep = built[how]
    shutil.copytree(base / "s", tmp_path / "s")
    store = Store.open(tmp_path / "s")
    case = Case(store, base / "revealed.json", rid, keep, SCENARIOS[how], backend)
    if backend == "memory":
        case.catalog, case.blobs = MemoryCatalog(), MemoryBlobStore()
        on_disk = SqliteCatalog(store.path / "catalog.sqlite")
        for row in on_disk.find():
            case.catalog.add(row)
        on_disk.close()
        for name in store.blobs.list():
            with store.blobs.open(name) as fh:
                case.blobs.put(name, fh.read())
            store.blobs.delete(name)  # so that nothing can pass by reading the local copy
    return case


# -- checking the end state ----------------------------------------------------------------


def read_blob(vault: Vault, row: RecordingRow) -> bytes:
    with vault.blobs.open(row.file) as fh:
        return fh.read()


def entries_for(store: Store, rid: str, etype: int) -> list[Any]:
    return [
        e
        for e in iter_entries(store.log_storage)
        if e.type == etype and e.fields.get("recording_id") == rid
    ]


def assert_recovered(case: Case) -> None:
    """The end state of a recovery, however many crashes it took."""
    expected = case.scenario
    with case.vault() as vault:
        row = vault.catalog.get(case.rid)
        assert row is not None
        assert row.status == expected.status
        assert (row.recovery, row.recovery_sha256, row.recovery_log_size) == (None, None, None)
        sealed = entries_for(case.store, case.rid, T_RECORDING_SEALED)
        aborted = entries_for(case.store, case.rid, T_RECORDING_ABORTED)
        if expected.outcome == "destroyed":
            assert not vault.blobs.exists(row.file)
            assert row.wrapped_key is None
            assert (len(sealed), len(aborted)) == (0, 1)
        else:
            blob = read_blob(vault, row)
            digest = hashlib.sha256(blob)
            truncated = expected.outcome == "truncated"
            assert row.ciphertext_sha256 == digest.hexdigest()
            assert row.ciphertext_bytes == len(blob)
            assert row.truncated is truncated
            assert row.plaintext_bytes == len(case.keep)
            assert row.duration_ms == len(case.keep) // 16
            assert (len(sealed), len(aborted)) == (1, 0)  # exactly one, whatever the crashes
            fields = sealed[0].fields
            assert fields["ciphertext_sha256"] == digest.digest()
            assert fields["truncated"] is truncated
            assert fields["plaintext_bytes"] == len(case.keep)
            assert vault.open(case.rid).audio == case.keep  # the verified prefix, every byte
        assert vault.recover() == []  # nothing left to do, nothing done twice
    assert entries_for(case.store, case.rid, T_RECORDING_SEALED) == sealed
    assert verify_log(case.store.path, public_key=case.store.public_key).ok
    if case.backend == "sqlite+local":  # the auditor reads the store's own backends
        report = audit_verify(case.store.path, case.revealed, now=AUDIT_AT)
        assert report.ok, report.to_text()


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", list(SCENARIOS))
def test_recovery_goes_through_its_named_steps(
    built: dict[str, tuple[Path, str, bytes]],
    how: str,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = case_of(built, how, backend, tmp_path)
    reached: list[str] = []
    monkeypatch.setattr(recorder, "_fault", reached.append)
    with case.vault() as vault:
        assert vault.recover() == [(case.rid, case.scenario.outcome)]
    assert reached == list(case.scenario.steps)
    assert_recovered(case)


def test_every_named_step_is_reached_by_some_recovery() -> None:
    assert {s for scenario in SCENARIOS.values() for s in scenario.steps} == set(STEPS)
    assert len(set(STEPS)) == len(STEPS)


CRASHES = [(how, step) for how, scenario in SCENARIOS.items() for step in scenario.steps]


@pytest.mark.parametrize(("how", "step"), CRASHES, ids=[f"{h}-{s}" for h, s in CRASHES])
def test_a_crash_at_every_step_is_finished_by_the_next_run(
    built: dict[str, tuple[Path, str, bytes]],
    how: str,
    step: str,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = case_of(built, how, backend, tmp_path)
    assert case.recover_crashing_at(step, monkeypatch)
    with case.vault() as vault:
        row = vault.catalog.get(case.rid)
        assert row is not None
        if step != "catalog updated":
            assert row.status == "open"  # never sealed nor truncated before the job is done
            assert row.recovery == case.scenario.outcome
        outcomes = vault.recover()
    if step == "catalog updated":
        assert outcomes == []  # the crash came after the last step: nothing left to do
    else:
        assert outcomes == [(case.rid, case.scenario.outcome)]
    assert_recovered(case)


@pytest.mark.parametrize("how", ["cut", "damaged"])
def test_crashes_at_every_step_in_turn(
    built: dict[str, tuple[Path, str, bytes]],
    how: str,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each run dies one step further on, if it gets there. The run that dies at "log
    # appended" leaves its entry queued, and the dying process's log makes it durable as it
    # closes: the next run finds it logged, does not log it again (no "log durable"), and
    # finishes the job; the last run finds nothing to do.
    case = case_of(built, how, backend, tmp_path)
    died = [case.recover_crashing_at(step, monkeypatch) for step in case.scenario.steps]
    assert died == [True, True, True, False, False]
    assert_recovered(case)


def test_a_crash_before_the_blob_is_replaced_starts_over(
    built: dict[str, tuple[Path, str, bytes]],
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The journal names a re-sealed prefix that never reached the store (fresh salt each
    # time): the next run re-seals it again, and logs and catalogs the container it stored.
    case = case_of(built, "cut", backend, tmp_path)
    assert case.recover_crashing_at("journaled", monkeypatch)
    with case.vault() as vault:
        row = vault.catalog.get(case.rid)
        assert row is not None and row.recovery_sha256 is not None
        first = row.recovery_sha256
        assert hashlib.sha256(read_blob(vault, row)).hexdigest() != first  # still the cut one
        assert vault.recover() == [(case.rid, "truncated")]
        done = vault.catalog.get(case.rid)
        assert done is not None and done.ciphertext_sha256 != first
    assert_recovered(case)


class FailingCatalog(MemoryCatalog):
    """A memory catalog whose first update that seals or aborts a row fails (the process
    dies there); through the backends only, with no fault hook."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def update(self, recording_id: str, **changes: Any) -> None:
        if self.armed and changes.get("status") in ("sealed", "truncated", "aborted"):
            self.armed = False
            raise Crash("before the catalog update")
        super().update(recording_id, **changes)


def test_a_crash_between_the_blob_swap_and_the_catalog_update(
    built: dict[str, tuple[Path, str, bytes]], tmp_path: Path
) -> None:
    # Issue #12: the re-sealed prefix is a whole container. Once it has replaced the cut blob,
    # a run that looks only at the blob would call it sealed and complete.
    case = case_of(built, "cut", "memory", tmp_path)
    assert case.catalog is not None
    failing = FailingCatalog()
    for left in case.catalog.find():
        failing.add(left)
    case.catalog = failing
    with pytest.raises(Crash), case.vault() as vault:
        vault.recover()
    with case.vault() as vault:
        row = vault.catalog.get(case.rid)
        assert row is not None and row.status == "open"
        assert vault.recover() == [(case.rid, "truncated")]
    assert_recovered(case)


def test_an_earlier_damaged_chunk_is_never_sealed(
    built: dict[str, tuple[Path, str, bytes]], backend: str, tmp_path: Path
) -> None:
    case = case_of(built, "damaged", backend, tmp_path)
    with case.vault() as vault:
        assert vault.recover() == [(case.rid, "truncated")]
        row = vault.catalog.get(case.rid)
        assert row is not None and row.truncated and row.status == "truncated"
        assert vault.open(case.rid).audio == AUDIO[: DAMAGED_CHUNK * CHUNK]
    assert_recovered(case)


def test_a_blob_changed_after_its_recovery_was_logged_is_left_alone(
    built: dict[str, tuple[Path, str, bytes]],
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not something a crash does: the log names one container, the store holds another. The
    # recording stays open with its journal, nothing is logged again, and a person decides.
    case = case_of(built, "cut", backend, tmp_path)
    assert case.recover_crashing_at("log durable", monkeypatch)
    with case.vault() as vault:
        row = vault.catalog.get(case.rid)
        assert row is not None
        blob = bytearray(read_blob(vault, row))
        blob[-1] ^= 1
        vault.blobs.put(row.file, bytes(blob))
        assert vault.recover() == [(case.rid, "damaged")]
        after = vault.catalog.get(case.rid)
        assert after == row
    assert len(entries_for(case.store, case.rid, T_RECORDING_SEALED)) == 1
    if backend == "sqlite+local":  # the CLI works on the store's own backends
        out = io.StringIO()
        code = main(["recordings", "recover", "--store", str(case.store.path), "--json"], out=out)
        assert code == 1 and json.loads(out.getvalue())["damaged"] == [case.rid]


def test_a_journaled_recording_whose_key_is_gone_is_destroyed(
    built: dict[str, tuple[Path, str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Recovery died after logging the re-sealed prefix; before it ran again, the recording
    # expired and a sweep destroyed its bucket's key (an open recording is never expired by a
    # sweep, so recovery has to close it). Nothing can be read, nothing is logged twice.
    case = case_of(built, "cut", "sqlite+local", tmp_path)
    assert case.recover_crashing_at("log durable", monkeypatch)
    with case.vault() as vault:
        row = vault.catalog.get(case.rid)
        assert row is not None
        case.store.keystore.destroy_bucket(row.bucket)
        assert vault.recover() == [(case.rid, "destroyed")]
        after = vault.catalog.get(case.rid)
        assert after is not None and after.status == "aborted" and after.wrapped_key is None
        assert after.recovery is None and not vault.blobs.exists(row.file)
        assert vault.recover() == []
    assert len(entries_for(case.store, case.rid, T_RECORDING_SEALED)) == 1
    assert len(entries_for(case.store, case.rid, T_RECORDING_ABORTED)) == 1
    assert verify_log(case.store.path, public_key=case.store.public_key).ok


CHILD = textwrap.dedent(
    """
    import os, sys
    from sampledrec import FixedClock, Store
    from sampledrec.vault import recorder
    from sampledrec.vault.recorder import Vault

    def fault(step):
        if step == sys.argv[2]:
            os._exit(9)  # the process dies: nothing is flushed, closed or cleaned up

    recorder._fault = fault
    store = Store.open(sys.argv[1])
    clock = FixedClock("2030-03-04T10:00:00Z")
    Vault(store, store.open_log(clock=clock), clock=clock).recover()
    os._exit(0)
    """
)


@pytest.mark.parametrize("step", SCENARIOS["cut"].steps)
def test_a_killed_recovery_is_finished_by_the_next_run(
    built: dict[str, tuple[Path, str, bytes]], step: str, tmp_path: Path
) -> None:
    case = case_of(built, "cut", "sqlite+local", tmp_path)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), str(case.store.path), step],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr.decode()
    with case.vault() as vault:
        outcomes = vault.recover()
    assert outcomes == ([] if step == "catalog updated" else [(case.rid, "truncated")])
    assert_recovered(case)


def test_entries_appended_after_recoverys_own_do_not_hide_it(
    built: dict[str, tuple[Path, str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The journal's log size is a lower bound: entries other writers appended after the one
    # recovery wrote do not hide it.
    case = case_of(built, "cut", "sqlite+local", tmp_path)
    assert case.recover_crashing_at("log durable", monkeypatch)
    clock = FixedClock(AT)
    with case.store.open_log(clock=clock) as log:
        for _ in range(3):
            log.append(
                T_ACCESS,
                {"action": "list", "outcome": "granted", "principal": "qa", "detail": None},
            )
    with case.vault() as vault:
        assert vault.recover() == [(case.rid, "truncated")]
    assert_recovered(case)


# -- a crash inside Recorder.close ----------------------------------------------------------


@pytest.mark.parametrize("step", ["journaled", "log appended", "log durable"])
def test_a_crash_while_closing_is_finished_by_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Closing is journaled like recovery: a crash between the catalog and the log used to
    leave a row called sealed that the log never heard of (the audit's recordings check then
    fails an honest store). Now the row stays open until the entry is durable, and recovery
    finishes it with exactly one entry."""
    store = new_store(tmp_path, RECORD_REGULATED)
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        decision = store.sampler(clock=clock, log=log).decide("call-1", {"queue": "regulated"})
        assert decision.log_ticket is not None
        log.wait_durable(decision.log_ticket)  # so that audio reaches the blob as it comes
        rec = vault.record(decision, audio_format=PCM, chunk_size=CHUNK)
        for frame in frames(AUDIO, PCM, 20):
            rec.write(frame)
        if step == "journaled":
            # The journal is written by the catalog update that precedes the log: fail there.
            monkeypatch.setattr(vault.catalog, "update", _die)
        else:
            monkeypatch.setattr(recorder, "_fault", crash_at(step))
        with pytest.raises(Crash):
            rec.close()
        monkeypatch.undo()
        row = vault.catalog.get(rec.recording_id)
        assert row is not None and row.status == "open"  # never sealed before the log knows
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        assert vault.recover() == [(rec.recording_id, "sealed")]
        assert vault.recover() == []
        row = vault.catalog.get(rec.recording_id)
        assert row is not None and row.status == "sealed" and row.recovery is None
        assert row.ciphertext_sha256 == hashlib.sha256(read_blob(vault, row)).hexdigest()
        assert vault.open(rec.recording_id).audio == AUDIO
    (sealed,) = entries_for(store, rec.recording_id, T_RECORDING_SEALED)
    assert sealed.fields["ciphertext_sha256"].hex() == row.ciphertext_sha256
