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
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

from ..sampling.record import REASONS

__all__ = [
    "DECISION",
    "ENTRY_HEADER",
    "FIELDS",
    "FORMAT_VERSION",
    "SEALING_CLASS",
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
    "T_LOG_GAP",
    "T_OBJECTION",
    "T_POLICY",
    "T_RECORDING_ABORTED",
    "T_RECORDING_OPENED",
    "T_RECORDING_SEALED",
    "T_RECORD_REFUSED",
    "T_SUBJECT_REQUEST",
    "DecisionFields",
    "Entry",
    "Field",
    "decision_layout",
    "decode_entry",
    "encode_fields",
    "from_micros",
    "hold_recording_ids",
    "parse_hold_recording_ids",
    "sealing_class",
    "to_micros",
]

FORMAT_VERSION: Final = 1

T_LOG_CREATED: Final = 0x01
T_KEY_COMMIT: Final = 0x02
T_KEY_REVEAL: Final = 0x03
T_POLICY: Final = 0x04
T_DECISION: Final = 0x05
T_CHECKPOINT: Final = 0x06
T_LOG_GAP: Final = 0x07
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
T_OBJECTION: Final = 0x1A

# The retention class whose key seals an entry type's personal fields (docs/log-format.md §6):
# ``calls`` holds exactly what an auditor needs to recompute decisions (the auditor's kit
# reveals those keys), ``access`` everything about who did what. Types not listed: ``access``.
SEALING_CLASS: Final = {
    T_DECISION: "calls",
    T_RECORDING_OPENED: "calls",
    # the caller's pseudonym: the auditor replays the objection list with the calls keys
    T_OBJECTION: "calls",
}


def sealing_class(etype: int) -> str:
    """The retention class (``calls`` or ``access``) that seals ``etype``'s personal fields."""
    return SEALING_CLASS.get(etype, "access")


TYPE_NAMES: Final = {
    T_LOG_CREATED: "log_created",
    T_KEY_COMMIT: "key_commit",
    T_KEY_REVEAL: "key_reveal",
    T_POLICY: "policy",
    T_DECISION: "decision",
    T_CHECKPOINT: "checkpoint",
    T_LOG_GAP: "log_gap",
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
    T_OBJECTION: "objection",
}

TAG_SEALED: Final = 0xF0
PERSONAL_TAG_MIN: Final = 0x20  # tags 0x20..0xEF are personal: they go in the sealed field
KCV_SIZE: Final = 4  # the sealed field's key check value
IV_SIZE: Final = 16  # the sealed field's AES-CTR initial counter block
REF_BYTES: Final = 0x00  # a ``ref`` value's first byte: the reference was given as bytes,
REF_TEXT: Final = 0x01  # or as text (its UTF-8 follows)

Kind = Literal["str", "bytes", "uint", "bool", "ref"]


class Field(NamedTuple):
    """One field of an entry type: its tag, its name in :attr:`Entry.fields`, its kind and,
    where it is fixed, the length of its value.

    Kinds: str (UTF-8), bytes, uint (big-endian, minimal length), bool (one byte), ref (a call
    reference: ``REF_BYTES`` + bytes, or ``REF_TEXT`` + UTF-8 text). ``size`` (0: any): the
    length of every value the writer puts in a decision (a ``uint`` with a size is written in
    exactly that many bytes); the verifier relies on it to find a decision's epoch and policy at
    fixed offsets. Readers accept any length.
    """

    tag: int
    name: str
    kind: Kind
    size: int = 0

    @property
    def personal(self) -> bool:
        """Personal fields never appear in clear: they are sealed (section 6 of the spec)."""
        return self.tag >= PERSONAL_TAG_MIN


class DecisionFields(NamedTuple):
    """The fields of a decision entry, in tag order (see :data:`DECISION`)."""

    epoch_id: Field
    policy_version: Field
    rule: Field
    threshold: Field
    draw: Field
    reason: Field
    call_ref: Field
    agent: Field
    caller_pseudonym: Field
    attributes: Field


