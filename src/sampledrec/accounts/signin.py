"""Signing in to the console: the password, then the second factor, throttled and logged.

:class:`Authenticator` checks each step and logs it (:mod:`.connections`) with its outcome,
whatever happens. A refused step raises :class:`~sampledrec.errors.AuthenticationFailed`
with one message that does not say whether the account exists, is disabled, or the password
was wrong (the log says which); while the account or the address is being throttled
(:mod:`.throttle`) the step is refused unchecked with
:class:`~sampledrec.errors.SignInThrottled`.

An unknown account's password is checked against a fixed dummy hash, so that the time an
answer takes does not tell whether the account exists.

The second factor is a security key (WebAuthn, :mod:`.passkeys`) where the account has one,
else (or as the fallback) a TOTP code or a recovery code. A WebAuthn step takes the challenge
its session was handed (the caller has already removed it from the session: one use), and is
gated, throttled and logged like a code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from argon2 import PasswordHasher

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import AuthenticationFailed, InvalidArgument, SignInThrottled, WeakPassword
from ..log.format import to_micros
from ..log.writer import DecisionLog
from .connections import address_pseudonym, log_connection
from .passkeys import (
    Challenge,
    PasskeyRefused,
    RelyingParty,
    authentication_options,
    credential_id_of,
    registration_options,
    verify_assertion,
    verify_registration,
)
from .passwords import check_strength, verify_password
from .throttle import Throttle
from .totp import matching_step
from .users import USER_NAME, User, UserDirectory

__all__ = ["Authenticator", "Next", "PasswordChecked"]

Next = Literal["second_factor", "enrol", "change_password", "signed_in"]
_REFUSED: Final = "the name, the password or the code is not right (or the account is disabled)"


@dataclass(frozen=True)
class PasswordChecked:
    """What the password step found: the account and what it must do next."""

    user: User
    next: Next


class Authenticator:
    """The sign-in steps of one store's console (see the module docstring)."""

    def __init__(
        self,
        users: UserDirectory,
        log: DecisionLog,
        pseudonym_key: bytes,
        *,
        clock: Clock = SYSTEM_CLOCK,
        throttle: Throttle | None = None,
    ) -> None:
        self.users = users
        self.log = log
        self.clock = clock
        self.throttle = throttle or Throttle()
        self._pkey = pseudonym_key
        self._dummy = users.hasher.hash("sampledrec: no such account, same work")

    @property
    def hasher(self) -> PasswordHasher:
        return self.users.hasher

    def pseudonym(self, address: str) -> str:
        """The keyed pseudonym of a client address (what the log keeps instead)."""
        return address_pseudonym(self._pkey, address)

    def _log(
        self, action: str, ok: bool, user: str, address: str, reason: str | None = None
    ) -> int:
        return log_connection(
            self.log,
            action,
            "success" if ok else "failure",
            user=user,
            address=address,
            at=self.clock.now(),
            reason=reason,
        )

    def _keys(self, name: str, address: str) -> list[str]:
        return [f"user:{name}", f"addr:{address}"]

    def _gate(self, action: str, name: str, address: str) -> None:
        wait = self.throttle.wait(self._keys(name, address), now=self.clock.now().timestamp())
        if wait > 0:
            self._log(action, False, name, address, "throttled")
            raise SignInThrottled(
                f"too many failed attempts: try again in {int(wait + 0.999)} seconds", wait
            )

    def _fail(self, action: str, name: str, address: str, reason: str) -> AuthenticationFailed:
        self.throttle.failed(self._keys(name, address), now=self.clock.now().timestamp())
        self._log(action, False, name, address, reason)
        return AuthenticationFailed(_REFUSED)

    # -- the steps

    def check_password(self, name: str, password: str, *, address: str) -> PasswordChecked:
        """The first step; ``address`` is the client's pseudonym (:meth:`pseudonym`)."""
        name = name.strip().lower()[:64] if isinstance(name, str) else ""
        shown = name if USER_NAME.fullmatch(name) else "?"
        self._gate("sign_in", shown, address)
        user = self.users.get(name) if shown != "?" else None
        stored = user.password_hash if user is not None else self._dummy
        good = verify_password(stored, password if isinstance(password, str) else "", self.hasher)
        if user is None:
            raise self._fail("sign_in", shown, address, "unknown account")
        if not good:
            raise self._fail("sign_in", name, address, "wrong password")
        if user.disabled:
            raise self._fail("sign_in", name, address, "disabled")
        self._log("sign_in", True, name, address)
        if not user.enrolled:
            return PasswordChecked(user, "enrol")
        return PasswordChecked(user, "second_factor")

    def check_second_factor(self, name: str, code: str, *, address: str) -> Next:
        """The second step: a TOTP code, or one of the account's recovery codes (used up).
        Returns what comes next: ``change_password`` or ``signed_in``."""
        self._gate("second_factor", name, address)
        user = self.users.get(name)
        if user is None or user.disabled or not user.enrolled:
            raise self._fail("second_factor", name, address, "account not usable")
        secret = self.users.totp_secret(name)
        code = code.strip() if isinstance(code, str) else ""
        step = matching_step(secret, code, self.clock.now()) if secret else None
        method = None
        if step is not None:
            if not self.users.use_totp_step(name, step):
                raise self._fail("second_factor", name, address, "code already used")
            method = "totp"
        elif len(code) >= 10 and self.users.use_recovery_code(name, code):
            method = "recovery code"
        if method is None:
            raise self._fail("second_factor", name, address, "wrong code")
        return self._signed_in(user, address, "second_factor", method)

    def enrol(self, name: str, secret: str, code: str, *, address: str) -> list[str]:
        """Confirm a new TOTP secret with its current code; keeps it and returns the account's
        new recovery codes (to show once)."""
        self._gate("enrol_second_factor", name, address)
        user = self.users.get(name)
        if user is None or user.disabled:
            raise self._fail("enrol_second_factor", name, address, "account not usable")
        step = matching_step(secret, code if isinstance(code, str) else "", self.clock.now())
        if step is None:
            raise self._fail("enrol_second_factor", name, address, "wrong code")
        codes = self.users.enrol_totp(name, secret)
        self.users.use_totp_step(name, step)
        self._log("enrol_second_factor", True, name, address)
        return codes

    def finish_enrolment(self, name: str, *, address: str) -> Next:
        user = self.users.get(name)
        if user is None or user.disabled:
            raise self._fail("enrol_second_factor", name, address, "account not usable")
        return self._signed_in(user, address, None, None)

    # -- security keys (WebAuthn)

    def passkey_registration(self, name: str, rp: RelyingParty) -> tuple[dict[str, Any], Challenge]:
        """Options to register a new security key for ``name`` (the caller keeps the
        challenge in the session that asked, and gives it back once)."""
        user = self.users.get(name)
        if user is None or user.disabled:
            raise AuthenticationFailed(_REFUSED)
        existing = [k.credential_id for k in self.users.credentials(name)]
        return registration_options(
            rp, name, self.users.user_handle(name), existing, now=self.clock.now().timestamp()
        )

    def register_passkey(
        self,
        name: str,
        rp: RelyingParty,
        response: object,
        challenge: Challenge | None,
        *,
        address: str,
        enrolling: bool,
    ) -> list[str]:
        """Check a registration response and keep the new credential. When the account is
        ``enrolling`` (its first second factor) it gets new recovery codes, returned to show
        once; otherwise the list is empty. Logged as ``enrol_second_factor``."""
        action = "enrol_second_factor"
        self._gate(action, name, address)
        user = self.users.get(name)
        if user is None or user.disabled:
            raise self._fail(action, name, address, "account not usable")
        if challenge is None or not challenge.fresh("register", name, self.clock.now().timestamp()):
            raise self._fail(action, name, address, "no challenge or an expired one")
        try:
            new = verify_registration(rp, response, challenge)
            self.users.add_credential(
                name,
                new.credential_id,
                new.public_key,
                new.sign_count,
                now_us=to_micros(self.clock.now()),
            )
        except PasskeyRefused as exc:
            raise self._fail(action, name, address, exc.reason) from None
        except InvalidArgument:
            raise self._fail(action, name, address, "security key registered already") from None
        codes = self.users.new_recovery_codes(name) if enrolling and not user.totp else []
        self._log(action, True, name, address, "webauthn")
        return codes

    def passkey_authentication(
        self, name: str, rp: RelyingParty
    ) -> tuple[dict[str, Any], Challenge]:
        """Options to sign ``name`` in with one of its security keys."""
        allowed = [k.credential_id for k in self.users.credentials(name)]
        user = self.users.get(name)
        if user is None or user.disabled or not allowed:
            raise AuthenticationFailed(_REFUSED)
        return authentication_options(rp, name, allowed, now=self.clock.now().timestamp())

    def check_passkey(
        self,
        name: str,
        rp: RelyingParty,
        response: object,
        challenge: Challenge | None,
        *,
        address: str,
    ) -> Next:
        """The second step with a security key: the response must answer ``challenge``, on
        this console's origin and rp id, be signed by one of the account's credentials, and
        carry a counter above the stored one. Returns what comes next, like
        :meth:`check_second_factor`."""
        action = "second_factor"
        self._gate(action, name, address)
        user = self.users.get(name)
        if user is None or user.disabled or not user.enrolled:
            raise self._fail(action, name, address, "account not usable")
        now = self.clock.now()
        if challenge is None or not challenge.fresh("authenticate", name, now.timestamp()):
            raise self._fail(action, name, address, "no challenge or an expired one")
        try:
            credential_id = credential_id_of(response)
            stored = self.users.credential_key(name, credential_id)
            if stored is None:
                raise PasskeyRefused("unknown credential")
            public_key, count = stored
            verified = verify_assertion(
                rp, response, challenge, public_key=public_key, sign_count=count
            )
            if not self.users.use_credential(
                name, credential_id, verified.sign_count, to_micros(now)
            ):
                raise PasskeyRefused("sign count did not grow")
        except PasskeyRefused as exc:
            raise self._fail(action, name, address, exc.reason) from None
        return self._signed_in(user, address, action, "webauthn")

    def remove_passkey(self, name: str, credential_id: bytes, *, address: str) -> bool:
        """Forget one of the signed-in account's security keys (logged); False if it has no
        such key."""
        removed = self.users.remove_credential(name, credential_id)
        self._log(
            "remove_second_factor", removed, name, address, None if removed else "no such key"
        )
        return removed

    def change_password(self, name: str, new: str, *, address: str) -> None:
        """Set a new password at sign-in (the old one expired, or was set by an admin). The
        new one must be strong enough and differ from the old one."""
        user = self.users.get(name)
        if user is None or user.disabled:
            raise self._fail("password_change", name, address, "account not usable")
        try:
            check_strength(new, name, self.users.rules)
            if verify_password(user.password_hash, new, self.hasher):
                raise WeakPassword("the new password must differ from the old one")
        except WeakPassword:
            self._log("password_change", False, name, address, "too weak")
            raise
        self.users.set_password(name, new, now_us=to_micros(self.clock.now()))
        self._log("password_change", True, name, address)

    def _signed_in(self, user: User, address: str, action: str | None, method: str | None) -> Next:
        self.throttle.succeeded(self._keys(user.name, address))
        if action is not None:
            self._log(action, True, user.name, address, None if method == "totp" else method)
        now_us = to_micros(self.clock.now())
        self.users.signed_in(user.name, now_us)
        if user.must_change or user.password_expired(now_us, self.users.rules):
            return "change_password"
        return "signed_in"

    def signed_out(self, name: str, *, address: str) -> None:
        self._log("sign_out", True, name, address)

    def expired(self, name: str, *, address: str) -> None:
        self._log("session_expired", True, name, address)
