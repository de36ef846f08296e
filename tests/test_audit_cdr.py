"""The ``cdr`` check: references matched by exact bytes and kind, re-rolls, start times in the
decision's epoch; malformed call records are a typed error (exit 2), never a traceback."""

from __future__ import annotations

import io
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Store
from sampledrec.audit.cdr import read_cdr
from sampledrec.audit.verify import AuditReport, audit_verify
from sampledrec.cli.app import main
from sampledrec.errors import InvalidArgument

POLICY = """
[default]
rate = "0.25"
purpose = "quality"
retention = "2 days"
"""
DAY = "2030-03-04T10:00:00Z"
AUDIT_AT = datetime(2030, 3, 5, 12, tzinfo=UTC)
TEXT_REFS = [f"call-{i:03d}" for i in range(24)] + ["c1"]
BYTES_REF = b"c1"  # the same bytes as the text reference "c1": another reference
HEADER = "call_id,call_ref,call_ref_hex,start_time,queue\n"


def _rows(extra: str = "") -> str:
    rows = [f"X{i},{ref},,2030-03-04T10:00:00Z,q\n" for i, ref in enumerate(TEXT_REFS)]
    rows.append(f"XB,,{BYTES_REF.hex()},2030-03-04T10:00:00+00:00,q\n")
    return HEADER + "".join(rows) + extra


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cdr")
    (base / "p.toml").write_text(POLICY)
    store = Store.init(base / "store", policy=base / "p.toml", simulated=True)
    clock = FixedClock(DAY)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        refs: list[str | bytes] = [*TEXT_REFS, BYTES_REF]
        for ref in refs:
            sampler.decide(ref, {"agent": "a0"})
    store.write_revealed(
        store.reveal_keys(now=datetime(2030, 3, 5, 0, 0, 1, tzinfo=UTC)), base / "revealed.json"
    )
    (base / "cdr.csv").write_text(_rows())
    return base


@pytest.fixture
def case(built: Path, tmp_path: Path) -> Path:
    shutil.copytree(built / "store", tmp_path / "store")
    for name in ("revealed.json", "cdr.csv"):
        shutil.copy(built / name, tmp_path / name)
    return tmp_path


def _audit(case: Path, cdr: str = "cdr.csv") -> AuditReport:
    return audit_verify(case / "store", case / "revealed.json", cdr=case / cdr, now=AUDIT_AT)


def _findings(rep: AuditReport) -> list[dict[str, Any]]:
    return [f.to_json() for f in rep.findings if f.check == "cdr"]


def _decide(case: Path, at: str, *refs: str | bytes) -> None:
    store = Store.open(case / "store")
    clock = FixedClock(at)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for ref in refs:
            sampler.decide(ref, {"agent": "a0"})


def test_honest_call_records_pass(case: Path) -> None:
    rep = _audit(case)
    assert rep.status("cdr") == "PASS", rep.to_text()
    for check in ("log", "keys", "decisions", "time"):  # statistics: 26 calls, left to chance
        assert rep.status(check) == "PASS", rep.to_text()
    checked = rep.checked["cdr"]
    assert checked["carrier_calls"] == len(TEXT_REFS) + 1
    assert checked["carrier_calls_with_a_decision"] == len(TEXT_REFS) + 1
    assert checked["start_times_checked"] == len(TEXT_REFS) + 1
    assert checked["rerolls"] == checked["started_outside_the_epoch"] == 0
    assert checked["carrier_call_ids"] == len(TEXT_REFS) + 1


def test_text_and_bytes_references_are_told_apart(case: Path) -> None:
    # The binary reference given as text "c1" matches the text decision only: the binary
    # decision is not a carrier call.
    (case / "cdr.csv").write_text(_rows().replace(f",,{BYTES_REF.hex()},", ",c1,,"))
    rep = _audit(case)
    bad = _findings(rep)
    assert rep.status("cdr") == "FAIL"
    assert [f["call_ref"] for f in bad] == ["hex:6331"]
    assert "not a carrier call" in bad[0]["message"]
    # The text reference given as hex matches the binary decision only.
    (case / "cdr.csv").write_text(_rows().replace("X24,c1,,", "X24,,6331,"))
    bad = _findings(_audit(case))
    assert [f["call_ref"] for f in bad] == ["c1"]


def test_the_format_without_call_ref_hex_still_reads_hex_references(case: Path) -> None:
    rows = "".join(f"{ref},2030-03-04T10:00:00Z\n" for ref in TEXT_REFS)
    (case / "old.csv").write_text("call_ref,start_time\n" + rows + "hex:6331,2030-03-04T11:00Z\n")
    rep = _audit(case, "old.csv")
    assert rep.status("cdr") == "PASS", rep.to_text()
    assert any("no call_id column" in n for n in rep.notes)
    cdr = read_cdr(case / "old.csv")
    assert cdr.refs[-1] == BYTES_REF and cdr.call_ids[-1] is None
    # With a call_ref_hex column, call_ref is text only: "hex:6331" is a text reference.
    (case / "new.csv").write_text(HEADER + "X,hex:6331,,\n")
    assert read_cdr(case / "new.csv").refs == ["hex:6331"]


