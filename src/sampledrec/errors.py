"""Every error sampledrec raises, under one root.

::

    SampledrecError
    ├── InvalidArgument (ValueError)        a value given to the API is wrong
    │   ├── InvalidCallRef                  empty, over 256 bytes, ...
    │   │   └── CallRefTypeError (TypeError)  not str or bytes
    │   ├── InvalidKey                      not 32 bytes
    │   │   └── KeyTypeError (TypeError)      not bytes or an EpochKey
    │   ├── InvalidRate                     not a decimal in [0, 1]
    │   │   └── RateTypeError (TypeError)     not text or a number
    │   ├── InvalidTime                     not ISO 8601, or moves a clock back
    │   └── InvalidPolicy                   a policy file breaks a rule or a guardrail
    ├── KeyringError                        a key cannot be created, found or revealed
    │   └── KeyNotRevealable                the epoch has not ended yet
    └── StoreError                          the store cannot be used at all
        ├── StoreNotFound
        ├── StoreLocked
        └── StorePermissionError

Misuse errors also subclass the matching built-in, so ``except ValueError`` keeps working in
code that does not know sampledrec. Messages name the argument, its value and what to do.
"""

from __future__ import annotations

__all__ = [
    "CallRefTypeError",
    "InvalidArgument",
    "InvalidCallRef",
    "InvalidKey",
    "InvalidPolicy",
    "InvalidRate",
    "InvalidTime",
    "KeyNotRevealable",
    "KeyTypeError",
    "KeyringError",
    "RateTypeError",
    "SampledrecError",
    "StoreError",
    "StoreLocked",
    "StoreNotFound",
    "StorePermissionError",
]


class SampledrecError(Exception):
    """Root of every error raised by sampledrec."""


class InvalidArgument(SampledrecError, ValueError):
    """A value passed to the API is not acceptable; the message says what to pass instead."""


class InvalidCallRef(InvalidArgument):
    """A call reference is empty, longer than 256 bytes, or otherwise unusable."""


class CallRefTypeError(InvalidCallRef, TypeError):
    """A call reference is neither ``str`` nor ``bytes``."""


class InvalidKey(InvalidArgument):
    """A key does not have the required length or form."""


class KeyTypeError(InvalidKey, TypeError):
    """A key is neither ``bytes`` nor an :class:`~sampledrec.EpochKey`."""


class InvalidRate(InvalidArgument):
    """A sampling rate is not a finite decimal number between 0 and 1."""


class RateTypeError(InvalidRate, TypeError):
    """A rate is neither text nor a number."""


class InvalidTime(InvalidArgument):
    """A time is not ISO 8601, or would move a clock backwards."""


class InvalidPolicy(InvalidArgument):
    """A policy file cannot be parsed, or breaks a rule or a guardrail.

    Attributes give the location of the problem when known, so that tools can point at it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        rule: str | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if file is not None:
            where.append(str(file))
        if rule is not None:
            where.append(f"rule {rule!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)
        self.file = file
        self.rule = rule
        self.field = field


class KeyringError(SampledrecError):
    """A key cannot be created, found, read or revealed."""


class KeyNotRevealable(KeyringError):
    """The key of an epoch that has not ended (by the real clock) was asked to be revealed."""


class StoreError(SampledrecError):
    """The store cannot be used at all: missing, locked, wrong permissions, I/O error."""


class StoreNotFound(StoreError):
    """No store exists at the given path."""


class StoreLocked(StoreError):
    """Another process holds the store's lock for longer than we are willing to wait."""


class StorePermissionError(StoreError):
    """The store's files or keyring have unsafe or unusable permissions."""
