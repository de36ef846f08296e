"""Benchmark the front doors of ``sampledrec serve``: HTTP decisions, SIPREC, media streams.

Run ``python benchmarks/bench_ingest.py [--quick]`` (quick: well under a minute). One run starts
``sampledrec serve`` as its own process (the HTTP door on loopback, a bearer token, the log level
at warning) on a fresh store, and measures from this process, the client:

``http_p50_ms``, ``http_p99_ms``, ``http_rate_per_s``
    ``POST /v1/decisions`` sent open-loop at ``--rate`` requests per second (default 1,000: one
    every millisecond, on schedule whatever the answers do) over 32 keep-alive connections, each
    for a new call: the latency from sending to the answer, which comes once the decision's log
    entry is durable; and the rate actually achieved. ``client_late_p99_ms`` says how late the
    client itself sent its requests (if it is large, the client, not the server, was the limit).
    The client shares the machine's two cores with the server, so it does as little as it can
    while it measures: requests are built before the run, each connection only writes, stamps
    and frames its answer, and every answer is checked after the run (status 200, the call its
    request asked about; an answer missing 30 s after the end, an unasked one or a lost
    connection is an error). A request's latency counts from when the client took it up,
    waiting for a free connection included. An aiohttp client added about a millisecond at p99
    (docs/decisions/0041-uvloop.md). A run whose client was more than 5 ms late at p99 does not
    meet the target: it did not send the rate asked for.
``http_max_per_s``
    The same requests closed-loop from 64 connections as fast as they are answered.
``server_cpu_us_per_request``
    The server process's CPU time (user + system) during the open-loop run, per request.

and, in this process, on a store of its own, the in-process figures the service is compared
with (DESIGN.md section 11: ratios within one run):

``decide_p50_ms``, ``decide_p99_ms``
    ``Sampler.decide`` alone (it returns once the entry is queued), one call at a time.
``durable_p50_ms``, ``durable_p99_ms``
    ``Sampler.decide`` then ``DecisionLog.wait_durable``: what the service waits for before it
    answers, without HTTP.
``decide_per_s``
    ``Sampler.decide`` calls per second, one thread, logged (the durable wait once at the end).
``fsync_p50_ms``, ``fsync_p99_ms``
    The disk's floor under every durable answer: a 400-byte append and its fsync, as the log
    writes them, one every millisecond, on the store's file system.

and, with sipp (Debian ``sip-tester``) when it is installed, the SIPREC door: ``sampledrec
serve --siprec`` on loopback takes ``--sip-calls`` calls from sipp at ``--sip-rate`` calls/s, each
carrying ``--sip-seconds`` of G.711 audio on one of its two streams (sipp plays one pcap per
call; the other leg is recorded as silence), every call selected and recorded:

``call_seconds``
    The audio recorded, from the catalog (the calls' durations added up).
``server_cpu_s``, ``calls_per_core``
    The server's CPU time (user + system) over the run, and recorded call-seconds per server
    CPU-second: how many such calls one fully used core keeps recording at once.
``rtp_loss``
    The packets the server counted lost (``sampledrec_packets_lost_total`` of ``/metrics``).

and the media-stream doors (issue 14), each in turn on one ``sampledrec serve --audiosocket
--streams`` process: ``--media-streams`` calls at once (default 300, quick 100) of
``--media-seconds`` each (default 30, quick 10), sent from this process at real-time pace (20 ms
of audio per message, starts spread over a second), each decided first over HTTP as a dialplan
does (that request is not counted); the server's CPU time is read around the streaming:

``audiosocket_*``, ``twilio_*``, ``fork_*``
    ``calls_per_core`` (recorded call-seconds, from the catalog, per server CPU-second),
    ``call_seconds``, ``server_cpu_s``, ``recordings``, ``truncated`` (should be 0) and
    ``client_late_p99_ms`` (how late the client sent its frames: if large, the client, not
    the server, was the limit: above 50 ms the run does not count as meeting the target,
    since late frames arrive in bursts that the server reads more cheaply). AudioSocket: 8 kHz
    16-bit frames of 320 bytes; Twilio: both tracks, one JSON message of base64 μ-law per
    track and 20 ms; fork: 8 kHz mono L16.

Targets: ``calls_per_core >= 500`` and ``rtp_loss == 0`` (issue 13; one stream of audio
here, two in the issue's wording), ``http_p99_ms <= 5`` (issue 13: decision p99 at 1,000
requests/s), reported with the ratios ``http_p99_ms / durable_p99_ms`` (what HTTP, JSON and
the event loop add to the log's own durability wait), ``http_p99_ms / fsync_p99_ms`` (the
service's tail against the disk's own) and ``http_max_per_s / decide_per_s``.
``calls_per_core >= 500`` for each media door (issue 14).
The table shows each figure; the last line printed is one JSON object with all of them.
Targets are reported, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from _table import print_table

import sampledrec
from sampledrec import Store, __version__
from sampledrec.errors import SampledrecWarning

TARGET_P99_MS = 5.0
TARGET_CALLS_PER_CORE = 500
#: A media run whose client sent its frames later than this (p99) was not at real-time pace.
MAX_CLIENT_LATE_MS = 50.0
#: An HTTP run whose requests went out later than this (p99) was not at the rate asked for.
MAX_HTTP_LATE_MS = TARGET_P99_MS
TOKEN = "bench-ingest-token-0123456789abcdef"
POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales", direction = ["inbound", "outbound"] }
rate = "0.05"
purpose = "quality"
retention = "6 months"

[[rules]]
name = "support"
match = { queue = "support" }
rate = "0.02"
purpose = "training"
retention = "3 months"

[default]
rate = "0.01"
purpose = "quality"
retention = "6 months"
"""
QUEUES = ("sales", "support", "billing")


