"""``sampledrec serve`` as a process: SIGTERM while requests are in flight loses nothing.

The server is started as a subprocess (the command an operator or systemd runs), a client
sends decision requests from several connections at once, SIGTERM arrives in the middle, and
afterwards every decision the server answered is in the log once, the log verifies, and the
audit (keys revealed, the answered calls given as the carrier's call records) passes.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

import sampledrec
from sampledrec import Store
from sampledrec.cli import main
from sampledrec.log.format import T_DECISION
from sampledrec.log.writer import iter_entries

TOKEN = "process-token-0123456789abcdef"
SRC = str(Path(sampledrec.__file__).parents[1])


def _start(store: Path, token: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sampledrec.cli.app import entry_point; entry_point()",
         "serve", "--store", str(store),
         "--http", "127.0.0.1:0", "--token-file", str(token)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC, "PYTHONWARNINGS": "error"},
    )  # fmt: skip
    assert proc.stderr is not None
    url = None
    try:
        for line in proc.stderr:  # the JSON log says where it listens, then that it is ready
            event = json.loads(line)
            if event["event"] == "listening":
                url = event["address"]
            if event["event"] == "ready" and url is not None:
                return proc, url
        raise AssertionError(f"the server exited with {proc.wait(10)} before it was ready")
    except BaseException:
        proc.kill()
        proc.wait()
        raise


async def _client(url: str, proc: subprocess.Popen[str]) -> dict[str, dict[str, Any]]:
    """Send requests from 20 connections until the server stops; SIGTERM after 150 answers."""
    answered: dict[str, dict[str, Any]] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    counter = iter(range(10**6))

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            ref = f"proc-call-{next(counter):05d}"
            body = {"call_ref": ref, "attributes": {"queue": "sales"}, "caller": "+33612345678"}
            try:
                async with session.post(f"{url}/v1/decisions", json=body, headers=headers) as r:
                    doc = await r.json()
                    if r.status != 200:
                        assert r.status == 503, doc  # shutting down: not decided
                        return
            except aiohttp.ClientError:
                return  # the server closed the connection or no longer listens
            answered[ref] = doc
            if len(answered) == 150:
                proc.send_signal(signal.SIGTERM)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.wait_for(asyncio.gather(*(worker(session) for _ in range(20))), 60)
    return answered


def test_sigterm_loses_no_answered_decision(tmp_path: Path) -> None:
    path = tmp_path / "store"
    Store.init(path, simulated=True)  # simulated: its keys may be revealed today, for the audit
    token = tmp_path / "token"
    token.write_text(TOKEN)
    proc, url = _start(path, token)
    try:
        answered = asyncio.run(_client(url, proc))
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    names = [e["event"] for e in events]
    assert names.index("signal") < names.index("stopping") < names.index("stopped")
    assert names[-1] == "stopped" and names.count("decision_warning") == 1
    assert TOKEN not in err and "33612345678" not in err and "proc-call" not in err
    assert len(answered) >= 150

    store = Store.open(path)
    logged: dict[str | bytes, int] = {}
    for entry in iter_entries(store.log_storage, store.keyring):
        if entry.type == T_DECISION:
            ref = entry.fields["call_ref"]
            logged[ref] = logged.get(ref, 0) + 1
            if isinstance(ref, str) and ref in answered:
                assert answered[ref]["log_index"] == entry.index
    assert set(answered) <= set(logged) and set(logged.values()) == {1}
    out = io.StringIO()
    assert main(["log", "verify", "--store", str(path)], out=out) == 0, out.getvalue()
    tomorrow = datetime.now(UTC) + timedelta(days=2)
    revealed = tmp_path / "revealed.json"
    store.write_revealed(store.reveal_keys(now=tomorrow), revealed)
    start = datetime.now(UTC).isoformat()
    cdr = tmp_path / "cdr.csv"
    cdr.write_text("call_ref,start_time\n" + "".join(f"{r},{start}\n" for r in sorted(answered)))
    audit = ["audit", "verify", "--store", str(path), "--revealed-keys", str(revealed)]
    out = io.StringIO()
    code = main([*audit, "--cdr", str(cdr), "--at", tomorrow.isoformat()], out=out)
    assert code == 0, out.getvalue()
    assert "AUDIT PASSED" in out.getvalue()
