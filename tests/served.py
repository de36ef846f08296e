"""A ``sampledrec serve`` process for the tests that drive the real command: started, and
read from its JSON log until it is ready."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any


def start_serve(
    *args: str, env: Mapping[str, str]
) -> tuple[subprocess.Popen[str], dict[str, str], list[dict[str, Any]]]:
    """``sampledrec serve ARGS`` once it is ready: the process (its stderr, the JSON log, still
    to be read), each door's address (from its ``listening`` event) and the events so far."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sampledrec.cli.app import entry_point; entry_point()",
         "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
    )  # fmt: skip
    assert proc.stderr is not None
    addresses: dict[str, str] = {}
    events: list[dict[str, Any]] = []
    try:
        for line in proc.stderr:
            event = json.loads(line)
            events.append(event)
            if event["event"] == "listening":
                addresses[event["door"]] = event["address"]
            if event["event"] == "ready":
                return proc, addresses, events
        raise AssertionError(f"the server exited with {proc.wait(10)} before it was ready")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
