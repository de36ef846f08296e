"""The media-stream doors end to end: AudioSocket, Twilio media streams, FreeSWITCH fork.

Each client here is written from the published wire format (Asterisk's AudioSocket protocol
page, byte for byte; Twilio's "Media Streams - WebSocket Messages", message for message;
mod_audio_fork's README: a JSON text frame, then binary L16), with ``struct``, ``json`` and
aiohttp's WebSocket client, and nothing from the server's parsers. A call is decided over
HTTP first, as a dialplan does; the recording is then read back from the vault and compared
byte for byte with what the client sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import gc
import hashlib
import hmac
import ipaddress
import json
import os
import ssl
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sampledrec import Store
from sampledrec.errors import InvalidArgument, InvalidMediaStream
from sampledrec.ingest.audiosocket import AudioSocketReader
from sampledrec.ingest.mediastreams import (
    MediaStreamReader,
    StreamStarted,
    parse_fork_metadata,
    twilio_signature,
)
from sampledrec.ingest.tracks import Tracks
from sampledrec.log.format import T_RECORD_REFUSED
from sampledrec.log.writer import iter_entries
from sampledrec.serve import HttpConfig, Listen, Server, http_door
from sampledrec.serve.audiosocket import AudioSocketConfig, audiosocket_door
from sampledrec.serve.streams import StreamsConfig, streams_door
from sampledrec.vault.recorder import Vault

from .recording import RECORD_REC

TOKEN = "media-token-0123456789abcdef"
POLICY = RECORD_REC


@pytest.fixture
def store(tmp_path: Path) -> Store:
    (tmp_path / "policy.toml").write_text(POLICY)
    return Store.init(tmp_path / "store", policy=tmp_path / "policy.toml")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return path


class Running:
    def __init__(self, server: Server, addresses: dict[str, str], session: aiohttp.ClientSession):
        self.server = server
        self.http = addresses["http"]
        host, _, port = addresses["audiosocket"].rpartition(":")
        self.audiosocket = (host, int(port))
        self.ws = addresses["streams"].replace("ws://", "http://").replace("wss://", "https://")
        self.session = session

    async def settled(self, opened: int = 0, *, patience: float = 5.0) -> None:
        """Wait (at most ``patience`` seconds) until ``opened`` recordings were opened and
        none is open (all sealed)."""
        m = self.server.metrics.calls_recorded
        for _ in range(int(patience * 100)):
            done = m.value("audiosocket") + m.value("streams") >= opened
            if done and not len(self.server.recordings):
                return
            await asyncio.sleep(0.01)

    async def decide(self, ref: str, queue: str = "rec") -> dict[str, Any]:
        async with self.session.post(
            f"{self.http}/v1/decisions", json={"call_ref": ref, "attributes": {"queue": queue}}
        ) as r:
            assert r.status == 200
            return dict(await r.json())


@contextlib.asynccontextmanager
async def serving(
    store: Store,
    token_file: Path,
    *,
    legs: int = 1,
    idle_timeout: float = 10.0,
    client_ssl: Any = None,
    **streams: Any,
) -> AsyncIterator[Running]:
    """A server with the HTTP, AudioSocket and streams doors; ``streams`` are more settings
    of the streams door; ``client_ssl`` the client's SSL context (for wss://)."""
    doors = {
        "http": http_door(HttpConfig(Listen("127.0.0.1", 0), insecure_no_auth=True)),
        "audiosocket": audiosocket_door(
            AudioSocketConfig(
                Listen("127.0.0.1", 0), legs=legs, pair_window=0.3, idle_timeout=idle_timeout
            )
        ),
        "streams": streams_door(
            StreamsConfig(Listen("127.0.0.1", 0), token_file=token_file, **streams)
        ),
    }
    server = Server(store, doors, shutdown_grace=5)
    task = asyncio.create_task(server.run())
    try:
        addresses = await server.wait_ready()
        if task.done():
            task.result()
        connector = aiohttp.TCPConnector(limit=0, ssl=client_ssl if client_ssl else True)
        async with aiohttp.ClientSession(connector=connector) as session:
            running = Running(server, addresses, session)
            yield running
            await running.settled()
    finally:
        server.stop()
        await task


