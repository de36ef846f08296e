"""Three ``sampledrec serve`` nodes of one deployment, killed and restarted at random.

The nodes share the test PostgreSQL server (catalog, caps ledger, decided-calls index, shared
keys) and the SeaweedFS bucket. Clients ask every node for decisions about one pool of call
references at once (so most calls are decided on several nodes) and stream the selected calls
to the media-stream door of any node, while the test SIGKILLs a node now and then and starts it
again. Afterwards: every answered decision is in some node's log, with the answer given; no
call has two outcomes; no agent has more selected calls than the cap; the deployment kit's
audit passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import sampledrec
from sampledrec import Store
from sampledrec.cli import main
from sampledrec.deployment import Deployment
from sampledrec.log.format import T_DECISION
from sampledrec.log.writer import iter_entries
from sampledrec.sampling.record import REASONS
from sampledrec.store import s3_blobs_backend
from sampledrec.vault import Vault

from .postgres import PostgresServer
from .seaweedfs import SeaweedFS

TOKEN = "nodes-process-token-0123456789"
SRC = str(Path(sampledrec.__file__).parents[1])
CAP = 5
AGENTS = 6
POLICY = f"""
[[rules]]
name = "sales"
match = {{ queue = "sales" }}
rate = "0.5"
justification = "Pilot of the new sales script: QA listens to a few calls per agent a day"
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = {CAP}

