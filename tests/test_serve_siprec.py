"""The SIPREC door against recording clients that do not share our parsers.

The in-process tests speak RFC 7866 themselves: INVITEs are written here byte by byte
(multipart/mixed with an SDP offer and RFC 7865 metadata), responses are read with a few
regular expressions, and RTP packets are packed with :mod:`struct`. The sipp tests start
``sampledrec serve`` as a process and drive it with sipp (Debian ``sip-tester``) from a
scenario in ``tests/sipp/``. Each selected call's recording, read back, holds each leg's G.711
payload byte for byte (losses as silence); each declined call stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import sampledrec
from sampledrec import Store
from sampledrec.cli import main
from sampledrec.errors import InvalidArgument
from sampledrec.ingest.rtp import Interleaver, JitterBuffer, RtpPacket, parse_rtp
from sampledrec.log.format import T_DECISION
from sampledrec.log.writer import iter_entries
from sampledrec.serve import Listen, Server
from sampledrec.serve.siprec import SiprecConfig, _PortPool, siprec_door
from sampledrec.vault.recorder import Vault

from .recording import RECORD_REGULATED, new_store

SRC = str(Path(sampledrec.__file__).parents[1])
SIPP = shutil.which("sipp")
PT_EVENT = 101


# -- the RTP pieces, sans I/O ------------------------------------------------------------------


def _packet(seq: int, ts: int, payload: bytes, pt: int = 0, ssrc: int = 7) -> RtpPacket:
    return RtpPacket(pt, False, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload)


def test_rtp_header_with_csrc_extension_and_padding() -> None:
    payload = bytes(range(160))
    head = struct.pack("!BBHII", 0xB2, 0x80 | 8, 65535, 2**32 - 160, 0xDEADBEEF)
    csrcs = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x01\x02\x03\x04"
    packet = parse_rtp(head + csrcs + extension + payload + b"\x00\x00\x03")
    assert packet is not None
    assert (packet.payload_type, packet.marker, packet.sequence) == (8, True, 65535)
    assert packet.ssrc == 0xDEADBEEF and packet.payload == payload
    assert parse_rtp(b"\x80\x00") is None
    assert parse_rtp(b"\x40" + bytes(20)) is None  # version 1
    assert parse_rtp(struct.pack("!BBHII", 0x80, 200, 1, 1, 1) + bytes(8)) is None  # RTCP


def test_jitter_buffer_reorders_fills_losses_and_follows_a_new_ssrc() -> None:
    frames = [bytes([n % 250]) * 160 for n in range(30)]
    jb = JitterBuffer(0, "PCMU", window=4)
    order = [0, 2, 1, 3, 5, 4, 6, 8, 9, 10, 11, 12, 13]  # 7 lost, the rest swapped in pairs
    start = 65530  # the sequence number wraps around
    out = b"".join(jb.push(_packet(start + n, 1000 + 160 * n, frames[n])) for n in order)
    out += jb.push(_packet(start + 9, 9, frames[9]))  # a duplicate: late, dropped
    out += jb.push(_packet(start + 3, 9, b"x", pt=PT_EVENT))  # DTMF: skipped
    out += jb.push(_packet(start + 14, 1000 + 160 * 14, b"\x00\x00", pt=13))  # comfort noise
    out += jb.flush()
    expected = b"".join(frames[n] if n != 7 else b"\xff" * 160 for n in range(14))
    assert out == expected and jb.lost == 1 and jb.late == 1
    # A new SSRC starts a new sequence where the old stream stopped (its first packets are
    # held until the window fills: the second may have overtaken the first).
    out = jb.push(_packet(40001, 165, frames[21], ssrc=99))
    out += jb.push(_packet(40000, 5, frames[20], ssrc=99)) + jb.flush()
    assert out == frames[20] + frames[21] and jb.lost == 1 and jb.late == 1


def test_interleaver_keeps_each_channel_and_pads_a_silent_leg() -> None:
    il = Interleaver([0xFF, 0xD5], max_lag=4)
    il.add(0, b"abcdefgh")
    assert il.take() == b"a\xd5b\xd5c\xd5d\xd5"  # the second leg lags by more than 4
    il.add(1, b"1234")
    assert il.take() == b"e1f2g3h4"
    il.pad_to(0, 10)
    assert il.take(final=True) == b"\xff\xd5\xff\xd5"


# -- a SIPREC client written from RFC 7866 and RFC 7865 ------------------------------------------


@dataclass
class Response:
    raw: bytes

    @property
    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        found = re.search(rb"(?im)^" + name.encode() + rb"\s*:\s*(.*?)\r$", self.raw)
        return found.group(1).decode() if found else None

    @property
    def body(self) -> bytes:
        return self.raw.split(b"\r\n\r\n", 1)[1]

    @property
    def ports(self) -> list[int]:
        return [int(p) for p in re.findall(rb"(?m)^m=audio (\d+) ", self.body)]


@dataclass
class Call:
    call_id: str = field(default_factory=lambda: f"{uuid.uuid4().hex}@src.example")
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    from_tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    to_tag: str | None = None
    cseq: int = 1
    queue: str = "regulated"
    codecs: tuple[int, int] = (0, 0)
    swapped: bool = False  # the caller (participant 1) sends the second m-line's stream
    scheme: str = "sip"  # "sips": the Request-URI asks for TLS end to end
    direction: str = "sendonly"  # of the INVITE's streams


def sdp(call: Call, direction: str = "sendonly") -> bytes:
    lines = ["v=0", "o=SRC 2890844526 2890844526 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1"]
    lines.append("t=0 0")
    for label, codec in enumerate(call.codecs, 1):
        name = "PCMU" if codec == 0 else "PCMA"
        lines += [
            f"m=audio {49168 + 2 * label} RTP/AVP {codec} {PT_EVENT}",
            f"a=rtpmap:{codec} {name}/8000",
            f"a=rtpmap:{PT_EVENT} telephone-event/8000",
            f"a=label:{label}",
            f"a={direction}",
        ]
    return ("\r\n".join(lines) + "\r\n").encode()


def metadata(call: Call) -> bytes:
    first, second = ("czI=", "czE=") if call.swapped else ("czE=", "czI=")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns='urn:ietf:params:xml:ns:recording:1'>
  <datamode>complete</datamode>
  <session session_id="c2Vzc2lvbjE=">
    <sipSessionID>{call.session};remote=00000000000000000000000000000000</sipSessionID>
  </session>
  <participant participant_id="cDE=">
    <nameID aor="sip:+15551234567@caller.example"/>
  </participant>
  <participant participant_id="cDI=">
    <nameID aor="sip:agent7@cc.example"/>
  </participant>
  <stream stream_id="czE=" session_id="c2Vzc2lvbjE="><label>1</label></stream>
  <stream stream_id="czI=" session_id="c2Vzc2lvbjE="><label>2</label></stream>
  <participantstreamassoc participant_id="cDE="><send>{first}</send></participantstreamassoc>
  <participantstreamassoc participant_id="cDI="><send>{second}</send></participantstreamassoc>
</recording>
""".encode()


