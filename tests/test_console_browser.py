"""The console in a real browser (Playwright driving Debian's chromium, never a downloaded one),
served by uvicorn over loopback as ``http://localhost`` (a secure context, and a host name
WebAuthn accepts as rp id): security keys through Chromium's virtual authenticator (DevTools
protocol), an account locked by failed attempts and the delay shown, and a data-subject
request answered end to end. Each page's console shows no error and no CSP violation, and
screenshots are not blank.

The console runs on the test's fixed clock (tests/console_fixtures.py), so that the throttle's
delay passes by moving the clock, not by sleeping. Skips without chromium, except when
``SAMPLEDREC_REQUIRE_CHROMIUM=1`` or ``CI`` is set.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sampledrec.accounts import CONNECTION_ACTIONS, Throttle
from sampledrec.accounts.totp import code_at

from .console_fixtures import NEW_PASSWORD, PASSWORD, World, make_world
from .test_console import subject_world_call
from .test_console_door import _chromium, _not_blank

CALLER = "+33 6 12 34 56 78"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path, tls=False)


@contextlib.contextmanager
def serving(world: World) -> Iterator[str]:
    """The console served by uvicorn on a loopback port, in a thread; its URL as localhost."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        world.console.app,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="h11",
        ws="none",
        server_header=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://localhost:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


class Browser:
    """A Chromium page that records console problems and the status of every document."""

    def __init__(self, pw: Any, tmp: Path) -> None:
        self.browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        self.context = self.browser.new_context(accept_downloads=True)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.statuses: list[tuple[str, int]] = []
        self.tmp = tmp
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on(
            "response",
            lambda r: (
                self.statuses.append((r.url, r.status))
                if r.request.resource_type in ("document", "fetch")
                else None
            ),
        )

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(message.text)

    def unexpected_problems(self, *expected_statuses: int) -> list[str]:
        """Console problems other than the browser's own note of an expected error status
        (a 401, 403 or 429 page is the answer the test asked for)."""
        allowed = [f"status of {s} " for s in expected_statuses]
        return [p for p in self.problems if not any(a in p for a in allowed)]

    def shot(self, name: str) -> None:
        folder = self.tmp / name
        folder.mkdir()
        _not_blank(self.page.screenshot(), folder)

    def close(self) -> None:
        self.browser.close()


@contextlib.contextmanager
def chromium(tmp: Path) -> Iterator[Browser]:
    _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = Browser(pw, tmp)
        try:
            yield b
        finally:
            b.close()


def connection_events(world: World) -> list[tuple[str, str, str | None, str | None]]:
    return [
        (a["action"], a["outcome"], a["principal"], json.loads(a["detail"]).get("reason"))
        for a in world.accesses()
        if a["action"] in CONNECTION_ACTIONS
    ]


def password_step(page: Any, url: str, name: str, password: str) -> None:
    page.goto(f"{url}/sign-in")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("button[type=submit]")


