"""The keys that a deployment's nodes share, kept wrapped in its PostgreSQL database
(docs/decisions/0031-nodes.md).

Several recording nodes of one deployment must draw with the same epoch keys (a call decided on
two nodes gets one answer), name agents and callers with the same pseudonym key (caps and
objections count across nodes) and open each other's recordings (the same expiry-bucket keys).
Each node keeps its own log, with its own signing key and sealing keys.

- :class:`DeploymentKey`: the 32-byte key, in a file (0600) that the operator gives every node
  and never backs up, that wraps every shared key. It refuses to be printed or pickled. Or,
  instead, a non-extractable AES key on a PKCS#11 token
  (:class:`~sampledrec.keys.keystore.Pkcs11WrappingKey`): either is a :class:`KeyWrapper`
  (docs/decisions/0036-deployment-keys.md).
- :class:`SharedKeys`: the table ``shared_keys`` (component ``shared_keys``), one row per
  shared key and deployment, ``wrapped`` =
  ``0x01 | nonce | AES-256-GCM(deployment key, nonce, key, ad)`` with ``ad`` binding the
  deployment id and the key's name (``epoch/2026-11-22``, ``pseudonym``,
  ``bucket/bucket-2027-05-22``): no key is ever stored in clear in the database, and a wrapped
  key moved to another name or deployment does not unwrap. Keys are created with
  ``INSERT ... ON CONFLICT DO NOTHING`` under a transaction-scoped advisory lock of the
  deployment, so nodes racing for one epoch end with one key, and only by a node whose
  deployment key opens the ``check`` row (a node left with a key that was rotated away never
  adds a row that the others cannot open). :meth:`SharedKeys.rotate` re-wraps every row under
  a new deployment key in one transaction.
- :class:`NodeKeyring`: a :class:`~sampledrec.keys.keyring.Keyring` for one node: epoch keys and
  the pseudonym key from :class:`SharedKeys`, the log's signing seed, its sealing keys and the
  markers of the commitments logged *in this node's log* from the node's own
  :class:`~sampledrec.keys.keyring.LocalKeyring`.
- :class:`SharedKeyStore`: a :class:`~sampledrec.keys.keystore.KeyStore` whose bucket keys are
  shared keys (software wrapping, as :class:`~sampledrec.keys.keystore.LocalKeyStore`).
  Destroying one deletes its row; PostgreSQL's backups and WAL keep the old row for a while,
  wrapped under the deployment key: docs/operations.md says to keep those backups less long
  than the shortest grace period, or to keep bucket keys on an HSM (keystore ``pkcs11``).
"""

from __future__ import annotations

import os
import secrets
import stat
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

from .._hazmat.aead import unwrap_key, wrap_key
from .._hazmat.files import create_exclusive
from .._hazmat.postgres import Migration, PgConnection, advisory_lock_id
from ..errors import InvalidArgument, KeyringError, StorePermissionError
from .keyring import KEY_BYTES, EpochKey, LocalKeyring, check_epoch_id
from .keystore import (
    check_aad,
    check_bucket_id,
    check_data_key,
    check_wrapped,
    missing_bucket,
    software_unwrap,
    software_wrap,
)

if TYPE_CHECKING:
    from .._hazmat.postgres import PgConn

__all__ = ["DeploymentKey", "KeyWrapper", "NodeKeyring", "SharedKeyStore", "SharedKeys"]

SHARED_AD: Final = b"sampledrec/v1/shared-key"
PSEUDONYM: Final = "pseudonym"
CHECK: Final = "check"  # a key wrapped at deployment init: a wrong deployment key shows at once

SHARED_MIGRATIONS: Final = (
    Migration(
        1,
        "the keys a deployment's nodes share, wrapped under its deployment key",
        """
CREATE TABLE shared_keys (
    deployment TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    wrapped BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, name)
);
""",
    ),
    Migration(
        2,
        "when the deployment key was rotated (no key: when, by whom, how many rows, to what)",
        """
CREATE TABLE shared_key_rotations (
    deployment TEXT COLLATE "C" NOT NULL,
    rotated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    principal TEXT NOT NULL,
    keys INTEGER NOT NULL,
    new_key TEXT NOT NULL
);
""",
    ),
)


