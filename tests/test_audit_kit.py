"""The auditor's kit: what it holds (and never holds), and an audit from it alone.

The attacks of test_audit_attacks.py also run from a kit; here: the kit's contents, its
period, a damaged or incomplete kit (exit 3, never a traceback), a pinned verifier key, the
recordings' hashes as listed or as read, and the CLI.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Store
from sampledrec.audit.kit import audit_kit, open_kit, write_kit
from sampledrec.cli import main
from sampledrec.errors import StoreError
from sampledrec.log.columns import read_log
from sampledrec.log.format import T_ACCESS, T_DECISION, T_HOLD, T_POLICY
from sampledrec.retention.sweep import Retention
from sampledrec.vault.audio import synthetic_speech
from sampledrec.vault.recorder import Principal, Vault

from .recording import write_call

POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.25"
purpose = "quality"
retention = "30 days"

[default]
rate = "0.25"
purpose = "quality"
retention = "30 days"
"""
DAY1 = datetime(2026, 2, 27, 9, tzinfo=UTC)  # February and March: two calls/ months
DAY2 = datetime(2026, 3, 2, 9, tzinfo=UTC)
AUDIT_AT = datetime(2026, 3, 6, 20, tzinfo=UTC)
DPO = Principal("dana", ("dpo",))


def _day(store: Store, at: datetime, tag: str, recorded: list[str]) -> None:
    clock = FixedClock(at)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(60):
            d = sampler.decide(f"{tag}-{i}", {"queue": "sales"}, caller=f"+33 6 12 00 00 {i:02d}")
            if d.record and len(recorded) < 4 + 4 * (tag == "d2"):
                recorded.append(write_call(vault, d, synthetic_speech(0.1, seed=i)))
        vault.recordings(principal=DPO)  # an access, sealed under access/


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("kit")
    (base / "p.toml").write_text(POLICY)
    store = Store.init(
        base / "store", policy=base / "p.toml", clock=FixedClock(DAY1 - timedelta(hours=1))
    )
    recorded: list[str] = []
    _day(store, DAY1, "d1", recorded)
    _day(store, DAY2, "d2", recorded)
    (base / "recorded.json").write_text(json.dumps(recorded))
    return base


@pytest.fixture
def case(built: Path, tmp_path: Path) -> Path:
    shutil.copytree(built / "store", tmp_path / "store")
    return tmp_path


def _kit(case: Path, **kw: Any) -> Path:
    kit = case / "kit"
    write_kit(Store.open(case / "store"), kit, now=AUDIT_AT, **kw)
    return kit


def test_an_audit_from_the_kit_alone_recomputes_every_decision(case: Path) -> None:
    kit = _kit(case)
    rep = audit_kit(kit, now=AUDIT_AT)
    assert rep.verdict == "PASS", rep.to_text()
    doc = rep.to_json()
    assert doc["results"]["decisions"]["checked"]["recomputed"] == 120
    assert doc["results"]["keys"]["checked"]["verified"] == 7  # every ended epoch, 02-27..03-05
    # Without --recordings the hashes are the kit's list; with it, the files themselves.
    assert doc["results"]["recordings"]["checked"]["hashes_declared"] == 8
    assert any("give --recordings" in n for n in rep.notes)
    rep = audit_kit(kit, recordings=case / "store", now=AUDIT_AT)
    assert rep.verdict == "PASS", rep.to_text()
    assert rep.to_json()["results"]["recordings"]["checked"]["files_hashed"] == 8
    # The operator's own audit of the store says the same.
    from sampledrec.audit.verify import audit_verify

    own = audit_verify(case / "store", kit / "revealed-keys.json", now=AUDIT_AT)
    assert own.to_json()["checks"] == rep.to_json()["checks"]


