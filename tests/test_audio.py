"""Tests of :mod:`sampledrec.vault.audio` (DESIGN.md §10).

G.711 is checked against known values and against the standard ``audioop`` module (deprecated,
but present on 3.11-3.12, or through ``audioop-lts``). Files in other formats are made by the
real ffmpeg, fed and read through pipes; those tests skip when ffmpeg is absent (``./dev test``
installs it).
"""

from __future__ import annotations

import dataclasses
import doctest
import inspect
import io
import shutil
import struct
import subprocess
import tempfile
import warnings
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sampledrec.vault.audio as audio
from sampledrec.errors import (
    AudioTypeError,
    FFmpegNotFound,
    InvalidArgument,
    InvalidAudio,
    SampledrecError,
)
from sampledrec.vault.audio import (
    AudioFormat,
    alaw_to_pcm16,
    as_bytes,
    decode_wav,
    duration_ms,
    encode_wav,
    frames,
    from_pcm16,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    pcm_convert,
    read_audio_file,
    read_audio_file_as,
    silence,
    synthetic_speech,
    to_pcm16,
    ulaw_to_pcm16,
)

PCM8K = AudioFormat("pcm16", 8000, 1)
MULAW8K = AudioFormat("mulaw", 8000, 1)
ALAW8K = AudioFormat("alaw", 8000, 1)

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None,
    reason="ffmpeg is not installed (apt-get install ffmpeg; ./dev test installs it)",
)


