"""A tlog-witness client written from the C2SP specs alone, for the interoperability tests.

It shares no code with ``sampledrec.witness`` or ``sampledrec.log``: its own RFC 6962 hashing
and consistency proofs, its own signed notes (key IDs with the signature type byte), its own
request body and its own check of the cosignatures a witness returns. A log here is a list of
entries signed by an Ed25519 key under an origin.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DASH = "\u2014"


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle Tree Hash of the entries ``leaves``."""
    n = len(leaves)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return _h(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def proof(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(m, D[n])."""

    def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if b else [mth(d)]
        k = 1
        while k * 2 < n:
            k *= 2
        if m <= k:
            return [*subproof(m, d[:k], b), mth(d[k:])]
        return [*subproof(m - k, d[k:], False), mth(d[:k])]

    return [] if m == 0 or m >= len(leaves) else subproof(m, leaves, True)


def key_hash(name: str, sig_type: int, public: bytes) -> bytes:
    return _h(name.encode() + b"\n" + bytes([sig_type]) + public)[:4]


def vkey(name: str, sig_type: int, public: bytes) -> str:
    raw = base64.b64encode(bytes([sig_type]) + public).decode()
    return f"{name}+{key_hash(name, sig_type, public).hex()}+{raw}"


@dataclass
class SpecLog:
    """A log: its origin, its key and its entries."""

    origin: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    entries: list[bytes] = field(default_factory=list)

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes_raw()

    @property
    def vkey(self) -> str:
        return vkey(self.origin, 0x01, self.public)

    def checkpoint(self, size: int | None = None, root: bytes | None = None) -> bytes:
        """A signed checkpoint note of the first ``size`` entries (or of a given ``root``)."""
        n = len(self.entries) if size is None else size
        r = mth(self.entries[:n]) if root is None else root
        text = f"{self.origin}\n{n}\n{base64.b64encode(r).decode()}\n".encode()
        sig = key_hash(self.origin, 0x01, self.public) + self.key.sign(text)
        return text + f"\n{DASH} {self.origin} {base64.b64encode(sig).decode()}\n".encode()


def body(old: int, hashes: list[bytes], checkpoint: bytes) -> bytes:
    """The add-checkpoint request body: old size line, proof lines, empty line, checkpoint."""
    lines = [f"old {old}\n".encode()] + [base64.b64encode(h) + b"\n" for h in hashes]
    return b"".join(lines) + b"\n" + checkpoint


def post(url: str, data: bytes, timeout: float = 10.0) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url + "/add-checkpoint", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers.get("Content-Type", ""), err.read()


def cosignature_time(line: str, name: str, public: bytes, checkpoint: bytes) -> int | None:
    """The timestamp of ``line`` if it is the cosignature/v1 of the witness ``(name,
    public)`` on ``checkpoint``'s text, else None (the tlog-cosignature spec)."""
    prefix = f"{DASH} {name} "
    if not line.startswith(prefix):
        return None
    raw = base64.b64decode(line[len(prefix) :], validate=True)
    if len(raw) != 76 or raw[:4] != key_hash(name, 0x04, public):
        return None
    (ts,) = struct.unpack(">Q", raw[4:12])
    text = checkpoint[: checkpoint.rindex(b"\n\n") + 1]
    message = b"cosignature/v1\n" + f"time {ts}\n".encode() + text
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], message)
    except InvalidSignature:
        return None
    return int(ts)