def recordings(store: Store) -> dict[str, tuple[Any, bytes]]:
    """call_ref -> (catalog row, audio as recorded)."""
    with store.open_log() as log, Vault(store, log) as vault:
        return {
            str(row.call_ref): (row, vault.open(row.recording_id).audio)
            for row in vault.recordings()
        }


def refused(store: Store) -> list[dict[str, Any]]:
    return [
        dict(e.fields)
        for e in iter_entries(store.log_storage, store.keyring)
        if e.type == T_RECORD_REFUSED
    ]


def pcm(seconds: float, seed: int, rate: int = 8000) -> bytes:
    return os.urandom(0) + bytes((seed * 7 + i * 13) % 256 for i in range(int(rate * seconds) * 2))


# -- AudioSocket: a client byte for byte from the protocol page -------------------------------


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


async def audiosocket_call(
    address: tuple[str, int],
    call: uuid.UUID,
    audio: bytes,
    *,
    hangup: bool = True,
    kind: int = 0x10,
) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(frame(0x01, call.bytes))
    for i in range(0, len(audio), 320):
        writer.write(frame(kind, audio[i : i + 320]))
        if i % 3200 == 0:
            await writer.drain()
    if not hangup:  # the connection drops: no hang-up message
        writer.close()
        await writer.wait_closed()
        return b""
    writer.write(frame(0x00))
    await writer.drain()
    rest = await reader.read()  # the server closes
    writer.close()
    await writer.wait_closed()
    return rest


def test_audiosocket_records_a_selected_call_bit_exact(store: Store, token_file: Path) -> None:
    call = uuid.uuid4()
    audio = pcm(1.5, 1)

    async def go() -> None:
        async with serving(store, token_file) as s:
            assert (await s.decide(str(call)))["record"] is True
            await audiosocket_call(s.audiosocket, call, audio)

    asyncio.run(go())
    row, recorded = recordings(store)[str(call)]
    assert recorded == audio
    assert row.audio_format == "pcm16/8000/1" or "8000" in row.audio_format
    assert row.truncated is False


def test_audiosocket_16k_and_dropped_connection_is_truncated(
    store: Store, token_file: Path
) -> None:
    call = uuid.uuid4()
    audio = pcm(0.5, 2, 16000)

    async def go() -> None:
        async with serving(store, token_file) as s:
            await s.decide(str(call))
            await audiosocket_call(s.audiosocket, call, audio, hangup=False, kind=0x12)
            await s.settled(1)

    asyncio.run(go())
    row, recorded = recordings(store)[str(call)]
    assert (len(recorded), row.truncated) == (len(audio), True)
    assert recorded == audio
    assert "16000" in row.audio_format


def test_audiosocket_refuses_undecided_and_unselected_calls(store: Store, token_file: Path) -> None:
    never, declined = uuid.uuid4(), uuid.uuid4()

    async def go() -> None:
        async with serving(store, token_file) as s:
            assert (await s.decide(str(declined), queue="other"))["record"] is False
            for call in (never, declined):
                rest = await audiosocket_call(s.audiosocket, call, pcm(0.2, 3))
                assert rest == b""  # closed without a word

    asyncio.run(go())
    assert recordings(store) == {}
    reasons = {str(e["call_ref"]): e["reason"] for e in refused(store)}
    assert "not decided" in reasons[str(never)]
    assert "not selected" in reasons[str(declined)]


def test_audiosocket_malformed_and_oversized_are_closed(store: Store, token_file: Path) -> None:
    call = uuid.uuid4()

    async def go() -> None:
        async with serving(store, token_file) as s:
            await s.decide(str(call))
            for bad in (frame(0x10, b"\0\0"), frame(0x01, b"short"), b"\x10\xff\xff"):
                reader, writer = await asyncio.open_connection(*s.audiosocket)
                writer.write(bad)
                await writer.drain()
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
                await writer.wait_closed()
            # audio of a selected call, then an unknown type: sealed, truncated
            reader, writer = await asyncio.open_connection(*s.audiosocket)
            writer.write(frame(0x01, call.bytes) + frame(0x10, b"\1\0" * 160) + frame(0x42))
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()

    asyncio.run(go())
    row, recorded = recordings(store)[str(call)]
    assert recorded == b"\1\0" * 160 and row.truncated


