"""The console as ``sampledrec serve --web`` runs it: the door in a real server (uvicorn in the
server's event loop, TLS), accounts made with ``sampledrec users``, and a real browser
(Playwright driving Debian's chromium, never a downloaded one).

The browser test skips when chromium is missing, except when ``SAMPLEDREC_REQUIRE_CHROMIUM=1``
(``./dev test`` as root) or ``CI`` is set: there a missing browser fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sampledrec import Store
from sampledrec.accounts import CONNECTION_ACTIONS
from sampledrec.accounts.totp import code_at
from sampledrec.cli import main
from sampledrec.errors import InvalidArgument
from sampledrec.log.writer import iter_entries
from sampledrec.serve import Listen, Server, ServerConfig, WebConfig, web_door

from .console_fixtures import NEW_PASSWORD, PASSWORD, recorded_store, self_signed


def users_cli(store: Store, *argv: str, password: str | None = None) -> tuple[int, str]:
    out = io.StringIO()
    args = ["users", *argv, "--store", str(store.path)]
    if password is not None:
        path = store.path.parent / "password.txt"
        path.write_text(password + "\n")
        args += ["--password-file", str(path)]
    code = main(args, out=out)
    return code, out.getvalue()


@contextlib.contextmanager
def running(store: Store, config: WebConfig) -> Iterator[tuple[Server, str]]:
    """The server with its web door, in a thread of its own; its address."""
    server = Server(store, {"web": web_door(config)}, shutdown_grace=2)
    address: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        async def go() -> None:
            task = asyncio.create_task(server.run())
            addresses = await server.wait_ready()
            address.append(addresses.get("web", ""))
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
        yield server, address[0]
    finally:
        server.stop()
        thread.join(30)
        assert not thread.is_alive()


@pytest.fixture
def world(tmp_path: Path) -> tuple[Store, dict[str, str], WebConfig]:
    store, recordings = recorded_store(tmp_path)
    cert, key = self_signed(tmp_path)
    for name, role in (("rita", "qa_reviewer"), ("aldo", "auditor")):
        code, out = users_cli(store, "add", name, "--role", role, password=PASSWORD)
        assert code == 0, out
    return store, recordings, WebConfig(Listen("127.0.0.1", 0), tls_cert=cert, tls_key=key)


def test_users_cli_adds_lists_disables_and_logs_each_change(tmp_path: Path) -> None:
    store, _ = recorded_store(tmp_path, seconds=0.2)
    assert users_cli(store, "add", "maria", "--role", "dpo", password="password123")[0] == 2
    assert users_cli(store, "add", "maria", "--role", "nosuchrole", password=PASSWORD)[0] == 2
    assert users_cli(store, "add", "maria", "--role", "dpo", password=PASSWORD)[0] == 0
    assert users_cli(store, "roles", "maria", "--role", "dpo", "--role", "auditor")[0] == 0
    assert users_cli(store, "disable", "maria")[0] == 0
    code, out = users_cli(store, "list", "--json")
    assert code == 0
    import json

    (doc,) = json.loads(out)["users"]
    assert doc["roles"] == ["auditor", "dpo"] and doc["disabled"] is True
    assert "hash" not in out and PASSWORD not in out
    assert users_cli(store, "reset", "maria", "--second-factor")[0] == 0
    changes = [
        e.fields
        for e in iter_entries(store.log_storage, store.keyring)
        if e.type_name == "access" and e.fields["action"] == "account_change"
    ]
    assert [json.loads(c["detail"])["change"] for c in changes] == [
        "added",
        "roles",
        "disabled",
        "reset",
    ]


def test_the_web_door_is_refused_off_loopback_without_tls() -> None:
    with pytest.raises(InvalidArgument, match="needs TLS"):
        WebConfig(Listen("0.0.0.0", 8443))
    config = ServerConfig.load(overrides={"web": {"listen": "127.0.0.1:0"}})
    assert list(config.doors) == ["web"]


def test_the_door_serves_the_console_over_tls_and_stops_cleanly(
    world: tuple[Store, dict[str, str], WebConfig],
) -> None:
    import httpx2

    store, _, config = world
    with running(store, config) as (_, url):
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(config.tls_cert))
        with httpx2.Client(base_url=url, verify=context) as client:
            r = client.get("/sign-in")
            assert r.status_code == 200
            assert r.headers["strict-transport-security"].startswith("max-age=")
            assert r.cookies.get("__Host-sdr_session")
            assert client.get("/recordings").status_code == 303


# -- the browser -----------------------------------------------------------------------------------


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("SAMPLEDREC_REQUIRE_CHROMIUM") == "1" or os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium; ./dev test does)")
        pytest.skip("chromium is not installed (./dev test installs it when run as root)")
    return exe


def test_in_a_browser_sign_in_with_totp_and_play_a_recording_by_ranges(
    world: tuple[Store, dict[str, str], WebConfig], tmp_path: Path
) -> None:
    exe = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    store, recordings, config = world
    problems: list[str] = []
    audio_statuses: list[int] = []
    with running(store, config) as (_, url), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=exe,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(
                "response",
                lambda r: audio_statuses.append(r.status) if "audio.wav" in r.url else None,
            )
            rid = recordings["sales"]
            page.goto(f"{url}/recordings/{rid}")
            assert "/sign-in" in page.url  # sent to sign in, and back afterwards
            page.fill("#name", "rita")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            secret = page.text_content("#secret")
            assert secret
            page.fill("#code", code_at(secret.strip(), _now()))
            page.click("button[type=submit]")
            page.wait_for_selector("#codes")
            page.click("#continue")
            page.fill("#password", NEW_PASSWORD)
            page.fill("#confirm", NEW_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#player")
            assert page.url.endswith(f"/recordings/{rid}")
            _until(page, "document.getElementById('player').readyState >= 1")
            duration = page.evaluate("document.getElementById('player').duration")
            assert 3.5 < duration < 4.5
            page.evaluate("document.getElementById('player').play()")
            _until(page, "document.getElementById('player').currentTime > 0.2")
            shot = page.screenshot()
            # Out of scope: the support queue's recording.
            other = page.goto(f"{url}/recordings/{recordings['support']}")
            assert other is not None and other.status == 403
            assert "not allow" in (page.text_content("#error") or "")
        finally:
            browser.close()
    assert audio_statuses and set(audio_statuses) == {206}
    assert not [p for p in problems if "403" not in p], problems  # the 403 page's own status
    _not_blank(shot, tmp_path)
    store_log = [
        e.fields for e in iter_entries(store.log_storage, store.keyring) if e.type_name == "access"
    ]
    actions = [f["action"] for f in store_log if f["action"] in CONNECTION_ACTIONS]
    assert actions[:3] == ["sign_in", "enrol_second_factor", "password_change"]
    listens = [f for f in store_log if f["action"] == "listen"]
    assert listens and all(f["principal"] == "rita" for f in listens)
    assert any(f["outcome"] == "denied" and f["detail"] == "out of scope" for f in store_log)


def _now() -> datetime:
    return datetime.now(UTC)


def _until(page: Any, expression: str, seconds: float = 20.0) -> None:
    """Poll ``expression`` in the page (page.evaluate runs outside the page's CSP; Playwright's
    wait_for_function evaluates a string, which the console's CSP rightly refuses)."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {seconds} s: {expression}"
        time.sleep(0.05)


def _not_blank(png: bytes, tmp: Path) -> None:
    from PIL import Image

    path = tmp / "console.png"
    path.write_bytes(png)
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 4