#: The layout of a decision entry (type ``T_DECISION``), defined here only: the writer
#: (``writer._decision_fields``), :func:`decode_entry`, the verifier's probe and, through
#: ``_decisionlayout.h``, the C accelerator follow it (``hashing`` refuses an accelerator built
#: with another layout: see :func:`decision_layout`).
DECISION: Final = DecisionFields(
    epoch_id=Field(0x01, "epoch_id", "str", 10),  # YYYY-MM-DD
    policy_version=Field(0x02, "policy_version", "bytes", 32),  # the policy's SHA-256 id
    rule=Field(0x03, "rule", "str"),
    threshold=Field(0x04, "threshold", "uint", 8),  # T(1) = 2**56 needs 8 bytes
    draw=Field(0x05, "draw", "uint", 7),  # 56 bits
    reason=Field(0x06, "reason", "uint", 1),  # an index into sampling.record.REASONS
    call_ref=Field(0x20, "call_ref", "ref"),
    agent=Field(0x21, "agent", "str"),
    caller_pseudonym=Field(0x22, "caller_pseudonym", "bytes", 32),  # HMAC-SHA-256
    # The call's attributes that the policy's rules name, as compact JSON with sorted keys
    # (``Policy.attributes_json``): the audit recomputes which rule applied.
    attributes=Field(0x23, "attributes", "str"),
)


def _by_tag(*fields: Field) -> dict[int, Field]:
    return {f.tag: f for f in fields}


# The fields of every entry type, by tag.
FIELDS: Final[dict[int, dict[int, Field]]] = {
    T_LOG_CREATED: _by_tag(
        Field(0x01, "origin", "str"),
        Field(0x02, "store_id", "bytes"),
        Field(0x03, "public_key", "bytes"),
        Field(0x04, "simulated", "bool"),
        Field(0x05, "software", "str"),
    ),
    T_KEY_COMMIT: _by_tag(Field(0x01, "epoch_id", "str"), Field(0x02, "commitment", "bytes")),
    T_KEY_REVEAL: _by_tag(
        Field(0x01, "epoch_id", "str"),
        Field(0x02, "commitment", "bytes"),
        Field(0x20, "principal", "str"),
    ),
    T_POLICY: _by_tag(
        Field(0x01, "version", "bytes"),
        Field(0x02, "effective_at", "uint"),
        Field(0x03, "canonical", "bytes"),
        Field(0x20, "principal", "str"),
    ),
    T_DECISION: _by_tag(*DECISION),
    T_CHECKPOINT: _by_tag(Field(0x01, "size", "uint"), Field(0x02, "root", "bytes")),
    # A repair cut the log back to its last good batch: what was lost, and where it was kept.
    T_LOG_GAP: _by_tag(
        Field(0x01, "lost_from", "uint"),  # the first entry index lost: this entry's own
        Field(0x02, "lost_to", "uint"),  # one past the last index the set-aside bytes show
        Field(0x03, "damage", "str"),  # the first damaged point, and what was wrong there
        Field(0x04, "set_aside_bytes", "uint"),
        Field(0x05, "set_aside_sha256", "bytes"),  # of the pieces, concatenated in order
        Field(0x06, "set_aside", "str"),  # JSON: [{name, offset, bytes, sha256, kept_at}]
        Field(0x07, "checkpoints_set_aside", "uint"),  # whole checkpoint records set aside
        Field(0x08, "reason", "str"),
        Field(0x09, "restored", "uint"),  # entries re-logged right after this one
        Field(0x20, "principal", "str"),  # who repaired (personal, "access")
    ),
    T_RECORDING_OPENED: _by_tag(
        Field(0x01, "recording_id", "str"),
        Field(0x02, "decision_index", "uint"),
        Field(0x03, "bucket", "str"),
        Field(0x04, "expires_at", "uint"),
        Field(0x05, "rule", "str"),
        Field(0x06, "policy_version", "bytes"),
        Field(0x20, "call_ref", "ref"),
    ),
    T_RECORDING_SEALED: _by_tag(
        Field(0x01, "recording_id", "str"),
        Field(0x02, "ciphertext_sha256", "bytes"),
        Field(0x03, "duration_ms", "uint"),
        Field(0x04, "plaintext_bytes", "uint"),
        Field(0x05, "truncated", "bool"),
        Field(0x06, "pauses", "str"),
    ),
    T_RECORDING_ABORTED: _by_tag(Field(0x01, "recording_id", "str"), Field(0x02, "reason", "str")),
    T_RECORD_REFUSED: _by_tag(
        Field(0x01, "reason", "str"),
        Field(0x02, "decision_index", "uint"),
        Field(0x20, "call_ref", "ref"),
        Field(0x21, "principal", "str"),
    ),
    T_ACCESS: _by_tag(
        Field(0x01, "action", "str"),
        Field(0x02, "outcome", "str"),
        Field(0x20, "principal", "str"),
        Field(0x21, "recording_id", "str"),
        Field(0x22, "detail", "str"),
    ),
    # A tombstone: the recording expired, its file is gone and its personal fields removed.
    T_EXPIRED: _by_tag(
        Field(0x01, "recording_id", "str"),
        Field(0x02, "bucket", "str"),
        Field(0x03, "expires_at", "uint"),
    ),
    T_HOLD: _by_tag(
        Field(0x01, "hold_id", "str"),
        Field(0x02, "action", "str"),  # placed | released
        Field(0x03, "recordings", "uint"),
        Field(0x04, "until", "uint"),
        # JSON: the sorted list of the ids of the recordings held (placed) or let go
        # (released), compact (no spaces); absent from entries logged before it existed.
        Field(0x05, "recording_ids", "str"),
        Field(0x20, "reason", "str"),
        Field(0x21, "principal", "str"),
    ),
    T_ERASURE: _by_tag(
        Field(0x01, "recording_id", "str"),
        Field(0x02, "outcome", "str"),  # erased | deferred
        Field(0x03, "request_id", "str"),
        Field(0x04, "reason", "str"),
    ),
    T_SUBJECT_REQUEST: _by_tag(
        Field(0x01, "request_id", "str"),
        Field(0x02, "kind", "str"),  # export | erase
        Field(0x03, "received_at", "uint"),
        Field(0x04, "status", "str"),
        # Present once per request: in the entry that records how the requester's identity
        # was verified (by ``principal``, at the entry's time). Never an ID document's number.
        Field(0x05, "identity_method", "str"),
        Field(0x20, "caller_pseudonym", "bytes"),
        Field(0x21, "principal", "str"),
        Field(0x22, "identity_note", "str"),
    ),
    T_KEY_DESTROYED: _by_tag(Field(0x01, "key", "str"), Field(0x02, "reason", "str")),
    # One caller added to or removed from the objection list (docs/decisions/0018), or kept
    # on it: the whole list logged again before a sweep destroys a calls/ key.
    T_OBJECTION: _by_tag(
        Field(0x01, "action", "str"),  # added | removed | kept
        # true: on the list before its changes were logged (logged once, by the migration)
        Field(0x02, "migrated", "bool"),
        Field(0x03, "listed", "uint"),  # kept: how many callers the list holds (each entry)
        Field(0x20, "caller_pseudonym", "bytes"),  # 32 bytes, as in a decision
    ),
}

