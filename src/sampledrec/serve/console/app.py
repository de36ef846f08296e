"""The console's pages: a Starlette application over the accounts and the vault.

Every page but sign-in needs a signed-in session; every action is checked by the library
(:func:`sampledrec.accounts.authorize`, or the vault's own checks for reading audio), which logs
it. The web layer adds what only the web has: sessions in cookies (``Secure`` with TLS,
``HttpOnly``, ``SameSite=Strict``), a CSRF token on every form, security headers (a strict
Content-Security-Policy, ``default-src 'self'``: no inline script or style, nothing from
elsewhere), and answers a browser understands (303 after a form, 403/404/410/416 pages).

Pages (all GET unless said):

``/sign-in`` (GET, POST), ``/sign-in/code`` (GET, POST), ``/sign-in/enrol`` (GET, POST),
``/sign-in/password`` (GET, POST), ``/sign-out`` (POST)
    the sign-in steps (:class:`sampledrec.accounts.Authenticator`).
``/``
    what the account may do.
``/recordings``, ``/recordings/{id}``
    the recordings in scope, filtered by queue, rule, purpose and date; one recording's
    metadata, and a player for those who may listen.
``/recordings/{id}/audio.wav``
    the recording as a WAV file, in HTTP ranges (206), decrypting only the chunks needed.
``/recordings/{id}/export.wav`` (POST)
    the whole recording as a WAV attachment (``export``), built in memory, never on disk.
``/connections``
    the connection log (``read_log`` or ``manage_users``).
``/holds`` (GET, POST), ``/holds/{id}/release`` (POST)
    the legal holds (``hold``): list them, place one on recordings, release one
    (:class:`sampledrec.retention.Retention`, which checks and logs each change).
``/requests`` (GET, POST), ``/requests/{id}/verify`` (POST), ``/requests/{id}/answer`` (POST)
    the data-subject desk (``subject_requests``): list the requests, receive one, record how
    the requester's identity was verified, answer it (an access request's ZIP as a download
    built in memory, or the erasure) through :class:`sampledrec.retention.SubjectRequests`,
    which checks and logs each step.
``/usage``
    page views per day and per role (``read_log`` or ``manage_users``): every HTML page a
    signed-in account GETs is counted under each of its roles, never by account or address
    (:class:`sampledrec.accounts.Usage`, kept in memory and in the store's ``usage.json``).
``/audit``
    the auditor's view of the log (``verify``): its size, its checkpoints and the latest one,
    its entries by type and the accesses by action and outcome; never audio. (The full
    ``sampledrec audit verify`` stays with the CLI: the audit package is the CLI's.)
``/static/...``
    the stylesheet, from the package.

The admin's users and policy pages, review notes, the access log and the audit report are in
:mod:`.admin`, :mod:`.notes` and :mod:`.reports` (registered by :func:`.pages.more_routes`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...accounts import (
    Authenticator,
    PasswordRules,
    Session,
    SessionStore,
    Stage,
    Throttle,
    Usage,
    User,
    UserDirectory,
    authorize,
    connections,
    open_users,
    permitted,
)
from ...accounts.totp import new_secret, provisioning_uri
from ...clock import SYSTEM_CLOCK, Clock
from ...errors import (
    AccessDenied,
    AuthenticationFailed,
    InvalidArgument,
    InvalidRecording,
    RecordingExpired,
    RecordingNotFound,
    SignInThrottled,
    WeakPassword,
)
from ...log.checkpoint import Checkpoint
from ...log.format import from_micros
from ...log.segments import split_records
from ...log.writer import DecisionLog, iter_entries
from ...retention.subjects import IDENTITY_METHODS, IdentityCheck, SubjectRequests
from ...retention.sweep import Retention
from ...store import Store
from ...vault.catalog import RecordingRow
from ...vault.recorder import Vault
from .pages import more_routes

__all__ = ["CSP", "MAX_RANGE_BYTES", "Console", "safe_next"]

HERE: Final = Path(__file__).parent
CSP: Final = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'"
)
#: The most audio one range response carries: a player asking "from here to the end" gets this
#: much, and asks again (time to first byte stays short whatever the recording's length).
MAX_RANGE_BYTES: Final = 1 << 20
_RECORDING_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_RANGE: Final = re.compile(r"bytes=(\d*)-(\d*)")
_SAFE_NEXT: Final = re.compile(r"/(?![/\\])[A-Za-z0-9/_\-.~%?=&]*")
_SWEEP_SECONDS: Final = 30.0
_REQUEST_ID: Final = re.compile(r"req-[0-9a-f]{12}")


def safe_next(value: object) -> str:
    """Where to go after sign-in: a path of this site, never another site (no open
    redirect); anything else is ``/``."""
    if isinstance(value, str) and len(value) <= 512 and _SAFE_NEXT.fullmatch(value):
        return value
    return "/"


class Console:
    """The console of one store, served by the ``web`` door (or a test client).

    Parameters
    ----------
    store, log:
        The store and its open decision log (the server's).
    settings:
        The door's settings (:class:`~sampledrec.serve.web.WebConfig`).
    clock:
        Time of sessions, sign-in and reads (tests pass a fixed one).
    users:
        The accounts (default: the store's ``users.sqlite``).
    throttle:
        The sign-in throttle (default: 3 free failures, then 1 s doubling up to 15 min).
    audit:
        Runs the store's audit and returns its report as JSON (``sampledrec serve`` passes
        one: the audit package is the CLI's to import, docs/decisions/0033); without it the
        audit report page says how to get one.
    """

    def __init__(
        self,
        store: Store,
        log: DecisionLog,
        settings: Any,
        *,
        clock: Clock = SYSTEM_CLOCK,
        users: UserDirectory | None = None,
        throttle: Throttle | None = None,
        audit: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.log = log
        self.settings = settings
        self.clock = clock
        max_age = settings.password_max_age_days or None
        rules = PasswordRules(settings.password_min_length, max_age)
        self.users = users if users is not None else open_users(store, rules=rules)
        self.vault = Vault(store, log, clock=clock)
        self.usage = Usage(store.usage_path)
        self.retention = Retention(self.vault, clock=clock)
        self.subjects = SubjectRequests(store, self.vault, log, clock=clock)
        self.auth = Authenticator(
            self.users, log, store.keyring.pseudonym_key(), clock=clock, throttle=throttle
        )
        self.sessions = SessionStore(
            idle=settings.idle_minutes * 60.0, max_age=settings.session_hours * 3600.0
        )
        self.cookie = "__Host-sdr_session" if settings.tls else "sdr_session"
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
        )
        self.templates.filters["when"] = _when
        self.app = self._build()

    def close(self) -> None:
        self.vault.close()
        self.users.close()

    async def sweep_sessions(self) -> None:
        """Forever: end the sessions that timed out, and log each expiry."""
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            for gone in self.sessions.expire_idle(now=self._now()):
                if gone.user is not None:
                    await run_in_threadpool(self.auth.expired, gone.user, address=gone.address)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    # -- the application

    def _build(self) -> Starlette:
        page = self._page
        routes = [
            Route("/", page(self.home)),
            Route("/sign-in", self.sign_in, methods=["GET", "POST"]),
            Route("/sign-in/code", self.second_factor, methods=["GET", "POST"]),
            Route("/sign-in/enrol", self.enrol, methods=["GET", "POST"]),
            Route("/sign-in/password", self.change_password, methods=["GET", "POST"]),
            Route("/sign-out", self.sign_out, methods=["POST"]),
            Route("/recordings", page(self.recordings)),
            Route("/recordings/{recording_id}", page(self.recording)),
            Route("/recordings/{recording_id}/audio.wav", page(self.audio)),
            Route("/recordings/{recording_id}/export.wav", page(self.export), methods=["POST"]),
            Route("/connections", page(self.connection_log)),
            Route("/holds", page(self.holds), methods=["GET", "POST"]),
            Route("/holds/{hold_id}/release", page(self.release_hold), methods=["POST"]),
            Route("/requests", page(self.subject_requests), methods=["GET", "POST"]),
            Route("/requests/{request_id}/verify", page(self.verify_request), methods=["POST"]),
            Route("/requests/{request_id}/answer", page(self.answer_request), methods=["POST"]),
            Route("/usage", page(self.usage_page)),
            Route("/audit", page(self.audit_page)),
            *more_routes(self),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(BaseHTTPMiddleware, dispatch=self._headers)],
            exception_handlers={404: self._not_found, 405: self._not_allowed},
        )

    async def _headers(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        h = response.headers
        h["Content-Security-Policy"] = CSP
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "no-referrer"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        if "cache-control" not in h:
            h["Cache-Control"] = "no-store"
        if self.settings.tls:
            h["Strict-Transport-Security"] = "max-age=31536000"
        return response

    # -- answers

    def render(
        self,
        request: Request,
        name: str,
        status: int = 200,
        session: Session | None = None,
        user: User | None = None,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        may = permitted(self.vault, user) if user is not None else frozenset()
        body = self.templates.get_template(name).render(
            session=session, user=user, may=may, **context
        )
        return HTMLResponse(body, status_code=status, headers=dict(headers or {}))

    def _error(
        self,
        request: Request,
        status: int,
        message: str,
        session: Session | None = None,
        user: User | None = None,
    ) -> HTMLResponse:
        titles = {403: "Not allowed", 404: "Not found", 410: "Gone", 400: "Bad request"}
        return self.render(
            request,
            "error.html",
            status,
            session,
            user,
            title=titles.get(status, "Error"),
            message=message,
        )

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self._error(request, 404, "There is no such page.")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return self._error(request, 405, "This page does not take that method.")

    def _with_cookie(self, response: Response, session: Session) -> Response:
        response.set_cookie(
            self.cookie,
            session.sid,
            path="/",
            secure=self.settings.tls,
            httponly=True,
            samesite="strict",
        )
        return response

    def _see(self, url: str, session: Session | None = None) -> Response:
        response = RedirectResponse(url, status_code=303)
        return self._with_cookie(response, session) if session is not None else response

    # -- sessions

    def _address(self, request: Request) -> str:
        host = request.client.host if request.client else "unknown"
        return self.auth.pseudonym(host)

    async def _session(self, request: Request) -> Session | None:
        session, expired = self.sessions.get(request.cookies.get(self.cookie), now=self._now())
        if expired is not None and expired.user is not None:
            await run_in_threadpool(self.auth.expired, expired.user, address=expired.address)
        return session

    async def _anonymous(self, request: Request) -> Session:
        session = await self._session(request)
        if session is None or session.stage == "signed_in":
            session = self.sessions.new(now=self._now(), address=self._address(request))
        return session

    async def _form(self, request: Request, session: Session | None) -> dict[str, str] | None:
        """The form's fields, or None when its CSRF token is not the session's."""
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if session is None or not session.csrf_ok(fields.get("csrf")):
            return None
        return fields

    def _stale_form(self, request: Request) -> Response:
        return self._error(
            request,
            403,
            "This form has expired or did not come from this console. Open the page again "
            "and resubmit.",
        )

    def _page(
        self, handler: Callable[[Request, Session, User], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A page for signed-in accounts: others are sent to sign in (and back)."""

        async def endpoint(request: Request) -> Response:
            session = await self._session(request)
            user = None
            if session is not None and session.stage == "signed_in" and session.user:
                user = await run_in_threadpool(self.users.get, session.user)
            if session is None or user is None or user.disabled:
                if session is not None:
                    self.sessions.drop(session)
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                return RedirectResponse(
                    "/sign-in?next=" + _quote(safe_next(target)), status_code=303
                )
            response = await self._answer(handler, request, session, user)
            if request.method == "GET" and response.media_type == "text/html":
                await run_in_threadpool(self.usage.count, user.roles, self.clock.now())
            return response

        return endpoint

    async def _answer(
        self,
        handler: Callable[[Request, Session, User], Awaitable[Response]],
        request: Request,
        session: Session,
        user: User,
    ) -> Response:
        """The handler's answer, or the error page of what it raised."""
        try:
            return await handler(request, session, user)
        except AccessDenied:
            return self._error(
                request,
                403,
                "Your roles do not allow this. The attempt has been logged.",
                session,
                user,
            )
        except RecordingNotFound:
            return self._error(request, 404, "There is no such recording.", session, user)
        except RecordingExpired:
            return self._error(
                request,
                410,
                "This recording has expired: it can no longer be read.",
                session,
                user,
            )

    # -- sign-in

    async def sign_in(self, request: Request) -> Response:
        session = await self._anonymous(request)
        target = safe_next(request.query_params.get("next"))
        if request.method == "GET":
            return self._with_cookie(
                self.render(request, "sign_in.html", session=session, next=target), session
            )
        fields = await self._form(request, session)
        if fields is None:
            return self._stale_form(request)
        target = safe_next(fields.get("next"))
        try:
            checked = await run_in_threadpool(
                self.auth.check_password,
                fields.get("name", ""),
                fields.get("password", ""),
                address=session.address,
            )
        except SignInThrottled as exc:
            return self._with_cookie(
                self.render(
                    request,
                    "sign_in.html",
                    429,
                    session,
                    next=target,
                    error=str(exc),
                    headers={"Retry-After": str(int(exc.retry_after + 0.999))},
                ),
                session,
            )
        except AuthenticationFailed as exc:
            return self._with_cookie(
                self.render(request, "sign_in.html", 401, session, next=target, error=str(exc)),
                session,
            )
        stage: Stage = "enrol" if checked.next == "enrol" else "second_factor"
        fresh = self.sessions.advance(session, stage, now=self._now(), user=checked.user.name)
        step = "/sign-in/enrol" if stage == "enrol" else "/sign-in/code"
        return self._see(f"{step}?next={_quote(target)}", fresh)

    async def _step(self, request: Request, stage: str) -> Session | Response:
        session = await self._session(request)
        if session is None or session.stage != stage or session.user is None:
            return RedirectResponse("/sign-in", status_code=303)
        return session

    async def second_factor(self, request: Request) -> Response:
        session = await self._step(request, "second_factor")
        if isinstance(session, Response):
            return session
        target = safe_next(request.query_params.get("next"))
        if request.method == "GET":
            return self.render(request, "code.html", session=session, next=target)
        fields = await self._form(request, session)
        if fields is None:
            return self._stale_form(request)
        target = safe_next(fields.get("next"))
        assert session.user is not None
        try:
            nxt = await run_in_threadpool(
                self.auth.check_second_factor,
                session.user,
                fields.get("code", ""),
                address=session.address,
            )
        except AuthenticationFailed as exc:
            status, headers = 401, {}
            if isinstance(exc, SignInThrottled):
                status, headers = 429, {"Retry-After": str(int(exc.retry_after + 0.999))}
            return self.render(
                request,
                "code.html",
                status,
                session,
                next=target,
                error=str(exc),
                headers=headers,
            )
        return self._after_second_factor(session, nxt, target)

    def _after_second_factor(self, session: Session, nxt: str, target: str) -> Response:
        if nxt == "change_password":
            fresh = self.sessions.advance(session, "change_password", now=self._now())
            return self._see(f"/sign-in/password?next={_quote(target)}", fresh)
        fresh = self.sessions.advance(session, "signed_in", now=self._now())
        return self._see(target, fresh)

    async def enrol(self, request: Request) -> Response:
        session = await self._step(request, "enrol")
        if isinstance(session, Response):
            return session
        assert session.user is not None
        target = safe_next(request.query_params.get("next"))
        if session.pending_secret is None:
            session.pending_secret = new_secret()
        secret = session.pending_secret
        context: dict[str, Any] = {
            "next": target,
            "secret": secret,
            "uri": provisioning_uri(secret, session.user),
        }
        if request.method == "GET":
            return self.render(request, "enrol.html", session=session, **context)
        fields = await self._form(request, session)
        if fields is None:
            return self._stale_form(request)
        context["next"] = target = safe_next(fields.get("next"))
        try:
            codes = await run_in_threadpool(
                self.auth.enrol,
                session.user,
                secret,
                fields.get("code", ""),
                address=session.address,
            )
            nxt = await run_in_threadpool(
                self.auth.finish_enrolment, session.user, address=session.address
            )
        except AuthenticationFailed as exc:
            return self.render(request, "enrol.html", 401, session, error=str(exc), **context)
        session.pending_secret = None
        stage: Stage = "change_password" if nxt == "change_password" else "signed_in"
        fresh = self.sessions.advance(session, stage, now=self._now())
        fresh.pending_secret = None
        then = f"/sign-in/password?next={_quote(target)}" if stage == "change_password" else target
        return self._with_cookie(
            self.render(request, "codes.html", session=fresh, codes=codes, then=then), fresh
        )

    async def change_password(self, request: Request) -> Response:
        session = await self._step(request, "change_password")
        if isinstance(session, Response):
            return session
        assert session.user is not None
        target = safe_next(request.query_params.get("next"))
        if request.method == "GET":
            return self.render(request, "password.html", session=session, next=target)
        fields = await self._form(request, session)
        if fields is None:
            return self._stale_form(request)
        target = safe_next(fields.get("next"))
        new = fields.get("password", "")
        if new != fields.get("confirm", ""):
            return self.render(
                request,
                "password.html",
                400,
                session,
                next=target,
                error="The two passwords differ.",
            )
        try:
            await run_in_threadpool(
                self.auth.change_password, session.user, new, address=session.address
            )
        except (WeakPassword, InvalidArgument) as exc:
            return self.render(request, "password.html", 400, session, next=target, error=str(exc))
        except AuthenticationFailed as exc:
            return self.render(request, "password.html", 401, session, next=target, error=str(exc))
        fresh = self.sessions.advance(session, "signed_in", now=self._now())
        return self._see(target, fresh)

    async def sign_out(self, request: Request) -> Response:
        session = await self._session(request)
        fields = await self._form(request, session)
        if session is None or fields is None:
            return self._stale_form(request)
        self.sessions.drop(session)
        if session.user is not None:
            await run_in_threadpool(self.auth.signed_out, session.user, address=session.address)
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(
            self.cookie, path="/", secure=self.settings.tls, httponly=True, samesite="strict"
        )
        return response

    # -- pages

    async def home(self, request: Request, session: Session, user: User) -> Response:
        return self.render(request, "home.html", session=session, user=user)

    async def recordings(self, request: Request, session: Session, user: User) -> Response:
        q = request.query_params
        filters = {k: q.get(k, "").strip() for k in ("queue", "rule", "purpose", "from", "to")}
        rows = await run_in_threadpool(self.vault.recordings, principal=user.principal)
        shown = [r for r in rows if _matches(r, filters)]
        shown.sort(key=lambda r: r.started_at, reverse=True)
        return self.render(
            request,
            "recordings.html",
            session=session,
            user=user,
            rows=shown[:500],
            count=len(shown),
            filters=filters,
        )

    async def recording(self, request: Request, session: Session, user: User) -> Response:
        recording_id = _recording_id(request)
        await run_in_threadpool(authorize, self.vault, user, "list", recording_id=recording_id)
        row = self.vault.catalog.get(recording_id)
        if row is None:
            raise RecordingNotFound(recording_id)
        return self.render(
            request,
            "recording.html",
            session=session,
            user=user,
            row=row,
            readable=row.status in ("sealed", "truncated")
            and row.expires_at > int(self.clock.now().timestamp() * 1e6),
        )

    async def audio(self, request: Request, session: Session, user: User) -> Response:
        recording_id = _recording_id(request)
        header = request.headers.get("range")
        wanted = _parse_range(header) if header else None
        principal = user.principal
        try:
            if wanted is None:
                part = await run_in_threadpool(
                    self.vault.read_wav, recording_id, 0, None, principal
                )
                return Response(
                    part.data,
                    200,
                    headers={"Accept-Ranges": "bytes", "Cache-Control": "no-store"},
                    media_type="audio/wav",
                )
            start, end = wanted
            if start is None:  # a suffix: the last `end` bytes
                size = await run_in_threadpool(self.vault.read_wav, recording_id, 0, 0, principal)
                start, end = max(0, size.total - (end or 0)), None
            stop = start + MAX_RANGE_BYTES if end is None else min(end + 1, start + MAX_RANGE_BYTES)
            part = await run_in_threadpool(
                self.vault.read_wav, recording_id, start, stop, principal
            )
        except InvalidRecording:
            return self._error(
                request,
                500,
                "This recording is damaged and cannot be played (logged).",
                session,
                user,
            )
        if part.start >= part.total or part.end <= part.start:
            return Response(
                b"",
                416,
                headers={"Content-Range": f"bytes */{part.total}", "Cache-Control": "no-store"},
            )
        return Response(
            part.data,
            206,
            headers={
                "Accept-Ranges": "bytes",
                "Content-Range": f"bytes {part.start}-{part.end - 1}/{part.total}",
                "Cache-Control": "no-store",
            },
            media_type="audio/wav",
        )

    async def export(self, request: Request, session: Session, user: User) -> Response:
        """The whole recording as a WAV attachment, built in memory by the vault (which checks
        ``export`` and scope, refuses from expiry on, and logs the export with its outcome)."""
        recording_id = _recording_id(request)
        if await self._form(request, session) is None:
            return self._stale_form(request)
        try:
            wav = await run_in_threadpool(self.vault.export_wav, recording_id, user.principal)
        except InvalidRecording:
            return self._error(
                request,
                500,
                "This recording is damaged and cannot be exported (logged).",
                session,
                user,
            )
        return Response(
            wav,
            200,
            headers={
                "Content-Disposition": f'attachment; filename="recording-{recording_id}.wav"',
                "Cache-Control": "no-store",
            },
            media_type="audio/wav",
        )

    async def connection_log(self, request: Request, session: Session, user: User) -> Response:
        await run_in_threadpool(authorize, self.vault, user, ("read_log", "manage_users"))
        q = request.query_params
        who = q.get("user", "").strip()

        def read() -> list[Any]:
            found = connections(iter_entries(self.store.log_storage, self.store.keyring))
            if who:
                found = [c for c in found if c.user == who]
            return found[-500:][::-1]

        events = await run_in_threadpool(read)
        return self.render(
            request, "connections.html", session=session, user=user, events=events, who=who
        )

    async def holds(self, request: Request, session: Session, user: User) -> Response:
        """The holds, and a form to place one (on recordings named by id)."""
        await run_in_threadpool(authorize, self.vault, user, "hold")
        fields: dict[str, str] = {}
        error = None
        if request.method == "POST":
            form = await self._form(request, session)
            if form is None:
                return self._stale_form(request)
            fields = form
            ids = [i for i in re.split(r"[\s,]+", fields.get("recordings", "")) if i]
            until_text = fields.get("until", "").strip()
            until_us = _day_us(until_text, end=True) if until_text else None
            if not ids:
                error = "Name at least one recording (its id)."
            elif until_text and until_us is None:
                error = "The end date must be a date (YYYY-MM-DD)."
            else:
                until = from_micros(until_us) if until_us is not None else None
                try:
                    await run_in_threadpool(
                        lambda: self.retention.hold(
                            ids,
                            reason=fields.get("reason", ""),
                            until=until,
                            principal=user.principal,
                        )
                    )
                except (InvalidArgument, RecordingNotFound) as exc:
                    error = str(exc)
                else:
                    return self._see("/holds")

        def read() -> list[tuple[Any, int]]:
            catalog = self.vault.catalog
            found = [(h, len(catalog.hold_members(h.hold_id))) for h in catalog.holds()]
            return sorted(found, key=lambda x: x[0].created_at, reverse=True)

        rows = await run_in_threadpool(read)
        return self.render(
            request,
            "holds.html",
            400 if error else 200,
            session,
            user,
            holds=rows,
            now_us=int(self._now() * 1e6),
            error=error,
            fields=fields,
        )

    async def release_hold(self, request: Request, session: Session, user: User) -> Response:
        hold_id = request.path_params["hold_id"]
        if await self._form(request, session) is None:
            return self._stale_form(request)
        if not isinstance(hold_id, str) or not _RECORDING_ID.fullmatch(hold_id):
            return self._error(request, 404, "There is no such hold.", session, user)
        try:
            await run_in_threadpool(
                lambda: self.retention.release(hold_id, principal=user.principal)
            )
        except InvalidArgument:
            return self._error(request, 404, "There is no such hold.", session, user)
        return self._see("/holds")

    # -- the data-subject desk

    async def subject_requests(self, request: Request, session: Session, user: User) -> Response:
        """The data-subject requests, and a form to receive one (kind, caller number: the
        library keeps only its pseudonym)."""
        await run_in_threadpool(authorize, self.vault, user, "subject_requests")
        if request.method == "GET":
            return await self._requests_page(request, session, user)
        fields = await self._form(request, session)
        if fields is None:
            return self._stale_form(request)
        kind = fields.get("kind", "")
        phone = fields.get("phone", "").strip()
        if kind not in ("export", "erase"):
            error = "Choose the kind of request: access (export) or erasure."
        elif not phone:
            error = "Give the caller's number."
        else:
            try:
                await run_in_threadpool(
                    lambda: self.subjects.receive(kind, phone, principal=user.principal)  # type: ignore[arg-type]
                )
            except InvalidArgument as exc:
                error = str(exc)
            else:
                return self._see("/requests")
        return await self._requests_page(request, session, user, error, {"kind": kind})

    async def verify_request(self, request: Request, session: Session, user: User) -> Response:
        """Record how the requester's identity was verified (a method and a short note, never
        a copy of a document)."""
        await run_in_threadpool(authorize, self.vault, user, "subject_requests")
        request_id = request.path_params["request_id"]
        fields = await self._form(request, session)
        if fields is None:
            return self._stale_form(request)
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            return self._error(request, 404, "There is no such request.", session, user)
        try:
            check = IdentityCheck(fields.get("method", ""), fields.get("note", ""))  # type: ignore[arg-type]
            await run_in_threadpool(
                lambda: self.subjects.verify_identity(request_id, check, principal=user.principal)
            )
        except InvalidArgument as exc:
            return await self._requests_page(request, session, user, str(exc))
        return self._see("/requests")

    async def answer_request(self, request: Request, session: Session, user: User) -> Response:
        """Answer a request whose requester's identity is verified: an access request with its
        ZIP as a download (built in memory), an erasure by erasing (or deferring, under a
        hold). The caller's number is asked again: the library keeps only its pseudonym, and
        checks that the number is the request's."""
        await run_in_threadpool(authorize, self.vault, user, "subject_requests")
        request_id = request.path_params["request_id"]
        fields = await self._form(request, session)
        if fields is None:
            return self._stale_form(request)
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            return self._error(request, 404, "There is no such request.", session, user)

        def find() -> Any:
            return next((r for r in self.subjects.requests() if r.request_id == request_id), None)

        found = await run_in_threadpool(find)
        if found is None:
            return self._error(request, 404, "There is no such request.", session, user)
        phone = fields.get("phone", "").strip()
        try:
            if found.status == "done":
                raise InvalidArgument(f"request {request_id} was answered already.")
            if not phone:
                raise InvalidArgument("Give the caller's number again to answer the request.")
            if found.kind == "export":
                data = await run_in_threadpool(
                    lambda: self.subjects.subject_export_bytes(
                        phone, principal=user.principal, request=found
                    )
                )
                return Response(
                    data,
                    200,
                    headers={
                        "Content-Disposition": f'attachment; filename="{request_id}.zip"',
                        "Cache-Control": "no-store",
                    },
                    media_type="application/zip",
                )
            await run_in_threadpool(
                lambda: self.subjects.subject_erase(phone, principal=user.principal, request=found)
            )
        except InvalidArgument as exc:
            return await self._requests_page(request, session, user, str(exc))
        except InvalidRecording:
            return self._error(
                request,
                500,
                "A recording of this caller is damaged: nothing was exported (logged).",
                session,
                user,
            )
        return self._see("/requests")

    async def _requests_page(
        self,
        request: Request,
        session: Session,
        user: User,
        error: str | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> Response:
        def read() -> list[tuple[Any, int]]:
            today = self.clock.now().date()
            found = self.subjects.requests()
            rows = [(r, (from_micros(r.deadline).date() - today).days) for r in found]
            return sorted(rows, key=lambda x: x[0].received_at, reverse=True)

        rows = await run_in_threadpool(read)
        return self.render(
            request,
            "requests.html",
            400 if error else 200,
            session,
            user,
            requests=rows,
            methods=IDENTITY_METHODS,
            error=error,
            fields=fields or {},
        )

    async def usage_page(self, request: Request, session: Session, user: User) -> Response:
        """Page views per day and per role (no account, no address: there are none to show)."""
        await run_in_threadpool(authorize, self.vault, user, ("read_log", "manage_users"))
        rows = await run_in_threadpool(self.usage.table)
        return self.render(request, "usage.html", session=session, user=user, rows=rows)

    async def audit_page(self, request: Request, session: Session, user: User) -> Response:
        """What an auditor checks of the log without hearing a call: counts and checkpoints
        (entries read without the keyring: no personal field is opened)."""
        await run_in_threadpool(authorize, self.vault, user, "verify")

        def read() -> dict[str, Any]:
            self.log.flush()
            storage = self.store.log_storage
            notes, _ = split_records(storage.read_checkpoints())
            types: dict[str, int] = {}
            accesses: dict[tuple[str, str], int] = {}
            for entry in iter_entries(storage):
                types[entry.type_name] = types.get(entry.type_name, 0) + 1
                if entry.type_name == "access":
                    key = (str(entry.fields.get("action")), str(entry.fields.get("outcome")))
                    accesses[key] = accesses.get(key, 0) + 1
            return {
                "size": storage.size(),
                "checkpoints": len(notes),
                "latest": Checkpoint.parse(notes[-1]) if notes else None,
                "types": sorted(types.items()),
                "accesses": sorted(accesses.items()),
            }

        summary = await run_in_threadpool(read)
        return self.render(request, "audit.html", session=session, user=user, **summary)


# -- helpers


def _quote(path: str) -> str:
    return quote(path, safe="/")


def _recording_id(request: Request) -> str:
    value = request.path_params["recording_id"]
    if not isinstance(value, str) or not _RECORDING_ID.fullmatch(value):
        raise RecordingNotFound(str(value)[:64])
    return value


def _parse_range(header: str) -> tuple[int | None, int | None] | None:
    """``(start, end)`` (end inclusive; None: open) of a single byte range; ``(None, n)`` for
    the last n bytes; None for anything else (answered with the whole file, as RFC 9110
    allows)."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    a, b = match.groups()
    if not a and not b:
        return None
    if not a:
        return None, int(b)
    start = int(a)
    end = int(b) if b else None
    if end is not None and end < start:
        return None
    return start, end


def _day_us(text: str, *, end: bool) -> int | None:
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(day.timestamp() * 1_000_000) + (86_400_000_000 if end else 0)


def _matches(row: RecordingRow, f: Mapping[str, str]) -> bool:
    if f["queue"] and row.attrs.get("queue") != f["queue"]:
        return False
    if f["rule"] and row.rule != f["rule"]:
        return False
    if f["purpose"] and row.purpose != f["purpose"]:
        return False
    lo = _day_us(f["from"], end=False) if f["from"] else None
    hi = _day_us(f["to"], end=True) if f["to"] else None
    if lo is not None and row.started_at < lo:
        return False
    return not (hi is not None and row.started_at >= hi)


def _when(value: object) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, int):
        return from_micros(value).strftime("%Y-%m-%d %H:%M UTC")
    return ""
