"""Audio in memory: formats, G.711, WAV, silence, frames and decoding files without temporary files.

This module owns everything sampledrec knows about audio samples (DESIGN.md §10):

* :class:`AudioFormat`, the encoding, sample rate and channel count of a recording, with a text
  form (``"pcm16/8000/1"``) for the recording container's header;
* G.711 μ-law and A-law (ITU-T G.711) through numpy lookup tables: 256-entry decode tables and
  65536-entry encode tables, built once, so that whole buffers convert with one indexing;
* WAV in memory (:func:`decode_wav`, :func:`encode_wav`), silence, 20 ms frames, durations and
  numpy arrays accepted as frames (:func:`as_bytes`);
* :func:`read_audio_file`, which decodes WAV in memory and anything else (MP3, Ogg, FLAC...)
  through ``ffmpeg`` over a pipe, and :func:`read_audio_file_as`, which also converts the audio
  to a recording's format and tells whether the file was cut short (:class:`AudioFile`);
* :func:`synthetic_speech`, a deterministic speech-like signal for demos and tests.

Plaintext audio never touches the disk here: pydub's ``from_file``/``export`` write temporary
files for anything ffmpeg handles, so they are never used. pydub serves only for in-memory
conversions (:func:`pcm_convert`) and is imported when first needed.

PCM16 means signed 16-bit little-endian samples, channels interleaved, whatever the host.

Examples
--------
>>> fmt = AudioFormat("mulaw", 8000, 1)
>>> fmt.to_text()
'mulaw/8000/1'
>>> AudioFormat.from_text("pcm16/16000/2").bytes_per_frame
4
>>> pcm16_to_ulaw(b"\\x00\\x00") == b"\\xff"
True
>>> len(silence(fmt, 20)), [len(f) for f in frames(silence(fmt, 50), fmt)]
(160, [160, 160, 80])
"""

from __future__ import annotations

import dataclasses
import io
import math
import operator
import os
import shutil
import struct
import subprocess
import sys
import warnings
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, get_args

import numpy as np
import numpy.typing as npt

from ..errors import AudioTypeError, FFmpegNotFound, InvalidAudio

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "WAV_HEADER_BYTES",
    "AudioFile",
    "AudioFormat",
    "BytesLike",
    "Encoding",
    "alaw_to_pcm16",
    "as_bytes",
    "decode_wav",
    "duration_ms",
    "encode_wav",
    "frames",
    "from_pcm16",
    "pcm16_to_alaw",
    "pcm16_to_ulaw",
    "pcm_convert",
    "read_audio_file",
    "read_audio_file_as",
    "silence",
    "synthetic_speech",
    "to_pcm16",
    "ulaw_to_pcm16",
    "wav_header",
]

Encoding: TypeAlias = Literal["pcm16", "mulaw", "alaw"]
"""How samples are stored: 16-bit linear PCM, or 8-bit G.711 μ-law or A-law."""

BytesLike: TypeAlias = bytes | bytearray | memoryview
"""Raw audio bytes, in the encoding of an :class:`AudioFormat`."""

MIN_SAMPLE_RATE: Final = 8000
MAX_SAMPLE_RATE: Final = 48000

_ENCODINGS: Final[tuple[str, ...]] = get_args(Encoding)
_SILENCE_BYTE: Final = {"pcm16": 0x00, "mulaw": 0xFF, "alaw": 0xD5}