def change_password(page: Any) -> None:
    page.fill("#password", NEW_PASSWORD)
    page.fill("#confirm", NEW_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Welcome')")


# -- security keys -------------------------------------------------------------------------


def test_in_chromium_a_virtual_security_key_enrols_then_signs_in(
    world: World, tmp_path: Path
) -> None:
    with serving(world) as url, chromium(tmp_path) as b:
        page = b.page
        cdp = b.context.new_cdp_session(page)
        cdp.send("WebAuthn.enable", {"enableUI": False})
        added = cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                    "automaticPresenceSimulation": True,
                }
            },
        )
        authenticator = added["authenticatorId"]
        password_step(page, url, "rita", PASSWORD)
        page.wait_for_selector("#key-button")
        assert page.is_visible("#key-button")  # the script showed it
        assert page.is_visible("#code")  # the TOTP fallback is on the same page
        b.shot("enrol.png")
        page.click("#key-button")
        page.wait_for_selector("#codes")
        assert len(page.query_selector_all("#codes li")) == 10
        page.click("#continue")
        change_password(page)
        b.shot("home.png")
        (credential,) = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})[
            "credentials"
        ]
        (stored,) = world.users.credentials("rita")
        assert stored.key_id == credential["credentialId"].replace("+", "-").replace(
            "/", "_"
        ).rstrip("=")
        # Sign out, and in again with the key.
        page.click("form.signout button")
        page.wait_for_selector("#name")
        password_step(page, url, "rita", NEW_PASSWORD)
        page.wait_for_selector("#key-button")
        assert page.is_visible("#code")
        page.click("#key-button")
        page.wait_for_selector("h1:has-text('Welcome')")
        b.shot("signed-in.png")
        # Add a second key from the account's page, then remove the first.
        page.goto(f"{url}/account/keys")
        page.wait_for_selector("#key-button")
        cdp.send(
            "WebAuthn.removeCredential",
            {"authenticatorId": authenticator, "credentialId": credential["credentialId"]},
        )
        page.click("#key-button")
        page.wait_for_selector("#keys tbody tr:nth-child(2)")  # the script reloaded the list
        assert len(world.users.credentials("rita")) == 2
        b.shot("keys.png")
        problems = b.unexpected_problems()
    assert not problems, problems
    (after,) = [k for k in world.users.credentials("rita") if k.key_id == stored.key_id]
    assert after.sign_count >= 1 and after.last_used_at is not None
    events = connection_events(world)
    assert ("enrol_second_factor", "success", "rita", "webauthn") in events
    assert ("second_factor", "success", "rita", "webauthn") in events
    assert not [e for e in events if e[1] == "failure"], events


def test_without_javascript_the_key_is_not_offered_and_totp_signs_in(
    world: World, tmp_path: Path
) -> None:
    from sampledrec.accounts import RelyingParty

    from .webauthn_authenticator import SoftAuthenticator

    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    world.users.enrol_totp("sam", secret)
    world.users.set_password("sam", NEW_PASSWORD, now_us=int(world.clock.now().timestamp() * 1e6))
    rp = RelyingParty("localhost", "http://localhost")
    options, challenge = world.console.auth.passkey_registration("sam", rp)
    world.console.auth.register_passkey(
        "sam", rp, SoftAuthenticator(origin="http://localhost").create(options), challenge,
        address="x", enrolling=False,
    )  # fmt: skip
    with serving(world) as url, chromium(tmp_path) as b:
        context = b.browser.new_context(java_script_enabled=False)
        page = context.new_page()
        page.on("console", b._console)
        password_step(page, url, "sam", NEW_PASSWORD)
        page.wait_for_selector("#code")
        assert page.query_selector("#key-button") is not None  # in the page, but hidden
        assert not page.is_visible("#key-button") and not page.is_visible("#use-key")
        page.fill("#code", code_at(secret, world.clock.now()))
        page.click("form[action='/sign-in/code'] button[type=submit]")
        page.wait_for_selector("h1:has-text('Welcome')")
        problems = b.unexpected_problems()
    assert not problems, problems
    assert ("second_factor", "success", "sam", None) in connection_events(world)


# -- throttling ----------------------------------------------------------------------------


def test_in_chromium_failed_attempts_lock_the_account_and_the_page_shows_the_wait(
    world: World, tmp_path: Path
) -> None:
    world.console.auth.throttle = Throttle(free=3, base=60.0)
    with serving(world) as url, chromium(tmp_path) as b:
        page = b.page
        for _ in range(4):
            password_step(page, url, "dora", "not the password at all")
            page.wait_for_selector("#error")
        # The fifth attempt, even with the right password, is refused unchecked.
        password_step(page, url, "dora", PASSWORD)
        page.wait_for_selector("#error")
        shown = page.text_content("#error") or ""
        assert re.search(r"try again in (\d+) seconds", shown), shown
        assert int(re.findall(r"\d+", shown)[0]) == 60
        b.shot("throttled.png")
        document_statuses = [s for u, s in b.statuses if "/sign-in" in u]
        assert document_statuses.count(401) == 4 and document_statuses[-1] == 429
        # After the delay (the clock moved, nobody slept), the right password goes through.
        world.clock.advance(seconds=61)
        password_step(page, url, "dora", PASSWORD)
        page.wait_for_selector("#secret")
        secret = (page.text_content("#secret") or "").strip()
        page.fill("#code", code_at(secret, world.clock.now()))
        page.click("form[action='/sign-in/enrol'] button[type=submit]")
        page.wait_for_selector("#codes")
        page.click("#continue")
        change_password(page)
        problems = b.unexpected_problems(401, 429)
    assert not problems, problems
    reasons = [e[3] for e in connection_events(world) if e[0] == "sign_in"]
    assert reasons == ["wrong password"] * 4 + ["throttled", None]


