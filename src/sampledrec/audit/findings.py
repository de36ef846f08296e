"""What an audit reports: per check a verdict, what it checked and, when it checked nothing,
why; the findings with their evidence; and the overall verdict.

A check's verdict is

- ``FAIL`` when it has at least one finding;
- ``SKIPPED`` when it had nothing to check (no key revealed, no recording, no call records
  given), with the reason in ``why``;
- ``PASS`` when it checked something (its ``checked`` counts say what) and found nothing.

Whatever could not be verified but should have been (an ended epoch whose key is not revealed,
call references unreadable while they should still be kept) is a finding, so a FAIL, never a
SKIPPED.

The overall verdict (:attr:`AuditReport.verdict`) is

- ``FAIL`` when any check FAILed;
- ``INCOMPLETE`` when none FAILed but a core check (:data:`CORE_CHECKS`: log, keys, decisions)
  was SKIPPED although the log holds what it is about (decisions whose draws no revealed key
  could recompute yet, for example an audit run before any epoch has ended);
- ``PASS`` otherwise.

Only PASS is ``ok`` (``sampledrec audit verify`` exits 0); FAIL and INCOMPLETE exit 1.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from ..log.verify import CheckedReport

__all__ = [
    "CHECKS",
    "CORE_CHECKS",
    "MAX_LISTED",
    "OPTIONAL_CHECKS",
    "STAT_ALPHA",
    "AuditFinding",
    "AuditReport",
    "GroupStats",
]

CHECKS: Final = (
    "log",
    "keys",
    "decisions",
    "time",
    "objections",
    "recordings",
    "cdr",
    "statistics",
)
#: Checks that run only when asked for (``witnesses``: with ``--witness``); a report lists them
#: after :data:`CHECKS` when they ran.
OPTIONAL_CHECKS: Final = ("witnesses",)
#: The checks without which an audit proves nothing: SKIPPING one of them while the log holds
#: what it is about makes the audit INCOMPLETE.
CORE_CHECKS: Final = ("log", "keys", "decisions")
STAT_ALPHA: Final = 0.001
#: Findings of one kind listed one by one before the rest are summed up in one finding (a
#: forged log can hold millions of them; the first ones are the evidence).
MAX_LISTED: Final = 50


@dataclass
class AuditFinding:
    check: str
    message: str
    index: int | None = None
    recording_id: str | None = None
    call_ref: str | None = None
    epoch_id: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"check": self.check, "message": self.message}
        for k in ("index", "recording_id", "call_ref", "epoch_id"):
            v = getattr(self, k)
            if v is not None:
                doc[k] = v
        if self.evidence:
            doc["evidence"] = self.evidence
        return doc


@dataclass
class GroupStats:
    rule: str
    agent: str | None
    rate: float
    eligible: int
    selected: int
    low: float
    high: float
    p_value: float
    p_holm: float = 1.0

    @property
    def realised(self) -> float:
        return self.selected / self.eligible if self.eligible else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "agent": self.agent,
            "declared_rate": self.rate,
            "eligible": self.eligible,
            "selected": self.selected,
            "realised_rate": self.realised,
            "ci95": [self.low, self.high],
            "p_value": self.p_value,
            "p_holm": self.p_holm,
            "verdict": "FAIL" if self.p_holm < STAT_ALPHA else "PASS",
        }


@dataclass
class AuditReport(CheckedReport):
    """The result of :func:`~sampledrec.audit.verify.audit_verify` (see the module docstring
    for the verdicts)."""

    store: str
    at: datetime
    simulated: bool = False
    findings: list[AuditFinding] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    groups: list[GroupStats] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: per check, what it checked (counts, shown beside its verdict)
    checked: dict[str, dict[str, int]] = field(default_factory=dict)
    #: per check that had nothing to check, why
    skipped: dict[str, str] = field(default_factory=dict)
    #: the core checks that had something to check (a SKIPPED one makes the audit INCOMPLETE)
    expected: dict[str, str] = field(default_factory=dict)
    #: per witness named (the ``witnesses`` check), how much of the log it covered
    witness_coverage: list[dict[str, Any]] = field(default_factory=list)

    @property
    def checks(self) -> tuple[str, ...]:
        """The checks this report covers: :data:`CHECKS`, then the optional ones that ran."""
        return CHECKS + tuple(c for c in OPTIONAL_CHECKS if c in self.ran)

    def status(self, check: str) -> str:
        if self.failed(check):
            return "FAIL"
        return "PASS" if check in self.ran and check not in self.skipped else "SKIPPED"

    def why(self, check: str) -> str | None:
        """Why a check was SKIPPED (``None`` when it ran)."""
        if self.status(check) != "SKIPPED":
            return None
        return self.skipped.get(check, "not run")

    def skip(self, check: str, why: str) -> None:
        self.skipped[check] = why

    def add(self, check: str, message: str, **kw: Any) -> None:
        self.findings.append(AuditFinding(check, message, **kw))

    def add_listed(self, check: str, items: list[tuple[str, dict[str, Any]]], what: str) -> None:
        """Add findings ``(message, keywords)`` of one kind: the first :data:`MAX_LISTED` one
        by one, then one finding that counts the rest."""
        for message, kw in items[:MAX_LISTED]:
            self.add(check, message, **kw)
        rest = len(items) - MAX_LISTED
        if rest > 0:
            self.add(
                check,
                f"and {rest:,} more {what} (not listed one by one)",
                evidence={"not_listed": rest},
            )

    @property
    def verdict(self) -> str:
        if self.findings:
            return "FAIL"
        if self.incomplete():
            return "INCOMPLETE"
        return "PASS"

    @property
    def ok(self) -> bool:
        return self.verdict == "PASS"

    def incomplete(self) -> list[str]:
        """Why the audit is INCOMPLETE: each core check SKIPPED although it had work."""
        return [
            f"{c} SKIPPED ({self.why(c)}) while {self.expected[c]}"
            for c in CORE_CHECKS
            if c in self.expected and self.status(c) == "SKIPPED"
        ]

    def result(self, check: str) -> dict[str, Any]:
        return {
            "verdict": self.status(check),
            "checked": dict(self.checked.get(check, {})),
            "why": self.why(check),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": self.verdict,
            "verdict_reasons": self.incomplete(),
            "store": self.store,
            "at": self.at.isoformat(),
            "simulated": self.simulated,
            "checks": {c: self.status(c) for c in self.checks},
            "results": {c: self.result(c) for c in self.checks},
            "counts": dict(self.counts),
            "statistics": {"alpha_holm": STAT_ALPHA, "groups": [g.to_json() for g in self.groups]},
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
        } | ({"witnesses": self.witness_coverage} if "witnesses" in self.ran else {})

    def to_text(self) -> str:
        lines = [f"audit of {self.store} at {self.at.isoformat()}"]
        if self.simulated:
            lines[0] += " [SIMULATED store]"
        for c in self.checks:
            status = self.status(c)
            what = ", ".join(
                f"{v:,} {k.replace('_', ' ')}" for k, v in self.checked.get(c, {}).items()
            )
            if status == "SKIPPED":
                what = f"{self.why(c)}" + (f" ({what})" if what else "")
            lines.append(f"  {c:<12} {status:<8} {what}".rstrip())
        for cov in self.witness_coverage:
            gap = cov["longest_uncovered"] or {"entries": 0}
            lines.append(
                f"    witness {cov['witness']}: covers {cov['covered_entries']:,} entries "
                f"({cov['covered_fraction']:.1%}) with {cov['cosigned_checkpoints']:,} cosigned "
                f"checkpoints; longest uncovered stretch {gap['entries']:,} entries"
            )
        for f in self.findings:
            where = ", ".join(
                x
                for x in (
                    None if f.index is None else f"entry {f.index}",
                    None if f.recording_id is None else f"recording {f.recording_id}",
                    None if f.call_ref is None else f"call {f.call_ref}",
                    None if f.epoch_id is None else f"epoch {f.epoch_id}",
                )
                if x
            )
            lines.append(f"FAIL {f.check}: {f.message}" + (f" ({where})" if where else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        verdict = self.verdict
        if verdict == "INCOMPLETE":
            lines.append("AUDIT INCOMPLETE: " + "; ".join(self.incomplete()))
        else:
            lines.append("AUDIT PASSED" if verdict == "PASS" else "AUDIT FAILED")
        return "\n".join(lines)
