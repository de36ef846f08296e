"""The web console over HTTP (Starlette's TestClient): sign-in, sessions, CSRF, throttling,
scopes, playback by ranges, and what the log keeps of each."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sampledrec.accounts import (
    CONNECTION_ACTIONS,
    PasswordRules,
    Throttle,
    Usage,
    check_strength,
)
from sampledrec.errors import WeakPassword
from sampledrec.log.writer import iter_entries
from sampledrec.retention import IdentityCheck
from sampledrec.serve.console import CSP, MAX_RANGE_BYTES, safe_next
from sampledrec.vault.audio import synthetic_speech

from .console_fixtures import (
    NEW_PASSWORD,
    PASSWORD,
    PCM,
    ROLES,
    World,
    csrf_of,
    make_world,
    sign_in,
)
from .recording import write_call


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


def connection_events(world: World) -> list[dict[str, Any]]:
    return [
        {**a, "detail": json.loads(a["detail"])}
        for a in world.accesses()
        if a["action"] in CONNECTION_ACTIONS
    ]


# -- sign-in -------------------------------------------------------------------------------------


def test_first_sign_in_enrols_totp_changes_the_password_and_logs_every_step(
    world: World,
) -> None:
    client = world.client()
    sign_in(world, client, "rita")
    home = client.get("/")
    assert home.status_code == 200
    assert "Welcome, rita" in home.text
    user = world.users.get("rita")
    assert user is not None and user.enrolled and not user.must_change
    assert user.recovery_left == 10
    events = [(e["action"], e["outcome"]) for e in connection_events(world)]
    assert events == [
        ("sign_in", "success"),
        ("enrol_second_factor", "success"),
        ("password_change", "success"),
    ]
    # The address is a keyed pseudonym, never the address itself.
    details = [e["detail"] for e in connection_events(world)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", d["address"]) for d in details)
    assert "testclient" not in json.dumps(world.accesses())


def test_second_sign_in_asks_for_the_code_and_refuses_a_replayed_one(world: World) -> None:
    sign_in(world, world.client(), "rita")
    client = world.client()
    page = client.get("/sign-in")
    r = client.post(
        "/sign-in", data={"csrf": csrf_of(page.text), "name": "rita", "password": NEW_PASSWORD}
    )
    assert r.headers["location"].startswith("/sign-in/code")
    page = client.get(r.headers["location"])
    code = world.code("rita")
    ok = client.post("/sign-in/code", data={"csrf": csrf_of(page.text), "code": code})
    assert ok.status_code == 303
    # The same code again, in another sign-in within its 30 s: refused.
    other = world.client()
    page = other.get("/sign-in")
    r = other.post(
        "/sign-in", data={"csrf": csrf_of(page.text), "name": "rita", "password": NEW_PASSWORD}
    )
    page = other.get(r.headers["location"])
    again = other.post("/sign-in/code", data={"csrf": csrf_of(page.text), "code": code})
    assert again.status_code == 401
    reasons = [e["detail"].get("reason") for e in connection_events(world)]
    assert "code already used" in reasons


def test_a_recovery_code_signs_in_once(world: World) -> None:
    client = world.client()
    page = client.get("/sign-in")
    r = client.post(
        "/sign-in", data={"csrf": csrf_of(page.text), "name": "sam", "password": PASSWORD}
    )
    page = client.get(r.headers["location"])
    secret = re.search(r'<code id="secret">([A-Z2-7]+)</code>', page.text)
    assert secret
    from sampledrec.accounts.totp import code_at

    r = client.post(
        "/sign-in/enrol",
        data={"csrf": csrf_of(page.text), "code": code_at(secret.group(1), world.clock.now())},
    )
    codes = re.findall(r"<li><code>([a-z2-7]{5}-[a-z2-7]{5})</code></li>", r.text)
    assert len(codes) == 10
    world.users.set_password("sam", NEW_PASSWORD, now_us=0)  # skip the change for this test
    for attempt, expected in ((codes[0], 303), (codes[0], 401)):
        c = world.client()
        page = c.get("/sign-in")
        r = c.post(
            "/sign-in",
            data={"csrf": csrf_of(page.text), "name": "sam", "password": NEW_PASSWORD},
        )
        page = c.get(r.headers["location"])
        r = c.post("/sign-in/code", data={"csrf": csrf_of(page.text), "code": attempt})
        assert r.status_code == expected


def test_wrong_password_unknown_and_disabled_accounts_look_the_same(world: World) -> None:
    world.users.set_disabled("aldo", True)
    answers = []
    for name, password in (
        ("rita", "not the password at all"),
        ("nobody", PASSWORD),
        ("aldo", PASSWORD),
    ):
        client = world.client()
        page = client.get("/sign-in")
        r = client.post(
            "/sign-in", data={"csrf": csrf_of(page.text), "name": name, "password": password}
        )
        assert r.status_code == 401
        shown = re.search(r'id="error"[^>]*>([^<]+)<', r.text)
        assert shown
        answers.append(shown.group(1))
    assert len(set(answers)) == 1
    reasons = [e["detail"]["reason"] for e in connection_events(world)]
    assert reasons == ["wrong password", "unknown account", "disabled"]


def test_session_id_changes_at_each_step_and_the_old_one_is_dead(world: World) -> None:
    client = world.client()
    client.get("/sign-in")
    planted = client.cookies.get("__Host-sdr_session")
    assert planted
    sign_in(world, client, "rita")
    after = client.cookies.get("__Host-sdr_session")
    assert after and after != planted
    # An attacker holding the planted id gets nothing.
    attacker = world.client()
    r = attacker.get("/recordings", headers={"Cookie": f"__Host-sdr_session={planted}"})
    assert r.status_code == 303 and r.headers["location"].startswith("/sign-in")


def test_cookie_is_secure_httponly_samesite_strict(world: World) -> None:
    r = world.client().get("/sign-in")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("__Host-sdr_session=")
    for attribute in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"):
        assert attribute.lower() in cookie.lower()
    assert "domain" not in cookie.lower()


def test_forms_without_the_sessions_csrf_token_are_refused(world: World) -> None:
    client = world.client()
    client.get("/sign-in")
    r = client.post("/sign-in", data={"name": "rita", "password": PASSWORD})
    assert r.status_code == 403
    other = world.client()
    token = csrf_of(other.get("/sign-in").text)
    r = client.post("/sign-in", data={"csrf": token, "name": "rita", "password": PASSWORD})
    assert r.status_code == 403
    sign_in(world, client, "rita")
    r = client.post("/sign-out", data={})
    assert r.status_code == 403
    assert client.get("/").status_code == 200  # still signed in
    assert connection_events(world)[-1]["action"] != "sign_out"


def test_sign_out_ends_the_session_and_is_logged(world: World) -> None:
    client = world.client()
    sign_in(world, client, "rita")
    home = client.get("/")
    r = client.post("/sign-out", data={"csrf": csrf_of(home.text)})
    assert r.status_code == 303
    assert client.get("/").status_code == 303
    assert connection_events(world)[-1]["action"] == "sign_out"


def test_an_idle_session_expires_and_the_expiry_is_logged(world: World) -> None:
    client = world.client()
    sign_in(world, client, "rita")
    world.clock.advance(minutes=16)
    r = client.get("/recordings")
    assert r.status_code == 303 and r.headers["location"].startswith("/sign-in")
    last = connection_events(world)[-1]
    assert (last["action"], last["principal"]) == ("session_expired", "rita")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/recordings?queue=sales", "/recordings?queue=sales"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/recordings\r\nSet-Cookie: x=1", "/"),
        (None, "/"),
    ],
)
def test_next_never_leaves_the_console(given: str | None, expected: str) -> None:
    assert safe_next(given) == expected


def test_an_open_redirect_after_sign_in_goes_home_instead(world: World) -> None:
    sign_in(world, world.client(), "rita")
    client = world.client()
    page = client.get("/sign-in?next=//evil.example/x")
    assert 'value="//evil.example/x"' not in page.text
    r = client.post(
        "/sign-in",
        data={
            "csrf": csrf_of(page.text),
            "name": "rita",
            "password": NEW_PASSWORD,
            "next": "https://evil.example/",
        },
    )
    page = client.get(r.headers["location"])
    r = client.post("/sign-in/code", data={"csrf": csrf_of(page.text), "code": world.code("rita")})
    assert r.headers["location"] == "/"


# -- throttling ----------------------------------------------------------------------------------


def test_failures_make_each_next_attempt_wait_longer_even_with_the_right_password(
    world: World,
) -> None:
    client = world.client()
    statuses = []
    for _ in range(5):
        page = client.get("/sign-in")
        r = client.post(
            "/sign-in",
            data={"csrf": csrf_of(page.text), "name": "dora", "password": "wrong wrong wrong"},
        )
        statuses.append(r.status_code)
    assert statuses == [401, 401, 401, 401, 429]
    page = client.get("/sign-in")
    r = client.post(
        "/sign-in", data={"csrf": csrf_of(page.text), "name": "dora", "password": PASSWORD}
    )
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert "try again in" in r.text
    world.clock.advance(seconds=2)
    page = client.get("/sign-in")
    r = client.post(
        "/sign-in", data={"csrf": csrf_of(page.text), "name": "dora", "password": PASSWORD}
    )
    assert r.status_code == 303
    reasons = [e["detail"].get("reason") for e in connection_events(world)]
    assert reasons.count("throttled") == 2


def test_the_delay_doubles_per_failure_up_to_its_cap() -> None:
    t = Throttle(free=3, base=1.0, cap=60.0)
    assert [t.delay(n) for n in range(1, 11)] == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60]


def test_failures_from_one_address_throttle_every_account_tried_from_it() -> None:
    t = Throttle(free=0, base=10.0)
    t.failed(["user:a", "addr:x"], now=0.0)
    assert t.wait(["user:b", "addr:x"], now=1.0) == 9.0
    assert t.wait(["user:b", "addr:y"], now=1.0) == 0.0


# -- passwords -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short one", "at least 12"),
        ("Password2024!", "most common"),
        ("aaaaaaaaaaaaaaaa", "5 different"),
        ("my name is maria.r ok", "account's name"),
    ],
)
def test_weak_passwords_are_refused_when_set(password: str, why: str) -> None:
    with pytest.raises(WeakPassword, match=why):
        check_strength(password, "maria.r", PasswordRules())


def test_passwords_are_argon2id_hashes_and_secrets_are_sealed(world: World) -> None:
    sign_in(world, world.client(), "rita")
    folder = world.store.users_path.parent
    files = sorted(folder.glob(world.store.users_path.name + "*"))  # with its WAL
    raw = b"".join(f.read_bytes() for f in files)
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert b"$argon2id$" in raw
    assert PASSWORD.encode() not in raw and NEW_PASSWORD.encode() not in raw
    secret = world.users.totp_secret("rita")
    assert secret is not None and secret.encode() not in raw


def test_an_expired_password_must_be_changed_at_sign_in(world: World) -> None:
    sign_in(world, world.client(), "rita")
    world.clock.advance(days=91)
    client = world.client()
    page = client.get("/sign-in")
    r = client.post(
        "/sign-in", data={"csrf": csrf_of(page.text), "name": "rita", "password": NEW_PASSWORD}
    )
    page = client.get(r.headers["location"])
    r = client.post("/sign-in/code", data={"csrf": csrf_of(page.text), "code": world.code("rita")})
    assert r.headers["location"].startswith("/sign-in/password")
    assert client.get("/").status_code == 303  # nothing else until it is changed


# -- recordings and playback ---------------------------------------------------------------------


def test_a_reviewer_lists_only_the_recordings_of_their_scope(world: World) -> None:
    client = world.client()
    sign_in(world, client, "rita")
    page = client.get("/recordings")
    assert page.status_code == 200
    assert world.recordings["sales"] in page.text
    assert world.recordings["support"] not in page.text
    assert "1 recording in your scope" in page.text
    filtered = client.get("/recordings?queue=support")
    assert "0 recordings" in filtered.text


def test_range_requests_answer_206_with_the_exact_bytes_of_the_export(world: World) -> None:
    client = world.client()
    sign_in(world, client, "rita")
    rid = world.recordings["sales"]
    wav = world.export(rid)
    url = f"/recordings/{rid}/audio.wav"
    for header, lo, hi in (
        ("bytes=0-1", 0, 2),
        ("bytes=0-99", 0, 100),
        ("bytes=40-5000", 40, 5001),
        (f"bytes={len(wav) - 10}-", len(wav) - 10, len(wav)),
        ("bytes=-7", len(wav) - 7, len(wav)),
        ("bytes=1000-", 1000, len(wav)),
    ):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {lo}-{hi - 1}/{len(wav)}"
        assert r.headers["content-type"] == "audio/wav"
        assert r.content == wav[lo:hi]
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == wav
    past = client.get(url, headers={"Range": f"bytes={len(wav)}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(wav)}"
    listens = [a for a in world.accesses() if a["action"] == "listen"]
    assert all(a["outcome"] == "granted" and a["principal"] == "rita" for a in listens)
    assert any(a["detail"] == f"wav bytes 0-99/{len(wav)}" for a in listens)


def test_an_open_range_is_answered_in_pieces(tmp_path: Path) -> None:
    gen = make_world(tmp_path, seconds=70.0)
    world = next(gen)
    try:
        client = world.client()
        sign_in(world, client, "sam")
        rid = world.recordings["sales"]
        r = client.get(f"/recordings/{rid}/audio.wav", headers={"Range": "bytes=0-"})
        assert r.status_code == 206
        total = int(r.headers["content-range"].rsplit("/", 1)[1])
        assert total > MAX_RANGE_BYTES
        assert len(r.content) == MAX_RANGE_BYTES
        assert r.content == world.export(rid)[:MAX_RANGE_BYTES]
    finally:
        gen.close()


def test_out_of_scope_recording_is_refused_and_the_refusal_logged(world: World) -> None:
    client = world.client()
    sign_in(world, client, "rita")
    other = world.recordings["support"]
    assert client.get(f"/recordings/{other}").status_code == 403
    r = client.get(f"/recordings/{other}/audio.wav", headers={"Range": "bytes=0-99"})
    assert r.status_code == 403
    assert not r.content.startswith(b"RIFF")
    denied = [a for a in world.accesses() if a["outcome"] == "denied"]
    assert [(a["action"], a["recording_id"], a["detail"]) for a in denied] == [
        ("list", other, "out of scope"),
        ("listen", other, "out of scope"),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/recordings/00000000-0000-4000-8000-000000000000",
        "/recordings/00000000-0000-4000-8000-000000000000/audio.wav",
        "/recordings/..%2F..%2Fstore.json",
        "/recordings/..%2F..%2Fkeys/audio.wav",
        "/static/..%2F..%2F..%2Fstore.json",
        "/static/../app.py",
    ],
)
def test_unknown_ids_and_traversal_find_nothing(world: World, path: str) -> None:
    client = world.client()
    sign_in(world, client, "sam")
    r = client.get(path)
    assert r.status_code == 404
    assert b"store_id" not in r.content and b"import" not in r.content


def test_an_auditor_sees_metadata_and_never_audio(world: World) -> None:
    client = world.client()
    sign_in(world, client, "aldo")
    rid = world.recordings["sales"]
    page = client.get(f"/recordings/{rid}")
    assert page.status_code == 200 and "<audio" not in page.text
    r = client.get(f"/recordings/{rid}/audio.wav", headers={"Range": "bytes=0-99"})
    assert r.status_code == 403
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"]) == ("listen", "denied", "aldo")
    assert last["detail"] == "no role grants listen"


def test_playback_is_refused_from_expiry_on(world: World) -> None:
    client = world.client()
    sign_in(world, client, "sam")
    rid = world.recordings["sales"]
    assert (
        client.get(f"/recordings/{rid}/audio.wav", headers={"Range": "bytes=0-9"}).status_code
        == 206
    )
    world.clock.advance(days=100)
    world.console.sessions.idle = world.console.sessions.max_age = 1e9
    r = client.get(f"/recordings/{rid}/audio.wav", headers={"Range": "bytes=0-9"})
    assert r.status_code == 410
    assert world.accesses()[-1]["detail"] == "expired"


# -- the supervisor's export ---------------------------------------------------------------------


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_a_supervisor_exports_the_wav_of_the_vault_from_memory_and_it_is_logged(
    world: World,
) -> None:
    client = world.client()
    sign_in(world, client, "sam")
    rid = world.recordings["support"]
    page = client.get(f"/recordings/{rid}")
    assert f'action="/recordings/{rid}/export.wav"' in page.text and "Export as WAV" in page.text
    before = _files(world.tmp)
    r = client.post(f"/recordings/{rid}/export.wav", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["content-disposition"] == f'attachment; filename="recording-{rid}.wav"'
    assert r.headers["cache-control"] == "no-store"
    # Nothing new on disk but the log's own files (sealed entries).
    assert all(p.suffix != ".wav" for p in _files(world.tmp) - before)
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"], last["recording_id"]) == (
        "export",
        "granted",
        "sam",
        rid,
    )
    assert r.content == world.export(rid)


@pytest.mark.parametrize("name", ["rita", "dora", "aldo", "ada"])
def test_roles_without_export_get_no_button_and_a_logged_403(world: World, name: str) -> None:
    client = world.client()
    sign_in(world, client, name)
    rid = world.recordings["sales"]
    page = client.get(f"/recordings/{rid}")
    assert page.status_code == 200 and "Export as WAV" not in page.text
    r = client.post(f"/recordings/{rid}/export.wav", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 403
    assert not r.content.startswith(b"RIFF") and "content-disposition" not in r.headers
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"], last["recording_id"]) == (
        "export",
        "denied",
        name,
        rid,
    )
    assert last["detail"] == "no role grants export"


def test_an_export_without_the_sessions_csrf_token_is_refused_and_reads_nothing(
    world: World,
) -> None:
    client = world.client()
    sign_in(world, client, "sam")
    rid = world.recordings["sales"]
    other = world.client()
    foreign = csrf_of(other.get("/sign-in").text)
    for data in ({}, {"csrf": "forged"}, {"csrf": foreign}):
        r = client.post(f"/recordings/{rid}/export.wav", data=data)
        assert r.status_code == 403
        assert not r.content.startswith(b"RIFF")
    assert not [a for a in world.accesses() if a["action"] == "export"]
    # And a GET is not an export.
    assert client.get(f"/recordings/{rid}/export.wav").status_code == 405


def test_an_export_is_refused_from_expiry_on_and_the_refusal_logged(world: World) -> None:
    client = world.client()
    sign_in(world, client, "sam")
    rid = world.recordings["sales"]
    token = csrf_of(client.get(f"/recordings/{rid}").text)
    world.clock.advance(days=100)
    world.console.sessions.idle = world.console.sessions.max_age = 1e9
    page = client.get(f"/recordings/{rid}")
    assert page.status_code == 200 and "Export as WAV" not in page.text
    r = client.post(f"/recordings/{rid}/export.wav", data={"csrf": token})
    assert r.status_code == 410
    assert not r.content.startswith(b"RIFF")
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"], last["detail"]) == (
        "export",
        "denied",
        "sam",
        "expired",
    )


# -- the DPO's holds page -------------------------------------------------------------------------


def hold_entries(world: World) -> list[dict[str, Any]]:
    world.log.flush()
    return [
        e.fields
        for e in iter_entries(world.store.log_storage, world.store.keyring)
        if e.type_name == "hold"
    ]


def test_the_dpo_places_and_releases_a_hold_through_the_library(world: World) -> None:
    client = world.client()
    sign_in(world, client, "dora")
    assert 'href="/holds"' in client.get("/").text
    page = client.get("/holds")
    assert page.status_code == 200 and "Place the hold" in page.text
    rid = world.recordings["sales"]
    r = client.post(
        "/holds",
        data={
            "csrf": csrf_of(page.text),
            "recordings": f"{rid}\n",
            "reason": "case 2030-17",
            "until": "2031-01-31",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/holds"
    (hold,) = world.console.vault.catalog.holds()
    assert hold.reason == "case 2030-17" and hold.released_at is None
    assert [m for m, _ in world.console.vault.catalog.hold_members(hold.hold_id)] == [rid]
    placed = hold_entries(world)[-1]
    assert (placed["action"], placed["principal"], placed["hold_id"]) == (
        "placed",
        "dora",
        hold.hold_id,
    )
    page = client.get("/holds")
    assert "case 2030-17" in page.text and f"release-{hold.hold_id}" in page.text
    r = client.post(f"/holds/{hold.hold_id}/release", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303
    released = world.console.vault.catalog.get_hold(hold.hold_id)
    assert released is not None and released.released_at is not None
    last = hold_entries(world)[-1]
    assert (last["action"], last["principal"]) == ("released", "dora")
    assert f"release-{hold.hold_id}" not in client.get("/holds").text


def test_a_hold_needs_a_reason_and_known_recordings(world: World) -> None:
    client = world.client()
    sign_in(world, client, "dora")
    token = csrf_of(client.get("/holds").text)
    rid = world.recordings["sales"]
    for data in (
        {"recordings": rid, "reason": " "},
        {"recordings": "", "reason": "case"},
        {"recordings": "00000000-0000-4000-8000-000000000000", "reason": "case"},
        {"recordings": rid, "reason": "case", "until": "soon"},
    ):
        r = client.post("/holds", data={"csrf": token, **data})
        assert r.status_code == 400, data
        assert 'id="error"' in r.text
    assert world.console.vault.catalog.holds() == []


@pytest.mark.parametrize("name", ["rita", "sam", "aldo", "ada"])
def test_roles_without_hold_are_refused_the_holds_page_and_it_is_logged(
    world: World, name: str
) -> None:
    client = world.client()
    sign_in(world, client, name)
    home = client.get("/")
    assert 'href="/holds"' not in home.text
    assert client.get("/holds").status_code == 403
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"], last["detail"]) == (
        "hold",
        "denied",
        name,
        "no role grants hold",
    )
    rid = world.recordings["sales"]
    r = client.post(
        "/holds", data={"csrf": csrf_of(home.text), "recordings": rid, "reason": "case"}
    )
    assert r.status_code == 403
    assert world.console.vault.catalog.holds() == []


def test_hold_forms_without_the_sessions_csrf_token_are_refused(world: World) -> None:
    client = world.client()
    sign_in(world, client, "dora")
    rid = world.recordings["sales"]
    for data in ({}, {"csrf": "forged"}):
        r = client.post("/holds", data={**data, "recordings": rid, "reason": "case"})
        assert r.status_code == 403
    assert world.console.vault.catalog.holds() == []
    hold = world.console.retention.hold([rid], reason="case", principal=None)
    r = client.post(f"/holds/{hold.hold_id}/release", data={"csrf": "forged"})
    assert r.status_code == 403
    still = world.console.vault.catalog.get_hold(hold.hold_id)
    assert still is not None and still.released_at is None
    # An unknown hold is not found.
    token = csrf_of(client.get("/holds").text)
    r = client.post("/holds/00000000-0000-4000-8000-000000000000/release", data={"csrf": token})
    assert r.status_code == 404


def test_an_expired_recording_cannot_be_held(world: World) -> None:
    client = world.client()
    sign_in(world, client, "dora")
    rid = world.recordings["sales"]
    world.clock.advance(days=100)
    world.console.sessions.idle = world.console.sessions.max_age = 1e9
    world.console.retention.sweep()
    token = csrf_of(client.get("/holds").text)
    r = client.post("/holds", data={"csrf": token, "recordings": rid, "reason": "too late"})
    assert r.status_code == 400
    assert "only sealed recordings can be held" in r.text
    assert world.console.vault.catalog.holds() == []


# -- the connection log page ---------------------------------------------------------------------


def test_the_dpo_and_the_admin_read_the_connection_log_others_do_not(world: World) -> None:
    bad = world.client()
    page = bad.get("/sign-in")
    bad.post("/sign-in", data={"csrf": csrf_of(page.text), "name": "rita", "password": "x" * 12})
    for name, status in (("dora", 200), ("ada", 200), ("rita", 403), ("aldo", 200)):
        client = world.client()
        sign_in(world, client, name)
        world.log.flush()
        r = client.get("/connections")
        assert r.status_code == status, name
        if status == 200:
            assert "wrong password" in r.text
            assert "<td>rita</td>" in r.text


# -- the usage page ------------------------------------------------------------------------------


def test_page_views_are_counted_per_role_and_per_day(world: World) -> None:
    world.console.sessions.idle = world.console.sessions.max_age = 1e9
    dora, ada, rita = world.client(), world.client(), world.client()
    for client, name in ((dora, "dora"), (ada, "ada"), (rita, "rita")):
        sign_in(world, client, name)
    for path in ("/", "/", "/recordings"):
        assert dora.get(path).status_code == 200
    assert ada.get("/").status_code == 200
    # Audio, forms and sign-in steps are not page views; a refused page is one.
    assert rita.get(f"/recordings/{world.recordings['sales']}/audio.wav").status_code == 200
    assert rita.post("/holds", data={"csrf": "forged"}).status_code == 403
    assert rita.get("/usage").status_code == 403
    world.clock.advance(days=1)
    assert dora.get("/").status_code == 200
    page = dora.get("/usage")
    assert page.status_code == 200
    assert world.console.usage.table() == [
        ("2030-03-05", "dpo", 2),
        ("2030-03-04", "admin", 1),
        ("2030-03-04", "dpo", 3),
        ("2030-03-04", "qa_reviewer", 1),
    ]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>(\d+)</td></tr>", page.text)
    assert rows == [
        ("2030-03-05", "dpo", "1"),
        ("2030-03-04", "admin", "1"),
        ("2030-03-04", "dpo", "3"),
        ("2030-03-04", "qa_reviewer", "1"),
    ]
    # The counts outlive the console: they are in the store's file.
    assert Usage(world.store.usage_path).table() == world.console.usage.table()


def test_usage_keeps_and_shows_no_account_name_or_address(world: World) -> None:
    for name in ("dora", "rita", "aldo"):
        client = world.client()
        sign_in(world, client, name)
        client.get("/")
    client = world.client()
    sign_in(world, client, "ada")
    page = client.get("/usage")
    assert page.status_code == 200
    table = page.text[page.text.index('<table id="usage">') : page.text.index("</table>")]
    stored = world.store.usage_path.read_text()
    assert json.loads(stored)["views"] == {  # the usage page itself counts, once shown
        "2030-03-04": {"admin": 1, "auditor": 1, "dpo": 1, "qa_reviewer": 1}
    }
    address = world.console.auth.pseudonym("testclient")
    for text in (table, stored):
        for secret in (*ROLES, "testclient", address):
            assert secret not in text


@pytest.mark.parametrize("name", ["rita", "sam"])
def test_roles_without_read_log_or_manage_users_are_refused_the_usage_page(
    world: World, name: str
) -> None:
    client = world.client()
    sign_in(world, client, name)
    home = client.get("/")
    assert 'href="/usage"' not in home.text
    assert client.get("/usage").status_code == 403
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"]) == ("read_log", "denied", name)


# -- the audit page ------------------------------------------------------------------------------


def test_an_auditor_sees_the_logs_counts_and_checkpoints_and_no_audio(world: World) -> None:
    client = world.client()
    sign_in(world, client, "aldo")
    home = client.get("/")
    assert 'href="/audit"' in home.text
    world.log.checkpoint()
    page = client.get("/audit")
    assert page.status_code == 200
    assert re.search(r"<tr><th>Checkpoints</th><td>[1-9]\d*</td></tr>", page.text)
    assert re.search(r"<tr><td>access</td><td>[1-9]\d*</td></tr>", page.text)
    assert "<tr><td>sign_in</td><td>success</td><td>1</td></tr>" in page.text
    assert "audio" not in page.headers["content-type"]
    assert "<audio" not in page.text
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"]) == ("verify", "granted", "aldo")


@pytest.mark.parametrize("name", ["rita", "sam", "ada"])
def test_roles_without_verify_are_refused_the_audit_page_and_it_is_logged(
    world: World, name: str
) -> None:
    client = world.client()
    sign_in(world, client, name)
    assert 'href="/audit"' not in client.get("/").text
    assert client.get("/audit").status_code == 403
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"]) == ("verify", "denied", name)


# -- headers and assets --------------------------------------------------------------------------


def test_every_answer_carries_the_strict_policy(world: World) -> None:
    client = world.client()
    for path in ("/sign-in", "/static/console.css", "/nowhere"):
        r = client.get(path)
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    assert CSP.startswith("default-src 'self'")


def test_templates_and_static_files_load_nothing_from_elsewhere_and_run_no_inline_script() -> None:
    folder = Path(__file__).parents[1] / "src/sampledrec/serve/console"
    ours = {p.name for p in folder.glob("static/*.js")}
    for path in [*folder.glob("templates/*.html"), *folder.glob("static/*")]:
        text = path.read_text("utf-8")
        # Scripts only as files of ours, loaded by src, with nothing inline (the CSP agrees).
        for tag in re.findall(r"<script[^>]*>[^<]*</script>|<script[^>]*>", text):
            found = re.fullmatch(r'<script src="/static/([a-z]+\.js)"></script>', tag)
            assert found and found.group(1) in ours, (path, tag)
        assert not re.search(r"\son[a-z]+=", text), path  # no inline event handlers
        assert "eval(" not in text and "new Function" not in text, path
        assert " style=" not in text and "<style" not in text, path  # CSP: no inline style
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path
        assert "@import" not in text and "url(" not in text, path


def test_a_disabled_accounts_session_stops_at_its_next_request(world: World) -> None:
    client = world.client()
    sign_in(world, client, "rita")
    assert client.get("/recordings").status_code == 200
    world.users.set_disabled("rita", True)
    r = client.get("/recordings")
    assert r.status_code == 303 and r.headers["location"].startswith("/sign-in")


# -- the DPO's data-subject desk ------------------------------------------------------------------

CALLER = "+33 6 12 34 56 78"


def subject_world_call(world: World) -> str:
    """A recording of CALLER's call (the fixture's calls have no caller number)."""
    sampler = world.store.sampler(clock=world.clock, log=world.log)
    try:
        decision = sampler.decide("call-alice", {"queue": "sales"}, caller=CALLER)
        audio = synthetic_speech(2.0, seed=7)
        return write_call(world.console.vault, decision, audio, PCM, attrs={"queue": "sales"})
    finally:
        sampler.close()


def subject_entries(world: World) -> list[dict[str, Any]]:
    world.log.flush()
    return [
        e.fields
        for e in iter_entries(world.store.log_storage, world.store.keyring)
        if e.type_name == "subject_request"
    ]


def receive(client: Any, kind: str) -> str:
    page = client.get("/requests")
    assert page.status_code == 200 and "Receive the request" in page.text
    r = client.post("/requests", data={"csrf": csrf_of(page.text), "kind": kind, "phone": CALLER})
    assert r.status_code == 303 and r.headers["location"] == "/requests"
    found = re.findall(r'<tr id="(req-[0-9a-f]{12})">', client.get("/requests").text)
    return str(found[0])  # newest first


def verify(client: Any, request_id: str) -> None:
    page = client.get("/requests")
    assert f"verify-{request_id}" in page.text and "not verified" in page.text
    r = client.post(
        f"/requests/{request_id}/verify",
        data={
            "csrf": csrf_of(page.text),
            "method": "callback_to_number",
            "note": "called back the number on the contract",
        },
    )
    assert r.status_code == 303


def test_the_dpo_receives_verifies_and_answers_an_access_request(world: World) -> None:
    rid = subject_world_call(world)
    client = world.client()
    sign_in(world, client, "dora")
    assert 'href="/requests"' in client.get("/").text
    request_id = receive(client, "export")
    (stored,) = world.console.subjects.requests()
    assert (stored.request_id, stored.kind, stored.status) == (request_id, "export", "open")
    assert stored.caller_pseudonym == world.console.subjects.pseudonym(CALLER)
    page = client.get("/requests")
    assert "31 day(s) left" in page.text and "612345678" not in page.text
    verify(client, request_id)
    page = client.get("/requests")
    assert "verified (callback_to_number" in page.text and f"answer-{request_id}" in page.text
    before = _files(world.tmp)
    r = client.post(
        f"/requests/{request_id}/answer", data={"csrf": csrf_of(page.text), "phone": CALLER}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == f'attachment; filename="{request_id}.zip"'
    assert all(p.suffix != ".zip" for p in _files(world.tmp) - before)
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert f"recordings/{rid}.wav" in zf.namelist()
        meta = json.loads(zf.read("metadata.json"))
    assert meta["request"]["id"] == request_id
    assert [m["id"] for m in meta["recordings"]] == [rid]
    (done,) = world.console.subjects.requests()
    assert done.status == "done"
    granted = [a for a in world.accesses() if a["action"] == "subject_export"]
    assert [(a["outcome"], a["principal"]) for a in granted] == [("granted", "dora")]
    logged = [e for e in subject_entries(world) if e["request_id"] == request_id]
    assert {e["principal"] for e in logged} == {"dora"}
    assert logged[0].get("identity_method") is None and logged[-1]["status"] == "done"
    assert any(e.get("identity_method") == "callback_to_number" for e in logged)
    assert f"answer-{request_id}" not in client.get("/requests").text


def test_the_dpo_answers_an_erasure_request_and_it_is_done(world: World) -> None:
    rid = subject_world_call(world)
    client = world.client()
    sign_in(world, client, "dora")
    request_id = receive(client, "erase")
    verify(client, request_id)
    token = csrf_of(client.get("/requests").text)
    r = client.post(f"/requests/{request_id}/answer", data={"csrf": token, "phone": CALLER})
    assert r.status_code == 303 and r.headers["location"] == "/requests"
    (done,) = world.console.subjects.requests()
    assert done.status == "done" and done.detail == "1 recording(s) erased"
    row = world.console.vault.catalog.get(rid)
    assert row is None or row.status not in ("sealed", "truncated")
    assert "1 recording(s) erased" in client.get("/requests").text


def test_answering_before_the_identity_is_verified_is_refused_and_logged(world: World) -> None:
    subject_world_call(world)
    client = world.client()
    sign_in(world, client, "dora")
    request_id = receive(client, "export")
    page = client.get("/requests")
    assert f"answer-{request_id}" not in page.text
    r = client.post(
        f"/requests/{request_id}/answer", data={"csrf": csrf_of(page.text), "phone": CALLER}
    )
    assert r.status_code == 400 and "identity has not been verified" in r.text
    assert r.headers["content-type"].startswith("text/html")
    (still,) = world.console.subjects.requests()
    assert still.status == "open"
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"]) == (
        "subject_export",
        "denied",
        "dora",
    )
    # A note that copies an ID number is refused too, and nothing is recorded.
    r = client.post(
        f"/requests/{request_id}/verify",
        data={
            "csrf": csrf_of(page.text),
            "method": "in_person_id_document",
            "note": "passport 12AB34567",
        },
    )
    assert r.status_code == 400 and "never copy" in r.text
    (still,) = world.console.subjects.requests()
    assert not still.identity_verified


@pytest.mark.parametrize("name", ["rita", "sam", "aldo", "ada"])
def test_roles_without_subject_requests_are_refused_the_desk_and_it_is_logged(
    world: World, name: str
) -> None:
    request = world.console.subjects.receive("export", CALLER, principal=None)
    client = world.client()
    sign_in(world, client, name)
    home = client.get("/")
    assert 'href="/requests"' not in home.text
    assert client.get("/requests").status_code == 403
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"], last["detail"]) == (
        "subject_requests",
        "denied",
        name,
        "no role grants subject_requests",
    )
    token = csrf_of(home.text)
    for path, data in (
        ("/requests", {"kind": "erase", "phone": CALLER}),
        (f"/requests/{request.request_id}/verify", {"method": "other", "note": "seen"}),
        (f"/requests/{request.request_id}/answer", {"phone": CALLER}),
    ):
        r = client.post(path, data={"csrf": token, **data})
        assert r.status_code == 403, path
        assert world.accesses()[-1]["outcome"] == "denied"
    (only,) = world.console.subjects.requests()
    assert only.status == "open" and not only.identity_verified


def test_subject_request_forms_without_the_sessions_csrf_token_are_refused(world: World) -> None:
    client = world.client()
    sign_in(world, client, "dora")
    for data in ({}, {"csrf": "forged"}):
        r = client.post("/requests", data={**data, "kind": "export", "phone": CALLER})
        assert r.status_code == 403
    assert world.console.subjects.requests() == []
    request = world.console.subjects.receive("erase", CALLER, principal=None)
    r = client.post(
        f"/requests/{request.request_id}/verify",
        data={"csrf": "forged", "method": "other", "note": "seen"},
    )
    assert r.status_code == 403
    world.console.subjects.verify_identity(
        request.request_id, IdentityCheck("signed_letter", "letter signed"), principal=None
    )
    r = client.post(
        f"/requests/{request.request_id}/answer", data={"csrf": "forged", "phone": CALLER}
    )
    assert r.status_code == 403
    (still,) = world.console.subjects.requests()
    assert still.status == "open"
    # An unknown request is not found.
    token = csrf_of(client.get("/requests").text)
    r = client.post("/requests/req-000000000000/answer", data={"csrf": token, "phone": CALLER})
    assert r.status_code == 404
