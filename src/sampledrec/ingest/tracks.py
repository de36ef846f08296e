"""The tracks of one call as the channels of one recording, sans I/O.

A media stream brings a call's audio as separate tracks (Twilio's ``inbound`` and
``outbound``, two AudioSocket connections, the legs of a fork), each as chunks that may say
where they belong (a timestamp) or not (they follow the previous one). :class:`Tracks` keeps
each track's samples until every track has them, then hands out interleaved frames: channel 1
is the first track, channel 2 the second. Samples stay bytes: μ-law is interleaved byte for
byte, 16-bit PCM two bytes at a time, never converted.

- A chunk placed after its track's end by more than ``tolerance`` samples leaves a gap: it is
  filled with silence and counted (:attr:`gap_samples`, :attr:`gaps`). A chunk placed a little
  early or late (timestamps jitter) follows its track's end: nothing is lost or doubled.
- A track more than ``max_lag`` samples behind the most advanced one is padded with silence
  to it (its source stalled, or never came): memory stays bounded by ``max_lag`` per track.
- :meth:`finish` pads every track to the longest and returns what is left.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument

__all__ = ["Tracks"]


class Tracks:
    """Interleaves ``channels`` tracks of ``width``-byte samples (module docstring).

    >>> t = Tracks(2, width=1, silence=b"\\xff", tolerance=0, max_lag=8000)
    >>> t.put(0, b"ab"), t.put(1, b"AB"), t.take()
    (0, 0, b'aAbB')
    >>> t.put(0, b"c", at=3), t.take(), t.finish()  # sample 2 of track 0 is missing
    (1, b'', b'\\xff\\xffc\\xff')
    >>> t.put(0, b"de"), t.put(1, b"DE"), t.take(at_least=3), t.ready(), t.take(at_least=2)
    (0, 0, b'', 2, b'dDeE')
    """

    def __init__(
        self,
        channels: int,
        *,
        width: int,
        silence: bytes,
        tolerance: int,
        max_lag: int,
    ) -> None:
        if not 1 <= channels <= 8:
            raise InvalidArgument(f"channels={channels} must be from 1 to 8")
        if not 1 <= width <= 8 or len(silence) != width:
            raise InvalidArgument(f"width={width} must be 1 to 8 bytes, silence one sample")
        if tolerance < 0 or max_lag < 1:
            raise InvalidArgument("tolerance must be >= 0 samples and max_lag >= 1 sample")
        self.channels = channels
        self._width = width
        self._silence = silence
        self._tolerance = tolerance
        self._max_lag = max_lag
        self._buffers = [bytearray() for _ in range(channels)]
        self._ends = [0] * channels  # each track's end, in samples from the stream's start
        self._taken = 0  # samples per track handed out
        #: Samples of silence put in gaps, over all tracks, and how many gaps.
        self.gap_samples = 0
        self.gaps = 0

    @property
    def buffered(self) -> int:
        """Bytes held, over all tracks."""
        return sum(len(b) for b in self._buffers)

    def end(self, channel: int) -> int:
        """Where ``channel``'s track ends, in samples from the start."""
        return self._ends[channel]

    def put(self, channel: int, data: bytes, *, at: int | None = None) -> int:
        """Add ``data`` (whole samples) to a track, at sample ``at`` or after its end; returns
        the samples of silence put before it (a gap)."""
        width = self._width
        if len(data) % width:
            raise InvalidArgument(f"{len(data)} bytes is not a whole number of samples")
        gap = 0
        end = self._ends[channel]
        if at is not None and at > end + self._tolerance:
            gap = at - end
            self._pad(channel, gap)
            self.gap_samples += gap
            self.gaps += 1
        self._buffers[channel] += data
        self._ends[channel] += len(data) // width
        return gap

    def _pad(self, channel: int, samples: int) -> None:
        self._buffers[channel] += self._silence * samples
        self._ends[channel] += samples

    def ready(self) -> int:
        """Frames that every track has and :meth:`take` would hand out now (before padding)."""
        return min(self._ends) - self._taken

    def take(self, *, at_least: int = 0) -> bytes:
        """The interleaved frames that every track has (after padding the laggards); nothing
        while fewer than ``at_least`` frames are ready, so that a caller writing in batches
        interleaves once per batch, not once per chunk."""
        ends = self._ends
        if self.channels > 1:
            front = max(ends)
            ahead = front - self._taken
            if ahead < at_least and ahead <= self._max_lag:
                return b""  # no batch yet, and no track lags by more than max_lag
            for c in range(self.channels):
                if front - ends[c] > self._max_lag:
                    self._pad(c, front - ends[c] - self._max_lag)
        n = min(ends) - self._taken
        return self._interleave(n) if n > 0 and n >= at_least else b""

    def finish(self) -> bytes:
        """Pad every track to the longest; everything left, interleaved."""
        front = max(self._ends)
        for c in range(self.channels):
            if self._ends[c] < front:
                self._pad(c, front - self._ends[c])
        n = front - self._taken
        return self._interleave(n) if n > 0 else b""

    def _interleave(self, n: int) -> bytes:
        width = self._width
        size = n * width
        self._taken += n
        if self.channels == 1:
            out = bytes(self._buffers[0][:size])
            del self._buffers[0][:size]
            return out
        frame = np.empty((n, self.channels, width), dtype=np.uint8)
        for c, buffer in enumerate(self._buffers):
            frame[:, c, :] = np.frombuffer(buffer, dtype=np.uint8, count=size).reshape(n, width)
            del buffer[:size]
        return frame.tobytes()
