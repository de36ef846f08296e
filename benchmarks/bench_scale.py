"""Benchmark scale-out: several nodes, and the audit of a large log on Dask.

Run ``python benchmarks/bench_scale.py [--quick]``.

(1) Three recording nodes of one deployment on PostgreSQL and SeaweedFS against one embedded
    store, in the same run: decisions/s and recordings/s through ``sampledrec serve`` (the HTTP
    and media-stream doors). :func:`part1` (``benchmarks/_scale_nodes.py``,
    :func:`~_scale_nodes.part_nodes`) says how it is measured.

(2) The audit of a multi-node log on Dask: :func:`part2` (not in this file yet).

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

from _scale_nodes import node_rows, part_nodes
from _table import print_table

from sampledrec import __version__


def part1(quick: bool) -> dict[str, Any]:
    """Three nodes on PostgreSQL and SeaweedFS against one embedded store."""
    return part_nodes(quick)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (about a minute)")
    args = parser.parse_args()
    nodes = part1(args.quick)
    print(
        f"sampledrec {__version__} bench_scale ({'quick' if args.quick else 'full'}); "
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{nodes['cpu_count']} cores shared by the servers, the database, S3 and the client"
    )
    print("(1) three nodes on PostgreSQL and SeaweedFS against one embedded store")
    print_table(node_rows(nodes))
    print(json.dumps({"quick": args.quick, "nodes": nodes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
