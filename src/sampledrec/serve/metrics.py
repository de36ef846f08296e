"""The server's counters and gauges, and their Prometheus text exposition (``GET /metrics``).

Every front door counts into the one :class:`Metrics` of the process: calls decided, declined
and recorded, packets lost, and the HTTP requests it answered. A gauge is read when the page is
rendered (calls open from the registry of open recordings, the log's queue depth), so it is
never stale. Labels name front doors, routes and outcomes, never a call or a caller.

The text follows the Prometheus exposition format 0.0.4: ``# HELP`` and ``# TYPE`` lines, then
one sample per line; counters end in ``_total``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Final

__all__ = ["CONTENT_TYPE", "Metrics"]

#: The Content-Type of the exposition format this module writes.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the decision latency histogram's buckets.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

Labels = tuple[tuple[str, str], ...]


def _labels(names: Sequence[str], values: Sequence[str]) -> Labels:
    return tuple(zip(names, values, strict=True))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Family:
    def __init__(self, name: str, kind: str, help: str, labels: Sequence[str]) -> None:
        self.name, self.kind, self.help, self.label_names = name, kind, help, tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class _Counter(_Family):
    def __init__(self, name: str, help: str, labels: Sequence[str], lock: threading.Lock) -> None:
        super().__init__(name, "counter", help, labels)
        self._values: dict[Labels, float] = {}
        self._lock = lock

    def inc(self, *values: str, by: float = 1) -> None:
        key = _labels(self.label_names, values)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + by

    def value(self, *values: str) -> float:
        return self._values.get(_labels(self.label_names, values), 0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0)]
        return [f"{self.name}{_label_text(k)} {_number(v)}" for k, v in items]


class _Gauge(_Family):
    """A gauge read when the page is rendered: ``read()`` gives (label values, value) pairs."""

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        read: Callable[[], Iterable[tuple[Sequence[str], float]]],
    ) -> None:
        super().__init__(name, "gauge", help, labels)
        self.read = read

    def lines(self) -> list[str]:
        return [
            f"{self.name}{_label_text(_labels(self.label_names, v))} {_number(x)}"
            for v, x in self.read()
        ]


class _Histogram(_Family):
    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        bounds: Sequence[float],
        lock: threading.Lock,
    ) -> None:
        super().__init__(name, "histogram", help, labels)
        self.bounds = tuple(bounds)
        self._data: dict[Labels, tuple[list[int], float]] = {}  # bucket counts, sum
        self._lock = lock

    def observe(self, seconds: float, *values: str) -> None:
        key = _labels(self.label_names, values)
        with self._lock:
            counts, total = self._data.get(key) or ([0] * (len(self.bounds) + 1), 0.0)
            for i, bound in enumerate(self.bounds):
                if seconds <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            self._data[key] = (counts, total + seconds)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s)) for k, (c, s) in self._data.items())
        out = []
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip([*self.bounds, math.inf], counts, strict=True):
                running += n
                labels = (*key, ("le", _number(bound)))
                out.append(f"{self.name}_bucket{_label_text(labels)} {running}")
            out.append(f"{self.name}_sum{_label_text(key)} {_number(total)}")
            out.append(f"{self.name}_count{_label_text(key)} {running}")
        return out


class Metrics:
    """The counters of one server process; thread-safe (doors may count from any thread).

    Doors count with the named counters below; ``door`` is the front door's name (``http``,
    ``siprec``, ...). Gauges are added by the server with :meth:`add_gauge`.

    >>> m = Metrics()
    >>> m.calls_decided.inc("http")
    >>> m.calls_decided.value("http")
    1
    >>> "sampledrec_calls_decided_total" in m.render()
    True
    """

    def __init__(self) -> None:
        lock = threading.Lock()
        self._families: list[_Family] = []
        self.calls_decided = self._counter(
            "sampledrec_calls_decided_total",
            "Decisions answered (first decisions and repeats), by front door.",
            ("door",),
            lock,
        )
        self.calls_declined = self._counter(
            "sampledrec_calls_declined_total",
            "Decisions answered 'do not record' (not sampled, objection, cap reached), by front "
            "door.",
            ("door",),
            lock,
        )
        self.calls_recorded = self._counter(
            "sampledrec_calls_recorded_total",
            "Recordings opened under a logged positive decision, by front door.",
            ("door",),
            lock,
        )
        self.packets_received = self._counter(
            "sampledrec_packets_received_total",
            "Media packets received on recorded streams (in order, late or repeated), by front "
            "door.",
            ("door",),
            lock,
        )
        self.packets_lost = self._counter(
            "sampledrec_packets_lost_total",
            "Media packets missing from a recorded stream (recorded as silence), by front door.",
            ("door",),
            lock,
        )
        self.recordings_refused = self._counter(
            "sampledrec_recordings_refused_total",
            "Media streams refused before anything was recorded, by front door and reason "
            "(not_selected, not_decided, not_durable, invalid, unauthorized).",
            ("door", "reason"),
            lock,
        )
        self.decision_warnings = self._counter(
            "sampledrec_decision_warnings_total",
            "Warnings answered with decisions (attributes the policy does not use), by front door.",
            ("door",),
            lock,
        )
        self.http_requests = self._counter(
            "sampledrec_http_requests_total",
            "HTTP requests answered, by route and status code.",
            ("route", "code"),
            lock,
        )
        self.decision_seconds = _Histogram(
            "sampledrec_decision_seconds",
            "Time from a decision request's arrival to its answer, its log entry durable.",
            ("door",),
            LATENCY_BUCKETS,
            lock,
        )
        self._families.append(self.decision_seconds)

    def _counter(
        self, name: str, help: str, labels: Sequence[str], lock: threading.Lock
    ) -> _Counter:
        counter = _Counter(name, help, labels, lock)
        self._families.append(counter)
        return counter

    def add_gauge(
        self,
        name: str,
        help: str,
        read: Callable[[], float] | Callable[[], Iterable[tuple[Sequence[str], float]]],
        labels: Sequence[str] = (),
    ) -> None:
        """A gauge read at each rendering: ``read()`` returns its value, or with ``labels``
        (label values, value) pairs."""
        if labels:
            many: Callable[[], Iterable[tuple[Sequence[str], float]]] = read  # type: ignore[assignment]
        else:

            def many() -> Iterable[tuple[Sequence[str], float]]:
                return [((), float(read()))]  # type: ignore[arg-type]

        self._families.append(_Gauge(name, help, labels, many))

    def render(self) -> str:
        """The exposition text of every metric."""
        lines: list[str] = []
        for family in self._families:
            lines += family.header()
            lines += family.lines()
        return "\n".join(lines) + "\n"
