"""Data-subject requests: a caller's right of access (export) and right to erasure.

A caller is found by the keyed pseudonym of their number, never by the number itself: the number
is normalised to E.164 first (:func:`~sampledrec.objections.normalize_number`, with the
``phonenumbers`` package and the store's default region), so ``06 12 34 56 78``,
``+33 6 12 34 56 78`` and ``0033 6 12 34 56 78`` find the same person in a store whose region
is ``FR``.

Every request is recorded when it is received, in the catalog and in the log, with its deadline:
one month later (the same day of the next month, or that month's last day).
:meth:`SubjectRequests.open_requests` lists those not yet answered.

- :meth:`SubjectRequests.subject_export` writes the person's recordings, each authenticated
  before it is written, and their metadata (decision, purpose, expiry) to one new ZIP file,
  and nowhere else; a failed export leaves no file.
- :meth:`SubjectRequests.subject_erase` crypto-shreds each of the person's recordings: its
  wrapped data key is removed from the catalog (and from any hold no longer active), its file
  deleted, its personal fields (call reference, pseudonym, agent, call attributes) removed, and
  a tombstone logged. Nothing else is re-wrapped. A
  recording kept by an active legal hold is not erased: the erasure is recorded as *deferred*,
  with the hold as its reason (DESIGN.md §6); run the request again once the hold is released.

**Identity.** Checking that the requester is the person concerned is the host's job: the
library trusts the number it is given. The CLI's operator (the store's owner) confirms the
requester's identity before running ``sampledrec subject export|erase``.

What an erasure cannot reach at once: the log's decision entries keep the call reference and
the pseudonym sealed under the key of their month, erased when that key is destroyed (DESIGN.md
§8); the export omits the agent's name, which is the agent's personal data, not the caller's.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import secrets
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal

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
from ..vault.catalog import RecordingRow, SubjectRequest
from ..vault.recorder import Principal, new_export_file

if TYPE_CHECKING:
    from ..clock import Clock
    from ..log.writer import DecisionLog
    from ..store import Store
    from ..vault.recorder import Vault

__all__ = ["EXPORT_FORMAT", "REQUEST_KINDS", "PendingRequest", "SubjectRequests", "one_month_after"]

RequestKind = Literal["export", "erase"]
REQUEST_KINDS: Final[tuple[str, ...]] = ("export", "erase")
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
class PendingRequest:
    """A request not yet answered (open, or an erasure deferred by a legal hold), with its
    deadline. ``days_left`` counts calendar days (UTC); it is negative once overdue."""

    request: SubjectRequest
    received_at: datetime
    deadline: datetime
    days_left: int
    overdue: bool

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {
            "request_id": r.request_id,
            "kind": r.kind,
            "status": r.status,
            "detail": r.detail,
            "received_at": self.received_at.isoformat(),
            "deadline": self.deadline.isoformat(),
            "days_left": self.days_left,
            "overdue": self.overdue,
        }


class SubjectRequests:
    """Data-subject requests on one store: receive, export, erase, and what is still due.

    ``principal`` (every method) is who acts, a :class:`~sampledrec.Principal`; they need the
    ``subject_requests`` permission without scope (role ``dpo``, or the store's owner, as whom
    ``None`` acts): a request covers every recording of the person. A bare name is refused
    with :class:`~sampledrec.errors.InvalidArgument`.

    Parameters
    ----------
    store, vault, log:
        The opened store, its vault and its decision log.
    clock:
        Time source (keyword-only; default the vault's clock): receipt dates, deadlines, and
        which holds are active.
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
    ) -> SubjectRequest:
        """Record a request (``export`` or ``erase``) from the caller of ``phone``, received at
        ``received_at`` (default now), due one month later. The requester's identity must have
        been checked first (see the module docstring)."""
        if kind not in REQUEST_KINDS:
            raise InvalidArgument(
                f"kind={kind!r} is not a request kind; use 'export' (access) or 'erase'"
            )
        who = self._authorize(principal)
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
        self.catalog.add_request(request)
        ticket = self._log_request(request, who, pseudonym=pseudonym)
        self.log.wait_durable(ticket)
        return request

    def open_requests(self, now: datetime | None = None) -> list[PendingRequest]:
        """Requests still to answer (``open`` or ``deferred``), oldest first, with their
        deadlines as of ``now`` (default: the clock)."""
        when = _utc(now) if now is not None else self.clock.now()
        out = []
        for r in self.catalog.requests(status=["open", "deferred"]):
            deadline = from_micros(r.deadline)
            out.append(
                PendingRequest(
                    request=r,
                    received_at=from_micros(r.received_at),
                    deadline=deadline,
                    days_left=(deadline.date() - when.date()).days,
                    overdue=when >= deadline,
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
    ) -> Path:
        """Write every recording of the caller of ``phone`` that can still be read to a new
        ZIP file ``out`` (0600; it must not exist): ``recordings/<id>.wav`` (16-bit PCM) and
        ``metadata.json`` (each recording's decision, purpose, times and expiry, and the
        recordings that could not be included, with why). Each recording is authenticated
        before it is written; a recording that fails authentication fails the export, which
        then leaves no file. Marks ``request`` (default: a new export request) done."""
        who = self._authorize(principal)
        pseudonym = self.pseudonym(phone)
        path = Path(out)
        with new_export_file(path) as fh:
            request = self._request_for("export", phone, pseudonym, who, request)
            included, excluded = self._write_zip(fh, request, pseudonym, who)
        detail = f"{included} recording(s) exported"
        if excluded:
            detail += f", {excluded} no longer readable"
        self._finish(request, who, "done", detail)
        return path

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
            audio = self.vault.read_sealed(row, now=now)
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
    ) -> list[tuple[str, str]]:
        """Crypto-shred every recording of the caller of ``phone`` (see the module docstring);
        returns ``(recording_id, "erased" | "deferred")`` pairs. A recording under an active
        legal hold, or still being recorded, is deferred; ``request`` (default: a new erasure
        request) is then marked ``deferred`` with the reason, else ``done``. Running the same
        request again finishes what was deferred.

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
        request = self._request_for("erase", phone, pseudonym, who, request)
        outcomes: list[tuple[str, str]] = []
        deferred: list[str] = []
        # Under the store's lock, so that what takes it too (a hold being placed, a sweep)
        # does not act on these recordings half-way through.
        with self.store.lock():
            now = self.clock.now() if now is None else when
            now_us = to_micros(now)
            shredded: list[RecordingRow] = []
            for row in self.catalog.find(caller_pseudonym=pseudonym):
                rid = row.recording_id
                holds = self.catalog.holds_of(rid)
                active = [h.hold_id for h, _ in holds if h.active(now_us)]
                if active or row.status == "open":
                    why = (
                        "legal hold " + ", ".join(active)
                        if active
                        else "still being recorded; run the request again once it is sealed"
                    )
                    self._log_erasure(rid, "deferred", request.request_id, why, now)
                    outcomes.append((rid, "deferred"))
                    deferred.append(f"{rid} ({why})")
                    continue
                # The data key first: from here on the recording cannot be read, whatever
                # happens next, and a crash leaves a row that the next run finds again.
                self.catalog.update(rid, wrapped_key=None)
                for hold, wrapped in holds:
                    if wrapped is not None:
                        self.catalog.forget_hold_key(hold.hold_id, rid)
                self.vault.blobs.delete(row.file)
                self._log_erasure(rid, "erased", request.request_id, "data-subject request", now)
                shredded.append(row)
                outcomes.append((rid, "erased"))
            # Tombstones durable before the rows lose the pseudonym that finds them again.
            self.log.flush()
            for row in shredded:
                status = "erased" if row.status in (*_READABLE, "expiring") else row.status
                self.catalog.update(
                    row.recording_id,
                    status=status,
                    call_ref=None,
                    caller_pseudonym=None,
                    agent=None,
                    attrs={},
                )
        erased = len(shredded)
        if deferred:
            self._finish(
                request,
                who,
                "deferred",
                f"{erased} recording(s) erased; deferred: " + "; ".join(deferred),
            )
        else:
            self._finish(request, who, "done", f"{erased} recording(s) erased")
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

    def _request_for(
        self,
        kind: RequestKind,
        phone: str,
        pseudonym: str,
        who: Principal,
        request: SubjectRequest | None,
    ) -> SubjectRequest:
        if request is None:
            return self.receive(kind, phone, principal=who)
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
        return request

    def _finish(self, request: SubjectRequest, who: Principal, status: str, detail: str) -> None:
        completed = to_micros(self.clock.now()) if status == "done" else None
        self.catalog.update_request(
            request.request_id, status=status, detail=detail, completed_at=completed
        )
        request.status, request.detail, request.completed_at = status, detail, completed
        self.log.wait_durable(self._log_request(request, who))

    def _log_request(
        self, request: SubjectRequest, who: Principal, *, pseudonym: str | None = None
    ) -> int:
        return self.log.append(
            T_SUBJECT_REQUEST,
            {
                "request_id": request.request_id,
                "kind": request.kind,
                "received_at": request.received_at,
                "status": request.status,
                "caller_pseudonym": None if pseudonym is None else bytes.fromhex(pseudonym),
                "principal": who.name,
            },
            at=self.clock.now(),
            klass="access",
        )

    def _log_erasure(
        self, recording_id: str, outcome: str, request_id: str, reason: str, now: datetime
    ) -> None:
        self.log.append(
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
