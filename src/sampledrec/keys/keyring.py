"""Epoch sampling keys: creation ahead of use, commitments, and reveal to an auditor.

Each epoch (by default a UTC day named ``YYYY-MM-DD``) has a secret 32-byte key ``K`` and a
public commitment ``SHA-256(b"sampledrec/v1/epoch-commit" || epoch_id || b"\\x00" || K)``
(DESIGN.md §4). Keys are created a few epochs ahead of use, under the store's lock, so that every
process of a store uses the same key; once an epoch has ended its key can be revealed.

:class:`EpochKey` is a handle that refuses to be printed or pickled. :class:`Keyring` is the
backend protocol; :class:`LocalKeyring` keeps keys in a folder (0700, files 0600) apart from
recordings and catalog. An in-memory keyring for tests lives in :mod:`sampledrec.testing`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final, NoReturn, Protocol, runtime_checkable

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

from .._hazmat.files import create_exclusive, fsync_dir
from ..errors import (
    InvalidArgument,
    InvalidKey,
    KeyNotRevealable,
    KeyringError,
    StorePermissionError,
)

__all__ = [
    "EPOCH_COMMIT_DOMAIN",
    "EpochKey",
    "Keyring",
    "LocalKeyring",
    "RevealedKey",
    "check_epoch_id",
    "check_sealing_kid",
    "epoch_commitment",
    "epoch_end",
    "epoch_id_at",
    "epoch_start",
    "epochs_ahead",
    "reveal",
]

EPOCH_COMMIT_DOMAIN: Final = b"sampledrec/v1/epoch-commit"
KEY_BYTES: Final = 32
DEFAULT_AHEAD: Final = 7
_EPOCH_ID = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def epoch_commitment(epoch_id: str, key: bytes) -> bytes:
    """``SHA-256(b"sampledrec/v1/epoch-commit" || epoch_id_utf8 || b"\\x00" || K)``."""
    return hashlib.sha256(EPOCH_COMMIT_DOMAIN + epoch_id.encode("utf-8") + b"\x00" + key).digest()


def check_epoch_id(epoch_id: str) -> date:
    if not isinstance(epoch_id, str) or not _EPOCH_ID.fullmatch(epoch_id):
        raise InvalidArgument(
            f"epoch_id={epoch_id!r} is not a daily epoch id; epochs are UTC days named "
            "YYYY-MM-DD, such as '2026-11-22'"
        )
    try:
        return date.fromisoformat(epoch_id)
    except ValueError:
        raise InvalidArgument(f"epoch_id={epoch_id!r} is not a real calendar day") from None


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise InvalidArgument(
            f"time {moment.isoformat()} has no time zone; pass an aware datetime "
            "(for example datetime.now(UTC))"
        )
    return moment.astimezone(UTC)


def epoch_id_at(moment: datetime) -> str:
    """The id of the epoch containing ``moment``: its UTC day, ``YYYY-MM-DD``."""
    return _utc(moment).date().isoformat()


def epoch_start(epoch_id: str) -> datetime:
    """When an epoch begins (UTC midnight of its day)."""
    day = check_epoch_id(epoch_id)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def epoch_end(epoch_id: str) -> datetime:
    """When an epoch ends (exclusive): the next UTC midnight."""
    return epoch_start(epoch_id) + timedelta(days=1)


def epochs_ahead(moment: datetime, count: int = DEFAULT_AHEAD) -> list[str]:
    """The epoch containing ``moment`` and the ``count - 1`` epochs after it."""
    first = _utc(moment).date()
    return [(first + timedelta(days=i)).isoformat() for i in range(count)]


class EpochKey:
    """The secret key of one epoch. It cannot be printed, logged or pickled.

    >>> key = EpochKey("2026-11-22", bytes(32))
    >>> key
    EpochKey(epoch_id='2026-11-22', commitment='...')
    """

    __slots__ = ("_cmac", "_commitment", "_epoch_id", "_secret")

    def __init__(self, epoch_id: str, secret: bytes) -> None:
        check_epoch_id(epoch_id)
        if not isinstance(secret, bytes) or len(secret) != KEY_BYTES:
            raise InvalidKey(
                f"an epoch key must be {KEY_BYTES} bytes; create keys with the keyring, not by hand"
            )
        self._epoch_id = epoch_id
        self._secret = secret
        self._commitment = epoch_commitment(epoch_id, secret)
        self._cmac: cmac.CMAC | None = None

    @property
    def epoch_id(self) -> str:
        return self._epoch_id

    @property
    def commitment(self) -> bytes:
        """The public commitment to this key, recorded in the log before the key is used."""
        return self._commitment

    def secret_bytes(self) -> bytes:
        """The raw key. Only for the draw and for revealing an ended epoch to an auditor."""
        return self._secret

    def new_cmac(self) -> cmac.CMAC:
        """A CMAC context keyed with this epoch's key, for the draw (the key never leaves it)."""
        # A keyed CMAC copied per call skips the AES key schedule (4x faster than a fresh one).
        if self._cmac is None:
            self._cmac = cmac.CMAC(algorithms.AES(self._secret))
        return self._cmac.copy()

    def __repr__(self) -> str:
        # Deliberately no secret material: the commitment is public.
        return (
            f"EpochKey(epoch_id={self._epoch_id!r}, commitment='{self._commitment.hex()[:16]}...')"
        )

    __str__ = __repr__

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(
            "EpochKey objects cannot be pickled or copied, so that keys never leave the keyring "
            "by accident; reveal an ended epoch with sampledrec.keyring.reveal() or "
            "'sampledrec keys reveal' instead"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EpochKey):
            return NotImplemented
        return self._epoch_id == other._epoch_id and hmac.compare_digest(
            self._secret, other._secret
        )

    def __hash__(self) -> int:
        return hash((self._epoch_id, self._commitment))


