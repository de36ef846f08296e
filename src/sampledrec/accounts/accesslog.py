"""The access log: every ``access`` entry of the decision log, for the DPO (``read_log``).

Listens, exports, review notes, holds, subject requests, denials, account changes and the
connection events (:mod:`.connections`) are all ``access`` entries: the action and the outcome
are public fields; who, which recording and the detail are personal fields sealed under the
month's ``access`` key (kept 12 months). :func:`access_log` reads them back with the keyring,
filtered by action, outcome and time, newest first; once a month's key is destroyed its
entries show ``None`` for who and what, and are still counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from ..errors import InvalidArgument
from ..log.format import T_ACCESS, from_micros, to_micros
from ..log.writer import iter_entries
from ..store import Store
from ..vault.access import Principal
from ..vault.recorder import Vault
from .admin import authorize
from .users import User

__all__ = ["OUTCOMES", "AccessEvent", "AccessLog", "access_log"]

#: The outcomes an access entry may have.
OUTCOMES: Final = ("granted", "denied", "failed", "success", "failure", "done")
MAX_SHOWN: Final = 1000


@dataclass(frozen=True)
class AccessEvent:
    """One ``access`` entry read back (``principal``, ``recording_id`` and ``detail`` None
    once its month's access key is destroyed)."""

    index: int
    time: datetime
    action: str
    outcome: str
    principal: str | None
    recording_id: str | None
    detail: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "time": self.time.isoformat(),
            "action": self.action,
            "outcome": self.outcome,
            "principal": self.principal,
            "recording_id": self.recording_id,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class AccessLog:
    """What :func:`access_log` found: the events shown (newest first, at most ``limit``),
    how many matched in all, and every action and outcome the log holds (for filters)."""

    events: list[AccessEvent]
    matched: int
    actions: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)


def access_log(
    store: Store,
    vault: Vault,
    by: User | Principal,
    *,
    action: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 500,
) -> AccessLog:
    """The log's ``access`` entries that ``by`` may read (``read_log``, checked and logged by
    the vault), filtered: ``action`` and ``outcome`` equal, time in ``[since, until)``."""
    who = by.principal if isinstance(by, User) else by
    if not isinstance(limit, int) or not 1 <= limit <= MAX_SHOWN:
        raise InvalidArgument(f"limit={limit!r} must be from 1 to {MAX_SHOWN}")
    authorize(vault, who, "read_log")
    vault.log.flush()
    lo = to_micros(since) if since is not None else None
    hi = to_micros(until) if until is not None else None
    actions: set[str] = set()
    outcomes: set[str] = set()
    found: deque[AccessEvent] = deque(maxlen=limit)  # the newest `limit`, in constant memory
    matched = 0
    for entry in iter_entries(store.log_storage, store.keyring):
        if entry.type != T_ACCESS:
            continue
        f = entry.fields
        act, out = str(f.get("action", "")), str(f.get("outcome", ""))
        actions.add(act)
        outcomes.add(out)
        if action and act != action:
            continue
        if outcome and out != outcome:
            continue
        if lo is not None and entry.time_us < lo:
            continue
        if hi is not None and entry.time_us >= hi:
            continue
        matched += 1
        found.append(
            AccessEvent(
                entry.index,
                from_micros(entry.time_us),
                act,
                out,
                _text(f.get("principal")),
                _text(f.get("recording_id")),
                _text(f.get("detail")),
            )
        )
    return AccessLog(list(reversed(found)), matched, sorted(actions), sorted(outcomes))


def _text(value: object) -> str | None:
    return None if value is None else str(value)
