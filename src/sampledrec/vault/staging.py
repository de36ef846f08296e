"""Recordings kept on the node's disk while they are recorded, uploaded when sealed:
:class:`StagedBlobStore`.

A :class:`~sampledrec.vault.blobs.BlobStore` in front of a remote one (an S3 bucket,
docs/decisions/0027-object-storage.md). A recording's container, encrypted from its first byte
(the recorder never hands a blob store anything else), is appended to a local file as the call
goes on, so that a node killed mid-call leaves its verified prefix on disk for
:meth:`Vault.recover <sampledrec.vault.Vault.recover>` to re-seal as truncated, where a writer
that held its ciphertext in memory lost the call (docs/decisions/0035-nodes-scale.md)::

    STAGING/              (STORE/staging for a store whose recordings are on S3; 0700)
      recording/<name>    being written by a recorder of this process, or left by a crash
      outbox/<name>       sealed, waiting for its upload

When its writer closes, the file is fsynced and moved to ``outbox/``, then uploaded whole (a
multipart upload for a long call); the local copy is removed only once the remote store has
the object at its size. An upload that fails (the bucket unreachable) loses nothing: the
sealed file stays in ``outbox/``, reads are served from it, the failure is logged (logger
``sampledrec.vault.staging``) and counted (:attr:`StagedBlobStore.upload_failures`), and
:meth:`Vault.upload_pending <sampledrec.vault.Vault.upload_pending>` tries again (``serve``
does, every 30 seconds, and at start-up).

Reads look on local disk first, then in the remote store. Deleting removes both. Nothing in
clear is ever written: the files are container bytes, and the container header (recording id,
expiry, audio format) is what the bucket shows too.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO, Final, NoReturn, Protocol, runtime_checkable

from .._hazmat.files import fsync_dir, write_atomic
from ..errors import StoreError
from .blobs import BlobStore, BlobWriter, LocalBlobStore, check_blob_name

__all__ = ["StagedBlobStore", "StagedBlobs"]

_logger: Final = logging.getLogger(__name__)


@runtime_checkable
class StagedBlobs(Protocol):
    """A blob store that stages recordings locally and uploads them when sealed."""

    upload_failures: int

    def pending(self) -> list[str]:
        """Sealed blobs not uploaded yet."""
        ...

    def abandoned(self) -> list[str]:
        """Blobs being written that no writer of this process holds (left by a crash)."""
        ...

    def publish(self, name: str) -> bool:
        """Upload blob ``name`` from local disk and remove the local copy; False if the
        upload failed (logged; the local copy is kept)."""
        ...

    def discard(self, name: str) -> bool:
        """Remove the local copy of ``name`` without uploading it."""
        ...


@runtime_checkable
class _Uploads(Protocol):
    def upload(self, name: str, source: BinaryIO, size: int) -> None: ...


class StagedBlobStore:
    """Blobs written under ``root`` on local disk and uploaded to ``remote`` when sealed
    (module docstring). Thread-safe as the recorder uses it: each writer is used by one
    thread at a time."""

    def __init__(self, root: str | os.PathLike[str], remote: BlobStore) -> None:
        self.root = Path(root)
        self.remote = remote
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._writing = LocalBlobStore(self.root / "recording", create=True)
            self._outbox = LocalBlobStore(self.root / "outbox", create=True)
        except OSError as exc:
            raise StoreError(
                f"cannot use the staging folder {self.root} for recordings in progress: "
                f"{exc.strerror or exc}; it must be a writable local folder (mode 0700)"
            ) from None
        self._live: set[str] = set()
        self._lock = threading.Lock()
        self.upload_failures = 0

    def __repr__(self) -> str:
        return f"StagedBlobStore({str(self.root)!r}, {self.remote!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a StagedBlobStore holds its remote store's credentials")

    # -- the protocol -------------------------------------------------------------------------

    def create(self, name: str) -> BlobWriter:
        check_blob_name(name)
        if self._local(name) is not None or self._remote_has(name):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
        writer = _StagedWriter(self, name, self._writing.create(name))
        with self._lock:
            self._live.add(name)
        return writer

    def put(self, name: str, data: bytes) -> None:
        """Replace ``name`` whole: kept in ``outbox/`` (durable) and uploaded; an upload that
        fails is logged and retried later, as for a sealed recording."""
        write_atomic(self._outbox_path(name, parent=True), bytes(data), replace=True)
        self._writing.delete(name)
        self.publish(name)

    def open(self, name: str) -> BinaryIO:
        local = self._local(name)
        if local is not None:
            with contextlib.suppress(FileNotFoundError):  # uploaded meanwhile: read it there
                return open(local, "rb")
        return self.remote.open(name)

    def size(self, name: str) -> int:
        local = self._local(name)
        if local is not None:
            with contextlib.suppress(FileNotFoundError):
                return local.stat().st_size
        return self.remote.size(name)

    def exists(self, name: str) -> bool:
        return self._local(name) is not None or self.remote.exists(name)

    def delete(self, name: str) -> bool:
        with self._lock:
            self._live.discard(name)
        here = self._writing.delete(name) | self._outbox.delete(name)
        return self.remote.delete(name) or here

    def list(self, prefix: str = "") -> list[str]:
        return sorted(
            set(self._writing.list(prefix))
            | set(self._outbox.list(prefix))
            | set(self.remote.list(prefix))
        )

    # -- staging ------------------------------------------------------------------------------

    def pending(self) -> builtins.list[str]:
        return self._outbox.list()

    def abandoned(self) -> builtins.list[str]:
        with self._lock:
            live = set(self._live)
        return [name for name in self._writing.list() if name not in live]

    def publish(self, name: str) -> bool:
        with self._lock:
            if name in self._live:
                raise StoreError(f"blob {name!r} is still being written; close its writer first")
        if self._writing.exists(name):
            self._seal_locally(name)
        path = self._outbox_path(name)
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if isinstance(self.remote, _Uploads):
                    self.remote.upload(name, fh, size)
                else:
                    self.remote.put(name, fh.read())
            uploaded = self.remote.size(name)
            if uploaded != size:
                raise StoreError(
                    f"the object storage holds {uploaded} bytes of blob {name!r} after its "
                    f"upload, not {size}"
                )
        except FileNotFoundError:
            return not self._outbox.exists(name)  # published (or deleted) meanwhile
        except (StoreError, OSError) as exc:
            with self._lock:
                self.upload_failures += 1
            _logger.warning(
                "upload of recording %s failed, kept in %s and retried later: %s",
                name,
                self.root / "outbox",
                exc,
            )
            return False
        self._outbox.delete(name)  # only once the remote store has it whole
        return True

    def discard(self, name: str) -> bool:
        with self._lock:
            self._live.discard(name)
        return self._writing.delete(name) | self._outbox.delete(name)

    # -- helpers ------------------------------------------------------------------------------

    def _local(self, name: str) -> Path | None:
        for folder in (self._writing, self._outbox):
            path = folder.root / check_blob_name(name)
            if path.is_file():
                return path
        return None

    def _remote_has(self, name: str) -> bool:
        """Whether the remote store has ``name``; False if it cannot be asked: a recording
        (a fresh random name) is then still recorded, and uploaded once it is back."""
        try:
            return self.remote.exists(name)
        except StoreError as exc:
            _logger.warning("cannot ask the object storage about %s: %s", name, exc)
            return False

    def _outbox_path(self, name: str, *, parent: bool = False) -> Path:
        path = self._outbox.root / check_blob_name(name)
        if parent and not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_dir(path.parent.parent)
        return path

    def _seal_locally(self, name: str) -> None:
        """Move a written blob from ``recording/`` to ``outbox/`` (it is fsynced already)."""
        source = self._writing.root / check_blob_name(name)
        target = self._outbox_path(name, parent=True)
        os.replace(source, target)
        fsync_dir(target.parent)
        fsync_dir(source.parent)

    def _closed(self, name: str) -> None:
        with self._lock:
            self._live.discard(name)
        self._seal_locally(name)
        self.publish(name)


class _StagedWriter:
    """A blob being written to local disk; on close, moved to the outbox and uploaded."""

    def __init__(self, store: StagedBlobStore, name: str, local: BlobWriter) -> None:
        self._store = store
        self.name = name
        self._local = local
        self._closed = False

    def __repr__(self) -> str:
        return f"<staged blob writer {self.name!r}{' closed' if self._closed else ''}>"

    def write(self, data: bytes | memoryview) -> int:
        if self._closed:
            raise ValueError(f"the writer of blob {self.name!r} is closed")
        return self._local.write(data)

    def sync(self) -> None:
        self._local.sync()

    def close(self) -> None:
        if self._closed:
            return
        self._local.close()  # fsynced: durable on this node before anything else
        self._closed = True
        self._store._closed(self.name)
