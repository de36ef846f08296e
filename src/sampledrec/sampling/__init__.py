"""Sampling: per call, whether to record it, and why (DESIGN.md §4).

The keyed draw (:func:`draw`, :func:`draw_many`, :func:`threshold`), the policy that maps a
call's attributes to a rule and a rate (:class:`Policy`, its roles), objections, per-agent caps
(:class:`CapLedger`), the index of calls already decided (:class:`DecidedCalls`: ``decide`` is
idempotent), and the :class:`Sampler` that combines them into a :class:`Decision`.
:func:`simulate_policy` tries a policy on synthetic calls. Nothing here touches the disk except
the caps ledger and the decided-calls index of a store (SQLite files in the store, or tables of
a PostgreSQL database that several nodes share).

The seam to the log is typed: the sampler hands each decision to a :class:`DecisionSink` (the
log, above sampling in the dependency order) as a :class:`DecisionRecord`.
"""

from .caps import CapLedger, MemoryCapLedger, SqliteCapLedger
from .decided import DecidedCalls, FirstDecision, MemoryDecidedCalls, SqliteDecidedCalls
from .keyed import draw, draw_many, threshold
from .objections import ObjectionList, caller_pseudonym
from .policy import Policy, RetentionPeriod, Rule
from .postgres import PostgresCapLedger, PostgresDecidedCalls
from .record import DecisionRecord, DecisionSink
from .roles import Role
from .sampler import Decision, DecisionBatch, Sampler
from .simulate import simulate_policy

__all__ = [
    "CapLedger",
    "DecidedCalls",
    "Decision",
    "DecisionBatch",
    "DecisionRecord",
    "DecisionSink",
    "FirstDecision",
    "MemoryCapLedger",
    "MemoryDecidedCalls",
    "ObjectionList",
    "Policy",
    "PostgresCapLedger",
    "PostgresDecidedCalls",
    "RetentionPeriod",
    "Role",
    "Rule",
    "Sampler",
    "SqliteCapLedger",
    "SqliteDecidedCalls",
    "caller_pseudonym",
    "draw",
    "draw_many",
    "simulate_policy",
    "threshold",
]
