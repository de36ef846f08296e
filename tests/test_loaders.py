"""Every file a user or an auditor hands to sampledrec loads, or fails with a typed error that
names the file, the field and what is expected: never a traceback (issue #12).

The loaders: an exported checkpoint (``log checkpoint --out``, read back by ``log verify`` /
``audit verify --checkpoint``), a carrier's call records (``audit verify --cdr``), the store's
``store.json`` (its ``backends`` table too), a policy file (``policy check``) and the numbers
files of ``objections add`` / ``subject ... --file``. Each gets valid input mutated in its
structure (a member replaced by any JSON value or removed, huge integers, deep nesting) and in
its bytes (truncated, bad UTF-8, random bytes), as the revealed-keys file does in
``test_audit_verdicts.py``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sampledrec import FixedClock, Store
from sampledrec.audit.cdr import read_cdr
from sampledrec.errors import SampledrecError
from sampledrec.log.verify import _load_export
from sampledrec.sampling.policy import Policy

from .conftest import CliRun
from .strategies import json_values, mutated_document

POLICY = (
    'rate_ceiling = "0.5"\n\n'
    '[default]\nrate = "0.25"\npurpose = "quality"\nretention = "3 days"\n\n'
    '[[rules]]\nname = "sales"\nmatch = { queue = "sales" }\nrate = "0.1"\n'
    'purpose = "training"\nretention = "P1M"\n'
)
DAY = datetime(2026, 4, 1, 9, tzinfo=UTC)
CDR = (
    "call_ref,start_time,agent\n"
    "call-0,2026-04-01T09:00:00+00:00,a1\ncall-1,2026-04-01T09:01:00Z,a2\n"
)
NUMBERS = "# callers who objected\n+33 6 12 34 56 78\n0033612345679\n"

_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_CLI_SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with a few decisions, its exported checkpoint and its revealed key."""
    from sampledrec.cli import main

    folder = tmp_path_factory.mktemp("loaders")
    (folder / "p.toml").write_text(POLICY)
    store = Store.init(folder / "s", policy=folder / "p.toml", clock=FixedClock(DAY - timedelta(1)))
    clock = FixedClock(DAY)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(5):
            sampler.decide(f"call-{i}")
    store.write_revealed(store.reveal_keys(now=DAY + timedelta(days=1)), folder / "revealed.json")
    assert (
        main(["log", "checkpoint", "--store", str(folder / "s"), "--out", str(folder / "cp.json")])
        == 0
    )
    return folder


# -- mutations -----------------------------------------------------------------------------------

_HUGE = st.sampled_from([2**64 - 1, 2**64, -(2**63) - 1, 10**400, -1, 0])
_VALUES = json_values | _HUGE | st.just("\ud800")  # a lone surrogate is valid JSON, not UTF-8 text
_NESTED = st.integers(50, 5000).map(lambda n: "[" * n + "]" * n)


@st.composite
def mutated_json(draw: st.DrawFn, valid: Any) -> str:
    """``valid`` with a few members replaced by any JSON value or removed, or deeply nested."""
    doc = draw(mutated_document(valid, _VALUES, marker="@NESTED@", extra_keys=True))
    return json.dumps(doc).replace('"@NESTED@"', draw(_NESTED))


