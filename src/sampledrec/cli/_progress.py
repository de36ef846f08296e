"""A small progress bar on standard error, shown only when it is a terminal."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """``with Progress(total, "deciding") as bar: bar.advance(n)``; silent when not a TTY.
    ``advance`` may be called from several threads (the audit verifies and reads at once)."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._last = 0.0
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        return self

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
                self._last = now
                frac = min(1.0, self.done / self.total)
                width = 30
                filled = int(frac * width)
                bar = "#" * filled + "-" * (width - filled)
                self.stream.write(
                    f"\r{self.label} [{bar}] {frac:6.1%} {self.done:,}/{self.total:,} "
                    f"{now - self._start:5.1f}s"
                )
                self.stream.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