# WAVE format tags (RFC 2361) and the tail shared by every WAVE_FORMAT_EXTENSIBLE subformat GUID.
_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_ALAW: Final = 0x0006
_WAVE_FORMAT_MULAW: Final = 0x0007
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_KSDATAFORMAT_TAIL: Final = bytes.fromhex("000000001000800000aa00389b71")
_WAV_ENCODINGS: Final[dict[int, Encoding]] = {
    _WAVE_FORMAT_PCM: "pcm16",
    _WAVE_FORMAT_ALAW: "alaw",
    _WAVE_FORMAT_MULAW: "mulaw",
}


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """The encoding, sample rate and channel count of some audio.

    Parameters
    ----------
    encoding
        ``"pcm16"`` (signed 16-bit little-endian), ``"mulaw"`` or ``"alaw"`` (G.711, one byte
        per sample).
    sample_rate
        Samples per second and per channel, from 8000 to 48000.
    channels
        1 (mono) or 2 (stereo, samples interleaved).

    A *frame* here is one sample for every channel, as in WAV files; the 20 ms packets that a
    call delivers are what :func:`frames` cuts.

    Examples
    --------
    >>> fmt = AudioFormat("pcm16", 8000, 1)
    >>> fmt.bytes_per_frame, fmt.bytes_per_ms(20)
    (2, 320)
    >>> AudioFormat.from_text(fmt.to_text()) == fmt
    True
    >>> AudioFormat("pcm16", 4000, 1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sampledrec.errors.InvalidAudio: sample_rate=4000 must be between 8000 and 48000 ...
    """

    encoding: Encoding
    sample_rate: int
    channels: int

    def __post_init__(self) -> None:
        if self.encoding not in _ENCODINGS:
            raise InvalidAudio(
                f"encoding={self.encoding!r} is not supported; use one of "
                + ", ".join(repr(e) for e in _ENCODINGS)
            )
        rate = _whole_number("sample_rate", self.sample_rate)
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise InvalidAudio(
                f"sample_rate={rate} must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} "
                "samples per second; resample the audio first (pcm_convert or ffmpeg -ar)"
            )
        channels = _whole_number("channels", self.channels)
        if channels not in (1, 2):
            raise InvalidAudio(
                f"channels={channels} must be 1 (mono) or 2 (stereo); mix the audio down first "
                "(pcm_convert or ffmpeg -ac)"
            )
        # numpy integers and other int-likes are stored as plain int, so equality and the
        # text form do not depend on what the caller passed.
        object.__setattr__(self, "sample_rate", rate)
        object.__setattr__(self, "channels", channels)

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of one sample of one channel: 2 for PCM16, 1 for G.711."""
        return 2 if self.encoding == "pcm16" else 1

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one frame, that is one sample for every channel."""
        return self.bytes_per_sample * self.channels

    def bytes_per_ms(self, ms: float) -> int:
        """Bytes of ``ms`` milliseconds of audio, rounded to the nearest whole frame.

        >>> AudioFormat("mulaw", 8000, 1).bytes_per_ms(20)
        160
        >>> AudioFormat("pcm16", 11025, 2).bytes_per_ms(20)  # 220.5 frames, rounded to even
        880
        """
        value = _real_number("ms", ms, "milliseconds")
        if isinstance(value, int):  # exact, however long
            count = round(Fraction(value * self.sample_rate, 1000))
        else:
            count = round(value * self.sample_rate / 1000)
        return count * self.bytes_per_frame

    def as_pcm16(self) -> AudioFormat:
        """The same rate and channels, encoded as PCM16 (what :func:`to_pcm16` produces)."""
        return dataclasses.replace(self, encoding="pcm16")

    def to_text(self) -> str:
        """The canonical text form, ``encoding/sample_rate/channels``, e.g. ``"alaw/8000/1"``."""
        return f"{self.encoding}/{self.sample_rate}/{self.channels}"

    @classmethod
    def from_text(cls, text: str) -> AudioFormat:
        """Parse the text form written by :meth:`to_text`; only the canonical form is accepted."""
        if not isinstance(text, str):
            raise AudioTypeError(f"an audio format must be text, got {type(text).__name__}")
        parts = text.split("/")
        if (
            len(parts) != 3
            or parts[0] not in _ENCODINGS
            or not all(p.isascii() and p.isdigit() for p in parts[1:])
        ):
            raise InvalidAudio(
                f"audio format {text!r} is not of the form encoding/sample_rate/channels, "
                "for example 'pcm16/8000/1' or 'mulaw/8000/1'"
            )
        fmt = cls(parts[0], int(parts[1]), int(parts[2]))  # type: ignore[arg-type]
        if fmt.to_text() != text:
            raise InvalidAudio(f"audio format {text!r} is not canonical; write {fmt.to_text()!r}")
        return fmt


def _real_number(name: str, value: object, unit: str) -> int | float:
    # A finite number, 0 or more, as int when it is whole-typed (numpy scalars included).
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        number: int | float = int(value)
    elif isinstance(value, float | np.floating) and math.isfinite(value):
        number = float(value)
    else:
        raise InvalidAudio(f"{name}={value!r} must be a finite number of {unit}")
    if number < 0:
        raise InvalidAudio(f"{name}={value!r} must not be negative")
    return number


