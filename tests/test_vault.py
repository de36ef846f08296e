"""The vault end to end: record, read, export, pause, abort, recovery, expiry, no plaintext."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from sampledrec import FixedClock, Principal, Store
from sampledrec.errors import (
    InvalidRecording,
    NotSelected,
    RecordingExpired,
    RecordingNotFound,
)
from sampledrec.log.format import T_RECORDING_OPENED
from sampledrec.log.verify import verify_log
from sampledrec.log.writer import DecisionLog, iter_entries
from sampledrec.sampling.sampler import Decision, Sampler
from sampledrec.vault.audio import AudioFormat, encode_wav, frames, synthetic_speech
from sampledrec.vault.recorder import Recorder, Vault

from .recording import PCM, RECORD_REGULATED, new_store, write_call
from .softhsm import SoftHsm

AT = "2030-03-04T10:00:00Z"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return new_store(tmp_path, RECORD_REGULATED)


@pytest.fixture
def opened(store: Store) -> Iterator[tuple[Store, DecisionLog, Sampler, Vault, FixedClock]]:
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        yield store, log, store.sampler(clock=clock, log=log), vault, clock


def selected(sampler: Sampler, ref: str = "call-1") -> Decision:
    d = sampler.decide(ref, {"queue": "regulated", "agent": "a7"})
    assert d.record
    return d


record = write_call


def test_round_trip_and_bit_exact_export(opened: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    _, _, sampler, vault, _ = opened
    audio = synthetic_speech(2.5, seed=1)
    rid = record(vault, selected(sampler), audio)
    qa = Principal("qa-lead", ("supervisor",))
    got = vault.open(rid, qa)
    assert got.audio == audio and got.format == PCM
    assert vault.read_range(rid, 500, 1500, qa) == audio[8000:24000]
    out = vault.export(rid, tmp_path / "out.wav", qa)
    assert out.read_bytes() == encode_wav(PCM, audio)  # a PCM16 recording exports bit-exact
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    row = vault.catalog.get(rid)
    assert row is not None and row.status == "sealed" and row.duration_ms == 2500
    assert row.ciphertext_sha256 and row.decision_index > 0
    from sampledrec.log.format import from_micros

    assert row.bucket == "bucket-" + from_micros(row.expires_at).date().isoformat()


def test_g711_and_numpy_frames(opened: tuple) -> None:  # type: ignore[type-arg]
    _, _, sampler, vault, _ = opened
    fmt = AudioFormat("mulaw", 8000, 1)
    data = bytes(np.random.default_rng(3).integers(0, 256, 16000, dtype=np.uint8))
    with vault.record(selected(sampler), audio_format=fmt, chunk_size=1000) as rec:
        for i in range(0, len(data), 160):
            rec.write(np.frombuffer(data[i : i + 160], dtype=np.uint8))
    assert vault.open(rec.recording_id).audio == data


def test_not_selected_is_refused_and_logged(opened: tuple) -> None:  # type: ignore[type-arg]
    store, log, sampler, vault, _ = opened
    d = sampler.decide("other", {"queue": "ordinary"})
    assert not d.record
    with pytest.raises(NotSelected, match="not selected"):
        vault.record(d, audio_format=PCM)
    log.flush()
    assert any(e.type_name == "record_refused" for e in iter_entries(store.path / "log"))
    assert vault.catalog.find() == []


def test_nothing_on_disk_before_the_decision_is_durable(store: Store) -> None:
    clock = FixedClock(AT)
    with store.open_log(clock=clock, group_commit=3600) as log, Vault(store, log) as vault:
        d = selected(store.sampler(clock=clock, log=log))
        rec = vault.record(d, audio_format=PCM, chunk_size=512)
        row = vault.catalog.get(rec.recording_id)
        assert row is not None and row.status == "open" and row.wrapped_key  # key stored first
        for frame in frames(synthetic_speech(1.0), PCM, 20):
            rec.write(frame)
        assert not on_disk(rec)
        assert not list((store.path / "recordings").rglob("*.sdr"))
        rec.close()  # waits for the decision's entry, then writes
        assert on_disk(rec)
        assert log.is_durable(d.log_ticket or 0)


def test_nothing_on_disk_before_the_recordings_opened_entry_is_durable(store: Store) -> None:
    # The decision is durable, the recording_opened entry not yet (the log waits an hour
    # between group commits): a crash now must not leave audio that recovery would keep for a
    # recording no log entry opened.
    clock = FixedClock(AT)
    with store.open_log(clock=clock, group_commit=3600) as log, Vault(store, log) as vault:
        d = selected(store.sampler(clock=clock, log=log))
        log.wait_durable(d.log_ticket or 0)
        rec = vault.record(d, audio_format=PCM, chunk_size=512)
        for frame in frames(synthetic_speech(1.0), PCM, 20):
            rec.write(frame)
        assert not on_disk(rec)
        assert not list((store.path / "recordings").rglob("*.sdr"))
        rec.close()  # waits for the opened entry, then writes
        assert on_disk(rec)
    opened = [e for e in iter_entries(store.log_storage) if e.type == T_RECORDING_OPENED]
    assert [e.fields["recording_id"] for e in opened] == [rec.recording_id]


def on_disk(rec: Recorder) -> bool:
    return rec.on_disk


def test_pause_keeps_silence_of_the_same_length(opened: tuple) -> None:  # type: ignore[type-arg]
    _, _, sampler, vault, _ = opened
    audio = synthetic_speech(3.0, seed=2)
    with vault.record(selected(sampler), audio_format=PCM) as rec:
        for i, frame in enumerate(frames(audio, PCM, 20)):
            if i == 50:
                rec.pause()
            if i == 100:
                rec.resume()
            rec.write(frame)
    got = vault.open(rec.recording_id).audio
    assert len(got) == len(audio)
    assert got[:16000] == audio[:16000] and got[32000:] == audio[32000:]
    assert got[16000:32000] == bytes(16000)
    assert rec.row.pauses == [(1000, 2000)]


def test_abort_destroys_the_recording(opened: tuple) -> None:  # type: ignore[type-arg]
    store, log, sampler, vault, _ = opened
    rec = vault.record(selected(sampler), audio_format=PCM, chunk_size=512)
    for frame in frames(synthetic_speech(1.0), PCM, 20):
        rec.write(frame)
    rec.abort()
    row = vault.catalog.get(rec.recording_id)
    assert row is not None and row.status == "aborted" and row.wrapped_key is None
    assert not (store.path / "recordings" / row.file).exists()
    with pytest.raises(RecordingExpired):
        vault.open(rec.recording_id)
    log.flush()
    assert any(e.type_name == "recording_aborted" for e in iter_entries(store.path / "log"))


def test_expired_recordings_are_refused_even_without_a_sweep(opened: tuple) -> None:  # type: ignore[type-arg]
    _, _, sampler, vault, clock = opened
    rid = record(vault, selected(sampler), synthetic_speech(0.5))
    row = vault.catalog.get(rid)
    assert row is not None
    later = clock.now() + timedelta(days=93)
    with pytest.raises(RecordingExpired):
        vault.open(rid, at=later)
    assert vault.open(rid, at=clock.now() + timedelta(days=80)).audio


def test_damaged_recordings_fail_closed_and_are_logged(opened: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    store, log, sampler, vault, _ = opened
    rid = record(vault, selected(sampler), synthetic_speech(0.5))
    row = vault.catalog.get(rid)
    assert row is not None
    path = store.path / "recordings" / row.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidRecording):
        vault.open(rid)
    with pytest.raises(InvalidRecording):
        vault.export(rid, tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()  # a failed export leaves no partial output
    with pytest.raises(RecordingNotFound):
        vault.open("no-such-id")
    log.flush()
    outcomes = [
        e.fields.get("outcome")
        for e in iter_entries(store.path / "log", store.keyring)
        if e.type_name == "access"
    ]
    assert "failed" in outcomes and "denied" in outcomes


def test_header_swapped_between_recordings_is_refused(opened: tuple) -> None:  # type: ignore[type-arg]
    store, _, sampler, vault, _ = opened
    a = record(vault, selected(sampler, "a"), synthetic_speech(0.5, seed=1))
    b = record(vault, selected(sampler, "b"), synthetic_speech(0.5, seed=2))
    ra, rb = vault.catalog.get(a), vault.catalog.get(b)
    assert ra is not None and rb is not None
    (store.path / "recordings" / ra.file).write_bytes(
        (store.path / "recordings" / rb.file).read_bytes()
    )
    with pytest.raises(InvalidRecording):
        vault.open(a)


def test_every_access_is_logged_with_its_outcome(opened: tuple) -> None:  # type: ignore[type-arg]
    store, log, sampler, vault, _ = opened
    rid = record(vault, selected(sampler), synthetic_speech(0.2))
    vault.recordings(principal=Principal("auditor-1", ("auditor",)))
    vault.open(rid, Principal("qa-1", ("qa_reviewer",)))
    log.flush()
    accesses = [
        e.fields for e in iter_entries(store.path / "log", store.keyring) if e.type_name == "access"
    ]
    assert {"action": "list", "outcome": "granted"}.items() <= accesses[0].items()
    assert accesses[0]["principal"] == "auditor-1"
    assert accesses[1]["principal"] == "qa-1" and accesses[1]["recording_id"] == rid
    assert verify_log(store.path, public_key=store.public_key).ok


CHILD = textwrap.dedent(
    """
    import os, sys
    from sampledrec import FixedClock, Store
    from sampledrec.vault.audio import AudioFormat, frames, synthetic_speech
    from sampledrec.vault.recorder import Recorder, Vault
    store = Store.open(sys.argv[1])
    clock = FixedClock("2030-03-04T10:00:00Z")
    durable = sys.argv[3] == "durable"
    log = store.open_log(clock=clock, group_commit=0.01 if durable else 3600)
    vault = Vault(store, log, clock=clock)
    d = store.sampler(clock=clock, log=log).decide("crash", {"queue": "regulated"})
    rec = vault.record(d, audio_format=AudioFormat("pcm16", 8000, 1), chunk_size=1024)
    if durable:
        log.wait_durable(d.log_ticket)
    for i, frame in enumerate(frames(synthetic_speech(3.0), AudioFormat("pcm16", 8000, 1), 20)):
        rec.write(frame)
        if i == int(sys.argv[2]):
            os._exit(9)  # the process dies mid-call
    """
)


@pytest.mark.parametrize("cut", [5, 80])
def test_crash_mid_call_then_recover(store: Store, tmp_path: Path, cut: int) -> None:
    """Killed before its decision was durable: nothing on disk, destroyed. Killed later: the
    verified prefix is re-sealed as a truncated recording."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    mode = "durable" if cut > 40 else "pending"
    proc = subprocess.run(
        [sys.executable, str(script), str(store.path), str(cut), mode],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr.decode()
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        (row,) = vault.catalog.find(status=["open"])
        outcomes = vault.recover()
        assert outcomes == [(row.recording_id, "truncated" if cut > 40 else "destroyed")]
        fixed = vault.catalog.get(row.recording_id)
        assert fixed is not None
        if cut > 40:
            assert fixed.status == "truncated" and fixed.truncated
            audio = vault.open(row.recording_id).audio
            assert 0 < len(audio) <= (cut + 1) * 320
            assert audio == synthetic_speech(3.0)[: len(audio)]
        else:
            assert fixed.status == "aborted"
    assert verify_log(store.path, public_key=store.public_key).ok


def test_no_plaintext_in_the_store_or_tmpdir(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "tmp"
    empty.mkdir()
    monkeypatch.setenv("TMPDIR", str(empty))
    monkeypatch.setattr(tempfile, "tempdir", None)
    # A known, recognisable signal: every 64-byte window of it is unique.
    signal = np.random.default_rng(11).integers(-20000, 20000, 8000 * 3, dtype=np.int16).tobytes()
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        rid = record(vault, selected(store.sampler(clock=clock, log=log)), signal)
        vault.open(rid)
        vault.read_range(rid, 100, 900)
    assert list(empty.iterdir()) == []
    probes = [signal[i : i + 32] for i in range(0, len(signal) - 32, 997)]
    for path in store.path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(p in data for p in probes), path


def test_recordings_cli(tmp_path: Path, store: Store) -> None:
    from sampledrec.cli.app import main

    wav = tmp_path / "in.wav"
    audio = synthetic_speech(1.0, seed=5)
    wav.write_bytes(encode_wav(PCM, audio))
    import io
    import json

    out = io.StringIO()
    code = main(
        [
            "record",
            "--store",
            str(store.path),
            "--call-ref",
            "c1",
            "--attr",
            "queue=regulated",
            "--audio",
            str(wav),
            "--pause",
            "0.2-0.4",
            "--json",
        ],
        out=out,
    )
    assert code == 0, out.getvalue()
    doc = json.loads(out.getvalue())
    rid = doc["recording"]["id"]
    assert doc["recording"]["pauses"] == [[200, 400]]
    out = io.StringIO()
    assert main(["recordings", "list", "--store", str(store.path), "--json"], out=out) == 0
    assert [r["id"] for r in json.loads(out.getvalue())["recordings"]] == [rid]
    target = tmp_path / "out.wav"
    assert (
        main(["recordings", "export", rid, "--store", str(store.path), "--out", str(target)]) == 0
    )
    exported = target.read_bytes()[44:]
    assert exported[:3200] == audio[:3200] and exported[6400:] == audio[6400:]
    out = io.StringIO()
    code = main(
        [
            "record",
            "--store",
            str(store.path),
            "--call-ref",
            "c2",
            "--attr",
            "queue=x",
            "--audio",
            str(wav),
        ],
        out=out,
    )
    assert code == 1  # not selected: refused, no audio stored
    assert len(list((store.path / "recordings").rglob("*.sdr"))) == 1
    late = "2031-01-01T00:00:00Z"
    code = main(
        [
            "recordings",
            "export",
            rid,
            "--store",
            str(store.path),
            "--out",
            str(tmp_path / "late.wav"),
            "--at",
            late,
        ]
    )
    assert code == 1 and not (tmp_path / "late.wav").exists()


def test_vault_with_an_hsm_keystore(store: Store, softhsm: SoftHsm) -> None:
    """Bucket keys on a real SoftHSM2 token (non-extractable): record, read, crypto-shred."""
    from sampledrec.keys.keystore import Pkcs11KeyStore

    clock = FixedClock(AT)
    with (
        Pkcs11KeyStore(
            softhsm.module, softhsm.label, softhsm.pin, label_prefix=f"vault-{id(store)}-"
        ) as hsm,
        store.open_log(clock=clock) as log,
        Vault(store, log, keystore=hsm, clock=clock) as v,
    ):
        audio = synthetic_speech(1.0, seed=9)
        rid = record(v, selected(store.sampler(clock=clock, log=log)), audio)
        assert v.open(rid).audio == audio
        row = v.catalog.get(rid)
        assert row is not None and hsm.has_bucket(row.bucket)
        assert not (store.keys_path / "buckets").exists()  # nothing in the local keyring
        hsm.destroy_bucket(row.bucket)
        with pytest.raises(RecordingExpired, match="key was destroyed"):
            v.open(rid)
