"""A real SoftHSM2 token for the PKCS#11 tests, created once per test session (the
``softhsm`` fixture, registered in conftest.py so that every test module shares one token:
SoftHSM reads its configuration once per process)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import pytest

_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class SoftHsm:
    module: str
    label: str
    pin: str
    so_pin: str
    env: dict[str, str] = field(repr=False)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("SAMPLEDREC_REQUIRE_SOFTHSM") == "1":
        pytest.fail(f"{reason}, and SAMPLEDREC_REQUIRE_SOFTHSM=1 requires the PKCS#11 tests")
    pytest.skip(f"{reason}; the PKCS#11 tests need it (./dev test installs it when run as root)")


def _softhsm_module() -> str | None:
    given = os.environ.get("SAMPLEDREC_SOFTHSM_MODULE")
    if given:
        return given
    for candidate in _MODULE_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    if shutil.which("dpkg") is not None:
        for package in ("libsofthsm2", "softhsm2"):
            listing = subprocess.run(
                ["dpkg", "-L", package], capture_output=True, text=True, check=False
            )
            for line in listing.stdout.splitlines():
                if line.endswith("/libsofthsm2.so") and os.path.exists(line):
                    return line
    return None


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A fresh SoftHSM2 token in a temporary token folder, for the whole test session.

    ``SOFTHSM2_CONF`` is set for the session: SoftHSM reads it once, when the module is first
    initialised in this process, so the process only ever sees this token.
    """
    util = shutil.which("softhsm2-util")
    module = _softhsm_module()
    if util is None or module is None:
        _unavailable("SoftHSM2 is not installed (Debian package softhsm2)")
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        _unavailable("python-pkcs11 is not installed (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir(mode=0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    token = SoftHsm(
        module=module,
        label="sampledrec-test",
        pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )
    init = [util, "--init-token", "--free", "--label", token.label]
    init += ["--pin", token.pin, "--so-pin", token.so_pin]
    done = subprocess.run(init, env=token.env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"softhsm2-util --init-token failed: {done.stderr or done.stdout}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        yield token
