"""Tests of :mod:`sampledrec.log.merkle` (RFC 6962 / RFC 9162 trees and proofs) and of the batched
hashing under it (:mod:`sampledrec.log.hashing` and its optional C accelerator).

Expected values come from ``vectors/ct_merkle.json`` (the RFC 6962 example tree of the
transparency-dev and Certificate Transparency test suites) and from a reference written here
straight from the recursive definitions of RFC 6962 section 2.1, never from sampledrec itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sampledrec.log import hashing as _hashing
from sampledrec.log import merkle
from sampledrec.log.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    subtrees,
    verify_consistency,
    verify_inclusion,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "ct_merkle.json").read_text(encoding="utf-8")
)
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaves"]]
ROOTS = [bytes.fromhex(x) for x in VECTORS["roots"]]
INCLUSION: list[dict[str, Any]] = VECTORS["inclusion_proofs"]
CONSISTENCY: list[dict[str, Any]] = VECTORS["consistency_proofs"]
MAX_LEAVES = 70

needs_accel = pytest.mark.skipif(
    not _hashing.ACCELERATED, reason="the C accelerator sampledrec._merklefast is not built"
)


# -- a reference straight from RFC 6962 section 2.1 -------------------------------------------


def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = split_point(len(hashes))
    return ref_node(ref_mth(hashes[:k]), ref_mth(hashes[k:]))


def ref_path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]), leaf first."""
    n = len(hashes)
    if n <= 1:
        return []
    k = split_point(n)
    if m < k:
        return [*ref_path(m, hashes[:k]), ref_mth(hashes[k:])]
    return [*ref_path(m - k, hashes[k:]), ref_mth(hashes[:k])]


