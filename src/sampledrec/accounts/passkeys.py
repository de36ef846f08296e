"""WebAuthn, the console's preferred second factor: security keys and platform authenticators.

The ceremonies (W3C Web Authentication Level 2) are checked by the ``webauthn`` package; this
module fixes what sampledrec asks of them and turns every refusal into one error:

- a :class:`RelyingParty` names the console: its *rp id* (a host name, never an IP address:
  browsers refuse those) and the one *origin* its pages are served from. A response made for
  another site, or on another origin, is refused.
- challenges are 32 random bytes made here, kept by the caller in the session that asked
  for them, and used once (:class:`Challenge`: the caller forgets it before checking the
  answer, so a replayed response meets no challenge), within :data:`CHALLENGE_SECONDS`.
- registration asks for no attestation (the console trusts the account holder who is
  already signed in, not a make of authenticator) and requires user presence; sign-in
  requires presence too, and a signature counter that grows (:func:`verify_assertion`):
  a counter that does not grow means a cloned authenticator, and is refused.

Nothing here stores anything: credentials live with the account (:mod:`.users`), sign-in
steps and their log entries are :mod:`.signin`'s.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..errors import InvalidArgument, PasskeyRefused

__all__ = [
    "CHALLENGE_SECONDS",
    "Challenge",
    "NewCredential",
    "PasskeyRefused",
    "RelyingParty",
    "Verified",
    "authentication_options",
    "credential_id_of",
    "registration_options",
    "verify_assertion",
    "verify_registration",
]

#: How long a challenge may be answered (the browser's own timeout is one minute).
CHALLENGE_SECONDS: Final = 300.0
_TIMEOUT_MS: Final = 60_000


@dataclass(frozen=True)
class RelyingParty:
    """The console as WebAuthn sees it: ``rp_id`` (a host name such as
    ``console.example.com``, or ``localhost``), the ``origin`` its pages come from
    (``https://console.example.com``, or ``http://localhost:8080`` on this machine), and the
    name the browser shows."""

    rp_id: str
    origin: str
    name: str = "sampledrec console"

    def __post_init__(self) -> None:
        host = self.rp_id
        if (
            not host
            or host != host.lower()
            or not all(part and part.replace("-", "").isalnum() for part in host.split("."))
            or host.replace(".", "").isdigit()
        ):
            raise InvalidArgument(
                f"rp_id={self.rp_id!r} must be the console's host name in lower case, such as "
                "'console.example.com' or 'localhost' (browsers refuse IP addresses)"
            )
        scheme, _, rest = self.origin.partition("://")
        hostport = rest.split(":")[0]
        secure = scheme == "https" or (scheme == "http" and hostport == "localhost")
        if not secure or "/" in rest or not (hostport == host or hostport.endswith("." + host)):
            raise InvalidArgument(
                f"origin={self.origin!r} must be https://HOST[:PORT] (http only for localhost), "
                f"HOST being rp_id={self.rp_id!r} or one of its subdomains"
            )


@dataclass(frozen=True)
class Challenge:
    """A challenge handed to the browser, for one ceremony (``purpose``) of one account."""

    value: bytes = field(repr=False)
    purpose: Literal["register", "authenticate"]
    user: str
    issued_at: float

    def fresh(self, purpose: str, user: str, now: float) -> bool:
        return (
            self.purpose == purpose
            and self.user == user
            and 0 <= now - self.issued_at < CHALLENGE_SECONDS
        )


@dataclass(frozen=True)
class NewCredential:
    """A credential registered by an authenticator: what the account keeps of it."""

    credential_id: bytes
    public_key: bytes = field(repr=False)
    sign_count: int


@dataclass(frozen=True)
class Verified:
    """A signed-in assertion: its credential and the authenticator's new counter."""

    credential_id: bytes
    sign_count: int


def _challenge(purpose: Literal["register", "authenticate"], user: str, now: float) -> Challenge:
    return Challenge(secrets.token_bytes(32), purpose, user, now)


def registration_options(
    rp: RelyingParty,
    user: str,
    user_handle: bytes,
    existing: list[bytes],
    *,
    now: float,
) -> tuple[dict[str, Any], Challenge]:
    """The options for ``navigator.credentials.create`` (a JSON-ready dict, binary values as
    base64url) and their challenge, to keep in the session that asked."""
    from webauthn import generate_registration_options
    from webauthn.helpers import options_to_json_dict
    from webauthn.helpers.structs import (
        AttestationConveyancePreference,
        AuthenticatorSelectionCriteria,
        PublicKeyCredentialDescriptor,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )

    challenge = _challenge("register", user, now)
    options = generate_registration_options(
        rp_id=rp.rp_id,
        rp_name=rp.name,
        user_name=user,
        user_id=user_handle,
        challenge=challenge.value,
        timeout=_TIMEOUT_MS,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.DISCOURAGED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=c) for c in existing],
    )
    return dict(options_to_json_dict(options)), challenge


