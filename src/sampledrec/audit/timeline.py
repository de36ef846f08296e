"""The ``time`` check: the log's times and epochs hold together.

- **Entry times never run backwards**, beyond :data:`TIME_SLACK`. An entry's time is taken
  when it is queued (``DecisionLog.append``, or the sampler's clock for a decision), not when
  it is written: a writer writes its queue in order, but a checkpoint entry jumps its queue,
  and several processes interleave whole batches under the log's lock, so an entry can follow
  one queued up to a group commit, a batch write and a lock wait later. An entry dated more
  than :data:`TIME_SLACK` before the latest earlier entry is a finding. In a *simulated*
  store (``sampledrec demo``, ``init --simulated``) days are replayed at simulated times
  while some entries (the store's creation, key reveals) carry the real time: there the order
  is reported in a note, not held as a finding.
- **A decision's epoch is the UTC day of its time** (DESIGN.md §4: epochs are UTC days).
- **Keys are committed a bounded time ahead**: a ``key_commit`` for an epoch that starts more
  than :data:`COMMIT_HORIZON` (``DEFAULT_AHEAD`` + 1 days) after the commitment's time is a
  finding (samplers create and commit ``DEFAULT_AHEAD`` epochs ahead).
- **The policy that governs a decision** is, among the ``policy`` entries logged before it,
  the one with the latest ``effective_at`` that has passed at the decision's time (as
  ``Store.policy`` chooses it); a decision naming another version is a finding, in particular
  one naming a version whose ``effective_at`` is still in the future. Samplers pick up a newly
  effective version at most about a second late, so the version in force :data:`TIME_SLACK`
  earlier is accepted too. (In a simulated store, a decision dated before every logged
  version's ``effective_at`` is judged against the earliest one, as ``Store.policy`` does.)
- **One reference is decided in one epoch only**: the same call reference decided in two
  epochs had two independent draws (a re-roll), and is a finding. (A retry that crosses UTC
  midnight is one too: the library decides it again under the new epoch's key.)

Everything is computed on the decision columns with numpy; only findings are looped over.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgument
from ..keys.keyring import DEFAULT_AHEAD, check_epoch_id
from ..log.columns import BYTES_REF, STR_REF, Decisions, call_firsts
from ..log.format import T_KEY_COMMIT, T_KEY_REVEAL, Entry, from_micros
from .findings import AuditReport

__all__ = ["COMMIT_HORIZON", "MAX_TIME_US", "TIME_SLACK", "LoggedPolicy", "check_time"]

#: How far an entry may be dated before an earlier one (concurrent writers; module docstring).
TIME_SLACK: Final = timedelta(seconds=60)
#: How far ahead of its epoch a key may be committed.
COMMIT_HORIZON: Final = timedelta(days=DEFAULT_AHEAD + 1)
_DAY_US: Final = 86_400_000_000
_SLACK_US: Final = int(TIME_SLACK / timedelta(microseconds=1))
_HORIZON_US: Final = int(COMMIT_HORIZON / timedelta(microseconds=1))
_CLAMP: Final = 2**62
#: The last microsecond of year 9999: an entry dated later is a finding (no calendar has it).
MAX_TIME_US: Final = 253_402_300_799_999_999


class LoggedPolicy(NamedTuple):
    """A ``policy`` entry: where it is, the version it logs, and when that takes effect (µs)."""

    entry: int
    time_us: int
    version: bytes
    effective_at: int


def epoch_day(epoch_id: str) -> int | None:
    """The day number (days since 1970-01-01) of a daily epoch id, ``None`` if it is not one."""
    try:
        day = check_epoch_id(epoch_id)
    except InvalidArgument:
        return None
    return day.toordinal() - 719163


def _iso(us: int) -> str:
    try:
        return from_micros(us).isoformat()
    except (OverflowError, ValueError, OSError):
        return f"{us} µs after 1970"


def check_time(
    rep: AuditReport,
    d: Decisions,
    others: Sequence[Entry],
    policies: Sequence[LoggedPolicy],
    *,
    simulated: bool,
) -> None:
    """Run the ``time`` check (module docstring) on the decisions and the other entries."""
    rep.ran.add("time")
    times = np.minimum(d.time_us, np.uint64(_CLAMP)).astype(np.int64)
    _order(rep, d, times, others, simulated=simulated)
    _epochs(rep, d, times)
    _commit_horizon(rep, others)
    _policy_in_force(rep, d, times, policies, simulated=simulated)
    _one_epoch_per_reference(rep, d)
    _after_reveal(rep, d, others)
    _one_form_per_uuid(rep, d)


def _after_reveal(rep: AuditReport, d: Decisions, others: Sequence[Entry]) -> None:
    """No decision of an epoch is logged after that epoch's key was revealed: once the key is
    known, a decision could be chosen to come out either way. Whatever the entries' times say
    (a backdated decision carries a time inside its epoch), and in a simulated store too."""
    revealed: dict[str, int] = {}
    for e in others:
        if e.type == T_KEY_REVEAL:
            revealed.setdefault(str(e.fields.get("epoch_id")), e.index)
    codes = {code: revealed[epoch] for code, epoch in enumerate(d.epochs) if epoch in revealed}
    if not codes or not len(d):
        return
    at = np.full(len(d.epochs), np.iinfo(np.int64).max, dtype=np.int64)
    for code, index in codes.items():
        at[code] = index
    late = np.flatnonzero(d.index > at[d.epoch])
    rep.add_listed(
        "time",
        [
            (
                f"decided under epoch {d.epochs[int(d.epoch[i])]} after that epoch's key was "
                f"revealed (entry {int(at[d.epoch[i]])}): the draw was known in advance",
                {
                    "index": int(d.index[i]),
                    "call_ref": d.ref_text(i),
                    "epoch_id": d.epochs[int(d.epoch[i])],
                    "evidence": {"reveal_index": int(at[d.epoch[i]])},
                },
            )
            for i in late[:1000].tolist()
        ],
        "decisions logged after their epoch's key was revealed",
    )


def _one_form_per_uuid(rep: AuditReport, d: Decisions) -> None:
    """One UUID decided in one epoch both as its 16 bytes and as its text: two draws for one
    call (DESIGN.md §4: a deployment gives each reference in one form). Only looked for when
    the log holds 16-byte binary references."""
    binary = np.flatnonzero((d.ref_kind == BYTES_REF) & (d.ref_len == 16))
    if not binary.size:
        return
    as_bytes = {(int(d.epoch[i]), bytes(d.refs[i, :16])): i for i in binary.tolist()}
    texts = np.flatnonzero((d.ref_kind == STR_REF) & np.isin(d.ref_len, (32, 36, 38)))
    items = []
    for i in texts.tolist():
        text = bytes(d.refs[i, : int(d.ref_len[i])]).decode("ascii", "replace")
        try:
            raw = uuid.UUID(text).bytes
        except ValueError:
            continue
        j = as_bytes.get((int(d.epoch[i]), raw))
        if j is None:
            continue
        first, second = sorted((i, j), key=lambda r: int(d.index[r]))
        items.append(
            (
                "one UUID decided in one epoch both as text and as its 16 bytes: two draws "
                "for one call (a re-roll)",
                {
                    "index": int(d.index[second]),
                    "call_ref": d.ref_text(second),
                    "epoch_id": d.epochs[int(d.epoch[i])],
                    "evidence": {
                        "first_index": int(d.index[first]),
                        "first_call_ref": d.ref_text(first),
                    },
                },
            )
        )
    rep.add_listed("time", items, "UUIDs decided in two forms")


def _order(
    rep: AuditReport,
    d: Decisions,
    times: npt.NDArray[np.int64],
    others: Sequence[Entry],
    *,
    simulated: bool,
) -> None:
    o_index = np.fromiter((e.index for e in others), dtype=np.int64, count=len(others))
    o_time = np.fromiter((min(e.time_us, _CLAMP) for e in others), np.int64, len(others))
    size = 1 + max(int(d.index[-1]) if len(d) else -1, int(o_index.max()) if o_index.size else -1)
    # Every entry's time by index; entries not read (a damaged log) hold a time before all.
    t = np.full(size, -_CLAMP, dtype=np.int64)
    present = None
    if size != len(d) + len(others):
        present = np.zeros(size, dtype=bool)
        present[d.index] = True
        present[o_index] = True
    t[d.index] = times
    t[o_index] = o_time
    rep.checked.setdefault("time", {})["entries"] = (
        size if present is None else int(np.count_nonzero(present))
    )
    if size and int(t.max()) > MAX_TIME_US:
        far = np.flatnonzero(t > MAX_TIME_US)
        rep.add_listed(
            "time",
            [
                (
                    "the entry is dated after the year 9999",
                    {"index": i, "evidence": {"time_us": str(int(t[i]))}},
                )
                for i in far.tolist()
            ],
            "entries dated after the year 9999",
        )
    if size < 2:
        return
    latest = np.maximum.accumulate(t)
    behind = t[1:] + _SLACK_US < latest[:-1]
    if present is not None:
        behind &= present[1:]
    late = np.flatnonzero(behind) + 1
    if not late.size:
        return
    if simulated:
        rep.notes.append(
            f"time: {late.size:,} entries are dated more than {TIME_SLACK.seconds} s before an "
            f"earlier entry (first: entry {int(late[0])}); this store is SIMULATED, so simulated "
            "and real times mix and the order of times is not held as a finding"
        )
        return
    # Where the latest time so far was set (the last entry that reached it).
    holder = np.maximum.accumulate(np.where(t == latest, np.arange(size), 0))
    items = []
    for i in late.tolist():
        before = int(holder[i - 1])
        items.append(
            (
                f"the entry is dated {(int(t[before]) - int(t[i])) / 1e6:,.3f} s before entry "
                f"{before}, which precedes it in the log: entry times run backwards (by more "
                f"than the {TIME_SLACK.seconds} s allowed for concurrent writers)",
                {
                    "index": i,
                    "evidence": {
                        "time": _iso(int(t[i])),
                        "earlier_entry": before,
                        "earlier_entry_time": _iso(int(t[before])),
                    },
                },
            )
        )
    rep.add_listed("time", items, "entries dated before an earlier entry")


def _epochs(rep: AuditReport, d: Decisions, times: npt.NDArray[np.int64]) -> None:
    rep.checked["time"]["decisions"] = len(d)
    if not len(d):
        return
    days = np.asarray(
        [(-(2**40) if (x := epoch_day(e)) is None else x) for e in d.epochs], dtype=np.int64
    )
    wrong = np.flatnonzero(days[d.epoch] != times // _DAY_US)
    if not wrong.size:
        return
    codes, first, counts = np.unique(d.epoch[wrong], return_index=True, return_counts=True)
    items = []
    for code, j, count in zip(codes.tolist(), first.tolist(), counts.tolist(), strict=True):
        i = int(wrong[j])
        epoch = d.epochs[code]
        valid = epoch_day(epoch) is not None
        items.append(
            (
                (
                    f"{count:,} decisions of epoch {epoch} are not dated on that UTC day (the "
                    "epoch of a decision is the UTC day of its time)"
                    if valid
                    else f"{count:,} decisions name epoch {epoch!r}, which is not a UTC day "
                    "(YYYY-MM-DD)"
                ),
                {
                    "index": int(d.index[i]),
                    "epoch_id": epoch,
                    "call_ref": d.ref_text(i),
                    "evidence": {"decisions": count, "first_time": _iso(int(times[i]))},
                },
            )
        )
    rep.add_listed("time", items, "epochs with misdated decisions")


def _commit_horizon(rep: AuditReport, others: Sequence[Entry]) -> None:
    items = []
    commits = 0
    for e in others:
        if e.type != T_KEY_COMMIT:
            continue
        commits += 1
        epoch = e.fields.get("epoch_id")
        day = epoch_day(epoch) if isinstance(epoch, str) else None
        if day is None:
            items.append(
                (
                    f"a key commitment names epoch {epoch!r}, which is not a UTC day",
                    {"index": e.index, "evidence": {"committed_at": _iso(e.time_us)}},
                )
            )
            continue
        ahead = day * _DAY_US - e.time_us
        if ahead > _HORIZON_US:
            items.append(
                (
                    f"the key of epoch {epoch} was committed {ahead / _DAY_US:,.1f} days before "
                    f"the epoch begins; keys are committed at most {COMMIT_HORIZON.days} days "
                    "ahead",
                    {
                        "index": e.index,
                        "epoch_id": epoch,
                        "evidence": {
                            "committed_at": _iso(e.time_us),
                            "epoch_starts": _iso(day * _DAY_US),
                        },
                    },
                )
            )
    rep.checked["time"]["commitments"] = commits
    rep.add_listed("time", items, "commitments too far ahead")


def _policy_in_force(
    rep: AuditReport,
    d: Decisions,
    times: npt.NDArray[np.int64],
    policies: Sequence[LoggedPolicy],
    *,
    simulated: bool,
) -> None:
    rep.checked["time"]["policy_versions"] = len(policies)
    if not len(d) or not policies:
        return  # decisions before any policy: the log check reports them
    code = {v: i for i, v in enumerate(d.versions)}
    p_code = np.asarray([code.get(p.version, -1) for p in policies], dtype=np.int64)
    p_index = np.asarray([p.entry for p in policies], dtype=np.int64)
    p_eff = np.asarray([min(p.effective_at, _CLAMP) for p in policies], dtype=np.int64)
    p_time = np.asarray([min(p.time_us, _CLAMP) for p in policies], dtype=np.int64)
    bounds = np.searchsorted(d.index, p_index)  # the decisions after the k-th policy entry

    def in_force(upto: int, at: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Which of the first ``upto`` policy entries is in force at each time: among them,
        by (effective_at, log order), the last whose effective_at has come; -1 when none has
        (simulated: the earliest one, as Store.policy falls back)."""
        cand = np.lexsort((p_index[:upto], p_eff[:upto]))
        pos = np.searchsorted(p_eff[:upto][cand], at, side="right") - 1
        none = int(cand[0]) if simulated else -1
        out: npt.NDArray[np.int64] = np.where(pos >= 0, cand[np.maximum(pos, 0)], none)
        return out

    def agrees(which: npt.NDArray[np.int64], named: npt.NDArray[np.int32]) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = (which >= 0) & (p_code[np.maximum(which, 0)] == named)
        return out

    found: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
    for k in range(len(policies)):
        lo, hi = int(bounds[k]), int(bounds[k + 1]) if k + 1 < len(policies) else len(d)
        if lo >= hi:
            continue
        at, named = times[lo:hi], d.version[lo:hi]
        if int(at.min()) >= int(p_eff[: k + 1].max()):
            # Every entry so far took effect before these decisions: one version in force.
            last = int(np.lexsort((p_index[: k + 1], p_eff[: k + 1]))[-1])
            odd = np.flatnonzero(named != p_code[last])
            now = np.full(hi - lo, last, dtype=np.int64)
        else:
            now = in_force(k + 1, at)
            odd = np.flatnonzero(~agrees(now, named))
        if not odd.size:
            continue  # the usual case: every decision names the version in force
        named_known = np.zeros(len(d.versions) + 1, dtype=bool)
        named_known[p_code[: k + 1][p_code[: k + 1] >= 0]] = True
        odd = odd[named_known[named[odd]]]  # a version never logged: the log check says so
        # A sampler picks up a new version about a second late: accept the version in force
        # TIME_SLACK earlier, and, just after this policy entry was logged, the version in
        # force without it (a version applied with an effective time already past).
        ok = agrees(in_force(k + 1, at[odd] - _SLACK_US), named[odd])
        if k:
            fresh = at[odd] < p_time[k] + _SLACK_US
            for when in (at[odd], at[odd] - _SLACK_US):
                ok |= fresh & agrees(in_force(k, when), named[odd])
        wrong = odd[~ok]
        if wrong.size:
            # Each named version's effective time, as its latest entry so far logs it.
            latest = {int(p_code[j]): int(p_eff[j]) for j in range(k + 1)}
            effs_named = np.asarray([latest[v] for v in named[wrong].tolist()], dtype=np.int64)
            found.append((wrong + lo, now[wrong], effs_named))
    if not found:
        return
    rows = np.concatenate([f[0] for f in found])
    force = np.concatenate([f[1] for f in found])
    effs_named = np.concatenate([f[2] for f in found])
    future = effs_named > times[rows]
    # One finding per (named version, entry in force, in the future or not), with a count.
    key = np.stack([d.version[rows].astype(np.int64), force, future.astype(np.int64)], axis=1)
    groups, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    items = []
    for (vcode, pk, fut), j, count in zip(
        groups.tolist(), first.tolist(), counts.tolist(), strict=True
    ):
        i = int(rows[j])
        named_v = d.versions[vcode].hex()
        ev = {
            "decisions": count,
            "decision_time": _iso(int(times[i])),
            "policy_version": named_v,
            "effective_at": _iso(int(effs_named[j])),
            "in_force": None if pk < 0 else policies[pk].version.hex(),
        }
        if fut:
            msg = (
                f"{count:,} decisions name policy version {named_v[:16]}, whose effective_at is "
                "still in the future at the decision's time"
            )
        elif pk < 0:
            msg = f"{count:,} decisions were made before any logged policy took effect"
        else:
            msg = (
                f"{count:,} decisions name policy version {named_v[:16]}, not the version in "
                "force at their time (the latest logged before them whose effective_at has "
                "passed)"
            )
        items.append(
            (
                msg,
                {
                    "index": int(d.index[i]),
                    "epoch_id": d.epochs[int(d.epoch[i])],
                    "call_ref": d.ref_text(i),
                    "evidence": ev,
                },
            )
        )
    rep.add_listed("time", items, "groups of decisions under a policy not in force")