def _whole_number(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise AudioTypeError(f"{name}={value!r} must be a whole number, not a bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise AudioTypeError(
            f"{name}={value!r} must be a whole number, not {type(value).__name__}"
        ) from None


# --- G.711 -------------------------------------------------------------------------------------
#
# The tables follow ITU-T G.711 as formulated in the widely used reference implementation: μ-law
# works on 14-bit magnitudes with a bias of 33 and segment ends 2**(s+6) - 1; A-law works on
# 13-bit values with segment ends 2**(s+5) - 1 and inverts the even bits (XOR 0x55). Each
# encode table is indexed by the 16-bit sample read as unsigned, so that a whole buffer encodes
# with one fancy-indexing operation.

_ULAW_SEGMENT_ENDS: Final = np.array([(1 << (s + 6)) - 1 for s in range(8)], dtype=np.int32)
_ALAW_SEGMENT_ENDS: Final = np.array([(1 << (s + 5)) - 1 for s in range(8)], dtype=np.int32)


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = (((code & 0x0F) << 3) + 0x84) << exponent
    return np.where(code & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code >> 4) & 0x07
    magnitude = ((code & 0x0F) << 4) + 8
    magnitude = np.where(segment == 0, magnitude, (magnitude + 0x100) << np.maximum(segment - 1, 0))
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _all_samples() -> npt.NDArray[np.int32]:
    # Every int16 value, in the order of its unsigned 16-bit pattern (0..32767, -32768..-1).
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = _all_samples() >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm), 8159) + 33
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude).astype(np.int32)
    code = (segment << 4) | ((magnitude >> np.minimum(segment + 1, 8)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = _all_samples() >> 3
    negative = pcm < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -pcm - 1, pcm)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude).astype(np.int32)
    shift = np.where(segment < 2, 1, np.minimum(segment, 8))
    code = (segment << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


_ULAW_DECODE: Final = _ulaw_decode_table()
_ALAW_DECODE: Final = _alaw_decode_table()
_ULAW_ENCODE: Final = _ulaw_encode_table()
_ALAW_ENCODE: Final = _alaw_encode_table()
for _table in (_ULAW_DECODE, _ALAW_DECODE, _ULAW_ENCODE, _ALAW_ENCODE):
    _table.flags.writeable = False
del _table


def _buffer(data: object, name: str) -> BytesLike:
    if isinstance(data, bytes | bytearray):
        return data
    if isinstance(data, memoryview):
        # As flat bytes, so that len() counts bytes whatever the view's item format and shape.
        return data.cast("B") if data.c_contiguous else data.tobytes()
    hint = "; convert numpy arrays with as_bytes()" if isinstance(data, np.ndarray) else ""
    raise AudioTypeError(
        f"{name} must be bytes, bytearray or memoryview, not {type(data).__name__}{hint}"
    )


def _pcm16_samples(data: object, name: str = "pcm16") -> npt.NDArray[np.uint16]:
    buf = _buffer(data, name)
    if len(buf) % 2:
        raise InvalidAudio(
            f"{name} has {len(buf)} bytes, which is not a whole number of 16-bit samples"
        )
    return np.frombuffer(buf, dtype="<u2")


def ulaw_to_pcm16(data: BytesLike) -> bytes:
    """Decode G.711 μ-law bytes to PCM16.

    >>> ulaw_to_pcm16(b"\\xff\\x00") == (0).to_bytes(2, "little", signed=True) + (-32124).to_bytes(
    ...     2, "little", signed=True
    ... )
    True
    """
    codes = np.frombuffer(_buffer(data, "data"), dtype=np.uint8)
    return _ULAW_DECODE[codes].astype("<i2", copy=False).tobytes()


def alaw_to_pcm16(data: BytesLike) -> bytes:
    """Decode G.711 A-law bytes to PCM16.

    >>> alaw_to_pcm16(b"\\xd5\\x55") == b"\\x08\\x00\\xf8\\xff"  # 8, -8
    True
    """
    codes = np.frombuffer(_buffer(data, "data"), dtype=np.uint8)
    return _ALAW_DECODE[codes].astype("<i2", copy=False).tobytes()


def pcm16_to_ulaw(pcm16: BytesLike) -> bytes:
    """Encode PCM16 to G.711 μ-law, one byte per sample.

    >>> pcm16_to_ulaw(b"\\x00\\x00\\xff\\x7f") == b"\\xff\\x80"  # 0, 32767
    True
    """
    return _ULAW_ENCODE[_pcm16_samples(pcm16)].tobytes()


def pcm16_to_alaw(pcm16: BytesLike) -> bytes:
    """Encode PCM16 to G.711 A-law, one byte per sample.

    >>> pcm16_to_alaw(b"\\x00\\x00\\xff\\x7f") == b"\\xd5\\xaa"  # 0, 32767
    True
    """
    return _ALAW_ENCODE[_pcm16_samples(pcm16)].tobytes()


# --- Conversions, silence, frames ----------------------------------------------------------------


def _check_whole_frames(data: BytesLike, fmt: AudioFormat, name: str = "data") -> None:
    if len(data) % fmt.bytes_per_frame:
        raise InvalidAudio(
            f"{name} has {len(data)} bytes, which is not a whole number of "
            f"{fmt.bytes_per_frame}-byte frames of {fmt.to_text()} audio"
        )


def _check_format(fmt: object) -> AudioFormat:
    if not isinstance(fmt, AudioFormat):
        raise AudioTypeError(f"fmt must be an AudioFormat, not {type(fmt).__name__}")
    return fmt


def to_pcm16(data: BytesLike, fmt: AudioFormat) -> bytes:
    """Convert audio in ``fmt`` to PCM16 with the same rate and channels (``fmt.as_pcm16()``).

    >>> to_pcm16(b"\\xff\\xff", AudioFormat("mulaw", 8000, 1))
    b'\\x00\\x00\\x00\\x00'
    """
    fmt = _check_format(fmt)
    buf = _buffer(data, "data")
    _check_whole_frames(buf, fmt)
    if fmt.encoding == "mulaw":
        return ulaw_to_pcm16(buf)
    if fmt.encoding == "alaw":
        return alaw_to_pcm16(buf)
    return bytes(buf)


def from_pcm16(pcm16: BytesLike, fmt: AudioFormat) -> bytes:
    """Convert PCM16 audio with ``fmt``'s rate and channels to ``fmt``'s encoding.

    The inverse of :func:`to_pcm16`, up to G.711's quantisation.

    >>> from_pcm16(bytes(4), AudioFormat("alaw", 8000, 2))
    b'\\xd5\\xd5'
    """
    fmt = _check_format(fmt)
    buf = _buffer(pcm16, "pcm16")
    _check_whole_frames(buf, fmt.as_pcm16(), "pcm16")
    if fmt.encoding == "mulaw":
        return pcm16_to_ulaw(buf)
    if fmt.encoding == "alaw":
        return pcm16_to_alaw(buf)
    return bytes(buf)


def silence(fmt: AudioFormat, ms: float) -> bytes:
    """``ms`` milliseconds of digital silence in ``fmt`` (rounded to the nearest frame).

    Silence is zero samples for PCM16, ``0xFF`` for μ-law and ``0xD5`` for A-law: the codes that
    decode to (near) zero.

    >>> silence(AudioFormat("alaw", 8000, 1), 1)
    b'\\xd5\\xd5\\xd5\\xd5\\xd5\\xd5\\xd5\\xd5'
    """
    fmt = _check_format(fmt)
    return bytes([_SILENCE_BYTE[fmt.encoding]]) * fmt.bytes_per_ms(ms)


def duration_ms(nbytes: int, fmt: AudioFormat) -> float:
    """How many milliseconds ``nbytes`` bytes of audio in ``fmt`` last.

    >>> duration_ms(160, AudioFormat("mulaw", 8000, 1))
    20.0
    """
    fmt = _check_format(fmt)
    count = _whole_number("nbytes", nbytes)
    if count < 0:
        raise InvalidAudio(f"nbytes={count} must not be negative")
    if count % fmt.bytes_per_frame:
        raise InvalidAudio(
            f"nbytes={count} is not a whole number of {fmt.bytes_per_frame}-byte frames of "
            f"{fmt.to_text()} audio"
        )
    return count // fmt.bytes_per_frame * 1000 / fmt.sample_rate


def frames(data: BytesLike, fmt: AudioFormat, ms: float = 20) -> Iterator[bytes]:
    """Cut audio into consecutive ``ms``-millisecond frames, as a call would deliver it.

    The last frame is shorter when the audio does not divide evenly; joined together, the
    frames give back ``data``. The data are checked when this is called, not when iterated.

    >>> [len(f) for f in frames(bytes(1000), AudioFormat("pcm16", 8000, 1))]
    [320, 320, 320, 40]
    """
    fmt = _check_format(fmt)
    buf = _buffer(data, "data")
    _check_whole_frames(buf, fmt)
    size = fmt.bytes_per_ms(ms)
    if size == 0:
        raise InvalidAudio(
            f"ms={ms!r} is shorter than one sample at {fmt.sample_rate} Hz; use a longer frame"
        )
    return _slices(memoryview(buf), size)


def _slices(view: memoryview, size: int) -> Iterator[bytes]:
    for start in range(0, len(view), size):
        yield view[start : start + size].tobytes()


def as_bytes(frame: object, fmt: AudioFormat) -> bytes:
    """Audio given as bytes or as a numpy array, as bytes in ``fmt``'s encoding.

    Accepts ``bytes``, ``bytearray`` and ``memoryview`` (raw audio in ``fmt``), and numpy arrays
    of samples: ``int16`` for PCM16, ``uint8`` G.711 codes for μ-law and A-law, shaped ``(n,)``
    or ``(n, 1)`` for mono and ``(n, 2)`` for stereo. The length must be a whole number of frames.

    >>> import numpy as np
    >>> as_bytes(np.array([1, -1], dtype=np.int16), AudioFormat("pcm16", 8000, 1))
    b'\\x01\\x00\\xff\\xff'
    >>> as_bytes(np.zeros(4), AudioFormat("pcm16", 8000, 1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sampledrec.errors.InvalidAudio: frame has dtype float64, but pcm16 audio needs int16; ...
    """
    fmt = _check_format(fmt)
    if isinstance(frame, bytes):
        data = frame
    elif isinstance(frame, bytearray | memoryview):
        data = bytes(frame)
    elif isinstance(frame, np.ndarray):
        data = _array_bytes(frame, fmt)
    else:
        raise AudioTypeError(
            f"frame must be bytes, bytearray, memoryview or a numpy array, not "
            f"{type(frame).__name__}"
        )
    _check_whole_frames(data, fmt, "frame")
    return data


def _array_bytes(frame: npt.NDArray[Any], fmt: AudioFormat) -> bytes:
    pcm = fmt.encoding == "pcm16"
    kind, size, wanted = ("i", 2, "int16") if pcm else ("u", 1, "uint8")
    if frame.dtype.kind != kind or frame.dtype.itemsize != size:
        hint = ""
        if pcm and frame.dtype.kind == "f":
            hint = "; scale float audio with (x * 32767).clip(-32768, 32767).astype(np.int16)"
        elif not pcm:
            hint = " G.711 codes; convert PCM16 with from_pcm16()"
        raise InvalidAudio(
            f"frame has dtype {frame.dtype}, but {fmt.encoding} audio needs {wanted}{hint}"
        )
    channels = fmt.channels
    shape = frame.shape
    if not ((frame.ndim == 1 and channels == 1) or (frame.ndim == 2 and shape[1] == channels)):
        wanted_shape = "(n,) or (n, 1)" if channels == 1 else "(n, 2)"
        raise InvalidAudio(
            f"frame has shape {shape}, but {channels}-channel audio needs shape {wanted_shape} "
            "(one row per frame, one column per channel)"
        )
    return frame.astype("<i2" if pcm else np.uint8, copy=False).tobytes(order="C")


# --- pydub (in memory only) ----------------------------------------------------------------------


def _audio_segment_class() -> Any:
    # pydub is imported on first use: it imports the deprecated audioop module (3.11-3.12) and
    # warns when ffmpeg is absent, neither of which matters to the in-memory calls made here.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="'audioop' is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message="Couldn't find ffmpeg or avconv", category=RuntimeWarning
        )
        try:
            from pydub import AudioSegment
        except ModuleNotFoundError as exc:  # pragma: no cover - Python 3.13 without audioop-lts
            if exc.name in {"audioop", "pyaudioop"}:
                raise ImportError(
                    "pydub needs the audioop module, which Python 3.13 removed; "
                    "install audioop-lts (pip install audioop-lts)"
                ) from exc
            raise
    return AudioSegment


