"""Low-level, vectorised AES-256-CMAC (NIST SP 800-38B, RFC 4493) over whole arrays.

This is the sharp tool under :mod:`sampledrec.draw`: pure array functions, no validation of
call references, raw key bytes in. Users call :func:`sampledrec.draw_many` instead.

CMAC is CBC-MAC with a tweaked last block, so it can be computed *column-wise*: block ``j`` of
every message is chained in one batched AES-ECB call, and a batch of ``n`` messages of at most
``b`` blocks costs ``b`` calls into OpenSSL, whatever ``n`` is. Rows are ordered by decreasing
block count so that the messages still running at column ``j`` are always a prefix of the batch
(contiguous memory, no masks). Each chunk of rows is first cut into *block columns*, one
contiguous array per block index, so that every AES call and every chaining XOR works on
contiguous memory.
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
_V16: Final = np.dtype("V16")  # one AES block as a single numpy item

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
    """Per-call state: the ECB context, the last-block table, scratch buffers.

    Buffers are allocated once and reused by every chunk: fresh ones would cost a page fault
    per 4 KiB touched, which is as much as the work done in them.
    """

    def __init__(self, key: bytes, rows: int) -> None:
        k1, k2 = subkeys(key)
        self.enc = _ecb(key)
        # K1 tiled to full rows: a broadcast (n, 2) ^ (2,) XOR runs numpy's inner loop on 2
        # elements per row, several times slower than a contiguous (n, 2) ^ (n, 2).
        self.k1 = np.tile(np.frombuffer(k1, dtype=np.uint64), rows).reshape(rows, 2)
        # What SP 800-38B does to the last block, by message length mod 16: a complete block is
        # XORed with K1; a partial one gets "10*" padding and is XORed with K2. The bytes after
        # a message are zero, so the padding is an XOR with 0x80 at byte ``length % 16`` and
        # the whole change is one XOR with ``last[length % 16]``.
        last = np.empty((BLOCK, BLOCK), dtype=np.uint8)
        last[0] = np.frombuffer(k1, dtype=np.uint8)
        last[1:] = np.frombuffer(k2, dtype=np.uint8)
        last[np.arange(1, BLOCK), np.arange(1, BLOCK)] ^= 0x80
        self.last = last.view(np.uint64)  # (16, 2)
        self.rows = rows
        self.cols = np.empty((0, rows, 2), dtype=np.uint64)
        self.y = np.empty(2 * rows + 2, dtype=np.uint64)  # update_into wants a spare block
        self.y8 = memoryview(cast(Any, self.y.view(np.uint8)))

    def columns(self, nblocks: int, n: int) -> U64Array:
        """Scratch space for ``nblocks`` block columns of ``n`` rows, as ``(nblocks, n, 2)``."""
        if self.cols.shape[0] < nblocks:
            self.cols = np.empty((nblocks, self.rows, 2), dtype=np.uint64)
        return self.cols[:nblocks, :n]


def _run(
    key: bytes,
    msgs: U8Array,
    lengths: npt.NDArray[np.int64] | None,
    sink: Callable[[int, int, U64Array], None],
) -> None:
    n = msgs.shape[0]
    if n == 0:
        return
    msgs = np.ascontiguousarray(msgs)  # _columns reads the rows through the raw buffer
    ctx = _Ctx(key, min(n, CHUNK_ROWS))
    for s in range(0, n, CHUNK_ROWS):
        e = min(n, s + CHUNK_ROWS)
        sink(s, e, _chunk(ctx, msgs[s:e], None if lengths is None else lengths[s:e]))


def _chunk(ctx: _Ctx, msgs: U8Array, lengths: npt.NDArray[np.int64] | None) -> U64Array:
    n, width = msgs.shape
    if lengths is None:
        shortest = longest = width
    else:
        shortest, longest = int(lengths.min()), int(lengths.max())

    if lengths is None and width == BLOCK:
        # The common binary case (16-byte UUIDs): one XOR, one AES call.
        x = np.bitwise_xor(msgs.view(np.uint64), ctx.k1[:n], out=ctx.columns(1, n)[0])
        return _encrypt(ctx, x)

    nblocks = (longest + BLOCK - 1) // BLOCK  # lengths are at least 1: no empty message
    if lengths is None or shortest == longest:
        # One length for all (fixed-width references): the same last-block change for all,
        # as two 1-D XORs with a scalar (a broadcast (n, 2) ^ (2,) would loop per row).
        cols = _columns(ctx, msgs, [n] * nblocks)
        for word in range(2):
            cols[nblocks - 1, :, word] ^= ctx.last[longest % BLOCK, word]
        return _chain(ctx, cols, [n] * nblocks)
    if (shortest + BLOCK - 1) // BLOCK == nblocks:
        # Lengths differ but every message has the same number of blocks (typical of
        # Call-IDs): no reordering needed.
        cols = _columns(ctx, msgs, [n] * nblocks)
        cols[nblocks - 1] ^= np.take(ctx.last, lengths & (BLOCK - 1), axis=0)
        return _chain(ctx, cols, [n] * nblocks)

    # Order rows by decreasing block count so that the rows still running at column j are a
    # prefix. The sort key fits in a byte, which lets numpy use its radix sort; np.take copies
    # whole rows much faster than fancy indexing does.
    nb = (lengths + (BLOCK - 1)) // BLOCK
    order = np.argsort((nblocks - nb).astype(np.uint8), kind="stable")
    msgs = np.take(msgs, order, axis=0)
    lengths = np.take(lengths, order)
    per_count = np.bincount(nb, minlength=nblocks + 1).tolist()
    counts = [sum(per_count[j + 1 :]) for j in range(nblocks)]  # rows with more than j blocks
    cols = _columns(ctx, msgs, counts)
    last = np.take(ctx.last, lengths & (BLOCK - 1), axis=0)
    for j in range(nblocks):
        done = counts[j + 1] if j + 1 < nblocks else 0
        cols[j, done : counts[j]] ^= last[done : counts[j]]  # rows whose last block is j
    tags = np.empty((n, 2), dtype=np.uint64)
    # Scatter back to input order one 16-byte item per tag (a 2-D scatter is ten times slower).
    tags.view(_V16)[:, 0][order] = _chain(ctx, cols, counts).view(_V16)[:, 0]
    return tags


def _columns(ctx: _Ctx, msgs: U8Array, counts: list[int]) -> U64Array:
    """Cut C-contiguous ``(n, w)`` rows into block columns: ``cols[j, i]`` is block ``j`` of row
    ``i`` (bytes ``16j`` to ``16j + 16``, zeros past ``w``), as a ``(len(counts), n, 2)`` array
    in which only the first ``counts[j]`` rows of column ``j`` are filled.

    Copying column by column with each block as one 16-byte item is a single strided loop per
    column, about ten times faster than copying ``(n, 16)`` byte slices (a loop per row). The
    layout then gives every later step contiguous memory: column 0 goes to AES as it is, and
    each XOR of the CBC chain reads and writes one contiguous column.
    """
    n, width = msgs.shape
    cols = ctx.columns(len(counts), n)
    blocks = cols.view(_V16)[..., 0]  # (nblocks, n), one item per block
    for j, live in enumerate(counts):
        start = BLOCK * j
        # Reading 16 bytes from ``start`` in each row runs past the end of a short last
        # block, into the next row; only the rows whose 16 bytes lie inside the buffer are
        # read that way (numpy checks the bounds), and the stray bytes are cleared below.
        inside = min(live, max(0, (n * width - start - BLOCK) // width + 1))
        view = np.ndarray((inside,), dtype=_V16, buffer=msgs, offset=start, strides=(width,))
        np.copyto(blocks[j, :inside], view)
        size = width - start  # bytes of this block inside a row
        if size >= BLOCK:
            continue
        by_byte = cols[j].view(np.uint8)
        by_byte[inside:live, :size] = msgs[inside:live, start:]
        by_byte[inside:live, size:] = 0
        keep = np.frombuffer(bytes([0xFF] * size + [0] * (BLOCK - size)), dtype=np.uint64)
        for word in range(2):
            cols[j, :inside, word] &= keep[word]
    return cols


def _encrypt(ctx: _Ctx, x: U64Array) -> U64Array:
    """AES-ECB of the ``(m, 2)`` contiguous blocks ``x``, into the context's output buffer."""
    m = x.shape[0]
    ctx.enc.update_into(memoryview(cast(Any, x.reshape(-1).view(np.uint8))), ctx.y8)
    return ctx.y[: 2 * m].reshape(m, 2)


