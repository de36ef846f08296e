"""The console's pages beyond :mod:`.app`'s, gathered for :meth:`Console._build`: the admin's
users and policy pages (:mod:`.admin`), review notes (:mod:`.notes`), and the DPO's and
auditor's access log and audit report (:mod:`.reports`)."""

from __future__ import annotations

from starlette.routing import Route

from .admin import admin_routes
from .notes import note_routes
from .parts import ConsoleParts
from .reports import report_routes

__all__ = ["more_routes"]


def more_routes(console: ConsoleParts) -> list[Route]:
    return [*admin_routes(console), *note_routes(console), *report_routes(console)]
