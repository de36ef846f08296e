"""The auditor's reader: the C column-wise path gives exactly what decoding entry by entry gives,
and the same-call / reference matching is exact even when fingerprints collide."""

from __future__ import annotations

import importlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from sampledrec import FixedClock, Store
from sampledrec.errors import SampledrecError
from sampledrec.log import columns as al
from sampledrec.log import hashing as _hashing
from sampledrec.log.format import (
    T_DECISION,
    Entry,
    decision_layout,
    decode_entry,
    encode_fields,
    field_bytes,
    header,
    key_check_value,
    sealed_field,
    to_micros,
)
from sampledrec.sampling import DecisionRecord
from sampledrec.sampling.record import REASONS
from sampledrec.vault.audio import frames, synthetic_speech
from sampledrec.vault.recorder import Vault

from .recording import PCM

needs_accel = pytest.mark.skipif(
    not _hashing.ACCELERATED, reason="the C accelerator sampledrec._merklefast is not built"
)
POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.25"
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = 3

[default]
rate = "0.2"
purpose = "quality"
retention = "2 days"
"""

COLUMNS = [
    "index",
    "time_us",
    "threshold",
    "threshold_ok",
    "draw",
    "has_draw",
    "reason",
    "ref_kind",
    "ref_len",
    "refs",
    "ref_fp",
]


class _NoKeys:
    def sealing_key(self, kid: str, *, create: bool = False) -> bytes | None:
        raise SampledrecError("no keys here")


def _build(tmp_path: Path) -> Store:
    (tmp_path / "p.toml").write_text(POLICY)
    store = Store.init(tmp_path / "store", policy=tmp_path / "p.toml", simulated=True)
    clock = FixedClock("2030-03-04T10:00:00Z")
    refs: list[str | bytes] = [f"call-{i:03d}" for i in range(40)]
    refs += ["é-ünïcode-" + "x" * 40, "y" * 256, b"\x00\x01binary\x00", "w" * 200, "z" * 17]
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        for i, ref in enumerate(refs):
            attrs: dict[str, object] = {"queue": "sales" if i % 2 else "support"}
            if i % 3 or i % 2:  # the capped sales rule needs the agent
                attrs["agent"] = f"agent-{i % 4}" * (1 + i % 5)
            attrs["objection"] = i == 7
            d = sampler.decide(ref, attrs, caller="+33 6 12 34 56 78" if i % 5 == 0 else None)
            if d.record and i % 2:  # other entries between the decisions
                with vault.record(d, audio_format=PCM, chunk_size=1024) as rec:
                    for frame in frames(synthetic_speech(0.05, seed=i), PCM, 20):
                        rec.write(frame)
            if i == 20:
                clock.advance(hours=30)
        refs_b = np.asarray([f"{i:08x}@pbx" for i in range(500)], dtype="S")
        agents = [f"b{i % 5}" if i % 2 == 0 else None for i in range(500)]
        sampler.decide_batch(refs_b, {"queue": np.asarray(["sales", "x"] * 250), "agent": agents})
        sampler.decide("call-001", {"queue": "support"})  # a retry: the same call again
    return store


def _same(a: al.Decisions, b: al.Decisions) -> None:
    for k in COLUMNS:
        x, y = getattr(a, k), getattr(b, k)
        assert x.shape == y.shape and (x == y).all(), k
    for codes, values in (("epoch", "epochs"), ("version", "versions"), ("rule", "rules")):
        got = [[getattr(d, values)[c] for c in getattr(d, codes).tolist()] for d in (a, b)]
        assert got[0] == got[1], codes
    assert [a.agent_name(i) for i in range(len(a))] == [b.agent_name(i) for i in range(len(b))]
    assert [a.attributes_text(i) for i in range(len(a))] == [
        b.attributes_text(i) for i in range(len(b))
    ]
    # and the code lists themselves: the values in use, sorted, whatever the reading order
    assert (a.epochs, a.versions, a.rules, a.agents) == (b.epochs, b.versions, b.rules, b.agents)
    assert a.attribute_sets == b.attribute_sets


@needs_accel
@pytest.mark.parametrize("keys", ["store", "none"])
def test_column_wise_reading_matches_entry_by_entry(tmp_path: Path, keys: str) -> None:
    store = _build(tmp_path)
    keyring: Any = store.keyring if keys == "store" else _NoKeys()
    fast = al.read_log(store.path / "log", keyring)
    slow = al.read_log(store.path / "log", keyring, accelerated=False)
    assert fast.error is None and slow.error is None
    _same(fast.decisions, slow.decisions)
    assert [e.index for e in fast.others] == [e.index for e in slow.others]
    assert len(fast.others) > 10, "entries other than decisions in between"
    d = fast.decisions
    assert len(d) == 546
    # only the decisions with fields of 255 bytes or more (the long length form) one by one
    assert fast.one_by_one == 2 and slow.one_by_one == 546
    refs = {d.ref(i) for i in range(len(d))}
    if keys == "store":
        assert refs >= {"call-000", "y" * 256, b"\x00\x01binary\x00", "é-ünïcode-" + "x" * 40}
        assert (d.agent >= 0).any()
        assert d.attribute_sets == ['{"queue":"sales"}', '{"queue":"support"}', '{"queue":"x"}']
        assert (d.attributes >= 0).all()
    else:
        assert refs == {None} and (d.agent == -1).all() and (d.attributes == -1).all()


def test_the_accelerator_has_the_decision_layout_of_format_py() -> None:
    """The C code cannot read ``format.DECISION``: the writer's encoder (_merklefast.c) and this
    reader (_decisionscan.c) take the tags and sizes from _decisionlayout.h, which the
    accelerator reports. (``hashing`` does not use a build that disagrees: so import it here.)"""
    try:
        fast = importlib.import_module("sampledrec.log._merklefast")
    except ImportError:
        pytest.skip("the C accelerator sampledrec._merklefast is not built")
    assert fast.decision_layout() == decision_layout()


@needs_accel
@pytest.mark.parametrize("encoder", ["python", "c"])
def test_decisions_the_writer_encodes_read_the_same_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder: str
) -> None:
    """Records written by the Python encoder (which follows ``format.DECISION``) or the C one
    come back from the C reader and from ``decode_entry`` as the same columns, field for
    field, and as the records that were written."""
    if encoder == "python":
        monkeypatch.setattr(_hashing, "encode_decisions", None)
    store = Store.init(tmp_path / "store")
    clock = FixedClock("2030-03-04T10:00:00Z")
    version = store.policy().version
    records = [
        DecisionRecord(
            epoch_id=("2030-03-04", "2030-03-05")[i % 2],
            policy_version=version,
            rule=("default", "sales", "équipe")[i % 3],
            threshold=(0, 2**56, 7 * 2**50)[i % 3],
            reason=REASONS[i % 4],
            draw=(0, 2**56 - 1, i * 0x9E3779B97F4A7 % 2**56)[i % 3],
            call_ref=f"call-{i}" if i % 3 else f"é-{i}".encode(),
            agent=f"agent-{i % 3}" if i % 4 else None,
            # Python writes the pseudonyms; the C encoder leaves such batches to it.
            caller_pseudonym="cd" * 32 if encoder == "python" and i % 5 == 0 else None,
            decided_at=clock.now() + timedelta(microseconds=i),
            # none (a decision from before they were logged), empty, short, and longer
            attributes=(None, "{}", '{"queue":"sälès"}', '{"c":"' + "x" * 100 + '"}')[i % 4],
        )
        for i in range(200)
    ]
    with store.open_log(clock=clock) as log:
        for r in records:
            log.append_decision(r)
    fast = al.read_log(store.path / "log", store.keyring)
    slow = al.read_log(store.path / "log", store.keyring, accelerated=False)
    assert fast.error is None and slow.error is None
    _same(fast.decisions, slow.decisions)
    assert fast.one_by_one == 0, "the C reader read every decision"
    d = fast.decisions
    got = [
        (d.epochs[d.epoch[i]], d.versions[d.version[i]].hex(), d.rules[d.rule[i]],
         int(d.threshold[i]), REASONS[d.reason[i]], int(d.draw[i]), d.ref(i),
         d.agent_name(i), int(d.time_us[i]), d.attributes_text(i))
        for i in range(len(d))
    ]  # fmt: skip
    assert got == [
        (r.epoch_id, r.policy_version, r.rule, r.threshold, r.reason, r.draw, r.call_ref,
         r.agent, to_micros(r.decided_at), r.attributes)
        for r in records
    ]  # fmt: skip


def _entry(key: bytes, personal: bytes, iv: bytes | None = None, **public: Any) -> bytes:
    kcv = key_check_value(key)
    fields = {
        "epoch_id": "2030-03-04",
        "policy_version": b"v" * 32,
        "rule": "r",
        "threshold": 5,
        "draw": 7,
        "reason": 1,
    } | public
    iv = iv or os.urandom(16)
    ct = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(personal)
    return (
        header(T_DECISION, 123)
        + encode_fields(T_DECISION, fields)
        + sealed_field("k/1", kcv, iv, ct)
    )


class _KeyFor:
    """A keyring with one sealing key, ``k/1``."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def sealing_key(self, kid: str, *, create: bool = False) -> bytes | None:
        return self.key if kid == "k/1" else None


