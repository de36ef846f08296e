"""A witness's durable state: per log origin, the latest checkpoint it verified, and nothing else.

::

    STATE/
      witness.json                  format marker
      locks/<sha256(origin)[:32]>   held (flock) while a checkpoint of that origin is checked
                                    and saved
      logs/<sha256(origin)[:32]>    the latest verified checkpoint of that origin: the note as
                                    the log sent it, then the witness's cosignature line(s)

Each file is replaced whole: a temporary file beside it is written and fsynced, renamed over it,
and the folder fsynced. A kill at any moment leaves the old checkpoint or the new one, never a
mix; and since the witness cosigns a checkpoint only after its file is durable, every
cosignature it ever gave is on one chain of consistent checkpoints, whatever the moment of a
crash (docs/decisions/0029-witness.md). The check against the stored checkpoint and the save
run under a ``flock`` of the origin's lock file (:meth:`WitnessState.lock`), so that two
witness processes started on one folder by mistake cannot each cosign one of two forks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from .._hazmat.files import write_atomic
from .._hazmat.locking import wait_for_flock
from ..errors import CheckpointError, StoreError
from .note import NoteCheckpoint, parse_note

__all__ = ["WitnessState"]

STATE_FORMAT: Final = "sampledrec-witness-state"


class WitnessState:
    """The folder of a witness's state (created on first use, 0700)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            (self.path / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.path / "locks").mkdir(mode=0o700, exist_ok=True)
            marker = self.path / "witness.json"
            if not marker.exists():
                write_atomic(marker, json.dumps({"format": STATE_FORMAT, "version": 1}).encode())
            elif json.loads(marker.read_bytes()).get("format") != STATE_FORMAT:
                raise StoreError(f"{self.path} is not a witness's state folder")
        except (OSError, ValueError, AttributeError) as exc:
            raise StoreError(f"cannot use the witness state folder {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def lock(self, origin: str, timeout: float = 30.0) -> Iterator[None]:
        """Hold ``origin``'s lock, across threads and processes (check, save, cosign)."""
        path = self.path / "locks" / self._file(origin).name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            wait_for_flock(
                fd,
                timeout=timeout,
                poll=0.002,
                held=f"{path} is held by another process for more than {timeout:g} s; is a "
                "second witness running on this state folder?",
            )
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _file(self, origin: str) -> Path:
        return self.path / "logs" / hashlib.sha256(origin.encode("utf-8")).hexdigest()[:32]

    def latest(self, origin: str) -> NoteCheckpoint | None:
        """The latest checkpoint verified for ``origin``, or ``None``."""
        try:
            data = self._file(origin).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read the witness state of {origin!r}: {exc}") from exc
        try:
            cp = parse_note(data)
        except CheckpointError as exc:
            # Never written partially (write_atomic): this is damage, and guessing would risk
            # cosigning a fork. The operator must look.
            raise StoreError(f"the witness state of {origin!r} is damaged: {exc}") from None
        if cp.origin != origin:
            raise StoreError(f"the witness state file of {origin!r} holds {cp.origin!r}")
        return cp

    def save(self, checkpoint: NoteCheckpoint, cosignatures: bytes) -> None:
        """Make ``checkpoint`` (with the cosignature lines about to be given) the latest of its
        origin, durably, before the cosignature is returned to anyone."""
        write_atomic(self._file(checkpoint.origin), checkpoint.note + cosignatures, replace=True)
