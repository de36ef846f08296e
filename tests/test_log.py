"""Tests of the decision log (:mod:`sampledrec.log.writer`) and its verification
(:mod:`sampledrec.log.verify`), through the API on real stores (DESIGN.md section 8).

The layout of the files is parsed here from the format described in ``sampledrec.log.segments``'s
docstring, as an auditor would, so that tampering can be aimed at each part of a file.
Tests that show a bug or an undetected change are marked ``xfail(strict=True)``: they start
passing, and so failing, once it is fixed.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import sampledrec.log.segments
from sampledrec import FixedClock, Store
from sampledrec.errors import LogCorrupt, StoreError, UnknownAttributeWarning
from sampledrec.keys.keyring import LocalKeyring
from sampledrec.log.checkpoint import Checkpoint
from sampledrec.log.format import (
    DECISION,
    T_CHECKPOINT,
    T_DECISION,
    T_KEY_COMMIT,
    T_POLICY,
    Entry,
    to_micros,
)
from sampledrec.log.verify import LogReport, export_checkpoint, verify_log
from sampledrec.log.writer import DecisionLog, iter_entries
from sampledrec.sampling.sampler import REASONS, Decision

from .together import run_together

AT = "2030-01-01T10:00:00Z"
SEG0 = "seg-000000000000.log"
CHECKPOINTS = "checkpoints"


# -- the files, parsed independently of sampledrec ------------------------------------------------

SEG_HEADER = struct.Struct(">8s16sQ")  # magic, store id, first index
BATCH_HEADER = struct.Struct(">4sQII")  # magic, first index, count, payload length
TRAILER_HEAD = struct.Struct(">4sQB")  # magic, tree size, number of hashes


@dataclass
class Batch:
    start: int
    first: int
    count: int
    payload: int  # offset of the first record
    trailer: int  # offset of the trailer
    end: int
    records: list[tuple[int, int]] = field(default_factory=list)  # (entry offset, length)


def parse_segment(data: bytes) -> list[Batch]:
    assert data[:8] == b"SDRLOG01"
    pos = SEG_HEADER.size
    out = []
    while pos < len(data):
        magic, first, count, plen = BATCH_HEADER.unpack_from(data, pos)
        assert magic == b"BTCH"
        batch = Batch(pos, first, count, pos + BATCH_HEADER.size, 0, 0)
        rec = batch.payload
        for _ in range(count):
            (n,) = struct.unpack_from(">I", data, rec)
            batch.records.append((rec + 4, n))
            rec += 4 + n
        assert rec == batch.payload + plen
        batch.trailer = rec
        tmagic, _, nhashes = TRAILER_HEAD.unpack_from(data, rec)
        assert tmagic == b"ROOT"
        batch.end = pos = rec + TRAILER_HEAD.size + 32 * nhashes
        out.append(batch)
    return out


def split_checkpoints(data: bytes) -> list[tuple[int, bytes]]:
    """(offset of the length prefix, note) of each checkpoint record."""
    out = []
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append((pos, data[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    assert pos == len(data)
    return out


def join_checkpoints(notes: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(n)) + n for n in notes)


# -- helpers --------------------------------------------------------------------------------------


def verify(path: Path, **kw: Any) -> LogReport:
    """Verify like ``sampledrec log verify`` does: with the store id from store.json and the
    public key from the keyring."""
    store = Store.open(path)
    return verify_log(path, store_id=store.store_id, public_key=store.public_key, **kw)


def unsigned_notes(report: LogReport) -> list[str]:
    return [n for n in report.notes if "not signed yet" in n]


def checks(report: LogReport) -> set[str]:
    return {f.check for f in report.findings}


def describe(report: LogReport) -> str:
    return "; ".join(f"{f.check}: {f.message} ({f.where}, {f.index})" for f in report.findings)


def entries(path: Path, *, personal: bool = True) -> list[Entry]:
    store = Store.open(path)
    return list(iter_entries(path / "log", store.keyring if personal else None))


def decisions(path: Path) -> list[Entry]:
    return [e for e in entries(path) if e.type == T_DECISION]


def make_store(path: Path, refs: list[str], **log_kw: Any) -> Store:
    """A store whose log holds a decision for each reference, closed."""
    store = Store.init(path)
    with store.open_log(**log_kw) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        for ref in refs:
            sampler.decide(ref, {"agent": "agent-7"})
    return store


def snapshot(store: Store, dest: Path, refs: list[list[str]]) -> Path:
    """A copy of ``store`` taken while its log is open and idle: a batch per list of
    references, a checkpoint after the first, none after the others (what a crash leaves)."""
    assert len(refs) >= 2  # the checkpoint's own entry goes in with the second batch
    with store.open_log(checkpoint_every=1e9) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        for k, group in enumerate(refs):
            for ref in group:
                sampler.decide(ref)
            log.flush()
            if k == 0:
                log.checkpoint()
        shutil.copytree(store.path, dest)
    return dest


def export(path: Path, dest: Path) -> Path:
    """Export the latest checkpoint with the epoch-key commitments, as a DPO would keep it."""
    store = Store.open(path)
    with store.open_log() as log:
        cp = log.checkpoint()
        public_key = log.signer.public_key
    commitments = [
        (e.index, str(e.fields["epoch_id"]), bytes(e.fields["commitment"]))
        for e in entries(path)
        if e.type == T_KEY_COMMIT
    ]
    dest.write_bytes(export_checkpoint(cp, public_key, commitments))
    return dest


def flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small closed store: the entries of ``Store.init``, key commitments, 3 decisions."""
    path = tmp_path_factory.mktemp("template") / "s"
    make_store(path, ["call-A", "call-B", "call-C"])
    assert verify(path).ok
    return path


