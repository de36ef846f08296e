"""The store directory: one folder that holds a deployment's policy, keys and (later) log,
catalog and recordings, with no server.

::

    STORE/
      store.json        format marker, creation time, simulated flag, keyring location
      policy.toml       the policy in force
      objections.txt    pseudonyms of callers who objected (never numbers)
      keys/             the local keyring (0700), unless the store names another folder
      lock              the store's lock file (fcntl), outside every covered folder

Folders are 0700 and files 0600. A store created by ``sampledrec demo`` (or ``init
--simulated``) is marked *simulated*: it may reveal keys of epochs that have not ended by the real
clock, and every report says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from .clock import SYSTEM_CLOCK, Clock
from .errors import (
    InvalidArgument,
    InvalidPolicy,
    StoreError,
    StoreLocked,
    StoreNotFound,
    StorePermissionError,
)
from .keyring import LocalKeyring, RevealedKey, reveal
from .objections import ObjectionList
from .policy import DEFAULT_POLICY_TOML, Policy
from .sampler import Sampler

__all__ = ["Store"]

STORE_FORMAT: Final = "sampledrec-store"
STORE_VERSION: Final = 1
REVEALED_FORMAT: Final = "sampledrec-revealed-keys"


class Store:
    """An opened store directory. Create one with :meth:`init`, open it with :meth:`open`."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self._meta = meta
        keys_dir = meta.get("keys_dir")
        self.keys_path = Path(keys_dir) if keys_dir else path / "keys"
        self.keyring = LocalKeyring(self.keys_path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}{', simulated' if self.simulated else ''})"

    @property
    def simulated(self) -> bool:
        return bool(self._meta.get("simulated"))

    @property
    def created_at(self) -> str:
        return str(self._meta.get("created_at", ""))

    @property
    def policy_path(self) -> Path:
        return self.path / "policy.toml"

    # -- creating and opening ----------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        policy: str | os.PathLike[str] | None = None,
        keys_dir: str | os.PathLike[str] | None = None,
        simulated: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Store:
        """Create a new store. ``policy`` is a policy file (checked first); without it the
        default policy is written (purpose quality, rate 5%, retention 6 months)."""
        root = Path(path)
        if (root / "store.json").exists():
            raise StoreError(f"{root} is already a sampledrec store; open it instead")
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} exists and is not a folder; choose another path")
        if root.exists() and any(root.iterdir()):
            raise StoreError(f"{root} is not empty; create the store in a new or empty folder")
        if policy is not None:
            text = Path(policy).read_text(encoding="utf-8")
            Policy.from_toml(text, source=str(policy))  # refuse a bad policy before creating
        else:
            text = DEFAULT_POLICY_TOML
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(root, 0o700)
            keys_path = Path(keys_dir).resolve() if keys_dir else root / "keys"
            LocalKeyring(keys_path, create=True)
            _write_private(root / "policy.toml", text.encode("utf-8"))
            _write_private(root / "objections.txt", b"")
            meta = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "created_at": clock.now().isoformat(),
                "simulated": simulated,
                "keys_dir": str(keys_path) if keys_dir else None,
            }
            _write_private(root / "store.json", json.dumps(meta, indent=2).encode() + b"\n")
        except PermissionError as exc:
            raise StorePermissionError(f"cannot create the store at {root}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot create the store at {root}: {exc}") from exc
        return cls(root, meta)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        root = Path(path)
        meta_path = root / "store.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreNotFound(
                f"{root} is not a sampledrec store (no store.json); create one with "
                f"'sampledrec init {root}'"
            ) from None
        except PermissionError as exc:
            raise StorePermissionError(f"cannot read {meta_path}: {exc.strerror}") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {meta_path}: {exc}") from exc
        if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
            raise StoreError(
                f"{meta_path} is not a version {STORE_VERSION} sampledrec store; "
                "upgrade sampledrec or use a store made by this version"
            )
        return cls(root, meta)

    # -- what lives in it --------------------------------------------------------------------

    def policy(self) -> Policy:
        """The policy in force."""
        try:
            return Policy.load(self.policy_path)
        except InvalidPolicy as exc:
            raise StoreError(f"the store's policy cannot be used: {exc}") from exc

    def objections(self) -> ObjectionList:
        return ObjectionList.load(self.keyring.pseudonym_key(), self.path / "objections.txt")

    @contextlib.contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the store's exclusive lock (across threads and processes)."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from exc
                    if time.monotonic() > deadline:
                        raise StoreLocked(
                            f"{self.path} is locked by another process for more than "
                            f"{timeout:g} s; wait for it to finish or check for a stuck process"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def sampler(self, *, clock: Clock = SYSTEM_CLOCK) -> Sampler:
        """A sampler for this store: its policy, keyring, objection list and lock."""
        return Sampler(
            self.policy(),
            self.keyring,
            clock=clock,
            objections=self.objections(),
            key_lock=self.lock,
        )

    def reveal_keys(
        self,
        *,
        now: datetime,
        real_now: datetime | None = None,
    ) -> list[RevealedKey]:
        """The keys of every epoch that has ended at ``now``.

        ``now`` may be later than the real clock only in a simulated store: a real store never
        reveals an epoch that has not ended by the real clock (DESIGN.md §9).
        """
        real = real_now if real_now is not None else SYSTEM_CLOCK.now()
        if now > real and not self.simulated:
            raise InvalidArgument(
                f"--at {now.isoformat()} is in the future; keys of a real store are revealed "
                "only once their epoch has ended by the real clock (only a store made by "
                "'sampledrec demo' may simulate the future)"
            )
        from .keyring import epoch_end

        ended = [e for e in self.keyring.epoch_ids() if epoch_end(e) <= now]
        return reveal(self.keyring, ended, now=now)

    def write_revealed(self, keys: list[RevealedKey], out: str | os.PathLike[str]) -> None:
        """Write revealed keys as JSON for an auditor (0600; the keys are still secrets until
        the auditor has them)."""
        doc = {
            "format": REVEALED_FORMAT,
            "version": 1,
            "store": str(self.path),
            "simulated": self.simulated,
            "epochs": [
                {"epoch_id": k.epoch_id, "key": k.key.hex(), "commitment": k.commitment.hex()}
                for k in keys
            ],
        }
        _write_private(Path(out), json.dumps(doc, indent=2).encode() + b"\n", replace=True)


def read_revealed(path: str | os.PathLike[str]) -> list[RevealedKey]:
    """Read a revealed-keys file written by :meth:`Store.write_revealed`."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("format") != REVEALED_FORMAT:
        raise InvalidArgument(f"{path} is not a sampledrec revealed-keys file")
    return [
        RevealedKey(e["epoch_id"], bytes.fromhex(e["key"]), bytes.fromhex(e["commitment"]))
        for e in doc["epochs"]
    ]


def _write_private(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write a 0600 file atomically (temp file in the same folder, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not replace and path.exists():
            raise StoreError(f"{path} already exists")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
