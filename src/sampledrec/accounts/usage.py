"""Anonymised usage statistics of the console: page views per UTC day and per role, nothing else.

No account name, address, session, page or recording is kept: only ``{day: {role: views}}``.
A view by an account holding several roles counts once for each of its roles; an account with
no role counts under ``(no role)``.

Where the counts live: in memory, written through at each view to a small JSON file under the
store (``usage.json``, 0600, replaced atomically), so that a restart of the console keeps them.
Days older than :data:`KEEP_DAYS` are dropped. The file holds statistics only: if it is
unreadable the counts start again from zero rather than stop the console.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Final

from .._hazmat.files import write_atomic

__all__ = ["KEEP_DAYS", "NO_ROLE", "Usage"]

KEEP_DAYS: Final = 400
NO_ROLE: Final = "(no role)"


class Usage:
    """Page views per day and per role, in memory and (``path`` given) in a file.

    >>> from datetime import UTC
    >>> u = Usage(None)
    >>> u.count(["dpo", "admin"], datetime(2030, 3, 4, 10, tzinfo=UTC))
    >>> u.count([], datetime(2030, 3, 4, 11, tzinfo=UTC))
    >>> u.table()
    [('2030-03-04', '(no role)', 1), ('2030-03-04', 'admin', 1), ('2030-03-04', 'dpo', 1)]
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._views: dict[str, dict[str, int]] = self._load()

    def _load(self) -> dict[str, dict[str, int]]:
        if self.path is None:
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            views = raw["views"]
            return {
                str(day): {str(role): int(n) for role, n in roles.items()}
                for day, roles in views.items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def count(self, roles: Iterable[str], when: datetime) -> None:
        """Count one page view at ``when`` (a timezone-aware time) for each of ``roles``."""
        day = when.date().isoformat()
        with self._lock:
            today = self._views.setdefault(day, {})
            for role in sorted(set(roles)) or [NO_ROLE]:
                today[role] = today.get(role, 0) + 1
            for old in sorted(self._views)[:-KEEP_DAYS]:
                del self._views[old]
            if self.path is not None:
                data = json.dumps({"version": 1, "views": self._views}, sort_keys=True)
                write_atomic(self.path, data.encode(), replace=True)

    def table(self) -> list[tuple[str, str, int]]:
        """``(day, role, views)``, the newest day first, roles by name."""
        with self._lock:
            rows = [(d, r, n) for d, roles in self._views.items() for r, n in roles.items()]
        rows.sort(key=lambda x: x[1])
        rows.sort(key=lambda x: x[0], reverse=True)  # stable: roles stay by name within a day
        return rows
