"""Recordings on S3 object storage (sampledrec.vault.s3), against a real server: SeaweedFS,
started once per session by tests/seaweedfs.py. The blob-store contract itself runs against
S3 in tests/test_backends.py; here is what is particular to object storage: multipart uploads,
ranged reads, what an aborted or deleted write leaves (nothing), what the server sees (no
plaintext), errors, credentials, and a store whose recordings live in a bucket."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from sampledrec import FixedClock, Store
from sampledrec.cli import main
from sampledrec.errors import (
    InvalidArgument,
    StoreError,
    StoreNotFound,
    StorePermissionError,
)
from sampledrec.retention.sweep import Retention
from sampledrec.store import s3_blobs_backend
from sampledrec.vault.audio import AudioFormat, frames
from sampledrec.vault.recorder import Vault
from sampledrec.vault.s3 import MIN_PART_SIZE, S3BlobStore, S3Credentials, parse_s3_url
from sampledrec.vault.staging import StagedBlobStore

from .conftest import CliRun
from .seaweedfs import SeaweedFS, free_ports

NAME = "bucket-2030-03-06/rec-0001.sdr"
PCM = AudioFormat("pcm16", 8000, 1)
POLICY = """
[default]
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call is recorded"
retention = "2 days"
"""
AT = "2030-03-04T10:00:00Z"


def read(blobs: S3BlobStore, name: str) -> bytes:
    with blobs.open(name) as fh:
        return fh.read()


def gets(blobs: S3BlobStore) -> list[str | None]:
    """Record the Range of every GetObject the store sends from now on."""
    seen: list[str | None] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        seen.append(params.get("Range"))

    blobs._client.meta.events.register("provide-client-params.s3.GetObject", note)
    return seen


# -- writing: parts, publishing, aborting -----------------------------------------------------


def test_a_long_blob_goes_up_in_parts_and_appears_whole_when_closed(seaweedfs: SeaweedFS) -> None:
    blobs = seaweedfs.blob_store(part_size=MIN_PART_SIZE)
    key = f"{blobs.prefix}/{NAME}"
    data = random.Random(1).randbytes(2 * MIN_PART_SIZE + 12_345)
    writer = blobs.create(NAME)
    for start in range(0, len(data), 64 * 1024 + 7):
        writer.write(data[start : start + 64 * 1024 + 7])
    # Two parts are up, in an upload nobody sees: the object is still the empty one.
    assert seaweedfs.uploads(key) == [key]
    assert blobs.size(NAME) == 0
    writer.close()
    assert seaweedfs.uploads(key) == []
    assert blobs.size(NAME) == len(data)
    assert read(blobs, NAME) == data
    assert seaweedfs.blob_store(blobs.prefix).list() == [NAME]


def test_a_short_blob_is_one_put_when_closed(seaweedfs: SeaweedFS) -> None:
    blobs = seaweedfs.blob_store()
    key = f"{blobs.prefix}/{NAME}"
    writer = blobs.create(NAME)
    writer.write(b"sealed " * 1000)
    assert seaweedfs.uploads(key) == []
    assert blobs.size(NAME) == 0
    writer.close()
    assert read(blobs, NAME) == b"sealed " * 1000


def test_writing_goes_on_after_a_sync_published_a_long_prefix(seaweedfs: SeaweedFS) -> None:
    blobs = seaweedfs.blob_store(part_size=MIN_PART_SIZE)
    other = seaweedfs.blob_store(blobs.prefix)
    data = random.Random(2).randbytes(3 * MIN_PART_SIZE)
    cut = MIN_PART_SIZE + 1000
    writer = blobs.create(NAME)
    writer.write(data[:cut])
    writer.sync()  # completes the upload: the object is the prefix
    assert other.size(NAME) == cut
    writer.write(data[cut : cut + 10])
    writer.sync()  # a new upload: the published prefix (copied on the server), then the rest
    assert read(other, NAME) == data[: cut + 10]
    writer.write(data[cut + 10 :])
    writer.close()
    assert read(other, NAME) == data
    assert seaweedfs.uploads(f"{blobs.prefix}/") == []


@pytest.mark.parametrize("same_handle", [True, False], ids=["same handle", "another process"])
def test_deleting_a_blob_being_written_leaves_no_object_and_no_upload(
    seaweedfs: SeaweedFS, same_handle: bool
) -> None:
    blobs = seaweedfs.blob_store(part_size=MIN_PART_SIZE)
    key = f"{blobs.prefix}/{NAME}"
    writer = blobs.create(NAME)
    writer.write(random.Random(3).randbytes(MIN_PART_SIZE + 10))  # one part up
    assert seaweedfs.uploads(key) == [key]
    # A recorder's abort deletes in its own process; crash recovery in another one, where
    # only the server knows of the upload the crashed writer left.
    deleter = blobs if same_handle else seaweedfs.blob_store(blobs.prefix)
    assert deleter.delete(NAME) is True
    assert seaweedfs.uploads(key) == []
    assert seaweedfs.objects(blobs.prefix) == {}
    if same_handle:
        with pytest.raises(ValueError, match="deleted"):
            writer.write(b"more")


# -- reading: ranges ---------------------------------------------------------------------------


def test_a_large_blob_is_read_in_ranges(seaweedfs: SeaweedFS) -> None:
    blobs = seaweedfs.blob_store(read_block=64 * 1024)
    data = random.Random(4).randbytes(1_000_000)
    blobs.put(NAME, data)
    seen = gets(blobs)
    with blobs.open(NAME) as fh:
        fh.seek(700_000)
        assert fh.read(100) == data[700_000:700_100]
        fh.seek(-10, 2)
        assert fh.read() == data[-10:]
    assert seen == ["bytes=0-65535", "bytes=655360-720895", "bytes=983040-999999"]


def test_a_large_blob_replaced_while_open_is_not_read_mixed(seaweedfs: SeaweedFS) -> None:
    blobs = seaweedfs.blob_store(read_block=64 * 1024)
    old, new = random.Random(5).randbytes(300_000), random.Random(6).randbytes(300_000)
    blobs.put(NAME, old)
    with blobs.open(NAME) as fh:
        assert fh.read(10) == old[:10]
        blobs.put(NAME, new)
        fh.seek(200_000)
        with pytest.raises(OSError, match="replaced or deleted while it was open"):
            fh.read(10)


# -- what the server sees ---------------------------------------------------------------------


def pattern_found(pattern: bytes, haystack: bytes, probes: int = 32, width: int = 32) -> bool:
    """Whether any of ``probes`` pieces of ``pattern`` (``width`` bytes, evenly spaced) is in
    ``haystack``: a copy of any stretch of the pattern longer than the spacing holds one."""
    step = max(1, (len(pattern) - width) // (probes - 1))
    pieces = {pattern[i : i + width] for i in range(0, len(pattern) - width + 1, step)}
    return any(piece in haystack for piece in pieces)


def on_disk(folder: Path) -> Iterator[bytes]:
    for path in folder.rglob("*"):
        if path.is_file():
            yield path.read_bytes()


@pytest.fixture
def s3_store(tmp_path: Path, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store whose recordings go to the test bucket, credentials from the environment."""
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "p.toml").write_text(POLICY)
    url = f"s3://{seaweedfs.bucket}/{seaweedfs.new_prefix('store')}"
    backend = s3_blobs_backend(url, endpoint=seaweedfs.endpoint)
    return Store.init(tmp_path / "s", policy=tmp_path / "p.toml", backends={"blobs": backend})


