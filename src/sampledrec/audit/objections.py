"""The ``objections`` check: the objection list replayed from the log, against the decisions,
the recordings and the list as it stands (docs/decisions/0018-objections-logged.md).

Every change of a store's objection list is logged, one ``objection`` entry per caller
(``added`` or ``removed``, the caller's pseudonym sealed under ``calls/YYYY-MM``), before the
list is saved. The audit replays those entries in log order and finds:

- a caller on the list decided ``sampled``, ``not_sampled`` or ``cap_reached`` (an honest
  sampler decides ``objection``): their objection was ignored;
- a ``sampled`` decision that names no caller while someone was on the list (an honest sampler
  records nothing then: it cannot rule out that the unnamed caller objected);
- (check ``recordings``) a recording opened for a call whose caller was on the list;
- the list as it stands (the store's ``objections.txt``, or the kit's ``objections.json``)
  differing from the list the log replays: callers added or removed without a log entry.

A running sampler re-reads the list about once a second, so a decision made up to
:data:`~sampledrec.audit.timeline.TIME_SLACK` (60 s) after a caller was added may still have
used the list without them: the rules above hold from then on. An ``objection`` decision for a
caller not on the list is no finding (the call's ``objection`` attribute, or an unnamed caller).

Entries whose sealed pseudonym cannot be read (their ``calls/`` key destroyed after its
retention, or outside the period of a kit) make the replay partial: nothing is concluded from
what they may have held (a removal that cannot be read may have taken any caller off), and the
report says so.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..log.columns import Decisions, RefMatcher, ref_text
from ..log.format import (
    DECISION,
    ENTRY_HEADER,
    IV_SIZE,
    KCV_SIZE,
    T_DECISION,
    T_OBJECTION,
    T_RECORDING_OPENED,
    TAG_SEALED,
    Entry,
    from_micros,
)
from ..log.segments import iter_batches
from ..log.storage import LogStorage
from ..log.writer import SealingKeys
from ..sampling.record import REASONS
from .findings import AuditReport
from .recordings import kept_until_month, month_of_kid
from .timeline import MAX_TIME_US, TIME_SLACK

__all__ = ["GRACE_US", "check_objections", "read_callers"]

#: How long after a caller is added a decision may still have used the list without them (µs).
GRACE_US: Final = int(TIME_SLACK.total_seconds() * 1_000_000)
#: ``read_callers`` codes: the decision names no caller; its sealed field cannot be read; it
#: was not read (logged before the first change of the list).
NO_CALLER: Final = -1
UNREADABLE: Final = -2
NOT_READ: Final = -3

_SAMPLED: Final = REASONS.index("sampled")
_OBJECTION: Final = REASONS.index("objection")
_U32: Final = struct.Struct(">I")
_EXAMPLES: Final = 5
_PSEUDONYM_TAG: Final = DECISION.caller_pseudonym.tag


@dataclass
class Callers:
    """The caller pseudonym of each decision row: ``code[i]`` indexes ``pseudonyms``, or is
    :data:`NO_CALLER`, :data:`UNREADABLE` or :data:`NOT_READ`."""

    code: npt.NDArray[np.int32]
    pseudonyms: list[bytes] = field(default_factory=list)
    _codes: dict[bytes, int] = field(default_factory=dict)

    def code_of(self, pseudonym: bytes) -> int:
        c = self._codes.get(pseudonym)
        if c is None:
            c = self._codes[pseudonym] = len(self.pseudonyms)
            self.pseudonyms.append(pseudonym)
        return c


# -- reading the decisions' callers ------------------------------------------------------------


def read_callers(log: LogStorage, sealing: Any, d: Decisions, start: int) -> Callers:
    """The caller pseudonym of every decision of ``d`` logged at or after entry ``start``,
    read from the log (``log``, the same storage the decisions were read from) and unsealed
    with ``sealing`` (anything with ``sealing_key(kid)``). The column reader leaves this
    personal field out: it is read here, only for the logs whose objection list has changed."""
    out = Callers(np.full(len(d), NOT_READ, dtype=np.int32))
    if not len(d) or start > int(d.index[-1]):
        return out
    keys = SealingKeys(sealing)
    # Per key id: the rows, initial counters and ciphertexts of the sealed fields to open.
    pending: dict[str, tuple[list[int], list[bytes], list[bytes]]] = {}
    index = d.index
    row = int(np.searchsorted(index, start))
    for b in iter_batches(log, mapped=True):
        if b.first + b.entries <= start:
            continue
        data, pos, end = b.data, b.start, b.end
        n = b.first
        while pos + 4 <= end and row < len(d):
            (length,) = _U32.unpack_from(data, pos)
            at, pos = pos + 4, pos + 4 + length
            entry_index, n = n, n + 1
            if entry_index < start or data[at + 1] != T_DECISION:
                continue
            while row < len(d) and int(index[row]) < entry_index:
                row += 1
            if row >= len(d) or int(index[row]) != entry_index:
                continue
            sealed = _sealed_value(data, at + ENTRY_HEADER.size, at + length)
            if sealed is None:
                out.code[row] = NO_CALLER
                continue
            klen = sealed[0]
            kid = bytes(sealed[1 : 1 + klen]).decode("ascii", "replace")
            kcv = bytes(sealed[1 + klen : 1 + klen + KCV_SIZE])
            got = keys.key_for(kid)
            if got is None or got[1] != kcv:
                out.code[row] = UNREADABLE
                continue
            iv_at = 1 + klen + KCV_SIZE
            rows, ivs, cts = pending.setdefault(kid, ([], [], []))
            rows.append(row)
            ivs.append(bytes(sealed[iv_at : iv_at + IV_SIZE]))
            cts.append(bytes(sealed[iv_at + IV_SIZE :]))
    for kid, (rows, ivs, cts) in pending.items():
        got = keys.key_for(kid)
        assert got is not None
        for r, plain in zip(rows, _ctr_many(got[0], ivs, cts), strict=True):
            pseudonym = _personal_field(plain, _PSEUDONYM_TAG)
            out.code[r] = NO_CALLER if pseudonym is None else out.code_of(pseudonym)
    return out


def _sealed_value(data: Any, pos: int, end: int) -> memoryview | None:
    """The value of the sealed field of the entry whose fields are ``data[pos:end]``."""
    while pos + 2 <= end:
        tag, n = data[pos], data[pos + 1]
        pos += 2
        if n == 0xFF:
            (n,) = _U32.unpack_from(data, pos)
            pos += 4
        if tag == TAG_SEALED:
            value = memoryview(data)[pos : min(pos + n, end)]
            return value if len(value) >= 1 + value[0] + KCV_SIZE + IV_SIZE else None
        pos += n
    return None


def _ctr_many(key: bytes, ivs: list[bytes], cts: list[bytes]) -> list[bytes]:
    """AES-256-CTR of many sealed fields under one key: one ECB pass over every counter block
    (each field's counter starts at its iv, a 128-bit big-endian integer)."""
    if not ivs:
        return []
    nblocks = np.asarray([(len(c) + 15) >> 4 for c in cts], dtype=np.int64)
    iv = np.frombuffer(b"".join(ivs), dtype=">u8").reshape(-1, 2).astype(np.uint64)
    hi = np.repeat(iv[:, 0], nblocks)
    lo = np.repeat(iv[:, 1], nblocks)
    starts = np.cumsum(nblocks) - nblocks
    step = (np.arange(int(nblocks.sum()), dtype=np.int64) - np.repeat(starts, nblocks)).astype(
        np.uint64
    )
    with np.errstate(over="ignore"):
        new_lo = lo + step
        hi = hi + (new_lo < lo).astype(np.uint64)
    counters = np.stack([hi, new_lo], axis=1).astype(">u8").tobytes()
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    stream = np.frombuffer(encryptor.update(counters), dtype=np.uint8)
    padded = np.frombuffer(
        b"".join(c + bytes(-len(c) % 16) for c in cts), dtype=np.uint8
    )  # each field on whole blocks, as the keystream
    plain = (padded ^ stream).tobytes()
    out = []
    pos = 0
    for c, k in zip(cts, nblocks.tolist(), strict=True):
        out.append(plain[pos : pos + len(c)])
        pos += 16 * k
    return out


def _personal_field(plain: bytes, wanted: int) -> bytes | None:
    """The value of the field tagged ``wanted`` in an unsealed plaintext, if it is there."""
    pos, end = 0, len(plain)
    while pos + 2 <= end:
        tag, n = plain[pos], plain[pos + 1]
        pos += 2
        if n == 0xFF:
            if pos + 4 > end:
                return None
            (n,) = _U32.unpack_from(plain, pos)
            pos += 4
        if pos + n > end:
            return None
        if tag == wanted:
            return plain[pos : pos + n]
        pos += n
    return None


# -- the replay ----------------------------------------------------------------------------------


@dataclass
class _Change:
    index: int
    time_us: int
    action: str
    code: int  # the caller's code in Callers, or UNREADABLE
    migrated: bool
    kid: str | None


@dataclass
class _Opened:
    index: int
    time_us: int
    rid: str
    ref: str | bytes


def check_objections(
    rep: AuditReport,
    d: Decisions,
    others: Iterable[Entry],
    log: LogStorage,
    sealing: Any,
    current: frozenset[str] | None,
    at: datetime,
    period: tuple[str, str] | None = None,
) -> None:
    """The ``objections`` check (module docstring); its recording findings go to the
    ``recordings`` check. ``current`` is the list as it stands (pseudonyms, hex), ``None``
    when not given; ``period`` the days a kit covers (keys outside it are not due)."""
    rep.ran.add("objections")
    entries = list(others)
    changes = [e for e in entries if e.type == T_OBJECTION]
    listed_now = {bytes.fromhex(p) for p in current} if current is not None else None
    if not changes and not listed_now:
        # Nothing to replay: the list as it stands must be empty too (it is, when given).
        rep.checked["objections"] = {"changes": 0, "listed": 0}
        if listed_now is None:
            rep.skip("objections", "no objection list given, and the log records no change of it")
        else:
            rep.checked["objections"]["on_the_list_now"] = 0
        return
    first = changes[0].index if changes else int(d.index[-1]) + 1 if len(d) else 0
    callers = read_callers(log, sealing, d, first)
    replay = [_change(rep, e, callers) for e in changes]
    opened = [
        _Opened(e.index, e.time_us, str(e.fields.get("recording_id")), ref)
        for e in entries
        if e.type == T_RECORDING_OPENED
        and isinstance(ref := e.fields.get(DECISION.call_ref.name), str | bytes)
        and e.index > first
    ]
    _unreadable(rep, replay, at, period)
    _Replay(rep, d, callers, replay, opened).run(listed_now)


def _change(rep: AuditReport, e: Entry, callers: Callers) -> _Change:
    action = str(e.fields.get("action"))
    pseudonym = e.fields.get("caller_pseudonym")
    code = UNREADABLE
    if action not in ("added", "removed"):
        rep.add(
            "objections",
            f"an objection entry whose action is {action!r} (added or removed)",
            index=e.index,
        )
        action = "?"
    if isinstance(pseudonym, bytes):
        if len(pseudonym) != 32:
            rep.add(
                "objections",
                f"an objection entry whose caller pseudonym is {len(pseudonym)} bytes, not 32",
                index=e.index,
            )
            action = "?"
        code = callers.code_of(pseudonym)
    elif not e.sealed:
        rep.add("objections", "an objection entry that names no caller", index=e.index)
        action = "?"
    return _Change(
        e.index, min(e.time_us, MAX_TIME_US), action, code, bool(e.fields.get("migrated")), e.kid
    )


def _unreadable(
    rep: AuditReport, replay: list[_Change], at: datetime, period: tuple[str, str] | None
) -> None:
    """Objection entries whose pseudonym cannot be read: a finding while their ``calls/`` key
    should still be kept (and is within the kit's period), else a note."""
    at_month = at.year * 12 + at.month - 1
    due: dict[str, list[int]] = {}
    gone = 0
    for c in replay:
        if c.code != UNREADABLE:
            continue
        month = month_of_kid(c.kid)
        in_period = period is None or (
            c.kid is not None and period[0][:7] <= c.kid[-7:] <= period[1][:7]
        )
        if month is not None and at_month < kept_until_month(month) and in_period:
            due.setdefault(str(c.kid), []).append(c.index)
        else:
            gone += 1
    for kid, indexes in sorted(due.items()):
        rep.add(
            "objections",
            f"{len(indexes):,} objection entries cannot be read (sealed under {kid}) while "
            "they should be kept: the objection list cannot be replayed",
            index=indexes[0],
            evidence={"entries": len(indexes), "key": kid},
        )
    if gone:
        rep.notes.append(
            f"objections: {gone:,} changes of the objection list cannot be read (their calls/ "
            "keys were destroyed after their retention, or are outside the kit's period): "
            "the list is replayed from the others, and nothing is concluded about the callers "
            "they may name"
        )


class _Replay:
    """The objection list replayed in log order, with the decisions and recordings between
    its changes checked against it."""

    def __init__(
        self,
        rep: AuditReport,
        d: Decisions,
        callers: Callers,
        replay: list[_Change],
        opened: list[_Opened],
    ) -> None:
        self.rep, self.d, self.callers, self.replay, self.opened = rep, d, callers, replay, opened
        n = len(callers.pseudonyms)
        self.since = np.full(n, -1, dtype=np.int64)  # when each caller was listed (µs)
        self.added_at = np.full(n, -1, dtype=np.int64)  # the log index that listed them
        self.uncertain_before = -1  # a removal that cannot be read, at this index
        self.listed_bad: list[tuple[str, dict[str, Any]]] = []
        self.unnamed_bad: list[tuple[str, dict[str, Any]]] = []
        self.checked = {"changes": len(replay), "listed": 0, "decisions_checked": 0}
        self.unreadable_added = 0
        self.idle_removals = 0
        self.migrated = 0
        self._calls_of = self._recorded_calls()

    def run(self, listed_now: set[bytes] | None) -> None:
        d = self.d
        bounds = [c.index for c in self.replay] + [int(d.index[-1]) + 1 if len(d) else 0]
        opened = sorted(range(len(self.opened)), key=lambda j: self.opened[j].index)
        k = 0
        for j, change in enumerate(self.replay):
            self._apply(change)
            lo = int(np.searchsorted(d.index, change.index, side="right"))
            hi = int(np.searchsorted(d.index, bounds[j + 1], side="left"))
            self._decisions(lo, hi)
            while k < len(opened) and self.opened[opened[k]].index < change.index:
                k += 1
            last = j + 1 == len(self.replay)
            while k < len(opened) and (last or self.opened[opened[k]].index < bounds[j + 1]):
                self._recording(opened[k])
                k += 1
        rep = self.rep
        rep.add_listed("objections", self.listed_bad, "decisions of callers on the objection list")
        rep.add_listed(
            "objections", self.unnamed_bad, "selections without a caller while someone objected"
        )
        listed = self.since >= 0
        self.checked["listed"] = int(np.count_nonzero(listed))
        if self.migrated:
            first = next(c for c in self.replay if c.migrated)
            rep.notes.append(
                f"objections: {self.migrated:,} callers were on the list before its changes "
                f"were logged (logged as migrated at entry {first.index}): decisions before "
                "then are not checked against them"
            )
        if self.idle_removals:
            rep.notes.append(
                f"objections: {self.idle_removals:,} removals of callers who were not on the "
                "list as replayed (a change logged again after a crash, or one whose addition "
                "cannot be read)"
            )
        if listed_now is None:
            rep.notes.append(
                "objections: no current objection list given: the list the log replays is not "
                "compared with the one in use"
            )
        else:
            self._compare(listed_now)
        rep.checked["objections"] = dict(self.checked)

    def _apply(self, change: _Change) -> None:
        code = change.code
        if code == UNREADABLE:
            if change.action == "removed":
                self.uncertain_before = change.index
            elif change.action == "added":
                self.unreadable_added += 1
            return
        if change.action == "added":
            self.migrated += change.migrated
            if self.since[code] < 0:
                self.since[code] = change.time_us
                self.added_at[code] = change.index
        elif change.action == "removed":
            if self.since[code] < 0:
                self.idle_removals += 1
            self.since[code] = -1
            self.added_at[code] = -1

    def _certain(self) -> npt.NDArray[np.bool_]:
        """The callers known to be on the list (no unreadable removal since they were added)."""
        out: npt.NDArray[np.bool_] = (self.since >= 0) & (self.added_at > self.uncertain_before)
        return out

    def _decisions(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        certain = self._certain()
        if not certain.any():
            return
        d, code = self.d, self.callers.code[lo:hi]
        self.checked["decisions_checked"] += hi - lo
        t = np.minimum(d.time_us[lo:hi], np.uint64(MAX_TIME_US)).astype(np.int64)
        reason = d.reason[lo:hi]
        named = code >= 0
        c = np.where(named, code, 0)
        listed = named & certain[c] & (t - self.since[c] > GRACE_US)
        for j in np.flatnonzero(listed & (reason != _OBJECTION)).tolist():
            i, who = lo + j, int(c[j])
            self.listed_bad.append(
                (
                    f"a caller on the objection list was decided {_reason(int(d.reason[i]))}: "
                    "their objection was ignored",
                    {
                        **_where(d, i),
                        "evidence": {
                            "caller_pseudonym": self.callers.pseudonyms[who].hex(),
                            "listed_at": int(self.added_at[who]),
                            "listed_since": _iso(int(self.since[who])),
                            "reason": _reason(int(d.reason[i])),
                        },
                    },
                )
            )
        oldest = int(self.since[certain].min())
        unnamed = (code == NO_CALLER) & (reason == _SAMPLED) & (t - oldest > GRACE_US)
        for j in np.flatnonzero(unnamed).tolist():
            i = lo + j
            self.unnamed_bad.append(
                (
                    "a call was selected without its caller's pseudonym while the objection "
                    f"list held {int(np.count_nonzero(certain))} callers: it may be an "
                    "objector's (an honest sampler records no call whose caller it cannot check)",
                    {
                        **_where(d, i),
                        "evidence": {
                            "on_the_list": int(np.count_nonzero(certain)),
                            "list_held_callers_since": _iso(oldest),
                            "reason": "sampled",
                        },
                    },
                )
            )

    def _recorded_calls(self) -> list[list[int]]:
        """For each recording opened, the decision rows of its call reference."""
        if not self.opened or not len(self.d):
            return [[] for _ in self.opened]
        refs = [o.ref for o in self.opened]
        matched = RefMatcher.exact(self.d, refs).match(np.arange(len(self.d), dtype=np.int64))
        first_of: dict[tuple[type, str | bytes], int] = {}
        for j, r in enumerate(refs):
            first_of.setdefault((type(r), r), j)
        rows: dict[int, list[int]] = {}
        for i in np.flatnonzero(matched >= 0).tolist():
            rows.setdefault(int(matched[i]), []).append(i)
        return [rows.get(first_of[(type(r), r)], []) for r in refs]

    def _recording(self, j: int) -> None:
        o = self.opened[j]
        certain = self._certain()
        for i in self._calls_of[j]:
            who = int(self.callers.code[i])
            if int(self.d.index[i]) > o.index or who < 0 or not certain[who]:
                continue
            if min(o.time_us, MAX_TIME_US) - int(self.since[who]) <= GRACE_US:
                continue
            self.rep.add(
                "recordings",
                "a recording of a caller on the objection list",
                index=o.index,
                recording_id=o.rid,
                call_ref=ref_text(o.ref),
                evidence={
                    "caller_pseudonym": self.callers.pseudonyms[who].hex(),
                    "listed_at": int(self.added_at[who]),
                    "decision_index": int(self.d.index[i]),
                },
            )
            return

    def _compare(self, listed_now: set[bytes]) -> None:
        """The list as it stands against the list the log replays."""
        pseudonyms = self.callers.pseudonyms
        listed = self.since >= 0
        certain = self._certain()
        replayed = {pseudonyms[c] for c in np.flatnonzero(listed).tolist()}
        dropped = sorted(
            (int(self.added_at[c]), pseudonyms[c])
            for c in np.flatnonzero(certain).tolist()
            if pseudonyms[c] not in listed_now
        )
        rep = self.rep
        self.checked["on_the_list_now"] = len(listed_now)
        if dropped:
            rep.add(
                "objections",
                f"{len(dropped):,} callers that the log lists are not on the objection list: "
                "removed without a log entry (their calls can be recorded again)",
                index=dropped[0][0],
                evidence={
                    "removed_without_log_entry": len(dropped),
                    "examples": [p.hex() for _, p in dropped[:_EXAMPLES]],
                    "added_at": [i for i, _ in dropped[:_EXAMPLES]],
                },
            )
        extra = sorted(p for p in listed_now if p not in replayed)
        if len(extra) > self.unreadable_added:
            rep.add(
                "objections",
                f"{len(extra):,} callers on the objection list were never added in the log"
                + (
                    f" (at most {self.unreadable_added:,} of them in entries that cannot be read)"
                    if self.unreadable_added
                    else ""
                )
                + ": added without a log entry",
                evidence={
                    "added_without_log_entry": len(extra) - self.unreadable_added,
                    "examples": [p.hex() for p in extra[:_EXAMPLES]],
                },
            )
        elif extra:
            rep.notes.append(
                f"objections: {len(extra):,} callers on the list are not in the readable "
                f"changes of the log; {self.unreadable_added:,} additions cannot be read"
            )


def _where(d: Decisions, i: int) -> dict[str, Any]:
    return {
        "index": int(d.index[i]),
        "call_ref": d.ref_text(i),
        "epoch_id": d.epochs[int(d.epoch[i])],
    }


def _reason(code: int) -> str:
    return REASONS[code] if 0 <= code < len(REASONS) else f"#{code}"


def _iso(us: int) -> str:
    return from_micros(max(0, min(us, MAX_TIME_US))).isoformat()
