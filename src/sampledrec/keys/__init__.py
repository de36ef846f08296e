"""Keys: the epoch keys that drive the draw, the sealing and pseudonym keys, and the bucket keys
that wrap every recording's data key (DESIGN.md §6).

Backends are protocols: :class:`Keyring` (epoch, signing, pseudonym and sealing keys;
:class:`LocalKeyring` keeps them in a 0700 folder) and :class:`KeyStore` (bucket keys;
:class:`LocalKeyStore` in the keyring folder, :class:`Pkcs11KeyStore` on an HSM). In-memory
fakes are in :mod:`sampledrec.testing`.
"""

from .keyring import (
    EpochKey,
    Keyring,
    LocalKeyring,
    RevealedKey,
    epoch_commitment,
    epoch_end,
    epoch_id_at,
    reveal,
)
from .keystore import KeyStore, LocalKeyStore, Pkcs11KeyStore, check_bucket_id

__all__ = [
    "EpochKey",
    "KeyStore",
    "Keyring",
    "LocalKeyStore",
    "LocalKeyring",
    "Pkcs11KeyStore",
    "RevealedKey",
    "check_bucket_id",
    "epoch_commitment",
    "epoch_end",
    "epoch_id_at",
    "reveal",
]
