"""Time-based one-time passwords (RFC 6238, through pyotp): 6 digits, 30-second steps.

A code is accepted for the current step and one step either side (clock drift), compared in
constant time, and only once: :func:`matching_step` tells which step a code belongs to, and
the account's directory refuses a step at or before the last one used.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Final
from urllib.parse import quote

import pyotp

__all__ = ["STEP_SECONDS", "matching_step", "new_secret", "provisioning_uri"]

STEP_SECONDS: Final = 30
_DRIFT: Final = 1


def new_secret() -> str:
    """A new random TOTP secret (base32, 160 bits)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, name: str, issuer: str = "sampledrec") -> str:
    """The ``otpauth://`` URI an authenticator app reads (typed in or pasted)."""
    return pyotp.TOTP(secret, interval=STEP_SECONDS).provisioning_uri(
        name=quote(name, safe=""), issuer_name=issuer
    )


def code_at(secret: str, at: datetime) -> str:
    """The code of ``secret`` at ``at`` (tests and the enrolment page's check)."""
    return pyotp.TOTP(secret, interval=STEP_SECONDS).at(at)


def matching_step(secret: str, code: str, at: datetime) -> int | None:
    """The time step whose code ``code`` is (the current one or one either side), or None."""
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, interval=STEP_SECONDS)
    now_step = int(at.timestamp()) // STEP_SECONDS
    found = None
    for step in range(now_step - _DRIFT, now_step + _DRIFT + 1):
        # Every candidate is compared (no early exit), in constant time.
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found