def record(store: Store, clock: FixedClock, audio: bytes, call: str = "call-1") -> str:
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        decision = store.sampler(clock=clock, log=log).decide(call, {"agent": "a1"})
        with vault.record(decision, audio_format=PCM, chunk_size=4096) as rec:
            for frame in frames(audio, PCM, 20):
                rec.write(frame)
    return rec.recording_id


def test_no_plaintext_audio_reaches_the_object_storage(
    s3_store: Store, seaweedfs: SeaweedFS
) -> None:
    # 4 s of noise as pcm16 at 8 kHz, seeded apart from every other test's bytes.
    audio = random.Random("no plaintext leaves the node").randbytes(16_000 * 4)
    record(s3_store, FixedClock(AT), audio)
    prefix = s3_store.backends["blobs"]["prefix"]
    objects = seaweedfs.objects(prefix)
    assert len(objects) == 1 and len(next(iter(objects.values()))) > len(audio)
    assert not any(pattern_found(audio, blob) for blob in objects.values())
    # Nor anywhere in the server's own files; the check finds plaintext where it is.
    assert not any(pattern_found(audio, stored) for stored in on_disk(seaweedfs.data_dir))
    seaweedfs.blob_store(prefix).put("control/plain.sdr", audio)
    assert pattern_found(
        audio, seaweedfs.objects(f"{prefix}/control")[f"{prefix}/control/plain.sdr"]
    )
    assert any(pattern_found(audio, stored) for stored in on_disk(seaweedfs.data_dir))
    # And the store keeps no recording on local disk once it is uploaded.
    assert not (s3_store.path / "recordings").exists()
    assert list(on_disk(s3_store.staging_path)) == []


