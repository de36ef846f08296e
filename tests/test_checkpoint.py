"""Signed checkpoints: the C2SP checkpoint / signed-note format with Ed25519."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sampledrec.log.checkpoint import (
    Checkpoint,
    CheckpointError,
    LogSigner,
    key_id,
    parse_vkey,
    verify_checkpoint,
)

ORIGIN = "sampledrec.local/00112233445566778899aabbccddeeff"
ROOT = hashlib.sha256(b"root").digest()


def test_sign_and_verify_round_trip() -> None:
    signer = LogSigner(ORIGIN, bytes(range(32)))
    cp = signer.sign(1234, ROOT, 1_795_000_000_123_456)
    text = cp.note.decode()
    lines = text.split("\n")
    assert lines[:3] == [ORIGIN, "1234", base64.b64encode(ROOT).decode()]
    assert lines[3] == "sampledrec-time 2026-11-18T11:06:40.123456Z"
    assert lines[4] == ""
    assert lines[5].startswith("\u2014 " + ORIGIN + " ")
    got = verify_checkpoint(cp.note, ORIGIN, signer.public_key)
    assert (got.size, got.root, got.time_us) == (1234, ROOT, 1_795_000_000_123_456)


def test_key_id_is_the_c2sp_recommendation() -> None:
    signer = LogSigner(ORIGIN, bytes(32))
    expected = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + signer.public_key).digest()[:4]
    assert key_id(ORIGIN, signer.public_key) == expected == signer.key_id
    sig = base64.b64decode(signer.sign(1, ROOT, 0).note.decode().split(" ")[-1])
    assert sig[:4] == expected and len(sig) == 68


def test_vkeys_parse_even_with_plus_and_slash_in_base64() -> None:
    seen_plus = False
    for i in range(200):
        signer = LogSigner(ORIGIN, hashlib.sha256(i.to_bytes(2, "big")).digest())
        vk = signer.vkey
        seen_plus |= "+" in vk.split("+", 2)[2]
        assert parse_vkey(vk) == (ORIGIN, signer.public_key)
    assert seen_plus


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace("\n1234\n", "\n1235\n"),
        lambda t: t.replace(ORIGIN + "\n", "sampledrec.local/evil\n", 1),
        lambda t: t.replace("sampledrec-time 2026", "sampledrec-time 2025"),
    ],
    ids=["size", "origin", "time"],
)
def test_changed_text_is_refused(mutate: object) -> None:
    signer = LogSigner(ORIGIN, os.urandom(32))
    note = signer.sign(1234, ROOT, 1_795_000_000_000_000).note.decode()
    bad = mutate(note)  # type: ignore[operator]
    with pytest.raises(CheckpointError):
        verify_checkpoint(bad.encode(), ORIGIN, signer.public_key)


def test_other_keys_are_refused_and_unknown_signatures_ignored() -> None:
    signer = LogSigner(ORIGIN, os.urandom(32))
    cp = signer.sign(5, ROOT, 0)
    other = LogSigner(ORIGIN, os.urandom(32))
    with pytest.raises(CheckpointError, match="no signature"):
        verify_checkpoint(cp.note, ORIGIN, other.public_key)
    # A witness's co-signature line from another key is ignored.
    witness = Ed25519PrivateKey.generate()
    body = cp.note.decode().split("\n\n")[0] + "\n"
    extra = (
        "\u2014 witness.example "
        + base64.b64encode(b"\x00\x00\x00\x01" + witness.sign(body.encode())).decode()
    )
    cosigned = cp.note + extra.encode() + b"\n"
    assert verify_checkpoint(cosigned, ORIGIN, signer.public_key).size == 5


@pytest.mark.parametrize(
    "note",
    [b"", b"\xff\xfe", b"a\nb\n", b"o\n01\nAAAA\n\n", b"o\nx\nAAAA\n\n", b"o\n1\n!!!\n\n"],
)
def test_malformed_notes_raise_checkpoint_error(note: bytes) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(note)


def test_signer_refuses_pickling() -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(LogSigner(ORIGIN, bytes(32)))
    assert "key id" in repr(LogSigner(ORIGIN, bytes(32)))
