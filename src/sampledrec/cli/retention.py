"""``sampledrec sweep`` and ``sampledrec hold add|release|list``: expiry and legal holds.

``sweep --at`` a later time is a simulation: only a simulated store (``sampledrec demo``) sweeps
ahead of the real clock; a real store refuses (exit 2), except for a ``--dry-run``, which only
reports what would happen then. The library decides (``Retention.sweep``); the command passes
the real clock and the time asked for.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from ..clock import SYSTEM_CLOCK, FixedClock, parse_time
from ..errors import InvalidArgument
from ._common import (
    EXIT_OK,
    Commands,
    add_at,
    add_command,
    add_group,
    at_time,
    emit,
    iso_us,
    open_store,
    owner_principal,
    table,
)
from ._progress import Progress


def register(commands: Commands) -> None:
    p = add_command(
        commands, "sweep", cmd_sweep, "expire what is due: crypto-shred recordings and keys"
    )
    add_at(
        p,
        "sweep as of this time (ISO 8601; forward only, and ahead of the real clock only in a "
        "simulated store or with --dry-run)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="report what would expire, change nothing"
    )

    hsub = add_group(commands, "hold", "legal holds")
    p = add_command(hsub, "add", cmd_hold_add, "hold recordings (ids or a query) past their expiry")
    p.add_argument("ids", nargs="*", help="recording ids")
    p.add_argument("--reason", required=True, help="the case or request behind the hold")
    p.add_argument("--until", help="when the hold ends (default: until released)")
    p.add_argument("--rule", help="hold the recordings of this rule")
    p.add_argument("--agent", help="hold the recordings of this agent")
    p.add_argument("--since", help="recordings started at or after this time")
    p.add_argument("--before", help="recordings started before this time")
    p = add_command(hsub, "release", cmd_hold_release, "release a hold")
    p.add_argument("hold_id")
    add_command(hsub, "list", cmd_hold_list, "list the holds")


def cmd_sweep(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.sweep import Retention
    from ..vault.recorder import Vault

    store = open_store(args.store)
    at = at_time(args, store)
    # The vault and the retention keep the real clock, and the sweep is given the time asked
    # for: the library refuses to destroy ahead of the real clock (a simulated store's log
    # follows the simulated time, as the demo's does).
    log_clock = FixedClock(at) if store.simulated else SYSTEM_CLOCK
    with store.open_log(clock=log_clock) as log, Vault(store, log) as vault:
        retention = Retention(vault)
        total = len(vault.catalog.find(status=["sealed", "truncated", "expiring"]))
        with Progress(total, "sweeping") as bar:
            report = retention.sweep(at, dry_run=args.dry_run, progress=bar.advance)
    rows = [
        ("recordings expired", len(report.expired)),
        ("kept by legal holds", report.held),
        ("expiry buckets destroyed", len(report.buckets_destroyed)),
        ("holds ended", len(report.holds_released)),
        ("erasures completed (deferred by holds)", len(report.erasures_completed)),
        ("log detail keys destroyed", len(report.log_keys_destroyed)),
    ]
    text = (
        f"Sweep at {at.isoformat()}{' (dry run: nothing changed)' if args.dry_run else ''}\n"
        + table(["", "count"], rows)
    )
    emit(args, report.to_json(), text, out)
    return EXIT_OK


def _hold_doc(hold: Any) -> dict[str, Any]:
    return {
        "hold_id": hold.hold_id,
        "reason": hold.reason,
        "created_at": iso_us(hold.created_at),
        "until": None if hold.until is None else iso_us(hold.until),
        "released_at": None if hold.released_at is None else iso_us(hold.released_at),
    }


def cmd_hold_add(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.sweep import Retention
    from ..vault.recorder import Vault

    store = open_store(args.store)
    query: dict[str, Any] = {}
    if args.rule:
        query["rule"] = args.rule
    if args.agent:
        query["agent"] = args.agent
    if args.since:
        query["from"] = parse_time(args.since)
    if args.before:
        query["to"] = parse_time(args.before)
    if not args.ids and not query:
        raise InvalidArgument(
            "name the recordings to hold: ids, or --rule/--agent/--since/--before"
        )
    until = parse_time(args.until) if args.until else None
    with store.open_log() as log, Vault(store, log) as vault:
        retention = Retention(vault)
        selector: Any = args.ids if args.ids else query
        if args.ids and query:
            selector = {**query, "ids": args.ids}
        hold = retention.hold(
            selector, reason=args.reason, until=until, principal=owner_principal()
        )
        members = vault.catalog.hold_members(hold.hold_id)
    doc = {**_hold_doc(hold), "recordings": [rid for rid, _ in members]}
    emit(
        args,
        doc,
        f"Hold {hold.hold_id} placed on {len(members)} recording(s): {hold.reason}"
        + (f" (until {doc['until']})" if hold.until else " (until released)"),
        out,
    )
    return EXIT_OK


def cmd_hold_release(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.sweep import Retention
    from ..vault.recorder import Vault

    store = open_store(args.store)
    with store.open_log() as log, Vault(store, log) as vault:
        hold = Retention(vault).release(args.hold_id, principal=owner_principal())
    emit(args, _hold_doc(hold), f"Hold {hold.hold_id} released", out)
    return EXIT_OK


def cmd_hold_list(args: argparse.Namespace, out: TextIO) -> int:

    store = open_store(args.store)
    catalog = store.open_catalog()
    try:
        holds = [
            {**_hold_doc(h), "recordings": len(catalog.hold_members(h.hold_id))}
            for h in catalog.holds()
        ]
    finally:
        catalog.close()
    if args.json:
        emit(args, {"holds": holds}, "", out)
        return EXIT_OK
    rows = [
        (
            h["hold_id"],
            h["recordings"],
            h["created_at"][:10],
            h["until"] or "-",
            "released" if h["released_at"] else "active",
            h["reason"],
        )
        for h in holds
    ]
    out.write(
        (
            table(["hold", "recordings", "placed", "until", "status", "reason"], rows)
            if rows
            else "no holds"
        )
        + "\n"
    )
    return EXIT_OK
