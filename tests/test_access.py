"""Access control: roles in the policy file, defaults, scopes, enforcement, and the access log."""

from __future__ import annotations

import io
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Policy, Principal, SampledrecError, Store
from sampledrec.errors import AccessDenied, InvalidArgument, InvalidPolicy
from sampledrec.log.verify import verify_log
from sampledrec.log.writer import DecisionLog, iter_entries
from sampledrec.sampling.sampler import Sampler
from sampledrec.vault.access import DEFAULT_ROLES, OWNER, PERMISSIONS, Role, grant
from sampledrec.vault.audio import AudioFormat, encode_wav, frames, synthetic_speech
from sampledrec.vault.catalog import _SCHEMA, SqliteCatalog
from sampledrec.vault.recorder import Vault

PCM = AudioFormat("pcm16", 8000, 1)
AT = "2030-03-04T10:00:00Z"
RULES = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call of this queue must be recorded"
retention = "3 months"

[[rules]]
name = "support"
match = { queue = ["support", "support-vip"] }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call of this queue must be recorded"
retention = "3 months"

[default]
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call must be recorded"
retention = "3 months"
"""
ROLES = """
[roles.sales_reviewer]
permissions = ["list", "listen"]
scope = { queue = "sales" }

[roles.support_reviewer]
permissions = ["list", "listen"]
scope = { queue = "support" }

[roles.support_lead]
permissions = ["list", "listen", "export"]
scope = { queue = ["support", "support-vip"] }
"""
MINIMAL = """
[default]
rate = "0.05"
purpose = "quality"
retention = "6 months"
"""

# What each default role may do (issue 5): the permission matrix the tests hold them to.
EXPECTED = {
    "qa_reviewer": {"list", "listen"},
    "supervisor": {"list", "listen", "export"},
    "dpo": {"list", "hold", "subject_requests", "read_log", "verify"},
    "auditor": {"list", "verify", "read_log"},
    "admin": {"list", "manage_policy", "manage_keys", "manage_users"},
}

Opened = tuple[Store, DecisionLog, Sampler, Vault]


def load(text: str) -> Policy:
    return Policy.from_toml(text, source="policy.toml")


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Opened]:
    (tmp_path / "p.toml").write_text(RULES + ROLES)
    store = Store.init(tmp_path / "s", policy=tmp_path / "p.toml")
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        yield store, log, store.sampler(clock=clock, log=log), vault


def record(
    vault: Vault, sampler: Sampler, ref: str, attrs: dict[str, str], *, store_attrs: bool = True
) -> str:
    d = sampler.decide(ref, attrs)
    assert d.record
    audio = synthetic_speech(0.2, seed=len(ref))
    with vault.record(
        d, audio_format=PCM, chunk_size=1024, attrs=attrs if store_attrs else None
    ) as rec:
        for frame in frames(audio, PCM, 20):
            rec.write(frame)
    return rec.recording_id


def accesses(store: Store, log: DecisionLog) -> list[dict[str, Any]]:
    log.flush()
    return [
        e.fields for e in iter_entries(store.path / "log", store.keyring) if e.type_name == "access"
    ]


def who(role: str, name: str = "user") -> Principal:
    return Principal(name, (role,))


# -- the policy file --------------------------------------------------------------------------


def test_default_roles_exist_without_a_roles_table() -> None:
    roles = load(MINIMAL).roles
    assert {name: set(r.permissions) for name, r in roles.items()} == EXPECTED
    assert all(not r.scope for r in roles.values())
    assert "listen" not in roles["dpo"].permissions
    assert not {"listen", "export"} & roles["auditor"].permissions


def test_roles_table_overrides_and_extends_the_defaults() -> None:
    policy = load(
        MINIMAL
        + """
[roles.qa_reviewer]
permissions = ["list", "listen"]
scope = { queue = ["sales", "support"], direction = "inbound", vip = true, level = 2 }

