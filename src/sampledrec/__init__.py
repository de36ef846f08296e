"""sampledrec: decide per call whether to record it, by random and auditable sampling.

The public API is re-exported here; everything else is private or low level.

>>> import sampledrec
>>> sampledrec.threshold("0.05") == (5 * 2**56) // 100
True
"""

from __future__ import annotations

from .access import Principal
from .audio import AudioFormat
from .catalog import Catalog, RecordingRow, SqliteCatalog
from .clock import SYSTEM_CLOCK, Clock, FixedClock, SystemClock, parse_time
from .draw import draw, draw_many, threshold
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
from .keyring import EpochKey, Keyring, LocalKeyring, RevealedKey, epoch_commitment
from .keystore import KeyStore, LocalKeyStore, Pkcs11KeyStore
from .log import DecisionLog, LogCorrupt
from .objections import ObjectionList
from .policy import Policy, RetentionPeriod, Rule
from .retention import Retention, SweepReport
from .sampler import Decision, DecisionBatch, Sampler
from .store import Store
from .subjects import SubjectRequests
from .vault import Recorder, Recording, Vault

__version__ = "0.1.0.dev0"

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
