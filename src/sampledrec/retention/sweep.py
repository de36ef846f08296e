"""Retention: expiry by crypto-shredding, legal holds, and the retention of the log's details.

:meth:`Retention.sweep` makes time pass for a store:

1. every recording whose effective expiry has come (and that no active hold keeps) is expired:
   its file is deleted, its wrapped data key, personal fields and review notes are removed
   from the catalog, and a tombstone goes to the log;
2. every expiry bucket whose whole UTC day has passed has its key destroyed, which makes every
   recording of that day unreadable at once, including copies in backups that lack the keyring;
3. holds whose end has come are released, and the keys of released holds are destroyed;
   the erasures that holds deferred and that nothing keeps any more are carried out
   (:func:`~sampledrec.retention.subjects.erase_deferred`), before anything expires;
4. the keys that seal the log's personal fields are destroyed when their retention ends: access
   details (``access/YYYY-MM``) 12 months after their month, call references (``calls/...``)
   13 months after — the log's tree still verifies, those fields just cannot be read any more.
   Before a ``calls/`` key goes, the objection list is logged again, whole (``kept`` entries:
   :meth:`Store.log_objection_list <sampledrec.Store.log_objection_list>`), so that an audit can
   still replay it.

A sweep is idempotent and crash-safe: each recording goes ``sealed`` → ``expiring`` (durable in
the catalog) → file deleted, personal fields removed, tombstone logged → ``expired``; a sweep
killed at any point and run again finishes the work (a recording killed between its tombstone
and its final status may get a second, identical tombstone). Nothing expires early: a bucket is
destroyed only once its day has passed, and only after its recordings have expired.

:meth:`Retention.hold` re-wraps the data keys of the held recordings to a key of the hold's
own, before their bucket is destroyed; a recording stays held while any hold on it is active.
:meth:`Retention.release` returns it to its original expiry, or expires it at once if that has
passed, and carries out the data-subject erasures it deferred, in the same operation (a crash
in between leaves them deferred: the next sweep completes them). Both act for a
:class:`~sampledrec.Principal` that needs the ``hold`` permission, on recordings within the
scope of the role granting it; no principal means the store's owner, and a bare name is
refused.

**Time.** The retention's clock is the real clock (the system clock unless a test passes
another). :meth:`Retention.sweep` and :meth:`Retention.release` may be given a later ``now``
only in a simulated store (:meth:`Store.act_at <sampledrec.Store.act_at>`): a real store never
destroys anything ahead of the real clock, and refuses with
:class:`~sampledrec.errors.InvalidArgument`. A dry run changes nothing, so it may look ahead in
any store.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final, Protocol, cast

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import AccessDenied, InvalidArgument, KeyDestroyed, RecordingNotFound
from ..keys.keyring import Keyring
from ..log.format import (
    T_EXPIRED,
    T_HOLD,
    T_KEY_DESTROYED,
    from_micros,
    hold_recording_ids,
    to_micros,
)
from ..log.writer import DecisionLog
from ..vault.access import Grant, Principal
from ..vault.catalog import Hold, RecordingRow
from ..vault.recorder import Vault, VaultStorage, data_key_aad, hold_bucket
from .subjects import erase_deferred

__all__ = ["Retention", "SweepReport"]

HELD_UNTIL: Final = 2**62  # the effective expiry of a held recording: until released
ACCESS_RETENTION_MONTHS: Final = 12
CALLS_RETENTION_MONTHS: Final = 13


@dataclass
class SweepReport:
    now: datetime
    dry_run: bool = False
    expired: list[str] = field(default_factory=list)
    buckets_destroyed: list[str] = field(default_factory=list)
    holds_released: list[str] = field(default_factory=list)
    log_keys_destroyed: list[str] = field(default_factory=list)
    held: int = 0
    erasures_completed: list[str] = field(default_factory=list)  # subject requests now done

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "expired": len(self.expired),
            "expired_ids": self.expired,
            "buckets_destroyed": self.buckets_destroyed,
            "holds_released": self.holds_released,
            "log_keys_destroyed": self.log_keys_destroyed,
            "kept_by_holds": self.held,
            "erasures_completed": self.erasures_completed,
        }


def _months_after(year: int, month: int, months: int) -> date:
    """The first day of the month ``months`` after (year, month)'s month."""
    total = year * 12 + (month - 1) + months + 1
    return date(total // 12, total % 12 + 1, 1)


class RetentionStorage(VaultStorage, Protocol):
    """What retention needs of a vault's store beyond the vault's own needs: the store's
    lock (one sweep, hold or erasure at a time), its keyring (the log's sealing keys), and the
    check of a time to destroy at (:meth:`Store.act_at <sampledrec.Store.act_at>`)."""

    @property
    def keyring(self) -> Keyring: ...

    def lock(self, timeout: float = 30.0) -> AbstractContextManager[None]: ...

    def act_at(
        self, now: datetime, *, real_now: datetime | None = None, doing: str
    ) -> datetime: ...

    def log_objection_list(self, log: DecisionLog, at: datetime) -> int: ...


def retention_storage(vault: Vault) -> RetentionStorage:
    """The vault's store, checked to be one that retention can work with."""
    store = vault.store
    # Not isinstance() on the protocol: on Python 3.11 that would evaluate every property,
    # building backends (and asking for an HSM's PIN) just to check a type.
    if (
        not callable(getattr(store, "lock", None))
        or not callable(getattr(store, "act_at", None))
        or getattr(store, "keyring", None) is None
    ):
        raise InvalidArgument(
            f"{store!r} has no lock, keyring or act_at; retention needs a vault opened on a "
            "sampledrec Store (Vault(store, log))"
        )
    return cast(RetentionStorage, store)


class Retention:
    """Expiry, holds and log-detail retention for one store (through its vault and log)."""

    def __init__(self, vault: Vault, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.vault = vault
        self.store = retention_storage(vault)
        self.log: DecisionLog = vault.log
        self.catalog = vault.catalog
        self.keystore = vault.keystore
        self.clock = clock

    # -- sweep -------------------------------------------------------------------------------------

    def sweep(
        self,
        now: datetime | None = None,
        *,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> SweepReport:
        """Expire what is due at ``now`` (default: the clock). See the module docstring.

        A ``now`` later than the clock is a simulation: a real store refuses it with
        :class:`~sampledrec.errors.InvalidArgument` unless ``dry_run`` (which only reports
        what would happen); a simulated store sweeps as of that time."""
        when = self._destroying_at(now, "sweeps (destroys recordings and keys)", dry_run=dry_run)
        with self.store.lock():  # one sweep, hold or erasure at a time
            return self._sweep(when, dry_run, progress)

    def _destroying_at(
        self, now: datetime | None, doing: str, *, dry_run: bool = False
    ) -> datetime:
        """The time to destroy at: the clock's, or ``now`` if the store may act at it."""
        real = self.clock.now()
        if now is None:
            return real
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)  # a time without an offset is UTC, as everywhere
        return now if dry_run else self.store.act_at(now, real_now=real, doing=doing)

    def _sweep(
        self, now: datetime, dry_run: bool, progress: Callable[[int], None] | None
    ) -> SweepReport:
        now_us = to_micros(now)
        report = SweepReport(now=now, dry_run=dry_run)

        # Holds whose end has come are released first, so their recordings can expire below.
        for hold in self.catalog.holds():
            if hold.released_at is None and hold.until is not None and hold.until <= now_us:
                report.holds_released.append(hold.hold_id)
                if not dry_run:
                    # Its recordings return to their own expiry; those past it expire below.
                    self._release(hold, hold.until, "the hold ended", expire_now=False)

        # Erasures that holds deferred, now that they may have ended (here or before a crash):
        # erased as the data subject asked, rather than expired below.
        report.erasures_completed = erase_deferred(self.vault, self.log, now, dry_run=dry_run)

        live = self.catalog.find(status=["open", "sealed", "truncated", "expiring"])
        held = self._held_ids(now_us)
        due = [
            r
            for r in live
            if r.status == "expiring"
            or (r.status != "open" and r.expires_at <= now_us and r.recording_id not in held)
        ]
        report.held = sum(
            1 for r in live if r.recording_id in held and r.expires_at_sealed <= now_us
        )
        report.expired = [r.recording_id for r in due]
        if not dry_run:
            for start in range(0, len(due), 5000):
                part = due[start : start + 5000]
                self._expire_many(part, now)
                if progress is not None:
                    progress(len(part))
        expired_now = set(report.expired)
        needed = {
            r.bucket
            for r in live
            if r.recording_id not in expired_now
            and r.recording_id not in held
            and r.expires_at > now_us
        }

        # Buckets whose whole day has passed: destroy their keys.
        today = now.astimezone(UTC).date()
        for bucket in self.keystore.buckets():
            if not bucket.startswith("bucket-"):
                continue
            try:
                day = date.fromisoformat(bucket[len("bucket-") :])
            except ValueError:
                continue
            if day >= today:
                continue  # its day has not fully passed
            if bucket in needed:
                continue  # never destroy a key that a live, unheld recording still needs
            report.buckets_destroyed.append(bucket)
            if not dry_run:
                self.keystore.destroy_bucket(bucket)
                self.log.append(
                    T_KEY_DESTROYED,
                    {"key": bucket, "reason": "expiry bucket: its whole day has passed"},
                    at=now,
                )

        # Released holds: their keys are no longer needed.
        for hold in self.catalog.holds():
            name = hold_bucket(hold.hold_id)
            if hold.released_at is not None and self.keystore.has_bucket(name) and not dry_run:
                self.keystore.destroy_bucket(name)
                self.log.append(
                    T_KEY_DESTROYED, {"key": name, "reason": "the hold was released"}, at=now
                )

        # The log's personal fields: access details after 12 months, call refs after 13.
        keyring = self.store.keyring
        carried = False
        for kid in keyring.sealing_key_ids():
            klass, _, ym = kid.partition("/")
            year, month = int(ym[:4]), int(ym[5:7])
            keep = ACCESS_RETENTION_MONTHS if klass == "access" else CALLS_RETENTION_MONTHS
            if _months_after(year, month, keep) <= today:
                report.log_keys_destroyed.append(kid)
                if not dry_run and klass == "calls" and not carried:
                    # The objection list logged again under this month first, so that it can
                    # still be replayed once the entries that added its callers are unreadable.
                    self.store.log_objection_list(self.log, now)
                    carried = True
                if not dry_run:
                    keyring.destroy_sealing_key(kid)
                    self.log.append(
                        T_KEY_DESTROYED,
                        {"key": kid, "reason": f"log details kept {keep} months"},
                        at=now,
                    )
        if not dry_run:
            self.log.flush()
        return report

    def _held_ids(self, now_us: int) -> set[str]:
        out: set[str] = set()
        for hold in self.catalog.holds():
            if hold.active(now_us):
                out.update(rid for rid, _ in self.catalog.hold_members(hold.hold_id))
        return out

    def _actively_held(self, row: RecordingRow, now_us: int) -> bool:
        return any(h.active(now_us) for h, _ in self.catalog.holds_of(row.recording_id))

    def _expire(self, row: RecordingRow, now: datetime) -> None:
        self._expire_many([row], now)

    def _expire_many(self, rows: list[RecordingRow], now: datetime) -> None:
        """Crypto-shred recordings, in the crash-safe order of the module docstring (each step
        one catalog transaction for the whole batch)."""
        ids = [r.recording_id for r in rows]
        self.catalog.update_many(
            [r.recording_id for r in rows if r.status != "expiring"], status="expiring"
        )
        for row in rows:
            self.vault.blobs.delete(row.file)
        for row in rows:
            for hold, wrapped in self.catalog.holds_of(row.recording_id):
                if wrapped is not None:
                    self.catalog.forget_hold_key(hold.hold_id, row.recording_id)
        self.catalog.update_many(
            ids, wrapped_key=None, call_ref=None, caller_pseudonym=None, agent=None, attrs={}
        )
        self.catalog.delete_notes(ids)  # sealed under the data key just forgotten: gone too
        for row in rows:
            self.log.append(
                T_EXPIRED,
                {
                    "recording_id": row.recording_id,
                    "bucket": row.bucket,
                    "expires_at": row.expires_at_sealed,
                },
                at=now,
            )
        self.log.flush()  # the tombstones are durable before the rows say "expired"
        self.catalog.update_many(ids, status="expired")

    # -- holds -------------------------------------------------------------------------------------

    def select(
        self, query: Mapping[str, Any], *, principal: Principal | None = None
    ) -> list[RecordingRow]:
        """Recordings matching a query: ``rule``, ``purpose``, ``agent``, ``status`` equal to a
        value, ``from``/``to`` bounds (datetimes) on the start time, ``ids`` a list of ids.

        Their metadata is a read: ``principal`` needs the ``list`` permission (no principal:
        the store's owner), only the rows in the scope of a role granting it are returned, and
        the access is logged, as for :meth:`Vault.recordings <sampledrec.Vault.recordings>`."""
        who = self.vault.acting(principal, "list")
        rows = self._select(query)
        allowed = self.vault.authorize(who, "list")
        return [row for row in rows if self.vault.in_scope(allowed, row)]

    def _select(self, query: Mapping[str, Any]) -> list[RecordingRow]:
        allowed = {"rule", "purpose", "agent", "status", "from", "to", "ids"}
        unknown = set(query) - allowed
        if unknown:
            raise InvalidArgument(
                f"unknown query keys {sorted(unknown)}; use {', '.join(sorted(allowed))}"
            )
        rows = self.catalog.find(status=["sealed", "truncated"])
        out = []
        for r in rows:
            if "ids" in query and r.recording_id not in set(query["ids"]):
                continue
            if any(k in query and getattr(r, k) != query[k] for k in ("rule", "purpose", "agent")):
                continue
            if "from" in query and r.started_at < to_micros(query["from"]):
                continue
            if "to" in query and r.started_at >= to_micros(query["to"]):
                continue
            out.append(r)
        return out

    def hold(
        self,
        recordings: Iterable[str] | Mapping[str, Any],
        *,
        reason: str,
        until: datetime | None = None,
        principal: Principal | None = None,
    ) -> Hold:
        """Place a legal hold on recordings (ids, or a query for :meth:`select`): their data
        keys are re-wrapped to the hold's key before their bucket can be destroyed.

        ``principal`` needs the ``hold`` permission (role ``dpo``; no principal: the store's
        owner) on every recording held; a bare name is refused with
        :class:`~sampledrec.errors.InvalidArgument`, a principal whose roles do not allow it
        with :class:`~sampledrec.errors.AccessDenied`, and the attempt is logged either way."""
        with self.store.lock():
            return self._hold(recordings, reason=reason, until=until, principal=principal)

    def _hold(
        self,
        recordings: Iterable[str] | Mapping[str, Any],
        *,
        reason: str,
        until: datetime | None,
        principal: Principal | None,
    ) -> Hold:
        who = self.vault.acting(principal, "hold")
        if not reason or not reason.strip():
            raise InvalidArgument("a legal hold needs a reason (the case or request behind it)")
        now = self.clock.now()
        if until is not None and until <= now:
            raise InvalidArgument(
                f"until={until.isoformat()} is in the past; a hold must end later"
            )
        if isinstance(recordings, Mapping):
            rows = self._select(recordings)  # checked below, for the hold permission
        else:
            ids = list(recordings)
            rows = []
            for rid in ids:
                row = self.catalog.get(rid)
                if row is None:
                    raise RecordingNotFound(f"no recording {rid!r}")
                if row.status not in ("sealed", "truncated"):
                    raise InvalidArgument(
                        f"recording {rid} is {row.status}: only sealed recordings can be held"
                    )
                rows.append(row)
        self._may_hold(who, rows)
        hold = Hold(
            hold_id=str(uuid.uuid4()),
            reason=reason.strip(),
            created_at=to_micros(now),
            until=None if until is None else to_micros(until),
        )
        name = hold_bucket(hold.hold_id)
        self.keystore.ensure_bucket(name)
        self.catalog.add_hold(hold)
        held: list[str] = []
        for row in rows:
            try:
                key = self.vault.data_key(row, principal=who, now=now)
            except KeyDestroyed:
                continue  # already crypto-shredded: nothing left to hold
            wrapped = self.keystore.wrap(
                name, key, aad=data_key_aad(row.recording_id, row.expires_at_sealed)
            )
            self.catalog.add_hold_member(hold.hold_id, row.recording_id, wrapped)
            self.catalog.update(row.recording_id, expires_at=HELD_UNTIL)
            held.append(row.recording_id)
        self.log.append(
            T_HOLD,
            {
                "hold_id": hold.hold_id,
                "action": "placed",
                "recordings": len(rows),
                "until": hold.until,
                "recording_ids": hold_recording_ids(held),
                "reason": hold.reason,
                "principal": who.name,
            },
            at=now,
        )
        self.log.flush()
        return hold

    def _may_hold(self, who: Principal, rows: Iterable[RecordingRow]) -> Grant:
        """The grant of ``hold`` to ``who``, reaching every recording of ``rows``; a refusal
        is logged and raises :class:`AccessDenied`, before anything changes."""
        allowed = self.vault.authorize(who, "hold")
        for row in rows:
            if not self.vault.in_scope(allowed, row):
                self.vault.log_access("hold", "denied", who, row.recording_id, "out of scope")
                raise AccessDenied(
                    f"principal {who.name!r} may not hold recording {row.recording_id}: it is "
                    f"outside the scope of its roles ({allowed.describe()})"
                )
        return allowed

    def release(
        self,
        hold_id: str,
        *,
        principal: Principal | None = None,
        now: datetime | None = None,
    ) -> Hold:
        """End a hold: its recordings return to their original expiry (expired at once if it
        has passed and no other hold keeps them).

        ``principal`` as for :meth:`hold`. ``now`` (default: the clock) may be later than the
        clock only in a simulated store: releasing expires recordings, and a real store
        destroys nothing ahead of the real clock (:class:`~sampledrec.errors.InvalidArgument`).
        """
        who = self.vault.acting(principal, "hold")
        when = self._destroying_at(now, "releases holds (and expires what they kept)")
        hold = self.catalog.get_hold(hold_id)
        if hold is None:
            raise InvalidArgument(f"no hold {hold_id!r}; 'sampledrec hold list' shows them")
        if hold.released_at is not None:
            return hold
        members = [self.catalog.get(rid) for rid, _ in self.catalog.hold_members(hold_id)]
        self._may_hold(who, [row for row in members if row is not None])
        with self.store.lock():
            self._release(hold, to_micros(when), "released", principal=who.name)
            # The erasures this hold deferred, in the same operation; a crash before this line
            # leaves them deferred, and the next sweep carries them out (as it does those of
            # other holds, which are not this principal's doing).
            erase_deferred(
                self.vault,
                self.log,
                self._acting_now(when),
                by=who.name,
                recordings={rid for rid, _ in self.catalog.hold_members(hold_id)},
            )
        self.log.flush()
        released = self.catalog.get_hold(hold_id)
        assert released is not None
        return released

    def _acting_now(self, when: datetime) -> datetime:
        """``when``, or the clock if it is later: holds are judged as of the later of both."""
        return from_micros(max(to_micros(when), to_micros(self.clock.now())))

    def _release(
        self,
        hold: Hold,
        at_us: int,
        why: str,
        *,
        principal: str = "sampledrec",
        expire_now: bool = True,
    ) -> None:
        self.catalog.update_hold(hold.hold_id, released_at=at_us)
        now = self._acting_now(from_micros(at_us))
        members = self.catalog.hold_members(hold.hold_id)
        for rid, _ in members:
            row = self.catalog.get(rid)
            if row is None or row.status not in ("sealed", "truncated"):
                continue
            if self._actively_held(row, to_micros(now)):
                continue  # another hold still keeps it
            self.catalog.update(rid, expires_at=row.expires_at_sealed)
            if expire_now and row.expires_at_sealed <= to_micros(now):
                fresh = self.catalog.get(rid)
                assert fresh is not None
                self._expire(fresh, now)
        self.log.append(
            T_HOLD,
            {
                "hold_id": hold.hold_id,
                "action": "released",
                "recordings": len(members),
                "recording_ids": hold_recording_ids(rid for rid, _ in members),
                "reason": why,
                "principal": principal,
            },
            at=now,
        )
