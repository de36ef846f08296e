"""Security keys (WebAuthn) in the console: the library's ceremonies and their refusals, with a
software authenticator that builds real answers (tests/webauthn_authenticator.py), then the
JSON routes over HTTP. The browser itself, with Chromium's virtual authenticator, is in
tests/test_console_browser.py."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from sampledrec.accounts import Challenge, RelyingParty
from sampledrec.errors import AuthenticationFailed, InvalidArgument, SignInThrottled

from .console_fixtures import NEW_PASSWORD, PASSWORD, World, csrf_of, make_world, sign_in
from .webauthn_authenticator import SoftAuthenticator, b64u

RP = RelyingParty("localhost", "https://localhost")
ADDRESS = "0123456789abcdef"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


def events(world: World, action: str) -> list[tuple[str, str | None]]:
    out = []
    for a in world.accesses():
        if a["action"] == action:
            out.append((a["outcome"], json.loads(a["detail"]).get("reason")))
    return out


def register(world: World, name: str, key: SoftAuthenticator, *, enrolling: bool = False) -> None:
    auth = world.console.auth
    options, challenge = auth.passkey_registration(name, RP)
    auth.register_passkey(
        name, RP, key.create(options), challenge, address=ADDRESS, enrolling=enrolling
    )


def assertion(world: World, name: str) -> tuple[dict[str, Any], Challenge]:
    return world.console.auth.passkey_authentication(name, RP)


def refused(world: World, name: str, response: Any, challenge: Challenge | None) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        world.console.auth.check_passkey(name, RP, response, challenge, address=ADDRESS)
    assert "the code is not right" in str(caught.value)  # the one message for every refusal
    last = events(world, "second_factor")[-1]
    assert last[0] == "failure"
    return str(last[1])


# -- the library ---------------------------------------------------------------------------------


def test_a_key_registered_at_enrolment_signs_in_and_every_step_is_logged(world: World) -> None:
    key = SoftAuthenticator()
    user = world.users.get("rita")
    assert user is not None and not user.enrolled
    auth = world.console.auth
    options, challenge = auth.passkey_registration("rita", RP)
    assert options["rp"] == {"name": "sampledrec console", "id": "localhost"}
    assert options["attestation"] == "none"
    codes = auth.register_passkey(
        "rita", RP, key.create(options), challenge, address=ADDRESS, enrolling=True
    )
    assert len(codes) == 10  # a key alone still leaves recovery codes as the fallback
    user = world.users.get("rita")
    assert user is not None and user.enrolled and user.security_keys == 1 and not user.totp
    (stored,) = world.users.credentials("rita")
    assert stored.credential_id == key.credential_id
    options, challenge = assertion(world, "rita")
    assert options["allowCredentials"] == [{"type": "public-key", "id": b64u(key.credential_id)}]
    nxt = auth.check_passkey("rita", RP, key.get(options), challenge, address=ADDRESS)
    assert nxt == "change_password"  # the admin's password is still to be changed
    (stored,) = world.users.credentials("rita")
    assert stored.sign_count == 1 and stored.last_used_at is not None
    assert events(world, "enrol_second_factor") == [("success", "webauthn")]
    assert events(world, "second_factor") == [("success", "webauthn")]


def test_a_response_to_another_challenge_is_refused(world: World) -> None:
    key = SoftAuthenticator()
    register(world, "rita", key, enrolling=True)
    options, challenge = assertion(world, "rita")
    forged = key.get(options, challenge=b"\x01" * 32)
    assert refused(world, "rita", forged, challenge) == "wrong challenge"
    # And an answer with no challenge handed to the session at all.
    assert refused(world, "rita", key.get(options), None) == "no challenge or an expired one"


def test_a_challenge_older_than_five_minutes_is_refused(world: World) -> None:
    key = SoftAuthenticator()
    register(world, "rita", key, enrolling=True)
    options, challenge = assertion(world, "rita")
    world.clock.advance(seconds=301)
    assert refused(world, "rita", key.get(options), challenge) == "no challenge or an expired one"


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ({"origin": "https://evil.example"}, "wrong origin"),
        ({"origin": "http://localhost"}, "wrong origin"),
        ({"rp_id": "evil.example"}, "wrong rp id"),
    ],
)
def test_an_answer_made_for_another_site_is_refused(
    world: World, where: dict[str, Any], reason: str
) -> None:
    key = SoftAuthenticator()
    register(world, "rita", key, enrolling=True)
    options, challenge = assertion(world, "rita")
    assert refused(world, "rita", key.get(options, **where), challenge) == reason


def test_a_registration_for_another_site_or_challenge_is_refused_and_nothing_kept(
    world: World,
) -> None:
    auth = world.console.auth
    key = SoftAuthenticator()
    for kwargs, reason in (
        ({"origin": "https://evil.example"}, "wrong origin"),
        ({"rp_id": "evil.example"}, "wrong rp id"),
    ):
        options, challenge = auth.passkey_registration("rita", RP)
        with pytest.raises(AuthenticationFailed):
            auth.register_passkey(
                "rita",
                RP,
                key.create(options, **kwargs),
                challenge,
                address=ADDRESS,
                enrolling=True,
            )
        assert events(world, "enrol_second_factor")[-1] == ("failure", reason)
    options, _ = auth.passkey_registration("rita", RP)
    _, other = auth.passkey_registration("rita", RP)
    with pytest.raises(AuthenticationFailed):
        auth.register_passkey(
            "rita", RP, key.create(options), other, address=ADDRESS, enrolling=True
        )
    assert events(world, "enrol_second_factor")[-1] == ("failure", "wrong challenge")
    assert world.users.credentials("rita") == []


def test_a_replayed_assertion_is_refused(world: World) -> None:
    key = SoftAuthenticator()
    register(world, "rita", key, enrolling=True)
    options, challenge = assertion(world, "rita")
    answer = key.get(options)
    world.console.auth.check_passkey("rita", RP, answer, challenge, address=ADDRESS)
    # The same answer against a new challenge: its signed challenge is the old one.
    _, fresh = assertion(world, "rita")
    assert refused(world, "rita", answer, fresh) == "wrong challenge"
    # Even given its own challenge again (a session that failed to forget it), the counter has
    # not grown since.
    assert refused(world, "rita", answer, challenge) == "sign count did not grow"


def test_a_counter_that_goes_back_means_a_clone_and_is_refused(world: World) -> None:
    key = SoftAuthenticator()
    register(world, "rita", key, enrolling=True)
    for _ in range(3):
        options, challenge = assertion(world, "rita")
        world.console.auth.check_passkey("rita", RP, key.get(options), challenge, address=ADDRESS)
    clone = SoftAuthenticator(counter=1, credential_id=key.credential_id, key=key.key)
    options, challenge = assertion(world, "rita")
    assert refused(world, "rita", clone.get(options), challenge) == "sign count did not grow"
    (stored,) = world.users.credentials("rita")
    assert stored.sign_count == 3


def test_unknown_credentials_and_other_accounts_keys_are_refused(world: World) -> None:
    rita, sam = SoftAuthenticator(), SoftAuthenticator()
    register(world, "rita", rita, enrolling=True)
    register(world, "sam", sam, enrolling=True)
    options, challenge = assertion(world, "rita")
    assert refused(world, "rita", SoftAuthenticator().get(options), challenge) == (
        "unknown credential"
    )
    options, challenge = assertion(world, "rita")
    assert refused(world, "rita", sam.get(options), challenge) == "unknown credential"
    # A key swapped into the account's row (public key replaced by the attacker's) opens
    # nothing: the stored key is sealed to the account and the credential id.
    attacker = SoftAuthenticator(credential_id=rita.credential_id)
    with sqlite3.connect(world.store.users_path) as db:
        sam_row = db.execute(
            "SELECT public_key FROM webauthn_credentials WHERE name = 'sam'"
        ).fetchone()
        db.execute(
            "UPDATE webauthn_credentials SET public_key = ? WHERE name = 'rita'", (sam_row[0],)
        )
    options, challenge = assertion(world, "rita")
    assert refused(world, "rita", attacker.get(options), challenge) == "unknown credential"


def test_a_key_registered_twice_is_refused(world: World) -> None:
    key = SoftAuthenticator()
    register(world, "rita", key, enrolling=True)
    with pytest.raises(AuthenticationFailed):
        register(world, "rita", key)
    assert events(world, "enrol_second_factor")[-1] == (
        "failure",
        "security key registered already",
    )


def test_failed_key_answers_count_towards_the_throttle(world: World) -> None:
    key = SoftAuthenticator()
    register(world, "rita", key, enrolling=True)
    for _ in range(4):  # three free failures, then each costs a delay
        options, challenge = assertion(world, "rita")
        refused(world, "rita", key.get(options, origin="https://evil.example"), challenge)
    options, challenge = assertion(world, "rita")
    with pytest.raises(SignInThrottled):  # the right key, refused unchecked
        world.console.auth.check_passkey("rita", RP, key.get(options), challenge, address=ADDRESS)
    assert events(world, "second_factor")[-1] == ("failure", "throttled")
    (stored,) = world.users.credentials("rita")
    assert stored.sign_count == 0


def test_the_relying_party_must_be_a_host_name_and_its_origin() -> None:
    for rp_id, origin in (
        ("127.0.0.1", "https://127.0.0.1"),
        ("Console.Example", "https://console.example"),
        ("console.example", "http://console.example"),
        ("console.example", "https://evil.example"),
        ("console.example", "https://console.example/path"),
    ):
        with pytest.raises(InvalidArgument):
            RelyingParty(rp_id, origin)
    RelyingParty("localhost", "http://localhost:8080")
    RelyingParty("example.com", "https://console.example.com:8443")


def test_a_reset_second_factor_forgets_the_keys(world: World) -> None:
    register(world, "rita", SoftAuthenticator(), enrolling=True)
    world.users.reset_second_factor("rita")
    user = world.users.get("rita")
    assert user is not None and not user.enrolled and world.users.credentials("rita") == []


# -- over HTTP -----------------------------------------------------------------------------------


def client(world: World) -> TestClient:
    """A client of the console as https://localhost (an rp id must be a host name)."""
    return TestClient(world.console.app, base_url="https://localhost", follow_redirects=False)


