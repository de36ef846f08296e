"""In-memory fakes for tests and examples: a keyring and a keystore that never touch the
disk, a caps ledger in memory, and a clock that stays where it is put. Not for production use:
the keys (and counts) die with the process."""

from __future__ import annotations

from .clock import FixedClock
from .keys.memory import MemoryKeyring, MemoryKeyStore
from .sampling.caps import MemoryCapLedger

__all__ = ["FixedClock", "MemoryCapLedger", "MemoryKeyStore", "MemoryKeyring"]
