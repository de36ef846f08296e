"""The keys of expiry buckets, which wrap every recording's data key (DESIGN.md §6).

Each recording has its own random 32-byte data key. That key is never stored in clear: it is
*wrapped* by the key of the recording's **bucket** and the wrapped form goes into the catalog.
A bucket is named by an opaque ASCII id, ``bucket-<UTC day of expiry>`` such as
``bucket-2027-05-22``, or ``hold-<id>`` for a legal hold (ids match
``(bucket|hold)-[A-Za-z0-9._-]{1,64}``). Destroying a bucket's key (:meth:`KeyStore.destroy_bucket`)
is *crypto-shredding*: every data key wrapped under it, and so every recording of that day,
becomes unreadable at once, including any copy of the ciphertext or of the catalog in a backup.

:class:`KeyStore` is the backend protocol. Implementations:

- :class:`LocalKeyStore`: one file per bucket, ``<keyring>/buckets/<bucket>.key`` (32 raw bytes),
  next to the epoch keys of :class:`~sampledrec.keyring.LocalKeyring` and with its conventions:
  folders 0700, files 0600, a file readable or writable by other users (or a symbolic link) is
  refused, a key is created with ``link()`` so that racing processes end with one key.
- :class:`Pkcs11KeyStore`: AES-256 keys generated *on* an HSM (or any PKCS#11 token: tested with
  SoftHSM2), persistent, sensitive and non-extractable; wrapping and unwrapping run on the token.
- :class:`sampledrec.testing.MemoryKeyStore`: in memory, for tests.

Wrapped key format (version 1, 61 bytes)::

    0x01 || nonce (12 random bytes) || AES-256-GCM(bucket key, nonce, data key, ad) (32 + 16 tag)

    ad = b"sampledrec/v1/bucket-wrap" || 0x00 || bucket id (ASCII) || 0x00 || caller's aad

The caller's ``aad`` binds the wrapped key to what it protects: the vault passes the recording
id and its expiry, so a wrapped key moved to another catalog row does not unwrap. The bucket id
is bound too, so a wrapped key cannot be replayed under another bucket's key. Nonces are random:
a bucket key may wrap up to 2**32 data keys, far more than a day of recordings.

Failures are distinct where the caller must act differently and opaque where an attacker must
learn nothing:

- a bucket whose key does not exist (destroyed when it expired, or never created) raises
  :class:`~sampledrec.errors.KeyDestroyed`;
- a wrapped key that is damaged, truncated, of another version, or presented with another
  ``aad`` or bucket raises one :class:`~sampledrec.errors.InvalidRecording` with one fixed
  message, whichever check failed;
- a malformed argument (bucket id, data key length, empty ``aad``) raises
  :class:`~sampledrec.errors.InvalidArgument` (a :class:`ValueError`).

What crypto-shredding guarantees, and what not: :class:`LocalKeyStore` renames the key file
away, overwrites it in place, fsyncs, unlinks it and fsyncs its folder. That is best effort
only: SSDs remap blocks, and journaling or copy-on-write filesystems and snapshots may keep old
copies. The real guarantee is that the keyring is **not in the backups** of the recordings and
the catalog (see docs/operations.md), or that the keys live in an HSM, where destroying an object
is final. Handles refuse to be pickled and their ``repr`` holds no secret (no key, no PIN).

All three backends are safe to share between threads.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NoReturn, Protocol, TypeVar, runtime_checkable

from .._hazmat.aead import (
    DATA_KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    WRAP_AD_DOMAIN,
    WRAPPED_KEY_BYTES,
    WRAPPED_KEY_VERSION,
    split_wrapped,
    unwrap_key,
    wrap_ad,
    wrap_key,
)
from .._hazmat.files import create_exclusive, fsync_dir
from ..errors import (
    InvalidArgument,
    InvalidKey,
    InvalidRecording,
    KeyDestroyed,
    KeyringError,
    KeyTypeError,
    StorePermissionError,
)

__all__ = [
    "BUCKET_KEY_BYTES",
    "DATA_KEY_BYTES",
    "WRAPPED_KEY_BYTES",
    "WRAPPED_KEY_VERSION",
    "WRAP_AD_DOMAIN",
    "KeyStore",
    "LocalKeyStore",
    "Pkcs11KeyStore",
    "Pkcs11WrappingKey",
    "check_bucket_id",
]

BUCKET_KEY_BYTES: Final = 32

_BUCKET_ID = re.compile(r"(?:bucket|hold)-[A-Za-z0-9._-]{1,64}", re.ASCII)
_LABEL_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,32}", re.ASCII)
_UNWRAP_FAILED: Final = (
    "the wrapped data key cannot be unwrapped: it is damaged, or bound to another recording, "
    "expiry or bucket"
)
_T = TypeVar("_T")


@runtime_checkable
class KeyStore(Protocol):
    """Where the keys of expiry buckets live. Implementations: :class:`LocalKeyStore`,
    :class:`Pkcs11KeyStore`, :class:`sampledrec.testing.MemoryKeyStore`."""

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket's 256-bit AES key if it does not exist yet.

        Idempotent, and atomic under concurrency: threads (and, for the local keyring, processes)
        racing for one bucket end with one key.
        """
        ...

    def wrap(self, bucket: str, data_key: bytes, *, aad: bytes) -> bytes:
        """Wrap a 32-byte data key under the bucket's key, bound to ``aad`` (non-empty).

        Raises :class:`~sampledrec.errors.KeyDestroyed` if the bucket has no key: call
        :meth:`ensure_bucket` first.
        """
        ...

    def unwrap(self, bucket: str, wrapped: bytes, *, aad: bytes) -> bytes:
        """The data key that :meth:`wrap` wrapped with this bucket and ``aad``.

        Raises :class:`~sampledrec.errors.KeyDestroyed` if the bucket's key no longer exists,
        and the opaque :class:`~sampledrec.errors.InvalidRecording` for anything else.
        """
        ...

    def destroy_bucket(self, bucket: str) -> bool:
        """Destroy the bucket's key, making everything wrapped under it unrecoverable.

        Returns ``False`` if there was no such key (so calling it twice is harmless).
        """
        ...

    def buckets(self) -> list[str]:
        """Every bucket that has a key, sorted."""
        ...

    def has_bucket(self, bucket: str) -> bool:
        """Whether the bucket has a key."""
        ...


