"""Asterisk AudioSocket, sans I/O: bytes from a TCP stream in, messages out.

The protocol (docs.asterisk.org, Configuration / Channel Drivers / AudioSocket): each message
is a type byte, a payload length (16 bits, big-endian) and the payload. The types read here:

======  ==========================================================================
0x00    hang-up (no payload); closing the socket means the same
0x01    the stream's UUID, 16 bytes (the binary form of the UUID given to
        ``AudioSocket(uuid,host:port)``); the first message of a stream
0x03    one DTMF digit (one ASCII byte)
0x10    audio: signed linear 16-bit, 8 kHz, mono, **little-endian**
0x11    the same at 12 kHz; 0x12 16 kHz; 0x13 24 kHz; 0x14 32 kHz; 0x15 44.1 kHz;
        0x16 48 kHz (the higher-rate types of Asterisk 20+; see :data:`AUDIO_RATES`)
0xff    an error, with an optional application-specific code
======  ==========================================================================

:class:`AudioSocketReader` takes whatever the socket gave (any split: a header across two
reads, many messages in one) and returns the complete messages; it raises
:class:`~sampledrec.errors.InvalidMediaStream`, and nothing else, for a stream that breaks the
protocol or a limit: a first message other than the UUID, a second UUID, an unknown type, a
payload of the wrong length for its type, audio at two rates, a payload over ``max_payload``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final, TypeAlias

from ..errors import InvalidMediaStream

__all__ = [
    "AUDIO_RATES",
    "MAX_PAYLOAD",
    "AudioSocketAudio",
    "AudioSocketDtmf",
    "AudioSocketError",
    "AudioSocketHangup",
    "AudioSocketMessage",
    "AudioSocketReader",
    "AudioSocketUuid",
]

KIND_HANGUP: Final = 0x00
KIND_UUID: Final = 0x01
KIND_DTMF: Final = 0x03
KIND_ERROR: Final = 0xFF
#: Sample rate (Hz) of each audio message type, as Asterisk documents them.
AUDIO_RATES: Final = {
    0x10: 8000,
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
}
#: Largest payload accepted by default: 100 ms of 48 kHz audio (Asterisk sends 20 ms frames).
MAX_PAYLOAD: Final = 9600


@dataclass(frozen=True)
class AudioSocketUuid:
    """The stream's UUID (message 0x01). ``call_ref`` is its canonical text form, lower case
    with hyphens (``str(uuid.UUID(...))``): what the dialplan passed to the decision service."""

    uuid: uuid.UUID

    @property
    def call_ref(self) -> str:
        return str(self.uuid)


@dataclass(frozen=True)
class AudioSocketAudio:
    """Audio (0x10 to 0x16): 16-bit little-endian samples at ``sample_rate``, mono."""

    sample_rate: int
    pcm16: bytes


@dataclass(frozen=True)
class AudioSocketDtmf:
    """A DTMF digit (0x03)."""

    digit: str


@dataclass(frozen=True)
class AudioSocketHangup:
    """The call hung up (0x00)."""


@dataclass(frozen=True)
class AudioSocketError:
    """Asterisk reports an error (0xff); ``code`` is its payload (often one byte)."""

    code: bytes


AudioSocketMessage: TypeAlias = (
    AudioSocketUuid | AudioSocketAudio | AudioSocketDtmf | AudioSocketHangup | AudioSocketError
)


class AudioSocketReader:
    """Reads one AudioSocket stream (module docstring).

    >>> reader = AudioSocketReader()
    >>> ident = bytes.fromhex("0100104e0b8b2f3c8a4d6f9e21c0ffee010203")
    >>> reader.feed(ident + b"\\x10\\x00\\x04\\x01\\x00\\xff\\xff")
    [AudioSocketUuid(uuid=UUID('4e0b8b2f-3c8a-4d6f-9e21-c0ffee010203')), \
AudioSocketAudio(sample_rate=8000, pcm16=b'\\x01\\x00\\xff\\xff')]
    >>> reader.feed(b"\\x00\\x00"), reader.feed(b"\\x00"), reader.ended
    ([], [AudioSocketHangup()], True)
    """

    def __init__(self, *, max_payload: int = MAX_PAYLOAD) -> None:
        if not 2 <= max_payload <= 0xFFFF:
            raise InvalidMediaStream(f"max_payload={max_payload} must be between 2 and 65535")
        self._max = max_payload
        self._buffer = bytearray()
        self._identified = False
        self._rate: int | None = None
        self._error: InvalidMediaStream | None = None
        self.ended = False

    @property
    def failed(self) -> bool:
        """Whether the stream broke the protocol: the messages before the fault were returned,
        and the next :meth:`feed` raises."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet a whole message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[AudioSocketMessage]:
        """The messages that ``data`` completes, in order. After a hang-up, nothing more may
        come. A fault after some whole messages returns them (:attr:`failed` is then true)
        and raises on the next call."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        out: list[AudioSocketMessage] = []
        offset = 0
        size = len(buffer)
        try:
            while size - offset >= 3:
                if self.ended:
                    raise InvalidMediaStream("bytes after the hang-up message; close the socket")
                kind = buffer[offset]
                length = (buffer[offset + 1] << 8) | buffer[offset + 2]
                if length > self._max:
                    raise InvalidMediaStream(
                        f"a message of type 0x{kind:02x} announces {length} bytes; at most "
                        f"{self._max} (Asterisk sends 20 ms frames)"
                    )
                if size - offset - 3 < length:
                    break
                payload = bytes(buffer[offset + 3 : offset + 3 + length])
                offset += 3 + length
                out.append(self._message(kind, payload))
        except InvalidMediaStream as exc:
            self._error = exc
            if not out:
                raise
        finally:
            del buffer[:offset]
        return out

    def _message(self, kind: int, payload: bytes) -> AudioSocketMessage:
        if not self._identified:
            if kind != KIND_UUID:
                raise InvalidMediaStream(
                    f"the first message is of type 0x{kind:02x}; an AudioSocket stream starts "
                    "with its UUID (type 0x01, 16 bytes)"
                )
            if len(payload) != 16:
                raise InvalidMediaStream(
                    f"the UUID message holds {len(payload)} bytes; a UUID is 16 bytes"
                )
            self._identified = True
            return AudioSocketUuid(uuid.UUID(bytes=payload))
        rate = AUDIO_RATES.get(kind)
        if rate is not None:
            if len(payload) % 2:
                raise InvalidMediaStream(
                    f"an audio message of {len(payload)} bytes; 16-bit samples take an even "
                    "number of bytes"
                )
            if self._rate is None:
                self._rate = rate
            elif rate != self._rate:
                raise InvalidMediaStream(
                    f"audio at {rate} Hz after audio at {self._rate} Hz; one stream, one rate"
                )
            return AudioSocketAudio(rate, payload)
        if kind == KIND_HANGUP:
            if payload:
                raise InvalidMediaStream("the hang-up message (type 0x00) carries no payload")
            self.ended = True
            return AudioSocketHangup()
        if kind == KIND_DTMF:
            if len(payload) != 1 or payload not in b"0123456789*#ABCDabcd":
                raise InvalidMediaStream("a DTMF message (type 0x03) holds one digit: 0-9 * # A-D")
            return AudioSocketDtmf(payload.decode("ascii").upper())
        if kind == KIND_ERROR:
            return AudioSocketError(payload)
        if kind == KIND_UUID:
            raise InvalidMediaStream("a second UUID message; one stream carries one call")
        raise InvalidMediaStream(
            f"unknown message type 0x{kind:02x}; AudioSocket types are 0x00, 0x01, 0x03, "
            "0x10-0x16 and 0xff"
        )
