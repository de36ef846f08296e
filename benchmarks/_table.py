"""The table every benchmark prints before its JSON line (metric, value, target, ...)."""

from __future__ import annotations

from collections.abc import Sequence

HEAD = ("metric", "value", "target", "measured", "result")


def print_table(rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under :data:`HEAD`; text columns (metric, target) left-aligned."""
    widths = [max(len(str(r[i])) for r in [HEAD, *rows]) for i in range(len(HEAD))]
    for row in [HEAD, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(
                str(c).ljust(w) if i in (0, 2) else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