def test_a_store_on_s3_records_reads_back_and_sweeps(s3_store: Store, seaweedfs: SeaweedFS) -> None:
    clock = FixedClock(AT)
    audio = random.Random(8).randbytes(16_000 * 3)
    rid = record(s3_store, clock, audio)
    prefix = s3_store.backends["blobs"]["prefix"]
    [key] = seaweedfs.objects(prefix)
    assert key.startswith(f"{prefix}/bucket-2030-03-06/") and key.endswith(f"{rid}.sdr")
    with s3_store.open_log(clock=clock) as log, Vault(s3_store, log, clock=clock) as vault:
        assert isinstance(vault.blobs, StagedBlobStore)
        assert isinstance(vault.blobs.remote, S3BlobStore)
        assert vault.blobs.pending() == [] and vault.blobs.abandoned() == []
        assert vault.open(rid).audio == audio
        assert vault.read_range(rid, 1000, 1500) == audio[16_000:24_000]
        out = vault.export(rid, s3_store.path.parent / "call.wav")
        assert out.read_bytes().endswith(audio)
    later = FixedClock("2030-03-07T00:00:01Z")
    with s3_store.open_log(clock=later) as log, Vault(s3_store, log, clock=later) as vault:
        report = Retention(vault, clock=later).sweep()
    assert report.expired == [rid]
    assert seaweedfs.objects(prefix) == {}
    assert seaweedfs.uploads(f"{prefix}/") == []


