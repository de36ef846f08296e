"""The policy schedule and the objection list of a deployment (docs/decisions/0036): applied
or changed on one node, followed by every node, each logging in its own log what its
decisions use, so that each node's log still replays (0017, 0018). Two nodes on the real
PostgreSQL and SeaweedFS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Store
from sampledrec.deployment import Deployment
from sampledrec.errors import InvalidArgument
from sampledrec.log.format import T_OBJECTION, T_POLICY
from sampledrec.log.writer import iter_entries

from .deployments import new_deployment, nodes
from .postgres import PostgresServer
from .seaweedfs import SeaweedFS

AT = "2030-03-05T10:00:00Z"
LATER = "2030-03-07T00:00:01Z"
FIRST = """
[default]
rate = "0.2"
purpose = "quality"
retention = "6 months"
"""
SECOND = """
[default]
rate = "0.05"
purpose = "quality"
retention = "6 months"
"""
CALLER = "+33612345678"


@pytest.fixture
def deployment(
    tmp_path: Path,
    postgres: PostgresServer,
    seaweedfs: SeaweedFS,
    monkeypatch: pytest.MonkeyPatch,
) -> Deployment:
    (tmp_path / "first.toml").write_text(FIRST)
    (tmp_path / "second.toml").write_text(SECOND)
    return new_deployment(
        tmp_path, postgres, seaweedfs, monkeypatch, policy=tmp_path / "first.toml"
    )


def logged(store: Store, kind: int) -> list[dict[str, Any]]:
    return [
        dict(e.fields) for e in iter_entries(store.log_storage, store.keyring) if e.type == kind
    ]


def test_a_policy_applied_on_one_node_is_followed_by_a_running_sampler_of_another(
    deployment: Deployment, tmp_path: Path
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    first = a.policy().version
    assert b.policy().version == first
    clock = FixedClock(AT)
    with b.open_log(clock=clock) as log, b.sampler(clock=clock, log=log) as sampler:
        assert sampler.decide("call-0").policy_version == first
        applied = a.apply_policy(tmp_path / "second.toml", clock=clock)
        assert a.policy(clock.now()).version == applied.version != first
        # The running sampler on b follows within about a second (it looks once a second).
        deadline = time.monotonic() + 30
        seen = first
        i = 0
        while seen == first:
            assert time.monotonic() < deadline, "node b never followed the deployment's policy"
            i += 1
            seen = sampler.decide(f"call-{i}").policy_version
            time.sleep(0.05)
        assert seen == applied.version
    # b's own log holds the version its decisions used, logged before the first of them.
    versions = [bytes(f["version"]).hex() for f in logged(b, T_POLICY)]
    assert versions == [first, applied.version]
    assert b.policy(clock.now()).version == applied.version
    # A node made now starts with the deployment's policy; --policy is refused.
    (c,) = nodes(deployment, tmp_path, "node-c")
    assert c.policy(clock.now()).version == applied.version
    with pytest.raises(InvalidArgument, match="has a policy schedule"):
        Store.init_node(
            tmp_path / "node-d", deployment, name="node-d", policy=tmp_path / "first.toml"
        )


def test_a_scheduled_policy_takes_effect_on_every_node_at_its_time(
    deployment: Deployment, tmp_path: Path
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    clock = FixedClock(AT)
    later = FixedClock("2030-03-06T00:00:00Z")
    applied = a.apply_policy(tmp_path / "second.toml", effective_at=later.now(), clock=clock)
    with b.open_log(clock=clock) as log, b.sampler(clock=clock, log=log):
        pass  # b syncs when its sampler starts
    assert b.policy(clock.now()).version != applied.version
    assert b.policy(later.now()).version == applied.version
    [entry] = [f for f in logged(b, T_POLICY) if bytes(f["version"]).hex() == applied.version]
    assert entry["effective_at"] == logged(a, T_POLICY)[-1]["effective_at"]


def test_objections_changed_on_one_node_hold_on_the_other_and_the_audit_passes(
    deployment: Deployment,
    tmp_path: Path,
    cli: Callable[..., tuple[int, str]],
    cli_json: Callable[..., tuple[int, Any]],
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(CALLER + "\n")
    code, doc = cli_json("objections", "add", "--store", a.path, "--file", numbers)
    assert code == 0 and doc["added"] == 1, doc
    clock = FixedClock(AT)
    with b.open_log(clock=clock) as log, b.sampler(clock=clock, log=log) as sampler:
        decisions = [sampler.decide(f"call-{i}", caller=CALLER) for i in range(20)]
        log.flush()
    assert {d.reason for d in decisions} == {"objection"}
    pseudonym = a.objections().pseudonym(CALLER)
    assert b.objection_pseudonyms() == {pseudonym} == a.objection_pseudonyms()
    assert [(f["action"], bytes(f["caller_pseudonym"]).hex()) for f in logged(b, T_OBJECTION)] == [
        ("added", pseudonym)
    ]
    # Withdrawn on b: a follows.
    code, doc = cli_json("objections", "remove", "--store", b.path, "--file", numbers)
    assert code == 0 and doc["removed"] == 1, doc
    with a.open_log(clock=clock) as log, a.sampler(clock=clock, log=log) as sampler:
        after = [sampler.decide(f"call-x{i}", caller=CALLER) for i in range(40)]
        log.flush()
    assert "objection" not in {d.reason for d in after}
    assert a.objection_pseudonyms() == frozenset()
    assert [f["action"] for f in logged(a, T_OBJECTION)] == ["added", "removed"]
    # Each node's log replays its objections: the deployment's audit passes.
    kit = tmp_path / "kit"
    code, doc = cli_json(
        "audit", "kit", "--store", a.path, "--node", b.path, "--out", kit, "--at", LATER
    )
    assert code == 0, doc
    code, doc = cli_json("audit", "verify", "--kit", kit, "--at", LATER)
    assert code == 0, [f["message"] for f in doc["findings"]]
    assert doc["results"]["objections"]["verdict"] == "PASS"


def test_a_node_that_kept_its_own_list_adds_it_to_the_deployments_at_its_first_sync(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Nodes made before the list was the deployment's each kept one: the first sync adds
    each node's callers to the deployment's list (none is dropped)."""
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    clock = FixedClock(AT)
    meta = json.loads((a.path / "store.json").read_text())
    meta.pop("deployment_synced")
    (a.path / "store.json").write_text(json.dumps(meta))
    # What an older node did: its own list, logged, not the deployment's.
    old = Store.open(a.path)
    with old.open_log(clock=clock) as log:
        hook = old._objection_hook(clock, log, "op", publish=False)
        from sampledrec.sampling.objections import ObjectionList

        own = ObjectionList.load(
            old.keyring.pseudonym_key(), old.path / "objections.txt", on_change=hook
        )
        own.add(CALLER)
    assert deployment.settings().objections() == frozenset()
    with old.open_log(clock=clock) as log:
        old.sync_deployment(log, clock=clock)
    assert deployment.settings().objections() == {own.pseudonym(CALLER)}
    with b.open_log(clock=clock) as log, b.sampler(clock=clock, log=log) as sampler:
        assert sampler.decide("call-1", caller=CALLER).reason == "objection"