#: Every entry's header: format version, type, time (µs since 1970).
ENTRY_HEADER: Final = struct.Struct(">BBQ")
_U32 = struct.Struct(">I")
_REF_BYTES: Final = bytes((REF_BYTES,))
_REF_TEXT: Final = bytes((REF_TEXT,))


def hold_recording_ids(ids: Iterable[str]) -> str:
    """The ``recording_ids`` value of a ``hold`` entry: the ids, sorted and without repeats,
    as a compact JSON list of strings (``["a","b"]``)."""
    return json.dumps(sorted(set(ids)), separators=(",", ":"))


def parse_hold_recording_ids(value: object) -> list[str] | None:
    """The ids a ``hold`` entry's ``recording_ids`` names, or None if it is not a JSON list of
    strings (absent: an entry logged before the field existed)."""
    if not isinstance(value, str):
        return None
    try:
        ids = json.loads(value)
    except ValueError:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return None
    return ids


def decision_layout() -> dict[str, Any]:
    """The decision layout in the form ``_merklefast.decision_layout()`` reports the one the C
    accelerator was compiled with (``_decisionlayout.h``): the C code cannot read
    :data:`DECISION`, so the two are compared instead (``hashing`` at import, and the tests)."""
    return {
        "format_version": FORMAT_VERSION,
        "header_size": ENTRY_HEADER.size,
        "entry_type": T_DECISION,
        "tags": {f.name: f.tag for f in DECISION} | {"sealed": TAG_SEALED},
        "draw_size": DECISION.draw.size,
        "ref_bytes": REF_BYTES,
        "ref_text": REF_TEXT,
        "kcv_size": KCV_SIZE,
        "iv_size": IV_SIZE,
    }


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


def _value(kind: Kind, value: Any) -> bytes:
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
        return ref_value(value)
    raise ValueError(kind)


def ref_value(ref: str | bytes) -> bytes:
    """A call reference as a ``ref`` value: its kind byte, then its bytes."""
    return _REF_TEXT + ref.encode("utf-8") if isinstance(ref, str) else _REF_BYTES + ref


def _parse_value(kind: Kind, raw: bytes) -> Any:
    if kind == "str":
        return raw.decode("utf-8")
    if kind == "uint":
        return int.from_bytes(raw, "big")
    if kind == "bool":
        return raw != b"\x00"
    if kind == "ref":
        return raw[1:].decode("utf-8") if raw[:1] == _REF_TEXT else raw[1:]
    return raw


def encode_fields(entry_type: int, values: Mapping[str, Any]) -> bytes:
    """Encode named fields of an entry type, in tag order (``None`` values are left out)."""
    spec = FIELDS[entry_type]
    out = []
    for tag in sorted(spec):
        f = spec[tag]
        value = values.get(f.name)
        if value is not None:
            out.append(field_bytes(tag, _value(f.kind, value)))
    return b"".join(out)