[default]
rate = "0.1"
purpose = "quality"
retention = "6 months"
"""
TRAFFIC_SECONDS = 14.0  # of requests, with a node killed every 2 to 4 s
START_LIMIT = 60.0  # seconds for a node to say it is ready: a start-up limit, not a timing test


class Node:
    """One node's server process, started again after each kill."""

    def __init__(self, path: Path, token: Path, env: dict[str, str]) -> None:
        self.path = path
        self.token = token
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = ""
        self.streams = ""
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        err = self.path.parent / f"{self.path.name}-{self.starts}.err"
        with err.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from sampledrec.cli.app import entry_point; entry_point()",
                 "serve", "--store", str(self.path), "--http", "127.0.0.1:0",
                 "--streams", "127.0.0.1:0", "--token-file", str(self.token)],
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env=self.env,
            )  # fmt: skip
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            http = streams = None
            for line in err.read_text().splitlines():
                event = json.loads(line)
                if event["event"] == "listening":
                    if event["door"] == "http":
                        http = event["address"]
                    elif event["door"] == "streams":
                        streams = event["address"]
                if event["event"] == "ready" and http and streams:
                    self.http, self.streams = http, streams
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.path.name} exited: {err.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.path.name} was not ready in {START_LIMIT} s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def traffic(nodes: list[Node], rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Decisions and recordings on every node at once; a node killed and restarted now and
    then. Returns every answer given, by call reference."""
    answered: dict[str, list[dict[str, Any]]] = defaultdict(list)
    streamed: set[str] = set()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    refs = [f"call-{i:04d}" for i in range(400)]
    end = time.monotonic() + TRAFFIC_SECONDS
    pcm = bytes(range(256)) * 2 * 50  # 1.6 s of 8 kHz 16-bit audio, in 20 ms frames below

    async def record(session: aiohttp.ClientSession, node: Node, ref: str) -> None:
        try:
            ws = await session.ws_connect(f"{node.streams}/v1/streams/fork?token={TOKEN}")
            await ws.send_str(json.dumps({"call_ref": ref}))
            for i in range(0, len(pcm), 320):
                await ws.send_bytes(pcm[i : i + 320])
                if i % 3200 == 0:
                    await asyncio.sleep(0.01)
            await ws.close()
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            pass  # the node was killed mid-stream: its recovery deals with the recording

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            ref = rng.choice(refs)
            node = rng.choice(nodes)
            attributes = {
                "queue": "sales" if int(ref[-4:]) % 4 else "other",
                "agent": f"agent-{int(ref[-4:]) % AGENTS}",
            }
            body = {"call_ref": ref, "attributes": attributes}
            try:
                async with session.post(
                    f"{node.http}/v1/decisions", json=body, headers=headers
                ) as r:
                    if r.status != 200:
                        continue  # stopping, or killed: not answered
                    doc = await r.json()
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                continue
            answered[ref].append(doc)
            if doc["record"] and ref not in streamed and rng.random() < 0.5:
                streamed.add(ref)  # each call is streamed once, as a platform does
                await record(session, node, ref)  # the node whose log has the decision

    async def killer() -> None:
        while time.monotonic() < end - 2:
            await asyncio.sleep(rng.uniform(2, 4))
            node = rng.choice(nodes)
            node.kill()
            await asyncio.to_thread(node.start)

    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(killer(), *(worker(session) for _ in range(12)))
    return answered


@pytest.mark.slow
def test_three_nodes_killed_at_random_lose_nothing_and_agree(
    tmp_path: Path, postgres: PostgresServer, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "policy.toml").write_text(POLICY)
    dep = Deployment.init(
        tmp_path / "deployment.json",
        name="kill-test",
        catalog_dsn=postgres.url(postgres.new_schema()),
        blobs=s3_blobs_backend(
            f"s3://{seaweedfs.bucket}/{seaweedfs.new_prefix('nodes')}",
            endpoint=seaweedfs.endpoint,
        ),
        policy=tmp_path / "policy.toml",
    )
    # Simulated: today's epoch key may be revealed for the audit at the end.
    stores = [Store.init_node(tmp_path / n, dep, name=n, simulated=True) for n in ("a", "b", "c")]
    token = tmp_path / "token"
    token.write_text(TOKEN)
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONWARNINGS": "error", **seaweedfs.env}
    nodes = [Node(s.path, token, env) for s in stores]
    try:
        for node in nodes:
            node.start()
        answered = asyncio.run(traffic(nodes, random.Random(1531)))
    finally:
        for node in nodes:
            node.stop()
    assert sum(n.starts for n in nodes) > len(nodes), "no node was killed"
    assert len(answered) > 100

    # Recordings cut by a kill: each node recovers its own (the operator's step after a crash).
    for store in (Store.open(s.path) for s in stores):
        with store.open_log() as log, Vault(store, log) as vault:
            vault.recover()

    logged: dict[str, set[str]] = defaultdict(set)
    for store in (Store.open(s.path) for s in stores):
        for entry in iter_entries(store.log_storage, store.keyring):
            if entry.type == T_DECISION:
                logged[entry.fields["call_ref"]].add(REASONS[entry.fields["reason"]])
    # Nothing lost: every answer is in some node's log, with the reason it gave.
    for ref, docs in answered.items():
        assert {d["reason"] for d in docs} <= logged[ref], ref
    # No call decided twice with different outcomes, on whichever nodes.
    assert all(len(reasons) == 1 for reasons in logged.values())
    # Caps across nodes: no agent has more selected calls under the capped rule than the cap.
    selected: dict[str, int] = defaultdict(int)
    for ref, (reason,) in logged.items():
        if reason == "sampled" and int(ref[-4:]) % 4:
            selected[f"agent-{int(ref[-4:]) % AGENTS}"] += 1
    assert selected and max(selected.values()) <= CAP
    assert any(r == {"cap_reached"} for r in logged.values())

    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    kit = tmp_path / "kit"
    out = io_run(
        "audit", "kit", "--store", stores[0].path, "--node", stores[1].path,
        "--node", stores[2].path, "--out", kit, "--at", later,
    )  # fmt: skip
    assert out[0] == 0, out[1]
    code, text = io_run("audit", "verify", "--kit", kit, "--at", later, "--json")
    report = json.loads(text)
    assert code == 0, [f["message"] for f in report["findings"]]
    assert report["verdict"] == "PASS" and report["counts"]["nodes"] == 3
    assert report["counts"]["recordings"] > 0  # recordings opened, through the nodes' doors
    print(
        f"starts={[n.starts for n in nodes]} answered={sum(map(len, answered.values()))} "
        f"calls={len(answered)} recordings={report['counts']['recordings']} "
        f"several={report['results']['decisions']['checked']['calls_decided_on_several_nodes']}"
    )


def io_run(*argv: str | Path) -> tuple[int, str]:
    import io

    out = io.StringIO()
    return main([str(a) for a in argv], out=out), out.getvalue()
