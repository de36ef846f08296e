"""C2SP signed notes, checkpoints and cosignatures, byte for byte (no I/O).

- A **signed note** (c2sp.org/signed-note) is a UTF-8 text ending in a newline, a blank line,
  then signature lines ``— <key name> base64(key ID || signature)``; the text is separated from
  the signatures by the *last* blank line. Key IDs are ``SHA-256(name || 0x0A || type ||
  public key)[:4]``: type ``0x01`` for the log's Ed25519 signatures, ``0x04`` for timestamped
  Ed25519 witness cosignatures.
- A **checkpoint** (c2sp.org/tlog-checkpoint) is a note whose text is the origin, the tree size
  (decimal, no leading zero) and the base64 root hash, then optional non-empty extension lines.
- A **cosignature** (c2sp.org/tlog-cosignature, Ed25519) signs ``cosignature/v1\\n``, ``time
  <POSIX seconds>\\n`` and the checkpoint's text; its signature bytes are ``key ID (4) ||
  timestamp (u64, big-endian) || Ed25519 signature (64)``.

:class:`Cosigner` holds a witness's private key (it refuses to be printed or pickled); the key
file that ``sampledrec witness keygen`` writes is ``PRIVATE+KEY+<name>+<key ID
hex>+base64(0x04 || 32-byte seed)``, and the verifier key it prints is ``<name>+<key ID
hex>+base64(0x04 || 32-byte public key)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Final, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import CheckpointError

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "Cosigner",
    "NoteCheckpoint",
    "VerifierKey",
    "cosignature_message",
    "key_id",
    "parse_note",
    "parse_signature_line",
    "signature_line",
]

ALG_ED25519: Final = 0x01
ALG_COSIGNATURE_V1: Final = 0x04
EM_DASH: Final = "\u2014"
_SIZE: Final = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_CONTROL: Final = re.compile(r"[\x00-\x09\x0b-\x1f]")
MAX_SIZE: Final = 2**63 - 1
MAX_SIGNATURES: Final = 64  # the spec asks verifiers to accept at least 16
_U64: Final = struct.Struct(">Q")


def key_id(name: str, alg: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || alg || public key)[:4]``."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes((alg,)) + public_key).digest()[:4]


def check_key_name(name: str) -> str:
    """A key name: non-empty, without Unicode spaces or ``+``; raises :class:`CheckpointError`."""
    if not isinstance(name, str) or not name or "+" in name or any(c.isspace() for c in name):
        raise CheckpointError(
            f"key name {name!r} must be non-empty, with no space and no '+' (for example "
            "'witness.example.org/dpo')"
        )
    if _CONTROL.search(name) or EM_DASH in name:
        raise CheckpointError(f"key name {name!r} holds a control character or an em dash")
    return name


@dataclass(frozen=True)
class VerifierKey:
    """A public key in the signed-note vkey form ``name+keyid+base64(type || key)``."""

    name: str
    alg: int
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public_key)

    def __str__(self) -> str:
        raw = bytes((self.alg,)) + self.public_key
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode()}"

    @classmethod
    def parse(cls, text: str, *, alg: int | None = None) -> VerifierKey:
        """Read a vkey (``alg``: the type it must have); raises :class:`CheckpointError`."""
        try:
            name, kid_hex, b64 = str(text).strip().split("+", 2)  # base64 may hold '+'
            raw = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error):
            raise CheckpointError(
                f"{str(text)[:80]!r} is not a verifier key (name+keyid+base64)"
            ) from None
        check_key_name(name)
        if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise CheckpointError(
                f"the verifier key of {name} is not an Ed25519 key (type 0x01) or an Ed25519 "
                "cosignature key (type 0x04)"
            )
        if alg is not None and raw[0] != alg:
            raise CheckpointError(
                f"the verifier key of {name} has type 0x{raw[0]:02x}, not 0x{alg:02x}"
                + (
                    ": a witness's key is a cosignature key (type 0x04), as 'sampledrec witness "
                    "keygen' prints it"
                    if alg == ALG_COSIGNATURE_V1
                    else ""
                )
            )
        vk = cls(name, raw[0], raw[1:])
        if len(kid_hex) != 8 or vk.key_id.hex() != kid_hex.lower():
            raise CheckpointError(
                f"the verifier key's id {kid_hex!r} does not match its name and key"
            )
        return vk

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class NoteCheckpoint:
    """A parsed checkpoint note: its ``text`` (what is signed) and its signature lines."""

    origin: str
    size: int
    root: bytes
    text: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (key name, key ID || signature bytes)

    @property
    def note(self) -> bytes:
        return self.text + b"\n" + b"".join(signature_line(n, s) for n, s in self.signatures)

    def signed_by(self, keys: list[VerifierKey]) -> VerifierKey:
        """The first of ``keys`` (type 0x01) whose signature verifies; signatures of other keys
        are ignored. Raises :class:`CheckpointError` when a known key's signature fails (the
        whole note is rejected) or when no known key signed."""
        found: VerifierKey | None = None
        for name, raw in self.signatures:
            for key in keys:
                if key.name != name or raw[:4] != key.key_id:
                    continue
                if len(raw) != 68 or not key.verify(self.text, raw[4:]):
                    raise CheckpointError(f"the signature of {name} does not verify")
                found = found or key
        if found is None:
            raise CheckpointError(f"no trusted key signed the checkpoint of {self.origin!r}")
        return found


def signature_line(name: str, raw: bytes) -> bytes:
    return f"{EM_DASH} {name} {base64.b64encode(raw).decode()}\n".encode()


def parse_signature_line(line: str) -> tuple[str, bytes]:
    """``(key name, key ID || signature)`` from ``— name base64`` (no newline)."""
    if not line.startswith(EM_DASH + " "):
        raise CheckpointError(f"a signature line starts with '{EM_DASH} ', not {line[:20]!r}")
    name, sep, b64 = line[2:].partition(" ")
    if not sep or not name or " " in b64:
        raise CheckpointError(f"malformed signature line {line[:60]!r}")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"the signature of {name} is not base64") from None
    if len(raw) < 5 or base64.b64encode(raw).decode() != b64:
        raise CheckpointError(f"the signature of {name} is not in canonical base64")
    return name, raw


def parse_note(note: bytes) -> NoteCheckpoint:
    """Parse a signed checkpoint note strictly (no signature checked); raises
    :class:`CheckpointError`."""
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("a signed note must be UTF-8") from None
    if _CONTROL.search(text):
        raise CheckpointError("a signed note holds a control character other than newline")
    if not text.endswith("\n"):
        raise CheckpointError("a signed note ends with a newline")
    body, sep, sigs = text.rpartition("\n\n")
    if not sep or not sigs:
        raise CheckpointError("a signed note needs a blank line, then signature lines")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"a note with more than {MAX_SIGNATURES} signatures is refused")
    signatures = tuple(parse_signature_line(line) for line in lines)
    body += "\n"
    rows = body.split("\n")[:-1]
    if len(rows) < 3 or any(not r for r in rows):
        raise CheckpointError("a checkpoint has at least three lines, none empty")
    origin, size_text, root_b64 = rows[:3]
    if not _SIZE.fullmatch(size_text) or int(size_text) > MAX_SIZE:
        raise CheckpointError(f"tree size {size_text[:30]!r} is not a decimal number")
    try:
        root = base64.b64decode(root_b64, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError("the root hash is not base64") from None
    if len(root) != 32 or base64.b64encode(root).decode() != root_b64:
        raise CheckpointError("the root hash is not 32 bytes in canonical base64")
    return NoteCheckpoint(origin, int(size_text), root, body.encode("utf-8"), signatures)


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: the header line, the time line, the checkpoint's text."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


class Cosigner:
    """A witness's Ed25519 cosigning key. Refuses to be printed or pickled."""

    def __init__(self, name: str, seed: bytes) -> None:
        self.name = check_key_name(name)
        if len(seed) != 32:
            raise CheckpointError(f"an Ed25519 seed is 32 bytes, not {len(seed)}")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = VerifierKey(name, ALG_COSIGNATURE_V1, public)

    def __repr__(self) -> str:
        return f"Cosigner({self.name!r}, key id {self.verifier.key_id.hex()})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a Cosigner holds a private key and cannot be pickled")

    @classmethod
    def generate(cls, name: str) -> tuple[Cosigner, bytes]:
        """A new key, and its key file's bytes."""
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        signer = cls(name, seed)
        return signer, signer._key_file(seed)

    def _key_file(self, seed: bytes) -> bytes:
        raw = base64.b64encode(bytes((ALG_COSIGNATURE_V1,)) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{raw}\n".encode()

    @classmethod
    def from_key_file(cls, data: bytes) -> Cosigner:
        """Read a key file written by :meth:`generate`; raises :class:`CheckpointError`."""
        try:
            text = data.decode("ascii").strip()
            head, kind, name, kid_hex, b64 = text.split("+", 4)
            raw = base64.b64decode(b64, validate=True)
        except (UnicodeDecodeError, ValueError, binascii.Error):
            raise CheckpointError(
                "not a witness key file (PRIVATE+KEY+name+keyid+base64)"
            ) from None
        if (head, kind) != ("PRIVATE", "KEY") or len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
            raise CheckpointError("not a witness key file (an Ed25519 cosignature key, type 0x04)")
        signer = cls(name, raw[1:])
        if signer.verifier.key_id.hex() != kid_hex.lower():
            raise CheckpointError("the key file's key id does not match its name and key")
        return signer

    def cosign(self, text: bytes, timestamp: int) -> bytes:
        """The cosignature line of a checkpoint's ``text`` at ``timestamp`` (POSIX seconds)."""
        if not 0 <= timestamp <= MAX_SIZE:
            raise CheckpointError(f"timestamp {timestamp} is not in [0, 2^63 - 1]")
        sig = self._key.sign(cosignature_message(text, timestamp))
        return signature_line(self.name, self.verifier.key_id + _U64.pack(timestamp) + sig)

    def sign_raw(self, message: bytes) -> bytes:
        """A bare Ed25519 signature (the benchmark's reference rate)."""
        return self._key.sign(message)


def cosignature_time(raw: bytes) -> int:
    """The timestamp of a cosignature's bytes (``key ID || u64 || signature``)."""
    if len(raw) != 4 + 8 + 64:
        raise CheckpointError("an Ed25519 cosignature is 76 bytes")
    return int(_U64.unpack_from(raw, 4)[0])


def verify_cosignature(key: VerifierKey, text: bytes, raw: bytes) -> int | None:
    """The timestamp if ``raw`` (a signature line's bytes) is ``key``'s cosignature of
    ``text``, else ``None``."""
    if key.alg != ALG_COSIGNATURE_V1 or len(raw) != 76 or raw[:4] != key.key_id:
        return None
    ts = cosignature_time(raw)
    if ts > MAX_SIZE or not key.verify(cosignature_message(text, ts), raw[12:]):
        return None
    return ts