def ref_proof(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n])."""
    return [] if m in (0, len(hashes)) else ref_subproof(m, hashes, True)


def ref_subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if complete else [ref_mth(hashes)]
    k = split_point(n)
    if m <= k:
        return [*ref_subproof(m, hashes[:k], complete), ref_mth(hashes[k:])]
    return [*ref_subproof(m - k, hashes[k:], False), ref_mth(hashes[:k])]


def hexes(hashes: Sequence[bytes]) -> list[str]:
    return [h.hex() for h in hashes]


def flip(h: bytes, bit: int = 0) -> bytes:
    out = bytearray(h)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


VEC_HASHES = [ref_leaf(x) for x in LEAVES]


# -- known answers -------------------------------------------------------------------------------


def test_vectors_record_their_source() -> None:
    assert "transparency-dev/merkle" in VECTORS["source"]
    assert "RFC 6962" in VECTORS["source"]


def test_reference_agrees_with_the_vectors() -> None:
    # The reference is what the other tests trust: check it first.
    assert [ref_mth(VEC_HASHES[:n]) for n in range(1, 9)] == ROOTS
    for v in INCLUSION:
        assert hexes(ref_path(v["leaf_index"], VEC_HASHES[: v["tree_size"]])) == v["path"]
    for v in CONSISTENCY:
        assert hexes(ref_proof(v["size1"], VEC_HASHES[: v["size2"]])) == v["path"]


def test_empty_root() -> None:
    assert EMPTY_ROOT.hex() == VECTORS["empty_root"]
    assert root_of([]) == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT


def test_leaf_and_node_hashes() -> None:
    assert [leaf_hash(x) for x in LEAVES] == VEC_HASHES
    assert merkle.leaf_hashes(LEAVES) == VEC_HASHES
    assert merkle.leaf_hashes(iter(LEAVES)) == VEC_HASHES
    assert node_hash(VEC_HASHES[0], VEC_HASHES[1]) == ROOTS[1]


@pytest.mark.parametrize("size", range(1, 9))
def test_roots(size: int) -> None:
    assert root_of(VEC_HASHES[:size]) == ROOTS[size - 1]
    cr = CompactRange()
    cr.extend(VEC_HASHES[:size])
    assert cr.root() == ROOTS[size - 1]


@pytest.mark.parametrize(
    "vector", INCLUSION, ids=lambda v: f"{v['leaf_index']}-of-{v['tree_size']}"
)
def test_inclusion_proof_vectors(vector: dict[str, Any]) -> None:
    index, size = vector["leaf_index"], vector["tree_size"]
    proof = [bytes.fromhex(x) for x in vector["path"]]
    assert inclusion_proof(VEC_HASHES, index, size) == proof
    assert inclusion_proof(VEC_HASHES[:size], index) == proof
    assert verify_inclusion(VEC_HASHES[index], index, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize("vector", CONSISTENCY, ids=lambda v: f"{v['size1']}-to-{v['size2']}")
def test_consistency_proof_vectors(vector: dict[str, Any]) -> None:
    size1, size2 = vector["size1"], vector["size2"]
    proof = [bytes.fromhex(x) for x in vector["path"]]
    assert consistency_proof(VEC_HASHES, size1, size2) == proof
    assert consistency_proof(VEC_HASHES[:size2], size1) == proof
    assert verify_consistency(size1, size2, proof, ROOTS[size1 - 1], ROOTS[size2 - 1])


# -- corrupted proofs are rejected ---------------------------------------------------------------

InclusionArgs = tuple[bytes, int, int, list[bytes], bytes]
ConsistencyArgs = tuple[int, int, list[bytes], bytes, bytes]
EXTRA = hashlib.sha256(b"not in the tree").digest()


def root_at(size: int) -> bytes:
    return ROOTS[size - 1] if 1 <= size <= 8 else EXTRA


def inclusion_corruptions() -> list[tuple[str, InclusionArgs]]:
    out: list[tuple[str, InclusionArgs]] = []
    for v in INCLUSION:
        i, n = v["leaf_index"], v["tree_size"]
        proof = [bytes.fromhex(x) for x in v["path"]]
        leaf, root = VEC_HASHES[i], ROOTS[n - 1]
        name = f"{i}-of-{n}"
        cases: dict[str, InclusionArgs] = {
            "index+1": (leaf, i + 1, n, proof, root),
            "index-1": (leaf, i - 1, n, proof, root),
            "size*2": (leaf, i, n * 2, proof, root),
            "size/2": (leaf, i, n // 2, proof, root),
            "other-leaf": (VEC_HASHES[(i + 1) % 8], i, n, proof, root),
            "raw-leaf-not-hash": (LEAVES[i].ljust(32, b"\x00")[:32], i, n, proof, root),
            "flipped-leaf": (flip(leaf), i, n, proof, root),
            "other-root": (leaf, i, n, proof, root_at(n - 1)),
            "flipped-root": (leaf, i, n, proof, flip(root, 255)),
            "extra-front": (leaf, i, n, [EXTRA, *proof], root),
            "extra-back": (leaf, i, n, [*proof, EXTRA], root),
            "root-appended": (leaf, i, n, [*proof, root], root),
            "empty-proof": (leaf, i, n, [], root),
            "short-element": (leaf, i, n, [proof[0][:31], *proof[1:]], root),
        }
        for j in range(len(proof)):
            for bit in (0, 7, 255):
                bad = list(proof)
                bad[j] = flip(bad[j], bit)
                cases[f"element{j}-bit{bit}"] = (leaf, i, n, bad, root)
            cases[f"without-element{j}"] = (leaf, i, n, proof[:j] + proof[j + 1 :], root)
        if len(proof) > 1:
            cases["reversed"] = (leaf, i, n, proof[::-1], root)
        out += [(f"{name}-{k}", args) for k, args in cases.items()]
    return out


def consistency_corruptions() -> list[tuple[str, ConsistencyArgs]]:
    # Not size2 +/- 1: a proof only fixes the shape of the path, and trees of n and n + 1 leaves
    # often share it (1 -> 7 and 1 -> 8 both end in one hash of the right half). Sizes and roots
    # come together from a signed checkpoint, so a verifier never meets such a mismatched pair.
    out: list[tuple[str, ConsistencyArgs]] = []
    for v in CONSISTENCY:
        m, n = v["size1"], v["size2"]
        proof = [bytes.fromhex(x) for x in v["path"]]
        r1, r2 = ROOTS[m - 1], ROOTS[n - 1]
        name = f"{m}-to-{n}"
        cases: dict[str, ConsistencyArgs] = {
            "swapped-roots": (m, n, proof, r2, r1),
            "size1+1": (m + 1, n, proof, root_at(m + 1), r2),
            "size1-1": (m - 1, n, proof, root_at(m - 1), r2),
            "size1+1-same-root": (m + 1, n, proof, r1, r2),
            "size1-1-same-root": (m - 1, n, proof, r1, r2),
            "size1*2": (m * 2, n, proof, r1, r2),
            "size1/2": (m // 2, n, proof, r1, r2),
            "size2*2": (m, n * 2, proof, r1, r2),
            "size2/2": (m, n // 2, proof, r1, r2),
            "sizes-swapped": (n, m, proof, r2, r1),
            "other-root1": (m, n, proof, root_at(m + 1), r2),
            "other-root2": (m, n, proof, r1, root_at(n - 1)),
            "flipped-root1": (m, n, proof, flip(r1), r2),
            "flipped-root2": (m, n, proof, r1, flip(r2)),
            "extra-front": (m, n, [EXTRA, *proof], r1, r2),
            "extra-back": (m, n, [*proof, EXTRA], r1, r2),
            "root1-prepended": (m, n, [r1, *proof], r1, r2),
            "empty-proof": (m, n, [], r1, r2),
            "short-element": (m, n, [proof[0][:31], *proof[1:]], r1, r2),
            "reversed": (m, n, proof[::-1], r1, r2),
        }
        for j in range(len(proof)):
            for bit in (0, 7, 255):
                bad = list(proof)
                bad[j] = flip(bad[j], bit)
                cases[f"element{j}-bit{bit}"] = (m, n, bad, r1, r2)
            cases[f"without-element{j}"] = (m, n, proof[:j] + proof[j + 1 :], r1, r2)
        out += [(f"{name}-{k}", args) for k, args in cases.items()]
    return out


INCLUSION_BAD = inclusion_corruptions()
CONSISTENCY_BAD = consistency_corruptions()


@pytest.mark.parametrize(("name", "args"), INCLUSION_BAD, ids=[n for n, _ in INCLUSION_BAD])
def test_corrupted_inclusion_proof_is_rejected(name: str, args: InclusionArgs) -> None:
    assert not verify_inclusion(*args)


@pytest.mark.parametrize(("name", "args"), CONSISTENCY_BAD, ids=[n for n, _ in CONSISTENCY_BAD])
def test_corrupted_consistency_proof_is_rejected(name: str, args: ConsistencyArgs) -> None:
    assert not verify_consistency(*args)


def test_degenerate_consistency() -> None:
    # Same size: only an empty proof between equal roots. From the empty tree: an empty proof.
    assert verify_consistency(5, 5, [], ROOTS[4], ROOTS[4])
    assert not verify_consistency(5, 5, [], ROOTS[4], ROOTS[5])
    assert not verify_consistency(5, 5, [ROOTS[0]], ROOTS[4], ROOTS[4])
    assert verify_consistency(0, 5, [], EMPTY_ROOT, ROOTS[4])
    assert not verify_consistency(0, 5, [ROOTS[0]], EMPTY_ROOT, ROOTS[4])
    assert not verify_consistency(-1, 5, [], EMPTY_ROOT, ROOTS[4])
    assert consistency_proof(VEC_HASHES, 0, 8) == []
    assert consistency_proof(VEC_HASHES, 8, 8) == []


def test_a_single_leaf_tree_needs_an_empty_path() -> None:
    assert inclusion_proof(VEC_HASHES[:1], 0) == []
    assert verify_inclusion(VEC_HASHES[0], 0, 1, [], ROOTS[0])
    assert not verify_inclusion(VEC_HASHES[0], 0, 1, [EXTRA], ROOTS[0])


@pytest.mark.parametrize(("index", "size"), [(-1, 8), (8, 8), (0, 0), (0, 9), (3, 2)])
def test_inclusion_proof_out_of_range(index: int, size: int) -> None:
    with pytest.raises(ValueError, match="is not in a tree"):
        inclusion_proof(VEC_HASHES, index, size)


@pytest.mark.parametrize(("size1", "size2"), [(-1, 8), (9, 8), (2, 9), (5, 4)])
def test_consistency_proof_out_of_range(size1: int, size2: int) -> None:
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_proof(VEC_HASHES, size1, size2)


def test_verify_rejects_malformed_hashes() -> None:
    proof = [bytes.fromhex(x) for x in INCLUSION[0]["path"]]
    assert not verify_inclusion(VEC_HASHES[0][:31], 0, 8, proof, ROOTS[7])
    assert not verify_inclusion(VEC_HASHES[0], 0, 8, proof, ROOTS[7] + b"\x00")


# -- random trees --------------------------------------------------------------------------------


@st.composite
def trees(draw: st.DrawFn) -> list[bytes]:
    """Leaf hashes of a tree of 1 to 70 distinct leaves."""
    n = draw(st.integers(1, MAX_LEAVES))
    salt = draw(st.binary(max_size=8))
    return [ref_leaf(salt + i.to_bytes(2, "big")) for i in range(n)]


@given(trees(), st.data())
@settings(max_examples=150, deadline=None)
def test_every_generated_inclusion_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    size = data.draw(st.integers(1, len(leaves)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    root = ref_mth(leaves[:size])
    proof = inclusion_proof(leaves, index, size)
    assert proof == ref_path(index, leaves[:size])
    assert verify_inclusion(leaves[index], index, size, proof, root)
    # Nowhere else: not at another place, not for another leaf, not under another size.
    other = data.draw(
        st.integers(0, size - 1).filter(lambda j: j != index) if size > 1 else st.none()
    )
    if other is not None:
        assert not verify_inclusion(leaves[index], other, size, proof, root)
        assert not verify_inclusion(leaves[other], index, size, proof, root)
    assert not verify_inclusion(leaves[index], index, size, proof, flip(root))
    if proof:
        assert not verify_inclusion(leaves[index], index, size, proof[:-1], root)


@given(trees(), st.data())
@settings(max_examples=150, deadline=None)
def test_every_generated_consistency_proof_verifies(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size2 = data.draw(st.integers(1, len(leaves)), label="size2")
    size1 = data.draw(st.integers(0, size2), label="size1")
    root1, root2 = ref_mth(leaves[:size1]), ref_mth(leaves[:size2])
    proof = consistency_proof(leaves, size1, size2)
    assert proof == ref_proof(size1, leaves[:size2])
    assert verify_consistency(size1, size2, proof, root1, root2)
    if 0 < size1 < size2:
        assert not verify_consistency(size1, size2, proof, root2, root1)
        assert not verify_consistency(size1, size2, proof, root1, flip(root2))
        assert not verify_consistency(size1, size2, proof[:-1], root1, root2)
        assert not verify_consistency(size1, size2, [*proof, EXTRA], root1, root2)


@given(trees())
@settings(max_examples=60, deadline=None)
def test_exhaustive_proofs_of_small_trees(leaves: list[bytes]) -> None:
    # Every leaf and every earlier size of one random tree (at most 70 x 70 proofs).
    n = len(leaves)
    root = ref_mth(leaves)
    for i in range(n):
        assert verify_inclusion(leaves[i], i, n, inclusion_proof(leaves, i), root)
    for m in range(n + 1):
        proof = consistency_proof(leaves, m)
        assert verify_consistency(m, n, proof, ref_mth(leaves[:m]), root)


@given(trees(), st.lists(st.integers(0, 20), max_size=8))
@settings(max_examples=100, deadline=None)
def test_compact_range_append_and_root(leaves: list[bytes], chunks: list[int]) -> None:
    cr = CompactRange()
    for i, leaf in enumerate(leaves):
        cr.append(leaf)
        assert cr.size == i + 1
        assert len(cr.hashes) == bin(i + 1).count("1")
        assert cr.root() == ref_mth(leaves[: i + 1]) == root_of(leaves[: i + 1])
    # Extending in chunks, from a copy, gives the same range; the copy is independent.
    other = CompactRange()
    pos = 0
    for k in chunks:
        snapshot = other.copy()
        other.extend(leaves[pos : pos + k])
        assert snapshot.size == min(pos, len(leaves))
        pos += k
    other.extend(leaves[pos:])
    assert other == cr
    assert CompactRange(cr.size, cr.hashes) == cr
    assert repr(cr).startswith(f"CompactRange(size={cr.size}, root={cr.root().hex()[:16]}")


def test_compact_range_rejects_a_wrong_number_of_hashes() -> None:
    with pytest.raises(ValueError, match="a compact range of size 3 has 2 hashes, got 1"):
        CompactRange(3, [EXTRA])
    with pytest.raises(ValueError, match="size -1"):
        CompactRange(-1, [])
    assert CompactRange() != object()


# -- the C accelerator gives the results of the pure-Python path ----------------------------------


def records(entries: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(e)) + e for e in entries)


def pure_hash_records(
    buf: bytes, offset: int, count: int, cr: CompactRange
) -> tuple[int, list[int]] | None:
    """Parse and hash records with merkle.leaf_hash and CompactRange alone."""
    pos, offsets = offset, []
    work = cr.copy()
    for _ in range(count):
        if pos + 4 > len(buf):
            return None
        (n,) = struct.unpack_from(">I", buf, pos)
        if pos + 4 + n > len(buf):
            return None
        offsets.append(pos + 4)
        work.append(leaf_hash(buf[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    cr.size, cr.hashes = work.size, work.hashes
    return pos, offsets


@pytest.fixture(params=["accelerated", "pure"])
def hashing_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the C accelerator (when built) and with the pure-Python path."""
    if request.param == "accelerated":
        if not _hashing.ACCELERATED:
            pytest.skip("the C accelerator sampledrec._merklefast is not built")
    else:
        monkeypatch.setattr(_hashing, "native", None)
    return str(request.param)


