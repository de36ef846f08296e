"""Benchmark the vault: streaming encryption speed, memory, and live recording throughput.

Run ``python benchmarks/bench_vault.py [--quick]``. In one run it measures:

- ``raw_gcm_bytes_per_s``: pyca ``AESGCM.encrypt`` on 64 KiB chunks, the raw primitive;
- ``seal_bytes_per_s``: the recording container sealing a 256 MiB stream (64 MiB with
  ``--quick``) from an in-memory chunk generator to a sink that discards it (the container's
  work includes the SHA-256 of the ciphertext that the log records);
- ``open_bytes_per_s``: reading it back from memory, chunk by chunk, every tag verified;
- ``peak_extra_rss_mib``: peak resident memory above the process's baseline while sealing the
  stream to a file (measured in a fresh process, from /proc);
- ``raw_append_frames_per_s``: ``bytearray += 160 bytes``, round robin over 10,000 buffers;
- ``live_frames_per_s``: ``Recorder.write`` with 160-byte frames (20 ms of G.711) over 10,000
  concurrent recorders writing to files.

Targets (ratios in one run, DESIGN.md §11): seal and open >= 0.5 x raw GCM;
``peak_extra_rss_mib <= 64``; ``live_frames_per_s >= 0.2 x raw_append_frames_per_s``.
The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from _table import print_table
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sampledrec import FixedClock, Store, __version__
from sampledrec.vault.audio import AudioFormat
from sampledrec.vault.container import ContainerReader, ContainerWriter
from sampledrec.vault.recorder import Vault

CHUNK = 64 * 1024
FRAME = 160
RECORDERS = 10_000
POLICY = """
[default]
rate = "1"
purpose = "legal_obligation"
legal_basis = "Benchmark store: every call is recorded"
retention = "3 months"
"""


class Discard:
    def write(self, data: bytes | memoryview) -> int:
        return len(data)


class Collect:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> int:
        self.parts.append(bytes(data))
        return len(data)


def chunks(total: int) -> Iterator[bytes]:
    block = os.urandom(CHUNK)
    for _ in range(total // CHUNK):
        yield block


def writer(sink: object) -> ContainerWriter:
    return ContainerWriter(
        sink,  # type: ignore[arg-type]
        os.urandom(32),
        recording_id="bench",
        policy_version="00" * 32,
        expires_at_us=2_000_000_000_000_000,
        audio_format=b"pcm16/8000/1",
    )


def raw_gcm(total: int) -> float:
    gcm = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    t0 = time.perf_counter()
    for block in chunks(total):
        gcm.encrypt(nonce, block, b"aad")
    return total / (time.perf_counter() - t0)


def seal(total: int) -> float:
    w = writer(Discard())
    t0 = time.perf_counter()
    for block in chunks(total):
        w.write(block)
    w.close()
    return total / (time.perf_counter() - t0)


class _NoHash:
    def update(self, data: object) -> None:
        pass

    def digest(self) -> bytes:
        return bytes(32)


def seal_without_hash(total: int) -> float:
    """For the record only: sealing without the ciphertext's SHA-256 (which the log needs)."""
    w = writer(Discard())
    w._hash = _NoHash()  # type: ignore[assignment]
    t0 = time.perf_counter()
    for block in chunks(total):
        w.write(block)
    w.close()
    return total / (time.perf_counter() - t0)


def raw_sha256(total: int) -> float:
    import hashlib

    h = hashlib.sha256()
    t0 = time.perf_counter()
    for block in chunks(total):
        h.update(block)
    return total / (time.perf_counter() - t0)


def open_speed(total: int) -> float:
    key = os.urandom(32)
    sink = Collect()
    w = ContainerWriter(
        sink,  # type: ignore[arg-type]
        key,
        recording_id="bench",
        policy_version="00" * 32,
        expires_at_us=2_000_000_000_000_000,
        audio_format=b"pcm16/8000/1",
    )
    for block in chunks(total):
        w.write(block)
    w.close()
    blob = b"".join(sink.parts)
    sink.parts.clear()
    t0 = time.perf_counter()
    n = 0
    for part in ContainerReader(blob, key).iter_chunks():
        n += len(part)
    assert n == total
    return total / (time.perf_counter() - t0)


PEAK = textwrap.dedent(
    """
    import os, sys, time
    from sampledrec.vault.container import ContainerWriter
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])  # kB
    total = int(sys.argv[2])
    block = os.urandom(64 * 1024)
    with open(sys.argv[1], "wb") as fh:
        w = ContainerWriter(fh, os.urandom(32), recording_id="peak", policy_version="00" * 32,
                            expires_at_us=2_000_000_000_000_000, audio_format=b"pcm16/8000/1")
        w.write(block)  # warm up every code path before taking the baseline
        base = status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak (VmHWM) to the current RSS
        for _ in range(total // len(block) - 1):
            w.write(block)
        w.close()
    print((status("VmHWM:") - base) / 1024)
    """
)


