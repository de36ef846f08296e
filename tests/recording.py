"""What many tests do to get recordings: a store with a given policy, and a call's audio written
through a recorder frame by frame (20 ms frames, as a switch sends them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sampledrec import Store
from sampledrec.sampling.sampler import Decision
from sampledrec.vault.audio import AudioFormat, frames
from sampledrec.vault.recorder import Vault

PCM = AudioFormat("pcm16", 8000, 1)

#: Every call of the "regulated" queue recorded (a legal obligation), nothing else.
RECORD_REGULATED = """
[[rules]]
name = "all"
match = { queue = "regulated" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call of this queue must be recorded"
retention = "3 months"

[default]
rate = "0"
purpose = "quality"
retention = "6 months"
"""


#: Every call of the "rec" queue recorded under the rule "recorded" (the servers' tests: the
#: dialplan decides with {"queue": "rec"}), nothing else.
RECORD_REC = """
[[rules]]
name = "recorded"
match = { queue = "rec" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call of this queue must be recorded"
retention = "3 months"

[default]
rate = "0"
purpose = "quality"
retention = "6 months"
"""


def new_store(folder: Path, policy: str, **init: Any) -> Store:
    """A store at ``folder/s`` with ``policy`` (TOML text) in force."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.toml").write_text(policy)
    return Store.init(folder / "s", policy=folder / "p.toml", **init)


def write_call(
    vault: Vault,
    decision: Decision,
    audio: bytes,
    fmt: AudioFormat = PCM,
    *,
    chunk_size: int = 4096,
    **record: Any,
) -> str:
    """Record ``audio`` for a selected call; returns the recording id."""
    with vault.record(decision, audio_format=fmt, chunk_size=chunk_size, **record) as rec:
        for frame in frames(audio, fmt, 20):
            rec.write(frame)
    return rec.recording_id
