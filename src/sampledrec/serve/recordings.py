"""The recordings that the server's front doors have open, so that another door can act on them.

A front door that records a call (the SIPREC door, the media-stream doors) registers it here
under the call's reference when it opens the recording, and closes it here when it seals it.
Another door can then pause or resume it: ``POST /v1/calls/{ref}/pause`` on the HTTP door
(a payment IVR about to read a card number), a DTMF sequence, a SIPREC re-INVITE. The registry
only finds the recording and calls its hooks; what pausing means (silence or a marker tone in
the recording, packets dropped) is the recording door's business.

A reference is the call's reference as decided: text and bytes are different references
(``"c1"`` is not ``b"c1"``), as everywhere in sampledrec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import InvalidArgument, NoOpenRecording

__all__ = ["OpenRecording", "OpenRecordings", "PauseState"]


@runtime_checkable
class OpenRecording(Protocol):
    """What a recording door registers for each call it is recording: its pause hooks.

    Both hooks run on the server's event loop and must not block it; each returns whether it
    changed anything (pausing a paused recording is not an error: it returns False).
    ``by`` says who asked (``"http"``, ``"dtmf"``, ``"reinvite"``), for the door's own log.
    """

    @property
    def paused(self) -> bool:
        """Whether the recording is paused now."""
        ...

    async def pause(self, *, by: str) -> bool:
        """Stop keeping audio (a masked span starts); True if it was recording."""
        ...

    async def resume(self, *, by: str) -> bool:
        """Keep audio again (the masked span ends); True if it was paused."""
        ...


@dataclass(frozen=True)
class PauseState:
    """The answer to a pause or resume: the call, whether it is paused now, and whether this
    request changed that."""

    call_ref: str | bytes
    paused: bool
    changed: bool
    door: str

    def to_json(self) -> dict[str, object]:
        ref = self.call_ref
        return {
            "call_ref": ref if isinstance(ref, str) else None,
            "call_ref_hex": ref.hex() if isinstance(ref, bytes) else None,
            "paused": self.paused,
            "changed": self.changed,
            "door": self.door,
        }


class OpenRecordings:
    """The registry: call reference -> the door that records it and its hooks.

    ``on_change`` (optional) is called after each open and close, for metrics.

    >>> import asyncio
    >>> class Fake:
    ...     paused = False
    ...     async def pause(self, *, by: str) -> bool:
    ...         was, self.paused = self.paused, True
    ...         return not was
    ...     async def resume(self, *, by: str) -> bool:
    ...         was, self.paused = self.paused, False
    ...         return was
    >>> registry = OpenRecordings()
    >>> registry.open("call-1", Fake(), door="test")
    >>> asyncio.run(registry.pause("call-1", by="http")).paused
    True
    >>> registry.close("call-1")
    >>> len(registry)
    0
    """

    def __init__(self, *, on_change: Callable[[], None] | None = None) -> None:
        self._open: dict[str | bytes, tuple[str, OpenRecording]] = {}
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, call_ref: object) -> bool:
        return call_ref in self._open

    def __iter__(self) -> Iterator[str | bytes]:
        return iter(list(self._open))

    def open(self, call_ref: str | bytes, recording: OpenRecording, *, door: str) -> None:
        """Register ``recording``, opened by ``door`` for the call ``call_ref``.

        One recording per call: a door that records both legs of a call as two streams makes
        them two channels of one recording and registers it once."""
        if not isinstance(recording, OpenRecording):
            raise InvalidArgument(
                f"recording={recording!r} has no paused/pause/resume; register an object that "
                "implements sampledrec.serve.OpenRecording"
            )
        if call_ref in self._open:
            raise InvalidArgument(
                f"a recording of this call is already open (by the {self._open[call_ref][0]} "
                "door); register a call's recording once, and close it before opening another"
            )
        self._open[call_ref] = (door, recording)
        if self._on_change is not None:
            self._on_change()

    def close(self, call_ref: str | bytes) -> None:
        """Forget the call's recording (sealed, or abandoned); nothing if none is open."""
        if self._open.pop(call_ref, None) is not None and self._on_change is not None:
            self._on_change()

    def _find(self, call_ref: str | bytes) -> tuple[str, OpenRecording]:
        found = self._open.get(call_ref)
        if found is None:
            raise NoOpenRecording("no open recording for this call")
        return found

    async def pause(self, call_ref: str | bytes, *, by: str) -> PauseState:
        """Pause the call's recording; :class:`~sampledrec.errors.NoOpenRecording` if none."""
        door, recording = self._find(call_ref)
        changed = await recording.pause(by=by)
        return PauseState(call_ref, recording.paused, changed, door)

    async def resume(self, call_ref: str | bytes, *, by: str) -> PauseState:
        """Resume the call's recording; :class:`~sampledrec.errors.NoOpenRecording` if none."""
        door, recording = self._find(call_ref)
        changed = await recording.resume(by=by)
        return PauseState(call_ref, recording.paused, changed, door)
