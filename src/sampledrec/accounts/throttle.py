"""Growing delays after failed sign-ins, per account and per address (no CAPTCHA).

Each failure counts against the account tried and the address it came from. The first
``free`` failures cost nothing; after that, no further attempt for that account (or from that
address) is even checked until a delay has passed: ``base`` seconds, doubling with each
failure, at most ``cap``. A success clears the account's count and the address's. The counts
live in the server's memory (a restart forgets them; the connection log does not).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..errors import InvalidArgument

__all__ = ["Throttle"]


@dataclass
class _Count:
    failures: int = 0
    last_at: float = 0.0


class Throttle:
    """Failed sign-ins per key (``user:NAME``, ``addr:PSEUDONYM``) and the delay they impose.

    >>> t = Throttle(free=1, base=2.0)
    >>> t.failed(["user:a"], now=100.0); t.wait(["user:a"], now=100.0)
    0.0
    >>> t.failed(["user:a"], now=100.0); t.wait(["user:a"], now=101.0)
    1.0
    """

    def __init__(self, *, free: int = 3, base: float = 1.0, cap: float = 900.0) -> None:
        if free < 0 or base <= 0 or cap < base:
            raise InvalidArgument(
                f"free={free}, base={base}, cap={cap}: need free >= 0 and 0 < base <= cap"
            )
        self.free, self.base, self.cap = free, base, cap
        self._counts: dict[str, _Count] = {}
        self._lock = threading.Lock()

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row."""
        if failures <= self.free:
            return 0.0
        return float(min(self.cap, self.base * 2 ** min(failures - self.free - 1, 30)))

    def wait(self, keys: list[str], *, now: float) -> float:
        """Seconds before an attempt under ``keys`` may be checked (0: now)."""
        with self._lock:
            waits = [
                c.last_at + self.delay(c.failures) - now
                for c in (self._counts.get(k) for k in keys)
                if c is not None
            ]
        return max([0.0, *waits])

    def failures(self, key: str) -> int:
        with self._lock:
            count = self._counts.get(key)
            return count.failures if count else 0

    def failed(self, keys: list[str], *, now: float) -> None:
        with self._lock:
            for key in keys:
                count = self._counts.setdefault(key, _Count())
                count.failures += 1
                count.last_at = now

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._counts.pop(key, None)
