"""The deployment key (docs/decisions/0036-deployment-keys.md): the shared keys wrapped by a
non-extractable key on a PKCS#11 token (a real SoftHSM2 token) instead of a key file, and the
rotation of the deployment key, all or nothing, on the real PostgreSQL."""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sampledrec import FixedClock, Store
from sampledrec.deployment import Deployment
from sampledrec.errors import InvalidArgument, KeyringError, StoreError
from sampledrec.keys import keystore
from sampledrec.keys.keystore import Pkcs11WrappingKey
from sampledrec.keys.shared import DeploymentKey, SharedKeys
from sampledrec.vault import Vault

from .deployments import new_deployment, nodes
from .postgres import PostgresServer
from .recording import write_call
from .seaweedfs import SeaweedFS
from .softhsm import SoftHsm

AT = "2030-03-05T10:00:00Z"
POLICY = """
[default]
rate = "0.25"
purpose = "quality"
retention = "6 months"
"""
PIN_ENV = "SAMPLEDREC_TEST_DEPLOYMENT_PIN"


def _init(
    tmp_path: Path,
    postgres: PostgresServer,
    seaweedfs: SeaweedFS,
    monkeypatch: pytest.MonkeyPatch,
    **kw: Any,
) -> Deployment:
    (tmp_path / "policy.toml").write_text(POLICY)
    return new_deployment(
        tmp_path, postgres, seaweedfs, monkeypatch, policy=tmp_path / "policy.toml", **kw
    )


@pytest.fixture
def on_token(
    tmp_path: Path,
    postgres: PostgresServer,
    seaweedfs: SeaweedFS,
    softhsm: SoftHsm,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Deployment]:
    """A deployment whose key is a key on the SoftHSM2 token (a new label per test). Once the
    test's nodes are gone, no session on the token is left open (the other PKCS#11 tests of
    the process need a token nobody is logged in to)."""
    monkeypatch.setenv(PIN_ENV, softhsm.pin)
    spec = {
        "kind": "pkcs11",
        "module": softhsm.module,
        "token": softhsm.label,
        "pin_env": PIN_ENV,
        "label": f"dep-{random.randbytes(6).hex()}",
    }
    yield _init(tmp_path, postgres, seaweedfs, monkeypatch, deployment_key=spec)
    gc.collect()  # the nodes' shared keys, each holding the token's session
    assert not keystore._TOKENS, "a deployment key left a session open on the token"


@pytest.fixture
def in_file(
    tmp_path: Path,
    postgres: PostgresServer,
    seaweedfs: SeaweedFS,
    monkeypatch: pytest.MonkeyPatch,
) -> Deployment:
    return _init(tmp_path, postgres, seaweedfs, monkeypatch)


def rows(dep: Deployment) -> dict[str, bytes]:
    with psycopg.connect(dep.catalog_dsn) as conn:
        found = conn.execute(
            "SELECT name, wrapped FROM shared_keys WHERE deployment = %s", [dep.deployment_id]
        ).fetchall()
    return {str(n): bytes(w) for n, w in found}


def decide_and_record(store: Store, refs: list[str]) -> tuple[str, bytes]:
    """Decide ``refs`` on ``store``; record the first selected call; (recording id, audio)."""
    clock = FixedClock(AT)
    audio = random.Random(7).randbytes(8000)
    with (
        store.open_log(clock=clock) as log,
        store.sampler(clock=clock, log=log) as sampler,
        Vault(store, log, clock=clock) as vault,
    ):
        decisions = [sampler.decide(r) for r in refs]
        chosen = next(d for d in decisions if d.record)
        return write_call(vault, chosen, audio), audio


# -- shared keys wrapped by a key on the token -------------------------------------------------


