"""Durable private files: every write of the store goes through these (0600, fsync of the file
and of its folder), so that a crash leaves either the old content or the new one, never a mix,
and no other user can read what was written."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["create_exclusive", "fsync_dir", "write_atomic", "write_new"]


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_file(final: Path, data: bytes) -> Path:
    """A fsynced 0600 file holding ``data``, beside ``final``, under a random name."""
    tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write ``path`` (0600) whole or not at all: a temp file beside it, fsynced, renamed into
    place, then the folder fsynced. Without ``replace`` an existing file is refused with
    :class:`FileExistsError` and left as it was."""
    tmp = _temp_file(path, data)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails, atomically, if the file exists
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` (0600) holding ``data`` unless it exists; False if another thread or
    process created it first (its content is then theirs, whole)."""
    try:
        write_atomic(path, data)
    except FileExistsError:
        return False
    return True


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (0600, :class:`FileExistsError` if it exists) and fsync it. For files
    that are only appended to afterwards and whose folder the caller fsyncs."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
