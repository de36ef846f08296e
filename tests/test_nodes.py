"""Several nodes, one deployment (docs/decisions/0031-nodes.md): shared epoch, pseudonym and
bucket keys wrapped in PostgreSQL under the deployment key, one log per node, recordings on
one bucket, the deployment's lock, and the audit of a deployment kit.

The process test (three ``sampledrec serve`` nodes killed and restarted at random) is in
tests/test_nodes_process.py.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Store
from sampledrec.deployment import Deployment
from sampledrec.errors import InvalidArgument, KeyringError, StoreError
from sampledrec.keys.shared import NodeKeyring, SharedKeyStore
from sampledrec.log.format import T_ACCESS, T_EXPIRED, T_RECORDING_ABORTED, T_RECORDING_SEALED
from sampledrec.log.writer import iter_entries
from sampledrec.retention.sweep import Retention
from sampledrec.sampling import Sampler
from sampledrec.vault import Vault
from sampledrec.vault.audio import AudioFormat, frames
from sampledrec.vault.catalog import RecordingRow
from sampledrec.vault.staging import StagedBlobStore

from .deployments import new_deployment, nodes
from .postgres import PostgresServer
from .recording import write_call
from .seaweedfs import SeaweedFS
from .test_s3 import unreachable

AT = "2030-03-05T10:00:00Z"
PCM = AudioFormat("pcm16", 8000, 1)
POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.5"
justification = "Pilot of the new sales script: QA listens to a few calls per agent a day"
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = 3

[default]
rate = "0.2"
purpose = "quality"
retention = "6 months"
"""


@pytest.fixture
def deployment(
    tmp_path: Path,
    postgres: PostgresServer,
    seaweedfs: SeaweedFS,
    monkeypatch: pytest.MonkeyPatch,
) -> Deployment:
    (tmp_path / "policy.toml").write_text(POLICY)
    return new_deployment(
        tmp_path, postgres, seaweedfs, monkeypatch, policy=tmp_path / "policy.toml"
    )


def test_nodes_share_epoch_keys_and_decide_alike(deployment: Deployment, tmp_path: Path) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    assert isinstance(a.keyring, NodeKeyring) and a.node_name == "node-a"
    assert a.vkey != b.vkey  # each node its own signing key and log
    clock = FixedClock(AT)
    refs = [f"call-{i}" for i in range(40)]
    with a.open_log(clock=clock) as la, a.sampler(clock=clock, log=la) as sa:
        first = [sa.decide(r, {"queue": "x"}) for r in refs]
    with b.open_log(clock=clock) as lb, b.sampler(clock=clock, log=lb) as sb:
        again = [sb.decide(r, {"queue": "x"}) for r in refs]
    assert [d.reason for d in again] == [d.reason for d in first]
    assert all(d.repeat for d in again)
    epoch = first[0].epoch_id
    assert a.keyring.epoch_key(epoch) == b.keyring.epoch_key(epoch)
    assert a.keyring.pseudonym_key() == b.keyring.pseudonym_key()
    # The same commitment in both logs, logged once in each.
    from sampledrec.log.format import T_KEY_COMMIT
    from sampledrec.log.writer import iter_entries

    def commits(store: Store) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for e in iter_entries(store.log_storage):
            if e.type == T_KEY_COMMIT:
                assert e.fields["epoch_id"] not in found
                found[e.fields["epoch_id"]] = bytes(e.fields["commitment"])
        return found

    assert commits(a) == commits(b) and epoch in commits(a)


def test_no_shared_key_is_in_the_database_in_clear(deployment: Deployment, tmp_path: Path) -> None:
    (a,) = nodes(deployment, tmp_path, "node-a")
    clock = FixedClock(AT)
    with a.open_log(clock=clock) as log, a.sampler(clock=clock, log=log) as sampler:
        key = sampler.epoch_key(clock.now()).secret_bytes()
    a.keystore.ensure_bucket("bucket-2030-09-05")
    import psycopg

    with psycopg.connect(deployment.catalog_dsn) as conn:
        rows = conn.execute("SELECT name, wrapped FROM shared_keys").fetchall()
    assert rows and all(key not in bytes(w) for _, w in rows)
    assert {"pseudonym", "check", "bucket/bucket-2030-09-05"} <= {n for n, _ in rows}


