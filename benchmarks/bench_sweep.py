"""Benchmark the expiry sweep against deleting the same files with ``find -delete``.

Run ``python benchmarks/bench_sweep.py [--quick]``. It makes 100,000 small expired recordings
(20,000 with ``--quick``) in a store — real encrypted containers with wrapped data keys, catalog
rows and expiry buckets, made in bulk for speed — copies their files to a second folder, then in
one run times ``find DIR -type f -delete`` on the copy and ``Retention.sweep`` on the store
(which deletes the files, strips the catalog rows, logs a tombstone per recording durably and
destroys the bucket keys).

Target (DESIGN.md §11): ``sweep_s <= 2 x find_delete_s``. The last line of output is one JSON
object: ``files``, ``find_delete_s``, ``sweep_s``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _table import print_table

from sampledrec import FixedClock, Store, __version__
from sampledrec.log.format import to_micros
from sampledrec.retention.sweep import Retention
from sampledrec.vault.catalog import _COLUMNS, RecordingRow, _to_sql
from sampledrec.vault.container import ContainerWriter
from sampledrec.vault.recorder import Vault, bucket_of, data_key_aad

POLICY = """
[default]
rate = "0.05"
purpose = "quality"
retention = "30 days"
"""
START = "2030-01-01T10:00:00Z"


def make_recordings(store: Store, n: int) -> None:
    """``n`` one-second μ-law recordings over 3 days, as the vault would make them."""
    clock = FixedClock(START)
    policy = store.policy()
    audio = secrets.token_bytes(8000)
    rows = []
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        for i in range(n):
            started = clock.now()
            expires_us = to_micros(policy.default.retention.expires_at(started))
            rid = str(uuid.uuid4())
            bucket = bucket_of(expires_us)
            key = secrets.token_bytes(32)
            if i % 5000 == 0 or not vault.keystore.has_bucket(bucket):
                vault.keystore.ensure_bucket(bucket)
            wrapped = vault.keystore.wrap(bucket, key, aad=data_key_aad(rid, expires_us))
            folder = store.path / "recordings" / bucket
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            sink = io.BytesIO()
            w = ContainerWriter(
                sink,
                key,
                recording_id=rid,
                policy_version=policy.version,
                expires_at_us=expires_us,
                audio_format=b"mulaw/8000/1",
                chunk_size=4096,
            )
            w.write(audio)
            info = w.close()
            fd = os.open(folder / f"{rid}.sdr", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, sink.getvalue())
            os.close(fd)
            rows.append(
                RecordingRow(
                    recording_id=rid,
                    call_ref=f"bench-{i}@pbx",
                    rule="default",
                    purpose="quality",
                    policy_version=policy.version,
                    epoch_id=started.date().isoformat(),
                    decision_index=-1,
                    started_at=to_micros(started),
                    expires_at_sealed=expires_us,
                    expires_at=expires_us,
                    bucket=bucket,
                    wrapped_key=wrapped,
                    audio_format="mulaw/8000/1",
                    file=f"recordings/{bucket}/{rid}.sdr",
                    status="sealed",
                    duration_ms=1000,
                    plaintext_bytes=info.plaintext_bytes,
                    ciphertext_bytes=info.ciphertext_bytes,
                    ciphertext_sha256=info.sha256.hex(),
                    agent=f"agent-{i % 50}",
                )
            )
            clock.advance(seconds=3 * 86400 / n)
    db = sqlite3.connect(store.path / "catalog.sqlite", isolation_level=None)
    db.execute("BEGIN")
    db.executemany(
        f"INSERT INTO recordings ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
        [[_to_sql(c, getattr(r, c)) for c in _COLUMNS] for r in rows],
    )
    db.execute("COMMIT")
    db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 recordings instead of 100,000")
    args = parser.parse_args()
    n = 20_000 if args.quick else 100_000
    tmp = Path(tempfile.mkdtemp(prefix="sampledrec-bench-sweep-"))
    try:
        (tmp / "policy.toml").write_text(POLICY, encoding="utf-8")
        store = Store.init(tmp / "store", policy=tmp / "policy.toml")
        t0 = time.perf_counter()
        make_recordings(store, n)
        made = time.perf_counter() - t0
        copy = tmp / "copy"
        shutil.copytree(store.path / "recordings", copy)
        files = sum(1 for _ in copy.rglob("*.sdr"))
        subprocess.run(["sync"], check=False)
        t0 = time.perf_counter()
        subprocess.run(["find", str(copy), "-type", "f", "-delete"], check=True)
        find_s = time.perf_counter() - t0
        later = FixedClock("2030-03-01T00:00:00Z")
        with store.open_log(clock=later) as log, Vault(store, log, clock=later) as vault:
            t0 = time.perf_counter()
            report = Retention(vault, clock=later).sweep()
            sweep_s = time.perf_counter() - t0
        assert len(report.expired) == n, (len(report.expired), n)
        assert not any((store.path / "recordings").rglob("*.sdr"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = sweep_s / find_s
    print(
        f"sampledrec {__version__} bench_sweep ({'quick' if args.quick else 'full'}): {files:,} "
        f"expired recordings (made in {made:.1f} s); Python {platform.python_version()} on "
        f"{platform.machine()}"
    )
    rows = [
        ("find DIR -type f -delete (s)", f"{find_s:.3f}", "reference", "", ""),
        (
            "sweep (s)",
            f"{sweep_s:.3f}",
            "<= 2 x find",
            f"{ratio:.2f}",
            "pass" if ratio <= 2 else "FAIL",
        ),
        ("buckets destroyed", str(len(report.buckets_destroyed)), "", "", ""),
    ]
    print_table(rows)
    print(
        json.dumps(
            {
                "files": files,
                "find_delete_s": find_s,
                "sweep_s": sweep_s,
                "ratio": ratio,
                "targets_met": ratio <= 2,
                "quick": args.quick,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
