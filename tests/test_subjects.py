"""Data-subject requests: one person by any form of their number, export, erasure, holds,
deadlines, and the ``sampledrec subject`` commands."""

from __future__ import annotations

import io
import json
import re
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sampledrec import FixedClock, Store
from sampledrec.audit.report import build_report
from sampledrec.cli.app import main
from sampledrec.errors import (
    AccessDenied,
    InvalidArgument,
    InvalidRecording,
    KeyDestroyed,
    RecordingExpired,
)
from sampledrec.log.format import T_ERASURE, T_SUBJECT_REQUEST, to_micros
from sampledrec.log.verify import verify_log
from sampledrec.log.writer import DecisionLog, iter_entries
from sampledrec.retention.subjects import (
    IdentityCheck,
    PendingRequest,
    SubjectRequests,
    one_month_after,
)
from sampledrec.sampling.objections import normalize_number
from sampledrec.sampling.sampler import Sampler
from sampledrec.vault.audio import encode_wav, synthetic_speech
from sampledrec.vault.catalog import Hold, SubjectRequest
from sampledrec.vault.recorder import Principal, Vault, data_key_aad

from .recording import PCM, RECORD_REGULATED, new_store, write_call

AT = "2030-03-04T10:00:00Z"
ALICE = ("0612345678", "+33 6 12 34 56 78", "0033612345678")  # one person, three forms
BOB = "+44 20 7946 0000"
DPO = Principal("dana", ("dpo",))
OWNER = Principal.owner("owner")
ID = IdentityCheck("callback_to_number", "called back the number on the customer's contract")
CALLBACK = ("--identity-method", "callback_to_number", "--identity-note", "called back")


@dataclass
class Env:
    store: Store
    log: DecisionLog
    sampler: Sampler
    vault: Vault
    clock: FixedClock
    subjects: SubjectRequests

    def record(self, ref: str, caller: str, audio: bytes) -> str:
        d = self.sampler.decide(ref, {"queue": "regulated", "agent": "a7"}, caller=caller)
        assert d.record and d.caller_pseudonym is not None
        return write_call(self.vault, d, audio)


def _new_store(tmp_path: Path, region: str | None = None) -> Store:
    return new_store(tmp_path, RECORD_REGULATED, region=region)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return _new_store(tmp_path, region="FR")


@pytest.fixture
def env(store: Store) -> Iterator[Env]:
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        yield Env(store, log, sampler, vault, clock, SubjectRequests(store, vault, log))


def _entries(store: Store, etype: int, keyring: bool = True) -> list[dict[str, object]]:
    return [
        e.fields
        for e in iter_entries(store.path / "log", store.keyring if keyring else None)
        if e.type == etype
    ]


def _zip(path: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    with zipfile.ZipFile(path) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    return files, json.loads(files["metadata.json"])


# -- numbers ----------------------------------------------------------------------------------


def test_three_forms_of_a_number_find_the_same_person(env: Env, tmp_path: Path) -> None:
    assert {normalize_number(n, region="FR") for n in ALICE} == {"+33612345678"}
    assert len({env.subjects.pseudonym(n) for n in ALICE}) == 1
    rid = env.record("c1", ALICE[0], synthetic_speech(0.2, seed=1))
    for i, number in enumerate(ALICE):
        files, meta = _zip(
            env.subjects.subject_export(number, tmp_path / f"{i}.zip", principal=DPO, identity=ID)
        )
        assert [r["id"] for r in meta["recordings"]] == [rid]
        assert f"recordings/{rid}.wav" in files


def test_the_store_region_is_kept_and_checked(tmp_path: Path) -> None:
    store = Store.open(_new_store(tmp_path / "a", region="fr").path)
    assert store.region == "FR" and store.objections().region == "FR"
    assert json.loads((store.path / "store.json").read_text())["region"] == "FR"
    plain = _new_store(tmp_path / "b")
    assert plain.region is None
    with pytest.raises(InvalidArgument, match="region"):
        _new_store(tmp_path / "c", region="XX")
    assert not (tmp_path / "c" / "s").exists()
    # Without a region only international forms can be read; "00" is read as "+".
    assert normalize_number("0033 6 12 34 56 78") == "+33612345678"
    with pytest.raises(InvalidArgument, match="ending in '78'") as caught:
        normalize_number("0612345678")
    assert "0612345678" not in str(caught.value)


def test_without_phonenumbers_international_forms_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "phonenumbers", None)  # import raises ImportError
    assert normalize_number("+33 6 12 34 56 78") == normalize_number("0033612345678")
    with pytest.raises(InvalidArgument, match=r"sampledrec\[phone\]"):
        normalize_number("0612345678", region="FR")


# -- export -----------------------------------------------------------------------------------