def test_audiosocket_two_legs_are_two_channels(store: Store, token_file: Path) -> None:
    call = uuid.uuid4()
    a, b = pcm(1.0, 4), pcm(1.0, 5)

    async def go() -> None:
        async with serving(store, token_file, legs=2) as s:
            await s.decide(str(call))
            r1, w1 = await asyncio.open_connection(*s.audiosocket)
            r2, w2 = await asyncio.open_connection(*s.audiosocket)
            w1.write(frame(0x01, call.bytes))
            w2.write(frame(0x01, call.bytes))
            for i in range(0, len(a), 320):
                w1.write(frame(0x10, a[i : i + 320]))
                await w1.drain()
                await asyncio.sleep(0)
                w2.write(frame(0x10, b[i : i + 320]))
                await w2.drain()
            for w in (w1, w2):
                w.write(frame(0x00))
                await w.drain()
            await r1.read()
            await r2.read()
            for w in (w1, w2):
                w.close()
                await w.wait_closed()

    asyncio.run(go())
    row, recorded = recordings(store)[str(call)]
    assert "/2" in row.audio_format or row.audio_format.endswith("2")
    left = b"".join(recorded[i : i + 2] for i in range(0, len(recorded), 4))
    right = b"".join(recorded[i + 2 : i + 4] for i in range(0, len(recorded), 4))
    assert left.rstrip(b"\0") == a.rstrip(b"\0")
    assert b in right  # channel 2 starts where channel 1 stood when it joined


def test_a_hundred_audiosocket_calls_at_once(store: Store, token_file: Path) -> None:
    calls = [uuid.uuid4() for _ in range(100)]
    audio = {c: pcm(0.4, i) for i, c in enumerate(calls)}

    async def go() -> None:
        async with serving(store, token_file) as s:
            await asyncio.gather(*(s.decide(str(c)) for c in calls))
            await asyncio.gather(*(audiosocket_call(s.audiosocket, c, audio[c]) for c in calls))

    asyncio.run(go())
    found = recordings(store)
    assert {k: v[1] for k, v in found.items()} == {str(c): audio[c] for c in calls}


# -- Twilio media streams: message for message from Twilio's page ------------------------------


def mulaw(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 256 for i in range(n))


async def twilio_call(
    s: Running,
    params: dict[str, str],
    inbound: bytes,
    outbound: bytes,
    *,
    skip: set[int] = frozenset(),  # type: ignore[assignment]
    stop: bool = True,
    headers: dict[str, str] | None = None,
) -> aiohttp.WSMessage | None:
    ws = await s.session.ws_connect(f"{s.ws}/v1/streams/twilio", headers=headers)
    sid = "MZ" + uuid.uuid4().hex
    await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    seq = 1
    await ws.send_str(
        json.dumps(
            {
                "event": "start",
                "sequenceNumber": str(seq),
                "start": {
                    "accountSid": "AC" + "0" * 32,
                    "streamSid": sid,
                    "callSid": "CA" + uuid.uuid4().hex,
                    "tracks": ["inbound", "outbound"],
                    "customParameters": params,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": sid,
            }
        )
    )
    for n, i in enumerate(range(0, len(inbound), 160)):
        for track, audio in (("inbound", inbound), ("outbound", outbound)):
            seq += 1
            if n in skip and track == "inbound":
                continue
            media = {
                "track": track,
                "chunk": str(n + 1),
                "timestamp": str(n * 20),
                "payload": base64.b64encode(audio[i : i + 160]).decode(),
            }
            message = {"event": "media", "sequenceNumber": str(seq), "media": media}
            if ws.closed:
                break
            await ws.send_str(json.dumps({**message, "streamSid": sid}))
    if stop and not ws.closed:
        seq += 1
        await ws.send_str(
            json.dumps({"event": "stop", "sequenceNumber": str(seq), "streamSid": sid})
        )
    if not stop:
        await ws.close(code=aiohttp.WSCloseCode.ABNORMAL_CLOSURE)
        return None
    reply = await ws.receive(timeout=60)  # the server seals, then closes
    await ws.close()
    return reply


def test_twilio_stream_is_two_mulaw_channels_bit_exact(store: Store, token_file: Path) -> None:
    inbound, outbound = mulaw(8000, 1), mulaw(8000, 2)

    async def go() -> None:
        async with serving(store, token_file) as s:
            await s.decide("twilio-call-1")
            await twilio_call(s, {"call_ref": "twilio-call-1", "token": TOKEN}, inbound, outbound)

    asyncio.run(go())
    row, recorded = recordings(store)["twilio-call-1"]
    assert row.audio_format.startswith("mulaw") and not row.truncated
    assert recorded[0::2] == inbound and recorded[1::2] == outbound


def test_twilio_gap_becomes_silence_and_counted(store: Store, token_file: Path) -> None:
    inbound, outbound = mulaw(1600, 3), mulaw(1600, 4)

    async def go() -> None:
        async with serving(store, token_file) as s:
            await s.decide("twilio-gap")
            await twilio_call(
                s, {"call_ref": "twilio-gap", "token": TOKEN}, inbound, outbound, skip={3}
            )
            lost = s.server.metrics.packets_lost.value("streams")
            assert lost == 1

    asyncio.run(go())
    _, recorded = recordings(store)["twilio-gap"]
    expected = inbound[: 3 * 160] + b"\xff" * 160 + inbound[4 * 160 :]
    assert recorded[0::2] == expected and recorded[1::2] == outbound


def test_twilio_refusals_and_auth(store: Store, token_file: Path) -> None:
    async def go() -> None:
        async with serving(store, token_file) as s:
            await s.decide("twilio-declined", queue="other")
            await s.decide("twilio-ok")
            for params in (
                {"call_ref": "twilio-never", "token": TOKEN},
                {"call_ref": "twilio-declined", "token": TOKEN},
                {"call_ref": "twilio-ok", "token": "wrong-token-0123456789"},
                {"call_ref": "twilio-ok"},
            ):
                reply = await twilio_call(s, params, mulaw(320, 5), mulaw(320, 6))
                assert reply is not None and reply.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                )

    asyncio.run(go())
    assert recordings(store) == {}
    reasons = {str(e["call_ref"]): e["reason"] for e in refused(store)}
    assert set(reasons) == {"twilio-never", "twilio-declined"}


