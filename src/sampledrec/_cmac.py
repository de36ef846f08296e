"""Low-level, vectorised AES-256-CMAC (NIST SP 800-38B, RFC 4493) over whole arrays.

This is the sharp tool under :mod:`sampledrec.draw`: pure array functions, no validation of
call references, raw key bytes in. Users call :func:`sampledrec.draw_many` instead.

CMAC is CBC-MAC with a tweaked last block, so it can be computed *column-wise*: block ``j`` of
every message is chained in one batched AES-ECB call, and a batch of ``n`` messages of at most
``b`` blocks costs ``b`` calls into OpenSSL, whatever ``n`` is. Rows are ordered by decreasing
block count so that the messages still running at column ``j`` are always a prefix of the batch
(contiguous memory, no masks).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

BLOCK: Final = 16
_RB: Final = 0x87  # the constant R_128 of SP 800-38B

U8Array = npt.NDArray[np.uint8]
U64Array = npt.NDArray[np.uint64]


def _ecb(key: bytes) -> CipherContext:
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor()


def _double(block: int) -> int:
    """Multiply by x in GF(2^128), as SP 800-38B's subkey generation does."""
    block <<= 1
    if block >> 128:
        block = (block ^ _RB) & ((1 << 128) - 1)
    return block


def subkeys(key: bytes) -> tuple[bytes, bytes]:
    """Return CMAC's subkeys ``(K1, K2)`` for an AES key."""
    ell = int.from_bytes(_ecb(key).update(bytes(BLOCK)), "big")
    k1 = _double(ell)
    k2 = _double(k1)
    return k1.to_bytes(BLOCK, "big"), k2.to_bytes(BLOCK, "big")


CHUNK_ROWS: Final = 1 << 15  # 512 KiB of 16-byte blocks: each step stays in the CPU cache


def cmac_rows(key: bytes, msgs: U8Array, lengths: npt.NDArray[np.int64] | None = None) -> U64Array:
    """AES-CMAC of every row of ``msgs``; returns the tags as an ``(n, 2)`` uint64 array.

    ``msgs`` is an ``(n, w)`` uint8 array. When ``lengths`` is ``None`` every row is a whole
    ``w``-byte message; otherwise row ``i`` is the message ``msgs[i, :lengths[i]]`` and the bytes
    after it must be zero. Lengths must be at least 1 (the caller validates). The tag bytes are
    the rows of the result viewed as uint8 (``result.view(np.uint8)``), in memory order.
    """
    n = msgs.shape[0]
    tags = np.empty((n, 2), dtype=np.uint64)
    _run(key, msgs, lengths, lambda s, e, t: tags.__setitem__(slice(s, e), t))
    return tags


def draws_rows(key: bytes, msgs: U8Array, lengths: npt.NDArray[np.int64] | None = None) -> U64Array:
    """The 56-bit draws of every row of ``msgs`` (same conventions as :func:`cmac_rows`)."""
    n = msgs.shape[0]
    draws = np.empty(n, dtype=np.uint64)

    def sink(s: int, e: int, t: U64Array) -> None:
        # Bytes 0..7 of each tag read big-endian: numpy converts while copying.
        np.copyto(draws[s:e], t.view(">u8")[:, 0])

    _run(key, msgs, lengths, sink)
    np.right_shift(draws, np.uint64(8), out=draws)
    return draws


class _Ctx:
    """Per-call state: the ECB context, subkeys tiled for chunk-wide XORs, scratch buffers."""

    def __init__(self, key: bytes, rows: int) -> None:
        k1, k2 = subkeys(key)
        self.enc = _ecb(key)
        self.k1 = np.tile(np.frombuffer(k1, dtype=np.uint64), rows).reshape(rows, 2)
        self.k2 = np.tile(np.frombuffer(k2, dtype=np.uint64), rows).reshape(rows, 2)
        self.x = np.empty((rows, 2), dtype=np.uint64)
        self.y = np.empty(2 * rows + 2, dtype=np.uint64)  # update_into wants a spare block
        self.y8 = memoryview(cast(Any, self.y.view(np.uint8)))


def _run(
    key: bytes,
    msgs: U8Array,
    lengths: npt.NDArray[np.int64] | None,
    sink: Callable[[int, int, U64Array], None],
) -> None:
    n = msgs.shape[0]
    if n == 0:
        return
    ctx = _Ctx(key, min(n, CHUNK_ROWS))
    for s in range(0, n, CHUNK_ROWS):
        e = min(n, s + CHUNK_ROWS)
        sink(s, e, _chunk(ctx, msgs[s:e], None if lengths is None else lengths[s:e]))


