"""Data-subject requests: a caller's right of access (export) and right to erasure.

A caller is found by the keyed pseudonym of their number, never by the number itself: the number
is normalised to E.164 first (:func:`~sampledrec.objections.normalize_number`, with the
``phonenumbers`` package and the store's default region), so ``06 12 34 56 78``,
``+33 6 12 34 56 78`` and ``0033 6 12 34 56 78`` find the same person in a store whose region
is ``FR``.

Every request is recorded when it is received, in the catalog and in the log, with its deadline:
one month later (the same day of the next month, or that month's last day).
:meth:`SubjectRequests.open_requests` lists those not yet answered.

**Identity.** Nothing is exported or erased before the requester's identity has been verified
and recorded on the request: how (an :class:`IdentityCheck`: a method from
:data:`IDENTITY_METHODS` and a short description, never a copy of an ID document nor its
number), by whom (the acting :class:`~sampledrec.Principal`) and when (the clock). It is given
when the request is received (``identity=`` of :meth:`~SubjectRequests.receive`,
:meth:`~SubjectRequests.subject_export`, :meth:`~SubjectRequests.subject_erase`) or recorded
later with :meth:`~SubjectRequests.verify_identity`; until then both refuse with
:class:`~sampledrec.errors.InvalidArgument`, and the refusal is logged. The check is stored in
the request's catalog row and logged once, in a ``subject_request`` entry whose
``identity_method`` is public and whose description is sealed with the other personal fields.

- :meth:`SubjectRequests.subject_export` writes the person's recordings, each authenticated
  before it is written, and their metadata (decision, purpose, expiry) to one new ZIP file,
  and nowhere else; a failed export leaves no file.
- :meth:`SubjectRequests.subject_erase` crypto-shreds each of the person's recordings: its
  wrapped data key is removed from the catalog (and from any hold no longer active), its file
  deleted, its personal fields (call reference, pseudonym, agent, call attributes) removed, and
  a tombstone logged. Nothing else is re-wrapped. A recording kept by an active legal hold is
  not erased: the request becomes ``deferred``, with the hold as its reason (DESIGN.md §6), and
  :meth:`~SubjectRequests.open_requests` shows which holds keep it (a lawful delay, not
  overdue). When a hold is released or ends (:meth:`Retention.release
  <sampledrec.Retention.release>`, :meth:`Retention.sweep <sampledrec.Retention.sweep>`), the
  deferred erasures that nothing keeps any more are carried out in the same operation
  (:func:`erase_deferred`); a crash in between leaves the request deferred, and the next sweep
  completes it.

What an erasure cannot reach at once: the log's decision entries keep the call reference and
the pseudonym sealed under the key of their month, erased when that key is destroyed (DESIGN.md
§8); the export omits the agent's name, which is the agent's personal data, not the caller's.
"""

from __future__ import annotations

import calendar
import contextlib
import io
import json
import os
import re
import secrets
import zipfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal, get_args

from ..errors import (
    AccessDenied,
    InvalidArgument,
    InvalidRecording,
    KeyDestroyed,
    LogCorrupt,
    SampledrecError,
)
from ..log.format import (
    T_DECISION,
    T_ERASURE,
    T_SUBJECT_REQUEST,
    from_micros,
    to_micros,
)
from ..log.writer import iter_entries
from ..sampling.objections import caller_pseudonym
from ..sampling.record import REASONS
from ..vault.access import grant
from ..vault.audio import AudioFormat, encode_wav, to_pcm16
from ..vault.catalog import Catalog, RecordingRow, SubjectRequest
from ..vault.recorder import Principal, new_export_file

if TYPE_CHECKING:
    from ..clock import Clock
    from ..log.writer import DecisionLog
    from ..store import Store
    from ..vault.recorder import Vault

__all__ = [
    "EXPORT_FORMAT",
    "IDENTITY_METHODS",
    "REQUEST_KINDS",
    "IdentityCheck",
    "PendingRequest",
    "SubjectRequests",
    "erase_deferred",
    "identity_json",
    "one_month_after",
]