def _read(records: list[bytes], key: bytes, *, accelerated: bool) -> al.LogContents:
    payload = b"".join(len(r).to_bytes(4, "big") + r for r in records)
    reader = al._Reader(_KeyFor(key), accelerated=accelerated)
    reader.batch(payload, 0, len(payload), 100)
    return reader.result()


@needs_accel
def test_odd_entries_read_the_same_both_ways() -> None:
    key = os.urandom(32)
    ref = field_bytes(0x20, b"\x01ok")
    records = [
        _entry(key, field_bytes(0x20, b"\x00\x00bin\x00")),  # binary, ends with NUL
        _entry(key, field_bytes(0x20, b"\x01x") + field_bytes(0x21, b"agent")),
        _entry(key, b""),  # no personal fields
        _entry(key, field_bytes(0x21, b"a") + field_bytes(0x20, b"\x01x")),  # out of order
        _entry(key, field_bytes(0x20, b"\x02odd kind")),
        _entry(key, field_bytes(0x20, b"")),  # empty reference field
        _entry(key, ref + field_bytes(0x22, b"pseudo") + field_bytes(0x24, b"?")),  # unknown
        _entry(key, ref, draw=None),  # no draw
        _entry(key, ref, threshold=2**64 - 1, reason=2**64 - 1),  # 8-byte integers
        _entry(key, ref, rule="é"),
        _entry(key, ref, epoch_id="2030-03-05", rule="r" * 200),
        _entry(key, field_bytes(0x20, b"\x01" + "ü".encode() * 100)),  # long, not ASCII
        _entry(key, ref, iv=b"\x00" * 8 + b"\xff" * 8),  # the CTR counter carries
        _entry(key, field_bytes(0x20, b"\x01" + b"c" * 60), iv=b"\xff" * 16),
        _entry(key, field_bytes(0x20, b"\x01" + b"c" * 60), iv=b"\x01" * 8 + b"\xff" * 7 + b"\xfe"),
        _entry(key, ref + field_bytes(0x21, b"a") + field_bytes(0x23, b'{"q":"s"}')),
        _entry(key, ref + field_bytes(0x23, b"not json")),  # read as it is: the audit judges
        header(T_DECISION, 5) + encode_fields(T_DECISION, {"rule": "no seal"}),
        header(0x10, 5),  # another entry type
    ]
    fast = _read(records, key, accelerated=True)
    slow = _read(records, key, accelerated=False)
    _same(fast.decisions, slow.decisions)
    assert fast.one_by_one == 5, "only the odd decisions are decoded one by one"
    d = fast.decisions
    assert d.ref(0) == b"\x00bin\x00" and d.ref(4) == b"odd kind" and d.ref(5) == b""
    assert d.ref(11) == "ü" * 100 and d.ref(13) == "c" * 60 and d.ref(14) == "c" * 60
    assert not d.has_draw[7] and d.threshold[8] == 2**64 - 1 and d.reason[8] == 2**62
    assert d.attributes_text(15) == '{"q":"s"}' and d.agent_name(15) == "a"
    assert d.attributes_text(16) == "not json" and d.attributes_text(6) is None
    assert [e.type for e in fast.others] == [0x10]

    def unseal(kid: str, kcv: bytes, iv: bytes, ct: bytes) -> bytes | None:
        return Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor().update(ct)

    for i, raw in enumerate(records[:17]):
        e = decode_entry(100 + i, raw, unseal)
        assert d.ref(i) == e.fields.get("call_ref"), i
        assert d.attributes_text(i) == e.fields.get("attributes"), i


