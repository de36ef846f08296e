"""Red team of the witnesses (issue 16): a dishonest operator, who holds the log's signing key
and the store but no witness's key, tries to rewrite, drop, reorder, fork or roll back history
past ``audit verify --witness NAME=VKEY ... --quorum K``; and clients of ``sampledrec witness
serve`` try to make it cosign two inconsistent checkpoints, crash it or damage its state.

Each test carries one attack out on a real store or kit and, where one is involved, a real
witness (over HTTP where the transport matters), and asserts that the audit FAILs or the
witness refuses. The attacks that still get through are ``xfail(strict=True)`` with the gap.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import socket
import struct
import threading
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sampledrec import FixedClock, Store
from sampledrec.audit.findings import AuditReport
from sampledrec.audit.kit import audit_kit, write_kit
from sampledrec.audit.verify import audit_verify
from sampledrec.errors import InvalidArgument
from sampledrec.log.checkpoint import LogSigner
from sampledrec.log.merkle import CompactRange, consistency_proof, leaf_hash
from sampledrec.log.segments import (
    BATCH_HEADER,
    BATCH_MAGIC,
    SEG_HEADER,
    SEG_MAGIC,
    U32,
    iter_batches,
    split_records,
    trailer_bytes,
)
from sampledrec.log.storage import CHECKPOINTS, segment_name
from sampledrec.log.verify import export_checkpoint
from sampledrec.witness import (
    Cosigner,
    VerifierKey,
    Witness,
    WitnessEndpoint,
    Witnessing,
    WitnessSettings,
    WitnessState,
    parse_note,
    read_cosigned,
)
from sampledrec.witness.client import HttpTransport
from sampledrec.witness.note import (
    ALG_COSIGNATURE_V1,
    cosignature_time,
    parse_signature_line,
    signature_line,
)
from sampledrec.witness.protocol import SIZE_CONTENT_TYPE, AddCheckpoint

from . import c2sp_client as spec
from .witnesses import ThreadedWitness

POLICY = """
[default]
rate = "0.25"
purpose = "quality"
retention = "2 days"
"""
DAY = "2030-03-04T10:00:00Z"
AUDIT_AT = datetime(2030, 3, 5, 12, tzinfo=UTC)
DASH = "\u2014 ".encode()
DPO = "witness.dpo.example/w1"
REGULATOR = "witness.regulator.example/w1"


# -- helpers ---------------------------------------------------------------------------------------


def _decide(store: Store, refs: list[str]) -> None:
    clock = FixedClock(DAY)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        for ref in refs:
            sampler.decide(ref, {})


def _settings(*witnesses: tuple[str, str, str], quorum: int = 1) -> WitnessSettings:
    return WitnessSettings(
        tuple(WitnessEndpoint(name, url, VerifierKey.parse(vk)) for name, url, vk in witnesses),
        quorum=quorum,
        interval=1.0,
        close_wait=10.0,
    )


def _log_size(store: Path) -> int:
    return sum(b.entries for b in iter_batches(store / "log"))


def _entries(store: Path) -> list[bytes]:
    out: list[bytes] = []
    for b in iter_batches(store / "log"):
        out += split_records(b.data[b.start : b.end])[0]
    return out


def _found(rep: AuditReport, text: str, check: str = "witnesses") -> list[dict[str, Any]]:
    return [f.to_json() for f in rep.findings if f.check == check and text in f.message]


def _notes(folder: Path) -> list[bytes]:
    notes: list[bytes] = []
    for path in sorted(folder.rglob("*.notes")):
        notes += read_cosigned(path.read_bytes())[0]
    return notes


def _size(note: bytes) -> int:
    return int(note.split(b"\n")[1])


def _text(note: bytes) -> bytes:
    return note[: note.rindex(b"\n\n") + 1]


def _lines(note: bytes) -> list[bytes]:
    return [line + b"\n" for line in note[note.rindex(b"\n\n") + 2 :].split(b"\n") if line]


def rebuild(store: Path, entries: list[bytes], signer: LogSigner | None = None) -> None:
    """What an operator with every key can do: write the log again from ``entries``, with valid
    batches, trailers and checkpoints signed by ``signer`` (default: the log's own key)."""
    st = Store.open(store)
    signer = signer or LogSigner(st.origin, st.keyring.signing_seed())
    cr = CompactRange()
    seg = SEG_HEADER.pack(SEG_MAGIC, st.store_id, 0)
    checkpoints = b""
    for at in range(0, len(entries), 25):
        batch = entries[at : at + 25]
        payload = b"".join(U32.pack(len(e)) + e for e in batch)
        cr.extend([leaf_hash(e) for e in batch])
        seg += BATCH_HEADER.pack(BATCH_MAGIC, at, len(batch), len(payload)) + payload
        seg += trailer_bytes(cr)
        note = signer.sign(cr.size, cr.root(), 1_900_000_000_000_000).note
        checkpoints += U32.pack(len(note)) + note
    for old in (store / "log").iterdir():
        old.unlink()
    (store / "log" / segment_name(0)).write_bytes(seg)
    (store / "log" / CHECKPOINTS).write_bytes(checkpoints)


def _changed_at(i: int) -> Callable[[list[bytes]], list[bytes]]:
    return lambda e: [*e[:i], e[i][:-1] + bytes([e[i][-1] ^ 1]), *e[i + 1 :]]


def _reseal_kit(kit: Path) -> None:
    """The operator makes the kit's manifest list the kit as it now is (it writes kits)."""
    manifest = json.loads((kit / "kit.json").read_bytes())
    files = {}
    for path in sorted(kit.rglob("*")):
        name = path.relative_to(kit).as_posix()
        if path.is_file() and name != "kit.json":
            data = path.read_bytes()
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest["files"] = files
    (kit / "kit.json").write_text(json.dumps(manifest, indent=1) + "\n")


def _serve(witness: Witness) -> ThreadedWitness:
    """A real HTTP witness around ``witness`` (a given key and state folder)."""
    tw = ThreadedWitness.__new__(ThreadedWitness)
    tw.cosigner, tw.witness, tw.vkey = witness.cosigner, witness, str(witness.cosigner.verifier)
    tw.port, tw.url, tw._thread, tw._loop, tw._stop = 0, "", None, None, None
    return tw


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store witnessed by two real witnesses (dpo, regulator; quorum 2) after three sessions
    of decisions; ``early/`` and ``wstate-*-early/``: the store and the witnesses' states after
    the first session."""
    base = tmp_path_factory.mktemp("redteam")
    (base / "p.toml").write_text(POLICY)
    store = Store.init(base / "store", policy=base / "p.toml", simulated=True)
    logs = {store.origin: [store.vkey]}
    dpo = ThreadedWitness(DPO, base / "wstate-dpo", logs)
    reg = ThreadedWitness(REGULATOR, base / "wstate-regulator", logs)
    with dpo, reg:
        store.configure_witnesses(
            _settings(("dpo", dpo.url, dpo.vkey), ("regulator", reg.url, reg.vkey), quorum=2)
        )
        _decide(store, [f"call-{i:03d}" for i in range(40)])
        shutil.copytree(base / "store", base / "early")
        for name in ("dpo", "regulator"):
            shutil.copytree(base / f"wstate-{name}", base / f"wstate-{name}-early")
        _decide(store, [f"call-{i:03d}" for i in range(40, 80)])
        _decide(store, [f"call-{i:03d}" for i in range(80, 120)])
        keys = store.reveal_keys(now=datetime(2030, 3, 5, 0, 0, 1, tzinfo=UTC))
        store.write_revealed(keys, base / "revealed.json")
    return {"base": base, "dpo": dpo, "regulator": reg, "origin": store.origin}


@pytest.fixture
def case(built: dict[str, Any], tmp_path: Path) -> Path:
    base: Path = built["base"]
    for name in ("store", "early", "wstate-dpo", "wstate-dpo-early", "wstate-regulator"):
        shutil.copytree(base / name, tmp_path / name)
    shutil.copy(base / "revealed.json", tmp_path / "revealed.json")
    return tmp_path


@pytest.fixture
def both(built: dict[str, Any]) -> list[str]:
    return [f"dpo={built['dpo'].vkey}", f"regulator={built['regulator'].vkey}"]


def _audit(case: Path, store: str = "store", **kw: Any) -> AuditReport:
    kw.setdefault("now", AUDIT_AT)
    return audit_verify(case / store, case / "revealed.json", **kw)


def _kit(case: Path, store: str = "store") -> Path:
    write_kit(Store.open(case / store), case / "kit", now=AUDIT_AT)
    return case / "kit"


def test_the_honest_store_passes_with_both_witnesses(case: Path, both: list[str]) -> None:
    """The baseline every attack below starts from."""
    rep = _audit(case, witnesses=both, quorum=2)
    assert rep.status("witnesses") == "PASS", rep.to_text()
    assert all(c["covered_fraction"] == 1.0 for c in rep.to_json()["witnesses"])
    rep = audit_kit(_kit(case), now=AUDIT_AT, witnesses=both, quorum=2)
    assert rep.status("witnesses") == "PASS", rep.to_text()


# -- the cosigned files ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["size", "root", "time", "extension"])
def test_a_cosigned_checkpoint_edited_and_signed_again_by_the_log(
    case: Path, both: list[str], field: str
) -> None:
    """The operator edits a cosigned checkpoint's text (its size, its root, its time line, or
    adds an extension line) and signs it again with the log's key, keeping the witnesses'
    lines: their signatures cover the whole text."""
    st = Store.open(case / "store")
    signer = LogSigner(st.origin, st.keyring.signing_seed())
    (path,) = sorted((case / "store" / "cosigned" / "dpo").glob("*.notes"))
    notes = read_cosigned(path.read_bytes())[0]
    note = notes[-1]
    rows = _text(note).decode().split("\n")
    if field == "size":
        rows[1] = str(int(rows[1]) - 1)
    elif field == "root":
        rows[2] = base64.b64encode(bytes(32)).decode()
    elif field == "time":
        rows[3] = "sampledrec-time 2031-01-01T00:00:00.000000Z"
    else:
        rows.insert(3, "extension line the log added after the fact")
    text = "\n".join(rows).encode()
    log_line = signature_line(
        st.origin,
        signer.key_id + Ed25519PrivateKey.from_private_bytes(st.keyring.signing_seed()).sign(text),
    )
    witness_lines = [
        line for line in _lines(note) if not line.startswith(DASH + st.origin.encode())
    ]
    notes[-1] = text + b"\n" + log_line + b"".join(witness_lines)
    path.write_bytes(b"".join(n + b"\n" for n in notes))
    rep = _audit(case, witnesses=both, quorum=2)
    assert _found(rep, "a cosignature of witness dpo does not verify"), rep.to_text()
    assert rep.status("witnesses") == "FAIL"


def test_cosigned_files_duplicated_reordered_and_copied_into_another_witness_folder(
    case: Path, both: list[str]
) -> None:
    """Only dpo's cosignatures are kept, duplicated, in reverse order, and also copied into
    regulator's folder: a quorum of 2 still needs the regulator's own key."""
    cosigned = case / "store" / "cosigned"
    notes = _notes(cosigned / "dpo")
    shutil.rmtree(cosigned)
    for name in ("dpo", "regulator"):
        (cosigned / name).mkdir(parents=True)
        data = b"".join(n + b"\n" for n in [*reversed(notes), *notes])
        (cosigned / name / "2030-03-04.notes").write_bytes(data)
    rep = _audit(case, witnesses=both, quorum=2)
    (bad,) = _found(rep, "the quorum is 2")
    assert bad["evidence"]["without"] == ["regulator"]


def test_a_cosignature_relabelled_as_another_witness(case: Path, both: list[str]) -> None:
    """dpo's cosignature lines renamed to the regulator's key name and key ID (the regulator's
    own lines deleted): the signature is dpo's, so it does not verify as the regulator's."""
    reg = VerifierKey.parse(both[1].split("=", 1)[1])
    for path in (case / "store" / "cosigned" / "dpo").glob("*.notes"):
        out = []
        for note in read_cosigned(path.read_bytes())[0]:
            lines = _lines(note)
            for line in list(lines):
                if line.startswith(DASH + DPO.encode()):
                    _, raw = parse_signature_line(line.decode().rstrip("\n"))
                    lines.append(signature_line(reg.name, reg.key_id + raw[4:]))
            out.append(_text(note) + b"\n" + b"".join(lines) + b"\n")
        path.write_bytes(b"".join(out))
    shutil.rmtree(case / "store" / "cosigned" / "regulator")
    rep = _audit(case, witnesses=both, quorum=2)
    assert _found(rep, "a cosignature of witness regulator does not verify")
    assert _found(rep, "the quorum is 2")


def test_one_witness_key_counted_twice_under_two_names(case: Path, built: dict[str, Any]) -> None:
    """An Ed25519 cosignature/v1 does not sign the witness's key name: dpo's lines, renamed
    to another name with that name's key ID, verify under the same public key. Handed two
    vkeys of one key, the audit must refuse them, or one witness makes a quorum of two.
    (Fixed: ``trusted_witnesses`` and ``WitnessSettings`` compare public keys, not key IDs.)"""
    dpo = VerifierKey.parse(built["dpo"].vkey)
    alias = VerifierKey("witness.regulator.example/w1", ALG_COSIGNATURE_V1, dpo.public_key)
    folder = case / "store" / "cosigned"
    shutil.rmtree(folder / "regulator")
    (folder / "regulator").mkdir()
    for path in (folder / "dpo").glob("*.notes"):
        out = []
        for note in read_cosigned(path.read_bytes())[0]:
            extra = [
                signature_line(
                    alias.name, alias.key_id + parse_signature_line(line.decode()[:-1])[1][4:]
                )
                for line in _lines(note)
                if line.startswith(DASH + DPO.encode())
            ]
            out.append(note + b"".join(extra) + b"\n")
        (folder / "regulator" / path.name).write_bytes(b"".join(out))
    with pytest.raises(InvalidArgument, match="share a name or a key"):
        _audit(case, witnesses=[f"dpo={dpo}", f"regulator={alias}"], quorum=2)
    with pytest.raises(InvalidArgument, match="share a verifier key"):
        _settings(("dpo", "http://a.example", str(dpo)), ("reg", "http://b.example", str(alias)))


def test_a_forged_line_with_a_witness_name_and_key_id(case: Path, both: list[str]) -> None:
    """A key whose ID collides with dpo's (cheap to find: 32 bits) signs the checkpoint: the
    line has dpo's name and key ID, and a signature that is not dpo's. Not counted, a FAIL."""
    other = Ed25519PrivateKey.generate()
    dpo = VerifierKey.parse(both[0].split("=", 1)[1])
    shutil.rmtree(case / "store" / "cosigned" / "dpo")
    notes = _notes(case / "store" / "cosigned" / "regulator")
    forged = []
    for note in notes:
        stamp = 1_900_000_000
        message = b"cosignature/v1\ntime %d\n" % stamp + _text(note)
        raw = dpo.key_id + struct.pack(">Q", stamp) + other.sign(message)
        forged.append(note + signature_line(DPO, raw) + b"\n")
    (case / "store" / "cosigned" / "dpo").mkdir()
    (case / "store" / "cosigned" / "dpo" / "x.notes").write_bytes(b"".join(forged))
    rep = _audit(case, witnesses=both, quorum=2)
    assert _found(rep, "a cosignature of witness dpo does not verify")
    assert _found(rep, "the quorum is 2")


def test_a_cosignature_of_another_origin(case: Path, built: dict[str, Any]) -> None:
    """The operator runs a second log under the same key with another origin, which the same
    witness also witnesses; its cosigned checkpoint (of the real log's size and root), put in
    the store's folder, with the log's signature under either origin, is no checkpoint of
    this log."""
    st = Store.open(case / "store")
    seed = st.keyring.signing_seed()
    other_origin = st.origin + "-mirror"
    other = LogSigner(other_origin, seed)
    real = Store.open(case / "store").open_log(clock=FixedClock(DAY))
    latest = real.latest_checkpoint()
    real.close()
    assert latest is not None
    note = other.sign(latest.size, latest.root, 1_900_000_000_000_000).note
    cosigner, _ = Cosigner.generate("witness.both.example/w1")
    w = Witness(
        cosigner,
        WitnessState(case / "wboth"),
        {other_origin: [VerifierKey.parse(other.vkey)]},
    )
    answer = w.add_checkpoint(AddCheckpoint(0, (), note).body())
    assert answer.status == 200
    # The same text under the real origin's key name (the signature is the same key's).
    text = _text(note)
    as_real = (
        text
        + b"\n"
        + signature_line(
            st.origin,
            LogSigner(st.origin, seed).key_id
            + Ed25519PrivateKey.from_private_bytes(seed).sign(text),
        )
    )
    folder = case / "store" / "cosigned" / "both"
    folder.mkdir()
    (folder / "a.notes").write_bytes(note + answer.body + b"\n" + as_real + answer.body + b"\n")
    rep = _audit(case, witnesses=[f"both={cosigner.verifier}"])
    found = _found(rep, "not signed by the log's key")
    assert len(found) == 2, rep.to_text()
    assert _found(rep, "the quorum is 1")


def test_a_log_rekeyed_rewritten_and_its_cosigned_texts_signed_by_the_new_key(
    case: Path, both: list[str], built: dict[str, Any]
) -> None:
    """Kit: the operator makes a new log key, rewrites entry 30 and signs the whole log
    again with it, replaces verifier-key.txt, signs every cosigned checkpoint's text with the
    new key (the witnesses' lines still verify: they sign the text only) and reseals the kit."""
    entries = _entries(case / "store")
    new_seed = Ed25519PrivateKey.generate().private_bytes_raw()
    signer = LogSigner(built["origin"], new_seed)
    kit = _kit(case)
    rebuild(case / "store", _changed_at(30)(entries), signer)
    shutil.rmtree(kit / "log")
    shutil.copytree(case / "store" / "log", kit / "log")
    (kit / "verifier-key.txt").write_text(signer.vkey + "\n")
    for path in (kit / "cosigned").rglob("*.notes"):
        out = []
        for note in read_cosigned(path.read_bytes())[0]:
            text = _text(note)
            line = signature_line(
                signer.origin,
                signer.key_id + Ed25519PrivateKey.from_private_bytes(new_seed).sign(text),
            )
            witnesses = [x for x in _lines(note) if not x.startswith(DASH + signer.origin.encode())]
            out.append(text + b"\n" + line + b"".join(witnesses) + b"\n")
        path.write_bytes(b"".join(out))
    _reseal_kit(kit)
    rep = audit_kit(kit, now=AUDIT_AT, witnesses=both, quorum=2)
    # The log check sees the new key too (entry 0 names the store's key; the log's own
    # records of its checkpoints no longer match): the witnesses' check on its own FAILs.
    assert rep.status("log") == "FAIL"
    bad = _found(rep, "dropped, reordered or changed")
    assert bad and all(b["evidence"]["last_matching_size"] <= 30 for b in bad), rep.to_text()
    assert rep.status("witnesses") == "FAIL"


def test_a_kit_stripped_of_its_cosigned_files_with_a_consistent_manifest(
    case: Path, both: list[str]
) -> None:
    kit = _kit(case)
    shutil.rmtree(kit / "cosigned")
    _reseal_kit(kit)
    rep = audit_kit(kit, now=AUDIT_AT, witnesses=both, quorum=2)
    (bad,) = _found(rep, "0 of the witnesses named cosigned")
    assert sorted(bad["evidence"]["without"]) == ["dpo", "regulator"]


def _rewritten_after_the_first_session(case: Path) -> tuple[Path, int]:
    """The operator restores its copy made after the first session (whose ``cosigned/`` holds
    only that session's cosignatures: the later ones are gone) and decides other calls: a log
    that its own key signs throughout, another history after the first session. The
    witnesses the store names are unreachable from here: to the audit they were down."""
    first = _log_size(case / "early")
    _decide(Store.open(case / "early"), [f"other-{i:03d}" for i in range(90)])
    assert all(_size(n) <= first for n in _notes(case / "early" / "cosigned"))
    return case / "early", first


def _last_note_and_proof(store: Path, old: int) -> tuple[bytes, tuple[bytes, ...]]:
    note = split_records((store / "log" / CHECKPOINTS).read_bytes())[0][-1]
    leaves = [leaf_hash(e) for e in _entries(store)][: _size(note)]
    return note, tuple(consistency_proof(leaves, old, len(leaves)))


@pytest.mark.xfail(
    strict=True,
    reason="OPEN: the audit cannot see cosignatures the operator deleted. Keep only the "
    "cosigned checkpoints of the first session and decide other calls after it: each witness "
    "still has a matching checkpoint, so the quorum holds and the other history is only an "
    "'uncovered' note (docs/decisions/0029: a stretch is not a FAIL, since a witness may have "
    "been down). Caught only with a witness's state file (--cosigned, next test) or by asking "
    "the witness its size (409). A fix needs a freshness rule (e.g. FAIL when the quorum's "
    "latest cosignature is older than the log's last checkpoint by more than a bound the "
    "auditor gives) or a monitor API in tlog-witness.",
)
def test_later_cosignatures_deleted_and_another_history_after_them(
    case: Path, both: list[str]
) -> None:
    store, _ = _rewritten_after_the_first_session(case)
    rep = audit_kit(_kit(case, store.name), now=AUDIT_AT, witnesses=both, quorum=2)
    assert rep.status("log") == "PASS"  # the gap is real: nothing else notices
    assert rep.status("witnesses") == "FAIL", rep.to_text()


def test_later_cosignatures_deleted_caught_by_the_witness_state_file(
    case: Path, both: list[str]
) -> None:
    """The same attack, with the dpo witness's own state file given by its operator."""
    store, first = _rewritten_after_the_first_session(case)
    (state,) = (case / "wstate-dpo" / "logs").iterdir()
    kit = _kit(case, store.name)
    rep = audit_kit(kit, now=AUDIT_AT, witnesses=both, quorum=2, cosigned=[state])
    bad = _found(rep, "are not the ones witness dpo cosigned")
    assert bad and bad[0]["evidence"]["last_matching_size"] == first, rep.to_text()
    assert rep.status("witnesses") == "FAIL"


@pytest.mark.xfail(
    strict=True,
    reason="OPEN: the quorum counts witnesses with *any* matching cosigned checkpoint, not "
    "witnesses covering the audited range. dpo's operator, colluding, restores dpo's state "
    "of the end of the first session, and dpo cosigns another history after it; the "
    "regulator refused it and its later cosignatures are deleted: a quorum of 2 passes while "
    "one witness only vouches for the entries after the first session. The report names the "
    "entries past the K-th largest cosigned size (quorum_covered_entries, a note: next "
    "tests), as it does for a witness that was down; a FAIL would need a bound the auditor "
    "gives for how much may lie past the quorum.",
)
def test_a_quorum_of_two_with_one_witness_covering_another_history(
    case: Path, both: list[str], built: dict[str, Any]
) -> None:
    store, first = _rewritten_after_the_first_session(case)
    rolled_back = WitnessState(case / "wstate-dpo-early")
    dpo = Witness(built["dpo"].cosigner, rolled_back, built["dpo"].witness.logs)
    note, proof = _last_note_and_proof(store, first)
    answer = dpo.add_checkpoint(AddCheckpoint(first, proof, note).body())
    assert answer.status == 200
    (store / "cosigned" / "dpo" / "9999-12-31.notes").write_bytes(note + answer.body + b"\n")
    rep = audit_kit(_kit(case, store.name), now=AUDIT_AT, witnesses=both, quorum=2)
    assert rep.status("log") == "PASS"
    assert rep.status("witnesses") == "FAIL", rep.to_text()


def test_entries_past_the_quorums_reach_are_reported_after_deleted_cosignatures(
    case: Path, both: list[str]
) -> None:
    """The first open attack above, as the report shows it: no FAIL, but the entries past
    what a quorum of witnesses cosigned are named, with what to do about them."""
    store, first = _rewritten_after_the_first_session(case)
    rep = audit_kit(_kit(case, store.name), now=AUDIT_AT, witnesses=both, quorum=2)
    size = rep.checked["witnesses"]["log_entries"]
    assert size > first and rep.checked["witnesses"]["quorum_covered_entries"] == first
    assert any(f"entries {first}..{size - 1}" in n and "fewer than 2" in n for n in rep.notes)


def test_entries_one_witness_alone_cosigned_are_past_a_quorum_of_two(
    case: Path, both: list[str], built: dict[str, Any]
) -> None:
    """The second open attack above: dpo alone vouches for the other history, so a quorum of
    two reaches only the first session, and the report says so."""
    store, first = _rewritten_after_the_first_session(case)
    rolled_back = WitnessState(case / "wstate-dpo-early")
    dpo = Witness(built["dpo"].cosigner, rolled_back, built["dpo"].witness.logs)
    note, proof = _last_note_and_proof(store, first)
    answer = dpo.add_checkpoint(AddCheckpoint(first, proof, note).body())
    assert answer.status == 200
    (store / "cosigned" / "dpo" / "9999-12-31.notes").write_bytes(note + answer.body + b"\n")
    rep = audit_kit(_kit(case, store.name), now=AUDIT_AT, witnesses=both, quorum=2)
    dpo_cov = next(c for c in rep.witness_coverage if c["witness"] == "dpo")
    assert dpo_cov["latest_size"] > first  # dpo did cosign the other history
    assert rep.checked["witnesses"]["quorum_covered_entries"] == first
    assert any("fewer than 2 of the witnesses" in n for n in rep.notes), rep.to_text()


def test_a_witness_state_rolled_back_then_another_history_cosigned(
    case: Path, both: list[str], built: dict[str, Any]
) -> None:
    """dpo's operator restores an old copy of its state (no witness can prevent that), and
    dpo cosigns another history over HTTP. The store's copies of its earlier, real
    cosignatures contradict it: kept in the kit, the audit of the other history FAILs."""
    store, first = _rewritten_after_the_first_session(case)
    dpo = Witness(
        built["dpo"].cosigner, WitnessState(case / "wstate-dpo-early"), built["dpo"].witness.logs
    )
    note, proof = _last_note_and_proof(store, first)
    with _serve(dpo) as w:
        status, _, line = spec.post(w.url, AddCheckpoint(first, proof, note).body())
    assert status == 200  # the rolled-back witness cannot know
    real = _notes(case / "store" / "cosigned" / "dpo")
    folder = store / "cosigned" / "dpo"
    (folder / "9999-12-31.notes").write_bytes(
        note + line + b"\n" + b"".join(n + b"\n" for n in real)
    )
    rep = _audit(case, store.name, witnesses=both, quorum=2)
    assert rep.status("log") == "PASS"
    bad = _found(rep, "are not the ones witness dpo cosigned") + _found(rep, "the log forked")
    assert bad, rep.to_text()
    assert rep.status("witnesses") == "FAIL"


def test_an_exported_checkpoint_that_conflicts_with_the_witnesses(
    case: Path, both: list[str]
) -> None:
    """The operator shows the DPO (``--checkpoint``) another history than the witnesses: a
    checkpoint of a cosigned size with another root, signed by the log's key."""
    st = Store.open(case / "store")
    signer = LogSigner(st.origin, st.keyring.signing_seed())
    size = _size(_notes(case / "store" / "cosigned" / "dpo")[-1])
    forged = signer.sign(size, hashlib.sha256(b"another history").digest(), 1_900_000_000_000_000)
    (case / "export.json").write_bytes(export_checkpoint(forged, st.public_key, []))
    rep = _audit(case, witnesses=both, quorum=2, checkpoint=case / "export.json")
    assert rep.status("witnesses") == "PASS"  # the log is the one the witnesses cosigned
    assert rep.status("log") == "FAIL", rep.to_text()
    # ... and a real export plus a rewrite: both the log check and the witnesses FAIL.
    real = st.open_log(clock=FixedClock(DAY))
    cp = real.latest_checkpoint()
    real.close()
    assert cp is not None
    (case / "real.json").write_bytes(export_checkpoint(cp, st.public_key, []))
    rebuild(case / "store", _changed_at(50)(_entries(case / "store")))
    rep = _audit(case, witnesses=both, quorum=2, checkpoint=case / "real.json")
    assert rep.status("log") == "FAIL" and rep.status("witnesses") == "FAIL"


# -- the witness's state and its clients --------------------------------------------------------


ORIGIN = "example.org/redteam"


@pytest.fixture
def log() -> spec.SpecLog:
    return spec.SpecLog(ORIGIN, entries=[b"entry %d" % i for i in range(40)])


def _witness(path: Path, log: spec.SpecLog, cosigner: Cosigner | None = None) -> Witness:
    cosigner = cosigner or Cosigner.generate("witness.example.org/w1")[0]
    return Witness(cosigner, WitnessState(path), {ORIGIN: [VerifierKey.parse(log.vkey)]})


def _body(log: spec.SpecLog, old: int, size: int, extra: bytes = b"") -> bytes:
    return spec.body(old, spec.proof(old, log.entries[:size]), log.checkpoint(size) + extra)


def test_signature_lines_stuffed_into_a_checkpoint_do_not_brick_the_witness(
    tmp_path: Path, log: spec.SpecLog
) -> None:
    """Anyone who sees a checkpoint can add unknown signature lines to it (the spec has the
    witness ignore them) and send it again. Stored as sent, 63 lines plus the cosignature
    made a state file that the witness refused to read back: the origin was stuck for good.
    Repeating the log's own line 64 times did the same. (Fixed: only one signature per
    trusted log key is stored.)"""
    w = _witness(tmp_path / "s", log)
    assert w.add_checkpoint(_body(log, 0, 10)).status == 200
    junk = b"".join(signature_line(f"junk.example/{i}", bytes(68)) for i in range(63))
    assert w.add_checkpoint(_body(log, 10, 10, junk)).status == 200
    cp = log.checkpoint(10)
    own = cp[cp.rindex(b"\n\n") + 2 :]
    assert w.add_checkpoint(spec.body(10, [], cp + own * 63)).status == 200
    assert w.add_checkpoint(_body(log, 10, 20)).status == 200
    stored = w.state.latest(ORIGIN)
    assert stored is not None and stored.size == 20 and len(stored.signatures) == 2


def test_a_forged_own_cosignature_line_does_not_set_the_witness_time(
    tmp_path: Path, log: spec.SpecLog
) -> None:
    """A line with the witness's own name and key ID and a made-up time, sent in a checkpoint:
    stored, it became the floor of every later cosignature's time (2^63 - 1: year 292 billion;
    2^64 - 1: every later request failed). (Fixed: not stored, and stored times are verified.)"""
    w = _witness(tmp_path / "s", log)
    kid = w.cosigner.verifier.key_id
    assert w.add_checkpoint(_body(log, 0, 10)).status == 200
    for stamp in (2**63 - 1, 2**64 - 1):
        fake = signature_line(w.cosigner.name, kid + stamp.to_bytes(8, "big") + bytes(64))
        assert w.add_checkpoint(_body(log, 10, 10, fake)).status == 200
    for size in (20, 30):
        answer = w.add_checkpoint(_body(log, size - 10, size))
        assert answer.status == 200
        stamp = cosignature_time(parse_signature_line(answer.body.decode().strip())[1])
        assert abs(stamp - datetime.now(UTC).timestamp()) < 3600


def test_two_witness_processes_on_one_state_folder_cosign_one_fork_only(
    tmp_path: Path, log: spec.SpecLog
) -> None:
    """Two witnesses started on one state folder (a restart that overlaps, a second unit):
    each had only its own in-process lock, so both could check the same stored size and
    cosign one fork each. (Fixed: the check and the save hold a flock of the folder.) The
    barrier makes the two requests meet between reading the state and saving it."""
    cosigner, _ = Cosigner.generate("witness.example.org/w1")
    a, b = _witness(tmp_path / "s", log, cosigner), _witness(tmp_path / "s", log, cosigner)
    assert a.add_checkpoint(_body(log, 0, 10)).status == 200
    fork = spec.SpecLog(
        ORIGIN, key=log.key, entries=[*log.entries[:15], b"fork", *log.entries[16:]]
    )
    barrier = threading.Barrier(2)
    for w in (a, b):
        read = w.state.latest

        def latest(origin: str, read: Any = read) -> Any:
            got = read(origin)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=1.0)
            return got

        w.state.latest = latest  # type: ignore[method-assign]
    answers: dict[str, int] = {}

    def send(name: str, w: Witness, which: spec.SpecLog) -> None:
        answers[name] = w.add_checkpoint(_body(which, 10, 20)).status

    threads = [
        threading.Thread(target=send, args=("real", a, log)),
        threading.Thread(target=send, args=("fork", b, fork)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers.values()) == [200, 409], answers


def test_concurrent_requests_of_two_forks_over_http(tmp_path: Path, log: spec.SpecLog) -> None:
    """Sixteen clients race two forks of every size from one stored size over HTTP: exactly one
    request wins, and the state is the checkpoint it won with."""
    fork = spec.SpecLog(
        ORIGIN, key=log.key, entries=[*log.entries[:12], b"fork", *log.entries[13:]]
    )
    with _serve(_witness(tmp_path / "s", log)) as w:
        assert spec.post(w.url, _body(log, 0, 10))[0] == 200
        won: list[tuple[str, int]] = []
        lock = threading.Lock()

        def send(which: spec.SpecLog, size: int) -> None:
            status = spec.post(w.url, _body(which, 10, size))[0]
            if status == 200:
                with lock:
                    won.append(("fork" if which is fork else "real", size))

        threads = [
            threading.Thread(target=send, args=(which, size))
            for size in range(13, 21)
            for which in (log, fork)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(won) == 1
    stored = w.witness.state.latest(ORIGIN)
    which = fork if won[0][0] == "fork" else log
    assert stored is not None and stored.root == spec.mth(which.entries[: won[0][1]])


def _raw_post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    import http.client

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("POST", "/add-checkpoint", body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_malformed_request_bodies_are_refused_and_the_witness_stays_up(
    tmp_path: Path, log: spec.SpecLog
) -> None:
    cp = log.checkpoint(10)
    h = base64.b64encode(bytes(32))
    bodies = {
        "huge": b"old 0\n\n" + cp + b"x" * (2 << 20),
        "negative": b"old -5\n\n" + cp,
        "plus sign": b"old +5\n\n" + cp,
        "20 digits": b"old 99999999999999999999\n\n" + cp,
        "2^63": b"old 9223372036854775808\n\n" + cp,
        "64 proof lines": b"old 5\n" + (h + b"\n") * 64 + b"\n" + cp,
        "non-canonical proof base64": b"old 5\n" + h[:-2] + b"B=\n\n" + cp,
        "proof line with a space": b"old 5\n" + h + b" \n\n" + cp,
        "CRLF": b"old 0\r\n\r\n" + cp.replace(b"\n", b"\r\n"),
        "NUL in the checkpoint": b"old 0\n\n" + cp.replace(b"\n10\n", b"\n1\x000\n"),
        "not UTF-8": b"old 0\n\n" + cp.replace(ORIGIN.encode(), b"\xff\xfe"),
        "no blank line": b"old 0\n" + cp,
        "empty": b"",
        "only blank lines": b"\n\n\n\n",
        "65 signature lines": b"old 0\n\n" + cp + signature_line("x.example/k", bytes(68)) * 64,
        "non-canonical signature base64": b"old 0\n\n"
        + cp.replace(cp[cp.rindex(b"=") - 1 : cp.rindex(b"=") + 1], b"B="),
        "size with a leading zero": b"old 0\n\n" + cp.replace(b"\n10\n", b"\n010\n"),
        "tree size 2^63": b"old 0\n\n" + cp.replace(b"\n10\n", b"\n9223372036854775808\n"),
    }
    with _serve(_witness(tmp_path / "s", log)) as w:
        for name, body in bodies.items():
            status, _ = _raw_post(w.url, body)
            assert status in (400, 413), (name, status)
        # A request cut off mid-body (a Content-Length it never sends), then the real thing.
        parts = urllib.parse.urlsplit(w.url)
        with socket.create_connection((parts.hostname or "", parts.port or 80), 10) as sock:
            sock.sendall(
                b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"
                + _body(log, 0, 10)
            )
        assert spec.post(w.url, _body(log, 0, 10))[0] == 200
        assert spec.post(w.url, _body(log, 10, 20))[0] == 200
    stored = w.witness.state.latest(ORIGIN)
    assert stored is not None and stored.size == 20


def test_proofs_from_old_size_zero(tmp_path: Path, log: spec.SpecLog) -> None:
    """A proof sent with old size 0 (a client that claims the witness is empty) is refused
    whatever the witness holds; once it holds a size, old 0 only learns that size (409)."""
    w = _witness(tmp_path / "s", log)
    fake = [bytes(32)]
    assert w.add_checkpoint(spec.body(0, fake, log.checkpoint(10))).status == 422
    # An empty tree cosigned first, then a non-empty proof from 0.
    empty = spec.SpecLog(ORIGIN, key=log.key)
    assert w.add_checkpoint(spec.body(0, [], empty.checkpoint())).status == 200
    assert w.add_checkpoint(spec.body(0, fake, log.checkpoint(10))).status == 422
    assert w.add_checkpoint(spec.body(0, [], log.checkpoint(10))).status == 200
    a = w.add_checkpoint(spec.body(0, [], log.checkpoint(20)))
    assert (a.status, a.content_type, a.body) == (409, SIZE_CONTENT_TYPE, b"10\n")


# -- the log's side -------------------------------------------------------------------------------


class _FarFuture(HttpTransport):
    """A witness at ``http://future.example`` whose clock is past year 9999 (another
    implementation, or one whose state was poisoned as above); the others over HTTP."""

    def __init__(self, cosigner: Cosigner) -> None:
        super().__init__()
        self.cosigner = cosigner

    def post(self, url: str, body: bytes, timeout: float) -> tuple[int, str, bytes]:
        if not url.startswith("http://future.example"):
            return super().post(url, body, timeout)
        req = AddCheckpoint.parse(body)
        return 200, "text/plain", self.cosigner.cosign(parse_note(req.checkpoint).text, 10**12)


def test_a_witness_with_a_far_future_clock_does_not_stop_the_others(tmp_path: Path) -> None:
    """Its cosignature's day could not be a file name: the ValueError ended the log's
    witnessing thread, and with it every other witness's cosigning, silently. (Fixed: kept in
    ``9999-12-31.notes``; the audit reports the time without crashing.)"""
    (tmp_path / "p.toml").write_text(POLICY)
    store = Store.init(tmp_path / "store", policy=tmp_path / "p.toml", simulated=True)
    future, _ = Cosigner.generate("witness.future.example/w1")
    with ThreadedWitness(DPO, tmp_path / "ws", {store.origin: [store.vkey]}) as dpo:
        settings = _settings(
            ("future", "http://future.example", str(future.verifier)),
            ("dpo", dpo.url, dpo.vkey),
        )
        clock = FixedClock(DAY)
        for part in range(3):
            with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as s:
                log.add_listener(
                    Witnessing(
                        log.storage,
                        settings,
                        store.path / "cosigned",
                        latest=log.latest_checkpoint(),
                        transport=_FarFuture(future),
                    )
                )
                for i in range(30):
                    s.decide(f"call-{part}-{i}", {})
    size = _log_size(tmp_path / "store")
    assert _size(_notes(tmp_path / "store" / "cosigned" / "dpo")[-1]) == size
    assert (tmp_path / "store" / "cosigned" / "future" / "9999-12-31.notes").exists()
    keys = store.reveal_keys(now=datetime(2030, 3, 5, 0, 0, 1, tzinfo=UTC))
    store.write_revealed(keys, tmp_path / "revealed.json")
    rep = _audit(tmp_path, witnesses=[f"dpo={dpo.vkey}", f"future={future.verifier}"])
    assert rep.status("witnesses") == "PASS", rep.to_text()
    cov = {c["witness"]: c for c in rep.to_json()["witnesses"]}
    assert "out of range" in cov["future"]["latest_at"]
