"""Log entry encoding v1: compact, versioned, self-delimiting fields, personal fields sealed.

An *entry* (the leaf data of the Merkle tree) is::

    entry  = version:u8 (=1) | type:u8 | time:u64be (µs since 1970-01-01T00:00Z) | field*
    field  = tag:u8 | len | value         (tags ascending; unknown tags are skipped)
    len    = u8 (0..254)  |  0xFF u32be

Personal fields (call references, agents, callers' pseudonyms, who accessed what) never appear
in clear: they are encoded as fields themselves, then encrypted with AES-256-CTR under the key of
their retention class and period (``calls/2026-11``, ``access/2026-11``), and stored in one
*sealed* field, always last::

    sealed = kid_len:u8 | kid (ASCII) | kcv:4 | iv:16 | ciphertext        (tag 0xF0)

``kcv`` is a key check value, ``HMAC-SHA-256(key, "sampledrec/v1/kcv")[:4]``: a reader holding
the wrong key for ``kid`` (a keyring restored from elsewhere) sees the fields as unreadable
instead of decrypting garbage.

Integrity comes from the Merkle tree and the signed checkpoints, which cover the ciphertext;
destroying a period's key erases its fields while every entry's hash stays verifiable.
``docs/log-format.md`` is the full specification, written for auditors.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "FORMAT_VERSION",
    "T_ACCESS",
    "T_CHECKPOINT",
    "T_DECISION",
    "T_ERASURE",
    "T_EXPIRED",
    "T_HOLD",
    "T_KEY_COMMIT",
    "T_KEY_DESTROYED",
    "T_KEY_REVEAL",
    "T_LOG_CREATED",
    "T_POLICY",
    "T_RECORDING_ABORTED",
    "T_RECORDING_OPENED",
    "T_RECORDING_SEALED",
    "T_RECORD_REFUSED",
    "T_SUBJECT_REQUEST",
    "Entry",
    "decode_entry",
    "encode_fields",
    "from_micros",
    "to_micros",
]

FORMAT_VERSION: Final = 1

T_LOG_CREATED: Final = 0x01
T_KEY_COMMIT: Final = 0x02
T_KEY_REVEAL: Final = 0x03
T_POLICY: Final = 0x04
T_DECISION: Final = 0x05
T_CHECKPOINT: Final = 0x06
T_RECORDING_OPENED: Final = 0x10
T_RECORDING_SEALED: Final = 0x11
T_RECORDING_ABORTED: Final = 0x12
T_RECORD_REFUSED: Final = 0x13
T_ACCESS: Final = 0x14
T_EXPIRED: Final = 0x15
T_HOLD: Final = 0x16
T_ERASURE: Final = 0x17
T_SUBJECT_REQUEST: Final = 0x18
T_KEY_DESTROYED: Final = 0x19

TYPE_NAMES: Final = {
    T_LOG_CREATED: "log_created",
    T_KEY_COMMIT: "key_commit",
    T_KEY_REVEAL: "key_reveal",
    T_POLICY: "policy",
    T_DECISION: "decision",
    T_CHECKPOINT: "checkpoint",
    T_RECORDING_OPENED: "recording_opened",
    T_RECORDING_SEALED: "recording_sealed",
    T_RECORDING_ABORTED: "recording_aborted",
    T_RECORD_REFUSED: "record_refused",
    T_ACCESS: "access",
    T_EXPIRED: "expired",
    T_HOLD: "hold",
    T_ERASURE: "erasure",
    T_SUBJECT_REQUEST: "subject_request",
    T_KEY_DESTROYED: "key_destroyed",
}

TAG_SEALED: Final = 0xF0

# Field tags per entry type: tag -> (name, kind). Kinds: str (UTF-8), bytes, uint (big-endian,
# minimal length), bool (one byte), ref (a call reference: 0x00 + bytes, or 0x01 + UTF-8 text).
FIELDS: Final[dict[int, dict[int, tuple[str, str]]]] = {
    T_LOG_CREATED: {
        0x01: ("origin", "str"),
        0x02: ("store_id", "bytes"),
        0x03: ("public_key", "bytes"),
        0x04: ("simulated", "bool"),
        0x05: ("software", "str"),
    },
    T_KEY_COMMIT: {0x01: ("epoch_id", "str"), 0x02: ("commitment", "bytes")},
    T_KEY_REVEAL: {
        0x01: ("epoch_id", "str"),
        0x02: ("commitment", "bytes"),
        0x20: ("principal", "str"),
    },
    T_POLICY: {
        0x01: ("version", "bytes"),
        0x02: ("effective_at", "uint"),
        0x03: ("canonical", "bytes"),
        0x20: ("principal", "str"),
    },
    T_DECISION: {
        0x01: ("epoch_id", "str"),
        0x02: ("policy_version", "bytes"),
        0x03: ("rule", "str"),
        0x04: ("threshold", "uint"),
        0x05: ("draw", "uint"),
        0x06: ("reason", "uint"),
        0x20: ("call_ref", "ref"),
        0x21: ("agent", "str"),
        0x22: ("caller_pseudonym", "bytes"),
    },
    T_CHECKPOINT: {0x01: ("size", "uint"), 0x02: ("root", "bytes")},
    T_RECORDING_OPENED: {
        0x01: ("recording_id", "str"),
        0x02: ("decision_index", "uint"),
        0x03: ("bucket", "str"),
        0x04: ("expires_at", "uint"),
        0x05: ("rule", "str"),
        0x06: ("policy_version", "bytes"),
        0x20: ("call_ref", "ref"),
    },
    T_RECORDING_SEALED: {
        0x01: ("recording_id", "str"),
        0x02: ("ciphertext_sha256", "bytes"),
        0x03: ("duration_ms", "uint"),
        0x04: ("plaintext_bytes", "uint"),
        0x05: ("truncated", "bool"),
        0x06: ("pauses", "str"),
    },
    T_RECORDING_ABORTED: {0x01: ("recording_id", "str"), 0x02: ("reason", "str")},
    T_RECORD_REFUSED: {
        0x01: ("reason", "str"),
        0x02: ("decision_index", "uint"),
        0x20: ("call_ref", "ref"),
        0x21: ("principal", "str"),
    },
    T_ACCESS: {
        0x01: ("action", "str"),
        0x02: ("outcome", "str"),
        0x20: ("principal", "str"),
        0x21: ("recording_id", "str"),
        0x22: ("detail", "str"),
    },
    # A tombstone: the recording expired, its file is gone and its personal fields removed.
    T_EXPIRED: {
        0x01: ("recording_id", "str"),
        0x02: ("bucket", "str"),
        0x03: ("expires_at", "uint"),
    },
    T_HOLD: {
        0x01: ("hold_id", "str"),
        0x02: ("action", "str"),  # placed | released
        0x03: ("recordings", "uint"),
        0x04: ("until", "uint"),
        0x20: ("reason", "str"),
        0x21: ("principal", "str"),
    },
    T_ERASURE: {
        0x01: ("recording_id", "str"),
        0x02: ("outcome", "str"),  # erased | deferred
        0x03: ("request_id", "str"),
        0x04: ("reason", "str"),
    },
    T_SUBJECT_REQUEST: {
        0x01: ("request_id", "str"),
        0x02: ("kind", "str"),  # export | erase
        0x03: ("received_at", "uint"),
        0x04: ("status", "str"),
        0x20: ("caller_pseudonym", "bytes"),
        0x21: ("principal", "str"),
    },
    T_KEY_DESTROYED: {0x01: ("key", "str"), 0x02: ("reason", "str")},
}

REASON_CODES: Final = ("sampled", "not_sampled", "objection", "cap_reached")
_HEADER = struct.Struct(">BBQ")
_U32 = struct.Struct(">I")


def to_micros(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def field_bytes(tag: int, value: bytes) -> bytes:
    """One encoded field."""
    n = len(value)
    if n < 0xFF:
        return bytes((tag, n)) + value
    return bytes((tag, 0xFF)) + _U32.pack(n) + value


def _value(kind: str, value: Any) -> bytes:
    if kind == "str":
        return str(value).encode("utf-8")
    if kind == "bytes":
        return bytes(value)
    if kind == "uint":
        v = int(value)
        return v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")
    if kind == "bool":
        return b"\x01" if value else b"\x00"
    if kind == "ref":
        return b"\x01" + value.encode("utf-8") if isinstance(value, str) else b"\x00" + value
    raise ValueError(kind)


def _parse_value(kind: str, raw: bytes) -> Any:
    if kind == "str":
        return raw.decode("utf-8")
    if kind == "uint":
        return int.from_bytes(raw, "big")
    if kind == "bool":
        return raw != b"\x00"
    if kind == "ref":
        return raw[1:].decode("utf-8") if raw[:1] == b"\x01" else raw[1:]
    return raw


def encode_fields(entry_type: int, values: Mapping[str, Any]) -> bytes:
    """Encode named fields of an entry type, in tag order (``None`` values are left out)."""
    spec = FIELDS[entry_type]
    out = []
    for tag in sorted(spec):
        name, kind = spec[tag]
        value = values.get(name)
        if value is not None:
            out.append(field_bytes(tag, _value(kind, value)))
    return b"".join(out)


def header(entry_type: int, time_us: int) -> bytes:
    return _HEADER.pack(FORMAT_VERSION, entry_type, time_us)


def iter_fields(data: bytes | memoryview, pos: int = 0) -> list[tuple[int, bytes]]:
    """Split an encoded field list; raises ValueError if it is malformed."""
    out = []
    end = len(data)
    while pos < end:
        if pos + 2 > end:
            raise ValueError("truncated field header")
        tag, n = data[pos], data[pos + 1]
        pos += 2
        if n == 0xFF:
            if pos + 4 > end:
                raise ValueError("truncated field length")
            (n,) = _U32.unpack_from(data, pos)
            pos += 4
        if pos + n > end:
            raise ValueError(f"field 0x{tag:02x} runs past the end of the entry")
        out.append((tag, bytes(data[pos : pos + n])))
        pos += n
    return out


@dataclass
class Entry:
    """A decoded entry. ``fields`` holds public fields, and personal fields once unsealed."""

    index: int
    type: int
    time_us: int
    fields: dict[str, Any] = field(default_factory=dict)
    kid: str | None = None
    sealed: bool = False  # personal fields present but not readable (key erased or not given)
    raw: bytes = b""

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, f"unknown-0x{self.type:02x}")

    @property
    def time(self) -> datetime:
        return from_micros(self.time_us)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"index": self.index, "type": self.type_name}
        doc["time"] = self.time.isoformat()
        for name, value in self.fields.items():
            if isinstance(value, bytes):
                doc[name if name != "call_ref" else "call_ref_hex"] = value.hex()
            elif isinstance(value, int) and value > 2**53:
                doc[name] = str(value)
            elif name == "reason" and isinstance(value, int) and value < len(REASON_CODES):
                doc[name] = REASON_CODES[value]
            elif name in ("threshold", "draw"):
                doc[name] = str(value)
            else:
                doc[name] = value
        if self.kid is not None:
            doc["sealed_under"] = self.kid
            if self.sealed:
                doc["personal_fields"] = "unreadable (key erased or not available)"
        return doc


def decode_entry(index: int, data: bytes, unseal: Any | None = None) -> Entry:
    """Decode one entry. ``unseal(kid, kcv, iv, ciphertext) -> bytes | None`` opens sealed
    fields (``None``: the key is gone or is not the one the fields were sealed with)."""
    if len(data) < _HEADER.size:
        raise ValueError("entry shorter than its header")
    version, etype, time_us = _HEADER.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        raise ValueError(f"entry format version {version} is not supported")
    entry = Entry(index=index, type=etype, time_us=time_us, raw=data)
    spec = FIELDS.get(etype, {})
    last = -1
    for tag, raw in iter_fields(data, _HEADER.size):
        if tag <= last:
            raise ValueError(f"field 0x{tag:02x} out of order")
        last = tag
        if tag == TAG_SEALED:
            if not raw:
                raise ValueError("empty sealed field")
            klen = raw[0]
            if len(raw) < 1 + klen + 20:
                raise ValueError("truncated sealed field")
            entry.kid = raw[1 : 1 + klen].decode("ascii", "replace")
            kcv = raw[1 + klen : 5 + klen]
            iv = raw[5 + klen : 21 + klen]
            plain = unseal(entry.kid, kcv, iv, raw[21 + klen :]) if unseal is not None else None
            try:
                personal = iter_fields(plain) if plain is not None else None
            except ValueError:
                personal = None  # cannot happen with the right key: treat as unreadable
            if personal is None:
                entry.sealed = True
                continue
            for ptag, praw in personal:
                # Only personal tags: sealed bytes never stand in for a public field.
                if ptag in spec and ptag >= PERSONAL_TAG_MIN:
                    name, kind = spec[ptag]
                    entry.fields[name] = _parse_value(kind, praw)
            continue
        if tag in spec:
            name, kind = spec[tag]
            entry.fields[name] = _parse_value(kind, raw)
    return entry


def key_check_value(key: bytes) -> bytes:
    """The 4-byte check value of a sealing key, stored with every sealed field."""
    return hmac.new(key, b"sampledrec/v1/kcv", hashlib.sha256).digest()[:4]


def sealed_field(kid: str, kcv: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    kid_b = kid.encode("ascii")
    return field_bytes(TAG_SEALED, bytes((len(kid_b),)) + kid_b + kcv + iv + ciphertext)


PERSONAL_TAG_MIN: Final = 0x20  # tags 0x20..0xEF are personal: they go in the sealed field


def split_personal(entry_type: int, values: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """Encode ``values`` into (public fields, personal plaintext fields)."""
    spec = FIELDS[entry_type]
    public: list[bytes] = []
    personal: list[bytes] = []
    for tag in sorted(spec):
        name, kind = spec[tag]
        value = values.get(name)
        if value is None:
            continue
        (personal if tag >= PERSONAL_TAG_MIN else public).append(
            field_bytes(tag, _value(kind, value))
        )
    return b"".join(public), b"".join(personal)
