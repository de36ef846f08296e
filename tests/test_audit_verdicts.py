"""What the audit's verdict means: SKIPPED with why when there is nothing to check, INCOMPLETE
when a core check had work it could not do, FAIL for what should have been verified; and never
a traceback for a damaged input (a revealed-keys file of the wrong shape, a damaged batch)."""

from __future__ import annotations

import json
import shutil
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampledrec import FixedClock, Store
from sampledrec.audit.report import build_report
from sampledrec.audit.revealed import parse_revealed_keys
from sampledrec.audit.verify import AuditReport, audit_verify
from sampledrec.errors import LogCorrupt, SampledrecError
from sampledrec.keys.keyring import RevealedKey
from sampledrec.log.segments import iter_batches

from .conftest import CliRun
from .strategies import mutated_document

POLICY = '[default]\nrate = "0.25"\npurpose = "quality"\nretention = "3 days"\n'
DAY = datetime(2026, 4, 1, 9, tzinfo=UTC)


def _store(folder: Path, calls: int = 30) -> Store:
    """A real (not simulated) store with ``calls`` decisions on 2026-04-01, no recording."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.toml").write_text(POLICY)
    store = Store.init(folder / "s", policy=folder / "p.toml", clock=FixedClock(DAY - timedelta(1)))
    if calls:
        clock = FixedClock(DAY)
        with store.open_log(clock=clock) as log:
            sampler = store.sampler(clock=clock, log=log)
            for i in range(calls):
                sampler.decide(f"call-{i}")
    return store


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with 30 decisions on 2026-04-01, its revealed key, and no recording."""
    base = tmp_path_factory.mktemp("small")
    store = _store(base)
    keys = store.reveal_keys(now=DAY + timedelta(days=1))
    store.write_revealed(keys, base / "revealed.json")
    return base


# -- SKIPPED and INCOMPLETE ----------------------------------------------------------------------