def test_a_carrier_call_decided_under_two_references_is_a_reroll(case: Path) -> None:
    # The operator did not like call-003's draw and decided it again as "call-003-b"; the
    # carrier's records show both references on call X3.
    _decide(case, "2030-03-04T10:05:00Z", "call-003-b")
    (case / "cdr.csv").write_text(_rows("X3,call-003-b,,2030-03-04T10:00:00Z,q\n"))
    rep = _audit(case)
    assert rep.status("cdr") == "FAIL"
    bad = _findings(rep)
    assert len(bad) == 1, bad
    f = bad[0]
    assert f["message"].startswith("re-roll")
    assert f["call_ref"] == "call-003-b" and f["epoch_id"] == "2030-03-04"
    ev = f["evidence"]
    assert ev["call_id"] == "X3"
    assert ev["call_refs"] == ["call-003", "call-003-b"]
    assert len(ev["indexes"]) == 2 and ev["indexes"][0] < ev["indexes"][1] == f["index"]
    assert rep.checked["cdr"]["rerolls"] == 1


def test_a_reroll_across_kinds_is_found_too(case: Path) -> None:
    _decide(case, "2030-03-04T10:05:00Z", b"call-004")
    (case / "cdr.csv").write_text(_rows(f"X4,,{b'call-004'.hex()},,q\n"))
    bad = _findings(_audit(case))
    assert [f["evidence"]["call_refs"] for f in bad] == [["call-004", "hex:63616c6c2d303034"]]


def test_a_call_started_outside_its_decision_epoch(case: Path) -> None:
    # The carrier saw call-005 the next day: its decision was made under another day's key.
    (case / "cdr.csv").write_text(
        _rows().replace("X5,call-005,,2030-03-04T10:00:00Z", "X5,call-005,,2030-03-05T00:30+01:00")
    )
    assert _audit(case).status("cdr") == "PASS"  # 2030-03-04T23:30Z: the same UTC day
    (case / "cdr.csv").write_text(
        _rows().replace("X5,call-005,,2030-03-04T10:00:00Z", "X5,call-005,,2030-03-05T00:30Z")
    )
    rep = _audit(case)
    assert rep.status("cdr") == "FAIL"
    bad = _findings(rep)
    assert len(bad) == 1, bad
    f = bad[0]
    assert "outside the epoch" in f["message"]
    assert f["call_ref"] == "call-005" and f["epoch_id"] == "2030-03-04"
    assert isinstance(f["index"], int)
    assert f["evidence"] == {
        "start_time": "2030-03-05T00:30:00+00:00",
        "cdr_row": 7,
        "call_id": "X5",
    }
    assert rep.checked["cdr"]["started_outside_the_epoch"] == 1


def test_calls_without_a_start_time_are_a_note(case: Path) -> None:
    (case / "cdr.csv").write_text(
        _rows().replace("X5,call-005,,2030-03-04T10:00:00Z", "X5,call-005,,")
    )
    rep = _audit(case)
    assert rep.status("cdr") == "PASS", rep.to_text()
    assert any("without a start time" in n for n in rep.notes)
    assert rep.checked["cdr"]["start_times_checked"] == len(TEXT_REFS)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("call_id,start_time\nX,2030-03-04T10:00Z\n", "header naming call_ref"),
        ("call_id,call_ref\nX,c\n", "header naming call_ref"),
        (HEADER + "X,,zz,2030-03-04T10:00Z,q\n", "row 2: call_ref_hex 'zz' is not hexadecimal"),
        (HEADER + "X,c,6331,2030-03-04T10:00Z,q\n", "row 2: both call_ref and call_ref_hex"),
        (HEADER + "X,c,,yesterday,q\n", "row 2: start_time 'yesterday' is not an ISO 8601"),
    ],
)
def test_malformed_call_records_are_a_typed_error(
    case: Path, capsys: pytest.CaptureFixture[str], text: str, match: str
) -> None:
    (case / "bad.csv").write_text(text)
    with pytest.raises(InvalidArgument, match=match):
        read_cdr(case / "bad.csv")
    args = ["audit", "verify", "--store", str(case / "store")]
    args += ["--revealed-keys", str(case / "revealed.json"), "--at", AUDIT_AT.isoformat()]
    assert main([*args, "--cdr", str(case / "bad.csv")], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "Traceback" not in err


def test_parquet_call_records(case: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = len(TEXT_REFS)
    table = pa.table(
        {
            "call_id": [f"X{i}" for i in range(n + 1)],
            "call_ref": [*TEXT_REFS, None],
            "call_ref_hex": [None] * n + [BYTES_REF.hex()],
            "start_time": [datetime(2030, 3, 4, 10, tzinfo=UTC)] * (n + 1),
        }
    )
    pq.write_table(table, case / "cdr.parquet")
    rep = _audit(case, "cdr.parquet")
    assert rep.status("cdr") == "PASS", rep.to_text()
    # A binary call_ref column gives binary references.
    binary = pa.table({"call_ref": pa.array([BYTES_REF], pa.binary()), "start_time": [None]})
    pq.write_table(binary, case / "b.parquet")
    assert read_cdr(case / "b.parquet").refs == [BYTES_REF]
    (case / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidArgument, match=r"broken\.parquet"):
        read_cdr(case / "broken.parquet")


def test_parquet_without_pyarrow_says_to_install_it(
    case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if pyarrow were not installed (an import of a module set to None fails).
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (case / "x.parquet").write_bytes(b"")
    with pytest.raises(InvalidArgument, match=r"sampledrec\[parquet\]"):
        read_cdr(case / "x.parquet")
