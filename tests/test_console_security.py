"""The console against the usual web attacks: session fixation, CSRF on every POST route (the
routes are read from the application, so a new one is covered without editing this file), IDOR
on recording ids, path traversal, open redirects, what makes sign-in answers take the same time
(proved by instrumenting the checks, never by timing them), and no plaintext audio on disk
during a playback."""

from __future__ import annotations

import hmac
import json
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import pytest
from argon2 import PasswordHasher
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from sampledrec import Principal
from sampledrec.accounts import CONNECTION_ACTIONS, Accounts
from sampledrec.accounts.totp import code_at, matching_step
from sampledrec.vault.audio import synthetic_speech

from .console_fixtures import (
    NEW_PASSWORD,
    PASSWORD,
    World,
    csrf_of,
    make_world,
    sign_in,
)
from .test_console_browser import serving
from .webauthn_authenticator import SoftAuthenticator

COOKIE = "__Host-sdr_session"
ALL_ROLES = ["admin", "auditor", "dpo", "qa_reviewer", "supervisor"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


# -- session fixation ------------------------------------------------------------------------------


def test_the_session_id_changes_at_each_privilege_step_and_each_old_id_is_dead(
    world: World,
) -> None:
    c = world.client()
    seen: list[str] = []

    def note() -> None:
        sid = c.cookies.get(COOKIE)
        assert sid
        if not seen or seen[-1] != sid:
            seen.append(sid)

    page = c.get("/sign-in")
    note()
    r = c.post("/sign-in", data={"csrf": csrf_of(page.text), "name": "rita", "password": PASSWORD})
    note()  # password checked: enrolment step
    page = c.get(r.headers["location"])
    secret = re.search(r'<code id="secret">([A-Z2-7]+)</code>', page.text)
    assert secret
    r = c.post(
        "/sign-in/enrol",
        data={"csrf": csrf_of(page.text), "code": code_at(secret.group(1), world.clock.now())},
    )
    note()  # second factor enrolled: password change step
    then = re.search(r'id="continue" href="([^"]+)"', r.text)
    assert then
    page = c.get(then.group(1))
    r = c.post(
        "/sign-in/password",
        data={"csrf": csrf_of(page.text), "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    note()  # signed in
    assert c.get("/").status_code == 200
    assert len(seen) == 4 and len(set(seen)) == 4, seen
    # A later sign-in: anonymous, then second factor, then signed in, each under a new id.
    world.clock.advance(seconds=31)
    c2 = world.client()
    page = c2.get("/sign-in")
    first = c2.cookies.get(COOKIE)
    r = c2.post(
        "/sign-in", data={"csrf": csrf_of(page.text), "name": "rita", "password": NEW_PASSWORD}
    )
    middle = c2.cookies.get(COOKIE)
    page = c2.get(r.headers["location"])
    c2.post("/sign-in/code", data={"csrf": csrf_of(page.text), "code": world.code("rita")})
    last = c2.cookies.get(COOKIE)
    assert len({first, middle, last}) == 3
    # Every old id is dead: the session store has forgotten it, and a client presenting it
    # is sent to sign in (from a page) or back to the start (from a step).
    for old in [*seen[:-1], first, middle]:
        assert old is not None
        assert world.console.sessions.get(old, now=world.clock.now().timestamp()) == (None, None)
        stranger = world.client()
        stranger.cookies.set(COOKIE, old)
        r = stranger.get("/recordings")
        assert r.status_code == 303 and r.headers["location"].startswith("/sign-in?")
        for step in ("/sign-in/code", "/sign-in/enrol", "/sign-in/password"):
            r = stranger.get(step)
            assert r.status_code == 303 and r.headers["location"] == "/sign-in"


# -- CSRF on every POST route ----------------------------------------------------------------------

#: The session step each sign-in route is reached at; every other POST route is a signed-in page.
STEP_OF = {
    "/sign-in": "anonymous",
    "/sign-in/code": "second_factor",
    "/sign-in/key/options": "second_factor",
    "/sign-in/key": "second_factor",
    "/sign-in/enrol": "enrol",
    "/sign-in/enrol/key/options": "enrol",
    "/sign-in/enrol/key": "enrol",
    "/sign-in/password": "change_password",
}


def post_routes(world: World) -> list[str]:
    routes = [
        r.path
        for r in world.console.app.routes
        if isinstance(r, Route) and r.methods and "POST" in r.methods
    ]
    assert not [r for r in world.console.app.routes if not isinstance(r, Route | Mount)]
    return routes


def boss(world: World) -> Principal:
    """An account holding every role (so that no refusal is a permission's)."""
    accounts = Accounts(world.users, world.console.vault, clock=world.clock)
    accounts.add(Principal.owner(), "boss", ALL_ROLES, PASSWORD)
    world.users.enrol_totp("boss", "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    world.users.set_password("boss", NEW_PASSWORD, now_us=int(world.clock.now().timestamp() * 1e6))
    return Principal("boss", tuple(ALL_ROLES))


def path_values(world: World) -> dict[str, str]:
    """A real value for each path parameter of the console's routes."""
    hold = world.console.retention.hold(
        [world.recordings["sales"]], reason="csrf test", principal=None
    )
    request = world.console.subjects.receive("export", "+33 1 23 45 67 89", principal=None)
    key = SoftAuthenticator()
    options, challenge = world.console.auth.passkey_registration("boss", _rp())
    world.console.auth.register_passkey(
        "boss", _rp(), key.create(options), challenge, address="x", enrolling=False
    )
    (stored,) = world.users.credentials("boss")
    return {
        "recording_id": world.recordings["sales"],
        "hold_id": hold.hold_id,
        "request_id": request.request_id,
        "key_id": stored.key_id,
        "name": "rita",
        "change": "disable",
    }


def _rp() -> Any:
    from sampledrec.accounts import RelyingParty

    return RelyingParty("localhost", "https://localhost")


def at_step(world: World, step: str) -> tuple[TestClient, str]:
    """A client whose session is at ``step`` (for boss), and its CSRF token."""
    now = world.clock.now().timestamp()
    session = world.console.sessions.new(now=now, address="test")
    if step != "anonymous":
        session = world.console.sessions.advance(session, step, now=now, user="boss")  # type: ignore[arg-type]
    c = TestClient(world.console.app, base_url="https://localhost", follow_redirects=False)
    c.cookies.set(COOKIE, session.sid)
    return c, session.csrf


def concrete(path: str, values: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        assert name in values, f"add a real value for path parameter {name!r} to path_values()"
        return values[name]

    return re.sub(r"\{([^}]+)\}", fill, path)


def test_every_post_route_refuses_a_missing_forged_or_foreign_csrf_token(world: World) -> None:
    boss(world)
    values = path_values(world)
    routes = post_routes(world)
    assert {"/sign-in", "/sign-out", "/holds", "/sign-in/key", "/account/keys"} <= set(routes)
    world.log.flush()
    before = len(world.accesses())
    other_token = csrf_of(world.client().get("/sign-in").text)
    for route in routes:
        url = concrete(route, values)
        step = STEP_OF.get(route, "signed_in")
        for token in (None, "forged", other_token):
            c, good = at_step(world, step)
            assert token != good
            # The same request as a form and as JSON (the security-key routes take JSON).
            form = {"csrf": token} if token else {}
            headers = {"X-CSRF-Token": token} if token else {}
            for kwargs in ({"data": form}, {"json": {}, "headers": headers}):
                r = c.post(url, **kwargs)  # type: ignore[arg-type]
                assert r.status_code == 403, (route, token, kwargs, r.status_code, r.text[:200])
                assert "did not come from this console" in r.text, (route, r.text[:300])
            # The session is still there (a forged form does not sign anybody out).
            assert c.cookies.get(COOKIE)
            sid = c.cookies.get(COOKIE)
            assert world.console.sessions.get(sid, now=world.clock.now().timestamp())[0]
    # Nothing happened: no state change entry, no connection event, no export.
    new = world.accesses()[before:]
    assert not [a for a in new if a["action"] in CONNECTION_ACTIONS]
    assert not [a for a in new if a["action"] in ("export", "listen", "account_change")]
    assert [h.hold_id for h in world.console.vault.catalog.holds()] == [values["hold_id"]]
    (request,) = world.console.subjects.requests()
    assert request.status == "open" and not request.identity_verified
    assert len(world.users.credentials("boss")) == 1
    rita = world.users.get("rita")
    assert rita is not None and not rita.disabled


# -- IDOR ------------------------------------------------------------------------------------------


def test_another_queues_recording_is_refused_and_logged_and_an_unknown_one_looks_alike(
    world: World,
) -> None:
    c = world.client()
    sign_in(world, c, "rita")  # QA reviewer of the sales queue
    token = csrf_of(c.get("/").text)
    other = world.recordings["support"]
    missing = "00000000-0000-4000-8000-000000000000"
    answers: dict[str, list[Any]] = {}
    for rid in (other, missing):
        answers[rid] = [
            c.get(f"/recordings/{rid}"),
            c.get(f"/recordings/{rid}/audio.wav", headers={"Range": "bytes=0-99"}),
            c.post(f"/recordings/{rid}/export.wav", data={"csrf": token}),
        ]
    for got in answers[other]:
        assert got.status_code == 403
    denied = [a for a in world.accesses() if a.get("recording_id") == other]
    assert [(a["action"], a["outcome"]) for a in denied] == [
        ("list", "denied"),
        ("listen", "denied"),
        ("export", "denied"),
    ]
    # Same shape either way: an HTML error page, the same headers, no audio, nothing of the
    # recording (its queue, rule or times) in the page.
    for theirs, none in zip(answers[other], answers[missing], strict=True):
        assert none.status_code in (403, 404)
        for r in (theirs, none):
            assert r.headers["content-type"].startswith("text/html")
            assert not r.content.startswith(b"RIFF")
            assert "content-range" not in r.headers and "content-disposition" not in r.headers
            assert 'id="error"' in r.text
            assert "support" not in r.text
        assert set(theirs.headers) == set(none.headers)
        assert abs(len(theirs.content) - len(none.content)) < 200


# -- path traversal --------------------------------------------------------------------------------

TRAVERSALS = [
    "../app.py",
    "..%2Fapp.py",
    "%2e%2e/app.py",
    "%2e%2e%2fapp.py",
    "..%5capp.py",
    "....//app.py",
    "%252e%252e%252fapp.py",
    "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "console.css%00.py",
    "..%2F..%2F..%2F..%2Fs%2Fstore.json",
]
LEAKS = (b"import ", b"root:", b"store_id", b"[rules]", b"def ")


def raw_get(url: str, path: str, cookie: str | None = None) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client normalises or re-encodes it)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    assert host and port
    lines = [f"GET {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


def test_static_and_path_parameters_do_not_traverse(tmp_path: Path) -> None:
    gen = make_world(tmp_path, tls=False)
    world = next(gen)
    try:
        c = TestClient(world.console.app, base_url="http://localhost", follow_redirects=False)
        sign_in(world, c, "sam")
        cookie = f"sdr_session={c.cookies.get('sdr_session')}"
        param_routes = [
            r.path
            for r in world.console.app.routes
            if isinstance(r, Route) and "{" in r.path and r.methods and "GET" in r.methods
        ]
        with serving(world) as url:
            assert raw_get(url, "/static/console.css")[0] == 200  # the control
            for attack in TRAVERSALS:
                status, data = raw_get(url, f"/static/{attack}")
                assert status in (400, 404), (attack, status)
                assert not any(leak in data for leak in LEAKS), attack
                for route in param_routes:
                    path = re.sub(r"\{[^}]+\}", attack, route)
                    status, data = raw_get(url, path, cookie)
                    assert status in (400, 404), (path, status)
                    assert not any(leak in data for leak in LEAKS), path
        granted = [a for a in world.accesses() if a["outcome"] == "granted"]
        assert not [a for a in granted if a["action"] in ("listen", "export")]
    finally:
        gen.close()


# -- open redirects --------------------------------------------------------------------------------

EVIL_NEXT = [
    "//evil.example/",
    "/\\evil.example",
    "https://evil.example/",
    "http:evil.example",
    "javascript:alert(1)",
    "/\t/evil.example",
    " //evil.example",
    "%2F%2Fevil.example",
    "/recordings\r\nLocation: https://evil.example",
]


def local(location: str) -> bool:
    target = urlsplit(urljoin("https://localhost/sign-in", location))
    return target.netloc == "localhost" and target.scheme == "https"


@pytest.mark.parametrize("evil", EVIL_NEXT)
def test_no_next_parameter_leads_off_the_console(world: World, evil: str) -> None:
    sign_in(world, world.client(), "rita")
    c = world.client()
    locations: list[str] = []

    def follow(r: Any) -> Any:
        if r.status_code in (301, 302, 303, 307, 308):
            locations.append(r.headers["location"])
        return r

    page = follow(c.get("/sign-in", params={"next": evil}))
    assert f'value="{evil}"' not in page.text
    r = follow(
        c.post(
            "/sign-in",
            data={
                "csrf": csrf_of(page.text),
                "name": "rita",
                "password": NEW_PASSWORD,
                "next": evil,
            },
        )
    )
    page = follow(c.get(r.headers["location"], params={"next": evil}))
    r = follow(
        c.post(
            "/sign-in/code",
            data={"csrf": csrf_of(page.text), "code": world.code("rita"), "next": evil},
        )
    )
    assert r.headers["location"] == "/"
    follow(c.get("/sign-in/codes", params={"then": evil}))
    follow(world.client().get("/recordings", params={"next": evil}))
    assert locations and all(local(loc) for loc in locations), locations
    assert all(not loc.startswith(("//", "/\\")) for loc in locations), locations


def test_the_security_key_routes_send_nowhere_else_either(world: World) -> None:
    key = SoftAuthenticator()
    options, challenge = world.console.auth.passkey_registration("sam", _rp())
    world.console.auth.register_passkey(
        "sam", _rp(), key.create(options), challenge, address="x", enrolling=True
    )
    world.users.set_password("sam", NEW_PASSWORD, now_us=int(world.clock.now().timestamp() * 1e6))
    for evil in EVIL_NEXT:
        c = TestClient(world.console.app, base_url="https://localhost", follow_redirects=False)
        page = c.get("/sign-in")
        r = c.post(
            "/sign-in", data={"csrf": csrf_of(page.text), "name": "sam", "password": NEW_PASSWORD}
        )
        token = csrf_of(c.get(r.headers["location"]).text)
        opts = c.post("/sign-in/key/options", json={}, headers={"X-CSRF-Token": token}).json()
        r = c.post(
            "/sign-in/key",
            json={"credential": key.get(opts["publicKey"]), "next": evil},
            headers={"X-CSRF-Token": token},
        )
        assert r.status_code == 200 and r.json()["next"] == "/", evil


# -- timing, proved by structure -------------------------------------------------------------------


class CountingHasher(PasswordHasher):
    """The fixture's cheap argon2id hasher, recording each hash it verifies against."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


def _parameters(argon2_hash: str) -> str:
    """``$argon2id$v=19$m=...,t=...,p=...`` of a hash (what decides its cost)."""
    return "$".join(argon2_hash.split("$")[:4])


@pytest.mark.parametrize(
    ("name", "password", "reason"),
    [
        ("nobody", PASSWORD, "unknown account"),
        ("NOT A VALID NAME!", PASSWORD, "unknown account"),
        ("rita", "not the password at all", "wrong password"),
        ("aldo", PASSWORD, "disabled"),
        ("rita", PASSWORD, None),
    ],
)
def test_every_password_attempt_costs_one_argon2id_verification_of_the_same_parameters(
    world: World, name: str, password: str, reason: str | None
) -> None:
    world.users.set_disabled("aldo", True)
    spy = CountingHasher()
    world.users.hasher = spy
    auth = world.console.auth
    rita = world.users.get("rita")
    assert rita is not None
    try:
        auth.check_password(name, password, address="a")
    except Exception:
        assert reason is not None
    else:
        assert reason is None
    assert len(spy.verified) == 1
    (checked,) = spy.verified
    assert checked.startswith("$argon2id$")
    assert _parameters(checked) == _parameters(rita.password_hash)
    if reason == "unknown account":
        assert checked == auth._dummy  # the dummy hash, not skipped
    world.log.flush()
    last = json.loads(world.accesses()[-1]["detail"]).get("reason")
    assert last == reason


@pytest.fixture
def compare_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes | str, bytes | str]]:
    calls: list[tuple[Any, Any]] = []
    real: Callable[[Any, Any], bool] = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    return calls


def test_totp_codes_are_compared_in_constant_time_with_every_step_checked(
    compare_calls: list[tuple[Any, Any]],
) -> None:
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    from datetime import UTC, datetime

    at = datetime(2030, 3, 4, 10, 0, 0, tzinfo=UTC)
    right = code_at(secret, at)
    for code in (right, "000000" if right != "000000" else "111111"):
        compare_calls.clear()
        matching_step(secret, code, at)
        # Three candidate steps, all compared, whether the first one matched or none did.
        assert len(compare_calls) == 3
        assert all(given == code for _, given in compare_calls)


def test_csrf_tokens_and_recovery_codes_are_compared_in_constant_time(
    world: World, compare_calls: list[tuple[Any, Any]]
) -> None:
    session = world.console.sessions.new(now=0.0, address="a")
    compare_calls.clear()
    assert not session.csrf_ok("forged")
    assert session.csrf_ok(session.csrf)
    assert len(compare_calls) == 2
    codes = world.users.enrol_totp("rita", "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    compare_calls.clear()
    assert not world.users.use_recovery_code("rita", "aaaaa-bbbbb")
    assert len(compare_calls) == len(codes)  # every stored hash compared, no early exit
    compare_calls.clear()
    assert world.users.use_recovery_code("rita", codes[-1])
    assert len(compare_calls) == len(codes)


# -- no plaintext audio on disk --------------------------------------------------------------------


def test_no_plaintext_audio_reaches_any_folder_during_a_playback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (tmp_path / "w").mkdir()
    gen = make_world(tmp_path / "w", tls=False)
    world = next(gen)
    try:
        pcm = synthetic_speech(3.0, seed=0)  # the sales recording's audio (make_world)
        c = TestClient(world.console.app, base_url="http://localhost", follow_redirects=False)
        sign_in(world, c, "rita")
        cookie = {"sdr_session": c.cookies.get("sdr_session") or ""}
        rid = world.recordings["sales"]
        import httpx2

        played = b""
        with serving(world) as url, httpx2.Client(base_url=url, cookies=cookie) as client:
            while True:
                r = client.get(
                    f"/recordings/{rid}/audio.wav", headers={"Range": f"bytes={len(played)}-"}
                )
                if r.status_code == 416:
                    break
                assert r.status_code == 206
                played += r.content
                if len(played) >= int(r.headers["content-range"].rsplit("/", 1)[1]):
                    break
        assert played[44:] == pcm  # the known recording, played in full
        windows = [pcm[i : i + 64] for i in range(2000, len(pcm) - 64, len(pcm) // 9)]
        windows = [w for w in windows if len(set(w)) > 16]
        assert len(windows) >= 5
        assert all(w in played for w in windows)  # the scan would see them (control)
        scanned = 0
        for folder in (scratch, world.store.path, tmp_path):
            for path in folder.rglob("*"):
                if path.is_file():
                    data = path.read_bytes()
                    scanned += 1
                    assert not any(w in data for w in windows), path
        assert scanned > 5
    finally:
        gen.close()
