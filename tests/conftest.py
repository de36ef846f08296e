from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sampledrec.cli.app import main

from .softhsm import SoftHsm, softhsm

__all__ = ["SoftHsm", "softhsm"]

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
