"""The admin's pages: the console's accounts and their roles, and applying a policy.

``/admin/users`` (GET, POST), ``/admin/users/{name}/roles|disable|enable|reset`` (POST)
    list the accounts; add one with a temporary password (strength checked; changed at its
    first sign-in, with a second factor enrolled then); assign and remove roles of the policy
    in force; disable, enable; reset the password and/or the second factor. Every change is
    made, checked (``manage_users``) and logged by :class:`sampledrec.accounts.Accounts`, the
    same code as ``sampledrec users``. Disabling or resetting an account ends its sessions.
``/admin/policy`` (GET), ``/admin/policy/preview`` (POST), ``/admin/policy/apply`` (POST)
    paste or upload a policy, see what it changes and the guardrail messages
    (:func:`sampledrec.accounts.preview_policy`, what ``sampledrec policy apply`` prints), then
    confirm: :func:`sampledrec.accounts.apply_policy` applies exactly the version previewed,
    over the policy it was compared with (``manage_policy``; logged).
"""

from __future__ import annotations

import re
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...accounts import Accounts, Session, User, apply_policy, authorize, preview_policy
from ...accounts.users import USER_NAME
from ...errors import InvalidArgument, InvalidPolicy, StoreError
from ...vault.access import OWNER
from .parts import ConsoleParts

__all__ = ["admin_routes"]

#: The largest policy file the page takes (a policy is a few kilobytes of TOML).
MAX_POLICY_BYTES: Final = 256 * 1024
_VERSION: Final = re.compile(r"[0-9a-f]{64}")


def admin_routes(console: ConsoleParts) -> list[Route]:
    users = _UsersPage(console)
    policy = _PolicyPage(console)
    page = console._page
    return [
        Route("/admin/users", page(users.list_or_add), methods=["GET", "POST"]),
        Route("/admin/users/{name}/{change}", page(users.change), methods=["POST"]),
        Route("/admin/policy", page(policy.show)),
        Route("/admin/policy/preview", page(policy.preview), methods=["POST"]),
        Route("/admin/policy/apply", page(policy.apply), methods=["POST"]),
    ]


class _UsersPage:
    def __init__(self, console: ConsoleParts) -> None:
        self.console = console
        self.accounts = Accounts(console.users, console.vault, clock=console.clock)

    def _roles(self) -> list[str]:
        policy = self.console.store.policy(self.console.clock.now())
        return sorted(r for r in policy.roles if r != OWNER)

    async def _render(
        self,
        request: Request,
        session: Session,
        user: User,
        *,
        error: str | None = None,
        done: str | None = None,
        fields: dict[str, Any] | None = None,
    ) -> Response:
        found = await run_in_threadpool(self.accounts.list, user.principal)
        return self.console.render(
            request,
            "admin_users.html",
            400 if error else 200,
            session,
            user,
            accounts=found,
            roles=self._roles(),
            error=error,
            done=done,
            fields=fields or {},
        )

    async def list_or_add(self, request: Request, session: Session, user: User) -> Response:
        if request.method == "GET":
            done = request.query_params.get("done")
            return await self._render(request, session, user, done=done if done in _DONE else None)
        fields = await self.console._form(request, session)
        if fields is None:
            return self.console._stale_form(request)
        roles = await _roles_of(request)
        name = fields.get("name", "").strip()
        password = fields.get("password", "")
        kept = {"name": name, "roles": roles}
        if password != fields.get("confirm", ""):
            error = "The two passwords differ."
        else:
            try:
                await run_in_threadpool(
                    lambda: self.accounts.add(user.principal, name, roles, password)
                )
            except InvalidArgument as exc:
                error = str(exc)
            else:
                return self.console._see("/admin/users?done=added")
        return await self._render(request, session, user, error=error, fields=kept)

    async def change(self, request: Request, session: Session, user: User) -> Response:
        name = request.path_params["name"]
        change = request.path_params["change"]
        fields = await self.console._form(request, session)
        if fields is None:
            return self.console._stale_form(request)
        if not isinstance(name, str) or not USER_NAME.fullmatch(name) or change not in _DONE:
            return self.console._error(request, 404, "There is no such page.", session, user)
        by = user.principal
        try:
            if change == "roles":
                roles = await _roles_of(request)
                await run_in_threadpool(lambda: self.accounts.set_roles(by, name, roles))
            elif change in ("disable", "enable"):
                off = change == "disable"
                await run_in_threadpool(lambda: self.accounts.set_disabled(by, name, off))
            else:
                password = fields.get("password", "")
                if password != fields.get("confirm", ""):
                    raise InvalidArgument("The two passwords differ.")
                second = fields.get("second_factor") == "on"
                await run_in_threadpool(
                    lambda: self.accounts.reset(
                        by, name, password=password or None, second_factor=second
                    )
                )
        except InvalidArgument as exc:
            return await self._render(request, session, user, error=str(exc))
        if change in ("disable", "reset"):
            self.console.sessions.drop_user(name)  # its sessions end now, not at next request
        return self.console._see(f"/admin/users?done={change}")


