"""The examples run as part of the tests, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "quickstart.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "of 500 calls selected" in proc.stdout
    assert (tmp_path / "store" / "store.json").exists()


def test_record_calls(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "record_calls.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "caller objected" in proc.stdout
    assert "pauses [(1000, 2000)]" in proc.stdout
    assert (tmp_path / "exported.wav").stat().st_size > 44
