"""Benchmark the decision log: what logging costs a decision, and how fast a log verifies.

Run ``python benchmarks/bench_log.py [--quick]``. In one run it measures:

- ``decide_only_per_s``: ``Sampler.decide`` one call at a time, no log;
- ``append_single_per_s``: the same with every decision logged (group commit on, one thread),
  until the last entry is durable (fsynced);
- ``append_batch_per_s``: ``Sampler.decide_batch`` with logging, until durable;
- ``verify_bytes_per_s``: full verification (``sampledrec.log.verify.verify_log``: every hash,
  batch trailer, checkpoint signature, key commitment and policy) of a log of at least 1M
  entries, in log bytes per second;
- ``raw_sha256_bytes_per_s``: ``hashlib.sha256`` over 1 MiB buffers, the raw primitive;
- ``entry_bytes``: the mean size of an encoded decision entry.

Targets (DESIGN.md §11: ratios within one run, not absolute times):
``append_single_per_s >= 0.5 x decide_only_per_s`` (logging at most doubles a decision's cost)
and ``verify_bytes_per_s >= 0.25 x raw_sha256_bytes_per_s``.

This machine's speed drifts within a process, so the single-call figures are measured in
alternating rounds (decide only, then logged) and each keeps its best round. The last line of
output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _table import print_table

from sampledrec import FixedClock, Store, __version__
from sampledrec.log.hashing import ACCELERATED
from sampledrec.log.verify import verify_log
from sampledrec.log.writer import iter_entries

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


def call_refs(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    hosts = ["pbx1.example.com", "pbx2.example.net", "sbc.callcentre.example"]
    ids = rng.integers(0, 2**63, size=n)
    return [f"{int(v):016x}-{i}@{hosts[i % 3]}" for i, v in enumerate(ids)]


def attrs_for(i: int) -> dict[str, str]:
    queue = ("sales", "support", "billing")[i % 3]
    return {"queue": queue, "direction": "inbound", "agent": f"agent-{i % 150:03d}"}


def raw_sha256(seconds: float) -> float:
    buf = os.urandom(1 << 20)
    best = 0.0
    for _ in range(5):
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            hashlib.sha256(buf).digest()
            n += 1
        best = max(best, n * len(buf) / (time.perf_counter() - t0))
    return best


def single_rounds(store: Store, calls: int, rounds: int) -> tuple[float, float]:
    """Best-of-rounds calls/s for decide without and with the log, in alternating rounds."""
    clock = FixedClock("2026-11-23T10:00:00Z")
    refs = call_refs(calls * rounds * 2, seed=1)
    attrs = [attrs_for(i) for i in range(len(refs))]
    plain = store.sampler(clock=clock)
    best_plain = best_logged = 0.0
    pos = 0
    with store.open_log(clock=clock) as log:
        logged = store.sampler(clock=clock, log=log)
        plain.decide("warm-up")
        logged.decide("warm-up")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for i in range(pos, pos + calls):
                plain.decide(refs[i], attrs[i])
            best_plain = max(best_plain, calls / (time.perf_counter() - t0))
            pos += calls
            t0 = time.perf_counter()
            last = None
            for i in range(pos, pos + calls):
                last = logged.decide(refs[i], attrs[i])
            assert last is not None and last.log_ticket is not None
            log.wait_durable(last.log_ticket)
            best_logged = max(best_logged, calls / (time.perf_counter() - t0))
            pos += calls
    return best_plain, best_logged


def batch_append(store: Store, total: int, batch: int) -> float:
    clock = FixedClock("2026-11-23T11:00:00Z")
    refs = np.asarray(call_refs(total, seed=2), dtype="S")
    queues = np.asarray(["sales", "support", "billing"])[np.arange(total) % 3]
    agents = np.asarray([f"agent-{i % 150:03d}" for i in range(total)])
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        t0 = time.perf_counter()
        for s in range(0, total, batch):
            e = min(total, s + batch)
            sampler.decide_batch(
                refs[s:e],
                {"queue": queues[s:e], "direction": ["inbound"] * (e - s), "agent": agents[s:e]},
            )
        log.flush()
        return total / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (under a minute)")
    args = parser.parse_args()
    quick = args.quick
    calls, rounds = (20_000, 3) if quick else (50_000, 5)
    batch_total = 1_000_000 if quick else 2_000_000

    tmp = Path(tempfile.mkdtemp(prefix="sampledrec-bench-log-"))
    try:
        policy = tmp / "policy.toml"
        policy.write_text(POLICY, encoding="utf-8")
        store = Store.init(tmp / "store", policy=policy)
        decide_only, append_single = single_rounds(store, calls, rounds)
        append_batch = batch_append(store, batch_total, 20_000)
        log_bytes = store.log_storage.size()
        best_verify = 0.0
        report = None
        for _ in range(2 if quick else 3):
            t0 = time.perf_counter()
            report = verify_log(store.log_storage)
            best_verify = max(best_verify, report.bytes_verified / (time.perf_counter() - t0))
        assert report is not None and report.ok, report and report.findings
        raw = raw_sha256(1.0 if quick else 3.0)
        sizes = [
            len(e.raw)
            for i, e in zip(
                range(20_000), iter_entries(store.log_storage, since=1000), strict=False
            )
            if e.type_name == "decision" and i >= 0
        ]
        entry_bytes = float(np.mean(sizes))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    r_append = append_single / decide_only
    r_verify = best_verify / raw
    rows = [
        ("decide only (calls/s)", f"{decide_only:,.0f}", "reference", "", ""),
        (
            "decide + log, one at a time (calls/s)",
            f"{append_single:,.0f}",
            ">= 0.5 x decide only",
            f"{r_append:.3f}",
            "pass" if r_append >= 0.5 else "FAIL",
        ),
        ("decide_batch + log (calls/s)", f"{append_batch:,.0f}", "for scale", "", ""),
        (
            f"verify {report.size:,} entries (bytes/s)",
            f"{best_verify:,.0f}",
            ">= 0.25 x raw SHA-256",
            f"{r_verify:.3f}",
            "pass" if r_verify >= 0.25 else "FAIL",
        ),
        ("raw SHA-256, 1 MiB buffers (bytes/s)", f"{raw:,.0f}", "reference", "", ""),
        ("mean decision entry (bytes)", f"{entry_bytes:.1f}", "", "", ""),
    ]
    print(
        f"sampledrec {__version__} bench_log ({'quick' if quick else 'full'}); log of "
        f"{log_bytes / 1e6:.1f} MB; C hashing accelerator: {'yes' if ACCELERATED else 'no'}; "
        f"Python {platform.python_version()} on {platform.machine()}"
    )
    print_table(rows)
    print(
        json.dumps(
            {
                "decide_only_per_s": decide_only,
                "append_single_per_s": append_single,
                "append_batch_per_s": append_batch,
                "verify_bytes_per_s": best_verify,
                "raw_sha256_bytes_per_s": raw,
                "entry_bytes": entry_bytes,
                "verified_entries": report.size,
                "ratio_append_to_decide": r_append,
                "ratio_verify_to_sha256": r_verify,
                "targets_met": r_append >= 0.5 and r_verify >= 0.25,
                "accelerated": ACCELERATED,
                "quick": quick,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
