"""What an audit reads: a store as its operator holds it, or an auditor's kit.

:class:`Evidence` gathers everything the checks read, so that they never reach into a store:

- the log (its bytes, the store id and the **public** key that must have signed it);
- ``sealing``: the keys that open the sealed fields the checks need (anything with
  ``sealing_key(kid)``): a store's keyring, or the kit's ``calls/YYYY-MM`` keys;
- ``sealing_present``: which sealing keys still exist (to tell a destroyed one restored);
- the catalog's rows and holds (:class:`CatalogView`), files (:class:`Files`) and keys
  (:class:`Keys`): read live from a store, or as the kit describes them;
- ``period``: the days a kit covers (its ``--from``/``--to``), outside which nothing is due;
- ``objections``: the objection list as it stands, which the log's changes must replay;
- ``cosigned``: the folder of the checkpoints that witnesses cosigned.

:func:`store_evidence` builds it from a store (the operator's own audit, with its keyring and
key store); :func:`sampledrec.audit.kit.open_kit` from a kit (an outsider's, without a private
key).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from ..errors import SampledrecError
from ..log.storage import LogStorage
from ..vault.catalog import Hold, RecordingRow
from ..vault.recorder import data_key_aad, hold_bucket

__all__ = [
    "CatalogView",
    "Evidence",
    "Files",
    "Keys",
    "StoreFiles",
    "StoreKeys",
    "read_catalog",
    "store_evidence",
    "stream_sha256",
]

_CHUNK: Final = 1 << 20


@dataclass
class CatalogView:
    """The catalog as the audit reads it: rows by recording id, holds by id, and each
    recording's hold memberships (with the wrapped key the hold keeps, when known)."""

    rows: dict[str, RecordingRow] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    members: dict[str, list[tuple[Hold, bytes | None]]] = field(default_factory=dict)


def read_catalog(store: Any) -> CatalogView:
    """Every row, hold and hold membership of a store's catalog."""
    catalog = store.open_catalog()
    try:
        rows = {r.recording_id: r for r in catalog.find()}
        holds = {h.hold_id: h for h in catalog.holds()}
        members: dict[str, list[tuple[Hold, bytes | None]]] = defaultdict(list)
        for h in holds.values():
            for rid, wrapped in catalog.hold_members(h.hold_id):
                members[rid].append((h, wrapped))
    finally:
        catalog.close()
    return CatalogView(rows, holds, dict(members))


class Files(Protocol):
    """The recordings' files, read-only. ``hashed`` says whether :meth:`sha256` reads the
    bytes (a blob store) or repeats what a kit declares."""

    hashed: bool

    def names(self) -> set[str]: ...

    def exists(self, name: str) -> bool: ...

    def sha256(self, name: str) -> tuple[str, int]:
        """The file's SHA-256 (hex) and size; :class:`OSError` when it cannot be read."""
        ...


class Keys(Protocol):
    """The key store, as far as the audit asks it: does a key exist, and can a recording's
    data key still be unwrapped."""

    def has_key(self, name: str) -> bool:
        """Whether the bucket or hold key ``name`` exists."""
        ...

    def readable(
        self, rid: str, bucket: str | None, expires: Sequence[int | None], cat: CatalogView
    ) -> bool:
        """Whether a wrapped key that the catalog still holds for the recording unwraps."""
        ...


class StoreFiles:
    """A blob store's files (:class:`sampledrec.vault.blobs.BlobStore`), hashed as read."""

    hashed = True

    def __init__(self, blobs: Any) -> None:
        self._blobs = blobs

    def names(self) -> set[str]:
        return set(self._blobs.list())

    def exists(self, name: str) -> bool:
        return bool(self._blobs.exists(name))

    def sha256(self, name: str) -> tuple[str, int]:
        with self._blobs.open(name) as fh:
            return stream_sha256(fh)


def stream_sha256(fh: Any) -> tuple[str, int]:
    """The SHA-256 (hex) and size of what a binary file object reads, in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


class StoreKeys:
    """A store's key store: keys looked up, wrapped keys really unwrapped."""

    def __init__(self, keystore: Any) -> None:
        self._keystore = keystore

    def has_key(self, name: str) -> bool:
        return bool(self._keystore.has_bucket(name))

    def readable(
        self, rid: str, bucket: str | None, expires: Sequence[int | None], cat: CatalogView
    ) -> bool:
        row = cat.rows.get(rid)
        wrapped: list[tuple[str, bytes]] = []
        if row is not None and row.wrapped_key is not None:
            wrapped.append((row.bucket or bucket or "", row.wrapped_key))
        wrapped += [(hold_bucket(h.hold_id), w) for h, w in cat.members.get(rid, []) if w]
        for exp in {e for e in expires if e is not None}:
            aad = data_key_aad(rid, exp)
            for b, w in wrapped:
                try:
                    self._keystore.unwrap(b, w, aad=aad)
                except (SampledrecError, ValueError):
                    continue
                return True
        return False


@dataclass
class Evidence:
    """Everything an audit reads (module docstring)."""

    label: str  # the store's folder, or the kit's
    log: LogStorage
    store_id: bytes
    public_key: bytes
    simulated: bool
    sealing: Any  # sealing_key(kid) -> bytes | None
    sealing_present: Callable[[], set[str]] | None
    catalog: Callable[[], CatalogView]
    files: Files
    keys: Keys
    # The days (UTC, first and last included, as YYYY-MM-DD) that a kit covers; None: all.
    period: tuple[str, str] | None = None
    kit: bool = False
    notes: list[str] = field(default_factory=list)
    # The objection list as it stands (pseudonyms, hex); None: not given.
    objections: Callable[[], frozenset[str]] | None = None
    # The folder of the checkpoints that witnesses cosigned (STORE/cosigned, KIT/cosigned).
    cosigned: Path | None = None


def store_evidence(store: Any, keyring: Any | None = None) -> Evidence:
    """A store as its operator holds it: its keyring opens the sealed fields (or ``keyring``),
    its blob store's files are hashed, its key store really unwraps."""
    keyring = keyring if keyring is not None else store.keyring

    def present() -> set[str]:
        return set(keyring.sealing_key_ids())

    return Evidence(
        label=str(store.path),
        log=store.log_storage,
        store_id=store.store_id,
        public_key=store.public_key,
        simulated=store.simulated,
        sealing=keyring,
        sealing_present=present,
        catalog=lambda: read_catalog(store),
        files=StoreFiles(store.blobs),
        keys=StoreKeys(store.keystore),
        objections=store.objection_pseudonyms,
        cosigned=store.path / "cosigned",
    )
