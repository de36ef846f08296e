"""Benchmark playback through the web console: time to first audio byte, and concurrent players.

Run ``python benchmarks/bench_console.py [--quick]`` (quick: about a minute). It records one
call of ``--minutes`` of 8 kHz 16-bit mono speech-like audio (default 60: a one-hour recording;
quick 10) in a fresh store, makes a supervisor's account (password and TOTP set directly), and
measures, in this order:

``inproc_first_ms``
    In this process, ``Vault.read_wav(id, 0, 1 MiB)``: the first answer a player gets for
    ``Range: bytes=0-`` (the console answers at most 1 MiB per range), with the vault's checks
    and its logged ``listen`` entry. Median of ``--repeats``.
``console_first_byte_ms``
    ``sampledrec serve --web 127.0.0.1:0`` as its own process (uvicorn, no TLS, loopback),
    signed in over HTTP as the supervisor; from sending ``GET /recordings/ID/audio.wav`` with
    ``Range: bytes=0-`` on a kept-alive connection to the first byte of the body. Median of
    ``--repeats``. ``first_byte_ratio`` is the two medians' ratio (what the session check,
    HTTP and the event loop add to the vault's own read).
``players_N_*``
    ``N`` players at once, each on its own connection of the same session, asking one second
    of audio (16,000 bytes) per range, on schedule once a second for ``--seconds`` (starts
    spread over a second). A player *keeps up* if every range arrives before the one before it
    has finished playing (one second of buffer). ``kept_up`` counts them; ``late_p99_ms`` is
    the 99th percentile of the answers' lateness beyond that second (0 when on time);
    ``server_cpu_s`` is the server process's CPU time (user + system) during the run; and
    ``streams_per_core`` is the audio-seconds delivered per server CPU-second: how many
    real-time players one fully used core sustains at that load. At light loads the server's
    fixed costs (its event loop, the log's writer) weigh on the figure: the highest count whose
    players all kept up is the one to size with.

The last line printed is one JSON object with every figure. Absolute times depend on the
machine (and on what else runs on it): the ratio and the per-core figure are the ones to
compare. No target is enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from _table import print_table
from bench_ingest import cpu_seconds, serve

from sampledrec import Principal, Store, __version__
from sampledrec.accounts import Accounts, open_users
from sampledrec.accounts.totp import code_at
from sampledrec.errors import SampledrecWarning
from sampledrec.serve.console import MAX_RANGE_BYTES
from sampledrec.vault.audio import AudioFormat, frames, synthetic_speech
from sampledrec.vault.recorder import Vault

POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Benchmark: every sales call is recorded"
retention = "3 months"

[default]
rate = "0"
purpose = "quality"
retention = "6 months"
"""
PCM = AudioFormat("pcm16", 8000, 1)
BYTES_PER_SECOND = 16_000
NAME = "sam"
PASSWORD = "violet lantern across the quiet harbour"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def record(store: Store, minutes: float) -> str:
    """One recorded call of ``minutes`` of speech-like audio; its recording id."""
    one_minute = synthetic_speech(60.0, seed=1)
    with store.open_log() as log, Vault(store, log) as vault:
        sampler = store.sampler(log=log)
        try:
            decision = sampler.decide("bench-console-call", {"queue": "sales"})
            with vault.record(decision, audio_format=PCM, attrs={"queue": "sales"}) as rec:
                whole, part = divmod(minutes, 1.0)
                for i in range(int(whole) + (1 if part else 0)):
                    audio = one_minute if i < whole else one_minute[: int(part * 60) * 16000]
                    for frame in frames(audio, PCM, 20):
                        rec.write(frame)
            return rec.recording_id
        finally:
            sampler.close()


def account(store: Store) -> None:
    """A supervisor with its password set and TOTP enrolled (no first sign-in to do)."""
    users = open_users(store)
    try:
        with store.open_log() as log, Vault(store, log) as vault:
            Accounts(users, vault).add(Principal.owner(), NAME, ["supervisor"], PASSWORD)
        users.set_password(NAME, PASSWORD, now_us=int(time.time() * 1e6))
        users.enrol_totp(NAME, SECRET)
    finally:
        users.close()


