"""The CLI's recording commands keep the library's promises: ``record`` hears the caller's number
(objections and subject requests apply), times print as ISO 8601 (a held recording has no bogus
expiry date), and WAV input is converted to the recording's format or refused."""

from __future__ import annotations

import io
import json
import shutil
import wave
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sampledrec import Store
from sampledrec.cli.app import main

from .recording import PCM, RECORD_REGULATED, new_store

OBJECTOR = "+33 6 12 34 56 78"
CALLER = "+33 6 98 76 54 32"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return new_store(tmp_path, RECORD_REGULATED)


def run(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def run_json(*argv: str | Path) -> tuple[int, Any]:
    code, out = run(*argv, "--json")
    return code, json.loads(out)


def speech_wav(path: Path, seconds: float = 0.5) -> Path:
    from sampledrec.vault.audio import encode_wav, synthetic_speech

    path.write_bytes(encode_wav(PCM, synthetic_speech(seconds, seed=3)))
    return path


def record(store: Store, tmp_path: Path, ref: str, *extra: str | Path) -> tuple[int, Any]:
    wav = speech_wav(tmp_path / f"{ref}.wav")
    return run_json(
        "record",
        "--store",
        store.path,
        "--call-ref",
        ref,
        "--attr",
        "queue=regulated",
        "--audio",
        wav,
        *extra,
    )


def number_file(tmp_path: Path, name: str, number: str) -> Path:
    path = tmp_path / name
    path.write_text(number + "\n", encoding="utf-8")
    return path


# -- 1. record --caller-file ----------------------------------------------------------------------


def test_record_does_not_record_an_objector(store: Store, tmp_path: Path) -> None:
    objector = number_file(tmp_path, "objector.txt", OBJECTOR)
    code, _ = run("objections", "add", "--store", store.path, "--file", objector)
    assert code == 0
    code, doc = record(store, tmp_path, "call-obj", "--caller-file", objector)
    assert code == 1, doc
    assert doc["recorded"] is False and doc["reason"] == "objection"
    assert not list((store.path / "recordings").rglob("*.sdr"))
    # Another caller of the same queue is recorded (every call of it is).
    other = number_file(tmp_path, "other.txt", CALLER)
    code, doc = record(store, tmp_path, "call-other", "--caller-file", other)
    assert code == 0 and doc["recorded"] is True


def test_a_recording_made_with_caller_file_is_found_by_subject_export(
    store: Store, tmp_path: Path
) -> None:
    caller = number_file(tmp_path, "caller.txt", CALLER)
    code, doc = record(store, tmp_path, "call-1", "--caller-file", caller)
    assert code == 0, doc
    rid = doc["recording"]["id"]
    code, _ = record(store, tmp_path, "call-2")  # no caller: not this person's
    assert code == 0
    out = tmp_path / "person.zip"
    code, exported = run_json(
        "subject",
        "export",
        "--store",
        store.path,
        "--file",
        caller,
        "--out",
        out,
        "--identity-method",
        "account_login",
    )
    assert code == 0, exported
    assert exported["requests"][0]["recordings"] == [rid]
    with zipfile.ZipFile(out) as zf:
        meta = json.loads(zf.read("metadata.json"))
    assert [r["id"] for r in meta["recordings"]] == [rid]


def test_record_caller_file_holds_one_number(store: Store, tmp_path: Path) -> None:
    two = tmp_path / "two.txt"
    two.write_text(f"{CALLER}\n{OBJECTOR}\n", encoding="utf-8")
    code, doc = record(store, tmp_path, "call-2", "--caller-file", two)
    assert code == 2 and "exactly one phone number" in doc["error"]
    assert CALLER not in doc["error"]
    assert not list((store.path / "recordings").rglob("*.sdr"))


# -- 2. times: ISO 8601 everywhere, and a held recording has no bogus date -------------------------

TIME_FIELDS = ("started_at", "ended_at", "expires_at", "expires_at_sealed")


def _is_utc_iso(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.endswith("+00:00")
        and datetime.fromisoformat(value).utcoffset() == timedelta(0)
    )


def test_record_prints_iso_times(store: Store, tmp_path: Path) -> None:
    code, doc = record(store, tmp_path, "call-t")
    assert code == 0, doc
    rec = doc["recording"]
    assert all(_is_utc_iso(rec[name]) for name in TIME_FIELDS), rec
    assert rec["held"] is False
    assert _is_utc_iso(doc["decided_at"])


def test_recordings_list_after_a_hold_without_an_end(store: Store, tmp_path: Path) -> None:
    _, first = record(store, tmp_path, "call-h1")
    _, second = record(store, tmp_path, "call-h2")
    _, third = record(store, tmp_path, "call-h3")
    held, dated, free = (d["recording"]["id"] for d in (first, second, third))
    code, hold = run_json("hold", "add", held, "--store", store.path, "--reason", "case 17")
    assert code == 0, hold
    assert _is_utc_iso(hold["created_at"]) and hold["until"] is None
    until = "2040-01-01T00:00:00+00:00"
    code, hold2 = run_json(
        "hold", "add", dated, "--store", store.path, "--reason", "case 18", "--until", until
    )
    assert code == 0 and hold2["until"] == until
    code, text = run("recordings", "list", "--store", store.path)
    assert code == 0, text
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert lines[held].endswith("held (no end date)")
    assert lines[dated].endswith("2040-01-01 (held)")
    assert "held" not in lines[free]
    code, doc = run_json("recordings", "list", "--store", store.path)
    assert code == 0
    rows = {r["id"]: r for r in doc["recordings"]}
    assert rows[held]["expires_at"] is None and rows[held]["held"] is True
    assert rows[dated]["expires_at"] == until and rows[dated]["held"] is True
    assert rows[free]["held"] is False
    for row in rows.values():
        assert all(_is_utc_iso(row[n]) for n in TIME_FIELDS if row[n] is not None), row
        assert _is_utc_iso(row["expires_at_sealed"])
    code, holds = run_json("hold", "list", "--store", store.path)
    assert code == 0
    for h in holds["holds"]:
        assert _is_utc_iso(h["created_at"])
        assert h["until"] is None or _is_utc_iso(h["until"])


def test_subject_requests_times_are_iso(store: Store, tmp_path: Path) -> None:
    caller = number_file(tmp_path, "caller.txt", CALLER)
    code, _ = run_json(
        "subject",
        "erase",
        "--store",
        store.path,
        "--file",
        caller,
        "--identity-method",
        "signed_letter",
    )
    assert code == 0
    code, doc = run_json("subject", "requests", "--store", store.path, "--all")
    assert code == 0, doc
    assert _is_utc_iso(doc["at"])
    assert doc["requests"]
    for r in doc["requests"]:
        assert _is_utc_iso(r["received_at"]) and _is_utc_iso(r["deadline"])


# -- 4. WAV input: converted to the recording's format, a short file marked truncated -------------

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None,
    reason="ffmpeg is not installed (apt-get install ffmpeg; ./dev test installs it)",
)


