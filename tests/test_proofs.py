"""Inclusion and consistency proofs over a real store's log, checked with only a verifier key."""

from __future__ import annotations

from pathlib import Path

from sampledrec import FixedClock, Store
from sampledrec.log.checkpoint import vkey
from sampledrec.log.format import T_DECISION, decode_entry
from sampledrec.log.proofs import (
    InclusionProof,
    log_consistency_proof,
    log_inclusion_proof,
    verify_consistency_proof,
    verify_inclusion_proof,
)


def make_store(tmp_path: Path, calls: int) -> tuple[Store, str]:
    store = Store.init(tmp_path / "s")
    clock = FixedClock("2030-01-02T10:00:00Z")
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(calls):
            sampler.decide(f"call-{i}", {"agent": f"a{i % 3}"})
        key = vkey(log.signer.origin, log.signer.public_key)
    return store, key


def test_inclusion_proof_of_each_decision(tmp_path: Path) -> None:
    store, key = make_store(tmp_path, 40)
    with store.open_log() as log:
        cp = log.checkpoint()
    for index in range(cp.size):
        proof = log_inclusion_proof(store.path, index, cp)
        assert verify_inclusion_proof(proof, key)
        again = InclusionProof.from_json(proof.to_json())
        assert verify_inclusion_proof(again, key)
    # Another entry's bytes, another index or a changed byte: refused.
    proof = log_inclusion_proof(store.path, 20, cp)
    other = log_inclusion_proof(store.path, 21, cp)
    assert not verify_inclusion_proof(InclusionProof(20, other.entry, proof.path, cp.note), key)
    assert not verify_inclusion_proof(InclusionProof(21, proof.entry, proof.path, cp.note), key)
    flipped = bytes([proof.entry[0] ^ 1]) + proof.entry[1:]
    assert not verify_inclusion_proof(InclusionProof(20, flipped, proof.path, cp.note), key)


def test_proof_discloses_no_personal_field(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, 10)
    with store.open_log() as log:
        cp = log.checkpoint()
    decisions = [
        i
        for i in range(cp.size)
        if decode_entry(i, log_inclusion_proof(store.path, i, cp).entry).type == T_DECISION
    ]
    proof = log_inclusion_proof(store.path, decisions[3], cp)
    text = str(proof.to_json())
    for i in range(10):
        assert f"call-{i}" not in text
    entry = decode_entry(proof.index, proof.entry)
    assert entry.kid is not None and entry.sealed is True  # readable only with the store's key
    assert "call_ref" not in entry.fields


def test_consistency_between_checkpoints(tmp_path: Path) -> None:
    store, key = make_store(tmp_path, 15)
    with store.open_log() as log:
        old = log.checkpoint()
        sampler = store.sampler(log=log)
        for i in range(25):
            sampler.decide(f"more-{i}")
        new = log.checkpoint()
    path = log_consistency_proof(store.path, old, new)
    assert verify_consistency_proof(old.note, new.note, path, key)
    assert not verify_consistency_proof(new.note, old.note, path, key)
    if path:
        bad = [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]
        assert not verify_consistency_proof(old.note, new.note, bad, key)
    other_key = vkey("sampledrec.local/other", bytes(32))
    assert not verify_consistency_proof(old.note, new.note, path, other_key)
