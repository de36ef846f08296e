"""Tests of :mod:`sampledrec.keys.keyring` and :class:`sampledrec.testing.MemoryKeyring`: epoch
keys that never leak, commitments (DESIGN.md section 4), the local keyring folder (section 6),
reveal to an auditor, and the epoch calendar."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import itertools
import json
import os
import pickle
import random
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sampledrec.errors import (
    InvalidArgument,
    InvalidKey,
    KeyNotRevealable,
    KeyringError,
    SampledrecError,
    StorePermissionError,
)
from sampledrec.keys.keyring import (
    EpochKey,
    Keyring,
    LocalKeyring,
    RevealedKey,
    epoch_commitment,
    epoch_end,
    epoch_id_at,
    epoch_start,
    epochs_ahead,
    reveal,
)
from sampledrec.testing import MemoryKeyring
from tests import strategies as sx

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "draw_v1.json").read_text(encoding="utf-8")
)
EPOCH = "2026-11-22"
SECRET = bytes(range(32))


def spec_commitment(epoch_id: str, key: bytes) -> bytes:
    """DESIGN.md section 4, written out again here rather than imported."""
    return hashlib.sha256(
        b"sampledrec/v1/epoch-commit" + epoch_id.encode("utf-8") + b"\x00" + key
    ).digest()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def days(first: str, count: int) -> list[str]:
    start = date.fromisoformat(first)
    return [(start + timedelta(days=i)).isoformat() for i in range(count)]


# --- EpochKey ---------------------------------------------------------------------------------


def secret_spellings(secret: bytes) -> list[str]:
    """Ways a secret, or 6 bytes of it, could show up in text."""
    windows = [secret[i : i + 6] for i in range(len(secret) - 5)]
    return [
        *(window.hex() for window in windows),
        *(window.hex().upper() for window in windows),
        *(repr(window)[2:-1] for window in windows),
        repr(secret),
        repr(secret)[2:-1][:40],
        str(list(secret)),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
    ]


@given(secret=sx.keys())
def test_epoch_key_text_never_contains_the_secret(secret: bytes) -> None:
    key = EpochKey(EPOCH, secret)
    texts = [repr(key), str(key), f"{key}", f"{key!r}", format(key, ""), str([key]), str({1: key})]
    for text in texts:
        assert EPOCH in text
        for spelling in secret_spellings(secret):
            assert spelling not in text


def test_epoch_key_text_with_a_printable_secret() -> None:
    secret = b"correct horse battery staple!!!!"
    assert len(secret) == 32
    key = EpochKey(EPOCH, secret)
    for text in (repr(key), str(key)):
        assert "horse" not in text
        assert secret.hex() not in text
    assert not hasattr(key, "__dict__")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_epoch_key_cannot_be_pickled(protocol: int) -> None:
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(EpochKey(EPOCH, SECRET), protocol=protocol)


def test_epoch_key_cannot_be_copied() -> None:
    key = EpochKey(EPOCH, SECRET)
    with pytest.raises(TypeError):
        copy.copy(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)
    with pytest.raises(TypeError):
        copy.deepcopy({"keys": [key]})
    with pytest.raises(TypeError):
        pickle.dumps({"keys": [key]})


def test_epoch_commitment_vectors() -> None:
    assert VECTORS["commitments"]
    for vector in VECTORS["commitments"]:
        key = bytes.fromhex(vector["key"])
        expected = bytes.fromhex(vector["commitment"])
        assert spec_commitment(vector["epoch_id"], key) == expected
        assert epoch_commitment(vector["epoch_id"], key) == expected
        assert EpochKey(vector["epoch_id"], key).commitment == expected


@given(secret=sx.keys(), moment=sx.aware_datetimes())
def test_epoch_key_commitment_matches_the_spec(secret: bytes, moment: datetime) -> None:
    epoch_id = epoch_id_at(moment)
    key = EpochKey(epoch_id, secret)
    assert key.epoch_id == epoch_id
    assert key.secret_bytes() == secret
    assert key.commitment == spec_commitment(epoch_id, secret)
    assert len(key.commitment) == 32


def test_commitment_binds_the_epoch_id_and_every_key_bit() -> None:
    base = epoch_commitment(EPOCH, SECRET)
    assert epoch_commitment("2026-11-23", SECRET) != base
    for bit in range(256):
        flipped = bytearray(SECRET)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert epoch_commitment(EPOCH, bytes(flipped)) != base


def test_epoch_key_equality_and_hash() -> None:
    a, b = EpochKey(EPOCH, SECRET), EpochKey(EPOCH, bytes(SECRET))
    assert a == b and hash(a) == hash(b)
    assert a != EpochKey("2026-11-23", SECRET)
    assert a != EpochKey(EPOCH, bytes(32))
    assert a != SECRET


@pytest.mark.parametrize(
    "secret",
    [b"", bytes(16), bytes(31), bytes(33), bytearray(32), "k" * 32],
    ids=["empty", "16", "31", "33", "bytearray", "str"],
)
def test_epoch_key_refuses_a_bad_secret(secret: Any) -> None:
    with pytest.raises(InvalidKey) as info:
        EpochKey(EPOCH, secret)
    assert isinstance(info.value, ValueError)
    assert "32" in str(info.value)


# --- epoch calendar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 11, 22, 0, 0, tzinfo=UTC), "2026-11-22"),
        (datetime(2026, 11, 22, 23, 59, 59, 999999, tzinfo=UTC), "2026-11-22"),
        (datetime(2026, 11, 22, 19, 30, tzinfo=timezone(timedelta(hours=-5))), "2026-11-23"),
        (datetime(2026, 11, 22, 18, 59, tzinfo=timezone(timedelta(hours=-5))), "2026-11-22"),
        (datetime(2026, 11, 23, 8, 0, tzinfo=timezone(timedelta(hours=10))), "2026-11-22"),
        (datetime(2027, 1, 1, 13, 59, tzinfo=timezone(timedelta(hours=14))), "2026-12-31"),
        (datetime(2026, 12, 31, 12, 0, tzinfo=timezone(timedelta(hours=-12))), "2027-01-01"),
        (
            datetime(2028, 2, 29, 3, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2028-02-28",
        ),
    ],
)
def test_epoch_id_is_the_utc_day(moment: datetime, expected: str) -> None:
    assert epoch_id_at(moment) == expected


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 11, 22, 12, 0)
    for call in (
        lambda: epoch_id_at(naive),
        lambda: epochs_ahead(naive),
        lambda: reveal(MemoryKeyring(seed=b"s"), [EPOCH], now=naive),
    ):
        with pytest.raises(InvalidArgument, match="time zone") as info:
            call()
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("epoch_id", "end"),
    [
        ("2026-11-22", datetime(2026, 11, 23, tzinfo=UTC)),
        ("2026-11-30", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-31", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2028-02-28", datetime(2028, 2, 29, tzinfo=UTC)),
        ("2027-02-28", datetime(2027, 3, 1, tzinfo=UTC)),
    ],
)
def test_epoch_end_is_the_next_utc_midnight(epoch_id: str, end: datetime) -> None:
    assert epoch_end(epoch_id) == end
    assert epoch_end(epoch_id).utcoffset() == timedelta(0)
    assert epoch_start(epoch_id) == end - timedelta(days=1)
    assert epoch_id_at(end) != epoch_id
    assert epoch_id_at(end - timedelta(microseconds=1)) == epoch_id


@given(moment=sx.aware_datetimes())
def test_every_moment_lies_in_its_epoch(moment: datetime) -> None:
    epoch_id = epoch_id_at(moment)
    assert epoch_start(epoch_id) <= moment < epoch_end(epoch_id)
    assert epoch_end(epoch_id) - epoch_start(epoch_id) == timedelta(days=1)


@given(moment=sx.aware_datetimes(), count=st.integers(1, 40))
def test_epochs_ahead_are_consecutive_days(moment: datetime, count: int) -> None:
    ahead = epochs_ahead(moment, count)
    assert ahead == days(epoch_id_at(moment), count)
    for earlier, later in itertools.pairwise(ahead):
        assert epoch_end(earlier) == epoch_start(later)


def test_epochs_ahead_default_is_a_week() -> None:
    assert epochs_ahead(datetime(2026, 11, 22, 9, tzinfo=UTC)) == days("2026-11-22", 7)


@pytest.mark.parametrize(
    "epoch_id",
    [
        "2026-02-30",
        "2026-13-01",
        "2026-1-5",
        "20261122",
        "2026-11-22T00:00",
        "2026-11-22\n",
        " 2026-11-22",
        "\uff12\uff10\uff12\uff16-11-22",  # full-width digits
        "",
        20261122,
        None,
    ],
)
def test_bad_epoch_ids_are_refused(epoch_id: Any) -> None:
    for call in (lambda: epoch_end(epoch_id), lambda: EpochKey(epoch_id, SECRET)):
        with pytest.raises(InvalidArgument, match="epoch_id") as info:
            call()
        assert isinstance(info.value, ValueError)


# --- reveal -----------------------------------------------------------------------------------


def test_reveal_refuses_an_epoch_that_has_not_ended() -> None:
    keyring = MemoryKeyring(seed=b"reveal")
    keyring.ensure_epochs(["2026-11-21", "2026-11-22", "2026-11-23"])
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    for epoch_id in ("2026-11-22", "2026-11-23"):
        with pytest.raises(KeyNotRevealable) as info:
            reveal(keyring, [epoch_id], now=now)
        assert isinstance(info.value, KeyringError)
        assert epoch_id in str(info.value)
    with pytest.raises(KeyNotRevealable):
        reveal(keyring, ["2026-11-21", "2026-11-22"], now=now)
    just_before = epoch_end("2026-11-22") - timedelta(microseconds=1)
    with pytest.raises(KeyNotRevealable):
        reveal(keyring, ["2026-11-22"], now=just_before)
    # The same instant written in another time zone is still before the end.
    with pytest.raises(KeyNotRevealable):
        reveal(keyring, ["2026-11-22"], now=just_before.astimezone(timezone(timedelta(hours=9))))


def test_reveal_gives_ended_epochs_with_their_commitments() -> None:
    keyring = MemoryKeyring(seed=b"reveal")
    keyring.ensure_epochs(["2026-11-21", "2026-11-22"])
    at_end = epoch_end("2026-11-22").astimezone(timezone(timedelta(hours=-8)))
    revealed = reveal(keyring, ["2026-11-21", "2026-11-22"], now=at_end)
    assert [r.epoch_id for r in revealed] == ["2026-11-21", "2026-11-22"]
    for item in revealed:
        key = keyring.epoch_key(item.epoch_id)
        assert item.key == key.secret_bytes()
        assert item.commitment == key.commitment == spec_commitment(item.epoch_id, item.key)
        assert item.matches_commitment()
        assert item.key.hex() not in repr(item)


def test_reveal_of_an_unknown_epoch_is_a_keyring_error() -> None:
    with pytest.raises(KeyringError):
        reveal(MemoryKeyring(seed=b"x"), ["2020-01-01"], now=datetime.now(UTC))


def test_revealed_key_detects_a_wrong_key() -> None:
    genuine = RevealedKey(EPOCH, SECRET, spec_commitment(EPOCH, SECRET))
    assert genuine.matches_commitment()
    flipped = bytearray(SECRET)
    flipped[31] ^= 1
    for forged in (
        dataclasses.replace(genuine, key=bytes(32)),
        dataclasses.replace(genuine, key=bytes(flipped)),
        dataclasses.replace(genuine, epoch_id="2026-11-23"),
        dataclasses.replace(genuine, commitment=bytes(32)),
        dataclasses.replace(genuine, key=SECRET[:31]),
    ):
        assert not forged.matches_commitment()


# --- LocalKeyring -----------------------------------------------------------------------------


@pytest.fixture
def keyring_dir(tmp_path: Path) -> Path:
    return tmp_path / "store" / "keys"


def test_local_keyring_folder_is_0700_and_files_0600(keyring_dir: Path) -> None:
    with umask(0):  # permissions must not depend on the caller's umask
        keyring = LocalKeyring(keyring_dir, create=True)
        keyring.ensure_epochs(days(EPOCH, 3))
    assert mode_of(keyring_dir) == 0o700
    epoch_files = sorted((keyring_dir / "epochs").glob("*.key"))
    assert [p.name for p in epoch_files] == [f"{e}.key" for e in days(EPOCH, 3)]
    # Whatever else the keyring keeps, every folder is 0700 and every file 0600.
    for path in [keyring_dir, *keyring_dir.rglob("*")]:
        mode = path.lstat().st_mode
        assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), path
        assert mode_of(path) == (0o700 if stat.S_ISDIR(mode) else 0o600), path
    for path in [keyring_dir / "pseudonym.key", *epoch_files]:
        assert path.stat().st_size == 32
    assert len(keyring.pseudonym_key()) == 32


def test_ensure_epochs_creates_once_and_returns_only_new_keys(keyring_dir: Path) -> None:
    keyring = LocalKeyring(keyring_dir, create=True)
    first = keyring.ensure_epochs(days("2026-11-22", 3))
    assert [k.epoch_id for k in first] == days("2026-11-22", 3)
    again = keyring.ensure_epochs(days("2026-11-22", 5))
    assert [k.epoch_id for k in again] == ["2026-11-25", "2026-11-26"]
    assert keyring.ensure_epochs(days("2026-11-22", 5)) == []
    assert keyring.epoch_ids() == days("2026-11-22", 5)
    assert len({k.secret_bytes() for k in [*first, *again]}) == 5
    # Nothing was replaced: the keys read back are the keys first returned.
    for key in first:
        assert keyring.epoch_key(key.epoch_id) == key
        path = keyring_dir / "epochs" / f"{key.epoch_id}.key"
        assert path.read_bytes() == key.secret_bytes()
    assert not [p for p in (keyring_dir / "epochs").iterdir() if p.name.startswith(".")]


def test_local_keyring_reopens_with_the_same_keys(keyring_dir: Path) -> None:
    first = LocalKeyring(keyring_dir, create=True)
    created = {k.epoch_id: k.commitment for k in first.ensure_epochs(days(EPOCH, 4))}
    pseudonym = first.pseudonym_key()
    for reopened in (LocalKeyring(keyring_dir), LocalKeyring(keyring_dir, create=True)):
        assert reopened.ensure_epochs(days(EPOCH, 4)) == []
        assert {e: reopened.epoch_key(e).commitment for e in days(EPOCH, 4)} == created
        assert reopened.pseudonym_key() == pseudonym


def test_local_keyring_is_a_keyring_that_refuses_pickling(keyring_dir: Path) -> None:
    keyring = LocalKeyring(keyring_dir, create=True)
    assert isinstance(keyring, Keyring)
    with pytest.raises(TypeError):
        pickle.dumps(keyring)


def test_unknown_epoch_is_a_keyring_error(keyring_dir: Path) -> None:
    keyring = LocalKeyring(keyring_dir, create=True)
    with pytest.raises(KeyringError, match="2026-11-22"):
        keyring.epoch_key("2026-11-22")


def test_missing_keyring_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        LocalKeyring(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("relative", "mode", "wanted"),
    [
        (".", 0o755, "chmod 700"),
        (".", 0o701, "chmod 700"),
        ("epochs", 0o750, "chmod 700"),
        ("epochs/2026-11-22.key", 0o644, "chmod 600"),
        ("epochs/2026-11-22.key", 0o602, "chmod 600"),
        ("pseudonym.key", 0o640, "chmod 600"),
    ],
)
def test_keyring_readable_by_others_is_refused(
    keyring_dir: Path, relative: str, mode: int, wanted: str
) -> None:
    LocalKeyring(keyring_dir, create=True).ensure_epochs([EPOCH])
    target = keyring_dir / relative
    target.chmod(mode)
    with pytest.raises(StorePermissionError) as info:
        LocalKeyring(keyring_dir)
    message = str(info.value)
    assert "chmod" in message and wanted in message
    assert str(target.resolve()) in message or str(target) in message
    assert isinstance(info.value, SampledrecError)
    target.chmod(0o700 if target.is_dir() else 0o600)
    assert LocalKeyring(keyring_dir).epoch_key(EPOCH).epoch_id == EPOCH


def test_symbolic_link_in_keyring_is_refused(keyring_dir: Path, tmp_path: Path) -> None:
    LocalKeyring(keyring_dir, create=True)
    outside = tmp_path / "elsewhere.key"
    outside.write_bytes(bytes(32))
    outside.chmod(0o600)
    (keyring_dir / "epochs" / f"{EPOCH}.key").symlink_to(outside)
    with pytest.raises(StorePermissionError, match="symbolic link"):
        LocalKeyring(keyring_dir)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_damaged_key_file_is_a_keyring_error(keyring_dir: Path, size: int) -> None:
    LocalKeyring(keyring_dir, create=True).ensure_epochs([EPOCH])
    path = keyring_dir / "epochs" / f"{EPOCH}.key"
    path.write_bytes(b"\x5a" * size)
    assert mode_of(path) == 0o600
    keyring = LocalKeyring(keyring_dir)
    with pytest.raises(KeyringError, match="damaged") as info:
        keyring.epoch_key(EPOCH)
    assert str(size) in str(info.value)
    assert keyring.ensure_epochs([EPOCH]) == []  # a damaged key is never silently replaced
    assert path.read_bytes() == b"\x5a" * size


def check_race_outcome(
    keyring_dir: Path,
    epochs: list[str],
    created: list[list[str]],
    final: list[dict[str, str]],
) -> None:
    """Every epoch was created by exactly one racer, and all racers ended with its key."""
    flat = [epoch_id for ids in created for epoch_id in ids]
    assert sorted(flat) == sorted(epochs)
    on_disk = {
        e: spec_commitment(e, (keyring_dir / "epochs" / f"{e}.key").read_bytes()).hex()
        for e in epochs
    }
    for seen in final:
        assert seen == on_disk
    assert LocalKeyring(keyring_dir).epoch_ids() == sorted(epochs)
    assert not [p for p in (keyring_dir / "epochs").iterdir() if p.name.startswith(".")]


def test_threads_racing_on_one_folder_end_with_one_key_per_epoch(keyring_dir: Path) -> None:
    LocalKeyring(keyring_dir, create=True)
    epochs = days("2026-11-22", 30)
    racers = 8
    keyrings = [LocalKeyring(keyring_dir) for _ in range(racers)]
    barrier = threading.Barrier(racers)

    def race(index: int) -> tuple[list[str], dict[str, str]]:
        order = epochs[:]
        random.Random(index).shuffle(order)
        barrier.wait()
        mine = [k.epoch_id for k in keyrings[index].ensure_epochs(order)]
        return mine, {e: keyrings[index].epoch_key(e).commitment.hex() for e in epochs}

    with ThreadPoolExecutor(racers) as pool:
        results = list(pool.map(race, range(racers)))
    check_race_outcome(keyring_dir, epochs, [r[0] for r in results], [r[1] for r in results])


RACER = textwrap.dedent(
    """
    import json, sys
    from sampledrec.keys.keyring import LocalKeyring

    keyring = LocalKeyring(sys.argv[1])
    epochs = json.loads(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    created = [key.epoch_id for key in keyring.ensure_epochs(epochs)]
    final = {e: keyring.epoch_key(e).commitment.hex() for e in epochs}
    print(json.dumps({"created": created, "final": final}), flush=True)
    """
)


def test_processes_racing_on_one_folder_end_with_one_key_per_epoch(keyring_dir: Path) -> None:
    LocalKeyring(keyring_dir, create=True)
    epochs = days("2026-11-22", 30)
    procs = []
    for index in range(3):
        order = epochs[:]
        random.Random(index).shuffle(order)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RACER, str(keyring_dir), json.dumps(order)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for proc in procs:  # every racer has opened the keyring before any creates a key
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0] * len(procs)
    results = [json.loads(out) for out in outputs]
    check_race_outcome(
        keyring_dir, epochs, [r["created"] for r in results], [r["final"] for r in results]
    )


# --- MemoryKeyring ----------------------------------------------------------------------------


def test_memory_keyring_with_a_seed_is_deterministic() -> None:
    a, b = MemoryKeyring(seed=b"seed"), MemoryKeyring(seed=b"seed")
    epochs = days(EPOCH, 3)
    keys_a = a.ensure_epochs(epochs)
    keys_b = b.ensure_epochs(reversed(epochs))
    assert [k.epoch_id for k in keys_a] == epochs
    assert {k.epoch_id: k for k in keys_a} == {k.epoch_id: k for k in keys_b}
    assert a.pseudonym_key() == b.pseudonym_key()
    other = MemoryKeyring(seed=b"other seed")
    other.ensure_epochs(epochs)
    assert all(other.epoch_key(e) != a.epoch_key(e) for e in epochs)
    assert len({a.epoch_key(e).secret_bytes() for e in epochs}) == 3


def test_memory_keyring_without_a_seed_is_random() -> None:
    a, b = MemoryKeyring(), MemoryKeyring()
    a.ensure_epochs([EPOCH])
    b.ensure_epochs([EPOCH])
    assert a.epoch_key(EPOCH) != b.epoch_key(EPOCH)
    assert a.pseudonym_key() != b.pseudonym_key()


def test_memory_keyring_behaves_like_a_keyring() -> None:
    keyring = MemoryKeyring(seed=b"s")
    assert isinstance(keyring, Keyring)
    assert [k.epoch_id for k in keyring.ensure_epochs(["2026-11-23", EPOCH])] == [
        "2026-11-23",
        EPOCH,
    ]
    assert keyring.ensure_epochs([EPOCH, "2026-11-24"])[0].epoch_id == "2026-11-24"
    assert keyring.epoch_ids() == days(EPOCH, 3)
    with pytest.raises(KeyringError):
        keyring.epoch_key("2030-01-01")
    with pytest.raises(InvalidArgument):
        keyring.ensure_epochs(["2026-02-30"])
    with pytest.raises(TypeError):
        pickle.dumps(keyring)