_DONE: Final = ("added", "roles", "disable", "enable", "reset")


async def _roles_of(request: Request) -> list[str]:
    form = await request.form()  # read once by the CSRF check; Starlette keeps it
    return [r for r in form.getlist("role") if isinstance(r, str)]


class _PolicyPage:
    def __init__(self, console: ConsoleParts) -> None:
        self.console = console

    def _current(self) -> tuple[str | None, str]:
        store = self.console.store
        try:
            version = store.policy(self.console.clock.now()).version
        except StoreError:
            return None, ""
        try:
            text = (store.path / "policies" / f"{version}.toml").read_text("utf-8")
        except OSError:
            text = ""
        return version, text

    async def show(self, request: Request, session: Session, user: User) -> Response:
        await run_in_threadpool(authorize, self.console.vault, user, "manage_policy")
        version, text = await run_in_threadpool(self._current)
        applied = request.query_params.get("applied", "")
        return self.console.render(
            request,
            "admin_policy.html",
            session=session,
            user=user,
            version=version,
            text=text,
            applied=applied if _VERSION.fullmatch(applied) else None,
        )

    async def _text(self, request: Request) -> str | None:
        """The policy given: the uploaded file if any, else the pasted text (None when
        neither, or too large, or not UTF-8)."""
        form = await request.form()  # parsed once by the CSRF check; Starlette keeps it
        upload = form.get("file")
        if isinstance(upload, UploadFile):
            try:  # an empty file input is an upload without a name: closed all the same
                data = await upload.read(MAX_POLICY_BYTES + 1) if upload.filename else b""
            finally:
                await upload.close()
            if len(data) > MAX_POLICY_BYTES:
                return None
            if data:
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    return None
        text = form.get("text")
        return text.replace("\r\n", "\n") if isinstance(text, str) and text.strip() else None

    async def preview(self, request: Request, session: Session, user: User) -> Response:
        fields = await self.console._form(request, session)
        if fields is None:
            return self.console._stale_form(request)
        text = await self._text(request)
        if text is None:  # otherwise preview_policy checks (once: one access entry)
            await run_in_threadpool(authorize, self.console.vault, user, "manage_policy")
        version, current_text = await run_in_threadpool(self._current)
        context: dict[str, Any] = {"version": version, "text": text or current_text}
        if text is None:
            context["error"] = (
                f"Paste the policy, or choose a UTF-8 TOML file of at most "
                f"{MAX_POLICY_BYTES // 1024} KiB."
            )
            return self.console.render(request, "admin_policy.html", 400, session, user, **context)
        try:
            found = await run_in_threadpool(
                lambda: preview_policy(
                    self.console.store,
                    self.console.vault,
                    user,
                    text,
                    users=self.console.users,
                )
            )
        except InvalidPolicy as exc:
            context["refused"] = str(exc)
            return self.console.render(request, "admin_policy.html", 400, session, user, **context)
        context["preview"] = found
        return self.console.render(
            request, "admin_policy.html", session=session, user=user, **context
        )

    async def apply(self, request: Request, session: Session, user: User) -> Response:
        fields = await self.console._form(request, session)
        if fields is None:
            return self.console._stale_form(request)
        text = fields.get("text", "").replace("\r\n", "\n")
        version = fields.get("version", "")
        replacing = fields.get("replacing") or None
        try:
            applied = await run_in_threadpool(
                lambda: apply_policy(
                    self.console.store,
                    self.console.vault,
                    user,
                    text,
                    version=version,
                    replacing=replacing,
                )
            )
        except InvalidArgument as exc:
            current, current_text = await run_in_threadpool(self._current)
            return self.console.render(
                request,
                "admin_policy.html",
                409 if not isinstance(exc, InvalidPolicy) else 400,
                session,
                user,
                version=current,
                text=text or current_text,
                error=str(exc),
            )
        return self.console._see(f"/admin/policy?applied={applied.version}")
