"""``sampledrec audit verify|report``: independent verification for an auditor or DPO."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from ._common import (
    CHECKPOINT_HELP,
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    add_at,
    add_command,
    add_group,
    at_time,
    emit,
    open_store,
)
from ._progress import Progress


def register(commands: Commands) -> None:
    asub = add_group(commands, "audit", "independent verification for an auditor or DPO")
    p = add_command(
        asub,
        "verify",
        cmd_audit_verify,
        "verify the log, revealed keys, decisions, recordings, call records and rates",
    )
    p.add_argument("--revealed-keys", required=True, help="file written by 'keys reveal'")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--cdr", help="the carrier's call records (CSV, or Parquet with pyarrow)")
    add_at(p, "audit time for expiry checks (ISO 8601; forward only)")
    p = add_command(
        asub,
        "report",
        cmd_audit_report,
        "write a self-contained HTML report for the data-protection officer",
    )
    p.add_argument(
        "--revealed-keys", help="file written by 'keys reveal' (then the full audit is shown)"
    )
    p.add_argument("--out", required=True, help="the HTML file to write (0600)")
    add_at(p, "report as of this time (ISO 8601; forward only)")


def _audit(args: argparse.Namespace, store: Any, **kw: Any) -> Any:
    """``audit_verify`` with a progress bar: the log is gone through twice (verified, then read)."""
    from ..audit.verify import audit_verify

    with Progress(2 * store.log_storage.size(), "auditing") as bar:
        return audit_verify(
            store.path,
            Path(args.revealed_keys),
            progress=bar.advance,
            now=at_time(args, store),
            **kw,
        )


def cmd_audit_verify(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    report = _audit(
        args,
        store,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        cdr=Path(args.cdr) if args.cdr else None,
    )
    emit(args, report.to_json(), report.to_text(), out)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_audit_report(args: argparse.Namespace, out: TextIO) -> int:
    from ..audit.report import render, write_page

    store = open_store(args.store)
    audit = _audit(args, store) if args.revealed_keys else None
    text, ok = render(
        store.path, revealed_keys=args.revealed_keys, audit=audit, now=at_time(args, store)
    )
    target = Path(args.out)
    write_page(target, text)
    emit(
        args,
        {"out": str(target), "ok": ok, "simulated": store.simulated},
        f"Wrote {target} (verification {'PASS' if ok else 'FAIL'}"
        + (", SIMULATED store" if store.simulated else "")
        + ")",
        out,
    )
    return EXIT_OK if ok else EXIT_FAILED
