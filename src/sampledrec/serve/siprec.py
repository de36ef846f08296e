"""The SIPREC front door: a recording server (RFC 7866) that session border controllers point at.

Configuration (``[siprec]`` in ``--config``, or ``--siprec HOST:PORT --rtp-ports LO-HI``)::

    [siprec]
    listen = "0.0.0.0:5060"          # SIP over UDP and TCP on this address
    transports = ["udp", "tcp"]      # and "tls" (the default when tls_cert is given)
    tls_cert = "sip.crt"             # SIP over TLS (1.2 or later): PEM chain and key
    tls_key = "sip.key"
    tls_listen = "0.0.0.0:5061"      # default: the listen host, its port + 1 (5060 -> 5061)
    rtp_address = "192.0.2.10"       # where SBCs send RTP (default: the listen host)
    rtp_ports = "40000-40999"        # one even port per recorded stream
    rtp_timeout = 30                 # seconds without RTP: the recording is sealed, truncated
    jitter_packets = 8               # packets held while a missing one may still arrive
    decline = "reject-streams"       # or "403" (docs/decisions/0022-siprec-decline.md)
    call_ref = "sipSessionID"        # or "header:X-UCID", "metadata:ucid"
    caller = "participant:1"         # or "header:P-Asserted-Identity", "metadata:NAME", "from"
    attributes = { queue = "header:X-Queue", agent = "metadata:agentid" }

A *source* (``call_ref``, ``caller``, each attribute) names where a value comes from:
``header:NAME`` the first value of that SIP header of the INVITE; ``metadata:NAME`` the first
element or attribute with that local name in the recording metadata (vendor extensions
included); ``participant:N`` the number of the N-th participant of the metadata (1 is the
first); ``from`` the user part of the INVITE's From. A source that finds nothing leaves the
value out (the call reference falls back to the offer's own: ``sipSessionID``, else the
Call-ID, which is logged as a note).

What happens to a call:

- **INVITE** (new dialog): ``100 Trying`` at once; the offer is read (:func:`~sampledrec.
  ingest.parse_offer`); the call is decided through the server's decider (answered once the
  decision is durable). Selected: one RTP port per recorded stream (the caller's and the
  agent's, see below), a ``recvonly`` SDP answer in a ``200 OK``, and a recording opened in
  the vault, registered for pause and resume. Not selected: the configured decline. A
  retransmitted INVITE (same branch) gets the same response again, never a second decision; a
  ``200 OK`` over UDP is resent until the ACK arrives (RFC 3261 section 13.3.1.4).
- **re-INVITE** or **UPDATE** (RFC 3311) with an offer: a new answer on the same ports;
  streams all ``inactive`` (or ``sendonly`` from our side, i.e. the client no longer sends)
  pause the recording (a card payment), any stream sending again resumes it. Without an offer
  (a session refresh, or a metadata snapshot alone): ``200`` (to a re-INVITE, offering the
  session as it is). New metadata is logged (``metadata_updated``); the decision, the call
  reference and the legs stay those of the INVITE. An offer that crosses one being answered
  gets ``500`` with ``Retry-After``.
- **INFO** in a dialog (DTMF relay, vendor events): ``200``, ignored. **BYE**, **UPDATE**,
  **INFO** outside a dialog (unknown Call-ID or To tag): ``481``. Methods a recording server
  does not take (``REGISTER``, ``REFER``, ``SUBSCRIBE``, ...): ``405`` with ``Allow``; methods
  it does not know: ``501``.
- **CANCEL** before the answer: ``200`` to it, ``487`` to the INVITE, nothing recorded.
- **BYE**: ``200``; the recording is sealed. **OPTIONS**: ``200`` (keep-alive).
- Over **TLS** (``tls_cert``): the same SIP over a TLS connection (TLS 1.2 or later), framed
  by ``Content-Length`` as over TCP, answered on the same connection; the ``Contact`` of a
  ``2xx`` is a ``sips:`` URI when the dialog was set up with one, else ``;transport=tls``.
  RTP stays plain RTP (SRTP is not supported).
- No RTP for ``rtp_timeout`` seconds on a call that is not paused by re-INVITE: the recording
  is sealed as truncated. When the server stops, every open recording is sealed (truncated).

The two legs are the two channels of one recording, the caller's first, aligned by arrival:
which stream is whose comes from the metadata (the participant that the ``caller`` source
picks, ``participant:1`` by default, and the streams each participant sends, matched to the
SDP by ``a=label``); when the metadata is missing or does not say it consistently, the offer's
first two audio streams in order (the ``call_recording`` event says which, ``legs =
"metadata"`` or ``"m-lines"``, and why). Each leg's G.711 payload is kept byte for byte
(``mulaw`` or ``alaw`` stereo when both legs use the same codec, ``pcm16`` stereo otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import selectors
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from ..errors import InvalidArgument, InvalidSipMessage, SampledrecError, ServerStopping
from ..ingest.metadata import Participant, RecordingMetadata
from ..ingest.rtp import Interleaver, JitterBuffer
from ..ingest.sdp import AnsweredMedia, SessionDescription, build_answer
from ..ingest.sip import (
    Headers,
    SipRequest,
    StreamFramer,
    build_response,
    parse_message,
    parse_name_addr,
    uri_user,
)
from ..ingest.siprec import Legs, Offer, choose_legs, parse_offer, parse_update
from ..sampling.objections import normalize_number
from ..vault.audio import AudioFormat, alaw_to_pcm16, ulaw_to_pcm16
from ..vault.recorder import Recorder, Vault
from .decisions import DecisionRequest
from .doors import Door, DoorKind, Listen, Ready, Services, check_section, section_path, server_ssl
from .events import event
from .metrics import Metrics

__all__ = ["SIPREC", "SiprecConfig", "siprec_door"]

_DOOR: Final = "siprec"
_KEYS: Final = (
    "listen",
    "transports",
    "tls_cert",
    "tls_key",
    "tls_listen",
    "rtp_address",
    "rtp_ports",
    "rtp_timeout",
    "jitter_packets",
    "decline",
    "call_ref",
    "caller",
    "attributes",
)
DECLINES: Final = ("reject-streams", "403")
TRANSPORTS: Final = ("udp", "tcp", "tls")
_TLS_HANDSHAKE_SECONDS: Final = 10.0
_ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"
# Methods of SIP and its extensions that a recording server does not take: 405 with Allow
# (RFC 3261 8.2.1); a method not known at all gets 501 (section 21.5.2).
_KNOWN_NOT_ALLOWED: Final = frozenset(
    ("REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
)
_RETRY_AFTER: Final = 10  # seconds, at most, in the Retry-After of a 500 to a crossing offer
_SUPPORTED_TAGS: Final = frozenset({"siprec"})
_T1: Final = 0.5
_T2: Final = 4.0
_TRANSACTION_LIFE: Final = 32.0  # seconds a finished transaction answers retransmissions
_WRITE_BYTES: Final = 16_000  # audio gathered before each write to the recorder (1 s stereo)
_DEFAULT_RTP_PORTS: Final = (40000, 40999)

Decline = Literal["reject-streams", "403"]


def _source(value: object, what: str) -> str:
    if not isinstance(value, str) or not (
        value in ("from", "sipSessionID")
        or (value.partition(":")[0] in ("header", "metadata") and value.partition(":")[2])
        or (value.startswith("participant:") and value[12:].isdigit() and int(value[12:]) >= 1)
    ):
        raise InvalidArgument(
            f"[siprec] {what} = {value!r} is not a source; write header:NAME, metadata:NAME, "
            "participant:N (N from 1) or from"
        )
    return value


def parse_port_range(text: object, what: str = "--rtp-ports") -> tuple[int, int]:
    """``LO-HI`` (``40000-40999``) into two ints, with at least two ports."""
    low, sep, high = str(text).partition("-")
    if (
        not isinstance(text, str)
        or not sep
        or not low.isdigit()
        or not high.isdigit()
        or not 1024 <= int(low) < int(high) <= 65535
    ):
        raise InvalidArgument(
            f"{what} {text!r} must be LO-HI, two ports from 1024 to 65535 with LO < HI, such "
            "as 40000-40999"
        )
    return int(low), int(high)


@dataclass(frozen=True)
class SiprecConfig:
    """The SIPREC door's settings (the module docstring lists them), checked when built: the
    TLS certificate and key are loaded then, so that a mistake stops ``sampledrec serve``
    before it listens.

    ``transports`` defaults to UDP and TCP, and TLS too when ``tls_cert`` is given; TLS
    listens on ``tls_listen``, by default the ``listen`` host and the next port (5061 beside
    5060, RFC 3261's ports for SIP and SIP over TLS).
    """

    listen: Listen
    transports: tuple[str, ...] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_listen: Listen | None = None
    rtp_address: str | None = None
    rtp_ports: tuple[int, int] = _DEFAULT_RTP_PORTS
    rtp_timeout: float = 30.0
    jitter_packets: int = 8
    decline: Decline = "reject-streams"
    call_ref: str = "sipSessionID"
    caller: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        tls = self.tls_cert is not None or self.tls_key is not None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument(
                "[siprec] give tls_cert and tls_key together (--siprec-tls-cert and "
                "--siprec-tls-key), or neither"
            )
        transports = self.transports
        if transports is None:
            transports = ("udp", "tcp", "tls") if tls else ("udp", "tcp")
        if not transports or not set(transports) <= set(TRANSPORTS):
            raise InvalidArgument(
                '[siprec] transports must list one or more of "udp", "tcp", "tls"'
            )
        if "tls" in transports and not tls:
            raise InvalidArgument(
                '[siprec] transports lists "tls": give tls_cert and tls_key (PEM files)'
            )
        if tls and "tls" not in transports:
            raise InvalidArgument(
                '[siprec] tls_cert is given but transports does not list "tls"; add "tls" to '
                "transports, or drop tls_cert and tls_key"
            )
        if self.tls_listen is not None and not tls:
            raise InvalidArgument("[siprec] tls_listen needs tls_cert and tls_key")
        object.__setattr__(self, "transports", tuple(dict.fromkeys(transports)))
        if tls:
            if self.tls_listen is None:
                if self.listen.port == 65535:
                    raise InvalidArgument(
                        f"[siprec] listens on {self.listen}: there is no next port for TLS; "
                        'give tls_listen = "HOST:PORT"'
                    )
                port = self.listen.port + 1 if self.listen.port else 0
                object.__setattr__(self, "tls_listen", Listen(self.listen.host, port))
            assert self.tls_cert is not None and self.tls_key is not None
            object.__setattr__(self, "ssl_context", sip_tls_context(self.tls_cert, self.tls_key))
        if self.rtp_address is None and self.listen.host in ("0.0.0.0", "::", ""):
            raise InvalidArgument(
                f"[siprec] listens on {self.listen}: give rtp_address, the address SBCs are to "
                "send RTP to (the SDP answer names it)"
            )
        if not 0 < self.rtp_timeout <= 3600:
            raise InvalidArgument("[siprec] rtp_timeout must be seconds in (0, 3600]")
        if self.decline not in DECLINES:
            raise InvalidArgument(f"[siprec] decline must be one of {', '.join(DECLINES)}")
        _source(self.call_ref, "call_ref")
        if self.caller is not None:
            _source(self.caller, "caller")
        for name, source in self.attributes.items():
            _source(source, f"attributes.{name}")

    @property
    def media_address(self) -> str:
        host = self.rtp_address or self.listen.host
        return "127.0.0.1" if host == "localhost" else host

    @classmethod
    def from_section(cls, section: Mapping[str, Any], base: Path) -> SiprecConfig:
        """The ``[siprec]`` section of a config file."""
        check_section("siprec", section, _KEYS)
        kw: dict[str, Any] = {}
        if "transports" in section:
            value = section["transports"]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidArgument('[siprec] transports must be a list such as ["udp", "tcp"]')
            kw["transports"] = tuple(value)
        for key in ("tls_cert", "tls_key"):
            if (file := section_path("siprec", section, key, base)) is not None:
                kw[key] = file
        if "tls_listen" in section:
            kw["tls_listen"] = Listen.parse(section["tls_listen"], "[siprec] tls_listen")
        if "rtp_address" in section:
            kw["rtp_address"] = str(section["rtp_address"])
        if "rtp_ports" in section:
            kw["rtp_ports"] = parse_port_range(section["rtp_ports"], "[siprec] rtp_ports")
        for key, kind in (("rtp_timeout", float), ("jitter_packets", int)):
            if key in section:
                value = section[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InvalidArgument(f"[siprec] {key} must be a number")
                if kind is int and not (isinstance(value, int) and 0 <= value <= 1000):
                    raise InvalidArgument(f"[siprec] {key} must be a whole number, 0-1000")
                kw[key] = kind(value)
        for key in ("decline", "call_ref", "caller"):
            if key in section:
                if not isinstance(section[key], str):
                    raise InvalidArgument(f"[siprec] {key} must be text")
                kw[key] = section[key]
        if "attributes" in section:
            attrs = section["attributes"]
            if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
                raise InvalidArgument(
                    '[siprec] attributes must be a table such as { queue = "header:X-Queue" }'
                )
            kw["attributes"] = dict(attrs)
        return cls(Listen.parse(section["listen"], "[siprec] listen"), **kw)


def sip_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server side of SIP over TLS: TLS 1.2 or later, the certificate chain and its key
    from PEM files. Clients are not asked for a certificate (an SBC's trunk is usually
    authenticated by address); a file that cannot be read, or that is not what it should be,
    is an :class:`~sampledrec.errors.InvalidArgument` naming it."""
    for what, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise InvalidArgument(
                f"[siprec] {what} {path}: {exc.strerror}; give a PEM file that the server's "
                "user can read"
            ) from None
    return server_ssl(cert, key, named=f"[siprec] tls_cert {cert} / tls_key {key}")


def _lookup(source: str, offer: Offer) -> str | None:
    kind, _, name = source.partition(":")
    request, metadata = offer.request, offer.metadata
    if source == "from":
        return uri_user(request.from_addr.uri)
    if kind == "header":
        value = request.headers.get(name)
        return value.strip() if value else None
    if metadata is None:
        return None
    if kind == "metadata":
        found = metadata.values(name)
        return found[0] if found else None
    if kind == "participant":
        index = int(name) - 1
        if index < len(metadata.participants):
            return metadata.participants[index].number
    return None


def decision_request(offer: Offer, config: SiprecConfig) -> tuple[DecisionRequest, str | None]:
    """What to decide for ``offer`` under ``config``, and a note when the reference is not
    the recorded call's identity from the metadata."""
    ref, note = offer.call_ref, offer.note
    if config.call_ref != "sipSessionID":
        found = _lookup(config.call_ref, offer)
        if found:
            ref, note = found, None
        else:
            note = f"{config.call_ref} not found; " + (note or "decided on the sipSessionID")
    attrs = {name: v for name, src in config.attributes.items() if (v := _lookup(src, offer))}
    caller = _lookup(config.caller, offer) if config.caller else None
    if caller:
        try:
            normalize_number(caller)
        except InvalidArgument:
            # An anonymous caller, an extension: decide without it rather than not at all.
            event("caller_unusable", door=_DOOR, source=config.caller)
            caller = None
    return DecisionRequest(ref, attrs, caller or None), note


def caller_participant(offer: Offer, config: SiprecConfig) -> Participant | None:
    """The participant of ``offer``'s metadata who is the caller, by the ``caller`` source
    (``participant:1`` when none is configured): the N-th participant, or the one participant
    whose address of record carries the number that source finds; None when the metadata
    cannot say."""
    metadata = offer.metadata
    if metadata is None or not metadata.participants:
        return None
    source = config.caller or "participant:1"
    kind, _, name = source.partition(":")
    if kind == "participant":
        index = int(name) - 1
        return metadata.participants[index] if index < len(metadata.participants) else None
    value = _lookup(source, offer)
    if not value:
        return None
    wanted = {value, uri_user(value) or value, _normalized(value)}
    found = [
        p
        for p in metadata.participants
        if wanted & {a for aor in p.aors for a in (aor, uri_user(aor), _normalized(uri_user(aor)))}
    ]
    return found[0] if len(found) == 1 else None


def _normalized(number: str | None) -> str | None:
    if not number:
        return None
    try:
        return normalize_number(number)
    except InvalidArgument:
        return None


# -- RTP ------------------------------------------------------------------------------------------


class _PortPool:
    """Even ports of the configured range, handed out bound (a port that another program
    holds is skipped, and tried again later), and taken back.

    A call's streams get consecutive even ports when the range allows (``P``, ``P + 2``): what
    an SBC's trace or a firewall rule reads most easily, and what tools that replay a capture
    (sipp's ``play_pcap_audio``) assume.
    """

    def __init__(self, low: int, high: int, address: str = "127.0.0.1") -> None:
        first = self._first = low + (low % 2)
        self._free: dict[int, None] = dict.fromkeys(range(first, high + 1, 2))  # in order
        self._address = address
        self._bound: dict[int, socket.socket] = {}

    def take_run(self, count: int) -> list[int | None]:
        """``count`` ports, consecutive when possible; ``None`` for each one not available."""
        if count > 1:
            # Runs that start on a multiple of 2 * count from the range's start first: the
            # range then stays cut in whole runs, and one always fits while a run is free.
            free = sorted(self._free, key=lambda p: (p - self._first) % (2 * count) != 0)
            tries = 16  # runs tried where a port turns out held by another program
            for port in free:
                run = [port + 2 * i for i in range(count)]
                if port in self._free and all(p in self._free for p in run[1:]):
                    bound = [p for p in run if self._bind(p)]
                    if len(bound) == count:
                        return list(run)
                    for p in bound:
                        self.give(p)
                    tries -= 1
                    if not tries:
                        break  # many ports held elsewhere: take them one by one
        return [self.take() for _ in range(count)]

    def take(self) -> int | None:
        for port in list(self._free):
            if self._bind(port):
                return port
        return None

    def _bind(self, port: int) -> bool:
        del self._free[port]
        sock = socket.socket(
            socket.AF_INET6 if ":" in self._address else socket.AF_INET, socket.SOCK_DGRAM
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RTP_RCVBUF)
            sock.bind((self._address, port))
        except OSError:
            sock.close()
            self._free[port] = None  # in use elsewhere for now: try it again later
            return False
        sock.setblocking(False)
        self._bound[port] = sock
        return True

    def socket_of(self, port: int) -> socket.socket | None:
        """The bound socket of a port handed out (once: the endpoint then owns it)."""
        return self._bound.pop(port, None)

    def give(self, port: int) -> None:
        sock = self._bound.pop(port, None)
        if sock is not None:
            sock.close()
        self._free[port] = None


_RTP_RCVBUF: Final = 256 * 1024  # a burst of a few hundred packets waits here, not dropped


_TICK: Final = 0.05  # seconds between two reads of the RTP sockets


class _MediaPump:
    """Reads the RTP of every recorded leg in batches, one tick every 50 ms.

    The sockets are not registered with the event loop: a packet arrives every 20 ms on each
    leg, and waking the loop for each one costs more than the packet's own work. Each tick asks
    the kernel which sockets have data (one ``epoll`` call), reads them dry, hands each leg its
    datagrams, and lets each call touched interleave and write what all its legs reached.
    Packets wait at most a tick in the socket's buffer (256 KiB: seconds of audio); a pause,
    a resume and the end of a call read the call's sockets first.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._selector = selectors.DefaultSelector()
        self._legs: dict[int, _Leg] = {}
        self._metrics = metrics

    def add(self, leg: _Leg, sock: socket.socket) -> None:
        leg.sock = sock
        self._legs[sock.fileno()] = leg
        self._selector.register(sock, selectors.EVENT_READ)

    def remove(self, leg: _Leg) -> None:
        """Read what is left on the leg's socket (the last packets before a BYE), then close
        it."""
        sock = leg.sock
        if sock is None:
            return
        self._legs.pop(sock.fileno(), None)
        self._selector.unregister(sock)
        self._count(*leg.received(_drain(sock), time.monotonic()))
        leg.sock = None
        sock.close()

    def catch_up(self, call: _Call) -> None:
        """Read what is waiting on a call's sockets now (before it pauses or resumes, so that
        the audio lands on the right side of the pause)."""
        now = time.monotonic()
        for leg in call.legs:
            if leg.sock is not None:
                self._count(*leg.received(_drain(leg.sock), now))

    def _count(self, packets: int, lost: int) -> None:
        if packets:
            self._metrics.packets_received.inc(_DOOR, by=packets)
        if lost:
            self._metrics.packets_lost.inc(_DOOR, by=lost)

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await asyncio.sleep(_TICK)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        calls: dict[int, _Call] = {}
        legs = self._legs
        packets = lost = 0
        for key, _ in self._selector.select(0):
            leg = legs.get(key.fd)
            if leg is None or leg.sock is None:
                continue
            got, missing = leg.received(_drain(leg.sock), now)
            packets += got
            lost += missing
            calls[id(leg.call)] = leg.call
        self._count(packets, lost)
        for call in calls.values():
            call.advance()

    def close(self) -> None:
        for leg in list(self._legs.values()):
            if leg.sock is not None:
                leg.sock.close()
                leg.sock = None
        self._legs.clear()
        self._selector.close()


def _drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock`` (a non-blocking socket)."""
    datagrams: list[bytes] = []
    recv = sock.recv
    try:
        while True:
            datagrams.append(recv(2048))
    except BlockingIOError:
        pass
    except OSError:  # an ICMP error reported on the socket: the packets read so far stand
        pass
    return datagrams