@dataclass(frozen=True, slots=True)
class RevealedKey:
    """An ended epoch's key as given to an auditor, with its commitment."""

    epoch_id: str
    key: bytes
    commitment: bytes

    def __repr__(self) -> str:
        return f"RevealedKey(epoch_id={self.epoch_id!r}, commitment={self.commitment.hex()!r})"

    def matches_commitment(self) -> bool:
        return hmac.compare_digest(epoch_commitment(self.epoch_id, self.key), self.commitment)


@runtime_checkable
class Keyring(Protocol):
    """Where a store's epoch keys live. Implementations: :class:`LocalKeyring`,
    :class:`sampledrec.testing.MemoryKeyring`."""

    def ensure_epochs(self, epoch_ids: Iterable[str]) -> list[EpochKey]:
        """Create the keys of these epochs that do not exist yet; return only the new ones.

        Creation must be atomic: two processes racing for one epoch end with one key.
        """
        ...

    def epoch_key(self, epoch_id: str) -> EpochKey:
        """The key of an existing epoch; :class:`KeyringError` if it was never created."""
        ...

    def epoch_ids(self) -> list[str]:
        """Every epoch that has a key, sorted."""
        ...

    def pseudonym_key(self) -> bytes:
        """The store's secret key for keyed pseudonyms of phone numbers (HMAC-SHA-256)."""
        ...

    def sealing_key(self, kid: str, *, create: bool = False) -> bytes | None:
        """The key that seals the log's personal fields of one retention class and period
        (``kid`` like ``calls/2026-11``); ``None`` if it does not exist (or was destroyed)."""
        ...

    def signing_seed(self) -> bytes:
        """The store's Ed25519 private key seed, for signing log checkpoints."""
        ...

    def sealing_key_ids(self) -> list[str]:
        """Every sealing key that exists (``calls/2026-11``, ``access/2026-11``), sorted."""
        ...

    def destroy_sealing_key(self, kid: str) -> bool:
        """Destroy a period's sealing key (crypto-shredding its personal fields in the log);
        False if it did not exist."""
        ...

    def mark_committed(self, epoch_id: str) -> None:
        """Remember that an epoch's commitment is durable in the log."""
        ...

    def uncommitted_epochs(self) -> list[str]:
        """Epochs whose key exists but whose commitment was never confirmed in the log."""
        ...


