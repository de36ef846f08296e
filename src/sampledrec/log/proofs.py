"""Inclusion and consistency proofs over a store's decision log, and their verifiers.

An :class:`InclusionProof` shows that one entry is in the log under a signed checkpoint without
disclosing any other entry: it carries the entry's bytes (its personal fields stay sealed) and
the RFC 6962 audit path, which holds only hashes. A consistency proof shows that a later
checkpoint extends an earlier one. Both verifiers need only the checkpoint note(s) and the
log's verifier key (``sampledrec log checkpoint`` exports both), never the store.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from . import hashing as _hashing
from .checkpoint import Checkpoint, parse_vkey, verify_checkpoint
from .merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from .segments import iter_batches, split_records
from .storage import LogStorage, log_storage

__all__ = [
    "InclusionProof",
    "log_consistency_proof",
    "log_inclusion_proof",
    "verify_consistency_proof",
    "verify_inclusion_proof",
]


def _leaves(log: LogStorage | str | os.PathLike[str], size: int) -> tuple[list[bytes], list[bytes]]:
    """The log's first ``size`` entries and their leaf hashes."""
    entries: list[bytes] = []
    for b in iter_batches(log_storage(log, in_store=True)):
        if len(entries) >= size:
            break
        entries.extend(split_records(b.data[b.start : b.end])[0])
    if size > len(entries):
        raise ValueError(f"the log holds {len(entries)} entries, fewer than {size}")
    entries = entries[:size]
    return entries, _hashing.leaf_hashes(entries)


@dataclass(frozen=True)
class InclusionProof:
    """Entry ``index`` (its bytes) is in the tree of ``checkpoint`` (a signed note)."""

    index: int
    entry: bytes
    path: list[bytes]
    checkpoint: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "sampledrec-inclusion-proof",
            "version": 1,
            "index": self.index,
            "entry": base64.b64encode(self.entry).decode(),
            "path": [p.hex() for p in self.path],
            "checkpoint": self.checkpoint.decode("utf-8"),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> InclusionProof:
        if doc.get("format") != "sampledrec-inclusion-proof":
            raise ValueError("not a sampledrec inclusion proof")
        return cls(
            int(doc["index"]),
            base64.b64decode(doc["entry"]),
            [bytes.fromhex(p) for p in doc["path"]],
            str(doc["checkpoint"]).encode("utf-8"),
        )

    def write(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def log_inclusion_proof(
    log: LogStorage | str | os.PathLike[str], index: int, checkpoint: Checkpoint
) -> InclusionProof:
    """Prove that entry ``index`` of ``log`` (a storage, or a store folder: its ``log/``) is
    in the tree of ``checkpoint``."""
    entries, leaves = _leaves(log, checkpoint.size)
    if not 0 <= index < checkpoint.size:
        raise ValueError(f"entry {index} is not covered by a checkpoint of {checkpoint.size}")
    return InclusionProof(
        index, entries[index], inclusion_proof(leaves, index, checkpoint.size), checkpoint.note
    )


def log_consistency_proof(
    log: LogStorage | str | os.PathLike[str], old: Checkpoint, new: Checkpoint
) -> list[bytes]:
    """Prove, from ``log`` (a storage, or a store folder), that the tree of ``new`` extends
    the tree of ``old``."""
    _, leaves = _leaves(log, new.size)
    return consistency_proof(leaves, old.size, new.size)


def verify_inclusion_proof(proof: InclusionProof, vkey: str) -> bool:
    """Check a proof with only the verifier key: the checkpoint's signature, then the path."""
    name, public_key = parse_vkey(vkey)
    try:
        cp = verify_checkpoint(proof.checkpoint, name, public_key)
    except CheckpointError:
        return False
    return verify_inclusion(leaf_hash(proof.entry), proof.index, cp.size, proof.path, cp.root)


def verify_consistency_proof(
    old_note: bytes, new_note: bytes, path: list[bytes], vkey: str
) -> bool:
    """Check that the signed checkpoint ``new_note`` extends ``old_note``."""
    name, public_key = parse_vkey(vkey)
    try:
        old = verify_checkpoint(old_note, name, public_key)
        new = verify_checkpoint(new_note, name, public_key)
    except CheckpointError:
        return False
    return verify_consistency(old.size, new.size, path, old.root, new.root)