def _one_epoch_per_reference(rep: AuditReport, d: Decisions) -> None:
    rep.checked["time"]["epochs"] = len(d.epochs)
    if len(d.epochs) < 2:
        return  # one epoch (or none): no reference can be in two
    # The first decision of each reference, whatever its epoch: call_firsts with one epoch.
    anywhen = dataclasses.replace(d, epoch=np.zeros(len(d), dtype=np.int32), epochs=[""])
    firsts = call_firsts(anywhen)
    has = firsts >= 0
    rep.checked["time"]["references"] = int(np.count_nonzero(has & (firsts == np.arange(len(d)))))
    other = np.flatnonzero(has & (d.epoch != d.epoch[np.maximum(firsts, 0)]))
    if not other.size:
        return
    seen: dict[int, list[int]] = {}
    for i in other.tolist():
        seen.setdefault(int(firsts[i]), []).append(i)
    items = []
    for f, rows in seen.items():
        epochs = sorted({d.epochs[int(d.epoch[f])], *(d.epochs[int(d.epoch[i])] for i in rows)})
        items.append(
            (
                f"the same call reference was decided in {len(epochs)} epochs "
                f"({', '.join(epochs)}): each gave it a new draw (a re-roll)",
                {
                    "index": int(d.index[rows[0]]),
                    "call_ref": d.ref_text(f),
                    "epoch_id": d.epochs[int(d.epoch[rows[0]])],
                    "evidence": {
                        "first_index": int(d.index[f]),
                        "epochs": epochs,
                        "indices": [int(d.index[f]), *(int(d.index[i]) for i in rows[:20])],
                    },
                },
            )
        )
    rep.add_listed("time", items, "references decided in several epochs")
