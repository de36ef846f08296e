"""The server's configuration: the ``--config`` TOML file, merged with the command line.

::

    [server]
    shutdown_grace = 10      # seconds the doors have to finish what is in flight
    decide_workers = 1       # threads that decide and wait for the log
    log_level = "info"       # debug adds one line per HTTP request
    event_loop = "auto"      # uvloop when installed; "asyncio" for asyncio's own loop

    [http]                   # the HTTP door; one section per kind of door (DOOR_KINDS)
    listen = "127.0.0.1:8480"
    token_file = "token"     # relative paths are relative to this file's folder
    # tls_cert, tls_key, tls_client_ca, insecure_no_auth, max_body_bytes

A door runs when its section is present or its ``--NAME HOST:PORT`` option is given; options
on the command line win over the file. Every key is checked: a misspelt one is an error that
names it, never a setting silently ignored.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..errors import InvalidArgument
from .audiosocket import AUDIOSOCKET
from .doors import Door, DoorKind
from .http import HTTP
from .siprec import SIPREC
from .streams import STREAMS
from .web import WEB

__all__ = ["DOOR_KINDS", "EVENT_LOOPS", "LOG_LEVELS", "ServerConfig"]

#: Every kind of front door, in the order they start.
DOOR_KINDS: Final[tuple[DoorKind[Any], ...]] = (HTTP, SIPREC, AUDIOSOCKET, STREAMS, WEB)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: The event loops a server can run on: ``auto`` is uvloop when it is installed, else asyncio's
#: (:func:`~sampledrec.serve.server.event_loop_factory`).
EVENT_LOOPS: Final = ("auto", "uvloop", "asyncio")
_SERVER_KEYS: Final = ("shutdown_grace", "decide_workers", "log_level", "event_loop")


@dataclass(frozen=True)
class ServerConfig:
    """What ``sampledrec serve`` runs: its doors (name -> door coroutine function, in
    :data:`DOOR_KINDS` order, with the validated configuration of each in ``settings``) and the
    server's own settings."""

    doors: dict[str, Door]
    settings: dict[str, object] = field(default_factory=dict)
    shutdown_grace: float = 10.0
    decide_workers: int = 1
    log_level: str = "info"
    event_loop: str = "auto"

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ServerConfig:
        """Read the config file at ``path`` (if any), then apply ``overrides`` (section ->
        key -> value, from the command line; their paths relative to the current folder).
        Raises InvalidArgument naming the file, section and key of a mistake."""
        document: dict[str, Any] = {}
        base = Path.cwd()
        if path is not None:
            file = Path(path)
            try:
                document = tomllib.loads(file.read_text(encoding="utf-8"))
            except OSError as exc:
                raise InvalidArgument(f"--config {file}: {exc.strerror}") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise InvalidArgument(f"--config {file} is not TOML: {exc}") from None
            base = file.resolve().parent
        kinds = {kind.name: kind for kind in DOOR_KINDS}
        known = ["server", *kinds]
        for section, value in document.items():
            if section not in known:
                raise InvalidArgument(
                    f"--config: there is no [{section}] section; the sections are "
                    + ", ".join(f"[{s}]" for s in known)
                )
            if not isinstance(value, dict):
                raise InvalidArgument(f"--config: [{section}] must be a table of settings")
        sections: dict[str, tuple[dict[str, Any], Path]] = {
            name: (dict(value), base) for name, value in document.items()
        }
        for name, values in (overrides or {}).items():
            given = {k: v for k, v in values.items() if v is not None}
            if not given:
                continue
            old, where = sections.get(name, ({}, Path.cwd()))
            # Paths given on the command line are relative to the current folder.
            resolved = {
                k: Path(v).resolve() if isinstance(v, Path) else v for k, v in given.items()
            }
            sections[name] = ({**old, **resolved}, where)
        server, _ = sections.pop("server", ({}, base))
        own = _server_settings(server)
        doors: dict[str, Door] = {}
        settings: dict[str, object] = {}
        for kind in DOOR_KINDS:
            if kind.name in sections:
                values, where = sections[kind.name]
                config = kind.parse(values, where)
                settings[kind.name] = config
                doors[kind.name] = kind.door(config)
        if not doors:
            raise InvalidArgument(
                "no front door to open: give --http, --siprec, --audiosocket, --streams or --web "
                "HOST:PORT (or an [http], [siprec], [audiosocket], [streams] or [web] section "
                "in --config)"
            )
        return cls(doors, settings, **own)


def _server_settings(section: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(section) - set(_SERVER_KEYS))
    if unknown:
        raise InvalidArgument(
            f"[server] has no setting {unknown[0]!r}; the settings are {', '.join(_SERVER_KEYS)}"
        )
    out: dict[str, Any] = {}
    if "shutdown_grace" in section:
        grace = section["shutdown_grace"]
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 < grace <= 3600:
            raise InvalidArgument(
                "[server] shutdown_grace must be a number of seconds in (0, 3600]"
            )
        out["shutdown_grace"] = float(grace)
    if "decide_workers" in section:
        workers = section["decide_workers"]
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
            raise InvalidArgument("[server] decide_workers must be a whole number from 1 to 64")
        out["decide_workers"] = workers
    if "log_level" in section:
        level = section["log_level"]
        if level not in LOG_LEVELS:
            raise InvalidArgument(f"[server] log_level must be one of {', '.join(LOG_LEVELS)}")
        out["log_level"] = level
    if "event_loop" in section:
        loop = section["event_loop"]
        if loop not in EVENT_LOOPS:
            raise InvalidArgument(
                f"[server] event_loop must be one of {', '.join(EVENT_LOOPS)} (auto: uvloop "
                "when it is installed)"
            )
        out["event_loop"] = loop
    return out
