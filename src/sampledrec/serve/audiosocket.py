"""The AudioSocket door: Asterisk's ``AudioSocket(uuid,host:port)`` streams a call here over TCP.

The dialplan decides first (``CURL()`` to ``POST /v1/decisions`` with ``call_ref`` the UUID in
its canonical text form, lower case with hyphens), then connects only a selected call. Each
connection starts with the UUID (:mod:`sampledrec.ingest.audiosocket`): the door looks up
that call's logged positive decision (:func:`.media.open_stream`) and refuses (closes) a call
not selected or never decided, which is logged. Audio is recorded as 16-bit PCM at the rate of
its message type (8 kHz for 0x10).

``legs`` (docs/decisions/0023-media-streams.md): with ``legs = 1`` (the default) one
connection is one mono recording of what Asterisk sends; with ``legs = 2`` the first two
connections with the same UUID are the two channels of one stereo recording (channel 1 the
first to connect, channel 2 the second, placed where the first stood when it joined); a
recording whose second leg did not come within ``pair_window`` seconds keeps it silent.

A hang-up message (0x00) ends a leg; a connection closed without one, or cut by an error
message, a malformed or oversized message, or the server stopping, ends it **truncated**. The
recording is sealed when every leg has ended. AudioSocket has no authentication: the door
accepts connections only from the networks in ``allow`` (loopback by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import InvalidArgument, InvalidMediaStream
from ..ingest.audiosocket import (
    MAX_PAYLOAD,
    AudioSocketAudio,
    AudioSocketError,
    AudioSocketHangup,
    AudioSocketReader,
    AudioSocketUuid,
)
from ..vault.audio import AudioFormat
from ..vault.recorder import Vault
from .doors import Door, DoorKind, Listen, Ready, Services, check_section
from .events import event
from .media import StreamRecording, acquire_vault, open_stream, refuse, release_vault

__all__ = ["AUDIOSOCKET", "AudioSocketConfig", "audiosocket_door"]

_DOOR: Final = "audiosocket"
_KEYS: Final = ("listen", "legs", "pair_window", "allow", "idle_timeout", "max_payload")
_READ: Final = 65536


@dataclass(frozen=True)
class AudioSocketConfig:
    """The ``[audiosocket]`` section: where to listen, how many legs make a call, who may
    connect, and how long a silent connection is kept."""

    listen: Listen
    legs: int = 1
    pair_window: float = 2.0
    allow: tuple[str, ...] = ()
    idle_timeout: float = 10.0
    max_payload: int = MAX_PAYLOAD

    def __post_init__(self) -> None:
        if self.legs not in (1, 2):
            raise InvalidArgument(f"[audiosocket] legs = {self.legs}: write 1 or 2")
        if not 0 < self.pair_window <= 60:
            raise InvalidArgument("[audiosocket] pair_window must be seconds in (0, 60]")
        if not 0 < self.idle_timeout <= 3600:
            raise InvalidArgument("[audiosocket] idle_timeout must be seconds in (0, 3600]")
        if not 320 <= self.max_payload <= 65535:
            raise InvalidArgument("[audiosocket] max_payload must be from 320 to 65535 bytes")
        try:
            [ipaddress.ip_network(n, strict=False) for n in self.allow]
        except ValueError as exc:
            raise InvalidArgument(
                f'[audiosocket] allow: {exc}; list networks such as "10.0.0.0/8"'
            ) from None
        if not self.allow and not self.listen.loopback:
            raise InvalidArgument(
                f"[audiosocket] listens on {self.listen}, which is not a loopback address, "
                'but AudioSocket has no authentication: list the PBXs in allow = ["10.1.2.3/32"]'
            )

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if not self.allow:
            return address.is_loopback
        return any(address in ipaddress.ip_network(n, strict=False) for n in self.allow)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], base: Path) -> AudioSocketConfig:
        check_section("audiosocket", section, _KEYS)
        allow = section.get("allow", [])
        if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
            raise InvalidArgument('[audiosocket] allow must be a list such as ["10.0.0.0/8"]')

        def number(key: str, default: float) -> float:
            value = section.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(f"[audiosocket] {key} must be a number")
            return value

        return cls(
            Listen.parse(section["listen"], "[audiosocket] listen"),
            legs=int(number("legs", 1)),
            pair_window=float(number("pair_window", 2.0)),
            allow=tuple(allow),
            idle_timeout=float(number("idle_timeout", 10.0)),
            max_payload=int(number("max_payload", MAX_PAYLOAD)),
        )


class _Call:
    """The recording of one call and its legs."""

    def __init__(self, recording: StreamRecording, legs: int) -> None:
        self.recording = recording
        self.legs = legs
        self.joined = 1
        self.open_legs = 1
        self.truncated = False
        self.paired = asyncio.Event()
        if legs == 1:
            self.paired.set()


class _Door:
    def __init__(self, config: AudioSocketConfig, services: Services, vault: Vault) -> None:
        self.config = config
        self.services = services
        self.vault = vault
        self.calls: dict[str, _Call] = {}
        self.opening: dict[str, asyncio.Future[_Call | None]] = {}
        self.connections: dict[asyncio.Task[None], tuple[asyncio.StreamReader, Any]] = {}
        # When each connection last received bytes (loop time), for the idle sweep.
        self.heard: dict[asyncio.StreamReader, float] = {}

    def end(self, task: asyncio.Task[None]) -> None:
        """End a connection's stream where it stands: what it has read is recorded, then its
        recording is sealed truncated. Reading stops first: bytes arriving after the end of a
        stream reader's data would make the transport fail."""
        reader, transport = self.connections[task]
        if not transport.is_closing():
            transport.pause_reading()
        if not reader.at_eof():
            reader.feed_eof()

    async def sweep_idle(self) -> None:
        """End the connections silent for ``idle_timeout`` (their stream reads its end).

        One task for the door instead of a timeout around each read: a timer per 20 ms
        frame cost more than parsing the frame."""
        loop = asyncio.get_running_loop()
        timeout = self.config.idle_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = loop.time()
            idle = {r for r, heard in self.heard.items() if now - heard > timeout}
            for task, (reader, _) in list(self.connections.items()):
                if reader in idle:
                    del self.heard[reader]
                    self.end(task)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = (reader, writer.transport)
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else ""
        try:
            if not self.config.allows(host):
                self.services.metrics.recordings_refused.inc(_DOOR, "unauthorized")
                event("stream_refused", level=logging.WARNING, door=_DOOR, reason="unauthorized")
                return
            await self._serve(reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        parser = AudioSocketReader(max_payload=self.config.max_payload)
        call: _Call | None = None
        channel = 0
        ref: str | None = None
        ended_cleanly = False
        heard = self.heard
        now = asyncio.get_running_loop().time
        heard[reader] = now()
        try:
            # The door feeds the end of the stream when stopping or idle (sweep_idle).
            while not ended_cleanly:
                data = await reader.read(_READ)
                if not data:
                    break
                heard[reader] = now()
                try:
                    messages = parser.feed(data)
                except InvalidMediaStream:
                    self.services.metrics.recordings_refused.inc(_DOOR, "invalid")
                    event("stream_invalid", level=logging.WARNING, door=_DOOR)
                    break
                for message in messages:
                    if isinstance(message, AudioSocketUuid):
                        ref = message.call_ref
                        if await self._check(ref) is False:
                            return
                    elif isinstance(message, AudioSocketAudio):
                        assert ref is not None
                        if call is None:
                            call, channel = await self._join(ref, message.sample_rate)
                            if call is None:
                                return
                        if call.recording.format.sample_rate != message.sample_rate:
                            event("stream_invalid", level=logging.WARNING, door=_DOOR)
                            break
                        await call.recording.put(channel, message.pcm16)
                    elif isinstance(message, AudioSocketHangup):
                        ended_cleanly = True
                        break
                    elif isinstance(message, AudioSocketError):
                        event("audiosocket_error", level=logging.WARNING, door=_DOOR)
                        break
                    # DTMF: nothing to record (pauses are asked over HTTP)
                else:
                    if parser.failed:
                        self.services.metrics.recordings_refused.inc(_DOOR, "invalid")
                        event("stream_invalid", level=logging.WARNING, door=_DOOR)
                        break
                    continue
                break
        finally:
            heard.pop(reader, None)
            if call is not None:
                await self._leave(ref or "", call, truncated=not ended_cleanly)

    async def _check(self, ref: str) -> bool:
        """Whether a call can be recorded at all, before audio: refused streams close at once
        (the UUID message comes before any audio)."""
        if ref in self.calls or ref in self.opening:
            return True
        decision = await asyncio.to_thread(self.services.sampler.recall, ref)
        if decision is None or not decision.record:
            await asyncio.to_thread(
                refuse,
                self.services,
                self.vault,
                ref,
                door=_DOOR,
                reason="not_decided" if decision is None else "not_selected",
                why="not decided in this epoch: the dialplan must ask POST /v1/decisions first"
                if decision is None
                else f"not selected ({decision.reason})",
            )
            return False
        return True

    async def _join(self, ref: str, rate: int) -> tuple[_Call | None, int]:
        legs = self.config.legs
        while True:
            known = self.calls.get(ref)
            if known is not None:
                if known.joined >= known.legs or known.recording.closed:
                    self.services.metrics.recordings_refused.inc(_DOOR, "already_open")
                    event("stream_refused", level=logging.WARNING, door=_DOOR, reason="legs")
                    return None, 0
                known.joined += 1
                known.open_legs += 1
                known.paired.set()
                # The second leg starts where the first stands now.
                known.recording.tracks.put(1, b"", at=known.recording.tracks.end(0))
                return known, known.joined - 1
            pending = self.opening.get(ref)
            if pending is None:
                break
            await asyncio.shield(pending)
        future: asyncio.Future[_Call | None] = asyncio.get_running_loop().create_future()
        self.opening[ref] = future
        try:
            recording = await open_stream(
                self.services,
                self.vault,
                ref,
                door=_DOOR,
                audio_format=AudioFormat("pcm16", rate, legs),
                tracks=legs,
            )
            call = None if recording is None else _Call(recording, legs)
            if call is not None:
                self.calls[ref] = call
            future.set_result(call)
        finally:
            del self.opening[ref]
            if not future.done():
                future.set_result(None)
        return call, 0

    async def _leave(self, ref: str, call: _Call, *, truncated: bool) -> None:
        call.open_legs -= 1
        call.truncated |= truncated
        if call.open_legs > 0:
            return
        if not call.paired.is_set() and not self.services.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.paired.wait(), self.config.pair_window)
            if call.open_legs > 0:
                return  # the second leg came: it seals
        if self.calls.get(ref) is call:
            del self.calls[ref]
        await call.recording.close(truncated=call.truncated)