def test_twilio_out_of_order_and_dropped(store: Store, token_file: Path) -> None:
    async def go() -> None:
        async with serving(store, token_file) as s:
            for ref in ("twilio-ooo", "twilio-drop"):
                await s.decide(ref)
            ws = await s.session.ws_connect(f"{s.ws}/v1/streams/twilio?token={TOKEN}")
            start = {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "streamSid": "MZ1",
                    "callSid": "CA1",
                    "tracks": ["inbound"],
                    "customParameters": {"call_ref": "twilio-ooo"},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
            await ws.send_str(json.dumps(start))
            media = {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "AAAA"}
            await ws.send_str(json.dumps({"event": "media", "sequenceNumber": "3", "media": media}))
            await ws.send_str(json.dumps({"event": "media", "sequenceNumber": "2", "media": media}))
            reply = await ws.receive(timeout=5)
            assert reply.type == aiohttp.WSMsgType.CLOSE and reply.data == 1007
            await ws.close()
            await twilio_call(
                s, {"call_ref": "twilio-drop", "token": TOKEN}, mulaw(800, 7), mulaw(800, 8),
                stop=False,
            )  # fmt: skip
            await s.settled(2)

    asyncio.run(go())
    found = recordings(store)
    assert found["twilio-ooo"][0].truncated and found["twilio-ooo"][1] == b"\0\0\0"
    assert found["twilio-drop"][0].truncated


# -- FreeSWITCH mod_audio_fork ----------------------------------------------------------------


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 2)])
def test_fork_records_l16_bit_exact(
    store: Store, token_file: Path, rate: int, channels: int
) -> None:
    ref = f"fs-{rate}-{channels}"
    audio = pcm(1.0, 9, rate)[: rate * 2 * channels // 2 * 2]

    async def go() -> None:
        async with serving(store, token_file) as s:
            await s.decide(ref)
            basic = base64.b64encode(f"fs:{TOKEN}".encode()).decode()
            ws = await s.session.ws_connect(
                f"{s.ws}/v1/streams/fork", headers={"Authorization": f"Basic {basic}"}
            )
            meta = {"call_ref": ref, "sample_rate": rate, "channels": channels}
            await ws.send_str(json.dumps(meta))
            step = rate // 50 * 2 * channels
            for i in range(0, len(audio), step):
                await ws.send_bytes(audio[i : i + step])
            await ws.close()
            await asyncio.sleep(0.1)

    asyncio.run(go())
    row, recorded = recordings(store)[ref]
    assert recorded == audio and not row.truncated
    assert str(rate) in row.audio_format


def test_fork_refusals(store: Store, token_file: Path) -> None:
    async def go() -> None:
        async with serving(store, token_file) as s:
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await s.session.ws_connect(f"{s.ws}/v1/streams/fork")
            ws = await s.session.ws_connect(f"{s.ws}/v1/streams/fork?token={TOKEN}")
            await ws.send_str(json.dumps({"call_ref": "fs-never"}))
            reply = await ws.receive(timeout=5)
            assert reply.type == aiohttp.WSMsgType.CLOSE and reply.data == 1008
            await ws.close()
            ws = await s.session.ws_connect(f"{s.ws}/v1/streams/fork?token={TOKEN}")
            await ws.send_bytes(b"\0\0")
            reply = await ws.receive(timeout=5)
            assert reply.type == aiohttp.WSMsgType.CLOSE and reply.data == 1003
            await ws.close()

    asyncio.run(go())
    assert [e["call_ref"] for e in refused(store)] == ["fs-never"]


# -- the sans-I/O parsers, on their own --------------------------------------------------------


def test_audiosocket_reader_any_split() -> None:
    call = uuid.uuid4()
    stream = frame(0x01, call.bytes) + frame(0x10, b"\1\2" * 5) + frame(0x03, b"5") + frame(0)
    reader = AudioSocketReader()
    out = []
    for byte in stream:
        out += reader.feed(bytes([byte]))
    assert [type(m).__name__ for m in out] == [
        "AudioSocketUuid",
        "AudioSocketAudio",
        "AudioSocketDtmf",
        "AudioSocketHangup",
    ]
    assert out[0].call_ref == str(call)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        b"\x10\x00\x02ab",
        b"\x01\x00\x03abc",
        b"\x10\x40\x00",
        b"\x01\x00\x10" + b"u" * 16 + b"\x42\0\0",
    ],
)
def test_audiosocket_reader_refuses(data: bytes) -> None:
    reader = AudioSocketReader()
    try:
        reader.feed(data)  # whole messages before the fault are returned first
    except InvalidMediaStream:
        return
    assert reader.failed
    with pytest.raises(InvalidMediaStream):
        reader.feed(b"")