def test_three_nodes_on_a_token_key_decide_alike_and_open_each_others_recordings(
    on_token: Deployment, tmp_path: Path
) -> None:
    assert on_token.key_file is None and on_token.deployment_key is not None
    assert not list(tmp_path.glob("*.key"))  # no deployment key file anywhere
    a, b, c = nodes(on_token, tmp_path, "node-a", "node-b", "node-c")
    assert (
        json.loads((tmp_path / "node-a" / "store.json").read_text())["deployment"]["key_file"] == ""
    )
    refs = [f"call-{i}" for i in range(30)]
    rid, audio = decide_and_record(a, refs)
    clock = FixedClock(AT)
    answers = []
    for store in (b, c):
        with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
            answers.append([sampler.decide(r) for r in refs])
    assert [d.record for d in answers[0]] == [d.record for d in answers[1]]
    assert all(d.repeat for d in answers[1])
    with c.open_log(clock=clock) as log, Vault(c, log, clock=clock) as vault:
        assert vault.open(rid).audio == audio
    epoch = answers[0][0].epoch_id
    secret = c.keyring.epoch_key(epoch).secret_bytes()
    assert a.keyring.epoch_key(epoch).secret_bytes() == secret
    # Nothing usable in the database: every row is a 61-byte AES-GCM blob, no key in clear,
    # and no software key opens it (only the token's key, which never leaves the token).
    stored = rows(on_token)
    assert {"check", "pseudonym", f"epoch/{epoch}"} <= set(stored)
    assert any(n.startswith("bucket/") for n in stored)
    assert all(len(w) == 61 and secret not in w for w in stored.values())
    guess = DeploymentKey.create(tmp_path / "guess.key")
    keys = SharedKeys(on_token.catalog_dsn, on_token.deployment_id, guess)
    try:
        with pytest.raises(KeyringError, match="does not unwrap"):
            keys.get(f"epoch/{epoch}")
    finally:
        keys.close()
    wrapper = on_token.wrapping_key()
    assert isinstance(wrapper, Pkcs11WrappingKey)
    try:
        info = wrapper.attributes()
    finally:
        wrapper.close()
    assert info["sensitive"] and not info["extractable"] and info["never_extractable"]


def test_a_node_without_the_pin_is_refused(
    on_token: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PIN_ENV)
    with pytest.raises(StoreError, match=f"set its user PIN in the environment variable {PIN_ENV}"):
        nodes(on_token, tmp_path, "node-x")
    assert not (tmp_path / "node-x").exists()


