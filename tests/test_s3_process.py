"""``sampledrec serve`` on S3 object storage, SIGKILLed mid-call, loses no call.

The server records calls streamed to its media-stream door into a store whose recordings go to
the test SeaweedFS bucket. Its containers are on the node's disk while they are recorded
(encrypted: no audio in clear there), so a SIGKILL leaves them; the restarted server seals them
as truncated and uploads them before it opens its doors, then empties its staging folder. The
log and the audit verify.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import subprocess
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import sampledrec
from sampledrec import Store
from sampledrec.cli import main
from sampledrec.store import s3_blobs_backend
from sampledrec.vault.recorder import Vault

from .recording import RECORD_REC
from .seaweedfs import SeaweedFS
from .served import start_serve
from .test_s3 import on_disk, pattern_found

TOKEN = "s3-process-token-0123456789abcdef"
SRC = str(Path(sampledrec.__file__).parents[1])
POLICY = RECORD_REC
CALLS = 3
SENT = 320 * 1024  # bytes of audio per call: five 64 KiB chunks of the container
KEPT = 128 * 1024  # at least this much is on the node's disk when the server is killed


def start(store: Path, token: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], Any]:
    proc, addresses, events = start_serve(
        "--store", str(store), "--http", "127.0.0.1:0", "--token-file", str(token),
        "--streams", "127.0.0.1:0", env=env,
    )  # fmt: skip
    return proc, (addresses, events)


def audio_of(i: int) -> bytes:
    return random.Random(f"s3 process call {i}").randbytes(SENT)


async def stream_then_kill(
    addresses: dict[str, str], proc: subprocess.Popen[str], staging: Path
) -> None:
    """Decide CALLS calls, stream their audio to the fork door, and SIGKILL the server once
    each has at least KEPT bytes of container on the node's disk, the streams still open."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ws_base = addresses["streams"].replace("ws://", "http://")
    async with aiohttp.ClientSession() as session:
        sockets = []
        for i in range(CALLS):
            body = {"call_ref": f"s3-call-{i}", "attributes": {"queue": "rec"}}
            url = f"{addresses['http']}/v1/decisions"
            async with session.post(url, json=body, headers=headers) as r:
                assert r.status == 200 and (await r.json())["record"]
            ws = await session.ws_connect(f"{ws_base}/v1/streams/fork", headers=headers)
            await ws.send_str(json.dumps({"call_ref": f"s3-call-{i}"}))
            sockets.append(ws)
        # Audio as a call sends it, a stretch at a time (each call's first frames wait in
        # memory until its recording's opened entry is durable), until every container has
        # KEPT bytes on the node's disk.
        audios = [audio_of(i) for i in range(CALLS)]
        for start in range(0, SENT, 3200):
            for ws, audio in zip(sockets, audios, strict=True):
                for at in range(start, start + 3200, 320):
                    await ws.send_bytes(audio[at : at + 320])
            await asyncio.sleep(0.02)
            sizes = [p.stat().st_size for p in (staging / "recording").rglob("*.sdr")]
            if len(sizes) == CALLS and min(sizes) >= KEPT:
                break
        else:
            raise AssertionError(f"the containers did not reach {KEPT} bytes on disk")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for ws in sockets:
            await ws.close()


@pytest.mark.slow
def test_a_server_on_s3_killed_mid_call_loses_no_call(
    tmp_path: Path, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "policy.toml").write_text(POLICY)
    prefix = seaweedfs.new_prefix("killed")
    backend = s3_blobs_backend(f"s3://{seaweedfs.bucket}/{prefix}", endpoint=seaweedfs.endpoint)
    path = tmp_path / "store"
    # Simulated, so that today's epoch key can be revealed for the audit below.
    store = Store.init(
        path, policy=tmp_path / "policy.toml", backends={"blobs": backend}, simulated=True
    )
    token = tmp_path / "token"
    token.write_text(TOKEN)
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONWARNINGS": "error", **seaweedfs.env}

    proc, (addresses, _) = start(path, token, env)
    try:
        asyncio.run(stream_then_kill(addresses, proc, store.staging_path))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The calls are on the node's disk, encrypted; nothing reached the bucket.
    staged = list(on_disk(store.staging_path))
    assert len(staged) == CALLS
    assert not any(pattern_found(audio_of(i), data) for i in range(CALLS) for data in staged)
    assert seaweedfs.objects(prefix) == {}

    # Restarted: it seals and uploads them before it is ready, then stops cleanly.
    proc, (addresses, events) = start(path, token, env)
    try:
        metrics = urllib.request.urlopen(
            urllib.request.Request(
                f"{addresses['http']}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
            ),
            timeout=30,
        ).read()
    finally:
        proc.send_signal(signal.SIGTERM)
    lines = metrics.decode().splitlines()
    assert "sampledrec_recordings_awaiting_upload 0" in lines
    assert "sampledrec_upload_failures 0" in lines
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    events += [json.loads(line) for line in err.splitlines()]
    (recovered,) = [e for e in events if e["event"] == "recovered"]
    assert recovered["outcomes"] == ["truncated"] * CALLS
    assert not [e for e in events if e["level"] in ("warning", "error")]
    assert list(on_disk(store.staging_path)) == []

    objects = seaweedfs.objects(prefix)
    assert len(objects) == CALLS
    store = Store.open(path)
    with store.open_log() as log, Vault(store, log) as vault:
        rows = sorted(vault.recordings(), key=lambda row: str(row.call_ref))
        assert [row.status for row in rows] == ["truncated"] * CALLS
        for i, row in enumerate(rows):
            assert row.call_ref == f"s3-call-{i}" and row.truncated
            assert row.file.endswith(f"{row.recording_id}.sdr")
            audio = vault.open(row.recording_id).audio
            assert len(audio) >= KEPT - 64 * 1024  # what was on disk, whole chunks of it
            assert audio_of(i).startswith(audio)
    out = io.StringIO()
    assert main(["log", "verify", "--store", str(path)], out=out) == 0, out.getvalue()
    later = datetime.now(UTC) + timedelta(days=2)
    revealed = tmp_path / "revealed.json"
    store.write_revealed(store.reveal_keys(now=later), revealed)
    out = io.StringIO()
    audit = ["audit", "verify", "--store", str(path), "--revealed-keys", str(revealed)]
    assert main([*audit, "--at", later.isoformat()], out=out) == 0, out.getvalue()
    assert "AUDIT PASSED" in out.getvalue()
