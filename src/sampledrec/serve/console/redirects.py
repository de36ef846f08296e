"""Where the console may send a browser after a step: its own paths only (no open redirect)."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

__all__ = ["quote_path", "safe_next"]

_SAFE_NEXT: Final = re.compile(r"/(?![/\\])[A-Za-z0-9/_\-.~%?=&]*")


def safe_next(value: object) -> str:
    """Where to go after sign-in: a path of this site, never another site (no open
    redirect); anything else is ``/``."""
    if isinstance(value, str) and len(value) <= 512 and _SAFE_NEXT.fullmatch(value):
        return value
    return "/"


def quote_path(path: str) -> str:
    """``path`` quoted to travel in a query parameter (``next=``, ``then=``)."""
    return quote(path, safe="/")
