"""Benchmark witnessing: how fast one witness cosigns, and what witnessing costs a decision.

Run ``python benchmarks/bench_witness.py [--quick]``. In one run it measures:

- ``raw_ed25519_sign_per_s``: bare Ed25519 signatures of a checkpoint-sized message, the raw
  primitive;
- ``witness_core_per_s``: ``Witness.add_checkpoint`` on one log's consecutive checkpoints (the
  log's signature checked, the consistency proof verified, the state file replaced and fsynced,
  the cosignature made), one request at a time;
- ``witness_http_per_s``: the same over HTTP (``sampledrec witness serve``'s aiohttp shell on
  this process's loop), four logs sent at once from four kept-alive connections;
- ``decide_off_per_s`` / ``decide_on_per_s``: ``Sampler.decide`` with the log, one call at a
  time until durable, in a store without witnesses and in one whose log asks a local witness
  every second (``interval`` 1 s, far more often than the default 30 s), in alternating rounds,
  each keeping its best round.

Target (DESIGN.md §11, a ratio within one run): ``decide_on_per_s >= 0.95 x decide_off_per_s``
(a witness never slows decisions down). The witness's rates are reported against the raw
Ed25519 rate; each cosignature costs two fsyncs (the state file, then its folder), which bound
it on most disks. The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from _table import print_table
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sampledrec import FixedClock, Store, __version__
from sampledrec.log.checkpoint import LogSigner
from sampledrec.log.merkle import CompactRange, consistency_proof_from_edge, leaf_hash
from sampledrec.witness import (
    AddCheckpoint,
    Cosigner,
    VerifierKey,
    Witness,
    WitnessEndpoint,
    WitnessSettings,
    WitnessState,
)
from sampledrec.witness.http import run_witness

POLICY = """
[default]
rate = "0.05"
purpose = "quality"
retention = "6 months"
"""


def raw_sign(seconds: float) -> float:
    key = Ed25519PrivateKey.generate()
    message = b"cosignature/v1\ntime 1700000000\n" + b"x" * 120
    best = 0.0
    for _ in range(5):
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            key.sign(message)
            n += 1
        best = max(best, n / (time.perf_counter() - t0))
    return best


def requests(origin: str, count: int, step: int = 7) -> tuple[str, list[bytes]]:
    """A log's consecutive add-checkpoint bodies (each from the previous size), and its vkey."""
    signer = LogSigner(origin, Ed25519PrivateKey.generate().private_bytes_raw())
    cr = CompactRange()
    bodies = []
    old, edge = 0, CompactRange()
    for i in range(count):
        leaves = [leaf_hash(b"%s entry %d" % (origin.encode(), i * step + j)) for j in range(step)]
        proof = consistency_proof_from_edge(edge, leaves)
        cr.extend(leaves)
        note = signer.sign(cr.size, cr.root(), 1_700_000_000_000_000 + i).note
        bodies.append(AddCheckpoint(old, tuple(proof), note).body())
        old, edge = cr.size, cr.copy()
    return signer.vkey, bodies


def witness_core(tmp: Path, count: int) -> float:
    vk, bodies = requests("bench.example/core", count)
    cosigner, _ = Cosigner.generate("bench.example/witness")
    logs = {"bench.example/core": [VerifierKey.parse(vk)]}
    w = Witness(cosigner, WitnessState(tmp / "core"), logs)
    t0 = time.perf_counter()
    for body in bodies:
        assert w.add_checkpoint(body).status == 200
    return count / (time.perf_counter() - t0)