def check_bucket_id(bucket: object) -> str:
    """Return ``bucket`` if it is a valid bucket id, else raise
    :class:`~sampledrec.errors.InvalidArgument`.

    >>> check_bucket_id("bucket-2027-05-22")
    'bucket-2027-05-22'
    """
    if not isinstance(bucket, str) or not _BUCKET_ID.fullmatch(bucket):
        raise InvalidArgument(
            f"bucket={bucket!r} is not a bucket id; bucket ids are 'bucket-' or 'hold-' followed "
            "by 1 to 64 letters, digits, '.', '_' or '-', such as 'bucket-2027-05-22'"
        )
    return bucket


def check_data_key(data_key: object) -> bytes:
    if not isinstance(data_key, bytes):
        raise KeyTypeError(
            f"data_key must be bytes, not {type(data_key).__name__}; "
            f"draw one with secrets.token_bytes({DATA_KEY_BYTES})"
        )
    if len(data_key) != DATA_KEY_BYTES:
        raise InvalidKey(
            f"data_key is {len(data_key)} bytes; a data key is {DATA_KEY_BYTES} random bytes "
            f"(secrets.token_bytes({DATA_KEY_BYTES}))"
        )
    return data_key


def check_aad(aad: object) -> bytes:
    if not isinstance(aad, bytes):
        raise InvalidArgument(f"aad must be bytes, not {type(aad).__name__}")
    if not aad:
        raise InvalidArgument(
            "aad=b'' binds the wrapped key to nothing; pass what it protects, such as the "
            "recording id and its expiry (sampledrec.vault.data_key_aad)"
        )
    return aad


def check_wrapped(wrapped: object) -> bytes:
    if not isinstance(wrapped, bytes):
        raise InvalidArgument(
            f"wrapped must be bytes (as returned by wrap()), not {type(wrapped).__name__}"
        )
    return wrapped


def fail_unwrap() -> NoReturn:
    """The one opaque error of every failed unwrap. Raised outside any ``except`` block, so
    the exception carries neither cause nor context."""
    raise InvalidRecording(_UNWRAP_FAILED)


def software_wrap(bucket_key: bytes, bucket: str, data_key: bytes, aad: bytes) -> bytes:
    """Wrap in software (the local and in-memory key stores)."""
    return wrap_key(bucket_key, bucket, data_key, aad)


def software_unwrap(bucket_key: bytes, bucket: str, wrapped: bytes, aad: bytes) -> bytes:
    """Unwrap in software; the opaque :class:`InvalidRecording` on any failure."""
    data_key = unwrap_key(bucket_key, bucket, wrapped, aad)
    if data_key is None:
        fail_unwrap()
    return data_key


def missing_bucket(bucket: str, where: str, *, wrapping: bool = False) -> KeyDestroyed:
    if wrapping:
        return KeyDestroyed(
            f"bucket {bucket!r} has no key in {where}; create it with "
            f"ensure_bucket({bucket!r}) before wrapping (a bucket whose key was destroyed has "
            "expired: never wrap new keys into it)"
        )
    return KeyDestroyed(
        f"the key of bucket {bucket!r} was destroyed (the recordings in it have expired or "
        f"were erased), or never existed in {where}; what it wrapped cannot be recovered"
    )


def _no_pickle(kind: str) -> NoReturn:
    raise TypeError(
        f"a {kind} cannot be pickled or copied, so that keys never leave it by accident; "
        "open it again in the other process"
    )


# --------------------------------------------------------------------------------------------
# Local keyring folder