@pytest.mark.parametrize("accelerated", [True, False])
def test_text_that_is_not_utf8_stops_the_reading_both_ways(accelerated: bool) -> None:
    key = os.urandom(32)
    bad_agent = _entry(key, field_bytes(0x20, b"\x01ok") + field_bytes(0x21, b"\xff\xfe"))
    bad_attrs = _entry(key, field_bytes(0x20, b"\x01ok") + field_bytes(0x23, b'{"q":"\xff"}'))
    bad_rule = header(T_DECISION, 5) + field_bytes(0x03, b"\xff")
    for record in (bad_agent, bad_attrs, bad_rule):
        with pytest.raises(UnicodeDecodeError):
            _read([record], key, accelerated=accelerated and _hashing.ACCELERATED)


@pytest.mark.parametrize("accelerated", [True, False])
def test_nothing_after_a_damaged_entry_is_kept(accelerated: bool) -> None:
    key = os.urandom(32)
    ref = field_bytes(0x20, b"\x01ok")
    records = [_entry(key, ref), _entry(key, ref, rule="QQQ"), _entry(key, ref)]
    records[1] = records[1].replace(b"QQQ", b"\xff\xfe\xfd")  # a rule name not UTF-8
    reader = al._Reader(_KeyFor(key), accelerated=accelerated and _hashing.ACCELERATED)
    payload = b"".join(len(r).to_bytes(4, "big") + r for r in records)
    with pytest.raises(UnicodeDecodeError):
        reader.batch(payload, 0, len(payload), 100)
    assert reader.result().decisions.index.tolist() == [100]


