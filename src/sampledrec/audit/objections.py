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
report says so. Before a sweep destroys a ``calls/`` key the store logs the whole list again
(``kept`` entries, each with the number ``listed``): once a carry is read whole, the list is
known exactly again, and a caller known to be on it whom the carry leaves out is a finding.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..log import hashing
from ..log.columns import Decisions, RefMatcher, ref_text
from ..log.format import (
    DECISION,
    IV_SIZE,
    KCV_SIZE,
    T_DECISION,
    T_OBJECTION,
    T_RECORDING_OPENED,
    TAG_SEALED,
    Entry,
    decode_entry,
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
#: was not read (logged before the first change of the list); it names a caller who was never
#: on the list (no ``objection`` entry names them).
NO_CALLER: Final = -1
UNREADABLE: Final = -2
NOT_READ: Final = -3
OTHER_CALLER: Final = -4

_SAMPLED: Final = REASONS.index("sampled")
_OBJECTION: Final = REASONS.index("objection")
_U32: Final = struct.Struct(">I")
_EXAMPLES: Final = 5
_PSEUDONYM_TAG: Final = DECISION.caller_pseudonym.tag
_SLOW: Final = -9  # a decision of another shape than the writer's: decoded entry by entry


@dataclass
class Callers:
    """The caller of each decision row: ``code[i]`` indexes ``pseudonyms`` (the callers that
    ``objection`` entries name), or is :data:`NO_CALLER`, :data:`UNREADABLE`,
    :data:`NOT_READ` or :data:`OTHER_CALLER`."""

    code: npt.NDArray[np.int32]
    pseudonyms: list[bytes] = field(default_factory=list)
    _codes: dict[bytes, int] = field(default_factory=dict)

    def code_of(self, pseudonym: bytes) -> int:
        """The code of a caller named by an ``objection`` entry (registered on first sight)."""
        c = self._codes.get(pseudonym)
        if c is None:
            c = self._codes[pseudonym] = len(self.pseudonyms)
            self.pseudonyms.append(pseudonym)
        return c

    def known(self, pseudonym: bytes) -> int:
        return self._codes.get(pseudonym, OTHER_CALLER)


# -- reading the decisions' callers ------------------------------------------------------------


def read_callers(log: LogStorage, sealing: Any, d: Decisions, start: int, callers: Callers) -> None:
    """Fill ``callers.code`` for every decision of ``d`` logged at or after entry ``start``,
    read from ``log`` (the storage the decisions were read from) and unsealed with ``sealing``
    (anything with ``sealing_key(kid)``). Only the callers that ``callers`` already knows (those
    of the ``objection`` entries) get their own code; any other named caller is
    :data:`OTHER_CALLER`.

    The column reader leaves this personal field out: it is read here, in a second pass, only
    for logs whose objection list has changed. Decisions of the writer's shape are read batch
    by batch with numpy (every sealed field of one key opened in one AES-ECB pass over its
    counter blocks); any other is decoded on its own, as :func:`decode_entry` would."""
    if not len(d) or start > int(d.index[-1]):
        return
    keys = SealingKeys(sealing)
    known = _Known(callers)
    index = d.index
    for b in iter_batches(log, mapped=True):
        if b.first + b.entries <= start:
            continue
        data = b.data
        offs, lens = _records(data, b.start, b.end, b.entries)
        if not offs.size:
            continue
        numbers = b.first + np.arange(offs.size, dtype=np.int64)
        buf = np.frombuffer(data, dtype=np.uint8)
        is_decision = (buf[offs + 1] == T_DECISION) & (numbers >= start)
        rows = np.searchsorted(index, numbers[is_decision])
        found = rows < len(d)
        found[found] = index[rows[found]] == numbers[is_decision][found]
        at, length, rows = offs[is_decision][found], lens[is_decision][found], rows[found]
        codes = _decision_callers(buf, at, length, keys, known)
        for j in np.flatnonzero(codes == _SLOW).tolist():
            raw = bytes(data[int(at[j]) : int(at[j]) + int(length[j])])
            codes[j] = _one_caller(raw, keys, callers)
        callers.code[rows] = codes


def _records(
    data: Any, pos: int, end: int, count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Where each entry of a batch's records starts in ``data`` (after its u32 length), and
    its length: located by the accelerator's column reader when it is there (told no key, it
    opens nothing), else record by record."""
    native = hashing.native
    if native is not None:
        out = native.decision_columns(data, pos, end, _no_key, _HASH_KEY)
        offs = np.frombuffer(out[0], dtype=np.uint64).astype(np.int64)
        return offs, np.frombuffer(out[1], dtype=np.uint32).astype(np.int64)
    at = np.empty(count, dtype=np.int64)
    unpack = _U32.unpack_from
    n = 0
    while n < count and pos + 4 <= end:
        at[n] = pos + 4
        pos += 4 + unpack(data, pos)[0]
        n += 1
    at = at[:n]
    return at, np.diff(np.append(at, pos + 4)) - 4


def _no_key(kid: str) -> None:
    return None


_HASH_KEY: Final = os.urandom(16)


class _Known:
    """The callers of the ``objection`` entries, matched against many pseudonyms at once: by
    their first 8 bytes first, then exactly."""

    def __init__(self, callers: Callers) -> None:
        self.callers = callers
        heads = [int.from_bytes(p[:8], "big") for p in callers.pseudonyms]
        self.heads = np.asarray(heads, dtype=np.uint64)

    def codes(self, pseudonyms: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
        """The codes of the rows of ``pseudonyms`` (n x 32 bytes)."""
        out = np.full(pseudonyms.shape[0], OTHER_CALLER, dtype=np.int32)
        if not self.heads.size or not pseudonyms.shape[0]:
            return out
        heads = np.ascontiguousarray(pseudonyms[:, :8]).view(">u8").ravel().astype(np.uint64)
        for j in np.flatnonzero(np.isin(heads, self.heads)).tolist():
            out[j] = self.callers.known(pseudonyms[j].tobytes())
        return out


def _decision_callers(
    buf: npt.NDArray[np.uint8],
    at: npt.NDArray[np.int64],
    length: npt.NDArray[np.int64],
    keys: SealingKeys,
    known: _Known,
) -> npt.NDArray[np.int32]:
    """The callers of the decision entries at ``at`` (their lengths ``length``) in ``buf``;
    :data:`_SLOW` for an entry of another shape than the writer's (docs/log-format.md §5.3:
    epoch id, policy version, rule, threshold, [draw], reason, then the sealed field, all with
    one-byte lengths; once unsealed: call_ref, [agent], [caller_pseudonym])."""
    m = at.size
    codes = np.full(m, _SLOW, dtype=np.int32)
    if not m:
        return codes
    last = buf.size - 1

    def byte(pos: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return buf[np.minimum(pos, last)].astype(np.int64)

    end = at + length
    ok = length >= 60
    for off, want in ((10, 0x01), (11, 10), (22, 0x02), (23, 32), (56, 0x03)):
        ok &= byte(at + off) == want
    rule_len = byte(at + 57)
    ok &= rule_len < 0xFF
    p = at + 58 + rule_len
    ok &= (byte(p) == 0x04) & (byte(p + 1) == 8)
    p = p + 10
    p = np.where((byte(p) == 0x05) & (byte(p + 1) == 7), p + 9, p)
    reason_len = byte(p + 1)
    ok &= (byte(p) == 0x06) & (reason_len < 0xFF)
    p = p + 2 + reason_len
    sealed_len = byte(p + 1)
    ok &= (byte(p) == TAG_SEALED) & (sealed_len < 0xFF) & (p + 2 + sealed_len == end)
    sealed = p + 2
    kid_len = byte(sealed)
    ok &= sealed_len >= 1 + kid_len + KCV_SIZE + IV_SIZE + 3
    ok &= kid_len == 13  # calls/YYYY-MM
    rows = np.flatnonzero(ok)
    if not rows.size:
        return codes
    sealed = sealed[rows]
    kids = buf[sealed[:, None] + np.arange(1, 14)]
    kcvs = buf[sealed[:, None] + np.arange(14, 14 + KCV_SIZE)]
    ivs = buf[sealed[:, None] + np.arange(14 + KCV_SIZE, 14 + KCV_SIZE + IV_SIZE)]
    ct_at = sealed + 14 + KCV_SIZE + IV_SIZE
    ct_len = sealed_len[rows] - (13 + 1 + KCV_SIZE + IV_SIZE)
    kid_rows = np.ascontiguousarray(kids).view(np.dtype((np.void, 13))).ravel()
    distinct, which = np.unique(kid_rows, return_inverse=True)
    for k, kid_raw in enumerate(distinct.tolist()):
        mine = np.flatnonzero(which.ravel() == k)
        got = keys.key_for(bytes(kid_raw).decode("ascii", "replace"))
        if got is None:
            codes[rows[mine]] = UNREADABLE
            continue
        key, kcv = got
        right = (kcvs[mine] == np.frombuffer(kcv, dtype=np.uint8)).all(axis=1)
        codes[rows[mine[~right]]] = UNREADABLE
        mine = mine[right]
        if mine.size:
            codes[rows[mine]] = _open_callers(buf, key, ivs[mine], ct_at[mine], ct_len[mine], known)
    return codes


def _open_callers(
    buf: npt.NDArray[np.uint8],
    key: bytes,
    ivs: npt.NDArray[np.uint8],
    ct_at: npt.NDArray[np.int64],
    ct_len: npt.NDArray[np.int64],
    known: _Known,
) -> npt.NDArray[np.int32]:
    """Decrypt (AES-256-CTR, each row from its iv) and read the callers of sealed fields."""
    m = ct_at.size
    blocks = int((int(ct_len.max()) + 15) // 16)
    width = 16 * blocks
    ct = _rows(buf, ct_at, width)
    iv = np.ascontiguousarray(ivs).view(">u8").astype(np.uint64)  # m x 2: high, low
    step = np.arange(blocks, dtype=np.uint64)
    counters = np.empty((m, blocks, 2), dtype=">u8")
    with np.errstate(over="ignore"):
        low = iv[:, 1:2] + step
        counters[:, :, 1] = low
        counters[:, :, 0] = iv[:, 0:1] + (low < iv[:, 1:2]).astype(np.uint64)
    stream = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(counters.tobytes())
    pt = ct ^ np.frombuffer(stream, dtype=np.uint8).reshape(m, width)
    r = np.arange(m)

    def at(pos: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        out: npt.NDArray[np.int64] = pt[r, np.minimum(pos, width - 1)].astype(np.int64)
        return out

    codes = np.full(m, _SLOW, dtype=np.int32)
    ref_len = at(np.ones(m, dtype=np.int64))
    ok = (pt[:, 0] == DECISION.call_ref.tag) & (ref_len < 0xFF)
    p = 2 + ref_len
    agent = (p < ct_len) & (at(p) == DECISION.agent.tag)
    agent_len = at(p + 1)
    ok &= ~agent | (agent_len < 0xFF)
    p = np.where(agent, p + 2 + agent_len, p)
    # No pseudonym: the plaintext ends, or a field of a higher tag follows (fields added later).
    none = ok & ((p == ct_len) | ((p + 2 <= ct_len) & (at(p) > _PSEUDONYM_TAG)))
    has = (
        ok
        & (p + 34 <= ct_len)
        & (at(p) == _PSEUDONYM_TAG)
        & (at(p + 1) == DECISION.caller_pseudonym.size)
    )
    codes[none] = NO_CALLER
    if has.any():
        h = np.flatnonzero(has)
        codes[h] = known.codes(pt[h[:, None], p[h][:, None] + 2 + np.arange(32)])
    return codes


def _rows(
    buf: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], width: int
) -> npt.NDArray[np.uint8]:
    """``buf[at[i] : at[i] + width]`` for every ``i``, as rows (zeros past the end of ``buf``)."""
    out = np.zeros((at.size, width), dtype=np.uint8)
    fits = at + width <= buf.size
    if buf.size >= width:
        out[fits] = np.lib.stride_tricks.sliding_window_view(buf, width)[at[fits]]
    for i in np.flatnonzero(~fits).tolist():
        tail = buf[int(at[i]) :]
        out[i, : tail.size] = tail[:width]
    return out


def _one_caller(raw: bytes, keys: SealingKeys, callers: Callers) -> int:
    """The caller code of one decision entry, decoded as :func:`decode_entry` does."""
    try:
        e = decode_entry(0, raw, keys.unseal)
    except ValueError:
        return UNREADABLE
    if e.sealed:
        return UNREADABLE
    pseudonym = e.fields.get(DECISION.caller_pseudonym.name)
    if not isinstance(pseudonym, bytes):
        return NO_CALLER
    return callers.known(pseudonym)


# -- the replay ----------------------------------------------------------------------------------


@dataclass
class _Change:
    index: int
    time_us: int
    action: str
    code: int  # the caller's code in Callers, or UNREADABLE
    migrated: bool
    kid: str | None
    listed: int = 0  # kept: how many callers the list held


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
    callers = Callers(np.full(len(d), NOT_READ, dtype=np.int32))
    replay = [_change(rep, e, callers) for e in changes]  # registers the callers they name
    read_callers(log, sealing, d, first, callers)
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
    listed = e.fields.get("listed")
    if action not in ("added", "removed", "kept") or (
        action == "kept" and not (isinstance(listed, int) and listed > 0)
    ):
        rep.add(
            "objections",
            f"an objection entry whose action is {action!r} (added, removed or kept, with "
            "the number listed)",
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
        e.index,
        min(e.time_us, MAX_TIME_US),
        action,
        code,
        bool(e.fields.get("migrated")),
        e.kid,
        listed if isinstance(listed, int) else 0,
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
        self.carry: list[_Change] = []  # the kept entries of the list logged again, so far
        self.carries = 0
        self._calls_of = self._recorded_calls()
        # Callers taken off the list: when (log index, time), and their calls selected since.
        self.removed_at = np.full(n, -1, dtype=np.int64)
        self.removed_us = np.full(n, -1, dtype=np.int64)
        self.selected_off: dict[int, list[int]] = {}
        self.readded: list[str] = []

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
        for text in self.readded[:20]:
            rep.notes.append(
                "objections: "
                + text
                + ": a caller withdrawing an objection and objecting again, or an objection "
                "lifted around their calls; ask for the caller's consent on record"
            )
        if self.carries:
            rep.notes.append(
                f"objections: the list was logged again whole {self.carries:,} time(s) (kept, "
                "before sweeps destroyed calls/ keys): replayed exactly from each"
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
        if change.action != "kept" or (
            self.carry
            and (self.carry[0].listed, self.carry[0].time_us) != (change.listed, change.time_us)
        ):
            self.carry = []  # a carry is its kept entries one after the other, at one time
        code = change.code
        if change.action == "kept":
            self._kept(change)
            return
        if code == UNREADABLE:
            if change.action == "removed":
                self.uncertain_before = change.index
            elif change.action == "added":
                self.unreadable_added += 1
            return
        if change.action == "added":
            self.migrated += change.migrated
            off = self.selected_off.pop(code, None)
            if (
                off
                and self.removed_at[code] >= 0
                and change.time_us - self.removed_us[code] <= READDED_WITHIN_US
            ):
                self.readded.append(
                    f"caller {self.callers.pseudonyms[code].hex()[:16]}... was removed from the "
                    f"list at entry {int(self.removed_at[code])} and added again at entry "
                    f"{change.index}, {_duration(change.time_us - int(self.removed_us[code]))} "
                    f"later; while off the list {len(off)} of their calls were selected "
                    f"(entries {', '.join(map(str, off[:5]))}{', ...' if len(off) > 5 else ''})"
                )
            self.removed_at[code] = -1
            if self.since[code] < 0:
                self.since[code] = change.time_us
                self.added_at[code] = change.index
        elif change.action == "removed":
            if self.since[code] < 0:
                self.idle_removals += 1
            self.since[code] = -1
            self.added_at[code] = -1
            self.removed_at[code], self.removed_us[code] = change.index, change.time_us
            self.selected_off.pop(code, None)

    def _kept(self, change: _Change) -> None:
        """One caller of the list logged again (``kept``); once every caller of a carry is
        there, the list is known exactly again, whatever the entries before that cannot be
        read, and no caller known to be on it may be missing."""
        code = change.code
        self.carry.append(change)
        if code != UNREADABLE and self.since[code] < 0:
            if self.uncertain_before < 0 and not self.unreadable_added:
                self.rep.add(
                    "objections",
                    "the list logged again names a caller that the log never added",
                    index=change.index,
                    evidence={"caller_pseudonym": self.callers.pseudonyms[code].hex()},
                )
            self.since[code] = change.time_us
            self.added_at[code] = change.index
        if len(self.carry) != change.listed or any(c.code == UNREADABLE for c in self.carry):
            return
        carried = np.zeros(self.since.size, dtype=bool)
        carried[[c.code for c in self.carry]] = True
        left_out = np.flatnonzero(self._certain() & ~carried).tolist()
        if left_out:
            self.rep.add(
                "objections",
                f"{len(left_out):,} callers on the list were left out when it was logged "
                "again: taken off without a log entry",
                index=self.carry[0].index,
                evidence={
                    "left_out": len(left_out),
                    "examples": [self.callers.pseudonyms[c].hex() for c in left_out[:_EXAMPLES]],
                    "added_at": [int(self.added_at[c]) for c in left_out[:_EXAMPLES]],
                },
            )
        # From here the list is the carry's, known for certain.
        self.since[~carried] = -1
        self.added_at[~carried] = -1
        self.uncertain_before = -1
        self.unreadable_added = 0
        self.carries += 1
        self.carry = []

    def _certain(self) -> npt.NDArray[np.bool_]:
        """The callers known to be on the list (no unreadable removal since they were added)."""
        out: npt.NDArray[np.bool_] = (self.since >= 0) & (self.added_at > self.uncertain_before)
        return out

    def _decisions(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        self._selected_off(lo, hi)
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

    def _selected_off(self, lo: int, hi: int) -> None:
        """Note the selections of callers taken off the list (for a removal undone soon)."""
        if not (self.removed_at >= 0).any():
            return
        code = self.callers.code[lo:hi]
        named = code >= 0
        c = np.where(named, code, 0)
        hit = named & (self.removed_at[c] >= 0) & (self.d.reason[lo:hi] == _SAMPLED)
        for j in np.flatnonzero(hit).tolist():
            self.selected_off.setdefault(int(c[j]), []).append(int(self.d.index[lo + j]))

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


READDED_WITHIN_US: Final = 30 * 86_400_000_000  # a removal undone within 30 days is noted


def _duration(us: int) -> str:
    minutes = us // 60_000_000
    if minutes < 120:
        return f"{minutes} minutes"
    hours = minutes // 60
    return f"{hours} hours" if hours < 72 else f"{hours // 24} days"


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
