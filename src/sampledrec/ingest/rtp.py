"""RTP for a recorder, sans I/O: packets read (RFC 3550 section 5.1), one stream's G.711 payload
put back in order with losses as silence (:class:`JitterBuffer`), and the legs of a call laid
side by side as the channels of one recording (:class:`Interleaver`).

A G.711 payload is one byte per sample at 8 kHz, so a stream's timeline is counted in bytes.
What the recorder keeps of a stream, packet by packet, is exactly the payloads it received,
in sequence-number order; a packet that did not arrive within the reordering window is
replaced by silence of the same length (``0xFF`` in mu-law, ``0xD5`` in A-law) and counted.
Packets of other payload types (RFC 4733 telephone events, comfort noise) are skipped; a gap
in the timestamps with no gap in the sequence (a sender's silence suppression) is silence,
not a loss. A stream's first packets are held until the window is full, so that a packet that
overtook the first one does not start the timeline too late. A new SSRC (the SBC re-anchored
media, a transfer) restarts the sequence tracking where the old one stopped; a straggler of the
SSRC just left (older than where it stopped, within a window's worth of packets of the change)
is late, not a change back.

Only the standard library and :mod:`sampledrec.errors` are imported.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import InvalidArgument

__all__ = [
    "COMFORT_NOISE",
    "SILENCE",
    "Interleaver",
    "JitterBuffer",
    "RtpPacket",
    "parse_rtp",
]

#: The silence byte of each G.711 encoding.
SILENCE: Final = {"PCMU": 0xFF, "PCMA": 0xD5}
#: RFC 3389 comfort noise's static payload type.
COMFORT_NOISE: Final = 13
#: A timestamp jump larger than this (samples, 10 s) is a new timeline, not a gap to fill.
MAX_GAP: Final = 80_000
_HEADER: Final = struct.Struct("!BBHII")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet: the fields a recorder needs and its payload (padding removed)."""

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes | bytearray | memoryview) -> RtpPacket | None:
    """Read one RTP datagram; None when it is not RTP version 2 or is cut short (RTCP sent
    to the RTP port, a stray packet): a recorder skips such datagrams rather than failing.
    Any bytes give a packet or None; only data that is not bytes-like raises
    (:class:`~sampledrec.errors.InvalidArgument`).

    >>> p = parse_rtp(bytes([0x80, 0x00, 0, 7, 0, 0, 0, 160, 0, 0, 0, 1]) + b"\\xff" * 160)
    >>> p.payload_type, p.sequence, p.timestamp, len(p.payload)
    (0, 7, 160, 160)
    """
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise InvalidArgument(f"data of type {type(data).__name__} must be bytes")
        data = bytes(data)
    if len(data) < 12:
        return None
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        return None
    payload_type = second & 0x7F
    if 72 <= payload_type <= 76:  # RTCP sender/receiver reports on the RTP port (RFC 5761)
        return None
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = len(data)
    if first & 0x20:  # padding: the last byte counts the padding bytes
        end -= data[-1]
    if start > end:
        return None
    return RtpPacket(payload_type, bool(second & 0x80), sequence, timestamp, ssrc, data[start:end])


