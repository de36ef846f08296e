"""What the media-stream doors share: record a call by reference to its logged decision.

In the AudioSocket, media-stream and fork protocols the telephony side decides first (the
dialplan or the webhook asks ``POST /v1/decisions``), then opens a stream only for a selected
call, naming it. The door never decides: :func:`open_stream` looks up the call's **logged,
positive** decision (:meth:`Sampler.recall <sampledrec.sampling.Sampler.recall>`: the current
epoch's first decision, no new draw, nothing logged), and opens a recording under it. A call
never decided, or not selected, or whose decision is not durable yet, is refused: a
``record_refused`` entry in the log (the vault writes it for a call not selected; this module
for the others), a count in ``sampledrec_recordings_refused_total``, and no byte on disk.

:class:`StreamRecording` is the open recording: the tracks of the call (:class:`~sampledrec.
ingest.tracks.Tracks`) interleaved into the channels of one recording, written in batches of
about a second (kept by the tracks until then), registered in the server's
:class:`~.recordings.OpenRecordings` (so that ``POST /v1/calls/{ref}/pause`` masks a card
payment), sealed by :meth:`StreamRecording.close`
(``truncated`` when the stream was cut).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Final

from ..errors import NotSelected, SampledrecError
from ..ingest.tracks import Tracks
from ..log.format import T_RECORD_REFUSED
from ..vault.audio import AudioFormat, silence
from ..vault.recorder import Recorder, Vault
from .doors import Services
from .events import event

__all__ = ["StreamRecording", "acquire_vault", "open_stream", "refuse", "release_vault"]

#: Milliseconds of audio gathered before a write to the recorder.
WRITE_EVERY_MS: Final = 1000
#: A track this far behind the others (ms) is padded with silence.
MAX_LAG_MS: Final = 2000


# One vault per server for the media doors (each vault opens a catalog connection; two doors
# creating the store's catalog at once would race): id(services) -> (vault, users).
_VAULTS: dict[int, tuple[Vault, int]] = {}
_VAULTS_LOCK: Final = threading.Lock()


def acquire_vault(services: Services) -> Vault:
    """The server's vault for the media doors (blocking: call in a thread)."""
    with _VAULTS_LOCK:
        vault, users = _VAULTS.get(id(services)) or (None, 0)
        if vault is None:
            vault = Vault(services.store, services.log, clock=services.sampler.clock)
        _VAULTS[id(services)] = (vault, users + 1)
        return vault


def release_vault(services: Services) -> None:
    """A door is done with the vault; the last one closes it (blocking)."""
    with _VAULTS_LOCK:
        vault, users = _VAULTS.pop(id(services))
        if users > 1:
            _VAULTS[id(services)] = (vault, users - 1)
            return
    vault.close()


def refuse(
    services: Services, vault: Vault, call_ref: str | bytes, *, door: str, reason: str, why: str
) -> None:
    """Log a refused recording attempt (``record_refused``) and count it."""
    services.log.append(
        T_RECORD_REFUSED,
        {
            "reason": f"{why} (a {door} stream)",
            "call_ref": call_ref,
            "principal": vault.acting(None, "record").name,
        },
    )
    services.metrics.recordings_refused.inc(door, reason)
    event("stream_refused", level=logging.WARNING, door=door, reason=reason)