def wav_file(path: Path, width: int, rate: int, channels: int, seconds: float = 0.5) -> Path:
    """A 440 Hz tone as a WAV of ``width``-byte samples (8-bit ones unsigned, as WAV has them)."""
    t = np.arange(round(seconds * rate)) / rate
    tone = np.round(12000 * np.sin(2 * np.pi * 440 * t)).astype(np.int32)
    tone = np.repeat(tone, channels)
    if width == 1:
        data = ((tone >> 8) + 128).astype(np.uint8).tobytes()
    else:
        data = b"".join(
            int(v << (8 * width - 16)).to_bytes(width, "little", signed=True) for v in tone
        )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    path.write_bytes(out.getvalue())
    return path


def record_file(store: Store, wav: Path, ref: str, *extra: str) -> tuple[int, Any]:
    return run_json(
        "record", "--store", store.path, "--call-ref", ref, "--attr", "queue=regulated",
        "--audio", wav, *extra,
    )  # fmt: skip


def exported(store: Store, tmp_path: Path, rid: str) -> tuple[int, int, int, int]:
    """(rate, channels, sample width, frames) of the recording exported as WAV."""
    target = tmp_path / f"{rid}.out.wav"
    code, _ = run("recordings", "export", rid, "--store", store.path, "--out", target)
    assert code == 0
    with wave.open(str(target)) as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()