def header(entry_type: int, time_us: int) -> bytes:
    return ENTRY_HEADER.pack(FORMAT_VERSION, entry_type, time_us)


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
        """A JSON-ready dict: times as ISO 8601 UTC strings (as every ``--json`` output),
        56-bit integers as decimal strings, bytes as hex."""
        doc: dict[str, Any] = {"index": self.index, "type": self.type_name}
        doc["time"] = self.time.isoformat()
        for name, value in self.fields.items():
            if name in TIME_FIELDS and isinstance(value, int):
                doc[name] = _iso_or_none(value)
            elif isinstance(value, bytes):
                doc[name if name != "call_ref" else "call_ref_hex"] = value.hex()
            elif isinstance(value, int) and value > 2**53:
                doc[name] = str(value)
            elif name == "reason" and isinstance(value, int) and value < len(REASONS):
                doc[name] = REASONS[value]
            elif name in ("threshold", "draw"):
                doc[name] = str(value)
            else:
                doc[name] = value
        if self.kid is not None:
            doc["sealed_under"] = self.kid
            if self.sealed:
                doc["personal_fields"] = "unreadable (key erased or not available)"
        return doc


#: Fields that hold a time, in µs since 1970 (UTC).
TIME_FIELDS: Final = frozenset({"effective_at", "expires_at", "until", "received_at"})


def _iso_or_none(us: int) -> str | None:
    """ISO 8601 of a time field; None for a time past any calendar (a hold without an end)."""
    try:
        return from_micros(us).isoformat()
    except (OverflowError, ValueError, OSError):
        return None


def decode_entry(index: int, data: bytes, unseal: Any | None = None) -> Entry:
    """Decode one entry. ``unseal(kid, kcv, iv, ciphertext) -> bytes | None`` opens sealed
    fields (``None``: the key is gone or is not the one the fields were sealed with)."""
    if len(data) < ENTRY_HEADER.size:
        raise ValueError("entry shorter than its header")
    version, etype, time_us = ENTRY_HEADER.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        raise ValueError(f"entry format version {version} is not supported")
    entry = Entry(index=index, type=etype, time_us=time_us, raw=data)
    spec = FIELDS.get(etype, {})
    last = -1
    for tag, raw in iter_fields(data, ENTRY_HEADER.size):
        if tag <= last:
            raise ValueError(f"field 0x{tag:02x} out of order")
        last = tag
        if tag == TAG_SEALED:
            if not raw:
                raise ValueError("empty sealed field")
            klen = raw[0]
            kcv_at = 1 + klen
            iv_at = kcv_at + KCV_SIZE
            ct_at = iv_at + IV_SIZE
            if len(raw) < ct_at:
                raise ValueError("truncated sealed field")
            entry.kid = raw[1:kcv_at].decode("ascii", "replace")
            kcv, iv = raw[kcv_at:iv_at], raw[iv_at:ct_at]
            plain = unseal(entry.kid, kcv, iv, raw[ct_at:]) if unseal is not None else None
            try:
                personal = iter_fields(plain) if plain is not None else None
            except ValueError:
                personal = None  # cannot happen with the right key: treat as unreadable
            if personal is None:
                entry.sealed = True
                continue
            for ptag, praw in personal:
                # Only personal tags: sealed bytes never stand in for a public field.
                pf = spec.get(ptag)
                if pf is not None and pf.personal:
                    entry.fields[pf.name] = _parse_value(pf.kind, praw)
            continue
        f = spec.get(tag)
        if f is not None:
            entry.fields[f.name] = _parse_value(f.kind, raw)
    return entry


def key_check_value(key: bytes) -> bytes:
    """The 4-byte check value of a sealing key, stored with every sealed field."""
    return hmac.new(key, b"sampledrec/v1/kcv", hashlib.sha256).digest()[:4]


def sealed_field(kid: str, kcv: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    kid_b = kid.encode("ascii")
    return field_bytes(TAG_SEALED, bytes((len(kid_b),)) + kid_b + kcv + iv + ciphertext)


def split_personal(entry_type: int, values: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """Encode ``values`` into (public fields, personal plaintext fields)."""
    spec = FIELDS[entry_type]
    public: list[bytes] = []
    personal: list[bytes] = []
    for tag in sorted(spec):
        f = spec[tag]
        value = values.get(f.name)
        if value is None:
            continue
        (personal if f.personal else public).append(field_bytes(tag, _value(f.kind, value)))
    return b"".join(public), b"".join(personal)