class LocalKeyStore:
    """Bucket keys in the local keyring folder: ``<path>/buckets/<bucket>.key``, 32 raw bytes.

    ``path`` is the keyring folder (``STORE/keys`` by default). Folders are 0700 and files
    0600; a key file that other users can read or write, or a symbolic link, is refused with
    the ``chmod`` that fixes it. Keys are read from disk at every use, never cached, so a
    bucket destroyed by another process is destroyed for this one too.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     keys = LocalKeyStore(tmp + "/keys", create=True)
    ...     keys.ensure_bucket("bucket-2027-05-22")
    ...     wrapped = keys.wrap("bucket-2027-05-22", bytes(32), aad=b"recording-1")
    ...     keys.buckets(), len(wrapped)
    (['bucket-2027-05-22'], 61)
    """

    _STALE_TMP_SECONDS: Final = 3600.0

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        self._dir = self.path / "buckets"
        if create and not self.path.exists():
            self.path.mkdir(mode=0o700, parents=True)
            os.chmod(self.path, 0o700)  # mkdir's mode is filtered by the umask
        if not self.path.is_dir():
            raise KeyringError(
                f"keyring folder {self.path} does not exist; create the store with "
                "'sampledrec init' or pass the folder its keys were created in"
            )
        self._check_permissions()
        self._sweep()

    def __repr__(self) -> str:
        return f"LocalKeyStore({str(self.path)!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        _no_pickle("LocalKeyStore")

    # -- the KeyStore protocol

    def ensure_bucket(self, bucket: str) -> None:
        path = self._key_path(bucket)
        if not os.path.lexists(path):
            self._ensure_dir()
            create_exclusive(path, secrets.token_bytes(BUCKET_KEY_BYTES))
        self._read_key(bucket)  # an existing key must be sound (size, permissions)

    def wrap(self, bucket: str, data_key: bytes, *, aad: bytes) -> bytes:
        check_bucket_id(bucket)
        check_data_key(data_key)
        check_aad(aad)
        key = self._read_key(bucket, wrapping=True)
        return software_wrap(key, bucket, data_key, aad)

    def unwrap(self, bucket: str, wrapped: bytes, *, aad: bytes) -> bytes:
        check_bucket_id(bucket)
        check_wrapped(wrapped)
        check_aad(aad)
        key = self._read_key(bucket)
        return software_unwrap(key, bucket, wrapped, aad)

    def destroy_bucket(self, bucket: str) -> bool:
        path = self._key_path(bucket)
        doomed = self._dir / f".tmp-destroy-{secrets.token_hex(8)}"
        try:
            # First take the key away from its name, atomically: from here on every reader
            # gets KeyDestroyed, never a half-overwritten key.
            os.rename(path, doomed)
        except FileNotFoundError:
            return False
        fsync_dir(self._dir)
        _shred(doomed)
        fsync_dir(self._dir)
        return True

    def buckets(self) -> list[str]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        return sorted(
            name[: -len(".key")]
            for name in names
            if name.endswith(".key") and _BUCKET_ID.fullmatch(name[: -len(".key")])
        )

    def has_bucket(self, bucket: str) -> bool:
        return os.path.lexists(self._key_path(bucket))

    # -- files

    def _key_path(self, bucket: str) -> Path:
        return self._dir / f"{check_bucket_id(bucket)}.key"

    def _ensure_dir(self) -> None:
        try:
            self._dir.mkdir(mode=0o700)
        except FileExistsError:
            return
        os.chmod(self._dir, 0o700)
        fsync_dir(self.path)

    def _read_key(self, bucket: str, *, wrapping: bool = False) -> bytes:
        path = self._key_path(bucket)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise missing_bucket(bucket, str(self.path), wrapping=wrapping) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorePermissionError(
                    f"{path} is a symbolic link; the keyring must hold real files only"
                ) from None
            raise KeyringError(
                f"cannot read the key of bucket {bucket} in {self.path}: {exc.strerror}"
            ) from exc
        try:
            info = os.fstat(fd)
            _check_mode(path, info.st_mode, self.path)
            data = os.read(fd, BUCKET_KEY_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) != BUCKET_KEY_BYTES:
            raise KeyringError(
                f"the key file of bucket {bucket} ({path}) is {len(data)} bytes, not "
                f"{BUCKET_KEY_BYTES}: the keyring is damaged; the recordings of this bucket "
                "cannot be read unless a sound copy of the key exists"
            )
        return data

    def _check_permissions(self) -> None:
        items = [self.path]
        if self._dir.exists() or self._dir.is_symlink():
            items.append(self._dir)
            items.extend(p for p in self._dir.iterdir() if not p.name.startswith(".tmp-"))
        for item in items:
            try:
                mode = item.lstat().st_mode
            except FileNotFoundError:
                continue  # destroyed meanwhile
            if stat.S_ISLNK(mode) and item != self.path:
                raise StorePermissionError(
                    f"{item} is a symbolic link; the keyring must hold real files only"
                )
            _check_mode(item, mode if item != self.path else item.stat().st_mode, self.path)

    def _sweep(self) -> None:
        """Finish destroys interrupted by a crash; drop abandoned temporary key files."""
        try:
            names = os.listdir(self._dir)
        except OSError:
            return
        now = time.time()
        for name in names:
            path = self._dir / name
            with contextlib.suppress(OSError):  # best effort: another process may be on it
                if name.startswith(".tmp-destroy-"):
                    _shred(path)
                elif (
                    name.startswith(".tmp-")
                    and now - path.lstat().st_mtime > self._STALE_TMP_SECONDS
                ):
                    # Unlink only: a creation that crashed after link() left this as a second
                    # name of a live key, which an overwrite would destroy.
                    path.unlink()