def test_media_stream_reader_refuses_garbage() -> None:
    for text in ("nope", "[]", '{"event": "media"}', '{"event": "start", "start": {}}'):
        with pytest.raises(InvalidMediaStream):
            MediaStreamReader().feed(text)
    with pytest.raises(InvalidMediaStream):
        parse_fork_metadata('{"sample_rate": 8000}')


def test_tracks_pads_a_stalled_track() -> None:
    t = Tracks(2, width=1, silence=b"\xff", tolerance=0, max_lag=4)
    t.put(0, b"abcdefgh")
    assert t.take() == b"a\xffb\xffc\xffd\xff"


def test_recall_answers_a_logged_decision_and_never_decides(store: Store) -> None:
    with store.open_log() as log, store.sampler(log=log) as sampler:
        first = sampler.decide("c-1", {"queue": "rec"})
        size = log.pending + log.size
        again = sampler.recall("c-1")
        assert again is not None and again == first and again.repeat
        assert again.log_ticket == first.log_ticket
        assert sampler.recall("c-never") is None
        assert sampler.recall(b"c-1") is None  # bytes and text are different references
        assert log.pending + log.size == size  # nothing logged
    with store.open_log() as log, store.sampler(log=log) as other:  # another process's view
        recalled = other.recall("c-1")
        assert recalled is not None and recalled.record and recalled.log_ticket is not None


# -- Twilio's request signature, computed here from Twilio's "Webhooks security" page ----------


