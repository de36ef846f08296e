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
    # The sampler closes first: it then tells the store's index that its entry is durable, so
    # that a later request about the call (a 'record', another process) needs to log nothing.
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        decision = sampler.decide(args.call_ref, parse_attrs(args.attr), caller=caller)
        index = log.wait_durable(decision.log_ticket) if decision.log_ticket else -1
    verdict = "RECORD" if decision.record else "do not record"
    lines = [f"{verdict} ({decision.reason})"]
    if decision.repeat:
        lines.append(f"  already decided at {decision.decided_at.isoformat()}: same decision")
        if decision.reason == "sampled" and not decision.record:
            lines.append("  the caller objects: the call is not recorded")
    elif decision.reason == "objection" and caller is None and store.objection_pseudonyms():
        lines.append(
            "  the caller was not given while someone objects: it may be an objector's call "
            "(give --caller-file)"
        )
    lines += [
        f"  call ref: {ref_text(decision.call_ref)}",
        f"  rule:     {decision.rule} (purpose {decision.purpose}, rate {decision.rate})",
        f"  draw:     {decision.draw} {'<' if decision.draw < decision.threshold else '>='} "
        f"threshold {decision.threshold}",
        f"  epoch:    {decision.epoch_id}, policy {decision.policy_version[:16]}",
    ]
    where = store.log_storage.location()
    if not decision.repeat:
        lines.append(f"  logged:   entry {index} of {where}")
    elif index >= 0:  # the first decision's entry was not known to be in the log
        lines.append(f"  logged:   entry {index} of {where} (a copy of the first decision)")
    else:
        lines.append("  logged:   not again (a repeat)")
    emit(args, decision.to_json(log_index=index), "\n".join(lines), out)
    return EXIT_OK
