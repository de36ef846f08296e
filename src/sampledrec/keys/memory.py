"""Key backends held in memory: a keyring and a key store that never touch the disk.

For tests, examples and simulations (``sampledrec policy simulate`` draws with throw-away keys);
never for a store: the keys die with the process. :mod:`sampledrec.testing` re-exports both.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterable
from typing import NoReturn

from ..errors import KeyringError
from .keyring import EpochKey, check_epoch_id, check_sealing_kid
from .keystore import (
    BUCKET_KEY_BYTES,
    check_aad,
    check_bucket_id,
    check_data_key,
    check_wrapped,
    missing_bucket,
    software_unwrap,
    software_wrap,
)

__all__ = ["MemoryKeyStore", "MemoryKeyring"]


class MemoryKeyring:
    """A :class:`~sampledrec.keys.Keyring` held in memory.

    ``seed`` makes the keys deterministic (tests only): key = SHA-256(seed || 0x00 || epoch_id).
    """

    def __init__(self, *, seed: bytes | None = None) -> None:
        self._seed = seed
        self._keys: dict[str, EpochKey] = {}
        self._pseudonym = secrets.token_bytes(32) if seed is None else _derive(seed, "pseudonym")
        self._signing = secrets.token_bytes(32) if seed is None else _derive(seed, "signing")
        self._sealing: dict[str, bytes] = {}
        self._committed: set[str] = set()
        self._lock = threading.Lock()  # two threads racing for one epoch end with one key

    def __repr__(self) -> str:
        return f"MemoryKeyring({len(self._keys)} epochs)"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a keyring cannot be pickled")

    def ensure_epochs(self, epoch_ids: Iterable[str]) -> list[EpochKey]:
        with self._lock:
            return self._ensure_epochs(epoch_ids)

    def _ensure_epochs(self, epoch_ids: Iterable[str]) -> list[EpochKey]:
        created = []
        for epoch_id in epoch_ids:
            check_epoch_id(epoch_id)
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
        check_sealing_kid(kid)
        if kid not in self._sealing and create:
            self._sealing[kid] = (
                secrets.token_bytes(32) if self._seed is None else _derive(self._seed, kid)
            )
        return self._sealing.get(kid)

    def sealing_key_ids(self) -> list[str]:
        return sorted(self._sealing)

    def destroy_sealing_key(self, kid: str) -> bool:
        check_sealing_kid(kid)
        return self._sealing.pop(kid, None) is not None

    def mark_committed(self, epoch_id: str) -> None:
        self.epoch_key(epoch_id)  # a key that exists
        self._committed.add(epoch_id)

    def uncommitted_epochs(self) -> list[str]:
        return [e for e in sorted(self._keys) if e not in self._committed]


class MemoryKeyStore:
    """A :class:`~sampledrec.keys.KeyStore` held in memory, thread-safe.

    Wraps exactly like :class:`~sampledrec.keys.LocalKeyStore` (same format, same errors).

    >>> ks = MemoryKeyStore()
    >>> ks.ensure_bucket("bucket-2027-05-22")
    >>> wrapped = ks.wrap("bucket-2027-05-22", bytes(32), aad=b"recording-1")
    >>> ks.unwrap("bucket-2027-05-22", wrapped, aad=b"recording-1") == bytes(32)
    True
    """

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryKeyStore({len(self._keys)} buckets)"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a keystore cannot be pickled or copied")

    def ensure_bucket(self, bucket: str) -> None:
        check_bucket_id(bucket)
        with self._lock:
            if bucket not in self._keys:
                self._keys[bucket] = secrets.token_bytes(BUCKET_KEY_BYTES)

    def wrap(self, bucket: str, data_key: bytes, *, aad: bytes) -> bytes:
        check_bucket_id(bucket)
        check_data_key(data_key)
        check_aad(aad)
        return software_wrap(self._key(bucket, wrapping=True), bucket, data_key, aad)

    def unwrap(self, bucket: str, wrapped: bytes, *, aad: bytes) -> bytes:
        check_bucket_id(bucket)
        check_wrapped(wrapped)
        check_aad(aad)
        return software_unwrap(self._key(bucket), bucket, wrapped, aad)

    def destroy_bucket(self, bucket: str) -> bool:
        check_bucket_id(bucket)
        with self._lock:
            return self._keys.pop(bucket, None) is not None

    def buckets(self) -> list[str]:
        with self._lock:
            return sorted(self._keys)

    def has_bucket(self, bucket: str) -> bool:
        check_bucket_id(bucket)
        with self._lock:
            return bucket in self._keys

    def _key(self, bucket: str, *, wrapping: bool = False) -> bytes:
        with self._lock:
            key = self._keys.get(bucket)
        if key is None:
            raise missing_bucket(bucket, "this MemoryKeyStore", wrapping=wrapping)
        return key


def _derive(seed: bytes, label: str) -> bytes:
    return hashlib.sha256(seed + b"\x00" + label.encode()).digest()