def _chain(ctx: _Ctx, cols: U64Array, counts: list[int]) -> U64Array:
    """CBC-MAC with a zero IV over the block columns ``cols`` (b, n, 2), last blocks already
    changed; ``counts[j]`` rows are live at column j, and the live rows are always a prefix.

    The chaining XOR is done in place in the next column, which is then encrypted as is.
    The result may be a view of the context's output buffer, valid until its next use."""
    nblocks, n, _ = cols.shape
    # When every row runs to the last column, the last AES output holds all the tags.
    tags = None if counts[-1] == n else np.empty((n, 2), dtype=np.uint64)
    y = cols[0]
    for j in range(nblocks):
        live = counts[j]
        y = _encrypt(ctx, cols[j, :live])
        nxt = counts[j + 1] if j + 1 < nblocks else 0
        if tags is not None and nxt < live:
            tags[nxt:live] = y[nxt:live]
        if nxt:
            np.bitwise_xor(y[:nxt], cols[j + 1, :nxt], out=cols[j + 1, :nxt])
    return y if tags is None else tags


def draws_from_tags(tags: U64Array) -> U64Array:
    """The 56-bit draw of each tag: its first 7 bytes as a big-endian integer (DESIGN.md §4)."""
    first = tags[:, 0]
    if sys.byteorder == "little":
        first = first.byteswap()
    return np.right_shift(first, np.uint64(8))


def cmac(key: bytes, msg: bytes) -> bytes:
    """Scalar AES-CMAC through the same code path (for tests and small inputs)."""
    if not msg:
        # The batch path never sees empty messages (call references are 1 to 256 bytes):
        # the empty message is one padded block, 0x80 then zeros, XORed with K2.
        _, k2 = subkeys(key)
        return bytes(_ecb(key).update(bytes([k2[0] ^ 0x80]) + k2[1:]))
    arr = np.frombuffer(msg, dtype=np.uint8).reshape(1, len(msg))
    return cmac_rows(key, arr).view(np.uint8).tobytes()