def in_process(store: Store, rid: str, repeats: int) -> list[float]:
    who = Principal(NAME, ("supervisor",))
    out = []
    with store.open_log() as log, Vault(store, log) as vault:
        vault.read_wav(rid, 0, MAX_RANGE_BYTES, who)  # warm
        for _ in range(repeats):
            t0 = time.perf_counter()
            part = vault.read_wav(rid, 0, MAX_RANGE_BYTES, who)
            out.append((time.perf_counter() - t0) * 1e3)
            assert len(part.data) == MAX_RANGE_BYTES
    return out


# -- HTTP, by hand: one kept-alive connection, exact timings -------------------------------------


class Connection:
    """An HTTP/1.1 connection to the console (blocking), with the session's cookie."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.cookie = ""
        self.buffer = b""

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes, float]:
        """One request; its status, headers, body and the seconds to the body's first byte."""
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
        if self.cookie:
            lines.append(f"Cookie: {self.cookie}")
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        if body:
            lines.append("Content-Type: application/x-www-form-urlencoded")
            lines.append(f"Content-Length: {len(body)}")
        t0 = time.perf_counter()
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        found: dict[str, str] = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            if key.lower() == "set-cookie" and value.strip().startswith("sdr_session="):
                self.cookie = value.strip().split(";")[0]
            found[key.lower()] = value.strip()
        length = int(found.get("content-length", "0"))
        while length and not self.buffer:
            self.buffer += self._recv()
        first = time.perf_counter() - t0
        while len(self.buffer) < length:
            self.buffer += self._recv()
        data, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), found, data, first

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the console closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def form(**fields: str) -> bytes:
    from urllib.parse import urlencode

    return urlencode(fields).encode()


def sign_in(host: str, port: int) -> str:
    """Sign the supervisor in; the session cookie."""
    c = Connection(host, port)
    try:
        _, _, page, _ = c.request("GET", "/sign-in")
        token = re.search(rb'name="csrf" value="([^"]+)"', page)
        assert token
        status, headers, _, _ = c.request(
            "POST", "/sign-in", form(csrf=token.group(1).decode(), name=NAME, password=PASSWORD)
        )
        assert status == 303, status
        _, _, page, _ = c.request("GET", headers["location"])
        token = re.search(rb'name="csrf" value="([^"]+)"', page)
        assert token
        code = code_at(SECRET, datetime.now(UTC))
        status, _, body, _ = c.request(
            "POST", "/sign-in/code", form(csrf=token.group(1).decode(), code=code)
        )
        assert status == 303, (status, body[:300])
        return c.cookie
    finally:
        c.close()


def first_bytes(
    host: str, port: int, cookie: str, rid: str, repeats: int
) -> tuple[list[float], int]:
    """Times to the first body byte (ms), and the WAV file's whole size."""
    c = Connection(host, port)
    c.cookie = cookie
    out = []
    try:
        path = f"/recordings/{rid}/audio.wav"
        _, headers, _, _ = c.request("GET", path, headers={"Range": "bytes=0-"})  # warm
        total = int(headers["content-range"].rsplit("/", 1)[1])
        for _ in range(repeats):
            status, _, data, first = c.request("GET", path, headers={"Range": "bytes=0-"})
            assert status == 206 and len(data) == MAX_RANGE_BYTES, status
            out.append(first * 1e3)
    finally:
        c.close()
    return out, total


# -- concurrent players --------------------------------------------------------------------------


