"""SDP (RFC 8866) for a recorder, sans I/O: read an offer's media streams, and answer it with
one receive-only G.711 stream per offered stream, or reject a stream (RFC 3264).

Read from an offer: the connection address (session- or media-level), each ``m=`` line's media,
port, protocol and formats, ``a=rtpmap`` (with RFC 3551's static payload types when absent:
0 PCMU, 8 PCMA, 13 CN, ...), the direction attributes at session and media level
(``sendonly``, ``recvonly``, ``sendrecv``, ``inactive``; a media-level one wins, the default is
``sendrecv``) and ``a=label`` (RFC 4574), which SIPREC metadata uses to say whose voice a stream
carries. Lines of types nobody asked for are kept as attributes or ignored; an offer that does
not start with ``v=0``, a line that is not ``<letter>=<value>``, an ``m=`` or ``c=`` line that
cannot be read, or an offer over the size limits raise
:class:`~sampledrec.errors.InvalidSipMessage`.

>>> offer = parse_sdp(
...     b"v=0\\r\\no=SRC 2890844526 2890844526 IN IP4 198.51.100.1\\r\\ns=-\\r\\n"
...     b"c=IN IP4 198.51.100.1\\r\\nt=0 0\\r\\n"
...     b"m=audio 12240 RTP/AVP 0 8 101\\r\\na=rtpmap:101 telephone-event/8000\\r\\n"
...     b"a=sendonly\\r\\na=label:1\\r\\n"
...     b"m=video 12250 RTP/AVP 96\\r\\na=sendonly\\r\\na=label:2\\r\\n"
... )
>>> [(m.media, m.port, m.payload_types, m.direction, m.label) for m in offer.media]
[('audio', 12240, (0, 8, 101), 'sendonly', '1'), ('video', 12250, (96,), 'sendonly', '2')]
>>> answer = build_answer(offer, [30000, 30002], address="192.0.2.9", session_id=7, version=1)
>>> print(answer.sdp.decode())  # doctest: +NORMALIZE_WHITESPACE
v=0
o=sampledrec 7 1 IN IP4 192.0.2.9
s=-
c=IN IP4 192.0.2.9
t=0 0
m=audio 30000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=recvonly
m=video 0 RTP/AVP 96
>>> answer.media[1].rejected
"media 'video' is not audio"
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, cast

from ..errors import InvalidArgument, InvalidSipMessage

__all__ = [
    "DIRECTIONS",
    "MAX_MEDIA",
    "MAX_SDP_BYTES",
    "RECORDABLE_ENCODINGS",
    "STATIC_PAYLOAD_TYPES",
    "Answer",
    "AnsweredMedia",
    "Direction",
    "Media",
    "RtpMap",
    "SessionDescription",
    "build_answer",
    "parse_sdp",
]

Direction: TypeAlias = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
DIRECTIONS: Final[frozenset[str]] = frozenset(("sendrecv", "sendonly", "recvonly", "inactive"))

MAX_SDP_BYTES: Final = 32 * 1024
"""One SDP; an SBC's offer for two or three recorded streams is 0.5 to 2 KiB."""
MAX_MEDIA: Final = 32
"""``m=`` lines in one SDP: each accepted one costs an RTP port."""

RECORDABLE_ENCODINGS: Final = ("PCMU", "PCMA")
"""What the recorder stores (G.711 mu-law and A-law, 8 kHz, mono)."""


