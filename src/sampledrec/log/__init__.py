"""The decision log: append-only, signed, tamper-evident (DESIGN.md §8).

:class:`DecisionLog` appends entries (decisions in bulk, with group commit) to segments and signs
checkpoints over an RFC 6962 Merkle tree; :func:`verify_log` re-checks every byte; proofs of
inclusion and consistency need only a checkpoint and the verifier key; :func:`read_log` gives an
auditor the decisions as numpy columns. A damaged log stops the writer until
:meth:`DecisionLog.repair` cuts it back, deliberately, and logs the gap (:class:`RepairReport`).
The log's bytes are kept by a :class:`LogStorage` (:class:`LocalLogStorage`: ``STORE/log/``);
the byte layout is ``docs/log-format.md``.
"""

from .checkpoint import Checkpoint
from .columns import Decisions, read_log
from .format import Entry, decode_entry
from .proofs import (
    InclusionProof,
    log_consistency_proof,
    log_inclusion_proof,
    verify_consistency_proof,
    verify_inclusion_proof,
)
from .repair import RepairReport
from .storage import LocalLogStorage, LogStorage
from .verify import LogReport, export_checkpoint, verify_log
from .writer import DecisionLog, RecoveryReport, iter_entries

__all__ = [
    "Checkpoint",
    "DecisionLog",
    "Decisions",
    "Entry",
    "InclusionProof",
    "LocalLogStorage",
    "LogReport",
    "LogStorage",
    "RecoveryReport",
    "RepairReport",
    "decode_entry",
    "export_checkpoint",
    "iter_entries",
    "log_consistency_proof",
    "log_inclusion_proof",
    "read_log",
    "verify_consistency_proof",
    "verify_inclusion_proof",
    "verify_log",
]