class _Leg:
    """One recorded stream: its port, its jitter buffer, and the channel it fills."""

    def __init__(self, call: _Call, channel: int, media: AnsweredMedia, window: int) -> None:
        assert media.payload_type is not None and media.encoding is not None
        self.call = call
        self.channel = channel
        self.port = media.port
        self.encoding = media.encoding
        self.buffer = JitterBuffer(media.payload_type, media.encoding, window=window)
        self.sock: socket.socket | None = None
        self.started = False

    def received(self, datagrams: list[bytes], now: float) -> tuple[int, int]:
        """Take the datagrams read from the leg's socket; the RTP packets among them, and
        the packets found lost."""
        if not datagrams:
            return 0, 0
        buffer = self.buffer
        lost, count = buffer.lost, buffer.received + buffer.late
        audio = buffer.feed(datagrams)
        packets = buffer.received + buffer.late - count
        if packets:  # RTP, not only strays
            self.call.last_rtp = now
        if audio:
            self.call.audio(self, audio, now)
        return packets, buffer.lost - lost


class _Call:
    """One recorded call: its legs, its recorder, and the OpenRecording hooks."""

    def __init__(self, door: _SiprecDoor, call_ref: str | bytes, recorder: Recorder) -> None:
        self.door = door
        self.call_ref = call_ref
        self.recorder = recorder
        self.legs: list[_Leg] = []
        self.interleaver: Interleaver | None = None
        self.media_start: float | None = None
        self.last_rtp = time.monotonic()
        self._pending = bytearray()
        self._paused = False
        self.inactive = False  # paused by re-INVITE: no RTP expected
        self.closed = False
        self.convert: Callable[[bytes], bytes] | None = None

    @property
    def paused(self) -> bool:
        return self._paused

    async def pause(self, *, by: str) -> bool:
        if self._paused or self.closed:
            return False
        self.door.pump.catch_up(self)
        self._write(final=False)
        self.recorder.pause()
        self._paused = True
        event("call_paused", door=_DOOR, by=by)
        return True

    async def resume(self, *, by: str) -> bool:
        if not self._paused or self.closed:
            return False
        self.door.pump.catch_up(self)
        self._write(final=False)
        self.recorder.resume()
        self._paused = False
        event("call_resumed", door=_DOOR, by=by)
        return True

    def audio(self, leg: _Leg, data: bytes, now: float) -> None:
        """Add a leg's audio in order; :meth:`advance` interleaves it."""
        if self.closed or self.interleaver is None:
            return
        if self.media_start is None:
            self.media_start = now
        if not leg.started:
            leg.started = True
            self.interleaver.pad_to(leg.channel, round((now - self.media_start) * 8000))
        self.interleaver.add(leg.channel, data)

    def advance(self) -> None:
        """Interleave what every leg reached; write once a second's worth is gathered."""
        if self.closed or self.interleaver is None:
            return
        self._pending += self.interleaver.take()
        if len(self._pending) >= _WRITE_BYTES:
            self._flush()

    def _write(self, *, final: bool) -> None:
        if self.interleaver is not None:
            if final:
                for leg in self.legs:
                    tail = leg.buffer.flush()
                    if tail:
                        self.interleaver.add(leg.channel, tail)
            self._pending += self.interleaver.take(final=final)
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = bytes(self._pending)
        self._pending.clear()
        if self.convert is not None:
            data = self.convert(data)
        self.recorder.write(data)

    async def close(self, *, truncated: bool, why: str) -> None:
        if self.closed:
            return
        for leg in self.legs:
            self.door.pump.remove(leg)  # the packets still in the socket first
        self._write(final=True)
        self.closed = True
        for leg in self.legs:
            self.door.ports.give(leg.port)
        self.door.services.recordings.close(self.call_ref)
        lost = sum(leg.buffer.lost for leg in self.legs)
        try:
            await asyncio.to_thread(self.recorder.close, truncated=truncated)
        except SampledrecError as exc:
            event("recording_failed", level=logging.ERROR, door=_DOOR, exc=exc)
            return
        event("recording_sealed", door=_DOOR, why=why, truncated=truncated, packets_lost=lost)