def _check_mode(item: Path, mode: int, keyring: Path) -> None:
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        if mode & 0o077:
            wanted = "700" if stat.S_ISDIR(mode) else "600"
            raise StorePermissionError(
                f"{item} is readable or writable by other users (mode {stat.S_IMODE(mode):o}); "
                f"fix it with: chmod {wanted} '{item}' (or chmod -R go-rwx '{keyring}')"
            )
        return
    raise StorePermissionError(f"{item} is not a regular file; the keyring must hold keys only")


def _shred(path: Path) -> None:
    """Overwrite a file in place, fsync it, unlink it. Best effort against the medium (SSDs
    and copy-on-write filesystems may keep the old blocks); it does overwrite every hard link
    to the same file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    else:
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, secrets.token_bytes(max(size, 1)), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --------------------------------------------------------------------------------------------
# PKCS#11


def _import_pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as exc:
        raise KeyringError(
            "Pkcs11KeyStore needs the python-pkcs11 package (0.9 or newer): "
            "pip install 'sampledrec[pkcs11]'"
        ) from exc
    if not hasattr(pkcs11, "GCMParams"):
        raise KeyringError(
            "the installed python-pkcs11 is too old for AES-GCM (GCMParams appeared in 0.9): "
            "pip install --upgrade 'sampledrec[pkcs11]'"
        )
    return pkcs11


# Errors that mean the session (not the key or the data) is gone: reopen it and retry once.
_SESSION_LOST: Final = ("SessionHandleInvalid", "SessionClosed", "UserNotLoggedIn")
# Errors of the device itself: never read as "this wrapped key is invalid".
_DEVICE_FAILED: Final = (
    "DeviceError",
    "DeviceMemory",
    "DeviceRemoved",
    "HostMemory",
    "TokenNotPresent",
    "FunctionCancelled",
)
# Errors of a key handle that another process destroyed between our search and its use.
_KEY_GONE: Final = ("ObjectHandleInvalid", "KeyHandleInvalid")
_PIN_ERRORS: Final = {
    "PinIncorrect": "was refused (after too many wrong PINs the token locks itself)",
    "PinLocked": "is locked; unlock it with the token's security officer PIN",
    "PinExpired": "has expired; set a new user PIN on the token",
    "PinLenRange": "does not have a length this token accepts",
    "PinInvalid": "contains characters this token does not accept",
    "UserPinNotInitialized": "was never set; initialise the token's user PIN first",
}


def _load_module(p11: Any, module_path: str) -> Any:
    """python-pkcs11's handle on a module, loading and initialising it once per process."""
    try:
        return p11.lib(module_path)
    except p11.exceptions.PKCS11Error:
        # Other code may have loaded the same file under another name (a symbolic link): a
        # second C_Initialize fails, so reuse the handle python-pkcs11 already has.
        real = os.path.realpath(module_path)
        for name, loaded in dict(getattr(p11, "_loaded", {})).items():
            if os.path.realpath(name) == real:
                return loaded
        raise