# The fixture's monkeypatch holds for every example of a test, which is what we want.
FIXTURE_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture],
}
entry_lists = st.lists(
    st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=300)), max_size=30
)


@given(
    prefix=st.lists(st.binary(max_size=8), max_size=40),
    entries=entry_lists,
    garbage=st.binary(max_size=6),
    probe=st.sampled_from([0, 1, 10, 56]),
)
@settings(**FIXTURE_SETTINGS, max_examples=80)
def test_hash_records_matches_a_pure_computation(
    hashing_path: str, prefix: list[bytes], entries: list[bytes], garbage: bytes, probe: int
) -> None:
    start = CompactRange()
    start.extend(leaf_hash(p) for p in prefix)
    buf = garbage + records(entries) + garbage
    want_cr = start.copy()
    want = pure_hash_records(buf, len(garbage), len(entries), want_cr)
    assert want is not None
    cr = start.copy()
    got = _hashing.hash_records(buf, len(garbage), len(entries), cr, probe)
    assert got is not None
    end, offsets, probes = got
    assert cr == want_cr
    assert cr.root() == ref_mth([leaf_hash(p) for p in prefix] + [leaf_hash(e) for e in entries])
    assert end == want[0]
    assert offsets.dtype == np.uint64
    assert offsets.tolist() == want[1]
    assert probes.dtype == np.uint8
    assert probes.shape == (len(entries), probe)
    assert [bytes(row) for row in probes] == [e[:probe].ljust(probe, b"\x00") for e in entries]
    # Same result from a memoryview, and when hashed in two parts.
    cr2 = start.copy()
    assert _hashing.hash_records(memoryview(buf), len(garbage), len(entries), cr2) is not None
    assert cr2 == want_cr
    half = len(entries) // 2
    cr3 = start.copy()
    first = _hashing.hash_records(buf, len(garbage), half, cr3)
    assert first is not None
    second = _hashing.hash_records(buf, first[0], len(entries) - half, cr3)
    assert second is not None
    assert cr3 == want_cr
    assert second[0] == end


