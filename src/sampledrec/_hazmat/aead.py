"""Software key wrapping: AES-256-GCM over a data key, bound to its bucket and to what it
protects. Raw key bytes in, no validation, no error types: callers (the key stores) check their
arguments first and turn a ``None`` from :func:`unwrap_key` into their one opaque error.

A wrapped key is ``0x01 | nonce (12) | AES-256-GCM(bucket_key, nonce, data_key, ad) (32 + 16)``
with ``ad = b"sampledrec/v1/bucket-wrap" | 0x00 | bucket | 0x00 | aad``; the PKCS#11 key store
builds the same bytes on the token.
"""

from __future__ import annotations

import secrets
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DATA_KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "WRAPPED_KEY_BYTES",
    "WRAPPED_KEY_VERSION",
    "WRAP_AD_DOMAIN",
    "split_wrapped",
    "unwrap_key",
    "wrap_ad",
    "wrap_key",
]

DATA_KEY_BYTES: Final = 32
WRAPPED_KEY_VERSION: Final = 0x01
WRAP_AD_DOMAIN: Final = b"sampledrec/v1/bucket-wrap"
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
WRAPPED_KEY_BYTES: Final = 1 + NONCE_BYTES + DATA_KEY_BYTES + TAG_BYTES


def wrap_ad(bucket: str, aad: bytes) -> bytes:
    """The associated data of a wrapped key: its bucket and what it protects."""
    return WRAP_AD_DOMAIN + b"\x00" + bucket.encode("ascii") + b"\x00" + aad


def split_wrapped(wrapped: bytes) -> tuple[bytes, bytes] | None:
    """(nonce, ciphertext and tag) of a version-1 wrapped key, or None if it is not one."""
    if len(wrapped) != WRAPPED_KEY_BYTES or wrapped[0] != WRAPPED_KEY_VERSION:
        return None
    return wrapped[1 : 1 + NONCE_BYTES], wrapped[1 + NONCE_BYTES :]


def wrap_key(bucket_key: bytes, bucket: str, data_key: bytes, aad: bytes) -> bytes:
    """Wrap ``data_key`` under ``bucket_key`` (a fresh random nonce each time)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(bucket_key).encrypt(nonce, data_key, wrap_ad(bucket, aad))
    return bytes([WRAPPED_KEY_VERSION]) + nonce + sealed


def unwrap_key(bucket_key: bytes, bucket: str, wrapped: bytes, aad: bytes) -> bytes | None:
    """The data key, or None when ``wrapped`` is damaged, of another format, or bound to
    another bucket or ``aad`` (the caller raises its one opaque error)."""
    parts = split_wrapped(wrapped)
    if parts is None:
        return None
    try:
        data_key = AESGCM(bucket_key).decrypt(parts[0], parts[1], wrap_ad(bucket, aad))
    except InvalidTag:
        return None
    return data_key if len(data_key) == DATA_KEY_BYTES else None
