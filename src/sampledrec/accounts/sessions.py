"""Console sessions: random ids held in the server's memory, an idle timeout and a maximum age.

A session is created *before* sign-in (so the sign-in form has a CSRF token) and replaced by a
new one, under a new id, at each step that raises what it may do (password checked, second
factor checked): an id an attacker planted before sign-in is worth nothing after it (no session
fixation). Each session carries its own CSRF token, compared in constant time on every form.
A session unused for ``idle`` seconds, or older than ``max_age``, is gone; the caller logs its
expiry.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..errors import InvalidArgument

__all__ = ["Session", "SessionStore", "Stage"]

Stage = Literal["anonymous", "second_factor", "enrol", "change_password", "signed_in"]
"""What a session may do: sign in (``anonymous``), give its second factor, enrol one (first
sign-in or after a reset), change an expired password, or use the console (``signed_in``)."""

_ID_BYTES: Final = 32


@dataclass
class Session:
    sid: str
    stage: Stage
    created_at: float
    last_seen: float
    user: str | None = None
    address: str = ""
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(_ID_BYTES))
    #: A TOTP secret shown for enrolment and not yet confirmed by a code.
    pending_secret: str | None = field(default=None, repr=False)
    #: Recovery codes to show once, right after enrolment.
    show_codes: list[str] = field(default_factory=list, repr=False)
    #: The WebAuthn challenge handed to this session's browser (a
    #: :class:`~sampledrec.accounts.passkeys.Challenge`), taken out when answered: one use. A
    #: session replaced under a new id does not carry it.
    pending_challenge: Any = field(default=None, repr=False)

    def csrf_ok(self, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionStore:
    """The live sessions of one server.

    ``idle``: seconds without a request after which a session ends; ``max_age``: seconds
    after which it ends anyway.
    """

    def __init__(self, *, idle: float = 900.0, max_age: float = 12 * 3600.0) -> None:
        if not 30 <= idle <= max_age:
            raise InvalidArgument(
                f"idle={idle} and max_age={max_age}: need 30 <= idle <= max_age seconds"
            )
        self.idle, self.max_age = idle, max_age
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def new(self, *, now: float, address: str) -> Session:
        """An anonymous session (before sign-in)."""
        session = Session(secrets.token_urlsafe(_ID_BYTES), "anonymous", now, now, address=address)
        with self._lock:
            self._sessions[session.sid] = session
        return session

    def get(self, sid: str | None, *, now: float) -> tuple[Session | None, Session | None]:
        """``(session, expired)``: the live session of ``sid`` (its idle clock restarted), or
        None; ``expired`` is the session that ``sid`` named if it has just timed out (it is
        removed: the caller logs its expiry)."""
        if not sid:
            return None, None
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None, None
            if now - session.last_seen >= self.idle or now - session.created_at >= self.max_age:
                del self._sessions[sid]
                return None, session
            session.last_seen = now
            return session, None

    def advance(
        self, session: Session, stage: Stage, *, now: float, user: str | None = None
    ) -> Session:
        """Replace ``session`` by a new one at ``stage`` under a new id and CSRF token (the old
        id stops working at once)."""
        fresh = Session(
            secrets.token_urlsafe(_ID_BYTES),
            stage,
            session.created_at if stage != "second_factor" else now,
            now,
            user=user if user is not None else session.user,
            address=session.address,
            pending_secret=session.pending_secret,
        )
        with self._lock:
            self._sessions.pop(session.sid, None)
            self._sessions[fresh.sid] = fresh
        return fresh

    def drop(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.sid, None)

    def drop_user(self, name: str) -> int:
        """End every session of account ``name`` (disabled, reset); how many ended."""
        with self._lock:
            gone = [sid for sid, s in self._sessions.items() if s.user == name]
            for sid in gone:
                del self._sessions[sid]
        return len(gone)

    def expire_idle(self, *, now: float) -> list[Session]:
        """Remove and return the sessions that have timed out (the caller logs each)."""
        with self._lock:
            gone = [
                s
                for s in self._sessions.values()
                if now - s.last_seen >= self.idle or now - s.created_at >= self.max_age
            ]
            for s in gone:
                del self._sessions[s.sid]
        return gone