def test_an_aborted_recording_leaves_nothing_in_the_bucket(
    s3_store: Store, seaweedfs: SeaweedFS
) -> None:
    clock = FixedClock(AT)
    prefix = s3_store.backends["blobs"]["prefix"]
    blobs = seaweedfs.blob_store(prefix, part_size=MIN_PART_SIZE)
    with s3_store.open_log(clock=clock) as log, Vault(s3_store, log, clock=clock, blobs=blobs) as v:
        decision = s3_store.sampler(clock=clock, log=log).decide("call-x", {"agent": "a1"})
        rec = v.record(decision, audio_format=PCM)
        log.flush()
        noise = random.Random(9).randbytes(MIN_PART_SIZE // 8)
        for _ in range(10):  # more than a part: an upload is under way
            rec.write(noise)
        assert seaweedfs.uploads(f"{prefix}/") != []
        rec.abort()
    assert seaweedfs.uploads(f"{prefix}/") == []
    assert seaweedfs.objects(prefix) == {}


CRASHING = """
import random, os, sys
from sampledrec import FixedClock, Store
from sampledrec.vault.audio import AudioFormat
from sampledrec.vault.recorder import Vault
store = Store.open(sys.argv[1])
clock = FixedClock("2030-03-04T10:00:00Z")
log = store.open_log(clock=clock)
vault = Vault(store, log, clock=clock)
d = store.sampler(clock=clock, log=log).decide("crash", {"agent": "a1"})
rec = vault.record(d, audio_format=AudioFormat("pcm16", 8000, 1))
log.flush()  # the decision and the opened entry: the audio goes to disk as it comes
noise = random.Random(sys.argv[3]).randbytes(320 * 500)  # 10 s
for _ in range(int(sys.argv[2])):
    rec.write(noise)
os._exit(9)  # the process dies mid-call
"""


@pytest.mark.parametrize("seconds", [30, 600], ids=["short", "past a part"])
def test_a_call_cut_by_a_crash_is_kept_truncated_and_uploaded_by_recovery(
    s3_store: Store, seaweedfs: SeaweedFS, tmp_path: Path, seconds: int
) -> None:
    """The container being written is on the node's disk (encrypted), not in memory: a crash
    mid-call leaves it there; recovery re-seals its verified prefix as truncated, uploads it
    and only then removes the local copy."""
    script = tmp_path / "child.py"
    script.write_text(CRASHING)
    seed = f"crash {seconds}"
    env = {**os.environ, **seaweedfs.env, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, str(script), str(s3_store.path), str(seconds // 10), seed]
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    assert done.returncode == 9, done.stderr.decode()
    noise = random.Random(seed).randbytes(320 * 500)
    prefix = s3_store.backends["blobs"]["prefix"]
    assert seaweedfs.objects(prefix) == {} and seaweedfs.uploads(f"{prefix}/") == []
    staged = list(on_disk(s3_store.staging_path / "recording"))
    assert len(staged) == 1 and len(staged[0]) > seconds * 16_000 // 2  # most of the call
    assert not pattern_found(noise, staged[0])  # encrypted from the first byte
    clock = FixedClock(AT)
    with s3_store.open_log(clock=clock) as log, Vault(s3_store, log, clock=clock) as vault:
        (row,) = vault.catalog.find(status=["open"])
        assert vault.recover() == [(row.recording_id, "truncated")]
        kept = vault.open(row.recording_id)
        assert kept.row.status == "truncated" and kept.row.truncated
        assert len(kept.audio) > seconds * 16_000 // 2
        assert (noise * (seconds // 10)).startswith(kept.audio)
    (blob,) = seaweedfs.objects(prefix).values()
    assert hashlib.sha256(blob).hexdigest() == kept.row.ciphertext_sha256
    assert seaweedfs.uploads(f"{prefix}/") == []
    assert list(on_disk(s3_store.staging_path)) == []  # emptied once the bucket had it


def unreachable(seaweedfs: SeaweedFS, prefix: str) -> S3BlobStore:
    """A handle on the test bucket through an endpoint where nothing listens."""
    (port,) = free_ports(1)
    return S3BlobStore(
        seaweedfs.bucket,
        prefix=prefix,
        endpoint=f"http://127.0.0.1:{port}",
        credentials=seaweedfs.credentials,
        check=False,
        max_attempts=1,
        connect_timeout=1.0,
    )


def test_an_upload_that_fails_at_seal_loses_nothing_and_is_retried(
    s3_store: Store, seaweedfs: SeaweedFS, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FixedClock(AT)
    prefix = s3_store.backends["blobs"]["prefix"]
    audio = random.Random("bucket away").randbytes(16_000 * 3)
    down = StagedBlobStore(s3_store.staging_path, unreachable(seaweedfs, prefix))
    with (
        s3_store.open_log(clock=clock) as log,
        Vault(s3_store, log, clock=clock, blobs=down) as vault,
        caplog.at_level(logging.WARNING, logger="sampledrec.vault.staging"),
    ):
        decision = s3_store.sampler(clock=clock, log=log).decide("away", {"agent": "a1"})
        with vault.record(decision, audio_format=PCM, chunk_size=4096) as rec:
            for frame in frames(audio, PCM, 20):
                rec.write(frame)
        # Sealed, logged and readable (from the node's disk), though not in the bucket yet.
        assert rec.row.status == "sealed"
        assert vault.open(rec.recording_id).audio == audio
        assert down.upload_failures == 1 and down.pending() == [rec.row.file]
        assert f"upload of recording {rec.row.file} failed" in caplog.text
        assert "retried later" in caplog.text
        assert vault.upload_pending() == (0, 1)  # still away: kept again
        assert down.upload_failures == 2
    assert seaweedfs.objects(prefix) == {}
    (staged,) = on_disk(s3_store.staging_path / "outbox")
    assert not pattern_found(audio, staged)
    # The bucket is back (the server's next try, or 'sampledrec recordings recover').
    with s3_store.open_log(clock=clock) as log, Vault(s3_store, log, clock=clock) as vault:
        assert vault.upload_pending() == (1, 0)
        assert vault.blobs.exists(rec.row.file) and vault.upload_pending() == (0, 0)
        assert vault.open(rec.recording_id).audio == audio
    (blob,) = seaweedfs.objects(prefix).values()
    assert blob == staged
    assert list(on_disk(s3_store.staging_path)) == []
    out = io.StringIO()
    assert main(["log", "verify", "--store", str(s3_store.path)], out=out) == 0, out.getvalue()


def test_a_staged_file_of_a_recording_destroyed_meanwhile_is_not_uploaded(
    s3_store: Store, seaweedfs: SeaweedFS
) -> None:
    clock = FixedClock(AT)
    prefix = s3_store.backends["blobs"]["prefix"]
    down = StagedBlobStore(s3_store.staging_path, unreachable(seaweedfs, prefix))
    with s3_store.open_log(clock=clock) as log, Vault(s3_store, log, clock=clock, blobs=down) as v:
        decision = s3_store.sampler(clock=clock, log=log).decide("gone", {"agent": "a1"})
        with v.record(decision, audio_format=PCM) as rec:
            rec.write(bytes(16_000))
    assert down.pending() == [rec.row.file]
    later = FixedClock("2030-03-07T00:00:01Z")  # expired, and swept once the bucket is back
    with s3_store.open_log(clock=later) as log, Vault(s3_store, log, clock=later) as v:
        assert Retention(v, clock=later).sweep().expired == [rec.recording_id]
    assert down.pending() == []  # the sweep's delete removed the local copy too
    # A copy left behind some other way (say a sweep that ran on another node) is dropped.
    (s3_store.staging_path / "outbox" / rec.row.file).write_bytes(b"ciphertext")
    with s3_store.open_log(clock=later) as log, Vault(s3_store, log, clock=later) as vault:
        assert vault.upload_pending() == (0, 0)
    assert seaweedfs.objects(prefix) == {} and list(on_disk(s3_store.staging_path)) == []


# -- errors -------------------------------------------------------------------------------------


def chained(exc: BaseException) -> bool:
    return exc.__cause__ is not None or (
        exc.__context__ is not None and not exc.__suppress_context__
    )


def test_a_missing_bucket_is_a_clear_error(seaweedfs: SeaweedFS) -> None:
    with pytest.raises(StoreNotFound, match="'no-such-bucket' does not exist") as caught:
        S3BlobStore(
            "no-such-bucket", endpoint=seaweedfs.endpoint, credentials=seaweedfs.credentials
        )
    assert seaweedfs.endpoint in str(caught.value)
    assert not chained(caught.value)


@pytest.mark.parametrize("wrong", ["secret", "key id"])
def test_refused_credentials_are_a_clear_error_that_shows_no_secret(
    seaweedfs: SeaweedFS, wrong: str
) -> None:
    good = seaweedfs.credentials
    bad = (
        S3Credentials(good.access_key_id, "not-the-secret-0123456789")
        if wrong == "secret"
        else S3Credentials("nobody", "not-the-secret-0123456789")
    )
    with pytest.raises(StorePermissionError, match="refused the credentials") as caught:
        S3BlobStore(seaweedfs.bucket, endpoint=seaweedfs.endpoint, credentials=bad)
    assert "not-the-secret" not in str(caught.value) and good.secret_access_key not in str(
        caught.value
    )
    assert not chained(caught.value)
    # Refused on a request after opening too (a key revoked meanwhile).
    blobs = S3BlobStore(seaweedfs.bucket, endpoint=seaweedfs.endpoint, credentials=bad, check=False)
    with pytest.raises(StorePermissionError):
        blobs.open(NAME)


def test_an_unreachable_endpoint_is_a_clear_error(seaweedfs: SeaweedFS) -> None:
    [port] = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(StoreError, match="cannot reach the object storage") as caught:
        S3BlobStore(
            "recordings", endpoint=endpoint, credentials=seaweedfs.credentials, max_attempts=1
        )
    assert endpoint in str(caught.value)
    assert not chained(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bucket": "Bad_Bucket"}, "not a valid S3 bucket name"),
        ({"prefix": "../up"}, "prefix '../up' is not valid"),
        ({"endpoint": "ftp://host"}, "http:// or https://"),
        ({"endpoint": "http://key:secret@host"}, "must not hold credentials"),
        ({"endpoint": "ftp://key:secret@host"}, "must not hold credentials"),
        ({"part_size": 1024}, "part_size=1024"),
        ({"region": "Bad Region"}, "not an S3 region name"),
    ],
)
def test_settings_are_checked_when_the_store_is_built(
    kwargs: dict[str, Any], match: str, seaweedfs: SeaweedFS
) -> None:
    settings: dict[str, Any] = {"bucket": "recordings", "credentials": seaweedfs.credentials}
    with pytest.raises(InvalidArgument, match=match) as caught:
        S3BlobStore(**{**settings, "check": False, **kwargs})
    assert "secret" not in str(caught.value)


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://recordings") == ("recordings", "")
    assert parse_s3_url("s3://recordings/node-a/2030/") == ("recordings", "node-a/2030")
    for bad in ("recordings", "http://recordings", "s3://", "s3://UPPER/x", "s3://ok/a//b"):
        with pytest.raises(InvalidArgument):
            parse_s3_url(bad)


# -- credentials --------------------------------------------------------------------------------


def test_credentials_never_show_their_secret() -> None:
    credentials = S3Credentials("AKIAEXAMPLE", "very-secret-value", "session-token-value")
    assert "very-secret-value" not in repr(credentials)
    assert "session-token-value" not in repr(credentials)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(credentials)


def test_credentials_from_the_environment() -> None:
    env = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}
    assert S3Credentials.from_env(env) == S3Credentials("id", "secret")
    with pytest.raises(StorePermissionError, match="AWS_SECRET_ACCESS_KEY"):
        S3Credentials.from_env({"AWS_ACCESS_KEY_ID": "id"})


def test_credentials_from_a_file(tmp_path: Path) -> None:
    file = tmp_path / "s3.ini"
    file.write_text(
        "[default]\naws_access_key_id = id0\naws_secret_access_key = s0\n"
        "[node-a]\naws_access_key_id = id1\naws_secret_access_key = s%1\n"
    )
    file.chmod(0o600)
    assert S3Credentials.from_file(file) == S3Credentials("id0", "s0")
    assert S3Credentials.from_file(file, "node-a") == S3Credentials("id1", "s%1")
    with pytest.raises(StoreError, match=r"no \[other\] section"):
        S3Credentials.from_file(file, "other")
    file.chmod(0o644)
    with pytest.raises(StorePermissionError, match="chmod 600"):
        S3Credentials.from_file(file)
    with pytest.raises(StoreNotFound, match="does not exist"):
        S3Credentials.from_file(tmp_path / "missing.ini")


# -- the store and the CLI ----------------------------------------------------------------------


def test_init_puts_recordings_in_a_bucket_and_no_secret_in_the_store(
    tmp_path: Path, seaweedfs: SeaweedFS, cli: CliRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    prefix = seaweedfs.new_prefix("cli")
    store = tmp_path / "s"
    code, out = cli(
        "init", store, "--blobs", f"s3://{seaweedfs.bucket}/{prefix}",
        "--s3-endpoint", seaweedfs.endpoint, "--json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["recordings"] == (
        f"s3://{seaweedfs.bucket}/{prefix} at {seaweedfs.endpoint}"
    )
    meta = json.loads((store / "store.json").read_text())
    assert meta["backends"]["blobs"] == {
        "kind": "s3",
        "bucket": seaweedfs.bucket,
        "prefix": prefix,
        "endpoint": seaweedfs.endpoint,
    }
    secret = seaweedfs.credentials.secret_access_key.encode()
    assert not any(secret in data for data in on_disk(store))
    blobs = Store.open(store).blobs
    assert isinstance(blobs, StagedBlobStore)
    assert isinstance(blobs.remote, S3BlobStore) and blobs.remote.prefix == prefix


def test_init_with_a_credentials_file(
    tmp_path: Path, seaweedfs: SeaweedFS, cli: CliRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    file = tmp_path / "s3.ini"
    file.write_text(
        f"[recorder]\naws_access_key_id = {seaweedfs.credentials.access_key_id}\n"
        f"aws_secret_access_key = {seaweedfs.credentials.secret_access_key}\n"
    )
    file.chmod(0o600)
    url = f"s3://{seaweedfs.bucket}/{seaweedfs.new_prefix('file')}"
    argv = ["init", tmp_path / "s", "--blobs", url, "--s3-endpoint", seaweedfs.endpoint]
    code, out = cli(*argv, "--s3-credentials", file, "--s3-profile", "recorder")
    assert code == 0, out
    spec = Store.open(tmp_path / "s").backends["blobs"]
    assert spec["credentials_file"] == str(file) and spec["profile"] == "recorder"
    blobs = Store.open(tmp_path / "s").blobs
    assert isinstance(blobs, StagedBlobStore) and isinstance(blobs.remote, S3BlobStore)


def test_init_refuses_what_it_cannot_use(
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    cli: CliRun,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    store = tmp_path / "s"
    assert cli("init", store, "--s3-endpoint", seaweedfs.endpoint)[0] == 2
    assert cli("init", store, "--blobs", str(tmp_path / "folder"))[0] == 2
    code, _ = cli(
        "init", store, "--blobs", "s3://missing-bucket", "--s3-endpoint", seaweedfs.endpoint
    )
    err = capsys.readouterr().err
    assert code == 3 and "'missing-bucket' does not exist" in err
    assert "Traceback" not in err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-the-test")
    url = f"s3://{seaweedfs.bucket}/x"
    code, out = cli("init", store, "--blobs", url, "--s3-endpoint", seaweedfs.endpoint)
    err = capsys.readouterr().err
    assert code == 3 and "refused the credentials" in err
    assert "wrong-secret-for-the-test" not in out + err
    assert not store.exists()  # nothing was created


def test_a_store_json_with_credentials_in_it_is_refused(
    tmp_path: Path, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    backend = {
        **s3_blobs_backend(f"s3://{seaweedfs.bucket}/x", endpoint=seaweedfs.endpoint),
        "secret_access_key": "oops",
    }
    with pytest.raises(StoreError, match="never written there"):
        Store.init(tmp_path / "s", backends={"blobs": backend})


def test_the_server_retries_a_failed_upload_until_the_bucket_takes_it(
    s3_store: Store, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve's retry loop (sampledrec.serve.server): a recording sealed while the bucket was
    away is uploaded by a later round, and the round is logged."""
    from sampledrec.serve import server

    clock = FixedClock(AT)
    prefix = s3_store.backends["blobs"]["prefix"]
    audio = random.Random("retried by the server").randbytes(16_000)
    down = StagedBlobStore(s3_store.staging_path, unreachable(seaweedfs, prefix))
    with s3_store.open_log(clock=clock) as log, Vault(s3_store, log, clock=clock, blobs=down) as v:
        decision = s3_store.sampler(clock=clock, log=log).decide("later", {"agent": "a1"})
        with v.record(decision, audio_format=PCM) as rec:
            rec.write(audio)
    assert down.pending() == [rec.row.file]
    monkeypatch.setattr(server, "UPLOAD_RETRY_EVERY", 0.05)
    rounds: list[dict[str, Any]] = []
    monkeypatch.setattr(server, "event", lambda name, **fields: rounds.append(fields))

    async def serve_a_while() -> None:
        with s3_store.open_log(clock=clock) as log:
            services = SimpleNamespace(store=s3_store, log=log, stopping=asyncio.Event())
            task = asyncio.create_task(server._retry_uploads(cast(Any, services), clock))
            for _ in range(1200):  # at most a minute: a limit, not a timing assertion
                if not s3_store.blobs.pending():  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.05)
            services.stopping.set()
            await task

    asyncio.run(serve_a_while())
    assert rounds == [{"level": logging.INFO, "uploaded": 1, "failed": 0}]
    (blob,) = seaweedfs.objects(prefix).values()
    assert hashlib.sha256(blob).hexdigest() == rec.row.ciphertext_sha256
    assert list(on_disk(s3_store.staging_path)) == []
