"""Review notes: a short text a reviewer writes about a recording, kept sealed and kept no
longer than the recording.

A note is sealed with AES-256-GCM under a key derived from the recording's own data key
(HKDF-SHA-256, info ``sampledrec/v1/review-note`` || 0x00 || recording id), with the note's id,
its recording's id and its time as associated data; the author and the text are inside. The
catalog keeps only the sealed bytes (:class:`~sampledrec.vault.catalog.SealedNote`), so:

- a copy of the catalog (or of a backup) shows no note, and nothing is written in clear;
- a note is readable exactly when its recording is: the data key that opens it is unwrapped by
  the recording's expiry bucket (or a legal hold), and reads are refused from expiry on;
- when the recording expires or is erased its notes are deleted with it
  (:meth:`Catalog.delete_notes <sampledrec.vault.catalog.Catalog.delete_notes>`, called by the
  sweep and by a data-subject erasure); were a row left behind, destroying the data key
  crypto-shreds it all the same.

Reading and writing go through :meth:`Vault.write_note <sampledrec.vault.Vault.write_note>` and
:meth:`Vault.notes <sampledrec.vault.Vault.notes>`, which check the ``listen`` permission on the
recording (a note says what the call was about: those who may hear the call may read it) and
log each write and read (action ``review_note``) with its outcome, never the text.
"""

from __future__ import annotations

import json
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import InvalidArgument, InvalidRecording
from ..log.format import from_micros
from .catalog import SealedNote

__all__ = ["MAX_NOTE_CHARS", "ReviewNote", "check_note_text", "open_note", "seal_note"]

#: The longest note, in characters: a review note is a few sentences, not a transcript.
MAX_NOTE_CHARS: Final = 2000
_INFO: Final = b"sampledrec/v1/review-note\x00"
_VERSION: Final = 0x01
_NONCE: Final = 12


@dataclass(frozen=True)
class ReviewNote:
    """A review note, opened: who wrote it, when, and what."""

    note_id: str
    recording_id: str
    author: str
    created_at: datetime
    text: str

    def __repr__(self) -> str:
        return f"ReviewNote({self.note_id!r}, recording {self.recording_id!r}, by {self.author!r})"

    def to_json(self) -> dict[str, str]:
        return {
            "note_id": self.note_id,
            "recording_id": self.recording_id,
            "author": self.author,
            "created_at": self.created_at.isoformat(),
            "text": self.text,
        }


def check_note_text(text: object) -> str:
    """The note's text, normalised (NFC, surrounding blanks removed); InvalidArgument when it
    is empty, too long or holds control characters other than line breaks and tabs."""
    if not isinstance(text, str):
        raise InvalidArgument("a review note is text")
    clean = unicodedata.normalize("NFC", text.replace("\r\n", "\n")).strip()
    if not clean:
        raise InvalidArgument("the review note is empty; write what you noticed in the call")
    if len(clean) > MAX_NOTE_CHARS:
        raise InvalidArgument(
            f"the review note has {len(clean)} characters; keep it to {MAX_NOTE_CHARS} "
            "(a note is a short remark, not a transcript)"
        )
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in clean):
        raise InvalidArgument("the review note holds control characters; write plain text")
    return clean


def _key(data_key: bytes, recording_id: str) -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + recording_id.encode()
    ).derive(data_key)
    return AESGCM(derived)


def _ad(note_id: str, recording_id: str, created_at: int) -> bytes:
    return f"{note_id}\x00{recording_id}\x00{created_at}".encode()


def seal_note(
    data_key: bytes, recording_id: str, author: str, text: str, created_at: int
) -> SealedNote:
    """A new note (a fresh random id) sealed under ``data_key``, the recording's data key."""
    note_id = "note-" + secrets.token_hex(12)
    body = json.dumps({"author": author, "text": text}, ensure_ascii=False).encode("utf-8")
    nonce = secrets.token_bytes(_NONCE)
    box = _key(data_key, recording_id).encrypt(nonce, body, _ad(note_id, recording_id, created_at))
    return SealedNote(note_id, recording_id, created_at, bytes([_VERSION]) + nonce + box)


def open_note(data_key: bytes, note: SealedNote) -> ReviewNote:
    """The note ``note`` seals; the one opaque :class:`InvalidRecording` when it does not
    open (another recording's, altered, or a wrong key)."""
    raw = note.sealed
    try:
        if len(raw) < 1 + _NONCE + 16 or raw[0] != _VERSION:
            raise ValueError
        body = _key(data_key, note.recording_id).decrypt(
            raw[1 : 1 + _NONCE],
            raw[1 + _NONCE :],
            _ad(note.note_id, note.recording_id, note.created_at),
        )
        doc = json.loads(body.decode("utf-8"))
        author, text = doc["author"], doc["text"]
        if not isinstance(author, str) or not isinstance(text, str):
            raise ValueError
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise InvalidRecording("the recording cannot be read") from None
    return ReviewNote(note.note_id, note.recording_id, author, from_micros(note.created_at), text)