class KeyWrapper(Protocol):
    """What wraps a deployment's shared keys: :class:`DeploymentKey` (a file) or
    :class:`~sampledrec.keys.keystore.Pkcs11WrappingKey` (a key on a token). Both write the
    wrapped-key format of :mod:`sampledrec.keys.keystore` with the associated data
    ``b"sampledrec/v1/bucket-wrap" || 0x00 || name || 0x00 || ad``."""

    def wrap(self, name: str, secret: bytes, ad: bytes) -> bytes: ...

    def unwrap(self, name: str, wrapped: bytes, ad: bytes) -> bytes | None:
        """The secret, or None if ``wrapped`` was not wrapped by this key under ``name`` and
        ``ad`` (or is damaged)."""
        ...

    def describe(self) -> str:
        """What the key is, for a message (a path, a token and label; never a secret)."""
        ...


class DeploymentKey:
    """The key that wraps a deployment's shared keys: 32 random bytes in a file (0600)."""

    __slots__ = ("_secret", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            mode = self.path.lstat().st_mode
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise KeyringError(
                f"the deployment key {self.path} does not exist; copy it from the deployment's "
                "first node (docs/operations.md), or create a deployment with "
                "'sampledrec deployment init'"
            ) from None
        except OSError as exc:
            raise KeyringError(f"cannot read the deployment key {self.path}: {exc}") from None
        if stat.S_ISLNK(mode) or mode & 0o077:
            raise StorePermissionError(
                f"the deployment key {self.path} must be a file readable by its owner only; "
                f"fix it with: chmod 600 '{self.path}'"
            )
        if len(data) != KEY_BYTES:
            raise KeyringError(f"the deployment key {self.path} is damaged (not {KEY_BYTES} bytes)")
        self._secret = data

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> DeploymentKey:
        """A new random key in the new file ``path`` (0600); an existing file is refused."""
        target = Path(path)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not create_exclusive(target, secrets.token_bytes(KEY_BYTES)):
            raise KeyringError(f"{target} exists; a deployment key is never overwritten")
        return cls(target)

    def secret_bytes(self) -> bytes:
        return self._secret

    def wrap(self, name: str, secret: bytes, ad: bytes) -> bytes:
        return wrap_key(self._secret, name, secret, ad)

    def unwrap(self, name: str, wrapped: bytes, ad: bytes) -> bytes | None:
        return unwrap_key(self._secret, name, wrapped, ad)

    def describe(self) -> str:
        return f"the deployment key {self.path}"

    def __repr__(self) -> str:
        return f"DeploymentKey({str(self.path)!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a deployment key cannot be pickled; load it from its file")


