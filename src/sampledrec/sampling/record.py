"""The seam between the sampler and whatever keeps its decisions: the record of one decision,
and :class:`DecisionSink`, what the sampler hands each record to.

The sampler sits below the log in the dependency order (the log may import sampling, never the
reverse), so the types both sides agree on live here. :class:`sampledrec.log.writer.DecisionLog`
is the sink of a store; anything with the same ``append_decision`` (a test's list, a forwarder)
can stand in for it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal, NamedTuple, Protocol, runtime_checkable

__all__ = ["REASONS", "DecisionRecord", "DecisionSink", "Reason"]

Reason = Literal["sampled", "not_sampled", "objection", "cap_reached"]
REASONS: Final[tuple[Reason, ...]] = ("sampled", "not_sampled", "objection", "cap_reached")


class DecisionRecord(NamedTuple):
    """What the log keeps of one decision: everything an auditor needs to recompute it.

    A named tuple because the sampler builds one per call on its hot path
    (docs/decisions/0012-decision-record.md). ``policy_version`` and ``caller_pseudonym`` are
    hex text; ``threshold`` and ``draw`` the 56-bit integers of DESIGN.md §4. The five fields
    before ``draw`` are the same for long runs of decisions (one epoch, policy, rule and
    reason): the log encodes them once per run, so they come first. ``attributes`` is the
    call's attributes that the rules of the policy version name, as compact JSON
    (:meth:`~sampledrec.sampling.policy.Policy.attributes_json`): the audit recomputes the rule
    from it. It comes last, with a default, so that records built before it existed still are.
    """

    epoch_id: str
    policy_version: str
    rule: str
    threshold: int
    reason: Reason
    draw: int
    call_ref: str | bytes
    agent: str | None
    caller_pseudonym: str | None
    decided_at: datetime
    attributes: str | None = None


@runtime_checkable
class DecisionSink(Protocol):
    """Where a sampler sends its decisions (``Sampler(..., log=sink)``)."""

    def append_decision(self, record: DecisionRecord) -> int:
        """Take one decision; return a ticket for it (``Decision.log_ticket``).

        Called on the per-call hot path, so it should only queue the record. What a ticket
        means is the sink's own business: :meth:`DecisionLog.wait_durable
        <sampledrec.log.writer.DecisionLog.wait_durable>` blocks until its entry is on disk.

        Tickets start at 1: a repeat of a decision whose entry is already durable carries the
        ticket ``0`` (:data:`~sampledrec.sampling.sampler.LOGGED_EARLIER`), for which waiting
        returns at once. A sink that can also say ``is_durable(ticket)`` without blocking (the
        log can) lets a store's sampler note in its decided-calls index which first decisions
        are in the log, so that a repeat in another process logs nothing; one that can also
        ``flush_through(ticket, timeout)`` is asked to write its queue at once when the sampler
        closes.
        """
        ...
