"""A store whose log is witnessed: the log asks its witness for cosignatures, keeps them, and the
audit checks the log against them. A rewrite (even signed again with the log's own key), a
drop, a reorder, a truncation, a rollback and a fork are each a FAIL with evidence; a witness
that was down leaves a gap that the audit reports, and decisions never waited for it."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sampledrec import FixedClock, Store
from sampledrec.audit.findings import AuditReport
from sampledrec.audit.kit import audit_kit, write_kit
from sampledrec.audit.verify import audit_verify
from sampledrec.cli.app import main
from sampledrec.log.checkpoint import LogSigner
from sampledrec.log.merkle import CompactRange, leaf_hash
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
from sampledrec.witness import WitnessEndpoint, WitnessSettings, read_cosigned
from sampledrec.witness.note import VerifierKey

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


def _decide(store: Store, refs: list[str]) -> None:
    clock = FixedClock(DAY)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        for ref in refs:
            sampler.decide(ref, {})


def _settings(
    *witnesses: ThreadedWitness, names: tuple[str, ...] = ("dpo", "regulator")
) -> WitnessSettings:
    return WitnessSettings(
        tuple(
            WitnessEndpoint(name, w.url, VerifierKey.parse(w.vkey))
            for name, w in zip(names, witnesses, strict=False)
        ),
        quorum=1,
        interval=1.0,
        close_wait=10.0,
    )


def _cosigned(store: Path) -> list[bytes]:
    notes = []
    for path in sorted((store / "cosigned").rglob("*.notes")):
        notes += read_cosigned(path.read_bytes())[0]
    return notes


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A witnessed store after three sessions of decisions (``early/``: a copy after the
    first), its witness's verifier key, and the keys revealed for the audit."""
    base = tmp_path_factory.mktemp("witnessed")
    (base / "p.toml").write_text(POLICY)
    store = Store.init(base / "store", policy=base / "p.toml", simulated=True)
    with ThreadedWitness(
        "witness.dpo.example/w1", base / "wstate", {store.origin: [store.vkey]}
    ) as w:
        store.configure_witnesses(_settings(w))
        _decide(store, [f"call-{i:03d}" for i in range(40)])
        shutil.copytree(base / "store", base / "early")
        _decide(store, [f"call-{i:03d}" for i in range(40, 80)])
        _decide(store, [f"call-{i:03d}" for i in range(80, 120)])
        keys = store.reveal_keys(now=datetime(2030, 3, 5, 0, 0, 1, tzinfo=UTC))
        store.write_revealed(keys, base / "revealed.json")
    return {"base": base, "vkey": w.vkey}


@pytest.fixture
def case(built: dict[str, object], tmp_path: Path) -> Path:
    base = built["base"]
    assert isinstance(base, Path)
    for name in ("store", "early"):
        shutil.copytree(base / name, tmp_path / name)
    shutil.copy(base / "revealed.json", tmp_path / "revealed.json")
    return tmp_path


@pytest.fixture
def dpo(built: dict[str, object]) -> str:
    return f"dpo={built['vkey']}"


def _audit(case: Path, store: str = "store", **kw: object) -> AuditReport:
    kw.setdefault("now", AUDIT_AT)
    return audit_verify(case / store, case / "revealed.json", **kw)  # type: ignore[arg-type]


def _found(rep: AuditReport, text: str) -> list[dict[str, object]]:
    return [f.to_json() for f in rep.findings if f.check == "witnesses" and text in f.message]


def _log_size(store: Path) -> int:
    return sum(b.entries for b in iter_batches(store / "log"))