def reveal(keyring: Keyring, epoch_ids: Iterable[str], *, now: datetime) -> list[RevealedKey]:
    """Reveal ended epochs' keys. Refuses any epoch that has not ended at ``now``."""
    revealed = []
    for epoch_id in epoch_ids:
        if epoch_end(epoch_id) > _utc(now):
            raise KeyNotRevealable(
                f"epoch {epoch_id} ends at {epoch_end(epoch_id).isoformat()}, after "
                f"{_utc(now).isoformat()}; a key can be revealed only once its epoch has ended"
            )
        key = keyring.epoch_key(epoch_id)
        revealed.append(RevealedKey(epoch_id, key.secret_bytes(), key.commitment))
    return revealed


class LocalKeyring:
    """Keys in a local folder: ``epochs/<epoch_id>.key`` (32 raw bytes each) and
    ``pseudonym.key``. The folder is 0700 and every file 0600; a keyring readable by other
    users is refused.

    Keep this folder apart from recordings and their backups (see docs/operations.md):
    crypto-shredding only works against copies that lack the keys.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        if create:
            if not self.path.exists():
                self.path.mkdir(mode=0o700, parents=True)
                os.chmod(self.path, 0o700)  # mkdir's mode is filtered by the umask
            (self.path / "epochs").mkdir(mode=0o700, exist_ok=True)
            (self.path / "periods").mkdir(mode=0o700, exist_ok=True)
            for name in ("pseudonym.key", "log-signing.key"):
                if not (self.path / name).exists():
                    create_exclusive(self.path / name, secrets.token_bytes(KEY_BYTES))
        if not self.path.is_dir():
            raise KeyringError(
                f"keyring folder {self.path} does not exist; create the store with "
                "'sampledrec init' or pass the folder the keys were created in"
            )
        self._check_permissions()
        self._cache: dict[str, EpochKey] = {}
        self._sealing: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"LocalKeyring({str(self.path)!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a keyring cannot be pickled; open it again in the other process")

    def _check_permissions(self) -> None:
        for item in [self.path, *self._files()]:
            if item.name.startswith(".tmp-"):
                continue  # another process is creating a key right now
            try:
                mode = item.lstat().st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                raise StorePermissionError(
                    f"{item} is a symbolic link; the keyring must hold real files only"
                )
            if mode & 0o077:
                wanted = "700" if stat.S_ISDIR(mode) else "600"
                raise StorePermissionError(
                    f"{item} is readable or writable by other users (mode "
                    f"{stat.S_IMODE(mode):o}); fix it with: chmod {wanted} '{item}' "
                    f"(or chmod -R go-rwx '{self.path}')"
                )

    def _files(self) -> Iterator[Path]:
        yield from self.path.iterdir()
        for sub in ("epochs", "periods"):
            folder = self.path / sub
            if folder.is_dir():
                yield from folder.iterdir()

    def _epoch_path(self, epoch_id: str) -> Path:
        check_epoch_id(epoch_id)
        return self.path / "epochs" / f"{epoch_id}.key"

    def ensure_epochs(self, epoch_ids: Iterable[str]) -> list[EpochKey]:
        created = []
        for epoch_id in epoch_ids:
            path = self._epoch_path(epoch_id)
            if path.exists():
                continue
            if create_exclusive(path, secrets.token_bytes(KEY_BYTES)):
                created.append(self.epoch_key(epoch_id))
        return created

    def epoch_key(self, epoch_id: str) -> EpochKey:
        cached = self._cache.get(epoch_id)
        if cached is not None:
            return cached
        path = self._epoch_path(epoch_id)
        try:
            secret = path.read_bytes()
        except FileNotFoundError:
            raise KeyringError(
                f"no key for epoch {epoch_id} in {self.path}; keys are created ahead of use "
                "by the sampler, and a key that was destroyed cannot come back"
            ) from None
        except OSError as exc:
            raise KeyringError(f"cannot read the key of epoch {epoch_id}: {exc.strerror}") from exc
        if len(secret) != KEY_BYTES:
            raise KeyringError(
                f"the key file of epoch {epoch_id} is {len(secret)} bytes, not {KEY_BYTES}: "
                "the keyring is damaged; restore it from the HSM or keyring backup"
            )
        key = EpochKey(epoch_id, secret)
        self._cache[epoch_id] = key
        return key

    def epoch_ids(self) -> list[str]:
        return sorted(
            p.name[: -len(".key")]
            for p in (self.path / "epochs").iterdir()
            if p.name.endswith(".key") and not p.name.startswith(".")
        )

    def pseudonym_key(self) -> bytes:
        return self._read_fixed("pseudonym.key")

    def signing_seed(self) -> bytes:
        return self._read_fixed("log-signing.key")

    def _read_fixed(self, name: str) -> bytes:
        try:
            data = (self.path / name).read_bytes()
        except FileNotFoundError:
            raise KeyringError(
                f"{self.path} has no {name}; was the keyring created by 'sampledrec init'?"
            ) from None
        if len(data) != KEY_BYTES:
            raise KeyringError(f"{self.path / name} is damaged (not {KEY_BYTES} bytes)")
        return data

    def sealing_key(self, kid: str, *, create: bool = False) -> bytes | None:
        path = self.path / "periods" / f"{_kid_file(kid)}.key"
        cached = self._sealing.get(kid)
        if cached is not None:
            if path.exists():  # another handle or process may have destroyed it
                return cached
            del self._sealing[kid]
        if create and not path.exists():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            create_exclusive(path, secrets.token_bytes(KEY_BYTES))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) != KEY_BYTES:
            raise KeyringError(f"{path} is damaged (not {KEY_BYTES} bytes)")
        self._sealing[kid] = data
        return data

    def owner(self) -> str | None:
        """The id (hex) of the store this keyring serves, or None for a keyring of no store
        yet: a keyring serves one store (its markers, signing and sealing keys are its own)."""
        return self.owner_of(self.path)

    @staticmethod
    def owner_of(path: str | os.PathLike[str]) -> str | None:
        """:meth:`owner` of the keyring folder ``path``, without opening it (None if absent)."""
        try:
            return (Path(path) / "store-id").read_text(encoding="ascii").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def claim(self, store_id: str) -> None:
        """Mark this keyring as the keys of store ``store_id`` (hex); refuses a keyring that
        already serves a store."""
        if not create_exclusive(self.path / "store-id", store_id.encode("ascii") + b"\n"):
            raise KeyringError(
                f"the keyring {self.path} already belongs to a store ({self.owner()}); a "
                "keyring serves one store: name a new folder"
            )

    def sealing_key_ids(self) -> list[str]:
        folder = self.path / "periods"
        if not folder.is_dir():
            return []
        kids = (p.stem.replace("-", "/", 1) for p in folder.glob("*.key"))
        return sorted(k for k in kids if _KID.match(k))

    def destroy_sealing_key(self, kid: str) -> bool:
        """Destroy a period's sealing key (crypto-shredding its personal fields)."""
        self._sealing.pop(kid, None)
        path = self.path / "periods" / f"{_kid_file(kid)}.key"
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def mark_committed(self, epoch_id: str) -> None:
        """Remember that an epoch's commitment is durable in the log."""
        self.epoch_key(epoch_id)  # only an epoch that has a key can be committed
        marker = self._epoch_path(epoch_id).with_suffix(".committed")
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    def uncommitted_epochs(self) -> list[str]:
        """Epochs whose key exists but whose commitment was never confirmed in the log."""
        return [
            e
            for e in self.epoch_ids()
            if not self._epoch_path(e).with_suffix(".committed").exists()
        ]


_KID = re.compile(r"^(calls|access)/\d{4}-\d{2}$")


def check_sealing_kid(kid: str) -> str:
    """Return ``kid`` if it names a sealing key (``calls/2026-11``, ``access/2026-11``), else
    raise :class:`~sampledrec.errors.InvalidArgument`."""
    if not isinstance(kid, str) or not _KID.match(kid):
        raise InvalidArgument(
            f"sealing key id {kid!r} is not of the form calls/YYYY-MM or access/YYYY-MM"
        )
    return kid


def _kid_file(kid: str) -> str:
    return check_sealing_kid(kid).replace("/", "-")
