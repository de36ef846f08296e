"""Witnesses: checkpoints cosigned outside the operator's reach (DESIGN.md §5, §14).

The operator holds the log's signing key, so it could rewrite the log and sign it again. A
*witness*, run by someone else (a DPO, an auditor, a works council, a regulator), checks that each
new checkpoint of the log extends the last one it saw and cosigns it; a rewrite is then caught
by comparing the log with what the witnesses cosigned.

- :class:`Witness` answers the C2SP tlog-witness ``add-checkpoint`` call with C2SP
  tlog-cosignature lines, keeping per log only its latest verified checkpoint
  (:class:`WitnessState`, crash-safe); :mod:`sampledrec.witness.http` serves it over HTTP
  (``sampledrec witness serve``), :class:`Cosigner` holds its key (``sampledrec witness
  keygen``).
- :class:`Witnessing` is the log's side: it sends each new checkpoint, with a consistency
  proof, to the witnesses that ``store.json`` names (:class:`WitnessSettings`) and keeps the
  cosigned checkpoints under ``STORE/cosigned/``.
- :mod:`sampledrec.witness.note` and :mod:`sampledrec.witness.protocol` are the formats, byte
  for byte (signed notes, key IDs, the cosigned message, the request and answer bodies).
"""

from .client import WitnessEndpoint, Witnessing, WitnessSettings, read_cosigned
from .note import Cosigner, NoteCheckpoint, VerifierKey, parse_note
from .protocol import AddCheckpoint, Answer
from .state import WitnessState
from .witness import Witness

__all__ = [
    "AddCheckpoint",
    "Answer",
    "Cosigner",
    "NoteCheckpoint",
    "VerifierKey",
    "Witness",
    "WitnessEndpoint",
    "WitnessSettings",
    "WitnessState",
    "Witnessing",
    "parse_note",
    "read_cosigned",
]