def audioop_module() -> Any:
    """The standard audioop module, imported without its 3.11-3.12 DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
            pytest.skip("audioop is not available (Python 3.13+ without audioop-lts)")
    return audioop


def samples(data: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(data, dtype="<i2")


def random_pcm(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(-32768, 32768, n).astype("<i2").tobytes()


def ffmpeg(*args: str, stdin: bytes = b"") -> bytes:
    """Run ffmpeg with ``stdin`` on its standard input and return its standard output."""
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        input=stdin,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def ffmpeg_from_pcm(pcm: bytes, fmt: AudioFormat, *out: str) -> bytes:
    """Encode PCM16 given on a pipe with ffmpeg; ``out`` names the output options and target."""
    raw_in = ["-f", "s16le", "-ar", str(fmt.sample_rate), "-ac", str(fmt.channels), "-i", "pipe:0"]
    return ffmpeg(*raw_in, *out, stdin=pcm)


def riff(*chunks: tuple[bytes, bytes], declared_size: int | None = None) -> bytes:
    """A RIFF/WAVE file from (id, body) chunks, odd bodies padded as the format requires."""
    body = b"WAVE"
    for chunk_id, data in chunks:
        body += chunk_id + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
    return b"RIFF" + struct.pack("<I", len(body) if declared_size is None else declared_size) + body


def fmt_chunk(tag: int, channels: int, rate: int, bits: int, extra: bytes | None = None) -> bytes:
    block = channels * bits // 8
    head = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    return head if extra is None else head + struct.pack("<H", len(extra)) + extra


# --- AudioFormat ----------------------------------------------------------------------------------


def test_format_is_frozen_and_has_sizes() -> None:
    fmt = AudioFormat("pcm16", 16000, 2)
    assert (fmt.bytes_per_sample, fmt.bytes_per_frame) == (2, 4)
    assert (MULAW8K.bytes_per_sample, MULAW8K.bytes_per_frame) == (1, 1)
    assert AudioFormat("alaw", 8000, 2).bytes_per_frame == 2
    assert fmt.bytes_per_ms(20) == 16000 * 20 // 1000 * 4
    assert MULAW8K.as_pcm16() == PCM8K
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.sample_rate = 8000  # type: ignore[misc]
    assert hash(fmt) == hash(AudioFormat("pcm16", 16000, 2))


@pytest.mark.parametrize(
    ("rate", "ms", "expected_frames"),
    [
        (8000, 20, 160),
        (8000, 0, 0),
        (8000, 0.125, 1),
        (8000, 1.5, 12),
        (11025, 20, 220),  # 220.5 rounds to even
        (11025, 60, 662),  # 661.5 rounds to even
        (16000, 20, 320),
        (22050, 20, 441),
        (44100, 10, 441),
        (48000, 20, 960),
        (48000, 2.5, 120),
        (8000, np.int64(20), 160),
        (8000, np.float32(0.125), 1),
        (8000, 10**12, 8 * 10**12),
    ],
)
def test_bytes_per_ms_rounds_to_the_nearest_frame(
    rate: int, ms: float, expected_frames: int
) -> None:
    fmt = AudioFormat("pcm16", rate, 2)
    assert fmt.bytes_per_ms(ms) == expected_frames * 4
    assert isinstance(fmt.bytes_per_ms(ms), int)


@pytest.mark.parametrize("ms", [-1, -0.5, float("nan"), float("inf"), True, "20", None])
def test_bytes_per_ms_rejects_bad_durations(ms: Any) -> None:
    with pytest.raises(InvalidAudio, match="ms="):
        PCM8K.bytes_per_ms(ms)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("opus", 8000, 1), "encoding='opus' is not supported"),
        (("PCM16", 8000, 1), "encoding='PCM16'"),
        (("pcm16", 7999, 1), "sample_rate=7999 must be between 8000 and 48000"),
        (("pcm16", 48001, 1), "sample_rate=48001"),
        (("mulaw", 8000, 0), "channels=0 must be 1"),
        (("mulaw", 8000, 3), "channels=3"),
    ],
)
def test_format_is_validated_when_built(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(InvalidAudio, match=match):
        AudioFormat(*args)


@pytest.mark.parametrize(("rate", "channels"), [(8000.0, 1), (True, 1), ("8000", 1), (8000, 1.0)])
def test_format_rejects_numbers_of_the_wrong_type(rate: Any, channels: Any) -> None:
    with pytest.raises(AudioTypeError, match="must be a whole number"):
        AudioFormat("pcm16", rate, channels)


def test_format_accepts_numpy_integers_as_plain_ints() -> None:
    fmt = AudioFormat("pcm16", np.int64(16000), np.uint8(2))  # type: ignore[arg-type]
    assert type(fmt.sample_rate) is int and type(fmt.channels) is int
    assert fmt == AudioFormat("pcm16", 16000, 2)
    assert fmt.to_text() == "pcm16/16000/2"


@pytest.mark.parametrize("encoding", ["pcm16", "mulaw", "alaw"])
@pytest.mark.parametrize("rate", [8000, 11025, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_format_text_round_trip(encoding: Any, rate: int, channels: int) -> None:
    fmt = AudioFormat(encoding, rate, channels)
    text = fmt.to_text()
    assert text == f"{encoding}/{rate}/{channels}"
    assert AudioFormat.from_text(text) == fmt


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pcm16",
        "pcm16/8000",
        "pcm16/8000/1/0",
        "PCM16/8000/1",
        "pcm16/8000/1 ",
        " pcm16/8000/1",
        "pcm16/+8000/1",
        "pcm16/-8000/1",
        "pcm16/8000.0/1",
        "pcm16/\u0668\u0660\u0660\u0660/1",  # Arabic-Indic digits
        "pcm16/08000/1",
        "pcm16/8000/01",
        "pcm16/4000/1",
        "ulaw/8000/1",
    ],
)
def test_from_text_accepts_only_the_canonical_form(text: str) -> None:
    with pytest.raises(InvalidAudio):
        AudioFormat.from_text(text)


def test_from_text_rejects_non_text() -> None:
    with pytest.raises(AudioTypeError):
        AudioFormat.from_text(b"pcm16/8000/1")  # type: ignore[arg-type]


def test_audio_errors_sit_under_invalid_argument() -> None:
    assert issubclass(InvalidAudio, InvalidArgument)
    assert issubclass(InvalidAudio, ValueError)
    assert issubclass(AudioTypeError, InvalidAudio)
    assert issubclass(AudioTypeError, TypeError)
    assert issubclass(FFmpegNotFound, InvalidAudio)
    assert issubclass(FFmpegNotFound, SampledrecError)


def test_module_doctests() -> None:
    assert doctest.testmod(audio, raise_on_error=False).failed == 0


def test_all_is_sorted_and_documented() -> None:
    names = audio.__all__

    def ruff_order(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=ruff_order)
    for name in names:
        obj = getattr(audio, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__doc__, name


# --- G.711 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xFE, 8), (0x7E, -8), (0xEF, 132)],
)
def test_ulaw_known_values(code: int, value: int) -> None:
    assert samples(ulaw_to_pcm16(bytes([code])))[0] == value


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0x54, -24)],
)
def test_alaw_known_values(code: int, value: int) -> None:
    assert samples(alaw_to_pcm16(bytes([code])))[0] == value


@pytest.mark.parametrize(
    ("value", "ulaw", "alaw"),
    [(0, 0xFF, 0xD5), (-1, 0x7E, 0x55), (32767, 0x80, 0xAA), (-32768, 0x00, 0x2A), (8, 0xFE, 0xD5)],
)
def test_known_encodings(value: int, ulaw: int, alaw: int) -> None:
    pcm = struct.pack("<h", value)
    assert pcm16_to_ulaw(pcm) == bytes([ulaw])
    assert pcm16_to_alaw(pcm) == bytes([alaw])


def test_decoding_matches_audioop_for_every_code() -> None:
    audioop = audioop_module()
    codes = bytes(range(256))
    assert ulaw_to_pcm16(codes) == audioop.ulaw2lin(codes, 2)
    assert alaw_to_pcm16(codes) == audioop.alaw2lin(codes, 2)


def test_encoding_matches_audioop_for_every_sample() -> None:
    audioop = audioop_module()
    every = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert pcm16_to_ulaw(every) == audioop.lin2ulaw(every, 2)
    assert pcm16_to_alaw(every) == audioop.lin2alaw(every, 2)
    noise = random_pcm(100_000, seed=7)
    assert pcm16_to_ulaw(noise) == audioop.lin2ulaw(noise, 2)
    assert pcm16_to_alaw(noise) == audioop.lin2alaw(noise, 2)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=600).map(lambda b: b[: len(b) & ~1]))
def test_encoding_matches_audioop_for_any_buffer(pcm: bytes) -> None:
    audioop = audioop_module()
    assert pcm16_to_ulaw(pcm) == audioop.lin2ulaw(pcm, 2)
    assert pcm16_to_alaw(pcm) == audioop.lin2alaw(pcm, 2)


def test_codes_survive_decode_then_encode() -> None:
    codes = np.arange(256, dtype=np.uint8)
    ulaw = np.frombuffer(pcm16_to_ulaw(ulaw_to_pcm16(codes.tobytes())), dtype=np.uint8)
    # 0x7F is μ-law's "negative zero": it decodes to 0, which encodes as 0xFF.
    assert np.array_equal(ulaw, np.where(codes == 0x7F, 0xFF, codes))
    alaw = pcm16_to_alaw(alaw_to_pcm16(codes.tobytes()))
    assert alaw == codes.tobytes()


@pytest.mark.parametrize(
    ("encode", "decode", "clip"),
    [(pcm16_to_ulaw, ulaw_to_pcm16, 32124), (pcm16_to_alaw, alaw_to_pcm16, 32256)],
)
def test_round_trip_error_is_within_the_g711_step(encode: Any, decode: Any, clip: int) -> None:
    x = np.arange(-32768, 32768, dtype=np.int64)
    y = samples(decode(encode(x.astype("<i2").tobytes()))).astype(np.int64)
    error = np.abs(y - x)
    inside = np.abs(x) <= clip
    # Logarithmic quantisation: the error is at most half a step, and a step is 1/16 of the
    # segment's lower edge (1/32 for μ-law's bias-shifted segments), never below 16.
    assert np.all(error[inside] <= np.maximum(16, np.abs(x[inside]) // 16))
    assert np.all(np.abs(y[~inside]) == clip)
    # Equal signs, except that the smallest negative values may decode to μ-law's zero.
    assert np.all((np.sign(y) == np.sign(x)) | (np.abs(x) <= 8))
    # Monotonic: a louder sample never decodes quieter.
    assert np.all(np.diff(y) >= 0)


def test_g711_functions_take_any_bytes_like_and_empty_input() -> None:
    pcm = random_pcm(50, seed=1)
    for encode, decode in ((pcm16_to_ulaw, ulaw_to_pcm16), (pcm16_to_alaw, alaw_to_pcm16)):
        codes = encode(pcm)
        assert isinstance(codes, bytes) and len(codes) == 50
        assert encode(bytearray(pcm)) == encode(memoryview(pcm)) == codes
        assert decode(bytearray(codes)) == decode(memoryview(codes)) == decode(codes)
        strided = np.zeros(100, dtype=np.int16)
        strided[::2] = samples(pcm)
        assert encode(strided.data[::2]) == codes  # not contiguous, items of 2 bytes
        assert encode(samples(pcm).reshape(5, 10).data) == codes
        assert encode(b"") == decode(b"") == b""


def test_g711_functions_reject_bad_input() -> None:
    with pytest.raises(InvalidAudio, match="3 bytes, which is not a whole number of 16-bit"):
        pcm16_to_ulaw(b"abc")
    with pytest.raises(InvalidAudio, match="16-bit"):
        pcm16_to_alaw(b"a")
    with pytest.raises(AudioTypeError, match="as_bytes"):
        ulaw_to_pcm16(np.zeros(4, dtype=np.uint8))  # type: ignore[arg-type]
    with pytest.raises(AudioTypeError, match="not str"):
        alaw_to_pcm16("abc")  # type: ignore[arg-type]
    with pytest.raises(AudioTypeError, match="not list"):
        pcm16_to_ulaw([0, 1])  # type: ignore[arg-type]


def test_g711_is_vectorised() -> None:
    # One minute of 8 kHz audio converts in a few milliseconds: no per-sample Python work.
    pcm = random_pcm(480_000, seed=3)
    assert len(ulaw_to_pcm16(pcm16_to_ulaw(pcm))) == len(pcm)
    assert len(alaw_to_pcm16(pcm16_to_alaw(pcm))) == len(pcm)


# --- Conversions, silence, frames, durations ----------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2])
def test_to_and_from_pcm16(channels: int) -> None:
    pcm = random_pcm(320 * channels, seed=channels)
    for encoding, encode in (("mulaw", pcm16_to_ulaw), ("alaw", pcm16_to_alaw)):
        fmt = AudioFormat(encoding, 8000, channels)  # type: ignore[arg-type]
        codes = from_pcm16(pcm, fmt)
        assert codes == encode(pcm)
        assert to_pcm16(codes, fmt) == to_pcm16(bytearray(codes), fmt)
        assert len(to_pcm16(codes, fmt)) == len(pcm)
    fmt = AudioFormat("pcm16", 8000, channels)
    assert to_pcm16(pcm, fmt) == from_pcm16(pcm, fmt) == pcm
    assert type(to_pcm16(bytearray(pcm), fmt)) is bytes


def test_conversions_check_whole_frames_and_types() -> None:
    stereo_pcm = AudioFormat("pcm16", 8000, 2)
    stereo_ulaw = AudioFormat("mulaw", 8000, 2)
    with pytest.raises(InvalidAudio, match="6 bytes, which is not a whole number of 4-byte"):
        to_pcm16(bytes(6), stereo_pcm)
    with pytest.raises(InvalidAudio, match="2-byte frames of mulaw/8000/2"):
        to_pcm16(bytes(3), stereo_ulaw)
    with pytest.raises(InvalidAudio, match="pcm16"):
        from_pcm16(bytes(6), stereo_ulaw)
    with pytest.raises(AudioTypeError, match="AudioFormat"):
        to_pcm16(b"", "pcm16/8000/1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "byte"),
    [(PCM8K, 0x00), (MULAW8K, 0xFF), (ALAW8K, 0xD5), (AudioFormat("mulaw", 16000, 2), 0xFF)],
)
def test_silence(fmt: AudioFormat, byte: int) -> None:
    gap = silence(fmt, 250)
    assert len(gap) == fmt.bytes_per_ms(250)
    assert duration_ms(len(gap), fmt) == 250
    assert set(gap) == {byte}
    assert np.all(np.abs(samples(to_pcm16(gap, fmt))) <= 8)  # A-law has no exact zero
    assert silence(fmt, 0) == b""


def test_silence_rejects_bad_durations() -> None:
    with pytest.raises(InvalidAudio, match="must not be negative"):
        silence(PCM8K, -20)


def test_duration_ms() -> None:
    assert duration_ms(160, MULAW8K) == 20.0
    assert duration_ms(0, PCM8K) == 0.0
    assert duration_ms(441 * 4, AudioFormat("pcm16", 44100, 2)) == 10.0
    assert duration_ms(np.int64(320), PCM8K) == 20.0  # type: ignore[arg-type]
    with pytest.raises(InvalidAudio, match="not a whole number of 2-byte frames"):
        duration_ms(321, PCM8K)
    with pytest.raises(InvalidAudio, match="negative"):
        duration_ms(-2, PCM8K)
    with pytest.raises(AudioTypeError):
        duration_ms(2.0, PCM8K)  # type: ignore[arg-type]


def test_frames_cut_and_join() -> None:
    data = random_pcm(8000 // 50 * 7 + 13, seed=5)  # seven 20 ms frames and 13 samples
    cut = list(frames(data, PCM8K))
    assert [len(f) for f in cut] == [320] * 7 + [26]
    assert all(type(f) is bytes for f in cut)
    assert b"".join(cut) == data
    assert [len(f) for f in frames(bytes(480), MULAW8K, ms=30)] == [240, 240]
    assert [len(f) for f in frames(bytes(480), MULAW8K, 60)] == [480]
    assert [len(f) for f in frames(bytearray(8), AudioFormat("pcm16", 48000, 2), ms=0.25)] == [8]
    assert list(frames(b"", PCM8K)) == []


def test_frames_are_checked_when_called() -> None:
    with pytest.raises(InvalidAudio, match="whole number"):
        frames(bytes(3), PCM8K)  # no iteration needed
    with pytest.raises(InvalidAudio, match="shorter than one sample"):
        frames(bytes(4), PCM8K, ms=0.01)
    with pytest.raises(InvalidAudio, match="negative"):
        frames(bytes(4), PCM8K, ms=-20)


# --- numpy frames -------------------------------------------------------------------------------


def test_as_bytes_accepts_bytes_like() -> None:
    data = bytes(range(8))
    assert as_bytes(data, PCM8K) is data
    assert as_bytes(bytearray(data), PCM8K) == data
    assert type(as_bytes(memoryview(data), PCM8K)) is bytes
    assert as_bytes(memoryview(data)[::2], MULAW8K) == data[::2]


def test_as_bytes_accepts_int16_arrays() -> None:
    mono = np.array([1, -1, 32767, -32768], dtype=np.int16)
    expected = struct.pack("<4h", 1, -1, 32767, -32768)
    assert as_bytes(mono, PCM8K) == expected
    assert as_bytes(mono.reshape(4, 1), PCM8K) == expected
    assert as_bytes(mono.astype(">i2"), PCM8K) == expected  # byte order is normalised
    assert as_bytes(np.repeat(mono, 2)[::2], PCM8K) == expected  # not contiguous
    stereo = np.array([[1, 2], [3, 4]], dtype=np.int16)
    fmt2 = AudioFormat("pcm16", 8000, 2)
    assert as_bytes(stereo, fmt2) == struct.pack("<4h", 1, 2, 3, 4)  # interleaved
    assert as_bytes(np.asfortranarray(stereo), fmt2) == struct.pack("<4h", 1, 2, 3, 4)
    assert as_bytes(np.zeros(0, dtype=np.int16), PCM8K) == b""


def test_as_bytes_accepts_uint8_codes_for_g711() -> None:
    codes = np.array([0xFF, 0x00, 0x80], dtype=np.uint8)
    assert as_bytes(codes, MULAW8K) == b"\xff\x00\x80"
    assert as_bytes(codes.reshape(3, 1), ALAW8K) == b"\xff\x00\x80"
    assert as_bytes(np.zeros((2, 2), dtype=np.uint8), AudioFormat("alaw", 8000, 2)) == bytes(4)


@pytest.mark.parametrize(
    ("frame", "fmt", "match"),
    [
        (np.zeros(4), PCM8K, "dtype float64, but pcm16 audio needs int16; scale float"),
        (np.zeros(4, dtype=np.float32), PCM8K, "float32"),
        (np.zeros(4, dtype=np.int32), PCM8K, "dtype int32, but pcm16 audio needs int16"),
        (np.zeros(4, dtype=np.uint16), PCM8K, "uint16"),
        (np.zeros(4, dtype=np.uint8), PCM8K, "needs int16"),
        (np.zeros(4, dtype=np.int16), MULAW8K, "mulaw audio needs uint8 G.711 codes"),
        (np.zeros(4, dtype=np.int8), ALAW8K, "int8"),
        (np.zeros(4, dtype=bool), ALAW8K, "bool"),
        (np.zeros((4, 2), dtype=np.int16), PCM8K, r"shape \(4, 2\), but 1-channel audio"),
        (np.zeros(4, dtype=np.int16), AudioFormat("pcm16", 8000, 2), r"needs shape \(n, 2\)"),
        (np.zeros((4, 3), dtype=np.int16), AudioFormat("pcm16", 8000, 2), r"\(4, 3\)"),
        (np.zeros((2, 2, 2), dtype=np.int16), AudioFormat("pcm16", 8000, 2), r"\(2, 2, 2\)"),
        (np.int16(3), PCM8K, r"shape \(\)"),
    ],
)
def test_as_bytes_rejects_wrong_arrays(frame: Any, fmt: AudioFormat, match: str) -> None:
    with pytest.raises(InvalidAudio, match=match):
        as_bytes(np.asarray(frame), fmt)


@pytest.mark.parametrize("frame", [[0, 1], "abcd", 3, None, np.int16(3)])
def test_as_bytes_rejects_other_types(frame: Any) -> None:
    with pytest.raises(AudioTypeError, match="must be bytes, bytearray, memoryview or a numpy"):
        as_bytes(frame, PCM8K)


def test_as_bytes_checks_whole_frames() -> None:
    with pytest.raises(InvalidAudio, match="frame has 3 bytes"):
        as_bytes(b"abc", PCM8K)
    with pytest.raises(InvalidAudio, match="frame has 2 bytes"):
        as_bytes(bytes(2), AudioFormat("pcm16", 8000, 2))


# --- pydub conversions ----------------------------------------------------------------------------


def test_pcm_convert_channels() -> None:
    mono = struct.pack("<3h", 100, -200, 300)
    fmt, stereo = pcm_convert(mono, PCM8K, to_channels=2)
    assert fmt == AudioFormat("pcm16", 8000, 2)
    assert stereo == struct.pack("<6h", 100, 100, -200, -200, 300, 300)
    fmt, back = pcm_convert(struct.pack("<4h", 100, 300, -100, -300), fmt, to_channels=1)
    assert fmt == PCM8K
    assert back == struct.pack("<2h", 200, -200)


def test_pcm_convert_rate() -> None:
    pcm = synthetic_speech(0.5, seed=2)
    fmt, up = pcm_convert(pcm, PCM8K, to_rate=16000)
    assert fmt == AudioFormat("pcm16", 16000, 1)
    assert abs(len(up) - 2 * len(pcm)) <= 4
    fmt, both = pcm_convert(pcm, PCM8K, to_rate=16000, to_channels=2)
    assert fmt == AudioFormat("pcm16", 16000, 2) and abs(len(both) - 4 * len(pcm)) <= 8
    assert pcm_convert(pcm, PCM8K) == (PCM8K, pcm)
    assert pcm_convert(bytearray(pcm), PCM8K, to_rate=8000) == (PCM8K, pcm)


def test_pcm_convert_validates() -> None:
    with pytest.raises(InvalidAudio, match="takes PCM16 audio, not mulaw"):
        pcm_convert(bytes(4), MULAW8K, to_rate=16000)
    with pytest.raises(InvalidAudio, match="sample_rate=96000"):
        pcm_convert(bytes(4), PCM8K, to_rate=96000)
    with pytest.raises(InvalidAudio, match="channels=6"):
        pcm_convert(bytes(4), PCM8K, to_channels=6)
    with pytest.raises(InvalidAudio, match="whole number"):
        pcm_convert(bytes(3), PCM8K, to_channels=2)


# --- WAV -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt",
    [
        PCM8K,
        AudioFormat("pcm16", 8000, 2),
        AudioFormat("pcm16", 16000, 1),
        AudioFormat("pcm16", 48000, 2),
    ],
)
@pytest.mark.parametrize("nframes", [0, 1, 1001])
def test_wav_round_trip_is_bit_exact(fmt: AudioFormat, nframes: int) -> None:
    pcm = random_pcm(nframes * fmt.channels, seed=nframes)
    wav = encode_wav(fmt, pcm)
    assert decode_wav(wav) == (fmt, pcm)
    assert decode_wav(bytearray(wav)) == (fmt, pcm)
    with wave.open(io.BytesIO(wav)) as w:  # a plain WAV any reader understands
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (
            fmt.channels,
            2,
            fmt.sample_rate,
        )
        assert w.getnframes() == nframes


def test_encode_wav_writes_pcm16_only() -> None:
    with pytest.raises(InvalidAudio, match="encode_wav writes PCM16 WAV files, but fmt is mulaw"):
        encode_wav(MULAW8K, bytes(4))
    with pytest.raises(InvalidAudio, match="whole number"):
        encode_wav(AudioFormat("pcm16", 8000, 2), bytes(6))


@pytest.mark.parametrize(("tag", "encoding"), [(7, "mulaw"), (6, "alaw")])
@pytest.mark.parametrize("channels", [1, 2])
def test_decode_g711_wav_written_by_hand(tag: int, encoding: Any, channels: int) -> None:
    codes = bytes(range(256)) * 2 + b"\x01" * channels
    wav = riff(
        (b"fmt ", fmt_chunk(tag, channels, 8000, 8, extra=b"")),
        (b"fact", struct.pack("<I", len(codes) // channels)),
        (b"LIST", b"INFOISFT\x03\x00\x00\x00me\x00"),  # odd size: padded
        (b"data", codes),
    )
    assert decode_wav(wav) == (AudioFormat(encoding, 8000, channels), codes)


def test_decode_extensible_wav() -> None:
    pcm = random_pcm(20, seed=4)
    guid_tail = bytes.fromhex("000000001000800000aa00389b71")
    extra = struct.pack("<HI", 16, 3) + struct.pack("<H", 1) + guid_tail
    wav = riff((b"fmt ", fmt_chunk(0xFFFE, 2, 16000, 16, extra=extra)), (b"data", pcm))
    assert decode_wav(wav) == (AudioFormat("pcm16", 16000, 2), pcm)
    ulaw_extra = struct.pack("<HI", 8, 4) + struct.pack("<H", 7) + guid_tail
    wav = riff((b"fmt ", fmt_chunk(0xFFFE, 1, 8000, 8, extra=ulaw_extra)), (b"data", b"\xff\x00"))
    assert decode_wav(wav) == (MULAW8K, b"\xff\x00")


def test_decode_wav_streamed_without_sizes() -> None:
    # A WAV written to a pipe cannot state its sizes: its data then runs to the end.
    codes = b"\x12\x34\x56"
    header = riff((b"fmt ", fmt_chunk(7, 1, 8000, 8)), declared_size=0xFFFFFFFF)
    assert decode_wav(header + b"data" + b"\xff\xff\xff\xff" + codes) == (MULAW8K, codes)
    assert decode_wav(header + b"data" + bytes(4) + codes) == (MULAW8K, b"")  # empty


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["pcm16", "mulaw", "extensible"]),
    st.integers(0, 120),
    st.lists(st.tuples(st.integers(0, 119), st.integers(0, 255)), max_size=3),
)
def test_damaged_wav_raises_only_invalid_audio(
    kind: str, cut: int, flips: list[tuple[int, int]]
) -> None:
    if kind == "pcm16":
        wav = encode_wav(PCM8K, bytes(range(40)))
    elif kind == "mulaw":
        wav = riff((b"fmt ", fmt_chunk(7, 1, 8000, 8, extra=b"")), (b"data", bytes(range(41))))
    else:
        extra = struct.pack("<HI", 16, 4) + struct.pack("<H", 1)
        extra += bytes.fromhex("000000001000800000aa00389b71")
        wav = riff((b"fmt ", fmt_chunk(0xFFFE, 1, 8000, 16, extra=extra)), (b"data", bytes(40)))
    damaged = bytearray(wav[:cut] if cut < len(wav) else wav)
    for at, value in flips:
        if at < len(damaged):
            damaged[at] = value
    try:
        fmt, data = decode_wav(bytes(damaged))
    except InvalidAudio:
        return
    assert len(data) % fmt.bytes_per_frame == 0


def test_decode_wav_keeps_whole_frames_of_a_truncated_file() -> None:
    wav = riff((b"fmt ", fmt_chunk(6, 2, 8000, 8)), (b"data", b"\x01\x02\x03\x04\x05"))
    assert decode_wav(wav[:-3]) == (AudioFormat("alaw", 8000, 2), b"\x01\x02")


@pytest.mark.parametrize(
    ("wav", "match"),
    [
        (b"", "not a WAV file"),
        (b"RIFX\0\0\0\0WAVE", "not a WAV file"),
        (b"ID3\x03" + bytes(100), "not a WAV file"),
        (riff((b"data", b"\xff")), "no fmt chunk"),
        (riff((b"fmt ", fmt_chunk(7, 1, 8000, 8))), "no data chunk"),
        (riff((b"fmt ", fmt_chunk(7, 1, 8000, 8)[:14]), (b"data", b"\xff")), "truncated"),
        (riff((b"fmt ", fmt_chunk(3, 1, 8000, 32)), (b"data", bytes(4))), "tag 0x0003"),
        (riff((b"fmt ", fmt_chunk(2, 1, 8000, 4)), (b"data", bytes(4))), "tag 0x0002"),
        (riff((b"fmt ", fmt_chunk(7, 1, 8000, 16)), (b"data", bytes(4))), "16-bit mulaw"),
        (riff((b"fmt ", fmt_chunk(6, 3, 8000, 8)), (b"data", bytes(3))), "channels=3"),
        (riff((b"fmt ", fmt_chunk(7, 1, 96000, 8)), (b"data", bytes(3))), "sample_rate=96000"),
        (
            riff((b"fmt ", struct.pack("<HHIIHH", 7, 1, 8000, 8000, 2, 8)), (b"data", b"\xff")),
            "inconsistent",
        ),
        (
            riff((b"fmt ", fmt_chunk(0xFFFE, 1, 8000, 16, extra=bytes(22))), (b"data", bytes(2))),
            "unknown subformat",
        ),
    ],
)
def test_decode_wav_rejects_what_it_cannot_read(wav: bytes, match: str) -> None:
    with pytest.raises(InvalidAudio, match=match):
        decode_wav(wav)


@pytest.mark.parametrize("width", [1, 3, 4])
def test_decode_wav_rejects_other_pcm_widths(width: int) -> None:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(bytes(width * 4))
    with pytest.raises(InvalidAudio, match=f"{8 * width}-bit PCM samples; only 16-bit PCM"):
        decode_wav(out.getvalue())


@needs_ffmpeg
@pytest.mark.parametrize(("codec", "encoding"), [("pcm_mulaw", "mulaw"), ("pcm_alaw", "alaw")])
def test_decode_g711_wav_made_by_ffmpeg(codec: str, encoding: Any) -> None:
    pcm = synthetic_speech(1.0, seed=11)
    wav = ffmpeg_from_pcm(pcm, PCM8K, "-c:a", codec, "-f", "wav", "pipe:1")
    fmt, codes = decode_wav(wav)
    assert fmt == AudioFormat(encoding, 8000, 1)
    assert len(codes) == 8000
    # Our decoder agrees with ffmpeg's on ffmpeg's codes...
    decoded_by_ffmpeg = ffmpeg("-f", "wav", "-i", "pipe:0", "-f", "s16le", "pipe:1", stdin=wav)
    assert to_pcm16(codes, fmt) == decoded_by_ffmpeg
    # ...and ffmpeg's encoder (which rounds to the nearest level, where G.711 truncates) lands
    # within one quantisation step of ours.
    ours = samples(to_pcm16(from_pcm16(pcm, fmt), fmt)).astype(int)
    theirs = samples(decoded_by_ffmpeg).astype(int)
    assert np.all(np.abs(ours - theirs) <= np.maximum(16, np.abs(samples(pcm)) // 8))


# --- Files ----------------------------------------------------------------------------------------


@pytest.fixture
def no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """TMPDIR points to an empty folder (for this process and for ffmpeg), and creating a
    temporary file in this process fails; the folder must still be empty afterwards."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert tempfile.gettempdir() == str(folder)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a temporary file was requested")

    for name in (
        "mkstemp",
        "mkdtemp",
        "NamedTemporaryFile",
        "TemporaryFile",
        "SpooledTemporaryFile",
    ):
        monkeypatch.setattr(tempfile, name, refuse)
    yield folder
    assert list(folder.iterdir()) == []