[roles.trainer]
description = "Listens to training calls"
permissions = ["listen"]
"""
    )
    qa = policy.roles["qa_reviewer"]
    assert dict(qa.scope) == {
        "queue": frozenset({"sales", "support"}),
        "direction": frozenset({"inbound"}),
        "vip": frozenset({"true"}),
        "level": frozenset({"2"}),
    }
    assert policy.roles["trainer"].permissions == frozenset({"listen"})
    assert policy.roles["supervisor"] == DEFAULT_ROLES["supervisor"]  # untouched defaults stay
    disabled = load(MINIMAL + "[roles.supervisor]\npermissions = []\n")
    assert disabled.roles["supervisor"].permissions == frozenset()


def test_roles_are_part_of_the_canonical_form_and_version() -> None:
    plain, with_roles = load(MINIMAL), load(MINIMAL + ROLES)
    assert plain.version != with_roles.version
    doc = json.loads(with_roles.canonical)
    assert doc["roles"]["support_lead"] == {
        "permissions": ["list", "listen", "export"],
        "scope": {"queue": ["support", "support-vip"]},
    }
    assert load(MINIMAL + ROLES).version == with_roles.version


@pytest.mark.parametrize(
    ("table", "needles"),
    [
        (
            '[roles.qa]\npermissions = ["list", "lisen"]',
            ["policy.toml", "roles.qa.permissions", "'lisen'", ", ".join(PERMISSIONS)],
        ),
        ('roles = "qa"', ["field 'roles'", "must be a table of roles"]),
        ('[roles]\nqa = "list"', ["roles.qa", "must be a table"]),
        ("[roles.qa]\nscope = {}", ["roles.qa.permissions", "missing"]),
        ('[roles.qa]\npermissions = "list"', ["roles.qa.permissions", "must be a list"]),
        ('[roles.qa]\npermissions = ["list"]\ncolour = "red"', ["'colour'", "a role may have"]),
        ('[roles.owner]\npermissions = ["list"]', ["roles.owner", "reserved"]),
        ('[roles."q a"]\npermissions = ["list"]', ["role name 'q a'"]),
        ('[roles.auditor]\npermissions = ["list", "listen"]', ["roles.auditor", "'listen'"]),
        ('[roles.auditor]\npermissions = ["export"]', ["never hear or export"]),
        ('[roles.qa]\npermissions = ["list"]\nscope = "sales"', ["roles.qa.scope"]),
        ('[roles.qa]\npermissions = ["list"]\nscope = { queue = [] }', ["empty list"]),
        ('[roles.qa]\npermissions = ["list"]\nscope = { level = 1.5 }', ["text, numbers"]),
        ('[roles.qa]\npermissions = ["list"]\ndescription = 3', ["roles.qa.description"]),
    ],
)
def test_role_mistakes_are_refused_clearly(table: str, needles: list[str]) -> None:
    text = table + "\n" + MINIMAL if table.startswith("roles =") else MINIMAL + table + "\n"
    with pytest.raises(InvalidPolicy) as info:
        load(text)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


# -- principals and grants --------------------------------------------------------------------


def test_principal_is_checked_when_built() -> None:
    with pytest.raises(InvalidArgument, match="needs a name"):
        Principal("  ")
    with pytest.raises(InvalidArgument, match="sequence of role names"):
        Principal("ann", "supervisor")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="is not a role name"):
        Principal("ann", ("",))
    assert Principal("ann", ["supervisor"]).roles == ("supervisor",)  # type: ignore[arg-type]
    assert Principal("ann").roles == ()


def test_owner_principal_holds_every_permission() -> None:
    owner = Principal.owner("root")
    assert owner == Principal("root", (OWNER,)) and owner.is_owner
    assert not Principal("ann", ("supervisor",)).is_owner
    assert Principal.owner().name == "sampledrec"
    for permission in PERMISSIONS:
        g = grant(owner, permission, {})
        assert g and g.unrestricted


@pytest.mark.parametrize("role", sorted(EXPECTED))
@pytest.mark.parametrize("permission", PERMISSIONS)
def test_each_default_role_grants_exactly_its_permissions(role: str, permission: str) -> None:
    assert bool(grant(who(role), permission, DEFAULT_ROLES)) == (permission in EXPECTED[role])


def test_no_roles_grant_nothing_and_unknown_roles_are_named() -> None:
    for permission in PERMISSIONS:
        assert not grant(Principal("ann"), permission, DEFAULT_ROLES)
    with pytest.raises(InvalidArgument, match=r"role 'reviewr'.*known roles are admin, auditor"):
        grant(who("reviewr"), "list", DEFAULT_ROLES)
    with pytest.raises(InvalidArgument, match="permission 'delete' does not exist"):
        grant(who("admin"), "delete", DEFAULT_ROLES)


def test_role_scope_matching() -> None:
    role = Role("r", frozenset({"list"}), {"queue": frozenset({"sales", "support"})})
    assert role.reaches({"queue": "sales"}) and not role.reaches({"queue": "billing"})
    assert not role.reaches({})  # an attribute the recording lacks never widens a scope
    assert role.reaches({}, {"queue": frozenset({"sales"})})
    assert not role.reaches({}, {"queue": frozenset({"sales", "billing"})})
    assert Role("all", frozenset({"list"})).reaches({})
    with pytest.raises(InvalidArgument, match="'fly' is not a permission"):
        Role("r", frozenset({"fly"}))
    assert role.describe() == "r (queue in sales, support)"


# -- enforcement in the vault -----------------------------------------------------------------


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_reads_are_granted_or_refused_by_role(opened: Opened, role: str, tmp_path: Path) -> None:
    _, _, sampler, vault = opened
    rid = record(vault, sampler, "c1", {"queue": "sales"})
    p = who(role)
    allowed = EXPECTED[role]
    assert [r.recording_id for r in vault.recordings(principal=p)] == [rid]  # all may list
    reads: list[tuple[str, Callable[[], object]]] = [
        ("listen", lambda: vault.open(rid, p)),
        ("listen", lambda: vault.read_range(rid, 0, 100, p)),
        ("export", lambda: vault.export(rid, tmp_path / f"{role}.wav", p)),
    ]
    for action, read in reads:
        if action in allowed:
            assert read()
        else:
            with pytest.raises(AccessDenied, match=f"may not {action}"):
                read()
    assert (tmp_path / f"{role}.wav").exists() == ("export" in allowed)


def test_a_principal_without_roles_may_do_nothing_and_none_means_the_owner(
    opened: Opened,
) -> None:
    _, _, sampler, vault = opened
    rid = record(vault, sampler, "c1", {"queue": "sales"})
    with pytest.raises(AccessDenied, match=r"none of its roles \(it has none\)") as info:
        vault.open(rid, Principal("qa"))
    assert isinstance(info.value, PermissionError) and isinstance(info.value, SampledrecError)
    assert (
        "roles that do: qa_reviewer, sales_reviewer, supervisor, support_lead, support_reviewer "
        "(pass Principal('qa', roles)" in str(info.value)
    )
    with pytest.raises(AccessDenied):
        vault.recordings(principal=Principal("qa"))
    assert vault.open(rid).audio  # no principal: the store's owner
    assert vault.open(rid, Principal.owner("root")).audio
    with pytest.raises(InvalidArgument, match="role 'ghost'"):
        vault.open(rid, who("ghost"))


def test_auditor_lists_metadata_but_never_listens(opened: Opened, tmp_path: Path) -> None:
    _, _, sampler, vault = opened
    rid = record(vault, sampler, "c1", {"queue": "support"})
    auditor = who("auditor", "aud")
    (row,) = vault.recordings(principal=auditor)
    assert row.recording_id == rid and row.duration_ms == 200
    for read in (
        lambda: vault.open(rid, auditor),
        lambda: vault.read_range(rid, 0, 50, auditor),
        lambda: vault.export(rid, tmp_path / "a.wav", auditor),
    ):
        with pytest.raises(AccessDenied):
            read()
    with pytest.raises(AccessDenied):  # even for a recording that does not exist
        vault.open("no-such-id", auditor)
    assert not (tmp_path / "a.wav").exists()


def test_scopes_by_stored_attributes(opened: Opened) -> None:
    _, _, sampler, vault = opened
    sales = record(vault, sampler, "c1", {"queue": "sales", "agent": "a1"})
    support = record(vault, sampler, "c2", {"queue": "support"})
    other = record(vault, sampler, "c3", {"queue": "billing"})
    # The agent is kept in its own column; attrs keeps what rules and scopes name (0014).
    assert vault.catalog.get(sales).attrs == {"queue": "sales"}  # type: ignore[union-attr]
    listed = {
        role: {r.recording_id for r in vault.recordings(principal=who(role))}
        for role in ("sales_reviewer", "support_reviewer", "support_lead", "qa_reviewer")
    }
    assert listed == {
        "sales_reviewer": {sales},
        "support_reviewer": {support},
        "support_lead": {support},
        "qa_reviewer": {sales, support, other},
    }
    assert vault.open(sales, who("sales_reviewer")).audio
    with pytest.raises(AccessDenied, match=r"outside the scope .*support_reviewer \(queue in"):
        vault.open(sales, who("support_reviewer"))
    both = Principal("ann", ("sales_reviewer", "support_reviewer"))
    assert len(vault.recordings(principal=both)) == 2
    assert vault.open(support, both).audio


def test_scopes_by_rule_match_when_no_attributes_were_stored(opened: Opened) -> None:
    _, _, sampler, vault = opened
    sales = record(vault, sampler, "c1", {"queue": "sales"}, store_attrs=False)
    vip = record(vault, sampler, "c2", {"queue": "support-vip"}, store_attrs=False)
    other = record(vault, sampler, "c3", {"queue": "billing"}, store_attrs=False)
    assert vault.catalog.get(sales).attrs == {}  # type: ignore[union-attr]
    assert vault.open(sales, who("sales_reviewer")).audio  # rule "sales" requires queue=sales
    # Rule "support" takes support or support-vip: only a scope holding both may reach it.
    with pytest.raises(AccessDenied):
        vault.open(vip, who("support_reviewer"))
    assert vault.open(vip, who("support_lead")).audio
    # The default rule required nothing: no scoped role reaches its recordings.
    assert [r.recording_id for r in vault.recordings(principal=who("support_lead"))] == [vip]
    assert other not in {r.recording_id for r in vault.recordings(principal=who("sales_reviewer"))}


def test_record_attrs_are_checked(opened: Opened) -> None:
    _, _, sampler, vault = opened
    d = sampler.decide("c1", {"queue": "sales"})
    with pytest.raises(InvalidArgument, match=r"attrs\['queue'\]"):
        vault.record(d, audio_format=PCM, attrs={"queue": ["sales"]})
    with pytest.raises(InvalidArgument, match="must be a mapping"):
        vault.record(d, audio_format=PCM, attrs="queue=sales")  # type: ignore[arg-type]
    attrs = {"queue": "sales", "vip": True, "level": 2, "x": None}
    with vault.record(d, audio_format=PCM, attrs=attrs) as rec:
        rec.write(bytes(320))
    # Only what a rule or a role scope names is kept (docs/decisions/0014-catalog-attributes.md;
    # how booleans and numbers are kept as text: test_the_catalog_keeps_only_named_attributes).
    assert rec.row.attrs == {"queue": "sales"}


def test_every_attempt_is_logged_with_principal_action_and_outcome(
    opened: Opened, tmp_path: Path
) -> None:
    store, log, sampler, vault = opened
    rid = record(vault, sampler, "c1", {"queue": "sales"})
    before = len(accesses(store, log))
    attempts: list[tuple[Principal | str, str, Any]] = [
        (who("sales_reviewer", "sam"), "list", lambda p: vault.recordings(principal=p)),
        (who("support_reviewer", "sue"), "list", lambda p: vault.recordings(principal=p)),
        (who("sales_reviewer", "sam"), "listen", lambda p: vault.open(rid, p)),
        (who("support_reviewer", "sue"), "listen", lambda p: vault.read_range(rid, 0, 50, p)),
        (who("auditor", "aud"), "listen", lambda p: vault.open(rid, p)),
        (who("qa_reviewer", "quinn"), "export", lambda p: vault.export(rid, tmp_path / "q.wav", p)),
        (who("supervisor", "sup"), "export", lambda p: vault.export(rid, tmp_path / "s.wav", p)),
        ("mallory", "list", lambda p: vault.recordings(principal=p)),
        (who("dpo", "dee"), "hold", lambda p: vault.authorize(p, "hold", recording_id=rid)),
        (who("qa_reviewer", "quinn"), "read_log", lambda p: vault.authorize(p, "read_log")),
        (who("auditor", "aud"), "verify", lambda p: vault.authorize(p, "verify")),
    ]
    expected = []
    for principal, action, attempt in attempts:
        try:
            attempt(principal)
            outcome = "granted"
        except (AccessDenied, InvalidArgument):  # a bare name is refused as a misuse
            outcome = "denied"
        name = principal if isinstance(principal, str) else principal.name
        expected.append((name, action, outcome))
    got = [(e["principal"], e["action"], e["outcome"]) for e in accesses(store, log)[before:]]
    assert got == expected
    assert [o for _, _, o in expected] == [
        "granted",
        "granted",  # sue may list, and sees nothing of the sales queue
        "granted",
        "denied",
        "denied",
        "denied",
        "granted",
        "denied",
        "granted",
        "denied",
        "granted",
    ]
    entries = accesses(store, log)[before:]
    assert entries[1]["detail"] == "0 of 1 recordings (scope)"
    assert entries[3]["recording_id"] == rid and entries[3]["detail"] == "out of scope"
    assert entries[4]["detail"] == "no role grants listen"
    assert verify_log(store.path, public_key=store.public_key).ok


def test_a_bare_name_is_refused_by_every_entry_point_and_logged(
    opened: Opened, tmp_path: Path
) -> None:
    """Red team (#12): Retention.hold(..., principal="quinn") succeeded for a qa_reviewer. Every
    entry point that reads or changes recordings takes a Principal; a name alone is refused."""
    from sampledrec import Retention, SubjectRequests

    store, log, sampler, vault = opened
    rid = record(vault, sampler, "c1", {"queue": "sales"})
    retention = Retention(vault, clock=vault.clock)
    subjects = SubjectRequests(store, vault, log)
    before = len(accesses(store, log))
    name: Any = "quinn"  # what a caller might pass instead of Principal("quinn", roles)
    selected = sampler.decide("c2", {"queue": "sales"})
    attempts: list[tuple[str, Callable[[], object]]] = [
        ("list", lambda: vault.recordings(principal=name)),
        ("listen", lambda: vault.open(rid, name)),
        ("listen", lambda: vault.read_range(rid, 0, 50, name)),
        ("export", lambda: vault.export(rid, tmp_path / "q.wav", name)),
        ("read_log", lambda: vault.authorize(name, "read_log")),
        ("hold", lambda: retention.hold([rid], reason="case 12", principal=name)),
        ("subject_requests", lambda: subjects.receive("erase", "+33612345678", principal=name)),
        ("subject_requests", lambda: subjects.subject_erase("+33612345678", principal=name)),
        ("list", lambda: retention.select({"ids": [rid]}, principal=name)),
        ("record", lambda: vault.record(selected, audio_format=PCM, principal=name)),
    ]
    for _, attempt in attempts:
        with pytest.raises(
            InvalidArgument, match=r"principal='quinn' is a bare name: pass Principal"
        ):
            attempt()
    got = [(e["principal"], e["action"], e["outcome"]) for e in accesses(store, log)[before:]]
    assert got == [("quinn", action, "denied") for action, _ in attempts]
    assert vault.catalog.holds() == [] and subjects.requests() == []
    assert not (tmp_path / "q.wav").exists()
    with pytest.raises(InvalidArgument, match="is not a Principal"):
        vault.open(rid, 42)  # type: ignore[arg-type]


def test_the_sharp_entry_points_check_their_principal_too(opened: Opened) -> None:
    """Red team (#12): the raw data key, a sealed recording's audio and crash recovery were open
    to any caller. Each checks its principal: ``hold`` for the data key (re-wrapping under a
    hold), ``subject_requests`` for the audio (the data-subject export), the owner for
    recovery; each refusal is logged."""
    store, log, _sampler, vault = opened
    rid = record(vault, _sampler, "c1", {"queue": "sales"})
    row = vault.catalog.get(rid)
    assert row is not None
    reviewer = Principal("rita", ("qa_reviewer",))
    before = len(accesses(store, log))
    with pytest.raises(AccessDenied):
        vault.data_key(row, principal=reviewer)
    with pytest.raises(AccessDenied):
        vault.read_sealed(row, principal=reviewer)
    with pytest.raises(AccessDenied, match="only the store's owner"):
        vault.recover(principal=reviewer)
    got = [(e["principal"], e["action"], e["outcome"]) for e in accesses(store, log)[before:]]
    assert got == [
        ("rita", "hold", "denied"),
        ("rita", "subject_requests", "denied"),
        ("rita", "recover", "denied"),
    ]
    # The owner (no principal) still may.
    assert len(vault.data_key(row)) == 32 and vault.read_sealed(row) and vault.recover() == []


def test_holds_need_the_hold_permission_within_scope(tmp_path: Path) -> None:
    from sampledrec import Retention

    (tmp_path / "p.toml").write_text(
        RULES + ROLES + '[roles.sales_dpo]\npermissions = ["hold"]\nscope = { queue = "sales" }\n'
    )
    store = Store.init(tmp_path / "s", policy=tmp_path / "p.toml")
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        sales = record(vault, sampler, "c1", {"queue": "sales"})
        support = record(vault, sampler, "c2", {"queue": "support"})
        retention = Retention(vault, clock=clock)
        with pytest.raises(AccessDenied, match="'quinn' may not hold"):
            retention.hold([sales], reason="case 12", principal=who("qa_reviewer", "quinn"))
        with pytest.raises(AccessDenied, match=r"may not hold recording .*outside the scope"):
            retention.hold([sales, support], reason="case 12", principal=who("sales_dpo"))
        assert vault.catalog.holds() == []  # refused before anything changed
        hold = retention.hold([sales], reason="case 12", principal=who("sales_dpo", "sam"))
        with pytest.raises(AccessDenied, match="may not hold"):
            retention.release(hold.hold_id, principal=who("qa_reviewer", "quinn"))
        assert retention.release(hold.hold_id, principal=who("sales_dpo")).released_at
        dpo = retention.hold({"ids": [support]}, reason="case 13", principal=who("dpo", "dee"))
        assert retention.release(dpo.hold_id).released_at  # no principal: the store's owner
        # Selecting recordings is a read of their metadata: `list`, within scope.
        listed = retention.select({"status": "sealed"}, principal=who("sales_reviewer"))
        assert [r.recording_id for r in listed] == [sales]
        assert len(retention.select({})) == 2
        with pytest.raises(AccessDenied, match="may not list"):
            retention.select({}, principal=who("sales_dpo"))
        with pytest.raises(InvalidArgument, match="bare name"):
            retention.select({}, principal="sam")  # type: ignore[arg-type]
        log.flush()
        placed = [
            e.fields["principal"]
            for e in iter_entries(store.path / "log", store.keyring)
            if e.type_name == "hold"
        ]
        assert placed == ["sam", "user", "dee", "sampledrec"]


def test_authorize_checks_permission_names_and_scope(opened: Opened) -> None:
    _, _, sampler, vault = opened
    rid = record(vault, sampler, "c1", {"queue": "sales"})
    with pytest.raises(InvalidArgument, match="permission 'delete' does not exist"):
        vault.authorize(who("admin"), "delete")
    assert vault.authorize(who("admin"), "manage_keys").roles[0].name == "admin"
    assert vault.authorize(None, "manage_policy").unrestricted  # the owner
    with pytest.raises(AccessDenied, match="may not manage_keys"):
        vault.authorize(who("dpo"), "manage_keys")
    with pytest.raises(AccessDenied, match="outside the scope"):
        vault.authorize(who("support_lead"), "listen", recording_id=rid)


# -- the catalog and the CLI ------------------------------------------------------------------


def test_catalog_of_an_earlier_version_gains_the_attrs_column(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    old = _SCHEMA.replace(",\n    attrs TEXT NOT NULL DEFAULT '{}'", "")
    assert old != _SCHEMA
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute(
        "INSERT INTO recordings (recording_id, rule, purpose, policy_version, epoch_id, "
        "decision_index, started_at, expires_at_sealed, expires_at, bucket, audio_format, "
        "file, status) VALUES ('r1', 'sales', 'quality', 'v', 'e', 1, 0, 1, 1, 'b', 'f', "
        "'x', 'sealed')"
    )
    db.commit()
    db.close()
    catalog = SqliteCatalog(path)
    row = catalog.get("r1")
    assert row is not None and row.attrs == {}
    catalog.update("r1", attrs={"queue": "sales"})
    catalog.close()
    catalog = SqliteCatalog(path)  # opening it again changes nothing
    assert catalog.find()[0].attrs == {"queue": "sales"}
    catalog.close()


def test_cli_record_stores_the_attributes_and_acts_as_owner(tmp_path: Path) -> None:
    from sampledrec.cli.app import main

    (tmp_path / "p.toml").write_text(RULES + ROLES)
    store = Store.init(tmp_path / "s", policy=tmp_path / "p.toml")
    wav = tmp_path / "in.wav"
    wav.write_bytes(encode_wav(PCM, synthetic_speech(0.2)))
    out = io.StringIO()
    argv = ["record", "--store", str(store.path), "--call-ref", "c1", "--audio", str(wav)]
    assert main([*argv, "--attr", "queue=sales", "--json"], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["recording"]["attrs"] == {"queue": "sales"}
    out = io.StringIO()
    assert main(["recordings", "list", "--store", str(store.path), "--json"], out=out) == 0
    assert [r["attrs"] for r in json.loads(out.getvalue())["recordings"]] == [{"queue": "sales"}]


def test_the_catalog_keeps_only_named_attributes(tmp_path: Path) -> None:
    """docs/decisions/0014: of the call's attributes, the catalog keeps those that a rule or a
    role scope names (as text), and never a value that looks like a phone number."""
    from sampledrec.vault.recorder import kept_attributes, looks_like_phone_number

    policy = load(
        RULES + '[roles.vip_desk]\npermissions = ["list"]\n'
        'scope = { vip = true, level = 2, line = "main" }\n'
    )
    assert policy.attributes_used == {"queue", "vip", "level", "line"}
    attrs = {
        "queue": "sales",
        "vip": "true",
        "level": "2",
        "line": "+33 1 40 00 00 00",  # named by a scope, but a phone number: not kept
        "caller": "+33612345678",
        "campaign": "spring",
    }
    assert kept_attributes(attrs, policy) == {"queue": "sales", "vip": "true", "level": "2"}
    for phone in (
        "+33612345678",
        "0612345678",
        "06 12 34 56 78",
        "06.12.34.56.78",
        "06-12-34-56-78",
        "(0)6 12 34 56 78",
        "sip:+33612345678@pbx.example.com",
        "\uff10\uff16\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",  # full-width digits
    ):
        assert looks_like_phone_number(phone), phone
    for other in ("sales", "support-vip", "agent-07", "2", "true", "campaign 2026-12", "123456"):
        assert not looks_like_phone_number(other), other
    # Through the vault: booleans and numbers kept as the text scopes compare.
    (tmp_path / "p.toml").write_text(
        RULES + '[roles.vip_desk]\npermissions = ["list"]\nscope = { vip = true, level = 2 }\n'
    )
    store = Store.init(tmp_path / "s", policy=tmp_path / "p.toml")
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        d = store.sampler(clock=clock, log=log).decide("c1", {"queue": "sales"})
        call = {"queue": "sales", "vip": True, "level": 2, "callback": "0612345678"}
        with vault.record(d, audio_format=PCM, attrs=call) as rec:
            rec.write(bytes(320))
        assert rec.row.attrs == {"queue": "sales", "vip": "true", "level": "2"}
        assert [r.recording_id for r in vault.recordings(principal=who("vip_desk"))] == [
            rec.recording_id
        ]


NUMBER_DIGITS = "612345678"  # +33 6 12 34 56 78 without its country code or trunk prefix
# The national significant number in any usual form: compact, spaced, dotted or dashed (it is
# inside the E.164, 0033 and national forms as well).
NUMBER_IN_ANY_FORM = re.compile(r"[ .\-]?".join(NUMBER_DIGITS))


def number_in(data: bytes) -> bool:
    """Whether ``data`` holds the number in any form, in ASCII (or UTF-8, Latin-1) or UTF-16
    of either byte order and alignment."""
    texts = [data.decode("latin-1")]
    for codec in ("utf-16-le", "utf-16-be"):
        for start in (0, 1):
            texts.append(data[start:].decode(codec, errors="replace"))
    return any(NUMBER_IN_ANY_FORM.search(text) for text in texts)


def test_number_scanner_finds_every_form() -> None:
    for form in (
        "+33612345678",
        "0612345678",
        "06 12 34 56 78",
        "+33 6 12 34 56 78",
        "06.12.34.56.78",
        "0033-6-12-34-56-78",
    ):
        for codec in ("ascii", "utf-16-le", "utf-16-be"):
            assert number_in(b"\x00\x07" + form.encode(codec) + b"\x01"), (form, codec)
            assert number_in(b"\x05" + form.encode(codec)), (form, codec)
    assert not number_in("+33 6 12 34 56 79".encode("utf-16-le"))


def test_no_phone_number_in_clear_anywhere_in_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """New user (#12): `--attr caller=+336...` was kept in plain text in the catalog, and
    survived `subject erase`. Every file of the store and of its keyring is scanned."""
    from sampledrec.cli.app import main

    policy = RULES + '[roles.callbacks]\npermissions = ["list"]\nscope = { callback = "yes" }\n'
    (tmp_path / "p.toml").write_text(policy)
    keys = tmp_path / "keyring"
    root = tmp_path / "s"
    assert (
        main(
            [
                "init",
                str(root),
                "--policy",
                str(tmp_path / "p.toml"),
                "--keys",
                str(keys),
                "--region",
                "FR",
            ],
            out=io.StringIO(),
        )
        == 0
    )
    wav = tmp_path / "in.wav"
    wav.write_bytes(encode_wav(PCM, synthetic_speech(0.2)))
    for i, attrs in enumerate(
        [
            ["caller=+33612345678", "callback=06 12 34 56 78", "queue=sales"],
            ["caller=06.12.34.56.78", "callback=0612345678", "queue=support"],
        ]
    ):
        argv = ["record", "--store", str(root), "--call-ref", f"c{i}", "--audio", str(wav)]
        argv += [a for attr in attrs for a in ("--attr", attr)]
        assert main(argv, out=io.StringIO()) == 0

    def scan() -> list[Path]:
        files = [p for folder in (root, keys) for p in sorted(folder.rglob("*")) if p.is_file()]
        assert len(files) > 10
        return [p for p in files if number_in(p.read_bytes())]

    assert scan() == []
    assert "warning: attribute 'caller'" in capsys.readouterr().err  # no rule uses it
    numbers = tmp_path / "numbers.txt"  # outside the store, as an operator would keep it
    numbers.write_text("06 12 34 56 78\n")
    assert (
        main(
            [
                *("subject", "erase", "--store", str(root), "--file", str(numbers)),
                *("--identity-method", "in_person_id_document", "--identity-note", "seen in shop"),
            ],
            out=io.StringIO(),
        )
        == 0
    )
    assert scan() == []


def test_module_doctests() -> None:
    import doctest

    from sampledrec.vault import access

    assert doctest.testmod(access, raise_on_error=False).failed == 0
