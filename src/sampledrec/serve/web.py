"""The web console's front door: ``sampledrec serve --web HOST:PORT``.

The console (:mod:`sampledrec.serve.console`) is an ASGI application (Starlette, Jinja2
templates) served by uvicorn inside the server's own event loop, beside the other doors: it
reads recordings through the same vault over the same log. This module holds only its
configuration and the door; it imports the web stack when the door starts, so the rest of
``sampledrec serve`` works without the ``console`` extra.

::

    [web]
    listen = "127.0.0.1:8443"
    tls_cert = "console.pem"       # without TLS the console listens on loopback only
    tls_key = "console.key"
    idle_minutes = 15              # a session unused this long ends (and the log says so)
    session_hours = 12             # a session ends this long after sign-in whatever happens
    password_min_length = 12
    password_max_age_days = 90     # 0: passwords never expire
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import InvalidArgument
from .doors import Door, DoorKind, Listen, Ready, Services, check_section, section_path
from .events import event

__all__ = ["WEB", "WebConfig", "web_door"]

_DOOR: Final = "web"
_KEYS: Final = (
    "listen",
    "tls_cert",
    "tls_key",
    "idle_minutes",
    "session_hours",
    "password_min_length",
    "password_max_age_days",
)


@dataclass(frozen=True)
class WebConfig:
    """The console door's settings, checked when built (a mistake stops ``sampledrec serve``
    before it listens, naming the setting)."""

    listen: Listen
    tls_cert: Path | None = None
    tls_key: Path | None = None
    idle_minutes: int = 15
    session_hours: int = 12
    password_min_length: int = 12
    password_max_age_days: int = 90

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("give --tls-cert and --tls-key together (or neither)")
        if self.tls_cert is None and not self.listen.loopback:
            raise InvalidArgument(
                f"--web {self.listen}: the console sends passwords and session cookies, so "
                "off this machine it needs TLS: give --tls-cert FILE --tls-key FILE (or "
                "listen on 127.0.0.1 behind a TLS reverse proxy)"
            )
        for name, value, lo, hi in (
            ("idle_minutes", self.idle_minutes, 1, 240),
            ("session_hours", self.session_hours, 1, 24),
            ("password_min_length", self.password_min_length, 8, 128),
            ("password_max_age_days", self.password_max_age_days, 0, 3650),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise InvalidArgument(f"[web] {name} must be a whole number from {lo} to {hi}")
        if self.idle_minutes * 60 > self.session_hours * 3600:
            raise InvalidArgument("[web] idle_minutes must not be longer than session_hours")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise InvalidArgument(f"--tls-cert/--tls-key {path}: no such file")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def from_section(cls, section: Mapping[str, Any], base: Path) -> WebConfig:
        """The ``[web]`` section of a config file (paths relative to ``base``)."""
        check_section("web", section, _KEYS)

        def path(key: str) -> Path | None:
            return section_path("web", section, key, base)

        numbers = {k: section[k] for k in _KEYS[3:] if k in section}
        return cls(
            Listen.parse(section["listen"], "[web] listen"),
            tls_cert=path("tls_cert"),
            tls_key=path("tls_key"),
            **numbers,
        )


def web_door(config: WebConfig, *, audit: Callable[[], Mapping[str, Any]] | None = None) -> Door:
    """The console door for ``config``: serves until the server stops, then lets the requests
    in flight finish (within the server's shutdown grace). ``audit`` runs the store's audit
    and returns its report as JSON, for the audit report page (``sampledrec serve`` passes
    one; the audit package is the CLI's to import: docs/decisions/0033-console-admin.md)."""

    async def run(services: Services, ready: Ready) -> None:
        try:
            import uvicorn

            from .console import Console
        except ImportError as exc:
            raise InvalidArgument(
                f"the web console needs its extra ({exc}); install it with: "
                "pip install 'sampledrec[console]'"
            ) from None
        console = Console(services.store, services.log, config, audit=audit)
        family = socket.AF_INET6 if ":" in config.listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((config.listen.host, config.listen.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            console.close()
            raise InvalidArgument(
                f"--web {config.listen}: cannot listen there ({exc.strerror}); pick another "
                "address or stop the process that holds it"
            ) from None
        sock.setblocking(False)
        uv_config = uvicorn.Config(
            console.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            server_header=False,
            proxy_headers=False,
            ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
            ssl_keyfile=str(config.tls_key) if config.tls_key else None,
            timeout_graceful_shutdown=max(1, int(services.shutdown_grace)),
        )

        class _Embedded(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the server owns SIGTERM and SIGINT: uvicorn must not take them over

        server = _Embedded(uv_config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        sweeper = asyncio.get_running_loop().create_task(console.sweep_sessions())
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the web console stopped before it listened")
                await asyncio.sleep(0.01)
            host, port = sock.getsockname()[:2]
            scheme = "https" if config.tls else "http"
            address = f"{scheme}://{Listen(host, port)}"
            event("listening", door=_DOOR, address=address, tls=config.tls)
            ready(address)
            stopping = asyncio.get_running_loop().create_task(services.stopping.wait())
            done, _ = await asyncio.wait({stopping, task}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if task in done:
                task.result()
                raise RuntimeError("the web console stopped by itself")
            server.should_exit = True
            await task
        finally:
            sweeper.cancel()
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), services.shutdown_grace + 1)
            if not task.done():
                task.cancel()
                event("door_cancelled", level=logging.WARNING, door=_DOOR)
            sock.close()
            console.close()

    return run


WEB: Final = DoorKind[WebConfig](
    name=_DOOR,
    help="the web console for QA reviewers, supervisors, the DPO, auditors and admins",
    parse=WebConfig.from_section,
    door=web_door,
)