def test_read_wav_file_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_temp_files: Path
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("ffmpeg must not be needed for this WAV")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    fmt = AudioFormat("pcm16", 16000, 2)
    pcm = random_pcm(16000, seed=9)
    path = tmp_path / "call.wav"
    path.write_bytes(encode_wav(fmt, pcm))
    assert read_audio_file(path) == (fmt, pcm)
    assert read_audio_file(str(path)) == (fmt, pcm)
    # A WAV is known by its content, whatever its name.
    other = tmp_path / "call.mp3"
    other.write_bytes(riff((b"fmt ", fmt_chunk(7, 1, 8000, 8)), (b"data", b"\x01\x02")))
    assert read_audio_file(other) == (MULAW8K, b"\x01\x02")


def test_read_wav_file_with_conversion(tmp_path: Path, no_temp_files: Path) -> None:
    codes = pcm16_to_alaw(synthetic_speech(0.5, seed=4))
    path = tmp_path / "call.wav"
    path.write_bytes(riff((b"fmt ", fmt_chunk(6, 1, 8000, 8)), (b"data", codes)))
    assert read_audio_file(path) == (ALAW8K, codes)
    assert read_audio_file(path, channels=1) == (PCM8K, alaw_to_pcm16(codes))
    fmt, pcm = read_audio_file(path, sample_rate=16000, channels=2)
    assert fmt == AudioFormat("pcm16", 16000, 2)
    assert abs(len(pcm) - 8 * len(codes)) <= 16