def peak_extra_rss(total: int, folder: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(folder / "peak.sdr"), str(total)],
        capture_output=True,
        text=True,
        check=True,
    )
    (folder / "peak.sdr").unlink()
    return float(out.stdout.strip())


def raw_append(frames: int) -> float:
    bufs = [bytearray() for _ in range(RECORDERS)]
    frame = os.urandom(FRAME)
    t0 = time.perf_counter()
    for i in range(frames):
        bufs[i % RECORDERS] += frame
    return frames / (time.perf_counter() - t0)


def live(folder: Path, frames: int) -> float:
    (folder / "policy.toml").write_text(POLICY, encoding="utf-8")
    store = Store.init(folder / "store", policy=folder / "policy.toml")
    clock = FixedClock("2030-01-01T10:00:00Z")
    fmt = AudioFormat("mulaw", 8000, 1)
    frame = os.urandom(FRAME)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        recorders = []
        for i in range(RECORDERS):
            decision = sampler.decide(f"bench-{i}@pbx")
            recorders.append(vault.record(decision, audio_format=fmt))
        log.flush()
        for rec in recorders:  # every decision is durable: the files open at the first frame
            rec.write(frame)
        t0 = time.perf_counter()
        for i in range(frames):
            recorders[i % RECORDERS].write(frame)
        rate = frames / (time.perf_counter() - t0)
        for rec in recorders:
            rec.abort("benchmark")
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (under a minute)")
    args = parser.parse_args()
    total = (64 if args.quick else 256) << 20
    frames = 2_000_000 if args.quick else 8_000_000
    tmp = Path(tempfile.mkdtemp(prefix="sampledrec-bench-vault-"))
    try:
        rounds = 2 if args.quick else 3
        gcm = max(raw_gcm(total) for _ in range(rounds))
        sealed = max(seal(total) for _ in range(rounds))
        opened = max(open_speed(total) for _ in range(rounds))
        unhashed = max(seal_without_hash(total) for _ in range(rounds))
        sha = max(raw_sha256(total) for _ in range(rounds))
        peak = peak_extra_rss(256 << 20, tmp)
        appends = max(raw_append(frames) for _ in range(rounds))
        live_rate = live(tmp, frames)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r_seal, r_open, r_live = sealed / gcm, opened / gcm, live_rate / appends
    rows = [
        ("raw AES-256-GCM, 64 KiB chunks (bytes/s)", f"{gcm:,.0f}", "reference", "", ""),
        (
            "container seal (bytes/s)",
            f"{sealed:,.0f}",
            ">= 0.5 x raw GCM",
            f"{r_seal:.3f}",
            "pass" if r_seal >= 0.5 else "FAIL",
        ),
        (
            "  seal without the ciphertext SHA-256",
            f"{unhashed:,.0f}",
            "for scale",
            f"{unhashed / gcm:.3f}",
            "",
        ),
        ("  raw SHA-256 (the log records it)", f"{sha:,.0f}", "for scale", f"{sha / gcm:.3f}", ""),
        (
            "container open (bytes/s)",
            f"{opened:,.0f}",
            ">= 0.5 x raw GCM",
            f"{r_open:.3f}",
            "pass" if r_open >= 0.5 else "FAIL",
        ),
        (
            "peak extra RSS sealing 256 MiB (MiB)",
            f"{peak:.1f}",
            "<= 64",
            "",
            "pass" if peak <= 64 else "FAIL",
        ),
        ("raw bytearray appends (frames/s)", f"{appends:,.0f}", "reference", "", ""),
        (
            f"Recorder.write, {RECORDERS:,} recorders (frames/s)",
            f"{live_rate:,.0f}",
            ">= 0.2 x raw appends",
            f"{r_live:.3f}",
            "pass" if r_live >= 0.2 else "FAIL",
        ),
    ]
    print(
        f"sampledrec {__version__} bench_vault ({'quick' if args.quick else 'full'}): "
        f"{total >> 20} MiB stream, {frames:,} frames; Python {platform.python_version()} on "
        f"{platform.machine()}"
    )
    print_table(rows)
    print(
        json.dumps(
            {
                "raw_gcm_bytes_per_s": gcm,
                "seal_bytes_per_s": sealed,
                "open_bytes_per_s": opened,
                "seal_without_hash_bytes_per_s": unhashed,
                "raw_sha256_bytes_per_s": sha,
                "peak_extra_rss_mib": peak,
                "raw_append_frames_per_s": appends,
                "live_frames_per_s": live_rate,
                "ratio_seal": r_seal,
                "ratio_open": r_open,
                "ratio_live": r_live,
                "targets_met": r_seal >= 0.5 and r_open >= 0.5 and peak <= 64 and r_live >= 0.2,
                "quick": args.quick,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