@pytest.fixture
def small(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template store."""
    return Path(shutil.copytree(template, tmp_path / "s"))


# -- entries round trip, and nothing personal in clear --------------------------------------------


def assert_entry_is(entry: Entry, d: Decision) -> None:
    f = entry.fields
    assert entry.type == T_DECISION
    assert entry.time_us == to_micros(d.decided_at)
    assert f["epoch_id"] == d.epoch_id
    assert f["policy_version"] == bytes.fromhex(d.policy_version)
    assert f["rule"] == d.rule
    assert f["threshold"] == d.threshold
    assert f["draw"] == d.draw
    assert REASONS[f["reason"]] == d.reason
    assert f["call_ref"] == d.call_ref
    assert type(f["call_ref"]) is type(d.call_ref)
    assert f.get("agent") == d.agent
    pseudonym = f.get("caller_pseudonym")
    assert (pseudonym.hex() if pseudonym is not None else None) == d.caller_pseudonym
    assert entry.kid == "calls/2030-01"
    assert not entry.sealed


PHONE = "+33612345678"
REFS: list[str | bytes] = [
    "SIP-CALL-7f3a9c1e@pbx.example",
    b"\x00\x01BINARY-REF\xfe\xff",
    "x" * 256,
    "appel-\u00e9t\u00e9-\U0001f4de",
]


LEGAL_POLICY = """
[[rules]]
name = "legal"
match = { queue = "legal" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "MiFID II article 16(7)"
justification = "every call of this queue must be recorded by law"
retention = "5 years"

[default]
rate = "0.2"
purpose = "quality"
retention = "6 months"
"""
AGENTS = ["agent-Zeta-42", "\u00e9quipe-\u00e9t\u00e9", "a" * 300, "7"]


def test_entries_round_trip(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(LEGAL_POLICY, encoding="utf-8")
    store = Store.init(tmp_path / "s", policy=tmp_path / "policy.toml")
    clock = FixedClock(AT)
    with store.open_log() as log:
        sampler = store.sampler(clock=clock, log=log)
        made = [
            sampler.decide(ref, {"agent": agent}, caller=PHONE)
            for ref, agent in zip(REFS, AGENTS, strict=True)
        ]
        made.append(sampler.decide("no-agent-ref"))
        made.append(sampler.decide("legal-ref", {"queue": "legal"}))  # T(1) = 2**56
        clock.advance(seconds=3)
        batch = sampler.decide_batch(
            ["batch-1", b"batch-2", "batch-3"],
            {"agent": ["a", None, 7], "queue": ["legal", "sales", None]},
        )
        made += list(batch)
    assert made[len(REFS) + 1].threshold == 2**56
    assert made[len(REFS) + 1].record
    logged = decisions(store.path)
    assert len(logged) == len(made)
    for entry, d in zip(logged, made, strict=True):
        assert_entry_is(entry, d)
    # Without the keyring, the personal fields stay sealed and the public ones read.
    for entry in (e for e in entries(store.path, personal=False) if e.type == T_DECISION):
        assert entry.sealed
        assert "call_ref" not in entry.fields
        assert "agent" not in entry.fields
        assert entry.fields["rule"] in ("default", "legal")
    # Indices are positions in the log, in order.
    assert [e.index for e in entries(store.path)] == list(range(verify(store.path).size))


def test_no_personal_field_in_clear(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    with store.open_log() as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        made = [sampler.decide(ref, {"agent": "agent-Zeta-42"}, caller=PHONE) for ref in REFS]
    files = sorted((store.path / "log").iterdir())
    assert {p.name for p in files} == {SEG0, CHECKPOINTS}
    blob = b"".join(p.read_bytes() for p in files)
    pseudonym = made[0].caller_pseudonym
    assert pseudonym is not None
    secrets_ = [
        PHONE.encode(),
        PHONE[1:].encode(),
        PHONE[3:].encode(),
        b"agent-Zeta-42",
        b"Zeta",
        bytes.fromhex(pseudonym),
        pseudonym.encode(),
    ]
    for ref in REFS:
        raw = ref.encode() if isinstance(ref, str) else ref
        secrets_ += [raw, raw[:8]]
    for secret in secrets_:
        assert secret not in blob, secret
    # While the keyring still opens them.
    assert [e.fields["call_ref"] for e in decisions(store.path)] == REFS


def test_a_wrong_sealing_key_leaves_the_fields_sealed(small: Path) -> None:
    store = Store.open(small)
    for key in (store.keys_path / "periods").iterdir():
        key.write_bytes(os.urandom(32))
    store = Store.open(small)
    found = list(iter_entries(small / "log", store.keyring))
    refs = {"call-A", "call-B", "call-C"}
    for entry in found:
        if entry.type == T_DECISION:
            assert entry.sealed or entry.fields.get("call_ref") in refs


# -- verification of good logs --------------------------------------------------------------------


def test_verify_a_fresh_store(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    report = verify(store.path)
    assert report.ok, describe(report)
    assert report.size == len(entries(store.path)) > 0
    assert report.latest_checkpoint == report.size
    assert report.origin == store.origin
    assert report.entries_by_type["log_created"] == 1
    assert report.entries_by_type["policy"] == 1
    assert unsigned_notes(report) == []
    assert report.to_json()["ok"] is True


def test_verify_a_busy_log(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    clock = FixedClock(AT)
    made = 0
    for session in range(4):
        with store.open_log(clock=clock, checkpoint_every=0.0) as log:
            sampler = store.sampler(clock=clock, log=log)
            for day in range(3):  # every day a new epoch, its key committed before use
                for i in range(40):
                    queue = "legal" if i % 4 == 0 else "sales"
                    # The default policy of the first sessions has no rule on queue: a warning.
                    with pytest.warns(UnknownAttributeWarning) if session < 2 else nullcontext():
                        sampler.decide(
                            f"s{session}-d{day}-{i}", {"agent": f"a{i % 5}", "queue": queue}
                        )
                batch = sampler.decide_batch([f"s{session}-d{day}-b{i}" for i in range(500)])
                made += 40 + len(batch)
                clock.advance(days=1)
        if session == 1:
            policy = tmp_path / "policy.toml"
            policy.write_text(LEGAL_POLICY, encoding="utf-8")
            store.apply_policy(policy, clock=clock)
    report = verify(store.path)
    assert report.ok, describe(report)
    assert report.entries_by_type["decision"] == made
    assert report.entries_by_type["policy"] == 2
    assert report.entries_by_type["key_commit"] >= 12
    assert report.size == len(entries(store.path))
    assert report.latest_checkpoint == report.size
    assert report.checkpoints >= 8
    logged = decisions(store.path)
    assert len({d.fields["policy_version"] for d in logged}) == 2
    assert {d.fields["threshold"] for d in logged if d.fields["rule"] == "legal"} == {2**56}


def test_a_genuine_log_passes_against_its_exported_checkpoint(small: Path, tmp_path: Path) -> None:
    exported = export(small, tmp_path / "export.json")
    doc = json.loads(exported.read_text(encoding="utf-8"))
    assert doc["format"] == "sampledrec-checkpoint"
    assert doc["commitments"]
    report = verify(small, checkpoint_file=exported)
    assert report.ok, describe(report)
    assert report.exported_checked
    # And still after more appends.
    store = Store.open(small)
    with store.open_log() as log:
        store.sampler(clock=FixedClock(AT), log=log).decide("later")
    report = verify(small, checkpoint_file=exported)
    assert report.ok, describe(report)


# -- group commit and durability ------------------------------------------------------------------

READER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from sampledrec import Store
    from sampledrec.log.writer import iter_entries
    store = Store.open(sys.argv[1])
    found = iter_entries(Path(sys.argv[1]) / "log", store.keyring)
    print(json.dumps([e.fields["call_ref"] for e in found if "call_ref" in e.fields]))
    """
)


def test_wait_durable_returns_the_index_of_the_entry(small: Path) -> None:
    store = Store.open(small)
    with store.open_log(group_commit=0.05) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        made = [sampler.decide(f"durable-{i}") for i in range(20)]
        ticket = made[-1].log_ticket
        assert ticket is not None
        index = log.wait_durable(ticket)
        assert index >= 0
        assert log.wait_durable(ticket) == -1  # the index is handed out once
        # Durable: on disk now, for this process and for any other reader.
        on_disk = {e.index: e for e in iter_entries(small / "log", store.keyring, since=index)}
        assert on_disk[index].fields["call_ref"] == "durable-19"
        earlier = {e.fields.get("call_ref") for e in iter_entries(small / "log", store.keyring)}
        assert {d.call_ref for d in made} <= earlier
        proc = subprocess.run(
            [sys.executable, "-c", READER, str(small)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert {d.call_ref for d in made} <= set(json.loads(proc.stdout))
        assert log.size > index


def test_decide_returns_before_the_entry_is_durable(small: Path) -> None:
    store = Store.open(small)
    seg = small / "log" / SEG0
    with store.open_log(group_commit=2.0) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        time.sleep(0.1)  # let the writer settle (the key commitments are durable already)
        before = seg.stat().st_size
        d = sampler.decide("queued")
        assert d.log_ticket is not None
        assert seg.stat().st_size == before  # queued, waiting for the group commit
        started = time.monotonic()
        index = log.wait_durable(d.log_ticket)
        # A waiter cuts the group wait short.
        assert time.monotonic() - started < 1.5
        assert seg.stat().st_size > before
        assert entries(small)[index].fields["call_ref"] == "queued"


def test_group_commit_writes_in_batches_within_the_interval(small: Path) -> None:
    store = Store.open(small)
    seg = small / "log" / SEG0
    with store.open_log(group_commit=0.05) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        time.sleep(0.1)
        before = len(parse_segment(seg.read_bytes()))
        size_before = seg.stat().st_size
        started = time.monotonic()
        sampler.decide("first-of-a-burst")
        while seg.stat().st_size == size_before:  # nobody waits: the writer's own deadline
            assert time.monotonic() - started < 2.0, "the entry was not written within 2 s"
            time.sleep(0.005)
        for i in range(300):
            sampler.decide(f"burst-{i}")
        log.flush()
        batches = parse_segment(seg.read_bytes())[before:]
    # 301 decisions (and maybe a checkpoint entry) in a few batches, not one fsync each.
    assert sum(b.count for b in batches) >= 301
    assert len(batches) < 30


def test_appending_to_a_closed_log_fails(small: Path) -> None:
    store = Store.open(small)
    log = store.open_log()
    log.close()
    log.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        log.append(T_POLICY, {"version": b"\x00" * 32})


# -- tampering: every byte of every file is covered -----------------------------------------------


def segment_regions(data: bytes) -> dict[int, tuple[str, frozenset[str]]]:
    """For each byte of a segment: its part, and the checks that may report a change there."""
    structure, tree = frozenset({"structure"}), frozenset({"tree"})
    either = structure | tree
    out = dict.fromkeys(range(SEG_HEADER.size), ("segment header", structure))
    for b in parse_segment(data):
        for i in range(b.start, b.payload):
            out[i] = ("batch header", structure)
        for off, n in b.records:
            for i in range(off - 4, off):
                out[i] = ("record length", either)
            for i in range(off, off + n):
                out[i] = ("entry", tree)
        for i in range(b.trailer, b.end):
            out[i] = ("trailer", either)
    assert sorted(out) == list(range(len(data)))
    return out


# What a damaged file may also break: the checkpoints beyond the damage, the log's identity
# when its first entry is lost, the well-formedness of a changed entry.
CONSEQUENCES = frozenset({"structure", "tree", "checkpoints", "identity"})


def assert_detected(report: LogReport, part: str, offset: int, expected: frozenset[str]) -> None:
    found = checks(report)
    where = f"{part} at offset {offset}"
    assert found, f"a change to the {where} was not detected"
    assert found & expected, f"{where}: {describe(report)}"
    assert found <= expected | CONSEQUENCES, f"{where}: {describe(report)}"


def flippable_segment_offsets(data: bytes) -> list[int]:
    """Every offset but the top byte of each batch's count: a count raised by 2**24 or more
    makes hashing allocate gigabytes (see test_a_huge_batch_count_is_reported)."""
    skip = {b.start + 12 for b in parse_segment(data)}
    return [i for i in range(len(data)) if i not in skip]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """The smallest store with every kind of entry, for the loops over every byte: the
    entries of ``Store.init``, one key commitment and two decisions (one with sealed fields),
    each in a batch of its own, and three checkpoints."""
    store = Store.init(tmp_path / "tiny")
    policy = bytes.fromhex(store.policy().version)
    with store.open_log(checkpoint_every=1e9) as log:
        log.wait_durable(log.append(T_KEY_COMMIT, {"epoch_id": EPOCH, "commitment": bytes(32)}))
        decision = crafted_decision(EPOCH, policy)
        log.wait_durable(log.append(T_DECISION, {**decision, "agent": "a"}))
        del decision["call_ref"]
        log.wait_durable(log.append(T_DECISION, decision))
    assert len(parse_segment((store.path / "log" / SEG0).read_bytes())) >= 5
    return store.path


def verifier(path: Path) -> Callable[[], LogReport]:
    """``verify(path)`` with the store's identity read once (the loops call it per byte)."""
    store = Store.open(path)
    store_id, public_key = store.store_id, store.public_key
    return lambda: verify_log(path, store_id=store_id, public_key=public_key)


@pytest.mark.slow
def test_a_bit_flip_anywhere_in_a_segment_is_detected(tiny: Path) -> None:
    seg = tiny / "log" / SEG0
    orig = seg.read_bytes()
    regions = segment_regions(orig)
    offsets = flippable_segment_offsets(orig)
    assert len(offsets) > len(orig) * 0.95
    check = verifier(tiny)
    assert check().ok
    for offset in offsets:
        part, allowed = regions[offset]
        data = bytearray(orig)
        data[offset] ^= 1 << (offset % 8)
        seg.write_bytes(bytes(data))
        assert_detected(check(), part, offset, allowed)
    seg.write_bytes(orig)
    assert check().ok


@pytest.mark.slow
def test_a_bit_flip_anywhere_in_the_checkpoints_is_detected(tiny: Path) -> None:
    path = tiny / "log" / CHECKPOINTS
    orig = path.read_bytes()
    records = split_checkpoints(orig)
    assert len(records) >= 3
    prefixes = {pos + i for pos, _ in records for i in range(4)}
    check = verifier(tiny)
    for offset in range(len(orig)):
        data = bytearray(orig)
        data[offset] ^= 1 << (offset % 8)
        path.write_bytes(bytes(data))
        report = check()
        if offset in prefixes:
            assert_detected(
                report, "record length", offset, frozenset({"structure", "checkpoints"})
            )
        else:
            assert_detected(report, "signed note", offset, frozenset({"checkpoints"}))
    path.write_bytes(orig)
    assert check().ok


def test_a_non_canonical_signature_is_detected(small: Path) -> None:
    # base64 decoding ignores the padding bits of the last character: the same signature
    # bytes can be written several ways, and only the canonical one is accepted.
    path = small / "log" / CHECKPOINTS
    notes = [n for _, n in split_checkpoints(path.read_bytes())]
    text = notes[-1].decode()
    body, _, sigs = text.rpartition("\n\n")
    line = sigs.rstrip("\n")
    prefix, _, b64 = line.rpartition(" ")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stripped = b64.rstrip("=")
    last = alphabet.index(stripped[-1])
    changed = stripped[:-1] + alphabet[last ^ 1] + b64[len(stripped) :]
    assert changed != b64
    assert base64.b64decode(changed) == base64.b64decode(b64)
    notes[-1] = f"{body}\n\n{prefix} {changed}\n".encode()
    path.write_bytes(join_checkpoints(notes))
    assert checks(verify(small)) == {"checkpoints"}


@pytest.mark.parametrize("where", ["end", "start"])
def test_a_duplicated_checkpoint_record_is_detected(small: Path, where: str) -> None:
    path = small / "log" / CHECKPOINTS
    notes = [n for _, n in split_checkpoints(path.read_bytes())]
    notes = [*notes, notes[-1]] if where == "end" else [notes[0], *notes]
    path.write_bytes(join_checkpoints(notes))
    assert checks(verify(small)) == {"checkpoints"}


def test_an_added_signature_line_is_detected(small: Path) -> None:
    path = small / "log" / CHECKPOINTS
    notes = [n for _, n in split_checkpoints(path.read_bytes())]
    fake = base64.b64encode(b"\x01\x02\x03\x04" + b"\x00" * 64).decode()
    notes[-1] += f"\u2014 witness.example {fake}\n".encode()
    path.write_bytes(join_checkpoints(notes))
    assert checks(verify(small)) == {"checkpoints"}


def test_reordered_checkpoints_are_detected(small: Path) -> None:
    path = small / "log" / CHECKPOINTS
    notes = [n for _, n in split_checkpoints(path.read_bytes())]
    notes[0], notes[1] = notes[1], notes[0]
    path.write_bytes(join_checkpoints(notes))
    report = verify(small)
    assert "checkpoints" in checks(report)
    assert any("backwards" in f.message for f in report.findings)


def test_a_changed_store_id_is_detected_with_the_store_id(small: Path) -> None:
    seg = small / "log" / SEG0
    flip(seg, 8)
    report = verify(small)
    assert {"structure", "identity"} <= checks(report) <= CONSEQUENCES


def test_a_changed_store_id_is_detected_from_the_log_alone(small: Path) -> None:
    # Without store.json: the segments' store id against the log_created entry.
    flip(small / "log" / SEG0, 8)
    report = verify_log(small)
    assert checks(report) == {"identity"}
    assert "another store id" in report.findings[0].message


def truncated_copy(src: Path, dest: Path, cut: int) -> Path:
    shutil.copytree(src, dest)
    seg = dest / "log" / SEG0
    seg.write_bytes(seg.read_bytes()[:cut])
    return dest


def test_truncation_of_the_segment(tmp_path: Path) -> None:
    # A log with entries after its latest checkpoint, as a crash leaves it.
    store = Store.init(tmp_path / "s")
    snap = snapshot(store, tmp_path / "snap", [["t1", "t2"], ["t3"], ["t4", "t5"]])
    data = (snap / "log" / SEG0).read_bytes()
    batches = parse_segment(data)
    report = verify(snap)
    assert report.ok, describe(report)
    latest = report.latest_checkpoint
    assert latest is not None
    assert report.size > latest
    assert unsigned_notes(report) == [
        f"{report.size - latest} entries after the latest checkpoint are not signed yet"
    ]
    cuts = {0, 5, SEG_HEADER.size - 1, SEG_HEADER.size}
    for b in batches:
        cuts |= {b.start + 1, b.payload + 3, b.trailer + 5, b.end - 1, b.end}
    for k, cut in enumerate(sorted(cuts)):
        copy = truncated_copy(snap, tmp_path / f"cut{k}", cut)
        report = verify(copy)
        at_boundary = cut in {b.end for b in batches}
        size = sum(b.count for b in batches if b.end <= cut)
        if at_boundary and size >= latest:
            # Indistinguishable from a crash before the lost batches were written: passes,
            # and says how many entries are not signed yet (documented in sampledrec.log.verify).
            assert report.ok, f"cut at {cut}: {describe(report)}"
            assert report.size == size
            unsigned = size - latest
            assert unsigned_notes(report) == (
                [f"{unsigned} entries after the latest checkpoint are not signed yet"]
                if unsigned
                else []
            )
        elif at_boundary:
            assert checks(report) == {"checkpoints"}, f"cut at {cut}: {describe(report)}"
            assert any("truncated below a signed checkpoint" in f.message for f in report.findings)
        else:
            assert "structure" in checks(report), f"cut at {cut}: {describe(report)}"
            assert checks(report) <= CONSEQUENCES
        shutil.rmtree(copy)


def test_truncating_a_closed_log_always_fails(small: Path) -> None:
    # After close, the last checkpoint covers every entry: any truncation is below it.
    seg = small / "log" / SEG0
    orig = seg.read_bytes()
    for b in parse_segment(orig)[1:]:
        seg.write_bytes(orig[: b.start])
        assert not verify(small).ok
    seg.write_bytes(orig[:-1])
    assert not verify(small).ok
    seg.write_bytes(orig)


@pytest.mark.parametrize("keep_checkpoints", [True, False])
def test_deleting_every_entry_is_detected(small: Path, keep_checkpoints: bool) -> None:
    seg = small / "log" / SEG0
    seg.write_bytes(seg.read_bytes()[: SEG_HEADER.size])
    if not keep_checkpoints:
        (small / "log" / CHECKPOINTS).write_bytes(b"")
    report = verify(small)
    assert "identity" in checks(report)
    if keep_checkpoints:
        assert "checkpoints" in checks(report)


def test_deleting_the_checkpoints_file_is_detected(small: Path) -> None:
    (small / "log" / CHECKPOINTS).unlink()
    report = verify(small)
    assert "files" in checks(report)
    assert any("checkpoints file is missing" in f.message for f in report.findings)


def test_emptying_the_checkpoints_file_is_detected(small: Path) -> None:
    (small / "log" / CHECKPOINTS).write_bytes(b"")
    assert checks(verify(small)) == {"checkpoints"}


def test_deleting_a_checkpoint_the_log_records_is_detected(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    snap = snapshot(store, tmp_path / "snap", [["r1"], ["r2"]])
    path = snap / "log" / CHECKPOINTS
    notes = [n for _, n in split_checkpoints(path.read_bytes())]
    last = Checkpoint.parse(notes[-1])
    recorded = [e for e in entries(snap) if e.type == T_CHECKPOINT]
    assert recorded[-1].fields["size"] == last.size  # the log's last entries reference it
    path.write_bytes(join_checkpoints(notes[:-1]))
    report = verify(snap)
    assert checks(report) == {"checkpoints"}
    assert any("no longer holds" in f.message for f in report.findings)


def test_deleting_the_final_checkpoint_of_a_closed_log_is_not_detectable(small: Path) -> None:
    # Documented limitation: the checkpoint written at close is referenced by no entry, so
    # removing it looks like a crash just before it was written. The entries stay covered by
    # the earlier checkpoints and the report says how many are unsigned.
    path = small / "log" / CHECKPOINTS
    notes = [n for _, n in split_checkpoints(path.read_bytes())]
    recorded = {e.fields["size"] for e in entries(small) if e.type == T_CHECKPOINT}
    assert Checkpoint.parse(notes[-1]).size not in recorded
    path.write_bytes(join_checkpoints(notes[:-1]))
    report = verify(small)
    assert report.ok
    assert len(unsigned_notes(report)) == 1


@pytest.mark.parametrize("name", ["extra.bin", ".hidden", "seg-1.log", "checkpoints.bak"])
def test_an_unexpected_file_in_the_log_folder_is_detected(small: Path, name: str) -> None:
    (small / "log" / name).write_bytes(b"x")
    report = verify(small)
    assert checks(report) == {"files"}
    assert report.findings[0].where == name


def test_an_unexpected_folder_or_link_in_the_log_folder_is_detected(small: Path) -> None:
    (small / "log" / "sub").mkdir()
    report = verify(small)
    assert checks(report) == {"files"}
    shutil.rmtree(small / "log" / "sub")
    (small / "log" / "seg-000000009999.log").symlink_to(small / "log" / SEG0)
    assert checks(verify(small)) == {"files"}


def test_a_missing_log_folder_is_reported(small: Path) -> None:
    shutil.rmtree(small / "log")
    assert checks(verify(small)) == {"files"}


@pytest.mark.parametrize(
    "garbage", [b"\x00", b"BTCH", b"garbage at the end of the log" * 3, bytes(range(256))]
)
def test_garbage_appended_is_detected(small: Path, garbage: bytes) -> None:
    with open(small / "log" / SEG0, "ab") as fh:
        fh.write(garbage)
    assert checks(verify(small)) == {"structure"}
    with open(small / "log" / CHECKPOINTS, "ab") as fh:
        fh.write(garbage)
    assert "structure" in checks(verify(small))


def test_a_replayed_batch_is_detected(small: Path) -> None:
    seg = small / "log" / SEG0
    data = seg.read_bytes()
    last = parse_segment(data)[-1]
    seg.write_bytes(data + data[last.start : last.end])
    assert checks(verify(small)) == {"structure"}


# -- several segments -----------------------------------------------------------------------------


@pytest.fixture
def segmented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A closed store whose log spans several small segments."""
    monkeypatch.setattr(sampledrec.log.segments, "SEGMENT_BYTES", 1024)
    store = make_store(tmp_path / "s", [f"seg-call-{i}" for i in range(3)])
    with store.open_log() as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        for i in range(4):
            sampler.decide_batch([f"more-{i}-{j}" for j in range(12)])
            log.flush()
    names = sorted(p.name for p in (store.path / "log").glob("seg-*.log"))
    assert len(names) >= 5
    report = verify(store.path)
    assert report.ok, describe(report)
    return store.path


def segments(path: Path) -> list[Path]:
    return sorted((path / "log").glob("seg-*.log"))


def test_several_segments_verify_and_decode(segmented: Path) -> None:
    segs = segments(segmented)
    firsts = [int(p.name[4:16]) for p in segs]
    assert firsts[0] == 0
    assert firsts == sorted(set(firsts))
    for p, first in zip(segs, firsts, strict=True):
        assert SEG_HEADER.unpack_from(p.read_bytes())[2] == first
        assert parse_segment(p.read_bytes())[0].first == first
    assert len(decisions(segmented)) == 3 + 48
    assert [e.index for e in entries(segmented)] == list(range(verify(segmented).size))


def test_swapped_segments_are_detected(segmented: Path) -> None:
    a, b = segments(segmented)[1:3]
    tmp = a.with_name("tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    assert "structure" in checks(verify(segmented))


def test_a_renamed_segment_is_detected(segmented: Path) -> None:
    seg = segments(segmented)[2]
    first = int(seg.name[4:16])
    seg.rename(seg.with_name(f"seg-{first + 1:012d}.log"))
    assert "structure" in checks(verify(segmented))


@pytest.mark.parametrize("which", [0, 2, -1])
def test_a_deleted_segment_is_detected(segmented: Path, which: int) -> None:
    segments(segmented)[which].unlink()
    report = verify(segmented)
    expected = {"checkpoints"} if which == -1 else {"structure"}
    assert expected <= checks(report), describe(report)


def test_a_duplicated_segment_is_detected(segmented: Path) -> None:
    segs = segments(segmented)
    size = verify(segmented).size
    shutil.copy(segs[-1], segs[-1].with_name(f"seg-{size:012d}.log"))
    assert "structure" in checks(verify(segmented))


def test_a_bit_flip_in_an_earlier_segment_is_detected(segmented: Path) -> None:
    # Every 23rd byte of a middle segment (real decisions, sealed by the batch encoder).
    seg = segments(segmented)[1]
    orig = seg.read_bytes()
    regions = segment_regions(orig)
    check = verifier(segmented)
    for offset in flippable_segment_offsets(orig)[::23]:
        flip(seg, offset, offset % 8)
        part, allowed = regions[offset]
        assert_detected(check(), part, offset, allowed)
        seg.write_bytes(orig)
    assert check().ok


def test_appending_continues_in_the_last_segment(segmented: Path, tmp_path: Path) -> None:
    store = Store.open(segmented)
    with store.open_log() as log:
        assert not log.recovery
        store.sampler(clock=FixedClock(AT), log=log).decide("after-reopen")
    report = verify(segmented)
    assert report.ok, describe(report)
    assert decisions(segmented)[-1].fields["call_ref"] == "after-reopen"


# -- an exported checkpoint catches a rewritten log -----------------------------------------------


def decisions_in(batch: Batch, found: list[Entry]) -> bool:
    return any(
        batch.first <= e.index < batch.first + batch.count for e in found if e.type == T_DECISION
    )


def replay(log: DecisionLog, source: list[Entry], skip: set[str]) -> None:
    """Append the policy, key and decision entries of ``source`` again (minus ``skip``)."""
    for e in source:
        if e.type in (T_POLICY, T_KEY_COMMIT, T_DECISION) and e.fields.get("call_ref") not in skip:
            log.append(e.type, dict(e.fields), at=e.time)
    log.flush()


def test_a_log_rewritten_with_a_new_key_fails_only_against_the_export(
    small: Path, tmp_path: Path
) -> None:
    exported = export(small, tmp_path / "export.json")
    store = Store.open(small)
    old = entries(small)
    # The operator drops one decision: a new log from scratch, signed with a new signing key
    # put in the store's keyring (which verification trusts).
    shutil.rmtree(small / "log")
    (store.keys_path / "log-signing.key").write_bytes(os.urandom(32))
    keyring = LocalKeyring(store.keys_path)
    log = DecisionLog.create(
        small, keyring, origin=store.origin, store_id=store.store_id, simulated=False
    )
    with log:
        replay(log, old, skip={"call-B"})
    assert [e.fields["call_ref"] for e in decisions(small)] == ["call-A", "call-C"]
    report = verify(small)
    assert report.ok, describe(report)  # consistent in itself
    report = verify(small, checkpoint_file=exported)
    assert checks(report) == {"exported"}
    messages = " ".join(f.message for f in report.findings)
    assert "signed by another key" in messages
    assert "commitment is not in the log" not in messages  # the commitments were replayed


def test_a_log_re_signed_with_a_key_not_in_the_keyring_fails(small: Path, tmp_path: Path) -> None:
    store = Store.open(small)
    old = entries(small)
    shutil.rmtree(small / "log")
    shutil.copytree(store.keys_path, tmp_path / "other-keys")
    (tmp_path / "other-keys" / "log-signing.key").write_bytes(os.urandom(32))
    keyring = LocalKeyring(tmp_path / "other-keys")
    log = DecisionLog.create(
        small, keyring, origin=store.origin, store_id=store.store_id, simulated=False
    )
    with log:
        replay(log, old, skip=set())
    report = verify(small)
    assert checks(report) == {"identity"}
    assert verify_log(small).ok  # the log alone is consistent: the key pins it to the store


def test_a_log_truncated_and_re_extended_fails_only_against_the_export(
    small: Path, tmp_path: Path
) -> None:
    exported = export(small, tmp_path / "export.json")
    size = verify(small).size
    old = entries(small)
    seg = small / "log" / SEG0
    data = seg.read_bytes()
    # Cut just before the batch with the decisions, keep the checkpoints up to there, and
    # write a different history over it with the same signing key.
    batches = parse_segment(data)
    cut = next(b for b in batches if decisions_in(b, old))
    seg.write_bytes(data[: cut.start])
    path = small / "log" / CHECKPOINTS
    notes = [n for _, n in split_checkpoints(path.read_bytes())]
    path.write_bytes(join_checkpoints([n for n in notes if Checkpoint.parse(n).size <= cut.first]))
    store = Store.open(small)
    with store.open_log() as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        while log.size <= size + 2:
            sampler.decide(f"rewritten-{log.size}")
            log.flush()
    report = verify(small)
    assert report.ok, describe(report)
    assert report.size > size
    report = verify(small, checkpoint_file=exported)
    assert checks(report) == {"exported"}
    assert any("rewritten after the export" in f.message for f in report.findings)


def test_a_log_truncated_below_the_export_fails_against_it(small: Path, tmp_path: Path) -> None:
    exported = export(small, tmp_path / "export.json")
    seg = small / "log" / SEG0
    data = seg.read_bytes()
    old = entries(small)
    cut = next(b for b in parse_segment(data) if decisions_in(b, old))
    seg.write_bytes(data[: cut.start])
    path = small / "log" / CHECKPOINTS
    notes = [n for _, n in split_checkpoints(path.read_bytes())]
    path.write_bytes(join_checkpoints([n for n in notes if Checkpoint.parse(n).size <= cut.first]))
    assert verify(small).ok  # the log folder alone looks like a crash
    report = verify(small, checkpoint_file=exported)
    assert checks(report) == {"exported"}
    assert any("truncated after the export" in f.message for f in report.findings)


def test_an_unusable_export_is_reported(small: Path, tmp_path: Path) -> None:
    exported = export(small, tmp_path / "export.json")
    doc = json.loads(exported.read_text(encoding="utf-8"))
    lines = doc["checkpoint"].split("\n")
    lines[1] = str(int(lines[1]) + 1)  # a forged size: the signature no longer verifies
    doc["checkpoint"] = "\n".join(lines)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    report = verify(small, checkpoint_file=bad)
    assert checks(report) == {"exported"}
    assert "unusable" in report.findings[0].message
    (tmp_path / "notjson.json").write_text("{", encoding="utf-8")
    assert checks(verify(small, checkpoint_file=tmp_path / "notjson.json")) == {"exported"}
    assert checks(verify(small, checkpoint_file=tmp_path / "missing.json")) == {"exported"}


def test_an_exported_commitment_missing_from_the_log_is_detected(
    small: Path, tmp_path: Path
) -> None:
    exported = export(small, tmp_path / "export.json")
    doc = json.loads(exported.read_text(encoding="utf-8"))
    doc["commitments"][0]["commitment"] = "00" * 32
    exported.write_text(json.dumps(doc), encoding="utf-8")
    report = verify(small, checkpoint_file=exported)
    assert checks(report) == {"exported"}
    assert "commitment is not in the log" in report.findings[0].message


# -- the rules: keys committed before use, policies logged before use -----------------------------


EPOCH = "2030-01-01"


def crafted_decision(epoch: str, policy: bytes, ref: str = "crafted") -> dict[str, Any]:
    return {
        "epoch_id": epoch,
        "policy_version": policy,
        "rule": "default",
        "threshold": 2**55,
        "draw": 12345,
        "reason": 0,
        "call_ref": ref,
    }


def test_when_durable_calls_back_once_the_entries_are_on_disk(small: Path) -> None:
    store = Store.open(small)
    calls: list[tuple[str, dict[int, int] | BaseException]] = []
    done = threading.Event()

    def callback(result: dict[int, int] | BaseException) -> None:
        calls.append((threading.current_thread().name, result))
        done.set()

    # A group commit of a minute: the callback asks the writer not to wait for more.
    with store.open_log(group_commit=60) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        made = [sampler.decide(f"called-back-{i}") for i in range(20)]
        tickets = [made[5].log_ticket, made[19].log_ticket]
        assert None not in tickets
        log.when_durable(tickets, callback)  # type: ignore[arg-type]
        assert done.wait(30)
        ((thread, indexes),) = calls
        assert thread != threading.current_thread().name  # the writer's thread
        assert isinstance(indexes, dict) and set(indexes) == set(tickets)
        on_disk = {e.index: e for e in iter_entries(small / "log", store.keyring)}
        for ticket, call in ((tickets[0], "called-back-5"), (tickets[1], "called-back-19")):
            assert on_disk[indexes[ticket]].fields["call_ref"] == call  # type: ignore[index]
        # Durable already: called at once, on the caller's thread (the indexes handed out).
        log.when_durable(tickets, callback)  # type: ignore[arg-type]
        assert calls[1] == (threading.current_thread().name, dict.fromkeys(tickets, -1))
        with pytest.raises(ValueError, match="at least one ticket"):
            log.when_durable([], callback)
    with pytest.raises(StoreError, match="closed"):
        log.when_durable([10**9], callback)


def test_when_durable_hears_the_writers_failure(
    small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(small)
    heard: list[dict[int, int] | BaseException] = []
    done = threading.Event()

    def callback(result: dict[int, int] | BaseException) -> None:
        heard.append(result)
        done.set()

    log = store.open_log(group_commit=60)
    try:
        ticket = log.append(T_DECISION, crafted_decision("2031-05-05", bytes(32)))

        def broken(batch: Any) -> list[int]:
            raise OSError("disk gone")

        monkeypatch.setattr(log, "_write_batch", broken)
        log.when_durable([ticket], callback)
        assert done.wait(30)
        (error,) = heard
        assert isinstance(error, StoreError) and "disk gone" in str(error)
    finally:
        with pytest.raises(StoreError):
            log.close()


def test_a_decision_with_a_key_committed_after_use_or_never(small: Path) -> None:
    store = Store.open(small)
    policy = bytes.fromhex(store.policy().version)
    with store.open_log() as log:
        first = log.append(T_DECISION, crafted_decision("2031-05-05", policy))
        log.append(T_KEY_COMMIT, {"epoch_id": "2031-05-05", "commitment": b"\x01" * 32})
        log.append(T_DECISION, crafted_decision("2031-05-05", policy, "after"))
        never = log.append(T_DECISION, crafted_decision("2031-05-06", policy))
        late = log.wait_durable(first)
        missing = log.wait_durable(never)
    commit = next(
        e.index
        for e in entries(small)
        if e.type == T_KEY_COMMIT and e.fields["epoch_id"] == "2031-05-05"
    )
    assert late < commit < missing
    report = verify(small)
    assert checks(report) == {"keys"}
    by_index = {f.index: f.message for f in report.findings}
    assert by_index == {
        late: f"epoch 2031-05-05 is used at entry {late} before its commitment at entry {commit}",
        missing: "epoch 2031-05-06 is used but its key was never committed",
    }


def test_a_key_committed_twice_with_different_keys(small: Path) -> None:
    store = Store.open(small)
    epoch = next(str(e.fields["epoch_id"]) for e in entries(small) if e.type == T_KEY_COMMIT)
    with store.open_log() as log:
        log.append(T_KEY_COMMIT, {"epoch_id": epoch, "commitment": b"\x02" * 32})
    report = verify(small)
    assert checks(report) == {"keys"}
    assert "committed twice with different keys" in report.findings[0].message


def test_a_decision_naming_an_unlogged_policy(small: Path) -> None:
    store = Store.open(small)
    epoch = next(str(e.fields["epoch_id"]) for e in entries(small) if e.type == T_KEY_COMMIT)
    with store.open_log() as log:
        ticket = log.append(T_DECISION, crafted_decision(epoch, b"\x02" * 32))
        index = log.wait_durable(ticket)
    report = verify(small)
    assert checks(report) == {"policies"}
    assert report.findings[0].index == index


def test_a_decision_with_a_malformed_layout_is_reported(small: Path) -> None:
    store = Store.open(small)
    policy = bytes.fromhex(store.policy().version)
    with store.open_log() as log:
        log.append(T_DECISION, crafted_decision("2030-1-1", policy))  # not YYYY-MM-DD
    assert "structure" in checks(verify(small))


# -- crashes --------------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import random, sys, time
    from sampledrec import Store
    store = Store.open(sys.argv[1])
    tag, seed = sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    log = store.open_log(checkpoint_every=0.02)
    sampler = store.sampler(log=log)
    print("ready", flush=True)
    i = 0
    while True:
        last = None
        for _ in range(rng.randint(1, 40)):
            last = sampler.decide(f"{tag}-{i}")
            i += 1
        if rng.random() < 0.7:
            print(log.wait_durable(last.log_ticket), i - 1, flush=True)
        time.sleep(0.002)  # keeps the log small: the parent decodes all of it every round
    """
)


def start_writer(store: Path, tag: str, seed: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store), tag, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "ready\n":
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the writer did not start: {err}")
    return proc


@pytest.mark.slow
def test_killed_writers_lose_nothing_durable(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    rng = random.Random(20301)
    recovered = reported = 0
    for round_ in range(5):
        tag = f"r{round_}"
        proc = start_writer(store.path, tag, rng.randrange(2**32))
        time.sleep(rng.uniform(0.05, 0.35))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        durable = [tuple(map(int, line.split())) for line in out.splitlines() if line.count(" ")]
        reported += len(durable)
        with store.open_log() as log:
            report = log.recovery
            if report:
                recovered += 1
                assert report.dropped_bytes > 0
                assert "was never durable" in str(report)
                assert report.moved_to is not None
                moved = Path(report.moved_to)
                assert moved.parent == store.path / "recovered"
                assert moved.stat().st_size == report.dropped_bytes
            else:
                assert str(report) == "log intact"
        result = verify(store.path)
        assert result.ok, f"round {round_}: {describe(result)}"
        logged = {e.fields["call_ref"]: e.index for e in decisions(store.path)}
        for index, last in durable:
            assert logged[f"{tag}-{last}"] == index
            missing = [i for i in range(last + 1) if f"{tag}-{i}" not in logged]
            assert not missing, f"round {round_}: durable decisions lost: {missing[:5]}"
    # A kill rarely cuts a write in two, so ``recovered`` is often 0: the torn-write tests
    # below cover that path for sure.
    assert 0 <= recovered <= 5
    assert reported > 0


@pytest.fixture
def before_and_after(tmp_path: Path) -> tuple[Path, bytes]:
    """A durable log (a snapshot with no checkpoint after its last batch) and the bytes of
    the next batch, as a writer appends them."""
    store = Store.init(tmp_path / "s")
    snap = snapshot(store, tmp_path / "before", [["p1"], ["p2"]])
    before = (snap / "log" / SEG0).read_bytes()
    with store.open_log(checkpoint_every=1e9) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        for i in range(5):
            sampler.decide(f"torn-{i}")
        log.flush()
        after = (store.path / "log" / SEG0).read_bytes()
    assert after[: len(before)] == before
    return snap, after[len(before) :]


def torn_cases(batch: bytes) -> Iterator[tuple[str, bytes]]:
    for k in (1, 4, BATCH_HEADER.size - 1, BATCH_HEADER.size, BATCH_HEADER.size + 9):
        yield f"first {k} bytes", batch[:k]
    yield "all but the last byte", batch[:-1]
    payload = BATCH_HEADER.unpack_from(batch)[3]
    yield "all but the trailer", batch[: BATCH_HEADER.size + payload]
    yield "random bytes", random.Random(7).randbytes(300)
    yield "a batch header and zeros", batch[: BATCH_HEADER.size] + bytes(100)


def test_a_torn_batch_is_set_aside_on_reopen(
    before_and_after: tuple[Path, bytes], tmp_path: Path
) -> None:
    snap, batch = before_and_after
    size = verify(snap).size
    count = BATCH_HEADER.unpack_from(batch)[2]
    for k, (name, tail) in enumerate(torn_cases(batch)):
        copy = Path(shutil.copytree(snap, tmp_path / f"torn{k}"))
        seg = copy / "log" / SEG0
        good = seg.read_bytes()
        seg.write_bytes(good + tail)
        assert "structure" in checks(verify(copy)), name
        store = Store.open(copy)
        with store.open_log() as log:
            report = log.recovery
            assert report.dropped_bytes == len(tail), name
            full_header = len(tail) >= BATCH_HEADER.size and tail[:4] == b"BTCH"
            assert report.dropped_entries == (count if full_header else 0), name
            assert report.moved_to is not None
            assert Path(report.moved_to).parent == copy / "recovered"
            assert Path(report.moved_to).read_bytes() == tail
            assert str(report).startswith("an incomplete batch"), name
            assert log.size == size
        assert seg.read_bytes()[: len(good)] == good
        result = verify(copy)
        assert result.ok, f"{name}: {describe(result)}"
        assert not {f"torn-{i}" for i in range(5)} & {e.fields["call_ref"] for e in decisions(copy)}
        # The log goes on from there.
        with store.open_log() as log:
            assert not log.recovery
            store.sampler(clock=FixedClock(AT), log=log).decide(f"after-{k}")
        assert verify(copy).ok
        shutil.rmtree(copy)


def test_a_torn_checkpoint_record_is_set_aside_on_reopen(small: Path) -> None:
    path = small / "log" / CHECKPOINTS
    good = path.read_bytes()
    last = split_checkpoints(good)[-1][1]
    path.write_bytes(good + struct.pack(">I", len(last)) + last[:30])
    assert "structure" in checks(verify(small))
    store = Store.open(small)
    with store.open_log() as log:
        assert "torn checkpoint record" in str(log.recovery)
        moved = list((small / "recovered").iterdir())
        assert len(moved) == 1
        assert moved[0].name.startswith("checkpoints.")
    assert path.read_bytes()[: len(good)] == good
    assert verify(small).ok


def test_reopening_after_a_clean_close_recovers_nothing(small: Path) -> None:
    store = Store.open(small)
    with store.open_log() as log:
        assert not log.recovery
        assert str(log.recovery) == "log intact"
    assert not (small / "recovered").exists()


def test_reopening_refuses_a_log_truncated_below_its_checkpoint(small: Path) -> None:
    seg = small / "log" / SEG0
    data = seg.read_bytes()
    seg.write_bytes(data[: parse_segment(data)[-1].start])
    with pytest.raises(LogCorrupt, match="truncated"):
        Store.open(small).open_log()


def test_a_refused_reopen_leaves_the_files_alone(small: Path) -> None:
    seg = small / "log" / SEG0
    data = seg.read_bytes()
    batches = parse_segment(data)
    damaged = bytearray(data)
    damaged[batches[2].records[0][0] + 3] ^= 1  # an entry below the latest checkpoint
    seg.write_bytes(bytes(damaged))
    with pytest.raises(LogCorrupt):
        Store.open(small).open_log()
    assert seg.read_bytes() == bytes(damaged)
    assert "tree" in checks(verify(small))


def test_a_damaged_durable_batch_is_not_taken_for_a_torn_tail(tmp_path: Path) -> None:
    # Only the last batch can be torn by a crash: a damaged batch with a whole one after it
    # is damage or tampering, and reopening refuses it without touching anything.
    store = Store.init(tmp_path / "s")
    snap = snapshot(store, tmp_path / "snap", [["m1"], ["m2"], ["m3"]])
    seg = snap / "log" / SEG0
    data = seg.read_bytes()
    batches = parse_segment(data)
    damaged = bytearray(data)
    damaged[batches[-2].records[0][0] + 3] ^= 1  # after the latest checkpoint, not the last
    seg.write_bytes(bytes(damaged))
    with pytest.raises(LogCorrupt, match="is not the last one"):
        Store.open(snap).open_log()
    assert seg.read_bytes() == bytes(damaged)
    assert not (snap / "recovered").exists()
    assert "tree" in checks(verify(snap))


@pytest.fixture
def new_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, bytes]:
    """A durable snapshot whose last batch started a new segment (no checkpoint after it):
    the snapshot, that segment, and its bytes."""
    monkeypatch.setattr(sampledrec.log.segments, "SEGMENT_BYTES", 1024)
    store = Store.init(tmp_path / "s")
    with store.open_log(checkpoint_every=1e9) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        sampler.decide("before")
        log.flush()
        log.checkpoint()
        count = len(segments(store.path))
        i = 0
        while len(segments(store.path)) == count:
            sampler.decide(f"filling-{i}")
            log.flush()
            i += 1
        snap = Path(shutil.copytree(store.path, tmp_path / "snap"))
    report = verify(snap)
    assert report.ok, describe(report)
    last = segments(snap)[-1]
    return snap, last, last.read_bytes()


def crash_in_new_segment(new_segment: tuple[Path, Path, bytes], keep: int) -> Path:
    """Cut the new segment as a crash while creating it would: its first ``keep`` bytes."""
    snap, last, data = new_segment
    assert keep < len(data)
    last.write_bytes(data[:keep])
    return snap


@pytest.mark.parametrize("keep", [SEG_HEADER.size, SEG_HEADER.size + 20, -1])
def test_a_crash_while_writing_a_new_segment_is_recovered(
    new_segment: tuple[Path, Path, bytes], keep: int
) -> None:
    snap, _, data = new_segment
    keep = keep % len(data)
    crash_in_new_segment(new_segment, keep)
    store = Store.open(snap)
    with store.open_log() as log:
        assert log.recovery.dropped_bytes == keep - SEG_HEADER.size
        store.sampler(clock=FixedClock(AT), log=log).decide("after")
    report = verify(snap)
    assert report.ok, describe(report)
    refs = [e.fields["call_ref"] for e in decisions(snap)]
    assert refs[-1] == "after"
    assert refs[0] == "before"


def test_a_new_segment_is_born_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before a new segment is renamed into log/ leaves no trace there."""
    monkeypatch.setattr(sampledrec.log.segments, "SEGMENT_BYTES", 1024)
    store = Store.init(tmp_path / "s")
    real_rename = os.rename

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before the rename")

    with store.open_log(checkpoint_every=1e9) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        count = len(segments(store.path))
        monkeypatch.setattr(os, "rename", crash)
        failed = None
        for i in range(10_000):
            try:
                sampler.decide(f"filling-{i}")
                log.flush()
            except StoreError as exc:
                failed = exc
                break
        assert failed is not None, "the writer never needed a new segment"
        monkeypatch.setattr(os, "rename", real_rename)
        assert len(segments(store.path)) == count
        log._thread = None  # the writer died with the simulated crash
    store = Store.open(store.path)
    with store.open_log() as log:
        store.sampler(clock=FixedClock(AT), log=log).decide("after")
    assert verify(store.path).ok


@pytest.mark.parametrize("keep", [SEG_HEADER.size, SEG_HEADER.size + 20])
def test_a_partial_new_segment_is_tampering_and_is_reported(
    new_segment: tuple[Path, Path, bytes], keep: int
) -> None:
    """Segments are born whole, so a cut new segment is not a crash: it is reported."""
    snap, _, _ = new_segment
    crash_in_new_segment(new_segment, keep)
    assert not verify(snap).ok


@pytest.mark.parametrize("keep", [0, 10])
def test_a_segment_shorter_than_its_header_is_refused(
    new_segment: tuple[Path, Path, bytes], keep: int
) -> None:
    snap = crash_in_new_segment(new_segment, keep)
    with pytest.raises(LogCorrupt):
        Store.open(snap).open_log()
    assert not verify(snap).ok


def test_an_added_empty_segment_is_detected(small: Path) -> None:
    size = verify(small).size
    header = SEG_HEADER.pack(b"SDRLOG01", Store.open(small).store_id, size)
    (small / "log" / f"seg-{size:012d}.log").write_bytes(header)
    report = verify(small)
    assert "structure" in checks(report)
    assert any("holds no batch" in f.message for f in report.findings)


def huge_allocations_fail() -> bool:
    """Whether allocating 32 GiB fails here (it does unless memory is overcommitted or huge)."""
    try:
        if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
            return False
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return False
    kib = {
        line.split(":")[0]: int(line.split()[1])
        for line in meminfo.splitlines()
        if line.startswith(("MemTotal:", "SwapTotal:"))
    }
    return sum(kib.values()) < 30 * 2**20


def forge_count(seg: Path, count: int) -> None:
    """Give the last batch of a segment a huge count, with a trailer whose size agrees."""
    data = seg.read_bytes()
    last = parse_segment(data)[-1]
    size = last.first + count
    hashes = bin(size).count("1")
    trailer = TRAILER_HEAD.pack(b"ROOT", size, hashes) + b"\x11" * 32 * hashes
    header = BATCH_HEADER.pack(b"BTCH", last.first, count, last.trailer - last.payload)
    seg.write_bytes(data[: last.start] + header + data[last.payload : last.trailer] + trailer)


@pytest.mark.skipif(not huge_allocations_fail(), reason="32 GiB allocations succeed here")
def test_a_huge_batch_count_is_reported(small: Path) -> None:
    forge_count(small / "log" / SEG0, 2**32 - 1)
    assert "structure" in checks(verify(small))


@pytest.mark.skipif(not huge_allocations_fail(), reason="32 GiB allocations succeed here")
def test_reopening_a_log_with_a_huge_batch_count_refuses_it(small: Path) -> None:
    forge_count(small / "log" / SEG0, 2**32 - 1)
    with pytest.raises(LogCorrupt):
        Store.open(small).open_log()


def test_a_forged_count_is_reported(small: Path) -> None:
    # The same forgery with a count that fits in memory: the tree does not match.
    forge_count(small / "log" / SEG0, 1000)
    assert checks(verify(small)) & {"structure", "tree"}


# -- concurrency ----------------------------------------------------------------------------------


def test_threads_deciding_through_one_log(small: Path) -> None:
    store = Store.open(small)
    per_thread = 300
    indices: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    with store.open_log(group_commit=0.01) as log:
        sampler = store.sampler(clock=FixedClock(AT), log=log)
        barrier = threading.Barrier(4)

        def work(k: int) -> None:
            try:
                barrier.wait()
                for i in range(per_thread):
                    d = sampler.decide(f"t{k}-{i}", {"agent": f"agent-{k}"})
                    if i % 50 == 49:
                        assert d.log_ticket is not None
                        index = log.wait_durable(d.log_ticket)
                        with lock:
                            indices.append(index)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert len(set(indices)) == len(indices) == 4 * (per_thread // 50)
    report = verify(small)
    assert report.ok, describe(report)
    logged = [e.fields["call_ref"] for e in decisions(small)]
    expected = {f"t{k}-{i}" for k in range(4) for i in range(per_thread)}
    assert len(logged) == 3 + len(expected)
    assert set(logged) == expected | {"call-A", "call-B", "call-C"}
    # Each thread's decisions are in its order.
    for k in range(4):
        mine = [r for r in logged if r.startswith(f"t{k}-")]
        assert mine == [f"t{k}-{i}" for i in range(per_thread)]


PROCESS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import sampledrec.log.segments
    sampledrec.log.segments.SEGMENT_BYTES = 4096  # many segments: writers follow each other's
    from sampledrec import FixedClock, Store
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = Store.open(path)
    with store.open_log(group_commit=0.005) as log:
        sampler = store.sampler(clock=FixedClock("2030-01-01T10:00:00Z"), log=log)
        go = Path(path) / "go"
        while not go.exists():
            time.sleep(0.005)
        for i in range(n):
            sampler.decide(f"{tag}-{i}")
            if i % 25 == 0:
                log.flush()
        sampler.decide_batch([f"{tag}-batch-{i}" for i in range(n)])
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_processes_appending_to_one_store(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampledrec.log.segments, "SEGMENT_BYTES", 4096)  # as in the writers
    n = 150
    outs = run_together(PROCESS, [[str(small), f"p{k}", str(n)] for k in range(3)], small / "go")
    assert outs == ["done\n"] * 3
    report = verify(small)
    assert report.ok, describe(report)
    assert len(segments(small)) > 1
    logged = [e.fields["call_ref"] for e in decisions(small)]
    assert report.entries_by_type["decision"] == len(logged) == 3 + 3 * 2 * n
    for k in range(3):
        mine = [r for r in logged if r.startswith(f"p{k}-") and "batch" not in r]
        assert mine == [f"p{k}-{i}" for i in range(n)]
        assert sum(1 for r in logged if r.startswith(f"p{k}-batch-")) == n


def test_the_scan_keeps_the_first_decision_of_each_epoch_and_policy_run() -> None:
    """The verifier's scan (log.verify._gather) compares each decision's epoch id and policy
    version with the previous decision's, word by word: every change of either byte, and no
    other byte of the probe, starts a run (checked against a byte-by-byte comparison)."""
    import numpy as np

    from sampledrec.log import verify as lv

    rng = np.random.default_rng(7)
    n = 5000
    probes = rng.integers(0, 256, size=(n, lv.PROBE), dtype=np.uint8)  # other bytes: noise
    probes[:, 1] = T_DECISION
    probes[:, lv._EPOCH_TAG_AT : lv._EPOCH_TAG_AT + 2] = (DECISION.epoch_id.tag, 10)
    probes[:, lv._VERSION_TAG_AT : lv._VERSION_TAG_AT + 2] = (DECISION.policy_version.tag, 32)
    # Runs: each field is copied from the row before, except at a few places where one byte
    # (anywhere in the epoch id or the version) changes.
    for i in range(1, n):
        probes[i, lv._EPOCH_AT : lv._VERSION_END] = probes[i - 1, lv._EPOCH_AT : lv._VERSION_END]
        probes[i, lv._VERSION_TAG_AT : lv._VERSION_AT] = (DECISION.policy_version.tag, 32)
        if rng.random() < 0.02:
            at = int(
                rng.choice(
                    [
                        *range(lv._EPOCH_AT, lv._VERSION_TAG_AT),
                        *range(lv._VERSION_AT, lv._VERSION_END),
                    ]
                )
            )
            probes[i, at] ^= 1 + int(rng.integers(0, 255))
    probes[7, 1] = 3  # one entry that is not a decision: left out of the runs
    scan = lv._Scan()
    lv._gather(scan, b"\0" * 8, np.full(n, 4, dtype=np.int64), probes, 100)
    dec = [i for i in range(n) if i != 7]
    field_bytes = [bytes(probes[i, lv._EPOCH_AT : lv._VERSION_END]) for i in dec]
    expected = [
        dec[j] + 100 for j in range(len(dec)) if j == 0 or field_bytes[j] != field_bytes[j - 1]
    ]
    assert len(expected) > 50
    assert [u[0] for u in scan.first_uses] == expected
    assert scan.first_uses[0][1:] == (
        bytes(probes[0, lv._EPOCH_AT : lv._VERSION_TAG_AT]),
        bytes(probes[0, lv._VERSION_AT : lv._VERSION_END]),
    )