@pytest.mark.parametrize(
    ("width", "rate", "channels"),
    [
        (2, 48000, 2),
        pytest.param(1, 8000, 1, marks=needs_ffmpeg),
        pytest.param(1, 22050, 1, marks=needs_ffmpeg),
        pytest.param(3, 44100, 2, marks=needs_ffmpeg),
    ],
)
def test_record_converts_to_the_recording_format(
    store: Store, tmp_path: Path, width: int, rate: int, channels: int
) -> None:
    wav = wav_file(tmp_path / "in.wav", width, rate, channels)
    code, doc = record_file(store, wav, f"call-{width}-{rate}")
    assert code == 0, doc
    rec = doc["recording"]
    assert rec["audio_format"] == "pcm16/8000/1"
    assert rec["status"] == "sealed" and rec["truncated"] is False
    assert abs(rec["duration_ms"] - 500) <= 1
    rate, channels, width, frames = exported(store, tmp_path, rec["id"])
    assert (rate, channels, width) == (8000, 1, 2) and abs(frames - 4000) <= 4


def test_record_to_a_declared_format(store: Store, tmp_path: Path) -> None:
    wav = wav_file(tmp_path / "in.wav", 2, 48000, 2)
    code, doc = record_file(store, wav, "call-f", "--format", "mulaw/16000/1")
    assert code == 0, doc
    assert doc["recording"]["audio_format"] == "mulaw/16000/1"
    assert doc["source_format"] == "pcm16/48000/2"
    assert abs(doc["recording"]["duration_ms"] - 500) <= 1
    code, text = run("record", "--store", store.path, "--call-ref", "call-g", "--attr",
                     "queue=regulated", "--audio", wav, "--format", "pcm16/8000/1")  # fmt: skip
    assert code == 0 and "converted from pcm16/48000/2" in text
    code, doc = record_file(store, wav, "call-h", "--format", "mp3/8000/1")
    assert code == 2 and "mp3/8000/1" in doc["error"]


def test_record_without_ffmpeg_refuses_8_bit_with_the_reason(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    wav = wav_file(tmp_path / "u8.wav", 1, 8000, 1)
    code, doc = record_file(store, wav, "call-u8")
    assert code != 0 and "8-bit PCM" in doc["error"] and "ffmpeg" in doc["error"]
    assert not list((store.path / "recordings").rglob("*.sdr"))


def test_record_marks_a_truncated_wav(store: Store, tmp_path: Path) -> None:
    wav = wav_file(tmp_path / "cut.wav", 2, 8000, 1, seconds=1.0)
    wav.write_bytes(wav.read_bytes()[:-8000])  # the last half second is missing
    code, doc = record_file(store, wav, "call-cut")
    assert code == 0, doc
    rec = doc["recording"]
    assert rec["truncated"] is True and rec["status"] == "truncated"
    assert abs(rec["duration_ms"] - 500) <= 1
    code, text = run("record", "--store", store.path, "--call-ref", "call-cut2", "--attr",
                     "queue=regulated", "--audio", wav)  # fmt: skip
    assert code == 0 and "TRUNCATED" in text
    code, listed = run_json("recordings", "list", "--store", store.path)
    assert {r["status"] for r in listed["recordings"]} == {"truncated"}
    assert exported(store, tmp_path, rec["id"])[3] == 4000  # what the file held is readable
    Store.open(store.path)  # the store is still fine
