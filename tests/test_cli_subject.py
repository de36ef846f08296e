"""``objections add`` and ``keys reveal`` are all or nothing: a bad line saves nothing, an
existing output file is kept unless replaced on purpose."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sampledrec import Store
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