def pcm_convert(
    pcm16: BytesLike,
    from_fmt: AudioFormat,
    *,
    to_rate: int | None = None,
    to_channels: int | None = None,
) -> tuple[AudioFormat, bytes]:
    """Resample and/or change the channel count of PCM16 audio, in memory (pydub).

    Stereo to mono averages the channels; mono to stereo copies the channel. Resampling is
    linear interpolation (fine for speech, not for music). ``None`` keeps the rate or channel
    count. Returns the new format and the converted PCM16.

    >>> fmt, out = pcm_convert(bytes(320), AudioFormat("pcm16", 8000, 1), to_channels=2)
    >>> fmt.to_text(), len(out)
    ('pcm16/8000/2', 640)
    """
    from_fmt = _check_format(from_fmt)
    if from_fmt.encoding != "pcm16":
        raise InvalidAudio(
            f"pcm_convert takes PCM16 audio, not {from_fmt.encoding}; convert it with to_pcm16() "
            "and pass fmt.as_pcm16()"
        )
    buf = _buffer(pcm16, "pcm16")
    _check_whole_frames(buf, from_fmt, "pcm16")
    to_fmt = AudioFormat(
        "pcm16",
        from_fmt.sample_rate if to_rate is None else to_rate,
        from_fmt.channels if to_channels is None else to_channels,
    )
    if to_fmt == from_fmt:
        return to_fmt, bytes(buf)
    segment = _audio_segment_class()(
        data=bytes(buf),
        sample_width=2,
        frame_rate=from_fmt.sample_rate,
        channels=from_fmt.channels,
    )
    # Mix down before resampling and up after it, so the resampler sees as little data as can be.
    if to_fmt.channels < from_fmt.channels:
        segment = segment.set_channels(to_fmt.channels)
    if to_fmt.sample_rate != from_fmt.sample_rate:
        segment = segment.set_frame_rate(to_fmt.sample_rate)
    if to_fmt.channels > from_fmt.channels:
        segment = segment.set_channels(to_fmt.channels)
    return to_fmt, bytes(segment.raw_data)