def test_a_node_with_another_deployment_key_is_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    assert deployment.key_file is not None
    deployment.key_file.write_bytes(random.Random(1).randbytes(32))
    with pytest.raises(KeyringError, match="does not unwrap with the deployment key"):
        nodes(deployment, tmp_path, "node-x")
    assert not (tmp_path / "node-x").exists()


def test_a_recording_made_on_one_node_opens_on_another(
    deployment: Deployment, tmp_path: Path
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    assert isinstance(a.keystore, SharedKeyStore)
    clock = FixedClock(AT)
    audio = random.Random(5).randbytes(16_000)
    with (
        a.open_log(clock=clock) as log,
        a.sampler(clock=clock, log=log) as sampler,
        Vault(a, log, clock=clock) as vault,
    ):
        decision = next(
            d for d in (sampler.decide(f"r{i}", {"queue": "y"}) for i in range(50)) if d.record
        )
        rid = write_call(vault, decision, audio)
    with b.open_log(clock=clock) as log, Vault(b, log, clock=clock) as vault:
        assert vault.open(rid).audio == audio


def test_the_deployment_lock_is_one_for_every_node(deployment: Deployment, tmp_path: Path) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    with a.lock(), pytest.raises(StoreError, match="held by another node"), b.lock(timeout=0.2):
        pass
    with b.lock(timeout=5):
        pass  # released with a's


LATER = "2030-03-07T00:00:01Z"


def deployment_audit(
    cli_json: Callable[..., tuple[int, Any]],
    tmp_path: Path,
    *stores: Store,
    at: str = LATER,
    kit_name: str = "kit",
) -> tuple[int, Any]:
    others = [arg for s in stores[1:] for arg in ("--node", str(s.path))]
    kit = tmp_path / kit_name
    code, doc = cli_json(
        "audit", "kit", "--store", stores[0].path, *others, "--out", kit, "--at", at
    )
    assert code == 0, doc
    assert sorted(doc["nodes"]) == sorted(str(s.node_name) for s in stores)
    return cli_json("audit", "verify", "--kit", kit, "--at", at)


def test_the_kit_of_a_deployment_audits_every_node_and_joins_them(
    deployment: Deployment, tmp_path: Path, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    clock = FixedClock(AT)
    refs = [f"call-{i}" for i in range(60)]
    recorded = []
    for store, mine in ((a, refs[:40]), (b, refs[20:])):  # 20 calls decided on both
        with (
            store.open_log(clock=clock) as log,
            store.sampler(clock=clock, log=log) as sampler,
            Vault(store, log, clock=clock) as vault,
        ):
            for ref in mine:
                d = sampler.decide(ref, {"queue": "sales", "agent": f"agent-{len(ref) % 3}"})
                if d.record and ref not in recorded:
                    write_call(vault, d, random.Random(ref).randbytes(3200))
                    recorded.append(ref)
            # The sampler's close makes its decisions durable and marks them logged in the
            # index: node b's repeats of calls not selected log no copy (counted below).
    assert recorded
    code, doc = deployment_audit(cli_json, tmp_path, a, b)
    assert code == 0, [f["message"] for f in doc["findings"]]
    assert doc["verdict"] == "PASS"
    # Node b answered the 20 calls that node a had decided (and logged) as repeats: not again,
    # except that a node logs a copy of a selected call it may record (0031): how many of
    # those there are depends on the epoch key's draws (the cap of 3 per agent is often
    # reached before call 20).
    copies = len(set(recorded) & set(refs[20:40]))
    assert doc["results"]["decisions"]["checked"]["calls_decided_on_several_nodes"] == copies
    assert doc["counts"]["decisions"] == 60 + copies
    assert doc["counts"]["nodes"] == 2
    # the statistics run once over the deployment (each call once), not per node
    assert doc["results"]["statistics"]["verdict"] == "PASS", doc["results"]["statistics"]


def test_a_call_decided_otherwise_on_another_node_is_a_finding(
    deployment: Deployment, tmp_path: Path, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    clock = FixedClock(AT)
    with a.open_log(clock=clock) as log, a.sampler(clock=clock, log=log) as sampler:
        first = sampler.decide("call-x", {"queue": "sales", "agent": "ann"})
    assert first.rule == "sales"
    # Node b's sampler without the deployment's decided-calls index: it decides the call again,
    # under another rule (other attributes), as a node cut off from the database might.
    with b.open_log(clock=clock) as log:
        b.sampler(clock=clock, log=log).close()  # the epoch's commitment in b's log
        rogue = Sampler(b.policy(clock.now()), b.keyring, clock=clock, log=log)
        second = rogue.decide("call-x", {"queue": "other"})
        rogue.close()
    assert second.rule == "default" and not second.repeat
    code, doc = deployment_audit(cli_json, tmp_path, a, b)
    assert code == 1 and doc["verdict"] == "FAIL"
    [finding] = [f for f in doc["findings"] if "must get the first decision" in f["message"]]
    assert finding["call_ref"] == "call-x"
    assert finding["evidence"]["node"] == "node-b"
    assert finding["evidence"]["first_node"] == "node-a"


# -- holds, sweeps and recordings across nodes ---------------------------------------------------

SWEPT = "2030-09-07T00:00:01Z"  # past the six months' retention of the calls recorded at AT
AUDITED = "2030-09-08T00:00:01Z"


def record_calls(store: Store, prefix: str, n: int) -> list[str]:
    """``n`` recordings made on ``store`` (calls it decides first); their ids."""
    clock = FixedClock(AT)
    found = []
    with (
        store.open_log(clock=clock) as log,
        store.sampler(clock=clock, log=log) as sampler,
        Vault(store, log, clock=clock) as vault,
    ):
        for i in range(200):
            d = sampler.decide(f"{prefix}-{i}", {"queue": "other"})
            if d.record:
                found.append(write_call(vault, d, random.Random(d.call_ref).randbytes(3200)))
                if len(found) == n:
                    return found
    raise AssertionError("too few calls selected")


def row_of(store: Store, recording_id: str) -> RecordingRow:
    catalog = store.open_catalog()
    try:
        row = catalog.get(recording_id)
    finally:
        catalog.close()
    assert row is not None
    return row


def retention_on(store: Store, at: str) -> Any:
    clock = FixedClock(at)
    log = store.open_log(clock=clock)
    vault = Vault(store, log, clock=clock)
    return log, vault, Retention(vault, clock=clock)


def messages(doc: Any) -> list[str]:
    return [f["message"] for f in doc["findings"]]


def test_holds_and_sweeps_spanning_nodes_pass_the_deployment_audit(
    deployment: Deployment, tmp_path: Path, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    held_a, swept_a = record_calls(a, "a", 2)
    held_b, swept_b = record_calls(b, "b", 2)
    # Node b places a hold naming a recording of each node, and later sweeps: it expires
    # node a's recording as well as its own.
    log, vault, retention = retention_on(b, AT)
    with log, vault:
        hold = retention.hold([held_a, held_b], reason="case 2030-17")
    log, vault, retention = retention_on(b, SWEPT)
    with log, vault:
        report = retention.sweep()
    assert sorted(report.expired) == sorted([swept_a, swept_b])
    # Node a releases the hold: both held recordings, past their expiry, expire at once.
    log, vault, retention = retention_on(a, SWEPT)
    with log, vault:
        retention.release(hold.hold_id)
        states = {row.recording_id: row.status for row in vault.catalog.find()}
    assert set(states.values()) == {"expired"}
    code, doc = deployment_audit(cli_json, tmp_path, a, b, at=AUDITED)
    assert code == 0, messages(doc)
    checked = doc["results"]["recordings"]["checked"]
    # Every node's recordings got their tombstones from the other node's log.
    assert checked["tombstones"] == 4 and checked["tombstones_on_other_nodes"] == 2
    assert "held_past_expiry" not in checked and checked["calls_recorded_on_several_nodes"] == 0


def test_a_recording_gone_without_a_tombstone_on_any_node_is_a_finding(
    deployment: Deployment, tmp_path: Path, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    (gone,) = record_calls(a, "a", 1)
    record_calls(b, "b", 1)
    row = row_of(a, gone)
    assert b.blobs.delete(row.file)  # on node b, with no tombstone in any log
    code, doc = deployment_audit(cli_json, tmp_path, a, b)
    assert code == 1
    (finding,) = [f for f in doc["findings"] if "disappeared without one" in f["message"]]
    assert finding["recording_id"] == gone and finding["evidence"]["node"] == "node-a"


def test_a_recording_destroyed_early_by_another_node_is_a_finding(
    deployment: Deployment, tmp_path: Path, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    (early,) = record_calls(a, "a", 1)
    record_calls(b, "b", 1)
    row = row_of(a, early)
    # Node b logs an expiry of node a's recording months before it was due, and deletes it.
    clock = FixedClock(AT)
    with b.open_log(clock=clock) as log:
        fields = {"recording_id": early, "bucket": row.bucket, "expires_at": row.expires_at}
        log.append(T_EXPIRED, fields, at=clock.now())
    assert b.blobs.delete(row.file)
    code, doc = deployment_audit(cli_json, tmp_path, a, b)
    assert code == 1
    (finding,) = [f for f in doc["findings"] if "destroyed early" in f["message"]]
    assert finding["recording_id"] == early
    assert finding["evidence"]["node"] == "node-a"
    assert finding["evidence"]["tombstone_node"] == "node-b"
    assert "logged by node node-b" in finding["message"]


def test_two_recordings_of_one_call_on_two_nodes_are_a_finding(
    deployment: Deployment, tmp_path: Path, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    clock = FixedClock(AT)
    recorded = []
    for store in (a, b):  # node b hears of the call again (a failover, say) and records it too
        with (
            store.open_log(clock=clock) as log,
            store.sampler(clock=clock, log=log) as sampler,
            Vault(store, log, clock=clock) as vault,
        ):
            d = next(
                d
                for d in (sampler.decide(f"twice-{i}", {"queue": "other"}) for i in range(200))
                if d.record
            )
            recorded.append(write_call(vault, d, random.Random(5).randbytes(3200)))
    code, doc = deployment_audit(cli_json, tmp_path, a, b)
    assert code == 1
    (finding,) = [f for f in doc["findings"] if "opened by nodes" in f["message"]]
    assert finding["message"].startswith("2 recordings of one decided call")
    assert set(finding["evidence"]["recordings"]) == set(recorded)
    assert doc["results"]["recordings"]["checked"]["calls_recorded_on_several_nodes"] == 1
    # Each node's own audit, alone, saw one recording of the call: no finding there.
    assert not [m for m in messages(doc) if "(at most one per call)" in m]


# -- retiring a node, and a node lost for good -------------------------------------------------


def start_and_abandon(store: Store, prefix: str) -> str:
    """A recording left open with audio on the node's disk, as a crash of its server leaves
    it (the recorder is never closed); its id."""
    clock = FixedClock(AT)
    with (
        store.open_log(clock=clock) as log,
        store.sampler(clock=clock, log=log) as sampler,
        Vault(store, log, clock=clock) as vault,
    ):
        d = next(
            d
            for d in (sampler.decide(f"{prefix}-{i}", {"queue": "other"}) for i in range(200))
            if d.record
        )
        rec = vault.record(d, audio_format=PCM, chunk_size=4096)
        log.flush()  # the decision durable: the audio goes to disk as it comes
        for frame in frames(random.Random(prefix).randbytes(32_000), PCM, 20):
            rec.write(frame)
    assert len(list((store.staging_path / "recording").rglob("*.sdr"))) == 1
    return rec.recording_id


def test_retiring_a_node_seals_its_recordings_and_stops_it_deciding(
    deployment: Deployment,
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    cli_json: Callable[..., tuple[int, Any]],
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    (sealed,) = record_calls(a, "a", 1)
    cut = start_and_abandon(a, "a-cut")
    record_calls(b, "b", 1)
    with a.open_log():  # its server still running: refused, nothing changed
        code, doc = cli_json("node", "retire", "--store", a.path)
        assert code == 3 and "node 'node-a' is running" in doc["error"]
    assert a.node_state().status == "active"  # type: ignore[union-attr]
    code, doc = cli_json("node", "retire", "--store", a.path)
    assert code == 0, doc
    assert doc["node"] == "node-a" and doc["status"] == "retired"
    assert doc["recovered"] == [[cut, "truncated"]] and doc["checkpoint"]["size"] > 0
    assert list((a.staging_path).rglob("*.sdr")) == []  # uploaded, then removed
    assert row_of(a, cut).status == "truncated" and row_of(a, sealed).status == "sealed"
    assert a.node_state() is not None and b.node_state() is not None
    assert (a.node_state().status, b.node_state().status) == ("retired", "active")  # type: ignore[union-attr]
    # It never decides again, and its name is not given to a new node.
    with pytest.raises(StoreError, match=r"node 'node-a' was retired .* no longer decides"):
        a.sampler(clock=FixedClock(AT))
    with pytest.raises(InvalidArgument, match="never reused"):
        nodes(deployment, tmp_path / "again", "node-a")
    # The final checkpoint signs the whole log, the retirement logged in it.
    retired = [e for e in iter_entries(a.log_storage) if e.type == T_ACCESS]
    assert retired[-1].fields["action"] == "node_retired"
    with a.open_log() as log:
        assert log.latest_checkpoint().size == log.size  # type: ignore[union-attr]
    # The other node goes on; the retired node's kit still joins the deployment's audit.
    record_calls(b, "b2", 1)
    code, doc = deployment_audit(cli_json, tmp_path, a, b)
    assert code == 0, messages(doc)
    assert doc["counts"]["recordings"] == 4
    # Retiring again changes nothing; declaring a retired node lost is refused.
    code, doc = cli_json("node", "lost", "node-a", "--reason", "x", "--store", b.path)
    assert code == 2 and "already retired" in doc["error"]


def test_a_node_lost_for_good_has_its_recordings_tombstoned_by_another(
    deployment: Deployment,
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    cli_json: Callable[..., tuple[int, Any]],
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    (uploaded,) = record_calls(a, "a", 1)
    # A recording sealed while the bucket was unreachable: it waits on node a's disk...
    clock = FixedClock(AT)
    prefix = a.backends["blobs"]["prefix"]
    away = StagedBlobStore(a.staging_path, unreachable(seaweedfs, prefix))
    with (
        a.open_log(clock=clock) as log,
        a.sampler(clock=clock, log=log) as sampler,
        Vault(a, log, clock=clock, blobs=away) as vault,
    ):
        d = next(
            d
            for d in (sampler.decide(f"w-{i}", {"queue": "other"}) for i in range(200))
            if d.record
        )
        waiting = write_call(vault, d, random.Random(3).randbytes(3200))
    # One whose prefix reached the bucket before the crash (say) while its row stayed open...
    partial = start_and_abandon(a, "a-up")
    assert Store.open(a.path).blobs.publish(row_of(a, partial).file)  # type: ignore[attr-defined]
    # ... and one in progress when node a's machine is lost, with its disk.
    in_progress = start_and_abandon(a, "a-lost")
    record_calls(b, "b", 1)
    # A node whose log is open somewhere (its server running) is not lost: refused, unchanged.
    with a.open_log(clock=clock):
        code, doc = cli_json("node", "lost", "node-a", "--reason", "gone?", "--store", b.path)
        assert code == 3 and "node 'node-a' is running" in doc["error"]
    assert a.node_state().status == "active"  # type: ignore[union-attr]
    # Its log was backed up (the operations guide says to): the kit is made from the copy.
    backup = tmp_path / "node-a-backup"
    shutil.copytree(a.path, backup, ignore=shutil.ignore_patterns("staging"))
    shutil.rmtree(a.path)

    code, doc = cli_json(
        "node", "lost", "node-a", "--reason", "disk failure, machine replaced", "--store", b.path
    )
    assert code == 0, doc
    assert doc["declared_by"] == "node-b"
    assert sorted(map(tuple, doc["recordings"])) == sorted(
        [(in_progress, "destroyed"), (waiting, "lost"), (partial, "truncated")]
    )
    assert row_of(b, partial).status == "truncated"  # re-sealed from the bucket, by node b
    for rid in (in_progress, waiting):
        row = row_of(b, rid)
        assert row.status == "aborted" and row.wrapped_key is None
    assert row_of(b, uploaded).status == "sealed"  # in the bucket: kept
    # Logged in node b's log, naming the lost node and why.
    tombs = [e for e in iter_entries(b.log_storage) if e.type == T_RECORDING_ABORTED]
    assert {e.fields["recording_id"] for e in tombs} == {in_progress, waiting}
    assert all("node node-a was lost for good: disk failure" in e.fields["reason"] for e in tombs)
    sealed = [e for e in iter_entries(b.log_storage) if e.type == T_RECORDING_SEALED]
    assert [e.fields["recording_id"] for e in sealed if e.fields["truncated"]] == [partial]
    # The lost node can never decide again, even restored from its backup.
    restored = Store.open(backup)
    with pytest.raises(StoreError, match="was lost"):
        restored.sampler(clock=clock)
    # The deployment's audit joins the backed-up log with node b's tombstones.
    code, doc = deployment_audit(cli_json, tmp_path, restored, b)
    assert code == 0, messages(doc)
    assert doc["results"]["recordings"]["checked"]["tombstones_on_other_nodes"] == 2
    assert any("node node-a was lost on" in note for note in doc["notes"])
    # Without that backup, its recordings are reported, naming the node and what to do.
    code, doc = deployment_audit(cli_json, tmp_path, b, kit_name="kit-without-a")
    assert code == 1
    lost = [
        f
        for f in doc["findings"]
        if "node node-a opened, whose log is not in the kit" in f["message"]
    ]
    assert {f["recording_id"] for f in lost} == {uploaded, partial}
    # Those node b destroyed with a tombstone (never kept) are not: nothing of them is left.
    assert doc["results"]["recordings"]["checked"]["aborted_before_opened"] == 2
    assert all("restore its log from its last backup" in f["message"] for f in lost)
    assert not [m for m in messages(doc) if "of the deployment is not in the kit" in m]


def test_a_kit_without_every_node_of_the_deployment_is_a_finding(
    deployment: Deployment, tmp_path: Path, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    record_calls(a, "a", 1)
    (hidden,) = record_calls(b, "b", 1)
    code, doc = deployment_audit(cli_json, tmp_path, a)
    assert code == 1
    (missing,) = [
        f for f in doc["findings"] if "of the deployment is not in the kit" in f["message"]
    ]
    assert missing["message"].startswith("node node-b (active)")
    (row,) = [
        f for f in doc["findings"] if f.get("recording_id") == hidden and "opened" in f["message"]
    ]
    assert "node node-b opened, but no node's log in the kit did" in row["message"]


KILLED_AFTER_OPENING = """
import os, sys
from sampledrec import FixedClock, Store
from sampledrec.vault import Vault
from sampledrec.vault.audio import AudioFormat
store = Store.open(sys.argv[1])
clock = FixedClock(sys.argv[2])
log = store.open_log(clock=clock, group_commit=3600)  # nothing written unless waited for
vault = Vault(store, log, clock=clock)
sampler = store.sampler(clock=clock, log=log)
d = next(d for d in (sampler.decide(f"k-{i}", {"queue": "x"}) for i in range(200)) if d.record)
log.wait_durable(d.log_ticket)
rec = vault.record(d, audio_format=AudioFormat("pcm16", 8000, 1), chunk_size=512)
rec.write(bytes(16000))  # waits in memory: the opened entry is not durable
print(rec.recording_id, flush=True)
os._exit(9)  # killed before the opened entry reached the log
"""


def test_a_node_killed_before_a_recordings_opened_entry_was_durable(
    deployment: Deployment,
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    cli_json: Callable[..., tuple[int, Any]],
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    record_calls(b, "b", 1)
    script = tmp_path / "child.py"
    script.write_text(KILLED_AFTER_OPENING)
    env = {**os.environ, **seaweedfs.env, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script), str(a.path), AT], capture_output=True, env=env, check=False
    )
    assert done.returncode == 9, done.stderr.decode()
    rid = done.stdout.decode().strip()
    assert row_of(a, rid).status == "open"
    assert list(a.staging_path.rglob("*.sdr")) == []  # no audio reached the disk
    clock = FixedClock(AT)
    with a.open_log(clock=clock) as log, Vault(a, log, clock=clock) as vault:
        assert vault.recover() == [(rid, "destroyed")]
    assert row_of(a, rid).status == "aborted"
    code, doc = deployment_audit(cli_json, tmp_path, a, b)
    assert code == 0, messages(doc)
    assert doc["results"]["recordings"]["checked"]["aborted_before_opened"] == 1
