"""Part (1) of bench_scale: three nodes of one deployment on PostgreSQL and SeaweedFS, against one
embedded store, in the same run (docs/decisions/0031-nodes.md).

Each side runs as ``sampledrec serve`` processes (HTTP door and media-stream door), loaded by
one asyncio client in this process:

- ``decisions_per_s``: decision requests answered per second (each answered once its log
  entry is durable), new call references only, ``CONCURRENCY`` connections spread over the
  side's servers;
- ``recordings_per_s``: calls decided and streamed (1 s of 8 kHz 16-bit audio each, sent as
  fast as the door takes it) and sealed, per second, ``STREAMS`` at once.

The servers: a PostgreSQL started with ``initdb`` in a temporary folder and ``weed mini``
(the test suite's helpers, tests/postgres.py and tests/seaweedfs.py), on this machine: the
nodes, the database, the object store and the client share its cores, so the figures say what
the deployment's machinery costs, not what N machines would do. The ratio to the embedded
store measured in the same run is the comparable figure (DESIGN.md §11).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from sampledrec.deployment import Deployment

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-scale-nodes-token-0123456789"
CONCURRENCY = 24
STREAMS = 6
POLICY = """
[default]
rate = "0.05"
purpose = "quality"
retention = "6 months"

[[rules]]
name = "recorded"
match = { queue = "recorded" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Benchmark: every call of this queue is recorded"
retention = "1 month"
"""
AUDIO = bytes(range(256)) * 62 + bytes(128)  # 16,000 bytes: 1 s of 8 kHz 16-bit audio


class _TmpFactory:
    """What the SeaweedFS fixture asks of pytest's temporary-folder factory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        return path


def servers(tmp: Path) -> Iterator[tuple[Any, Any]]:
    """PostgreSQL and SeaweedFS, started with the test suite's helpers, stopped after (and
    this process's environment as it was before)."""
    sys.path.insert(0, str(ROOT))  # the test helpers (tests/ is a package of the repository)
    from tests.postgres import start_postgres
    from tests.seaweedfs import seaweedfs

    # In /tmp itself: as root, the server runs as another user, who must reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="sampledrec-pg-"))
    environ = dict(os.environ)  # S3 credentials taken meanwhile are these servers' only
    pg = start_postgres(folder)
    weed = seaweedfs.__wrapped__(_TmpFactory(tmp))  # type: ignore[attr-defined]
    try:
        yield pg, next(weed)
    finally:
        weed.close()
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.clear()
        os.environ.update(environ)


def new_deployment(path: Path, pg: Any, weed: Any, policy: Path, name: str) -> Deployment:
    """A new deployment (its file at ``path``) on a fresh schema of ``pg`` and a fresh prefix of
    ``weed``'s bucket, with ``policy``; this process takes ``weed``'s S3 credentials (the
    nodes' too, which inherit its environment)."""
    from sampledrec.deployment import Deployment
    from sampledrec.store import s3_blobs_backend

    os.environ.update(weed.env)
    return Deployment.init(
        path,
        name=name,
        catalog_dsn=pg.url(pg.new_schema()),
        blobs=s3_blobs_backend(
            f"s3://{weed.bucket}/{weed.new_prefix(name)}", endpoint=weed.endpoint
        ),
        policy=policy,
    )


def _serve(store: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    token = store.parent / "token"
    token.write_text(TOKEN)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from sampledrec.cli.app import entry_point; entry_point()",
             "serve", "--store", str(store), "--http", "127.0.0.1:0", "--streams", "127.0.0.1:0",
             "--token-file", str(token)],
            stdout=subprocess.DEVNULL, stderr=sink, env=env,
        )  # fmt: skip
    deadline = time.monotonic() + 60  # a start-up bound
    while time.monotonic() < deadline:
        doors: dict[str, str] = {}
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "listening":
                doors[event["door"]] = event["address"]
            if event["event"] == "ready" and len(doors) == 2:
                return proc, doors["http"], doors["streams"]
        if proc.poll() is not None:
            raise RuntimeError(f"sampledrec serve exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("sampledrec serve did not start in 60 s")


async def _load(
    servers: list[tuple[str, str]], seconds: float, prefix: str, *, record: bool
) -> tuple[int, float]:
    """Answered decisions (or sealed recordings, with ``record``) in ``seconds``."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    done = 0
    counter = iter(range(10**9))
    end = time.monotonic() + seconds
    start = time.monotonic()

    async def one(session: aiohttp.ClientSession, http: str, streams: str) -> None:
        nonlocal done
        while time.monotonic() < end:
            ref = f"{prefix}-{next(counter)}"
            body = {"call_ref": ref, "attributes": {"queue": "recorded" if record else "q"}}
            async with session.post(f"{http}/v1/decisions", json=body, headers=headers) as r:
                doc = await r.json()
                assert r.status == 200, doc
            if not record:
                done += 1
                continue
            assert doc["record"], doc
            ws = await session.ws_connect(f"{streams}/v1/streams/fork?token={TOKEN}")
            await ws.send_str(json.dumps({"call_ref": ref}))
            for i in range(0, len(AUDIO), 3200):
                await ws.send_bytes(AUDIO[i : i + 3200])
            await ws.close()
            done += 1

    width = STREAMS if record else CONCURRENCY
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session, *servers[i % len(servers)]) for i in range(width)))
    return done, time.monotonic() - start


def _measure(stores: list[Path], env: dict[str, str], seconds: float, tag: str) -> dict[str, float]:
    procs = []
    try:
        servers = []
        for store in stores:
            proc, http, streams = _serve(store, env, store.parent / f"{store.name}.log")
            procs.append(proc)
            servers.append((http, streams))
        asyncio.run(_load(servers, 1.0, f"{tag}-warm", record=False))  # connections, keys
        n, took = asyncio.run(_load(servers, seconds, f"{tag}-d", record=False))
        r, took_r = asyncio.run(_load(servers, seconds, f"{tag}-r", record=True))
        return {"decisions_per_s": n / took, "recordings_per_s": r / took_r}
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def part_nodes(quick: bool) -> dict[str, Any]:
    """Part (1): three nodes on PostgreSQL and SeaweedFS against one embedded store."""
    from sampledrec import Store

    seconds = 4.0 if quick else 12.0
    tmp = Path(tempfile.mkdtemp(prefix="sampledrec-bench-nodes-"))
    try:
        (tmp / "policy.toml").write_text(POLICY)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        embedded = Store.init(tmp / "embedded" / "store", policy=tmp / "policy.toml")
        one = _measure([embedded.path], env, seconds, "e")
        for gen in servers(tmp):
            pg, weed = gen
            env.update(weed.env)
            dep = new_deployment(tmp / "deployment.json", pg, weed, tmp / "policy.toml", "bench")
            nodes = [
                Store.init_node(tmp / name / "store", dep, name=name).path
                for name in ("node-a", "node-b", "node-c")
            ]
            three = _measure(nodes, env, seconds, "n")
        return {
            "measured": True,
            "seconds_per_phase": seconds,
            "embedded": one,
            "three_nodes": three,
            "decisions_ratio": three["decisions_per_s"] / one["decisions_per_s"],
            "recordings_ratio": three["recordings_per_s"] / one["recordings_per_s"],
            "cpu_count": os.cpu_count(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def node_rows(nodes: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The table rows of part (1)."""
    one, three = nodes["embedded"], nodes["three_nodes"]
    return [
        ("decisions/s, one embedded store", f"{one['decisions_per_s']:,.0f}", "reference", "", ""),
        (
            "decisions/s, three nodes (PostgreSQL)",
            f"{three['decisions_per_s']:,.0f}",
            "for scale",
            f"{nodes['decisions_ratio']:.2f}",
            "",
        ),
        (
            "recordings/s, one embedded store",
            f"{one['recordings_per_s']:,.1f}",
            "reference",
            "",
            "",
        ),
        (
            "recordings/s, three nodes (SeaweedFS)",
            f"{three['recordings_per_s']:,.1f}",
            "for scale",
            f"{nodes['recordings_ratio']:.2f}",
            "",
        ),
    ]
