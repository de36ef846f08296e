"""The auditor's guide, followed to the letter by an outsider: its programs, copied out of the
documents, recompute every decision of a demo store from the auditor's kit alone, with no
sampledrec code on the path, and stop at a forged decision."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sampledrec import FixedClock, Store, draw
from sampledrec.audit.kit import write_kit
from sampledrec.demo import run_demo
from sampledrec.log.format import T_DECISION
from sampledrec.log.writer import iter_entries
from sampledrec.sampling import DecisionRecord

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / doc).read_text(encoding="utf-8"), re.S)


def _programs(folder: Path) -> Path:
    """The guide's program and the two of docs/log-format.md §14.5 it imports, as files."""
    check, sign = (b for b in _python_blocks("log-format.md") if '__name__ == "__main__"' in b)
    (kit_program,) = (b for b in _python_blocks("auditor-guide.md") if "sdr_kit.py" in b)
    assert "sdrlog_check" in sign and "read_checkpoints" in check
    (folder / "sdrlog_check.py").write_text(check)
    (folder / "sdrlog_sign.py").write_text(sign)
    (folder / "sdr_kit.py").write_text(kit_program)
    return folder / "sdr_kit.py"


def _run(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -I: isolated, so only the programs' folder and the standard library (plus the
    # cryptography package of this interpreter) are importable, not sampledrec.
    site = [p for p in sys.path if p.endswith("site-packages")]
    code = (
        f"import sys; sys.path[:0] = [{str(program.parent)!r}] + {site!r}; "
        "import runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-I", "-c", code, str(program), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=program.parent,
    )


@pytest.fixture(scope="module")
def demo_kit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("guide")
    run_demo(base / "store", calls=600, seed=3)
    store = Store.open(base / "store")
    days = [e.fields["epoch_id"] for e in iter_entries(store.log_storage) if e.type == T_DECISION]
    # The demo's store is simulated: its day's epoch has ended two days later.
    write_kit(
        store,
        base / "kit",
        now=datetime.fromisoformat(max(days)).replace(tzinfo=UTC) + timedelta(days=2),
    )
    return base, base / "kit"


def test_the_guides_program_recomputes_every_decision_from_the_kit(
    demo_kit: tuple[Path, Path], tmp_path: Path
) -> None:
    base, kit = demo_kit
    program = _programs(tmp_path)
    vkey = Store.open(base / "store").vkey
    done = _run(program, str(kit), vkey)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "600 decisions recomputed; 600 rules recomputed; 0 of epochs not revealed; "
        "0 with no readable call reference"
    )
    # Another verifier key (a log re-signed by someone else) stops it.
    other = Store.init(tmp_path / "other").vkey
    refused = _run(program, str(kit), other)
    assert refused.returncode != 0 and "another key" in refused.stderr


def test_the_guides_program_stops_at_a_forged_draw(
    demo_kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """The operator changes one decision's draw in the kit's log: the tree no longer matches
    the signed checkpoints (and, re-signed with its own key, the draw no longer recomputes)."""
    _, kit = demo_kit
    forged = tmp_path / "kit"
    shutil.copytree(kit, forged)
    seg = next((forged / "log").glob("seg-*.log"))
    data = bytearray(seg.read_bytes())
    # The first decision's draw: the 7 bytes after tag 0x05, length 7, in a decision entry.
    at = data.find(b"\x05\x07", data.find(b"\x04\x08"))
    data[at + 2] ^= 0x80
    seg.write_bytes(bytes(data))
    manifest = json.loads((forged / "kit.json").read_text())
    name = f"log/{seg.name}"
    manifest["files"][name]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (forged / "kit.json").write_text(json.dumps(manifest))
    done = _run(_programs(tmp_path), str(forged))
    assert done.returncode != 0 and "AssertionError" in done.stderr


def test_the_guides_program_stops_at_a_decision_under_the_wrong_rule(
    demo_kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """The operator, holding every key, logs a call of the complaints queue under the default
    rule (a lower rate) with a draw that agrees: signed, committed, only the rule is wrong."""
    base, _ = demo_kit
    shutil.copytree(base / "store", tmp_path / "store")
    store = Store.open(tmp_path / "store")
    day = max(e.fields["epoch_id"] for e in iter_entries(store.log_storage) if e.type == T_DECISION)
    at = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(hours=20)
    policy = store.policy(at)
    default = policy.rule_named("default")
    key = store.keyring.epoch_key(day)
    ref = next(
        f"forged-{k}" for k in range(10_000) if draw(key, f"forged-{k}") >= default.threshold
    )
    record = DecisionRecord(
        epoch_id=day,
        policy_version=policy.version,
        rule="default",
        threshold=default.threshold,
        reason="not_sampled",
        draw=draw(key, ref),
        call_ref=ref,
        agent=None,
        caller_pseudonym=None,
        decided_at=at,
        attributes=policy.attributes_json({"queue": "complaints"}),
    )
    with store.open_log(clock=FixedClock(at)) as log:
        log.wait_durable(log.append_decision(record))
    write_kit(store, tmp_path / "kit", now=at + timedelta(days=2))
    done = _run(_programs(tmp_path), str(tmp_path / "kit"), store.vkey)
    assert done.returncode != 0
    assert "rule 'default', its attributes give 'complaints'" in done.stderr