def test_export_writes_the_persons_recordings_and_metadata(env: Env, tmp_path: Path) -> None:
    a1 = synthetic_speech(0.5, seed=1)
    a2 = np.random.default_rng(2).integers(-9000, 9000, 4000, dtype=np.int16).tobytes()
    r1 = env.record("call-a1", ALICE[0], a1)
    env.clock.advance(minutes=5)
    r2 = env.record("call-a2", ALICE[1], a2)
    rb = env.record("call-b", BOB, synthetic_speech(0.3, seed=3))
    # One still open (the call goes on), one expired without a sweep yet.
    env.clock.advance(minutes=5)
    d = env.sampler.decide("call-a3", {"queue": "regulated"}, caller=ALICE[2])
    live = env.vault.record(d, audio_format=PCM)
    r4 = env.record("call-a4", ALICE[0], synthetic_speech(0.1, seed=4))
    env.vault.catalog.update(r4, expires_at=to_micros(env.clock.now()))
    out = tmp_path / "alice.zip"

    assert env.subjects.subject_export(ALICE[2], out, principal=DPO, identity=ID) == out
    assert out.stat().st_mode & 0o777 == 0o600
    files, meta = _zip(out)
    assert set(files) == {f"recordings/{r1}.wav", f"recordings/{r2}.wav", "metadata.json"}
    assert files[f"recordings/{r1}.wav"] == encode_wav(PCM, a1)  # bit-exact PCM16
    assert files[f"recordings/{r2}.wav"] == encode_wav(PCM, a2)
    assert rb not in json.dumps(meta)
    first = meta["recordings"][0]
    assert first["id"] == r1 and first["call_ref"] == "call-a1"
    assert first["started_at"] == "2030-03-04T10:00:00+00:00"
    assert first["duration_ms"] == 500 and first["status"] == "sealed"
    assert first["expires_at"] == "2030-06-04T10:00:00+00:00" and first["pauses"] == []
    decision = first["decision"]
    assert decision["rule"] == "all" and decision["purpose"] == "legal_obligation"
    assert decision["rate"] == "1" and decision["threshold"] == str(2**56)
    assert decision["reason"] == "sampled" and decision["epoch_id"] == "2030-03-04"
    assert int(decision["draw"]) < 2**56 and isinstance(decision["log_index"], int)
    assert "agent" not in first  # the agent's name is the agent's data, not the caller's
    gone = {x["id"]: x["reason"] for x in meta["not_included"]}
    assert gone[live.recording_id] == "still being recorded"
    assert gone[r4].startswith("expired on 2030-03-04")
    request = env.subjects.requests()[-1]
    assert meta["request"]["id"] == request.request_id
    assert request.kind == "export" and request.status == "done"
    assert request.completed_at == to_micros(env.clock.now())
    assert request.detail == "2 recording(s) exported, 2 no longer readable"
    live.close()

    env.log.flush()
    granted = [
        a for a in _entries(env.store, 0x14) if a.get("action") == "subject_export"
    ]  # access entries
    assert {a["recording_id"] for a in granted} == {r1, r2}
    logged = _entries(env.store, T_SUBJECT_REQUEST)
    assert [e["status"] for e in logged] == ["open", "done"]
    assert logged[0]["caller_pseudonym"] == bytes.fromhex(env.subjects.pseudonym(ALICE[0]))
    # The pseudonym is sealed: not readable without the keyring.
    assert all("caller_pseudonym" not in e for e in _entries(env.store, T_SUBJECT_REQUEST, False))
    assert verify_log(env.store.path, public_key=env.store.public_key).ok