class LocalWitness:
    """A witness served on 127.0.0.1 by a thread of this process."""

    def __init__(self, w: Witness) -> None:
        self.w = w
        self.url = ""
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        ready = threading.Event()

        def serve() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()

                def listening(url: str) -> None:
                    self.url = url
                    ready.set()

                await run_witness(w, "127.0.0.1", 0, ready=listening, stop=self._stop)

            asyncio.run(main())

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def witness_http(tmp: Path, count: int, logs: int = 4) -> float:
    made = [requests(f"bench.example/http{i}", count) for i in range(logs)]
    cosigner, _ = Cosigner.generate("bench.example/witness")
    w = Witness(
        cosigner,
        WitnessState(tmp / "http"),
        {f"bench.example/http{i}": [VerifierKey.parse(vk)] for i, (vk, _) in enumerate(made)},
    )
    server = LocalWitness(w)
    port = int(server.url.rsplit(":", 1)[1])
    failures: list[int] = []

    def send(bodies: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for body in bodies:
            conn.request("POST", "/add-checkpoint", body=body)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failures.append(resp.status)
        conn.close()

    threads = [threading.Thread(target=send, args=(b,)) for _, b in made]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = logs * count / (time.perf_counter() - t0)
    server.close()
    assert not failures, failures
    return rate


def decide_rounds(tmp: Path, calls: int, rounds: int) -> tuple[float, float, int]:
    """Best-of-rounds decisions/s, without and with a witness, in alternating rounds; and the
    cosignatures the witnessed log received."""
    policy = tmp / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    off = Store.init(tmp / "off", policy=policy)
    on = Store.init(tmp / "on", policy=policy)
    cosigner, _ = Cosigner.generate("bench.example/witness")
    w = Witness(cosigner, WitnessState(tmp / "wstate"), {on.origin: [VerifierKey.parse(on.vkey)]})
    server = LocalWitness(w)
    on.configure_witnesses(
        WitnessSettings((WitnessEndpoint("local", server.url, cosigner.verifier),), interval=1.0)
    )
    clock = FixedClock("2026-11-23T10:00:00Z")
    best = {"off": 0.0, "on": 0.0}
    cosigned = 0
    try:
        with off.open_log(clock=clock) as log_off, on.open_log(clock=clock) as log_on:
            samplers = {
                "off": (off.sampler(clock=clock, log=log_off), log_off),
                "on": (on.sampler(clock=clock, log=log_on), log_on),
            }
            for name, (sampler, _) in samplers.items():
                sampler.decide(f"warm-up-{name}")
            pos = 0
            for _ in range(rounds):
                for name in ("off", "on"):
                    sampler, log = samplers[name]
                    t0 = time.perf_counter()
                    last = None
                    for i in range(pos, pos + calls):
                        last = sampler.decide(f"call-{i}@bench")
                    assert last is not None and last.log_ticket is not None
                    log.wait_durable(last.log_ticket)
                    best[name] = max(best[name], calls / (time.perf_counter() - t0))
                    pos += calls
        for path in (tmp / "on" / "cosigned").rglob("*.notes"):
            cosigned += path.read_bytes().count(b"\n\n") // 2
    finally:
        server.close()
    return best["off"], best["on"], cosigned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (under a minute)")
    args = parser.parse_args()
    quick = args.quick
    count = 300 if quick else 1500
    calls, rounds = (20_000, 3) if quick else (50_000, 5)
    tmp = Path(tempfile.mkdtemp(prefix="sampledrec-bench-witness-"))
    try:
        raw = raw_sign(1.0 if quick else 3.0)
        core = witness_core(tmp, count)
        over_http = witness_http(tmp, count // 2)
        off, on, cosigned = decide_rounds(tmp, calls, rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = on / off
    rows = [
        ("raw Ed25519 sign (signatures/s)", f"{raw:,.0f}", "reference", "", ""),
        (
            "witness, in process (cosignatures/s)",
            f"{core:,.0f}",
            "vs raw Ed25519",
            f"{core / raw:.4f}",
            "",
        ),
        (
            "witness over HTTP, 4 logs (cosignatures/s)",
            f"{over_http:,.0f}",
            "vs raw Ed25519",
            f"{over_http / raw:.4f}",
            "",
        ),
        ("decide + log, no witness (calls/s)", f"{off:,.0f}", "reference", "", ""),
        (
            "decide + log, witnessed every 1 s (calls/s)",
            f"{on:,.0f}",
            ">= 0.95 x no witness",
            f"{ratio:.3f}",
            "pass" if ratio >= 0.95 else "FAIL",
        ),
    ]
    print(
        f"sampledrec {__version__} bench_witness ({'quick' if quick else 'full'}); "
        f"{cosigned} checkpoints cosigned while deciding; "
        f"Python {platform.python_version()} on {platform.machine()}"
    )
    print_table(rows)
    print(
        json.dumps(
            {
                "raw_ed25519_sign_per_s": raw,
                "witness_core_per_s": core,
                "witness_http_per_s": over_http,
                "ratio_core_to_sign": core / raw,
                "ratio_http_to_sign": over_http / raw,
                "decide_off_per_s": off,
                "decide_on_per_s": on,
                "ratio_on_to_off": ratio,
                "cosigned_while_deciding": cosigned,
                "targets_met": ratio >= 0.95,
                "quick": quick,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
