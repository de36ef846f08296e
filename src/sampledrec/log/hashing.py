"""Batched SHA-256 for the log's Merkle tree.

The pure-Python path pays one ``hashlib`` call per leaf and per node (about a microsecond each
on a small server). When the optional C accelerator ``sampledrec.log._merklefast`` is built (at
install time, when a C compiler and the OpenSSL headers are present) whole batches are hashed in
C without holding the GIL. Both paths give identical results; the tests compare them.

The accelerator also writes and reads decision entries, with the layout it was compiled with: it
is used only if that is the layout of :data:`sampledrec.log.format.DECISION`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .format import decision_layout
from .merkle import CompactRange, leaf_hash

__all__ = ["ACCELERATED", "extend", "hash_records", "leaf_hashes", "native"]


def _load_accelerator() -> Any:
    if os.environ.get("SAMPLEDREC_NO_ACCEL"):
        return None
    try:
        fast = importlib.import_module("sampledrec.log._merklefast")
    except ImportError:  # not built: no compiler or OpenSSL headers at install time
        return None
    layout = getattr(fast, "decision_layout", None)
    if layout is None or layout() != decision_layout():
        # Built from other sources than this code (a build left from before a change): its
        # encoder would write decisions this code does not read, into a log that cannot be
        # rewritten. The pure-Python path is slower but right.
        warnings.warn(
            f"{fast.__file__} was built for another decision layout; ignoring it (rebuild it: "
            "python setup.py build_ext --inplace, or reinstall sampledrec)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return fast


_T = TypeVar("_T")
#: The C accelerator module ``sampledrec.log._merklefast`` as loaded, or ``None`` (not built,
#: built for another decision layout, or ``SAMPLEDREC_NO_ACCEL`` set). Besides what this module
#: wraps, the column reader calls its decision scanner through it.
native: Any = _load_accelerator()
ACCELERATED = native is not None
#: The log writer's C encoder for decision batches (``None`` without the accelerator).
encode_decisions: Any = None if native is None else native.encode_decisions


def _tracked(t: _T) -> _T:
    return t


#: ``untrack(t)`` returns the tuple ``t``, which the garbage collector no longer traverses if it
#: holds only values that cannot be part of a cycle. The collector does that itself for plain
#: tuples, never for a named tuple: the log's queue of decision records (up to ``max_batch``
#: named tuples) would be traversed by every collection, which made queueing a decision take
#: about 1.7 times as long here. Without the accelerator, ``t`` stays tracked.
untrack: Callable[[_T], _T] = _tracked if native is None else native.untrack

_sha256 = hashlib.sha256
_U32 = struct.Struct(">I")


def leaf_hashes(entries: Sequence[bytes]) -> list[bytes]:
    """``SHA-256(0x00 || entry)`` for each entry."""
    if native is not None:
        out: bytes = native.leaf_hashes(entries)
        return [out[i : i + 32] for i in range(0, len(out), 32)]
    return [_sha256(b"\x00" + e).digest() for e in entries]


def extend(cr: CompactRange, leaves: Sequence[bytes]) -> None:
    """Append leaf hashes to a compact range, in place."""
    if native is not None and leaves:
        cr.hashes, cr.size = native.extend(cr.hashes, cr.size, b"".join(leaves))
        return
    cr.extend(leaves)


def hash_records(
    buf: bytes | memoryview, offset: int, count: int, cr: CompactRange, probe: int = 0
) -> tuple[int, npt.NDArray[np.uint64], npt.NDArray[np.uint8]] | None:
    """Parse ``count`` records (u32 big-endian length, then the entry) from ``buf[offset:]``,
    append their leaf hashes to ``cr`` and return ``(end_offset, entry_offsets, probes)``, where
    ``probes`` is an ``(count, probe)`` array of each entry's first ``probe`` bytes (zero-padded);
    ``None`` if the records run past the buffer (``cr`` is then left unchanged)."""
    if native is not None:
        try:
            got = native.hash_records(buf, offset, count, cr.hashes, cr.size, probe)
        except ValueError:  # a count that cannot fit in the buffer
            return None
        if got is None:
            return None
        cr.hashes, cr.size, end, offs, probes = got
        return (
            end,
            np.frombuffer(offs, dtype=np.uint64),
            np.frombuffer(probes, dtype=np.uint8).reshape(count, probe),
        )
    pos = offset
    size = len(buf)
    offsets = np.empty(count, dtype=np.uint64)
    probes_out = np.zeros((count, probe), dtype=np.uint8)
    leaves = []
    for i in range(count):
        if pos + 4 > size:
            return None
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        if n > size - pos:
            return None
        offsets[i] = pos
        entry = bytes(buf[pos : pos + n])
        if probe:
            head = entry[:probe]
            probes_out[i, : len(head)] = np.frombuffer(head, dtype=np.uint8)
        leaves.append(leaf_hash(entry))
        pos += n
    cr.extend(leaves)
    return pos, offsets, probes_out


def leaf_records(
    buf: bytes | memoryview, offset: int, count: int, probe: int = 0
) -> tuple[int, npt.NDArray[np.uint64], npt.NDArray[np.uint8], bytes, npt.NDArray[np.bool_]] | None:
    """Like :func:`hash_records` without the tree: ``(end, offsets, probes, leaf hashes,
    well_formed)``, the leaf hashes concatenated and ``well_formed[i]`` telling whether entry
    ``i`` is a well-formed v1 entry (version byte, header, fields ending exactly at its end with
    ascending tags). Releases the GIL in C, so batches can be hashed on several threads;
    :func:`extend_concat` then adds them to the tree in order."""
    if native is not None:
        try:
            got = native.leaf_records(buf, offset, count, probe)
        except ValueError:  # a count that cannot fit in the buffer
            return None
        if got is None:
            return None
        end, offs, probes, leaves, valid = got
        return (
            end,
            np.frombuffer(offs, dtype=np.uint64),
            np.frombuffer(probes, dtype=np.uint8).reshape(count, probe),
            leaves,
            np.frombuffer(valid, dtype=np.uint8).astype(bool),
        )
    cr = CompactRange()
    got_py = hash_records(buf, offset, count, cr, probe)
    if got_py is None:
        return None
    end, offs_py, probes_py = got_py
    entries = [bytes(buf[int(o) : int(o) + _U32.unpack_from(buf, int(o) - 4)[0]]) for o in offs_py]
    leaves_py = b"".join(leaf_hash(e) for e in entries)
    valid_py = np.asarray([_entry_ok(e) for e in entries], dtype=bool)
    return end, offs_py, probes_py, leaves_py, valid_py


def _entry_ok(e: bytes) -> bool:
    if len(e) < 10 or e[0] != 1:
        return False
    pos, last = 10, -1
    while pos < len(e):
        if pos + 2 > len(e):
            return False
        tag, n = e[pos], e[pos + 1]
        pos += 2
        if n == 0xFF:
            if pos + 4 > len(e):
                return False
            (n,) = _U32.unpack_from(e, pos)
            pos += 4
        if tag <= last or n > len(e) - pos:
            return False
        last = tag
        pos += n
    return True


def extend_concat(cr: CompactRange, leaves: bytes) -> None:
    """Append concatenated 32-byte leaf hashes to a compact range, in place."""
    if native is not None and leaves:
        cr.hashes, cr.size = native.extend(cr.hashes, cr.size, leaves)
        return
    cr.extend([leaves[i : i + 32] for i in range(0, len(leaves), 32)])