@st.composite
def mutated_bytes(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` truncated, with bytes replaced or inserted (bad UTF-8 among them), or any bytes."""
    how = draw(st.sampled_from(["truncate", "replace", "insert", "random"]))
    if how == "random":
        return draw(st.binary(max_size=300))
    at = draw(st.integers(0, len(valid)))
    if how == "truncate":
        return valid[:at]
    junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"', b"\n", b","]))
    junk = draw(st.binary(min_size=1, max_size=4)) if draw(st.booleans()) else junk
    if how == "replace":
        return valid[:at] + junk + valid[at + len(junk) :]
    return valid[:at] + junk + valid[at:]


def mutated_file(
    valid: bytes, structure: st.SearchStrategy[str] | None
) -> st.SearchStrategy[bytes]:
    byte_level = mutated_bytes(valid)
    if structure is None:
        return byte_level
    return structure.map(lambda s: s.encode("utf-8", "surrogatepass")) | byte_level


def _typed(load: Any, *args: Any) -> None:
    """``load(*args)`` returns, or raises a typed sampledrec error with a message."""
    message = "loaded"
    try:
        load(*args)
    except SampledrecError as exc:
        message = str(exc)
    assert message


def _cli_ok(cli: CliRun, capsys: pytest.CaptureFixture[str], *argv: str | Path) -> None:
    """The CLI ends with a verdict or a typed failure (1, 2 or 3), and no traceback."""
    code, out = cli(*argv)
    err = capsys.readouterr().err
    assert code in (0, 1, 2, 3), (code, out, err)
    assert "Traceback" not in out and "Traceback" not in err


@contextlib.contextmanager
def _replaced(path: Path, data: bytes) -> Iterator[Path]:
    """``path`` holding ``data`` for the block, then its own content again."""
    kept = path.read_bytes()
    path.write_bytes(data)
    try:
        yield path
    finally:
        path.write_bytes(kept)


def _valid(base: Path, name: str) -> Any:
    return json.loads((base / name).read_text())


# -- the exported checkpoint ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(base: Path) -> st.SearchStrategy[bytes]:
    raw = (base / "cp.json").read_bytes()
    return mutated_file(raw, mutated_json(json.loads(raw)))


@given(data=st.data())
@_SETTINGS
def test_a_mutated_exported_checkpoint_loads_or_raises_a_typed_error(
    base: Path, checkpoints: st.SearchStrategy[bytes], data: st.DataObject
) -> None:
    with _replaced(base / "cp.json", data.draw(checkpoints)) as path:
        _typed(_load_export, path)


@given(data=st.data())
@_CLI_SETTINGS
def test_log_and_audit_verify_of_a_mutated_checkpoint_end_without_a_traceback(
    base: Path,
    checkpoints: st.SearchStrategy[bytes],
    cli: CliRun,
    capsys: pytest.CaptureFixture[str],
    data: st.DataObject,
) -> None:
    with _replaced(base / "cp.json", data.draw(checkpoints)) as path:
        _cli_ok(cli, capsys, "log", "verify", "--store", base / "s", "--checkpoint", path)
        _cli_ok(
            cli,
            capsys,
            "audit",
            "verify",
            "--store",
            base / "s",
            "--revealed-keys",
            base / "revealed.json",
            "--checkpoint",
            path,
        )


def test_an_unusable_checkpoint_names_the_file_and_what_is_wrong(
    base: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "cp.json"
    bad.write_bytes(b"\xff{")
    with pytest.raises(SampledrecError, match=r"cp\.json.*UTF-8"):
        _load_export(bad)
    doc = _valid(base, "cp.json")
    doc["checkpoint"] = "\ud800"
    bad.write_text(json.dumps(doc))
    with pytest.raises(SampledrecError, match=r"cp\.json.*checkpoint"):
        _load_export(bad)


# -- the carrier's call records ------------------------------------------------------------------


def _cdr_rows(draw: st.DrawFn) -> str:
    cols = draw(st.lists(st.sampled_from(["call_ref", "start_time", "agent", ""]), max_size=4))
    cells = st.text(st.characters(codec="utf-8"), max_size=10)
    rows = draw(st.lists(st.lists(cells, max_size=5), max_size=4))
    return "\n".join(",".join(r) for r in [cols, *rows])


_CDRS = mutated_file(CDR.encode(), st.composite(_cdr_rows)())


@given(raw=_CDRS)
@_SETTINGS
def test_mutated_call_records_load_or_raise_a_typed_error(base: Path, raw: bytes) -> None:
    path = base / "cdr.csv"
    path.write_bytes(raw)
    try:
        rows = read_cdr(path)
    except SampledrecError as exc:
        message = str(exc)
    else:
        message = "cdr.csv"
        assert all(isinstance(r, str | bytes) for r in rows.refs)
        assert all(isinstance(t, str) for t in rows.starts)
    assert "cdr.csv" in message


@given(raw=_CDRS)
@_CLI_SETTINGS
def test_audit_verify_of_mutated_call_records_ends_without_a_traceback(
    base: Path, cli: CliRun, capsys: pytest.CaptureFixture[str], raw: bytes
) -> None:
    (base / "cdr.csv").write_bytes(raw)
    _cli_ok(
        cli,
        capsys,
        "audit",
        "verify",
        "--store",
        base / "s",
        "--revealed-keys",
        base / "revealed.json",
        "--cdr",
        base / "cdr.csv",
    )


def test_call_records_with_an_over_long_field_are_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text('call_ref,start_time\n"' + "x" * 200_000 + '",2026-04-01T09:00:00Z\n')
    with pytest.raises(SampledrecError, match=r"cdr\.csv"):
        read_cdr(path)


# -- store.json ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metas(base: Path) -> st.SearchStrategy[bytes]:
    raw = (base / "s" / "store.json").read_bytes()
    return mutated_file(raw, mutated_json(json.loads(raw)))


@given(data=st.data())
@_SETTINGS
def test_a_mutated_store_json_opens_or_raises_a_typed_error(
    base: Path, metas: st.SearchStrategy[bytes], data: st.DataObject
) -> None:
    with _replaced(base / "s" / "store.json", data.draw(metas)):
        try:
            store = Store.open(base / "s")
        except SampledrecError as exc:
            message = str(exc)
        else:
            message = "store.json"
            assert isinstance(store.store_id, bytes) and isinstance(store.origin, str)
            assert isinstance(store.simulated, bool) and isinstance(store.created_at, str)
        assert "store.json" in message or "keyring" in message


@given(data=st.data())
@_CLI_SETTINGS
def test_commands_on_a_store_with_a_mutated_store_json_end_without_a_traceback(
    base: Path,
    metas: st.SearchStrategy[bytes],
    cli: CliRun,
    capsys: pytest.CaptureFixture[str],
    data: st.DataObject,
) -> None:
    with _replaced(base / "s" / "store.json", data.draw(metas)):
        _cli_ok(cli, capsys, "log", "verify", "--store", base / "s")
        _cli_ok(
            cli,
            capsys,
            "audit",
            "verify",
            "--store",
            base / "s",
            "--revealed-keys",
            base / "revealed.json",
        )


def test_a_store_json_that_is_not_an_object_names_the_file(tmp_path: Path, base: Path) -> None:
    shutil.copytree(base / "s", tmp_path / "s")
    meta = tmp_path / "s" / "store.json"
    for doc, says in [
        ("[]", "must be a JSON object"),
        ('{"format": "sampledrec-store"', "store.json"),
    ]:
        meta.write_text(doc)
        with pytest.raises(SampledrecError, match=says):
            Store.open(tmp_path / "s")
    good = _valid(base, "s/store.json")
    for field, value in [("store_id", 7), ("store_id", "zz"), ("origin", None), ("keys_dir", [])]:
        meta.write_text(json.dumps(good | {field: value}))
        with pytest.raises(SampledrecError, match=f"store.json.*{field}"):
            Store.open(tmp_path / "s")


# -- policy files ----------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        pairs = (f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(pairs) + "}"
    return '""'


@st.composite
def _mutated_policy(draw: st.DrawFn) -> str:
    """The policy's TOML, its members replaced by any value (as TOML) or removed."""
    import tomllib

    text = draw(mutated_json(tomllib.loads(POLICY))).replace('"\\ud800"', '""')
    if "[" * 50 in text:  # deep nesting: the same, in TOML
        n = draw(st.integers(50, 5000))
        return (
            POLICY
            + "\n"
            + draw(st.sampled_from(["x = ", "[default]\nrate = "]))
            + "[" * n
            + "]" * n
        )
    doc = json.loads(text)
    if not isinstance(doc, dict):
        return _toml_value(doc)
    return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if v is not None)


_POLICIES = mutated_file(POLICY.encode(), _mutated_policy())


@given(raw=_POLICIES)
@_SETTINGS
def test_a_mutated_policy_file_loads_or_raises_a_typed_error(base: Path, raw: bytes) -> None:
    path = base / "mutated.toml"
    path.write_bytes(raw)
    _typed(Policy.load, path)
    with contextlib.suppress(UnicodeDecodeError):
        _typed(Policy.from_toml, raw.decode("utf-8"))


@given(raw=_POLICIES)
@_CLI_SETTINGS
def test_policy_check_of_a_mutated_file_ends_without_a_traceback(
    base: Path, cli: CliRun, capsys: pytest.CaptureFixture[str], raw: bytes
) -> None:
    (base / "mutated.toml").write_bytes(raw)
    _cli_ok(cli, capsys, "policy", "check", base / "mutated.toml")


# -- numbers files -------------------------------------------------------------------------------


_NUMBERS = mutated_file(NUMBERS.encode(), None)


@pytest.fixture(scope="module")
def other(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the store, for the commands that change it."""
    folder = tmp_path_factory.mktemp("numbers")
    shutil.copytree(base / "s", folder / "s")
    return folder


@given(raw=_NUMBERS)
@_CLI_SETTINGS
def test_a_mutated_numbers_file_is_read_or_refused_without_a_traceback(
    other: Path, cli: CliRun, capsys: pytest.CaptureFixture[str], raw: bytes
) -> None:
    numbers = other / "numbers.txt"
    numbers.write_bytes(raw)
    store = other / "s"
    _cli_ok(cli, capsys, "objections", "add", "--store", store, "--file", numbers)
    _cli_ok(
        cli, capsys, "subject", "receive", "--kind", "erase", "--store", store, "--file", numbers
    )
    _cli_ok(cli, capsys, "decide", "--call-ref", "c", "--store", store, "--caller-file", numbers)


def test_a_numbers_file_that_is_not_utf8_names_the_file(
    base: Path, tmp_path: Path, cli: CliRun, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "n.txt").write_bytes(b"+33 6 12 34 56 78\n\xff\n")
    code, _ = cli("objections", "add", "--store", base / "s", "--file", tmp_path / "n.txt")
    err = capsys.readouterr().err
    assert code == 2 and "n.txt" in err and "UTF-8" in err and "Traceback" not in err


# -- the auditor's kit ---------------------------------------------------------------------------

_KIT_FILES = [
    "revealed-keys.json",
    "sealing-keys.json",
    "recordings.json",
    "key-inventory.json",
    "objections.json",
]


@pytest.fixture(scope="module")
def kit(base: Path) -> Path:
    from sampledrec.audit.kit import write_kit

    if not (base / "kit").exists():
        write_kit(Store.open(base / "s"), base / "kit", now=DAY + timedelta(days=1))
    return base / "kit"


def _relisted(kit: Path, name: str, data: bytes) -> dict[str, bytes]:
    """The kit's file ``name`` replaced by ``data``, listed in the manifest as it is (so that
    the file itself is read); returns what to put back."""
    import hashlib

    kept = {n: (kit / n).read_bytes() for n in (name, "kit.json")}
    manifest = json.loads(kept["kit.json"])
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (kit / name).write_bytes(data)
    (kit / "kit.json").write_text(json.dumps(manifest))
    return kept


@given(data=st.data())
@_SETTINGS
def test_an_audit_from_a_kit_with_a_mutated_file_reports_or_raises_a_typed_error(
    kit: Path, data: st.DataObject
) -> None:
    from sampledrec.audit.kit import audit_kit

    name = data.draw(st.sampled_from([*_KIT_FILES, "kit.json"]))
    raw = (kit / name).read_bytes()
    mutated = data.draw(mutated_file(raw, mutated_json(json.loads(raw))))
    if name == "kit.json":
        kept = {name: raw}
        (kit / name).write_bytes(mutated)
    else:
        kept = _relisted(kit, name, mutated)
    try:
        _typed(audit_kit, kit)
    finally:
        for n, content in kept.items():
            (kit / n).write_bytes(content)