def test_read_audio_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_audio_file(tmp_path / "missing.wav")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(riff((b"fmt ", fmt_chunk(7, 1, 8000, 8))))
    with pytest.raises(InvalidAudio, match=r"broken\.wav: the WAV file has no data chunk"):
        read_audio_file(broken)
    with pytest.raises(InvalidAudio, match="sample_rate=4000"):
        read_audio_file(broken, sample_rate=4000)
    with pytest.raises(InvalidAudio, match="channels=0"):
        read_audio_file(broken, channels=0)


def test_read_audio_file_without_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    flac = tmp_path / "call.flac"
    flac.write_bytes(b"fLaC" + bytes(100))
    with pytest.raises(
        FFmpegNotFound, match=r"call\.flac is not a WAV file.*apt-get install ffmpeg"
    ):
        read_audio_file(flac)
    wav24 = tmp_path / "call24.wav"
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(8000)
        w.writeframes(bytes(12))
    wav24.write_bytes(out.getvalue())
    with pytest.raises(FFmpegNotFound, match=r"24-bit PCM.*needs ffmpeg"):
        read_audio_file(wav24)
    # WAV files sampledrec reads itself need no ffmpeg.
    wav16 = tmp_path / "call16.wav"
    wav16.write_bytes(encode_wav(PCM8K, bytes(8)))
    assert read_audio_file(wav16) == (PCM8K, bytes(8))


