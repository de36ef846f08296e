"""The console's admin pages (users and roles, policy apply with a preview), review notes, the
access log and the audit report, over HTTP (Starlette's TestClient, over HTTPS as in
production): each checked by the library, logged, CSRF-protected."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sampledrec.cli.serve import store_audit
from sampledrec.log.writer import iter_entries
from sampledrec.sampling.policy import Policy

from .console_fixtures import PASSWORD, POLICY, World, csrf_of, make_world, sign_in


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


def signed_in(world: World, name: str) -> Any:
    client = world.client()
    sign_in(world, client, name)
    return client


def account_changes(world: World) -> list[tuple[str, dict[str, Any]]]:
    return [
        (a["principal"], json.loads(a["detail"]))
        for a in world.accesses()
        if a["action"] == "account_change"
    ]


def error_of(html: str) -> str:
    found = re.search(r'id="error">([^<]+)<', html)
    assert found, html
    return found.group(1)


# -- users and roles -----------------------------------------------------------------------------


def test_the_admin_adds_an_account_that_must_change_its_password_at_first_sign_in(
    world: World,
) -> None:
    client = signed_in(world, "ada")
    assert 'href="/admin/users"' in client.get("/").text
    page = client.get("/admin/users")
    assert page.status_code == 200
    for name in ("rita", "sam", "dora", "aldo", "ada"):
        assert f'id="account-{name}"' in page.text
    for role in ("admin", "auditor", "dpo", "qa_reviewer", "supervisor"):
        assert f'value="{role}"' in page.text
    r = client.post(
        "/admin/users",
        data={
            "csrf": csrf_of(page.text),
            "name": "maria",
            "role": ["dpo", "auditor"],
            "password": PASSWORD,
            "confirm": PASSWORD,
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin/users?done=added"
    maria = world.users.get("maria")
    assert maria is not None and maria.roles == ("auditor", "dpo")
    assert maria.must_change and not maria.enrolled
    assert account_changes(world)[-1] == (
        "ada",
        {"account": "maria", "change": "added", "roles": ["auditor", "dpo"]},
    )
    assert PASSWORD not in json.dumps(world.accesses())
    # The new account signs in with the temporary password, enrols, and must change it.
    other = world.client()
    sign_in(world, other, "maria")
    maria = world.users.get("maria")
    assert maria is not None and maria.enrolled and not maria.must_change
    assert other.get("/requests").status_code == 200  # the dpo's desk


@pytest.mark.parametrize(
    ("name", "roles", "password", "confirm", "why"),
    [
        ("maria", ["dpo"], "short", "short", "at least 12 characters"),
        ("maria", ["dpo"], "Password2024!", "Password2024!", "most common"),
        ("maria", ["dpo"], PASSWORD, PASSWORD + "x", "differ"),
        ("maria", ["no_such_role"], PASSWORD, PASSWORD, "not a role of the policy"),
        ("rita", ["dpo"], PASSWORD, PASSWORD, "exists already"),
        ("Maria!", ["dpo"], PASSWORD, PASSWORD, "lower-case letters"),
    ],
)
def test_an_account_that_cannot_be_added_is_refused_with_the_reason(
    world: World, name: str, roles: list[str], password: str, confirm: str, why: str
) -> None:
    client = signed_in(world, "ada")
    page = client.get("/admin/users")
    r = client.post(
        "/admin/users",
        data={
            "csrf": csrf_of(page.text),
            "name": name,
            "role": roles,
            "password": password,
            "confirm": confirm,
        },
    )
    assert r.status_code == 400
    assert why in error_of(r.text)
    assert world.users.get("maria") is None
    if len(password) > 8:
        assert password not in r.text  # never sent back


def test_the_admin_changes_roles_disables_enables_and_resets_and_each_change_is_logged(
    world: World,
) -> None:
    rita = signed_in(world, "rita")
    assert rita.get("/recordings").status_code == 200
    client = signed_in(world, "ada")
    token = csrf_of(client.get("/admin/users").text)
    r = client.post("/admin/users/rita/roles", data={"csrf": token, "role": ["supervisor"]})
    assert r.status_code == 303
    assert world.users.require("rita").roles == ("supervisor",)
    r = client.post("/admin/users/rita/disable", data={"csrf": token})
    assert r.status_code == 303
    assert world.users.require("rita").disabled
    gone = rita.get("/recordings")  # her session ended at once
    assert gone.status_code == 303 and gone.headers["location"].startswith("/sign-in")
    assert client.post("/admin/users/rita/enable", data={"csrf": token}).status_code == 303
    assert not world.users.require("rita").disabled
    new_password = "another long temporary phrase"
    r = client.post(
        "/admin/users/rita/reset",
        data={
            "csrf": token,
            "password": new_password,
            "confirm": new_password,
            "second_factor": "on",
        },
    )
    assert r.status_code == 303
    reset = world.users.require("rita")
    assert reset.must_change and not reset.enrolled and reset.recovery_left == 0
    assert [c["change"] for by, c in account_changes(world) if by == "ada"] == [
        "roles",
        "disabled",
        "enabled",
        "reset",
    ]
    assert account_changes(world)[-1][1]["what"] == ["password", "second_factor"]
    page = client.get("/admin/users?done=reset")
    assert 'id="done"' in page.text and "to enrol at next sign-in" in page.text


def test_the_admin_cannot_lock_itself_out(world: World) -> None:
    client = signed_in(world, "ada")
    token = csrf_of(client.get("/admin/users").text)
    r = client.post("/admin/users/ada/disable", data={"csrf": token})
    assert r.status_code == 400 and "your own account" in error_of(r.text)
    r = client.post("/admin/users/ada/roles", data={"csrf": token, "role": ["dpo"]})
    assert r.status_code == 400 and "your own account" in error_of(r.text)
    ada = world.users.require("ada")
    assert ada.roles == ("admin",) and not ada.disabled
    r = client.post("/admin/users/ada/roles", data={"csrf": token, "role": ["admin", "dpo"]})
    assert r.status_code == 303 and world.users.require("ada").roles == ("admin", "dpo")


@pytest.mark.parametrize("name", ["rita", "sam", "dora", "aldo"])
def test_roles_without_manage_users_are_refused_the_users_page_and_it_is_logged(
    world: World, name: str
) -> None:
    client = signed_in(world, name)
    assert 'href="/admin/users"' not in client.get("/").text
    r = client.get("/admin/users")
    assert r.status_code == 403
    token = csrf_of(client.get("/").text)
    r = client.post("/admin/users/rita/disable", data={"csrf": token})
    assert r.status_code == 403 and not world.users.require("rita").disabled
    denied = [
        a for a in world.accesses() if a["action"] == "manage_users" and a["principal"] == name
    ]
    assert [a["outcome"] for a in denied] == ["denied"] * 2


def test_account_forms_without_the_sessions_csrf_token_are_refused(world: World) -> None:
    client = signed_in(world, "ada")
    r = client.post("/admin/users/rita/disable", data={})
    assert r.status_code == 403
    other = world.client()
    stranger = csrf_of(other.get("/sign-in").text)
    r = client.post(
        "/admin/users",
        data={
            "csrf": stranger,
            "name": "maria",
            "role": ["dpo"],
            "password": PASSWORD,
            "confirm": PASSWORD,
        },
    )
    assert r.status_code == 403
    assert world.users.get("maria") is None and not world.users.require("rita").disabled
    assert not [c for by, c in account_changes(world) if by == "ada"]


# -- policy apply with a preview -------------------------------------------------------------------

NEW_POLICY = POLICY.replace('rate = "0"\npurpose = "quality"', 'rate = "0.02"\npurpose = "quality"')
NEW_POLICY += """
[roles.night_shift]
permissions = ["list", "listen"]
scope = { queue = "night" }
"""


def confirm_fields(html: str) -> dict[str, str]:
    form = html[html.index('id="confirm"') :]
    version = re.search(r'name="version" value="([0-9a-f]{64})"', form)
    replacing = re.search(r'name="replacing" value="([0-9a-f]*)"', form)
    text = re.search(r'<textarea name="text" class="hidden" readonly>(.*?)</textarea>', form, re.S)
    assert version and replacing and text
    import html as html_lib

    return {
        "version": version.group(1),
        "replacing": replacing.group(1),
        "text": html_lib.unescape(text.group(1)),
    }


def test_the_admin_previews_a_policy_sees_the_changes_and_warnings_then_applies_it(
    world: World,
) -> None:
    client = signed_in(world, "ada")
    before = world.store.policy(world.clock.now()).version
    page = client.get("/admin/policy")
    assert page.status_code == 200 and before in page.text
    r = client.post("/admin/policy/preview", data={"csrf": csrf_of(page.text), "text": NEW_POLICY})
    assert r.status_code == 200
    expected = world.store.preview_policy(NEW_POLICY, at=world.clock.now())
    assert len(expected.changes) == 2
    for change in expected.changes:
        assert f"<td>{change.name}</td>" in r.text
    assert "the default rule starts recording (rate 0 -&gt; 0.02)" in r.text
    assert world.store.policy(world.clock.now()).version == before  # nothing applied yet
    fields = confirm_fields(r.text)
    assert fields["replacing"] == before and fields["text"] == NEW_POLICY
    r = client.post("/admin/policy/apply", data={"csrf": csrf_of(r.text), **fields})
    assert r.status_code == 303
    after = world.store.policy(world.clock.now())
    assert after.version == Policy.from_toml(NEW_POLICY).version == fields["version"]
    assert r.headers["location"] == f"/admin/policy?applied={after.version}"
    assert 'id="applied"' in client.get(r.headers["location"]).text
    world.log.flush()
    logged = [
        e.fields
        for e in iter_entries(world.store.log_storage, world.store.keyring)
        if e.type_name == "policy"
    ]
    assert logged[-1]["principal"] == "ada" and logged[-1]["version"].hex() == after.version
    users_page = client.get("/admin/users")
    assert 'value="night_shift"' in users_page.text


def test_a_policy_file_can_be_uploaded_and_a_refused_one_shows_the_guardrail(
    world: World,
) -> None:
    client = signed_in(world, "ada")
    token = csrf_of(client.get("/admin/policy").text)
    r = client.post(
        "/admin/policy/preview",
        data={"csrf": token, "text": ""},
        files={"file": ("new.toml", NEW_POLICY.encode(), "application/toml")},
    )
    assert r.status_code == 200 and 'id="changes"' in r.text
    bad = POLICY.replace('rate = "0"\npurpose = "quality"', 'rate = "1"\npurpose = "quality"')
    r = client.post("/admin/policy/preview", data={"csrf": token, "text": bad})
    assert r.status_code == 400
    assert 'id="refused"' in r.text and "legal_obligation" in r.text
    assert 'id="confirm"' not in r.text
    r = client.post("/admin/policy/preview", data={"csrf": token, "text": "  "})
    assert r.status_code == 400 and "Paste the policy" in error_of(r.text)


def test_apply_refuses_a_policy_other_than_the_one_previewed(world: World) -> None:
    client = signed_in(world, "ada")
    before = world.store.policy(world.clock.now()).version
    token = csrf_of(client.get("/admin/policy").text)
    r = client.post("/admin/policy/preview", data={"csrf": token, "text": NEW_POLICY})
    fields = confirm_fields(r.text)
    fields["text"] = fields["text"].replace('rate = "0.02"', 'rate = "0.2"')
    r = client.post("/admin/policy/apply", data={"csrf": token, **fields})
    assert r.status_code == 409 and "not the one previewed" in error_of(r.text)
    assert world.store.policy(world.clock.now()).version == before


@pytest.mark.parametrize("name", ["rita", "sam", "dora", "aldo"])
def test_roles_without_manage_policy_are_refused_the_policy_pages(world: World, name: str) -> None:
    client = signed_in(world, name)
    before = world.store.policy(world.clock.now()).version
    assert client.get("/admin/policy").status_code == 403
    token = csrf_of(client.get("/").text)
    version = Policy.from_toml(NEW_POLICY).version
    r = client.post(
        "/admin/policy/apply",
        data={"csrf": token, "text": NEW_POLICY, "version": version, "replacing": before},
    )
    assert r.status_code == 403
    r = client.post("/admin/policy/preview", data={"csrf": token, "text": NEW_POLICY})
    assert r.status_code == 403 and "night_shift" not in r.text
    assert world.store.policy(world.clock.now()).version == before
    denied = [a for a in world.accesses() if a["action"] == "manage_policy"]
    assert [(a["outcome"], a["principal"]) for a in denied] == [("denied", name)] * 3


def test_policy_forms_without_the_sessions_csrf_token_are_refused(world: World) -> None:
    client = signed_in(world, "ada")
    before = world.store.policy(world.clock.now()).version
    version = Policy.from_toml(NEW_POLICY).version
    r = client.post(
        "/admin/policy/apply", data={"text": NEW_POLICY, "version": version, "replacing": before}
    )
    assert r.status_code == 403
    assert client.post("/admin/policy/preview", data={"text": NEW_POLICY}).status_code == 403
    assert world.store.policy(world.clock.now()).version == before


# -- review notes ----------------------------------------------------------------------------------


def test_a_reviewer_writes_a_note_that_supervisors_read_and_auditors_never_see(
    world: World,
) -> None:
    rid = world.recordings["sales"]
    rita = signed_in(world, "rita")
    assert f'href="/recordings/{rid}/notes"' in rita.get(f"/recordings/{rid}").text
    page = rita.get(f"/recordings/{rid}/notes")
    assert page.status_code == 200 and "No note yet." in page.text
    r = rita.post(
        f"/recordings/{rid}/notes",
        data={"csrf": csrf_of(page.text), "text": "Greeting <b>too</b> quick"},
    )
    assert r.status_code == 303 and r.headers["location"] == f"/recordings/{rid}/notes"
    page = rita.get(f"/recordings/{rid}/notes")
    assert "Greeting &lt;b&gt;too&lt;/b&gt; quick" in page.text  # escaped, never markup
    sam = signed_in(world, "sam")
    assert "Greeting &lt;b&gt;too&lt;/b&gt; quick" in sam.get(f"/recordings/{rid}/notes").text
    aldo = signed_in(world, "aldo")
    r = aldo.get(f"/recordings/{rid}/notes")
    assert r.status_code == 403 and "Greeting" not in r.text
    notes = [a for a in world.accesses() if a["action"] == "review_note"]
    assert [(a["principal"], a["outcome"]) for a in notes][-1] == ("aldo", "denied")
    assert {a["principal"] for a in notes if a["outcome"] == "granted"} == {"rita", "sam"}
    assert not any("Greeting" in str(a["detail"]) for a in notes)


def test_notes_outside_scope_unknown_ids_expired_and_bad_forms_are_refused(
    world: World,
) -> None:
    rita = signed_in(world, "rita")
    support = world.recordings["support"]
    assert rita.get(f"/recordings/{support}/notes").status_code == 403
    token = csrf_of(rita.get("/").text)
    r = rita.post(f"/recordings/{support}/notes", data={"csrf": token, "text": "mine?"})
    assert r.status_code == 403
    assert world.console.vault.catalog.notes_of(support) == []
    assert rita.get("/recordings/not-a-uuid/notes").status_code == 404
    assert rita.get("/recordings/00000000-0000-4000-8000-000000000000/notes").status_code == 404
    rid = world.recordings["sales"]
    r = rita.post(f"/recordings/{rid}/notes", data={"text": "no token"})
    assert r.status_code == 403
    r = rita.post(f"/recordings/{rid}/notes", data={"csrf": token, "text": "x" * 2001})
    assert r.status_code == 400 and "2000" in error_of(r.text)
    assert world.console.vault.catalog.notes_of(rid) == []
    world.clock.advance(days=100)
    world.console.sessions.idle = world.console.sessions.max_age = 1e9
    assert rita.get(f"/recordings/{rid}/notes").status_code == 410
    r = rita.post(f"/recordings/{rid}/notes", data={"csrf": token, "text": "late"})
    assert r.status_code == 410


# -- the access log --------------------------------------------------------------------------------


def test_the_dpo_reads_the_access_log_filtered_by_action_outcome_and_date(world: World) -> None:
    rita = signed_in(world, "rita")
    assert rita.get(f"/recordings/{world.recordings['support']}").status_code == 403
    dora = signed_in(world, "dora")
    assert 'href="/access-log"' in dora.get("/").text
    page = dora.get("/access-log")
    assert page.status_code == 200
    for action in ("account_change", "sign_in", "list"):
        assert f'<option value="{action}"' in page.text
    denied = dora.get("/access-log", params={"action": "list", "outcome": "denied"})
    rows = re.findall(r'<tr class="(\w+)">', denied.text)
    assert rows == ["denied"]
    assert "out of scope" in denied.text and "rita" in denied.text
    day = world.clock.now().date().isoformat()
    same_day = dora.get("/access-log", params={"from": day, "to": day})
    assert "account_change" in same_day.text
    later = dora.get("/access-log", params={"from": "2031-01-01"})
    assert 'id="matched">0 matching entries' in later.text
    assert dora.get("/access-log", params={"from": "yesterday"}).status_code == 400


@pytest.mark.parametrize("name", ["rita", "sam", "ada"])
def test_roles_without_read_log_are_refused_the_access_log(world: World, name: str) -> None:
    client = signed_in(world, name)
    assert client.get("/access-log").status_code == 403
    last = [a for a in world.accesses() if a["action"] == "read_log"][-1]
    assert (last["outcome"], last["principal"]) == ("denied", name)


# -- the audit report ------------------------------------------------------------------------------


def test_an_auditor_runs_the_audit_and_sees_its_findings_and_no_audio(world: World) -> None:
    world.console.audit = store_audit(world.store, clock=world.clock)
    world.clock.advance(days=2)  # the recordings' epoch has ended: its key can be revealed
    world.console.sessions.idle = world.console.sessions.max_age = 1e9
    aldo = signed_in(world, "aldo")
    page = aldo.get("/audit/report")
    assert page.status_code == 200 and 'id="no-report"' in page.text
    r = aldo.post("/audit/report", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 200
    direct = store_audit(world.store, clock=world.clock)()
    # The ended epoch's key was revealed in memory: every decision was recomputed, and no
    # reveal went to the log (the key did not leave the process).
    assert direct["verdict"] == "PASS" and direct["checks"]["decisions"] == "PASS"
    world.log.flush()
    assert not [e for e in iter_entries(world.store.log_storage) if e.type_name == "key_reveal"]
    verdict = re.search(r'<h2 id="verdict" class="verdict-(\w+)">', r.text)
    assert verdict and verdict.group(1) == direct["verdict"]
    for check, status in direct["checks"].items():
        assert f'<tr class="{status}"><td>{check}</td>' in r.text
    assert f"Findings ({len(direct['findings'])})" in r.text
    assert "audio.wav" not in r.text and "<audio" not in r.text
    assert "Run by aldo" in aldo.get("/audit/report").text  # kept for the next visit
    granted = [a for a in world.accesses() if a["action"] == "verify"]
    assert ("granted", "aldo") in [(a["outcome"], a["principal"]) for a in granted]


def test_the_audit_runs_in_a_worker_thread_while_other_pages_answer(world: World) -> None:
    started, release = threading.Event(), threading.Event()
    released_in_time: list[bool] = []

    def slow_audit() -> dict[str, Any]:
        started.set()
        released_in_time.append(release.wait(30))  # False: nothing answered meanwhile
        return {"verdict": "PASS", "checks": {}, "findings": [], "at": "now"}

    world.console.audit = slow_audit
    with world.client() as client:
        sign_in(world, client, "dora")
        token = csrf_of(client.get("/audit/report").text)
        answers: list[int] = []
        runner = threading.Thread(
            target=lambda: answers.append(
                client.post("/audit/report", data={"csrf": token}).status_code
            )
        )
        runner.start()
        assert started.wait(30)
        assert client.get("/").status_code == 200  # the event loop is free
        again = client.post("/audit/report", data={"csrf": token})
        assert again.status_code == 409  # one run at a time
        release.set()
        runner.join(30)
    assert answers == [200] and released_in_time == [True]


def test_without_the_audit_function_the_page_says_how_to_audit(world: World) -> None:
    dora = signed_in(world, "dora")
    page = dora.get("/audit/report")
    assert "not given the audit" in page.text and 'id="run-audit"' not in page.text
    r = dora.post("/audit/report", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 503 and "sampledrec audit verify" in error_of(r.text)


@pytest.mark.parametrize("name", ["rita", "sam", "ada"])
def test_roles_without_verify_are_refused_the_audit_report(world: World, name: str) -> None:
    ran: list[int] = []

    def audit() -> dict[str, Any]:
        ran.append(1)
        return {"verdict": "PASS"}

    world.console.audit = audit
    client = signed_in(world, name)
    assert client.get("/audit/report").status_code == 403
    token = csrf_of(client.get("/").text)
    assert client.post("/audit/report", data={"csrf": token}).status_code == 403
    assert ran == []
