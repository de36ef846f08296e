"""The auditor's side: independent verification of a store, and the DPO's report.

:func:`audit_verify` recomputes every decision of a revealed epoch and checks the log, the
keys, the recordings and the statistics; :func:`build_report` renders the DPO's HTML page.
Nothing else in the library imports this package (an import-linter contract): the audit must
not share the code it checks more than the specification requires.
"""

from .report import build_report, write_report
from .verify import AuditFinding, AuditReport, audit_verify

__all__ = ["AuditFinding", "AuditReport", "audit_verify", "build_report", "write_report"]
