"""Retention: recordings end when their rule says (crypto-shredding by expiry bucket), legal
holds suspend that, and data subjects' requests are answered within a month (DESIGN.md §6).

:class:`Retention` sweeps what is due and manages holds; :class:`SubjectRequests` exports and
erases one caller's data. Both work through the vault, the key store and the log only.
"""

from .subjects import SubjectRequests
from .sweep import Retention, SweepReport

__all__ = ["Retention", "SubjectRequests", "SweepReport"]
