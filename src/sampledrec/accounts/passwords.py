"""Console passwords: the minimum strength checked when one is set, and argon2id hashes.

A password is accepted (:func:`check_strength`) when it is at least ``min_length`` characters
long (12 by default; at most 1024), has at least 5 different characters, does not contain the
account's name, and is not one of the common passwords of a small list kept in this module
(compared without case, and with the digits and symbols at its ends removed, so ``Password2024!``
counts as ``password``). Nothing is sent anywhere to check it (no third-party service).

Hashes are argon2id (argon2-cffi's :class:`~argon2.PasswordHasher`, its default parameters
unless a caller passes lighter ones for tests): the salt and parameters travel inside the hash.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import InvalidArgument, WeakPassword

__all__ = [
    "COMMON_PASSWORDS",
    "MAX_LENGTH",
    "PasswordRules",
    "check_strength",
    "hash_password",
    "verify_password",
]

MAX_LENGTH: Final = 1024

_COMMON_TEXT: Final = """
password passwort motdepasse contrasena qwerty qwertyuiop azerty azertyuiop asdfgh
asdfghjkl zxcvbn zxcvbnm letmein welcome welcomeback admin administrator root toor
changeme default secret iloveyou monkey dragon master shadow sunshine princess football
baseball soccer superman batman trustno1 whatever freedom starwars computer internet
hello helloworld login passw0rd p@ssw0rd p@ssword pa55word abc abcdef abcdefgh
abcdefghijkl abcd1234 qwerty123 azerty123 111111 123123 123456 1234567 12345678
123456789 1234567890 12345678910 987654321 000000 654321 666666 121212 112233
sampledrec callcentre callcenter recording recordings supervisor reviewer auditor
support sales customer service summer winter spring autumn
"""
#: Passwords and stems that every guessing list tries first; a password whose stem is one of
#: these is refused. Kept short on purpose: length does most of the work.
COMMON_PASSWORDS: Final = frozenset(_COMMON_TEXT.split())

_STRIP: Final = "0123456789!@#$%^&*()-_=+[]{};:'\",.<>/?\\|`~ "


@dataclass(frozen=True)
class PasswordRules:
    """How strong a console password must be, and how long it may be used.

    ``max_age_days``: a password older than this must be changed at the next sign-in
    (``None``: never).
    """

    min_length: int = 12
    max_age_days: int | None = 90

    def __post_init__(self) -> None:
        if not isinstance(self.min_length, int) or not 8 <= self.min_length <= 128:
            raise InvalidArgument(
                f"min_length={self.min_length!r} must be a whole number from 8 to 128"
            )
        if self.max_age_days is not None and (
            not isinstance(self.max_age_days, int) or not 1 <= self.max_age_days <= 3650
        ):
            raise InvalidArgument(
                f"max_age_days={self.max_age_days!r} must be a number of days from 1 to 3650, "
                "or None for passwords that never expire"
            )


def _stem(password: str) -> str:
    return unicodedata.normalize("NFKC", password).casefold().strip(_STRIP)


def check_strength(password: str, username: str, rules: PasswordRules | None = None) -> None:
    """Raise :class:`~sampledrec.errors.WeakPassword` naming the rule a new password breaks
    (see the module docstring); return quietly when it is strong enough.

    >>> check_strength("correct horse battery staple", "maria")
    >>> check_strength("Password2024!", "maria")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sampledrec.errors.WeakPassword: this password is one of the most common ones...
    """
    rules = rules or PasswordRules()
    if not isinstance(password, str):
        raise WeakPassword("a password must be text")
    if len(password) < rules.min_length:
        raise WeakPassword(
            f"a password needs at least {rules.min_length} characters (this one has "
            f"{len(password)}); a few unrelated words make a long one that is easy to remember"
        )
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password may have at most {MAX_LENGTH} characters")
    if len(set(password)) < 5:
        raise WeakPassword("a password needs at least 5 different characters")
    if _stem(password) in COMMON_PASSWORDS or not _stem(password):
        raise WeakPassword(
            "this password is one of the most common ones (or one with digits or symbols "
            "added at its ends): guessing tools try it first; choose another"
        )
    name = unicodedata.normalize("NFKC", username).casefold()
    if len(name) >= 3 and name in unicodedata.normalize("NFKC", password).casefold():
        raise WeakPassword("a password must not contain the account's name; choose another")


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    """The argon2id hash of ``password`` (salt and parameters included)."""
    return (hasher or PasswordHasher()).hash(password)


def verify_password(stored: str, password: str, hasher: PasswordHasher | None = None) -> bool:
    """Whether ``password`` matches the argon2id hash ``stored`` (False for a malformed
    hash too: a damaged row never lets anyone in)."""
    try:
        return (hasher or PasswordHasher()).verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