# -- SIP ------------------------------------------------------------------------------------------

Reply = Callable[[bytes], None]


@dataclass
class _Transaction:
    """An INVITE server transaction: what was last answered (resent on a retransmission)."""

    response: bytes | None = None
    final: bool = False
    cancelled: bool = False
    expires: float = 0.0

    def was_cancelled(self) -> bool:
        """Whether a CANCEL arrived (read after an await: it may have come meanwhile)."""
        return self.cancelled


@dataclass
class _Dialog:
    """A recording session (one SIP dialog): tag, answer state and the recording, if any."""

    call_id: str
    to_tag: str
    session_id: int
    version: int = 0
    ports: list[int | None] = field(default_factory=list)
    call: _Call | None = None
    ok: bytes | None = None  # the 2xx to resend until ACK (UDP)
    acked: bool = False
    sdp: bytes | None = None  # the last SDP sent: offered again to a re-INVITE without one
    negotiating: bool = False  # an offer (re-INVITE, UPDATE) is being answered


class _SiprecDoor:
    def __init__(self, config: SiprecConfig, services: Services) -> None:
        self.config = config
        self.services = services
        self.ports = _PortPool(*config.rtp_ports, address=config.media_address)
        self.pump = _MediaPump(services.metrics)
        self.vault = Vault(services.store, services.log)
        self.transactions: dict[tuple[str, str], _Transaction] = {}
        self.dialogs: dict[str, _Dialog] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.finishing: set[asyncio.Task[Any]] = set()
        #: Where each transport listens, as the Contact of a 2xx names it.
        self.contacts: dict[str, Listen] = {}

    def spawn(self, coro: Any, *, finish: bool = False) -> None:
        """Run ``coro`` as a task; with ``finish``, a stop waits for it (sealing a
        recording) rather than cancelling it (resending a 2xx, deciding a new call)."""
        task = asyncio.get_running_loop().create_task(coro)
        (self.finishing if finish else self.tasks).add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self.finishing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            event("siprec_error", level=logging.ERROR, door=_DOOR, exc=exc)

    # -- messages --------------------------------------------------------------------------------

    def handle(self, data: bytes, reply: Reply, udp: bool, transport: str) -> None:
        try:
            message = parse_message(data)
        except InvalidSipMessage as exc:
            self._answer_invalid(data, exc, reply)
            return
        if not isinstance(message, SipRequest):
            return  # responses: this server sends no requests
        request = message
        try:
            required = request.require - _SUPPORTED_TAGS
            if required and request.method not in ("ACK", "CANCEL"):
                reply(
                    build_response(
                        request,
                        420,
                        to_tag=self._tag(request),
                        headers=[("Unsupported", ", ".join(sorted(required)))],
                    )
                )
                return
            method = request.method
            if method == "INVITE":
                self._invite(request, reply, udp, transport)
            elif method == "ACK":
                dialog = self.dialogs.get(request.call_id)
                if dialog is not None:
                    dialog.acked = True
            elif method in ("BYE", "UPDATE", "INFO"):
                self._in_dialog(request, reply)
            elif method == "CANCEL":
                self._cancel(request, reply)
            elif method == "OPTIONS":
                reply(
                    build_response(
                        request,
                        200,
                        to_tag=self._tag(request),
                        headers=[
                            ("Allow", _ALLOW),
                            ("Accept", "application/sdp, application/rs-metadata+xml"),
                            ("Supported", "siprec"),
                        ],
                    )
                )
            else:
                status = 405 if method in _KNOWN_NOT_ALLOWED else 501
                reply(
                    build_response(
                        request, status, to_tag=self._tag(request), headers=[("Allow", _ALLOW)]
                    )
                )
        except InvalidArgument as exc:  # a request we cannot answer (no tag possible, ...)
            event("sip_unanswerable", level=logging.WARNING, door=_DOOR, exc=exc)

    def _tag(self, request: SipRequest) -> str:
        dialog = self.dialogs.get(request.call_id)
        return dialog.to_tag if dialog is not None else secrets.token_hex(8)

    def _answer_invalid(self, data: bytes, exc: InvalidSipMessage, reply: Reply) -> None:
        """Answer a request whose body or details are wrong, when its headers can be read."""
        event("sip_invalid", level=logging.INFO, door=_DOOR, status=exc.status)

    def _key(self, request: SipRequest) -> tuple[str, str]:
        return (request.via_branch or f"{request.call_id}/{request.cseq.number}", "INVITE")

    def _invite(self, request: SipRequest, reply: Reply, udp: bool, transport: str) -> None:
        key = self._key(request)
        known = self.transactions.get(key)
        if known is not None:  # a retransmission: the same answer, never a second decision
            if known.response is not None:
                reply(known.response)
            return
        transaction = self.transactions[key] = _Transaction()
        if request.to_tag:
            dialog = self._dialog_of(request)
            if dialog is None:
                self._final(transaction, reply, build_response(request, 481))
            elif dialog.negotiating:  # RFC 3261 14.2: an offer is being answered
                self._final(transaction, reply, self._retry_later(request))
            else:
                dialog.negotiating = True
                self.spawn(self._reinvite(request, dialog, transaction, reply))
            return
        try:
            offer = parse_offer(request)
        except InvalidSipMessage as exc:
            self._final(transaction, reply, _refusal(request, exc, secrets.token_hex(8)))
            return
        trying = build_response(request, 100)
        transaction.response = trying
        reply(trying)
        dialog = _Dialog(request.call_id, secrets.token_hex(8), secrets.randbelow(2**62))
        self.dialogs[request.call_id] = dialog
        self.spawn(self._new_call(offer, dialog, transaction, reply, udp, transport))

    def _dialog_of(self, request: SipRequest) -> _Dialog | None:
        """The dialog an in-dialog request belongs to: its Call-ID and our To tag."""
        dialog = self.dialogs.get(request.call_id)
        if dialog is None or request.to_tag != dialog.to_tag:
            return None
        return dialog

    def _retry_later(self, request: SipRequest) -> bytes:
        """A 500 with Retry-After, to an offer that crosses one being answered (RFC 3261
        14.2, RFC 3311 5.2)."""
        return build_response(
            request, 500, headers=[("Retry-After", str(secrets.randbelow(_RETRY_AFTER + 1)))]
        )

    def _final(self, transaction: _Transaction, reply: Reply, response: bytes) -> None:
        transaction.response = response
        transaction.final = True
        transaction.expires = time.monotonic() + _TRANSACTION_LIFE
        reply(response)

    async def _new_call(
        self,
        offer: Offer,
        dialog: _Dialog,
        transaction: _Transaction,
        reply: Reply,
        udp: bool,
        transport: str,
    ) -> None:
        request = offer.request
        services = self.services
        wanted, note = decision_request(offer, self.config)
        if note:
            event("call_ref_note", door=_DOOR, note=note)
        started = time.monotonic()
        try:
            answer = await services.decider.decide(wanted)
        except (ServerStopping, SampledrecError) as exc:
            status = 503 if isinstance(exc, ServerStopping) else 500
            if isinstance(exc, InvalidArgument):
                status = 400
            event("decision_failed", level=logging.WARNING, door=_DOOR, status=status)
            self.dialogs.pop(dialog.call_id, None)
            if not transaction.cancelled:
                self._final(
                    transaction, reply, build_response(request, status, to_tag=dialog.to_tag)
                )
            return
        services.metrics.decision_seconds.observe(time.monotonic() - started, _DOOR)
        services.metrics.calls_decided.inc(_DOOR)
        decision = answer.decision
        if transaction.cancelled:
            self.dialogs.pop(dialog.call_id, None)
            return
        if not decision.record:
            services.metrics.calls_declined.inc(_DOOR)
            event("call_declined", door=_DOOR, answer=self.config.decline)
            if self.config.decline == "403":
                self.dialogs.pop(dialog.call_id, None)
                warning = ("Warning", '399 sampledrec "not selected for recording"')
                response = build_response(request, 403, to_tag=dialog.to_tag, headers=[warning])
                self._final(transaction, reply, response)
                return
            dialog.ports = [None] * len(offer.sdp.media)
            self._ok(offer, dialog, transaction, reply, udp, transport)
            return
        legs = choose_legs(offer, caller_participant(offer, self.config))
        ports = self._choose_ports(legs, len(offer.sdp.media))
        try:
            sdp_answer = build_answer(
                offer.sdp,
                ports,
                address=self.config.media_address,
                session_id=dialog.session_id,
                version=dialog.version,
            )
        except InvalidArgument:
            for port in ports:
                if port:
                    self.ports.give(port)
            raise
        for index, media in enumerate(sdp_answer.media):
            if media.rejected is not None and ports[index]:
                self.ports.give(ports[index])  # type: ignore[arg-type]
                ports[index] = None
        # The caller's leg first (channel 1), then the agent's: the order of legs.streams.
        legs_media: list[tuple[int, AnsweredMedia]] = [
            (index, sdp_answer.media[index])
            for index in legs.streams
            if sdp_answer.media[index].rejected is None
        ]
        dialog.ports = ports
        if not legs_media:
            self.dialogs.pop(dialog.call_id, None)
            warning = ("Warning", '304 sampledrec "no PCMU or PCMA audio stream to record"')
            self._final(
                transaction,
                reply,
                build_response(request, 488, to_tag=dialog.to_tag, headers=[warning]),
            )
            return
        encodings = {media.encoding for _, media in legs_media}
        channels = len(legs_media)
        convert: Callable[[bytes], bytes] | None = None
        if len(encodings) == 1:
            fmt = AudioFormat("mulaw" if "PCMU" in encodings else "alaw", 8000, channels)
        else:  # one leg mu-law, the other A-law: both decoded to PCM16
            fmt = AudioFormat("pcm16", 8000, channels)
            convert = _mixed_decoder(legs_media[0][1].encoding or "", legs_media[1][1].encoding)
        try:
            recorder = await asyncio.to_thread(
                _open_recorder, self.vault, decision, fmt, dict(wanted.attributes)
            )
        except SampledrecError as exc:
            event("recording_failed", level=logging.ERROR, door=_DOOR, exc=exc)
            self._release_ports(dialog)
            self.dialogs.pop(dialog.call_id, None)
            if not transaction.cancelled:
                self._final(transaction, reply, build_response(request, 500, to_tag=dialog.to_tag))
            return
        call = _Call(self, wanted.call_ref, recorder)
        call.convert = convert
        silence = [0xFF if m.encoding == "PCMU" else 0xD5 for _, m in legs_media]
        call.interleaver = Interleaver(silence)
        for channel, (_, media) in enumerate(legs_media):
            call.legs.append(_Leg(call, channel, media, self.config.jitter_packets))
        sockets = [self.ports.socket_of(leg.port) for leg in call.legs]
        if None in sockets or transaction.was_cancelled():
            failed = None in sockets
            why = "no RTP port" if failed else "the recording client cancelled the call"
            for sock in sockets:
                if sock is not None:
                    sock.close()
            await asyncio.to_thread(recorder.abort, why)
            self._release_ports(dialog)
            self.dialogs.pop(dialog.call_id, None)
            if failed:
                event("rtp_bind_failed", level=logging.ERROR, door=_DOOR)
                if not transaction.was_cancelled():
                    response = build_response(request, 503, to_tag=dialog.to_tag)
                    self._final(transaction, reply, response)
            return
        for leg, sock in zip(call.legs, sockets, strict=True):
            assert sock is not None
            self.pump.add(leg, sock)
        dialog.call = call
        services.recordings.open(call.call_ref, call, door=_DOOR)
        services.metrics.calls_recorded.inc(_DOOR)
        event(
            "call_recording",
            door=_DOOR,
            streams=channels,
            audio_format=fmt.to_text(),
            legs=legs.by,
            legs_note=legs.note,
        )
        self._ok(offer, dialog, transaction, reply, udp, transport, sdp=sdp_answer.sdp)
        if all(media.direction == "inactive" for _, media in legs_media):
            call.inactive = True
            await call.pause(by="reinvite")

    def _choose_ports(self, legs: Legs, count: int) -> list[int | None]:
        """Ports for the streams of ``legs``, consecutive even ones in the legs' order (the
        caller's first), None for the other ``m=`` lines."""
        ports: list[int | None] = [None] * count
        taken = self.ports.take_run(len(legs.streams))
        for index, port in zip(legs.streams, taken, strict=True):
            ports[index] = port
        return ports

    def _release_ports(self, dialog: _Dialog) -> None:
        for port in dialog.ports:
            if port:
                self.ports.give(port)
        dialog.ports = []

    def _ok(
        self,
        offer: Offer,
        dialog: _Dialog,
        transaction: _Transaction,
        reply: Reply,
        udp: bool,
        transport: str,
        *,
        sdp: bytes | None = None,
    ) -> None:
        if sdp is None:
            sdp = build_answer(
                offer.sdp,
                dialog.ports,
                address=self.config.media_address,
                session_id=dialog.session_id,
                version=dialog.version,
            ).sdp
        dialog.sdp = sdp
        headers = [("Contact", self._contact(offer.request, transport)), ("Allow", _ALLOW)]
        if "siprec" in offer.request.require:
            headers.append(("Require", "siprec"))
        response = build_response(
            offer.request,
            200,
            to_tag=dialog.to_tag,
            headers=headers,
            body=sdp,
            content_type="application/sdp",
        )
        self._final(transaction, reply, response)
        if udp:
            dialog.ok, dialog.acked = response, False
            self.spawn(self._resend_ok(dialog, response, reply))

    def _contact(self, request: SipRequest, transport: str) -> str:
        """Our Contact on ``transport``: a SIPS URI when the dialog was set up with one (RFC
        3261 12.1.1: a ``sips:`` Request-URI, top Record-Route, or Contact), else a SIP URI
        naming the transport (``;transport=tls`` over TLS, as SBCs expect)."""
        where = self.contacts.get(transport) or next(iter(self.contacts.values()))
        if transport == "tls":
            routes = request.headers.values("record-route") or request.headers.values("contact")
            try:
                first = parse_name_addr(routes[0]).uri if routes else ""
            except InvalidSipMessage:
                first = ""
            if any(uri.lower().startswith("sips:") for uri in (request.uri, first)):
                return f"<sips:sampledrec@{where}>"
        return f"<sip:sampledrec@{where};transport={transport}>"

    async def _resend_ok(self, dialog: _Dialog, response: bytes, reply: Reply) -> None:
        """RFC 3261 13.3.1.4: resend the 2xx at T1, 2T1, ... (at most T2) until the ACK."""
        interval, waited = _T1, 0.0
        while waited < 64 * _T1 and not self.services.stopping.is_set():
            await asyncio.sleep(interval)
            waited += interval
            if dialog.acked or dialog.ok is not response:
                return
            reply(response)
            interval = min(2 * interval, _T2)

    async def _reinvite(
        self, request: SipRequest, dialog: _Dialog, transaction: _Transaction, reply: Reply
    ) -> None:
        """A re-INVITE: a new offer (pause, resume), a metadata snapshot, or neither; for an
        INVITE without an offer, the 2xx offers the session as it is (RFC 3261 14.2) and the
        ACK's answer changes nothing a recorder keeps."""
        try:
            try:
                update = parse_update(request)
            except InvalidSipMessage as exc:
                self._final(transaction, reply, _refusal(request, exc, dialog.to_tag))
                return
            self._metadata_updated(update.metadata)
            if update.sdp is not None:
                body = await self._renegotiate(update.sdp, dialog)
            else:
                body = dialog.sdp or b""
            self._final(transaction, reply, self._session_ok(request, body))
        finally:
            dialog.negotiating = False

    def _session_ok(self, request: SipRequest, sdp: bytes) -> bytes:
        return build_response(
            request,
            200,
            headers=[("Allow", _ALLOW)],
            body=sdp,
            content_type="application/sdp" if sdp else None,
        )

    async def _renegotiate(self, sdp: SessionDescription, dialog: _Dialog) -> bytes:
        """Answer a new offer on the same ports; streams that all stop sending pause the
        recording, any stream sending again resumes it."""
        dialog.version += 1
        ports = list(dialog.ports) + [None] * (len(sdp.media) - len(dialog.ports))
        ports = ports[: len(sdp.media)]
        answer = build_answer(
            sdp,
            ports,
            address=self.config.media_address,
            session_id=dialog.session_id,
            version=dialog.version,
        )
        call = dialog.call
        if call is not None and not call.closed:
            active = any(m.direction == "recvonly" for m in answer.media if m.rejected is None)
            if active and call.inactive:
                call.inactive = False
                call.last_rtp = time.monotonic()
                await call.resume(by="reinvite")
            elif not active and not call.inactive:
                call.inactive = True
                await call.pause(by="reinvite")
        dialog.sdp = answer.sdp
        return answer.sdp

    def _metadata_updated(self, metadata: RecordingMetadata | None) -> None:
        """A metadata snapshot in an update (a transfer, a conference): logged; the call
        reference, the decision and the legs stay those of the INVITE."""
        if metadata is not None:
            event(
                "metadata_updated",
                door=_DOOR,
                participants=len(metadata.participants),
                streams=len(metadata.streams),
            )

    def _in_dialog(self, request: SipRequest, reply: Reply) -> None:
        """BYE, UPDATE and INFO: answered once per transaction (a retransmission gets the
        same answer again, RFC 3261 17.2.2), 481 outside a dialog."""
        key = (request.via_branch or f"{request.call_id}/{request.cseq.number}", request.method)
        known = self.transactions.get(key)
        if known is not None:
            if known.response is not None:
                reply(known.response)
            return
        transaction = self.transactions[key] = _Transaction()
        dialog = self._dialog_of(request)
        if request.method == "BYE" and dialog is None and not request.to_tag:
            dialog = self.dialogs.get(request.call_id)  # tolerated: a BYE without our tag
        if dialog is None:
            tag = None if request.to_tag else secrets.token_hex(8)
            self._final(transaction, reply, build_response(request, 481, to_tag=tag))
        elif request.method == "BYE":
            self._bye(request, dialog, transaction, reply)
        elif request.method == "INFO":  # DTMF relay, a vendor's events: nothing to record
            self._final(transaction, reply, build_response(request, 200, to_tag=dialog.to_tag))
        else:
            self._update(request, dialog, transaction, reply)

    def _update(
        self, request: SipRequest, dialog: _Dialog, transaction: _Transaction, reply: Reply
    ) -> None:
        """UPDATE (RFC 3311): an offer answered at once, like a re-INVITE's; without one (a
        session refresh, a metadata snapshot), 200."""
        try:
            update = parse_update(request)
        except InvalidSipMessage as exc:
            self._final(transaction, reply, _refusal(request, exc, dialog.to_tag))
            return
        self._metadata_updated(update.metadata)
        if update.sdp is None:
            self._final(transaction, reply, self._session_ok(request, b""))
            return
        if dialog.negotiating:  # RFC 3311 5.2: an offer not answered yet
            self._final(transaction, reply, self._retry_later(request))
            return
        dialog.negotiating = True
        sdp = update.sdp

        async def answer() -> None:
            try:
                body = await self._renegotiate(sdp, dialog)
                self._final(transaction, reply, self._session_ok(request, body))
            finally:
                dialog.negotiating = False

        self.spawn(answer())

    def _bye(
        self, request: SipRequest, dialog: _Dialog, transaction: _Transaction, reply: Reply
    ) -> None:
        self.dialogs.pop(dialog.call_id, None)
        dialog.acked = True
        self._final(transaction, reply, build_response(request, 200, to_tag=dialog.to_tag))
        if dialog.call is not None:
            self.spawn(dialog.call.close(truncated=False, why="bye"), finish=True)
        else:
            self._release_ports(dialog)

    def _cancel(self, request: SipRequest, reply: Reply) -> None:
        key = self._key(request)
        transaction = self.transactions.get(key)
        if transaction is None:
            reply(build_response(request, 481, to_tag=secrets.token_hex(8)))
            return
        dialog = self.dialogs.get(request.call_id)
        reply(build_response(request, 200, to_tag=dialog.to_tag if dialog else None))
        if transaction.final:
            return  # too late: the INVITE was answered; the client sends BYE
        transaction.cancelled = True
        tag = dialog.to_tag if dialog else secrets.token_hex(8)
        invite = SipRequest("INVITE", request.uri, _invite_headers(request), b"")
        self._final(transaction, reply, build_response(invite, 487, to_tag=tag))

    # -- timers ----------------------------------------------------------------------------------

    async def housekeeping(self) -> None:
        """Forget old transactions; seal recordings whose RTP stopped."""
        timeout = self.config.rtp_timeout
        while not self.services.stopping.is_set():
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for key, transaction in list(self.transactions.items()):
                if transaction.final and transaction.expires < now:
                    del self.transactions[key]
            for call_id, dialog in list(self.dialogs.items()):
                call = dialog.call
                if call is None or call.closed or call.inactive:
                    continue
                if now - call.last_rtp > timeout:
                    self.dialogs.pop(call_id, None)
                    self.spawn(call.close(truncated=True, why="rtp_timeout"), finish=True)

    async def seal_all(self) -> None:
        calls = [d.call for d in self.dialogs.values() if d.call is not None]
        self.dialogs.clear()
        await asyncio.gather(*(c.close(truncated=True, why="server_stopping") for c in calls))


