"""The media-stream door: WebSocket streams of calls decided through the decision service.

Routes (its own address, ``--streams HOST:PORT``; WebSocket upgrades only):

``/v1/streams/twilio``
    Twilio Media Streams (and SignalWire's, the same messages): ``<Connect><Stream>`` or
    ``<Start><Stream>`` with ``<Parameter name="call_ref" value="..."/>`` naming the call as
    the decision service was asked (without it, the ``callSid``). ``inbound`` and
    ``outbound`` tracks are channels 1 and 2 (in the order ``start.tracks`` lists them) of one
    μ-law recording, kept byte for byte; a chunk whose timestamp leaves a gap is preceded by
    silence, counted in ``sampledrec_packets_lost_total``. ``stop`` seals the recording; a
    connection lost before it seals it truncated.
``/v1/streams/telnyx``
    Telnyx media streaming (``stream_url``, ``stream_track=both_tracks``): the same flow with
    Telnyx's field names (:mod:`sampledrec.ingest.mediastreams`); the call reference is the
    custom parameter ``call_ref``, else the ``call_control_id``. Telnyx does not guarantee the
    order of its messages: a chunk that comes again or late is dropped, its place silent.
``/v1/streams/fork``
    FreeSWITCH ``mod_audio_fork`` (``uuid_audio_fork``): a first text message of JSON metadata
    naming the call (``{"call_ref": "${uuid}"}``, with ``sample_rate`` and ``channels`` when they
    differ from the door's defaults), then binary 16-bit linear PCM. A normal close seals the
    recording; a lost connection seals it truncated.

The door never decides: a stream for a call never decided, or not selected, is refused
(closed with code 1008) and logged as a refused recording attempt (:mod:`.media`). Malformed,
out-of-order or oversized input closes the stream (1007, 1009) and seals what was recorded as
truncated.

Authentication: the token of ``token_file``, as ``Authorization: Bearer TOKEN``, as the
password of HTTP Basic authentication (``mod_audio_fork``'s ``MOD_AUDIO_BASIC_AUTH_*``), as
``?token=TOKEN`` in the URL, or, for Twilio (whose stream URL takes no query string and no
header), as a custom parameter ``token`` of the ``start`` message, checked before anything is
looked up or recorded. ``insecure_no_auth`` only on a loopback address. TLS with
``tls_cert`` and ``tls_key``.

Twilio signs the WebSocket upgrade request (``X-Twilio-Signature``: HMAC-SHA1 of the stream's
URL, keyed with the account's auth token). With ``twilio_auth_token_file``, the Twilio route
requires a valid signature, checked in constant time before the upgrade, and answers 403 (and
logs it) otherwise; the signature then stands for the token, which the TwiML no longer needs
to carry. The signed URL is ``twilio_stream_url`` (the ``<Stream url>`` exactly as the TwiML
writes it: set it behind a proxy that terminates TLS), else the URL of the request as received
(``wss://`` with TLS, the ``Host`` header, the path); an explicit default port (443) and its
absence are taken as the same URL (docs/decisions/0032-stream-signatures-and-telnyx.md).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from ..errors import InvalidArgument, InvalidMediaStream
from ..ingest.mediastreams import (
    MAX_MESSAGE,
    MediaChunk,
    MediaStreamReader,
    StreamStarted,
    StreamStopped,
    parse_fork_metadata,
    twilio_signature,
)
from ..vault.audio import AudioFormat
from ..vault.recorder import Vault
from .doors import (
    Door,
    DoorKind,
    Listen,
    Ready,
    Services,
    check_section,
    section_path,
    server_ssl,
)
from .events import event
from .http import read_token
from .media import StreamRecording, acquire_vault, open_stream, release_vault

__all__ = ["STREAMS", "StreamsConfig", "streams_door"]

_DOOR: Final = "streams"
_KEYS: Final = (
    "listen",
    "token_file",
    "insecure_no_auth",
    "tls_cert",
    "tls_key",
    "call_ref_parameter",
    "fork_sample_rate",
    "fork_channels",
    "max_frame_bytes",
    "twilio_auth_token_file",
    "twilio_stream_url",
)
_POLICY: Final = WSCloseCode.POLICY_VIOLATION  # 1008: refused (not selected, no token)


@dataclass(frozen=True)
class StreamsConfig:
    """The ``[streams]`` section (module docstring)."""

    listen: Listen
    token_file: Path | None = None
    insecure_no_auth: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    call_ref_parameter: str = "call_ref"
    fork_sample_rate: int = 8000
    fork_channels: int = 1
    max_frame_bytes: int = 64 * 1024
    twilio_auth_token_file: Path | None = None
    twilio_stream_url: str | None = None
    token: bytes | None = field(init=False, repr=False, compare=False, default=None)
    twilio_auth_token: bytes | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.token_file is None:
            if not self.insecure_no_auth:
                raise InvalidArgument(
                    "the streams door needs a token: give [streams] token_file (or "
                    "--token-file); insecure_no_auth only for tests on a loopback address"
                )
            if not self.listen.loopback:
                raise InvalidArgument(
                    f"insecure_no_auth is refused on {self.listen}: only on a loopback address"
                )
        elif self.insecure_no_auth:
            raise InvalidArgument("[streams] insecure_no_auth contradicts token_file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("[streams] give tls_cert and tls_key together (or neither)")
        if self.fork_sample_rate not in (8000, 16000):
            raise InvalidArgument("[streams] fork_sample_rate must be 8000 or 16000")
        if self.fork_channels not in (1, 2):
            raise InvalidArgument("[streams] fork_channels must be 1 or 2")
        if not 1024 <= self.max_frame_bytes <= 1 << 20:
            raise InvalidArgument("[streams] max_frame_bytes must be from 1024 to 1048576")
        if not self.call_ref_parameter:
            raise InvalidArgument("[streams] call_ref_parameter must name a parameter")
        if self.twilio_stream_url is not None:
            url = urlsplit(self.twilio_stream_url)
            if url.scheme not in ("ws", "wss") or not url.netloc or url.query:
                raise InvalidArgument(
                    f"[streams] twilio_stream_url = {self.twilio_stream_url!r}: write the "
                    "<Stream url> of the TwiML, such as wss://rec.example.com/v1/streams/twilio "
                    "(Twilio takes no query string)"
                )
            if self.twilio_auth_token_file is None:
                raise InvalidArgument(
                    "[streams] twilio_stream_url is the URL Twilio signs: give "
                    "twilio_auth_token_file too"
                )
        if self.token_file is not None:
            object.__setattr__(self, "token", read_token(self.token_file))
        if self.twilio_auth_token_file is not None:
            object.__setattr__(self, "twilio_auth_token", read_token(self.twilio_auth_token_file))

    @property
    def ssl(self) -> Any:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return server_ssl(self.tls_cert, self.tls_key, None)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], base: Path) -> StreamsConfig:
        check_section("streams", section, _KEYS)

        def path(key: str) -> Path | None:
            return section_path("streams", section, key, base)

        def whole(key: str, default: int) -> int:
            value = section.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"[streams] {key} must be a whole number")
            return value

        insecure = section.get("insecure_no_auth", False)
        if not isinstance(insecure, bool):
            raise InvalidArgument("[streams] insecure_no_auth must be true or false")
        parameter = section.get("call_ref_parameter", "call_ref")
        if not isinstance(parameter, str):
            raise InvalidArgument("[streams] call_ref_parameter must be text")
        stream_url = section.get("twilio_stream_url")
        if stream_url is not None and not isinstance(stream_url, str):
            raise InvalidArgument("[streams] twilio_stream_url must be text (a wss:// URL)")
        return cls(
            Listen.parse(section["listen"], "[streams] listen"),
            token_file=path("token_file"),
            insecure_no_auth=insecure,
            tls_cert=path("tls_cert"),
            tls_key=path("tls_key"),
            call_ref_parameter=parameter,
            fork_sample_rate=whole("fork_sample_rate", 8000),
            fork_channels=whole("fork_channels", 1),
            max_frame_bytes=whole("max_frame_bytes", 64 * 1024),
            twilio_auth_token_file=path("twilio_auth_token_file"),
            twilio_stream_url=stream_url,
        )


def _given_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return request.query.get("token")


def _same(given: str | None, token: bytes) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), token)


def _signed_urls(url: str) -> tuple[str, ...]:
    """The forms of ``url`` a signature may cover: as given, and with its scheme's default
    port written or left out (proxies and platforms differ on it)."""
    parts = urlsplit(url)
    default = {"wss": 443, "https": 443, "ws": 80, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if default is None or parts.port not in (None, default):
        return (url,)
    bare = urlunsplit(parts._replace(netloc=host))
    explicit = urlunsplit(parts._replace(netloc=f"{host}:{default}"))
    return (url, explicit if parts.port is None else bare)


def _twilio_signed(request: web.Request, config: StreamsConfig) -> bool:
    """Whether the upgrade request carries a valid ``X-Twilio-Signature`` (module docstring)."""
    key = config.twilio_auth_token
    assert key is not None
    given = request.headers.get("X-Twilio-Signature", "").encode("ascii", "replace")
    url = config.twilio_stream_url or (
        f"{'wss' if request.secure else 'ws'}://{request.host}{request.path_qs}"
    )
    valid = False
    for candidate in _signed_urls(url):  # every form compared: no early exit
        expected = twilio_signature(key, candidate).encode("ascii")
        valid |= hmac.compare_digest(given, expected)
    return valid and bool(given)


class _Streams:
    def __init__(self, config: StreamsConfig, services: Services, vault: Vault) -> None:
        self.config = config
        self.services = services
        self.vault = vault
        self.sockets: set[web.WebSocketResponse] = set()

    def _authorized(self, request: web.Request) -> bool:
        token = self.config.token
        return token is None or _same(_given_token(request), token)

    def _refused(self, reason: str) -> None:
        self.services.metrics.recordings_refused.inc(_DOOR, reason)
        event("stream_refused", level=logging.WARNING, door=_DOOR, reason=reason)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.config.max_frame_bytes, autoping=True)
        await ws.prepare(request)
        self.sockets.add(ws)
        return ws

    async def twilio(self, request: web.Request) -> web.StreamResponse:
        if self.config.twilio_auth_token is not None:
            if not _twilio_signed(request, self.config):
                self._refused("bad_signature")
                return web.json_response(
                    {"error": "X-Twilio-Signature is missing or does not sign this URL"},
                    status=403,
                )
            return await self._media_stream(request, "twilio", signed=True)
        return await self._media_stream(request, "twilio", signed=False)

    async def telnyx(self, request: web.Request) -> web.StreamResponse:
        return await self._media_stream(request, "telnyx", signed=False)

    async def _media_stream(
        self, request: web.Request, flavor: str, *, signed: bool
    ) -> web.StreamResponse:
        header_ok = signed or self._authorized(request)
        ws = await self._socket(request)
        reader = MediaStreamReader(flavor=flavor)
        recording: StreamRecording | None = None
        channels: dict[str, int] = {}  # track name: channel
        rate = 8000
        truncated = True
        try:
            async for message in _Messages(ws, request):
                if message.type != WSMsgType.TEXT:
                    raise InvalidMediaStream("a media stream sends JSON text messages")
                item = reader.feed(message.data)
                if type(item) is MediaChunk:
                    if recording is not None:
                        track, _, ms, audio = item
                        ready = recording.add(channels[track], audio, at=ms * rate // 1000)
                        if ready:
                            await recording.write(ready)
                elif isinstance(item, StreamStarted):
                    params = item.custom_parameters
                    token = self.config.token
                    if not header_ok and not (token and _same(params.get("token"), token)):
                        self._refused("unauthorized")
                        await ws.close(code=_POLICY, message=b"unauthorized")
                        break
                    ref = params.get(self.config.call_ref_parameter) or item.call_sid
                    channels = {track: n for n, track in enumerate(item.tracks)}
                    rate = item.sample_rate
                    recording = await open_stream(
                        self.services,
                        self.vault,
                        ref,
                        door=_DOOR,
                        audio_format=AudioFormat(item.encoding, item.sample_rate, len(channels)),
                        tracks=len(channels),
                    )
                    if recording is None:
                        await ws.close(code=_POLICY, message=b"not recorded")
                        break
                elif isinstance(item, StreamStopped):
                    truncated = False
                    await ws.close()
                    break
            if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
                self._refused("invalid")
        except InvalidMediaStream as exc:
            self._refused("invalid")
            await ws.close(code=WSCloseCode.INVALID_TEXT, message=str(exc)[:120].encode())
        finally:
            self.sockets.discard(ws)
            if recording is not None:
                await recording.close(truncated=truncated)
        return ws

    async def fork(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            self._refused("unauthorized")
            return web.json_response(
                {"error": "send the streams door's token (Bearer, Basic password or ?token=)"},
                status=401,
            )
        ws = await self._socket(request)
        recording: StreamRecording | None = None
        truncated = True
        frame = 2
        try:
            async for message in _Messages(ws, request):
                if recording is None:
                    if message.type != WSMsgType.TEXT:
                        raise InvalidMediaStream(
                            "a fork's first message is its metadata (JSON text)"
                        )
                    meta = parse_fork_metadata(
                        message.data,
                        sample_rate=self.config.fork_sample_rate,
                        channels=self.config.fork_channels,
                    )
                    frame = 2 * meta.channels
                    recording = await open_stream(
                        self.services,
                        self.vault,
                        meta.call_ref,
                        door=_DOOR,
                        audio_format=AudioFormat("pcm16", meta.sample_rate, meta.channels),
                        tracks=1,
                    )
                    if recording is None:
                        await ws.close(code=_POLICY, message=b"not recorded")
                        break
                elif message.type == WSMsgType.BINARY:
                    data = message.data
                    if len(data) % frame:
                        raise InvalidMediaStream(
                            f"a binary message of {len(data)} bytes: not whole frames of "
                            f"{frame} bytes"
                        )
                    await recording.put(0, data)
                elif message.type == WSMsgType.TEXT:
                    pass  # mod_audio_fork may send events as text; nothing to record
            code = ws.close_code
            if code == WSCloseCode.MESSAGE_TOO_BIG:
                self._refused("invalid")
            truncated = code not in (WSCloseCode.OK, WSCloseCode.GOING_AWAY) or (
                self.services.stopping.is_set()
            )
        except InvalidMediaStream as exc:
            self._refused("invalid")
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=str(exc)[:120].encode())
        finally:
            self.sockets.discard(ws)
            if recording is not None:
                await recording.close(truncated=truncated)
        return ws


_TICK: Final = 0.1  # seconds a stream's socket rests once every message read was handled
_ENDED: Final = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


class _Messages:
    """A WebSocket's messages, read in batches: ``async for message in _Messages(ws, request)``
    reads what ``async for message in ws`` does, but once every message received so far has
    been handled, the connection stops reading its socket for a tick, then reads all that came
    meanwhile at once.

    A stream sends a message every 20 ms per track; reading each as it arrives costs a socket
    read, a parse and a wake-up of the handler, more than handling the message. Resting a
    tick (100 ms) makes that one read, one parse and one wake-up for ten messages, as the
    SIPREC door's RTP pump does (0025). The socket's buffer holds far more than a tick
    (a second of a Twilio stream is 17 KB), and aiohttp's own flow control is kept: the pause
    goes through the connection's protocol (``pause_reading``/``resume_reading``), which does
    not resume a transport that aiohttp holds for its own buffer. Knowing that every message
    received was handled needs aiohttp's queue (``ws._reader._buffer``, public in its
    compiled reader as in its Python one); where an aiohttp lays it out otherwise, the
    connection reads each message as it comes (``batched`` is False; a test says which).
    """

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._receive = ws.receive
        queue = getattr(getattr(ws, "_reader", None), "_buffer", None)
        protocol = request.protocol
        self._queue: collections.deque[Any] | None = (
            queue
            if isinstance(queue, collections.deque)
            and callable(getattr(protocol, "pause_reading", None))
            and callable(getattr(protocol, "resume_reading", None))
            else None
        )
        self._protocol = protocol

    @property
    def batched(self) -> bool:
        return self._queue is not None

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> WSMessage:
        if self._queue is not None and not self._queue:
            protocol = self._protocol
            protocol.pause_reading()
            try:
                await asyncio.sleep(_TICK)
            finally:
                protocol.resume_reading()
        message = await self._receive()
        if message.type in _ENDED:
            raise StopAsyncIteration
        return message


def _app(config: StreamsConfig, services: Services, vault: Vault) -> tuple[web.Application, Any]:
    streams = _Streams(config, services, vault)
    app = web.Application(client_max_size=MAX_MESSAGE)
    app.router.add_get("/v1/streams/twilio", streams.twilio)
    app.router.add_get("/v1/streams/telnyx", streams.telnyx)
    app.router.add_get("/v1/streams/fork", streams.fork)
    return app, streams


def streams_door(config: StreamsConfig) -> Door:
    """The media-stream door for ``config``."""

    async def run(services: Services, ready: Ready) -> None:
        vault = await asyncio.to_thread(acquire_vault, services)
        app, streams = _app(config, services, vault)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=services.shutdown_grace
        )
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, config.listen.host, config.listen.port, ssl_context=config.ssl, backlog=1024
            )
            try:
                await site.start()
            except OSError as exc:
                raise InvalidArgument(
                    f"--streams {config.listen}: cannot listen there ({exc.strerror})"
                ) from None
            host, port = runner.addresses[0][:2]
            scheme = "wss" if config.tls_cert else "ws"
            address = f"{scheme}://{Listen(host, port)}"
            event("listening", door=_DOOR, address=address)
            ready(address)
            await services.stopping.wait()
            for ws in list(streams.sockets):  # the calls go on: what we have is truncated
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
        finally:
            await runner.cleanup()
            await asyncio.to_thread(release_vault, services)

    return run


STREAMS: Final = DoorKind[StreamsConfig](
    name=_DOOR,
    help="WebSocket media streams (Twilio, SignalWire, Telnyx; FreeSWITCH mod_audio_fork) of calls "
    "decided through the decision service",
    parse=StreamsConfig.from_section,
    door=streams_door,
)
