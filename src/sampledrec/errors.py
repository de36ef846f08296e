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
    │   ├── InvalidPolicy                   a policy file breaks a rule or a guardrail
    │   ├── InvalidSipMessage               SIP, SDP, a multipart body or recording metadata
    │   │                                   that cannot be parsed or breaks a limit
    │   ├── InvalidMediaStream              an AudioSocket frame, a media-stream message or a
    │   │                                   fork's metadata that cannot be used
    │   ├── InvalidAudio                    audio of a wrong format, length, dtype or shape
    │   │   ├── AudioTypeError (TypeError)    not bytes or a numpy array
    │   │   └── FFmpegNotFound                decoding a file needs ffmpeg, not installed
    │   └── WeakPassword                    a console password below the minimum strength
    ├── InvalidRecording                    a recording cannot be decrypted or authenticated
    ├── NotSelected                         recording refused: the call was not selected
    ├── AccessDenied (PermissionError)      a principal's roles do not allow the action
    ├── AuthenticationFailed                a console sign-in was refused: wrong password or
    │   │                                   code, unknown or disabled account
    │   ├── PasskeyRefused                  a security key's (WebAuthn) answer was refused
    │   └── SignInThrottled                 too many failures: wait ``retry_after`` seconds
    ├── RecordingExpired                    a recording is past its expiry, or erased
    ├── RecordingNotFound (KeyError)        no recording with that id
    ├── NoOpenRecording (LookupError)       no front door of the server records that call now
    ├── ServerStopping                      the server is shutting down: the request was not
    │                                       handled (retry on another node)
    ├── CheckpointError (ValueError)        a checkpoint or verifier key is malformed, or its
    │                                       signature does not verify
    ├── LogCorrupt                          the decision log cannot be trusted: a batch, entry or
    │                                       checkpoint does not verify
    ├── LogRepairRefused                    a log repair was refused: nothing to repair, or
    │                                       nothing before the damage to keep
    ├── KeyringError                        a key cannot be created, found or revealed
    │   ├── KeyNotRevealable                the epoch has not ended yet
    │   └── KeyDestroyed                    a bucket's key was destroyed (crypto-shredded)
    ├── StoreError                          the store cannot be used at all
    │   ├── StoreNotFound
    │   ├── StoreLocked
    │   └── StorePermissionError
    └── SampledrecWarning (Warning)         what the library warns about (warnings.warn); an
        │                                   error too when warnings are turned into errors
        └── UnknownAttributeWarning (UserWarning)  a call attribute that no rule or role
                                                   scope of the policy uses (a typo?)

Misuse errors also subclass the matching built-in, so ``except ValueError`` keeps working in
code that does not know sampledrec. Messages name the argument, its value and what to do.
:class:`InvalidRecording` is the one exception: it is deliberately opaque (see its docstring).
Warnings are issued with :func:`warnings.warn` (filter them by :class:`SampledrecWarning`); the
CLI prints them as ``warning: ...`` lines on stderr.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "AudioTypeError",
    "AuthenticationFailed",
    "CallRefTypeError",
    "CheckpointError",
    "FFmpegNotFound",
    "InvalidArgument",
    "InvalidAudio",
    "InvalidCallRef",
    "InvalidKey",
    "InvalidMediaStream",
    "InvalidPolicy",
    "InvalidRate",
    "InvalidRecording",
    "InvalidSipMessage",
    "InvalidTime",
    "KeyDestroyed",
    "KeyNotRevealable",
    "KeyTypeError",
    "KeyringError",
    "LogCorrupt",
    "LogRepairRefused",
    "NoOpenRecording",
    "NotSelected",
    "PasskeyRefused",
    "RateTypeError",
    "RecordingExpired",
    "RecordingNotFound",
    "SampledrecError",
    "SampledrecWarning",
    "ServerStopping",
    "SignInThrottled",
    "StoreError",
    "StoreLocked",
    "StoreNotFound",
    "StorePermissionError",
    "UnknownAttributeWarning",
    "WeakPassword",
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


