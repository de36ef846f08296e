"""Front doors: what one is, what it shares with the others, and how a kind of door is added.

A **front door** is a coroutine function ``door(services, ready)``: it starts listening, calls
``ready(address)`` once it accepts connections, serves until ``services.stopping`` is set, then
stops accepting, finishes what is in flight (within ``services.shutdown_grace`` seconds) and
returns. The server runs every configured door as a task of one event loop; they share
:class:`Services`: one sampler and one log (group commit), the decider, the registry of open
recordings and the metrics. A door that raises stops the whole server.

A **kind** of door (:class:`DoorKind`) is what the configuration names: its section of the
``--config`` file (``[http]``, later ``[siprec]``, ``[audiosocket]``, ...), a ``--NAME
HOST:PORT`` option of ``sampledrec serve``, and how a section becomes a door. The kinds are
listed once, in :data:`sampledrec.serve.config.DOOR_KINDS`; adding one is adding it there.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeAlias, TypeVar

from ..errors import InvalidArgument
from ..log.writer import DecisionLog
from ..sampling.sampler import Sampler
from ..store import Store
from .decisions import Decider
from .metrics import Metrics
from .recordings import OpenRecordings

__all__ = ["Door", "DoorKind", "Listen", "Ready", "Services"]

Ready: TypeAlias = Callable[[str], None]
"""What a door calls with its address (``"http://127.0.0.1:8480"``) once it is listening."""


@dataclass(frozen=True)
class Services:
    """What every front door of one server shares."""

    store: Store
    log: DecisionLog
    sampler: Sampler
    decider: Decider
    recordings: OpenRecordings
    metrics: Metrics
    stopping: asyncio.Event
    shutdown_grace: float


Door: TypeAlias = Callable[[Services, Ready], Coroutine[Any, Any, None]]
"""A front door (module docstring)."""

C = TypeVar("C")


@dataclass(frozen=True)
class DoorKind(Generic[C]):
    """A kind of front door, as the configuration names it.

    ``parse(section, base)`` reads its section of the config file (a mapping of TOML values;
    relative paths are relative to ``base``, the config file's folder) into a validated
    configuration, raising :class:`~sampledrec.errors.InvalidArgument` naming the key and what
    to write; ``door(config)`` returns the door coroutine function for that configuration.
    ``sampledrec serve --NAME HOST:PORT`` sets the section's ``listen`` key.
    """

    name: str
    help: str
    parse: Callable[[Mapping[str, Any], Path], C]
    door: Callable[[C], Door]


@dataclass(frozen=True)
class Listen:
    """An address to listen on: ``HOST:PORT`` (``[::1]:8480`` for IPv6; port 0: any free)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: object, what: str) -> Listen:
        """Read ``HOST:PORT``; ``what`` names the setting in errors (``--http``)."""
        if not isinstance(text, str):
            raise InvalidArgument(f"{what} must be text such as 127.0.0.1:8480")
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise InvalidArgument(
                f"{what} {text!r} is not HOST:PORT; write it like 127.0.0.1:8480, "
                "0.0.0.0:8480 or [::1]:8480"
            )
        return cls(host, int(port))

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the address."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
