"""Benchmark the audit: ``audit verify`` end to end against the bare draws it must recompute.

Run ``python benchmarks/bench_audit.py [--quick]``. It builds a simulated store with 10 million
decisions (1 million with ``--quick``) on a past day, reveals that day's key, writes the
auditor's kit, then in one run times, in three alternating rounds each keeping its best:

- ``verify_s``: ``audit_verify`` of the store end to end (log verification, key commitments,
  every decision recomputed, recordings, statistics);
- ``kit_verify_s``: ``audit_kit``, the same audit from the auditor's kit;
- ``draws_only_s``: ``draw_many`` alone over the same references;
- ``log_sha256_s``: reading the log's files and SHA-256 of every byte of them once, which any
  verification of the Merkle tree must do at least (it hashes the interior nodes too).

Target (issue audit-evidence): ``verify_s <= 2 x log_sha256_s + draws_only_s``, for the store
and for the kit. ``kit_write_s`` (writing the kit) is reported for scale. The last line of
output is one JSON object with those figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from _auditlog import decided_store
from _table import print_table

from sampledrec import __version__, draw_many
from sampledrec.audit.kit import audit_kit, write_kit
from sampledrec.audit.verify import audit_verify

ROUNDS = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 million decisions instead of 10")
    args = parser.parse_args()
    n = 1_000_000 if args.quick else 10_000_000
    tmp = Path(tempfile.mkdtemp(prefix="sampledrec-bench-audit-"))
    try:
        t0 = time.perf_counter()
        built_store = decided_store(tmp, n)
        built = time.perf_counter() - t0
        store, day, real_now, refs = (
            built_store.store,
            built_store.day,
            built_store.real_now,
            built_store.refs,
        )
        keys = store.reveal_keys(now=day + timedelta(days=1), real_now=real_now)
        revealed = tmp / "revealed.json"
        store.write_revealed(keys, revealed)
        key = next(k for k in keys if k.epoch_id == day.date().isoformat())

        t0 = time.perf_counter()
        write_kit(store, tmp / "kit", now=day + timedelta(days=1))
        kit_write_s = time.perf_counter() - t0

        # Alternating rounds, each measurement keeping its best (as the other benchmarks do):
        # this machine's speed drifts from one second to the next.
        verify_s = kit_s = draws_s = sha_s = float("inf")
        rounds = []
        storage = store.log_storage
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            report = audit_verify(store.path, revealed)
            rounds.append(time.perf_counter() - t0)
            verify_s = min(verify_s, rounds[-1])
            t0 = time.perf_counter()
            kit_report = audit_kit(tmp / "kit")
            kit_s = min(kit_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            draw_many(key.key, refs)
            draws_s = min(draws_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for seg in storage.segments():
                hashlib.sha256(storage.read_segment(seg)).digest()
            sha_s = min(sha_s, time.perf_counter() - t0)
        log_bytes = storage.size()
        ok = report.ok and kit_report.ok
        for rep in (report, kit_report):
            doc = rep.to_json()
            if not doc.get("ok"):
                print("audit checks:", doc.get("checks"), file=sys.stderr)
                for finding in list(doc.get("findings", []))[:5]:
                    print("  ", finding, file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    floor = 2 * sha_s + draws_s
    ratio, kit_ratio = verify_s / floor, kit_s / floor
    met = ratio <= 1 and kit_ratio <= 1
    print(
        f"sampledrec {__version__} bench_audit ({'quick' if args.quick else 'full'}): "
        f"{n:,} decisions (store built in {built:.1f} s), audit {'PASS' if ok else 'FAIL'}; "
        f"Python {platform.python_version()} on {platform.machine()}"
    )
    rows = [
        ("draw_many alone (s)", f"{draws_s:.3f}", "reference", "", ""),
        (
            f"read + SHA-256 of the log's {log_bytes / 2**20:,.0f} MiB (s)",
            f"{sha_s:.3f}",
            "reference",
            "",
            "",
        ),
        ("2 x SHA-256 + draws (s)", f"{floor:.3f}", "the target", "1.0", ""),
        (
            "audit verify --store end to end (s)",
            f"{verify_s:.3f}",
            "<= 2 x SHA-256 + draws",
            f"{ratio:.2f}",
            "pass" if ratio <= 1 else "FAIL",
        ),
        (
            "audit verify --kit end to end (s)",
            f"{kit_s:.3f}",
            "<= 2 x SHA-256 + draws",
            f"{kit_ratio:.2f}",
            "pass" if kit_ratio <= 1 else "FAIL",
        ),
        ("audit kit (writing it) (s)", f"{kit_write_s:.3f}", "for scale", "", ""),
        (
            "audit verify --store, each round (s)",
            " ".join(f"{r:.2f}" for r in rounds),
            "for scale",
            "",
            "",
        ),
    ]
    print_table(rows)
    print(
        json.dumps(
            {
                "decisions": n,
                "verify_s": verify_s,
                "kit_verify_s": kit_s,
                "kit_write_s": kit_write_s,
                "draws_only_s": draws_s,
                "verify_rounds_s": rounds,
                "log_sha256_s": sha_s,
                "ratio": ratio,
                "kit_ratio": kit_ratio,
                "audit_ok": ok,
                "targets_met": met,
                "quick": args.quick,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
