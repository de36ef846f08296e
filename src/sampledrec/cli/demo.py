"""``sampledrec demo``: simulate a call-centre day in a new simulated store."""

from __future__ import annotations

import argparse
from typing import TextIO

from ..errors import InvalidArgument
from ._common import EXIT_FAILED, EXIT_OK, Commands, add_command, emit, table
from ._progress import Progress


def register(commands: Commands) -> None:
    p = add_command(
        commands,
        "demo",
        cmd_demo,
        "simulate a call-centre day in a new simulated store",
        store=False,
    )
    p.add_argument("store", nargs="?", help="folder to create (default: a new temporary folder)")
    p.add_argument("--calls", type=int, default=2000, help="calls in the day (default 2000)")
    p.add_argument("--seed", type=int, help="random seed, for a repeatable demo")


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from ..demo import run_demo

    if args.calls < 1:
        raise InvalidArgument(f"--calls {args.calls} must be at least 1")
    with Progress(args.calls, "deciding") as bar:
        result = run_demo(args.store, calls=args.calls, seed=args.seed, progress=bar.advance)
    rows = [
        (
            r["rule"],
            r["purpose"],
            r["rate"],
            r["calls"],
            r["selected"],
            f"{r['expected']:.1f}",
            r["objections"],
            r["capped"],
        )
        for r in result.rules
    ]
    ok = (
        result.key_matches_commitment
        and result.mismatches == 0
        and result.log_ok
        and result.readable_after_a_year == 0
        and result.audit_ok
    )
    text = (
        f"sampledrec demo: a SIMULATED call-centre day ({result.day}) in {result.store}\n\n"
        + table(
            ["rule", "purpose", "rate", "calls", "selected", "expected", "objected", "capped"],
            rows,
        )
        + f"\n\n{result.selected} of {result.calls} calls selected for recording; "
        f"{result.objections} callers objected and were not recorded; "
        f"{result.capped} calls hit an agent's daily cap.\n"
        f"Auditor check: the day's key matches its commitment: "
        f"{'yes' if result.key_matches_commitment else 'NO'}; "
        f"{result.recomputed} decisions recomputed from the revealed key, "
        f"{result.mismatches} mismatches.\n"
        f"Decision log: {result.log_entries:,} entries, signed and verified: "
        f"{'PASS' if result.log_ok else 'FAIL ' + '; '.join(result.log_findings)}.\n"
        f"Recorded {len(result.recordings)} calls, encrypted in the vault"
        + (f"; one exported to {result.exported}" if result.exported else "")
        + ".\n"
        f"A year later: the sweep expired {result.swept} recordings and destroyed "
        f"{result.buckets_destroyed} expiry-bucket keys; recordings still readable: "
        f"{result.readable_after_a_year}.\n"
        f"Audit verify: {'PASS' if result.audit_ok else 'FAIL'} ("
        + ", ".join(f"{k} {v}" for k, v in result.audit_checks.items())
        + ")"
        + (f"; DPO report: {result.report}" if result.report else "")
        + ".\n"
        f"Revealed keys: {result.store / 'revealed-keys.json'}\n"
        f"Try: sampledrec decide --store {result.store} --call-ref my-call-1 --attr queue=sales"
    )
    emit(args, result.to_json(), text, out)
    return EXIT_OK if ok else EXIT_FAILED
