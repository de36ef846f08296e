"""Review notes on a recording: ``/recordings/{id}/notes`` (GET: read them; POST: write one).

The vault does everything that matters (:meth:`Vault.notes <sampledrec.vault.Vault.notes>`,
:meth:`Vault.write_note <sampledrec.vault.Vault.write_note>`): it checks ``listen`` on the
recording and its scope, refuses from expiry on, seals the note under a key derived from the
recording's data key, and logs every read and write with its outcome. The page adds the form
(CSRF-protected) and the answers a browser understands (403, 404, 410 pages).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...accounts import Session, User
from ...errors import InvalidArgument, InvalidRecording
from ...vault.notes import MAX_NOTE_CHARS
from .parts import ConsoleParts

__all__ = ["note_routes"]


def note_routes(console: ConsoleParts) -> list[Route]:
    notes = _NotesPage(console)
    return [
        Route(
            "/recordings/{recording_id:uuid}/notes",  # anything else: 404 by routing
            console._page(notes.notes),
            methods=["GET", "POST"],
        )
    ]


class _NotesPage:
    def __init__(self, console: ConsoleParts) -> None:
        self.console = console

    async def notes(self, request: Request, session: Session, user: User) -> Response:
        recording_id = str(request.path_params["recording_id"])
        vault = self.console.vault
        error, text = None, ""
        if request.method == "POST":
            fields = await self.console._form(request, session)
            if fields is None:
                return self.console._stale_form(request)
            text = fields.get("text", "")
            try:
                await run_in_threadpool(
                    lambda: vault.write_note(recording_id, text, user.principal)
                )
            except InvalidArgument as exc:
                error = str(exc)
            else:
                return self.console._see(f"/recordings/{recording_id}/notes")
        try:
            found: list[Any] = await run_in_threadpool(
                lambda: vault.notes(recording_id, user.principal)
            )
        except InvalidRecording:
            return self.console._error(
                request,
                500,
                "A note on this recording is damaged and cannot be read (logged).",
                session,
                user,
            )
        return self.console.render(
            request,
            "notes.html",
            400 if error else 200,
            session,
            user,
            recording_id=recording_id,
            notes=found,
            error=error,
            text=text,
            max_chars=MAX_NOTE_CHARS,
        )
