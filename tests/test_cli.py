"""The CLI: exit codes, --json, readable errors, and every command of decide-core."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sampledrec import Store, draw, threshold
from sampledrec.cli import main
from sampledrec.cli.app import build_parser
from sampledrec.keys import epoch_commitment
from sampledrec.store import read_revealed

from .conftest import CliRun

CliJson = Callable[..., tuple[int, Any]]


@pytest.fixture
def store(tmp_path: Path, cli: CliRun) -> Path:
    path = tmp_path / "store"
    code, out = cli("init", path)
    assert code == 0, out
    return path


def test_init_creates_private_store(store: Path) -> None:
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE((store / "keys").stat().st_mode) == 0o700
    for f in ["store.json", "policy.toml", "keys/pseudonym.key"]:
        assert stat.S_IMODE((store / f).stat().st_mode) == 0o600, f
    policy = Store.open(store).policy()
    assert policy.default.rate == "0.05" and policy.default.purpose == "quality"


def test_init_refuses_existing_and_bad_policy(tmp_path: Path, cli: CliRun, store: Path) -> None:
    assert cli("init", store)[0] == 3
    bad = tmp_path / "bad.toml"
    bad.write_text('[default]\nrate = "2"\npurpose = "quality"\nretention = "6 months"\n')
    code, _ = cli("init", tmp_path / "other", "--policy", bad)
    assert code == 1
    assert not (tmp_path / "other").exists()
    assert cli("init", tmp_path / "x", "--policy", tmp_path / "missing.toml")[0] == 2


def test_separate_keys_folder(tmp_path: Path, cli: CliRun) -> None:
    code, _ = cli("init", tmp_path / "s", "--keys", tmp_path / "vault-keys")
    assert code == 0
    assert (tmp_path / "vault-keys" / "pseudonym.key").exists()
    assert not (tmp_path / "s" / "keys").exists()
    assert cli("decide", "--store", tmp_path / "s", "--call-ref", "c1")[0] == 0
    assert len(list((tmp_path / "vault-keys" / "epochs").glob("*.key"))) == 7


def test_decide_json_and_text(store: Path, cli: CliRun, cli_json: CliJson) -> None:
    code, doc = cli_json("decide", "--store", store, "--call-ref", "abc-1", "--attr", "queue=x")
    assert code == 0
    assert isinstance(doc["draw"], str) and isinstance(doc["threshold"], str)
    assert doc["threshold"] == str(threshold("0.05"))
    epoch = datetime.now(UTC).date().isoformat()
    key = Store.open(store).keyring.epoch_key(doc["epoch_id"]).secret_bytes()
    assert doc["epoch_id"] == epoch
    assert int(doc["draw"]) == draw(key, "abc-1")
    assert doc["record"] == (int(doc["draw"]) < int(doc["threshold"]))
    code, text = cli("decide", "--store", store, "--call-ref", "abc-1")
    assert code == 0 and ("RECORD" in text or "do not record" in text)


def test_decide_objection_and_caller_file(
    store: Path, tmp_path: Path, cli: CliRun, cli_json: CliJson
) -> None:
    code, doc = cli_json("decide", "--store", store, "--call-ref", "o", "--attr", "objection=true")
    assert code == 0 and doc["reason"] == "objection" and doc["record"] is False
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("+33 6 12 34 56 78\n")
    code, doc = cli_json("objections", "add", "--store", store, "--file", numbers)
    assert code == 0 and doc["added"] == 1
    assert "612345678" not in (store / "objections.txt").read_text()
    caller = tmp_path / "caller.txt"
    caller.write_text("0033612345678\n")
    code, doc = cli_json("decide", "--store", store, "--call-ref", "o2", "--caller-file", caller)
    assert code == 0 and doc["reason"] == "objection"


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["decide", "--store", "{store}", "--call-ref", ""], 2),
        (["decide", "--store", "{store}", "--call-ref", "x" * 257], 2),
        (["decide", "--store", "{store}", "--call-ref", "a", "--attr", "novalue"], 2),
        (["decide", "--store", "{store}", "--call-ref", "a", "--at", "yesterday"], 2),
        (["decide", "--store", "{store}", "--call-ref", "a", "--at", "2001-01-01T00:00Z"], 2),
        (["decide", "--store", "{missing}", "--call-ref", "a"], 3),
        (["decide", "--call-ref", "a"], 2),
        (["nonsense"], 2),
    ],
)
def test_exit_codes(store: Path, tmp_path: Path, cli: CliRun, argv: list[str], code: int) -> None:
    args = [a.format(store=store, missing=tmp_path / "missing") for a in argv]
    got, _ = cli(*args)
    assert got == code


def test_errors_are_json_with_json(store: Path, cli: CliRun) -> None:
    code, out = cli("decide", "--store", store, "--call-ref", "", "--json")
    assert code == 2
    assert "empty" in json.loads(out)["error"]


def test_decide_at_future_time(store: Path, cli_json: CliJson) -> None:
    future = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    code, doc = cli_json("decide", "--store", store, "--call-ref", "f", "--at", future.isoformat())
    assert code == 0 and doc["epoch_id"] == future.date().isoformat()


def test_keys_reveal_only_ended_epochs(store: Path, tmp_path: Path, cli_json: CliJson) -> None:
    cli_json("decide", "--store", store, "--call-ref", "r1")
    out = tmp_path / "keys.json"
    code, doc = cli_json("keys", "reveal", "--store", store, "--out", out)
    assert code == 0 and doc["epochs"] == []  # today has not ended
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    code, doc = cli_json("keys", "reveal", "--store", store, "--out", out, "--at", later)
    assert code == 1  # a real store never reveals ahead of the real clock
    assert "demo" in doc["error"]


def test_simulated_store_reveals_with_at(tmp_path: Path, cli: CliRun, cli_json: CliJson) -> None:
    path = tmp_path / "sim"
    assert cli("init", path, "--simulated")[0] == 0
    now = datetime.now(UTC)
    code, decided = cli_json("decide", "--store", path, "--call-ref", "s1")
    out = tmp_path / "k.json"
    at = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    code, doc = cli_json("keys", "reveal", "--store", path, "--out", out, "--at", at.isoformat())
    assert code == 0 and doc["simulated"] is True
    keys = read_revealed(out)
    assert [k.epoch_id for k in keys] == [now.date().isoformat()]
    key = keys[0]
    assert key.commitment == epoch_commitment(key.epoch_id, key.key)
    assert int(decided["draw"]) == draw(key.key, "s1")


def test_policy_check(tmp_path: Path, cli: CliRun, cli_json: CliJson) -> None:
    good = tmp_path / "p.toml"
    good.write_text(
        '[[rules]]\nname = "s"\nmatch = { queue = "sales" }\nrate = "0.1"\npurpose = "quality"\n'
        'retention = "6 months"\n[default]\nrate = 0.02\npurpose = "quality"\nretention = "P6M"\n'
    )
    code, doc = cli_json("policy", "check", good)
    assert code == 0 and doc["ok"] and len(doc["version"]) == 64
    assert doc["canonical"]["default"]["rate"] == "0.02"
    code, text = cli("policy", "check", good)
    assert code == 0 and "queue=sales" in text
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('rate = "0.1"', 'rate = "0.9"'))
    code, doc = cli_json("policy", "check", bad)
    assert code == 1 and "bad.toml" in doc["error"] and "'s'" in doc["error"]
    assert "justification" in doc["error"]


def test_policy_simulate(tmp_path: Path, cli_json: CliJson) -> None:
    good = tmp_path / "p.toml"
    good.write_text(
        '[[rules]]\nname = "s"\nmatch = { queue = "sales" }\nrate = "0.1"\npurpose = "quality"\n'
        'retention = "6 months"\nmax_per_agent_per_day = 1\n'
        '[default]\nrate = "0.05"\npurpose = "quality"\nretention = "P6M"\n'
    )
    code, doc = cli_json(
        "policy", "simulate", good, "--calls", "20000", "--agents", "5", "--seed", "1"
    )
    assert code == 0
    rules = {r["rule"]: r for r in doc["rules"]}
    assert rules["s"]["calls"] + rules["default"]["calls"] == 20000
    assert rules["s"]["selected"] <= 5  # one per agent per day
    assert rules["s"]["capped"] > 0
    d = rules["default"]
    assert abs(d["selected"] - d["expected"]) < 5 * d["expected"] ** 0.5
    assert len(doc["agents"]) == 5


def test_demo_runs_and_audits(tmp_path: Path, cli: CliRun, cli_json: CliJson) -> None:
    code, doc = cli_json("demo", tmp_path / "demo", "--calls", "1500", "--seed", "7")
    assert code == 0
    assert doc["simulated"] is True and doc["calls"] == 1500
    assert doc["audit"] == {"key_matches_commitment": True, "recomputed": 1500, "mismatches": 0}
    assert doc["log"]["ok"] is True and doc["log"]["entries"] > 1500
    assert doc["objections"] > 0
    assert sum(r["calls"] for r in doc["rules"]) == 1500
    assert Store.open(tmp_path / "demo").simulated
    code, text = cli("demo", tmp_path / "demo2", "--calls", "300")
    assert code == 0 and "SIMULATED" in text and "0 mismatches" in text


def test_console_script_has_no_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("sampledrec")
    proc = subprocess.run(
        [str(exe), "decide", "--store", str(tmp_path / "none"), "--call-ref", "a"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr and "not a sampledrec store" in proc.stderr


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every command line that names a parser: the top level, each command and subcommand."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


@pytest.mark.parametrize(
    "command", list(_commands(build_parser())), ids=lambda c: " ".join(("sampledrec", *c))
)
def test_every_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(('sampledrec', *command))}"), out
    if not command:  # a help text with a '%' is listed as written
        assert "create a store (default policy: quality, 5%, 6 months)" in out


# -- library warnings on stderr; unknown attributes (issue #12) --------------------------------

QUEUE_POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call of this queue is recorded"
retention = "6 months"

[default]
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call is recorded"
retention = "6 months"
"""