def test_a_deployment_file_naming_a_label_the_token_lacks_is_refused_at_node_init(
    on_token: Deployment,
    tmp_path: Path,
    cli: Callable[..., tuple[int, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = json.loads(on_token.path.read_text())
    doc["deployment_key"]["label"] = "not-on-this-token"
    on_token.path.write_text(json.dumps(doc))
    code, out = cli(
        "node", "init", tmp_path / "node-x", "--deployment", on_token.path, "--name", "node-x"
    )
    assert code == 3, out
    assert "has no key labelled 'not-on-this-token'" in capsys.readouterr().err
    assert not (tmp_path / "node-x").exists()


def test_a_node_on_another_token_with_the_same_labels_is_refused_at_node_init(
    on_token: Deployment, tmp_path: Path, softhsm: SoftHsm
) -> None:
    """Another token that has the same token label and a key with the deployment key's label
    (an operator's mix-up): its key does not open the deployment's rows, and the node is
    refused before anything is made. SoftHSM reads its token folder once per process, so the
    node runs in a process of its own, on a second token folder."""
    util = shutil.which("softhsm2-util")
    assert util is not None
    assert on_token.deployment_key is not None
    other = tmp_path / "other-hsm"
    (other / "tokens").mkdir(parents=True, mode=0o700)
    conf = other / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {other / 'tokens'}\nobjectstore.backend = file\n")
    env = {**softhsm.env, "SOFTHSM2_CONF": str(conf), PIN_ENV: softhsm.pin}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    made = subprocess.run(
        [util, "--init-token", "--free", "--label", softhsm.label, "--pin", softhsm.pin,
         "--so-pin", softhsm.so_pin],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    label = on_token.deployment_key["label"]
    program = (
        "import os, sys\n"
        "from sampledrec.keys.keystore import Pkcs11WrappingKey\n"
        "pin = os.environ[sys.argv[3]]\n"
        "k = Pkcs11WrappingKey(sys.argv[1], sys.argv[2], pin, label=sys.argv[4])\n"
        "assert k.ensure()\n"
        "k.close()\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", program, softhsm.module, softhsm.label, PIN_ENV, label],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    done = subprocess.run(
        [sys.executable, "-c", "from sampledrec.cli.app import entry_point; entry_point()",
         "node", "init", str(tmp_path / "node-x"), "--deployment", str(on_token.path),
         "--name", "node-x"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"does not unwrap with the key {label!r} on PKCS#11 token" in done.stderr
    assert not (tmp_path / "node-x").exists()


# -- rotating the deployment key ---------------------------------------------------------------


def test_rotating_a_key_file_rewraps_every_row_and_refuses_the_old_key_clearly(
    in_file: Deployment,
    tmp_path: Path,
    cli: Callable[..., tuple[int, str]],
    cli_json: Callable[..., tuple[int, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = nodes(in_file, tmp_path, "node-a", "node-b")
    rid, audio = decide_and_record(a, [f"call-{i}" for i in range(20)])
    epoch = FixedClock(AT).now().date().isoformat()
    secret = a.keyring.epoch_key(epoch).secret_bytes()
    before = rows(in_file)
    old_key = in_file.key_file
    assert old_key is not None
    code, doc = cli_json(
        "deployment", "rotate-key", "--deployment", in_file.path,
        "--new-key-file", tmp_path / "new.key",
    )  # fmt: skip
    assert code == 0, doc
    assert doc["rotated"] == len(before)
    after = rows(in_file)
    assert set(after) == set(before) and all(after[n] != before[n] for n in before)
    assert (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    assert Deployment.load(in_file.path).key_file == (tmp_path / "new.key").resolve()
    # A node still holding the old key: a clear refusal, never a silent wrong key.
    stale = Store.open(a.path)
    with pytest.raises(KeyringError, match=r"was rotated on .* install the deployment's new key"):
        stale.keyring.epoch_key(epoch)
    with pytest.raises(KeyringError, match="was rotated"):  # nor can it add keys
        stale.keystore.ensure_bucket("bucket-2031-01-01")
    code, _ = cli("decide", "--store", a.path, "--call-ref", "call-1", "--at", AT)
    err = capsys.readouterr().err
    assert code == 3 and "was rotated on" in err and "Traceback" not in err
    # The operator installs the new key on every node: everything as before.
    shutil.copyfile(tmp_path / "new.key", old_key)
    for node in (a, b):
        fresh = Store.open(node.path)
        assert fresh.keyring.epoch_key(epoch).secret_bytes() == secret
    clock = FixedClock(AT)
    fresh = Store.open(b.path)
    with fresh.open_log(clock=clock) as log, Vault(fresh, log, clock=clock) as vault:
        assert vault.open(rid).audio == audio
    # Rotating to the key in use is refused.
    with pytest.raises(InvalidArgument, match="current deployment key"):
        Deployment.load(in_file.path).rotate_key(new_key_file=old_key, principal="t")


def test_a_rotation_that_fails_midway_changes_nothing(in_file: Deployment, tmp_path: Path) -> None:
    (a,) = nodes(in_file, tmp_path, "node-a")
    decide_and_record(a, [f"call-{i}" for i in range(20)])
    before = rows(in_file)
    assert len(before) >= 4
    keys = in_file.shared_keys()
    seen: list[str] = []

    def fail_at_the_third(name: str) -> None:
        seen.append(name)
        if len(seen) == 3:
            raise OSError("the machine lost its disk")

    try:
        new = DeploymentKey.create(tmp_path / "new.key")
        with pytest.raises(OSError, match="lost its disk"):
            keys.rotate(new, principal="t", on_row=fail_at_the_third)
    finally:
        keys.close()
    assert len(seen) == 3
    assert rows(in_file) == before  # the two rows written before the failure rolled back
    with psycopg.connect(in_file.catalog_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM shared_key_rotations").fetchone() == (0,)
    epoch = FixedClock(AT).now().date().isoformat()
    assert Store.open(a.path).keyring.epoch_key(epoch)  # the old key still opens everything


def test_a_rotation_killed_before_it_commits_changes_nothing(
    in_file: Deployment, tmp_path: Path
) -> None:
    """SIGKILL of the rotating process after every row was re-wrapped in its transaction, and
    before the commit (held back by a lock the test takes on the rotations' table)."""
    (a,) = nodes(in_file, tmp_path, "node-a")
    decide_and_record(a, [f"call-{i}" for i in range(20)])
    before = rows(in_file)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with psycopg.connect(in_file.catalog_dsn) as blocker:
        blocker.execute("LOCK TABLE shared_key_rotations IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [sys.executable, "-c", "from sampledrec.cli.app import entry_point; entry_point()",
             "deployment", "rotate-key", "--deployment", str(in_file.path),
             "--new-key-file", str(tmp_path / "new.key")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with psycopg.connect(in_file.catalog_dsn, autocommit=True) as watch:
                deadline = time.monotonic() + 60
                while True:
                    waiting = watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'INSERT INTO shared_key_rotations%%'"
                    ).fetchone()
                    if waiting == (1,):
                        break
                    assert proc.poll() is None, "the rotation ended before it was blocked"
                    assert time.monotonic() < deadline, "the rotation never reached its commit"
                    time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        blocker.rollback()
    assert rows(in_file) == before
    # The deployment file was not changed either, and the old key opens everything.
    assert Deployment.load(in_file.path).key_file == in_file.key_file
    epoch = FixedClock(AT).now().date().isoformat()
    assert Store.open(a.path).keyring.epoch_key(epoch)
    # Run again, it completes.
    dep, count = in_file.rotate_key(new_key_file=tmp_path / "new.key", principal="t")
    assert count == len(before) and dep.key_file == (tmp_path / "new.key").resolve()


def test_deployment_init_on_a_token_from_the_command_line(
    tmp_path: Path,
    postgres: PostgresServer,
    seaweedfs: SeaweedFS,
    softhsm: SoftHsm,
    monkeypatch: pytest.MonkeyPatch,
    cli_json: Callable[..., tuple[int, Any]],
) -> None:
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(PIN_ENV, softhsm.pin)
    label = f"cli-{random.randbytes(6).hex()}"
    code, doc = cli_json(
        "deployment", "init", tmp_path / "deployment.json", "--name", "cli-dep",
        "--catalog", postgres.url(postgres.new_schema()),
        "--blobs", f"s3://{seaweedfs.bucket}/{seaweedfs.new_prefix('cli')}",
        "--s3-endpoint", seaweedfs.endpoint,
        "--key-pkcs11-module", softhsm.module, "--key-token", softhsm.label,
        "--key-pin-env", PIN_ENV, "--key-label", label,
    )  # fmt: skip
    assert code == 0, doc
    assert doc["key_file"] is None and doc["deployment_key"]["label"] == label
    written = json.loads((tmp_path / "deployment.json").read_text())
    assert "key_file" not in written and softhsm.pin not in json.dumps(written)
    assert not (tmp_path / "deployment.key").exists()
    code, doc = cli_json(
        "node", "init", tmp_path / "node-a", "--deployment", tmp_path / "deployment.json",
        "--name", "node-a",
    )  # fmt: skip
    assert code == 0, doc
    gc.collect()
    assert not keystore._TOKENS


def test_rotating_a_token_key_to_a_new_label(
    on_token: Deployment, tmp_path: Path, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    a, b = nodes(on_token, tmp_path, "node-a", "node-b")
    rid, audio = decide_and_record(a, [f"call-{i}" for i in range(20)])
    epoch = FixedClock(AT).now().date().isoformat()
    secret = a.keyring.epoch_key(epoch).secret_bytes()
    assert on_token.deployment_key is not None
    old_label = on_token.deployment_key["label"]
    before = rows(on_token)
    code, doc = cli_json(
        "deployment", "rotate-key", "--deployment", on_token.path,
        "--new-key-label", f"{old_label}-2",
    )  # fmt: skip
    assert code == 0, doc
    assert doc["rotated"] == len(before)
    dep = Deployment.load(on_token.path)
    assert dep.deployment_key is not None and dep.deployment_key["label"] == f"{old_label}-2"
    assert all(rows(on_token)[n] != before[n] for n in before)
    # The nodes read the label from the deployment file (here the same file on every node).
    clock = FixedClock(AT)
    fresh = Store.open(b.path)
    assert fresh.keyring.epoch_key(epoch).secret_bytes() == secret
    with fresh.open_log(clock=clock) as log, Vault(fresh, log, clock=clock) as vault:
        assert vault.open(rid).audio == audio
    # A deployment file still naming the old label: refused, saying why.
    old = on_token.wrapping_key()
    keys = SharedKeys(on_token.catalog_dsn, on_token.deployment_id, old)
    try:
        with pytest.raises(KeyringError, match=r"was rotated on .* \(to the key '"):
            keys.get(f"epoch/{epoch}")
    finally:
        keys.close()