def _errors(p11: Any, names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    return tuple(getattr(p11.exceptions, name) for name in names if hasattr(p11.exceptions, name))


class _TokenSession:
    """One logged-in read-write session per (module, token) and process, shared by every
    :class:`Pkcs11KeyStore` on that token, with a lock that serialises their calls.

    PKCS#11 keeps one login state per application: a second session's ``C_Login`` fails with
    "already logged in" and a ``C_Logout`` logs out every session. Sharing one session avoids
    both, and the lock makes the library's thread-safety (C_Initialize is called without
    locking arguments) irrelevant.
    """

    def __init__(self, p11: Any, module_path: str, token_label: str, pin: str) -> None:
        self.p11 = p11
        self.module_path = module_path
        self.token_label = token_label
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.refs = 0
        self._pin = pin.encode("utf-8")
        self._session: Any = None
        self._lost = _errors(p11, _SESSION_LOST)
        self._device = _errors(p11, _DEVICE_FAILED)
        self.key_gone = _errors(p11, _KEY_GONE)
        try:
            lib = _load_module(p11, module_path)
        except p11.exceptions.PKCS11Error as exc:
            raise KeyringError(
                f"cannot load the PKCS#11 module {module_path!r}: {exc}; give the path of the "
                "vendor's PKCS#11 library (for SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
            ) from exc
        try:
            self.token = lib.get_token(token_label=token_label)
        except p11.exceptions.NoSuchToken:
            try:
                labels = sorted(t.label for t in lib.get_tokens() if t.label)
            except p11.exceptions.PKCS11Error:
                labels = []
            raise KeyringError(
                f"no PKCS#11 token labelled {token_label!r} in {module_path}; tokens present: "
                f"{', '.join(repr(x) for x in labels) or 'none'}"
            ) from None
        except p11.exceptions.MultipleTokensReturned:
            raise KeyringError(
                f"several PKCS#11 tokens are labelled {token_label!r} in {module_path}; "
                "give each token a unique label"
            ) from None
        except p11.exceptions.PKCS11Error as exc:
            raise KeyringError(
                f"cannot list the tokens of {module_path}: {type(exc).__name__}"
            ) from exc
        try:
            mechanisms = self.token.slot.get_mechanisms()
        except p11.exceptions.PKCS11Error as exc:
            raise KeyringError(
                f"cannot list the mechanisms of token {token_label!r}: {type(exc).__name__}"
            ) from exc
        for mech in (p11.Mechanism.AES_KEY_GEN, p11.Mechanism.AES_GCM):
            if mech not in mechanisms:
                raise KeyringError(
                    f"PKCS#11 token {token_label!r} does not offer {mech.name} (CKM_{mech.name}), "
                    "which bucket keys need; use a token or HSM firmware that supports AES-GCM"
                )
        self._open()  # log in now: a wrong PIN fails when the keystore is built, not later

    def pin_matches(self, pin: str) -> bool:
        return hmac.compare_digest(self._pin, pin.encode("utf-8"))

    def _open(self) -> None:
        exc_mod = self.p11.exceptions
        try:
            try:
                self._session = self.token.open(rw=True, user_pin=self._pin.decode("utf-8"))
            except exc_mod.UserAlreadyLoggedIn:
                # Other code of this process logged in to the token: its login covers our
                # session (and closing our session will not log it out).
                self._session = self.token.open(rw=True)
        except exc_mod.PKCS11Error as exc:
            why = _PIN_ERRORS.get(type(exc).__name__)
            if why is not None:
                raise KeyringError(
                    f"the user PIN of PKCS#11 token {self.token_label!r} {why}"
                ) from None
            raise KeyringError(
                f"cannot open a session on PKCS#11 token {self.token_label!r}: {type(exc).__name__}"
            ) from exc

    def run(self, what: str, operation: Callable[[Any], _T]) -> _T:
        """Run ``operation(session)`` under the lock, mapping the vendor's errors."""
        with self.lock:
            if os.getpid() != self.pid:
                raise KeyringError(
                    "a Pkcs11KeyStore cannot be used across fork(); create it in the process "
                    "that uses it (with multiprocessing, use the 'spawn' start method)"
                )
            try:
                if self._session is None:
                    self._open()
                try:
                    return operation(self._session)
                except self._lost:
                    # The token was reset or our login dropped: log in again, retry once.
                    self._session = None
                    self._open()
                    return operation(self._session)
            except self.p11.exceptions.PKCS11Error as exc:
                raise KeyringError(
                    f"PKCS#11 token {self.token_label!r} failed to {what}: {type(exc).__name__}"
                ) from exc

    def is_device_failure(self, exc: BaseException) -> bool:
        return isinstance(exc, self._device + self._lost)

    def close(self) -> None:
        with self.lock:
            session, self._session = self._session, None
            if session is not None:
                # Logs out only if we logged in: a session opened under another part of the
                # program's login is closed without touching that login.
                with contextlib.suppress(self.p11.exceptions.PKCS11Error):
                    session.close()


_TOKENS: dict[tuple[str, str], _TokenSession] = {}
_TOKENS_LOCK = threading.Lock()


class Pkcs11KeyStore:
    """Bucket keys on an HSM or token, through PKCS#11 (python-pkcs11; tested with SoftHSM2).

    Each bucket's key is an AES-256 secret key generated on the token, labelled
    ``label_prefix + bucket``, persistent (``CKA_TOKEN``), private, sensitive, non-extractable,
    not modifiable or copyable, usable only to encrypt and decrypt. Wrapping and unwrapping are
    ``CKM_AES_GCM`` on the token with a random 12-byte nonce and the associated data described
    in the module docstring, so wrapped keys have the same format as the other backends'. A
    bucket is destroyed with ``C_DestroyObject``.

    The keystore logs in when it is built (a wrong PIN, an unknown token or a token without
    AES-GCM fail at once). Keystores of one process on one token share one session and one lock
    (PKCS#11 has one login state per process), so they are thread-safe; they cannot cross a
    ``fork()``. :meth:`close` (or ``with``) logs out once the last one is closed. If other code
    of the process logs out of the token, the keystore notices and logs in again.

    PKCS#11 cannot create an object atomically if absent, so two *processes* racing in
    :meth:`ensure_bucket` may both create a key for a bucket. That is harmless: :meth:`wrap`
    always uses the key with the smallest ``CKA_ID``, :meth:`unwrap` tries every key of the
    bucket, and :meth:`destroy_bucket` destroys them all. Threads of one process never race.
    """

    def __init__(
        self,
        module_path: str | os.PathLike[str],
        token_label: str,
        pin: str,
        *,
        label_prefix: str = "sampledrec-",
    ) -> None:
        if not isinstance(token_label, str) or not token_label:
            raise InvalidArgument(f"token_label={token_label!r} must be the token's label")
        if not isinstance(pin, str) or not pin:
            raise InvalidArgument("pin must be the token's user PIN, as a non-empty str")
        if not isinstance(label_prefix, str) or not _LABEL_PREFIX.fullmatch(label_prefix):
            raise InvalidArgument(
                f"label_prefix={label_prefix!r} must be 1 to 32 letters, digits, '.', '_' or '-'"
            )
        p11 = _import_pkcs11()
        self.module_path = os.fspath(module_path)
        self.token_label = token_label
        self.label_prefix = label_prefix
        key = (os.path.realpath(self.module_path), token_label)
        with _TOKENS_LOCK:
            shared = _TOKENS.get(key)
            if shared is not None and shared.pid != os.getpid():
                raise KeyringError(
                    "this process was forked from one that used PKCS#11 token "
                    f"{token_label!r}; PKCS#11 modules cannot be used across fork(): start "
                    "worker processes with the 'spawn' method"
                )
            if shared is None:
                shared = _TokenSession(p11, self.module_path, token_label, pin)
                _TOKENS[key] = shared
            elif not shared.pin_matches(pin):
                raise KeyringError(
                    f"this process is already logged in to PKCS#11 token {token_label!r} with "
                    "another PIN; PKCS#11 keeps one login per process, so every keystore on a "
                    "token must use the same PIN"
                )
            shared.refs += 1
        self._key = key
        self._shared: _TokenSession | None = shared
        self._p11 = p11

    def __repr__(self) -> str:
        state = ", closed" if self._shared is None else ""
        return (
            f"Pkcs11KeyStore(module_path={self.module_path!r}, token_label={self.token_label!r}, "
            f"label_prefix={self.label_prefix!r}{state})"
        )

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        _no_pickle("Pkcs11KeyStore")

    def __enter__(self) -> Pkcs11KeyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release this keystore; the session is closed (and logged out) with the last one."""
        with _TOKENS_LOCK:
            shared, self._shared = self._shared, None
            if shared is None:
                return
            shared.refs -= 1
            if shared.refs == 0:
                shared.close()
                if _TOKENS.get(self._key) is shared:
                    del _TOKENS[self._key]

    # -- the KeyStore protocol

    def ensure_bucket(self, bucket: str) -> None:
        label = self._label(bucket)
        p11 = self._p11

        def create(session: Any) -> None:
            if not self._find(session, label):
                _generate_token_key(p11, session, label)

        self._session().run(f"create the key of bucket {bucket}", create)

    def wrap(self, bucket: str, data_key: bytes, *, aad: bytes) -> bytes:
        label = self._label(bucket)
        check_data_key(data_key)
        check_aad(aad)
        p11 = self._p11
        shared = self._session()

        def wrap(session: Any) -> bytes:
            keys = self._find(session, label)
            if not keys:
                raise missing_bucket(bucket, self._where(), wrapping=True)
            nonce = secrets.token_bytes(NONCE_BYTES)
            params = p11.GCMParams(nonce, wrap_ad(bucket, aad), TAG_BYTES * 8)
            try:
                sealed = keys[0].encrypt(
                    data_key, mechanism=p11.Mechanism.AES_GCM, mechanism_param=params
                )
            except shared.key_gone:
                raise missing_bucket(bucket, self._where(), wrapping=True) from None
            if len(sealed) != DATA_KEY_BYTES + TAG_BYTES:
                raise KeyringError(
                    f"PKCS#11 token {self.token_label!r} returned {len(sealed)} bytes for an "
                    f"AES-GCM encryption of {DATA_KEY_BYTES} bytes; it does not follow PKCS#11"
                )
            return bytes([WRAPPED_KEY_VERSION]) + nonce + bytes(sealed)

        return shared.run(f"wrap a key in bucket {bucket}", wrap)

    def unwrap(self, bucket: str, wrapped: bytes, *, aad: bytes) -> bytes:
        label = self._label(bucket)
        check_wrapped(wrapped)
        check_aad(aad)
        p11 = self._p11
        shared = self._session()

        def unwrap(session: Any) -> bytes | None:
            keys = self._find(session, label)
            if not keys:
                raise missing_bucket(bucket, self._where())
            parts = split_wrapped(wrapped)
            if parts is None:
                return None
            gone = 0
            for key in keys:  # several only after a race between processes (class docstring)
                params = p11.GCMParams(parts[0], wrap_ad(bucket, aad), TAG_BYTES * 8)
                try:
                    data_key = key.decrypt(
                        parts[1], mechanism=p11.Mechanism.AES_GCM, mechanism_param=params
                    )
                except shared.key_gone:
                    gone += 1
                    continue
                except p11.exceptions.PKCS11Error as exc:
                    if shared.is_device_failure(exc):
                        raise
                    continue  # a failed tag check: tokens differ in the error they report
                if len(data_key) == DATA_KEY_BYTES:
                    return bytes(data_key)
            if gone == len(keys):
                raise missing_bucket(bucket, self._where())
            return None

        data_key = shared.run(f"unwrap a key of bucket {bucket}", unwrap)
        if data_key is None:
            fail_unwrap()
        return data_key

    def destroy_bucket(self, bucket: str) -> bool:
        label = self._label(bucket)
        shared = self._session()

        def destroy(session: Any) -> bool:
            keys = self._find(session, label)
            for key in keys:
                with contextlib.suppress(*shared.key_gone):  # another process was faster
                    key.destroy()
            return bool(keys)

        return shared.run(f"destroy the key of bucket {bucket}", destroy)

    def buckets(self) -> list[str]:
        p11 = self._p11
        prefix = self.label_prefix

        def labels(session: Any) -> list[str]:
            found = session.get_objects(
                {
                    p11.Attribute.CLASS: p11.ObjectClass.SECRET_KEY,
                    p11.Attribute.KEY_TYPE: p11.KeyType.AES,
                }
            )
            names = [str(obj[p11.Attribute.LABEL]) for obj in list(found)]
            if not names:
                self._check_logged_in(session)
            return names

        names = self._session().run("list the bucket keys", labels)
        return sorted(
            {
                name[len(prefix) :]
                for name in names
                if name.startswith(prefix) and _BUCKET_ID.fullmatch(name[len(prefix) :])
            }
        )

    def has_bucket(self, bucket: str) -> bool:
        label = self._label(bucket)
        return self._session().run(
            f"look up the key of bucket {bucket}", lambda s: bool(self._find(s, label))
        )

    # -- for operators and audits

    def describe_bucket(self, bucket: str) -> dict[str, Any]:
        """The protection attributes of a bucket's key on the token (never its value).

        Lets an operator or a test check that the key is sensitive and non-extractable::

            {"label": "sampledrec-bucket-2027-05-22", "objects": 1, "sensitive": True,
             "extractable": False, "always_sensitive": True, "never_extractable": True, ...}
        """
        return self._describe(self._label(bucket), bucket)

    def _describe(self, label: str, what: str) -> dict[str, Any]:
        p11 = self._p11
        names = {
            "token": p11.Attribute.TOKEN,
            "private": p11.Attribute.PRIVATE,
            "sensitive": p11.Attribute.SENSITIVE,
            "extractable": p11.Attribute.EXTRACTABLE,
            "always_sensitive": p11.Attribute.ALWAYS_SENSITIVE,
            "never_extractable": p11.Attribute.NEVER_EXTRACTABLE,
            "modifiable": p11.Attribute.MODIFIABLE,
            "encrypt": p11.Attribute.ENCRYPT,
            "decrypt": p11.Attribute.DECRYPT,
            "wrap": p11.Attribute.WRAP,
            "unwrap": p11.Attribute.UNWRAP,
            "value_len": p11.Attribute.VALUE_LEN,
        }

        def describe(session: Any) -> dict[str, Any]:
            keys = self._find(session, label)
            if not keys:
                raise missing_bucket(what, self._where())
            info: dict[str, Any] = {"label": label, "objects": len(keys)}
            for name, attribute in names.items():
                value = keys[0][attribute]
                info[name] = value if isinstance(value, bool) else int(value)
            return info

        return self._session().run(f"describe the key {label}", describe)

    # -- helpers

    def _session(self) -> _TokenSession:
        shared = self._shared
        if shared is None:
            raise KeyringError(f"{self!r} was closed; open a new Pkcs11KeyStore")
        return shared

    def _label(self, bucket: str) -> str:
        return self.label_prefix + check_bucket_id(bucket)

    def _where(self) -> str:
        return f"PKCS#11 token {self.token_label!r}"

    def _find(self, session: Any, label: str) -> list[Any]:
        p11 = self._p11
        found = list(
            session.get_objects(
                {
                    p11.Attribute.CLASS: p11.ObjectClass.SECRET_KEY,
                    p11.Attribute.KEY_TYPE: p11.KeyType.AES,
                    p11.Attribute.LABEL: label,
                }
            )
        )
        if not found:
            self._check_logged_in(session)
        return sorted(found, key=lambda key: bytes(key[p11.Attribute.ID]))

    def _check_logged_in(self, session: Any) -> None:
        """Make sure that finding nothing means that nothing is there.

        Bucket keys are private objects, which a search without a login silently skips; and
        any code of this process can log the whole process out of the token. Creating a private
        session object needs a login: without one this raises ``UserNotLoggedIn``, on which
        :meth:`_TokenSession.run` logs in again and retries.
        """
        p11 = self._p11
        probe = session.generate_key(
            p11.KeyType.AES,
            128,
            store=False,
            capabilities=p11.MechanismFlag.ENCRYPT,
            template={p11.Attribute.PRIVATE: True},
        )
        probe.destroy()


def _generate_token_key(p11: Any, session: Any, label: str) -> None:
    """A new AES-256 key on the token, labelled ``label``: persistent, private, sensitive,
    never extractable, usable only to encrypt and decrypt (on the token)."""
    session.generate_key(
        p11.KeyType.AES,
        256,
        id=secrets.token_bytes(16),
        label=label,
        store=True,
        capabilities=p11.MechanismFlag.ENCRYPT | p11.MechanismFlag.DECRYPT,
        template={
            p11.Attribute.TOKEN: True,
            p11.Attribute.PRIVATE: True,
            p11.Attribute.SENSITIVE: True,
            p11.Attribute.EXTRACTABLE: False,
            p11.Attribute.MODIFIABLE: False,
            p11.Attribute.COPYABLE: False,
            p11.Attribute.WRAP: False,
            p11.Attribute.UNWRAP: False,
            p11.Attribute.SIGN: False,
            p11.Attribute.VERIFY: False,
            p11.Attribute.DERIVE: False,
        },
    )


_KEY_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)


class Pkcs11WrappingKey:
    """One AES-256 key on a PKCS#11 token that wraps other keys, by label: a deployment's
    shared keys (:mod:`sampledrec.keys.shared`, docs/decisions/0036-deployment-keys.md).

    The key is generated on the token like a bucket key (:class:`Pkcs11KeyStore`: sensitive,
    never extractable, encrypt and decrypt only). Wrapping is ``CKM_AES_GCM`` *on the token*
    over the 32-byte key to protect, in the wrapped-key format of the module docstring
    (``0x01 || nonce || ciphertext || tag``, 61 bytes), so a row wrapped here has the same shape
    as one wrapped by a key file, and re-wrapping from one to the other is a plain loop. The
    token's ``C_WrapKey`` is not used: it wraps token objects, and the keys it would wrap
    (epoch keys) must be exportable anyway (DESIGN.md §6), so they would sit on the token
    extractable for nothing.

    It shares its process's session on the token with every :class:`Pkcs11KeyStore` (one
    login per process); :meth:`close` releases it.
    """

    def __init__(
        self, module_path: str | os.PathLike[str], token_label: str, pin: str, *, label: str
    ) -> None:
        if not isinstance(label, str) or not _KEY_LABEL.fullmatch(label):
            raise InvalidArgument(
                f"label={label!r} must be 1 to 64 letters, digits, '.', '_' or '-', starting "
                "with a letter or digit, such as 'sampledrec-deployment-1'"
            )
        self.label = label
        self._token = Pkcs11KeyStore(module_path, token_label, pin)
        self.token_label = token_label

    def __repr__(self) -> str:
        return f"Pkcs11WrappingKey(token_label={self.token_label!r}, label={self.label!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        _no_pickle("Pkcs11WrappingKey")

    def close(self) -> None:
        self._token.close()

    def describe(self) -> str:
        return f"the key {self.label!r} on PKCS#11 token {self.token_label!r}"

    def ensure(self) -> bool:
        """Generate the key on the token if no key has its label; True if this call made it."""
        store = self._token

        def create(session: Any) -> bool:
            if store._find(session, self.label):
                return False
            _generate_token_key(store._p11, session, self.label)
            return True

        return store._session().run(f"create the key {self.label}", create)

    def exists(self) -> bool:
        store = self._token
        return store._session().run(
            f"look up the key {self.label}", lambda s: bool(store._find(s, self.label))
        )

    def attributes(self) -> dict[str, Any]:
        """The key's protection attributes on the token (never its value)."""
        return self._token._describe(self.label, self.label)

    def _keys(self, session: Any) -> list[Any]:
        keys = self._token._find(session, self.label)
        if not keys:
            raise KeyringError(
                f"PKCS#11 token {self.token_label!r} has no key labelled {self.label!r}: this is "
                "not the deployment's token, or the key was destroyed; use the token (or a "
                "replica of it) that holds the deployment's key"
            )
        return keys

    def wrap(self, name: str, secret: bytes, ad: bytes) -> bytes:
        """``secret`` (32 bytes) encrypted on the token, bound to ``name`` and ``ad``."""
        check_data_key(secret)
        store = self._token
        p11 = store._p11

        def wrap(session: Any) -> bytes:
            key = self._keys(session)[0]
            nonce = secrets.token_bytes(NONCE_BYTES)
            params = p11.GCMParams(nonce, wrap_ad(name, ad), TAG_BYTES * 8)
            sealed = key.encrypt(secret, mechanism=p11.Mechanism.AES_GCM, mechanism_param=params)
            if len(sealed) != DATA_KEY_BYTES + TAG_BYTES:
                raise KeyringError(
                    f"PKCS#11 token {self.token_label!r} returned {len(sealed)} bytes for an "
                    f"AES-GCM encryption of {DATA_KEY_BYTES} bytes; it does not follow PKCS#11"
                )
            return bytes([WRAPPED_KEY_VERSION]) + nonce + bytes(sealed)

        return store._session().run(f"wrap the key {name}", wrap)

    def unwrap(self, name: str, wrapped: bytes, ad: bytes) -> bytes | None:
        """What :meth:`wrap` wrapped with ``name`` and ``ad``, or None if ``wrapped`` was not
        wrapped by this key (or is damaged)."""
        store = self._token
        p11 = store._p11
        shared = store._session()

        def unwrap(session: Any) -> bytes | None:
            keys = self._keys(session)
            parts = split_wrapped(wrapped)
            if parts is None:
                return None
            for key in keys:
                params = p11.GCMParams(parts[0], wrap_ad(name, ad), TAG_BYTES * 8)
                try:
                    secret = key.decrypt(
                        parts[1], mechanism=p11.Mechanism.AES_GCM, mechanism_param=params
                    )
                except p11.exceptions.PKCS11Error as exc:
                    if shared.is_device_failure(exc):
                        raise
                    continue  # a failed tag check
                if len(secret) == DATA_KEY_BYTES:
                    return bytes(secret)
            return None

        return shared.run(f"unwrap the key {name}", unwrap)