RequestKind = Literal["export", "erase"]
REQUEST_KINDS: Final[tuple[str, ...]] = ("export", "erase")
IdentityMethod = Literal[
    "in_person_id_document", "callback_to_number", "signed_letter", "account_login", "other"
]
#: How a requester's identity may be verified: an ID document shown in person (seen, never
#: copied), a call back to the number on file, a signed letter, a login to the caller's customer
#: account, or another way described in the note.
IDENTITY_METHODS: Final[tuple[str, ...]] = get_args(IdentityMethod)
NOTE_MAX: Final = 200  # characters: a description, not a document
_DIGIT_RUN: Final = re.compile(r"\d(?:[ ./-]?\d){4,}")  # 5+ digits, as numbers are written
EXPORT_FORMAT: Final = "sampledrec-subject-export"
_READABLE: Final = ("sealed", "truncated")
_WAV_MODE: Final = 0o100600 << 16  # a regular file, 0600, once extracted


def one_month_after(moment: datetime) -> datetime:
    """The same time on the same day of the next month, or on that month's last day.

    >>> one_month_after(datetime(2027, 1, 31, 9, 30, tzinfo=UTC)).isoformat()
    '2027-02-28T09:30:00+00:00'
    >>> one_month_after(datetime(2026, 12, 15, tzinfo=UTC)).date().isoformat()
    '2027-01-15'
    """
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


@dataclass(frozen=True)
class IdentityCheck:
    """How the requester's identity was verified, as recorded on a request.

    ``method`` is one of :data:`IDENTITY_METHODS`; ``note`` says in a few words what was
    checked (required for ``other``). Who verified it and when are not given here: they are the
    :class:`~sampledrec.Principal` who records the check and the clock.

    Never a copy of an ID document, nor its number: a note of over 200 characters, or with a
    run of five digits or more (an ID, passport or phone number; write dates in words, the
    time of the check is recorded anyway), is refused with
    :class:`~sampledrec.errors.InvalidArgument`.

    >>> IdentityCheck("callback_to_number", "called back the number on the contract")
    IdentityCheck(method='callback_to_number', note='called back the number on the contract')
    >>> IdentityCheck("in_person_id_document", "passport no. 12AB34567")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sampledrec.errors.InvalidArgument: the identity note has a run of 5 digits (characters 18 to ...
    """

    method: IdentityMethod
    note: str = ""

    def __post_init__(self) -> None:
        if self.method not in IDENTITY_METHODS:
            raise InvalidArgument(
                f"method={self.method!r} is not an identity check method; use one of "
                + ", ".join(IDENTITY_METHODS)
            )
        if not isinstance(self.note, str):
            raise InvalidArgument(f"note={self.note!r} must be text")
        note = " ".join(self.note.split())
        object.__setattr__(self, "note", note)
        if self.method == "other" and not note:
            raise InvalidArgument("method='other' needs a note saying how the identity was checked")
        if len(note) > NOTE_MAX:
            raise InvalidArgument(
                f"the identity note has {len(note)} characters; keep it to {NOTE_MAX} at most: a "
                "short description of the check, not a copy of a document"
            )
        # The value is not repeated in the message: it may hold an ID number.
        found = _DIGIT_RUN.search(note)
        if found is not None:
            digits = sum(c.isdigit() for c in found.group())
            raise InvalidArgument(
                f"the identity note has a run of {digits} digits (characters {found.start() + 1}"
                f" to {found.end()}), which looks like an ID, passport or phone number; "
                "describe the check instead ('passport seen at the front desk') and never copy "
                "an ID document or its number"
            )


def identity_json(request: SubjectRequest) -> dict[str, Any] | None:
    """How the identity of ``request``'s requester was verified, as JSON (None: not yet)."""
    if request.identity_method is None:
        return None
    at = request.identity_verified_at
    return {
        "method": request.identity_method,
        "note": request.identity_note,
        "verified_by": request.identity_verified_by,
        "verified_at": None if at is None else _iso(at),
    }


@dataclass(frozen=True)
class PendingRequest:
    """A request not yet answered (open, or an erasure deferred), with its deadline.

    ``days_left`` counts calendar days (UTC); it is negative once the deadline has passed.
    ``held_by``: the legal holds that keep some of the person's recordings, for a deferred
    erasure (a lawful delay); ``being_recorded``: their calls still being recorded. A request
    is ``overdue`` once its deadline has passed, unless an active hold defers it.
    """

    request: SubjectRequest
    received_at: datetime
    deadline: datetime
    days_left: int
    overdue: bool
    held_by: tuple[str, ...] = ()
    being_recorded: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        """The request's state in words: ``deferred (hold h1)``, ``open (identity not
        verified)``, ..."""
        r = self.request
        if r.status == "deferred":
            if self.held_by:
                return f"deferred (hold {', '.join(self.held_by)})"
            if self.being_recorded:
                return "deferred (call being recorded)"
            return "deferred (nothing keeps it now: the next sweep erases)"
        if not r.identity_verified:
            return f"{r.status} (identity not verified)"
        return r.status

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {
            "request_id": r.request_id,
            "kind": r.kind,
            "status": r.status,
            "state": self.state,
            "detail": r.detail,
            "identity": identity_json(r),
            "held_by": list(self.held_by),
            "being_recorded": list(self.being_recorded),
            "received_at": self.received_at.isoformat(),
            "deadline": self.deadline.isoformat(),
            "days_left": self.days_left,
            "overdue": self.overdue,
        }


