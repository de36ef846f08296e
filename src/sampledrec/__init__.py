"""sampledrec: decide per call whether to record it, by random and auditable sampling.

The public API is re-exported here; everything else is private or low level.

>>> import sampledrec
>>> sampledrec.threshold("0.05") == (5 * 2**56) // 100
True
"""

from __future__ import annotations

from .clock import SYSTEM_CLOCK, Clock, FixedClock, SystemClock, parse_time
from .draw import draw, draw_many, threshold
from .errors import (
    CallRefTypeError,
    InvalidArgument,
    InvalidCallRef,
    InvalidKey,
    InvalidPolicy,
    InvalidRate,
    InvalidTime,
    KeyNotRevealable,
    KeyringError,
    KeyTypeError,
    RateTypeError,
    SampledrecError,
    StoreError,
    StoreLocked,
    StoreNotFound,
    StorePermissionError,
)
from .keyring import EpochKey, Keyring, LocalKeyring, RevealedKey, epoch_commitment
from .objections import ObjectionList
from .policy import Policy, Retention, Rule
from .sampler import Decision, DecisionBatch, Sampler
from .store import Store

__version__ = "0.1.0.dev0"

__all__ = [
    "SYSTEM_CLOCK",
    "CallRefTypeError",
    "Clock",
    "Decision",
    "DecisionBatch",
    "EpochKey",
    "FixedClock",
    "InvalidArgument",
    "InvalidCallRef",
    "InvalidKey",
    "InvalidPolicy",
    "InvalidRate",
    "InvalidTime",
    "KeyNotRevealable",
    "KeyTypeError",
    "Keyring",
    "KeyringError",
    "LocalKeyring",
    "ObjectionList",
    "Policy",
    "RateTypeError",
    "Retention",
    "RevealedKey",
    "Rule",
    "SampledrecError",
    "Sampler",
    "Store",
    "StoreError",
    "StoreLocked",
    "StoreNotFound",
    "StorePermissionError",
    "SystemClock",
    "draw",
    "draw_many",
    "epoch_commitment",
    "parse_time",
    "threshold",
]