# -- the data-subject desk ------------------------------------------------------------------


def test_in_chromium_the_dpo_answers_an_access_and_an_erasure_request(
    world: World, tmp_path: Path
) -> None:
    recording = subject_world_call(world)
    with serving(world) as url, chromium(tmp_path) as b:
        page = b.page
        password_step(page, url, "dora", PASSWORD)
        page.wait_for_selector("#secret")
        secret = (page.text_content("#secret") or "").strip()
        page.fill("#code", code_at(secret, world.clock.now()))
        page.click("form[action='/sign-in/enrol'] button[type=submit]")
        page.click("#continue")
        change_password(page)
        world.clock.advance(seconds=31)
        page.click("a[href='/requests']")
        # Receive an access request.
        page.select_option("select[name=kind]", "export")
        page.fill("form.hold input[name=phone]", CALLER)
        page.click("#receive")
        page.wait_for_selector("#requests tbody tr")
        row = page.query_selector("#requests tbody tr")
        assert row is not None
        request_id = row.get_attribute("id") or ""
        assert re.fullmatch(r"req-[0-9a-f]{12}", request_id)
        text = row.text_content() or ""
        assert "31 day(s) left" in text and "not verified" in text
        assert "612345678" not in page.content()  # the number is kept as a pseudonym only
        # Record how the identity was verified (a method and a note, no document).
        page.select_option(f"#{request_id} select[name=method]", "callback_to_number")
        page.fill(f"#{request_id} input[name=note]", "called back the number on the contract")
        page.click(f"#verify-{request_id}")
        page.wait_for_selector(f"#answer-{request_id}")
        assert "verified (callback_to_number" in (page.text_content(f"#{request_id}") or "")
        b.shot("desk.png")
        # Answer: the ZIP downloads.
        page.fill(f"#{request_id} input[name=phone]", CALLER)
        with page.expect_download() as download_info:
            page.click(f"#answer-{request_id}")
        download = download_info.value
        assert download.suggested_filename == f"{request_id}.zip"
        data = Path(download.path()).read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert f"recordings/{recording}.wav" in zf.namelist()
            meta = json.loads(zf.read("metadata.json"))
        assert meta["request"]["id"] == request_id
        # Then an erasure request for the same caller.
        page.goto(f"{url}/requests")
        page.select_option("select[name=kind]", "erase")
        page.fill("form.hold input[name=phone]", CALLER)
        page.click("#receive")
        page.wait_for_selector("#requests tbody tr:nth-child(2)")
        ids = [row.get_attribute("id") for row in page.query_selector_all("#requests tbody tr")]
        (erase_id,) = [i for i in ids if i != request_id]  # (same time on the test's clock)
        assert erase_id and erase_id != request_id
        page.select_option(f"#{erase_id} select[name=method]", "signed_letter")
        page.fill(f"#{erase_id} input[name=note]", "letter signed as on the contract")
        page.click(f"#verify-{erase_id}")
        page.wait_for_selector(f"#answer-{erase_id}")
        page.fill(f"#{erase_id} input[name=phone]", CALLER)
        page.click(f"#answer-{erase_id}")
        page.wait_for_selector(f"#{erase_id}:has-text('1 recording(s) erased')")
        b.shot("erased.png")
        problems = b.unexpected_problems()
    assert not problems, problems
    statuses = {r.request_id: r.status for r in world.console.subjects.requests()}
    assert statuses == {request_id: "done", erase_id: "done"}
    row = world.console.vault.catalog.get(recording)
    assert row is None or row.status not in ("sealed", "truncated")
    principals = {a["principal"] for a in world.accesses() if a["action"].startswith("subject")}
    assert principals == {"dora"}