def twilio_signed(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """HMAC-SHA1 over the URL, then each POST parameter's name and value sorted by name;
    base64 (Twilio's security page; a WebSocket upgrade is a GET: the URL alone)."""
    text = url + "".join(k + v for k, v in sorted((params or {}).items()))
    mac = hmac.new(auth_token.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def test_twilio_signature_matches_twilios_published_example() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signed("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert twilio_signature(b"12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


AUTH_TOKEN = "0123456789abcdef0123456789abcdef"  # a Twilio auth token: 32 hex digits


@pytest.mark.parametrize("configured_url", [False, True])
def test_twilio_signature_is_required_when_configured(
    store: Store, token_file: Path, tmp_path: Path, configured_url: bool
) -> None:
    auth = tmp_path / "twilio-auth-token"
    auth.write_text(AUTH_TOKEN + "\n")
    public = "wss://rec.example.com/v1/streams/twilio"
    options: dict[str, Any] = {"twilio_auth_token_file": auth}
    if configured_url:
        options["twilio_stream_url"] = public
    inbound, outbound = mulaw(1600, 11), mulaw(1600, 12)
    statuses: list[int] = []

    async def go() -> None:
        async with serving(store, token_file, **options) as s:
            await s.decide("signed-call")
            url = f"{s.ws}/v1/streams/twilio"
            signed_url = public if configured_url else url.replace("http://", "ws://")
            for signature in ("", twilio_signed("wrong-token", signed_url), "garbage"):
                headers = {"X-Twilio-Signature": signature} if signature else {}
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await s.session.ws_connect(url, headers=headers)
                statuses.append(refused.value.status)
            # A valid signature stands for the token: no token parameter in the TwiML.
            headers = {"X-Twilio-Signature": twilio_signed(AUTH_TOKEN, signed_url)}
            await twilio_call(s, {"call_ref": "signed-call"}, inbound, outbound, headers=headers)
            refusals = s.server.metrics.recordings_refused.value("streams", "bad_signature")
            assert refusals == 3

    asyncio.run(go())
    assert statuses == [403, 403, 403]
    _, recorded = recordings(store)["signed-call"]
    assert recorded[0::2] == inbound and recorded[1::2] == outbound


def test_twilio_signature_default_port_is_the_same_url(tmp_path: Path) -> None:
    from sampledrec.serve.streams import _signed_urls

    assert _signed_urls("wss://a.example/v1/streams/twilio") == (
        "wss://a.example/v1/streams/twilio",
        "wss://a.example:443/v1/streams/twilio",
    )
    assert _signed_urls("wss://a.example:443/x")[1] == "wss://a.example/x"
    assert _signed_urls("wss://a.example:8490/x") == ("wss://a.example:8490/x",)
    auth = tmp_path / "auth"
    auth.write_text(AUTH_TOKEN)
    with pytest.raises(InvalidArgument, match="query string"):
        StreamsConfig(
            Listen("127.0.0.1", 0),
            insecure_no_auth=True,
            twilio_auth_token_file=auth,
            twilio_stream_url="wss://a.example/x?token=1",
        )
    with pytest.raises(InvalidArgument, match="twilio_auth_token_file"):
        StreamsConfig(
            Listen("127.0.0.1", 0), insecure_no_auth=True, twilio_stream_url="wss://a.example/x"
        )


# -- Telnyx media streaming: message for message from Telnyx's "Media Streaming over
# WebSockets" (snake_case names, stream_id at the top level, PCMU, tracks in each media) --------


async def telnyx_call(
    s: Running,
    params: dict[str, str],
    inbound: bytes,
    outbound: bytes,
    *,
    swap: int | None = None,
) -> aiohttp.WSMessage:
    """A Telnyx stream of both tracks (20 ms chunks); ``swap``: chunk ``swap`` of the inbound
    track is sent after chunk ``swap + 1`` (Telnyx does not guarantee order)."""
    ws = await s.session.ws_connect(
        f"{s.ws}/v1/streams/telnyx", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    stream_id = str(uuid.uuid4()).upper()
    control = "v3:" + uuid.uuid4().hex
    await ws.send_str(json.dumps({"event": "connected", "version": "1.0.0"}))
    seq = 1
    start = {
        "user_id": str(uuid.uuid4()),
        "call_control_id": control,
        "call_session_id": str(uuid.uuid4()),
        "from": "+13122010094",
        "to": "+13122123456",
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "custom_parameters": params,
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    }
    await ws.send_str(
        json.dumps(
            {"event": "start", "sequence_number": str(seq), "start": start, "stream_id": stream_id}
        )
    )
    messages = []
    for n, i in enumerate(range(0, len(inbound), 160)):
        for track, audio in (("inbound", inbound), ("outbound", outbound)):
            seq += 1
            media = {
                "track": track,
                "chunk": str(n + 1),
                "timestamp": str(n * 20),
                "payload": base64.b64encode(audio[i : i + 160]).decode(),
            }
            doc = {"event": "media", "sequence_number": str(seq), "media": media}
            messages.append((n, track, json.dumps({**doc, "stream_id": stream_id})))
    if swap is not None:
        a = next(k for k, m in enumerate(messages) if m[:2] == (swap, "inbound"))
        b = next(k for k, m in enumerate(messages) if m[:2] == (swap + 1, "inbound"))
        messages[a], messages[b] = messages[b], messages[a]
    for *_, text in messages:
        await ws.send_str(text)
    stop = {"user_id": start["user_id"], "call_control_id": control}
    await ws.send_str(
        json.dumps(
            {"event": "stop", "sequence_number": str(seq + 1), "stop": stop, "stream_id": stream_id}
        )
    )
    reply = await ws.receive(timeout=5)
    await ws.close()
    return reply


def test_telnyx_stream_is_two_mulaw_channels_bit_exact(store: Store, token_file: Path) -> None:
    inbound, outbound = mulaw(4000, 21), mulaw(4000, 22)

    async def go() -> None:
        async with serving(store, token_file) as s:
            await s.decide("telnyx-call-1")
            reply = await telnyx_call(s, {"call_ref": "telnyx-call-1"}, inbound, outbound)
            assert reply.type == aiohttp.WSMsgType.CLOSE and reply.data == 1000

    asyncio.run(go())
    row, recorded = recordings(store)["telnyx-call-1"]
    assert row.audio_format.startswith("mulaw") and not row.truncated
    assert recorded[0::2] == inbound and recorded[1::2] == outbound


def test_telnyx_late_chunk_is_dropped_not_fatal(store: Store, token_file: Path) -> None:
    inbound, outbound = mulaw(1600, 23), mulaw(1600, 24)

    async def go() -> None:
        async with serving(store, token_file) as s:
            await s.decide("telnyx-late")
            await telnyx_call(s, {"call_ref": "telnyx-late"}, inbound, outbound, swap=4)
            assert s.server.metrics.packets_lost.value("streams") == 1

    asyncio.run(go())
    row, recorded = recordings(store)["telnyx-late"]
    assert not row.truncated
    expected = inbound[: 4 * 160] + b"\xff" * 160 + inbound[5 * 160 :]
    assert recorded[0::2] == expected and recorded[1::2] == outbound


def test_telnyx_reader_names_and_refusals() -> None:
    reader = MediaStreamReader(flavor="telnyx")
    start = {
        "event": "start",
        "sequence_number": "1",
        "stream_id": "S1",
        "start": {
            "call_control_id": "v3:abc",
            "custom_parameters": {"tracks": "inbound"},
            "media_format": {"encoding": "PCMA", "sample_rate": 8000, "channels": 1},
        },
    }
    started = reader.feed(json.dumps(start))
    assert isinstance(started, StreamStarted)
    assert (started.call_sid, started.tracks, started.encoding) == ("v3:abc", ("inbound",), "alaw")
    media = {"track": "outbound", "chunk": "1", "timestamp": "0", "payload": "AAAA"}
    with pytest.raises(InvalidMediaStream, match="outbound"):
        reader.feed(json.dumps({"event": "media", "sequence_number": "2", "media": media}))
    bad = MediaStreamReader(flavor="telnyx")
    start["start"]["media_format"] = {"encoding": "OPUS", "sample_rate": 16000}  # type: ignore[index]
    with pytest.raises(InvalidMediaStream, match="PCMU"):
        bad.feed(json.dumps(start))


# -- TLS ----------------------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt, pem = folder / "stream.crt", folder / "stream.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def test_streams_over_tls(store: Store, token_file: Path, tmp_path: Path) -> None:
    crt, pem = self_signed(tmp_path)
    trusting = ssl.create_default_context(cafile=str(crt))
    inbound, outbound = mulaw(1600, 31), mulaw(1600, 32)
    audio = pcm(0.5, 33)

    async def go() -> None:
        async with serving(store, token_file, client_ssl=trusting, tls_cert=crt, tls_key=pem) as s:
            assert s.ws.startswith("https://")
            await s.decide("tls-twilio")
            await s.decide("tls-fork")
            await twilio_call(s, {"call_ref": "tls-twilio", "token": TOKEN}, inbound, outbound)
            ws = await s.session.ws_connect(
                f"{s.ws}/v1/streams/fork", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            await ws.send_str(json.dumps({"call_ref": "tls-fork"}))
            for i in range(0, len(audio), 320):
                await ws.send_bytes(audio[i : i + 320])
            await ws.close()
            # A client that does not trust the certificate is not let in.
            async with aiohttp.ClientSession() as untrusting:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await untrusting.ws_connect(f"{s.ws}/v1/streams/fork?token={TOKEN}")
            await s.settled(2)

    asyncio.run(go())
    found = recordings(store)
    assert found["tls-twilio"][1][0::2] == inbound and found["tls-fork"][1] == audio


def test_audiosocket_is_plain_tcp_and_needs_allow_off_loopback() -> None:
    with pytest.raises(InvalidArgument, match="allow"):
        AudioSocketConfig(Listen("0.0.0.0", 9019))
    config = AudioSocketConfig(Listen("0.0.0.0", 9019), allow=("10.1.2.3/32",))
    assert config.allows("10.1.2.3") and not config.allows("10.1.2.4")
    assert not config.allows("127.0.0.1")  # once allow is given, only what it lists
    assert AudioSocketConfig(Listen("127.0.0.1", 9019)).allows("::1")


def test_audiosocket_idle_connection_is_sealed_truncated(store: Store, token_file: Path) -> None:
    call = uuid.uuid4()

    async def go() -> None:
        async with serving(store, token_file, idle_timeout=0.3) as s:
            await s.decide(str(call))
            reader, writer = await asyncio.open_connection(*s.audiosocket)
            writer.write(frame(0x01, call.bytes) + frame(0x10, b"\2\0" * 160))
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # the server gave up
            writer.close()
            await writer.wait_closed()
            await s.settled(1)

    asyncio.run(go())
    row, recorded = recordings(store)[str(call)]
    assert recorded == b"\2\0" * 160 and row.truncated


# -- memory: a few hundred streams at once, twice -----------------------------------------------


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc), the server's: it runs in this process."""
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_few_hundred_streams_twice_stay_flat_in_memory(store: Store, token_file: Path) -> None:
    """Two rounds of 150 AudioSocket and 150 Twilio streams at once (2 s of audio each, sent
    as fast as the server takes it): resident memory after the second round is not above
    the first by more than a generous bound, and every recording exports bit-exact."""
    rounds: list[int] = []
    sent: dict[str, bytes] = {}

    async def one_round(s: Running, n: int) -> None:
        calls = [uuid.uuid4() for _ in range(150)]
        refs = [f"mem-{n}-{i}" for i in range(150)]
        await asyncio.gather(*(s.decide(str(c)) for c in calls), *(s.decide(r) for r in refs))
        audio = {str(c): pcm(2.0, i + n) for i, c in enumerate(calls)}
        tracks = {r: (mulaw(16000, i + n), mulaw(16000, i + n + 1)) for i, r in enumerate(refs)}
        await asyncio.gather(
            *(audiosocket_call(s.audiosocket, c, audio[str(c)]) for c in calls),
            *(twilio_call(s, {"call_ref": r, "token": TOKEN}, *tracks[r]) for r in refs),
        )
        await s.settled(300 * n, patience=120)
        gc.collect()
        rounds.append(rss_bytes())
        sent.update(audio)
        sent.update({r: bytes(b for pair in zip(*tracks[r], strict=True) for b in pair)
                     for r in refs})  # fmt: skip

    async def go() -> None:
        async with serving(store, token_file) as s:
            await one_round(s, 1)
            await one_round(s, 2)

    asyncio.run(go())
    first, second = rounds
    assert second - first < 30 * 2**20, f"RSS grew by {(second - first) / 2**20:.1f} MiB"
    found = recordings(store)
    assert len(found) == 600
    assert {ref: audio for ref, (_, audio) in found.items()} == sent


def test_media_parsers_doctests() -> None:
    import doctest

    import sampledrec.ingest.audiosocket
    import sampledrec.ingest.mediastreams
    import sampledrec.ingest.tracks

    for module in (
        sampledrec.ingest.audiosocket,
        sampledrec.ingest.mediastreams,
        sampledrec.ingest.tracks,
    ):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