def _chunk(ctx: _Ctx, msgs: U8Array, lengths: npt.NDArray[np.int64] | None) -> U64Array:
    n, width = msgs.shape
    if lengths is not None and int(lengths.min()) == int(lengths.max()):
        width = int(lengths[0])
        msgs, lengths = msgs[:, :width], None

    if lengths is None:
        nblocks = max(1, -(-width // BLOCK))
        complete = width % BLOCK == 0
        if nblocks == 1 and complete and msgs.flags.c_contiguous:
            # The common binary case (16-byte UUIDs): one XOR, one AES call.
            np.bitwise_xor(msgs.view(np.uint64).reshape(n, 2), ctx.k1[:n], out=ctx.x[:n])
            return _encrypt(ctx, n)
        padded = np.zeros((n, nblocks * BLOCK), dtype=np.uint8)
        padded[:, :width] = msgs
        if not complete:
            padded[:, width] = 0x80
        blocks = padded.view(np.uint64).reshape(n, nblocks, 2)
        blocks[:, nblocks - 1] ^= (ctx.k1 if complete else ctx.k2)[:n]
        return _chain(ctx, blocks, [n] * nblocks)

    nb = np.maximum(1, (lengths + (BLOCK - 1)) // BLOCK)
    max_nb = int(nb.max())
    same_nb = int(nb.min()) == max_nb
    if same_nb:
        # Lengths differ but every message has the same number of blocks (typical of
        # Call-IDs): no reordering needed, only per-row padding and subkeys.
        order = None
        lengths_s, nb_s, src = lengths, nb, msgs
    else:
        order = np.argsort(-nb, kind="stable")
        lengths_s, nb_s, src = lengths[order], nb[order], msgs[order]
    padded = np.zeros((n, max_nb * BLOCK), dtype=np.uint8)
    w = min(width, max_nb * BLOCK)
    padded[:, :w] = src[:, :w]
    complete = (lengths_s % BLOCK) == 0
    rows = np.flatnonzero(~complete)
    padded[rows, lengths_s[rows]] = 0x80
    blocks = padded.view(np.uint64).reshape(n, max_nb, 2)
    if same_nb:
        blocks[:, max_nb - 1] ^= np.where(complete[:, None], ctx.k1[:n], ctx.k2[:n])
        return _chain(ctx, blocks, [n] * max_nb)
    idx = (np.arange(n), nb_s - 1)
    blocks[idx] ^= np.where(complete[:, None], ctx.k1[:n], ctx.k2[:n])
    counts = [int(np.count_nonzero(nb_s > j)) for j in range(max_nb)]
    tags = np.empty((n, 2), dtype=np.uint64)
    tags[order] = _chain(ctx, blocks, counts)
    return tags


def _encrypt(ctx: _Ctx, n: int) -> U64Array:
    ctx.enc.update_into(memoryview(cast(Any, ctx.x[:n].reshape(-1).view(np.uint8))), ctx.y8)
    return ctx.y[: 2 * n].reshape(n, 2)


def _chain(ctx: _Ctx, blocks: U64Array, counts: list[int]) -> U64Array:
    """CBC-MAC with a zero IV over ``blocks`` (n, b, 2); ``counts[j]`` rows are live at column j.

    Rows are sorted by decreasing block count, so the live rows are always a prefix."""
    n, nblocks, _ = blocks.shape
    tags = np.empty((n, 2), dtype=np.uint64)
    x = ctx.x
    np.copyto(x[:n], blocks[:, 0])
    for j in range(nblocks):
        live = counts[j]
        yj = _encrypt(ctx, live)
        nxt = counts[j + 1] if j + 1 < nblocks else 0
        if nxt < live:
            tags[nxt:live] = yj[nxt:live]
        if nxt:
            np.bitwise_xor(yj[:nxt], blocks[:nxt, j + 1], out=x[:nxt])
    return tags


def draws_from_tags(tags: U64Array) -> U64Array:
    """The 56-bit draw of each tag: its first 7 bytes as a big-endian integer (DESIGN.md §4)."""
    first = tags[:, 0]
    if sys.byteorder == "little":
        first = first.byteswap()
    return np.right_shift(first, np.uint64(8))


def cmac(key: bytes, msg: bytes) -> bytes:
    """Scalar AES-CMAC through the same code path (for tests and small inputs)."""
    arr = np.frombuffer(msg, dtype=np.uint8).reshape(1, len(msg))
    return cmac_rows(key, arr).view(np.uint8).tobytes()