def test_the_kit_holds_no_private_key_and_nothing_about_who_accessed_what(case: Path) -> None:
    kit = _kit(case)
    store = Store.open(case / "store")
    secrets = {store.keyring.signing_seed().hex()}
    secrets |= {
        key.hex()
        for kid in store.keyring.sealing_key_ids()
        if kid.startswith("access/") and (key := store.keyring.sealing_key(kid)) is not None
    }
    everything = b"".join(p.read_bytes() for p in kit.rglob("*") if p.is_file()).hex()
    text = b"".join(p.read_bytes() for p in kit.rglob("*.json") if p.is_file()).decode()
    for secret in secrets:
        assert secret not in everything and secret not in text
    catalog = json.loads((kit / "recordings.json").read_text())
    assert catalog["recordings"] and all(
        "call_ref" not in r
        and "agent" not in r
        and "caller_pseudonym" not in r
        and "wrapped_key" not in r
        and "attrs" not in r
        for r in catalog["recordings"]
    )
    sealing = json.loads((kit / "sealing-keys.json").read_text())["keys"]
    assert sorted(k["kid"] for k in sealing) == ["calls/2026-02", "calls/2026-03"]
    # With the kit's keys: every decision's reference opens, no access entry's fields do.
    ev, _ = open_kit(kit)
    contents = read_log(ev.log, ev.sealing)
    assert len(contents.decisions) == 120 and (contents.decisions.ref_kind > 0).all()
    accesses = [e for e in contents.others if e.type == T_ACCESS]
    assert accesses and all("principal" not in e.fields for e in accesses)
    assert all(e.kid and e.kid.startswith("access/") for e in accesses)
    # Who applied a policy is sealed with the accesses now, not with the calls.
    policies = [e for e in contents.others if e.type in (T_POLICY, T_HOLD)]
    assert policies and all("principal" not in e.fields for e in policies)
    # Handing the kit over is itself logged, as an access.
    last = [e for e in read_log(store.log_storage, store.keyring).others if e.type == T_ACCESS]
    assert last[-1].fields["action"] == "audit_kit" and "calls/2026-02" in last[-1].fields["detail"]


def test_a_kit_for_a_period_holds_only_its_keys_and_is_audited_within_it(case: Path) -> None:
    kit = _kit(case, first_day=date(2026, 3, 1), last_day=date(2026, 3, 31))
    revealed = json.loads((kit / "revealed-keys.json").read_text())["epochs"]
    assert [e["epoch_id"] for e in revealed] == [f"2026-03-0{d}" for d in range(1, 6)]
    sealing = json.loads((kit / "sealing-keys.json").read_text())["keys"]
    assert [k["kid"] for k in sealing] == ["calls/2026-03"]
    rep = audit_kit(kit, recordings=case / "store", now=AUDIT_AT)
    assert rep.verdict == "PASS", rep.to_text()
    checked = rep.to_json()["results"]["decisions"]["checked"]
    assert checked["recomputed"] == 60 and checked["outside_period"] == 60
    # The same kit, without its period, is a FAIL: February's epoch ended and is not revealed.
    manifest = json.loads((kit / "kit.json").read_text())
    manifest["period"] = None
    (kit / "kit.json").write_text(json.dumps(manifest))
    rep = audit_kit(kit, recordings=case / "store", now=AUDIT_AT)
    assert rep.verdict == "FAIL"
    assert any("2026-02-27 has ended" in f.message for f in rep.findings)


def test_a_file_changed_after_the_kit_was_made_is_caught_with_recordings(
    built: Path, case: Path
) -> None:
    kit = _kit(case)
    rid = json.loads((built / "recorded.json").read_text())[0]
    (path,) = (case / "store" / "recordings").rglob(f"{rid}.sdr")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert audit_kit(kit, now=AUDIT_AT).verdict == "PASS"  # the kit's list is from before
    rep = audit_kit(kit, recordings=case / "store", now=AUDIT_AT)
    bad = [f for f in rep.findings if "not the one sealed" in f.message]
    assert rep.verdict == "FAIL" and bad and bad[0].recording_id == rid
    assert bad[0].evidence["actual_sha256"] != bad[0].evidence["expected_sha256"]


