from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from sampledrec.cli.app import main

from .postgres import PostgresServer, postgres
from .seaweedfs import SeaweedFS, seaweedfs
from .softhsm import SoftHsm, softhsm

__all__ = ["PostgresServer", "SeaweedFS", "SoftHsm", "postgres", "seaweedfs", "softhsm"]

# CI replays the same examples every run (a change is judged on what it changes, not on a new
# random draw); developers' runs keep exploring new ones, and what they find becomes a test.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The in-process tests of the front doors run on asyncio's event loop; the test command runs them
# a second time with SAMPLEDREC_TEST_EVENT_LOOP=uvloop, the loop `sampledrec serve` runs on by
# default (docs/decisions/0041-uvloop.md).
if os.environ.get("SAMPLEDREC_TEST_EVENT_LOOP") == "uvloop":
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

CliRun = Callable[..., tuple[int, str]]


@pytest.fixture
def cli() -> CliRun:
    """Run the CLI in-process: ``code, out = cli("decide", "--store", ...)``."""

    def run(*argv: str | Path) -> tuple[int, str]:
        out = io.StringIO()
        code = main([str(a) for a in argv], out=out)
        return code, out.getvalue()

    return run


@pytest.fixture
def cli_json(cli: CliRun) -> Callable[..., tuple[int, Any]]:
    def run(*argv: str | Path) -> tuple[int, Any]:
        code, out = cli(*argv, "--json")
        return code, json.loads(out)

    return run
