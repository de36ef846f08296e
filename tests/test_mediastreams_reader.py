"""The media-stream reader's two paths for Twilio ``media`` messages agree.

A message spelled exactly as Twilio documents it is read by a regular expression, every other
one by the JSON decoder (``sampledrec.ingest.mediastreams``). These tests feed the same
sequences to a reader and to one whose fast path is turned off, and require the same events
and the same refusals, message for message.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampledrec.errors import InvalidMediaStream
from sampledrec.ingest import mediastreams
from sampledrec.ingest.mediastreams import MediaChunk, MediaStreamReader

START = json.dumps(
    {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "streamSid": "MZ1",
            "callSid": "CA1",
            "tracks": ["inbound", "outbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
)


def twilio_media(seq: str, track: str, chunk: str, timestamp: str, payload: str, sid: str) -> str:
    """A media message spelled as Twilio's documentation shows it (compact, this order)."""
    return (
        f'{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"{track}",'
        f'"chunk":"{chunk}","timestamp":"{timestamp}","payload":"{payload}"}},'
        f'"streamSid":"{sid}"}}'
    )


def outcomes(messages: list[str], *, fast: bool) -> list[Any]:
    """Each message's event, or the refusal's text; a refused stream reads no further."""
    pattern = mediastreams._TWILIO_MEDIA
    if not fast:
        mediastreams._TWILIO_MEDIA = lambda text: None  # type: ignore[assignment,misc]
    try:
        reader = MediaStreamReader()
        out: list[Any] = []
        for text in [START, *messages]:
            try:
                out.append(reader.feed(text))
            except InvalidMediaStream as exc:
                out.append(("refused", str(exc)))
                break
        return out
    finally:
        mediastreams._TWILIO_MEDIA = pattern  # type: ignore[misc]


numbers = st.one_of(
    st.integers(0, 10**15 - 1).map(str),
    st.sampled_from(["", "-1", "1.5", "1e3", "0x10", "١٢", "9" * 16, " 7"]),
)
payloads = st.one_of(
    st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="ABCDabcd0123+/=", max_size=12),
    st.sampled_from(["A===", "AB=C", "****", "QQ"]),
)
sids = st.one_of(
    st.just("MZ18ad3ab5a668481ce02b83e7395059f0"),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 8),
    tracks=st.lists(st.sampled_from(["inbound", "outbound"]), min_size=8, max_size=8),
    payload=payloads,
    sid=sids,
    changes=st.lists(
        st.tuples(st.integers(0, 7), st.sampled_from(["seq", "track", "chunk", "timestamp"]),
                  numbers | st.sampled_from(["both", "", "inbound"])),
        max_size=3,
    ),
)  # fmt: skip
def test_fast_path_reads_like_the_json_path(
    count: int,
    tracks: list[str],
    payload: str,
    sid: str,
    changes: list[tuple[int, str, str]],
) -> None:
    """A valid stream of ``count`` media messages, with a few fields then spelled otherwise."""
    fields: list[dict[str, str]] = []
    chunks = {"inbound": 0, "outbound": 0}
    for n in range(count):
        track = tracks[n]
        chunks[track] += 1
        fields.append({"seq": str(n + 2), "track": track, "chunk": str(chunks[track]),
                       "timestamp": str(20 * chunks[track] + n)})  # fmt: skip
    for n, name, value in changes:
        if n < count:
            fields[n][name] = value
    sid_text = json.dumps(sid)[1:-1]  # escaped as JSON would (some then take the JSON path)
    texts = [
        twilio_media(f["seq"], f["track"], f["chunk"], f["timestamp"], payload, sid_text)
        for f in fields
    ]
    fast = outcomes(texts, fast=True)
    assert fast == outcomes(texts, fast=False)


def test_the_documented_spelling_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A regression guard for the benchmark: Twilio's own spelling must not fall back to JSON."""
    text = twilio_media("2", "inbound", "1", "20", base64.b64encode(b"\xff" * 160).decode(), "MZ1")
    reader = MediaStreamReader()
    reader.feed(START)
    decoded: list[str] = []

    def loads(text: str, what: str) -> dict[str, Any]:
        decoded.append(text)
        return {}

    monkeypatch.setattr(mediastreams, "_loads", loads)
    assert reader.feed(text) == MediaChunk("inbound", 1, 20, b"\xff" * 160)
    assert decoded == []


def test_other_spellings_take_the_json_path() -> None:
    """Whitespace, another member order, numbers as JSON numbers: the same chunk."""
    payload = base64.b64encode(b"\x7f" * 160).decode()
    spelled = [
        json.dumps({"event": "media", "sequenceNumber": "2", "media": {
            "track": "outbound", "chunk": "1", "timestamp": "20", "payload": payload}}),
        json.dumps({"media": {"payload": payload, "timestamp": 20, "chunk": 1,
                              "track": "outbound"}, "event": "media", "sequenceNumber": 2}),
    ]  # fmt: skip
    for text in spelled:
        reader = MediaStreamReader()
        reader.feed(START)
        assert reader.feed(text) == MediaChunk("outbound", 1, 20, b"\x7f" * 160)


def test_stream_sockets_are_read_in_batches_with_this_aiohttp() -> None:
    """The media-stream door reads a stream's messages a tick at a time (serve/streams.py),
    which needs aiohttp's message queue; an aiohttp that lays it out otherwise still works,
    message by message, but this test then fails so that the change is seen."""
    import asyncio

    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from sampledrec.serve.streams import _Messages

    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        messages = _Messages(ws, request)
        seen["batched"] = messages.batched
        seen["texts"] = [m.data async for m in messages]
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", handler)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            async with session.ws_connect(server.make_url("/")) as ws:
                for n in range(30):
                    await ws.send_str(str(n))
                    if n % 7 == 0:
                        await asyncio.sleep(0.03)
            await asyncio.sleep(0.3)  # the handler reads the rest, then the close

    asyncio.run(main())
    assert seen["batched"] is True
    assert seen["texts"] == [str(n) for n in range(30)]