def test_a_log_re_signed_with_another_key_fails_against_the_pinned_verifier_key(
    case: Path, tmp_path: Path
) -> None:
    kit = _kit(case)
    store = Store.open(case / "store")
    other = Store.init(tmp_path / "other", policy=None, clock=FixedClock(DAY1))
    # The operator hands over a kit whose verifier key is another key of theirs.
    (kit / "verifier-key.txt").write_text(other.vkey + "\n")
    manifest = json.loads((kit / "kit.json").read_text())
    data = (kit / "verifier-key.txt").read_bytes()
    import hashlib

    manifest["files"]["verifier-key.txt"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    (kit / "kit.json").write_text(json.dumps(manifest))
    rep = audit_kit(kit, verifier_key=store.vkey, now=AUDIT_AT)
    assert rep.verdict == "PASS"  # checked against the key given, with a note
    assert any("differs from the verifier key given" in n for n in rep.notes)
    rep = audit_kit(kit, verifier_key=other.vkey, now=AUDIT_AT)
    assert rep.verdict == "FAIL" and [f for f in rep.findings if f.check == "log"]


@pytest.mark.parametrize(
    "damage",
    ["missing", "changed", "extra", "manifest", "revealed-shape", "recordings-shape", "no-kit"],
)
def test_a_damaged_or_incomplete_kit_is_refused_with_exit_3(
    case: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = _kit(case)

    def rewrite(name: str, doc: Any) -> None:
        data = json.dumps(doc).encode()
        (kit / name).write_bytes(data)
        manifest = json.loads((kit / "kit.json").read_text())
        import hashlib

        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (kit / "kit.json").write_text(json.dumps(manifest))

    if damage == "missing":
        (kit / "sealing-keys.json").unlink()
    elif damage == "changed":
        with open(kit / "log" / "checkpoints", "ab") as fh:
            fh.write(b"x")
    elif damage == "extra":
        (kit / "log" / "seg-000000009999.log").write_bytes(b"SDRL")
    elif damage == "manifest":
        (kit / "kit.json").write_text("[1, 2")
    elif damage == "revealed-shape":
        rewrite("revealed-keys.json", {"format": "sampledrec-revealed-keys", "epochs": [{}]})
    elif damage == "recordings-shape":
        rewrite("recordings.json", {"format": "sampledrec-kit-recordings", "recordings": [7]})
    else:
        shutil.rmtree(kit)
        kit.mkdir()
    with pytest.raises(StoreError):
        open_kit(kit)
    code = main(["audit", "verify", "--kit", str(kit), "--json"])
    out = capsys.readouterr()
    assert code == 3 and "Traceback" not in out.out + out.err
    doc = json.loads(out.out)
    assert doc["exit_code"] == 3 and str(kit) in doc["error"]


def test_the_cli_writes_a_kit_and_audits_from_it(
    case: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = case / "store"
    # Audited as of the real clock: the recordings' 30 days have passed, so sweep first.
    opened = Store.open(store)
    with opened.open_log() as log, Vault(opened, log) as vault:
        assert Retention(vault).sweep().expired
    code = main(["audit", "kit", "--store", str(store), "--out", str(case / "k"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["epochs_revealed"] >= 7 and doc["files"] >= 9
    vkey = Store.open(store).vkey
    args = ["audit", "verify", "--kit", str(case / "k"), "--recordings", str(store)]
    code = main([*args, "--verifier-key", vkey, "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0 and rep["verdict"] == "PASS", rep
    assert rep["results"]["decisions"]["checked"]["recomputed"] == 120
    # The usage errors say what to do.
    assert main(["audit", "verify", "--store", str(store)]) == 2
    assert "--revealed-keys is required with --store" in capsys.readouterr().err
    assert main(["audit", "kit", "--store", str(store), "--out", str(case / "k")]) == 2
    assert "exists" in capsys.readouterr().err
    bad = ["--from", "2026-03-31", "--to", "2026-03-01"]
    assert main(["audit", "kit", "--store", str(store), "--out", str(case / "k2"), *bad]) == 2


def test_decisions_in_the_kit_are_the_stores(case: Path) -> None:
    kit = _kit(case)
    ev, _ = open_kit(kit)
    store = Store.open(case / "store")
    mine = read_log(store.log_storage, store.keyring)
    theirs = read_log(ev.log, ev.sealing)
    n = len(theirs.decisions)
    assert n == 120 and [theirs.decisions.ref_text(i) for i in range(n)] == [
        mine.decisions.ref_text(i) for i in range(n)
    ]
    assert sum(e.type == T_DECISION for e in theirs.others) == 0