# --- WAV -----------------------------------------------------------------------------------------


class _UnsupportedWav(InvalidAudio):
    """A well-formed WAV that this module does not decode itself (ffmpeg may)."""


def _native_to_le16(data: bytes) -> bytes:
    # The wave module converts samples to the host's byte order; PCM16 here is little-endian.
    if sys.byteorder == "big":  # pragma: no cover - no big-endian CI
        return np.frombuffer(data, dtype=">i2").astype("<i2").tobytes()
    return data


def _le16_to_native(data: bytes) -> bytes:
    if sys.byteorder == "big":  # pragma: no cover - no big-endian CI
        return np.frombuffer(data, dtype="<i2").astype(">i2").tobytes()
    return data


def encode_wav(fmt: AudioFormat, pcm16: BytesLike) -> bytes:
    """A complete PCM16 WAV file, in memory, holding ``pcm16`` at ``fmt``'s rate and channels.

    ``fmt.encoding`` must be ``"pcm16"``: convert G.711 first with :func:`to_pcm16` and
    :meth:`AudioFormat.as_pcm16`. :func:`decode_wav` gives back exactly the same bytes.

    >>> fmt = AudioFormat("pcm16", 8000, 1)
    >>> decode_wav(encode_wav(fmt, b"\\x01\\x00\\x02\\x00")) == (fmt, b"\\x01\\x00\\x02\\x00")
    True
    """
    fmt = _check_format(fmt)
    if fmt.encoding != "pcm16":
        raise InvalidAudio(
            f"encode_wav writes PCM16 WAV files, but fmt is {fmt.to_text()}; pass "
            "to_pcm16(data, fmt) with fmt.as_pcm16()"
        )
    buf = _buffer(pcm16, "pcm16")
    _check_whole_frames(buf, fmt, "pcm16")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(fmt.channels)
        w.setsampwidth(2)
        w.setframerate(fmt.sample_rate)
        w.writeframes(_le16_to_native(bytes(buf)))
    return out.getvalue()


WAV_HEADER_BYTES: Final = 44


