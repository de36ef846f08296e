"""The DPO's and the auditor's reports: the access log and the store's audit.

``/access-log``
    every ``access`` entry of the log (listens, exports, review notes, holds, denials,
    account changes, sign-ins), filtered by action, outcome and date, newest first
    (:func:`sampledrec.accounts.access_log`, which checks ``read_log`` and logs it).
``/audit/report`` (GET; POST runs it)
    the store's audit (the eight checks of ``sampledrec audit verify``): its verdict, each
    check, the findings, the rates' statistics and the notes; never audio. Needs ``verify``.
    The audit package is imported only by the CLI (an import-linter contract), so the console
    cannot run it by itself: ``sampledrec serve`` hands the console a function that runs it and
    returns its report as JSON (docs/decisions/0033). The page runs that function in a worker
    thread, one run at a time, and keeps the latest report in memory (who ran it, when).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...accounts import Session, User, access_log, authorize
from ...errors import InvalidArgument, SampledrecError
from .parts import ConsoleParts

__all__ = ["report_routes"]

#: The most findings the page lists (the count says how many there are).
MAX_FINDINGS: Final = 500


def report_routes(console: ConsoleParts) -> list[Route]:
    log = _AccessLogPage(console)
    audit = _AuditReportPage(console)
    page = console._page
    return [
        Route("/access-log", page(log.show)),
        Route("/audit/report", page(audit.report), methods=["GET", "POST"]),
    ]


class _AccessLogPage:
    def __init__(self, console: ConsoleParts) -> None:
        self.console = console

    async def show(self, request: Request, session: Session, user: User) -> Response:
        q = request.query_params
        filters = {k: q.get(k, "").strip() for k in ("action", "outcome", "from", "to")}
        error = None
        since = _day(filters["from"]) if filters["from"] else None
        until = _day(filters["to"]) if filters["to"] else None
        if (filters["from"] and since is None) or (filters["to"] and until is None):
            error = "Dates are days, written YYYY-MM-DD."
            since = until = None
        if until is not None:
            until += timedelta(days=1)  # "to" includes its whole day
        console = self.console
        found = await run_in_threadpool(
            lambda: access_log(
                console.store,
                console.vault,
                user,
                action=filters["action"] or None,
                outcome=filters["outcome"] or None,
                since=since,
                until=until,
            )
        )
        return console.render(
            request,
            "access_log.html",
            400 if error else 200,
            session,
            user,
            log=found,
            filters=filters,
            error=error,
        )


@dataclass(frozen=True)
class _Ran:
    report: Mapping[str, Any]
    by: str
    at: datetime


class _AuditReportPage:
    def __init__(self, console: ConsoleParts) -> None:
        self.console = console
        self.latest: _Ran | None = None
        self.running = asyncio.Lock()

    async def report(self, request: Request, session: Session, user: User) -> Response:
        console = self.console
        await run_in_threadpool(authorize, console.vault, user, "verify")
        status: int = 200
        error: str | None = None
        if request.method == "POST":
            if await console._form(request, session) is None:
                return console._stale_form(request)
            if console.audit is None:
                status = 503
                error = (
                    "This console cannot run the audit: start it with 'sampledrec serve "
                    "--web', or run 'sampledrec audit verify' (or 'audit report') from the CLI."
                )
            elif self.running.locked():
                status = 409
                error = "An audit is running already; open this page again in a moment to see it."
            else:
                async with self.running:
                    try:
                        done = await run_in_threadpool(self._run)
                    except SampledrecError as exc:
                        status, error = 500, f"The audit could not run: {exc}"
                    else:
                        self.latest = _Ran(done, user.name, console.clock.now())
        ran = self.latest
        report = ran.report if ran is not None else None
        findings = list(report.get("findings", [])) if report is not None else []
        return console.render(
            request,
            "audit_report.html",
            status,
            session,
            user,
            ran=ran,
            report=report,
            findings=findings[:MAX_FINDINGS],
            findings_count=len(findings),
            can_run=console.audit is not None,
            error=error,
        )

    def _run(self) -> Mapping[str, Any]:
        assert self.console.audit is not None
        self.console.log.flush()  # what was logged until now is in the audit
        report = self.console.audit()
        if not isinstance(report, dict) or "verdict" not in report:
            raise InvalidArgument("the audit function did not return an audit report")
        return report


def _day(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