@dataclass(frozen=True, slots=True)
class RtpMap:
    """An ``a=rtpmap`` (or a static payload type): encoding name as given, clock rate,
    channels."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1


STATIC_PAYLOAD_TYPES: Final[Mapping[int, RtpMap]] = {
    # RFC 3551 table 4, the audio payload types an SBC may send without an rtpmap.
    0: RtpMap(0, "PCMU", 8000),
    3: RtpMap(3, "GSM", 8000),
    4: RtpMap(4, "G723", 8000),
    8: RtpMap(8, "PCMA", 8000),
    9: RtpMap(9, "G722", 8000),
    13: RtpMap(13, "CN", 8000),
    18: RtpMap(18, "G729", 8000),
}

_LINE_RE: Final = re.compile(r"([A-Za-z])=(.*)")
_MEDIA_RE: Final = re.compile(
    r"([A-Za-z0-9\-_.]+) +([0-9]{1,5})(?:/([0-9]{1,5}))? +([A-Za-z0-9/\-_.]+)((?: +[\x21-\x7e]+)*)"
)
_CONNECTION_RE: Final = re.compile(r"([A-Za-z0-9]+) +([A-Za-z0-9]+) +([\x21-\x7e]+)")
_RTPMAP_RE: Final = re.compile(
    r"([0-9]{1,3}) +([A-Za-z0-9\-_.]+)/([0-9]{1,10})(?:/([0-9]{1,2}))?", re.ASCII
)
_FMTP_EVENTS_RE: Final = re.compile(r"[0-9]{1,3}(?:-[0-9]{1,3})?(?:,[0-9]{1,3}(?:-[0-9]{1,3})?)*")
_LINE_SPLIT_RE: Final = re.compile(r"\r?\n")


@dataclass(frozen=True, slots=True)
class Media:
    """One ``m=`` line of an SDP and what applies to it.

    ``connection`` and ``direction`` are the effective ones: the media-level value, else the
    session-level one (else None and ``sendrecv``). ``attributes`` are the media-level
    ``a=`` lines as ``(name, value)``, in order (``value`` None for a flag).
    """

    media: str
    port: int
    port_count: int
    protocol: str
    formats: tuple[str, ...]
    connection: str | None = None
    direction: Direction = "sendrecv"
    label: str | None = None
    attributes: tuple[tuple[str, str | None], ...] = ()

    @property
    def payload_types(self) -> tuple[int, ...]:
        """The formats that are RTP payload types (0 to 127), in the offer's order."""
        return tuple(
            int(fmt)
            for fmt in self.formats
            if fmt.isascii() and fmt.isdigit() and len(fmt) <= 3 and int(fmt) <= 127
        )

    def attribute(self, name: str) -> str | None:
        """The value of the first media-level ``a=name:value`` (None if absent or a flag)."""
        return next((value for key, value in self.attributes if key == name), None)

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """What ``payload_type`` means here: its ``a=rtpmap``, else its static meaning, else
        None."""
        for key, value in self.attributes:
            if key == "rtpmap" and value is not None:
                found = _RTPMAP_RE.fullmatch(value.strip(" \t"))
                if found and int(found.group(1)) == payload_type:
                    channels = int(found.group(4)) if found.group(4) else 1
                    return RtpMap(payload_type, found.group(2), int(found.group(3)), channels)
        return STATIC_PAYLOAD_TYPES.get(payload_type)


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP: the session-level fields a recorder uses, and its media in order."""

    origin: str | None
    session_name: str | None
    connection: str | None
    direction: Direction | None
    attributes: tuple[tuple[str, str | None], ...]
    media: tuple[Media, ...]


def _connection_address(value: str, number: int) -> str:
    found = _CONNECTION_RE.fullmatch(value.strip(" \t"))
    if found is None:
        raise InvalidSipMessage(
            f"SDP line {number}: c={value[:60]!r} is not '<nettype> <addrtype> <address>'",
            status=488,
        )
    return found.group(3).partition("/")[0]  # drop a multicast TTL and count


class _MediaBuilder:
    def __init__(self, value: str, number: int) -> None:
        found = _MEDIA_RE.fullmatch(value.strip(" \t"))
        if found is None:
            raise InvalidSipMessage(
                f"SDP line {number}: m={value[:60]!r} is not '<media> <port> <proto> <format> ...'",
                status=488,
            )
        self.media = found.group(1)
        self.port = int(found.group(2))
        self.port_count = int(found.group(3)) if found.group(3) else 1
        if self.port > 65535 or not 1 <= self.port_count <= 65535:
            raise InvalidSipMessage(f"SDP line {number}: port in m={value[:60]!r}", status=488)
        self.protocol = found.group(4)
        self.formats = tuple(found.group(5).split(" ")[1:])
        self.formats = tuple(fmt for fmt in self.formats if fmt)
        if not self.formats:
            raise InvalidSipMessage(
                f"SDP line {number}: m={value[:60]!r} has no format", status=488
            )
        self.connection: str | None = None
        self.direction: Direction | None = None
        self.label: str | None = None
        self.attributes: list[tuple[str, str | None]] = []

    def build(self, session_connection: str | None, session_direction: Direction | None) -> Media:
        return Media(
            media=self.media,
            port=self.port,
            port_count=self.port_count,
            protocol=self.protocol,
            formats=self.formats,
            connection=self.connection or session_connection,
            direction=self.direction or session_direction or "sendrecv",
            label=self.label,
            attributes=tuple(self.attributes),
        )


def parse_sdp(data: bytes | str, *, max_bytes: int = MAX_SDP_BYTES) -> SessionDescription:
    """Parse an SDP (CRLF or bare LF lines, blank lines and trailing white space ignored)."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > max_bytes:
            raise InvalidSipMessage(
                f"an SDP of {len(raw)} bytes, over the limit of {max_bytes}", status=413
            )
        text = raw.decode("utf-8", "replace")
    elif isinstance(data, str):
        text = data
        if len(text) > max_bytes:
            raise InvalidSipMessage(
                f"an SDP of {len(text)} characters, over {max_bytes}", status=413
            )
    else:
        raise InvalidArgument(f"SDP of type {type(data).__name__} must be bytes or str")
    origin: str | None = None
    session_name: str | None = None
    connection: str | None = None
    direction: Direction | None = None
    attributes: list[tuple[str, str | None]] = []
    media: list[_MediaBuilder] = []
    seen_version = False
    for number, line in enumerate(_LINE_SPLIT_RE.split(text), start=1):
        line = line.rstrip(" \t\r")
        if not line:
            continue
        found = _LINE_RE.fullmatch(line)
        if found is None:
            raise InvalidSipMessage(
                f"SDP line {number}: {line[:60]!r} is not '<type>=<value>'", status=488
            )
        kind, value = found.group(1), found.group(2)
        if not seen_version:
            if kind != "v" or value.strip(" \t") != "0":
                raise InvalidSipMessage(
                    f"SDP line {number}: {line[:60]!r}; an SDP starts with v=0", status=488
                )
            seen_version = True
            continue
        current = media[-1] if media else None
        if kind == "m":
            if len(media) == MAX_MEDIA:
                raise InvalidSipMessage(f"more than {MAX_MEDIA} m= lines", status=413)
            media.append(_MediaBuilder(value, number))
        elif kind == "c":
            address = _connection_address(value, number)
            if current is None:
                connection = address
            else:
                current.connection = address
        elif kind == "a":
            name, colon, attr_value = value.partition(":")
            attribute = (name.strip(" \t"), attr_value.strip(" \t") if colon else None)
            if current is None:
                attributes.append(attribute)
                if attribute[0] in DIRECTIONS:
                    direction = cast(Direction, attribute[0])
            else:
                current.attributes.append(attribute)
                if attribute[0] in DIRECTIONS:
                    current.direction = cast(Direction, attribute[0])
                elif attribute[0] == "label" and attribute[1]:
                    current.label = attribute[1]
        elif current is None and kind == "o":
            origin = value
        elif current is None and kind == "s":
            session_name = value
        # Other types (i, u, e, p, b, t, r, z, k, and unknown ones) say nothing a recorder uses.
    if not seen_version:
        raise InvalidSipMessage("an empty SDP", status=488)
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection=connection,
        direction=direction,
        attributes=tuple(attributes),
        media=tuple(builder.build(connection, direction) for builder in media),
    )