class SharedKeys:
    """The shared keys of deployment ``deployment_id`` (hex) in the database ``dsn``."""

    def __init__(self, dsn: str, deployment_id: str, key: KeyWrapper) -> None:
        self._deployment = deployment_id
        self._key = key
        self._ad = SHARED_AD + b"\x00" + deployment_id.encode("ascii")
        self._lock_id = advisory_lock_id(f"sampledrec/v1/shared-keys/{deployment_id}")
        self._conn = PgConnection(
            dsn,
            what="the deployment's shared keys",
            component="shared_keys",
            migrations=SHARED_MIGRATIONS,
        )
        # A store has no close(): its connection closes, and its deployment key (a token's
        # session) is released, when the store is dropped.
        self._held = [key]
        self._closer = weakref.finalize(self, _finish, self._conn, self._held)

    def __repr__(self) -> str:
        return f"SharedKeys({self._conn.where!r}, deployment={self._deployment!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("shared keys cannot be pickled; open them again in the other process")

    def close(self) -> None:
        """Close the connection, and release the deployment key (a token's session)."""
        self._closer()

    def ensure(self, names: Iterable[str]) -> list[str]:
        """Create the keys of ``names`` that do not exist yet; returns those this call made."""
        wanted = sorted(set(names))
        if not wanted:
            return []
        rows = [(n, self._key.wrap(n, secrets.token_bytes(KEY_BYTES), self._ad)) for n in wanted]

        def work(conn: PgConn) -> list[str]:
            # One creator at a time per deployment: a batch of epochs is created whole.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._lock_id])
            # Only with the deployment's current key: a node whose key was rotated away must
            # not add rows the other nodes cannot open (the lock keeps a rotation out).
            check = conn.execute(
                "SELECT wrapped FROM shared_keys WHERE deployment = %s AND name = %s",
                [self._deployment, CHECK],
            ).fetchone()
            if check is not None and self._key.unwrap(CHECK, bytes(check[0]), self._ad) is None:
                self._refuse(conn, CHECK)
            made = conn.execute(
                "INSERT INTO shared_keys (deployment, name, wrapped) "
                "SELECT %s, n, w FROM unnest(%s::text[], %s::bytea[]) AS t(n, w) "
                "ON CONFLICT (deployment, name) DO NOTHING RETURNING name",
                [self._deployment, [n for n, _ in rows], [w for _, w in rows]],
            ).fetchall()
            return sorted(str(r[0]) for r in made)

        return self._conn.run(work)

    def get(self, name: str) -> bytes | None:
        """The key ``name``, or None if it does not exist (never created, or destroyed)."""
        row = self._conn.run(
            lambda c: c.execute(
                "SELECT wrapped FROM shared_keys WHERE deployment = %s AND name = %s",
                [self._deployment, name],
            ).fetchone(),
            atomic=False,
        )
        if row is None:
            return None
        key = self._key.unwrap(name, bytes(row[0]), self._ad)
        if key is None:
            self._conn.run(lambda c: self._refuse(c, name), atomic=False)
        return key

    def _refuse(self, conn: PgConn, name: str) -> NoReturn:
        """The row ``name`` does not open with this node's key: say why, as far as the database
        knows (a rotation since), and what to do."""
        last = conn.execute(
            "SELECT rotated_at, new_key FROM shared_key_rotations WHERE deployment = %s "
            "ORDER BY rotated_at DESC LIMIT 1",
            [self._deployment],
        ).fetchone()
        if last is not None:
            raise KeyringError(
                f"the shared key {name!r} does not unwrap with {self._key.describe()}: the "
                f"deployment key was rotated on {last[0]:%Y-%m-%d %H:%M:%S %Z} (to {last[1]}) "
                "and this node still has an older one; install the deployment's new key on "
                "this node (docs/operations.md, 'Rotate the deployment key') and restart it"
            )
        raise KeyringError(
            f"the shared key {name!r} does not unwrap with {self._key.describe()}: this node "
            "has another deployment's key, or the row was damaged; copy the deployment key "
            "from a working node"
        )

    def rotate(
        self,
        new: KeyWrapper,
        *,
        principal: str,
        on_row: Callable[[str], None] | None = None,
    ) -> int:
        """Wrap every shared key of the deployment again, under ``new``, in one transaction
        under the deployment's key-creation lock: each row is unwrapped with the current key,
        wrapped with ``new``, and checked to unwrap with ``new`` to the same key before the
        transaction commits; any failure (a row the current key does not open, the new key
        failing, the connection or the process dying) leaves every row as it was. Returns how
        many rows were re-wrapped. ``on_row`` (tests, progress) is called before each row is
        written. A row of the rotation (when, ``principal``, how many, ``new.describe()``) is
        written in the same transaction: nodes left with the old key say so."""

        def work(conn: PgConn) -> int:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._lock_id])
            rows = conn.execute(
                "SELECT name, wrapped FROM shared_keys WHERE deployment = %s ORDER BY name "
                "FOR UPDATE",
                [self._deployment],
            ).fetchall()
            if not rows:
                raise KeyringError("the deployment has no shared keys to rotate")
            check = next((bytes(w) for n, w in rows if n == CHECK), None)
            if check is not None and new.unwrap(CHECK, check, self._ad) is not None:
                raise InvalidArgument(
                    f"{new.describe()} already opens the deployment's keys: it is the current "
                    "deployment key; give a new one"
                )
            for name, wrapped in rows:
                secret = self._key.unwrap(str(name), bytes(wrapped), self._ad)
                if secret is None:
                    self._refuse(conn, str(name))
                rewrapped = new.wrap(str(name), secret, self._ad)
                if new.unwrap(str(name), rewrapped, self._ad) != secret:
                    raise KeyringError(
                        f"{new.describe()} does not give back the key {name!r} it wrapped; "
                        "nothing was changed: check the new key (or the token) and try again"
                    )
                if on_row is not None:
                    on_row(str(name))
                conn.execute(
                    "UPDATE shared_keys SET wrapped = %s WHERE deployment = %s AND name = %s",
                    [rewrapped, self._deployment, name],
                )
            conn.execute(
                "INSERT INTO shared_key_rotations (deployment, principal, keys, new_key) "
                "VALUES (%s, %s, %s, %s)",
                [self._deployment, principal, len(rows), new.describe()],
            )
            return len(rows)

        count = self._conn.run(work)
        old, self._key = self._key, new
        self._held[0] = new
        _release(old)
        return count

    def names(self, prefix: str) -> list[str]:
        """Every key whose name starts with ``prefix``, sorted."""
        rows = self._conn.run(
            lambda c: c.execute(
                "SELECT name FROM shared_keys WHERE deployment = %s AND starts_with(name, %s) "
                "ORDER BY name",
                [self._deployment, prefix],
            ).fetchall(),
            atomic=False,
        )
        return [str(r[0]) for r in rows]

    def delete(self, name: str) -> bool:
        """Destroy the key ``name``; False if it did not exist."""
        rows = self._conn.run(
            lambda c: c.execute(
                "DELETE FROM shared_keys WHERE deployment = %s AND name = %s RETURNING name",
                [self._deployment, name],
            ).fetchall(),
            atomic=False,
        )
        return bool(rows)

    def check(self) -> None:
        """Make sure the deployment key opens this deployment's keys (creating the check key
        and the pseudonym key the first time)."""
        self.ensure([CHECK, PSEUDONYM])
        self.get(CHECK)