def authentication_options(
    rp: RelyingParty, user: str, allowed: list[bytes], *, now: float
) -> tuple[dict[str, Any], Challenge]:
    """The options for ``navigator.credentials.get`` (the account's credentials only) and
    their challenge."""
    from webauthn import generate_authentication_options
    from webauthn.helpers import options_to_json_dict
    from webauthn.helpers.structs import (
        PublicKeyCredentialDescriptor,
        UserVerificationRequirement,
    )

    challenge = _challenge("authenticate", user, now)
    options = generate_authentication_options(
        rp_id=rp.rp_id,
        challenge=challenge.value,
        timeout=_TIMEOUT_MS,
        allow_credentials=[PublicKeyCredentialDescriptor(id=c) for c in allowed],
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    return dict(options_to_json_dict(options)), challenge


def _parsed(response: object) -> dict[str, Any]:
    if isinstance(response, (str, bytes)):
        try:
            response = json.loads(response)
        except ValueError:
            raise PasskeyRefused("malformed response") from None
    if not isinstance(response, dict):
        raise PasskeyRefused("malformed response")
    return response


def credential_id_of(response: object) -> bytes:
    """The credential id a response names (its ``rawId``), before anything is checked."""
    from webauthn import base64url_to_bytes

    raw = _parsed(response).get("rawId")
    if not isinstance(raw, str) or not 16 <= len(raw) <= 1400:
        raise PasskeyRefused("malformed response")
    try:
        return base64url_to_bytes(raw)
    except ValueError:
        raise PasskeyRefused("malformed response") from None


def verify_registration(rp: RelyingParty, response: object, challenge: Challenge) -> NewCredential:
    """Check a ``navigator.credentials.create`` response against ``challenge`` (already
    taken out of the session: single use). Raises :class:`PasskeyRefused`."""
    from webauthn import verify_registration_response
    from webauthn.helpers.exceptions import WebAuthnException

    try:
        done = verify_registration_response(
            credential=_parsed(response),
            expected_challenge=challenge.value,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            require_user_presence=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PasskeyRefused(_reason(exc)) from None
    return NewCredential(done.credential_id, done.credential_public_key, done.sign_count)


def verify_assertion(
    rp: RelyingParty,
    response: object,
    challenge: Challenge,
    *,
    public_key: bytes,
    sign_count: int,
) -> Verified:
    """Check a ``navigator.credentials.get`` response against ``challenge`` and the stored
    credential (its public key and last counter). Raises :class:`PasskeyRefused`."""
    from webauthn import verify_authentication_response
    from webauthn.helpers.exceptions import WebAuthnException

    try:
        done = verify_authentication_response(
            credential=_parsed(response),
            expected_challenge=challenge.value,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            credential_public_key=public_key,
            credential_current_sign_count=sign_count,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PasskeyRefused(_reason(exc)) from None
    return Verified(done.credential_id, done.new_sign_count)


def _reason(exc: Exception) -> str:
    """A short reason for the log (never the response's content)."""
    text = str(exc).lower()
    for key, reason in (
        ("challenge", "wrong challenge"),
        ("origin", "wrong origin"),
        ("rp id", "wrong rp id"),
        ("sign count", "sign count did not grow"),
        ("signature", "bad signature"),
        ("not present", "user not present"),
        ("client data type", "wrong ceremony"),
    ):
        if key in text:
            return reason
    return "malformed response"