def _open_recorder(
    vault: Vault, decision: Any, fmt: AudioFormat, attrs: dict[str, Any]
) -> Recorder:
    """Open the recording and its file (a thread's work: the catalog and the blob store
    sync to disk), so that the event loop only ever encrypts and appends."""
    recorder = vault.record(decision, audio_format=fmt, attrs=attrs)
    recorder.write(b"")  # the decision is durable: this creates the container now
    return recorder


def _invite_headers(cancel: SipRequest) -> Headers:
    """A CANCEL's headers with its CSeq method made INVITE: the 487 answers the INVITE,
    whose Via, From, To, Call-ID and CSeq number the CANCEL repeats (RFC 3261 9.1)."""
    items = [
        (name, value.replace("CANCEL", "INVITE") if name.lower() == "cseq" else value)
        for name, value in cancel.headers
    ]
    return Headers(items)


def _refusal(request: SipRequest, exc: InvalidSipMessage, tag: str) -> bytes:
    """The answer to a request whose body cannot be used: its status, and why."""
    warning = ("Warning", f'399 sampledrec "{_quote(str(exc))}"')
    return build_response(request, exc.status, to_tag=tag, headers=[warning])


def _quote(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:200]


def _mixed_decoder(first: str, second: str | None) -> Callable[[bytes], bytes]:
    """Stereo G.711 frames whose two channels use different laws, as PCM16 stereo."""
    import numpy as np

    decode = {"PCMU": ulaw_to_pcm16, "PCMA": alaw_to_pcm16}
    left, right = decode[first], decode[second or first]

    def convert(frames: bytes) -> bytes:
        a = np.frombuffer(left(frames[0::2]), dtype="<i2")
        b = np.frombuffer(right(frames[1::2]), dtype="<i2")
        out = np.empty(2 * len(a), dtype="<i2")
        out[0::2], out[1::2] = a, b
        return out.tobytes()

    return convert