def resign(store: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    """What an operator with every key can do: rebuild the log from changed entries, with
    valid batches, trailers and checkpoints signed by the log's own key."""
    st = Store.open(store)
    entries: list[bytes] = []
    for b in iter_batches(store / "log"):
        entries += split_records(b.data[b.start : b.end])[0]
    entries = change(entries)
    signer = LogSigner(st.origin, st.keyring.signing_seed())
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


# -- an honest store -----------------------------------------------------------------------------


def test_the_log_keeps_what_its_witness_cosigned(case: Path, dpo: str) -> None:
    notes = _cosigned(case / "store")
    assert len(notes) >= 3  # at least the close of each session
    sizes = [int(n.split(b"\n")[1]) for n in notes]
    assert sizes == sorted(sizes) and sizes[-1] == _log_size(case / "store")
    assert all(b"\n\xe2\x80\x94 witness.dpo.example/w1 " in n for n in notes)
    rep = _audit(case, witnesses=[dpo])
    assert rep.status("witnesses") == "PASS", rep.to_text()
    (cov,) = rep.to_json()["witnesses"]
    assert cov["covered_fraction"] == 1.0 and cov["uncovered_tail"] == 0
    assert cov["cosigned_checkpoints"] == len(notes)
    assert "witness dpo: covers" in rep.to_text()


def test_without_witness_options_the_audit_says_what_it_could_check(case: Path) -> None:
    rep = _audit(case)
    assert "witnesses" not in rep.to_json()["checks"]
    assert any("give --witness NAME=VKEY" in n for n in rep.notes)


def test_the_kit_carries_the_cosigned_checkpoints(case: Path, dpo: str) -> None:
    store = Store.open(case / "store")
    manifest = write_kit(store, case / "kit", now=AUDIT_AT)
    listed = [n for n in manifest["files"] if n.startswith("cosigned/")]
    assert listed and all(n.startswith("cosigned/dpo/") and n.endswith(".notes") for n in listed)
    rep = audit_kit(case / "kit", now=AUDIT_AT, witnesses=[dpo])
    assert rep.status("witnesses") == "PASS", rep.to_text()
    # Deleting the cosigned checkpoints from the kit is refused as a changed kit...
    for name in listed:
        (case / "kit" / name).unlink()
    with pytest.raises(Exception, match="the kit is incomplete"):
        audit_kit(case / "kit", now=AUDIT_AT, witnesses=[dpo])


def test_a_store_stripped_of_its_cosigned_checkpoints_misses_the_quorum(
    case: Path, dpo: str
) -> None:
    shutil.rmtree(case / "store" / "cosigned")
    rep = _audit(case, witnesses=[dpo])
    (bad,) = _found(rep, "the quorum is 1")
    assert bad["evidence"]["without"] == ["dpo"]  # type: ignore[index]


def test_a_quorum_of_two_needs_two_witnesses(case: Path, dpo: str, tmp_path: Path) -> None:
    from sampledrec.witness import Cosigner

    other, _ = Cosigner.generate("witness.regulator.example/w1")
    rep = _audit(case, witnesses=[dpo, f"regulator={other.verifier}"], quorum=2)
    assert _found(rep, "the quorum is 2")
    assert (
        _audit(case, witnesses=[dpo, f"regulator={other.verifier}"], quorum=1).status("witnesses")
        == "PASS"
    )


def test_a_cosignature_that_does_not_verify(case: Path, dpo: str) -> None:
    (path,) = sorted((case / "store" / "cosigned").rglob("*.notes"))
    data = path.read_bytes()
    at = data.index(b"\xe2\x80\x94 witness.dpo.example/w1 ") + 40
    data = data[:at] + (b"A" if data[at : at + 1] != b"A" else b"B") + data[at + 1 :]
    path.write_bytes(data)
    rep = _audit(case, witnesses=[dpo])
    assert _found(rep, "does not verify")


# -- what the operator could do with every key ----------------------------------------------------


def test_a_history_rewritten_and_signed_again_with_the_logs_key(case: Path, dpo: str) -> None:
    """The operator restores the copy made after the first session and decides other calls:
    a log that verifies under its own key, and differs from what the witness cosigned."""
    _decide(Store.open(case / "early"), [f"other-{i:03d}" for i in range(90)])
    shutil.rmtree(case / "early" / "cosigned")
    shutil.copytree(case / "store" / "cosigned", case / "early" / "cosigned")
    rep = _audit(case, "early", witnesses=[dpo])
    assert rep.status("log") == "PASS"  # its own signatures all verify
    (bad,) = _found(rep, "are not the ones witness dpo cosigned")
    ev = bad["evidence"]
    assert isinstance(ev, dict) and ev["log_root"] != ev["cosigned_root"]
    assert ev["last_matching_size"] > 0  # the first session's checkpoints still match


@pytest.mark.parametrize(
    ("how", "change"),
    [
        ("changed", lambda e: [*e[:30], e[30][:-1] + bytes([e[30][-1] ^ 1]), *e[31:]]),
        ("dropped", lambda e: [*e[:30], *e[31:]]),
        ("reordered", lambda e: [*e[:30], e[31], e[30], *e[32:]]),
    ],
)
def test_an_entry_changed_dropped_or_reordered_and_the_log_signed_again(
    case: Path, dpo: str, how: str, change: Callable[[list[bytes]], list[bytes]]
) -> None:
    resign(case / "store", change)
    rep = _audit(case, witnesses=[dpo])
    bad = _found(rep, "dropped, reordered or changed") + _found(rep, "were dropped")
    assert bad, (how, rep.to_text())
    ev = bad[0]["evidence"]
    assert isinstance(ev, dict)
    assert ev["last_matching_size"] <= 30 < ev["cosigned_size"]


def test_a_log_truncated_and_signed_again(case: Path, dpo: str) -> None:
    size = _log_size(case / "store")
    resign(case / "store", lambda e: e[: size - 10])
    rep = _audit(case, witnesses=[dpo])
    (bad,) = _found(rep, "entries were dropped after the witness saw them")
    assert bad["evidence"]["log_entries"] == size - 10  # type: ignore[index]


def test_a_log_rolled_back_to_a_backup(case: Path, dpo: str) -> None:
    shutil.rmtree(case / "early" / "cosigned")
    shutil.copytree(case / "store" / "cosigned", case / "early" / "cosigned")
    rep = _audit(case, "early", witnesses=[dpo])
    assert rep.status("log") == "PASS"
    assert _found(rep, "truncation or rollback")


def test_a_fork_shown_to_two_witnesses(case: Path, dpo: str, tmp_path: Path) -> None:
    """The operator shows witness 1 the real log and witness 2 another history of the same
    size: both cosign, and the audit sees two checkpoints of one size."""
    size = _log_size(case / "store")
    shutil.copytree(case / "store", tmp_path / "fork")
    resign(tmp_path / "fork", lambda e: [*e[:-1], e[-1] + b"x"])
    fork = Store.open(tmp_path / "fork")
    notes, _ = split_records((tmp_path / "fork" / "log" / CHECKPOINTS).read_bytes())
    assert int(notes[-1].split(b"\n")[1]) == size
    with ThreadedWitness(
        "witness.regulator.example/w1", tmp_path / "w2", {fork.origin: [fork.vkey]}
    ) as w2:
        status, _, line = spec.post(w2.url, spec.body(0, [], notes[-1]))
    assert status == 200
    folder = case / "store" / "cosigned" / "regulator"
    folder.mkdir()
    (folder / "2030-03-04.notes").write_bytes(notes[-1] + line + b"\n")
    rep = _audit(case, witnesses=[dpo, f"regulator={w2.vkey}"], quorum=1)
    forks = _found(rep, "the log forked")
    assert forks and forks[0]["evidence"]["size"] == size  # type: ignore[index]
    assert _found(rep, "are not the ones witness regulator cosigned")
    assert rep.status("log") == "PASS"  # the real log, as the operator keeps it


# -- a witness that is down ------------------------------------------------------------------------


def test_a_witness_down_never_stops_decisions_and_the_audit_shows_the_gap(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(POLICY)
    store = Store.init(tmp_path / "store", policy=tmp_path / "p.toml", simulated=True)
    w = ThreadedWitness("witness.dpo.example/w1", tmp_path / "wstate", {store.origin: [store.vkey]})
    w.start()
    try:
        store.configure_witnesses(_settings(w))
        _decide(store, [f"a-{i}" for i in range(30)])
        before = _log_size(tmp_path / "store")
        w.stop()
        # Down: every call is still decided and logged.
        _decide(store, [f"b-{i}" for i in range(200)])
        _decide(store, [f"c-{i}" for i in range(200)])
        down_end = _log_size(tmp_path / "store")
        assert down_end > before + 400
        w.start()  # back, on the same port
        _decide(store, [f"d-{i}" for i in range(10)])
    finally:
        w.stop()
    keys = store.reveal_keys(now=datetime(2030, 3, 5, 0, 0, 1, tzinfo=UTC))
    store.write_revealed(keys, tmp_path / "revealed.json")
    rep = _audit(tmp_path, witnesses=[f"dpo={w.vkey}"])
    assert rep.status("witnesses") == "PASS", rep.to_text()
    assert rep.counts["decisions_recomputed"] == 440
    (cov,) = rep.to_json()["witnesses"]
    gap = cov["longest_uncovered"]
    assert gap["from"] == before and gap["to"] >= down_end
    assert any(f"entries {before}.." in n for n in rep.notes)


def test_a_witness_still_down_at_the_audit_leaves_the_tail_uncovered(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(POLICY)
    store = Store.init(tmp_path / "store", policy=tmp_path / "p.toml", simulated=True)
    with ThreadedWitness(
        "witness.dpo.example/w1", tmp_path / "ws", {store.origin: [store.vkey]}
    ) as w:
        store.configure_witnesses(_settings(w))
        _decide(store, [f"a-{i}" for i in range(10)])
    covered = _log_size(tmp_path / "store")
    _decide(store, [f"b-{i}" for i in range(50)])
    keys = store.reveal_keys(now=datetime(2030, 3, 5, 0, 0, 1, tzinfo=UTC))
    store.write_revealed(keys, tmp_path / "revealed.json")
    rep = _audit(tmp_path, witnesses=[f"dpo={w.vkey}"])
    (cov,) = rep.to_json()["witnesses"]
    assert cov["latest_size"] == covered
    assert cov["uncovered_tail"] == _log_size(tmp_path / "store") - covered > 50
    assert cov["covered_fraction"] < 1


# -- the command line ------------------------------------------------------------------------------


def test_audit_verify_with_witnesses_on_the_command_line(case: Path, dpo: str) -> None:
    out = io.StringIO()
    argv = ["audit", "verify", "--store", str(case / "store"), "--revealed-keys"]
    argv += [str(case / "revealed.json"), "--witness", dpo, "--quorum", "1", "--json"]
    main(argv, out=out)
    doc = json.loads(out.getvalue())
    assert doc["checks"]["witnesses"] == "PASS"
    assert doc["witnesses"][0]["witness"] == "dpo"
    bad = ["audit", "verify", "--store", str(case / "store"), "--revealed-keys"]
    bad += [str(case / "revealed.json"), "--witness", "dpo=not-a-key"]
    assert main(bad, out=io.StringIO()) == 2
    assert main([*argv[:-3], "--quorum", "2"], out=io.StringIO()) == 2


def test_audit_report_shows_the_witnesses_check(case: Path, dpo: str) -> None:
    out = case / "report.html"
    argv = ["audit", "report", "--store", str(case / "store"), "--revealed-keys"]
    argv += [str(case / "revealed.json"), "--witness", dpo, "--out", str(out)]
    main(argv, out=io.StringIO())
    assert "<td>witnesses</td>" in out.read_text()
    no_keys = ["audit", "report", "--store", str(case / "store"), "--witness", dpo]
    assert main([*no_keys, "--out", str(case / "r2.html")], out=io.StringIO()) == 2
