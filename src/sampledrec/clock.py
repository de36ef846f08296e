"""Time, passed in: the :class:`Clock` protocol, the system clock, a fixed clock, ISO parsing.

Everything in sampledrec that depends on time takes a clock (or a ``now=``), so that expiry,
audits and tests can be replayed deterministically.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from .errors import InvalidTime

__all__ = ["SYSTEM_CLOCK", "Clock", "FixedClock", "SystemClock", "parse_time"]


@runtime_checkable
class Clock(Protocol):
    """Anything with a ``now()`` returning an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class FixedClock:
    """A clock that stays where it is put; ``advance()`` moves it forward.

    >>> clock = FixedClock("2026-11-22T09:00:00Z")
    >>> clock.advance(seconds=90).isoformat()
    '2026-11-22T09:01:30+00:00'
    """

    def __init__(self, at: datetime | str) -> None:
        self._now = parse_time(at) if isinstance(at, str) else _aware(at)

    def now(self) -> datetime:
        return self._now

    def set(self, at: datetime | str) -> None:
        self._now = parse_time(at) if isinstance(at, str) else _aware(at)

    def advance(self, **delta: float) -> datetime:
        """Move forward by ``timedelta(**delta)`` and return the new time."""
        step = timedelta(**delta)
        if step < timedelta(0):
            raise InvalidTime(f"advance({delta}) would move the clock backwards")
        self._now += step
        return self._now

    def __repr__(self) -> str:
        return f"FixedClock({self._now.isoformat()!r})"


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_time(text: str) -> datetime:
    """Parse ISO 8601; a time without an offset is UTC. ``Z`` is accepted.

    >>> parse_time("2026-11-22T10:00").isoformat()
    '2026-11-22T10:00:00+00:00'
    >>> parse_time("2026-11-22").isoformat()
    '2026-11-22T00:00:00+00:00'
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise InvalidTime(
            f"time={text!r} is not ISO 8601; write it like 2026-11-22T14:30:00Z "
            "(a time without an offset is read as UTC)"
        ) from None
    return _aware(moment)
