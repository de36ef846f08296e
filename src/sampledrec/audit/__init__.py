"""The auditor's side: independent verification of a store, the auditor's kit, and the DPO's
report.

:func:`write_kit` writes what an outsider needs to audit a store, and nothing more (no private
key); :func:`audit_kit` audits from such a kit alone, :func:`audit_verify` from the store itself
(the operator's own audit). Both recompute every decision of a revealed epoch and check the
log, the keys, the time, the objections, the recordings and the statistics;
:func:`build_report` renders the DPO's HTML page. Nothing else in the library imports this
package (an import-linter contract): the audit must not share the code it checks more than
the specification requires.
"""

from .kit import audit_kit, write_kit
from .report import build_report, write_report
from .verify import AuditFinding, AuditReport, audit_verify

__all__ = [
    "AuditFinding",
    "AuditReport",
    "audit_kit",
    "audit_verify",
    "build_report",
    "write_kit",
    "write_report",
]
