"""``objections add`` and ``keys reveal`` are all or nothing: a bad line saves nothing, an
existing output file is kept unless replaced on purpose. ``subject`` commands answer nothing
before the requester's identity is verified and recorded."""

from __future__ import annotations

import io
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sampledrec import Store
from sampledrec.cli.app import main
from sampledrec.errors import InvalidArgument
from sampledrec.store import read_revealed

from .conftest import CliRun


def _store(tmp_path: Path, cli: CliRun, *extra: str) -> Path:
    path = tmp_path / "store"
    code, out = cli("init", path, *extra)
    assert code == 0, out
    return path


def test_objections_add_saves_nothing_when_a_line_is_bad(tmp_path: Path, cli: CliRun) -> None:
    store = _store(tmp_path, cli)
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("+33 6 11 22 33 44\nnot a number 99\n+33 6 98 76 54 32\n")
    code, out = cli("objections", "add", "--store", store, "--file", numbers, "--json")
    assert code == 2
    assert "number 2 of" in out and "nothing was" in out
    assert "not a number 99" not in out and "11 22 33 44" not in out
    assert (store / "objections.txt").read_text() == ""
    assert len(Store.open(store).objections()) == 0
    # Fixed, the whole list goes in at once.
    numbers.write_text("+33 6 12 34 56 78\n+33 6 98 76 54 32\n+33 6 12 34 56 78\n")
    code, out = cli("objections", "add", "--store", store, "--file", numbers)
    assert code == 0, out
    assert len(Store.open(store).objections()) == 2
    assert len((store / "objections.txt").read_text().splitlines()) == 2
    assert stat.S_IMODE((store / "objections.txt").stat().st_mode) == 0o600


def test_keys_reveal_refuses_an_existing_file_unless_forced(tmp_path: Path, cli: CliRun) -> None:
    store = _store(tmp_path, cli, "--simulated")
    assert cli("decide", "--store", store, "--call-ref", "k1")[0] == 0
    at = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    out = tmp_path / "keys.json"
    out.write_text("the auditor's notes\n")
    code, text = cli(
        "keys", "reveal", "--store", store, "--out", out, "--at", at.isoformat(), "--json"
    )
    assert code == 2 and "--force" in json.loads(text)["error"]
    assert out.read_text() == "the auditor's notes\n"
    code, _ = cli(
        "keys", "reveal", "--store", store, "--out", out, "--at", at.isoformat(), "--force"
    )
    assert code == 0
    assert [k.epoch_id for k in read_revealed(out)] == [(at - timedelta(days=1)).date().isoformat()]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_write_revealed_replaces_only_on_request(tmp_path: Path, cli: CliRun) -> None:
    store = Store.open(_store(tmp_path, cli))
    out = tmp_path / "revealed.json"
    store.write_revealed([], out)
    before = out.stat().st_ino
    with pytest.raises(InvalidArgument, match="exists"):
        store.write_revealed([], out)
    assert out.stat().st_ino == before
    store.write_revealed([], out, replace=True)
    assert out.stat().st_ino != before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".revealed")]


# -- issue #12: `subject export` said "identity checked first" and checked nothing -------------

NUMBER = "+33 6 12 34 56 78"


@pytest.fixture
def recorded(tmp_path: Path, cli: CliRun) -> tuple[Path, Path, str]:
    """A store with one recorded call of NUMBER; the numbers file; the recording id."""
    from sampledrec.vault.audio import synthetic_speech
    from sampledrec.vault.recorder import Vault

    from .recording import PCM, RECORD_REGULATED

    (tmp_path / "p.toml").write_text(RECORD_REGULATED)
    path = _store(tmp_path, cli, "--policy", str(tmp_path / "p.toml"), "--region", "FR")
    store = Store.open(path)
    with store.open_log() as log, Vault(store, log) as vault:
        d = store.sampler(log=log).decide("call-1", {"queue": "regulated"}, caller=NUMBER)
        with vault.record(d, audio_format=PCM) as rec:
            rec.write(synthetic_speech(0.2))
    numbers = tmp_path / "numbers.txt"  # outside the store, as an operator keeps it
    numbers.write_text("06 12 34 56 78\n")
    return path, numbers, rec.recording_id


def _requests(cli: CliRun, store: Path) -> list[dict[str, Any]]:
    code, out = cli("subject", "requests", "--store", store, "--all", "--json")
    assert code == 0, out
    requests: list[dict[str, Any]] = json.loads(out)["requests"]
    return requests