@given(entries=entry_lists.filter(bool), cut=st.integers(1, 400))
@settings(**FIXTURE_SETTINGS, max_examples=60)
def test_hash_records_past_the_buffer(hashing_path: str, entries: list[bytes], cut: int) -> None:
    buf = records(entries)
    short = buf[: max(0, len(buf) - cut)]
    cr = CompactRange()
    cr.extend(VEC_HASHES[:3])
    before = cr.copy()
    assert _hashing.hash_records(short, 0, len(entries), cr) is None
    assert cr == before  # left unchanged
    # More records asked for than the buffer holds.
    assert _hashing.hash_records(buf, 0, len(entries) + 1, cr) is None
    assert cr == before
    assert _hashing.hash_records(buf, len(buf) + 8, 1, cr) is None


def test_hash_records_of_nothing(hashing_path: str) -> None:
    cr = CompactRange()
    got = _hashing.hash_records(b"abc", 3, 0, cr)
    assert got is not None
    assert got[0] == 3
    assert got[1].shape == (0,)
    assert cr == CompactRange()


@given(entries=st.lists(st.binary(max_size=300), max_size=40), n0=st.integers(0, 40))
@settings(**FIXTURE_SETTINGS, max_examples=60)
def test_leaf_hashes_and_extend(hashing_path: str, entries: list[bytes], n0: int) -> None:
    hashes = _hashing.leaf_hashes(entries)
    assert hashes == [ref_leaf(e) for e in entries]
    cr = CompactRange()
    cr.extend(ref_leaf(bytes([i])) for i in range(n0))
    want = cr.copy()
    want.extend(hashes)
    _hashing.extend(cr, hashes)
    assert cr == want
    _hashing.extend(cr, [])
    assert cr == want


