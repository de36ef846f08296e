"""Where sealed recordings are kept: the :class:`BlobStore` protocol and its local backend.

A blob is one recording's container bytes (already encrypted: nothing in clear ever reaches a
blob store). Blobs are named by the vault, ``<bucket>/<recording id>.sdr``; the catalog row
holds that name. The vault writes a blob as the call is recorded (:meth:`BlobStore.create`,
chunk after chunk, made durable by :meth:`BlobWriter.sync`), replaces it whole after a crash
(:meth:`BlobStore.put`), reads it back with ranged reads (:meth:`BlobStore.open` gives a
seekable file), and deletes it on expiry or erasure.

:class:`LocalBlobStore` keeps blobs under one folder (``STORE/recordings`` by default; folders
0700, files 0600); :class:`~sampledrec.vault.s3.S3BlobStore` keeps them in a bucket of
S3-compatible object storage. An in-memory fake is :class:`sampledrec.testing.MemoryBlobStore`;
every backend passes the contract suite in ``tests/test_backends.py``.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import BinaryIO, Final, Protocol, runtime_checkable

from .._hazmat.files import fsync_dir, write_atomic
from ..errors import InvalidArgument, StoreError

__all__ = ["BlobStore", "BlobWriter", "LocalBlobStore", "check_blob_name"]

_PART: Final = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_NAME: Final = re.compile(rf"{_PART}(?:/{_PART}){{0,3}}")


def check_blob_name(name: object) -> str:
    """Return ``name`` if it can name a blob (1 to 4 ``/``-separated parts of letters, digits,
    ``.``, ``_`` and ``-``, none starting with a dot), else raise
    :class:`~sampledrec.errors.InvalidArgument`.

    >>> check_blob_name("bucket-2027-05-22/8c1f.sdr")
    'bucket-2027-05-22/8c1f.sdr'
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"blob name {name!r} is not valid; names are 1 to 4 '/'-separated parts of letters, "
            "digits, '.', '_' and '-', none starting with '.', such as 'bucket-2027-05-22/id.sdr'"
        )
    return name


@runtime_checkable
class BlobWriter(Protocol):
    """A blob being written, in order. What :meth:`sync` returned for is durable; after a crash
    the blob holds at least that prefix (the vault's recovery re-seals it)."""

    def write(self, data: bytes | memoryview) -> int: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class BlobStore(Protocol):
    """Sealed recordings by name. Implementations: :class:`LocalBlobStore`,
    :class:`~sampledrec.vault.s3.S3BlobStore`, :class:`sampledrec.testing.MemoryBlobStore`.

    ``open`` and ``size`` raise :class:`FileNotFoundError` for a blob that does not exist;
    ``create`` raises :class:`FileExistsError` for one that does. ``delete`` says whether there
    was a blob; it need not be durable at once (what it removes is ciphertext whose key the
    caller destroys, which is what makes it unreadable).
    """

    def create(self, name: str) -> BlobWriter: ...

    def put(self, name: str, data: bytes) -> None: ...

    def open(self, name: str) -> BinaryIO: ...

    def size(self, name: str) -> int: ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...


class _AppendFile:
    """A local blob being written. It opens the file only to append a chunk: a call centre with
    thousands of calls in progress then holds no file descriptor per call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))

    def write(self, data: bytes | memoryview) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return len(data)

    def sync(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sync()
        fsync_dir(self.path.parent)  # the sealed file's name is durable too


class LocalBlobStore:
    """Blobs as files under ``root``: ``root/<name>`` (folders 0700, files 0600).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     blobs = LocalBlobStore(tmp + "/recordings", create=True)
    ...     blobs.put("bucket-2027-05-22/a.sdr", b"sealed bytes")
    ...     with blobs.open("bucket-2027-05-22/a.sdr") as fh:
    ...         _ = fh.seek(7)
    ...         fh.read(5), blobs.list()
    (b'bytes', ['bucket-2027-05-22/a.sdr'])
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise StoreError(
                f"the recordings folder {self.root} does not exist; check the store's "
                "store.json (backends.blobs) or create the folder (mode 0700)"
            )

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, name: str, *, parent: bool = False) -> Path:
        path = self.root / check_blob_name(name)
        if parent:
            folder = path.parent
            if not folder.is_dir():
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                fsync_dir(folder.parent)
        return path

    def create(self, name: str) -> BlobWriter:
        return _AppendFile(self._path(name, parent=True))

    def put(self, name: str, data: bytes) -> None:
        write_atomic(self._path(name, parent=True), bytes(data), replace=True)

    def open(self, name: str) -> BinaryIO:
        return open(self._file(name), "rb")

    def size(self, name: str) -> int:
        return self._file(name).stat().st_size

    def _file(self, name: str) -> Path:
        """The blob's path; :class:`FileNotFoundError` also for a folder, or a name below a
        blob's (which the OS would report as IsADirectoryError or NotADirectoryError)."""
        path = self._path(name)
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return path

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> bool:
        path = self._path(name)
        if not path.is_file():
            return False  # not a blob: missing, a folder, or a name below a blob's
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # The folder is not fsynced: a removal lost to a crash leaves ciphertext whose key the
        # sweep destroys anyway, and a sweep of thousands of recordings would pay one folder
        # fsync each (measured: 2.4x slower, benchmarks/bench_sweep.py).
        return True

    def list(self, prefix: str = "") -> list[str]:
        names = []
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            name = path.relative_to(self.root).as_posix()
            # _NAME also leaves out the temp files of an interrupted put (".<name>.tmp-...").
            if name.startswith(prefix) and _NAME.fullmatch(name):
                names.append(name)
        return sorted(names)
