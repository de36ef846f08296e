"""What the console's page modules (:mod:`.admin`, :mod:`.notes`, :mod:`.reports`,
:mod:`.security_keys`) use of the :class:`~sampledrec.serve.console.Console` that registers
them: a protocol, so that they need not import :mod:`.app` (which imports them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ...accounts import Authenticator, Session, SessionStore, User, UserDirectory
from ...clock import Clock
from ...log.writer import DecisionLog
from ...store import Store
from ...vault.recorder import Vault

__all__ = ["ConsoleParts", "Handler"]

Handler = Callable[[Request, Session, User], Awaitable[Response]]


class ConsoleParts(Protocol):
    store: Store
    log: DecisionLog
    vault: Vault
    users: UserDirectory
    sessions: SessionStore
    clock: Clock
    audit: Callable[[], Mapping[str, Any]] | None
    settings: Any
    auth: Authenticator

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]: ...

    def render(
        self,
        request: Request,
        name: str,
        status: int = 200,
        session: Session | None = None,
        user: User | None = None,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse: ...

    async def _form(self, request: Request, session: Session | None) -> dict[str, str] | None: ...

    def _stale_form(self, request: Request) -> Response: ...

    def _error(
        self,
        request: Request,
        status: int,
        message: str,
        session: Session | None = None,
        user: User | None = None,
    ) -> HTMLResponse: ...

    def _see(self, url: str, session: Session | None = None) -> Response: ...

    async def _step(self, request: Request, stage: str) -> Session | Response: ...

    async def _session(self, request: Request) -> Session | None: ...

    def _with_cookie(self, response: Response, session: Session) -> Response: ...

    def _now(self) -> float: ...
