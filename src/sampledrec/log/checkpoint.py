"""Signed checkpoints: the C2SP tlog-checkpoint format in a C2SP signed note, with Ed25519.

A checkpoint commits to the log's size and root hash at a time::

    sampledrec.local/8c1f...e2                    origin: one per store
    1532                                          tree size
    V1p4...bM=                                    base64 RFC 6962 root hash
    sampledrec-time 2026-11-22T19:37:14.123456Z   extension line: when it was signed (UTC)

    — sampledrec.local/8c1f...e2 q3v1...==

The signature line holds ``base64(key_id || Ed25519 signature)``, with ``key_id =
SHA-256(name || 0x0A || 0x01 || public_key)[:4]``; the signature covers the text up to and
including its last newline. A *verifier key* is written ``name+hex(key_id)+base64(0x01 ||
public_key)`` so a DPO can keep it next to exported checkpoints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import CheckpointError
from .format import from_micros, to_micros

__all__ = ["Checkpoint", "CheckpointError", "LogSigner", "parse_vkey", "verify_checkpoint"]

ALG_ED25519: Final = 0x01
_SIZE: Final = re.compile(r"0|[1-9][0-9]{0,19}", re.ASCII)
SIG_PREFIX: Final = "\u2014 "
TIME_EXT: Final = "sampledrec-time "


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes((ALG_ED25519,)) + public_key).digest()[:4]


def vkey(name: str, public_key: bytes) -> str:
    """The verifier key text: ``name+hex(key id)+base64(0x01 || public key)``."""
    return (
        f"{name}+{key_id(name, public_key).hex()}+"
        f"{base64.b64encode(bytes((ALG_ED25519,)) + public_key).decode()}"
    )


def parse_vkey(text: str) -> tuple[str, bytes]:
    """``(name, public key)`` from a verifier key; raises :class:`CheckpointError`."""
    try:
        name, kid_hex, b64 = str(text).strip().split("+", 2)  # names have no "+"; base64 may
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error):
        raise CheckpointError(f"{text!r} is not a verifier key (name+keyid+base64)") from None
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise CheckpointError("the verifier key is not an Ed25519 key")
    if key_id(name, raw[1:]).hex() != kid_hex.lower():
        raise CheckpointError("the verifier key's id does not match its name and key")
    return name, raw[1:]


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time_us: int | None
    note: bytes  # the whole signed note, as stored and exported

    @property
    def time(self) -> datetime | None:
        return None if self.time_us is None else from_micros(self.time_us)

    @classmethod
    def parse(cls, note: bytes) -> Checkpoint:
        """Parse (without verifying) a signed checkpoint note."""
        try:
            text = note.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("a checkpoint must be UTF-8 text") from None
        body, sep, _ = text.rpartition("\n\n")
        if not sep:
            raise CheckpointError("a signed note needs a blank line before its signatures")
        lines = (body + "\n").split("\n")[:-1]
        if len(lines) < 3 or any(not line for line in lines):
            raise CheckpointError("a checkpoint has at least 3 non-empty lines")
        origin, size_text, root_b64 = lines[:3]
        if not _SIZE.fullmatch(size_text):
            raise CheckpointError(f"tree size {size_text[:30]!r} is not a decimal number")
        try:
            root = base64.b64decode(root_b64, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("the root hash is not base64") from None
        if len(root) != 32:
            raise CheckpointError("the root hash is not 32 bytes")
        time_us = None
        for ext in lines[3:]:
            if ext.startswith(TIME_EXT):
                try:
                    moment = datetime.fromisoformat(ext[len(TIME_EXT) :].replace("Z", "+00:00"))
                    if moment.tzinfo is None:
                        raise ValueError("no time zone")
                    time_us = to_micros(moment)
                except (ValueError, OverflowError):
                    raise CheckpointError(f"bad time extension line {ext[:60]!r}") from None
        return cls(origin, int(size_text), root, time_us, note)


class LogSigner:
    """Signs checkpoints with a store's Ed25519 key. Refuses to be printed or pickled."""

    def __init__(self, origin: str, private_seed: bytes) -> None:
        self.origin = origin
        self._key = Ed25519PrivateKey.from_private_bytes(private_seed)
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(origin, self.public_key)

    def __repr__(self) -> str:
        return f"LogSigner({self.origin!r}, key id {self.key_id.hex()})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a LogSigner holds a private key and cannot be pickled")

    @property
    def vkey(self) -> str:
        return vkey(self.origin, self.public_key)

    def sign(self, size: int, root: bytes, time_us: int) -> Checkpoint:
        stamp = from_micros(time_us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = (
            f"{self.origin}\n{size}\n{base64.b64encode(root).decode()}\n{TIME_EXT}{stamp}\n"
        ).encode()
        sig = self._key.sign(body)
        line = f"{SIG_PREFIX}{self.origin} {base64.b64encode(self.key_id + sig).decode()}\n"
        return Checkpoint(self.origin, size, root, time_us, body + b"\n" + line.encode())


def verify_checkpoint(note: bytes, name: str, public_key: bytes) -> Checkpoint:
    """Parse a checkpoint and check its signature by ``(name, public_key)``.

    Raises :class:`CheckpointError` unless a signature line of that key verifies; lines of other
    keys (witnesses, rotated keys) are ignored, as the signed-note spec requires.
    """
    cp = Checkpoint.parse(note)
    if len(public_key) != 32:
        raise CheckpointError(f"the log's public key is {len(public_key)} bytes, not 32")
    text = note.decode("utf-8")
    body, _, sigs = text.rpartition("\n\n")
    signed = (body + "\n").encode()
    kid = key_id(name, public_key)
    verifier = Ed25519PublicKey.from_public_bytes(public_key)
    for line in sigs.split("\n"):
        if not line:
            continue
        if not line.startswith(SIG_PREFIX):
            raise CheckpointError(f"malformed signature line {line[:40]!r}")
        signer, _, b64 = line[len(SIG_PREFIX) :].rpartition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("a signature is not base64") from None
        if signer != name or raw[:4] != kid:
            continue
        if base64.b64encode(raw).decode() != b64 or len(raw) != 68:
            raise CheckpointError("the signature is not in canonical form")
        try:
            verifier.verify(raw[4:], signed)
        except InvalidSignature:
            raise CheckpointError(f"the signature of {name} does not verify") from None
        if cp.origin != name:
            raise CheckpointError(f"checkpoint origin {cp.origin!r} is not {name!r}")
        return cp
    raise CheckpointError(f"the checkpoint has no signature by {name} (key id {kid.hex()})")
