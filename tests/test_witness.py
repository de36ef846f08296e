"""The witness (C2SP tlog-witness, tlog-cosignature): its formats against the specs' examples,
and each answer the spec defines, including a rewrite, a truncation, a fork and a rollback
refused."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sampledrec.errors import CheckpointError, StoreError
from sampledrec.log.merkle import CompactRange, consistency_proof, consistency_proof_from_edge
from sampledrec.witness import (
    AddCheckpoint,
    Cosigner,
    VerifierKey,
    Witness,
    WitnessState,
    parse_note,
)
from sampledrec.witness.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    cosignature_message,
    cosignature_time,
    key_id,
    parse_signature_line,
    signature_line,
    verify_cosignature,
)
from sampledrec.witness.protocol import SIZE_CONTENT_TYPE

from . import c2sp_client as spec

VECTORS = json.loads((Path(__file__).parent / "vectors" / "c2sp_witness.json").read_text())
ORIGIN = "example.org/log/one"


# -- the formats, against the specs' examples ----------------------------------------------------


def test_the_specs_request_example_parses_and_rebuilds_byte_for_byte() -> None:
    body = VECTORS["add_checkpoint_request"].encode()
    req = AddCheckpoint.parse(body)
    assert req.old_size == 20852014
    assert len(req.proof) == 4 and all(len(h) == 32 for h in req.proof)
    assert req.body() == body
    cp = parse_note(req.checkpoint)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert base64.b64encode(cp.root) == b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    assert [n for n, _ in cp.signatures] == ["example.com/behind-the-sofa"] * 2
    assert cp.note == req.checkpoint


def test_the_specs_response_example_is_three_signature_lines() -> None:
    lines = VECTORS["add_checkpoint_response"].splitlines()
    parsed = [parse_signature_line(line) for line in lines]
    assert [n for n, _ in parsed] == [
        "witness.example/w1",
        "witness.example/w1",
        "witness.example/w2",
    ]
    assert all(len(raw) == 76 for _, raw in parsed)  # key ID, timestamp, Ed25519 signature
    assert (
        b"".join(signature_line(n, raw) for n, raw in parsed)
        == VECTORS["add_checkpoint_response"].encode()
    )


def test_the_specs_cosigned_checkpoint_carries_the_time_of_its_signed_message() -> None:
    cp = parse_note(VECTORS["cosigned_checkpoint"].encode())
    name, raw = cp.signatures[1]
    assert name == "witness.example.com/w1"
    assert cosignature_time(raw) == VECTORS["cosignature_time"] == 1679315147
    assert (
        cosignature_message(cp.text, cosignature_time(raw))
        == VECTORS["cosignature_message"].encode()
    )
    assert cp.note == VECTORS["cosigned_checkpoint"].encode()


def test_the_go_signed_note_known_answer() -> None:
    """The signed-note format (key ID with type 0x01, the signature line) reproduces the
    golang.org/x/mod/sumdb/note example byte for byte (Ed25519 is deterministic)."""
    vk = VerifierKey.parse(VECTORS["go_note_vkey"])
    assert (vk.name, vk.alg, vk.key_id.hex()) == ("PeterNeumann", ALG_ED25519, "c74f20a3")
    assert str(vk) == VECTORS["go_note_vkey"]
    seed = base64.b64decode(VECTORS["go_note_skey"].split("+", 4)[4])[1:]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    text, _, _ = VECTORS["go_note"].encode().rpartition(b"\n\n")
    text += b"\n"
    sig = Ed25519PrivateKey.from_private_bytes(seed).sign(text)
    line = signature_line("PeterNeumann", key_id("PeterNeumann", ALG_ED25519, vk.public_key) + sig)
    assert text + b"\n" + line == VECTORS["go_note"].encode()
    name, raw = parse_signature_line(line.decode().rstrip("\n"))
    assert name == "PeterNeumann" and vk.verify(text, raw[4:])


def test_a_cosignature_is_what_the_spec_client_verifies() -> None:
    cosigner, key_file = Cosigner.generate("witness.example.org/w1")
    assert Cosigner.from_key_file(key_file).verifier == cosigner.verifier
    assert key_file.startswith(b"PRIVATE+KEY+witness.example.org/w1+")
    note = spec.SpecLog(ORIGIN, entries=[b"a", b"b"]).checkpoint()
    cp = parse_note(note)
    line = cosigner.cosign(cp.text, 1679315147).decode().rstrip("\n")
    got = spec.cosignature_time(line, cosigner.name, cosigner.verifier.public_key, note)
    assert got == 1679315147
    vk = VerifierKey.parse(str(cosigner.verifier), alg=ALG_COSIGNATURE_V1)
    assert str(vk) == spec.vkey(cosigner.name, 0x04, cosigner.verifier.public_key)
    _, raw = parse_signature_line(line)
    assert verify_cosignature(vk, cp.text, raw) == 1679315147
    assert verify_cosignature(vk, cp.text.replace(b"\n2\n", b"\n3\n"), raw) is None
    with pytest.raises(TypeError):
        pickle.dumps(cosigner)
    assert "PRIVATE" not in repr(cosigner)


@pytest.mark.parametrize(
    "bad",
    [
        "witness+1234abcd+BBl/57HIwbWcYiNRlFe0sZBQPphXAq5mH7bMp7EvYZum",  # wrong key id
        "w+0b2976c7",
        "with space+0b2976c7+BBl/57HIwbWcYiNRlFe0sZBQPphXAq5mH7bMp7EvYZum",
        "witness.test/w1+0b2976c7+AAAA",
    ],
)
def test_a_malformed_verifier_key_is_refused(bad: str) -> None:
    with pytest.raises(CheckpointError):
        VerifierKey.parse(bad)


@pytest.mark.parametrize(
    "note",
    [
        b"o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",  # no signature
        b"o\n01\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\xe2\x80\x94 o AAAAAAA=\n",
        b"o\n1\nAAAA\n\n\xe2\x80\x94 o AAAAAAA=\n",  # a short root
        b"o\n1\n\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\xe2\x80\x94 o AAAAAAA=\n",
        b"o\x01\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\xe2\x80\x94 o AAAAAAA=\n",
        b"o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n- o AAAAAAA=\n",
        b"o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\xe2\x80\x94 o AAAAAAA=",
    ],
)
def test_a_malformed_checkpoint_note_is_refused(note: bytes) -> None:
    with pytest.raises(CheckpointError):
        parse_note(note)


@given(st.integers(0, 70), st.integers(0, 70))
def test_a_proof_from_the_compact_range_and_the_new_leaves_is_rfc_6962s(a: int, b: int) -> None:
    m, n = min(a, b), max(a, b)
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(n)]
    edge = CompactRange()
    edge.extend(leaves[:m])
    assert consistency_proof_from_edge(edge, leaves[m:]) == consistency_proof(leaves, m, n)


# -- the witness's answers ------------------------------------------------------------------------


@pytest.fixture
def log() -> spec.SpecLog:
    return spec.SpecLog(ORIGIN, entries=[b"entry %d" % i for i in range(20)])


@pytest.fixture
def witness(tmp_path: Path, log: spec.SpecLog) -> Witness:
    cosigner, _ = Cosigner.generate("witness.example.org/w1")
    return Witness(
        cosigner, WitnessState(tmp_path / "state"), {ORIGIN: [VerifierKey.parse(log.vkey)]}
    )


def _add(
    w: Witness, log: spec.SpecLog, old: int, size: int | None = None
) -> tuple[int, str, bytes]:
    size = len(log.entries) if size is None else size
    body = spec.body(old, spec.proof(old, log.entries[:size]), log.checkpoint(size))
    a = w.add_checkpoint(body)
    return a.status, a.content_type, a.body


def test_the_first_checkpoint_is_cosigned_and_a_later_one_with_its_proof(
    witness: Witness, log: spec.SpecLog
) -> None:
    status, _, body = _add(witness, log, 0, 8)
    assert status == 200
    line = body.decode().rstrip("\n")
    pub = witness.cosigner.verifier.public_key
    assert spec.cosignature_time(line, witness.cosigner.name, pub, log.checkpoint(8))
    status, _, body = _add(witness, log, 8, 20)
    assert status == 200 and body.count(b"\n") == 1
    assert witness.state.latest(ORIGIN).size == 20  # type: ignore[union-attr]
    # The same checkpoint again: cosigned again (same size, same root).
    assert _add(witness, log, 20, 20)[0] == 200


def test_an_unknown_origin_is_404(witness: Witness) -> None:
    other = spec.SpecLog("example.org/other", entries=[b"x"])
    assert _add(witness, other, 0)[0] == 404


def test_a_checkpoint_signed_by_another_key_is_403(witness: Witness, log: spec.SpecLog) -> None:
    impostor = spec.SpecLog(ORIGIN, entries=log.entries)  # same origin, another key
    assert _add(witness, impostor, 0)[0] == 403
    note = log.checkpoint()
    # A known key's signature that does not verify rejects the note, whatever else it holds.
    forged = note.replace(b"\n20\n", b"\n21\n")
    assert witness.add_checkpoint(spec.body(0, [], forged)).status == 403


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 0\n",
        b"old 00\n\n",
        b"old -1\n\n",
        b"olds 1\n\n",
        b"old 1\nnot base64!\n\n",
        b"old 1\nAAAA\n\n",  # a 3-byte hash
        b"old 1\n" + b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n" * 64 + b"\n",
    ],
)
def test_a_malformed_request_is_400(witness: Witness, log: spec.SpecLog, body: bytes) -> None:
    if body.endswith(b"\n\n"):
        body += log.checkpoint()
    assert witness.add_checkpoint(body).status == 400


def test_an_old_size_above_the_checkpoint_is_400(witness: Witness, log: spec.SpecLog) -> None:
    assert witness.add_checkpoint(spec.body(21, [], log.checkpoint(20))).status == 400


def test_a_wrong_old_size_is_409_with_the_known_size(witness: Witness, log: spec.SpecLog) -> None:
    assert _add(witness, log, 0, 5)[0] == 200
    status, kind, body = _add(witness, log, 3, 20)
    assert (status, kind, body) == (409, SIZE_CONTENT_TYPE, b"5\n")
    # A client that lost track asks with 0 and learns the size.
    assert _add(witness, log, 0, 20)[:3] == (409, SIZE_CONTENT_TYPE, b"5\n")


def test_a_proof_that_does_not_verify_is_422(witness: Witness, log: spec.SpecLog) -> None:
    assert _add(witness, log, 0, 5)[0] == 200
    proof = spec.proof(5, log.entries)
    proof[0] = bytes(32)
    assert witness.add_checkpoint(spec.body(5, proof, log.checkpoint())).status == 422
    # From size 0 the proof must be empty.
    fresh = spec.SpecLog(ORIGIN, key=log.key, entries=log.entries)
    w2 = Witness(witness.cosigner, WitnessState(witness.state.path.parent / "s2"), witness.logs)
    assert w2.add_checkpoint(spec.body(0, [bytes(32)], fresh.checkpoint())).status == 422


def test_a_rewrite_is_refused(witness: Witness, log: spec.SpecLog) -> None:
    """The operator changes entry 3 and signs the whole log again with its own key."""
    assert _add(witness, log, 0, 10)[0] == 200
    rewritten = spec.SpecLog(ORIGIN, key=log.key, entries=list(log.entries))
    rewritten.entries[3] = b"entry 3, rewritten"
    assert _add(witness, rewritten, 10, 20)[0] == 422
    assert _add(witness, rewritten, 10, 10)[0] == 409  # the same size, another root
    assert witness.state.latest(ORIGIN).size == 10  # type: ignore[union-attr]


def test_a_truncation_is_refused(witness: Witness, log: spec.SpecLog) -> None:
    assert _add(witness, log, 0, 20)[0] == 200
    assert _add(witness, log, 20, 12)[0] == 400  # old size above the new one
    assert _add(witness, log, 12, 12)[:2] == (409, SIZE_CONTENT_TYPE)


def test_a_fork_is_refused(witness: Witness, log: spec.SpecLog) -> None:
    """Two different checkpoints of the same size: only the first is cosigned."""
    fork = spec.SpecLog(ORIGIN, key=log.key, entries=[*log.entries[:15], b"x", *log.entries[16:]])
    assert _add(witness, log, 0, 20)[0] == 200
    status, _, body = _add(witness, fork, 20, 20)
    assert status == 409 and b"forked" in body
    # ... and from a common prefix, the fork's later checkpoint does not extend the first.
    fork.entries.append(b"more")
    assert _add(witness, fork, 20, 21)[0] == 422


def test_a_rollback_is_refused(witness: Witness, log: spec.SpecLog) -> None:
    """An older checkpoint sent again, as if the witness's newer one had never been."""
    assert _add(witness, log, 0, 8)[0] == 200
    assert _add(witness, log, 8, 20)[0] == 200
    assert _add(witness, log, 0, 8)[:3] == (409, SIZE_CONTENT_TYPE, b"20\n")
    assert _add(witness, log, 8, 8)[:3] == (409, SIZE_CONTENT_TYPE, b"20\n")


