"""The whole decision log on each :class:`~sampledrec.log.storage.LogStorage` the library ships:
the writer (decisions, checkpoints, crash recovery, several writers), verification, the column
reader, ``iter_entries`` and the proofs go through the storage only, so they work on the
in-memory fake exactly as on a store's folder.

The storage's own behaviour is the contract suite's (``tests/test_backends.py``); here the log
is driven through its public API on top of it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sampledrec.clock import FixedClock
from sampledrec.errors import StoreError
from sampledrec.keys.keyring import EpochKey
from sampledrec.log import (
    DecisionLog,
    LogStorage,
    iter_entries,
    log_inclusion_proof,
    read_log,
    verify_inclusion_proof,
    verify_log,
)
from sampledrec.log.checkpoint import LogSigner, vkey
from sampledrec.log.format import T_KEY_COMMIT, T_POLICY, to_micros
from sampledrec.log.segments import BATCH_HEADER, BATCH_MAGIC
from sampledrec.sampling import Policy, Sampler
from sampledrec.sampling.policy import DEFAULT_POLICY_TOML
from sampledrec.testing import MemoryKeyring

from .test_backends import LOG_STORAGES, open_log_storage

AT = "2030-01-01T10:00:00Z"
STORE_ID = bytes(range(16))
ORIGIN = f"sampledrec.local/{STORE_ID.hex()}"


class Deployment:
    """What a store gives the log, without a store: a keyring, the policy (logged once) and
    samplers whose decisions, and key commitments, go to the log."""

    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        self.keyring = MemoryKeyring(seed=b"log storage")
        self.policy = Policy.from_toml(DEFAULT_POLICY_TOML, source="default")
        self.clock = FixedClock(AT)
        self.key_lock = threading.Lock()  # the store's lock: keys are committed before use

    def create(self) -> DecisionLog:
        log = DecisionLog.create(
            self.storage,
            self.keyring,
            origin=ORIGIN,
            store_id=STORE_ID,
            simulated=True,
            clock=self.clock,
        )
        log.wait_durable(
            log.append(
                T_POLICY,
                {
                    "version": bytes.fromhex(self.policy.version),
                    "effective_at": to_micros(self.clock.now()),
                    "canonical": self.policy.canonical,
                    "principal": "tester",
                },
            )
        )
        return log

    def open(self, **kw: float) -> DecisionLog:
        return DecisionLog.open(
            self.storage, self.keyring, origin=ORIGIN, store_id=STORE_ID, clock=self.clock, **kw
        )

    def sampler(self, log: DecisionLog) -> Sampler:
        def commit(keys: list[EpochKey]) -> None:
            last = 0
            for key in keys:
                last = log.append(
                    T_KEY_COMMIT, {"epoch_id": key.epoch_id, "commitment": key.commitment}
                )
            if last:
                log.wait_durable(last)

        return Sampler(
            self.policy,
            self.keyring,
            clock=self.clock,
            log=log,
            on_new_keys=commit,
            key_lock=lambda: self.key_lock,
        )

    def verify(self) -> list[str]:
        report = verify_log(self.storage, store_id=STORE_ID, public_key=self.public_key)
        return [f"{f.check}: {f.message} ({f.where})" for f in report.findings]

    @property
    def public_key(self) -> bytes:
        """The log's signing key, from the keyring (not from the log)."""
        return LogSigner(ORIGIN, self.keyring.signing_seed()).public_key


def refs_in(storage: LogStorage, keyring: MemoryKeyring) -> list[object]:
    decisions = read_log(storage, keyring).decisions
    return [decisions.ref(i) for i in range(len(decisions))]


@pytest.fixture(params=LOG_STORAGES)
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Deployment:
    return Deployment(open_log_storage(request.param, tmp_path)())


def test_the_whole_log_runs_on_the_storage(deployment: Deployment) -> None:
    storage = deployment.storage
    made = []
    with deployment.create() as log:
        sampler = deployment.sampler(log)
        for batch in range(3):
            made += [f"call-{batch}-{i}" for i in range(40)]
            for ref in made[-40:]:
                sampler.decide(ref)
            log.flush()
            checkpoint = log.checkpoint()
        assert log.latest_checkpoint() == checkpoint
    assert storage.segments() == [0]
    assert deployment.verify() == []
    assert refs_in(storage, deployment.keyring) == made

    # A crash in the middle of a batch: a torn tail after the last whole one.
    end = len(storage.read_segment(0))
    torn = BATCH_HEADER.pack(BATCH_MAGIC, 10_000, 3, 500) + b"half a record"
    with storage.lock():
        storage.write_segment(0, end, torn)
    assert any(f.startswith("structure") for f in deployment.verify())
    with deployment.open() as log:
        report = log.recovery
        assert report.dropped_bytes == len(torn)
        assert report.dropped_entries == 3
        assert report.moved_to is not None
        assert storage.set_aside_tails()[report.moved_to] == torn
        deployment.sampler(log).decide("after the crash")
    made.append("after the crash")
    assert deployment.verify() == []
    assert refs_in(storage, deployment.keyring) == made

    # Entries, personal fields opened, and a proof that checks with the verifier key alone.
    entries = list(iter_entries(storage, deployment.keyring))
    assert [e.fields["call_ref"] for e in entries if e.type_name == "decision"] == made
    with deployment.open() as log:
        checkpoint = log.checkpoint()
    index = next(e.index for e in entries if e.fields.get("call_ref") == "call-1-7")
    proof = log_inclusion_proof(storage, index, checkpoint)
    assert verify_inclusion_proof(proof, vkey(ORIGIN, deployment.public_key))


def test_segments_roll_over_on_the_storage(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sampledrec.log.segments

    monkeypatch.setattr(sampledrec.log.segments, "SEGMENT_BYTES", 2048)
    made = [f"call-{i}" for i in range(60)]
    with deployment.create() as log:
        sampler = deployment.sampler(log)
        for ref in made:
            sampler.decide(ref)
            log.flush()
    assert len(deployment.storage.segments()) > 2
    assert deployment.verify() == []
    assert refs_in(deployment.storage, deployment.keyring) == made


def test_two_writers_share_the_storage(deployment: Deployment) -> None:
    deployment.create().close()
    logs = [deployment.open(group_commit=0.001) for _ in range(2)]
    start = threading.Barrier(2)

    def work(k: int) -> None:
        sampler = deployment.sampler(logs[k])
        start.wait()
        for i in range(50):
            sampler.decide(f"w{k}-{i}")
            if i % 10 == 0:
                logs[k].flush()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for log in logs:
        log.close()
    assert deployment.verify() == []
    refs = refs_in(deployment.storage, deployment.keyring)
    for k in range(2):
        assert [r for r in refs if str(r).startswith(f"w{k}-")] == [f"w{k}-{i}" for i in range(50)]


def test_a_log_is_created_once_and_opened_only_once_created(deployment: Deployment) -> None:
    with pytest.raises(StoreError, match="no decision log"):
        deployment.open()
    assert verify_log(deployment.storage).failed("files")
    deployment.create().close()
    with pytest.raises(FileExistsError):
        deployment.create()
