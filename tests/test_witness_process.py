"""``sampledrec witness serve`` as a process, driven by the client written from the C2SP specs
(tests/c2sp_client.py), and killed at random moments while requests from two forks of one log
race: it never cosigns both forks, and never forgets a checkpoint it cosigned."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import sampledrec
from sampledrec.cli import main

from . import c2sp_client as spec

SRC = str(Path(sampledrec.__file__).parents[1])
ORIGIN = "example.org/log/process"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WitnessProcess:
    def __init__(self, key: Path, state: Path, log: spec.SpecLog, port: int) -> None:
        self.argv = [
            sys.executable, "-c", "from sampledrec.cli.app import entry_point; entry_point()",
            "witness", "serve", "--key", str(key), "--state", str(state),
            "--listen", f"127.0.0.1:{port}", "--log", f"{log.origin}={log.vkey}",
        ]  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None
        self._drainer: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if re.search(r"listening on http://", line):
                self._drainer = threading.Thread(target=self._drain, args=(self.proc,))
                self._drainer.start()
                return
        raise AssertionError(f"the witness exited with {self.proc.wait(10)}")

    @staticmethod
    def _drain(proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for _ in proc.stderr:
            pass

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL: no cleanup of any kind
            self.proc.wait()
            if self._drainer is not None:
                self._drainer.join(10)
            assert self.proc.stderr is not None
            self.proc.stderr.close()
            self.proc = None


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str, bytes]:
    """A witness key made by the CLI: the file, the key name, the public key."""
    import io
    import json

    out = io.StringIO()
    path = tmp_path / "witness.key"
    assert (
        main(
            ["witness", "keygen", "--name", "witness.test/w1", "--out", str(path), "--json"],
            out=out,
        )
        == 0
    )
    doc = json.loads(out.getvalue())
    assert path.stat().st_mode & 0o777 == 0o600
    import base64

    name, _, b64 = doc["vkey"].split("+", 2)
    return path, name, base64.b64decode(b64)[1:]


@pytest.fixture
def log() -> spec.SpecLog:
    return spec.SpecLog(ORIGIN, entries=[b"e%d" % i for i in range(64)])


@pytest.fixture
def witness(
    key: tuple[Path, str, bytes], log: spec.SpecLog, tmp_path: Path
) -> Iterator[WitnessProcess]:
    w = WitnessProcess(key[0], tmp_path / "state", log, _free_port())
    w.start()
    try:
        yield w
    finally:
        w.kill()


def test_the_spec_client_gets_each_answer_the_spec_defines(
    witness: WitnessProcess, log: spec.SpecLog, key: tuple[Path, str, bytes]
) -> None:
    _, name, public = key
    status, _, body = spec.post(witness.url, spec.body(0, [], log.checkpoint(10)))
    assert status == 200
    (line,) = body.decode().splitlines()
    assert spec.cosignature_time(line, name, public, log.checkpoint(10)) is not None
    # The client may add the cosignature to its checkpoint and keep the whole note.
    entries = log.entries
    status, _, body = spec.post(
        witness.url, spec.body(10, spec.proof(10, entries[:30]), log.checkpoint(30))
    )
    assert status == 200
    assert spec.post(witness.url, spec.body(10, [], log.checkpoint(30)))[:3] == (
        409,
        "text/x.tlog.size",
        b"30\n",
    )
    assert (
        spec.post(witness.url, spec.body(0, [], spec.SpecLog("other/log").checkpoint()))[0] == 404
    )
    impostor = spec.SpecLog(ORIGIN, entries=entries)
    assert spec.post(witness.url, spec.body(30, [], impostor.checkpoint(40)))[0] == 403
    bad = spec.proof(30, entries[:40])
    bad[-1] = bytes(32)
    assert spec.post(witness.url, spec.body(30, bad, log.checkpoint(40)))[0] == 422
    assert spec.post(witness.url, b"old 30\n")[0] == 400
    assert spec.post(witness.url, spec.body(41, [], log.checkpoint(40)))[0] == 400
    with pytest.raises(urllib.error.HTTPError) as got:
        urllib.request.urlopen(witness.url + "/add-checkpoint", timeout=10)  # a GET
    assert got.value.code == 405
    got.value.close()


@pytest.mark.slow
def test_a_witness_killed_at_random_moments_never_cosigns_two_forks(
    witness: WitnessProcess, log: spec.SpecLog, key: tuple[Path, str, bytes]
) -> None:
    """Two forks of one log (the same key, different entries from index 8) race to the
    witness from several threads while it is SIGKILLed and restarted again and again."""
    _, name, public = key
    n = 1500
    forks = {
        "A": spec.SpecLog(ORIGIN, key=log.key, entries=[b"a%d" % i for i in range(n)]),
        "B": spec.SpecLog(ORIGIN, key=log.key, entries=[b"a%d" % i for i in range(8)]),
    }
    forks["B"].entries += [b"b%d" % i for i in range(8, n)]
    cosigned: list[tuple[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()
    rng = random.Random(16)

    def client(seed: int) -> None:
        r = random.Random(seed)
        known = 0
        while not stop.is_set():
            fork = r.choice("AB")
            entries = forks[fork].entries
            size = min(len(entries), known + r.randint(1, 12))
            note = forks[fork].checkpoint(size)
            try:
                status, kind, body = spec.post(
                    witness.url, spec.body(known, spec.proof(known, entries[:size]), note), 5
                )
            except OSError:  # killed: wait for the restart
                time.sleep(0.02)
                continue
            if status == 200:
                line = body.decode().strip()
                assert spec.cosignature_time(line, name, public, note) is not None
                with lock:
                    cosigned.append((fork, size))
                known = size
            elif status == 409 and kind == "text/x.tlog.size":
                known = int(body)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    highest_before: list[int] = []
    for _ in range(8):
        time.sleep(rng.uniform(0.05, 0.4))
        with lock:
            highest_before.append(max((s for _, s in cosigned), default=0))
        witness.kill()
        witness.start()
        # Nothing cosigned before the kill was forgotten: the witness's size is at least it.
        status, _kind, body = spec.post(witness.url, spec.body(0, [], log.checkpoint(0)))
        if status == 409:
            assert int(body) >= highest_before[-1]
    stop.set()
    for t in threads:
        t.join(10)
    assert cosigned, "nothing was cosigned"
    past_fork = {fork for fork, size in cosigned if size > 8}
    assert len(past_fork) <= 1, "the witness cosigned both forks"
    # Cosignatures were made across several restarts.
    assert len({s for _, s in cosigned}) > 1