def test_export_leaves_no_plaintext_anywhere_else(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "tmp"
    empty.mkdir()
    monkeypatch.setenv("TMPDIR", str(empty))
    monkeypatch.setattr(tempfile, "tempdir", None)
    signal = np.random.default_rng(11).integers(-20000, 20000, 8000 * 2, dtype=np.int16).tobytes()
    env.record("call-1", ALICE[0], signal)
    out = tmp_path / "out" / "alice.zip"
    out.parent.mkdir()
    env.subjects.subject_export(ALICE[1], out, principal=DPO, identity=ID)
    assert list(empty.iterdir()) == [] and list(out.parent.iterdir()) == [out]
    probes = [signal[i : i + 32] for i in range(0, len(signal) - 32, 997)]
    for path in env.store.path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(p in data for p in probes), path


def test_a_failed_export_leaves_no_file(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r1 = env.record("c1", ALICE[0], synthetic_speech(0.3, seed=1))
    env.record("c2", ALICE[0], synthetic_speech(0.3, seed=2))
    out = tmp_path / "x.zip"
    calls = []

    def boom(*args: object) -> object:
        calls.append(args)
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(env.subjects, "_metadata", boom)
        with pytest.raises(RuntimeError):
            env.subjects.subject_export(ALICE[0], out, principal=DPO, identity=ID)
    assert calls and not out.exists()

    row = env.vault.catalog.get(r1)
    assert row is not None
    path = env.store.path / "recordings" / row.file
    damaged = bytearray(path.read_bytes())
    damaged[-40] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(InvalidRecording, match="not written"):
        env.subjects.subject_export(ALICE[0], out, principal=DPO, identity=ID)
    assert not out.exists()
    # Those requests are still due; an existing file is never overwritten.
    assert [p.request.status for p in env.subjects.open_requests()] == ["open", "open"]
    out.write_bytes(b"keep me")
    with pytest.raises(InvalidArgument, match="exists"):
        env.subjects.subject_export(ALICE[0], out, principal=DPO, identity=ID)
    assert out.read_bytes() == b"keep me"
    assert len(env.subjects.requests()) == 2  # refused before a request was recorded


def test_subject_requests_need_the_permission(env: Env, tmp_path: Path) -> None:
    env.record("c1", ALICE[0], synthetic_speech(0.1))
    for who in (
        Principal("quinn", ("qa_reviewer",)),
        Principal("aude", ("auditor",)),
        Principal("nobody"),
    ):
        with pytest.raises(AccessDenied, match="subject_requests"):
            env.subjects.subject_export(ALICE[0], tmp_path / "x.zip", principal=who, identity=ID)
        with pytest.raises(AccessDenied):
            env.subjects.subject_erase(ALICE[0], principal=who, identity=ID)
    name: Any = "mallory"  # a bare name is refused as a misuse (and logged)
    with pytest.raises(InvalidArgument, match="bare name"):
        env.subjects.subject_export(ALICE[0], tmp_path / "x.zip", principal=name, identity=ID)
    with pytest.raises(InvalidArgument, match="bare name"):
        env.subjects.subject_erase(ALICE[0], principal=name, identity=ID)
    assert not (tmp_path / "x.zip").exists() and env.subjects.requests() == []
    env.log.flush()
    denied = [a for a in _entries(env.store, 0x14) if a.get("outcome") == "denied"]
    assert {a["principal"] for a in denied} == {"quinn", "aude", "nobody", "mallory"}
    env.subjects.subject_export(ALICE[0], tmp_path / "x.zip", principal=OWNER, identity=ID)


# -- erasure ----------------------------------------------------------------------------------


def test_erase_shreds_the_persons_recordings_only(env: Env, tmp_path: Path) -> None:
    b_audio = synthetic_speech(0.4, seed=9)
    ra = [env.record(f"a{i}", ALICE[i], synthetic_speech(0.2, seed=i)) for i in range(3)]
    rb = env.record("b", BOB, b_audio)
    rows = {rid: env.vault.catalog.get(rid) for rid in ra}

    outcomes = env.subjects.subject_erase(ALICE[1], principal=DPO, identity=ID)

    assert sorted(outcomes) == sorted((rid, "erased") for rid in ra)
    for rid, before in rows.items():
        assert before is not None
        assert not (env.store.path / "recordings" / before.file).exists()
        row = env.vault.catalog.get(rid)
        assert row is not None and row.status == "erased" and row.wrapped_key is None
        assert (row.call_ref, row.caller_pseudonym, row.agent) == (None, None, None)
        with pytest.raises(KeyDestroyed):
            env.vault.data_key(row)
        with pytest.raises(RecordingExpired):
            env.vault.open(rid, OWNER)
    assert env.vault.open(rb, OWNER).audio == b_audio  # other callers untouched
    (request,) = env.subjects.requests()
    assert request.kind == "erase" and request.status == "done"
    assert request.detail == "3 recording(s) erased"
    env.log.flush()
    tombstones = _entries(env.store, T_ERASURE)
    assert {t["recording_id"] for t in tombstones} == set(ra)
    assert {(t["outcome"], t["request_id"]) for t in tombstones} == {("erased", request.request_id)}
    assert verify_log(env.store.path, public_key=env.store.public_key).ok

    # Nothing left to find; an export now says an erasure was made, and when.
    assert env.subjects.subject_erase(ALICE[0], principal=DPO, identity=ID) == []
    _, meta = _zip(
        env.subjects.subject_export(ALICE[2], tmp_path / "a.zip", principal=DPO, identity=ID)
    )
    assert meta["recordings"] == [] and meta["not_included"] == []
    earlier = [e["id"] for e in meta["earlier_erasures"]]
    assert earlier == [r.request_id for r in env.subjects.requests() if r.kind == "erase"]
    assert request.request_id in earlier and len(earlier) == 2


def test_erasure_of_a_held_recording_is_deferred(env: Env) -> None:
    held = env.record("a1", ALICE[0], synthetic_speech(0.2, seed=1))
    free = env.record("a2", ALICE[0], synthetic_speech(0.2, seed=2))
    row = env.vault.catalog.get(held)
    assert row is not None
    keystore = env.vault.keystore
    keystore.ensure_bucket("hold-case42")
    wrapped = keystore.wrap(
        "hold-case42",
        env.vault.data_key(row),
        aad=data_key_aad(held, row.expires_at_sealed),
    )
    env.vault.catalog.add_hold(Hold("case42", "litigation 42", to_micros(env.clock.now())))
    env.vault.catalog.add_hold_member("case42", held, wrapped)

    outcomes = env.subjects.subject_erase(ALICE[0], principal=DPO, identity=ID)

    assert sorted(outcomes) == sorted([(held, "deferred"), (free, "erased")])
    assert env.vault.open(held, OWNER).audio == synthetic_speech(0.2, seed=1)
    kept = env.vault.catalog.get(held)
    assert kept is not None and kept.caller_pseudonym is not None and kept.status == "sealed"
    (request,) = env.subjects.requests()
    assert request.status == "deferred" and "legal hold case42" in request.detail
    env.log.flush()
    deferred = [t for t in _entries(env.store, T_ERASURE) if t["outcome"] == "deferred"]
    assert deferred == [
        {
            "recording_id": held,
            "outcome": "deferred",
            "request_id": request.request_id,
            "reason": "legal hold case42",
        }
    ]
    (pending,) = env.subjects.open_requests()
    assert pending.request.request_id == request.request_id

    # Once the hold is released, the same request finishes, and the hold's copy of the key goes.
    env.clock.advance(days=1)
    env.vault.catalog.update_hold("case42", released_at=to_micros(env.clock.now()))
    assert env.subjects.subject_erase(ALICE[2], principal=DPO, request=request) == [
        (held, "erased")
    ]
    assert request.status == "done" and env.subjects.open_requests() == []
    assert env.vault.catalog.hold_members("case42") == [(held, None)]
    with pytest.raises(InvalidArgument, match="another caller"):
        env.subjects.subject_erase(BOB, principal=DPO, request=request)
    with pytest.raises(InvalidArgument, match="not an export request"):
        env.subjects.subject_export(ALICE[0], Path("never.zip"), principal=DPO, request=request)
    assert not Path("never.zip").exists()


# -- requests and deadlines -------------------------------------------------------------------


def test_requests_are_due_one_month_after_receipt(env: Env) -> None:
    assert one_month_after(datetime(2031, 1, 31, 9, tzinfo=UTC)) == datetime(
        2031, 2, 28, 9, tzinfo=UTC
    )
    assert one_month_after(datetime(2032, 1, 30, tzinfo=UTC)).day == 29  # leap year
    assert one_month_after(datetime(2030, 12, 15, tzinfo=UTC)).date().isoformat() == "2031-01-15"
    s = env.subjects
    old = s.receive("export", ALICE[0], principal=DPO, received_at=datetime(2030, 1, 31, 9))
    new = s.receive("erase", BOB, principal=DPO)
    assert old.received_at == to_micros(datetime(2030, 1, 31, 9, tzinfo=UTC))
    assert old.deadline == to_micros(datetime(2030, 2, 28, 9, tzinfo=UTC))
    assert new.deadline == to_micros(datetime(2030, 4, 4, 10, tzinfo=UTC))
    pending = {p.request.request_id: p for p in s.open_requests()}
    assert pending[old.request_id].overdue and pending[old.request_id].days_left == -4
    assert not pending[new.request_id].overdue and pending[new.request_id].days_left == 31
    later = {p.request.request_id: p for p in s.open_requests(env.clock.now() + timedelta(31))}
    assert later[new.request_id].overdue and later[new.request_id].days_left == 0
    doc = pending[new.request_id].to_json()
    assert doc["deadline"] == "2030-04-04T10:00:00+00:00" and doc["kind"] == "erase"
    s.subject_erase(BOB, principal=DPO, request=new, identity=ID)
    assert [p.request.request_id for p in s.open_requests()] == [old.request_id]
    with pytest.raises(InvalidArgument, match="kind='delete'"):
        s.receive("delete", ALICE[0], principal=DPO)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="ending in '12'"):
        s.receive("erase", "06 12", principal=DPO)
    assert len(s.requests()) == 2


# -- CLI --------------------------------------------------------------------------------------


def _cli(*argv: str | Path, stdin: str | None = None) -> tuple[int, str]:
    out = io.StringIO()
    saved = sys.stdin
    try:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        code = main([str(a) for a in argv], out=out)
    finally:
        sys.stdin = saved
    return code, out.getvalue()


@pytest.fixture
def cli_store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "p.toml").write_text(RECORD_REGULATED)
    code, _ = _cli("init", tmp_path / "s", "--policy", tmp_path / "p.toml", "--region", "FR")
    assert code == 0
    store = Store.open(tmp_path / "s")
    assert store.region == "FR"
    ids = {}
    with store.open_log() as log, Vault(store, log) as vault:
        sampler = store.sampler(log=log)
        for name, number in (("alice", ALICE[0]), ("bob", BOB)):
            d = sampler.decide(f"call-{name}", {"queue": "regulated"}, caller=number)
            with vault.record(d, audio_format=PCM) as rec:
                rec.write(synthetic_speech(0.2, seed=len(name)))
            ids[name] = rec.recording_id
    return store.path, ids


