"""The audit of a deployment kit with the evidence from outside the operator's reach
(docs/decisions/0036): exported checkpoints (one per node, routed by the log they name),
witnesses' cosignatures (every node's log), and the carrier's call records (the whole
deployment's, against every node's decisions together). Each is shown to be checked: a
cheating case fails. Two nodes on the real PostgreSQL and SeaweedFS."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sampledrec import FixedClock, Store
from sampledrec.audit.nodes import audit_deployment_kit
from sampledrec.audit.partitions import InProcess
from sampledrec.deployment import Deployment
from sampledrec.errors import StoreError
from sampledrec.witness import WitnessEndpoint, WitnessSettings
from sampledrec.witness.note import VerifierKey

from .deployments import new_deployment, nodes
from .postgres import PostgresServer
from .seaweedfs import SeaweedFS
from .witnesses import ThreadedWitness

AT = "2030-03-05T10:00:00Z"
LATER = "2030-03-07T00:00:01Z"
POLICY = """
[default]
rate = "0.2"
purpose = "quality"
retention = "6 months"
"""
CliJson = Callable[..., tuple[int, Any]]


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


def decide(store: Store, refs: list[str]) -> None:
    clock = FixedClock(AT)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        for ref in refs:
            sampler.decide(ref)
        log.flush()


def kit(cli_json: CliJson, tmp_path: Path, a: Store, b: Store, name: str = "kit") -> Path:
    out = tmp_path / name
    code, doc = cli_json(
        "audit", "kit", "--store", a.path, "--node", b.path, "--out", out, "--at", LATER
    )
    assert code == 0, doc
    return out


def verify(cli_json: CliJson, folder: Path, *extra: str | Path) -> tuple[int, Any]:
    return cli_json("audit", "verify", "--kit", folder, *extra, "--at", LATER)


def messages(doc: Any, check: str) -> list[str]:
    return [f["message"] for f in doc["findings"] if f["check"] == check]


def test_carrier_records_are_checked_against_every_nodes_decisions(
    deployment: Deployment, tmp_path: Path, cli_json: CliJson
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    decide(a, [f"call-{i}" for i in range(30)])
    decide(b, [f"call-{i}" for i in range(20, 50)])  # 10 calls on both: repeats on b
    folder = kit(cli_json, tmp_path, a, b)
    rows = "".join(f"call-{i},2030-03-05T09:59:00Z\n" for i in range(50))
    cdr = tmp_path / "cdr.csv"
    cdr.write_text("call_ref,start_time\n" + rows)
    code, doc = verify(cli_json, folder, "--cdr", cdr)
    # Each node decided only some of the carrier's calls; together they decided all of them.
    assert code == 0, doc["findings"]
    assert doc["checks"]["cdr"] == "PASS"
    assert doc["counts"]["cdr_calls"] == 50
    # A carrier call that no node decided (recorded off the books, say), and a decided call
    # the carrier never carried: both found.
    cheat = tmp_path / "cheat.csv"
    cheat.write_text("call_ref,start_time\n" + rows.replace("call-7,", "call-ghost,"))
    code, doc = verify(cli_json, folder, "--cdr", cheat)
    assert code == 1 and doc["checks"]["cdr"] == "FAIL"
    found = [f for f in doc["findings"] if f["check"] == "cdr"]
    assert {f["call_ref"] for f in found} == {"call-ghost", "call-7"}
    [decided] = [f for f in found if f["call_ref"] == "call-7"]
    assert decided["evidence"]["nodes"] == ["node-a"]  # whose log holds it


def test_exported_checkpoints_are_checked_per_node(
    deployment: Deployment, tmp_path: Path, cli_json: CliJson
) -> None:
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    decide(a, [f"a-{i}" for i in range(20)])
    decide(b, [f"b-{i}" for i in range(20)])
    early = tmp_path / "node-a-log-early"
    shutil.copytree(a.path / "log", early)
    decide(a, [f"a-{i}" for i in range(20, 40)])
    exported = {}
    for store in (a, b):
        exported[store.node_name] = tmp_path / f"{store.node_name}.cp.json"
        code, doc = cli_json(
            "log", "checkpoint", "--store", store.path, "--out", exported[store.node_name]
        )
        assert code == 0, doc
    honest = kit(cli_json, tmp_path, a, b)
    code, doc = verify(
        cli_json, honest, "--checkpoint", exported["node-a"], "--checkpoint", exported["node-b"]
    )
    assert code == 0, doc["findings"]
    assert doc["results"]["log"]["checked"]["exported_checkpoints"] == 2
    # The operator rolls node a's log back to before the export (dropping 20 decisions): the
    # log still verifies on its own, only the exported checkpoint tells.
    shutil.rmtree(a.path / "log")
    shutil.copytree(early, a.path / "log")
    rolled = kit(cli_json, tmp_path, a, b, "kit-rolled")
    code, doc = verify(cli_json, rolled)
    assert code == 0, doc["findings"]
    code, doc = verify(
        cli_json, rolled, "--checkpoint", exported["node-a"], "--checkpoint", exported["node-b"]
    )
    assert code == 1 and doc["checks"]["log"] == "FAIL"
    assert all(f["evidence"]["node"] == "node-a" for f in doc["findings"] if f["check"] == "log")
    # Each node's log checked on a local Dask cluster: the same report.
    code, on_dask = verify(
        cli_json, rolled, "--checkpoint", exported["node-a"], "--checkpoint", exported["node-b"],
        "--workers", "2",
    )  # fmt: skip
    assert code == 1
    assert (on_dask["checks"], on_dask["findings"]) == (doc["checks"], doc["findings"])
    # A checkpoint of no node of the kit, or two for one node: a usage error.
    code, doc = verify(
        cli_json, rolled, "--checkpoint", exported["node-a"], "--checkpoint", exported["node-a"]
    )
    assert code == 2 and "both of node node-a's log" in doc["error"]
    code, doc = verify(cli_json, honest, "--workers", "2")
    assert code == 0, doc["findings"]


class _Counting:
    """A part runner that counts the log partitions it checks."""

    def __init__(self) -> None:
        self.runs: list[int] = []

    def run(self, parts: Any, *args: Any) -> Any:
        self.runs.append(len(parts))
        return InProcess().run(parts, *args)


def test_each_nodes_log_is_read_once(
    deployment: Deployment, tmp_path: Path, cli_json: CliJson
) -> None:
    # The joins across nodes need every node's entries before each node's audit: the runner
    # that reads them first hands its results to the node's audit, not a second reading.
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    decide(a, [f"a-{i}" for i in range(30)])
    decide(b, [f"b-{i}" for i in range(30)] + ["a-3"])
    folder = kit(cli_json, tmp_path, a, b)
    counted: dict[str, _Counting] = {}

    def runner_for(node: Path) -> _Counting:
        return counted.setdefault(node.name, _Counting())

    at = datetime.fromisoformat(LATER.replace("Z", "+00:00"))
    once = audit_deployment_kit(folder, now=at, runner_for=runner_for)
    assert sorted(counted) == ["node-a", "node-b"]
    assert all(len(c.runs) == 1 and c.runs[0] >= 1 for c in counted.values()), counted
    alone = audit_deployment_kit(folder, now=at)
    assert once.to_json() == alone.to_json()
    assert once.ok, once.to_text()


def test_a_manifest_that_names_a_node_twice_is_refused(
    deployment: Deployment, tmp_path: Path, cli_json: CliJson
) -> None:
    # Each node's log is audited and joined under its name: two entries of one name would
    # let one node's decisions pass for another's.
    a, b = nodes(deployment, tmp_path, "node-a", "node-b")
    decide(a, ["c-1"])
    decide(b, ["c-2"])
    folder = kit(cli_json, tmp_path, a, b)
    manifest = json.loads((folder / "deployment-kit.json").read_text())
    manifest["nodes"][1]["name"] = manifest["nodes"][0]["name"]
    (folder / "deployment-kit.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="names a node twice"):
        audit_deployment_kit(folder)
    code, doc = verify(cli_json, folder)
    assert code == 3 and "names a node twice" in doc["error"]  # the kit is unusable


def _settings(w: ThreadedWitness) -> WitnessSettings:
    return WitnessSettings(
        (WitnessEndpoint("dpo", w.url, VerifierKey.parse(w.vkey)),),
        quorum=1,
        interval=1.0,
        close_wait=10.0,
    )


def test_witnesses_must_cosign_every_nodes_log(
    deployment: Deployment, tmp_path: Path, cli_json: CliJson
) -> None:
    a, b, c = nodes(deployment, tmp_path, "node-a", "node-b", "node-c")
    logs = {s.origin: [s.vkey] for s in (a, b, c)}
    with ThreadedWitness("witness.dpo.example/w1", tmp_path / "wstate", logs) as w:
        a.configure_witnesses(_settings(w))
        b.configure_witnesses(_settings(w))
        decide(a, [f"a-{i}" for i in range(20)])
        decide(b, [f"b-{i}" for i in range(20)])
        decide(c, [f"c-{i}" for i in range(20)])  # c has no witness: nobody cosigns its log
        dpo = f"dpo={w.vkey}"
        witnessed = kit(cli_json, tmp_path, a, b, "kit-ab")
        # Every node's cosigned checkpoints in one file (as a witness's records would hold
        # them), as of that kit.
        both = tmp_path / "both.notes"
        both.write_bytes(
            b"".join(
                p.read_bytes() for s in (a, b) for p in sorted(s.path.glob("cosigned/**/*.notes"))
            )
        )
        everyone = tmp_path / "kit-abc"
        code, doc = cli_json(
            "audit", "kit", "--store", a.path, "--node", b.path, "--node", c.path,
            "--out", everyone, "--at", LATER,
        )  # fmt: skip
        assert code == 0, doc
    code, doc = verify(cli_json, witnessed, "--witness", dpo)
    assert doc["checks"]["witnesses"] == "PASS"
    # The kit leaves node-c out: that is reported (a deployment's kit holds every node), and
    # it is the only finding.
    assert code == 1
    assert [(f["check"], f["evidence"].get("node")) for f in doc["findings"]] == [("log", "node-c")]
    assert {cov["node"] for cov in doc["witnesses"]} == {"node-a", "node-b"}
    code, doc = verify(cli_json, everyone, "--witness", dpo)
    assert code == 1 and doc["checks"]["witnesses"] == "FAIL"
    [missing] = [f for f in doc["findings"] if f["check"] == "witnesses"]
    assert missing["evidence"]["node"] == "node-c" and "quorum" in missing["message"]
    # With both nodes' cosigned checkpoints in one file, each node's check takes its own and
    # passes over the other's.
    assert both.read_bytes()
    code, doc = verify(cli_json, witnessed, "--witness", dpo, "--cosigned", both)
    assert doc["checks"]["witnesses"] == "PASS", doc["findings"]
    assert [f["evidence"].get("node") for f in doc["findings"]] == ["node-c"]  # not in the kit
    # A witness the nodes never asked: nobody's log is covered.
    with ThreadedWitness("witness.other.example/w2", tmp_path / "w2", logs) as other:
        code, doc = verify(cli_json, witnessed, "--witness", f"other={other.vkey}")
    assert code == 1
    assert {f["evidence"]["node"] for f in doc["findings"] if f["check"] == "witnesses"} == {
        "node-a",
        "node-b",
    }