def test_sealed_bytes_never_stand_in_for_public_fields() -> None:
    key = os.urandom(32)
    record = _entry(key, field_bytes(0x01, b"1999-01-01") + field_bytes(0x20, b"\x01ok"))
    for accelerated in (True, False):
        d = _read([record], key, accelerated=accelerated and _hashing.ACCELERATED).decisions
        assert d.epochs == ["2030-03-04"] and d.ref(0) == "ok"


@needs_accel
def test_call_firsts_checks_its_arguments() -> None:
    fast: Any = _hashing.native
    n = 4
    args = (b"\0" * 4 * n, b"\1" * n, (1).to_bytes(8, "little") * n)
    with pytest.raises(ValueError, match="different lengths"):
        fast.call_firsts(*args, b"", 2**62, bytes(16))  # n * width would wrap around
    with pytest.raises(ValueError, match="different lengths"):
        fast.call_firsts(*args, b"x" * n, 1, bytes(8))  # the hash key is 16 bytes
    got = np.frombuffer(fast.call_firsts(*args, b"xxyx", 1, bytes(16)), dtype=np.int64)
    assert got.tolist() == [0, 0, 2, 0]


@needs_accel
def test_a_wrong_key_leaves_the_personal_fields_unreadable() -> None:
    key, other = os.urandom(32), os.urandom(32)
    records = [_entry(key, field_bytes(0x20, b"\x01x") + field_bytes(0x21, b"agent"))]
    for accelerated in (True, False):
        d = _read(records, other, accelerated=accelerated).decisions
        assert d.ref(0) is None and d.agent_name(0) is None and d.ref_fp[0] == 0


def _decisions(refs: list[str | bytes | None], epochs: list[str] | None = None) -> al.Decisions:
    return al.decisions_from_entries(
        [
            Entry(i, T_DECISION, 0, {"epoch_id": (epochs or ["e"] * len(refs))[i], "call_ref": r})
            for i, r in enumerate(refs)
        ]
    )


def _firsts_all_ways(d: al.Decisions) -> list[list[int]]:
    out = [al._call_firsts_sorted(d).tolist()]
    out.append(
        al._call_firsts_exact(d, np.flatnonzero(d.ref_kind > 0), np.full(len(d), -1)).tolist()
    )
    if _hashing.ACCELERATED:
        out.append(al.call_firsts(d).tolist())
    return out


def test_call_firsts_groups_the_same_call_in_the_same_epoch() -> None:
    refs: list[str | bytes | None] = ["a", "b", "a", b"a", None, "b", "a", b"a", "ab"]
    epochs = ["e1", "e1", "e1", "e1", "e1", "e1", "e2", "e1", "e1"]
    d = _decisions(refs, epochs)
    want = [0, 1, 0, 3, -1, 1, 6, 3, 8]
    assert _firsts_all_ways(d) == [want] * len(_firsts_all_ways(d))


def test_call_firsts_is_exact_when_fingerprints_collide() -> None:
    d = _decisions(["a", "b", "a", "c", "b"])
    d.ref_fp[:] = 42  # every reference "collides"
    want = [0, 1, 0, 3, 1]
    assert _firsts_all_ways(d) == [want] * len(_firsts_all_ways(d))


@pytest.mark.parametrize("collide", [False, True])
def test_ref_matcher_is_exact(collide: bool) -> None:
    d = _decisions(["a", b"\x01\x02", "hex:0102", "zz", None, "b"])
    texts = ["hex:0102", "a", "nope", "hex:zz"]
    m = al.RefMatcher(d, texts)
    if collide:
        d.ref_fp[d.ref_kind > 0] = 7
        m.fps[:] = 7
    got = m.match(np.arange(len(d))).tolist()
    assert got == [1, 0, 0, -1, -1, -1]


def test_fingerprints_do_not_depend_on_padding() -> None:
    short = _decisions(["ab"])
    wide = _decisions(["ab", "x" * 50])
    assert short.ref_fp[0] == wide.ref_fp[0]
    assert len({*_decisions(["ab", b"ab", "ab\x00"]).ref_fp.tolist()}) == 3


