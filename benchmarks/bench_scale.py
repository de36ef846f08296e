"""Benchmark scale-out: several nodes, and the audit of a large log on Dask.

Run ``python benchmarks/bench_scale.py [--quick]`` (the audit part needs ``sampledrec[dask]``).

(1) Three recording nodes of one deployment on PostgreSQL and SeaweedFS against one embedded
    store, in the same run: decisions/s and recordings/s through ``sampledrec serve`` (the HTTP
    and media-stream doors); ``benchmarks/_scale_nodes.py`` (:func:`~_scale_nodes.part_nodes`)
    says how it is measured.

(2) The audit of a deployment kit of three nodes whose logs hold 1, 3 and 10 million
    decisions in all (``--quick``: 1 million), in one run, on a local Dask cluster of one
    worker process and of two (one thread each), each keeping the best of its rounds (the
    cluster started beforehand), with the primitives measured in the same run. The kit is made
    once (with a PostgreSQL and a SeaweedFS started for it; ``--kits`` keeps it for the next
    run): each node decides a third of the calls on one past day.

    - ``log_sha256_s``: reading the nodes' log files and SHA-256 of every byte once, the least
      any verification of the Merkle trees does;
    - ``draws_s``: ``draw_many`` alone over the same call references;
    - ``join_s``: the part of a two-worker audit after the workers are done (the join and every
      check that spans the log), which more workers do not shorten.

    Targets: two workers at least 1.6 x faster than one (``speedup``), and one worker within
    2 x (``log_sha256_s`` + ``draws_s``) (``one_worker_ratio`` <= 1), at the largest size.
    Each audit on Dask is also measured in CPU seconds (the joining process's, with
    ``time.process_time``, and the workers', asked of them before and after): on a shared
    machine they vary less than the wall clock. Every round's wall clock is printed too (the
    spread). From the largest size it estimates what a month of 1e9 decisions needs: CPU
    seconds per decision (one worker, worker and joining process together) x 1e9, the cores
    that would audit it in an hour, and the serial join's share.

    ``--sizes 1,3,10`` (millions) and ``--rounds N`` change what is measured; ``--audit-only``
    leaves part (1) out.

The last line of output is one JSON object with those figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from _auditlog import call_refs, decided_deployment
from _scale_nodes import node_rows, part_nodes, servers
from _table import print_table

from sampledrec import __version__, draw_many
from sampledrec.audit.nodes import audit_deployment_kit, write_deployment_kit

ROUNDS = 2
NODES = 3  # the audited deployment's nodes


class _Timed:
    """A runner that notes when the partitions' work returns (the rest is the join)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.done_at = 0.0
        self.done: _Timed | None = None

    def for_kit(self, folder: Path) -> _Timed:
        """This timer over the runner of a node's kit (the last partitions to return end
        the workers' part: the rest, the joins, is the join)."""
        timed = _Timed(self.runner.for_kit(folder))
        timed.done = self
        return timed

    def run(
        self,
        parts: Sequence[Any],
        wanted: frozenset[int],
        sealing: Any,
        keys: Mapping[str, Sequence[bytes]],
        progress: Callable[[int], None] | None,
    ) -> Any:
        return self.submit(parts, wanted, sealing, keys, progress)()

    def submit(
        self,
        parts: Sequence[Any],
        wanted: frozenset[int],
        sealing: Any,
        keys: Mapping[str, Sequence[bytes]],
        progress: Callable[[int], None] | None,
    ) -> Callable[[], Any]:
        pending = self.runner.submit(parts, wanted, sealing, keys, progress)

        def wait() -> Any:
            got = pending()
            (self.done or self).done_at = time.perf_counter()
            return got

        return wait