def test_cli_export_reads_numbers_from_stdin_or_a_file(
    cli_store: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    store, ids = cli_store
    code, text = _cli(
        "subject",
        "export",
        "--store",
        store,
        "--out",
        tmp_path / "a.zip",
        *CALLBACK,
        stdin=ALICE[1] + "\n",
    )
    assert code == 0 and "a.zip" in text and "not encrypted" in text
    _, meta = _zip(tmp_path / "a.zip")
    assert [r["id"] for r in meta["recordings"]] == [ids["alice"]]

    numbers = tmp_path / "numbers.txt"
    numbers.write_text(f"# two people\n{ALICE[2]}\n\n{BOB}\n")
    argv = (
        *("subject", "export", "--store", store, "--file", numbers, "--out", tmp_path / "b.zip"),
        *CALLBACK,
    )
    code, text = _cli(*argv, "--json")
    assert code == 0
    docs = json.loads(text)["requests"]
    assert [d["out"] for d in docs] == [str(tmp_path / "b-1.zip"), str(tmp_path / "b-2.zip")]
    assert [d["recordings"] for d in docs] == [[ids["alice"]], [ids["bob"]]]
    assert _cli(*argv)[0] == 2  # the files exist: nothing is overwritten

    code, text = _cli("subject", "requests", "--store", store, "--all", "--json")
    assert code == 0 and [r["status"] for r in json.loads(text)["requests"]] == ["done"] * 3


def test_cli_erase_and_the_open_requests_table(
    cli_store: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    store, ids = cli_store
    s = Store.open(store)
    with s.open_log() as log, Vault(s, log) as vault:
        row = vault.catalog.get(ids["bob"])
        assert row is not None
        vault.catalog.add_hold(Hold("h1", "case", to_micros(datetime.now(UTC))))
        vault.catalog.add_hold_member("h1", ids["bob"], b"wrapped elsewhere")
    code, text = _cli("subject", "erase", "--store", store, "--json", *CALLBACK, stdin=ALICE[2])
    assert code == 0
    (doc,) = json.loads(text)["requests"]
    assert doc["status"] == "done" and doc["recordings"] == [
        {"id": ids["alice"], "outcome": "erased"}
    ]

    code, text = _cli("subject", "erase", "--store", store, *CALLBACK, stdin=BOB)
    assert code == 1 and "DEFERRED" in text and "legal hold h1" in text  # held: refused for now
    code, text = _cli("subject", "requests", "--store", store)
    assert code == 0 and "deferred" in text and "erase" in text and "OVERDUE" not in text
    later = (datetime.now(UTC) + timedelta(days=40)).isoformat()
    # Issue #12: past its deadline, an erasure deferred by a hold still in force is a lawful
    # delay, shown with its hold, not OVERDUE (it used to stay OVERDUE as long as the hold).
    code, text = _cli("subject", "requests", "--store", store, "--at", later)
    assert code == 0 and "deferred (hold h1)" in text and "lawful delay" in text
    assert "OVERDUE" not in text
    code, text = _cli("subject", "requests", "--store", store, "--at", later, "--json")
    (held,) = json.loads(text)["requests"]
    assert held["overdue"] is False and held["held_by"] == ["h1"] and held["days_left"] < 0
    assert held["state"] == "deferred (hold h1)"
    # The DPO's report says the same (it used to mark it OVERDUE).
    page = build_report(store, now=datetime.fromisoformat(later))
    tr = re.search(rf"<tr[^>]*><td>{held['request_id']}</td>.*?</tr>", page)
    assert tr is not None and "deferred by hold h1" in tr[0] and "OVERDUE" not in tr[0]
    assert 'class="overdue"' not in tr[0]
    # The hold ends, but the erasure has not run (a crash in between): with nothing lawful
    # keeping it any more, the request is OVERDUE past its deadline...
    with s.open_log() as log, Vault(s, log) as vault:
        vault.catalog.update_hold("h1", released_at=to_micros(datetime.now(UTC)))
    code, text = _cli("subject", "requests", "--store", store, "--at", later)
    assert code == 0 and "OVERDUE" in text
    code, text = _cli("subject", "requests", "--store", store, "--at", later, "--json")
    (pending,) = json.loads(text)["requests"]
    assert pending["overdue"] is True and pending["days_left"] < 0
    # ... until the next sweep carries it out.
    code, text = _cli("sweep", "--store", store, "--dry-run")
    assert code == 0 and re.search(r"erasures completed \(deferred by holds\) +1\n", text)
    code, text = _cli("sweep", "--store", store, "--json")
    assert code == 0 and json.loads(text)["erasures_completed"] == [pending["request_id"]]
    code, text = _cli("subject", "requests", "--store", store, "--all", "--json")
    assert [r["status"] for r in json.loads(text)["requests"]] == ["done", "done"]
    catalog = Store.open(store).open_catalog()
    erased = catalog.get(ids["bob"])
    catalog.close()
    assert erased is not None and erased.status == "erased" and erased.wrapped_key is None


@pytest.mark.parametrize(
    ("argv", "stdin", "code"),
    [
        (["subject", "erase", "--store", "{store}", *CALLBACK], "", 2),  # no number
        (["subject", "erase", "--store", "{store}", *CALLBACK], "0612345678\n06 12\n", 2),
        (["subject", "erase", "--store", "{store}", "--file", "{missing}", *CALLBACK], None, 2),
        (["subject", "erase", "--store", "{missing}", *CALLBACK], BOB, 3),
        (["subject", "export", "--store", "{store}", *CALLBACK], BOB, 2),  # --out is required
        (["subject", "requests", "--store", "{store}", "--at", "2001-01-01"], None, 2),
        (["init", "{new}", "--region", "XX"], None, 2),
    ],
)
def test_cli_usage_errors(
    cli_store: tuple[Path, dict[str, str]],
    tmp_path: Path,
    argv: list[str],
    stdin: str | None,
    code: int,
) -> None:
    store, _ = cli_store
    names = {"store": store, "missing": tmp_path / "missing", "new": tmp_path / "new"}
    got, _ = _cli(*[a.format(**names) for a in argv], stdin=stdin)
    assert got == code
    s = Store.open(store)
    with s.open_log() as log, Vault(s, log) as vault:
        assert SubjectRequests(s, vault, log).requests() == []  # nothing half done


def test_a_call_still_being_recorded_is_deferred(env: Env) -> None:
    d = env.sampler.decide("live", {"queue": "regulated"}, caller=ALICE[0])
    live = env.vault.record(d, audio_format=PCM)
    live.write(synthetic_speech(0.1))
    assert env.subjects.subject_erase(ALICE[1], principal=DPO, identity=ID) == [
        (live.recording_id, "deferred")
    ]
    (request,) = env.subjects.requests()
    assert request.status == "deferred" and "still being recorded" in request.detail
    live.close()
    assert env.subjects.subject_erase(ALICE[1], principal=DPO, request=request) == [
        (live.recording_id, "erased")
    ]


def test_module_doctests() -> None:
    import doctest

    import sampledrec.retention.subjects
    import sampledrec.sampling.objections

    for module in (sampledrec.retention.subjects, sampledrec.sampling.objections):
        assert doctest.testmod(module).failed == 0, module.__name__


# -- issue #12: no attributes survive an erasure; no erasure ahead of the clock ----------------


def test_an_erasure_removes_the_call_attributes_too(env: Env) -> None:
    d = env.sampler.decide("c1", {"queue": "regulated"}, caller=ALICE[0])
    rid = write_call(env.vault, d, synthetic_speech(0.1), attrs={"queue": "regulated"})
    assert env.vault.catalog.get(rid).attrs == {"queue": "regulated"}  # type: ignore[union-attr]
    assert env.subjects.subject_erase(ALICE[1], principal=DPO, identity=ID) == [(rid, "erased")]
    row = env.vault.catalog.get(rid)
    assert row is not None and row.status == "erased" and row.attrs == {}


def test_a_real_store_never_erases_ahead_of_the_clock(env: Env) -> None:
    from sampledrec import Retention

    rid = env.record("c1", ALICE[0], synthetic_speech(0.1))
    until = env.clock.now() + timedelta(days=10)
    Retention(env.vault, clock=env.clock).hold([rid], reason="case 12", until=until)
    with pytest.raises(InvalidArgument, match=r"in the future.*'sampledrec demo'"):
        # The hold has ended by then: erasing as of then would erase what it still keeps.
        env.subjects.subject_erase(
            ALICE[1], principal=DPO, now=until + timedelta(days=1), identity=ID
        )
    assert env.subjects.requests() == []  # refused before the request was recorded
    assert env.subjects.subject_erase(
        ALICE[1], principal=DPO, now=env.clock.now(), identity=ID
    ) == [(rid, "deferred")]
    assert env.vault.open(rid).audio


def test_a_simulated_store_may_erase_as_of_a_later_day(tmp_path: Path) -> None:
    from sampledrec import Retention

    store = new_store(tmp_path, RECORD_REGULATED, region="FR", simulated=True)
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        d = sampler.decide("c1", {"queue": "regulated"}, caller=ALICE[0])
        rid = write_call(vault, d, synthetic_speech(0.1))
        until = clock.now() + timedelta(days=10)
        Retention(vault, clock=clock).hold([rid], reason="case 12", until=until)
        subjects = SubjectRequests(store, vault, log)
        later = until + timedelta(days=1)
        assert subjects.subject_erase(ALICE[1], principal=DPO, now=later, identity=ID) == [
            (rid, "erased")
        ]


# -- issue #12: the requester's identity is verified and recorded before anything is answered ----


def test_export_and_erase_refuse_until_the_identity_is_recorded(env: Env, tmp_path: Path) -> None:
    rid = env.record("c1", ALICE[0], synthetic_speech(0.2, seed=1))
    out = tmp_path / "alice.zip"
    with pytest.raises(InvalidArgument, match="identity has not been verified; nothing was exp"):
        env.subjects.subject_export(ALICE[0], out, principal=DPO)
    with pytest.raises(InvalidArgument, match="identity has not been verified; nothing was era"):
        env.subjects.subject_erase(ALICE[1], principal=DPO)
    assert not out.exists() and env.subjects.requests() == []  # refused before anything
    assert env.vault.open(rid, OWNER).audio == synthetic_speech(0.2, seed=1)

    # Received first (the month runs from receipt), verified days later, then answered.
    request = env.subjects.receive("export", ALICE[2], principal=DPO)
    assert not request.identity_verified and request.identity_method is None
    (pending,) = env.subjects.open_requests()
    assert pending.state == "open (identity not verified)"
    assert pending.to_json()["identity"] is None
    with pytest.raises(InvalidArgument, match=f"request {request.request_id}: the requester"):
        env.subjects.subject_export(ALICE[0], out, principal=DPO, request=request)
    assert not out.exists() and request.status == "open"

    env.clock.advance(days=3)
    check = IdentityCheck("signed_letter", "  signature matches   the contract ")
    verified = env.subjects.verify_identity(request.request_id, check, principal=DPO)
    assert verified.identity_method == "signed_letter"
    assert verified.identity_note == "signature matches the contract"
    assert verified.identity_verified_by == "dana"
    assert verified.identity_verified_at == to_micros(env.clock.now())
    (stored,) = env.subjects.requests()
    assert stored == verified
    assert env.subjects.open_requests()[0].state == "open"
    assert env.subjects.open_requests()[0].to_json()["identity"] == {
        "method": "signed_letter",
        "note": "signature matches the contract",
        "verified_by": "dana",
        "verified_at": "2030-03-07T10:00:00+00:00",
    }
    # The object read before the check is enough: the request is read again from the catalog.
    env.subjects.subject_export(ALICE[0], out, principal=DPO, request=request)
    assert request.status == "done" and request.identity_verified_by == "dana"

    with pytest.raises(InvalidArgument, match="answered already"):
        env.subjects.verify_identity(request.request_id, check, principal=DPO)
    other = env.subjects.receive("erase", BOB, principal=DPO, identity=ID)
    with pytest.raises(InvalidArgument, match=r"already verified \(callback_to_number, by dana"):
        env.subjects.verify_identity(other.request_id, check, principal=DPO)
    with pytest.raises(InvalidArgument, match="already verified"):
        env.subjects.subject_erase(BOB, principal=DPO, request=other, identity=check)
    with pytest.raises(InvalidArgument, match="no request 'req-none'"):
        env.subjects.verify_identity("req-none", check, principal=DPO)
    with pytest.raises(AccessDenied):
        env.subjects.verify_identity(
            other.request_id, check, principal=Principal("q", ("qa_reviewer",))
        )
    with pytest.raises(InvalidArgument, match="must be an IdentityCheck"):
        env.subjects.verify_identity(other.request_id, "callback", principal=DPO)  # type: ignore[arg-type]

    env.log.flush()
    denied = [
        (a["action"], a["detail"])
        for a in _entries(env.store, 0x14)
        if a.get("outcome") == "denied" and "identity" in str(a.get("detail"))
    ]
    assert denied == [
        ("subject_export", "identity not verified (a new request)"),
        ("subject_erase", "identity not verified (a new request)"),
        ("subject_export", f"identity not verified (request {request.request_id})"),
    ]


def test_the_identity_check_is_logged_once_its_note_sealed(env: Env, tmp_path: Path) -> None:
    env.record("c1", ALICE[0], synthetic_speech(0.1))
    request = env.subjects.receive("export", ALICE[0], principal=DPO)
    env.subjects.verify_identity(
        request.request_id,
        IdentityCheck("in_person_id_document", "passport seen at the front desk by Maria"),
        principal=DPO,
    )
    env.subjects.subject_export(ALICE[0], tmp_path / "a.zip", principal=DPO, request=request)
    env.subjects.receive("erase", BOB, principal=OWNER, identity=IdentityCheck("account_login"))
    env.log.flush()
    logged = _entries(env.store, T_SUBJECT_REQUEST)
    assert [(e["request_id"] == request.request_id, e["status"]) for e in logged] == [
        (True, "open"),
        (True, "open"),
        (True, "done"),
        (False, "open"),
    ]
    assert [e.get("identity_method") for e in logged] == [
        None,
        "in_person_id_document",
        None,
        "account_login",
    ]
    assert logged[1]["identity_note"] == "passport seen at the front desk by Maria"
    assert logged[1]["principal"] == "dana" and logged[3]["principal"] == "owner"
    assert "identity_note" not in logged[3]  # no note given, none logged
    # Without the keyring: the method is public, who checked and how they describe it are not.
    public = _entries(env.store, T_SUBJECT_REQUEST, keyring=False)
    assert public[1]["identity_method"] == "in_person_id_document"
    assert all("identity_note" not in e and "principal" not in e for e in public)
    assert verify_log(env.store.path, public_key=env.store.public_key).ok


def test_an_entry_without_an_identity_check_is_encoded_as_before() -> None:
    from sampledrec.log.format import split_personal

    values = {
        "request_id": "req-0123456789ab",
        "kind": "erase",
        "received_at": 1893456000000000,
        "status": "deferred",
        "identity_method": None,
        "caller_pseudonym": bytes(range(32)),
        "principal": "dana",
        "identity_note": None,
    }
    public, personal = split_personal(T_SUBJECT_REQUEST, values)
    # The bytes written before identity checks were recorded (sampledrec 9987935).
    assert public.hex() == (
        "01107265712d30313233343536373839616202056572617365030706ba169447200004086465666572726564"
    )
    assert personal.hex() == (
        "2020000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f210464616e61"
    )


@pytest.mark.parametrize(
    "note",
    [
        "passport 12AB34567",
        "ID card 123456789012",
        "called 06 12 34 56 78",
        "card no. 1234-5678-9012",
        "letter dated 2030-03-04",  # dates too: the time of the check is recorded anyway
        "x" * 201,
    ],
)
def test_an_identity_note_never_holds_an_id_number(note: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        IdentityCheck("in_person_id_document", note)
    message = str(caught.value)
    assert "run of" in message or "keep it to 200 at most" in message
    assert not any(part in message for part in ("34567", "123456", "56 78", "9012", "2030"))


def test_identity_checks_take_a_method_from_the_list() -> None:
    for method in ("in_person_id_document", "callback_to_number", "signed_letter"):
        assert IdentityCheck(method).method == method
    assert IdentityCheck("account_login", "logged in to the customer portal").note
    assert IdentityCheck("signed_letter", "letter of 4 March, ref 1234").note  # few digits: fine
    with pytest.raises(InvalidArgument, match="'passport' is not an identity check method"):
        IdentityCheck("passport")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="'other' needs a note"):
        IdentityCheck("other", "   ")
    assert IdentityCheck("other", "video call with the account holder").method == "other"
    with pytest.raises(InvalidArgument, match="must be text"):
        IdentityCheck("other", 42)  # type: ignore[arg-type]


# -- issue #12: an erasure deferred by a hold is carried out when the hold ends -------------------


def _overdue_later(env: Env, days: int = 40) -> PendingRequest:
    (pending,) = env.subjects.open_requests(env.clock.now() + timedelta(days=days))
    return pending


def test_releasing_a_hold_carries_out_the_erasures_it_deferred(env: Env) -> None:
    from sampledrec import Retention

    retention = Retention(env.vault, clock=env.clock)
    r1 = env.record("a1", ALICE[0], synthetic_speech(0.2, seed=1))
    r2 = env.record("a2", ALICE[1], synthetic_speech(0.2, seed=2))
    r3 = env.record("a3", ALICE[2], synthetic_speech(0.2, seed=3))
    rb = env.record("b1", BOB, synthetic_speech(0.2, seed=4))
    case1 = retention.hold([r1, rb], reason="case 1", principal=DPO)
    case2 = retention.hold([r2], reason="case 2", principal=DPO)
    files = {rid: env.vault.catalog.get(rid).file for rid in (r1, r2)}  # type: ignore[union-attr]

    assert sorted(env.subjects.subject_erase(ALICE[0], principal=DPO, identity=ID)) == sorted(
        [(r1, "deferred"), (r2, "deferred"), (r3, "erased")]
    )
    (request,) = env.subjects.requests()
    assert request.status == "deferred"
    held = sorted([case1.hold_id, case2.hold_id])
    (pending,) = env.subjects.open_requests()
    assert pending.held_by == tuple(held) and pending.state == f"deferred (hold {', '.join(held)})"
    # Past the deadline, the holds make the delay lawful: not overdue.
    later = _overdue_later(env)
    assert later.days_left < 0 and later.overdue is False and later.to_json()["held_by"] == held

    # One hold released: what it alone kept is erased at once; the rest waits for the other.
    env.clock.advance(days=2)
    retention.release(case2.hold_id, principal=DPO)
    gone = env.vault.catalog.get(r2)
    assert gone is not None and gone.status == "erased" and gone.wrapped_key is None
    assert (
        gone.caller_pseudonym is None and not (env.store.path / "recordings" / files[r2]).exists()
    )
    (request,) = env.subjects.requests()
    assert request.status == "deferred" and f"legal hold {case1.hold_id}" in request.detail
    assert env.subjects.open_requests()[0].held_by == (case1.hold_id,)

    # The last hold released: the erasure is complete, in the same operation.
    env.clock.advance(days=1)
    retention.release(case1.hold_id, principal=OWNER)
    (request,) = env.subjects.requests()
    assert request.status == "done" and request.completed_at == to_micros(env.clock.now())
    assert "erased once no legal hold kept them" in request.detail
    assert env.subjects.open_requests() == []
    assert env.vault.catalog.get(r1).status == "erased"  # type: ignore[union-attr]
    assert not (env.store.path / "recordings" / files[r1]).exists()
    assert env.vault.open(rb, OWNER).audio == synthetic_speech(0.2, seed=4)  # Bob: untouched
    env.log.flush()
    erased = [t["recording_id"] for t in _entries(env.store, T_ERASURE) if t["outcome"] == "erased"]
    assert erased == [r3, r2, r1]
    done = _entries(env.store, T_SUBJECT_REQUEST)[-1]
    assert (done["status"], done["principal"]) == ("done", "owner")  # who released the hold


def test_a_hold_ending_in_a_sweep_completes_the_erasure_even_after_a_crash(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sampledrec import Retention
    from sampledrec.retention import sweep

    retention = Retention(env.vault, clock=env.clock)
    rid = env.record("a1", ALICE[0], synthetic_speech(0.2, seed=1))
    until = env.clock.now() + timedelta(days=10)
    hold = retention.hold([rid], reason="case 7", until=until, principal=DPO)
    assert env.subjects.subject_erase(ALICE[0], principal=DPO, identity=ID) == [(rid, "deferred")]
    assert retention.sweep().erasures_completed == []  # the hold still keeps it
    assert env.subjects.open_requests()[0].state == f"deferred (hold {hold.hold_id})"

    # The hold ends; the sweep that ends it crashes before carrying out the erasure.
    env.clock.advance(days=11)
    with monkeypatch.context() as m:

        def crash(*args: object, **kwargs: object) -> list[str]:
            raise RuntimeError("power cut")

        m.setattr(sweep, "erase_deferred", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            retention.sweep()
    ended = env.vault.catalog.get_hold(hold.hold_id)
    assert ended is not None and ended.released_at == to_micros(until)
    (request,) = env.subjects.requests()
    assert request.status == "deferred"
    row = env.vault.catalog.get(rid)
    assert row is not None and row.status == "sealed" and row.caller_pseudonym is not None
    # Nothing lawful keeps it any more: past its deadline, it would be overdue.
    later = _overdue_later(env)
    assert later.held_by == () and later.overdue is True
    assert later.state == "deferred (nothing keeps it now: the next sweep erases)"

    # Releasing another hold leaves it to the sweep: it is not that hold's erasure.
    rb = env.record("b1", BOB, synthetic_speech(0.2, seed=2))
    other = retention.hold([rb], reason="case 8", principal=DPO)
    retention.release(other.hold_id, principal=DPO)
    assert env.subjects.requests()[0].status == "deferred"

    dry = retention.sweep(dry_run=True)
    assert dry.erasures_completed == [request.request_id]
    assert env.subjects.requests()[0].status == "deferred"  # a dry run changes nothing
    report = retention.sweep()
    assert report.erasures_completed == [request.request_id]
    assert report.to_json()["erasures_completed"] == [request.request_id]
    assert report.expired == []  # erased as asked, not merely expired
    (request,) = env.subjects.requests()
    assert request.status == "done" and env.subjects.open_requests() == []
    row = env.vault.catalog.get(rid)
    assert row is not None and row.status == "erased" and row.wrapped_key is None
    assert retention.sweep().erasures_completed == []  # idempotent


def test_a_deferred_request_without_a_recorded_identity_waits_for_the_dpo(env: Env) -> None:
    """A request deferred by an earlier version, which did not record identity checks."""
    from sampledrec import Retention

    retention = Retention(env.vault, clock=env.clock)
    rid = env.record("a1", ALICE[0], synthetic_speech(0.2, seed=1))
    hold = retention.hold([rid], reason="case 9", principal=DPO)
    now = to_micros(env.clock.now())
    env.vault.catalog.add_request(
        SubjectRequest(
            "req-old",
            "erase",
            env.subjects.pseudonym(ALICE[0]),
            now,
            now + 30 * 86_400_000_000,
            "deferred",
            detail=f"0 recording(s) erased; deferred: {rid} (legal hold {hold.hold_id})",
        )
    )
    retention.release(hold.hold_id, principal=DPO)
    assert retention.sweep().erasures_completed == []
    assert env.subjects.requests()[0].status == "deferred"
    assert env.vault.catalog.get(rid).status == "sealed"  # type: ignore[union-attr]
    env.subjects.verify_identity("req-old", ID, principal=DPO)
    assert retention.sweep().erasures_completed == ["req-old"]
    assert env.vault.catalog.get(rid).status == "erased"  # type: ignore[union-attr]