async def player(
    host: str, port: int, cookie: str, rid: str, seconds: int, offset: float, start: float
) -> list[float]:
    """Ask one second of audio per range, on schedule; each answer's lateness (s) beyond the
    second it had."""
    reader, writer = await asyncio.open_connection(host, port)
    late = []
    try:
        for k in range(seconds):
            due = start + offset + k
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            lo = (k * BYTES_PER_SECOND) % (50 * BYTES_PER_SECOND) + 44
            hi = lo + BYTES_PER_SECOND - 1
            writer.write(
                (
                    f"GET /recordings/{rid}/audio.wav HTTP/1.1\r\nHost: localhost\r\n"
                    f"Cookie: {cookie}\r\nRange: bytes={lo}-{hi}\r\n\r\n"
                ).encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 206"), head[:100]
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            late.append(max(0.0, time.perf_counter() - (due + 1.0)))
    finally:
        writer.close()
    return late


async def players(
    host: str, port: int, cookie: str, rid: str, n: int, seconds: int
) -> list[list[float]]:
    start = time.perf_counter() + 0.2
    return list(
        await asyncio.gather(
            *(player(host, port, cookie, rid, seconds, i / n, start) for i in range(n))
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (about a minute)")
    parser.add_argument("--minutes", type=float, help="the recording's length (default 60)")
    parser.add_argument("--repeats", type=int, help="first-byte measurements (default 30)")
    parser.add_argument("--seconds", type=int, help="each player's run (default 20, quick 8)")
    parser.add_argument("--players", help="player counts, comma-separated (default 16,64,128)")
    args = parser.parse_args()
    quick = args.quick
    minutes = args.minutes or (10.0 if quick else 60.0)
    repeats = args.repeats or (10 if quick else 30)
    seconds = args.seconds or (8 if quick else 20)
    counts = [int(x) for x in (args.players or ("8,32" if quick else "16,64,128")).split(",")]
    warnings.simplefilter("ignore", SampledrecWarning)

    figures: dict[str, Any] = {"recording_minutes": minutes}
    tmp = Path(tempfile.mkdtemp(prefix="sampledrec-bench-console-"))
    try:
        (tmp / "p.toml").write_text(POLICY)
        store = Store.init(tmp / "store", policy=tmp / "p.toml")
        t0 = time.perf_counter()
        rid = record(store, minutes)
        figures["record_s"] = time.perf_counter() - t0
        account(store)
        inproc = in_process(store, rid, repeats)
        figures["inproc_first_ms"] = statistics.median(inproc)
        with serve("--store", str(store.path), "--web", "127.0.0.1:0") as served:
            url = served.addresses["web"]
            host, port = url.split("://")[1].rsplit(":", 1)
            cookie = sign_in(host, int(port))
            console, figures["wav_bytes"] = first_bytes(host, int(port), cookie, rid, repeats)
            assert figures["wav_bytes"] == 44 + int(minutes * 60) * BYTES_PER_SECOND
            figures["console_first_byte_ms"] = statistics.median(console)
            figures["console_first_byte_p90_ms"] = float(np.percentile(console, 90))
            for n in counts:
                cpu0 = cpu_seconds(served.proc.pid)
                wall0 = time.perf_counter()
                lates = asyncio.run(players(host, int(port), cookie, rid, n, seconds))
                wall = time.perf_counter() - wall0
                cpu = cpu_seconds(served.proc.pid) - cpu0
                every = [x for one in lates for x in one]
                figures[f"players_{n}_kept_up"] = sum(1 for one in lates if max(one) == 0.0)
                figures[f"players_{n}_late_p99_ms"] = float(np.percentile(every, 99)) * 1e3
                figures[f"players_{n}_server_cpu_s"] = cpu
                figures[f"players_{n}_server_cpu_share"] = cpu / wall
                figures[f"players_{n}_streams_per_core"] = (n * seconds) / cpu if cpu else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["first_byte_ratio"] = figures["console_first_byte_ms"] / figures["inproc_first_ms"]

    print(
        f"sampledrec {__version__} bench_console ({'quick' if quick else 'full'}); Python "
        f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"
    )
    rows: list[tuple[str, str, str, str, str]] = [
        (f"a {minutes:g}-minute recording written", f"{figures['record_s']:.1f} s", "",
         f"{figures['wav_bytes']:,} bytes as WAV", ""),
        ("first 1 MiB, Vault.read_wav in process", f"{figures['inproc_first_ms']:.2f} ms",
         "", f"median of {repeats}", ""),
        ("first audio byte through the console", f"{figures['console_first_byte_ms']:.2f} ms",
         "", f"p90 {figures['console_first_byte_p90_ms']:.2f} ms", ""),
        ("console / in process", f"{figures['first_byte_ratio']:.2f}", "for scale", "", ""),
    ]  # fmt: skip
    for n in counts:
        per_core = figures[f"players_{n}_streams_per_core"]
        rows += [
            (f"{n} players, {seconds} s each: kept up", f"{figures[f'players_{n}_kept_up']}/{n}",
             "all", f"late p99 {figures[f'players_{n}_late_p99_ms']:.0f} ms",
             f"server CPU {figures[f'players_{n}_server_cpu_share']:.0%}"),
            (f"{n} players: real-time streams per core",
             f"{per_core:,.0f}" if per_core else "n/a", "for scale", "", ""),
        ]  # fmt: skip
    print_table(rows)
    print(json.dumps({**figures, "quick": quick}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