@needs_accel
def test_accelerator_rejects_bad_arguments() -> None:
    fast: Any = _hashing.native
    with pytest.raises(ValueError, match="range does not match its size"):
        fast.extend([], 1, b"")
    with pytest.raises(ValueError, match="32-byte"):
        fast.extend([b"short"], 1, b"")
    with pytest.raises(ValueError, match="multiple of 32"):
        fast.extend([], 0, b"x" * 33)
    with pytest.raises(TypeError, match="list"):
        fast.extend((), 0, b"")
    with pytest.raises(TypeError, match="entries must be bytes"):
        fast.leaf_hashes([b"ok", "text"])
    with pytest.raises(ValueError, match="bad offset or count"):
        fast.hash_records(b"", -1, 0, [], 0)
    with pytest.raises(ValueError, match="bad offset or count"):
        fast.hash_records(b"", 0, -1, [], 0)


NO_ACCEL_SCRIPT = textwrap.dedent(
    """
    import json, struct, sys
    from sampledrec.log import hashing as _hashing
    from sampledrec.log.merkle import CompactRange
    entries = [bytes([i % 251]) * (i * 7 % 300) for i in range(200)]
    buf = b"".join(struct.pack(">I", len(e)) + e for e in entries)
    cr = CompactRange()
    end, offsets, _ = _hashing.hash_records(buf, 0, len(entries), cr)
    leaves = [h.hex() for h in _hashing.leaf_hashes(entries)]
    json.dump({"accelerated": _hashing.ACCELERATED, "root": cr.root().hex(), "end": end,
               "offsets": offsets.tolist(), "leaves": leaves}, sys.stdout)
    """
)


