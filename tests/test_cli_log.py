"""The CLI of the decision log: policy apply, log verify / show / checkpoint, decide logging."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sampledrec import Store

from .conftest import CliRun

CliJson = Callable[..., tuple[int, Any]]


@pytest.fixture
def store(tmp_path: Path, cli: CliRun) -> Path:
    path = tmp_path / "store"
    assert cli("init", path)[0] == 0
    return path


def test_decide_is_logged_durably(store: Path, cli_json: CliJson) -> None:
    code, doc = cli_json("decide", "--store", store, "--call-ref", "secret-ref-123")
    assert code == 0
    assert doc["log_index"] > 0
    code, shown = cli_json("log", "show", "--store", store, "--since", str(doc["log_index"]))
    assert code == 0
    entry = shown["entries"][0]
    assert entry["type"] == "decision"
    assert entry["call_ref"] == "secret-ref-123"
    assert entry["draw"] == doc["draw"]
    assert entry["reason"] == doc["reason"]
    # The reference is sealed: not in the log files in clear, and hidden without the keys.
    raw = b"".join(p.read_bytes() for p in (store / "log").iterdir())
    assert b"secret-ref-123" not in raw
    code, hidden = cli_json("log", "show", "--store", store, "--no-personal")
    assert all("call_ref" not in e for e in hidden["entries"])


def test_log_verify_pass_and_fail(store: Path, cli: CliRun, cli_json: CliJson) -> None:
    for i in range(5):
        cli("decide", "--store", store, "--call-ref", f"c{i}")
    code, doc = cli_json("log", "verify", "--store", store)
    assert code == 0, doc
    assert doc["ok"] and doc["checks"]["tree"] == "PASS"
    assert doc["entries_by_type"]["decision"] == 5
    seg = next((store / "log").glob("seg-*.log"))
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    code, doc = cli_json("log", "verify", "--store", store)
    assert code == 1
    assert not doc["ok"] and doc["findings"]
    code, text = cli("log", "verify", "--store", store)
    assert code == 1 and "VERIFICATION FAILED" in text


def test_verify_missing_store_is_exit_3(tmp_path: Path, cli: CliRun) -> None:
    assert cli("log", "verify", "--store", tmp_path / "nope")[0] == 3


def test_exported_checkpoint_catches_a_rewritten_log(
    store: Path, tmp_path: Path, cli: CliRun, cli_json: CliJson
) -> None:
    for i in range(3):
        cli("decide", "--store", store, "--call-ref", f"c{i}")
    out = tmp_path / "cp.json"
    code, doc = cli_json("log", "checkpoint", "--store", store, "--out", out)
    assert code == 0
    exported = json.loads(out.read_text())
    assert exported["format"] == "sampledrec-checkpoint"
    assert exported["commitments"], "the export carries the epoch-key commitments"
    cli("decide", "--store", store, "--call-ref", "later")
    assert cli("log", "verify", "--store", store, "--checkpoint", out)[0] == 0
    # Replace the whole store's log by a fresh one (new key, re-signed): only the export
    # kept outside the store can tell.
    other = Store.init(tmp_path / "other")
    for item in (store / "log").iterdir():
        item.unlink()
    for item in (other.path / "log").iterdir():
        (store / "log" / item.name).write_bytes(item.read_bytes())
    code, doc = cli_json("log", "verify", "--store", store, "--checkpoint", out)
    assert code == 1
    assert doc["checks"]["exported"] == "FAIL"


def test_policy_apply_is_logged_and_used(
    store: Path, tmp_path: Path, cli: CliRun, cli_json: CliJson
) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[default]\nrate = "0.2"\npurpose = "training"\nretention = "3 months"\n')
    code, doc = cli_json("policy", "apply", policy, "--store", store)
    assert code == 0
    version = doc["version"]
    code, decided = cli_json("decide", "--store", store, "--call-ref", "after-apply")
    assert decided["policy_version"] == version and decided["rate"] == "0.2"
    code, shown = cli_json("log", "show", "--store", store)
    policies = [e for e in shown["entries"] if e["type"] == "policy"]
    assert [p["version"] for p in policies][-1] == version
    assert cli("log", "verify", "--store", store)[0] == 0


def test_policy_apply_in_the_future(
    store: Path, tmp_path: Path, cli: CliRun, cli_json: CliJson
) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[default]\nrate = "0.2"\npurpose = "training"\nretention = "3 months"\n')
    later = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    code, doc = cli_json("policy", "apply", policy, "--store", store, "--at", later.isoformat())
    assert code == 0
    code, now_doc = cli_json("decide", "--store", store, "--call-ref", "x")
    assert now_doc["rate"] == "0.05"  # the old policy is still in force
    at = (later + timedelta(hours=1)).isoformat()
    code, later_doc = cli_json("decide", "--store", store, "--call-ref", "x", "--at", at)
    assert later_doc["rate"] == "0.2"
    assert later_doc["policy_version"] == doc["version"]


def test_bad_policy_apply_is_refused(store: Path, tmp_path: Path, cli: CliRun) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[default]\nrate = "1"\npurpose = "quality"\nretention = "6 months"\n')
    assert cli("policy", "apply", bad, "--store", store)[0] == 1


def test_log_show_json_gives_times_in_iso_8601(
    store: Path, tmp_path: Path, cli_json: CliJson
) -> None:
    # Every --json output gives times as ISO 8601 UTC strings, the log's entries too (policy
    # effective_at, recording expiry, hold until, request received_at were µs integers).
    policy = tmp_path / "p.toml"
    policy.write_text('[default]\nrate = "0.2"\npurpose = "training"\nretention = "3 months"\n')
    later = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    assert cli_json("policy", "apply", policy, "--store", store, "--at", later.isoformat())[0] == 0
    code, shown = cli_json("log", "show", "--store", store)
    assert code == 0
    policies = [e for e in shown["entries"] if e["type"] == "policy"]
    assert datetime.fromisoformat(policies[-1]["effective_at"]) == later
    for entry in shown["entries"]:
        for name in ("time", "effective_at", "expires_at", "until", "received_at"):
            if name in entry:
                assert isinstance(entry[name], str), (name, entry)
                assert datetime.fromisoformat(entry[name]).utcoffset() == timedelta(0)