def test_an_unknown_attribute_is_a_warning_on_stderr(
    tmp_path: Path, cli: CliRun, capsys: pytest.CaptureFixture[str]
) -> None:
    from sampledrec.vault.audio import AudioFormat, encode_wav, synthetic_speech

    (tmp_path / "p.toml").write_text(QUEUE_POLICY)
    store = tmp_path / "s"
    assert cli("init", store, "--policy", tmp_path / "p.toml")[0] == 0
    capsys.readouterr()
    code, out = cli("decide", "--store", store, "--call-ref", "c1", "--attr", "quue=sales")
    err = capsys.readouterr().err
    assert code == 0 and "rule:     default" in out  # decided, by the default rule...
    assert err == (  # ...and said so, once, without a traceback
        "warning: attribute 'quue' is not used by any rule or role scope of the policy, so it "
        "changes nothing; did you mean 'queue'?\n"
    )
    # `record` (another command group) goes through the same generic handling.
    wav = tmp_path / "in.wav"
    wav.write_bytes(encode_wav(AudioFormat("pcm16", 8000, 1), synthetic_speech(0.2)))
    argv = ["record", "--store", store, "--call-ref", "c2", "--audio", wav, "--attr", "quue=x"]
    assert cli(*argv)[0] == 0
    assert "warning: attribute 'quue'" in capsys.readouterr().err
    # Known attributes: no warning.
    assert cli("decide", "--store", store, "--call-ref", "c3", "--attr", "queue=sales")[0] == 0
    assert capsys.readouterr().err == ""


