"""sampledrec: decide per call whether to record it, by random and auditable sampling.

The public API is re-exported here; each stage's package holds the rest of its API
(:mod:`sampledrec.keys`, :mod:`sampledrec.sampling`, :mod:`sampledrec.log`,
:mod:`sampledrec.vault`, :mod:`sampledrec.retention`, :mod:`sampledrec.audit`), and every error is
in :mod:`sampledrec.errors`. ``docs/architecture.md`` draws the stages.

>>> import sampledrec
>>> sampledrec.threshold("0.05") == (5 * 2**56) // 100
True
"""

from __future__ import annotations

from ._version import __version__ as __version__
from .clock import Clock, FixedClock, parse_time
from .errors import SampledrecError
from .keys import EpochKey, Pkcs11KeyStore, RevealedKey
from .log import DecisionLog
from .retention import Retention, SubjectRequests, SweepReport
from .sampling import (
    Decision,
    DecisionBatch,
    ObjectionList,
    Policy,
    Sampler,
    draw,
    draw_many,
    threshold,
)
from .store import Store
from .vault import AudioFormat, Principal, Recorder, Recording, Vault

__all__ = [
    "AudioFormat",
    "Clock",
    "Decision",
    "DecisionBatch",
    "DecisionLog",
    "EpochKey",
    "FixedClock",
    "ObjectionList",
    "Pkcs11KeyStore",
    "Policy",
    "Principal",
    "Recorder",
    "Recording",
    "Retention",
    "RevealedKey",
    "SampledrecError",
    "Sampler",
    "Store",
    "SubjectRequests",
    "SweepReport",
    "Vault",
    "draw",
    "draw_many",
    "parse_time",
    "threshold",
]