def _finish(conn: PgConnection, held: list[KeyWrapper]) -> None:
    conn.close()
    _release(held[0])


def _release(key: KeyWrapper) -> None:
    close = getattr(key, "close", None)
    if close is not None:
        close()


class NodeKeyring:
    """The keyring of one node: shared keys from ``shared``, the node's own from ``local``.

    ``since`` (an epoch id, the node's first day) limits the epochs whose commitments this
    node must log: epochs that ended before the node existed are other nodes' business.
    """

    def __init__(self, local: LocalKeyring, shared: SharedKeys, *, since: str) -> None:
        check_epoch_id(since)
        self.local = local
        self.shared = shared
        self._since = since
        self._cache: dict[str, EpochKey] = {}
        self._pseudonym: bytes | None = None

    def __repr__(self) -> str:
        return f"NodeKeyring({self.local!r}, {self.shared!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a keyring cannot be pickled; open it again in the other process")

    @property
    def path(self) -> Path:
        return self.local.path

    def owner(self) -> str | None:
        return self.local.owner()

    def ensure_epochs(self, epoch_ids: Iterable[str]) -> list[EpochKey]:
        """Create the shared keys of these epochs that no node made yet; return those this call
        made (the Keyring contract). Which commitments this node's log still needs, whoever
        made the keys, is :meth:`uncommitted_epochs` (the store logs them)."""
        wanted = list(dict.fromkeys(epoch_ids))  # each epoch once, in the order given
        for e in wanted:
            check_epoch_id(e)
        made = set(self.shared.ensure(f"epoch/{e}" for e in wanted))
        return [self.epoch_key(e) for e in wanted if f"epoch/{e}" in made]

    def epoch_key(self, epoch_id: str) -> EpochKey:
        cached = self._cache.get(epoch_id)
        if cached is not None:
            return cached
        check_epoch_id(epoch_id)
        secret = self.shared.get(f"epoch/{epoch_id}")
        if secret is None:
            raise KeyringError(
                f"no key for epoch {epoch_id} in the deployment's shared keys; keys are "
                "created ahead of use by the samplers of its nodes"
            )
        key = EpochKey(epoch_id, secret)
        self._cache[epoch_id] = key
        return key

    def epoch_ids(self) -> list[str]:
        return [n[len("epoch/") :] for n in self.shared.names("epoch/")]

    def pseudonym_key(self) -> bytes:
        if self._pseudonym is None:
            key = self.shared.get(PSEUDONYM)
            if key is None:
                self.shared.ensure([PSEUDONYM])
                key = self.shared.get(PSEUDONYM)
            assert key is not None
            self._pseudonym = key
        return self._pseudonym

    def sealing_key(self, kid: str, *, create: bool = False) -> bytes | None:
        return self.local.sealing_key(kid, create=create)

    def signing_seed(self) -> bytes:
        return self.local.signing_seed()

    def sealing_key_ids(self) -> list[str]:
        return self.local.sealing_key_ids()

    def destroy_sealing_key(self, kid: str) -> bool:
        return self.local.destroy_sealing_key(kid)

    def _marker(self, epoch_id: str) -> Path:
        check_epoch_id(epoch_id)
        return self.local.path / "epochs" / f"{epoch_id}.committed"

    def mark_committed(self, epoch_id: str) -> None:
        """Remember that the epoch's commitment is durable in this node's log."""
        self.epoch_key(epoch_id)  # only an epoch that has a key can be committed
        fd = os.open(self._marker(epoch_id), os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    def uncommitted_epochs(self) -> list[str]:
        """The deployment's epochs, from the node's first day on, whose commitment this node's
        log does not hold yet."""
        return [e for e in self.epoch_ids() if e >= self._since and not self._marker(e).exists()]


class SharedKeyStore:
    """Expiry-bucket keys as shared keys (``bucket/<bucket>``), wrapped in the database."""

    def __init__(self, shared: SharedKeys) -> None:
        self.shared = shared

    def __repr__(self) -> str:
        return f"SharedKeyStore({self.shared!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a key store cannot be pickled; open it again in the other process")

    def ensure_bucket(self, bucket: str) -> None:
        self.shared.ensure([f"bucket/{check_bucket_id(bucket)}"])

    def _key(self, bucket: str, *, wrapping: bool = False) -> bytes:
        key = self.shared.get(f"bucket/{check_bucket_id(bucket)}")
        if key is None:
            raise missing_bucket(bucket, "the deployment's shared keys", wrapping=wrapping)
        return key

    def wrap(self, bucket: str, data_key: bytes, *, aad: bytes) -> bytes:
        check_data_key(data_key)
        check_aad(aad)
        return software_wrap(self._key(bucket, wrapping=True), bucket, data_key, aad)

    def unwrap(self, bucket: str, wrapped: bytes, *, aad: bytes) -> bytes:
        check_wrapped(wrapped)
        check_aad(aad)
        return software_unwrap(self._key(bucket), bucket, wrapped, aad)

    def destroy_bucket(self, bucket: str) -> bool:
        return self.shared.delete(f"bucket/{check_bucket_id(bucket)}")

    def buckets(self) -> list[str]:
        return [n[len("bucket/") :] for n in self.shared.names("bucket/")]

    def has_bucket(self, bucket: str) -> bool:
        return f"bucket/{check_bucket_id(bucket)}" in self.shared.names(f"bucket/{bucket}")
