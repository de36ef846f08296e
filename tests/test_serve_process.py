"""``sampledrec serve`` as a process: SIGTERM while requests or streams are in flight loses
nothing.

The server is started as a subprocess (the command an operator or systemd runs), a client
sends decision requests from several connections at once, SIGTERM arrives in the middle, and
afterwards every decision the server answered is in the log once, the log verifies, and the
audit (keys revealed, the answered calls given as the carrier's call records) passes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

import sampledrec
from sampledrec import Store
from sampledrec.cli import main
from sampledrec.log.format import T_DECISION
from sampledrec.log.writer import iter_entries
from sampledrec.vault.recorder import Vault

from .recording import RECORD_REC
from .served import start_serve

TOKEN = "process-token-0123456789abcdef"
SRC = str(Path(sampledrec.__file__).parents[1])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "PYTHONWARNINGS": "error"}


def _start(store: Path, token: Path) -> tuple[subprocess.Popen[str], str]:
    proc, addresses, _ = start_serve(
        "--store", str(store), "--http", "127.0.0.1:0", "--token-file", str(token), env=_env()
    )
    return proc, addresses["http"]


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


def test_the_command_runs_on_uvloop_unless_told_otherwise(tmp_path: Path) -> None:
    """``sampledrec serve`` runs on uvloop (the serve extra installs it) and on asyncio's own
    loop with --event-loop asyncio; both answer, and both stop cleanly on SIGTERM."""
    Store.init(tmp_path / "store")
    token = tmp_path / "token"
    token.write_text(TOKEN)
    store = str(tmp_path / "store")
    serve = ["--store", store, "--http", "127.0.0.1:0", "--token-file", str(token)]
    for extra, loop in [((), "uvloop"), (("--event-loop", "asyncio"), "asyncio")]:
        proc, addresses, events = start_serve(*serve, *extra, env=_env())
        try:
            assert events[-1]["event"] == "ready" and events[-1]["event_loop"] == loop

            async def ask(url: str = addresses["http"], ref: str = f"on-{loop}") -> Any:
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with aiohttp.ClientSession() as session:
                    body = {"call_ref": ref}
                    async with session.post(f"{url}/v1/decisions", json=body, headers=headers) as r:
                        assert r.status == 200
                        return await r.json()

            assert asyncio.run(ask())["call_ref"] == f"on-{loop}"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err


# -- SIGTERM while media streams are open --------------------------------------------------------

STREAM_POLICY = RECORD_REC


def _start_media(store: Path, token: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc, addresses, _ = start_serve(
        "--store", str(store), "--http", "127.0.0.1:0", "--token-file", str(token),
        "--audiosocket", "127.0.0.1:0", "--streams", "127.0.0.1:0", env=_env(),
    )  # fmt: skip
    return proc, addresses


def _tone(n: int, seed: int) -> bytes:
    return bytes((seed * 37 + i * 11) % 256 for i in range(n))


async def _streams_until_stopped(
    addresses: dict[str, str], proc: subprocess.Popen[str]
) -> dict[str, bytes]:
    """Five AudioSocket, five Twilio and five fork streams, each sending 20 ms frames until the
    server closes it; SIGTERM once every stream has sent a second. What each stream sent."""
    http = addresses["http"]
    ws_base = addresses["streams"].replace("ws://", "http://")
    host, _, port = addresses["audiosocket"].rpartition(":")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    sent: dict[str, bytearray] = {}
    second = asyncio.Event()
    counted: set[str] = set()

    def progress(ref: str) -> None:
        if len(sent[ref]) >= 16000 and ref not in counted:
            counted.add(ref)
            if len(counted) == 15:
                second.set()

    async def audiosocket(ref: str, seed: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(struct.pack(">BH", 1, 16) + uuid.UUID(ref).bytes)
        try:
            for n in range(10**6):
                frame = _tone(320, seed + n)
                writer.write(struct.pack(">BH", 0x10, 320) + frame)
                await writer.drain()
                sent[ref] += frame
                progress(ref)
                await asyncio.sleep(0.005)
                if reader.at_eof():
                    break
        except ConnectionError:
            pass
        writer.close()

    async def twilio(session: aiohttp.ClientSession, ref: str, seed: int) -> None:
        ws = await session.ws_connect(f"{ws_base}/v1/streams/twilio")
        start = {
            "streamSid": "MZ" + ref, "callSid": "CA" + ref, "tracks": ["inbound"],
            "customParameters": {"call_ref": ref, "token": TOKEN},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }  # fmt: skip
        await ws.send_str(json.dumps({"event": "start", "sequenceNumber": "1", "start": start}))
        with contextlib.suppress(ConnectionError):
            for n in range(10**6):
                frame = _tone(160, seed + n)
                media = {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20),
                         "payload": base64.b64encode(frame).decode()}  # fmt: skip
                doc = {"event": "media", "sequenceNumber": str(n + 2), "media": media}
                if ws.closed:
                    break
                await ws.send_str(json.dumps(doc))
                sent[ref] += frame
                progress(ref)
                await asyncio.sleep(0.005)
        await ws.close()

    async def fork(session: aiohttp.ClientSession, ref: str, seed: int) -> None:
        ws = await session.ws_connect(f"{ws_base}/v1/streams/fork", headers=headers)
        await ws.send_str(json.dumps({"call_ref": ref}))
        with contextlib.suppress(ConnectionError):
            for n in range(10**6):
                frame = _tone(320, seed + n)
                if ws.closed:
                    break
                await ws.send_bytes(frame)
                sent[ref] += frame
                progress(ref)
                await asyncio.sleep(0.005)
        await ws.close()

    async def stop_after_a_second() -> None:
        await second.wait()
        proc.send_signal(signal.SIGTERM)

    async with aiohttp.ClientSession() as session:
        kinds = {"a": 5, "t": 5, "f": 5}
        refs = {k: [str(uuid.uuid4()) if k == "a" else f"{k}-{i}" for i in range(n)]
                for k, n in kinds.items()}  # fmt: skip
        for ref in [r for group in refs.values() for r in group]:
            sent[ref] = bytearray()
            body = {"call_ref": ref, "attributes": {"queue": "rec"}}
            async with session.post(f"{http}/v1/decisions", json=body, headers=headers) as r:
                assert r.status == 200 and (await r.json())["record"]
        await asyncio.wait_for(
            asyncio.gather(
                *(audiosocket(r, i) for i, r in enumerate(refs["a"])),
                *(twilio(session, r, i) for i, r in enumerate(refs["t"])),
                *(fork(session, r, i) for i, r in enumerate(refs["f"])),
                stop_after_a_second(),
            ),
            60,
        )
    return {ref: bytes(audio) for ref, audio in sent.items()}


def test_sigterm_mid_stream_seals_every_recording_truncated(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(STREAM_POLICY)
    path = tmp_path / "store"
    Store.init(path, policy=tmp_path / "policy.toml", simulated=True)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    proc, addresses = _start_media(path, token)
    try:
        sent = asyncio.run(_streams_until_stopped(addresses, proc))
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines()]
    names = [e["event"] for e in events]
    assert names[-1] == "stopped" and "door_cancelled" not in names
    assert [e for e in events if e["level"] == "error"] == []
    sealed = [e for e in events if e["event"] == "recording_sealed"]
    assert len(sealed) == 15 and all(e["truncated"] for e in sealed)

    store = Store.open(path)
    with store.open_log() as log, Vault(store, log) as vault:
        rows = {str(row.call_ref): row for row in vault.recordings()}
        assert set(rows) == set(sent)
        for ref, row in rows.items():
            audio = vault.open(row.recording_id).audio
            assert row.truncated and row.status == "truncated", (ref, row.status)
            assert len(audio) >= 16000 // (2 if ref.startswith("t-") else 1)
            assert sent[ref].startswith(audio)  # nothing lost or changed before the stop
    out = io.StringIO()
    assert main(["log", "verify", "--store", str(path)], out=out) == 0, out.getvalue()
    tomorrow = datetime.now(UTC) + timedelta(days=2)
    revealed = tmp_path / "revealed.json"
    store.write_revealed(store.reveal_keys(now=tomorrow), revealed)
    start = datetime.now(UTC).isoformat()
    cdr = tmp_path / "cdr.csv"
    cdr.write_text("call_ref,start_time\n" + "".join(f"{r},{start}\n" for r in sorted(sent)))
    audit = ["audit", "verify", "--store", str(path), "--revealed-keys", str(revealed)]
    out = io.StringIO()
    code = main([*audit, "--cdr", str(cdr), "--at", tomorrow.isoformat()], out=out)
    assert code == 0, out.getvalue()
    assert "AUDIT PASSED" in out.getvalue()