def audiosocket_door(config: AudioSocketConfig) -> Door:
    """The AudioSocket door for ``config``."""

    async def run(services: Services, ready: Ready) -> None:
        vault = await asyncio.to_thread(acquire_vault, services)
        door = _Door(config, services, vault)
        sweeper: asyncio.Task[None] | None = None
        try:
            try:
                server = await asyncio.start_server(
                    door.connection, config.listen.host, config.listen.port, backlog=1024
                )
            except OSError as exc:
                raise InvalidArgument(
                    f"--audiosocket {config.listen}: cannot listen there ({exc.strerror})"
                ) from None
            host, port = server.sockets[0].getsockname()[:2]
            address = str(Listen(host, port))
            event("listening", door=_DOOR, address=address, legs=config.legs)
            ready(address)
            sweeper = asyncio.create_task(door.sweep_idle())
            async with server:
                await services.stopping.wait()
                server.close()
                # Each connection reads the end of its stream: its recording is sealed,
                # truncated (the call went on without us).
                for connection in list(door.connections):
                    door.end(connection)
                if door.connections:
                    _, late = await asyncio.wait(
                        set(door.connections), timeout=services.shutdown_grace
                    )
                    for task in late:
                        task.cancel()
                    await asyncio.gather(*late, return_exceptions=True)
        finally:
            if sweeper is not None:
                sweeper.cancel()
            await asyncio.to_thread(release_vault, services)

    return run


AUDIOSOCKET: Final = DoorKind[AudioSocketConfig](
    name=_DOOR,
    help="Asterisk AudioSocket streams of calls decided through the decision service",
    parse=AudioSocketConfig.from_section,
    door=audiosocket_door,
)
