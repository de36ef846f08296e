"""``sampledrec decide``: decide whether to record one call, and log the decision."""

from __future__ import annotations

import argparse
from typing import TextIO

from ..clock import FixedClock
from ..errors import InvalidArgument
from ._common import (
    EXIT_OK,
    Commands,
    _at,
    _attrs,
    _emit,
    _open_store,
    _read_lines,
    _ref_text,
    add_at,
    add_command,
)


def register(commands: Commands) -> None:
    p = add_command(commands, "decide", cmd_decide, "decide whether to record one call")
    p.add_argument("--call-ref", required=True, help="the call's reference (SIP Call-ID, ...)")
    p.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a call attribute (repeat); objection=true means the caller objected",
    )
    p.add_argument(
        "--caller-file",
        metavar="FILE",
        help="file holding the caller's number ('-' for standard input)",
    )
    add_at(p, "decide at this time (ISO 8601; forward only)")


def cmd_decide(args: argparse.Namespace, out: TextIO) -> int:
    store = _open_store(args.store)
    at = _at(args, store)
    caller = None
    if args.caller_file is not None:
        lines = _read_lines(args.caller_file)
        if len(lines) != 1:
            raise InvalidArgument(
                f"--caller-file must hold exactly one phone number, found {len(lines)}"
            )
        caller = lines[0]
    clock = FixedClock(at)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        decision = sampler.decide(args.call_ref, _attrs(args.attr), caller=caller)
        index = log.wait_durable(decision.log_ticket) if decision.log_ticket else -1
    verdict = "RECORD" if decision.record else "do not record"
    text = (
        f"{verdict} ({decision.reason})\n"
        f"  call ref: {_ref_text(decision.call_ref)}\n"
        f"  rule:     {decision.rule} (purpose {decision.purpose}, rate {decision.rate})\n"
        f"  draw:     {decision.draw} {'<' if decision.draw < decision.threshold else '>='} "
        f"threshold {decision.threshold}\n"
        f"  epoch:    {decision.epoch_id}, policy {decision.policy_version[:16]}\n"
        f"  logged:   entry {index} of {store.path / 'log'}"
    )
    _emit(args, {**decision.to_json(), "log_index": index}, text, out)
    return EXIT_OK
