"""Start several Python processes at once, for tests of what processes do to one store together."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def run_together(script: str, argvs: list[list[str]], go: Path, timeout: float = 120) -> list[str]:
    """Run ``python -c script *argv`` once per argv; the scripts wait until ``go`` exists, which
    is created once they have all started, so that they really overlap. Returns their outputs;
    fails the test if any of them fails. ``go`` is removed afterwards."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    time.sleep(0.3)
    go.write_bytes(b"")
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err
            outs.append(out)
    finally:
        for p in procs:
            p.kill()
        go.unlink()
    return outs