def attrs_for(i: int) -> dict[str, str]:
    return {"queue": QUEUES[i % 3], "direction": "inbound", "agent": f"agent-{i % 150:03d}"}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- in process --------------------------------------------------------------------------------


def in_process(store: Store, calls: int) -> dict[str, float]:
    """Latencies of decide (queued) and decide + wait_durable, one call at a time, and the
    rate of decide calls in a row."""
    decide_ms: list[float] = []
    durable_ms: list[float] = []
    with store.open_log() as log, store.sampler(log=log) as sampler:
        sampler.decide("warm-up", attrs_for(0))
        for i in range(calls):
            t0 = time.perf_counter()
            d = sampler.decide(f"inproc-q-{i}", attrs_for(i))
            decide_ms.append((time.perf_counter() - t0) * 1e3)
            log.wait_durable(d.log_ticket or 0)
        for i in range(calls):
            t0 = time.perf_counter()
            d = sampler.decide(f"inproc-d-{i}", attrs_for(i))
            log.wait_durable(d.log_ticket or 0)
            durable_ms.append((time.perf_counter() - t0) * 1e3)
        n = calls * 4
        t0 = time.perf_counter()
        last = None
        for i in range(n):
            last = sampler.decide(f"inproc-r-{i}", attrs_for(i))
        assert last is not None
        log.wait_durable(last.log_ticket or 0)
        rate = n / (time.perf_counter() - t0)
    return {
        "decide_p50_ms": pct(decide_ms, 50),
        "decide_p99_ms": pct(decide_ms, 99),
        "durable_p50_ms": pct(durable_ms, 50),
        "durable_p99_ms": pct(durable_ms, 99),
        "decide_per_s": rate,
    }


def fsync_floor(folder: Path, n: int) -> dict[str, float]:
    """The disk's own latency for what every durable answer waits for: a log-sized append
    (400 bytes) then fsync, written as the log's local storage writes (open, pwrite at the
    end, fsync, close), one every millisecond, on the store's file system."""
    path = folder / "fsync-floor.bin"
    path.touch()
    latencies: list[float] = []
    data = os.urandom(400)
    at = 0
    for _ in range(n):
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, data, at)
            os.fsync(fd)
        finally:
            os.close(fd)
        latencies.append((time.perf_counter() - t0) * 1e3)
        at += len(data)
        time.sleep(0.001)
    path.unlink()
    return {"fsync_p50_ms": pct(latencies, 50), "fsync_p99_ms": pct(latencies, 99)}


# -- the server --------------------------------------------------------------------------------


@dataclass
class Served:
    """A ``sampledrec serve`` process started by :func:`serve`: its front doors' addresses
    (by door, from the JSON log's ``listening`` events) and its log lines so far."""

    proc: subprocess.Popen[str]
    addresses: dict[str, str]
    lines: list[str]