@dataclass(frozen=True, slots=True)
class AnsweredMedia:
    """What the answer says about one offered stream.

    ``port`` is 0 and ``rejected`` says why when the stream is refused; otherwise RTP arrives on
    ``port`` with ``encoding`` (``PCMU`` or ``PCMA``) as ``payload_type``, and
    ``telephone_event`` is the payload type of RFC 4733 events, when answered. ``direction`` is
    ``recvonly``, or ``inactive`` when the offer's stream does not send (an ``a=inactive`` offer
    pauses the stream; RFC 3264 section 6.1 answers it ``inactive``).
    """

    port: int
    payload_type: int | None
    encoding: str | None
    telephone_event: int | None
    direction: Direction
    label: str | None
    rejected: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """An SDP answer: the bytes to send, and per offered stream what was agreed."""

    sdp: bytes
    media: tuple[AnsweredMedia, ...]


def _choose(media: Media) -> tuple[RtpMap | None, RtpMap | None, str | None]:
    """(the recordable codec, telephone-event, why the stream cannot be recorded)."""
    if media.media.lower() != "audio":
        return None, None, f"media {media.media!r} is not audio"
    if media.protocol.upper() not in ("RTP/AVP", "RTP/AVPF"):
        return None, None, f"protocol {media.protocol!r} is not RTP/AVP (SRTP is not supported)"
    codec = events = None
    for payload_type in media.payload_types:
        rtpmap = media.rtpmap(payload_type)
        if rtpmap is None or rtpmap.clock_rate != 8000 or rtpmap.channels != 1:
            continue
        name = rtpmap.encoding.upper()
        if codec is None and name in RECORDABLE_ENCODINGS:
            codec = RtpMap(payload_type, name, 8000)
        elif events is None and name == "TELEPHONE-EVENT":
            events = RtpMap(payload_type, "telephone-event", 8000)
    if codec is None:
        return None, None, "no PCMU or PCMA among the offered formats"
    return codec, events, None


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgument(f"{name}={value!r} must be an int from {low} to {high}")
    return value


