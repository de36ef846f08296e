"""In-memory fakes for tests and examples: a keyring that never touches the disk, and a
clock that stays where it is put. Not for production use: the keys die with the process."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import NoReturn

from .clock import FixedClock
from .errors import KeyringError
from .keyring import EpochKey, _check_epoch_id

__all__ = ["FixedClock", "MemoryKeyring"]


class MemoryKeyring:
    """A :class:`~sampledrec.keyring.Keyring` held in memory.

    ``seed`` makes the keys deterministic (tests only): key = SHA-256(seed || 0x00 || epoch_id).
    """

    def __init__(self, *, seed: bytes | None = None) -> None:
        self._seed = seed
        self._keys: dict[str, EpochKey] = {}
        self._pseudonym = secrets.token_bytes(32) if seed is None else _derive(seed, "pseudonym")
        self._signing = secrets.token_bytes(32) if seed is None else _derive(seed, "signing")
        self._sealing: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"MemoryKeyring({len(self._keys)} epochs)"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a keyring cannot be pickled")

    def ensure_epochs(self, epoch_ids: Iterable[str]) -> list[EpochKey]:
        created = []
        for epoch_id in epoch_ids:
            _check_epoch_id(epoch_id)
            if epoch_id not in self._keys:
                secret = (
                    secrets.token_bytes(32) if self._seed is None else _derive(self._seed, epoch_id)
                )
                self._keys[epoch_id] = EpochKey(epoch_id, secret)
                created.append(self._keys[epoch_id])
        return created

    def epoch_key(self, epoch_id: str) -> EpochKey:
        try:
            return self._keys[epoch_id]
        except KeyError:
            raise KeyringError(f"no key for epoch {epoch_id} in this MemoryKeyring") from None

    def epoch_ids(self) -> list[str]:
        return sorted(self._keys)

    def pseudonym_key(self) -> bytes:
        return self._pseudonym

    def signing_seed(self) -> bytes:
        return self._signing

    def sealing_key(self, kid: str, *, create: bool = False) -> bytes | None:
        if kid not in self._sealing and create:
            self._sealing[kid] = (
                secrets.token_bytes(32) if self._seed is None else _derive(self._seed, kid)
            )
        return self._sealing.get(kid)

    def destroy_sealing_key(self, kid: str) -> bool:
        return self._sealing.pop(kid, None) is not None


def _derive(seed: bytes, label: str) -> bytes:
    import hashlib

    return hashlib.sha256(seed + b"\x00" + label.encode()).digest()