def test_no_key_revealed_before_the_epoch_ends_is_incomplete(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write_revealed([], tmp_path / "none.json")
    rep = audit_verify(store.path, tmp_path / "none.json", now=DAY + timedelta(hours=3))
    assert not rep.findings
    assert rep.status("keys") == "SKIPPED" and rep.why("keys") == "no epoch key revealed"
    assert rep.status("decisions") == "SKIPPED" and rep.why("decisions") == "no epoch key revealed"
    assert rep.why("recordings") == "no recording in the log, the catalog or the blob store"
    assert rep.why("cdr") == "no carrier call records given (--cdr)"
    assert rep.status("log") == rep.status("time") == rep.status("statistics") == "PASS"
    assert rep.verdict == "INCOMPLETE" and not rep.ok
    doc = rep.to_json()
    assert doc["ok"] is False and doc["verdict"] == "INCOMPLETE"
    assert doc["checks"]["decisions"] == "SKIPPED"  # the old key, still a string
    assert doc["results"]["decisions"] == {
        "verdict": "SKIPPED",
        "checked": {
            "decisions": 30,
            "recomputed": 0,
            "not_yet_verifiable": 30,
            "not_recomputable": 0,
            "rules_recomputed": 30,  # from the logged attributes: no key needed
        },
        "why": "no epoch key revealed",
    }
    assert doc["results"]["log"]["verdict"] == "PASS" and doc["results"]["log"]["why"] is None
    assert doc["verdict_reasons"] == [
        "keys SKIPPED (no epoch key revealed) while the log has 30 decisions",
        "decisions SKIPPED (no epoch key revealed) while the log has 30 decisions",
    ]
    text = rep.to_text()
    assert "  decisions    SKIPPED  no epoch key revealed (30 decisions, 0 recomputed" in text
    assert text.splitlines()[-1].startswith("AUDIT INCOMPLETE: keys SKIPPED")
    # Once the epoch has ended, its key is due: the same audit FAILs.
    ended = audit_verify(store.path, tmp_path / "none.json", now=DAY + timedelta(days=1))
    assert ended.verdict == "FAIL" and ended.status("decisions") == "FAIL"
    (bad,) = [f.to_json() for f in ended.findings]
    assert bad["epoch_id"] == "2026-04-01" and bad["evidence"]["decisions"] == 30
    assert "its key was not revealed" in bad["message"]


def test_the_dpo_report_shows_each_checks_verdict_and_what_it_checked(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write_revealed([], tmp_path / "none.json")
    at = DAY + timedelta(hours=3)
    page = build_report(
        store.path, audit=audit_verify(store.path, tmp_path / "none.json", now=at), now=at
    )
    assert '<p class="verdict bad" id="verdict">INCOMPLETE</p>' in page
    assert "<td>decisions</td><td>SKIPPED</td><td>no epoch key revealed</td>" in page
    assert "<td>log</td><td>PASS</td><td>" in page and "decisions SKIPPED (no epoch key" in page


def test_a_store_with_nothing_to_check_but_its_log_passes_and_says_so(tmp_path: Path) -> None:
    store = _store(tmp_path, calls=0)
    store.write_revealed([], tmp_path / "none.json")
    rep = audit_verify(store.path, tmp_path / "none.json", now=DAY)
    assert rep.verdict == "PASS", rep.to_text()  # nothing was there to check
    assert rep.why("decisions") == "the log has no decisions"
    assert rep.why("statistics") == "no rule or (rule, agent) group has 20 calls or more"
    assert rep.status("log") == "PASS" and rep.checked["log"]["entries"] > 0
    assert "keys         SKIPPED  no epoch key revealed" in rep.to_text()


def test_counts_are_printed_beside_each_verdict(small: Path) -> None:
    rep = audit_verify(small / "s", small / "revealed.json", now=DAY + timedelta(days=2))
    assert rep.verdict == "PASS", rep.to_text()
    lines = rep.to_text().splitlines()
    assert "  keys         PASS     1 revealed, 1 verified" in lines
    assert any(
        line.startswith("  decisions    PASS     30 decisions, 30 recomputed") for line in lines
    )
    assert rep.to_json()["results"]["keys"] == {
        "verdict": "PASS",
        "checked": {"revealed": 1, "verified": 1},
        "why": None,
    }


def test_the_cli_exits_1_for_an_incomplete_audit(tmp_path: Path, cli: CliRun) -> None:
    store = _store(tmp_path)
    (tmp_path / "empty.json").write_text(
        json.dumps({"format": "sampledrec-revealed-keys", "version": 1, "epochs": []})
    )
    code, out = cli(
        "audit", "verify", "--store", store.path, "--revealed-keys", tmp_path / "empty.json"
    )
    assert code == 1  # by the real clock the epoch has ended: its key is due
    assert "has ended and has 30 decisions, but its key was not revealed" in out


# -- never a traceback ---------------------------------------------------------------------------

_FORMAT = {"format": "sampledrec-revealed-keys", "version": 1}
_KEY = "11" * 32


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ("[]", "a revealed-keys file is a JSON object, not a list"),
        ("{}", "'format' is None"),
        ("not json", "not JSON"),
        (
            json.dumps(_FORMAT | {"epochs": [{"epoch_id": 5, "key": _KEY, "commitment": _KEY}]}),
            "epochs[0].epoch_id must be text (YYYY-MM-DD), not the number 5",
        ),
        (
            json.dumps(_FORMAT | {"epochs": [{"epoch_id": "2026-04-01", "key": "zz" * 32}]}),
            "epochs[0].key must be 64 hexadecimal digits",
        ),
        (
            json.dumps(_FORMAT | {"epochs": [{"epoch_id": "2026-04-01", "key": _KEY}]}),
            "epochs[0].commitment must be 64 hexadecimal digits (32 bytes), not null",
        ),
        (json.dumps(_FORMAT | {"epochs": {}}), "'epochs' must be a list of epochs, not an object"),
        (json.dumps(_FORMAT | {"version": "1", "epochs": []}), "'version' is '1'"),
        (
            json.dumps(_FORMAT | {"epochs": [{"epoch_id": "2026-02-30", "key": _KEY}]}),
            "not a real calendar day",
        ),
    ],
)
def test_a_revealed_keys_file_of_the_wrong_shape_is_a_usage_error(
    small: Path,
    tmp_path: Path,
    cli: CliRun,
    capsys: pytest.CaptureFixture[str],
    doc: str,
    says: str,
) -> None:
    (tmp_path / "bad.json").write_text(doc)
    args = ["audit", "verify", "--store", small / "s", "--revealed-keys", tmp_path / "bad.json"]
    code, _ = cli(*args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("sampledrec: ") and "bad.json" in err and says in err
    assert "Traceback" not in err
    code, out = cli(*args, "--json")
    assert code == 2 and says in json.loads(out)["error"]


def _damage_batch_first(log_dir: Path, which: int, value: int) -> None:
    """Set the ``first`` field of the ``which``-th batch header of the first segment."""
    seg = sorted(log_dir.glob("seg-*.log"))[0]
    data = bytearray(seg.read_bytes())
    pos = 32
    for _ in range(which):
        _, _, _, plen = struct.unpack_from(">4sQII", data, pos)
        n = data[pos + 20 + plen + 12]
        pos += 20 + plen + 13 + 32 * n
    struct.pack_into(">Q", data, pos + 4, value)
    seg.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("which", "first"), [(0, 2**64 - 1), (1, 2**64 - 1), (2, 2**64 - 1), (2, 1)]
)
def test_a_batch_header_claiming_another_first_entry(
    small: Path, tmp_path: Path, cli: CliRun, which: int, first: int
) -> None:
    shutil.copytree(small / "s", tmp_path / "s")
    _damage_batch_first(tmp_path / "s" / "log", which, first)
    rep = audit_verify(tmp_path / "s", small / "revealed.json", now=DAY + timedelta(days=2))
    assert rep.status("log") == "FAIL" and rep.verdict == "FAIL"
    assert any("not a whole, valid batch" in f.message for f in rep.findings)
    code, out = cli(
        "audit", "verify", "--store", tmp_path / "s", "--revealed-keys", small / "revealed.json"
    )
    assert code == 1 and "AUDIT FAILED" in out
    # The log's own readers refuse it too, naming where, instead of renumbering the entries.
    with pytest.raises(LogCorrupt, match="claims to start at entry"):
        list(iter_batches(tmp_path / "s" / "log"))


