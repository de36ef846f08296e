"""The decision log's writer: append-only, tamper-evident, signed, with group commit.

:class:`DecisionLog` appends entries to a log kept by a :class:`~.storage.LogStorage` (a store's
``STORE/log/`` by default): in batches of records, each followed by a trailer holding the
RFC 6962 compact range of the whole log after it (:mod:`.segments` has the byte layout,
``docs/log-format.md`` the specification), in segments of about 64 MiB, and it signs
checkpoints over the tree. Any change to an entry, a length, a header or a trailer shows up
when the batch is re-hashed. A batch is written and made durable as a unit; a crash leaves at
most one incomplete batch at the end, which reopening sets aside (it was never durable) and
reports.

Concurrency: every write happens under the storage's exclusive lock. A writer that finds the
log grown by another process reads the new batches' trailers to catch up before appending, so
threads and processes share one consistent tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple, Protocol, TypeAlias

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    CheckpointError,
    InvalidArgument,
    LogCorrupt,
    LogRepairRefused,
    SampledrecError,
    StoreError,
)
from ..sampling.record import REASONS, DecisionRecord
from . import hashing as _hashing
from . import segments
from .checkpoint import Checkpoint, LogSigner
from .format import (
    DECISION,
    ENTRY_HEADER,
    FORMAT_VERSION,
    T_CHECKPOINT,
    T_DECISION,
    T_KEY_COMMIT,
    T_LOG_CREATED,
    T_LOG_GAP,
    T_POLICY,
    TAG_SEALED,
    Entry,
    decode_entry,
    field_bytes,
    header,
    key_check_value,
    ref_value,
    sealing_class,
    split_personal,
    to_micros,
)
from .merkle import CompactRange
from .repair import Piece, RepairPlan, RepairReport, gap_values, survey
from .segments import (
    BATCH_HEADER,
    BATCH_MAGIC,
    SEG_HEADER,
    SEG_MAGIC,
    U32,
    batch_extent,
    iter_batches,
    parse_batch,
    skip_batch,
    split_records,
    trailer_bytes,
)
from .storage import CHECKPOINTS, LogStorage, log_storage, segment_name

__all__ = [
    "REPAIR_HINT",
    "CheckpointListener",
    "DecisionLog",
    "LogCorrupt",
    "RecoveryReport",
    "iter_entries",
    "unsealer",
]

#: What every refusal to open a damaged log ends with: how to look, and the way out.
REPAIR_HINT: Final = (
    "run 'sampledrec log verify' to see the damage, then 'sampledrec log repair' to cut the log "
    'back to its last good batch (docs/operations.md, "When the log is damaged")'
)

_REASON_INDEX: Final = {r: i for i, r in enumerate(REASONS)}
_EPOCH_ORDINAL: Final = 719163  # date(1970, 1, 1).toordinal()
_EPOCH_DT: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_DurableCallback: TypeAlias = Callable[[dict[int, int] | BaseException], None]
_CALLBACKS: Final = itertools.count()  # ties in when_durable's heap: first come, first called


def _decision_fields(record: DecisionRecord) -> tuple[bytes, bytes]:
    """The public fields of a decision entry before its draw's value (the draw field's tag and
    length included) and after it. They depend only on the record's first five fields, the
    same for long runs of decisions: the encoders cache them."""
    d = DECISION
    return (
        field_bytes(d.epoch_id.tag, record.epoch_id.encode())
        + field_bytes(d.policy_version.tag, bytes.fromhex(record.policy_version))
        + field_bytes(d.rule.tag, record.rule.encode())
        + field_bytes(d.threshold.tag, record.threshold.to_bytes(d.threshold.size, "big"))
        + bytes((d.draw.tag, d.draw.size)),
        field_bytes(d.reason.tag, _REASON_INDEX[record.reason].to_bytes(d.reason.size, "big")),
    )


# Where the C encoder finds, by position, the fields of a record that it encodes itself (it
# reads the tuple as it is); the fields before the draw are those ``_decision_fields`` encodes.
_C_RECORD_FIELDS: Final = tuple(
    map(
        DecisionRecord._fields.index,
        ("draw", "call_ref", "agent", "caller_pseudonym", "decided_at", "attributes"),
    )
)


def _micros(moment: datetime) -> int:
    """Microseconds since 1970 (UTC), without timedelta arithmetic when already in UTC."""
    if moment.tzinfo is not UTC:
        return to_micros(moment)
    return (
        (moment.toordinal() - _EPOCH_ORDINAL) * 86400
        + moment.hour * 3600
        + moment.minute * 60
        + moment.second
    ) * 1_000_000 + moment.microsecond


@dataclass
class RecoveryReport:
    """What reopening after a crash found and set aside."""

    dropped_bytes: int = 0
    dropped_entries: int = 0
    moved_to: str | None = None  # where the storage set the dropped bytes aside
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.dropped_bytes > 0 or bool(self.notes)

    def __str__(self) -> str:
        if not self:
            return "log intact"
        parts = list(self.notes)
        if self.dropped_bytes:
            parts.append(
                f"an incomplete batch ({self.dropped_bytes} bytes, "
                f"{self.dropped_entries or 'unknown number of'} entries) was never durable and "
                f"was moved to {self.moved_to}"
            )
        return "; ".join(parts)


class _Prepared(NamedTuple):
    """An entry other than a decision, encoded when it was queued: its personal fields are still
    in clear, to be sealed under ``kid`` (``None`` when it has none)."""

    etype: int
    time_us: int
    public: bytes
    personal: bytes
    kid: str | None


# A queued entry: its ticket (0 for the entries nobody waits for) and what to write. Decisions
# are queued as the sampler made them (the hot path); the writer thread encodes them in bulk.
_Queued = tuple[int, DecisionRecord | _Prepared]
# Queued decisions are kept out of the garbage collector's way, as plain tuples would be (see
# hashing.untrack): the queue holds up to max_batch of them.
_untrack: Final = _hashing.untrack


class _Sealer:
    """AES-256-CTR sealing of personal fields: one keystream per batch and key, each entry's
    plaintext starting on a fresh counter block, so each entry has its own initial counter."""

    def __init__(self, keyring: Any) -> None:
        self._keyring = keyring
        self.prefix = secrets.token_bytes(8)  # unique per writer session
        self.counter = 0  # the next free counter block

    def seal(self, kid: str, plaintexts: list[bytes]) -> list[bytes]:
        """The sealed fields of ``plaintexts`` under ``kid``."""
        key = self._keyring.sealing_key(kid, create=True)
        prefix = self.prefix
        block = base = self.counter
        ivs = []
        padded = []
        for p in plaintexts:
            ivs.append(prefix + block.to_bytes(8, "big"))
            nblocks = (len(p) + 15) >> 4
            padded.append(p + _ZEROS[: nblocks * 16 - len(p)])
            block += nblocks
        self.counter = block
        enc = Cipher(algorithms.AES(key), modes.CTR(prefix + base.to_bytes(8, "big")))
        stream = enc.encryptor().update(b"".join(padded))
        kid_b = kid.encode("ascii")
        head = bytes((len(kid_b),)) + kid_b + key_check_value(key)
        out = []
        pos = 0
        for iv, p in zip(ivs, plaintexts, strict=True):
            n = len(p)
            out.append(field_bytes(TAG_SEALED, head + iv + stream[pos : pos + n]))
            pos += (n + 15) & ~15
        return out


_ZEROS: Final = bytes(16)


class SealingKeys:
    """The log's sealing keys read from a keyring (anything with ``sealing_key(kid)``), each
    looked up, and its check value computed, once per key id: a log has millions of sealed
    fields under a handful of keys."""

    def __init__(self, keyring: Any) -> None:
        self._keyring = keyring
        self._keys: dict[str, tuple[bytes, bytes] | None] = {}

    def key_for(self, kid: str) -> tuple[bytes, bytes] | None:
        """``(key, key check value)``, or ``None`` when the key is gone or unreadable."""
        if kid not in self._keys:
            try:
                key = self._keyring.sealing_key(kid)
            except SampledrecError:
                key = None
            self._keys[kid] = None if key is None else (key, key_check_value(key))
        return self._keys[kid]

    def unseal(self, kid: str, kcv: bytes, iv: bytes, ciphertext: bytes) -> bytes | None:
        """The plaintext of a sealed field, or ``None`` without the key it was sealed with."""
        got = self.key_for(kid)
        if got is None or not hmac.compare_digest(got[1], kcv):
            return None
        dec = Cipher(algorithms.AES(got[0]), modes.CTR(iv)).decryptor()
        return dec.update(ciphertext)


def unsealer(keyring: Any) -> Callable[[str, bytes, bytes, bytes], bytes | None]:
    return SealingKeys(keyring).unseal


_KIDS: dict[tuple[str, int], str] = {}


def _kid(moment_us: int, klass: str = "calls") -> str:
    """The sealing key id of a time: its retention class and UTC month."""
    day = moment_us // 86_400_000_000
    kid = _KIDS.get((klass, day))
    if kid is None:
        t = time.gmtime(day * 86_400)
        kid = _KIDS[(klass, day)] = f"{klass}/{t.tm_year:04d}-{t.tm_mon:02d}"
    return kid


class CheckpointListener(Protocol):
    """What :meth:`DecisionLog.add_listener` calls: both must return at once (they run on
    the log's writer thread)."""

    def checkpoint_written(self, checkpoint: Checkpoint) -> None:
        """A checkpoint was signed and stored."""

    def log_closed(self) -> None:
        """The log was closed (after its final checkpoint, if any)."""


class DecisionLog:
    """An open log, for appending. Use :meth:`create` once, then :meth:`open`.

    ``append`` returns a ticket as soon as the entry is queued; a background writer encodes,
    seals, hashes and fsyncs queued entries in batches at most ``group_commit`` seconds apart.
    ``wait_durable(ticket)`` blocks until that entry is on disk.
    """

    def __init__(
        self,
        log: LogStorage | str | os.PathLike[str],
        keyring: Any,
        *,
        origin: str,
        store_id: bytes,
        clock: Clock = SYSTEM_CLOCK,
        group_commit: float = 0.05,
        checkpoint_every: float = 2.0,
        max_batch: int = 20000,
    ) -> None:
        #: Where the log's bytes are: ``log``, or the local log of the store folder ``log``.
        self.storage = log_storage(log, in_store=True)
        self._keyring = keyring
        self.origin = origin
        self.store_id = store_id
        self._clock = clock
        self.group_commit = group_commit
        self.checkpoint_every = checkpoint_every
        self.max_batch = max_batch
        self._signer = LogSigner(origin, keyring.signing_seed())
        self._sealer = _Sealer(keyring)
        self._cond = threading.Condition()  # wakes the writer and durability waiters
        self._qlock = threading.Lock()  # guards the queue and ticket numbers (hot path)
        self._write_lock = threading.Lock()  # one batch or checkpoint write at a time
        self._queue: list[_Queued] = []
        self._next_ticket = 1
        self._durable_ticket = 0
        self._ticket_index: dict[int, int] = {}
        #: when_durable's callbacks, by the ticket they wait for (a heap: the lowest first).
        self._callbacks: list[tuple[int, int, _DurableCallback, tuple[int, ...]]] = []
        self._flush_requested = False
        self._closed = False
        self._error: BaseException | None = None
        self._cr = CompactRange()
        self._seg: int | None = None  # the last segment (its first entry index), once known
        self._seg_end = 0  # the end of its whole batches
        self._last_cp_size = -1
        self._last_cp_time = 0.0
        self._cp_end = 0
        self.recovery = RecoveryReport()
        self._field_cache: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
        self._c_cache: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
        self._record_key: tuple[str, bytes, bytes] | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[CheckpointListener] = []

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        log: LogStorage | str | os.PathLike[str],
        keyring: Any,
        *,
        origin: str,
        store_id: bytes,
        simulated: bool,
        clock: Clock = SYSTEM_CLOCK,
        software: str = "",
    ) -> DecisionLog:
        """Create the log (in ``log``, a storage or a store folder) with its first entry
        (``log_created``) and first checkpoint."""
        writer = cls(log, keyring, origin=origin, store_id=store_id, clock=clock)
        writer.storage.create()
        writer._seg, writer._seg_end = None, 0  # segment 0 comes with the first batch
        writer._start()
        writer.append(
            T_LOG_CREATED,
            {
                "origin": origin,
                "store_id": store_id,
                "public_key": writer._signer.public_key,
                "simulated": simulated,
                "software": software,
            },
        )
        writer.flush()
        return writer

    @classmethod
    def open(
        cls,
        log: LogStorage | str | os.PathLike[str],
        keyring: Any,
        *,
        origin: str,
        store_id: bytes,
        **kw: Any,
    ) -> DecisionLog:
        """Open the log in ``log`` (a storage or a store folder) for appending; recovers from a
        crash (see :attr:`recovery`)."""
        writer = cls(log, keyring, origin=origin, store_id=store_id, **kw)
        if not writer.storage.exists():
            raise StoreError(
                f"{writer.storage.location()} is missing: the store has no decision log"
            )
        with writer.storage.lock():
            writer.recovery = writer._recover()
        writer._start()
        return writer

    def add_listener(self, listener: CheckpointListener) -> None:
        """Tell ``listener`` of every checkpoint this writer signs and of the log's close (the
        store's witnessing, :mod:`sampledrec.witness.client`). It is called on the writer's
        thread, under the log's lock: it must only take note and return."""
        self._listeners.append(listener)

    @property
    def signer(self) -> LogSigner:
        return self._signer

    @property
    def size(self) -> int:
        """Entries durable in the log, as last seen by this writer."""
        return self._cr.size

    @property
    def pending(self) -> int:
        """Entries queued by this writer and not yet durable (the depth of its group commit's
        queue, as a server's metrics show it); never blocks."""
        return max(0, self._next_ticket - 1 - self._durable_ticket)

    @property
    def failure(self) -> str | None:
        """Why the writer thread stopped writing (nothing more can be appended), or None while
        it works: what a server's health check reports."""
        error = self._error
        return None if error is None else f"{type(error).__name__}: {error}"

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampledrec-log", daemon=True)
        self._thread.start()

    def _recover(self, *, at_open: bool = True) -> RecoveryReport:
        """Find the end of the durable log (under the lock) and set aside a torn last batch.

        Only the *last* batch of the log can be torn by a crash (each batch is fsynced before
        the next is written), and only if no checkpoint covers it. Anything else that does not
        verify is damage or tampering: nothing is touched and :class:`LogCorrupt` says so.
        """
        report = RecoveryReport()
        storage = self.storage
        if storage.pending_repair() is not None:
            raise LogCorrupt(
                f"{storage.location()}: a repair of the log was interrupted; run 'sampledrec log "
                "repair' again to finish it"
            )
        segs = storage.segments()
        if not segs:
            raise LogCorrupt(f"{storage.location()} has no segment; the log was deleted or damaged")
        # Checkpoints first: they bound what may be set aside.
        try:
            cps = storage.read_checkpoints()
        except FileNotFoundError:
            cps = b""
        notes, cp_end = split_records(cps)
        latest = 0
        for note in notes:
            try:
                latest = max(latest, Checkpoint.parse(note).size)
            except CheckpointError:
                raise LogCorrupt(
                    f"{CHECKPOINTS}: a checkpoint record is damaged; {REPAIR_HINT}"
                ) from None
        self._check_chain(segs)
        seg = segs[-1]
        name = segment_name(seg)
        data = storage.read_segment(seg)
        if len(data) < SEG_HEADER.size:
            raise LogCorrupt(f"{name}: truncated segment header; {REPAIR_HINT}")
        magic, store_id, first = SEG_HEADER.unpack_from(data, 0)
        if magic != SEG_MAGIC or store_id != self.store_id or first != seg:
            raise LogCorrupt(f"{name}: not a segment of this store's log; {REPAIR_HINT}")
        cr = self._range_before(segs) if first > 0 else CompactRange()
        if cr.size != first:
            raise LogCorrupt(
                f"{name} starts at entry {first} but the segments before it end at entry "
                f"{cr.size}: a segment is missing; {REPAIR_HINT}"
            )
        pos = SEG_HEADER.size
        while pos < len(data):
            parsed = parse_batch(data, pos, cr)
            if parsed is None:
                break
            cr, pos = parsed
        if pos < len(data):
            tail = data[pos:]
            whole = batch_extent(tail)
            if whole is not None and pos + whole < len(data):
                raise LogCorrupt(
                    f"{name}: the batch at offset {pos} does not verify and is not the last "
                    f"one: the log was damaged or tampered with; {REPAIR_HINT}"
                )
            if cr.size < latest:
                raise LogCorrupt(
                    f"{name}: the batch at offset {pos} does not verify but a checkpoint "
                    f"covers {latest} entries: the log was damaged or tampered with; "
                    f"{REPAIR_HINT}"
                )
            count = 0
            if len(tail) >= BATCH_HEADER.size and tail[:4] == BATCH_MAGIC:
                count = BATCH_HEADER.unpack_from(tail, 0)[2]
            report.dropped_bytes = len(tail)
            report.dropped_entries = count
            report.moved_to = storage.set_aside(name, pos, tail)
            if whole is not None:
                report.notes.append(
                    "the last batch was whole but did not verify: after a power loss this is a "
                    "torn write; if the machine did not crash, it is tampering"
                )
            storage.truncate_segment(seg, pos)
        if latest > cr.size:
            raise LogCorrupt(
                f"the latest checkpoint covers {latest} entries but the log holds only "
                f"{cr.size}: the log was truncated; {REPAIR_HINT}"
            )
        self._cr = cr
        self._seg, self._seg_end = seg, pos
        if cp_end < len(cps):
            moved = storage.set_aside(CHECKPOINTS, cp_end, cps[cp_end:])
            report.notes.append(f"a torn checkpoint record was moved to {moved}")
            storage.truncate_checkpoints(cp_end)
        self._cp_end = cp_end
        self._last_cp_size = latest if notes else -1
        if notes:
            last = Checkpoint.parse(notes[-1])
            if at_open and last.size == cr.size and cr.size and last.root == cr.root():
                # The checkpoint written when the log was last closed is not in the tree yet:
                # record it now, so that deleting it is detected like any other.
                public, _ = split_personal(T_CHECKPOINT, {"size": last.size, "root": last.root})
                self._queue.append(
                    (0, _Prepared(T_CHECKPOINT, to_micros(self._clock.now()), public, b"", None))
                )
        return report

    def _check_chain(self, segs: list[int]) -> None:
        """Every segment but the last is of this log and ends where the next one starts: read
        from each one's header and last trailer only (cheap), so that a segment missing,
        renamed or of another log stops the writer wherever it is."""
        if segs[0] != 0:
            raise LogCorrupt(f"the first segment of the log is missing; {REPAIR_HINT}")
        for first, after in itertools.pairwise(segs):
            name = segment_name(first)
            data = self.storage.map_segment(first)
            if len(data) < SEG_HEADER.size or SEG_HEADER.unpack_from(data, 0) != (
                SEG_MAGIC,
                self.store_id,
                first,
            ):
                raise LogCorrupt(f"{name}: not a segment of this store's log; {REPAIR_HINT}")
            end = segments.last_trailer(data)
            del data
            if end is None or end.size != after:
                raise LogCorrupt(
                    f"{segment_name(after)} starts at entry {after} but {name} does not end "
                    f"there ({'damaged' if end is None else f'at entry {end.size}'}): a segment "
                    f"is missing or damaged; {REPAIR_HINT}"
                )

    def _range_before(self, segs: list[int]) -> CompactRange:
        """The compact range at the start of the last segment: the previous one's last trailer."""
        if len(segs) < 2:
            raise LogCorrupt(f"the first segment of the log is missing; {REPAIR_HINT}")
        prev = self.storage.read_segment(segs[-2])
        name = segment_name(segs[-2])
        pos = SEG_HEADER.size
        last: CompactRange | None = None
        while pos < len(prev):
            got = skip_batch(prev, pos)
            if got is None:
                raise LogCorrupt(f"{name}: damaged batch at offset {pos}; {REPAIR_HINT}")
            last, pos = got
        if last is None:
            raise LogCorrupt(f"{name} holds no batch; {REPAIR_HINT}")
        return last

    # -- repairing -----------------------------------------------------------------------------

    @classmethod
    def repair(
        cls,
        log: LogStorage | str | os.PathLike[str],
        keyring: Any,
        *,
        origin: str,
        store_id: bytes,
        principal: str,
        reason: str,
        restore: Sequence[tuple[int, Mapping[str, Any]]] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> RepairReport:
        """Repair a damaged log, deliberately: never done by :meth:`open`.

        Finds the first damaged point (a batch that does not verify, a segment missing or not
        of this log, a checkpoint that does not verify or covers more than the log holds, see
        :func:`~.repair.survey`); sets aside, byte for byte and through the storage, everything
        from there on (the rest of that segment, every later segment, the checkpoint records
        from the first bad one on); cuts the log back to the last good batch; appends a
        ``log_gap`` entry that records what was lost and where it was kept, by ``principal``,
        because of ``reason``; and signs a fresh checkpoint. The store can then decide and
        record again; verification reports the gap as a failure, for good.

        ``restore``: entries to log right after the gap entry, of which the log kept before the
        damage does not hold the same: key commitments (``T_KEY_COMMIT``: same epoch and
        commitment) and policies (``T_POLICY``: same version), which may have been in the part
        set aside, so that decisions made after the repair can be checked
        (``Store.repair_log`` passes every epoch key of the keyring and every applied policy).

        Every other process using the log must be stopped first. A crash at any step leaves a
        log that still needs this repair (it refuses to open; the repair's plan, kept beside the
        log, is finished by calling this again) or a repaired one. Raises
        :class:`~sampledrec.errors.LogRepairRefused` when there is nothing to repair.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidArgument(
                "a repair needs a reason: say why the log is cut back (it is logged)"
            )
        if not isinstance(principal, str) or not principal.strip():
            raise InvalidArgument("a repair needs the name of who repairs (it is logged)")
        writer = cls(log, keyring, origin=origin, store_id=store_id, clock=clock)
        if not writer.storage.exists():
            raise StoreError(
                f"{writer.storage.location()} is missing: the store has no decision log"
            )
        with writer.storage.lock():
            return writer._repair(principal.strip(), reason.strip(), restore)

    def _repair(
        self, principal: str, reason: str, restore: Sequence[tuple[int, Mapping[str, Any]]]
    ) -> RepairReport:
        storage = self.storage
        pending = storage.pending_repair()
        resumed = pending is not None
        if pending is not None:
            plan = RepairPlan.from_json(pending)
        else:
            found = survey(
                storage,
                store_id=self.store_id,
                origin=self.origin,
                public_key=self._signer.public_key,
                keep_types=frozenset(etype for etype, _ in restore),
            )
            if found.torn_tail_only:
                raise LogRepairRefused(
                    "nothing to repair: the log only ends with a torn write that was never "
                    "durable (a crash), which opening the log sets aside by itself"
                )
            if found.plan is None:
                raise LogRepairRefused(
                    "nothing to repair: every batch and every checkpoint of the log verifies"
                )
            plan = found.plan
            plan.time_us = to_micros(self._clock.now())
            plan.principal, plan.reason = principal, reason
            plan.restore = self._restore_records(restore, found.kept, plan.time_us)
            # Copies first: until the plan is stored, the log itself is not changed.
            for piece in plan.pieces:
                if not piece.whole:
                    data = self._piece_bytes(piece)
                    if hashlib.sha256(data).hexdigest() != piece.sha256:  # pragma: no cover
                        raise LogCorrupt(f"{piece.name} changed while the repair read it")
                    piece.kept_at = storage.set_aside(piece.name, piece.offset, data)
            storage.set_pending_repair(plan.to_json())
        # From here on every step can be done again, after a crash, from the stored plan.
        for piece in plan.pieces:
            if piece.whole and piece.kept_at is None:
                piece.kept_at = self._move_aside(piece)
                storage.set_pending_repair(plan.to_json())
        if storage.read_segment(plan.segment, plan.segment_end):
            storage.truncate_segment(plan.segment, plan.segment_end)
        if storage.read_checkpoints(plan.checkpoints_cut):
            storage.truncate_checkpoints(plan.checkpoints_cut)
        self._write_gap(plan)
        self._cp_end = plan.checkpoints_cut
        self._closed = True  # the next writer that opens the log records the checkpoint
        cp = self._write_checkpoint()
        storage.set_pending_repair(None)
        return RepairReport(
            index=plan.size,
            lost_to=plan.lost_to,
            damage=plan.damage,
            pieces=plan.pieces,
            set_aside_sha256=plan.sha256,
            checkpoints_set_aside=plan.checkpoints_set_aside,
            restored=len(plan.restore),
            checkpoint=cp,
            resumed=resumed,
        )

    def _piece_bytes(self, piece: Piece) -> bytes:
        if piece.segment is None:
            return self.storage.read_checkpoints(piece.offset)
        return self.storage.read_segment(piece.segment, piece.offset)

    def _move_aside(self, piece: Piece) -> str:
        """Move a whole segment of the plan out of the log; after a crash it may be out
        already, set aside by the interrupted attempt before it could note where."""
        assert piece.segment is not None
        storage = self.storage
        if piece.segment in storage.segments():
            if hashlib.sha256(storage.read_segment(piece.segment)).hexdigest() != piece.sha256:
                raise LogCorrupt(
                    f"{piece.name} changed since the repair planned to set it aside; the plan "
                    "of the interrupted repair no longer fits the log: ask for support"
                )
            return storage.set_aside_segment(piece.segment)
        for where, data in storage.set_aside_tails().items():
            if (
                piece.name in where
                and len(data) == piece.size
                and hashlib.sha256(data).hexdigest() == piece.sha256
            ):
                return where
        raise LogCorrupt(
            f"{piece.name} is neither in the log nor among what was set aside; the plan of the "
            "interrupted repair no longer fits the log: ask for support"
        )

    def _restore_records(
        self,
        restore: Sequence[tuple[int, Mapping[str, Any]]],
        kept: list[Entry],
        time_us: int,
    ) -> list[bytes]:
        """The records (u32 length + entry) of the ``restore`` entries that the log kept does
        not hold, sealed now."""
        commits = {
            (e.fields.get("epoch_id"), e.fields.get("commitment"))
            for e in kept
            if e.type == T_KEY_COMMIT
        }
        policies = {e.fields.get("version") for e in kept if e.type == T_POLICY}
        out = []
        for etype, values in restore:
            if etype == T_KEY_COMMIT:
                commit = (str(values["epoch_id"]), bytes(values["commitment"]))
                if commit in commits:
                    continue
                commits.add(commit)
            elif etype == T_POLICY:
                version = bytes(values["version"])
                if version in policies:
                    continue
                policies.add(version)
            else:
                raise InvalidArgument(
                    f"a repair re-logs key commitments and policies only, not entries of type "
                    f"0x{etype:02x}"
                )
            out.append(self._record(etype, values, time_us))
        return out

    def _record(self, etype: int, values: Mapping[str, Any], time_us: int) -> bytes:
        """One entry as a record (u32 length + entry), its personal fields sealed now."""
        public, personal = split_personal(etype, values)
        entry = header(etype, time_us) + public
        if personal:
            entry += self._sealer.seal(_kid(time_us, sealing_class(etype)), [personal])[0]
        return U32.pack(len(entry)) + entry

    def _write_gap(self, plan: RepairPlan) -> None:
        """Write the batch of the gap entry (and the entries re-logged after it) where the log
        was cut, under the lock."""
        payload = self._record(T_LOG_GAP, gap_values(plan), plan.time_us) + b"".join(plan.restore)
        count = 1 + len(plan.restore)
        cr = CompactRange(plan.size, plan.hashes)
        if _hashing.hash_records(payload, 0, count, cr) is None:  # pragma: no cover
            raise LogCorrupt("internal error: the gap batch does not parse")
        blob = (
            BATCH_HEADER.pack(BATCH_MAGIC, plan.size, count, len(payload))
            + payload
            + trailer_bytes(cr)
        )
        self._cr = cr
        if plan.segment_end < segments.SEGMENT_BYTES:
            self.storage.write_segment(plan.segment, plan.segment_end, blob)
            self._seg, self._seg_end = plan.segment, plan.segment_end + len(blob)
        elif plan.size in self.storage.segments():
            # Written by an interrupted attempt (the damaged segment of that name was set
            # aside before): write it again.
            self.storage.truncate_segment(plan.size, SEG_HEADER.size)
            self.storage.write_segment(plan.size, SEG_HEADER.size, blob)
            self._seg, self._seg_end = plan.size, SEG_HEADER.size + len(blob)
        else:
            self._seg, self._seg_end = plan.segment, plan.segment_end
            self._append_blob(blob, plan.size)

    # -- appending -----------------------------------------------------------------------------

    def append(
        self,
        etype: int,
        values: dict[str, Any],
        *,
        at: datetime | None = None,
    ) -> int:
        """Queue an entry; returns its ticket (see :meth:`wait_durable`). Its personal fields
        are sealed under the key of its type's retention class (:func:`sealing_class`) and of
        the UTC month of its time."""
        time_us = to_micros(at or self._clock.now())
        public, personal = split_personal(etype, values)
        kid = _kid(time_us, sealing_class(etype)) if personal else None
        return self._enqueue(etype, time_us, public, personal, kid)

    def append_decision(self, record: DecisionRecord) -> int:
        """Queue a decision; returns its ticket (see :meth:`wait_durable`). This is the
        :class:`~sampledrec.sampling.record.DecisionSink` of a store's samplers: the hot path,
        so the record is queued as it is and the writer thread encodes decisions in bulk."""
        with self._qlock:
            if self._closed or self._error is not None:
                self._raise_closed()
            ticket = self._next_ticket
            self._next_ticket = ticket + 1
            q = self._queue
            q.append(_untrack((ticket, record)))
            wake = len(q) == 1 or len(q) >= self.max_batch
        if wake:
            with self._cond:
                self._cond.notify_all()
        return ticket

    def _enqueue(
        self, etype: int, time_us: int, public: bytes, personal: bytes, kid: str | None
    ) -> int:
        with self._qlock:
            if self._closed or self._error is not None:
                self._raise_closed()
            ticket = self._next_ticket
            self._next_ticket = ticket + 1
            self._queue.append((ticket, _Prepared(etype, time_us, public, personal, kid)))
        with self._cond:
            self._cond.notify_all()
        return ticket

    def _failure(self) -> StoreError:
        return StoreError(f"the decision log writer failed: {self._error}")

    def _raise_closed(self) -> None:
        if self._error is not None:
            raise self._failure()
        raise StoreError("the decision log is closed")

    def wait_durable(self, ticket: int, timeout: float | None = None) -> int:
        """Block until the entry of ``ticket`` is fsynced; returns its index in the log
        (or -1 if it was already collected)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._durable_ticket < ticket:
                if self._error is not None or self._thread is None:
                    self._raise_closed()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"entry {ticket} not durable after {timeout} s")
                self._flush_requested = True  # a recorder is waiting: skip the group wait
                self._cond.notify_all()
                self._cond.wait(remaining)
            return self._ticket_index.pop(ticket, -1)

    def when_durable(self, tickets: Sequence[int], callback: _DurableCallback) -> None:
        """Call ``callback`` once every entry of ``tickets`` is fsynced, with each ticket's
        index in the log (-1 if it was already collected), or with the error if the writer
        fails first; like :meth:`wait_durable`, it asks the writer not to wait for more
        entries. The callback runs on the writer's thread (or on this one, if the entries are
        durable already): it must be quick and must not block, nor call this log.

        A server answers from the callback instead of holding a thread in :meth:`wait_durable`
        per batch of answers: the thread that decides goes on deciding while the log syncs.
        """
        if not tickets:
            raise InvalidArgument("when_durable needs at least one ticket")
        top = max(tickets)
        with self._cond:
            if self._error is None and self._durable_ticket < top and self._thread is None:
                raise StoreError("the decision log is closed")
            heapq.heappush(self._callbacks, (top, next(_CALLBACKS), callback, tuple(tickets)))
            due = self._due_callbacks()  # this one, if durable already (or the writer failed)
            self._flush_requested = True
            self._cond.notify_all()
        for due_callback, result in due:
            due_callback(result)

    def _due_callbacks(self) -> list[tuple[Callable[[Any], None], dict[int, int] | BaseException]]:
        """Under ``_cond``: the callbacks now due, each with what it is to be called with."""
        due: list[tuple[Callable[[Any], None], dict[int, int] | BaseException]] = []
        callbacks = self._callbacks
        if self._error is not None:
            error = self._failure()
            due = [(cb, error) for _, _, cb, _ in callbacks]
            callbacks.clear()
            return due
        durable = self._durable_ticket
        index = self._ticket_index
        while callbacks and callbacks[0][0] <= durable:
            _, _, cb, tickets = heapq.heappop(callbacks)
            due.append((cb, {t: index.pop(t, -1) for t in tickets}))
        return due

    def is_durable(self, ticket: int) -> bool:
        """Whether the entry of ``ticket`` is on disk (never blocks)."""
        return self._durable_ticket >= ticket

    def flush_through(self, ticket: int, timeout: float | None = None) -> bool:
        """Write the queue now (no group-commit wait) and block until the entry of ``ticket``
        is durable, or ``timeout`` seconds passed; returns whether it is durable. Unlike
        :meth:`wait_durable` it leaves the entry's index to whoever waits for it (a recorder
        that records the decision's index), and it returns False, instead of raising, when
        the log is closed or its writer failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._durable_ticket < ticket:
                if self._error is not None or self._thread is None:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._flush_requested = True
                self._cond.notify_all()
                self._cond.wait(remaining)
            return True

    def flush(self) -> None:
        """Block until everything queued so far is durable."""
        with self._qlock:
            last = self._next_ticket - 1
        if last and not self.flush_through(last):
            self.wait_durable(last)  # raises: the log is closed or its writer failed

    def checkpoint(self) -> Checkpoint:
        """Flush, then sign and store a checkpoint of the current tree."""
        self.flush()
        with self._write_lock, self.storage.lock():
            self._catch_up()
            return self._write_checkpoint()

    def close(self) -> None:
        """Flush, write a final checkpoint and stop the writer."""
        if self._thread is None:
            return
        try:
            self.flush()
        finally:
            with self._qlock:
                self._closed = True
            with self._cond:
                self._cond.notify_all()
            self._thread.join()
            self._thread = None
        try:
            if self._error is None:
                with self._write_lock, self.storage.lock():
                    self._catch_up()
                    if self._cr.size != self._last_cp_size:
                        self._write_checkpoint()
        finally:
            for listener in self._listeners:
                listener.log_closed()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait(0.05)
                    if not self._queue and self._closed:
                        return
                    # Group commit: let more entries arrive, unless someone waits for these.
                    deadline = time.monotonic() + self.group_commit
                    while (
                        len(self._queue) < self.max_batch
                        and not self._flush_requested
                        and not self._closed
                    ):
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    self._flush_requested = False
                with self._qlock:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                if not batch:
                    continue
                indices = self._write_batch(batch)
                with self._cond:
                    top = 0
                    for (ticket, _), index in zip(batch, indices, strict=True):
                        if ticket:
                            self._ticket_index[ticket] = index
                            top = ticket
                    # Tickets are queued in order (checkpoint entries carry ticket 0), so every
                    # ticket up to the batch's highest is now durable.
                    self._durable_ticket = max(self._durable_ticket, top)
                    due = self._due_callbacks() if self._callbacks else ()
                    # Tickets nobody waits for need no index: keep the map small.
                    if len(self._ticket_index) > 4 * self.max_batch:
                        for t in sorted(self._ticket_index)[: 2 * self.max_batch]:
                            del self._ticket_index[t]
                    self._cond.notify_all()
                for callback, result in due:
                    callback(result)
        except BaseException as exc:  # the writer must never die silently
            with self._cond:
                self._error = exc
                due = self._due_callbacks()
                self._cond.notify_all()
            for callback, result in due:
                with contextlib.suppress(Exception):  # the writer's own error comes first
                    callback(result)

    def _encode(self, batch: list[_Queued]) -> list[bytes]:
        """Encode a batch of queued items into entries.

        Decisions are encoded in one tight loop (this runs for every call of a call centre):
        the fields they share with other decisions are cached, and their personal fields are
        sealed per key with one AES-CTR keystream for the whole batch.
        """
        cache = self._field_cache
        pack_header = ENTRY_HEADER.pack
        epoch0, one_us = _EPOCH_DT, _ONE_US
        d = DECISION
        draw_size = d.draw.size
        entries: list[bytes] = []
        sealing: dict[str, list[tuple[int, bytes]]] = {}
        last_day, last_kid, plain = -1, "", []
        for _, item in batch:
            if isinstance(item, _Prepared):
                entries.append(pack_header(FORMAT_VERSION, item.etype, item.time_us) + item.public)
                if item.kid is not None:
                    sealing.setdefault(item.kid, []).append((len(entries) - 1, item.personal))
                continue
            key = (item.epoch_id, item.rule, item.reason, item.policy_version, item.threshold)
            fixed = cache.get(key)
            if fixed is None:
                fixed = cache[key] = _decision_fields(item)
            time_us = (item.decided_at - epoch0) // one_us
            entries.append(
                pack_header(FORMAT_VERSION, T_DECISION, time_us)
                + fixed[0]
                + item.draw.to_bytes(draw_size, "big")
                + fixed[1]
            )
            personal = field_bytes(d.call_ref.tag, ref_value(item.call_ref))
            if item.agent is not None:
                personal += field_bytes(d.agent.tag, item.agent.encode())
            if item.caller_pseudonym is not None:
                personal += field_bytes(
                    d.caller_pseudonym.tag, bytes.fromhex(item.caller_pseudonym)
                )
            if item.attributes is not None:
                personal += field_bytes(d.attributes.tag, item.attributes.encode())
            day = time_us // 86_400_000_000
            if day != last_day:
                last_day, last_kid = day, _kid(time_us)
                plain = sealing.setdefault(last_kid, [])
            plain.append((len(entries) - 1, personal))
        for kid, items in sealing.items():
            sealed = self._sealer.seal(kid, [p for _, p in items])
            for (i, _), field_ in zip(items, sealed, strict=True):
                entries[i] += field_
        return entries

    def _records(self, batch: list[_Queued]) -> bytes:
        """The batch as framed records (u32 length + entry), in C when the accelerator is
        built and the batch is all decisions of one month (the usual case)."""
        fast = _hashing.encode_decisions
        first = batch[0][1]
        if fast is not None and isinstance(first, DecisionRecord):
            kid = _kid(_micros(first.decided_at))
            cached = self._record_key  # the month's sealing key, read once a month
            if cached is None or cached[0] != kid:
                key = self._keyring.sealing_key(kid, create=True)
                cached = self._record_key = (kid, key, key_check_value(key))
            key = cached[1]
            got = fast(
                batch,
                DecisionRecord,
                _C_RECORD_FIELDS,
                self._c_cache,
                _decision_fields,
                key,
                self._sealer.prefix,
                self._sealer.counter,
                kid.encode("ascii"),
                cached[2],
            )
            if got is not None:
                records, self._sealer.counter = got
                return bytes(records)
        return b"".join([U32.pack(len(e)) + e for e in self._encode(batch)])

    def _write_batch(self, batch: list[_Queued]) -> list[int]:
        payload = self._records(batch)
        count = len(batch)
        with self._write_lock, self.storage.lock():
            self._catch_up()
            first = self._cr.size
            got = _hashing.hash_records(payload, 0, count, self._cr)
            if got is None:  # pragma: no cover - we built the payload ourselves
                raise LogCorrupt("internal error: a batch does not parse")
            blob = (
                BATCH_HEADER.pack(BATCH_MAGIC, first, count, len(payload))
                + payload
                + trailer_bytes(self._cr)
            )
            self._append_blob(blob, first)
            if time.monotonic() - self._last_cp_time >= self.checkpoint_every:
                self._write_checkpoint()
        return list(range(first, first + count))

    def _append_blob(self, blob: bytes, first: int) -> None:
        if self._seg is None or self._seg_end >= segments.SEGMENT_BYTES:
            # A new segment is born whole, header and first batch: a crash leaves either no
            # segment or a complete one (never an empty one, which would be a finding).
            self.storage.create_segment(
                first, SEG_HEADER.pack(SEG_MAGIC, self.store_id, first) + blob
            )
            self._seg, self._seg_end = first, SEG_HEADER.size + len(blob)
            return
        self.storage.write_segment(self._seg, self._seg_end, blob)
        self._seg_end += len(blob)

    def _catch_up(self) -> None:
        """Under the lock: take in batches other processes appended since we last wrote."""
        # Nobody wrote since our last batch if the segment and the checkpoints end where we
        # left them, and the segment is not full (only then may a writer start a new one):
        # two sizes instead of reading both back and listing the folder, before each batch.
        if (
            self._seg is not None
            and self._seg_end < segments.SEGMENT_BYTES
            and self.storage.tail_sizes(self._seg) == (self._seg_end, self._cp_end)
        ):
            return
        # Finish the segment we knew, then follow any segment another writer started.
        self._read_trailers()
        for seg in self.storage.segments():
            if self._seg is not None and seg > self._seg:
                self._seg, self._seg_end = seg, SEG_HEADER.size
                self._read_trailers()
        new = self.storage.read_checkpoints(self._cp_end)
        if new:
            notes, end = split_records(new)
            self._cp_end += end
            if notes:
                self._last_cp_size = Checkpoint.parse(notes[-1]).size

    def _read_trailers(self) -> None:
        if self._seg is None:
            segs = self.storage.segments()
            if not segs:
                return
            self._seg, self._seg_end = segs[0], SEG_HEADER.size
        data = self.storage.read_segment(self._seg, self._seg_end)
        pos = 0
        while pos < len(data):
            got = skip_batch(data, pos)
            if got is None:
                if batch_extent(data[pos:]) is None and self._seg == self.storage.segments()[-1]:
                    # Another writer crashed mid-batch (we hold the lock, so nobody is
                    # writing): set its torn tail aside, as reopening would.
                    self._seg_end += pos
                    self.recovery = self._recover(at_open=False)
                    return
                raise LogCorrupt(
                    f"{segment_name(self._seg)}: another writer left a damaged batch at offset "
                    f"{self._seg_end + pos}; {REPAIR_HINT}"
                )
            self._cr, pos = got
        self._seg_end += pos

    def _write_checkpoint(self) -> Checkpoint:
        # Signed at the real time, even in a simulated store: it says when the tree was signed.
        cp = self._signer.sign(self._cr.size, self._cr.root(), to_micros(SYSTEM_CLOCK.now()))
        record = U32.pack(len(cp.note)) + cp.note
        self.storage.write_checkpoints(self._cp_end, record)
        self._cp_end += len(record)
        self._last_cp_size = cp.size
        self._last_cp_time = time.monotonic()
        for listener in self._listeners:
            listener.checkpoint_written(cp)
        if not self._closed:
            # Record the checkpoint in the tree too, so that deleting it is detected.
            public, _ = split_personal(T_CHECKPOINT, {"size": cp.size, "root": cp.root})
            with self._qlock:
                self._queue.insert(
                    0, (0, _Prepared(T_CHECKPOINT, to_micros(self._clock.now()), public, b"", None))
                )
        return cp

    def latest_checkpoint(self) -> Checkpoint | None:
        notes, _ = split_records(self.storage.read_checkpoints())
        return Checkpoint.parse(notes[-1]) if notes else None


# -- reading ----------------------------------------------------------------------------------


def iter_entries(
    log: LogStorage | str | os.PathLike[str], keyring: Any | None = None, since: int = 0
) -> Iterator[Entry]:
    """Decode the entries of ``log`` (a storage, or the path of a local log folder) from index
    ``since`` on, personal fields opened with ``keyring``."""
    unseal = unsealer(keyring) if keyring is not None else None
    for b in iter_batches(log):
        if b.first + b.entries > since:
            records, _ = split_records(b.data[b.start : b.end])
            for i, rec in enumerate(records):
                if b.first + i >= since:
                    yield decode_entry(b.first + i, rec, unseal)
