"""The RTP reader and the jitter buffer, fuzzed: any datagram is read or skipped, never an
error; a stream reordered within the window, with packets dropped and duplicated, comes back
as the sender's payload with silence for the drops, and counted right, across the sequence
number's wrap-around at 65535 and the timestamp's at 2**32, and across a change of SSRC."""

from __future__ import annotations

import doctest
import struct
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sampledrec.ingest.rtp
from sampledrec.errors import InvalidArgument
from sampledrec.ingest.rtp import SILENCE, JitterBuffer, RtpPacket, parse_rtp


def test_module_doctests() -> None:
    assert doctest.testmod(sampledrec.ingest.rtp, raise_on_error=False).failed == 0


# -- parse_rtp -------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
@example(b"\xa0" + bytes(11))  # padding flag, padding count 0, nothing after the header
@example(b"\xa0" + bytes(10) + b"\xff")  # padding longer than the packet
@example(b"\x90" + bytes(11) + b"\x00\x00\xff\xff")  # extension longer than the packet
@example(b"\x8f" + bytes(11))  # 15 CSRCs announced, none there
def test_parse_rtp_reads_or_skips_any_datagram(data: bytes) -> None:
    packet = parse_rtp(data)
    if packet is not None:
        assert data[0] >> 6 == 2 and len(data) >= 12
        assert packet.payload in data and len(packet.payload) <= len(data) - 12
        assert 0 <= packet.payload_type < 128 and not 72 <= packet.payload_type <= 76
    assert parse_rtp(bytearray(data)) == packet == parse_rtp(memoryview(data))


@pytest.mark.parametrize("data", ["\x80" * 12, 12, None, [0x80] * 12])
def test_parse_rtp_refuses_what_is_not_bytes(data: object) -> None:
    with pytest.raises(InvalidArgument, match="must be bytes"):
        parse_rtp(data)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    payload_type=st.integers(0, 127).filter(lambda pt: not 72 <= pt <= 76),
    marker=st.booleans(),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    extension=st.none() | st.binary(max_size=16).map(lambda b: b + bytes(-len(b) % 4)),
    padding=st.integers(0, 255),
    payload=st.binary(max_size=320),
)
def test_parse_rtp_reads_back_what_was_packed(
    payload_type: int,
    marker: bool,
    sequence: int,
    timestamp: int,
    ssrc: int,
    csrcs: list[int],
    extension: bytes | None,
    padding: int,
    payload: bytes,
) -> None:
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension is not None else 0) | len(csrcs)
    data = struct.pack("!BBHII", first, payload_type | (0x80 * marker), sequence, timestamp, ssrc)
    data += b"".join(struct.pack("!I", csrc) for csrc in csrcs)
    if extension is not None:
        data += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    data += payload
    if padding:
        data += bytes(padding - 1) + bytes([padding])
    packet = parse_rtp(data)
    assert packet == RtpPacket(payload_type, marker, sequence, timestamp, ssrc, payload)


# -- the jitter buffer -------------------------------------------------------------------------


@dataclass
class Stream:
    """A sender's packets, and the order a network delivered them in."""

    packets: list[RtpPacket]
    arrivals: list[RtpPacket]
    dropped: set[int]
    duplicates: int

    def expected(self, silence: int) -> tuple[bytes, int]:
        """What the buffer must give back for this stream, and the packets it must count
        lost: from the oldest packet delivered to the newest, each payload, or silence of
        its length for a packet dropped."""
        kept = [n for n in range(len(self.packets)) if n not in self.dropped]
        if not kept:
            return b"", 0
        span = range(kept[0], kept[-1] + 1)
        out = b"".join(
            bytes([silence]) * len(self.packets[n].payload)
            if n in self.dropped
            else self.packets[n].payload
            for n in span
        )
        return out, sum(n in self.dropped for n in span)