class JitterBuffer:
    """One stream's payload in order: push packets as they arrive, get contiguous audio back.

    ``payload_type`` is the answered G.711 format and ``encoding`` its name (``PCMU`` or
    ``PCMA``); packets of any other type are skipped. Up to ``window`` packets are held while a
    missing one may still arrive; past that, the missing ones are lost: silence of their length
    (from the timestamps) comes out in their place and :attr:`lost` counts them. A stream's
    (an SSRC's) first ``window`` packets are all held, so that the oldest of them, not merely
    the first to arrive, starts its timeline.

    >>> jb = JitterBuffer(0, "PCMU", window=2)
    >>> def pkt(seq):
    ...     return RtpPacket(0, False, seq, seq * 2, 9, bytes([seq]) * 2)
    >>> jb.push(pkt(2)), jb.push(pkt(1)), jb.push(pkt(3))
    (b'', b'', b'\\x01\\x01\\x02\\x02\\x03\\x03')
    >>> jb.push(pkt(5)), jb.push(pkt(6)), jb.push(pkt(7)), jb.lost
    (b'', b'', b'\\xff\\xff\\x05\\x05\\x06\\x06\\x07\\x07', 1)
    """

    def __init__(self, payload_type: int, encoding: str, *, window: int = 8) -> None:
        if encoding not in SILENCE:
            raise InvalidArgument(f"encoding={encoding!r} must be PCMU or PCMA")
        if not isinstance(window, int) or isinstance(window, bool) or not 0 <= window <= 1000:
            raise InvalidArgument(f"window={window!r} must be a whole number of packets, 0-1000")
        self.payload_type = payload_type
        self.silence = SILENCE[encoding]
        self.window = window
        #: Packets missing (replaced by silence), and packets that came too late or twice.
        self.lost = 0
        self.late = 0
        self.received = 0
        self._ssrc: int | None = None
        self._next_seq = 0
        self._next_ts = 0
        self._starting = True  # nothing of this SSRC released yet: its start may move back
        self._held: dict[int, RtpPacket] = {}
        # The SSRC left at the last change, where it stopped, and packets since the change.
        self._left: tuple[int, int] | None = None
        self._since_change = 0

    def push(self, packet: RtpPacket) -> bytes:
        """Add ``packet``; the audio that is now in order (maybe none)."""
        if packet.payload_type != self.payload_type:
            return b""  # telephone-event, comfort noise, anything not answered
        out = bytearray()
        if packet.ssrc != self._ssrc:
            if self._straggler(packet):
                self.late += 1
                return b""
            self._drain(out)
            if self._ssrc is not None:
                self._left = (self._ssrc, self._next_seq)
            self._since_change = 0
            self._ssrc = packet.ssrc
            self._next_seq, self._next_ts = packet.sequence, packet.timestamp
            self._starting = True
        self._since_change += 1
        if packet.sequence in self._held:
            self.late += 1
            return bytes(out)
        if (packet.sequence - self._next_seq) & 0xFFFF >= 0x8000:  # older than the next due
            if not self._starting:
                self.late += 1
                return bytes(out)
            self._next_seq, self._next_ts = packet.sequence, packet.timestamp
        self.received += 1
        self._held[packet.sequence] = packet
        if self._starting:
            if len(self._held) <= self.window:
                return bytes(out)
            self._starting = False
        self._release(out)
        while len(self._held) > self.window:
            self._skip_to_oldest(out)
            self._release(out)
        return bytes(out)

    def feed(self, datagrams: Iterable[bytes]) -> bytes:
        """:meth:`push` for datagrams as they come off the socket (each read as
        :func:`parse_rtp` reads it; what is not RTP is skipped): the audio now in order.

        The common case (a plain header, the next packet in order, nothing held) is read here
        without building an :class:`RtpPacket`; the result is the same as ``push`` would give.

        >>> jb = JitterBuffer(0, "PCMU", window=1)  # a stream's first packet waits for one more
        >>> def rtp(seq, ts, payload):
        ...     return bytes([0x80, 0, 0, seq, 0, 0, 0, ts, 0, 0, 0, 9]) + payload
        >>> jb.feed([rtp(1, 0, b"ab"), b"junk", rtp(2, 2, b"cd")])
        b'abcd'
        """
        out = bytearray()
        unpack = _HEADER.unpack_from
        for data in datagrams:
            if len(data) > 12:
                first, second, sequence, timestamp, ssrc = unpack(data)
                if (
                    first == 0x80  # version 2, no padding, no extension, no CSRC
                    and second & 0x7F == self.payload_type
                    and ssrc == self._ssrc
                    and sequence == self._next_seq
                    and not self._held
                ):
                    gap = (timestamp - self._next_ts) & 0xFFFFFFFF
                    if 0 < gap <= MAX_GAP:
                        out += bytes([self.silence]) * gap
                    out += memoryview(data)[12:]
                    self.received += 1
                    self._since_change += 1  # as push counts it (a straggler's window)
                    self._next_seq = (sequence + 1) & 0xFFFF
                    self._next_ts = (timestamp + len(data) - 12) & 0xFFFFFFFF
                    continue
            packet = parse_rtp(data)
            if packet is not None:
                out += self.push(packet)
        return bytes(out)

    def flush(self) -> bytes:
        """Everything still held, in order, with silence for what is missing (the end of the
        stream: it stopped, or the call ended)."""
        out = bytearray()
        self._drain(out)
        return bytes(out)

    def _straggler(self, packet: RtpPacket) -> bool:
        """Whether ``packet`` is a late packet of the SSRC left at the last change: one older
        than where that SSRC stopped, within a window's worth of packets of the change (later,
        or newer, it is the SSRC coming back)."""
        if self._left is None or packet.ssrc != self._left[0]:
            return False
        if self._since_change > max(self.window, 1):
            return False
        return (packet.sequence - self._left[1]) & 0xFFFF >= 0x8000

    def _drain(self, out: bytearray) -> None:
        while self._held:
            self._skip_to_oldest(out)
            self._release(out)
        self._starting = False

    def _release(self, out: bytearray) -> None:
        held = self._held
        while self._next_seq in held:
            packet = held.pop(self._next_seq)
            gap = (packet.timestamp - self._next_ts) & 0xFFFFFFFF
            if 0 < gap <= MAX_GAP:  # the sender stopped sending (silence suppression)
                out += bytes([self.silence]) * gap
            out += packet.payload
            self._next_seq = (self._next_seq + 1) & 0xFFFF
            self._next_ts = (packet.timestamp + len(packet.payload)) & 0xFFFFFFFF

    def _skip_to_oldest(self, out: bytearray) -> None:
        """Give up on the packets before the oldest one held: they are lost."""
        oldest = min(self._held, key=lambda s: (s - self._next_seq) & 0xFFFF)
        missing = (oldest - self._next_seq) & 0xFFFF
        self.lost += missing
        gap = (self._held[oldest].timestamp - self._next_ts) & 0xFFFFFFFF
        if gap > MAX_GAP:  # a new timeline: nothing sensible to fill
            gap = 0
        out += bytes([self.silence]) * gap
        self._next_seq = oldest
        self._next_ts = self._held[oldest].timestamp