def test_a_policy_that_declares_its_attributes_refuses_others(
    tmp_path: Path, cli: CliRun, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.toml").write_text(QUEUE_POLICY + '[attributes]\nnames = ["queue"]\n')
    store = tmp_path / "s"
    assert cli("init", store, "--policy", tmp_path / "p.toml")[0] == 0
    capsys.readouterr()
    code, _ = cli("decide", "--store", store, "--call-ref", "c1", "--attr", "quue=sales")
    err = capsys.readouterr().err
    assert code == 2 and "attribute 'quue'" in err and "did you mean 'queue'?" in err
    assert "Traceback" not in err


def test_library_warnings_are_printed_once_each(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    from sampledrec.cli.app import library_warnings_on_stderr
    from sampledrec.errors import UnknownAttributeWarning

    with library_warnings_on_stderr():
        for _ in range(3):
            warnings.warn(UnknownAttributeWarning("attribute 'a'"), stacklevel=1)
        warnings.warn(UnknownAttributeWarning("attribute 'b'"), stacklevel=1)
    assert capsys.readouterr().err == "warning: attribute 'a'\nwarning: attribute 'b'\n"
    # Other warnings are left to Python's filters (here pytest's: an error).
    with pytest.raises(DeprecationWarning), library_warnings_on_stderr():
        warnings.warn("not ours", DeprecationWarning, stacklevel=1)