def post_json(c: TestClient, url: str, token: str, body: dict[str, Any]) -> Any:
    return c.post(url, json=body, headers={"X-CSRF-Token": token})


def password_step(world: World, c: TestClient, name: str, password: str) -> str:
    page = c.get("/sign-in")
    r = c.post("/sign-in", data={"csrf": csrf_of(page.text), "name": name, "password": password})
    assert r.status_code == 303, r.text
    return str(r.headers["location"])


def test_over_http_enrol_with_a_key_then_sign_in_with_it(world: World) -> None:
    key = SoftAuthenticator()
    c = client(world)
    step = password_step(world, c, "rita", PASSWORD)
    assert step.startswith("/sign-in/enrol")
    page = c.get(step)
    assert 'data-endpoint="/sign-in/enrol/key"' in page.text
    assert '<script src="/static/webauthn.js"></script>' in page.text
    assert 'id="secret"' in page.text  # TOTP still offered, without JavaScript
    token = csrf_of(page.text)
    before = c.cookies.get("__Host-sdr_session")
    options = post_json(c, "/sign-in/enrol/key/options", token, {}).json()["publicKey"]
    r = post_json(c, "/sign-in/enrol/key", token, {"credential": key.create(options), "next": "/"})
    assert r.status_code == 200, r.text
    assert r.json()["next"].startswith("/sign-in/codes?then=/sign-in/password")
    assert c.cookies.get("__Host-sdr_session") != before  # a new session id
    codes = c.get(r.json()["next"])
    assert len(re.findall(r"<li><code>[a-z2-7]{5}-[a-z2-7]{5}</code></li>", codes.text)) == 10
    again = c.get(r.json()["next"])
    assert again.status_code == 303  # shown once
    page = c.get(again.headers["location"])
    r = c.post(
        "/sign-in/password",
        data={"csrf": csrf_of(page.text), "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    assert r.status_code == 303 and c.get("/").status_code == 200
    # A second sign-in: the code page offers the key first, the code form stays.
    c = client(world)
    step = password_step(world, c, "rita", NEW_PASSWORD)
    page = c.get(step)
    assert 'data-endpoint="/sign-in/key"' in page.text and 'name="code"' in page.text
    token = csrf_of(page.text)
    before = c.cookies.get("__Host-sdr_session")
    options = post_json(c, "/sign-in/key/options", token, {}).json()["publicKey"]
    answer = key.get(options)
    r = post_json(c, "/sign-in/key", token, {"credential": answer, "next": "/recordings"})
    assert r.status_code == 200 and r.json() == {"next": "/recordings"}
    after = c.cookies.get("__Host-sdr_session")
    assert after != before and c.get("/recordings").status_code == 200
    # The old session (and its challenge) is dead; replaying the answer on a new session
    # whose challenge is another is refused.
    old = TestClient(world.console.app, base_url="https://localhost", follow_redirects=False)
    old.cookies.set("__Host-sdr_session", str(before))
    r = post_json(old, "/sign-in/key", token, {"credential": answer})
    assert r.status_code == 303  # no such session at that step: back to sign-in
    c2 = client(world)
    page = c2.get(password_step(world, c2, "rita", NEW_PASSWORD))
    t2 = csrf_of(page.text)
    post_json(c2, "/sign-in/key/options", t2, {})
    r = post_json(c2, "/sign-in/key", t2, {"credential": answer})
    assert r.status_code == 401 and "refused" in r.json()["error"]
    # And a second answer on the same session finds no challenge: single use.
    r = post_json(c2, "/sign-in/key", t2, {"credential": key.get(options)})
    assert r.status_code == 401
    assert events(world, "second_factor")[-2:] == [
        ("failure", "wrong challenge"),
        ("failure", "no challenge or an expired one"),
    ]


def test_json_routes_refuse_a_missing_or_foreign_csrf_token_and_plain_forms(world: World) -> None:
    register(world, "rita", SoftAuthenticator(), enrolling=True)
    c = client(world)
    page = c.get(password_step(world, c, "rita", PASSWORD))
    token = csrf_of(page.text)
    foreign = csrf_of(client(world).get("/sign-in").text)
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": foreign}):
        r = c.post("/sign-in/key/options", json={}, headers=headers)
        assert r.status_code == 403 and "did not come from this console" in r.json()["error"]
    # A form post (what another site could send) is not JSON: refused even with the token.
    r = c.post("/sign-in/key/options", data={"csrf": token}, headers={"X-CSRF-Token": token})
    assert r.status_code == 403
    assert post_json(c, "/sign-in/key/options", token, {}).status_code == 200


def test_an_ip_address_is_no_relying_party_and_keys_are_not_offered(world: World) -> None:
    register(world, "rita", SoftAuthenticator(), enrolling=True)
    c = TestClient(world.console.app, base_url="https://127.0.0.1", follow_redirects=False)
    page = c.get(password_step(world, c, "rita", PASSWORD))
    assert "data-ceremony" not in page.text and "webauthn.js" not in page.text
    r = post_json(c, "/sign-in/key/options", csrf_of(page.text), {})
    assert r.status_code == 404 and "webauthn_rp_id" in r.json()["error"]


def test_a_signed_in_account_adds_and_removes_keys_and_keeps_one_factor(world: World) -> None:
    c = client(world)
    sign_in(world, c, "sam")  # TOTP
    page = c.get("/account/keys")
    assert page.status_code == 200 and 'id="no-keys"' in page.text
    token = csrf_of(page.text)
    keys = [SoftAuthenticator(), SoftAuthenticator()]
    for key in keys:
        options = post_json(c, "/account/keys/options", token, {}).json()["publicKey"]
        r = post_json(c, "/account/keys", token, {"credential": key.create(options)})
        assert r.status_code == 200 and r.json() == {"next": "/account/keys"}
    page = c.get("/account/keys")
    assert page.text.count("security key ") >= 2
    assert events(world, "enrol_second_factor")[-2:] == [("success", "webauthn")] * 2
    first = b64u(keys[0].credential_id)
    assert c.post(f"/account/keys/{first}/remove", data={}).status_code == 403
    r = c.post(f"/account/keys/{first}/remove", data={"csrf": token})
    assert r.status_code == 303
    assert [k.credential_id for k in world.users.credentials("sam")] == [keys[1].credential_id]
    assert events(world, "remove_second_factor") == [("success", None)]
    # Another account's key, or none at all: not found.
    rita_keys = [SoftAuthenticator()]
    register(world, "rita", rita_keys[0], enrolling=True)
    (ritas,) = world.users.credentials("rita")
    assert c.post(f"/account/keys/{ritas.key_id}/remove", data={"csrf": token}).status_code == 404
    assert c.post("/account/keys/..%2F..%2Fx/remove", data={"csrf": token}).status_code == 404
    assert len(world.users.credentials("rita")) == 1
    # Rita's only second factor is her key: she may not remove it.
    rc = client(world)
    page = rc.get(password_step(world, rc, "rita", PASSWORD))
    rt = csrf_of(page.text)
    options = post_json(rc, "/sign-in/key/options", rt, {}).json()["publicKey"]
    rita_key = SoftAuthenticator(credential_id=ritas.credential_id, key=rita_keys[0].key)
    rita_key.counter = 5
    r = post_json(rc, "/sign-in/key", rt, {"credential": rita_key.get(options)})
    page = rc.get(r.json()["next"])
    r = rc.post(
        "/sign-in/password",
        data={"csrf": csrf_of(page.text), "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    assert r.status_code == 303
    token = csrf_of(rc.get("/account/keys").text)
    r = rc.post(f"/account/keys/{ritas.key_id}/remove", data={"csrf": token})
    assert r.status_code == 400 and "only second factor" in r.text
    assert len(world.users.credentials("rita")) == 1


def test_the_web_section_names_the_relying_party_and_checks_it(tmp_path: Path) -> None:
    from sampledrec.serve import WebConfig

    base = {"listen": "127.0.0.1:0"}
    proxied = {
        "webauthn_rp_id": "console.example.com",
        "webauthn_origin": "https://console.example.com",
    }
    config = WebConfig.from_section({**base, **proxied}, tmp_path)
    assert config.webauthn_rp_id == "console.example.com"
    with pytest.raises(InvalidArgument, match="behind a TLS proxy"):
        WebConfig.from_section({**base, "webauthn_rp_id": "console.example.com"}, tmp_path)
    for bad, why in (
        ({"webauthn_rp_id": "10.0.0.7"}, "host name"),
        ({"webauthn_rp_id": "console.example.com", "webauthn_origin": "https://evil.example"},
         "origin"),
        ({"webauthn_origin": "https://console.example.com"}, "needs webauthn_rp_id"),
        ({"webauthn_rp_id": 7}, "must be text"),
    ):  # fmt: skip
        with pytest.raises(InvalidArgument, match=why):
            WebConfig.from_section({**base, **bad}, tmp_path)


def test_a_configured_relying_party_is_the_one_the_ceremonies_use(tmp_path: Path) -> None:
    gen = make_world(tmp_path, webauthn_rp_id="console.example.com")
    world = next(gen)
    try:
        register(world, "rita", SoftAuthenticator(), enrolling=True)
        key = SoftAuthenticator(rp_id="console.example.com", origin="https://console.example.com")
        c = TestClient(
            world.console.app, base_url="https://console.example.com", follow_redirects=False
        )
        page = c.get(password_step(world, c, "sam", PASSWORD))
        token = csrf_of(page.text)
        r = post_json(c, "/sign-in/enrol/key/options", token, {})
        options = r.json()["publicKey"]
        assert options["rp"]["id"] == "console.example.com"
        r = post_json(c, "/sign-in/enrol/key", token, {"credential": key.create(options)})
        assert r.status_code == 200, r.text
        # The same console asked as localhost still holds to its configured rp id.
        other = SoftAuthenticator()  # made for localhost
        c2 = client(world)
        page = c2.get(password_step(world, c2, "aldo", PASSWORD))
        t2 = csrf_of(page.text)
        options = post_json(c2, "/sign-in/enrol/key/options", t2, {}).json()["publicKey"]
        assert options["rp"]["id"] == "console.example.com"
        r = post_json(c2, "/sign-in/enrol/key", t2, {"credential": other.create(options)})
        assert r.status_code == 401
    finally:
        gen.close()


def test_a_key_is_added_only_soon_after_the_password_was_checked(world: World) -> None:
    c = client(world)
    sign_in(world, c, "sam")
    token = csrf_of(c.get("/account/keys").text)
    options = post_json(c, "/account/keys/options", token, {}).json()["publicKey"]
    world.clock.advance(minutes=10)
    assert c.get("/account/keys").status_code == 200  # the session stays alive
    world.clock.advance(minutes=6)
    r = post_json(c, "/account/keys", token, {"credential": SoftAuthenticator().create(options)})
    assert r.status_code == 403 and "sign in again" in r.json()["error"]
    r = post_json(c, "/account/keys/options", token, {})
    assert r.status_code == 403 and "sign in again" in r.json()["error"]
    assert world.users.credentials("sam") == []