class Interleaver:
    """The legs of a call as the channels of one recording, one byte per sample per channel.

    :meth:`add` appends a leg's audio; :meth:`take` returns the frames every channel has
    reached (one sample of each channel in turn). A leg that falls more than ``max_lag``
    samples behind the others (it sends nothing: a one-way call, a hold) is filled with its
    ``silence`` byte so that the others are not held back; at the end, :meth:`take` with
    ``final`` fills every channel to the longest.

    >>> il = Interleaver([0xFF, 0xFF])
    >>> il.add(0, b"ab"), il.add(1, b"A")
    (None, None)
    >>> il.take(), il.take(final=True)
    (b'aA', b'b\\xff')
    """

    def __init__(self, silence: list[int], *, max_lag: int = 8000) -> None:
        if not 1 <= len(silence) <= 2:
            raise InvalidArgument(f"silence={silence!r}: one or two channels")
        self.silence = list(silence)
        self.max_lag = max_lag
        self._legs = [bytearray() for _ in silence]
        #: Samples per channel taken so far.
        self.position = 0

    @property
    def channels(self) -> int:
        return len(self._legs)

    def add(self, channel: int, data: bytes) -> None:
        self._legs[channel] += data

    def pad_to(self, channel: int, position: int) -> None:
        """Fill ``channel`` with silence up to ``position`` samples from the start (a leg
        whose first packet arrives after the other's started)."""
        have = self.position + len(self._legs[channel])
        if position > have:
            self._legs[channel] += bytes([self.silence[channel]]) * (position - have)

    def take(self, *, final: bool = False) -> bytes:
        legs = self._legs
        longest = max(len(leg) for leg in legs)
        count = longest if final else max(min(len(leg) for leg in legs), longest - self.max_lag)
        if count <= 0:
            return b""
        for channel, leg in enumerate(legs):
            if len(leg) < count:
                leg += bytes([self.silence[channel]]) * (count - len(leg))
        self.position += count
        if len(legs) == 1:
            out = bytes(legs[0][:count])
            del legs[0][:count]
            return out
        frames = bytearray(2 * count)
        frames[0::2] = legs[0][:count]
        frames[1::2] = legs[1][:count]
        del legs[0][:count]
        del legs[1][:count]
        return bytes(frames)
