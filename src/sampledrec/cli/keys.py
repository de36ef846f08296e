"""``sampledrec keys reveal``: the keys of ended epochs, for an auditor."""

from __future__ import annotations

import argparse
from typing import TextIO

from ..clock import SYSTEM_CLOCK, parse_time
from ..errors import InvalidArgument, KeyNotRevealable
from ._common import (
    EXIT_OK,
    CommandFailed,
    Commands,
    add_at,
    add_command,
    add_group,
    emit,
    open_store,
)


def register(commands: Commands) -> None:
    ksub = add_group(commands, "keys", "epoch keys")
    p = add_command(
        ksub, "reveal", cmd_keys_reveal, "write the keys of ended epochs for an auditor"
    )
    p.add_argument("--out", required=True, help="JSON file to write (0600; must not exist)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_at(p, "reveal as of this time (simulated stores only may go ahead)")


def cmd_keys_reveal(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    real = SYSTEM_CLOCK.now()
    at = parse_time(args.at) if args.at else real
    if at < real:
        raise InvalidArgument(
            f"--at {args.at} is in the past; --at may only move the clock forward"
        )
    try:
        keys = store.reveal_keys(now=at, real_now=real)
    except KeyNotRevealable as exc:
        raise CommandFailed(str(exc)) from None
    except InvalidArgument as exc:
        raise CommandFailed(str(exc)) from None
    try:
        store.write_revealed(keys, args.out, replace=args.force)
    except InvalidArgument:
        raise InvalidArgument(
            f"{args.out} exists; choose a new --out file, or pass --force to replace it"
        ) from None
    epochs = [k.epoch_id for k in keys]
    text = (
        f"Revealed {len(keys)} ended epoch key(s) to {args.out}"
        + (f": {epochs[0]} .. {epochs[-1]}" if epochs else " (no epoch has ended yet)")
        + ("\nThis store is SIMULATED (made by 'sampledrec demo')." if store.simulated else "")
    )
    doc = {
        "out": str(args.out),
        "simulated": store.simulated,
        "epochs": [{"epoch_id": k.epoch_id, "commitment": k.commitment.hex()} for k in keys],
    }
    emit(args, doc, text, out)
    return EXIT_OK