@needs_ffmpeg
@pytest.mark.parametrize(
    "fmt", [PCM8K, AudioFormat("pcm16", 16000, 2), AudioFormat("pcm16", 11025, 1)]
)
def test_read_flac_is_bit_exact_and_writes_no_temp_file(
    tmp_path: Path, fmt: AudioFormat, no_temp_files: Path
) -> None:
    mono = synthetic_speech(1.5, sample_rate=fmt.sample_rate, seed=fmt.sample_rate)
    if fmt.channels == 2:
        _, pcm = pcm_convert(mono, AudioFormat("pcm16", fmt.sample_rate, 1), to_channels=2)
    else:
        pcm = mono
    path = tmp_path / "call.flac"
    ffmpeg_from_pcm(pcm, fmt, "-c:a", "flac", str(path))
    assert read_audio_file(path) == (fmt, pcm)


@needs_ffmpeg
def test_read_lossy_and_unusual_files(tmp_path: Path, no_temp_files: Path) -> None:
    pcm = synthetic_speech(1.0, seed=21)
    ogg = tmp_path / "call.ogg"
    ffmpeg_from_pcm(pcm, PCM8K, "-c:a", "libvorbis", "-q:a", "8", str(ogg))
    fmt, decoded = read_audio_file(ogg)
    assert fmt == PCM8K
    assert abs(len(decoded) - len(pcm)) <= 2 * 256
    n = min(len(decoded), len(pcm)) // 2
    correlation = np.corrcoef(samples(pcm)[:n], samples(decoded)[:n])[0, 1]
    assert correlation > 0.9
    # 24-bit WAV: converted by ffmpeg, exact for 16-bit content.
    wav24 = tmp_path / "call24.wav"
    ffmpeg_from_pcm(pcm, PCM8K, "-c:a", "pcm_s24le", str(wav24))
    assert read_audio_file(wav24) == (PCM8K, pcm)
    # 96 kHz 5.1: brought to the nearest usable format.
    surround = tmp_path / "surround.flac"
    ffmpeg_from_pcm(pcm, PCM8K, "-ar", "96000", "-ac", "6", "-c:a", "flac", str(surround))
    fmt, decoded = read_audio_file(surround)
    assert fmt == AudioFormat("pcm16", 48000, 2)
    assert abs(len(decoded) - 6 * 4 * len(pcm) // 2) <= 4 * 64
    # An unusual rate is resampled to a usual one; explicit targets are honoured by ffmpeg.
    odd = tmp_path / "odd:name.flac"  # a colon must not be read as a protocol
    ffmpeg_from_pcm(pcm, PCM8K, "-ar", "9000", "-c:a", "flac", str(odd))
    assert read_audio_file(odd)[0] == PCM8K
    fmt, decoded = read_audio_file(odd, sample_rate=16000, channels=2)
    assert fmt == AudioFormat("pcm16", 16000, 2)
    assert abs(len(decoded) - 4 * len(pcm)) <= 4 * 64


@needs_ffmpeg
def test_read_audio_file_reports_what_ffmpeg_says(tmp_path: Path, no_temp_files: Path) -> None:
    junk = tmp_path / "notes.mp3"
    junk.write_text("these are not audio samples\n" * 20)
    with pytest.raises(InvalidAudio, match=r"notes\.mp3: ffmpeg cannot decode it: .+"):
        read_audio_file(junk)
    video_only = tmp_path / "still.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=16x16", "-frames:v", "1", str(video_only))
    with pytest.raises(InvalidAudio, match=r"still\.png: ffmpeg cannot decode it"):
        read_audio_file(video_only)


