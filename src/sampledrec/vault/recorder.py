"""The vault: recordings encrypted from their first byte, read back only by the rules.

:meth:`Vault.record` opens a :class:`Recorder` for a :class:`~sampledrec.Decision` to record
(a decision not to record raises :class:`~sampledrec.errors.NotSelected`, and the attempt is
logged). The recorder:

- draws a random data key, wraps it with the key of the recording's *expiry bucket* (the UTC day
  of its expiry) bound to the recording id and expiry, and stores the wrapped key in the catalog
  at once (status ``open``), so that a crash leaves a recording that can be recovered;
- keeps frames in memory until the decision's log entry is durable, then streams them through
  the recording container (:mod:`sampledrec.vault.container`) into the store's blob store
  (:mod:`sampledrec.vault.blobs`): nothing reaches storage before the
  decision does, and no plaintext ever does;
- masks card-payment pauses as silence of the same length, listed in the metadata;
- on ``close()`` seals the container, records its SHA-256 in the catalog and the log; on
  ``abort()`` (the caller objected) destroys what was written and its data key.

Reads (:meth:`Vault.open`, :meth:`Vault.export`, :meth:`Vault.read_range`) are refused from the
recording's effective expiry on, judged at :meth:`Vault.read_time` (an ``at=`` may look ahead of
the vault's clock, never back), authenticate the whole recording (or, for a range, the final
chunk and the chunks needed) before releasing anything, and are logged with their outcome.

Every entry point that reads or changes recordings acts for a :class:`Principal` and checks its
permission; no principal means the store's owner, and a bare name is refused
(:func:`as_principal`).

The catalog keeps, of a call's attributes, only those that the policy's rules and role scopes
name, and never a value that looks like a phone number (:func:`kept_attributes`;
``docs/decisions/0014-catalog-attributes.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NoReturn, Protocol, cast

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    AccessDenied,
    InvalidArgument,
    InvalidRecording,
    KeyDestroyed,
    NotSelected,
    RecordingExpired,
    RecordingNotFound,
)
from ..keys.keystore import KeyStore
from ..log.format import (
    T_ACCESS,
    T_RECORD_REFUSED,
    T_RECORDING_ABORTED,
    T_RECORDING_OPENED,
    T_RECORDING_SEALED,
    Entry,
    from_micros,
    to_micros,
)
from ..log.writer import iter_entries
from . import container as _container
from .access import OWNER, PERMISSIONS, Grant, Principal, Role, grant, granting_roles
from .audio import (
    WAV_HEADER_BYTES,
    AudioFormat,
    as_bytes,
    encode_wav,
    silence,
    to_pcm16,
    wav_header,
)
from .blobs import BlobStore, BlobWriter
from .catalog import Catalog, RecordingRow, Recovery
from .container import RecoveredPrefix, SealInfo, Source
from .notes import ReviewNote, check_note_text, open_note, seal_note
from .staging import StagedBlobs

if TYPE_CHECKING:
    from ..log.writer import DecisionLog
    from ..sampling.policy import Policy
    from ..sampling.sampler import Decision

__all__ = [
    "NOTE_ACTION",
    "Principal",
    "Recorder",
    "Recording",
    "Vault",
    "VaultStorage",
    "WavRange",
    "as_principal",
    "blob_name",
    "bucket_of",
    "hold_bucket",
    "kept_attributes",
    "looks_like_phone_number",
]

DEFAULT_CHUNK: Final = 64 * 1024
#: The action that logs review notes' writes and reads (:meth:`Vault.write_note`).
NOTE_ACTION: Final = "review_note"
_AAD_DOMAIN: Final = b"sampledrec/v1/data-key\x00"


def bucket_of(expires_at_us: int) -> str:
    """The expiry bucket of a recording: the UTC day that contains its expiry."""
    return "bucket-" + from_micros(expires_at_us).date().isoformat()


def blob_name(bucket: str, recording_id: str) -> str:
    """The name of a recording's sealed container in the blob store."""
    return f"{bucket}/{recording_id}.sdr"


def hold_bucket(hold_id: str) -> str:
    """The key-store name of a legal hold's key."""
    return "hold-" + hold_id


def data_key_aad(recording_id: str, expires_at_us: int) -> bytes:
    """What a wrapped data key is bound to: its recording and its expiry."""
    return _AAD_DOMAIN + recording_id.encode("ascii") + b"\x00" + expires_at_us.to_bytes(8, "big")


def as_principal(principal: object) -> Principal:
    """Who an entry point acts for: no principal (``None``) is a library caller acting as the
    store's owner (:meth:`Principal.owner`); a :class:`Principal` acts with its roles. Anything
    else is refused with :class:`InvalidArgument`, a bare name first of all: a name says nothing
    of the roles the host application gave that user, and a role is never guessed from it.

    >>> as_principal(None).roles
    ('owner',)
    >>> as_principal("quinn")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sampledrec.errors.InvalidArgument: principal='quinn' is a bare name: pass Principal(...
    """
    if principal is None:
        return Principal.owner()
    if isinstance(principal, Principal):
        return principal
    if isinstance(principal, str):
        raise InvalidArgument(
            f"principal={principal!r} is a bare name: pass Principal({principal!r}, roles) with "
            "the roles the host application gave that user (or no principal to act as the "
            "store's owner)"
        )
    raise InvalidArgument(
        f"principal={principal!r} is not a Principal: pass Principal(name, roles) with the "
        "roles the host application gave that user (or no principal to act as the store's "
        "owner)"
    )


# Seven digits or more, with separators allowed between them: every phone number in any usual
# form (the shortest national numbers have seven digits), and some dates and codes as well.
_PHONE_LIKE: Final = re.compile(r"\d(?:[\s.\-()/\u2010-\u2015]*\d){6,}")


def looks_like_phone_number(value: str) -> bool:
    """Whether an attribute value could be (or contain) a phone number: seven digits or more,
    whatever spaces, dots, dashes, slashes or parentheses separate them, in any script's
    digits. Meant to err on the side of privacy: dates and long codes look like one too.

    >>> [looks_like_phone_number(v) for v in ("+33 6 12 34 56 78", "06.12.34.56.78", "sales")]
    [True, True, False]
    """
    return _PHONE_LIKE.search(unicodedata.normalize("NFKC", value)) is not None


def kept_attributes(attrs: Mapping[str, str], policy: Policy) -> dict[str, str]:
    """What the catalog keeps of a call's attributes (``docs/decisions/0014``): those that a
    rule's ``match`` or a role's ``scope`` of ``policy`` names (what access scopes are judged
    by), and of those never a value that looks like a phone number
    (:func:`looks_like_phone_number`). Everything else the sampler used in memory only."""
    used = policy.attributes_used
    return {
        name: value
        for name, value in attrs.items()
        if name in used and not looks_like_phone_number(value)
    }


def _call_attrs(attrs: Mapping[str, object] | None) -> dict[str, str]:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise InvalidArgument(
            f"attrs={attrs!r} must be a mapping of call attributes, such as {{'queue': 'sales'}}"
        )
    out: dict[str, str] = {}
    for name, value in attrs.items():
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"attrs: attribute name {name!r} must be non-empty text")
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[name] = str(value)
        else:
            raise InvalidArgument(
                f"attrs[{name!r}] = {value!r}: attribute values are text, numbers or true/false"
            )
    return out