def _kit(folder: Path, n: int) -> tuple[Path, str, float]:
    """The deployment kit of ``NODES`` nodes whose logs hold ``n`` decisions in all, in
    ``folder/kit`` (made unless there already, with a PostgreSQL and a SeaweedFS started for
    it), the day of its decisions, and how long making it took (0: it was there)."""
    kit, made = folder / "kit", folder / "made.json"
    if made.is_file() and kit.is_dir() and json.loads(made.read_text()).get("nodes") == NODES:
        return kit, json.loads(made.read_text())["day"], 0.0
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="sampledrec-bench-servers-"))
    try:
        for pg, weed in servers(scratch):
            built = decided_deployment(folder / "deployment", n, pg, weed, NODES)
            write_deployment_kit(built.nodes, kit, now=built.day + timedelta(days=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(folder / "deployment")  # the kit holds everything the audit reads
    day = built.day.date().isoformat()
    made.write_text(json.dumps({"day": day, "decisions": n, "nodes": NODES}))
    return kit, day, time.perf_counter() - t0


def part_audit(
    sizes: list[int], tmp: Path, rounds: int = ROUNDS, kits: Path | None = None
) -> list[dict[str, Any]]:
    from sampledrec.audit.distributed import dask_runner

    out = []
    for n in sizes:
        folder = (kits or tmp) / f"n{n}"
        kit, day, build_s = _kit(folder, n)
        refs = call_refs(n)
        key = next(
            bytes.fromhex(e["key"])
            for e in json.loads((kit / "nodes" / "node-0" / "revealed-keys.json").read_bytes())[
                "epochs"
            ]
            if e["epoch_id"] == day
        )
        segments = sorted((kit / "nodes").glob("*/log/seg-*"))
        log_bytes = sum(p.stat().st_size for p in segments)
        best: dict[str, float] = {}
        walls: dict[str, list[float]] = {"audit_1_workers_s": [], "audit_2_workers_s": []}
        ok = True

        def keep(name: str, seconds: float, best: dict[str, float] = best) -> None:
            best[name] = min(best.get(name, math.inf), seconds)

        for workers in (1, 2):
            t0 = time.perf_counter()
            with dask_runner(kit, workers=workers) as runner:
                keep(f"cluster_start_{workers}_s", time.perf_counter() - t0)
                timed = _Timed(runner)
                for _ in range(rounds):
                    before = runner.client.run(time.process_time)
                    c0, t0 = time.process_time(), time.perf_counter()
                    rep = audit_deployment_kit(kit, runner_for=timed.for_kit)
                    end, c1 = time.perf_counter(), time.process_time()
                    after = runner.client.run(time.process_time)
                    keep(f"audit_{workers}_workers_s", end - t0)
                    walls[f"audit_{workers}_workers_s"].append(end - t0)
                    # CPU seconds: this process (the join) and the workers' (the partitions)
                    keep(f"cpu_{workers}_workers_client_s", c1 - c0)
                    keep(
                        f"cpu_{workers}_workers_workers_s",
                        sum(after[w] - before[w] for w in after if w in before),
                    )
                    keep(f"join_{workers}_s", end - timed.done_at)
                    ok = ok and rep.ok
        for _ in range(rounds):
            c0, t0 = time.process_time(), time.perf_counter()
            rep = audit_deployment_kit(kit)
            keep("audit_in_process_s", time.perf_counter() - t0)
            keep("cpu_in_process_s", time.process_time() - c0)
            ok = ok and rep.ok
            t0 = time.perf_counter()
            draw_many(key, refs)
            keep("draws_s", time.perf_counter() - t0)
            t0 = time.perf_counter()
            for p in segments:
                hashlib.sha256(p.read_bytes()).digest()
            keep("log_sha256_s", time.perf_counter() - t0)
        if not ok:
            print(f"audit of {n:,} decisions did not PASS:", rep.to_text(), file=sys.stderr)
        one, two = best["audit_1_workers_s"], best["audit_2_workers_s"]
        floor = best["log_sha256_s"] + best["draws_s"]
        out.append(
            {
                "decisions": n,
                "log_bytes": log_bytes,
                "segments": len(segments),
                "build_s": build_s,
                **best,
                "join_s": best["join_2_s"],
                "rounds_s": walls,  # every round's wall clock, for the spread
                "cpu_1_worker_s": best["cpu_1_workers_client_s"] + best["cpu_1_workers_workers_s"],
                "speedup": one / two,
                "one_worker_ratio": one / (2 * floor),
                "us_per_decision_1_worker": one / n * 1e6,
                "us_per_decision_2_workers": two / n * 1e6,
                "audit_ok": ok,
            }
        )
        if kits is None:
            shutil.rmtree(folder)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 million decisions only")
    parser.add_argument(
        "--sizes",
        help="the audit part's log sizes, in millions of decisions, comma-separated "
        "(default 1,3,10; --quick: 1)",
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"audits per size and setup (default {ROUNDS})"
    )
    parser.add_argument(
        "--audit-only", action="store_true", help="part (2) only, without the nodes"
    )
    parser.add_argument(
        "--kits",
        type=Path,
        help="keep the audit part's kits in this folder, and use those already there "
        "(making a kit of 10M decisions takes minutes)",
    )
    args = parser.parse_args()
    sizes = [1_000_000] if args.quick else [1_000_000, 3_000_000, 10_000_000]
    if args.sizes:
        sizes = [round(float(x) * 1_000_000) for x in args.sizes.split(",")]
    nodes = {} if args.audit_only else part_nodes(args.quick)
    tmp = Path(tempfile.mkdtemp(prefix="sampledrec-bench-scale-"))
    try:
        audits = part_audit(sizes, tmp, max(1, args.rounds), args.kits)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    last = audits[-1]
    # From the largest size: CPU seconds per decision (the workers' and the joining
    # process's, one worker: what a month costs in cores whatever the machine's load), and
    # the serial join, which more workers do not shorten.
    core_s = last["cpu_1_worker_s"] / last["decisions"] * 1e9
    join_share = last["join_s"] / last["audit_2_workers_s"]
    month = {
        "decisions": 1e9,
        "core_hours": core_s / 3600,
        "cores_for_one_hour": math.ceil(core_s / 3600),
        "join_hours_serial": last["join_s"] / last["decisions"] * 1e9 / 3600,
        "wall_hours_1_worker": last["audit_1_workers_s"] / last["decisions"] * 1e9 / 3600,
    }
    print(
        f"sampledrec {__version__} bench_scale ({'quick' if args.quick else 'full'}); "
        f"Python {platform.python_version()} on {platform.machine()}"
    )
    if nodes:
        print("(1) three nodes on PostgreSQL and SeaweedFS against one embedded store")
        print_table(node_rows(nodes))
    print(f"(2) audit of a deployment kit of {NODES} nodes on Dask (best of rounds, seconds)")
    rows = []
    for a in audits:
        rows += [
            (
                f"{a['decisions']:,} decisions: log {a['log_bytes'] / 2**20:,.0f} MiB",
                "",
                "",
                "",
                "",
            ),
            ("  read + SHA-256 of the log (s)", f"{a['log_sha256_s']:.3f}", "reference", "", ""),
            ("  draw_many alone (s)", f"{a['draws_s']:.3f}", "reference", "", ""),
            ("  audit in one process (s)", f"{a['audit_in_process_s']:.3f}", "for scale", "", ""),
            (
                "  audit on 1 Dask worker (s)",
                f"{a['audit_1_workers_s']:.3f}",
                "<= 2 x (SHA-256 + draws)",
                f"{a['one_worker_ratio']:.2f}",
                "pass" if a["one_worker_ratio"] <= 1 else "FAIL",
            ),
            (
                "  audit on 2 Dask workers (s)",
                f"{a['audit_2_workers_s']:.3f}",
                ">= 1.6 x faster than 1",
                f"{a['speedup']:.2f}",
                "pass" if a["speedup"] >= 1.6 else "FAIL",
            ),
            ("  of which the join (s)", f"{a['join_s']:.3f}", "serial", "", ""),
            (
                "  every round, 1 / 2 workers (s)",
                " / ".join(
                    ", ".join(f"{x:.2f}" for x in a["rounds_s"][f"audit_{w}_workers_s"])
                    for w in (1, 2)
                ),
                "spread",
                "",
                "",
            ),
            (
                "  CPU s, 1 worker: joining process + worker",
                f"{a['cpu_1_workers_client_s']:.2f} + {a['cpu_1_workers_workers_s']:.2f}",
                "for scale",
                "",
                "",
            ),
            (
                "  us per decision, 1 / 2 workers / CPU",
                f"{a['us_per_decision_1_worker']:.2f} / {a['us_per_decision_2_workers']:.2f}"
                f" / {a['cpu_1_worker_s'] / a['decisions'] * 1e6:.2f}",
                "growth",
                "",
                "",
            ),
        ]
    rows.append(
        (
            "1e9 decisions: core-hours (CPU, 1 worker)",
            f"{month['core_hours']:.1f}",
            f"{month['cores_for_one_hour']} cores for 1 h",
            f"join {join_share:.0%}",
            "",
        )
    )
    print_table(rows)
    met = last["speedup"] >= 1.6 and last["one_worker_ratio"] <= 1
    print(
        json.dumps(
            {
                "quick": args.quick,
                "nodes": nodes,
                "audit": audits,
                "month_1e9": month,
                "targets_met": met,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
