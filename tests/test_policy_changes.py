"""What applying a policy changes (sampledrec.sampling.changes), the preview that
``sampledrec policy apply`` prints and the console shows (Store.preview_policy), and applying it
as an account (sampledrec.accounts.preview_policy / apply_policy: manage_policy, logged)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sampledrec import Principal, Store
from sampledrec.accounts import apply_policy, preview_policy
from sampledrec.cli import main
from sampledrec.errors import AccessDenied, InvalidArgument, InvalidPolicy
from sampledrec.log.writer import iter_entries
from sampledrec.sampling.changes import PolicyChange, policy_changes, preview
from sampledrec.sampling.policy import Policy

from .console_fixtures import POLICY, World, make_world

OLD = """
rate_ceiling = "0.25"

[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.05"
purpose = "quality"
retention = "3 months"

[[rules]]
name = "vip"
match = { queue = "vip" }
rate = "0.1"
purpose = "quality"
retention = "3 months"

[[rules]]
name = "old"
match = { queue = "old" }
rate = "0.01"
purpose = "quality"
retention = "1 month"

[default]
rate = "0"
purpose = "quality"
retention = "6 months"

[roles.night_shift]
permissions = ["list", "listen"]
scope = { queue = "night" }
"""

NEW = """
rate_ceiling = "0.5"

[[rules]]
name = "vip"
match = { queue = "vip" }
rate = "0.1"
purpose = "quality"
retention = "3 months"

[[rules]]
name = "sales"
match = { queue = ["sales", "retail"] }
rate = "0.2"
purpose = "quality"
retention = "1 year"
max_per_agent_per_day = 3

[[rules]]
name = "training"
match = { queue = "onboarding" }
rate = "0.02"
purpose = "training"
retention = "2 months"

[default]
rate = "0.01"
purpose = "quality"
retention = "6 months"

[roles.qa_reviewer]
permissions = ["list", "listen"]
scope = { queue = "sales" }
"""


def texts(changes: list[PolicyChange]) -> list[str]:
    return [c.text() for c in changes]


def test_every_kind_of_change_is_named() -> None:
    old, new = Policy.from_toml(OLD), Policy.from_toml(NEW)
    assert texts(policy_changes(old, new)) == [
        "setting rate_ceiling: rate_ceiling 0.25 -> 0.5",
        "rule 'old' removed (was: match queue=old, rate 0.01, quality, kept 1 month)",
        "rule 'vip' moved from position 2 to 1",
        "rule 'sales' moved from position 1 to 2",
        "rule 'sales': match queue=sales -> queue=retail|sales",
        "rule 'sales': rate 0.05 -> 0.2",
        "rule 'sales': retention 3 months -> 1 year",
        "rule 'sales': max_per_agent_per_day - -> 3",
        "rule 'training' added: match queue=onboarding, rate 0.02, training, kept 2 months",
        "default rule: rate 0 -> 0.01",
        "role 'night_shift' removed (was: list, listen; scope queue=night)",
        "role 'qa_reviewer': scope (all) -> queue=sales",
    ]
    assert policy_changes(old, old) == []


def test_the_preview_adds_the_guardrail_messages() -> None:
    found = preview(Policy.from_toml(OLD), Policy.from_toml(NEW))
    assert not found.unchanged
    assert found.warnings == (
        "rule 'sales': retention '1 year' is longer than the 6 months usually recommended "
        "for call recordings",
        "rule 'old' is removed: the calls it matched go to the next rule that matches, or to "
        "the default rule",
        "rule 'sales': rate 0.05 -> 0.2 records 4.0 times as many calls; check that the "
        "purpose still needs that many",
        "rule 'sales': retention lengthened (3 months -> 1 year); it applies to recordings "
        "made from now on",
        "the default rule starts recording (rate 0 -> 0.01)",
        "role 'night_shift' is removed: accounts that hold it lose what it granted (reassign "
        "them on the users page or with sampledrec users roles)",
    )
    doc = found.to_json()
    assert doc["version"] == Policy.from_toml(NEW).version and len(doc["changes"]) == 12
    assert found.to_text().splitlines()[0].endswith(": 12 change(s)")
    same = preview(Policy.from_toml(OLD), Policy.from_toml(OLD))
    assert same.unchanged and "nothing changes" in same.to_text()


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    (tmp_path / "old.toml").write_text(OLD)
    (tmp_path / "new.toml").write_text(NEW)
    return Store.init(tmp_path / "s", policy=tmp_path / "old.toml")


def run(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def policy_entries(store: Store) -> list[dict[str, object]]:
    return [e.fields for e in iter_entries(store.log_storage) if e.type_name == "policy"]


def test_policy_apply_prints_the_preview_the_library_makes_and_dry_run_applies_nothing(
    store: Store, tmp_path: Path
) -> None:
    before = store.policy().version
    shown = store.preview_policy(NEW).to_text()
    code, out = run("policy", "apply", tmp_path / "new.toml", "--store", store.path, "--dry-run")
    assert code == 0
    assert out.startswith(shown) and out.rstrip().endswith("Dry run: nothing applied.")
    assert store.policy().version == before and len(policy_entries(store)) == 1
    code, out = run("policy", "apply", tmp_path / "new.toml", "--store", store.path, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["applied"] is True and doc["current_version"] == before
    assert "role 'night_shift' is removed" in " ".join(doc["warnings"])
    assert store.policy().version == doc["version"] == Policy.from_toml(NEW).version
    assert len(policy_entries(store)) == 2
    code, out = run("policy", "apply", tmp_path / "new.toml", "--store", store.path)
    assert code == 0 and "Nothing applied: it is the policy in force." in out
    assert len(policy_entries(store)) == 2


def test_policy_apply_refuses_a_policy_that_breaks_a_guardrail(
    store: Store, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[default]\nrate = "1"\npurpose = "quality"\nretention = "6 months"\n')
    code, _ = run("policy", "apply", bad, "--store", store.path)
    assert code == 1
    with pytest.raises(InvalidPolicy, match="legal_obligation"):
        store.preview_policy(bad.read_text())


# -- as an account -----------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


def test_only_manage_policy_previews_or_applies_and_refusals_are_logged(world: World) -> None:
    vault = world.console.vault
    reviewer = Principal("rita", ("qa_reviewer",))
    with pytest.raises(AccessDenied):
        preview_policy(world.store, vault, reviewer, NEW)
    with pytest.raises(AccessDenied):
        apply_policy(world.store, vault, reviewer, NEW, version="x", replacing=None)
    denied = [a for a in world.accesses() if a["action"] == "manage_policy"]
    assert [(a["outcome"], a["principal"]) for a in denied] == [("denied", "rita")] * 2
    admin = Principal("ada", ("admin",))
    found = preview_policy(world.store, vault, admin, NEW, users=world.users)
    # rita holds qa_reviewer, which NEW keeps; nobody holds a role NEW drops.
    assert not any("account" in w for w in found.warnings)
    assert found.current is not None and found.current.version == Policy.from_toml(POLICY).version
    applied = apply_policy(
        world.store,
        vault,
        admin,
        NEW,
        version=found.proposed.version,
        replacing=found.current.version,
    )
    assert world.store.policy(world.clock.now()).version == applied.version
    world.log.flush()
    (entry,) = [
        e.fields
        for e in iter_entries(world.store.log_storage, world.store.keyring)
        if e.type_name == "policy" and e.fields.get("principal") == "ada"
    ]
    assert entry["version"].hex() == applied.version


def test_apply_refuses_what_was_not_previewed_or_a_policy_changed_meanwhile(
    world: World,
) -> None:
    vault, admin = world.console.vault, Principal("ada", ("admin",))
    found = preview_policy(world.store, vault, admin, NEW)
    assert found.current is not None
    with pytest.raises(InvalidArgument, match="not the one previewed"):
        apply_policy(world.store, vault, admin, OLD, version=found.proposed.version, replacing=None)
    world.store.apply_policy_text(
        OLD, log=world.log, effective_at=world.clock.now(), principal="someone-else"
    )
    with pytest.raises(InvalidArgument, match="changed since this preview"):
        apply_policy(
            world.store,
            vault,
            admin,
            NEW,
            version=found.proposed.version,
            replacing=found.current.version,
        )


def test_accounts_holding_a_dropped_role_are_named(world: World) -> None:
    without_dpo = POLICY + '\n[roles.dpo]\npermissions = ["list"]\n'
    assert "dpo" in Policy.from_toml(without_dpo).roles  # default roles stay declared
    world.users.set_roles("dora", ["dpo", "qa_reviewer"])
    custom = POLICY + '\n[roles.night_shift]\npermissions = ["list"]\n'
    world.store.apply_policy_text(
        custom, log=world.log, effective_at=world.clock.now(), principal="setup"
    )
    world.users.set_roles("aldo", ["auditor", "night_shift"])
    found = preview_policy(
        world.store, world.console.vault, Principal("ada", ("admin",)), POLICY, users=world.users
    )
    assert (
        "account 'aldo' holds role(s) night_shift, which the new policy does not declare: it "
        "would lose what they grant"
    ) in found.warnings
    assert not any("'dora'" in w for w in found.warnings)