@st.composite
def streams(draw: st.DrawFn, window: int, ssrc: int, pt: int = 0) -> Stream:
    """Packets of one SSRC with contiguous timestamps, shuffled in blocks of ``window + 1``
    (so that none is more than a window late), some dropped, some delivered twice (again
    within its block or the next)."""
    count = draw(st.integers(1, 60))
    seq0 = draw(st.integers(0xFFFF - 70, 0xFFFF) | st.integers(0, 0xFFFF))
    ts0 = draw(st.integers(0xFFFFFFFF - 4000, 0xFFFFFFFF) | st.integers(0, 0xFFFFFFFF))
    sizes = draw(st.lists(st.integers(1, 240), min_size=count, max_size=count))
    packets, ts = [], ts0
    for n, size in enumerate(sizes):
        payload = bytes((n * 7 + i) % 251 for i in range(size))
        packets.append(RtpPacket(pt, n == 0, (seq0 + n) & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload))
        ts += size
    dropped = draw(st.sets(st.integers(0, count - 1), max_size=count // 3))
    block = window + 1
    blocks: list[list[int]] = []
    for start in range(0, count, block):
        members = [n for n in range(start, min(start + block, count)) if n not in dropped]
        blocks.append(draw(st.permutations(members)))
    duplicates = draw(st.lists(st.sampled_from(range(count)), max_size=5))
    duplicates = [n for n in duplicates if n not in dropped]
    for n in duplicates:  # again, somewhere after the original in its block or the next
        index = n // block
        target = blocks[min(index + draw(st.integers(0, 1)), len(blocks) - 1)]
        after = target.index(n) + 1 if n in target else 0
        target.insert(draw(st.integers(after, len(target))), n)
    arrivals = [packets[n] for members in blocks for n in members]
    return Stream(packets, arrivals, dropped, len(duplicates))


def _run(buffer: JitterBuffer, packets: list[RtpPacket]) -> bytes:
    return b"".join(buffer.push(packet) for packet in packets) + buffer.flush()


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(0, 12), st.sampled_from(["PCMU", "PCMA"]))
def test_reordered_dropped_and_duplicated_packets_give_back_the_stream(
    data: st.DataObject, window: int, encoding: str
) -> None:
    pt = 0 if encoding == "PCMU" else 8
    stream = data.draw(streams(window, ssrc=0x1234, pt=pt))
    jb = JitterBuffer(pt, encoding, window=window)
    out = _run(jb, stream.arrivals)
    expected, lost = stream.expected(SILENCE[encoding])
    assert out == expected
    assert jb.lost == lost
    assert jb.late == stream.duplicates
    assert jb.received == len(stream.packets) - len(stream.dropped)


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(0, 10))
def test_a_new_ssrc_follows_the_old_one(data: st.DataObject, window: int) -> None:
    first = data.draw(streams(window, ssrc=1))
    second = data.draw(streams(window, ssrc=0xFFFFFFFF))
    jb = JitterBuffer(0, "PCMU", window=window)
    out = _run(jb, first.arrivals + second.arrivals)
    (a, lost_a), (b, lost_b) = first.expected(0xFF), second.expected(0xFF)
    assert out == a + b
    assert jb.lost == lost_a + lost_b
    assert jb.late == first.duplicates + second.duplicates


def _pkt(seq: int, ssrc: int, fill: int) -> RtpPacket:
    return RtpPacket(0, False, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc, bytes([fill]) * 160)


def test_a_straggler_of_the_old_ssrc_is_late_and_a_return_is_a_change() -> None:
    jb = JitterBuffer(0, "PCMU", window=2)
    old = [_pkt(65534 + n, 1, 0x10 + n) for n in range(4)]  # wraps past 65535
    new = [_pkt(500 + n, 2, 0x40 + n) for n in range(6)]
    out = b"".join(jb.push(p) for p in (old[0], old[1], old[3], new[0], old[2], new[1]))
    # old[2] came after the change: too late, counted; the new stream goes on undisturbed.
    assert jb.late == 1 and jb.lost == 1
    out += b"".join(jb.push(p) for p in new[2:])
    back = [_pkt(65538 + n, 1, 0x60 + n) for n in range(3)]  # the old SSRC, newer: a change
    out += b"".join(jb.push(p) for p in back) + jb.flush()
    frames = [p.payload for p in old[:2]] + [b"\xff" * 160, old[3].payload]
    frames += [p.payload for p in new] + [p.payload for p in back]
    assert out == b"".join(frames)
    assert jb.late == 1 and jb.lost == 1


def test_window_zero_releases_each_packet_at_once() -> None:
    jb = JitterBuffer(0, "PCMU", window=0)
    assert jb.push(_pkt(7, 1, 0x21)) == b"\x21" * 160
    assert jb.push(_pkt(9, 1, 0x23)) == b"\xff" * 160 + b"\x23" * 160
    assert jb.push(_pkt(8, 1, 0x22)) == b"" and (jb.lost, jb.late) == (1, 1)
