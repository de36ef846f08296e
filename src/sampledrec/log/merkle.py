"""RFC 6962 / RFC 9162 Merkle trees: hashes, compact ranges, inclusion and consistency proofs.

``leaf hash = SHA-256(0x00 || entry)``, ``node hash = SHA-256(0x01 || left || right)``, the root of
an empty tree is ``SHA-256("")``. A :class:`CompactRange` holds the roots of the perfect subtrees
on the right edge of a tree (at most 64 hashes), which is all that is needed to append leaves and
compute the root: the log stores it after every batch.

Proof verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 and needs only hashes, the sizes and
the root(s), so an auditor can check a proof with a checkpoint and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "consistency_proof",
    "consistency_proof_from_edge",
    "inclusion_proof",
    "leaf_hash",
    "leaf_hashes",
    "node_hash",
    "root_of",
    "subtrees",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def leaf_hashes(entries: Iterable[bytes]) -> list[bytes]:
    """Leaf hashes of many entries (the reference; :mod:`.hashing` batches them in C)."""
    return [leaf_hash(e) for e in entries]


class CompactRange:
    """The perfect subtrees that cover leaves ``[begin, size)`` of a Merkle tree, left to right.

    With ``begin`` 0 (the usual case) this is the right edge of the tree of ``size`` leaves: one
    hash per set bit of ``size``, largest subtree first, enough to append leaves and compute the
    root. Appending a leaf costs at most ``log2(size)`` node hashes.

    A range that starts further on (``begin`` > 0) covers one stretch of leaves, for instance
    one segment of a log verified on its own: its subtrees grow to the right of ``begin`` and
    shrink towards ``size``. :meth:`merge` joins it to the range that ends at its ``begin``, in
    at most ``2 log2(size)`` node hashes, so that a log verified in independent partitions
    gives the same tree, and the same root, as one verified from its first entry.
    """

    __slots__ = ("begin", "hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = (), *, begin: int = 0) -> None:
        if begin < 0 or size < begin:
            what = f"leaves {begin} to {size}" if begin else f"size {size}"
            raise ValueError(f"a compact range cannot be of {what}")
        want = len(subtrees(begin, size))
        if len(hashes) != want:
            what = f"leaves {begin} to {size}" if begin else f"size {size}"
            raise ValueError(f"a compact range of {what} has {want} hashes, got {len(hashes)}")
        self.begin = begin
        self.size = size
        self.hashes = list(hashes)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self.hashes, begin=self.begin)

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash."""
        if self.begin:
            self._push(0, self.size, leaf)
            self.size += 1
            return
        h = leaf
        size = self.size
        hashes = self.hashes
        # Merge with the subtrees whose sizes are the trailing one-bits of ``size``.
        while size & 1:
            h = node_hash(hashes.pop(), h)
            size >>= 1
        hashes.append(h)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def merge(self, other: CompactRange) -> None:
        """Append the range ``other``, which must start where this one ends, in place."""
        if other.begin != self.size:
            raise ValueError(
                f"cannot append leaves {other.begin} to {other.size} to a range ending at "
                f"{self.size}"
            )
        for (level, start), h in zip(subtrees(other.begin, other.size), other.hashes, strict=True):
            self._push(level, start, h)
        self.size = other.size

    def _push(self, level: int, start: int, h: bytes) -> None:
        # Put the subtree (level, start) after the last one, then merge siblings upwards: a
        # subtree is a left sibling when its index at its level is even, and the range only
        # merges subtrees that lie wholly in it.
        nodes = subtrees(self.begin, start)
        hashes = self.hashes
        while nodes:
            left_level, left_start = nodes[-1]
            if left_level != level or (left_start >> level) & 1:
                break
            h = node_hash(hashes.pop(), h)
            nodes.pop()
            level, start = level + 1, left_start
        hashes.append(h)

    def root(self) -> bytes:
        if self.begin:
            raise ValueError("only a range that starts at leaf 0 has a root")
        if not self.hashes:
            return EMPTY_ROOT
        h = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            h = node_hash(left, h)
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self.begin == other.begin and self.size == other.size and self.hashes == other.hashes

    def __repr__(self) -> str:
        if self.begin:
            return f"CompactRange(begin={self.begin}, size={self.size})"
        return f"CompactRange(size={self.size}, root={self.root().hex()[:16]}...)"


