"""The console's security-key pages: WebAuthn registration and sign-in, over JSON.

The browser's WebAuthn API needs JavaScript: ``static/webauthn.js`` (loaded with
``<script src>``, the CSP stays ``default-src 'self'``) asks for options, runs the ceremony and
posts the answer. Every page that offers a key still offers a TOTP code without JavaScript.
The checks are the library's (:class:`sampledrec.accounts.Authenticator`); this module keeps
each challenge in the session that asked for it and hands it back once.

Routes (POST unless said; the JSON ones need the session's CSRF token in ``X-CSRF-Token`` and
``Content-Type: application/json``, which no other site's form can send):

``/sign-in/key/options``, ``/sign-in/key``
    the second factor with a security key (session at the second-factor step).
``/sign-in/enrol/key/options``, ``/sign-in/enrol/key``
    a security key as the first second factor (session at the enrolment step); recovery codes
    are then shown once at ``/sign-in/codes`` (GET).
``/account/keys`` (GET: the list; POST: add one), ``/account/keys/options``,
``/account/keys/{key_id}/remove`` (a form)
    a signed-in account's keys: list, add one (within :data:`FRESH_SIGN_IN_SECONDS` of
    the password step), remove one.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...accounts import (
    Challenge,
    RelyingParty,
    Session,
    Stage,
    User,
)
from ...errors import AuthenticationFailed, InvalidArgument, SignInThrottled
from .parts import ConsoleParts
from .redirects import quote_path, safe_next

__all__ = ["SecurityKeyPages", "relying_party"]

_MAX_BODY: Final = 64 * 1024
#: A key is added only this soon after the password was checked: a session taken over later
#: (a stolen cookie) cannot plant its own key for good.
FRESH_SIGN_IN_SECONDS: Final = 900.0
_STALE: Final = (
    "This form has expired or did not come from this console. Open the page again and resubmit."
)


def relying_party(settings: Any, request: Request) -> RelyingParty | None:
    """The console as WebAuthn sees it: ``[web] webauthn_rp_id`` (and ``webauthn_origin``,
    else ``https://RP_ID`` with the port the request came to), or ``localhost`` when the page
    was asked for as ``localhost``; None when neither (security keys are then not offered:
    an IP address cannot be an rp id)."""
    rp_id = getattr(settings, "webauthn_rp_id", None)
    origin = getattr(settings, "webauthn_origin", None)
    if rp_id is None:
        if request.url.hostname != "localhost":
            return None
        rp_id = "localhost"
    if origin is None:
        scheme = "https" if settings.tls else "http"
        server = request.scope.get("server")
        port = server[1] if server else None
        default = 443 if scheme == "https" else 80
        origin = f"{scheme}://{rp_id}" + (f":{port}" if port and port != default else "")
    try:
        return RelyingParty(rp_id, origin)
    except InvalidArgument:
        return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


class SecurityKeyPages:
    """The routes above, for one :class:`~sampledrec.serve.console.Console` (``console``)."""

    def __init__(self, console: ConsoleParts) -> None:
        self.c = console

    def routes(self) -> list[BaseRoute]:
        page = self.c._page
        return [
            Route("/sign-in/key/options", self.sign_in_options, methods=["POST"]),
            Route("/sign-in/key", self.sign_in, methods=["POST"]),
            Route("/sign-in/enrol/key/options", self.enrol_options, methods=["POST"]),
            Route("/sign-in/enrol/key", self.enrol, methods=["POST"]),
            Route("/sign-in/codes", self.codes),
            Route("/account/keys", page(self.keys), methods=["GET", "POST"]),
            Route("/account/keys/options", page(self.add_options), methods=["POST"]),
            Route("/account/keys/{key_id}/remove", page(self.remove), methods=["POST"]),
        ]

    # -- helpers

    async def _json(self, request: Request, session: Session | None) -> dict[str, Any] | None:
        """The request's JSON object, or None when its CSRF token is not the session's or it
        is not JSON."""
        if session is None or not session.csrf_ok(request.headers.get("x-csrf-token")):
            return None
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return None
        body = await request.body()
        if len(body) > _MAX_BODY:
            return None
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    @staticmethod
    def _refused(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse(
            {"error": message}, status, headers={"Cache-Control": "no-store", **(headers or {})}
        )

    def _failed(self, exc: AuthenticationFailed) -> Response:
        if isinstance(exc, SignInThrottled):
            return self._refused(429, str(exc), {"Retry-After": str(int(exc.retry_after + 0.999))})
        return self._refused(
            401, "The security key's answer was refused. Try again, or use a code instead."
        )

    def _rp(self, request: Request) -> RelyingParty | None:
        return relying_party(self.c.settings, request)

    async def _ceremony(
        self, request: Request, session: Session | Response, signed_in: bool = False
    ) -> tuple[Session, RelyingParty, dict[str, Any]] | Response:
        """The session, relying party and JSON body of a ceremony request, or the answer
        refusing it."""
        if isinstance(session, Response):
            return session
        body = await self._json(request, session)
        if body is None:
            return self._refused(403, _STALE)
        rp = self._rp(request)
        if rp is None:
            return self._refused(
                404,
                "Security keys are not set up for this address of the console: use a code, "
                "or ask the administrator to set [web] webauthn_rp_id.",
            )
        return session, rp, body

    # -- sign-in with a key

    async def sign_in_options(self, request: Request) -> Response:
        got = await self._ceremony(request, await self.c._step(request, "second_factor"))
        if isinstance(got, Response):
            return got
        session, rp, _ = got
        assert session.user is not None
        try:
            options, challenge = await run_in_threadpool(
                self.c.auth.passkey_authentication, session.user, rp
            )
        except AuthenticationFailed as exc:
            return self._failed(exc)
        session.pending_challenge = challenge
        return JSONResponse({"publicKey": options}, headers={"Cache-Control": "no-store"})

    async def sign_in(self, request: Request) -> Response:
        got = await self._ceremony(request, await self.c._step(request, "second_factor"))
        if isinstance(got, Response):
            return got
        session, rp, body = got
        assert session.user is not None
        name = session.user
        challenge: Challenge | None = session.pending_challenge
        session.pending_challenge = None  # one use, whatever the answer
        target = safe_next(body.get("next"))
        try:
            nxt = await run_in_threadpool(
                lambda: self.c.auth.check_passkey(
                    name,
                    rp,
                    body.get("credential"),
                    challenge,
                    address=session.address,
                )
            )
        except AuthenticationFailed as exc:
            return self._failed(exc)
        if nxt == "change_password":
            fresh = self.c.sessions.advance(session, "change_password", now=self.c._now())
            url = f"/sign-in/password?next={quote_path(target)}"
        else:
            fresh = self.c.sessions.advance(session, "signed_in", now=self.c._now())
            url = target
        return self.c._with_cookie(JSONResponse({"next": url}), fresh)

    # -- a key as the first second factor

    async def enrol_options(self, request: Request) -> Response:
        got = await self._ceremony(request, await self.c._step(request, "enrol"))
        if isinstance(got, Response):
            return got
        session, rp, _ = got
        assert session.user is not None
        return await self._registration_options(session, rp)

    async def _registration_options(self, session: Session, rp: RelyingParty) -> Response:
        assert session.user is not None
        try:
            options, challenge = await run_in_threadpool(
                self.c.auth.passkey_registration, session.user, rp
            )
        except AuthenticationFailed as exc:
            return self._failed(exc)
        session.pending_challenge = challenge
        return JSONResponse({"publicKey": options}, headers={"Cache-Control": "no-store"})

    async def _register(
        self, session: Session, rp: RelyingParty, body: dict[str, Any], *, enrolling: bool
    ) -> list[str] | Response:
        name = session.user
        assert name is not None
        challenge: Challenge | None = session.pending_challenge
        session.pending_challenge = None
        try:
            return list(
                await run_in_threadpool(
                    lambda: self.c.auth.register_passkey(
                        name,
                        rp,
                        body.get("credential"),
                        challenge,
                        address=session.address,
                        enrolling=enrolling,
                    )
                )
            )
        except AuthenticationFailed as exc:
            return self._failed(exc)

    async def enrol(self, request: Request) -> Response:
        got = await self._ceremony(request, await self.c._step(request, "enrol"))
        if isinstance(got, Response):
            return got
        session, rp, body = got
        assert session.user is not None
        codes = await self._register(session, rp, body, enrolling=True)
        if isinstance(codes, Response):
            return codes
        target = safe_next(body.get("next"))
        name = session.user
        try:
            nxt = await run_in_threadpool(
                lambda: self.c.auth.finish_enrolment(name, address=session.address)
            )
        except AuthenticationFailed as exc:
            return self._failed(exc)
        stage: Stage = "change_password" if nxt == "change_password" else "signed_in"
        fresh = self.c.sessions.advance(session, stage, now=self.c._now())
        fresh.pending_secret = None
        fresh.show_codes = codes
        then = (
            f"/sign-in/password?next={quote_path(target)}" if stage == "change_password" else target
        )
        url = f"/sign-in/codes?then={quote_path(then)}" if codes else then
        return self.c._with_cookie(JSONResponse({"next": url}), fresh)

    async def codes(self, request: Request) -> Response:
        """The recovery codes of a key enrolment, shown once."""
        session = await self.c._session(request)
        then = safe_next(request.query_params.get("then"))
        if session is None or session.stage not in ("change_password", "signed_in"):
            return RedirectResponse("/sign-in", status_code=303)
        if not session.show_codes:
            return RedirectResponse(then, status_code=303)
        codes, session.show_codes = session.show_codes, []
        return self.c.render(request, "codes.html", session=session, codes=codes, then=then)

    # -- a signed-in account's keys

    async def keys(self, request: Request, session: Session, user: User) -> Response:
        if request.method == "POST":
            return await self.add(request, session, user)
        return await self.keys_page(request, session, user)

    async def keys_page(
        self, request: Request, session: Session, user: User, error: str | None = None
    ) -> Response:
        keys = await run_in_threadpool(self.c.users.credentials, user.name)
        return self.c.render(
            request,
            "keys.html",
            400 if error else 200,
            session,
            user,
            keys=keys,
            offer=self._rp(request) is not None,
            error=error,
        )

    def _stale_sign_in(self, session: Session) -> Response | None:
        if self.c._now() - session.created_at <= FRESH_SIGN_IN_SECONDS:
            return None
        return self._refused(
            403,
            "To add a security key, sign out and sign in again: your sign-in is more than "
            f"{int(FRESH_SIGN_IN_SECONDS // 60)} minutes old.",
        )

    async def add_options(self, request: Request, session: Session, user: User) -> Response:
        got = await self._ceremony(request, session)
        if isinstance(got, Response):
            return got
        stale = self._stale_sign_in(session)
        if stale is not None:
            return stale
        return await self._registration_options(session, got[1])

    async def add(self, request: Request, session: Session, user: User) -> Response:
        got = await self._ceremony(request, session)
        if isinstance(got, Response):
            return got
        stale = self._stale_sign_in(session)
        if stale is not None:
            session.pending_challenge = None
            return stale
        codes = await self._register(session, got[1], got[2], enrolling=False)
        if isinstance(codes, Response):
            return codes
        return JSONResponse({"next": "/account/keys"}, headers={"Cache-Control": "no-store"})

    async def remove(self, request: Request, session: Session, user: User) -> Response:
        if await self.c._form(request, session) is None:
            return self.c._stale_form(request)
        key_id = request.path_params["key_id"]
        credential_id = _unb64(key_id) if isinstance(key_id, str) and len(key_id) < 1400 else None
        keys = await run_in_threadpool(self.c.users.credentials, user.name)
        if credential_id is None or all(k.credential_id != credential_id for k in keys):
            return self.c._error(request, 404, "There is no such security key.", session, user)
        if len(keys) == 1 and not user.totp:
            return await self.keys_page(
                request,
                session,
                user,
                "This is your only second factor: add another security key first.",
            )
        await run_in_threadpool(
            lambda: self.c.auth.remove_passkey(user.name, credential_id, address=session.address)
        )
        return self.c._see("/account/keys")