def test_a_node_whose_lock_is_busy_keeps_deciding_and_follows_afterwards(
    deployment: Deployment, tmp_path: Path
) -> None:
    """While another process of the node holds its lock (a long sweep, say), its running
    sampler goes on deciding with the policy the node has logged, and follows once the lock
    is free."""
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    clock = FixedClock(AT)
    with b.open_log(clock=clock) as log, b.sampler(clock=clock, log=log) as sampler:
        first = sampler.decide("call-0").policy_version
        applied = a.apply_policy(tmp_path / "second.toml", clock=clock)
        with b.lock():
            time.sleep(1.1)  # the sampler looks for changes once a second: let it look now
            assert sampler.decide("call-1").policy_version == first
            assert [bytes(f["version"]).hex() for f in logged(b, T_POLICY)] == [first]
        deadline = time.monotonic() + 30
        i = 1
        while sampler.decide(f"call-{i}").policy_version == first:
            assert time.monotonic() < deadline, "node b never followed the deployment's policy"
            i += 1
            time.sleep(0.05)
    assert [bytes(f["version"]).hex() for f in logged(b, T_POLICY)] == [first, applied.version]


def test_a_policy_applied_through_an_open_log_is_the_deployments_too(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Store.apply_policy_text (what a running server's console applies through its log)
    changes the deployment's schedule on a node, as Store.apply_policy does."""
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    clock = FixedClock(AT)
    with a.open_log(clock=clock) as log:
        applied = a.apply_policy_text(SECOND, log=log, effective_at=clock.now(), principal="admin")
    assert a.policy(clock.now()).version == applied.version
    [entry] = [f for f in logged(a, T_POLICY) if bytes(f["version"]).hex() == applied.version]
    assert entry["principal"] == "admin"
    with b.open_log(clock=clock) as log, b.sampler(clock=clock, log=log) as sampler:
        assert sampler.decide("call-1").policy_version == applied.version
    # b's log names who applied it too (on node a).
    [entry] = [f for f in logged(b, T_POLICY) if bytes(f["version"]).hex() == applied.version]
    assert entry["principal"] == "admin"