def _outcome(records: list[bytes], key: bytes, accelerated: bool) -> Any:
    try:
        return _read(records, key, accelerated=accelerated)
    except (ValueError, UnicodeDecodeError) as exc:
        return type(exc)


@needs_accel
@settings(max_examples=int(os.environ.get("SAMPLEDREC_FUZZ", "300")), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),  # which template
            st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
            st.one_of(st.none(), st.integers(0, 400)),  # cut the entry short
        ),
        min_size=1,
        max_size=8,
    )
)
def test_damaged_entries_read_the_same_both_ways(edits: list[Any]) -> None:
    """Whatever the bytes, the C reader gives what decode_entry gives, or the same error."""
    key = bytes(range(32))
    ref = field_bytes(0x20, b"\x01call-1")
    templates = [
        _entry(key, ref + field_bytes(0x21, b"agent-7"), iv=bytes(16)),
        _entry(key, field_bytes(0x20, b"\x02" + bytes(range(20))), iv=b"\xff" * 16, draw=None),
        _entry(key, ref + field_bytes(0x22, b"p" * 32), iv=b"\x01" * 16, rule="sales"),
        _entry(key, ref, iv=b"\x02" * 16, threshold=2**56, reason=3),
        header(T_DECISION, 7) + encode_fields(T_DECISION, {"rule": "x", "reason": 1}),
        header(0x10, 5) + field_bytes(0x01, b"x"),
    ]
    records = []
    for which, flips, cut in edits:
        raw = bytearray(templates[which])
        for pos, value in flips:
            raw[pos % len(raw)] = value
        records.append(bytes(raw[:cut] if cut is not None else raw))
    fast, slow = _outcome(records, key, True), _outcome(records, key, False)
    if isinstance(fast, type) or isinstance(slow, type):
        assert fast == slow
    else:
        _same(fast.decisions, slow.decisions)
        assert [(e.index, e.type) for e in fast.others] == [(e.index, e.type) for e in slow.others]


def test_call_firsts_agree_on_many_calls_with_retries() -> None:
    """Enough calls for the C table to be split into partitions."""
    rng = np.random.default_rng(3)
    n = 40_000
    refs = [f"r{int(x)}" for x in rng.integers(0, 25_000, n)]
    epochs = [f"e{int(x)}" for x in rng.integers(0, 3, n)]
    d = _decisions(
        [r if i % 7 else r.encode() for i, r in enumerate(refs)],  # some as bytes: other calls
        epochs,
    )
    ways = _firsts_all_ways(d)
    assert all(w == ways[0] for w in ways)
    firsts = np.asarray(ways[0])
    assert (firsts < np.arange(n)).sum() > 5_000  # many retries were found


@needs_accel
def test_call_firsts_over_many_partitions_is_the_first_of_each_call() -> None:
    """Enough rows for the C grouping to split them into many partitions (about 8,192 rows
    each): repeats far apart, in other epochs, of the other kind, and rows without a
    reference, against a grouping by numpy on the whole keys."""
    n = 60_000
    rng = np.random.default_rng(3)
    ids = rng.integers(0, n // 3, n)  # most calls decided about three times
    epoch = (rng.integers(0, 2, n)).astype(np.int32)
    kind = rng.integers(1, 3, n).astype(np.uint8)
    kind[rng.random(n) < 0.05] = 0
    refs = np.zeros((n, 12), dtype=np.uint8)
    # even ids: 12 hex digits; odd ones: 11 (zero-padded to the width)
    text = b"".join(b"%012x" % i if i % 2 == 0 else b"%011x\0" % i for i in ids.tolist())
    refs[:] = np.frombuffer(text, dtype=np.uint8).reshape(n, 12)
    lens = np.where(ids % 2 == 0, 12, 11).astype(np.int64)
    raw = _hashing.native.call_firsts(epoch, kind, lens, refs, 12, os.urandom(16))
    got = np.frombuffer(raw, dtype=np.int64)
    key = (ids * 2 + epoch) * 3 + kind
    has = kind > 0
    _, first, inverse = np.unique(key[has], return_index=True, return_inverse=True)
    want = np.full(n, -1, dtype=np.int64)
    want[has] = np.flatnonzero(has)[first[inverse.ravel()]]
    assert np.array_equal(got, want)
    # many repeats, some of them in other partitions than their first
    assert np.unique(got[got >= 0]).size < 0.8 * np.count_nonzero(got >= 0)
    assert np.count_nonzero((got >= 0) & (np.arange(n) - got > 10_000)) > 1000
