"""The connection log: every sign-in step, sign-out and session expiry, with its outcome.

Each event is one ``access`` entry of the decision log (docs/log-format.md), so it is sealed
like every other access detail: the action and the outcome are public fields, and who, from
where and why are personal fields, encrypted under the month's ``access`` key (kept 12
months, then destroyed). The address is never written: only its keyed pseudonym
(:func:`address_pseudonym`), which says "the same address as that attempt" and nothing more.

=====================  ============================================================
action                 when
=====================  ============================================================
sign_in                a name and password were checked (or refused unchecked: throttled)
second_factor          a TOTP code, a recovery code or a security key (WebAuthn) was checked
enrol_second_factor    a new TOTP secret was confirmed with its first code, or a security key
                       was registered (reason ``webauthn``)
remove_second_factor   a signed-in account removed one of its security keys
password_change        a password was changed at sign-in (expired, or first sign-in)
sign_out               the user signed out
session_expired        a session ended by its idle timeout or maximum age
=====================  ============================================================

The outcome is ``success`` or ``failure``; the detail is a small JSON object with the
``address`` pseudonym and, for a failure, the ``reason`` (``wrong password``, ``unknown
account``, ``disabled``, ``throttled``, ``wrong code``, ...).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from ..log.format import T_ACCESS, Entry, from_micros
from ..log.writer import DecisionLog

__all__ = [
    "CONNECTION_ACTIONS",
    "Connection",
    "address_pseudonym",
    "connections",
    "log_connection",
]

CONNECTION_ACTIONS: Final = (
    "sign_in",
    "second_factor",
    "enrol_second_factor",
    "remove_second_factor",
    "password_change",
    "sign_out",
    "session_expired",
)
_ADDRESS_DOMAIN: Final = b"sampledrec/v1/address\x00"


def address_pseudonym(pseudonym_key: bytes, address: str) -> str:
    """A keyed pseudonym of a client's network address: 16 hex digits of
    HMAC-SHA-256(pseudonym key, domain || address). The same address gives the same
    pseudonym in one store; nobody without the keyring can tell the address from it."""
    mac = hmac.new(pseudonym_key, _ADDRESS_DOMAIN + address.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:16]


def log_connection(
    log: DecisionLog,
    action: str,
    outcome: str,
    *,
    user: str,
    address: str,
    at: datetime,
    reason: str | None = None,
) -> int:
    """Queue one connection event (``address`` already a pseudonym); its log ticket."""
    detail: dict[str, str] = {"address": address}
    if reason:
        detail["reason"] = reason
    return log.append(
        T_ACCESS,
        {
            "action": action,
            "outcome": outcome,
            "principal": user,
            "recording_id": None,
            "detail": json.dumps(detail, separators=(",", ":"), sort_keys=True),
        },
        at=at,
    )


@dataclass(frozen=True)
class Connection:
    """One connection event read back from the log (``user`` etc. None once its month's access
    key was destroyed)."""

    index: int
    time: datetime
    action: str
    outcome: str
    user: str | None
    address: str | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "time": self.time.isoformat(),
            "action": self.action,
            "outcome": self.outcome,
            "user": self.user,
            "address": self.address,
            "reason": self.reason,
        }


def connections(entries: Iterable[Entry]) -> list[Connection]:
    """The connection events among ``entries`` (decoded with the keyring to see who)."""
    out = []
    for entry in entries:
        if entry.type != T_ACCESS or entry.fields.get("action") not in CONNECTION_ACTIONS:
            continue
        detail: dict[str, Any] = {}
        raw = entry.fields.get("detail")
        if isinstance(raw, str):
            try:
                loaded = json.loads(raw)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                detail = loaded
        out.append(
            Connection(
                index=entry.index,
                time=from_micros(entry.time_us),
                action=str(entry.fields["action"]),
                outcome=str(entry.fields.get("outcome", "")),
                user=entry.fields.get("principal"),
                address=detail.get("address"),
                reason=detail.get("reason"),
            )
        )
    return out