class SubjectRequests:
    """Data-subject requests on one store: receive, verify identity, export, erase, and what is
    still due.

    ``principal`` (every method) is who acts, a :class:`~sampledrec.Principal`; they need the
    ``subject_requests`` permission without scope (role ``dpo``, or the store's owner, as whom
    ``None`` acts): a request covers every recording of the person. A bare name is refused
    with :class:`~sampledrec.errors.InvalidArgument`.

    Parameters
    ----------
    store, vault, log:
        The opened store, its vault and its decision log.
    clock:
        Time source (keyword-only; default the vault's clock): receipt dates, deadlines,
        identity checks, and which holds are active.
    """

    def __init__(
        self,
        store: Store,
        vault: Vault,
        log: DecisionLog,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.vault = vault
        self.log = log
        self.catalog = vault.catalog
        self.clock = clock if clock is not None else vault.clock

    def __repr__(self) -> str:
        return f"SubjectRequests({str(self.store.path)!r})"

    def pseudonym(self, phone: str) -> str:
        """The keyed pseudonym under which the store knows the caller of ``phone``."""
        return caller_pseudonym(self.store.keyring.pseudonym_key(), phone, region=self.store.region)

    # -- requests -------------------------------------------------------------------------------

    def receive(
        self,
        kind: RequestKind,
        phone: str,
        *,
        principal: Principal | None,
        received_at: datetime | None = None,
        identity: IdentityCheck | None = None,
    ) -> SubjectRequest:
        """Record a request (``export`` or ``erase``) from the caller of ``phone``, received at
        ``received_at`` (default now), due one month later, with how the requester's identity
        was verified if that is known yet (``identity``; else see :meth:`verify_identity`)."""
        if kind not in REQUEST_KINDS:
            raise InvalidArgument(
                f"kind={kind!r} is not a request kind; use 'export' (access) or 'erase'"
            )
        who = self._authorize(principal)
        check = _checked(identity)
        pseudonym = self.pseudonym(phone)
        received = _utc(received_at) if received_at is not None else self.clock.now()
        request = SubjectRequest(
            request_id="req-" + secrets.token_hex(6),
            kind=kind,
            caller_pseudonym=pseudonym,
            received_at=to_micros(received),
            deadline=to_micros(one_month_after(received)),
            status="open",
        )
        if check is not None:
            _set_identity(request, check, who, self.clock.now())
        self.catalog.add_request(request)
        ticket = _log_request(
            self.log, request, who.name, self.clock.now(), pseudonym=pseudonym, identity=check
        )
        self.log.wait_durable(ticket)
        return request

    def verify_identity(
        self, request_id: str, identity: IdentityCheck, *, principal: Principal | None
    ) -> SubjectRequest:
        """Record how the identity of the requester of an open (or deferred) request was
        verified: ``identity``, by ``principal``, now. Returns the request as stored.

        Refused with :class:`~sampledrec.errors.InvalidArgument` for an unknown or answered
        request, or one whose identity was already recorded (the log keeps the first)."""
        who = self._authorize(principal)
        check = _checked(identity)
        if check is None:
            raise InvalidArgument("identity=None: pass the IdentityCheck to record")
        request = self._stored(request_id)
        if request.status == "done":
            raise InvalidArgument(
                f"request {request_id} was answered already ({request.detail}); there is no "
                "identity left to verify for it"
            )
        if request.identity_verified:
            raise InvalidArgument(_already_verified(request))
        self._record_identity(request, check, who)
        return request

    def open_requests(self, now: datetime | None = None) -> list[PendingRequest]:
        """Requests still to answer (``open`` or ``deferred``), oldest first, with their
        deadlines, and for a deferred erasure what defers it, as of ``now`` (default: the
        clock)."""
        when = _utc(now) if now is not None else self.clock.now()
        when_us = to_micros(when)
        out = []
        for r in self.catalog.requests(status=["open", "deferred"]):
            deadline = from_micros(r.deadline)
            held: tuple[str, ...] = ()
            live: tuple[str, ...] = ()
            if r.status == "deferred" and r.caller_pseudonym is not None:
                held, live = what_defers(self.catalog, r.caller_pseudonym, when_us)
            out.append(
                PendingRequest(
                    request=r,
                    received_at=from_micros(r.received_at),
                    deadline=deadline,
                    days_left=(deadline.date() - when.date()).days,
                    overdue=when >= deadline and not held,
                    held_by=held,
                    being_recorded=live,
                )
            )
        return out

    def requests(self) -> list[SubjectRequest]:
        """Every request, answered or not, oldest first."""
        return self.catalog.requests()

    # -- export ---------------------------------------------------------------------------------

    def subject_export(
        self,
        phone: str,
        out: str | os.PathLike[str],
        *,
        principal: Principal | None,
        request: SubjectRequest | None = None,
        identity: IdentityCheck | None = None,
    ) -> Path:
        """Write every recording of the caller of ``phone`` that can still be read to a new
        ZIP file ``out`` (0600; it must not exist): ``recordings/<id>.wav`` (16-bit PCM) and
        ``metadata.json`` (each recording's decision, purpose, times and expiry, and the
        recordings that could not be included, with why). Each recording is authenticated
        before it is written; a recording that fails authentication fails the export, which
        then leaves no file. Marks ``request`` (default: a new export request) done.

        The requester's identity must be verified first: ``identity`` records how (on the new
        request, or on ``request`` if it has none yet); without it, ``request`` must already
        have one (:meth:`verify_identity`), else :class:`~sampledrec.errors.InvalidArgument`
        and nothing is written or recorded."""
        who = self._authorize(principal)
        pseudonym = self.pseudonym(phone)
        path = Path(out)
        with new_export_file(path) as fh:
            request = self._request_for("export", phone, pseudonym, who, request, identity)
            included, excluded = self._write_zip(fh, request, pseudonym, who)
        detail = f"{included} recording(s) exported"
        if excluded:
            detail += f", {excluded} no longer readable"
        _finish(self.catalog, self.log, request, who.name, "done", detail, self.clock.now())
        return path

    def subject_export_bytes(
        self,
        phone: str,
        *,
        principal: Principal | None,
        request: SubjectRequest | None = None,
        identity: IdentityCheck | None = None,
    ) -> bytes:
        """As :meth:`subject_export`, but the ZIP is built in memory and returned, never
        written to disk (for a download): same checks, same log entries, and ``request``
        (default: a new export request) is marked done."""
        who = self._authorize(principal)
        pseudonym = self.pseudonym(phone)
        buffer = io.BytesIO()
        request = self._request_for("export", phone, pseudonym, who, request, identity)
        included, excluded = self._write_zip(buffer, request, pseudonym, who)
        detail = f"{included} recording(s) exported"
        if excluded:
            detail += f", {excluded} no longer readable"
        _finish(self.catalog, self.log, request, who.name, "done", detail, self.clock.now())
        return buffer.getvalue()

    def _write_zip(
        self, fh: BinaryIO, request: SubjectRequest, pseudonym: str, who: Principal
    ) -> tuple[int, int]:
        """Write the export into ``fh``; returns (recordings included, not included)."""
        now = self.clock.now()
        rows = self.catalog.find(caller_pseudonym=pseudonym)
        decisions = self._logged_decisions(r.decision_index for r in rows)
        included: list[dict[str, Any]] = []
        excluded: list[dict[str, Any]] = []
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for row in rows:
                why = _unreadable(row, now)
                wav = None
                if why is None:
                    wav, why = self._read_wav(row, who, now, request.request_id)
                if wav is None:
                    excluded.append({"id": row.recording_id, "status": row.status, "reason": why})
                    continue
                name = f"recordings/{row.recording_id}.wav"
                zf.writestr(_member(name, now), wav)
                included.append(self._metadata(row, name, decisions.get(row.decision_index)))
            doc = {
                "format": EXPORT_FORMAT,
                "version": 1,
                "request": {
                    "id": request.request_id,
                    "kind": request.kind,
                    "received_at": _iso(request.received_at),
                    "deadline": _iso(request.deadline),
                },
                "created_at": now.isoformat(),
                "recordings": included,
                "not_included": excluded,
                "earlier_erasures": [
                    _request_json(r)
                    for r in self.catalog.requests()
                    if r.kind == "erase" and r.caller_pseudonym == pseudonym
                ],
            }
            text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
            zf.writestr(_member("metadata.json", now), text.encode("utf-8"))
        return len(included), len(excluded)

    def _read_wav(
        self, row: RecordingRow, who: Principal, now: datetime, request_id: str
    ) -> tuple[bytes | None, str]:
        """The recording as WAV after authenticating all of it, or (None, why not)."""
        rid = row.recording_id
        try:
            audio = self.vault.read_sealed(row, principal=who, now=now)
        except KeyDestroyed:
            self.vault.log_access("subject_export", "denied", who, rid, "key destroyed")
            return None, "expired: its key was destroyed"
        except InvalidRecording:
            self.vault.log_access("subject_export", "failed", who, rid, "damaged or missing")
            raise InvalidRecording(
                f"recording {rid} cannot be read: it is damaged, truncated or missing; the "
                "export was not written (run 'sampledrec log verify' and check the store)"
            ) from None
        fmt = AudioFormat.from_text(row.audio_format)
        wav = encode_wav(AudioFormat("pcm16", fmt.sample_rate, fmt.channels), to_pcm16(audio, fmt))
        self.vault.log_access("subject_export", "granted", who, rid, request_id)
        return wav, ""

    def _metadata(
        self, row: RecordingRow, name: str, logged: dict[str, Any] | None
    ) -> dict[str, Any]:
        decision: dict[str, Any] = {
            "epoch_id": row.epoch_id,
            "rule": row.rule,
            "purpose": row.purpose,
            "policy_version": row.policy_version,
            "rate": None,
            "threshold": None,
            "draw": None,
            "reason": None,
            "log_index": row.decision_index if row.decision_index >= 0 else None,
        }
        with contextlib.suppress(SampledrecError, KeyError):
            rule = self.store.policy_version(row.policy_version).rule_named(row.rule)
            decision["rate"] = rule.rate
            decision["threshold"] = str(rule.threshold)
        if logged is not None:
            decision["epoch_id"] = logged.get("epoch_id", row.epoch_id)
            if "threshold" in logged:
                decision["threshold"] = str(logged["threshold"])
            if "draw" in logged:
                decision["draw"] = str(logged["draw"])
            reason = logged.get("reason")
            if isinstance(reason, int) and reason < len(REASONS):
                decision["reason"] = REASONS[reason]
        return {
            "id": row.recording_id,
            "file": name,
            "call_ref": row.call_ref,
            "started_at": _iso(row.started_at),
            "ended_at": None if row.ended_at is None else _iso(row.ended_at),
            "duration_ms": row.duration_ms,
            "expires_at": _iso(row.expires_at),
            "status": row.status,
            "truncated": row.truncated,
            "audio_format": row.audio_format,
            "pauses": [list(p) for p in row.pauses],
            "decision": decision,
        }

    def _logged_decisions(self, indices: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The public fields of the logged decisions at ``indices`` (one pass over the log from
        the first of them). A log that cannot be read leaves them out: the export still
        answers the request, and ``sampledrec log verify`` is where damage is reported."""
        wanted = {i for i in indices if i >= 0}
        found: dict[int, dict[str, Any]] = {}
        if wanted:
            self.log.flush()
            try:
                for entry in iter_entries(self.store.log_storage, None, since=min(wanted)):
                    if entry.index in wanted and entry.type == T_DECISION:
                        found[entry.index] = dict(entry.fields)
                        if len(found) == len(wanted):
                            break
            except (LogCorrupt, ValueError):
                pass
        return found

    # -- erasure --------------------------------------------------------------------------------

    def subject_erase(
        self,
        phone: str,
        *,
        principal: Principal | None,
        request: SubjectRequest | None = None,
        now: datetime | None = None,
        identity: IdentityCheck | None = None,
    ) -> list[tuple[str, str]]:
        """Crypto-shred every recording of the caller of ``phone`` (see the module docstring);
        returns ``(recording_id, "erased" | "deferred")`` pairs. A recording under an active
        legal hold, or still being recorded, is deferred; ``request`` (default: a new erasure
        request) is then marked ``deferred`` with the reason, else ``done``. When the hold is
        released or ends, :class:`~sampledrec.Retention` carries out what was deferred;
        running the same request again does it too.

        ``identity`` as for :meth:`subject_export`: nothing is erased before the requester's
        identity is recorded on the request.

        ``now`` (default: the clock) is when the holds are judged active and the erasure is
        logged; a time later than the clock is a simulation, refused by a real store
        (:meth:`Store.act_at <sampledrec.Store.act_at>`: nothing is erased ahead of the real
        clock, such as a recording whose hold has not ended yet)."""
        who = self._authorize(principal)
        real = self.clock.now()
        when = (
            real
            if now is None
            else self.store.act_at(_utc(now), real_now=real, doing="erases recordings")
        )
        pseudonym = self.pseudonym(phone)
        request = self._request_for("erase", phone, pseudonym, who, request, identity)
        # Under the store's lock, so that what takes it too (a hold being placed or released,
        # a sweep) does not act on these recordings, or this request, half-way through.
        with self.store.lock():
            at = self.clock.now() if now is None else when
            outcomes, erased, deferred = _erase(self.vault, self.log, request, pseudonym, at)
            if deferred:
                detail = f"{erased} recording(s) erased; deferred: " + "; ".join(deferred)
                _finish(self.catalog, self.log, request, who.name, "deferred", detail, real)
            else:
                detail = f"{erased} recording(s) erased"
                _finish(self.catalog, self.log, request, who.name, "done", detail, real)
        return outcomes

    # -- helpers --------------------------------------------------------------------------------

    def _authorize(self, principal: Principal | None) -> Principal:
        who = self.vault.acting(principal, "subject_requests")
        allowed = grant(who, "subject_requests", self.store.policy(self.clock.now()).roles)
        if not allowed or not allowed.unrestricted:
            self.vault.log_access("subject_requests", "denied", who, None, None)
            raise AccessDenied(
                f"principal {who.name!r} may not handle data-subject requests: that needs the "
                "'subject_requests' permission without scope (role 'dpo', or the store's owner)"
            )
        return who

    def _stored(self, request_id: str) -> SubjectRequest:
        for request in self.catalog.requests():
            if request.request_id == request_id:
                return request
        raise InvalidArgument(
            f"no request {request_id!r}; 'sampledrec subject requests --all' lists them"
        )

    def _request_for(
        self,
        kind: RequestKind,
        phone: str,
        pseudonym: str,
        who: Principal,
        request: SubjectRequest | None,
        identity: IdentityCheck | None,
    ) -> SubjectRequest:
        """The request to answer, its requester's identity verified (recorded now if
        ``identity`` is given); refused, and logged, if it is not."""
        check = _checked(identity)
        if request is None:
            if check is None:
                self._refuse_unverified(kind, who, None)
            return self.receive(kind, phone, principal=who, identity=check)
        if request.kind != kind:
            raise InvalidArgument(
                f"request {request.request_id} is an {request.kind} request, not an {kind} "
                f"request; receive an {kind} request first"
            )
        if request.caller_pseudonym != pseudonym:
            raise InvalidArgument(
                f"request {request.request_id} was made for another caller's number; check the "
                "number (or the store's default region)"
            )
        # The identity may have been recorded since this object was read (verify_identity).
        stored = self._stored(request.request_id)
        for name in _IDENTITY_FIELDS:
            setattr(request, name, getattr(stored, name))
        if check is not None:
            if request.identity_verified:
                raise InvalidArgument(_already_verified(request) + "; leave identity out")
            self._record_identity(request, check, who)
        elif not request.identity_verified:
            self._refuse_unverified(kind, who, request)
        return request

    def _refuse_unverified(
        self, kind: RequestKind, who: Principal, request: SubjectRequest | None
    ) -> None:
        which = "a new request" if request is None else f"request {request.request_id}"
        self.vault.log_access(
            f"subject_{kind}", "denied", who, None, f"identity not verified ({which})"
        )
        done = "exported" if kind == "export" else "erased"
        raise InvalidArgument(
            f"{which}: the requester's identity has not been verified; nothing was {done}. "
            "Check it first (an ID document seen in person, a call back to the number on "
            "file, a signed letter, a login to their account), then record how: "
            "identity=IdentityCheck(method, note) or SubjectRequests.verify_identity() "
            "(CLI: --identity-method METHOD --identity-note TEXT, or 'sampledrec subject "
            "verify REQUEST_ID'); never copy the ID document"
        )

    def _record_identity(
        self, request: SubjectRequest, check: IdentityCheck, who: Principal
    ) -> None:
        now = self.clock.now()
        _set_identity(request, check, who, now)
        self.catalog.update_request(
            request.request_id, **{name: getattr(request, name) for name in _IDENTITY_FIELDS}
        )
        self.log.wait_durable(_log_request(self.log, request, who.name, now, identity=check))


_IDENTITY_FIELDS: Final = (
    "identity_method",
    "identity_note",
    "identity_verified_by",
    "identity_verified_at",
)


def _checked(identity: object) -> IdentityCheck | None:
    if identity is None or isinstance(identity, IdentityCheck):
        return identity
    raise InvalidArgument(
        f"identity={identity!r} must be an IdentityCheck(method, note), method one of "
        + ", ".join(IDENTITY_METHODS)
    )


def _set_identity(
    request: SubjectRequest, check: IdentityCheck, who: Principal, now: datetime
) -> None:
    request.identity_method = check.method
    request.identity_note = check.note
    request.identity_verified_by = who.name
    request.identity_verified_at = to_micros(now)


def _already_verified(request: SubjectRequest) -> str:
    at = request.identity_verified_at
    return (
        f"request {request.request_id}: the requester's identity was already verified "
        f"({request.identity_method}, by {request.identity_verified_by}"
        + ("" if at is None else f", {_iso(at)}")
        + ")"
    )


def what_defers(
    catalog: Catalog, pseudonym: str, now_us: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What keeps the person's recordings from being erased at ``now_us``: (the active legal
    holds on them, the ids of their calls still being recorded)."""
    holds: set[str] = set()
    live: list[str] = []
    for row in catalog.find(caller_pseudonym=pseudonym):
        if row.status == "open":
            live.append(row.recording_id)
        holds.update(h.hold_id for h, _ in catalog.holds_of(row.recording_id) if h.active(now_us))
    return tuple(sorted(holds)), tuple(live)


def _erase(
    vault: Vault, log: DecisionLog, request: SubjectRequest, pseudonym: str, now: datetime
) -> tuple[list[tuple[str, str]], int, list[str]]:
    """Crypto-shred the recordings of ``pseudonym`` that nothing keeps, for ``request``, under
    the store's lock (the caller holds it). Returns (outcomes, how many were erased, the
    deferred ones with why)."""
    catalog = vault.catalog
    now_us = to_micros(now)
    outcomes: list[tuple[str, str]] = []
    deferred: list[str] = []
    shredded: list[RecordingRow] = []
    for row in catalog.find(caller_pseudonym=pseudonym):
        rid = row.recording_id
        holds = catalog.holds_of(rid)
        active = [h.hold_id for h, _ in holds if h.active(now_us)]
        if active or row.status == "open":
            why = (
                "legal hold " + ", ".join(active)
                if active
                else "still being recorded; run the request again once it is sealed"
            )
            _log_erasure(log, rid, "deferred", request.request_id, why, now)
            outcomes.append((rid, "deferred"))
            deferred.append(f"{rid} ({why})")
            continue
        # The data key first: from here on the recording cannot be read, whatever happens
        # next, and a crash leaves a row that the next run finds again.
        catalog.update(rid, wrapped_key=None)
        for hold, wrapped in holds:
            if wrapped is not None:
                catalog.forget_hold_key(hold.hold_id, rid)
        vault.blobs.delete(row.file)
        catalog.delete_notes([rid])
        _log_erasure(log, rid, "erased", request.request_id, "data-subject request", now)
        shredded.append(row)
        outcomes.append((rid, "erased"))
    # Tombstones durable before the rows lose the pseudonym that finds them again.
    log.flush()
    for row in shredded:
        status = "erased" if row.status in (*_READABLE, "expiring") else row.status
        catalog.update(
            row.recording_id,
            status=status,
            call_ref=None,
            caller_pseudonym=None,
            agent=None,
            attrs={},
        )
    return outcomes, len(shredded), deferred


def erase_deferred(
    vault: Vault,
    log: DecisionLog,
    now: datetime,
    *,
    by: str = "sampledrec",
    dry_run: bool = False,
    recordings: Collection[str] | None = None,
) -> list[str]:
    """Carry out the erasures that were deferred and that nothing keeps any more at ``now``
    (their holds released or ended, their calls sealed): what is no longer held is erased, and
    a request with nothing left deferred becomes ``done``. Returns the ids of the requests
    completed (with ``dry_run``: that would be, and nothing changes).

    :class:`~sampledrec.Retention` calls it when a hold is released and on every sweep,
    holding the store's lock, as the caller must; ``by`` names who acts in the log (the
    principal releasing the hold, or ``sampledrec`` for a sweep); ``recordings`` limits it to
    the requests about some of them (those of the hold released). Idempotent: a crash
    part-way leaves the request deferred, and the next call completes it. A request whose
    requester's identity was never recorded (made by an earlier version) is left for the DPO
    (:meth:`SubjectRequests.verify_identity`)."""
    catalog = vault.catalog
    now_us = to_micros(now)
    completed: list[str] = []
    for request in catalog.requests(status=["deferred"]):
        pseudonym = request.caller_pseudonym
        if request.kind != "erase" or pseudonym is None or not request.identity_verified:
            continue
        rows = catalog.find(caller_pseudonym=pseudonym)
        if recordings is not None and not any(r.recording_id in recordings for r in rows):
            continue
        kept = [
            r
            for r in rows
            if r.status == "open"
            or any(h.active(now_us) for h, _ in catalog.holds_of(r.recording_id))
        ]
        if kept and len(kept) == len(rows):
            continue  # nothing can be erased yet: nothing to change, nothing to log
        if dry_run:
            if not kept:
                completed.append(request.request_id)
            continue
        _, erased, deferred = _erase(vault, log, request, pseudonym, now)
        detail = f"{erased} recording(s) erased once no legal hold kept them"
        if deferred:
            detail += "; deferred: " + "; ".join(deferred)
            _finish(catalog, log, request, by, "deferred", detail, now)
        else:
            _finish(catalog, log, request, by, "done", detail, now)
            completed.append(request.request_id)
    return completed


def _finish(
    catalog: Catalog,
    log: DecisionLog,
    request: SubjectRequest,
    by: str,
    status: str,
    detail: str,
    now: datetime,
) -> None:
    completed = to_micros(now) if status == "done" else None
    catalog.update_request(request.request_id, status=status, detail=detail, completed_at=completed)
    request.status, request.detail, request.completed_at = status, detail, completed
    log.wait_durable(_log_request(log, request, by, now))


def _log_request(
    log: DecisionLog,
    request: SubjectRequest,
    by: str,
    now: datetime,
    *,
    pseudonym: str | None = None,
    identity: IdentityCheck | None = None,
) -> int:
    return log.append(
        T_SUBJECT_REQUEST,
        {
            "request_id": request.request_id,
            "kind": request.kind,
            "received_at": request.received_at,
            "status": request.status,
            "identity_method": None if identity is None else identity.method,
            "caller_pseudonym": None if pseudonym is None else bytes.fromhex(pseudonym),
            "principal": by,
            # Sealed with the other personal fields: it may name who checked what.
            "identity_note": None if identity is None or not identity.note else identity.note,
        },
        at=now,
    )


def _log_erasure(
    log: DecisionLog, recording_id: str, outcome: str, request_id: str, reason: str, now: datetime
) -> None:
    log.append(
        T_ERASURE,
        {
            "recording_id": recording_id,
            "outcome": outcome,
            "request_id": request_id,
            "reason": reason,
        },
        at=now,
    )


def _unreadable(row: RecordingRow, now: datetime) -> str | None:
    """Why a recording cannot be exported, judged from its catalog row (None: try it)."""
    if row.status == "open":
        return "still being recorded"
    if row.status == "aborted":
        return "not kept: the recording was stopped and destroyed during the call"
    if row.status == "erased":
        return "erased"
    if row.status not in _READABLE or to_micros(now) >= row.expires_at:
        return f"expired on {_iso(row.expires_at)}"
    return None


def _member(name: str, now: datetime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=now.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = _WAV_MODE
    return info


def _request_json(r: SubjectRequest) -> dict[str, Any]:
    return {
        "id": r.request_id,
        "kind": r.kind,
        "status": r.status,
        "received_at": _iso(r.received_at),
        "deadline": _iso(r.deadline),
        "completed_at": None if r.completed_at is None else _iso(r.completed_at),
        "detail": r.detail,
    }


def _iso(us: int) -> str | None:
    """A catalog time as ISO 8601; None for a time no calendar holds (a hold's "until
    released", kept as a far-future expiry)."""
    try:
        return from_micros(us).isoformat()
    except (OverflowError, ValueError, OSError):
        return None


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
