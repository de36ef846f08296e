"""sampledrec: decide per call whether to record it, by random and auditable sampling.

The public API is re-exported here; everything else is private or low level.

>>> import sampledrec
>>> sampledrec.threshold("0.05") == (5 * 2**56) // 100
True
"""

from __future__ import annotations

from ._version import __version__ as __version__
from .clock import SYSTEM_CLOCK, Clock, FixedClock, SystemClock, parse_time
from .errors import (
    AccessDenied,
    AudioTypeError,
    CallRefTypeError,
    FFmpegNotFound,
    InvalidArgument,
    InvalidAudio,
    InvalidCallRef,
    InvalidKey,
    InvalidPolicy,
    InvalidRate,
    InvalidRecording,
    InvalidTime,
    KeyDestroyed,
    KeyNotRevealable,
    KeyringError,
    KeyTypeError,
    NotSelected,
    RateTypeError,
    RecordingExpired,
    RecordingNotFound,
    SampledrecError,
    StoreError,
    StoreLocked,
    StoreNotFound,
    StorePermissionError,
)
from .keys.keyring import EpochKey, Keyring, LocalKeyring, RevealedKey, epoch_commitment
from .keys.keystore import KeyStore, LocalKeyStore, Pkcs11KeyStore
from .log.writer import DecisionLog, LogCorrupt
from .retention.subjects import SubjectRequests
from .retention.sweep import Retention, SweepReport
from .sampling.keyed import draw, draw_many, threshold
from .sampling.objections import ObjectionList
from .sampling.policy import Policy, RetentionPeriod, Rule
from .sampling.sampler import Decision, DecisionBatch, Sampler
from .store import Store
from .vault.access import Principal
from .vault.audio import AudioFormat
from .vault.catalog import Catalog, RecordingRow, SqliteCatalog
from .vault.recorder import Recorder, Recording, Vault

__all__ = [
    "SYSTEM_CLOCK",
    "AccessDenied",
    "AudioFormat",
    "AudioTypeError",
    "CallRefTypeError",
    "Catalog",
    "Clock",
    "Decision",
    "DecisionBatch",
    "DecisionLog",
    "EpochKey",
    "FFmpegNotFound",
    "FixedClock",
    "InvalidArgument",
    "InvalidAudio",
    "InvalidCallRef",
    "InvalidKey",
    "InvalidPolicy",
    "InvalidRate",
    "InvalidRecording",
    "InvalidTime",
    "KeyDestroyed",
    "KeyNotRevealable",
    "KeyStore",
    "KeyTypeError",
    "Keyring",
    "KeyringError",
    "LocalKeyStore",
    "LocalKeyring",
    "LogCorrupt",
    "NotSelected",
    "ObjectionList",
    "Pkcs11KeyStore",
    "Policy",
    "Principal",
    "RateTypeError",
    "Recorder",
    "Recording",
    "RecordingExpired",
    "RecordingNotFound",
    "RecordingRow",
    "Retention",
    "RetentionPeriod",
    "RevealedKey",
    "Rule",
    "SampledrecError",
    "Sampler",
    "SqliteCatalog",
    "Store",
    "StoreError",
    "StoreLocked",
    "StoreNotFound",
    "StorePermissionError",
    "SubjectRequests",
    "SweepReport",
    "SystemClock",
    "Vault",
    "draw",
    "draw_many",
    "epoch_commitment",
    "parse_time",
    "threshold",
]