class _SipUdp(asyncio.DatagramProtocol):
    def __init__(self, door: _SiprecDoor) -> None:
        self.door = door
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        transport = self.transport
        if transport is None or not data.strip(b"\r\n"):
            return  # a keep-alive

        def reply(response: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(response, addr)

        self.door.handle(data, reply, True, "udp")

    def error_received(self, exc: Exception) -> None:
        event("sip_udp_error", level=logging.WARNING, door=_DOOR, exc=exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            event("sip_udp_lost", level=logging.ERROR, door=_DOOR, exc=exc)


class _SipTcp(asyncio.Protocol):
    """SIP over a stream, TCP or TLS (the TLS layer is asyncio's: this sees plaintext once
    the handshake is done), framed by Content-Length; responses go back on the connection."""

    def __init__(self, door: _SiprecDoor, name: str = "tcp") -> None:
        self.door = door
        self.name = name
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            messages = self.framer.feed(data)
        except InvalidSipMessage:
            transport.close()
            return

        def reply(response: bytes) -> None:
            if not transport.is_closing():
                transport.write(response)

        for message in messages:
            if message == b"":
                reply(b"\r\n")
            else:
                self.door.handle(message, reply, False, self.name)


def siprec_door(config: SiprecConfig) -> Door:
    """The SIPREC door for ``config`` (the module docstring says what it does)."""

    async def run(services: Services, ready: Ready) -> None:
        door = _SiprecDoor(config, services)
        loop = asyncio.get_running_loop()
        closers: list[Callable[[], None]] = []
        host, port = config.listen.host, config.listen.port
        transports = config.transports or ()
        try:
            # Port 0 (any free port): UDP picks one, and TCP may find it taken; try again.
            for attempt in range(20 if config.listen.port == 0 else 1):
                port = config.listen.port
                try:
                    if "udp" in transports:
                        udp, _ = await loop.create_datagram_endpoint(
                            lambda: _SipUdp(door), local_addr=(host, port)
                        )
                        closers.append(udp.close)
                        port = udp.get_extra_info("sockname")[1]
                    if "tcp" in transports:
                        tcp = await loop.create_server(
                            lambda: _SipTcp(door), host, port, backlog=1024
                        )
                        closers.append(tcp.close)
                        port = tcp.sockets[0].getsockname()[1]
                    break
                except OSError as exc:
                    for close in closers:
                        close()
                    closers.clear()
                    if attempt == 19 or config.listen.port != 0:
                        raise InvalidArgument(
                            f"--siprec {config.listen}: cannot listen there ({exc.strerror}); "
                            "pick another address or stop the process that holds it"
                        ) from None
            address = f"sip:{Listen(host, port)}"
            door.contacts["udp"] = door.contacts["tcp"] = Listen(config.media_address, port)
            tls_address = None
            if config.tls_listen is not None and config.ssl_context is not None:
                tls_host, tls_port = config.tls_listen.host, config.tls_listen.port
                try:
                    tls = await loop.create_server(
                        lambda: _SipTcp(door, "tls"),
                        tls_host,
                        tls_port,
                        ssl=config.ssl_context,
                        ssl_handshake_timeout=_TLS_HANDSHAKE_SECONDS,
                        backlog=1024,
                    )
                except OSError as exc:
                    raise InvalidArgument(
                        f"[siprec] tls_listen {config.tls_listen}: cannot listen there "
                        f"({exc.strerror}); pick another address or stop the process that "
                        "holds it"
                    ) from None
                closers.append(tls.close)
                tls_port = tls.sockets[0].getsockname()[1]
                tls_address = f"sips:{Listen(tls_host, tls_port)}"
                door.contacts["tls"] = Listen(config.media_address, tls_port)
                if transports == ("tls",):
                    address = tls_address
            event(
                "listening",
                door=_DOOR,
                address=address,
                transports=list(transports),
                tls_address=tls_address,
            )
            ready(address)
            keeper = loop.create_task(door.housekeeping())
            pump = loop.create_task(door.pump.run(services.stopping))
            await services.stopping.wait()
            keeper.cancel()
            await pump
        finally:
            for close in closers:
                close()
            for task in list(door.tasks):
                task.cancel()
            await asyncio.gather(*door.tasks, return_exceptions=True)
            await door.seal_all()
            door.pump.close()
            if door.finishing:
                await asyncio.wait(door.finishing, timeout=services.shutdown_grace)
            door.vault.close()

    return run


SIPREC: Final = DoorKind[SiprecConfig](
    name=_DOOR,
    help="the SIPREC recording server (RFC 7866) that SBCs send calls to",
    parse=SiprecConfig.from_section,
    door=siprec_door,
)