# -- Hypothesis: any revealed-keys document gives keys or a typed error ----------------------------

_VALID: dict[str, Any] = _FORMAT | {
    "store": "/x",
    "simulated": False,
    "epochs": [
        {"epoch_id": "2026-04-01", "key": _KEY, "commitment": "22" * 32},
        {"epoch_id": "2026-04-02", "key": "33" * 32, "commitment": "44" * 32},
    ],
}


def _mutated() -> st.SearchStrategy[Any]:
    """The valid document with a few of its members replaced by any JSON, or removed."""
    return mutated_document(_VALID)


def _accept(raw: bytes | str) -> list[RevealedKey] | None:
    try:
        keys = parse_revealed_keys(raw)
    except SampledrecError:
        return None  # a typed error with a message: what we want
    for k in keys:
        assert isinstance(k.epoch_id, str) and len(k.key) == len(k.commitment) == 32
    return keys


@given(_mutated())
@settings(max_examples=300)
def test_a_mutated_revealed_keys_document_gives_keys_or_a_typed_error(doc: Any) -> None:
    _accept(json.dumps(doc))


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_bytes_as_a_revealed_keys_file_give_a_typed_error(raw: bytes | str) -> None:
    _accept(raw)


@given(_mutated())
@settings(max_examples=15, deadline=None)
def test_the_audit_of_a_mutated_revealed_keys_file_reports_or_raises_a_typed_error(
    small: Path, doc: Any
) -> None:
    path = small / "mutated.json"
    path.write_text(json.dumps(doc))
    try:
        rep = audit_verify(small / "s", path, now=DAY + timedelta(days=2))
    except SampledrecError:
        return
    assert isinstance(rep, AuditReport) and rep.verdict in ("PASS", "FAIL", "INCOMPLETE")