# --- Files for a recording: converted to its format, marked when cut short ------------------------


def sine(seconds: float, rate: int, hz: float = 440.0, amplitude: float = 12000.0) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def dominant_hz(pcm: bytes, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples(pcm).astype(float)))
    return float(np.argmax(spectrum) * rate / (len(pcm) // 2))


def wav_of_width(width: int, rate: int, channels: int, frames_: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames_)
    return out.getvalue()


def test_read_as_converts_48k_stereo_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_temp_files: Path
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("ffmpeg must not be needed for a 16-bit WAV")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    mono = sine(1.0, 48000)
    _, stereo = pcm_convert(mono, AudioFormat("pcm16", 48000, 1), to_channels=2)
    path = tmp_path / "wideband.wav"
    path.write_bytes(encode_wav(AudioFormat("pcm16", 48000, 2), stereo))
    got = read_audio_file_as(path, PCM8K)
    assert got.format == PCM8K and got.source == AudioFormat("pcm16", 48000, 2)
    assert not got.truncated
    assert abs(len(got.audio) - 2 * 8000) <= 4
    assert abs(dominant_hz(got.audio, 8000) - 440) < 2
    peak = np.abs(samples(got.audio)).max()
    assert 11000 < peak <= 12100  # the level is kept
    # To G.711: the same audio, encoded.
    ulaw = read_audio_file_as(path, MULAW8K)
    assert ulaw.format == MULAW8K and ulaw.audio == pcm16_to_ulaw(got.audio)
    # Audio already in the format asked for is kept bit-exact, G.711 included.
    same = tmp_path / "same.wav"
    pcm = random_pcm(800, seed=2)
    same.write_bytes(encode_wav(PCM8K, pcm))
    assert read_audio_file_as(same, PCM8K).audio == pcm
    codes = bytes(range(256))
    g711 = tmp_path / "g711.wav"
    g711.write_bytes(riff((b"fmt ", fmt_chunk(7, 1, 8000, 8)), (b"data", codes)))
    assert read_audio_file_as(g711, MULAW8K).audio == codes
    assert read_audio_file_as(g711, PCM8K).audio == ulaw_to_pcm16(codes)


@needs_ffmpeg
def test_read_as_converts_8_bit_unsigned(tmp_path: Path, no_temp_files: Path) -> None:
    pcm = sine(0.5, 8000)
    unsigned = ((samples(pcm).astype(np.int32) >> 8) + 128).astype(np.uint8).tobytes()
    path = tmp_path / "u8.wav"
    path.write_bytes(wav_of_width(1, 8000, 1, unsigned))
    got = read_audio_file_as(path, PCM8K)
    assert got.format == PCM8K and not got.truncated
    # Unsigned 8-bit samples (128 is silence) become signed 16-bit ones: (x - 128) * 256.
    expected = (np.frombuffer(unsigned, np.uint8).astype(np.int32) - 128) * 256
    assert np.array_equal(samples(got.audio).astype(np.int32), expected)


@needs_ffmpeg
def test_read_as_converts_24_bit(tmp_path: Path, no_temp_files: Path) -> None:
    pcm = sine(0.5, 16000)
    wide = b"".join(b"\x00" + pcm[i : i + 2] for i in range(0, len(pcm), 2))
    path = tmp_path / "s24.wav"
    path.write_bytes(wav_of_width(3, 16000, 1, wide))
    got = read_audio_file_as(path, PCM8K)
    assert got.format == PCM8K and got.source == AudioFormat("pcm16", 16000, 1)
    assert abs(len(got.audio) - 8000) <= 4
    assert abs(dominant_hz(got.audio, 8000) - 440) < 2
    assert read_audio_file_as(path, got.source).audio == pcm  # 16-bit content: exact


def test_read_as_refuses_other_widths_without_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    for width in (1, 3):
        path = tmp_path / f"w{width}.wav"
        path.write_bytes(wav_of_width(width, 8000, 1, bytes(width * 80)))
        with pytest.raises(FFmpegNotFound, match=f"{8 * width}-bit PCM.*needs ffmpeg"):
            read_audio_file_as(path, PCM8K)


def test_read_as_marks_a_truncated_wav(tmp_path: Path, no_temp_files: Path) -> None:
    pcm = random_pcm(8000, seed=7)
    whole = encode_wav(PCM8K, pcm)
    path = tmp_path / "call.wav"
    path.write_bytes(whole)
    assert read_audio_file_as(path, PCM8K).truncated is False
    path.write_bytes(whole[:-1001])  # cut mid-sample
    got = read_audio_file_as(path, PCM8K)
    assert got.truncated is True
    assert got.audio == pcm[: (len(pcm) - 1001) // 2 * 2]  # every whole sample kept
    # G.711 parsed by hand, and a WAV streamed without sizes (never truncated).
    codes = bytes(range(200))
    g711 = riff((b"fmt ", fmt_chunk(6, 1, 8000, 8)), (b"data", codes))
    path.write_bytes(g711[:-50])
    assert read_audio_file_as(path, ALAW8K) == audio.AudioFile(ALAW8K, codes[:150], ALAW8K, True)
    header = riff((b"fmt ", fmt_chunk(7, 1, 8000, 8)), declared_size=0xFFFFFFFF)
    path.write_bytes(header + b"data" + b"\xff\xff\xff\xff" + codes)
    assert read_audio_file_as(path, MULAW8K).truncated is False


@needs_ffmpeg
def test_read_as_marks_a_truncated_wav_that_ffmpeg_decodes(
    tmp_path: Path, no_temp_files: Path
) -> None:
    pcm = sine(0.5, 8000)
    wide = b"".join(b"\x00" + pcm[i : i + 2] for i in range(0, len(pcm), 2))
    path = tmp_path / "s24.wav"
    path.write_bytes(wav_of_width(3, 8000, 1, wide)[:-300])
    got = read_audio_file_as(path, PCM8K)
    assert got.truncated is True
    assert got.audio == pcm[: len(got.audio)] and len(got.audio) == len(pcm) - 200


# --- Synthetic speech ---------------------------------------------------------------------------


def test_synthetic_speech_is_deterministic() -> None:
    first = synthetic_speech(3.0, seed=5)
    assert first == synthetic_speech(3.0, seed=5)
    assert first != synthetic_speech(3.0, seed=6)
    assert len(first) == 2 * 24000
    assert len(synthetic_speech(0.5, sample_rate=44100)) == 2 * 22050
    assert len(synthetic_speech(1 / 3, sample_rate=11025)) == 2 * 3675
    assert synthetic_speech(0) == b""
    assert synthetic_speech(0.00001) == b""


def test_synthetic_speech_sounds_like_speech() -> None:
    rate = 8000
    x = samples(synthetic_speech(20.0, sample_rate=rate, seed=1)).astype(np.float64)
    rms = float(np.sqrt(np.mean(x**2)))
    assert 500 < rms < 5000  # about -26 dBFS: a normal speech level
    assert np.max(np.abs(x)) < 32767  # no clipping
    window = rate // 100  # 10 ms
    levels = np.sqrt(np.mean(x[: len(x) // window * window].reshape(-1, window) ** 2, axis=1))
    assert np.mean(levels < rms / 20) > 0.1  # pauses and gaps between syllables
    assert np.mean(levels > rms) > 0.2  # loud syllable nuclei
    # Syllables: the level rises and falls 3 to 6 times a second, so most of the envelope's
    # modulation lies between 2 and 8 Hz (pauses add some below).
    power = np.abs(np.fft.rfft(levels - levels.mean())) ** 2
    modulation = np.fft.rfftfreq(len(levels), d=0.01)
    syllabic = power[(modulation >= 2) & (modulation < 8)].sum()
    assert syllabic > 0.5 * power[(modulation >= 0.5) & (modulation < 20)].sum()
    # Voice: the loudest 40 ms has a period between 1/240 s and 1/90 s.
    centre = int(np.argmax(levels)) * window
    frame = x[max(centre - 160, 0) : centre + 160]
    frame = frame - frame.mean()
    autocorrelation = np.correlate(frame, frame, mode="full")[len(frame) - 1 :]
    lags = np.arange(rate // 240, rate // 90)
    f0 = rate / lags[np.argmax(autocorrelation[lags])]
    assert 90 <= f0 <= 240
    # Telephone band: nearly all the energy is below 4 kHz (here, below 3.4 kHz).
    power = np.abs(np.fft.rfft(x)) ** 2
    freq = np.fft.rfftfreq(len(x), d=1 / rate)
    assert power[freq < 3400].sum() / power.sum() > 0.95


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seconds": -1.0}, InvalidAudio, "seconds=-1.0"),
        ({"seconds": float("nan")}, InvalidAudio, "seconds=nan"),
        ({"seconds": True}, InvalidAudio, "seconds=True"),
        ({"seconds": 1.0, "sample_rate": 4000}, InvalidAudio, "sample_rate=4000"),
        ({"seconds": 1.0, "seed": 1.5}, AudioTypeError, "seed=1.5"),
    ],
)
def test_synthetic_speech_validates(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        synthetic_speech(**kwargs)


def test_synthetic_speech_is_fast() -> None:
    import time

    start = time.perf_counter()
    pcm = synthetic_speech(60.0, seed=3)
    assert len(pcm) == 2 * 480_000
    assert time.perf_counter() - start < 3.0  # typically ~0.2 s