def test_the_state_survives_a_restart_and_damage_is_not_guessed(
    witness: Witness, log: spec.SpecLog, tmp_path: Path
) -> None:
    assert _add(witness, log, 0, 7)[0] == 200
    again = Witness(witness.cosigner, WitnessState(tmp_path / "state"), witness.logs)
    assert _add(again, log, 0, 20)[:3] == (409, SIZE_CONTENT_TYPE, b"7\n")
    (state_file,) = (tmp_path / "state" / "logs").iterdir()
    state_file.write_bytes(state_file.read_bytes()[:-20])
    with pytest.raises(StoreError, match="damaged"):
        _add(again, log, 7, 20)


def test_cosignature_times_never_go_back(witness: Witness, log: spec.SpecLog) -> None:
    _, _, first = _add(witness, log, 0, 5)
    _, _, second = _add(witness, log, 5, 9)
    t1 = cosignature_time(parse_signature_line(first.decode().strip())[1])
    t2 = cosignature_time(parse_signature_line(second.decode().strip())[1])
    assert t2 >= t1


def test_concurrent_requests_never_roll_the_state_back(witness: Witness, log: spec.SpecLog) -> None:
    """The spec's race: request A (size N) and B (size N+K) checked at once must not leave the
    witness at N after cosigning N+K. Every request from the same old size: one wins."""
    assert _add(witness, log, 0, 4)[0] == 200
    answers: list[tuple[int, int]] = []

    def send(size: int) -> None:
        answers.append((size, _add(witness, log, 4, size)[0]))

    threads = [threading.Thread(target=send, args=(s,)) for s in range(5, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [s for s, status in answers if status == 200]
    assert len(won) == 1
    assert {status for s, status in answers if s not in won} == {409}
    assert witness.state.latest(ORIGIN).size == won[0]  # type: ignore[union-attr]
