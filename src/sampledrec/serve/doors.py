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
import ssl
from collections.abc import Callable, Coroutine, Mapping, Sequence
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

__all__ = [
    "Door",
    "DoorKind",
    "Listen",
    "Ready",
    "Services",
    "check_section",
    "section_path",
    "server_ssl",
]

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


def check_section(name: str, section: Mapping[str, Any], keys: Sequence[str]) -> None:
    """A door's ``[name]`` section names only its settings ``keys``, and ``listen``."""
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise InvalidArgument(
            f"[{name}] has no setting {unknown[0]!r}; the settings are {', '.join(keys)}"
        )
    if "listen" not in section:
        raise InvalidArgument(f'[{name}] needs listen = "HOST:PORT" (or --{name} HOST:PORT)')


def section_path(name: str, section: Mapping[str, Any], key: str, base: Path) -> Path | None:
    """The file that setting ``key`` of ``[name]`` names, relative to ``base`` (the config
    file's folder); ``None`` when the setting is not there."""
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str | Path) or not str(value):
        raise InvalidArgument(f"[{name}] {key} must be a file name")
    return base / Path(value)


def server_ssl(
    cert: Path, key: Path, client_ca: Path | None = None, *, named: str | None = None
) -> ssl.SSLContext:
    """A door's server side of TLS: TLS 1.2 or later, the PEM certificate chain and its key,
    and with ``client_ca`` client certificates required (mutual TLS). A file that cannot be
    loaded is an :class:`~sampledrec.errors.InvalidArgument` naming the settings as ``named``
    says (default: the ``--tls-cert`` and ``--tls-key`` options)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(
            f"{named or f'--tls-cert {cert} / --tls-key {key}'} cannot be loaded ({exc}); give "
            "a PEM certificate chain and the private key that goes with it (not encrypted)"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(
                f"--tls-client-ca {client_ca} cannot be loaded ({exc}); give the PEM "
                "certificate(s) of the CA that signs the clients' certificates"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


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