def build_answer(
    offer: SessionDescription,
    ports: Sequence[int | None],
    *,
    address: str,
    session_id: int,
    version: int,
    username: str = "sampledrec",
    telephone_event: bool = True,
) -> Answer:
    """Answer ``offer`` as a recorder (RFC 3264): one ``m=`` line per offered one, in order.

    ``ports[i]`` is the local RTP port for offered stream ``i``, or None (or 0) to reject it.
    An accepted stream gets the first PCMU or PCMA format of the offer (the offerer's order),
    plus ``telephone-event/8000`` when offered and ``telephone_event`` is true, and
    ``a=recvonly`` (``a=inactive`` when the offered stream does not send). A stream that is not
    RTP/AVP audio, offers no G.711, was disabled by the offer (port 0), or has no port is
    rejected: port 0, the offered formats echoed, nothing else. ``address`` is the IPv4 or IPv6
    address RTP is to be sent to; ``session_id`` and ``version`` fill ``o=`` (a later answer in
    the same dialog keeps the id and increments the version).
    """
    if not isinstance(offer, SessionDescription):
        raise InvalidArgument(f"offer={offer!r} must be a SessionDescription")
    if (
        not isinstance(ports, Sequence)
        or isinstance(ports, str | bytes)
        or len(ports) != len(offer.media)
    ):
        raise InvalidArgument(
            f"ports={ports!r} must give one port (or None) for each of the offer's "
            f"{len(offer.media)} m= lines"
        )
    try:
        if not isinstance(address, str):
            raise ValueError(address)
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise InvalidArgument(f"address={address!r} must be an IPv4 or IPv6 address") from None
    _check_int("session_id", session_id, 0, 2**63 - 1)
    _check_int("version", version, 0, 2**63 - 1)
    if not isinstance(username, str) or not re.fullmatch(r"[\x21-\x7e]{1,64}", username):
        raise InvalidArgument(f"username={username!r} must be 1 to 64 visible ASCII characters")
    addr = f"IN IP{ip.version} {ip.compressed}"
    lines = ["v=0", f"o={username} {session_id} {version} {addr}", "s=-", f"c={addr}", "t=0 0"]
    answered: list[AnsweredMedia] = []
    for index, (media, port) in enumerate(zip(offer.media, ports, strict=True)):
        codec, events, reason = _choose(media)
        if reason is None and media.port == 0:
            reason = "the offer disabled the stream (port 0)"
        if reason is None and (port is None or port == 0):
            reason = "no port was given for it"
        if reason is not None:
            lines.append(f"m={media.media} 0 {media.protocol} {' '.join(media.formats)}")
            answered.append(AnsweredMedia(0, None, None, None, "inactive", media.label, reason))
            continue
        assert codec is not None
        local_port = _check_int(f"ports[{index}]", port, 1, 65535)
        if not telephone_event:
            events = None
        direction: Direction = (
            "recvonly" if media.direction in ("sendonly", "sendrecv") else "inactive"
        )
        formats = [str(codec.payload_type)] + ([str(events.payload_type)] if events else [])
        lines.append(f"m={media.media} {local_port} {media.protocol} {' '.join(formats)}")
        lines.append(f"a=rtpmap:{codec.payload_type} {codec.encoding}/8000")
        if events is not None:
            offered_fmtp = next(
                (
                    value.partition(" ")[2].strip(" \t")
                    for key, value in media.attributes
                    if key == "fmtp"
                    and value is not None
                    and value.partition(" ")[0] == str(events.payload_type)
                ),
                "",
            )
            fmtp = offered_fmtp if _FMTP_EVENTS_RE.fullmatch(offered_fmtp) else "0-15"
            lines.append(f"a=rtpmap:{events.payload_type} telephone-event/8000")
            lines.append(f"a=fmtp:{events.payload_type} {fmtp}")
        lines.append(f"a={direction}")
        answered.append(
            AnsweredMedia(
                local_port,
                codec.payload_type,
                codec.encoding,
                events.payload_type if events else None,
                direction,
                media.label,
            )
        )
    sdp = ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")
    return Answer(sdp, tuple(answered))