def request(
    method: str,
    call: Call,
    port: int,
    *,
    transport: str = "UDP",
    branch: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    cseq: int | None = None,
    extra: tuple[str, ...] = (),
) -> bytes:
    to = "<sip:srs@127.0.0.1>" + (f";tag={call.to_tag}" if call.to_tag else "")
    if call.scheme == "sips":
        uri = f"sips:srs@127.0.0.1:{port}"
    else:
        uri = f"sip:srs@127.0.0.1:{port};transport={transport.lower()}"
    head = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch={branch or 'z9hG4bK' + uuid.uuid4().hex}",
        "Max-Forwards: 70",
        f"From: <sip:src@127.0.0.1>;tag={call.from_tag}",
        f"To: {to}",
        f"Call-ID: {call.call_id}",
        f"CSeq: {cseq if cseq is not None else call.cseq} {method}",
        *extra,
    ]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def invite(call: Call, port: int, *, transport: str = "UDP", branch: str | None = None) -> bytes:
    boundary = "OSS-unique-boundary-42"
    body = (
        f"--{boundary}\r\nContent-Type: application/sdp\r\n\r\n".encode()
        + sdp(call, call.direction)
        + f"\r\n--{boundary}\r\nContent-Type: application/rs-metadata+xml\r\n"
        "Content-Disposition: recording-session\r\n\r\n".encode()
        + metadata(call)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return request(
        "INVITE",
        call,
        port,
        transport=transport,
        branch=branch,
        body=body,
        content_type=f"multipart/mixed;boundary={boundary}",
        extra=(
            "Contact: <sip:src@127.0.0.1:5999>;+sip.src",
            "Require: siprec",
            "Accept: application/sdp, application/rs-metadata",
            f"X-Queue: {call.queue}",
        ),
    )


class Client:
    """SIP over UDP or TCP from one local socket; responses are queued as they come."""

    def __init__(self) -> None:
        self.responses: asyncio.Queue[Response] = asyncio.Queue()
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.transport = "UDP"

    async def connect(
        self, port: int, transport: str, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.transport, self.port = transport, port
        loop = asyncio.get_running_loop()
        if transport == "UDP":
            queue = self.responses

            class Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    queue.put_nowait(Response(data))

            self._udp, _ = await loop.create_datagram_endpoint(
                Proto, remote_addr=("127.0.0.1", port)
            )
        else:
            reader, self._writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
            )
            self._reader_task = loop.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.strip() == b"":
                continue
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
            self.responses.put_nowait(Response(head + body))

    def send(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data)
        else:
            assert self._writer is not None
            self._writer.write(data)

    async def expect(self, *statuses: int, timeout: float = 10) -> Response:
        """The next final response among ``statuses`` (100 Trying and resent 2xx skipped)."""
        while True:
            response = await asyncio.wait_for(self.responses.get(), timeout)
            if response.status in statuses:
                return response
            assert response.status == 100 or response.status in (200,), response.raw

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task

    async def start(self, call: Call) -> Response:
        """INVITE, the final response, and the ACK when it is a 2xx."""
        self.send(invite(call, self.port, transport=self.transport))
        response = await self.expect(200, 403, 486, 488, 500, 503)
        if response.status == 200:
            call.to_tag = re.search(r"tag=([^;>\s]+)", response.header("To") or "").group(1)  # type: ignore[union-attr]
            self.send(request("ACK", call, self.port, transport=self.transport))
        return response

    async def bye(self, call: Call) -> Response:
        call.cseq += 1
        self.send(request("BYE", call, self.port, transport=self.transport))
        return await self.expect(200, 481)


def rtp_packets(payload: bytes, pt: int, ssrc: int, *, seq0: int = 100) -> list[bytes]:
    out = []
    for n in range(0, len(payload), 160):
        head = struct.pack("!BBHII", 0x80, pt | (0x80 if n == 0 else 0), seq0 + n // 160, n, ssrc)
        out.append(head + payload[n : n + 160])
    return out


def g711(rng: random.Random, packets: int) -> bytes:
    """Payload bytes that are never a silence byte, so each leg is found in its channel."""
    return bytes(rng.choice(range(0x10, 0xD0)) for _ in range(160 * packets))


async def send_rtp(port: int, packets: list[bytes], *, every: float = 0.002) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
    )
    try:
        for packet in packets:
            transport.sendto(packet)
            await asyncio.sleep(every)
    finally:
        transport.close()


def channel(audio: bytes, index: int) -> bytes:
    return audio[index::2]


def strip(data: bytes, silence: int) -> bytes:
    return data.strip(bytes([silence]))


@contextlib.asynccontextmanager
async def serving(store: Store, **config: Any) -> AsyncIterator[tuple[Server, int]]:
    low = 20000 + 2 * (os.getpid() % 4000)
    settings = SiprecConfig(
        Listen("127.0.0.1", 0),
        rtp_ports=(low, low + 199),
        attributes={"queue": "header:X-Queue"},
        caller="participant:1",
        **config,
    )
    server = Server(store, {"siprec": siprec_door(settings)}, shutdown_grace=5)
    task = asyncio.create_task(server.run())
    try:
        addresses = await server.wait_ready()
        if task.done():
            task.result()
        yield server, int(addresses["siprec"].rsplit(":", 1)[1])
    finally:
        server.stop()
        await task


def recordings(store: Store) -> list[tuple[Any, bytes]]:
    with store.open_log() as log, Vault(store, log) as vault:
        return [(row, vault.open(row.recording_id).audio) for row in vault.catalog.find()]


def decisions(store: Store) -> list[str | bytes]:
    return [
        e.fields["call_ref"]
        for e in iter_entries(store.log_storage, store.keyring)
        if e.type == T_DECISION
    ]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return new_store(tmp_path, RECORD_REGULATED)


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_selected_call_is_recorded_leg_by_leg_bit_exact(store: Store, transport: str) -> None:
    rng = random.Random(13)
    caller, agent = g711(rng, 40), g711(rng, 40)
    call = Call()

    async def scenario() -> None:
        async with serving(store) as (server, port):
            client = Client()
            await client.connect(port, transport)
            answer = await client.start(call)
            assert answer.status == 200 and answer.header("Require") == "siprec"
            assert answer.header("Content-Type") == "application/sdp"
            assert answer.body.count(b"a=recvonly") == 2
            ports = answer.ports
            assert len(ports) == 2 and all(ports)
            assert call.session in server.recordings
            legs = rtp_packets(caller, 0, 1111), rtp_packets(agent, 0, 2222)
            # Reordered pairs on the caller's leg, one lost packet and DTMF on the agent's.
            a = legs[0]
            for n in range(2, 38, 6):
                a[n], a[n + 1] = a[n + 1], a[n]
            b = legs[1][:10] + legs[1][11:]
            b.insert(5, struct.pack("!BBHII", 0x80, PT_EVENT, 9999, 0, 2222) + b"\x01\x00\x00\xa0")
            await asyncio.gather(send_rtp(ports[0], a), send_rtp(ports[1], b))
            await asyncio.sleep(0.05)
            assert (await client.bye(call)).status == 200
            await asyncio.sleep(0.2)
            assert call.session not in server.recordings
            assert server.metrics.packets_lost.value("siprec") == 1
            assert server.metrics.calls_recorded.value("siprec") == 1
            await client.close()

    asyncio.run(scenario())
    [(row, audio)] = recordings(store)
    assert row.audio_format == "mulaw/8000/2" and not row.truncated
    assert row.call_ref == call.session
    assert strip(channel(audio, 0), 0xFF) == caller
    expected_agent = agent[:1600] + b"\xff" * 160 + agent[1760:]
    assert strip(channel(audio, 1), 0xFF) == expected_agent
    assert decisions(store) == [call.session]


@pytest.mark.parametrize("swapped", [False, True])
def test_legs_follow_the_metadata_not_the_m_line_order(
    store: Store, swapped: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller (participant 1) sends the stream labelled 2, the second m-line: it is still
    channel 1, and the log says the metadata decided."""
    rng = random.Random(21)
    first_mline, second_mline = g711(rng, 20), g711(rng, 20)
    call = Call(swapped=swapped)

    async def scenario() -> None:
        async with serving(store) as (_, port):
            client = Client()
            await client.connect(port, "UDP")
            ports = (await client.start(call)).ports
            await asyncio.gather(
                send_rtp(ports[0], rtp_packets(first_mline, 0, 31)),
                send_rtp(ports[1], rtp_packets(second_mline, 0, 32)),
            )
            await asyncio.sleep(0.05)
            await client.bye(call)
            await client.close()

    with caplog.at_level("INFO", logger="sampledrec.serve"):
        asyncio.run(scenario())
    [(_, audio)] = recordings(store)
    caller, agent = (second_mline, first_mline) if swapped else (first_mline, second_mline)
    assert strip(channel(audio, 0), 0xFF) == caller
    assert strip(channel(audio, 1), 0xFF) == agent
    [started] = [r for r in caplog.records if r.getMessage() == "call_recording"]
    assert started.fields["legs"] == "metadata" and started.fields["legs_note"] is None  # type: ignore[attr-defined]


def test_mixed_codecs_are_kept_as_pcm16(store: Store) -> None:
    call = Call(codecs=(0, 8))
    caller = bytes([0x20]) * 1600
    agent = bytes([0x55]) * 1600

    async def scenario() -> None:
        async with serving(store) as (_, port):
            client = Client()
            await client.connect(port, "UDP")
            ports = (await client.start(call)).ports
            await asyncio.gather(
                send_rtp(ports[0], rtp_packets(caller, 0, 1)),
                send_rtp(ports[1], rtp_packets(agent, 8, 2)),
            )
            await asyncio.sleep(0.05)
            await client.bye(call)
            await client.close()

    asyncio.run(scenario())
    [(row, audio)] = recordings(store)
    assert row.audio_format == "pcm16/8000/2"
    samples = struct.unpack(f"<{len(audio) // 2}h", audio)
    from sampledrec.vault.audio import alaw_to_pcm16, ulaw_to_pcm16

    (left,) = struct.unpack("<h", ulaw_to_pcm16(b"\x20"))
    (right,) = struct.unpack("<h", alaw_to_pcm16(b"\x55"))
    assert samples[0::2].count(left) == 1600 and samples[1::2].count(right) == 1600


def test_declined_call_stores_nothing(store: Store) -> None:
    call = Call(queue="sales")

    async def scenario() -> None:
        async with serving(store) as (server, port):
            client = Client()
            await client.connect(port, "UDP")
            answer = await client.start(call)
            assert answer.status == 200 and answer.ports == [0, 0]
            assert call.session not in server.recordings
            assert (await client.bye(call)).status == 200
            assert server.metrics.calls_declined.value("siprec") == 1
            await client.close()

    asyncio.run(scenario())
    assert recordings(store) == []
    assert decisions(store) == [call.session]


def test_decline_403_when_configured(store: Store) -> None:
    call = Call(queue="sales")

    async def scenario() -> None:
        async with serving(store, decline="403") as (_, port):
            client = Client()
            await client.connect(port, "UDP")
            answer = await client.start(call)
            assert answer.status == 403 and "not selected" in (answer.header("Warning") or "")
            await client.close()

    asyncio.run(scenario())
    assert recordings(store) == []


def test_retransmitted_invite_is_decided_once(store: Store) -> None:
    call = Call()
    branch = "z9hG4bK-retransmitted"

    async def scenario() -> None:
        async with serving(store) as (_, port):
            client = Client()
            await client.connect(port, "UDP")
            for _ in range(3):
                client.send(invite(call, port, branch=branch))
            first = await client.expect(200)
            await asyncio.sleep(0.1)
            client.send(invite(call, port, branch=branch))  # after the answer: the same again
            again = await client.expect(200)
            assert again.raw == first.raw
            call.to_tag = re.search(r"tag=(\w+)", first.header("To") or "").group(1)  # type: ignore[union-attr]
            client.send(request("ACK", call, port))
            await client.bye(call)
            await client.close()

    asyncio.run(scenario())
    assert decisions(store) == [call.session]
    assert len(recordings(store)) == 1


def test_cancel_before_the_answer_records_nothing(store: Store) -> None:
    call = Call()
    branch = "z9hG4bK-cancelled"

    async def scenario() -> None:
        async with serving(store) as (server, port):
            client = Client()
            await client.connect(port, "UDP")
            client.send(invite(call, port, branch=branch))
            client.send(request("CANCEL", call, port, branch=branch))
            cancel_ok = await client.expect(200, 487)
            terminated = await client.expect(200, 487)
            assert {cancel_ok.status, terminated.status} == {200, 487}
            final = terminated if terminated.status == 487 else cancel_ok
            assert final.header("CSeq") == "1 INVITE"
            await asyncio.sleep(0.2)
            assert len(server.recordings) == 0
            await client.close()

    asyncio.run(scenario())
    assert recordings(store) == []


def test_reinvite_inactive_pauses_and_sendonly_resumes(store: Store) -> None:
    call = Call()

    async def scenario() -> None:
        async with serving(store) as (server, port):
            client = Client()
            await client.connect(port, "UDP")
            answer = await client.start(call)
            for direction, paused in (("inactive", True), ("sendonly", False)):
                call.cseq += 1
                body = sdp(call, direction)
                client.send(
                    request("INVITE", call, port, body=body, content_type="application/sdp")
                )
                again = await client.expect(200)
                assert again.ports == answer.ports
                assert (b"a=inactive" in again.body) == paused
                client.send(request("ACK", call, port))
                assert server.recordings._find(call.session)[1].paused == paused
            await send_rtp(answer.ports[0], rtp_packets(b"\x30" * 320, 0, 5))
            await client.bye(call)
            await client.close()

    asyncio.run(scenario())
    [(row, audio)] = recordings(store)
    assert row.pauses and strip(channel(audio, 0), 0xFF) == b"\x30" * 320


def test_an_offer_that_starts_inactive_is_recorded_paused_until_the_streams_start(
    store: Store,
) -> None:
    """Some SBCs fork a call before its media flows (a=inactive): the call is decided and its
    recording opened paused; no RTP is then expected (no timeout); a re-INVITE that starts the
    streams resumes it."""
    call = Call(direction="inactive")

    async def scenario() -> None:
        async with serving(store, rtp_timeout=0.3) as (server, port):
            client = Client()
            await client.connect(port, "UDP")
            answer = await client.start(call)
            assert answer.status == 200 and answer.body.count(b"a=inactive") == 2
            assert server.recordings._find(call.session)[1].paused
            await asyncio.sleep(0.8)  # beyond rtp_timeout: a paused call is not timed out
            assert call.session in server.recordings
            call.cseq += 1
            body = sdp(call, "sendonly")
            client.send(request("INVITE", call, port, body=body, content_type="application/sdp"))
            again = await client.expect(200)
            assert again.ports == answer.ports and again.body.count(b"a=recvonly") == 2
            client.send(request("ACK", call, port))
            assert not server.recordings._find(call.session)[1].paused
            await send_rtp(answer.ports[0], rtp_packets(b"\x31" * 480, 0, 5))
            await client.bye(call)
            await client.close()

    asyncio.run(scenario())
    [(row, audio)] = recordings(store)
    assert not row.truncated and strip(channel(audio, 0), 0xFF) == b"\x31" * 480


def test_update_pauses_and_resumes_info_is_ignored_metadata_updates_are_taken(
    store: Store,
) -> None:
    """UPDATE (RFC 3311) pauses and resumes like a re-INVITE; one without a body, a metadata
    snapshot alone (in an UPDATE or a re-INVITE) and an INFO get 200 and change nothing."""
    rng = random.Random(5)
    before, after = g711(rng, 10), g711(rng, 10)
    call = Call()

    async def scenario() -> None:
        async with serving(store) as (server, port):
            client = Client()
            await client.connect(port, "TCP")
            answer = await client.start(call)
            ports = answer.ports
            recording = server.recordings._find(call.session)[1]

            def send(method: str, body: bytes = b"", content_type: str | None = None) -> None:
                call.cseq += 1
                client.send(
                    request(
                        method, call, port, transport="TCP", body=body, content_type=content_type
                    )
                )

            await send_rtp(ports[0], rtp_packets(before, 0, 41))
            await asyncio.sleep(0.05)
            for direction, paused in (("inactive", True), ("sendonly", False)):
                send("UPDATE", sdp(call, direction), "application/sdp")
                ok = await client.expect(200)
                assert ok.header("CSeq") == f"{call.cseq} UPDATE"
                assert ok.ports == ports and (b"a=inactive" in ok.body) == paused
                assert recording.paused == paused
            send("UPDATE")  # a session refresh: no offer, no answer
            ok = await client.expect(200)
            assert ok.header("Content-Length") == "0" and not recording.paused
            send("UPDATE", metadata(call), "application/rs-metadata+xml")
            assert (await client.expect(200)).body == b""
            send("INVITE", metadata(call), "application/rs-metadata+xml")
            offer = await client.expect(200)  # no offer in it: the 2xx offers the session
            assert offer.ports == ports and offer.body.count(b"a=recvonly") == 2
            client.send(request("ACK", call, port, transport="TCP"))
            send("INFO", b"Signal=5\r\nDuration=160\r\n", "application/dtmf-relay")
            assert (await client.expect(200)).header("CSeq") == f"{call.cseq} INFO"
            await send_rtp(ports[0], rtp_packets(after, 0, 41, seq0=300))
            await asyncio.sleep(0.05)
            assert not recording.paused and call.session in server.recordings
            await client.bye(call)
            await client.close()

    asyncio.run(scenario())
    [(row, audio)] = recordings(store)
    assert row.pauses and not row.truncated
    assert strip(channel(audio, 0), 0xFF) == before + after


def test_requests_outside_a_dialog_and_methods_not_taken(store: Store) -> None:
    call = Call()
    stranger = Call(to_tag="not-ours")

    async def scenario() -> None:
        async with serving(store) as (_, port):
            client = Client()
            await client.connect(port, "UDP")
            await client.start(call)
            for method in ("INFO", "UPDATE", "BYE"):
                client.send(request(method, stranger, port))
                assert (await client.expect(481)).header("CSeq") == f"1 {method}"
            wrong_tag = Call(call_id=call.call_id, from_tag=call.from_tag, to_tag="x" + "1" * 8)
            client.send(request("INFO", wrong_tag, port))
            await client.expect(481)
            # Known methods a recorder does not take: 405 and Allow; unknown ones: 501.
            for method, status in (("REFER", 405), ("SUBSCRIBE", 405), ("FROBNICATE", 501)):
                call.cseq += 1
                client.send(request(method, call, port))
                refused = await client.expect(405, 501)
                assert refused.status == status
                assert "UPDATE" in (refused.header("Allow") or "")
            # A retransmitted UPDATE gets the same answer, not a second one.
            call.cseq += 1
            again = request("UPDATE", call, port, branch="z9hG4bK-update-once")
            client.send(again)
            first = await client.expect(200)
            client.send(again)
            assert (await client.expect(200)).raw == first.raw
            assert (await client.bye(call)).status == 200
            await client.close()

    asyncio.run(scenario())


def test_no_rtp_seals_the_recording_as_truncated(store: Store) -> None:
    call = Call()

    async def scenario() -> None:
        async with serving(store, rtp_timeout=0.3) as (server, port):
            client = Client()
            await client.connect(port, "UDP")
            ports = (await client.start(call)).ports
            await send_rtp(ports[0], rtp_packets(b"\x40" * 800, 0, 5))
            for _ in range(100):
                await asyncio.sleep(0.05)
                if call.session not in server.recordings:
                    break
            assert call.session not in server.recordings
            assert (await client.bye(call)).status == 481  # the dialog ended with the timeout
            await client.close()

    asyncio.run(scenario())
    [(row, audio)] = recordings(store)
    assert row.truncated and strip(channel(audio, 0), 0xFF) == b"\x40" * 800


def test_options_and_unknown_requirements(store: Store) -> None:
    call = Call()

    async def scenario() -> None:
        async with serving(store) as (_, port):
            client = Client()
            await client.connect(port, "TCP")
            client.send(b"\r\n\r\n")  # a keep-alive ping
            client.send(request("OPTIONS", call, port, transport="TCP"))
            ok = await client.expect(200)
            assert "INVITE" in (ok.header("Allow") or "")
            client.send(
                request("INVITE", call, port, transport="TCP", extra=("Require: 100rel, foo",))
            )
            bad = await client.expect(420)
            assert bad.header("Unsupported") == "100rel, foo"
            await client.close()

    asyncio.run(scenario())
    assert decisions(store) == []


def test_stopping_seals_open_calls(store: Store) -> None:
    call = Call()

    async def scenario() -> None:
        async with serving(store) as (_, port):
            client = Client()
            await client.connect(port, "UDP")
            ports = (await client.start(call)).ports
            await send_rtp(ports[1], rtp_packets(b"\x50" * 480, 0, 6))
            await client.close()

    asyncio.run(scenario())
    [(row, audio)] = recordings(store)
    assert row.truncated and strip(channel(audio, 1), 0xFF) == b"\x50" * 480


# -- SIP over TLS ----------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sampledrec test SRS")])
    now = datetime.now(UTC)
    alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "sip.crt", folder / "sip.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def tls_port(caplog: pytest.LogCaptureFixture) -> int:
    [listening] = [r for r in caplog.records if r.getMessage() == "listening"]
    address: str = listening.fields["tls_address"]  # type: ignore[attr-defined]
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("scheme", ["sip", "sips"])
def test_sip_over_tls_is_recorded_bit_exact(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture, scheme: str
) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    rng = random.Random(17)
    caller, agent = g711(rng, 25), g711(rng, 25)
    call = Call(scheme=scheme)

    async def scenario() -> None:
        async with serving(store, tls_cert=cert, tls_key=key) as (server, _):
            port = tls_port(caplog)
            # Plain SIP to the TLS port: the handshake fails, the connection is closed, the
            # server goes on.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request("OPTIONS", Call(), port, transport="TCP"))
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            client = Client()
            await client.connect(port, "TLS", tls=trust)
            assert client._writer is not None
            tls_object = client._writer.get_extra_info("ssl_object")
            assert tls_object.version() in ("TLSv1.2", "TLSv1.3")
            answer = await client.start(call)
            assert answer.status == 200
            assert (answer.header("Via") or "").startswith("SIP/2.0/TLS ")
            expected = (
                f"<sips:sampledrec@127.0.0.1:{port}>"
                if scheme == "sips"
                else f"<sip:sampledrec@127.0.0.1:{port};transport=tls>"
            )
            assert answer.header("Contact") == expected
            ports = answer.ports
            await asyncio.gather(
                send_rtp(ports[0], rtp_packets(caller, 0, 51)),
                send_rtp(ports[1], rtp_packets(agent, 0, 52)),
            )
            await asyncio.sleep(0.05)
            assert (await client.bye(call)).status == 200
            await asyncio.sleep(0.2)
            assert call.session not in server.recordings
            await client.close()

    with caplog.at_level("INFO", logger="sampledrec.serve"):
        asyncio.run(scenario())
    [(row, audio)] = recordings(store)
    assert not row.truncated and row.call_ref == call.session
    assert strip(channel(audio, 0), 0xFF) == caller
    assert strip(channel(audio, 1), 0xFF) == agent


def test_siprec_tls_settings_are_checked_before_listening(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = self_signed(tmp_path)
    here = Listen("127.0.0.1", 5060)
    config = SiprecConfig(here, tls_cert=cert, tls_key=key)
    assert config.transports == ("udp", "tcp", "tls")
    assert config.tls_listen == Listen("127.0.0.1", 5061)
    assert config.ssl_context is not None
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    only = SiprecConfig(here, transports=("tls",), tls_cert=cert, tls_key=key)
    assert only.transports == ("tls",)
    assert SiprecConfig(Listen("127.0.0.1", 0), tls_cert=cert, tls_key=key).tls_listen == Listen(
        "127.0.0.1", 0
    )
    assert SiprecConfig(here).transports == ("udp", "tcp")
    missing = tmp_path / "missing.pem"
    for kwargs, message in [
        ({"tls_cert": missing, "tls_key": key}, "tls_cert .*missing.pem: No such file"),
        ({"tls_cert": key, "tls_key": cert}, "cannot be loaded"),
        ({"tls_cert": cert}, "together"),
        ({"transports": ("tls",)}, 'lists "tls": give tls_cert'),
        ({"transports": ("udp", "tcp"), "tls_cert": cert, "tls_key": key}, 'add "tls"'),
        ({"transports": ("udp", "sctp")}, "one or more of"),
        ({"tls_listen": Listen("127.0.0.1", 5061)}, "tls_listen needs"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            SiprecConfig(here, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="no next port"):
        SiprecConfig(Listen("127.0.0.1", 65535), tls_cert=cert, tls_key=key)
    section = {"listen": "127.0.0.1:5070", "tls_cert": "sip.crt", "tls_key": "sip.key"}
    from_file = SiprecConfig.from_section(section, tmp_path)
    assert (from_file.tls_cert, from_file.tls_listen) == (cert, Listen("127.0.0.1", 5071))
    explicit = SiprecConfig.from_section({**section, "tls_listen": "127.0.0.1:5999"}, tmp_path)
    assert explicit.tls_listen == Listen("127.0.0.1", 5999)
    serve = ["serve", "--store", str(store.path), "--siprec", "127.0.0.1:0"]
    tls = ["--siprec-tls-cert", str(missing), "--siprec-tls-key", str(key)]
    assert main([*serve, *tls]) == 2
    assert "No such file" in capsys.readouterr().err


# -- sipp ----------------------------------------------------------------------------------------

needs_sipp = pytest.mark.skipif(
    SIPP is None,
    reason="sipp is not installed (Debian package sip-tester; ./dev installs it for the tests)",
)
SCENARIO = Path(__file__).parent / "sipp" / "siprec_uac.xml"


def write_pcap(path: Path, *legs: bytes, pt: int = 0) -> None:
    """A libpcap file of Ethernet/IPv4/UDP/RTP packets, 20 ms apart, for play_pcap_audio: leg
    N goes to port 6000 + 2N, which sipp sends to the answer's first media port + 2N (the door
    gives a call's streams consecutive even ports)."""
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for n, offset in enumerate(range(0, len(legs[0]), 160)):
        for leg, payload in enumerate(legs):
            rtp = (
                struct.pack("!BBHII", 0x80, pt, 1000 + n, offset, 0x5EED + leg)
                + payload[offset : offset + 160]
            )
            port = 6000 + 2 * leg
            udp = struct.pack("!HHHH", port, port, 8 + len(rtp), 0) + rtp
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n, 0, 64, 17, 0,
                bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
            ) + udp  # fmt: skip
            frame = b"\x00" * 12 + b"\x08\x00" + ip
            seconds, micros = divmod(n * 20_000 + leg * 50, 1_000_000)
            out.write(struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame)
    path.write_bytes(out.getvalue())


def start_server(
    path: Path, tmp: Path, rtp: str, transport: str = "udp"
) -> tuple[subprocess.Popen[str], int]:
    config = tmp / "serve.toml"
    config.write_text(
        f'[siprec]\nlisten = "127.0.0.1:0"\ntransports = ["{transport}"]\n'
        f'rtp_ports = "{rtp}"\nrtp_timeout = 20\ncaller = "participant:1"\n'
        'attributes = { queue = "header:X-Queue" }\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sampledrec.cli.app import entry_point; entry_point()",
         "serve", "--store", str(path), "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": SRC, "PYTHONWARNINGS": "error"},
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        doc = json.loads(line)
        if doc["event"] == "listening":
            port = int(doc["address"].rsplit(":", 1)[1])
        if doc["event"] == "ready":
            # Keep reading its log: a pipe nobody reads fills up (64 KiB), and the server's
            # next log line would then block it (its event loop waits on the logging lock).
            lines: list[str] = []
            reader = threading.Thread(target=lines.extend, args=(proc.stderr,), daemon=True)
            reader.start()
            _LOGS[proc.pid] = (reader, lines)
            return proc, port
    raise AssertionError(f"the server exited with {proc.wait(10)}")


_LOGS: dict[int, tuple[threading.Thread, list[str]]] = {}


def run_sipp(
    port: int,
    tmp: Path,
    *,
    calls: int,
    rate: int,
    pause_ms: int = 1300,
    extra: tuple[str, ...] = (),
) -> str:
    cmd = [
        SIPP or "sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIO), "-m", str(calls),
        "-r", str(rate), "-i", "127.0.0.1", "-p", "0", "-mi", "127.0.0.1",
        # sipp's own media ports, away from every RTP range the server is given in these tests
        "-mp", str(40000 + 2 * (os.getpid() % 2000)), "-trace_err", "-nostdin",
        "-timeout", "50", "-timeout_error", "-aa", "-d", str(pause_ms), *extra,
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


def finish(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    reader, lines = _LOGS.pop(proc.pid)
    reader.join(timeout=10)
    assert proc.stderr is not None
    proc.stderr.close()
    err = "".join(lines)
    assert proc.returncode == 0, err[-3000:]
    return err


def check_store(path: Path, tmp: Path, refs: list[str | bytes]) -> None:
    out = io.StringIO()
    assert main(["log", "verify", "--store", str(path)], out=out) == 0, out.getvalue()
    store = Store.open(path)
    tomorrow = datetime.now(UTC) + timedelta(days=2)
    revealed = tmp / "revealed.json"
    store.write_revealed(store.reveal_keys(now=tomorrow), revealed)
    start = datetime.now(UTC).isoformat()
    cdr = tmp / "cdr.csv"
    cdr.write_text(
        "call_ref,start_time\n" + "".join(f"{r},{start}\n" for r in refs if isinstance(r, str))
    )
    out = io.StringIO()
    audit = ["audit", "verify", "--store", str(path), "--revealed-keys", str(revealed)]
    code = main([*audit, "--cdr", str(cdr), "--at", tomorrow.isoformat()], out=out)
    assert code == 0 and "AUDIT PASSED" in out.getvalue(), out.getvalue()


@needs_sipp
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_call_is_recorded_bit_exact_and_audits(tmp_path: Path, transport: str) -> None:
    path = tmp_path / "store"
    (tmp_path / "p.toml").write_text(RECORD_REGULATED)
    Store.init(path, policy=tmp_path / "p.toml", simulated=True)
    caller, agent = g711(random.Random(7), 50), g711(random.Random(17), 50)
    write_pcap(tmp_path / "leg.pcap", caller, agent)
    rtp = "31000-31099" if transport == "udp" else "31100-31199"
    proc, port = start_server(path, tmp_path, rtp, transport)
    try:
        run_sipp(
            port, tmp_path, calls=1, rate=1, extra=("-t", "u1" if transport == "udp" else "t1")
        )
    finally:
        err = finish(proc)
    assert '"recording_sealed"' in err
    store = Store.open(path)
    [(row, audio)] = recordings(store)
    assert not row.truncated
    assert strip(channel(audio, 0), 0xFF) == caller
    assert strip(channel(audio, 1), 0xFF) == agent
    check_store(path, tmp_path, decisions(store))


@needs_sipp
def test_sipp_load_run_loses_nothing(tmp_path: Path) -> None:
    """Two rounds of 150 calls at 75 calls/s, each call 3 s of audio: a couple of hundred calls
    open at once. No call fails, none is lost, every leg is bit-exact, the log and the audit
    verify, and the server's memory does not grow from one round to the next."""
    path = tmp_path / "store"
    (tmp_path / "p.toml").write_text(RECORD_REGULATED)
    Store.init(path, policy=tmp_path / "p.toml", simulated=True)
    caller, agent = g711(random.Random(8), 150), g711(random.Random(18), 150)
    write_pcap(tmp_path / "leg.pcap", caller, agent)
    proc, port = start_server(path, tmp_path, "32000-32999")
    rss = []
    try:
        for _ in range(2):
            stats = run_sipp(port, tmp_path, calls=150, rate=75, pause_ms=3300)
            assert re.search(r"Failed call\s*\|\s*\d+\s*\|\s*0\s", stats), stats[-2000:]
            rss.append(_rss_kib(proc.pid))
    finally:
        err = finish(proc)
    # The second round's calls reuse what the first freed: not a call's worth more each time.
    assert rss[1] - rss[0] < 16 * 1024, rss
    store = Store.open(path)
    found = recordings(store)
    assert len(found) == 300 and len(set(decisions(store))) == 300
    for row, audio in found:
        assert not row.truncated, err[-2000:]
        for index, sent in enumerate((caller, agent)):
            got = strip(channel(audio, index), 0xFF)
            assert got == sent, (f"leg {index + 1}: {len(got)} of {len(sent)} bytes", err[-2000:])
    check_store(path, tmp_path, decisions(store))


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s*(\d+) kB", status).group(1))  # type: ignore[union-attr]


def test_a_calls_streams_get_consecutive_ports_while_the_range_allows() -> None:
    low = 24000 + 2 * (os.getpid() % 2000)
    pool = _PortPool(low, low + 15)  # 8 even ports: 4 runs of two
    try:
        runs = [[p for p in pool.take_run(2) if p is not None] for _ in range(4)]
        assert runs == [[low + 4 * i, low + 4 * i + 2] for i in range(4)]
        assert pool.take_run(2) == [None, None]  # exhausted
        for port in runs[1] + runs[3]:
            pool.give(port)
        assert sorted([pool.take_run(2), pool.take_run(2)]) == sorted([runs[1], runs[3]])
        pool.give(runs[0][1])  # one port alone: a mono call takes it, a stereo call waits
        assert pool.take_run(2) == [runs[0][1], None]
        # A port another program holds is skipped: the run moves on, nothing is lost.
        for port in [p for run in runs for p in run]:
            pool.give(port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
            squatter.bind(("127.0.0.1", low + 2))
            first = pool.take_run(2)
            assert low + 2 not in first and None not in first
            assert first[1] == first[0] + 2  # type: ignore[operator]
    finally:
        for port in range(low, low + 16, 2):
            pool.give(port)