def test_export_and_erase_refuse_without_an_identity_check(
    recorded: tuple[Path, Path, str], tmp_path: Path, cli: CliRun
) -> None:
    store, numbers, _ = recorded
    zip_out = tmp_path / "person.zip"
    for argv in (
        ("export", "--out", zip_out),
        ("erase",),
        ("erase", "--identity-note", "called back"),  # a note alone says nothing of how
        ("export", "--out", zip_out, "--identity-method", "passport"),
        ("export", "--out", zip_out, "--identity-method", "other"),  # 'other' needs a note
    ):
        code, out = cli("subject", *argv, "--store", store, "--file", numbers, "--json")
        assert code == 2, (argv, out)
    code, out = cli("subject", "erase", "--store", store, "--file", numbers, "--json")
    error = json.loads(out)["error"]
    assert "identity must be verified" in error and "--identity-method" in error
    assert "subject verify" in error and "nothing was done" in error
    # An ID number in the note is refused, and not repeated in the message.
    code, out = cli(
        *("subject", "export", "--store", store, "--file", numbers, "--out", zip_out),
        *("--identity-method", "in_person_id_document", "--identity-note", "ID 1234 5678 9012"),
        "--json",
    )
    assert code == 2 and "run of 12 digits" in out and "9012" not in out
    assert not zip_out.exists() and _requests(cli, store) == []  # nothing recorded


def test_the_identity_is_recorded_with_the_request_and_shown(
    recorded: tuple[Path, Path, str], tmp_path: Path, cli: CliRun
) -> None:
    import getpass

    store, numbers, rid = recorded
    code, out = cli(
        *("subject", "export", "--store", store, "--file", numbers, "--out", tmp_path / "a.zip"),
        *("--identity-method", "callback_to_number", "--identity-note", "called back the number"),
        "--json",
    )
    assert code == 0, out
    (doc,) = json.loads(out)["requests"]
    assert doc["recordings"] == [rid]
    identity = doc["identity"]
    assert identity["method"] == "callback_to_number" and identity["verified_by"] == (
        getpass.getuser()
    )
    assert identity["note"] == "called back the number" and identity["verified_at"].endswith(
        "+00:00"
    )
    code, text = cli(
        *("subject", "export", "--store", store, "--file", numbers, "--out", tmp_path / "b.zip"),
        *("--identity-method", "signed_letter"),
    )
    assert code == 0 and f"signed_letter ({getpass.getuser()})" in text
    (first, second) = _requests(cli, store)
    assert first["identity"] == identity and second["identity"]["method"] == "signed_letter"
    code, text = cli("subject", "requests", "--store", store, "--all")
    assert code == 0 and "callback_to_number" in text and "NOT VERIFIED" not in text


def test_receive_verify_then_answer_a_request(
    recorded: tuple[Path, Path, str], tmp_path: Path, cli: CliRun
) -> None:
    import getpass

    store, numbers, rid = recorded
    code, out = cli("subject", "receive", "--store", store, "--kind", "erase", "--file", numbers)
    assert code == 0 and "subject verify" in out
    (request,) = _requests(cli, store)
    req = request["request_id"]
    assert request["status"] == "open" and request["identity"] is None
    code, text = cli("subject", "requests", "--store", store)
    assert "open (identity not verified)" in text and "NOT VERIFIED" in text
    assert "1 request(s) without a verified identity" in text

    # Not verified yet: refused, and the recording is still there.
    code, out = cli(
        *("subject", "erase", "--store", store, "--file", numbers, "--request", req), "--json"
    )
    assert code == 2 and "identity has not been verified" in json.loads(out)["error"]
    assert Store.open(store).open_catalog().get(rid).status == "sealed"  # type: ignore[union-attr]
    code, out = cli("subject", "verify", req, "--store", store, "--json")
    assert code == 2  # --identity-method is required
    code, out = cli(
        *("subject", "verify", req, "--store", store, "--identity-method", "account_login"),
        *("--identity-note", "logged in to the customer portal"),
    )
    assert code == 0 and f"verified by {getpass.getuser()} (account_login)" in out
    assert f"subject erase --request {req}" in out
    code, out = cli(
        *("subject", "verify", req, "--store", store, "--identity-method", "signed_letter"),
        "--json",
    )
    assert code == 2 and "already verified" in out  # the first check stands
    code, out = cli(
        *("subject", "export", "--store", store, "--file", numbers, "--request", req),
        *("--out", tmp_path / "x.zip", "--json"),
    )
    assert code == 2 and "not an export request" in out

    code, out = cli(
        *("subject", "erase", "--store", store, "--file", numbers, "--request", req), "--json"
    )
    assert code == 0, out
    (doc,) = json.loads(out)["requests"]
    assert doc["request_id"] == req and doc["status"] == "done"
    assert doc["identity"]["method"] == "account_login"
    assert doc["recordings"] == [{"id": rid, "outcome": "erased"}]
    (request,) = _requests(cli, store)
    assert request["status"] == "done" and request["identity"]["verified_by"] == getpass.getuser()


def test_no_command_claims_an_identity_check_it_does_not_make(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sampledrec.cli import subject

    for argv in (["subject", "--help"], ["subject", "export", "--help"]):
        assert main(argv, out=io.StringIO()) == 0
        shown = capsys.readouterr().out
        assert "identity" in shown and "identity checked first" not in shown
    assert "identity checked first" not in Path(subject.__file__).read_text(encoding="utf-8")
    assert "confirms the requester's identity before" not in (subject.__doc__ or "")