class VaultStorage(Protocol):
    """What a vault needs of its store: the policies (rules, retention and roles), and the
    storage backends (:class:`~sampledrec.Store` is one; a test may pass its own)."""

    @property
    def keystore(self) -> KeyStore: ...

    @property
    def blobs(self) -> BlobStore: ...

    def open_catalog(self) -> Catalog: ...

    def policy(self, at: datetime | None = None) -> Policy: ...

    def policy_version(self, version: str) -> Policy: ...

    def objection_pseudonyms(self) -> frozenset[str]:
        """The callers on the objection list (pseudonyms, hex), as saved now."""
        ...

    @property
    def simulated(self) -> bool:
        """Whether the store is simulated (``sampledrec demo``): its times may be replayed."""
        ...


@dataclass(frozen=True)
class Recording:
    """A recording read back: its catalog row, audio format and audio (never written to disk)."""

    row: RecordingRow
    format: AudioFormat
    audio: bytes

    def __repr__(self) -> str:
        fmt = self.format.to_text()
        return f"Recording({self.row.recording_id!r}, {fmt}, {len(self.audio)} bytes)"


@dataclass(frozen=True)
class WavRange:
    """Bytes ``[start, end)`` of a recording seen as the PCM16 WAV file that
    :meth:`Vault.export` writes (``total`` bytes long): what an HTTP range request answers."""

    start: int
    end: int
    total: int
    data: bytes = b""

    def __repr__(self) -> str:
        return f"WavRange({self.start}-{self.end} of {self.total})"


