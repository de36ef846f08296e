"""WebSocket media streams, sans I/O: the JSON messages of Twilio-style media streams, and the
metadata of a FreeSWITCH audio fork.

**Media streams** (Twilio's "Media Streams - WebSocket Messages"; SignalWire's and Telnyx's
follow the same shape): one JSON text message per WebSocket message, ``event`` naming it:

- ``connected`` (``protocol``, ``version``): first, optional;
- ``start``: ``start.streamSid``, ``start.callSid``, ``start.tracks`` (``inbound``,
  ``outbound``), ``start.customParameters`` (the ``<Parameter>`` of TwiML: the call reference
  is one of them), ``start.mediaFormat`` (``audio/x-mulaw``, 8000 Hz, 1 channel);
- ``media``: ``media.track``, ``media.chunk``, ``media.timestamp`` (milliseconds since the
  stream started), ``media.payload`` (base64 audio, μ-law as sent on the call);
- ``dtmf`` (``dtmf.digit``), ``mark`` (``mark.name``), ``stop``.

``sequenceNumber`` (text, as Twilio sends numbers) counts every message after ``connected``;
it must increase: a message that comes again or out of order is refused.
:class:`MediaStreamReader` reads one stream's messages in order and raises
:class:`~sampledrec.errors.InvalidMediaStream` (nothing else) for one it cannot use.
SignalWire's cXML ``<Stream>`` sends these same messages.

**Telnyx** (``MediaStreamReader(flavor="telnyx")``; Telnyx's "Media Streaming over
WebSockets"): the same events with snake_case names: ``sequence_number`` and ``stream_id`` at
the top level, ``start.call_control_id``, ``start.custom_parameters``, ``start.media_format``
(``encoding`` ``PCMU`` or ``PCMA``, ``sample_rate``, ``channels``); ``media.track``
(``inbound`` or ``outbound``), ``media.chunk``, ``media.payload``. The start message does not
list the tracks: the custom parameter ``tracks`` (``inbound``, ``outbound`` or ``both``, the
default) says which are recorded. Telnyx does not guarantee the order of its messages: a chunk
that comes again or after a later one is dropped (its place stays silent, counted as a gap),
not fatal; chunks are placed by their number (``media.timestamp``'s unit is not documented).

:func:`twilio_signature` computes Twilio's request signature (``X-Twilio-Signature``).

**FreeSWITCH fork** (``mod_audio_fork``'s ``uuid_audio_fork <uuid> start <url> <mix> <rate>
<metadata>``): the first WebSocket message is text, the metadata given to the command; then
binary messages of 16-bit linear PCM (native byte order: little-endian on the x86 and ARM
servers FreeSWITCH runs on), mono, or stereo interleaved (caller left, callee right).
:func:`parse_fork_metadata` reads the metadata as a JSON object naming the call reference
(``call_ref``), and optionally ``sample_rate`` (8000 or 16000) and ``channels`` (1 or 2).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from ..errors import InvalidMediaStream

__all__ = [
    "ENCODINGS",
    "MAX_MESSAGE",
    "ForkMetadata",
    "MediaChunk",
    "MediaStreamReader",
    "StreamDtmf",
    "StreamEvent",
    "StreamMark",
    "StreamStarted",
    "StreamStopped",
    "parse_fork_metadata",
    "twilio_signature",
]

#: Largest message accepted (characters): a second of 8 kHz μ-law in base64 is under 11,000.
MAX_MESSAGE: Final = 64 * 1024
#: The media formats a stream may announce, and how the vault names them.
ENCODINGS: Final[dict[str, Literal["mulaw", "alaw"]]] = {
    "audio/x-mulaw": "mulaw",
    "audio/x-alaw": "alaw",
    "PCMU": "mulaw",  # Telnyx's names
    "PCMA": "alaw",
}
TRACKS: Final = ("inbound", "outbound")
#: The platforms whose message names :class:`MediaStreamReader` reads.
FLAVORS: Final = ("twilio", "telnyx")
#: Telnyx's custom parameter ``tracks``: which tracks a stream carries.
_TELNYX_TRACKS: Final = {
    "both": ("inbound", "outbound"),
    "inbound": ("inbound",),
    "outbound": ("outbound",),
}
_MAX_PARAMETERS: Final = 64
_MAX_TEXT: Final = 1024


@dataclass(frozen=True)
class StreamStarted:
    """The ``start`` message: which call, which tracks (channels in this order), what audio."""

    stream_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    encoding: Literal["mulaw", "alaw"]  # the vault's name
    sample_rate: int
    custom_parameters: Mapping[str, str] = field(default_factory=dict, repr=False)


class MediaChunk(NamedTuple):
    """A ``media`` message: audio of one track, at ``timestamp`` ms from the stream's start.

    A named tuple, not a dataclass: one is made for each message, 100 a second per call.
    """

    track: str
    chunk: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True)
class StreamDtmf:
    track: str
    digit: str


@dataclass(frozen=True)
class StreamMark:
    name: str


@dataclass(frozen=True)
class StreamStopped:
    """The ``stop`` message: the stream ended normally."""


StreamEvent: TypeAlias = StreamStarted | MediaChunk | StreamDtmf | StreamMark | StreamStopped | None


_DECODER: Final = json.JSONDecoder()
#: A Twilio ``media`` message exactly as Twilio's documentation shows it: compact, its members
#: in this order, numbers as short digit strings, the payload in the base64 alphabet, no
#: escapes. Such a message is read without building its JSON objects (100 a second per
#: call); every other spelling of the same message takes the JSON path, to the same result
#: (a property test checks that both paths agree).
_TWILIO_MEDIA: Final = re.compile(
    r'\{"event":"media","sequenceNumber":"([0-9]{1,15})","media":\{"track":"(inbound|outbound)",'
    r'"chunk":"([0-9]{1,15})","timestamp":"([0-9]{1,15})","payload":"([A-Za-z0-9+/=]*)"\},'
    r'"streamSid":"[^"\\\x00-\x1f]{0,1024}"\}'
).fullmatch


def _loads(text: str | bytes, what: str) -> dict[str, Any]:
    if len(text) > MAX_MESSAGE:
        raise InvalidMediaStream(f"a {what} of {len(text)} characters; at most {MAX_MESSAGE}")
    try:
        # A platform sends one compact object per message: decode it without json.loads's
        # whitespace scans (50 messages a second per track); anything else takes the full path.
        doc, end = _DECODER.raw_decode(text) if isinstance(text, str) else (None, -1)
        if end != len(text):
            doc = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidMediaStream(f"the {what} is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidMediaStream(f"the {what} is not a JSON object")
    return doc


def _field(doc: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in doc:
        raise InvalidMediaStream(f"the {what} has no {name!r}")
    return doc[name]


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise InvalidMediaStream(f"{what} must be non-empty text of at most {_MAX_TEXT} characters")
    return value


def _base64(payload: str) -> bytes:
    try:
        # strict: only the base64 alphabet and correct padding (b64decode's validate=True
        # checks the same with a regular expression first)
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidMediaStream("media.payload is not base64") from None


def _number(value: object, what: str) -> int:
    """A whole number sent as text ("12", Twilio's way) or as a JSON number."""
    if type(value) is str and len(value) <= 15 and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**15:
        return value
    raise InvalidMediaStream(f'{what} must be a whole number (such as "12")')


class MediaStreamReader:
    """Reads the messages of one media stream in order (module docstring).

    >>> reader = MediaStreamReader()
    >>> reader.feed('{"event": "connected", "protocol": "Call", "version": "1.0.0"}') is None
    True
    >>> start = reader.feed('{"event": "start", "sequenceNumber": "1", "start": {'
    ...     '"streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"], '
    ...     '"customParameters": {"call_ref": "c-1"}, "mediaFormat": '
    ...     '{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}')
    >>> start.tracks, start.custom_parameters["call_ref"]
    (('inbound',), 'c-1')
    >>> reader.feed('{"event": "media", "sequenceNumber": "2", "media": {"track": "inbound", '
    ...     '"chunk": "1", "timestamp": "0", "payload": "//8="}}')
    MediaChunk(track='inbound', chunk=1, timestamp=0, payload=b'\\xff\\xff')
    """

    def __init__(self, *, flavor: str = "twilio") -> None:
        if flavor not in FLAVORS:
            raise InvalidMediaStream(f"flavor={flavor!r}: one of {', '.join(FLAVORS)}")
        self.flavor = flavor
        self._telnyx = flavor == "telnyx"
        self.started: StreamStarted | None = None
        self.stopped = False
        #: Telnyx chunks dropped because they came again or after a later one.
        self.dropped = 0
        self._sequence = 0
        self._chunks: dict[str, int] = {}
        self._first: dict[str, int] = {}  # Telnyx: each track's first chunk number

    def feed(self, text: str | bytes) -> StreamEvent:
        """The event of one message; ``None`` for ``connected`` and for events this reader
        does not use (``clear``, and those a platform adds)."""
        if self.started is not None and not (self.stopped or self._telnyx):
            media = _TWILIO_MEDIA(text) if type(text) is str and len(text) <= MAX_MESSAGE else None
            if media is not None:
                return self._media_spelled(*media.groups())
        doc = _loads(text, "message")
        event = doc.get("event")
        if not isinstance(event, str):
            raise InvalidMediaStream('a message without "event"; every message names its event')
        if self.stopped:
            raise InvalidMediaStream(f"a {event!r} message after 'stop'")
        if event == "connected":
            if self.started is not None:
                raise InvalidMediaStream("a 'connected' message after 'start'")
            return None
        if self._telnyx:
            if "sequence_number" in doc:  # checked, but Telnyx's order is not guaranteed
                _number(doc["sequence_number"], "sequence_number")
        elif "sequenceNumber" in doc:
            self._next_message(_number(doc["sequenceNumber"], "sequenceNumber"))
        if event == "start":
            if self.started is not None:
                raise InvalidMediaStream("a second 'start' message; one stream, one start")
            start = _field(doc, "start", "start message")
            self.started = self._start_telnyx(doc, start) if self._telnyx else self._start(start)
            return self.started
        if self.started is None:
            raise InvalidMediaStream(f"a {event!r} message before 'start'")
        if event == "media":
            media = _field(doc, "media", "media message")
            return self._media_telnyx(media) if self._telnyx else self._media(media)
        if event == "stop":
            self.stopped = True
            return StreamStopped()
        if event == "dtmf":
            dtmf = _field(doc, "dtmf", "dtmf message")
            if not isinstance(dtmf, dict):
                raise InvalidMediaStream("dtmf must be an object")
            track = dtmf.get("track", "inbound_track")
            return StreamDtmf(
                _text(track, "dtmf.track"), _text(_field(dtmf, "digit", "dtmf"), "dtmf.digit")
            )
        if event == "mark":
            mark = _field(doc, "mark", "mark message")
            if not isinstance(mark, dict):
                raise InvalidMediaStream("mark must be an object")
            return StreamMark(_text(mark.get("name", "-"), "mark.name"))
        return None

    def _start(self, start: object) -> StreamStarted:
        if not isinstance(start, dict):
            raise InvalidMediaStream("start must be an object")
        stream_sid = _text(_field(start, "streamSid", "start message"), "start.streamSid")
        call_sid = _text(start.get("callSid", stream_sid), "start.callSid")
        tracks = start.get("tracks", ["inbound"])
        if (
            not isinstance(tracks, list)
            or not tracks
            or len(set(tracks)) != len(tracks)
            or any(t not in TRACKS for t in tracks)
        ):
            raise InvalidMediaStream(
                'start.tracks must list "inbound", "outbound" or both, once each'
            )
        fmt = start.get("mediaFormat", {})
        if not isinstance(fmt, dict):
            raise InvalidMediaStream("start.mediaFormat must be an object")
        encoding = ENCODINGS.get(fmt.get("encoding", "audio/x-mulaw"))
        rate = fmt.get("sampleRate", 8000)
        channels = fmt.get("channels", 1)
        if encoding is None or rate != 8000 or channels != 1:
            raise InvalidMediaStream(
                f"start.mediaFormat {fmt!r}: this door records audio/x-mulaw or audio/x-alaw, "
                "8000 Hz, 1 channel per track"
            )
        params = self._parameters(start.get("customParameters", {}))
        self._chunks = dict.fromkeys(tracks, 0)
        return StreamStarted(stream_sid, call_sid, tuple(tracks), encoding, 8000, params)

    def _start_telnyx(self, doc: Mapping[str, Any], start: object) -> StreamStarted:
        if not isinstance(start, dict):
            raise InvalidMediaStream("start must be an object")
        call = _text(_field(start, "call_control_id", "start message"), "start.call_control_id")
        stream = _text(doc.get("stream_id", call), "stream_id")
        fmt = start.get("media_format", {})
        if not isinstance(fmt, dict):
            raise InvalidMediaStream("start.media_format must be an object")
        encoding = ENCODINGS.get(fmt.get("encoding", "PCMU"))
        rate = fmt.get("sample_rate", 8000)
        channels = fmt.get("channels", 1)
        if encoding is None or rate not in (8000, "8000") or channels not in (1, "1"):
            raise InvalidMediaStream(
                f"start.media_format {fmt!r}: this door records PCMU or PCMA, 8000 Hz, "
                "1 channel per track (stream_bidirectional_codec / codec PCMU)"
            )
        params = self._parameters(start.get("custom_parameters", {}))
        tracks = _TELNYX_TRACKS.get(params.get("tracks", "both"))
        if tracks is None:
            raise InvalidMediaStream(
                'the custom parameter "tracks" must be "inbound", "outbound" or "both"'
            )
        self._chunks = dict.fromkeys(tracks, 0)
        return StreamStarted(stream, call, tracks, encoding, 8000, params)

    def _media_telnyx(self, media: object) -> MediaChunk | None:
        assert self.started is not None
        if not isinstance(media, dict):
            raise InvalidMediaStream("media must be an object")
        track = media.get("track", self.started.tracks[0])
        if track not in self._chunks:
            raise InvalidMediaStream(
                f"media of track {track!r}; the custom parameter tracks did not announce it"
            )
        chunk = _number(_field(media, "chunk", "media message"), "media.chunk")
        audio = self._payload(media)
        first = self._first.setdefault(track, chunk)
        if chunk <= self._chunks[track]:
            self.dropped += 1  # came again, or after a later chunk: its place stays silent
            return None
        self._chunks[track] = chunk
        # Each chunk is one RTP payload of G.711 at 8 kHz: 8 bytes a millisecond.
        return MediaChunk(track, chunk, (chunk - first) * len(audio) // 8, audio)

    @staticmethod
    def _parameters(params: object) -> dict[str, str]:
        if not isinstance(params, dict) or len(params) > _MAX_PARAMETERS:
            raise InvalidMediaStream(
                f"the custom parameters must be an object of at most {_MAX_PARAMETERS} texts"
            )
        for name, value in params.items():
            if not isinstance(value, str) or len(name) > _MAX_TEXT or len(value) > _MAX_TEXT:
                raise InvalidMediaStream("each custom parameter must be short text")
        return dict(params)

    @staticmethod
    def _payload(media: Mapping[str, Any]) -> bytes:
        payload = _field(media, "payload", "media message")
        if not isinstance(payload, str):
            raise InvalidMediaStream("media.payload must be base64 text")
        return _base64(payload)

    def _next_message(self, sequence: int) -> None:
        """Twilio's ``sequenceNumber`` must grow: a message came again or out of order."""
        if sequence <= self._sequence:
            raise InvalidMediaStream(
                f"message {sequence} after message {self._sequence}: a message came again "
                "or out of order"
            )
        self._sequence = sequence

    def _announced(self, track: object) -> None:
        if track not in self._chunks:
            raise InvalidMediaStream(
                f"media of track {track!r}, which the start message did not announce"
            )

    def _next_chunk(self, track: str, chunk: int) -> None:
        """A Twilio track's chunk numbers must grow, and its last one is kept."""
        if chunk <= self._chunks[track]:
            raise InvalidMediaStream(
                f"chunk {chunk} of the {track} track after chunk {self._chunks[track]}: it came "
                "again or out of order"
            )
        self._chunks[track] = chunk

    def _media_spelled(
        self, sequence: str, track: str, chunk: str, timestamp: str, payload: str
    ) -> MediaChunk:
        """:meth:`_media` of a message matched by ``_TWILIO_MEDIA`` (the same checks, in the
        same order, after ``feed``'s check of the sequence number)."""
        self._next_message(int(sequence))
        self._announced(track)
        n = int(chunk)
        self._next_chunk(track, n)
        return MediaChunk(track, n, int(timestamp), _base64(payload))

    def _media(self, media: object) -> MediaChunk:
        assert self.started is not None
        if not isinstance(media, dict):
            raise InvalidMediaStream("media must be an object")
        track = media.get("track", self.started.tracks[0])
        self._announced(track)
        chunk = _number(media.get("chunk", self._chunks[track] + 1), "media.chunk")
        self._next_chunk(track, chunk)
        timestamp = _number(_field(media, "timestamp", "media message"), "media.timestamp")
        return MediaChunk(track, chunk, timestamp, self._payload(media))


@dataclass(frozen=True)
class ForkMetadata:
    """What a FreeSWITCH fork's first message says: the call, and its audio."""

    call_ref: str
    sample_rate: int
    channels: int


def parse_fork_metadata(
    text: str | bytes, *, sample_rate: int = 8000, channels: int = 1, field_name: str = "call_ref"
) -> ForkMetadata:
    """Read a fork's metadata (module docstring); ``sample_rate`` and ``channels`` are the
    defaults when it does not say, ``field_name`` the field naming the call reference.

    >>> parse_fork_metadata('{"call_ref": "4e0b8b2f", "sample_rate": 16000}')
    ForkMetadata(call_ref='4e0b8b2f', sample_rate=16000, channels=1)
    """
    doc = _loads(text, "fork's metadata")
    ref = doc.get(field_name)
    if not isinstance(ref, str) or not ref or len(ref.encode("utf-8", "replace")) > 256:
        raise InvalidMediaStream(
            f"the fork's metadata must name the call in {field_name!r} (text, at most 256 "
            'bytes): give uuid_audio_fork the metadata {"call_ref": "${uuid}"}'
        )
    rate = doc.get("sample_rate", sample_rate)
    if isinstance(rate, str) and rate in ("8k", "16k"):
        rate = 8000 if rate == "8k" else 16000
    count = doc.get("channels", channels)
    if rate not in (8000, 16000) or isinstance(rate, bool):
        raise InvalidMediaStream(f"sample_rate {rate!r}: a fork sends 8000 or 16000 Hz")
    if count not in (1, 2) or isinstance(count, bool):
        raise InvalidMediaStream(f"channels {count!r}: a fork sends 1 (mono) or 2 (stereo)")
    return ForkMetadata(ref, int(rate), int(count))


def twilio_signature(auth_token: bytes, url: str, params: Mapping[str, str] | None = None) -> str:
    """Twilio's request signature (``X-Twilio-Signature``): HMAC-SHA1, keyed with the account's
    auth token, over the full URL followed by each POST parameter's name and value, sorted by
    name; base64. A WebSocket upgrade is a GET: the URL alone (with its query, if any).

    >>> twilio_signature(b"12345", "https://mycompany.com/myapp.php?foo=1&bar=2", {
    ...     "CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
    ...     "From": "+12349013030", "To": "+18005551212"})
    '0/KCTR6DLpKmkAf8muzZqo1nDgQ='
    """
    data = url + "".join(name + value for name, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token, data.encode("utf-8"), hashlib.sha1).digest()
    return binascii.b2a_base64(digest, newline=False).decode("ascii")