def subtrees(begin: int, end: int) -> list[tuple[int, int]]:
    """The (level, first leaf) of the largest aligned perfect subtrees that cover leaves
    ``[begin, end)``, left to right: each as large as its start's alignment and the end allow."""
    out = []
    pos = begin
    while pos < end:
        level = (end - pos).bit_length() - 1
        if pos:
            level = min(level, (pos & -pos).bit_length() - 1)
        out.append((level, pos))
        pos += 1 << level
    return out


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The root hash of the tree over these leaf hashes."""
    cr = CompactRange()
    cr.extend(leaves)
    return cr.root()


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 6962: the largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    return root_of(leaves[lo:hi])


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` leaf hashes."""
    n = len(leaves) if size is None else size
    if not 0 <= index < n <= len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of size {n}")
    proof: list[bytes] = []
    lo, hi = 0, n
    # Walk down from the root, collecting the sibling subtree at each level.
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            proof.append(_subtree_root(leaves, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_subtree_root(leaves, lo, lo + k))
            lo = lo + k
    proof.reverse()
    return proof


def consistency_proof(leaves: Sequence[bytes], size1: int, size2: int | None = None) -> list[bytes]:
    """The proof that the tree of ``size1`` leaves is a prefix of the tree of ``size2``."""
    n = len(leaves) if size2 is None else size2
    if not 0 <= size1 <= n <= len(leaves):
        raise ValueError(f"no consistency proof from size {size1} to size {n}")
    if size1 == 0 or size1 == n:
        return []
    return _subproof(leaves, size1, 0, n, True)


def consistency_proof_from_edge(edge: CompactRange, tail: Sequence[bytes]) -> list[bytes]:
    """The consistency proof from size ``m = edge.size`` to ``m + len(tail)``, from the compact
    range at ``m`` and the leaf hashes after it only (not the whole tree).

    Every node of an RFC 6962 consistency proof lies either wholly before ``m``, and is then
    one of the perfect subtrees of the compact range at ``m``, or wholly at or after ``m``: so a
    log that keeps its compact range at each checkpoint proves each new checkpoint to a witness
    from the entries appended since, in time proportional to them.
    """
    m, n = edge.size, edge.size + len(tail)
    if m == 0 or m == n:
        return []
    perfect: dict[tuple[int, int], bytes] = {}
    lo = 0
    for bit, h in zip(
        (b for b in range(m.bit_length() - 1, -1, -1) if m >> b & 1), edge.hashes, strict=True
    ):
        perfect[(lo, lo + (1 << bit))] = h
        lo += 1 << bit

    def node(a: int, b: int) -> bytes:
        if a >= m:
            return root_of(tail[a - m : b - m])
        return perfect[(a, b)]  # a KeyError would be a bug: proven not to happen above

    def sub(k_m: int, a: int, b: int, complete: bool) -> list[bytes]:
        size = b - a
        if k_m == size:
            return [] if complete else [node(a, b)]
        k = _largest_power_of_two_below(size)
        if k_m <= k:
            return [*sub(k_m, a, a + k, complete), node(a + k, b)]
        return [*sub(k_m - k, a + k, b, False), node(a, a + k)]

    return sub(m, 0, n, True)


def _subproof(leaves: Sequence[bytes], m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
    # RFC 6962 §2.1.2 SUBPROOF(m, D[lo:hi], b).
    n = hi - lo
    if m == n:
        return [] if complete else [_subtree_root(leaves, lo, hi)]
    k = _largest_power_of_two_below(n)
    if m <= k:
        return [*_subproof(leaves, m, lo, lo + k, complete), _subtree_root(leaves, lo + k, hi)]
    return [*_subproof(leaves, m - k, lo + k, hi, False), _subtree_root(leaves, lo, lo + k)]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show leaf hash ``leaf`` at ``index`` under ``root``?"""
    if not 0 <= index < size or len(leaf) != HASH_SIZE or len(root) != HASH_SIZE:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if len(p) != HASH_SIZE or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (size1, root1) a prefix of the tree (size2, root2)?"""
    if size1 < 0 or size2 < size1:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        return not proof
    if not proof or any(len(p) != HASH_SIZE for p in proof):
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: the first root is a proof node
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root1 and sr == root2 and sn == 0
