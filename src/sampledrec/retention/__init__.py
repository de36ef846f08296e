"""Retention: recordings end when their rule says (crypto-shredding by expiry bucket), legal
holds suspend that, and data subjects' requests are answered within a month (DESIGN.md §6).

:class:`Retention` sweeps what is due and manages holds (and carries out the erasures a hold
deferred once it ends); :class:`SubjectRequests` exports and erases one caller's data, once the
requester's identity is recorded (:class:`IdentityCheck`). Both work through the vault, the key
store and the log only.
"""

from .subjects import IDENTITY_METHODS, IdentityCheck, SubjectRequests
from .sweep import Retention, SweepReport

__all__ = ["IDENTITY_METHODS", "IdentityCheck", "Retention", "SubjectRequests", "SweepReport"]
