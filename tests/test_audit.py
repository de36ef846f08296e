"""The auditor's checks: a clean store passes, each attack is reported as FAIL with evidence."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sampledrec import FixedClock, Store
from sampledrec.audit.verify import (
    AuditReport,
    audit_verify,
    binom_cdf,
    binom_test,
    clopper_pearson,
    holm,
)
from sampledrec.cli.app import main
from sampledrec.log.columns import Decisions, call_firsts, counted_once, decisions_from_entries
from sampledrec.log.format import T_DECISION, Entry
from sampledrec.log.writer import iter_entries
from sampledrec.retention.sweep import Retention
from sampledrec.sampling import DecisionRecord
from sampledrec.sampling.record import REASONS
from sampledrec.vault.audio import AudioFormat, frames, synthetic_speech
from sampledrec.vault.catalog import SqliteCatalog
from sampledrec.vault.recorder import Vault

PCM = AudioFormat("pcm16", 8000, 1)
POLICY = """
[default]
rate = "0.25"
purpose = "quality"
retention = "2 days"
max_per_agent_per_day = 50
"""
DAY = "2030-03-04T10:00:00Z"
AUDIT_AT = datetime(2030, 3, 5, 12, tzinfo=UTC)  # after the epoch, before any expiry
AFTER_EXPIRY = datetime(2030, 3, 10, tzinfo=UTC)
CALLS = 61  # the last one's caller objects
OBJECTING = "call-060"


def _decide_and_record(store: Store, clock: FixedClock, refs: list[str]) -> None:
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        for i, ref in enumerate(refs):
            d = sampler.decide(ref, {"agent": f"a{i % 3}", "objection": ref == OBJECTING})
            if d.record:
                with vault.record(d, audio_format=PCM, chunk_size=1024) as rec:
                    for frame in frames(synthetic_speech(0.1, seed=i), PCM, 20):
                        rec.write(frame)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated store with a day of decisions and recordings, an exported checkpoint taken
    halfway (``early/``: a copy of the store at that point), revealed keys and call records."""
    base = tmp_path_factory.mktemp("audit")
    (base / "p.toml").write_text(POLICY)
    store = Store.init(base / "store", policy=base / "p.toml", simulated=True)
    clock = FixedClock(DAY)
    refs = [f"call-{i:03d}" for i in range(CALLS)]
    _decide_and_record(store, clock, refs[: CALLS // 2])
    shutil.copytree(base / "store", base / "early")
    clock.advance(hours=1)
    _decide_and_record(store, clock, refs[CALLS // 2 :])
    export = ["log", "checkpoint", "--store", str(base / "store"), "--out", str(base / "cp.json")]
    assert main(export, out=io.StringIO()) == 0
    keys = store.reveal_keys(now=datetime(2030, 3, 5, 0, 0, 1, tzinfo=UTC))
    store.write_revealed(keys, base / "revealed.json")
    assert refs[-1] == OBJECTING
    rows = "".join(f"{r},2030-03-04T10:00:00Z\n" for r in refs)
    (base / "cdr.csv").write_text("call_ref,start_time,queue\n" + rows.replace("Z\n", "Z,q\n"))
    return base


@pytest.fixture
def case(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built store for one test to tamper with."""
    for name in ("store", "early"):
        shutil.copytree(built / name, tmp_path / name)
    for name in ("revealed.json", "cp.json", "cdr.csv"):
        shutil.copy(built / name, tmp_path / name)
    return tmp_path


def _audit(case: Path, store: str = "store", **kw: object) -> AuditReport:
    kw.setdefault("now", AUDIT_AT)
    return audit_verify(case / store, case / "revealed.json", **kw)  # type: ignore[arg-type]


def _findings(rep: AuditReport, check: str) -> list[dict[str, object]]:
    return [f.to_json() for f in rep.findings if f.check == check]


def test_a_clean_store_passes(case: Path) -> None:
    rep = _audit(case, checkpoint=case / "cp.json", cdr=case / "cdr.csv")
    assert rep.ok, rep.to_text()
    doc = rep.to_json()
    assert set(doc["checks"].values()) == {"PASS"}
    assert rep.counts["decisions_recomputed"] == CALLS
    assert rep.counts["recordings"] > 0
    assert doc["simulated"] is True
    assert doc["statistics"]["groups"], "at least the rule as a whole is tested"


def test_a_recording_for_a_call_that_was_not_selected(case: Path) -> None:
    entries = list(iter_entries(case / "store" / "log", Store.open(case / "store").keyring))
    unselected = next(
        e.fields["call_ref"]
        for e in entries
        if e.type == T_DECISION and REASONS[e.fields["reason"]] == "not_sampled"
    )
    catalog = SqliteCatalog(case / "store" / "catalog.sqlite")
    row = catalog.find()[0]
    row.recording_id, row.call_ref = "forged-recording", unselected
    catalog.add(row)
    catalog.close()
    rep = _audit(case)
    bad = _findings(rep, "recordings")
    assert rep.status("recordings") == "FAIL"
    assert any(
        f.get("recording_id") == "forged-recording"
        and "no positive decision" in str(f["message"])
        and f.get("call_ref") == unselected
        for f in bad
    )
    assert any("no recording_opened" in str(f["message"]) for f in bad)


def test_a_recording_of_a_caller_who_objected(case: Path) -> None:
    catalog = SqliteCatalog(case / "store" / "catalog.sqlite")
    row = catalog.find()[0]
    row.recording_id, row.call_ref = "objector-recording", OBJECTING
    catalog.add(row)
    catalog.close()
    rep = _audit(case)
    bad = _findings(rep, "recordings")
    assert {
        "check": "recordings",
        "message": "a recording of a caller who objected",
        "recording_id": "objector-recording",
        "call_ref": OBJECTING,
    } in bad
    assert rep.counts["decisions_objection"] == 1


def test_a_signed_decision_that_recomputation_contradicts(case: Path) -> None:
    store = Store.open(case / "store")
    clock = FixedClock(DAY)
    policy = store.policy(clock.now())
    rule = policy.rule_named("default")
    with store.open_log(clock=clock) as log:
        ticket = log.append_decision(
            DecisionRecord(
                epoch_id="2030-03-04",
                policy_version=policy.version,
                rule="default",
                threshold=rule.threshold,
                reason="sampled",
                draw=0,
                call_ref="call-001",
                agent="a1",
                caller_pseudonym=None,
                decided_at=clock.now(),
            )
        )
        log.wait_durable(ticket)
    rep = _audit(case)
    assert rep.status("log") == "PASS"  # properly signed by the operator
    bad = _findings(rep, "decisions")
    assert any(
        "not the draw recomputed" in str(f["message"])
        and f["call_ref"] == "call-001"
        and f["epoch_id"] == "2030-03-04"
        and isinstance(f["index"], int)
        for f in bad
    )


def _decisions(rows: list[tuple[int, int, str | None, str | None]]) -> Decisions:
    """Decisions (threshold, reason, call reference, agent) for one rule "r" in one epoch."""
    return decisions_from_entries(
        [
            Entry(
                i,
                T_DECISION,
                0,
                {"epoch_id": "e", "policy_version": b"", "rule": "r", "threshold": thr}
                | {"reason": reason, "call_ref": ref, "agent": agent},
            )
            for i, (thr, reason, ref, agent) in enumerate(rows)
        ]
    )


def test_a_biased_rate_fails_the_statistics() -> None:
    from sampledrec.audit.verify import check_statistics

    thr = 2**56 // 10  # 10%
    decs = _decisions([(thr, 0 if i % 3 == 0 else 1, f"c{i}", "a0") for i in range(900)])
    rep = AuditReport(store="x", at=AUDIT_AT)
    check_statistics(rep, decs, counted_once(call_firsts(decs)))
    assert rep.status("statistics") == "FAIL"
    ev = _findings(rep, "statistics")[0]["evidence"]
    assert ev["eligible"] == 900 and ev["selected"] == 300  # type: ignore[index]
    assert ev["ci95"][0] > 0.1  # type: ignore[index]
    fair = _decisions([(thr, 0 if i % 10 == 0 else 1, f"c{i}", None) for i in range(900)])
    rep = AuditReport(store="x", at=AUDIT_AT)
    check_statistics(rep, fair, counted_once(call_firsts(fair)))
    assert not rep.findings and rep.groups[0].p_holm > 0.5


def test_statistics_count_each_call_once_and_per_agent() -> None:
    from sampledrec.audit.verify import check_statistics

    thr = 2**56 // 2
    rows: list[tuple[int, int, str | None, str | None]] = []
    for i in range(60):
        rows.append((thr, i % 2, f"c{i}", f"a{i % 3}"))
        rows.append((thr, i % 2, f"c{i}", f"a{i % 3}"))  # a retry: the same call again
    rows += [(thr, 2, "objector", "a0"), (thr, 0, None, None)]  # an objection; an erased ref
    decs = _decisions(rows)
    rep = AuditReport(store="x", at=AUDIT_AT)
    check_statistics(rep, decs, counted_once(call_firsts(decs)))
    got = {(g.rule, g.agent): (g.eligible, g.selected) for g in rep.groups}
    assert got == {("r", None): (61, 31), ("r", "a0"): (20, 10), ("r", "a1"): (20, 10)} | {
        ("r", "a2"): (20, 10)
    }


def test_an_edited_decision_entry(case: Path) -> None:
    entry = next(e for e in iter_entries(case / "store" / "log") if e.type == T_DECISION)
    seg = sorted((case / "store" / "log").glob("seg-*.log"))[0]
    data = bytearray(seg.read_bytes())
    at = data.find(entry.raw)
    assert at > 0
    pos = at + entry.raw.find(b"\x04\x08") + 9  # the threshold's last byte
    data[pos] ^= 0x01
    seg.write_bytes(bytes(data))
    rep = _audit(case)
    assert rep.status("log") == "FAIL"
    assert any(
        "do not hash to its recorded tree" in str(f["message"]) for f in _findings(rep, "log")
    )
    assert any(f.get("index") is not None for f in _findings(rep, "log"))
    assert not rep.ok


def test_a_log_truncated_and_resigned_after_an_exported_checkpoint(case: Path) -> None:
    # ``early`` is the same store, validly signed, with the entries after the export cut off.
    early_alone = _audit(case, "early")
    assert early_alone.status("log") == "PASS"
    rep = _audit(case, "early", checkpoint=case / "cp.json")
    assert rep.status("log") == "FAIL"
    assert any("truncated after the export" in str(f["message"]) for f in _findings(rep, "log"))


def test_a_carrier_call_with_no_decision(case: Path) -> None:
    with open(case / "cdr.csv", "a") as fh:
        fh.write("call-never-decided,2030-03-04T11:00:00Z,q\n")
    rep = _audit(case, cdr=case / "cdr.csv")
    assert rep.status("cdr") == "FAIL"
    assert _findings(rep, "cdr") == [
        {
            "check": "cdr",
            "message": "a carrier call has no decision in the log",
            "call_ref": "call-never-decided",
        }
    ]


def test_a_decision_for_a_reference_that_is_not_a_carrier_call(case: Path) -> None:
    lines = (case / "cdr.csv").read_text().splitlines()
    (case / "cdr.csv").write_text("\n".join(line for line in lines if "call-007" not in line))
    rep = _audit(case, cdr=case / "cdr.csv")
    bad = _findings(rep, "cdr")
    assert len(bad) == 1 and bad[0]["call_ref"] == "call-007"
    assert isinstance(bad[0]["index"], int)


def test_a_revealed_key_that_does_not_match_its_commitment(case: Path) -> None:
    doc = json.loads((case / "revealed.json").read_text())
    epoch = next(e for e in doc["epochs"] if e["epoch_id"] == "2030-03-04")
    epoch["key"] = ("00" if epoch["key"][:2] != "00" else "11") + epoch["key"][2:]
    (case / "revealed.json").write_text(json.dumps(doc))
    rep = _audit(case)
    assert rep.status("keys") == "FAIL"
    bad = _findings(rep, "keys")
    assert bad[0]["epoch_id"] == "2030-03-04"
    assert "does not match its commitment" in str(bad[0]["message"])
    assert rep.counts["decisions_not_yet_verifiable"] == CALLS


def test_a_recording_still_readable_after_its_expiry(case: Path) -> None:
    rep = _audit(case, now=AFTER_EXPIRY)  # the sweep was skipped
    bad = _findings(rep, "recordings")
    assert rep.status("recordings") == "FAIL"
    readable = [f for f in bad if "still readable" in str(f["message"])]
    assert readable and all(f.get("recording_id") for f in readable)
    assert readable[0]["evidence"]["key_unwraps"] is True  # type: ignore[index]
    # After the sweep, the same audit passes.
    store = Store.open(case / "store")
    clock = FixedClock(AFTER_EXPIRY)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        Retention(vault, clock=clock).sweep()
    assert _audit(case, now=AFTER_EXPIRY).status("recordings") == "PASS"


def test_cli_exit_codes_and_json(case: Path) -> None:
    out = io.StringIO()
    args = ["audit", "verify", "--store", str(case / "store")]
    args += ["--revealed-keys", str(case / "revealed.json"), "--at", AUDIT_AT.isoformat()]
    assert main([*args, "--cdr", str(case / "cdr.csv")], out=out) == 0
    assert "AUDIT PASSED" in out.getvalue() and "decisions    PASS" in out.getvalue()
    out = io.StringIO()
    assert main([*args, "--json", "--at", AFTER_EXPIRY.isoformat()], out=out) == 1
    doc = json.loads(out.getvalue())
    assert doc["checks"]["recordings"] == "FAIL" and doc["findings"]
    missing = ["audit", "verify", "--store", str(case / "nope")]
    assert main([*missing, "--revealed-keys", str(case / "revealed.json")], out=out) == 3
    nofile = ["audit", "verify", "--store", str(case / "store"), "--revealed-keys"]
    assert main([*nofile, str(case / "none.json")], out=io.StringIO()) == 2
    (case / "x.parquet").write_bytes(b"")
    if importlib.util.find_spec("pyarrow") is None:
        assert main([*args, "--cdr", str(case / "x.parquet")], out=io.StringIO()) == 2


# -- the exact statistics, against brute force ---------------------------------------------------


def _brute_test(k: int, n: int, p: float) -> float:
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    return min(1.0, sum(x for x in pmf if x <= pmf[k] * (1 + 1e-7)))


@pytest.mark.parametrize(
    ("k", "n", "p"), [(7, 20, 0.5), (2, 100, 0.1), (20, 100, 0.1), (0, 50, 0.05), (50, 60, 0.3)]
)
def test_exact_binomial_matches_brute_force(k: int, n: int, p: float) -> None:
    assert binom_test(k, n, p) == pytest.approx(_brute_test(k, n, p), rel=1e-9, abs=1e-300)
    brute_cdf = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
    assert binom_cdf(k, n, p) == pytest.approx(brute_cdf, rel=1e-9)


def test_clopper_pearson_and_holm() -> None:
    low, high = clopper_pearson(7, 20)
    assert low == pytest.approx(0.1539092, abs=1e-6) and high == pytest.approx(0.5921885, abs=1e-6)
    assert clopper_pearson(0, 20)[0] == 0.0 and clopper_pearson(20, 20)[1] == 1.0
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