@contextlib.contextmanager
def new_export_file(path: Path) -> Iterator[BinaryIO]:
    """A new file for exported personal data: created 0600 (an existing file is refused with
    :class:`InvalidArgument`, never overwritten), flushed and fsynced when the block ends, and
    removed if it fails: a failed export leaves no file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidArgument(f"{path} exists; choose a new file to export to") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


class Vault:
    """Encrypted recordings of a store: record, list, read, export, recover."""

    def __init__(
        self,
        store: VaultStorage,
        log: DecisionLog,
        *,
        keystore: KeyStore | None = None,
        catalog: Catalog | None = None,
        blobs: BlobStore | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.log = log
        self.keystore = keystore if keystore is not None else store.keystore
        self.catalog = catalog if catalog is not None else store.open_catalog()
        self.blobs = blobs if blobs is not None else store.blobs
        self.clock = clock

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recording -------------------------------------------------------------------------------

    def record(
        self,
        decision: Decision,
        *,
        audio_format: AudioFormat,
        principal: Principal | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        attrs: Mapping[str, object] | None = None,
    ) -> Recorder:
        """Open a recorder for a decision to record; raises :class:`NotSelected` otherwise.

        ``attrs`` are the call's attributes (those given to ``decide``). The catalog keeps, as
        text, those that the policy's rules and role scopes name, where role scopes are
        matched against them (:mod:`sampledrec.access`), and never a value that looks like a
        phone number (:func:`kept_attributes`)."""
        call_attrs = _call_attrs(attrs)
        who = self.acting(principal, "record")
        # A caller added to the objection list since the call was decided is not recorded.
        objected = (
            decision.record
            and decision.caller_pseudonym is not None
            and decision.caller_pseudonym in self.store.objection_pseudonyms()
        )
        if not decision.record or objected:
            why = "the caller objected since the decision" if objected else decision.reason
            self.log.append(
                T_RECORD_REFUSED,
                {
                    "reason": f"not selected ({why})",
                    "call_ref": decision.call_ref,
                    "principal": who.name,
                },
                at=self.clock.now(),
            )
            raise NotSelected(
                f"call {decision.call_ref!r} was not selected for recording "
                f"({why}, rule {decision.rule!r}); store no audio for it"
            )
        if decision.log_ticket is None:
            raise InvalidArgument(
                "the decision was not logged: decide with a sampler that has this store's log "
                "(store.sampler(log=log)) before recording"
            )
        policy = self.store.policy_version(decision.policy_version)
        rule = policy.rule_named(decision.rule)
        started = self.clock.now()
        expires = rule.retention.expires_at(decision.decided_at)
        expires_us = to_micros(expires)
        recording_id = str(uuid.uuid4())
        bucket = bucket_of(expires_us)
        data_key = secrets.token_bytes(32)
        self.keystore.ensure_bucket(bucket)
        wrapped = self.keystore.wrap(bucket, data_key, aad=data_key_aad(recording_id, expires_us))
        ref = decision.call_ref
        row = RecordingRow(
            recording_id=recording_id,
            call_ref=ref if isinstance(ref, str) else "hex:" + ref.hex(),
            rule=decision.rule,
            purpose=decision.purpose,
            policy_version=decision.policy_version,
            epoch_id=decision.epoch_id,
            decision_index=-1,
            started_at=to_micros(started),
            expires_at_sealed=expires_us,
            expires_at=expires_us,
            bucket=bucket,
            wrapped_key=wrapped,
            audio_format=audio_format.to_text(),
            file=blob_name(bucket, recording_id),
            caller_pseudonym=decision.caller_pseudonym,
            agent=decision.agent,
            attrs=kept_attributes(call_attrs, policy),
            node=getattr(self.store, "node_name", None),
        )
        self.catalog.add(row)  # the wrapped key is in the catalog before any audio exists
        opened = self.log.append(
            T_RECORDING_OPENED,
            {
                "recording_id": recording_id,
                "bucket": bucket,
                "expires_at": expires_us,
                "rule": decision.rule,
                "policy_version": bytes.fromhex(decision.policy_version),
                "call_ref": ref,
            },
            at=started,
        )
        return Recorder(
            self, row, data_key, audio_format, decision.log_ticket, chunk_size, opened=opened
        )

    # -- reading ---------------------------------------------------------------------------------

    def recordings(self, *, principal: Principal | None = None) -> list[RecordingRow]:
        """The catalog rows that ``principal`` may list: those in the scope of a role of theirs
        with the ``list`` permission (metadata only; no audio). Logged as one access, with how
        many rows were shown; :class:`AccessDenied` if none of their roles may list."""
        who = self.acting(principal, "list")
        allowed = self._grant(who, "list", None, None)
        rows = self.catalog.find()
        if allowed.unrestricted:
            shown, detail = rows, f"{len(rows)} recordings"
        else:
            shown = [r for r in rows if self.in_scope(allowed, r)]
            detail = f"{len(shown)} of {len(rows)} recordings (scope)"
        self.log_access("list", "granted", who, None, detail)
        return shown

    def open(
        self,
        recording_id: str,
        principal: Principal | None = None,
        *,
        at: datetime | None = None,
    ) -> Recording:
        """The whole recording, authenticated before anything is returned. ``at``: read as of
        that time, which may be later than the vault's clock but never earlier
        (:meth:`read_time`)."""
        who = self.acting(principal, "listen", recording_id)
        with self._reading(recording_id, who, "listen", at) as (row, reader):
            audio = reader.read_all()
        self.log_access("listen", "granted", who, recording_id, None)
        return Recording(row, AudioFormat.from_text(row.audio_format), audio)

    def read_range(
        self,
        recording_id: str,
        start_ms: int,
        end_ms: int,
        principal: Principal | None = None,
        *,
        at: datetime | None = None,
    ) -> bytes:
        """Audio between two times (ms), decrypting only the chunks needed (after the final
        chunk is authenticated). ``at`` as for :meth:`open`."""
        if not 0 <= start_ms <= end_ms:
            raise InvalidArgument(f"range {start_ms}-{end_ms} ms: start must be <= end, both >= 0")
        who = self.acting(principal, "listen", recording_id)
        with self._reading(recording_id, who, "listen", at) as (row, reader):
            fmt = AudioFormat.from_text(row.audio_format)
            data = reader.read_range(fmt.bytes_per_ms(start_ms), fmt.bytes_per_ms(end_ms))
        self.log_access("listen", "granted", who, recording_id, f"{start_ms}-{end_ms} ms")
        return data

    def read_wav(
        self,
        recording_id: str,
        start: int,
        end: int | None,
        principal: Principal | None = None,
        *,
        at: datetime | None = None,
    ) -> WavRange:
        """Bytes ``[start, end)`` (``end`` None: to the end; clipped to the file) of the
        recording as the WAV file :meth:`export` would write, byte for byte, without building
        it: the header is synthesised and only the chunks that hold the range are decrypted,
        after the final chunk is authenticated. Nothing is written anywhere. Needs ``listen``;
        refused from expiry on; logged with the range, like :meth:`read_range`. A ``start``
        at or past the end gives an empty range (``start == end == total``)."""
        for name, value in (("start", start), ("end", end)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InvalidArgument(f"{name}={value!r} must be a byte offset, 0 or more")
        if end is not None and end < start:
            raise InvalidArgument(f"end={end} must not be less than start={start}")
        who = self.acting(principal, "listen", recording_id)
        with self._reading(recording_id, who, "listen", at) as (row, reader):
            fmt = AudioFormat.from_text(row.audio_format)
            frames = reader.plaintext_size() // fmt.bytes_per_frame
            pcm_frame = 2 * fmt.channels
            total = WAV_HEADER_BYTES + frames * pcm_frame
            stop = total if end is None else min(end, total)
            first = min(start, stop)
            parts = []
            if first < WAV_HEADER_BYTES:
                parts.append(wav_header(fmt.as_pcm16(), frames * pcm_frame)[first:stop])
            lo = max(first, WAV_HEADER_BYTES) - WAV_HEADER_BYTES
            hi = max(stop, WAV_HEADER_BYTES) - WAV_HEADER_BYTES
            if hi > lo:
                f0, f1 = lo // pcm_frame, -(-hi // pcm_frame)
                src = reader.read_range(f0 * fmt.bytes_per_frame, f1 * fmt.bytes_per_frame)
                pcm = to_pcm16(src, fmt)
                parts.append(pcm[lo - f0 * pcm_frame : hi - f0 * pcm_frame])
        data = b"".join(parts)
        detail = f"wav bytes {first}-{stop - 1}/{total}" if stop > first else f"wav -/{total}"
        self.log_access("listen", "granted", who, recording_id, detail)
        return WavRange(first, stop, total, data)

    def export(
        self,
        recording_id: str,
        out: str | os.PathLike[str],
        principal: Principal | None = None,
        *,
        at: datetime | None = None,
    ) -> Path:
        """Write the recording as a WAV file at ``out`` (and nowhere else), only after the
        whole recording has been authenticated; a failed export leaves no file. ``at`` as for
        :meth:`open`."""
        who = self.acting(principal, "export", recording_id)
        wav = self._export_wav(recording_id, who, at)
        path = Path(out)
        with new_export_file(path) as fh:
            fh.write(wav)
        self.log_access("export", "granted", who, recording_id, None)
        return path

    def export_wav(
        self,
        recording_id: str,
        principal: Principal | None = None,
        *,
        at: datetime | None = None,
    ) -> bytes:
        """The WAV file :meth:`export` would write, byte for byte, in memory and nowhere else
        (for answering it over HTTP): needs ``export``, refused from expiry on, the whole
        recording authenticated first; logged as an ``export`` with its outcome. ``at`` as for
        :meth:`open`."""
        who = self.acting(principal, "export", recording_id)
        wav = self._export_wav(recording_id, who, at)
        self.log_access("export", "granted", who, recording_id, "in memory")
        return wav

    def _export_wav(self, recording_id: str, who: Principal, at: datetime | None) -> bytes:
        with self._reading(recording_id, who, "export", at) as (row, reader):
            audio = reader.read_all()
        fmt = AudioFormat.from_text(row.audio_format)
        pcm_fmt = AudioFormat("pcm16", fmt.sample_rate, fmt.channels)
        return encode_wav(pcm_fmt, to_pcm16(audio, fmt))

    @contextlib.contextmanager
    def _reading(
        self, recording_id: str, who: Principal, action: str, at: datetime | None
    ) -> Iterator[tuple[RecordingRow, _container.ContainerReader]]:
        """The row and an authenticated reader of a recording ``who`` may ``action``; every
        refusal and failure is logged, including a chunk that fails to authenticate while the
        block reads. The blob stays open (ranged reads) until the block ends."""
        row, data_key = self._readable(recording_id, who, action, at)
        with contextlib.ExitStack() as stack:
            reader = None
            try:
                source = stack.enter_context(self.blobs.open(row.file))
                reader = self._container(row, source, data_key)
            except (OSError, InvalidRecording):
                pass
            if reader is None:
                self.log_access(action, "failed", who, recording_id, "damaged or missing")
                _unreadable()
            try:
                yield row, reader
            except InvalidRecording:
                self.log_access(action, "failed", who, recording_id, "damaged")
                raise

    def _readable(
        self,
        recording_id: str,
        who: Principal,
        permission: str,
        at: datetime | None,
        *,
        action: str | None = None,
    ) -> tuple[RecordingRow, bytes]:
        """The row and data key of a recording ``who`` may ``permission`` now: in scope,
        sealed, not expired, its key not destroyed. Each refusal is logged (as ``action``,
        default the permission) before it is raised."""
        action = action or permission
        now = self.read_time(at)
        allowed = self._grant(who, permission, recording_id, self._acting_time(at), action=action)
        row = self._row_in_scope(recording_id, who, permission, allowed, action=action)
        if row.status not in ("sealed", "truncated"):
            self.log_access(action, "denied", who, recording_id, f"status {row.status}")
            if row.status in ("expired", "erased", "aborted"):
                raise RecordingExpired(
                    f"recording {recording_id} is {row.status}: it can no longer be read"
                )
            raise InvalidArgument(
                f"recording {recording_id} is still {row.status}; read it once it is sealed "
                "(or run recovery after a crash)"
            )
        now_us = to_micros(now)
        if now_us >= row.expires_at or (
            now_us >= row.expires_at_sealed and not self._held(row, now_us)
        ):
            # Past its own expiry and kept by no hold active now (one that ended, or was
            # released, before a sweep put the row back to its own expiry): expired all the same.
            ended = min(row.expires_at, row.expires_at_sealed)
            self.log_access(action, "denied", who, recording_id, "expired")
            raise RecordingExpired(
                f"recording {recording_id} expired at {from_micros(ended).isoformat()}: "
                "it can no longer be read"
            )
        try:
            data_key = self._unwrap(row, now)
        except KeyDestroyed:
            self.log_access(action, "denied", who, recording_id, "key destroyed")
            raise RecordingExpired(
                f"recording {recording_id}: its key was destroyed; it can no longer be read"
            ) from None
        except InvalidRecording:
            self.log_access(action, "failed", who, recording_id, "wrapped key does not verify")
            raise
        return row, data_key

    # -- review notes ------------------------------------------------------------------------------

    def write_note(
        self,
        recording_id: str,
        text: str,
        principal: Principal | None = None,
        *,
        at: datetime | None = None,
    ) -> ReviewNote:
        """Keep a short review note on a recording, sealed under a key derived from its data
        key (:mod:`sampledrec.vault.notes`): needs ``listen`` on the recording (in scope),
        refused from its expiry on; logged as a ``review_note`` access (``write``), never
        with the text."""
        who = self.acting(principal, NOTE_ACTION, recording_id)
        try:
            clean = check_note_text(text)
        except InvalidArgument:
            self.log_access(NOTE_ACTION, "denied", who, recording_id, "write: not a valid note")
            raise
        row, data_key = self._readable(recording_id, who, "listen", at, action=NOTE_ACTION)
        sealed = seal_note(data_key, row.recording_id, who.name, clean, to_micros(self.clock.now()))
        self.catalog.add_note(sealed)
        self.log_access(NOTE_ACTION, "granted", who, recording_id, f"write {sealed.note_id}")
        return open_note(data_key, sealed)

    def notes(
        self,
        recording_id: str,
        principal: Principal | None = None,
        *,
        at: datetime | None = None,
    ) -> list[ReviewNote]:
        """The review notes on a recording, oldest first: needs ``listen`` on it (in scope),
        refused from its expiry on; logged as a ``review_note`` access (``read``, with how
        many). A note that does not open is the one opaque :class:`InvalidRecording`
        (logged as failed)."""
        who = self.acting(principal, NOTE_ACTION, recording_id)
        row, data_key = self._readable(recording_id, who, "listen", at, action=NOTE_ACTION)
        try:
            found = [open_note(data_key, n) for n in self.catalog.notes_of(row.recording_id)]
        except InvalidRecording:
            self.log_access(NOTE_ACTION, "failed", who, recording_id, "read: a note is damaged")
            raise
        self.log_access(NOTE_ACTION, "granted", who, recording_id, f"read {len(found)} notes")
        return found

    @staticmethod
    def _container(
        row: RecordingRow, source: Source, data_key: bytes
    ) -> _container.ContainerReader:
        """A reader of ``row``'s container whose authenticated header names ``row``."""
        reader = _container.ContainerReader(source, data_key)
        header = reader.header
        if (
            header.recording_id != row.recording_id
            or header.expires_at_us != row.expires_at_sealed
            or header.policy_version != row.policy_version
        ):
            raise InvalidRecording("the recording cannot be read")
        return reader

    def read_sealed(
        self,
        row: RecordingRow,
        *,
        principal: Principal | None = None,
        now: datetime | None = None,
    ) -> bytes:
        """The whole audio of a sealed recording, every chunk authenticated, for the
        data-subject export: ``principal`` needs ``subject_requests`` (a refusal is logged);
        the caller logs the export itself. :class:`KeyDestroyed` once it is crypto-shredded;
        the one opaque :class:`InvalidRecording` for anything damaged, missing or wrongly
        keyed."""
        who = self.acting(principal, "subject_requests", row.recording_id)
        self._grant(who, "subject_requests", row.recording_id, None)
        data_key = self._unwrap(row, now)
        audio = None
        try:
            with self.blobs.open(row.file) as source:
                audio = self._container(row, source, data_key).read_all()
        except (OSError, InvalidRecording):
            pass
        if audio is None:
            _unreadable()
        return audio

    def data_key(
        self,
        row: RecordingRow,
        *,
        principal: Principal | None = None,
        now: datetime | None = None,
    ) -> bytes:
        """A recording's raw data key, to re-wrap it under a legal hold's key: ``principal``
        needs ``hold`` on the recording (in scope; a refusal is logged). Unwrapped from its
        expiry bucket, or, once that bucket is destroyed, from a legal hold that re-wrapped it
        and is active at ``now`` (:meth:`read_time`: never earlier than the vault's clock).
        :class:`KeyDestroyed` if neither can (the recording is crypto-shredded)."""
        who = self.acting(principal, "hold", row.recording_id)
        allowed = self._grant(who, "hold", row.recording_id, None)
        if not self.in_scope(allowed, row):
            self.log_access("hold", "denied", who, row.recording_id, "out of scope")
            raise AccessDenied(
                f"principal {who.name!r} may not hold recording {row.recording_id}: it is "
                f"outside the scope of its roles ({allowed.describe()})"
            )
        return self._unwrap(row, now)

    def _unwrap(self, row: RecordingRow, now: datetime | None) -> bytes:
        """:meth:`data_key` for the vault's own reads, which have checked their permission."""
        aad = data_key_aad(row.recording_id, row.expires_at_sealed)
        if row.wrapped_key is not None:
            try:
                return self.keystore.unwrap(row.bucket, row.wrapped_key, aad=aad)
            except KeyDestroyed:
                pass
        now_us = to_micros(self.read_time(now))
        for hold, wrapped in self.catalog.holds_of(row.recording_id):
            if wrapped is not None and hold.active(now_us):
                return self.keystore.unwrap(hold_bucket(hold.hold_id), wrapped, aad=aad)
        raise KeyDestroyed(
            f"the key of recording {row.recording_id} was destroyed (it expired or was erased)"
        )

    def _held(self, row: RecordingRow, now_us: int) -> bool:
        return any(hold.active(now_us) for hold, _ in self.catalog.holds_of(row.recording_id))

    # -- time --------------------------------------------------------------------------------------

    @property
    def simulated(self) -> bool:
        """Whether the vault's store is simulated (``sampledrec demo``, ``init --simulated``).
        A store that does not say is not."""
        return bool(getattr(self.store, "simulated", False))

    def read_time(self, at: datetime | None = None) -> datetime:
        """The time a read judges expiry and legal holds at: ``at``, but never earlier than the
        vault's clock.

        Reads may look ahead, never back. A later ``at`` can only find more recordings expired
        and fewer holds active, so it is taken as given. An earlier ``at`` would read again
        what has expired, or through a hold that has ended, so the vault's clock wins: the
        time is ``max(at, clock.now())``. The vault's clock is the real clock
        (:data:`~sampledrec.clock.SYSTEM_CLOCK`) unless a test or a simulation passes another.

        The one exception is a simulated store (:attr:`simulated`), whose calls are synthetic
        and whose every report says so: there ``at`` is taken as given, so that a simulated day
        can be replayed (the CLI's ``--at`` may go back only there too).

        Permissions are judged at another time: a read happens now, so the roles are those of
        the policy in force by the vault's clock (``at`` only in a simulated store), and a
        policy scheduled for later grants nothing yet, whatever ``at`` says.
        """
        now = self.clock.now()
        if at is None:
            return now
        at = _utc(at)
        return at if self.simulated else max(at, now)

    def _acting_time(self, at: datetime | None) -> datetime:
        """When an access happens, for the policy whose roles decide it (see
        :meth:`read_time`): the vault's clock, or ``at`` in a simulated store."""
        if at is not None and self.simulated:
            return _utc(at)
        return self.clock.now()

    # -- access control (sampledrec.access) --------------------------------------------------------

    def acting(
        self, principal: Principal | None, action: str, recording_id: str | None = None
    ) -> Principal:
        """The principal an entry point acts for (:func:`as_principal`); a refusal (a bare
        name) is logged as a denied ``action`` before :class:`InvalidArgument` is raised."""
        given: object = principal  # typed Principal | None; a caller may pass anything
        try:
            return as_principal(given)
        except InvalidArgument:
            name = given if isinstance(given, str) and given.strip() else "?"
            self.log_access(action, "denied", Principal(name), recording_id, "not a Principal")
            raise

    def authorize(
        self,
        principal: Principal | None,
        permission: str,
        *,
        recording_id: str | None = None,
        at: datetime | None = None,
    ) -> Grant:
        """Check that ``principal`` holds ``permission`` under the policy in force now (the
        vault's clock; ``at`` only in a simulated store, see :meth:`read_time`) and, with
        ``recording_id``, that the recording is within the scope of a role granting it. The
        attempt is logged with its outcome either way; raises :class:`AccessDenied` when
        refused, and :class:`InvalidArgument` (logged too) for a principal given as a bare
        name. Reads (:meth:`recordings`, :meth:`open`, :meth:`read_range`, :meth:`export`)
        check by themselves; this is for the other actions (holds, subject requests,
        verifying, reading the log, policy and keys)."""
        if permission not in PERMISSIONS:
            raise InvalidArgument(
                f"permission {permission!r} does not exist; use one of {', '.join(PERMISSIONS)}"
            )
        who = self.acting(principal, permission, recording_id)
        allowed = self._grant(who, permission, recording_id, self._acting_time(at))
        if recording_id is not None:
            self._row_in_scope(recording_id, who, permission, allowed)
        self.log_access(permission, "granted", who, recording_id, None)
        return allowed

    def in_scope(self, allowed: Grant, row: RecordingRow) -> bool:
        """Whether ``row`` is in the scope of one of the roles of ``allowed``: by the call
        attributes stored with it, and for a scope attribute it did not store, by the values
        its policy rule required of the call (in scope only if all of them are)."""
        if allowed.unrestricted:
            return True
        required: Mapping[str, frozenset[str]] = {}
        if not all(name in row.attrs for name in allowed.scope_attributes):
            try:
                policy = self.store.policy_version(row.policy_version)
                required = policy.rule_named(row.rule).match
            except KeyError:
                required = {}
        return allowed.reaches(row.attrs, required)

    def _roles(self, who: Principal, now: datetime) -> Mapping[str, Role]:
        if who.roles and all(name == OWNER for name in who.roles):
            return {}  # the owner needs no policy
        return self.store.policy(now).roles

    def _grant(
        self,
        who: Principal,
        permission: str,
        recording_id: str | None,
        at: datetime | None,
        *,
        action: str | None = None,
    ) -> Grant:
        """The grant of ``permission`` to ``who``; logs a refusal (as ``action``, default the
        permission) and raises :class:`AccessDenied` when no role of theirs grants it."""
        action = action or permission
        roles = self._roles(who, at or self.clock.now())
        try:
            allowed = grant(who, permission, roles)
        except InvalidArgument:
            self.log_access(action, "denied", who, recording_id, "unknown role")
            raise
        if not allowed:
            self.log_access(action, "denied", who, recording_id, f"no role grants {permission}")
            on = f" on recording {recording_id}" if recording_id else ""
            holders = ", ".join(granting_roles(permission, roles)) or "owner"
            hint = (
                "" if who.roles else f" (pass Principal({who.name!r}, roles) with the user's roles)"
            )
            raise AccessDenied(
                f"principal {who.name!r} may not {permission}{on}: none of its roles "
                f"({', '.join(who.roles) or 'it has none'}) grants {permission!r}; roles that "
                f"do: {holders}{hint}"
            )
        return allowed

    def _row_in_scope(
        self,
        recording_id: str,
        who: Principal,
        permission: str,
        allowed: Grant,
        *,
        action: str | None = None,
    ) -> RecordingRow:
        """The catalog row of a recording that ``allowed`` reaches; each refusal is logged (as
        ``action``, default the permission)."""
        action = action or permission
        row = self.catalog.get(recording_id)
        if row is None:
            self.log_access(action, "denied", who, recording_id, "no such recording")
            raise RecordingNotFound(f"no recording {recording_id!r} in {self.store}")
        if not self.in_scope(allowed, row):
            self.log_access(action, "denied", who, recording_id, "out of scope")
            raise AccessDenied(
                f"principal {who.name!r} may not {permission} on recording {recording_id}: it "
                f"is outside the scope of its roles ({allowed.describe()})"
            )
        return row

    def log_access(
        self,
        action: str,
        outcome: str,
        who: Principal,
        recording_id: str | None,
        detail: str | None,
    ) -> None:
        """Log one access to recordings (granted, denied or failed: every attempt is logged)."""
        self.log.append(
            T_ACCESS,
            {
                "action": action,
                "outcome": outcome,
                "principal": who.name,
                "recording_id": recording_id,
                "detail": detail,
            },
            at=self.clock.now(),
        )

    # -- crash recovery ----------------------------------------------------------------------------

    def recover(self, *, principal: Principal | None = None) -> list[tuple[str, str]]:
        """Deal with recordings left open by a crash; returns ``(recording_id, outcome)`` pairs.
        Only the store's owner recovers (``principal``: no role grants it; a refusal is
        logged).

        Each open recording's container is examined with every chunk authenticated
        (:func:`~sampledrec.vault.container.recover_prefix`): one that is whole is kept
        (``"sealed"``); otherwise its verified prefix is re-sealed (fresh salt, same data key)
        as a recording marked truncated (``"truncated"``); it is destroyed when nothing of it
        verifies, its blob is missing or its key is gone (``"destroyed"``). A fourth outcome,
        ``"damaged"``, is described below.

        Recovery is journaled, so that a crash at any step of it is finished by the next run,
        exactly once. For each recording, in this order:

        1. the journal: the outcome, the SHA-256 of the container kept and the log's size go in
           the catalog row (:attr:`RecordingRow.recovery`), which stays ``open``;
        2. the blob: replaced whole by the re-sealed prefix, or deleted;
        3. the log: ``recording_sealed`` (``truncated`` as decided) or ``recording_aborted``,
           made durable;
        4. the row: ``sealed``, ``truncated`` or ``aborted``, with the hash and size of the
           container kept, in one update that also clears the journal.

        A run that finds a journal finishes its job: if the blob is the journaled container, it
        logs the entry unless the log has it already (an entry for the recording from the
        journal's log size on) and updates the row; if the blob is not (the crash came before
        it was replaced), it starts over. So the log never has two ``recording_sealed`` entries
        for a recording, and the catalog never calls a cut recording whole. (A journaled
        container whose key was destroyed before the rerun, its recording having expired
        meanwhile, is destroyed.) A journaled recording whose log entry is there but whose
        blob is no longer the container it names (changed since, which no crash does) is left
        as it is and reported ``"damaged"``.

        Holds the store's lock when the store has one (:class:`~sampledrec.Store` does), so
        that two recoveries never work on one recording at once. Run it when no recorder of
        the store is running: a recording in progress is ``open`` too.
        """
        who = self.acting(principal, "recover")
        if not who.is_owner:
            self.log_access("recover", "denied", who, None, "only the store's owner recovers")
            raise AccessDenied(
                f"principal {who.name!r} may not recover recordings: only the store's owner "
                "does, after a crash (pass no principal, or Principal.owner(name))"
            )
        lock = getattr(self.store, "lock", None)
        with lock() if callable(lock) else contextlib.nullcontext():
            self.log.flush()  # what this process queued is durable, where _logged can see it
            rows = self.catalog.find(status=["open"])
            node = getattr(self.store, "node_name", None)
            if rows and node is not None:
                # A node of a deployment recovers only the recordings its own log opened: the
                # others' are theirs (and may be in progress), their entries in their logs.
                # Rows name their node; older ones are looked up in the log.
                unnamed = [row for row in rows if row.node is None]
                mine = self._opened_here() if unnamed else set()
                rows = [
                    row
                    for row in rows
                    if row.node == node or (row.node is None and row.recording_id in mine)
                ]
            done = [(row.recording_id, self._recover_one(row)) for row in rows]
            self.upload_pending()  # what the crash left staged, now sealed, goes up
            return done

    def upload_pending(self) -> tuple[int, int]:
        """Upload the sealed recordings still on this node's disk (a blob store that stages
        them, :mod:`sampledrec.vault.staging`: an upload failed, or a crash came before it);
        returns ``(uploaded, failed)``. A staged file whose recording is no longer kept
        (aborted, expired or erased meanwhile) is removed instead of uploaded; one whose
        recording is still open is left for :meth:`recover`. Failures are logged and counted
        by the blob store, and the files kept for the next try. ``(0, 0)`` for a blob store
        that does not stage."""
        staged = self.blobs
        if not isinstance(staged, StagedBlobs):
            return 0, 0
        uploaded = failed = 0
        for name in sorted(set(staged.pending()) | set(staged.abandoned())):
            recording_id = name.rpartition("/")[2].removesuffix(".sdr")
            row = self.catalog.get(recording_id)
            if row is None or row.file != name or row.status not in ("open", "sealed", "truncated"):
                staged.discard(name)  # ciphertext of a recording destroyed meanwhile
            elif row.status == "open":
                continue  # in progress, or for recover() to seal first
            elif staged.publish(name):
                uploaded += 1
            else:
                failed += 1
        return uploaded, failed

    def recover_lost(
        self, node: str, *, reason: str, principal: Principal | None = None
    ) -> list[tuple[str, str]]:
        """Deal with the recordings of ``node``, a node of this deployment lost for good (its
        disk and so its recordings in progress, and its sealed ones not uploaded yet, are
        gone); returns ``(recording_id, outcome)`` pairs. Only the store's owner does it, on
        another node, once the lost node is marked lost (:meth:`Store.declare_lost
        <sampledrec.Store.declare_lost>`, which calls this), so that it can never come back
        and go on recording.

        Each of its ``open`` recordings is recovered from what the bucket holds, as
        :meth:`recover` does (nearly always nothing: it is then destroyed, ``"destroyed"``);
        each ``sealed`` or ``truncated`` one whose container never reached the bucket is
        destroyed too (``"lost"``: its key shredded, the row aborted). Every outcome is logged
        in *this* node's log (``recording_sealed`` or ``recording_aborted``, the reason naming
        the lost node), where the deployment's audit joins it with the lost node's log."""
        who = self.acting(principal, "recover")
        if not who.is_owner:
            self.log_access("recover", "denied", who, None, f"recordings of lost node {node}")
            raise AccessDenied(
                f"principal {who.name!r} may not recover another node's recordings: only the "
                "store's owner does (pass no principal, or Principal.owner(name))"
            )
        if node == getattr(self.store, "node_name", None):
            raise InvalidArgument(
                f"node {node!r} is this node: a node's own recordings are recovered with "
                "recover(); a lost node's by another node"
            )
        why = f"node {node} was lost for good: {reason}"
        lock = getattr(self.store, "lock", None)
        done = []
        with lock() if callable(lock) else contextlib.nullcontext():
            self.log.flush()
            for row in self.catalog.find(status=["open", "sealed", "truncated"]):
                if row.node != node:
                    continue
                if row.status == "open":
                    done.append((row.recording_id, self._recover_one(row, destroyed=why)))
                elif not self.blobs.exists(row.file):
                    self._lose(row, why)
                    done.append((row.recording_id, "lost"))
            self.log_access("recover", "granted", who, None, f"{why}: {len(done)} recordings")
            self.log.flush()
        return done

    def _lose(self, row: RecordingRow, reason: str) -> None:
        """A sealed recording whose container is gone with its node: tombstoned and shredded
        (the log's entry durable before the row says so)."""
        self.log.append(
            T_RECORDING_ABORTED,
            {"recording_id": row.recording_id, "reason": reason},
            at=self.clock.now(),
        )
        self.log.flush()
        self.catalog.update(row.recording_id, status="aborted", wrapped_key=None)

    def _opened_here(self) -> set[str]:
        """The recordings whose ``recording_opened`` entry is in this vault's log."""
        with self.log.storage.lock():
            return {
                str(entry.fields.get("recording_id"))
                for entry in iter_entries(self.log.storage)
                if entry.type == T_RECORDING_OPENED
            }

    def _recover_one(
        self, row: RecordingRow, *, destroyed: str = "crash: nothing verifiable was written"
    ) -> str:
        """Recover one open recording, or finish its journaled recovery; returns the outcome.
        ``destroyed``: the reason logged if it is destroyed."""
        if row.recovery == "destroyed":
            return self._finish_destroying(row, resumed=True, reason=destroyed)
        data_key = self._recovery_key(row)
        blob = self._blob_or_none(row.file)
        if row.recovery is not None:
            if blob is not None and hashlib.sha256(blob).hexdigest() == row.recovery_sha256:
                info = None if data_key is None else self._whole(row, blob, data_key)
                if info is not None:
                    return self._finish_sealing(row, info, resumed=True)
                # The journaled container, but its key is gone meanwhile: destroyed below.
            elif self._logged(row, T_RECORDING_SEALED) is not None:
                return "damaged"  # logged, then changed: not by a crash; leave it for a person
            # Otherwise the crash came before the blob was replaced: start over.
        outcome, keep, info = self._plan(row, data_key, blob)
        log_size = self.log.size  # the entry logged below gets an index at least this
        if row.recovery_log_size is not None:
            log_size = min(log_size, row.recovery_log_size)  # and an earlier attempt's too
        row = replace(
            row,
            recovery=outcome,
            recovery_sha256=None if info is None else info.sha256.hex(),
            recovery_log_size=log_size,
        )
        self.catalog.update(
            row.recording_id,
            recovery=row.recovery,
            recovery_sha256=row.recovery_sha256,
            recovery_log_size=row.recovery_log_size,
        )
        _reached("journaled")
        if outcome == "destroyed":
            return self._finish_destroying(row, resumed=False, reason=destroyed)
        assert keep is not None and info is not None
        if outcome == "truncated":
            self.blobs.put(row.file, keep)  # whole, or not at all
            _reached("blob replaced")
        return self._finish_sealing(row, info, resumed=False)

    def _recovery_key(self, row: RecordingRow) -> bytes | None:
        """The data key of an open recording, or None if it is gone or does not unwrap."""
        try:
            return self._unwrap(row, None)
        except (KeyDestroyed, InvalidRecording):
            return None

    def _blob_or_none(self, name: str) -> bytes | None:
        try:
            with self.blobs.open(name) as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def _plan(
        self, row: RecordingRow, data_key: bytes | None, blob: bytes | None
    ) -> tuple[Recovery, bytes | None, SealInfo | None]:
        """What recovery does with an open recording: ``(outcome, container kept, its
        SealInfo)``; the container kept is ``blob`` itself when it is whole, its verified prefix
        re-sealed when it is cut or damaged, None when the recording is destroyed."""
        if data_key is None or blob is None:
            return "destroyed", None, None
        try:
            reader = self._container(row, blob, data_key)
            found = reader.recover_prefix()  # every chunk authenticated
        except InvalidRecording:
            return "destroyed", None, None
        if found.sealed:
            return "sealed", blob, _seal_info(blob, found)
        if found.chunks == 0:
            return "destroyed", None, None
        resealed = io.BytesIO()
        # A fresh random salt: re-sealing under the same data key is safe.
        writer = _container.ContainerWriter(
            resealed,
            data_key,
            recording_id=row.recording_id,
            policy_version=row.policy_version,
            expires_at_us=row.expires_at_sealed,
            audio_format=row.audio_format.encode(),
            chunk_size=found.header.chunk_size,
        )
        for part in reader.iter_prefix(found.chunks):
            writer.write(part)
        writer.close()
        keep = resealed.getvalue()
        info = self._whole(row, keep, data_key)  # what replaces the blob is checked too
        if info is None or info.plaintext_bytes != found.plaintext_bytes:
            raise AssertionError("a re-sealed prefix does not read back")  # pragma: no cover
        return "truncated", keep, info

    def _whole(self, row: RecordingRow, blob: bytes, data_key: bytes) -> SealInfo | None:
        """The SealInfo of ``blob`` if it is a whole container of ``row``, every chunk
        authenticated; else None."""
        try:
            found = self._container(row, blob, data_key).recover_prefix()
        except InvalidRecording:
            return None
        return _seal_info(blob, found) if found.sealed else None

    def _logged(self, row: RecordingRow, etype: int) -> Entry | None:
        """The ``etype`` entry for ``row`` in the log from its journal's log size on: what an
        interrupted recovery of it may have logged. Read under the log's lock, so that no
        batch is half-written meanwhile. Only ever called to finish a journaled recovery."""
        since = row.recovery_log_size or 0
        with self.log.storage.lock():
            for entry in iter_entries(self.log.storage, since=since):
                if entry.type == etype and entry.fields.get("recording_id") == row.recording_id:
                    return entry
        return None

    def _finish_sealing(self, row: RecordingRow, info: SealInfo, *, resumed: bool) -> str:
        """Steps 3 and 4 of :meth:`recover` for a recording kept, whose blob is the container
        ``info`` describes."""
        truncated = row.recovery == "truncated"
        now = self.clock.now()
        changes, fields = self._seal_record(row, info, now, truncated=truncated, pauses=row.pauses)
        logged = self._logged(row, T_RECORDING_SEALED) if resumed else None
        if logged is None:
            self.log.append(T_RECORDING_SEALED, fields, at=now)
            _reached("log appended")
            self.log.flush()  # durable before the row stops saying the recording is open
            _reached("log durable")
        elif logged.fields.get("ciphertext_sha256") != info.sha256:
            return "damaged"  # logged for another container: not by a crash
        self.catalog.update(row.recording_id, **changes, **_NO_RECOVERY)
        _reached("catalog updated")
        return "truncated" if truncated else "sealed"

    def _finish_destroying(
        self,
        row: RecordingRow,
        *,
        resumed: bool,
        reason: str = "crash: nothing verifiable was written",
    ) -> str:
        """Steps 2 to 4 of :meth:`recover` for a recording destroyed."""
        self.blobs.delete(row.file)
        _reached("blob deleted")
        if not resumed or self._logged(row, T_RECORDING_ABORTED) is None:
            self.log.append(
                T_RECORDING_ABORTED,
                {"recording_id": row.recording_id, "reason": reason},
                at=self.clock.now(),
            )
            _reached("log appended")
            self.log.flush()
            _reached("log durable")
        self.catalog.update(row.recording_id, status="aborted", wrapped_key=None, **_NO_RECOVERY)
        _reached("catalog updated")
        return "destroyed"

    def _seal_record(
        self,
        row: RecordingRow,
        info: SealInfo,
        now: datetime,
        *,
        truncated: bool,
        pauses: Sequence[tuple[int, int]],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The catalog changes and the ``recording_sealed`` fields of a recording sealed at
        ``now``."""
        fmt = AudioFormat.from_text(row.audio_format)
        duration = info.plaintext_bytes // max(1, fmt.bytes_per_ms(1))
        changes = {
            "status": "truncated" if truncated else "sealed",
            "ended_at": to_micros(now),
            "duration_ms": duration,
            "plaintext_bytes": info.plaintext_bytes,
            "ciphertext_bytes": info.ciphertext_bytes,
            "ciphertext_sha256": info.sha256.hex(),
            "pauses": list(pauses),
            "truncated": truncated,
        }
        fields = {
            "recording_id": row.recording_id,
            "ciphertext_sha256": info.sha256,
            "duration_ms": duration,
            "plaintext_bytes": info.plaintext_bytes,
            "truncated": truncated,
            "pauses": json.dumps([list(p) for p in pauses]),
        }
        return changes, fields

    def _sealed(
        self,
        row: RecordingRow,
        info: SealInfo,
        *,
        truncated: bool,
        pauses: Sequence[tuple[int, int]],
    ) -> None:
        # Journaled as crash recovery is (:meth:`recover`): the row stays open, saying what
        # is being sealed, until the log's entry is durable. A crash from here on is finished
        # by recover(), with one entry: never a row called sealed that the log does not know.
        journaled = replace(
            row,
            pauses=list(pauses),
            recovery="truncated" if truncated else "sealed",
            recovery_sha256=info.sha256.hex(),
            recovery_log_size=self.log.size,
        )
        self.catalog.update(
            row.recording_id,
            pauses=journaled.pauses,
            recovery=journaled.recovery,
            recovery_sha256=journaled.recovery_sha256,
            recovery_log_size=journaled.recovery_log_size,
        )
        self._finish_sealing(journaled, info, resumed=False)

    def _destroy(self, row: RecordingRow, reason: str) -> None:
        self.blobs.delete(row.file)
        self.catalog.update(row.recording_id, status="aborted", wrapped_key=None)
        self.log.append(
            T_RECORDING_ABORTED,
            {"recording_id": row.recording_id, "reason": reason},
            at=self.clock.now(),
        )


#: The steps of crash recovery (:meth:`Vault.recover`), named for fault injection: ``_fault``,
#: when set (by a test), is called with each name as that step completes, and may raise or end
#: the process there. "blob replaced" is only reached by a recording kept truncated, "blob
#: deleted" only by one destroyed.
_RECOVERY_STEPS: Final = (
    "journaled",
    "blob replaced",
    "blob deleted",
    "log appended",
    "log durable",
    "catalog updated",
)
_fault: Callable[[str], object] | None = None
_NO_RECOVERY: Final[Mapping[str, None]] = {
    "recovery": None,
    "recovery_sha256": None,
    "recovery_log_size": None,
}


def _reached(step: str) -> None:
    """A step of recovery is done (``_RECOVERY_STEPS``): where a test may inject a crash."""
    if _fault is not None:
        _fault(step)


def _seal_info(blob: bytes, found: RecoveredPrefix) -> SealInfo:
    """What a whole container ``blob`` holds, as its writer would have said when closing it."""
    return SealInfo(
        plaintext_bytes=found.plaintext_bytes,
        chunks=found.chunks,
        ciphertext_bytes=len(blob),
        sha256=hashlib.sha256(blob).digest(),
    )


class Recorder:
    """Streams one call's audio into an encrypted recording. Use as a context manager::

    with vault.record(decision, audio_format=fmt) as rec:
        for frame in frames:
            rec.write(frame)
    """

    def __init__(
        self,
        vault: Vault,
        row: RecordingRow,
        data_key: bytes,
        fmt: AudioFormat,
        ticket: int,
        chunk_size: int,
        *,
        opened: int = 0,
    ) -> None:
        self._vault = vault
        self.row = row
        self._key = data_key
        self.format = fmt
        self._ticket = ticket
        # The recording's own opened entry, logged after its decision: nothing reaches the
        # disk before it is durable either, so a crash never leaves audio (which recovery
        # would keep) of a recording that no log entry opened.
        self._opened = opened
        self._chunk_size = chunk_size
        self._pending: list[bytes] = []
        self._writer: _container.ContainerWriter | None = None
        self._file: BlobWriter | None = None
        self._position = 0  # bytes of audio received, pauses included
        self._paused_at: int | None = None
        self._pauses: list[tuple[int, int]] = []
        self._state = "open"
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Recorder({self.row.recording_id!r}, {self._state})"

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError("a Recorder holds a data key and cannot be pickled")

    @property
    def recording_id(self) -> str:
        return self.row.recording_id

    @property
    def on_disk(self) -> bool:
        """Whether anything has been written to disk yet (only once the decision and the
        recording's opened entry are durable)."""
        return self._writer is not None

    def _ms(self, nbytes: int) -> int:
        return nbytes // max(1, self.format.bytes_per_ms(1))

    def write(self, frame: Any) -> None:
        """Append audio as it arrives (bytes in the recording's format, or a numpy array)."""
        data = as_bytes(frame, self.format)
        with self._lock:
            if self._state != "open":
                raise InvalidArgument(f"the recording is {self._state}; open a new one")
            if self._paused_at is not None:
                data = silence_like(self.format, len(data))
            self._position += len(data)
            if self._writer is None:
                if not self._vault.log.is_durable(max(self._ticket, self._opened)):
                    self._pending.append(data)
                    return
                self._start()
            assert self._writer is not None
            self._writer.write(data)

    def pause(self) -> None:
        """Mask what follows (a card payment): it is kept as silence of the same length."""
        with self._lock:
            if self._paused_at is None:
                self._paused_at = self._position

    def resume(self) -> None:
        with self._lock:
            if self._paused_at is not None:
                self._pauses.append((self._ms(self._paused_at), self._ms(self._position)))
                self._paused_at = None

    def _start(self) -> None:
        index = self._vault.log.wait_durable(self._ticket)
        if self._opened:
            self._vault.log.wait_durable(self._opened)
        self._file = self._vault.blobs.create(self.row.file)
        self._writer = _container.ContainerWriter(
            cast(BinaryIO, self._file),
            self._key,
            recording_id=self.row.recording_id,
            policy_version=self.row.policy_version,
            expires_at_us=self.row.expires_at_sealed,
            audio_format=self.row.audio_format.encode(),
            chunk_size=self._chunk_size,
        )
        if index >= 0:
            self._vault.catalog.update(self.row.recording_id, decision_index=index)
        for data in self._pending:
            self._writer.write(data)
        self._pending.clear()

    def close(self, *, truncated: bool = False) -> RecordingRow:
        """Seal the recording: final chunk, catalog row, log entry with the ciphertext's hash.
        ``truncated``: the audio stopped early (its source was cut short); the recording is
        marked truncated, as crash recovery marks a re-sealed prefix."""
        self.resume()
        with self._lock:
            if self._state != "open":
                raise InvalidArgument(f"the recording is already {self._state}")
            if self._writer is None:
                self._start()  # waits for the decision to be durable
            assert self._writer is not None and self._file is not None
            info = self._writer.close()
            self._file.close()  # durable before the catalog and the log call it sealed
            self._state = "sealed"
        self._vault._sealed(self.row, info, truncated=truncated, pauses=self._pauses)
        self._key = b""
        row = self._vault.catalog.get(self.row.recording_id)
        assert row is not None
        self.row = row
        return row

    def abort(self, reason: str = "the caller objected during the call") -> None:
        """Destroy what was written and the data key (the caller objected mid-call)."""
        with self._lock:
            if self._state != "open":
                return
            self._state = "aborted"
            self._pending.clear()
        self._key = b""
        self._vault._destroy(self.row, reason)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "open":
            self.close()


def _utc(moment: datetime) -> datetime:
    if not isinstance(moment, datetime):
        raise InvalidArgument(f"at={moment!r} must be a datetime (timezone-aware, or UTC)")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def silence_like(fmt: AudioFormat, nbytes: int) -> bytes:
    """``nbytes`` of silence in ``fmt`` (whole frames)."""
    frame = silence(fmt, 1) or b"\x00"
    reps = -(-nbytes // len(frame))
    return (frame * reps)[:nbytes]


def _unreadable() -> NoReturn:
    # Outside any ``except`` block, so the error carries neither cause nor context.
    raise InvalidRecording(
        "the recording cannot be read: it is damaged, truncated, or the key is wrong"
    )