class InvalidSipMessage(InvalidArgument):
    """Bytes from the network that sampledrec's SIP front door cannot use: a SIP message, its
    framing on a stream, its multipart body, its SDP or its recording metadata (RFC 7865) is
    malformed, ambiguous or over a size limit. Parsers raise nothing else, whatever the input.

    ``status`` is the SIP status a server would answer with, when it can answer at all (a message
    without Via, From, To, Call-ID or CSeq cannot be answered and is dropped): 400 by default,
    413 for a message over a size limit, 415 for a body it cannot read, 488 for an unusable SDP
    offer, 505 for a SIP version other than 2.0.
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class InvalidMediaStream(InvalidArgument):
    """Bytes or messages from a media stream that a front door cannot use: an AudioSocket frame
    of an unknown type or a wrong length, a media-stream message (Twilio's JSON shape) that is
    not JSON, lacks a field or comes out of order, a FreeSWITCH fork's metadata without a call
    reference, or anything over a size limit. The stream parsers raise nothing else, whatever
    the input; the door closes the connection.
    """


class InvalidAudio(InvalidArgument):
    """Audio cannot be used: bad format or length, wrong array dtype or shape, undecodable file."""


class AudioTypeError(InvalidAudio, TypeError):
    """Audio (or an audio format) is given as a type that is not accepted, such as a list."""


class WeakPassword(InvalidArgument):
    """A console password is refused when it is set: too short, too common, or containing the
    account's name. The message says which rule and what to choose instead."""


class FFmpegNotFound(InvalidAudio):
    """A file needs ffmpeg to be decoded (it is no WAV read in memory), and ffmpeg is missing."""


class InvalidRecording(SampledrecError):
    """A recording cannot be read: it is damaged, truncated, or the key is wrong.

    Every failure to parse, authenticate or decrypt a recording container raises this one
    error with one fixed message and no chained cause: neither callers nor logs learn which
    check failed, so a damaged file, a truncated one and a wrong key look the same.
    """


class NotSelected(SampledrecError):
    """A recorder was asked for a call that the sampler did not select (the attempt is logged)."""


class AccessDenied(SampledrecError, PermissionError):
    """A principal's roles do not grant the permission an action needs, or do not reach the
    recording (its scope). The attempt is logged with outcome ``denied``."""


class AuthenticationFailed(SampledrecError):
    """A console sign-in step was refused: a wrong password or second-factor code, or an
    account that does not exist or is disabled. The message never says which (an attacker
    learns nothing about accounts); the attempt is logged with its real reason."""


class PasskeyRefused(AuthenticationFailed):
    """A security key's (WebAuthn) answer was refused: another challenge, origin or site, an
    unknown credential, a bad signature, or a signature counter that did not grow. The message
    is the same for all; ``reason`` says which, for the connection log only."""

    def __init__(self, reason: str) -> None:
        super().__init__("the security key's answer was refused")
        self.reason = reason


class SignInThrottled(AuthenticationFailed):
    """Too many failed sign-ins for the account or from the address: no attempt is checked for
    ``retry_after`` more seconds (the delay grows with each failure; no CAPTCHA)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RecordingExpired(SampledrecError):
    """A recording is past its effective expiry, was erased or aborted: it can no longer be read."""


class RecordingNotFound(SampledrecError, KeyError):
    """No recording has that id in the catalog."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "no such recording"


class NoOpenRecording(SampledrecError, LookupError):
    """No front door of ``sampledrec serve`` has an open recording of that call, so it cannot
    be paused or resumed (never decided, not selected, or already sealed)."""


class ServerStopping(SampledrecError):
    """``sampledrec serve`` is shutting down and took no new request (its HTTP door answers
    503): send it to another node, or again once the server is back."""


class CheckpointError(SampledrecError, ValueError):
    """A checkpoint or verifier key is malformed or its signature does not verify."""


class LogCorrupt(SampledrecError):
    """The log cannot be trusted: a batch, entry or checkpoint does not verify."""


class LogRepairRefused(SampledrecError):
    """A repair of the decision log was refused, and nothing was changed: the log has nothing to
    repair (it verifies, or only a torn last batch is left, which opening the log sets aside by
    itself), nothing before its damage can be kept (its first batch is damaged), or it is not
    this store's log (another store id or signing key: not damage, replacement)."""


class KeyringError(SampledrecError):
    """A key cannot be created, found, read or revealed."""


class KeyNotRevealable(KeyringError):
    """The key of an epoch that has not ended (by the real clock) was asked to be revealed."""


class KeyDestroyed(KeyringError):
    """The key of an expiry bucket (or hold) does not exist: it was destroyed when the bucket
    expired, or never created. Everything wrapped under it is unrecoverable, by design."""


class StoreError(SampledrecError):
    """The store cannot be used at all: missing, locked, wrong permissions, I/O error."""


class StoreNotFound(StoreError):
    """No store exists at the given path."""


class StoreLocked(StoreError):
    """Another process holds the store's lock for longer than we are willing to wait."""


class StorePermissionError(StoreError):
    """The store's files or keyring have unsafe or unusable permissions."""


class SampledrecWarning(SampledrecError, Warning):
    """Root of every warning sampledrec issues (with :func:`warnings.warn`).

    Under the error root too, so that ``-W error`` (or pytest's ``filterwarnings = error``) turns
    it into an error that ``except SampledrecError`` catches; filter warnings by this class.
    """


class UnknownAttributeWarning(SampledrecWarning, UserWarning):
    """A call attribute was given that no rule's ``match`` and no role's ``scope`` of the policy
    uses, so it cannot change the decision: often a typo (``quue`` for ``queue``). The message
    suggests the closest known name. A policy that declares its attributes
    (``[attributes] names = [...]``) refuses unknown ones instead, with
    :class:`InvalidArgument`."""
