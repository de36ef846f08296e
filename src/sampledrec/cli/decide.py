"""``sampledrec decide``: decide whether to record one call, and log the decision."""

from __future__ import annotations

import argparse
from typing import TextIO

from ..clock import FixedClock
from ._common import (
    EXIT_OK,
    Commands,
    add_at,
    add_attrs,
    add_caller_file,
    add_command,
    at_time,
    emit,
    open_store,
    parse_attrs,
    read_caller,
    ref_text,
)


def register(commands: Commands) -> None:
    p = add_command(commands, "decide", cmd_decide, "decide whether to record one call")
    p.add_argument("--call-ref", required=True, help="the call's reference (SIP Call-ID, ...)")
    add_attrs(p)
    add_caller_file(p)
    add_at(p, "decide at this time (ISO 8601; forward only)")


def cmd_decide(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    at = at_time(args, store)
    caller = read_caller(args.caller_file)
    clock = FixedClock(at)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        decision = sampler.decide(args.call_ref, parse_attrs(args.attr), caller=caller)
        index = log.wait_durable(decision.log_ticket) if decision.log_ticket else -1
    verdict = "RECORD" if decision.record else "do not record"
    text = (
        f"{verdict} ({decision.reason})\n"
        f"  call ref: {ref_text(decision.call_ref)}\n"
        f"  rule:     {decision.rule} (purpose {decision.purpose}, rate {decision.rate})\n"
        f"  draw:     {decision.draw} {'<' if decision.draw < decision.threshold else '>='} "
        f"threshold {decision.threshold}\n"
        f"  epoch:    {decision.epoch_id}, policy {decision.policy_version[:16]}\n"
        f"  logged:   entry {index} of {store.log_storage.location()}"
    )
    emit(args, {**decision.to_json(), "log_index": index}, text, out)
    return EXIT_OK