def wav_header(fmt: AudioFormat, data_bytes: int) -> bytes:
    """The 44-byte header that :func:`encode_wav` writes before ``data_bytes`` bytes of PCM16
    audio at ``fmt``'s rate and channels: with it, a WAV file can be served in ranges without
    being built whole (the console's playback).

    >>> fmt = AudioFormat("pcm16", 8000, 1)
    >>> encode_wav(fmt, b"\\x01\\x00")[:44] == wav_header(fmt, 2)
    True
    """
    fmt = _check_format(fmt)
    if data_bytes < 0 or data_bytes % (2 * fmt.channels) or data_bytes > 0xFFFFFFFF - 36:
        raise InvalidAudio(f"data_bytes={data_bytes} is not a whole number of PCM16 frames")
    block = 2 * fmt.channels
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            _WAVE_FORMAT_PCM,
            fmt.channels,
            fmt.sample_rate,
            fmt.sample_rate * block,
            block,
            16,
        )
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def decode_wav(data: BytesLike) -> tuple[AudioFormat, bytes]:
    """Decode a WAV file held in memory; returns its format and its audio bytes.

    16-bit PCM is read with the standard :mod:`wave` module; G.711 μ-law and A-law (format
    tags 7 and 6, which :mod:`wave` rejects) and WAVE_FORMAT_EXTENSIBLE headers are read by
    parsing the RIFF chunks here. G.711 stays G.711: the bytes returned are the file's codes,
    with a ``"mulaw"`` or ``"alaw"`` format. Other WAV flavours (8-, 24- or 32-bit, float,
    ADPCM, more than two channels, rates outside 8000-48000) raise
    :class:`~sampledrec.errors.InvalidAudio`; :func:`read_audio_file` converts those with ffmpeg.

    Raises
    ------
    InvalidAudio
        ``data`` is not a WAV file, is malformed, or holds audio in an unsupported form.
    """
    buf = bytes(_buffer(data, "data"))
    if len(buf) < 12 or buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
        raise InvalidAudio("the data is not a WAV file (no RIFF/WAVE header)")
    try:
        with wave.open(io.BytesIO(buf), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            payload = w.readframes(w.getnframes())
    except Exception:  # wave fails in many ways (RuntimeError, struct.error...) on damage
        # wave reads only plain PCM; anything else, or anything it chokes on, is parsed here,
        # where every failure is an InvalidAudio.
        return _decode_riff(buf)
    return _wav_result(_WAVE_FORMAT_PCM, channels, rate, width * 8, _native_to_le16(payload))


def _wav_result(
    tag: int, channels: int, rate: int, bits: int, payload: bytes
) -> tuple[AudioFormat, bytes]:
    encoding = _WAV_ENCODINGS[tag]
    if bits != (16 if encoding == "pcm16" else 8):
        raise _UnsupportedWav(
            f"the WAV file holds {bits}-bit {'PCM' if encoding == 'pcm16' else encoding} "
            "samples; only 16-bit PCM and 8-bit mulaw or alaw are supported: convert it "
            "(read_audio_file does, with ffmpeg)"
        )
    try:
        fmt = AudioFormat(encoding, rate, channels)
    except InvalidAudio as exc:
        raise _UnsupportedWav(f"the WAV file cannot be used as it is: {exc}") from None
    usable = len(payload) - len(payload) % fmt.bytes_per_frame
    return fmt, payload[:usable]


def _decode_riff(buf: bytes) -> tuple[AudioFormat, bytes]:
    fmt_chunk: bytes | None = None
    payload: bytes | None = None
    pos = 12
    while pos + 8 <= len(buf) and payload is None:
        chunk_id = buf[pos : pos + 4]
        (size,) = struct.unpack_from("<I", buf, pos + 4)
        body = buf[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise InvalidAudio("the WAV file's fmt chunk is truncated")
            fmt_chunk = body
        elif chunk_id == b"data":
            # A WAV streamed through a pipe cannot state its length (ffmpeg writes 0xFFFFFFFF):
            # the data then run to the end of the file, as they do in a truncated file.
            payload = body
        pos += 8 + size + (size & 1)
    if fmt_chunk is None or payload is None:
        missing = "fmt" if fmt_chunk is None else "data"
        raise InvalidAudio(f"the WAV file has no {missing} chunk (before its audio data)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt_chunk)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(fmt_chunk) < 40 or fmt_chunk[26:40] != _KSDATAFORMAT_TAIL:
            raise _UnsupportedWav("the WAV file's extensible format has an unknown subformat")
        (tag,) = struct.unpack_from("<H", fmt_chunk, 24)
    if tag not in _WAV_ENCODINGS:
        raise _UnsupportedWav(
            f"WAV format tag {tag:#06x} is not supported; convert the file to 16-bit PCM, "
            "μ-law or A-law"
        )
    if channels == 0 or block_align != channels * ((bits + 7) // 8):
        raise InvalidAudio(
            f"the WAV file's header is inconsistent: {channels} channels of {bits}-bit samples "
            f"in {block_align}-byte blocks"
        )
    return _wav_result(tag, channels, rate, bits, payload)


# --- Files ---------------------------------------------------------------------------------------


def read_audio_file(
    path: str | os.PathLike[str],
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
) -> tuple[AudioFormat, bytes]:
    """Read an audio file; returns its format and audio bytes, never writing anything to disk.

    A WAV file (recognised by its content, not its name) is decoded in memory with
    :func:`decode_wav`, so PCM16 comes back bit-exact and G.711 stays G.711. Any other file
    (MP3, Ogg, FLAC, 24-bit WAV...) is decoded to PCM16 by running ``ffmpeg`` with its output on
    a pipe. Its channels are kept when there are one or two (more are mixed down to stereo) and
    its rate when it is a usual one (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100 or
    48000 Hz; others are resampled to the nearest of those).

    ``sample_rate`` and ``channels``, when given, convert the audio to PCM16 at that rate and
    channel count. The whole file is decoded in memory. :func:`read_audio_file_as` converts to
    any format and also says whether the file was cut short.

    Raises
    ------
    InvalidAudio
        The file cannot be decoded (ffmpeg's own message is included).
    FFmpegNotFound
        The file needs ffmpeg, and ffmpeg is not installed.
    OSError
        The file cannot be opened (``FileNotFoundError``, ``PermissionError``...).
    """
    path = Path(path)
    # The targets are checked (and numpy integers made plain) before any decoding work.
    if sample_rate is not None:
        sample_rate = AudioFormat("pcm16", sample_rate, 1).sample_rate
    if channels is not None:
        channels = AudioFormat("pcm16", MIN_SAMPLE_RATE, channels).channels
    fmt, audio, _ = _read_file(path, sample_rate, channels)
    if sample_rate is None and channels is None:
        return fmt, audio
    return pcm_convert(
        to_pcm16(audio, fmt), fmt.as_pcm16(), to_rate=sample_rate, to_channels=channels
    )


@dataclass(frozen=True, slots=True)
class AudioFile:
    """Audio read from a file by :func:`read_audio_file_as`.

    Attributes
    ----------
    format
        The format asked for, which ``audio`` is in.
    audio
        The audio bytes.
    source
        The format the file's audio was decoded to before conversion (PCM16 for anything
        ffmpeg decoded).
    truncated
        The file ends before the end of the audio its header announces (a WAV whose data chunk
        is shorter than its stated size): what is there is kept, and a recording made of it
        should be marked truncated.
    """

    format: AudioFormat
    audio: bytes = dataclasses.field(repr=False)
    source: AudioFormat
    truncated: bool = False


def read_audio_file_as(path: str | os.PathLike[str], fmt: AudioFormat) -> AudioFile:
    """Read an audio file for a recording in ``fmt``, never writing anything to disk.

    The file is decoded as :func:`read_audio_file` does (WAV in memory; other files, and WAV
    samples other than 16-bit PCM and G.711, by ``ffmpeg`` over a pipe), then converted to
    ``fmt`` in memory: decoded to PCM16, resampled and mixed down or up with pydub
    (:func:`pcm_convert`), and encoded to G.711 if ``fmt`` asks for it. Audio already in
    ``fmt`` is kept bit-exact.

    Raises
    ------
    InvalidAudio
        The file cannot be decoded, or ``fmt`` is no :class:`AudioFormat`.
    FFmpegNotFound
        The file needs ffmpeg (a non-WAV file, or a WAV of 8-, 24- or 32-bit samples), and
        ffmpeg is not installed: the message gives the reason.
    OSError
        The file cannot be opened.
    """
    fmt = _check_format(fmt)
    source, audio, truncated = _read_file(Path(path), None, None)
    if source != fmt:
        pcm = to_pcm16(audio, source)
        if (source.sample_rate, source.channels) != (fmt.sample_rate, fmt.channels):
            _, pcm = pcm_convert(
                pcm, source.as_pcm16(), to_rate=fmt.sample_rate, to_channels=fmt.channels
            )
        audio = from_pcm16(pcm, fmt)
    return AudioFile(fmt, audio, source, truncated)


def _read_file(
    path: Path, sample_rate: int | None, channels: int | None
) -> tuple[AudioFormat, bytes, bool]:
    """The file's audio, decoded (WAV in memory, else ffmpeg, asked for ``sample_rate`` and
    ``channels`` when given), and whether it is cut short."""
    with path.open("rb") as f:
        head = f.read(12)
        is_wav = head[:4] == b"RIFF" and head[8:12] == b"WAVE"
        data = head + f.read() if is_wav else b""
    if not is_wav:
        return (*_ffmpeg_decode(path, sample_rate, channels), False)
    truncated = _wav_truncated(data)
    try:
        fmt, audio = decode_wav(data)
    except _UnsupportedWav as exc:
        if shutil.which("ffmpeg") is None:
            raise FFmpegNotFound(
                f"{path}: {exc}; converting it needs ffmpeg, which is not installed "
                "(apt-get install ffmpeg)"
            ) from None
        fmt, audio = _ffmpeg_decode(path, sample_rate, channels)
    except InvalidAudio as exc:
        raise InvalidAudio(f"{path}: {exc}") from None
    return fmt, audio, truncated


_STREAMED: Final = 0xFFFFFFFF  # the data size of a WAV written to a pipe: "to the end"


def _wav_truncated(buf: bytes) -> bool:
    """Whether a WAV file's data chunk is shorter than its header says (the file was cut
    short). A WAV streamed through a pipe states no size (0xFFFFFFFF) and is never truncated."""
    pos = 12
    while pos + 8 <= len(buf):
        chunk_id = buf[pos : pos + 4]
        size: int = struct.unpack_from("<I", buf, pos + 4)[0]
        if chunk_id == b"data":
            return size != _STREAMED and pos + 8 + size > len(buf)
        pos += 8 + size + (size & 1)
    return False


# The rates ffmpeg may keep; a source at any other rate is resampled to the nearest of them.
_FFMPEG_RATES: Final = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def _ffmpeg_decode(
    path: Path, sample_rate: int | None, channels: int | None
) -> tuple[AudioFormat, bytes]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise FFmpegNotFound(
            f"{path} is not a WAV file, and decoding it needs ffmpeg, which is not installed: "
            "install it (apt-get install ffmpeg) or convert the file to WAV elsewhere"
        )
    # The input is read from its path (a "file:" URL, so that names like "pipe:0" or "http://x"
    # are not taken for protocols); the decoded audio comes back on stdout as a streamed WAV,
    # which states its rate and channel count. Nothing is written anywhere else. The aformat
    # filter keeps the source's rate and channels when they are usable, and otherwise lets
    # ffmpeg pick the nearest usable ones (96 kHz 5.1 becomes 48 kHz stereo).
    rates = (sample_rate,) if sample_rate else _FFMPEG_RATES
    layouts = {None: "mono|stereo", 1: "mono", 2: "stereo"}[channels]
    args = [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-protocol_whitelist",
        "file",
        "-i",
        "file:" + os.fspath(path.resolve()),
        "-map",
        "0:a:0",
        "-map_metadata",
        "-1",
        "-fflags",
        "+bitexact",
        "-flags:a",
        "+bitexact",
        "-af",
        "aformat=sample_rates=" + "|".join(map(str, rates)) + ":channel_layouts=" + layouts,
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
        "pipe:1",
    ]
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise InvalidAudio(f"{path}: ffmpeg cannot decode it: {detail}")
    try:
        return decode_wav(proc.stdout)
    except InvalidAudio as exc:  # pragma: no cover - ffmpeg wrote something unexpected
        raise InvalidAudio(f"{path}: ffmpeg's output could not be read: {exc}") from None


# --- Synthetic speech ----------------------------------------------------------------------------

# Formants (F1, F2, F3 in Hz) of a few vowels, roughly those of an adult speaker.
_VOWELS: Final = np.array(
    [
        [730.0, 1090.0, 2440.0],  # a
        [530.0, 1840.0, 2480.0],  # e
        [270.0, 2290.0, 3010.0],  # i
        [570.0, 840.0, 2410.0],  # o
        [300.0, 870.0, 2240.0],  # u
    ]
)
_FORMANT_BANDWIDTHS: Final = np.array([90.0, 110.0, 170.0])
_FORMANT_GAINS: Final = np.array([1.0, 0.7, 0.35])
_HARMONICS: Final = 30


def synthetic_speech(seconds: float, *, sample_rate: int = 8000, seed: int = 0) -> bytes:
    """Speech-like mono PCM16: syllables, a voice with formants, pauses. Deterministic per seed.

    Syllables of 1/6 to 1/3 s (3 to 6 per second) with a rising and falling envelope, voiced on
    a fundamental between 100 and 220 Hz that drifts from syllable to syllable, with harmonics
    shaped by vowel-like formants, short consonant-like noise bursts, and pauses of 0.15 to
    0.7 s after about one syllable in five, at a fixed level (peaks near half of full scale).
    It is no language, but level meters, codecs and voice detectors treat it much like speech.

    >>> audio = synthetic_speech(1.0)
    >>> len(audio), audio == synthetic_speech(1.0)
    (16000, True)
    """
    seconds = float(_real_number("seconds", seconds, "seconds"))
    rate = AudioFormat("pcm16", sample_rate, 1).sample_rate
    n = round(seconds * rate)
    if n == 0:
        return b""
    rng = np.random.default_rng(_whole_number("seed", seed))

    # Syllables, each followed by an optional pause; enough of them to cover the duration.
    count = math.ceil(seconds * 6) + 2
    voiced_len = rng.uniform(1 / 6, 1 / 3, count)
    pause_len = np.where(rng.random(count) < 0.2, rng.uniform(0.15, 0.7, count), 0.0)
    starts = np.concatenate(([0.0], np.cumsum(voiced_len + pause_len)[:-1]))
    loudness = rng.uniform(0.45, 1.0, count)
    base_f0 = rng.uniform(100.0, 220.0)
    f0_syllable = np.clip(base_f0 * rng.uniform(0.85, 1.18, count), 100.0, 220.0)
    formants = _VOWELS[rng.integers(0, len(_VOWELS), count)] * rng.uniform(0.92, 1.08, (count, 1))

    t = np.arange(n) / rate
    index = np.searchsorted(starts, t, side="right") - 1
    local = (t - starts[index]) / voiced_len[index]
    voiced = local < 1.0
    envelope = np.where(voiced, np.sin(np.pi * np.clip(local, 0.0, 1.0)) ** 2, 0.0)
    envelope *= loudness[index]

    centres = starts + voiced_len / 2
    vibrato_phase = rng.uniform(0, 2 * np.pi)

    def pitch(at: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.interp(at, centres, f0_syllable) * (
            1.0 + 0.01 * np.sin(2 * np.pi * 4.5 * at + vibrato_phase)
        )

    f0 = pitch(t)
    phase = 2 * np.pi * np.cumsum(f0) / rate

    # Harmonic weights (a gentle source tilt plus three formant resonances) change slowly, so
    # they are computed every 5 ms, as one (harmonic, time) array, and ramped linearly in between:
    # the samples are laid out as (block, sample in block) so that the ramps broadcast.
    hop = rate // 200
    blocks = -(-n // hop)
    at = np.arange(blocks + 1) * hop / rate
    harmonic = np.arange(1, _HARMONICS + 1)[:, None]
    freq = harmonic * pitch(at)[None, :]
    tracks = np.stack([np.interp(at, centres, formants[:, j]) for j in range(3)])
    resonance = _FORMANT_GAINS[:, None, None] / (
        1.0 + ((freq[None] - tracks[:, None, :]) / _FORMANT_BANDWIDTHS[:, None, None]) ** 2
    )
    weights = 0.12 / np.sqrt(harmonic) + resonance.sum(axis=0)
    weights[freq >= min(0.45 * rate, 3800.0)] = 0.0
    ramp = np.arange(hop) / hop

    # sin(k*phase) for k = 1, 2, ... by the recurrence s(k+1) = 2 cos(phase) s(k) - s(k-1).
    padded = np.concatenate((phase, np.zeros(blocks * hop - n))).reshape(blocks, hop)
    voice = np.zeros((blocks, hop))
    twice_cos = 2 * np.cos(padded)
    below, current = np.zeros((blocks, hop)), np.sin(padded)
    for k in range(_HARMONICS):
        if not weights[k].any():
            break
        start, step = weights[k, :-1, None], np.diff(weights[k])[:, None]
        voice += (start + step * ramp) * current
        below, current = current, twice_cos * current - below
    voice = voice.reshape(-1)[:n]

    noise = rng.standard_normal(n)
    onset = voiced & (local < 0.12)  # a consonant, about 15 dB below the vowel after it
    burst = np.where(onset, 0.05 * loudness[index] * np.sin(np.pi * local / 0.12), 0.0)
    signal = envelope * voice / _HARMONICS**0.5 + burst * noise + 0.002 * noise
    # A fixed gain (not normalisation) keeps the level the same whatever the duration: about
    # -26 dBFS RMS over speech and pauses, peaks near half of full scale.
    pcm: npt.NDArray[np.int16] = np.clip(np.round(signal * (0.5 * 32767)), -32768, 32767).astype(
        "<i2"
    )
    return pcm.tobytes()
