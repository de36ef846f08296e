"""The reviewer's notes, the admin's and the auditor's pages in a real browser (Playwright
driving Debian's chromium), served by the web door as ``sampledrec serve`` wires it: the CLI
hands the door the store's audit (sampledrec.cli.serve.console_audit). Skips without
chromium, as tests/test_console_door.py does (and fails instead under CI or
SAMPLEDREC_REQUIRE_CHROMIUM=1)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sampledrec import Store
from sampledrec.accounts.totp import code_at
from sampledrec.cli.serve import console_audit
from sampledrec.log.writer import iter_entries
from sampledrec.serve import Server, ServerConfig

from .console_fixtures import NEW_PASSWORD, PASSWORD, POLICY, recorded_store, self_signed
from .test_console_door import _chromium, _not_blank, users_cli


@contextlib.contextmanager
def serving(store: Store, config: ServerConfig) -> Iterator[str]:
    """The server with the doors of ``config``, in a thread of its own; the web door's URL."""
    server = Server(store, config.doors, shutdown_grace=2)
    address: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        async def go() -> None:
            task = asyncio.create_task(server.run())
            address.append((await server.wait_ready()).get("web", ""))
            await task

        try:
            asyncio.run(go())
        except BaseException as exc:
            failure.append(exc)
            address.append("")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while not address:
        time.sleep(0.01)
    try:
        if failure:
            raise failure[0]
        yield address[0]
    finally:
        server.stop()
        thread.join(30)
        assert not thread.is_alive()


def browser_sign_in(page: Any, url: str, name: str) -> None:
    """First sign-in of ``name``: password, TOTP enrolment, the password changed."""
    page.goto(f"{url}/sign-in")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    secret = page.text_content("#secret")
    assert secret
    page.fill("#code", code_at(secret.strip(), datetime.now(UTC)))
    page.click("button[type=submit]")
    page.wait_for_selector("#codes")
    page.click("#continue")
    page.fill("#password", NEW_PASSWORD)
    page.fill("#confirm", NEW_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1")


NEW_POLICY = POLICY.replace('rate = "0"\npurpose = "quality"', 'rate = "0.02"\npurpose = "quality"')


def test_in_a_browser_notes_users_policy_and_the_audit_report(
    tmp_path: Path,
) -> None:
    exe = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    store, recordings = recorded_store(tmp_path, seconds=1.0)
    cert, key = self_signed(tmp_path)
    for name, role in (("ada", "admin"), ("aldo", "auditor"), ("rita", "qa_reviewer")):
        code, out = users_cli(store, "add", name, "--role", role, password=PASSWORD)
        assert code == 0, out
    config = ServerConfig.load(
        overrides={"web": {"listen": "127.0.0.1:0", "tls_cert": cert, "tls_key": key}}
    )
    console_audit(config, store)
    problems: list[str] = []
    shots: list[bytes] = []
    with serving(store, config) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            for who in ("rita", "ada", "aldo"):
                context = browser.new_context(ignore_https_errors=True)
                page = context.new_page()
                page.on(
                    "console",
                    lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
                )
                page.on("pageerror", lambda e: problems.append(str(e)))
                browser_sign_in(page, url, who)
                if who == "rita":
                    page.goto(f"{url}/recordings/{recordings['sales']}")
                    page.click("#notes-link")
                    page.fill("#note-text", "Greeting too quick; <script>alert(1)</script>")
                    page.click("#add-note")
                    page.wait_for_selector("#notes .note-text")
                    shown = page.text_content("#notes .note-text") or ""
                    assert shown == "Greeting too quick; <script>alert(1)</script>"
                    shots.append(page.screenshot(full_page=True))
                elif who == "ada":
                    page.click("nav >> text=Users")
                    page.fill("#new-name", "maria")
                    page.check("#add input[value=dpo]")
                    page.fill("#new-password", PASSWORD)
                    page.fill("#new-confirm", PASSWORD)
                    page.click("#add-account")
                    page.wait_for_selector("#account-maria")
                    assert "dpo" in (page.text_content("#account-maria") or "")
                    page.click("nav >> text=Policy")
                    page.fill("#policy-text", NEW_POLICY)
                    page.click("#preview")
                    page.wait_for_selector("#changes")
                    assert "starts recording" in (page.text_content("#warnings") or "")
                    shots.append(page.screenshot(full_page=True))
                    page.click("#apply")
                    page.wait_for_selector("#applied")
                else:
                    page.click("nav >> text=Audit report")
                    page.click("#run-audit")
                    page.wait_for_selector("#verdict", timeout=60_000)
                    assert page.query_selector("#checks") is not None
                    assert page.query_selector("audio") is None
                    page.click("nav >> text=Access log")
                    page.wait_for_selector("#accesses")
                    assert "account_change" in (page.text_content("#accesses") or "")
                    shots.append(page.screenshot(full_page=True))
                context.close()
        finally:
            browser.close()
    assert not problems, problems
    for n, shot in enumerate(shots):
        (tmp_path / f"shot-{n}").mkdir()
        _not_blank(shot, tmp_path / f"shot-{n}")
    assert store.policy().version != "" and "0.02" in store.policy_path.read_text()
    entries = [e.fields for e in iter_entries(store.log_storage, store.keyring)]
    assert any(f.get("action") == "account_change" and f.get("principal") == "ada" for f in entries)
    assert any(f.get("action") == "verify" and f.get("principal") == "aldo" for f in entries)
    assert any(f.get("action") == "review_note" and f.get("principal") == "rita" for f in entries)