def run_hashing_script(env_extra: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "SAMPLEDREC_NO_ACCEL"}
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", NO_ACCEL_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@needs_accel
def test_sampledrec_no_accel_disables_the_accelerator_with_the_same_results() -> None:
    pure = run_hashing_script({"SAMPLEDREC_NO_ACCEL": "1"})
    fast = run_hashing_script({})
    assert pure["accelerated"] is False
    assert fast["accelerated"] is True
    assert {k: v for k, v in pure.items() if k != "accelerated"} == {
        k: v for k, v in fast.items() if k != "accelerated"
    }
    entries = [bytes([i % 251]) * (i * 7 % 300) for i in range(200)]
    assert pure["root"] == ref_mth([ref_leaf(e) for e in entries]).hex()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 64, 100, 257])
def test_ranges_of_stretches_merge_into_the_tree_from_leaf_0(n: int) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]
    whole = CompactRange()
    whole.extend(leaves)
    for cuts in ([0, n], [0, n // 3, n], [0, 1, n // 2, n - 1, n], [*range(0, n + 1, 7), n]):
        points = sorted(set(cuts))
        joined = CompactRange()
        for a, b in itertools.pairwise(points):
            part = CompactRange(a, begin=a)
            part.extend(leaves[a:b])
            assert part.begin == a and part.size == b
            assert len(part.hashes) == len(subtrees(a, b))
            joined.merge(part)
        assert joined == whole
        assert joined.root() == root_of(leaves)
    with pytest.raises(ValueError, match="ending at"):
        CompactRange().merge(CompactRange(2, [leaves[0]], begin=1))
    with pytest.raises(ValueError, match="only a range that starts at leaf 0"):
        CompactRange(n, begin=n).root()