class StreamRecording:
    """One call's recording from a media stream (module docstring); an
    :class:`~.recordings.OpenRecording` for pause and resume."""

    def __init__(
        self,
        services: Services,
        recorder: Recorder,
        call_ref: str | bytes,
        *,
        door: str,
        tracks: Tracks,
    ) -> None:
        self._services = services
        self._recorder = recorder
        self.call_ref = call_ref
        self.door = door
        self.tracks = tracks
        self._write_frames = recorder.format.sample_rate * WRITE_EVERY_MS // 1000
        self._paused = False
        self._gaps = 0
        self.closed = False

    @property
    def format(self) -> AudioFormat:
        return self._recorder.format

    @property
    def recording_id(self) -> str:
        return self._recorder.recording_id

    @property
    def paused(self) -> bool:
        return self._paused

    async def pause(self, *, by: str) -> bool:
        was, self._paused = self._paused, True
        if not was:
            await self._write(self.tracks.take())  # what came before the pause is kept
            self._recorder.pause()
        return not was

    async def resume(self, *, by: str) -> bool:
        was, self._paused = self._paused, False
        if was:
            await self._write(self.tracks.take())  # what came during the pause is masked
            self._recorder.resume()
        return was

    async def put(self, channel: int, data: bytes, *, at: int | None = None) -> None:
        """Add a track's audio (at sample ``at``, or after its end); writes once about a
        second of every track is there (the tracks keep it until then: one interleaving and
        one encrypted chunk per second, not per 20 ms chunk)."""
        ready = self.add(channel, data, at=at)
        if ready:
            await self.write(ready)

    def add(self, channel: int, data: bytes, *, at: int | None = None) -> bytes:
        """:meth:`put` without the write: the interleaved frames now due (mostly none), for
        the caller to :meth:`write`. A door reading a message every 10 ms per call awaits
        only when there is something to write."""
        if self.closed:
            return b""
        tracks = self.tracks
        tracks.put(channel, data, at=at)
        if tracks.gaps != self._gaps:
            self._services.metrics.packets_lost.inc(self.door, by=tracks.gaps - self._gaps)
            self._gaps = tracks.gaps
        return tracks.take(at_least=self._write_frames)

    async def write(self, data: bytes) -> None:
        """Write interleaved frames that :meth:`add` handed out."""
        if not self.closed:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        recorder = self._recorder
        if recorder.on_disk:
            recorder.write(data)  # encrypts and writes a chunk: quick, no fsync
        else:
            await asyncio.to_thread(recorder.write, data)  # may create the file

    async def close(self, *, truncated: bool) -> None:
        """Seal the recording (once); ``truncated`` when the stream was cut short."""
        if self.closed:
            return
        self.closed = True
        self._services.recordings.close(self.call_ref)
        try:
            await self._write(self.tracks.finish())
            await asyncio.to_thread(self._recorder.close, truncated=truncated)
        except SampledrecError as exc:
            event("recording_failed", level=logging.ERROR, door=self.door, exc=exc)
            raise
        event(
            "recording_sealed",
            door=self.door,
            truncated=truncated,
            gaps=self.tracks.gaps,
            gap_ms=self.tracks.gap_samples * 1000 // self.format.sample_rate,
        )


async def open_stream(
    services: Services,
    vault: Vault,
    call_ref: str | bytes,
    *,
    door: str,
    audio_format: AudioFormat,
    tracks: int,
    tolerance_ms: int = 10,
) -> StreamRecording | None:
    """Open the recording of a stream for ``call_ref`` under its logged positive decision, or
    refuse (logged, counted) and return None (module docstring). ``tracks`` become the
    channels of ``audio_format`` (its ``channels`` is ``tracks`` times each track's own)."""
    decision = await asyncio.to_thread(services.sampler.recall, call_ref)
    if decision is None:
        await asyncio.to_thread(
            refuse,
            services,
            vault,
            call_ref,
            door=door,
            reason="not_decided",
            why="not decided in this epoch: the dialplan must ask POST /v1/decisions first",
        )
        return None
    if decision.record and decision.log_ticket is None:
        await asyncio.to_thread(
            refuse,
            services,
            vault,
            call_ref,
            door=door,
            reason="not_durable",
            why="decided by another process, its log entry not yet known durable",
        )
        return None
    if call_ref in services.recordings:
        await asyncio.to_thread(
            refuse,
            services,
            vault,
            call_ref,
            door=door,
            reason="already_open",
            why="a recording of this call is already open",
        )
        return None
    try:
        recorder = await asyncio.to_thread(vault.record, decision, audio_format=audio_format)
    except NotSelected:  # the vault logged it (record_refused)
        services.metrics.recordings_refused.inc(door, "not_selected")
        event("stream_refused", level=logging.INFO, door=door, reason="not_selected")
        return None
    if call_ref in services.recordings:  # opened meanwhile by another stream of the call
        await asyncio.to_thread(recorder.abort, "a second stream of a call already recorded")
        services.metrics.recordings_refused.inc(door, "already_open")
        return None
    per_track = audio_format.channels // tracks
    width = audio_format.bytes_per_frame // audio_format.channels * per_track
    rate = audio_format.sample_rate
    recording = StreamRecording(
        services,
        recorder,
        call_ref,
        door=door,
        tracks=Tracks(
            tracks,
            width=width,
            silence=silence(AudioFormat(audio_format.encoding, rate, per_track), 1000)[:width]
            or b"\x00" * width,
            tolerance=rate * tolerance_ms // 1000,
            max_lag=rate * MAX_LAG_MS // 1000,
        ),
    )
    services.recordings.open(call_ref, recording, door=door)
    services.metrics.calls_recorded.inc(door)
    event("recording_opened", door=door, format=audio_format.to_text())
    return recording
