"""A real PostgreSQL server for the tests of the PostgreSQL backends, started once per test
session (the ``postgres`` fixture, registered in conftest.py).

``initdb`` in a temporary folder, ``postgres`` on a free port of 127.0.0.1 with its unix socket
in that folder, a database ``sampledrec``, stopped at the end of the session (also when a test
or the start itself failed). PostgreSQL refuses to run as root: as root the server runs as the
``postgres`` user of the Debian package (else ``nobody``), which owns the folder.

Each test gets its own schema (:meth:`PostgresServer.fresh_dsn`): a DSN whose ``search_path``
names a new, empty schema, so tests stay independent without a database each.

Without PostgreSQL (or psycopg) the tests skip, except in CI (``CI`` set) or with
``SAMPLEDREC_REQUIRE_POSTGRES=1`` (``./dev test`` as root), where they fail and say why.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

USER = "sampledrec"  # the server's superuser (trust authentication: a throwaway server)
DATABASE = "sampledrec"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") or os.environ.get("SAMPLEDREC_REQUIRE_POSTGRES") == "1":
        pytest.fail(
            f"{reason}: the PostgreSQL backend tests must run in CI (install the Debian package "
            "postgresql, or run ./dev test as root, which installs it)",
            pytrace=False,
        )
    pytest.skip(f"{reason}; the PostgreSQL tests need it (./dev test installs it when run as root)")


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are: ``SAMPLEDREC_PG_BINDIR``, ``PATH``, or the
    newest ``/usr/lib/postgresql/<version>/bin`` (Debian does not put them on the PATH)."""
    given = os.environ.get("SAMPLEDREC_PG_BINDIR")
    if given:
        return Path(given) if (Path(given) / "initdb").exists() else None
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).parent
    versions = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            digits = re.match(r"\d+", candidate.parent.name)
            versions.append((int(digits.group()) if digits else 0, candidate))
    return max(versions)[1] if versions else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root for the server (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    _unavailable(
        "running as root, and neither the user postgres nor nobody exists to run the server"
    )


@dataclass
class PostgresServer:
    """A running throwaway server: connect with :attr:`dsn`, or a schema of your own with
    :meth:`fresh_dsn`."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    _schemas: Iterator[int] = field(default_factory=itertools.count, repr=False)

    @property
    def dsn(self) -> str:
        """The test database, over the unix socket."""
        return f"host={self.folder} port={self.port} user={USER} dbname={DATABASE}"

    def url(self, schema: str | None = None) -> str:
        """The test database as a URL, over TCP (as a deployment names it in store.json)."""
        query = f"?options=-csearch_path%3D{schema}" if schema else ""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}{query}"

    def new_schema(self) -> str:
        """Create a new, empty schema; returns its name."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._schemas)}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}".encode())
        return name

    def fresh_dsn(self) -> str:
        """A DSN of the test database whose tables go to a new, empty schema."""
        return f"{self.dsn} options='-c search_path={self.new_schema()}'"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: sessions are cut
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _log_tail(folder: Path) -> str:
    try:
        return (folder / "server.log").read_text(errors="replace")[-2000:]
    except OSError:
        return "(no server log)"


def start_postgres(folder: Path) -> PostgresServer:
    """initdb in ``folder``/data and start a server; :meth:`PostgresServer.stop` stops it."""
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[dev]')")
    bindir = postgres_bindir()
    if bindir is None:
        _unavailable("PostgreSQL is not installed (no initdb; Debian package postgresql)")
    drop = _run_as()
    if drop:
        os.chown(folder, drop["user"], drop["group"])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    initdb = subprocess.run(
        [bindir / "initdb", "-D", folder / "data", "-U", USER, "-A", "trust", "-E", "UTF8",
         "--locale=C", "--no-sync", "--no-instructions"],
        capture_output=True, env=env, cwd=folder, check=False, **drop,
    )  # fmt: skip
    if initdb.returncode != 0:
        pytest.fail(f"initdb failed: {initdb.stderr.decode(errors='replace')[-2000:]}")
    port = _free_port()
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - the server writes it until stopped
    if drop:
        os.chown(folder / "server.log", drop["user"], drop["group"])
    process = subprocess.Popen(
        [bindir / "postgres", "-D", folder / "data", "-p", str(port), "-k", folder,
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
         "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, **drop,
    )  # fmt: skip
    log.close()
    server = PostgresServer(folder, port, process)
    try:
        # Waiting for the server to accept connections (not a timing assertion: a bound).
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the PostgreSQL server exited at start:\n{_log_tail(folder)}")
            try:
                with psycopg.connect(
                    f"host={folder} port={port} user={USER} dbname=postgres",
                    autocommit=True,
                    connect_timeout=2,
                ) as conn:
                    conn.execute(f"CREATE DATABASE {DATABASE}".encode())
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the PostgreSQL server did not start:\n{_log_tail(folder)}")
                time.sleep(0.05)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session (stopped and removed at its end)."""
    # Not under pytest's temporary folders: their parents are 0700 root's, which the server's
    # user could not cross. A short path, too: the unix socket's must fit in 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="sampledrec-pg-"))
    try:
        server = start_postgres(folder)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