@contextlib.contextmanager
def serve(*args: str) -> Iterator[Served]:
    """Run ``sampledrec serve ARGS`` until the block ends (then SIGTERM, and a clean exit is
    required). Its log is read all along: a pipe nobody reads would block the server."""
    src = str(Path(sampledrec.__file__).parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sampledrec.cli.app import entry_point; entry_point()",
         "serve", *args, "--log-level", "info"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip
    assert proc.stderr is not None
    served = Served(proc, {}, [])
    try:
        for line in proc.stderr:
            doc = json.loads(line)
            if doc["event"] == "listening":
                served.addresses[doc["door"]] = doc["address"]
            if doc["event"] == "ready":
                break
        else:
            raise SystemExit(f"the server exited ({proc.wait(10)}) before it was ready")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    reader = threading.Thread(target=served.lines.extend, args=(proc.stderr,), daemon=True)
    reader.start()
    try:
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"the server failed: {''.join(served.lines)[-2000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Keepalive(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the open-loop client, one request at a time.

    Requests are bytes built before the run and answers are kept as they came, each with the
    call its request asked about, and read after it: during the run the client only writes,
    stamps and frames (by ``Content-Length``), so that its own CPU, on the same two cores as
    the server, takes as little from the measurement as it can (an aiohttp client costs about
    a third of a core at 1,000 requests/s). An answer that comes when none was asked for is
    counted (``unasked``): it would otherwise stand in for one that never came."""

    def __init__(self, done: list[tuple[float, bytes, str]], free: list[_Keepalive]) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._started = 0.0
        self._ref: str | None = None  # the call of the request in flight, if any
        self._done = done
        self._free = free
        self.unasked = 0
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes, ref: str, started: float) -> None:
        """Send ``request`` (for the call ``ref``); its latency counts from ``started``."""
        assert self.transport is not None and self._ref is None
        self._started, self._ref = started, ref
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        while buffer:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            match = _CONTENT_LENGTH.search(buffer, 0, head_end + 2)
            if match is None:
                raise SystemExit(f"an answer without Content-Length: {buffer[:head_end]!r}")
            end = head_end + 4 + int(match[1])
            if len(buffer) < end:
                break
            answer, buffer = buffer[:end], buffer[end:]
            if self._ref is None:
                self.unasked += 1
                continue
            self._done.append(((time.perf_counter() - self._started) * 1e3, answer, self._ref))
            self._ref = None
            self._free.append(self)
        self._buffer = buffer

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionError("the server closed a keep-alive connection")


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *([0-9]+)\r\n", re.IGNORECASE)
#: Seconds the open-loop client waits for answers past the run's end before it counts the
#: missing ones as errors (a server that stops answering must not hang the benchmark).
ANSWER_TIMEOUT = 30.0


def _request_bytes(address: str, body: bytes) -> bytes:
    return (
        f"POST /v1/decisions HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def open_loop(url: str, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """Send ``rate`` requests/s on schedule for ``seconds`` over 32 keep-alive connections;
    latencies and lateness (ms).

    A request's latency counts from the moment the client took it up, on schedule or late
    (waiting for a free connection included), to its whole answer. Every answer is checked
    after the run: status 200 and the decision of the very call its request asked about; a
    missing answer (none within :data:`ANSWER_TIMEOUT` s of the end), an unasked one and a lost
    connection are errors."""
    address = url.removeprefix("http://")
    host, port = address.rsplit(":", 1)
    n = int(rate * seconds)
    refs = [f"{tag}-{i}" for i in range(32 + n)]
    requests = [
        _request_bytes(address, json.dumps({"call_ref": r, "attributes": attrs_for(i)}).encode())
        for i, r in enumerate(refs)
    ]
    loop = asyncio.get_running_loop()
    done: list[tuple[float, bytes, str]] = []
    free: list[_Keepalive] = []
    connections = []
    for _ in range(32):
        _, conn = await loop.create_connection(lambda: _Keepalive(done, free), host, int(port))
        connections.append(conn)

    async def answered(count: int, until: float) -> None:
        while len(done) < count and time.perf_counter() < until:
            if any(conn.lost for conn in connections):
                return
            await asyncio.sleep(0.001)

    # One request on each connection first, so that none pays for a first use.
    for conn, request, ref in zip(connections, requests, refs, strict=False):
        conn.send(request, ref, time.perf_counter())
    await answered(32, time.perf_counter() + ANSWER_TIMEOUT)
    if len(done) < 32:  # a late one would stand in for an answer of the run
        raise SystemExit(f"the server answered {len(done)} of the first 32 requests")
    warm, done[:] = list(done), []
    late: list[float] = []
    start = time.perf_counter()
    give_up = start + seconds + ANSWER_TIMEOUT
    sent = 0
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        taken = time.perf_counter()
        while not free and time.perf_counter() < give_up:  # every connection busy: it waits
            await asyncio.sleep(0.0002)
        if not free:
            break  # the server stopped answering: the rest count as errors
        late.append((time.perf_counter() - due) * 1e3)
        free.pop().send(requests[32 + i], refs[32 + i], taken)
        sent += 1
    await answered(sent, give_up)
    elapsed = time.perf_counter() - start
    for conn in connections:
        assert conn.transport is not None
        conn.transport.close()
    errors = n - len(done) + sum(conn.unasked for conn in connections)
    for _, answer, ref in warm + done:
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 ") or json.loads(body).get("call_ref") != ref:
            errors += 1
    return {
        "latencies": [ms for ms, _, _ in done],
        "late": late,
        "rate": n / elapsed,
        "errors": errors,
    }


async def closed_loop(url: str, seconds: float, connections: int, tag: str) -> float:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    done = 0
    stop_at = time.perf_counter() + seconds
    counter = iter(range(10**9))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                i = next(counter)
                body = json.dumps({"call_ref": f"{tag}-{i}", "attributes": attrs_for(i)})
                async with session.post(f"{url}/v1/decisions", data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, await r.text()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return done / (time.perf_counter() - start)


SIPREC_POLICY = """
[[rules]]
name = "all"
match = { queue = "regulated" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Benchmark: every call of this queue is recorded"
retention = "3 months"

[default]
rate = "0"
purpose = "quality"
retention = "6 months"
"""
SCENARIO = Path(__file__).resolve().parents[1] / "tests" / "sipp" / "siprec_uac.xml"


def write_pcap(path: Path, seconds: float) -> None:
    """A libpcap file of Ethernet/IPv4/UDP/RTP G.711 packets, 20 ms apart, on two streams:
    to ports 6000 and 6002, which sipp's ``play_pcap_audio`` sends to the answer's first media
    port and that port + 2 (the SIPREC door gives a call's two streams consecutive even
    ports), so that both legs of every call carry audio."""
    rng = np.random.default_rng(5)
    legs = [
        rng.integers(0x10, 0xD0, size=int(seconds * 8000), dtype=np.uint8).tobytes()
        for _ in range(2)
    ]
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for n, offset in enumerate(range(0, len(legs[0]), 160)):
        for leg, payload in enumerate(legs):
            rtp = struct.pack("!BBHII", 0x80, 0, n, offset, 0x5EED + leg)
            rtp += payload[offset : offset + 160]
            udp = struct.pack("!HHHH", 6000 + 2 * leg, 6000 + 2 * leg, 8 + len(rtp), 0) + rtp
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n, 0, 64, 17, 0,
                bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
            ) + udp  # fmt: skip
            frame = b"\x00" * 12 + b"\x08\x00" + ip
            sec, micros = divmod(n * 20_000 + leg * 100, 1_000_000)
            out.append(struct.pack("<IIII", sec, micros, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def siprec_run(tmp: Path, calls: int, rate: float, seconds: float) -> dict[str, float] | None:
    """The SIPREC door under sipp (module docstring); None without sipp."""
    sipp = shutil.which("sipp")
    if sipp is None:
        return None
    folder = tmp / "siprec"
    folder.mkdir()
    (folder / "policy.toml").write_text(SIPREC_POLICY, encoding="utf-8")
    Store.init(folder / "store", policy=folder / "policy.toml")
    (folder / "serve.toml").write_text(
        '[siprec]\nlisten = "127.0.0.1:0"\ntransports = ["udp"]\nrtp_ports = "46000-47999"\n'
        'rtp_timeout = 30\ncaller = "participant:1"\nattributes = { queue = "header:X-Queue" }\n'
    )
    write_pcap(folder / "leg.pcap", seconds)
    with serve(
        "--store", str(folder / "store"), "--config", str(folder / "serve.toml"),
        "--http", "127.0.0.1:0", "--insecure-no-auth",
    ) as served:  # fmt: skip
        sip = int(served.addresses["siprec"].rsplit(":", 1)[1])
        url = served.addresses["http"]
        cpu0 = cpu_seconds(served.proc.pid)
        done = subprocess.run(
            [sipp, f"127.0.0.1:{sip}", "-sf", str(SCENARIO), "-m", str(calls),
             "-r", f"{rate:g}", "-i", "127.0.0.1", "-p", "0", "-mi", "127.0.0.1",
             "-mp", "36000", "-nostdin", "-timeout", str(int(calls / rate + seconds + 60)),
             "-timeout_error", "-aa", "-d", str(int(seconds * 1000 + 300))],
            cwd=folder, capture_output=True, text=True,
        )  # fmt: skip
        failed = re.search(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", done.stdout)
        cpu = cpu_seconds(served.proc.pid) - cpu0
        with urllib.request.urlopen(f"{url}/metrics") as answer:
            metrics = answer.read().decode()

    def total(name: str) -> float:
        pattern = rf"^sampledrec_{name}_total(?:\{{[^}}]*\}})? (\S+)$"
        return sum(float(m.group(1)) for m in re.finditer(pattern, metrics, re.M))

    lost = total("packets_lost")
    received = total("packets_received")
    store = Store.open(folder / "store")
    catalog = store.open_catalog()
    try:
        durations = [r.duration_ms or 0 for r in catalog.find()]
    finally:
        catalog.close()
    call_seconds = sum(durations) / 1000
    return {
        "sip_calls": calls,
        "sip_calls_failed": int(failed.group(1)) if failed else calls,
        "recordings": len(durations),
        "call_seconds": call_seconds,
        "server_cpu_s": cpu,
        "calls_per_core": call_seconds / cpu if cpu else 0.0,
        "rtp_loss": lost,
        "rtp_packets": received,
        "rtp_packets_sent": 2 * calls * len(range(0, int(seconds * 8000), 160)),
    }


# -- the media-stream doors (AudioSocket, Twilio-style, FreeSWITCH fork) -------------------------

MEDIA_DOORS = ("audiosocket", "twilio", "fork")
TICK = 0.02  # every stream sends 20 ms of audio per tick, as Asterisk, Twilio and FreeSWITCH do


def media_config(folder: Path) -> Path:
    """A store and a ``serve`` configuration with the HTTP, AudioSocket and streams doors on
    loopback; the configuration's path."""
    (folder / "policy.toml").write_text(SIPREC_POLICY, encoding="utf-8")
    Store.init(folder / "store", policy=folder / "policy.toml")
    (folder / "token").write_text(TOKEN, encoding="utf-8")
    (folder / "serve.toml").write_text(
        '[http]\nlisten = "127.0.0.1:0"\ninsecure_no_auth = true\n'
        '[audiosocket]\nlisten = "127.0.0.1:0"\nidle_timeout = 30\n'
        '[streams]\nlisten = "127.0.0.1:0"\ntoken_file = "token"\n',
        encoding="utf-8",
    )
    return folder / "serve.toml"


def _as_frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


class _AudioSocketStream:
    """One Asterisk AudioSocket connection, written from the protocol page."""

    def __init__(self, ref: str, audio: bytes) -> None:
        self.call = uuid.UUID(ref)
        self.frames = [_as_frame(0x10, audio[i : i + 320]) for i in range(0, len(audio), 320)]

    async def open(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.reader, self.writer = await asyncio.open_connection(host, int(port))
        self.writer.write(_as_frame(0x01, self.call.bytes))

    async def send(self, n: int) -> None:
        self.writer.write(self.frames[n % len(self.frames)])

    async def end(self) -> None:
        self.writer.write(_as_frame(0x00))
        await self.writer.drain()
        await self.reader.read()  # the server closes once the recording is sealed
        self.writer.close()


class _TwilioStream:
    """One Twilio-style media stream (both tracks), message for message from Twilio's page."""

    def __init__(self, ref: str, audio: bytes, session: aiohttp.ClientSession) -> None:
        self.ref = ref
        self.session = session
        self.payloads = [
            base64.b64encode(audio[i : i + 160]).decode() for i in range(0, len(audio), 160)
        ]
        self.sid = "MZ" + uuid.uuid4().hex
        self.seq = 1

    async def open(self, address: str) -> None:
        self.ws = await self.session.ws_connect(f"{address}/v1/streams/twilio")
        await self.ws.send_str(
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        )
        start = {
            "streamSid": self.sid, "callSid": "CA" + uuid.uuid4().hex,
            "tracks": ["inbound", "outbound"],
            "customParameters": {"call_ref": self.ref, "token": TOKEN},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }  # fmt: skip
        await self.ws.send_str(
            json.dumps({"event": "start", "sequenceNumber": "1", "start": start})
        )

    async def send(self, n: int) -> None:
        payload = self.payloads[n % len(self.payloads)]
        for track in ("inbound", "outbound"):
            self.seq += 1
            await self.ws.send_str(
                f'{{"event":"media","sequenceNumber":"{self.seq}","media":{{"track":"{track}",'
                f'"chunk":"{n + 1}","timestamp":"{n * 20}","payload":"{payload}"}},'
                f'"streamSid":"{self.sid}"}}'
            )

    async def end(self) -> None:
        self.seq += 1
        await self.ws.send_str(
            json.dumps({"event": "stop", "sequenceNumber": str(self.seq), "streamSid": self.sid})
        )
        await self.ws.receive()  # the server closes once the recording is sealed
        await self.ws.close()


class _ForkStream:
    """One FreeSWITCH mod_audio_fork stream: metadata text, then binary L16 mono 8 kHz."""

    def __init__(self, ref: str, audio: bytes, session: aiohttp.ClientSession) -> None:
        self.ref = ref
        self.session = session
        self.frames = [audio[i : i + 320] for i in range(0, len(audio), 320)]

    async def open(self, address: str) -> None:
        self.ws = await self.session.ws_connect(
            f"{address}/v1/streams/fork", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        await self.ws.send_str(json.dumps({"call_ref": self.ref}))

    async def send(self, n: int) -> None:
        await self.ws.send_bytes(self.frames[n % len(self.frames)])

    async def end(self) -> None:
        await self.ws.close()


async def _calls_open(http: str, session: aiohttp.ClientSession) -> float:
    async with session.get(f"{http}/metrics") as answer:
        text = await answer.text()
    found = re.search(r"^sampledrec_calls_open (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def media_door_run(
    door: str, addresses: dict[str, str], pid: int, streams: int, seconds: float
) -> dict[str, float]:
    """``streams`` calls of ``seconds`` each through ``door``, all open at once at real-time
    pace (starts spread over a second), each decided first over HTTP (not counted: the
    dialplan's request). The server's CPU time is read around the streaming alone."""
    http = addresses["http"]
    frames = int(seconds / TICK)
    rng = np.random.default_rng(14)
    audio = rng.integers(0, 256, size=16000, dtype=np.uint8).tobytes()  # 1 s of L16, 2 of μ-law
    refs = [str(uuid.uuid4()) for _ in range(streams)]
    late: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        limit = asyncio.Semaphore(32)

        async def decide(ref: str) -> None:
            async with (
                limit,
                session.post(
                    f"{http}/v1/decisions",
                    json={"call_ref": ref, "attributes": {"queue": "regulated"}},
                ) as answer,
            ):
                assert answer.status == 200, await answer.text()

        await asyncio.gather(*(decide(ref) for ref in refs))
        clients: list[Any]
        if door == "audiosocket":
            clients = [_AudioSocketStream(ref, audio) for ref in refs]
            address = addresses["audiosocket"]
        elif door == "twilio":
            clients = [_TwilioStream(ref, audio, session) for ref in refs]
            address = addresses["streams"].replace("ws://", "http://")
        else:
            clients = [_ForkStream(ref, audio, session) for ref in refs]
            address = addresses["streams"].replace("ws://", "http://")
        ticks_to_start = max(1, int(1.0 / TICK))
        starts = [i * ticks_to_start // streams for i in range(streams)]
        cpu0 = cpu_seconds(pid)
        begin = time.perf_counter()
        ending: list[asyncio.Task[None]] = []
        tick = 0
        while tick < ticks_to_start + frames:
            due = begin + tick * TICK
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            late.append((time.perf_counter() - due) * 1e3)
            for i, client in enumerate(clients):
                n = tick - starts[i]
                if n == 0:
                    await client.open(address)
                if 0 <= n < frames:
                    await client.send(n)
                elif n == frames:
                    ending.append(asyncio.ensure_future(client.end()))
            tick += 1
        for i, client in enumerate(clients):
            if tick - starts[i] == frames:
                ending.append(asyncio.ensure_future(client.end()))
        await asyncio.gather(*ending)
        while await _calls_open(http, session):
            await asyncio.sleep(0.05)
        wall = time.perf_counter() - begin
        cpu = cpu_seconds(pid) - cpu0
    return {
        "streams": streams,
        "server_cpu_s": cpu,
        "wall_s": wall,
        "client_late_p99_ms": pct(late, 99),
        "refs": refs,  # type: ignore[dict-item]
    }


def media_run(
    tmp: Path, streams: int, seconds: float, doors: tuple[str, ...] = MEDIA_DOORS
) -> dict[str, dict[str, float]]:
    """The media ``doors`` in turn on one server (module docstring); per door its figures."""
    folder = tmp / "media"
    folder.mkdir()
    config = media_config(folder)
    runs: dict[str, dict[str, Any]] = {}
    with serve("--store", str(folder / "store"), "--config", str(config)) as served:
        for door in doors:
            runs[door] = asyncio.run(
                media_door_run(door, served.addresses, served.proc.pid, streams, seconds)
            )
    store = Store.open(folder / "store")
    catalog = store.open_catalog()
    try:
        rows = {r.call_ref: r for r in catalog.find()}
    finally:
        catalog.close()
    out: dict[str, dict[str, float]] = {}
    for door, run in runs.items():
        found = [rows[ref] for ref in run.pop("refs") if ref in rows]
        call_seconds = sum(r.duration_ms or 0 for r in found) / 1000
        out[door] = {
            **run,
            "recordings": len(found),
            "truncated": sum(r.truncated for r in found),
            "call_seconds": call_seconds,
            "calls_per_core": call_seconds / run["server_cpu_s"] if run["server_cpu_s"] else 0.0,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (under a minute)")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests/s")
    parser.add_argument("--sip-calls", type=int, help="SIPREC calls (default 150, quick 60)")
    parser.add_argument("--sip-rate", type=float, default=20.0, help="SIPREC calls per second")
    parser.add_argument("--sip-seconds", type=float, default=10.0, help="audio per call (s)")
    parser.add_argument(
        "--media-streams", type=int, help="media streams at once per door (default 300, quick 100)"
    )
    parser.add_argument(
        "--media-seconds", type=float, help="audio per media stream (s; default 30, quick 10)"
    )
    parser.add_argument(
        "--media-doors",
        default=",".join(MEDIA_DOORS),
        help=f"media doors to run, comma-separated (default: {','.join(MEDIA_DOORS)})",
    )
    parser.add_argument(
        "--parts",
        default="http,siprec,media",
        help="what to run, comma-separated: http, siprec, media (default: all)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"http", "siprec", "media"}:
        parser.error(f"--parts {args.parts!r}: list some of http, siprec, media")
    doors = tuple(args.media_doors.split(","))
    if not doors or set(doors) - set(MEDIA_DOORS):
        parser.error(f"--media-doors {args.media_doors!r}: list some of {', '.join(MEDIA_DOORS)}")
    quick = args.quick
    seconds = 4.0 if quick else 15.0
    calls = 2000 if quick else 10_000
    warnings.simplefilter("ignore", SampledrecWarning)  # the agent attribute is not in rules

    figures: dict[str, Any] = {}
    rows: list[tuple[str, str, str, str, str]] = []
    met = True
    tmp = Path(tempfile.mkdtemp(prefix="sampledrec-bench-ingest-"))
    try:
        if "http" in parts:
            http, http_rows, met = http_part(tmp, args.rate, seconds, calls)
            figures.update(http)
            rows += http_rows
        if "siprec" in parts:
            sip_calls = args.sip_calls or (60 if quick else 150)
            siprec = siprec_run(tmp, sip_calls, args.sip_rate, args.sip_seconds)
            rows += siprec_rows(siprec, args.sip_rate, args.sip_seconds)
            if siprec is not None:
                figures.update(siprec)
                met = (
                    met
                    and siprec["calls_per_core"] >= TARGET_CALLS_PER_CORE
                    and siprec["rtp_loss"] == 0
                    and siprec["rtp_packets"] == siprec["rtp_packets_sent"]  # two-leg calls
                    and siprec["sip_calls_failed"] == 0
                )
        if "media" in parts:
            streams = args.media_streams or (100 if quick else 300)
            media_seconds = args.media_seconds or (10.0 if quick else 30.0)
            media = media_run(tmp, streams, media_seconds, doors)
            for door, doc in media.items():
                figures.update({f"{door}_{key}": value for key, value in doc.items()})
                # Frames sent late arrive in bursts, which the server reads more cheaply: a
                # figure measured off real-time pace is not one to size a deployment with.
                paced = doc["client_late_p99_ms"] <= MAX_CLIENT_LATE_MS
                doc["paced"] = paced
                ok = doc["calls_per_core"] >= TARGET_CALLS_PER_CORE and (
                    doc["recordings"] == streams and doc["truncated"] == 0 and paced
                )
                figures[f"{door}_paced"] = paced
                met = met and ok
                verdict = "pass" if ok else "FAIL" if paced else "FAIL (client late)"
                rows += [
                    (f"{door}: {streams} streams at once, {media_seconds:g} s each",
                     f"{doc['recordings']:.0f} recorded", "all",
                     f"{doc['truncated']:.0f} truncated",
                     f"client late p99 {doc['client_late_p99_ms']:.1f} ms"),
                    (f"{door}: call-seconds recorded / server CPU s",
                     f"{doc['call_seconds']:,.0f} / {doc['server_cpu_s']:.2f}", "for scale",
                     "", ""),
                    (f"{door}: calls per core", f"{doc['calls_per_core']:,.0f}",
                     f">= {TARGET_CALLS_PER_CORE}", "", verdict),
                ]  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"sampledrec {__version__} bench_ingest ({'quick' if quick else 'full'}; "
        f"{', '.join(sorted(parts))}); Python {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    print_table(rows)
    print(json.dumps({**figures, "targets_met": met, "quick": quick}))
    return 0


def http_part(
    tmp: Path, rate: float, seconds: float, calls: int
) -> tuple[dict[str, Any], list[tuple[str, str, str, str, str]], bool]:
    """The decision service (module docstring): its figures, its table rows, whether its
    target is met."""
    (tmp / "policy.toml").write_text(POLICY, encoding="utf-8")
    (tmp / "token").write_text(TOKEN, encoding="utf-8")
    local = in_process(Store.init(tmp / "local", policy=tmp / "policy.toml"), calls)
    local.update(fsync_floor(tmp, calls))
    Store.init(tmp / "served", policy=tmp / "policy.toml")
    with serve(
        "--store", str(tmp / "served"), "--http", "127.0.0.1:0",
        "--token-file", str(tmp / "token"),
    ) as served:  # fmt: skip
        url = served.addresses["http"]
        cpu0 = cpu_seconds(served.proc.pid)
        run = asyncio.run(open_loop(url, rate, seconds, "open"))
        cpu = cpu_seconds(served.proc.pid) - cpu0
        best = asyncio.run(closed_loop(url, seconds / 2, 64, "closed"))
    requests = len(run["latencies"])
    figures = {
        "http_p50_ms": pct(run["latencies"], 50),
        "http_p99_ms": pct(run["latencies"], 99),
        "http_max_ms": max(run["latencies"]),
        "http_rate_per_s": run["rate"],
        "http_errors": run["errors"],
        "http_requests": requests,
        "client_late_p99_ms": pct(run["late"], 99),
        "http_max_per_s": best,
        "server_cpu_us_per_request": cpu / requests * 1e6,
        **local,
    }
    r_p99 = figures["http_p99_ms"] / figures["durable_p99_ms"]
    r_fsync = figures["http_p99_ms"] / figures["fsync_p99_ms"]
    r_p50 = figures["http_p50_ms"] / figures["durable_p50_ms"]
    r_rate = best / figures["decide_per_s"]
    met = (
        figures["http_p99_ms"] <= TARGET_P99_MS
        and run["errors"] == 0
        and figures["client_late_p99_ms"] <= MAX_HTTP_LATE_MS  # else not the rate asked for
    )
    figures.update(
        {
            "ratio_http_p99_to_durable_p99": r_p99,
            "ratio_http_p99_to_fsync_p99": r_fsync,
            "ratio_http_p50_to_durable_p50": r_p50,
            "ratio_http_max_to_decide": r_rate,
            "target_rate_per_s": rate,
        }
    )
    ms = "{:.3f}".format
    rows = [
        (f"HTTP p50 at {rate:,.0f}/s (ms)", ms(figures["http_p50_ms"]), "for scale",
         f"{r_p50:.2f} x durable", ""),
        (f"HTTP p99 at {rate:,.0f}/s (ms)", ms(figures["http_p99_ms"]),
         f"<= {TARGET_P99_MS:g} ms", f"{r_p99:.2f} x durable", "pass" if met else "FAIL"),
        ("HTTP rate achieved (requests/s)", f"{run['rate']:,.0f}", f"{rate:,.0f}",
         f"{run['errors']} errors", ""),
        ("client late p99 (ms)", ms(figures["client_late_p99_ms"]), "small", "", ""),
        ("HTTP closed loop, 64 connections (requests/s)", f"{best:,.0f}", "for scale",
         f"{r_rate:.3f} x decide", ""),
        ("server CPU per request (us)", f"{figures['server_cpu_us_per_request']:,.0f}",
         "for sizing", "", ""),
        ("in-process decide p50 / p99 (ms)",
         f"{ms(local['decide_p50_ms'])} / {ms(local['decide_p99_ms'])}", "reference", "", ""),
        ("in-process decide + durable p50 / p99 (ms)",
         f"{ms(local['durable_p50_ms'])} / {ms(local['durable_p99_ms'])}", "reference", "", ""),
        ("in-process decide, logged (calls/s)", f"{local['decide_per_s']:,.0f}", "reference",
         "", ""),
        ("disk floor: 400-byte append + fsync p50 / p99 (ms)",
         f"{ms(local['fsync_p50_ms'])} / {ms(local['fsync_p99_ms'])}", "floor",
         f"HTTP p99 {r_fsync:.2f} x", ""),
    ]  # fmt: skip
    return figures, rows, met


def siprec_rows(
    siprec: dict[str, float] | None, rate: float, seconds: float
) -> list[tuple[str, str, str, str, str]]:
    if siprec is None:
        return [("SIPREC door", "skipped", "sipp not installed", "", "")]
    return [
        (f"SIPREC: sipp calls at {rate:g}/s, {seconds:g} s each",
         f"{siprec['sip_calls']}", "for scale", f"{siprec['sip_calls_failed']} failed",
         f"{siprec['recordings']} recorded"),
        ("SIPREC: call-seconds recorded / server CPU s",
         f"{siprec['call_seconds']:,.0f} / {siprec['server_cpu_s']:.2f}", "for scale", "", ""),
        ("SIPREC: calls per core", f"{siprec['calls_per_core']:,.0f}",
         f">= {TARGET_CALLS_PER_CORE}", "",
         "pass" if siprec["calls_per_core"] >= TARGET_CALLS_PER_CORE else "FAIL"),
        ("SIPREC: RTP packets lost in the server", f"{siprec['rtp_loss']:g}", "0", "",
         "pass" if siprec["rtp_loss"] == 0 else "FAIL"),
        ("SIPREC: RTP packets received (both legs)", f"{siprec['rtp_packets']:,.0f}",
         f"{siprec['rtp_packets_sent']:,.0f} sent", "",
         "pass" if siprec["rtp_packets"] == siprec["rtp_packets_sent"] else "FAIL"),
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
