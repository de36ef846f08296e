"""Sealed recordings on S3-compatible object storage: :class:`S3BlobStore`.

A :class:`~sampledrec.vault.blobs.BlobStore` over one bucket (and a key prefix in it), through
boto3 (the ``s3`` extra; docs/decisions/0027-object-storage.md). It only ever sees container
bytes: the recorder encrypts before it writes, so nothing in clear leaves the node.

How the protocol maps onto S3:

- :meth:`S3BlobStore.create` writes an empty object with ``If-None-Match: *``: the blob exists
  at once, and a second ``create`` of the name, from any node, is refused
  (:class:`FileExistsError`). The writer then keeps what it is given in memory until a part
  is full (``part_size``, 8 MiB by default, at least the 5 MiB S3 requires): a long call
  goes up as a multipart upload, part after part; a short one as one ``PutObject`` when it is
  sealed. Either way the object changes once, whole, when the writer closes: until then
  readers see the empty object (or what the last :meth:`~_S3Writer.sync` published).
- ``sync`` publishes the prefix written so far (one ``PutObject``, or the multipart upload
  completed; writing on after that starts a new upload whose first part is a server-side copy
  of the object).
- :meth:`S3BlobStore.delete` aborts the multipart uploads left under the name (a writer of
  this process, or one that crashed elsewhere: their parts are invisible but stored), then
  deletes the object. An aborted recording (:meth:`Recorder.abort
  <sampledrec.vault.Recorder.abort>`) or one destroyed by crash recovery thus leaves neither an
  object nor an upload.
- :meth:`S3BlobStore.open` reads in ranged ``GET`` requests of ``read_block`` bytes. A blob no
  larger than one block is read whole by the first request: a snapshot that a later ``put`` or
  ``delete`` does not change. A larger one is read block by block, each request pinned
  (``If-Match``) to the version first read; if the object was replaced or deleted meanwhile,
  the read fails (:class:`OSError`, ``ESTALE``) rather than mixing two versions.

Credentials come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``) or from a credentials file in the AWS INI format
(:meth:`S3Credentials.from_file`), never from ``store.json``; the store is given them
explicitly, so boto3's own search (profiles, instance metadata) is never consulted and no
request goes anywhere but the endpoint named. Errors of the server or the network become
:class:`~sampledrec.errors.StoreError` (the bucket missing: :class:`StoreNotFound`; credentials
refused: :class:`StorePermissionError`) with a message that names the endpoint, bucket and
what to check, and never a credential.
"""

from __future__ import annotations

import configparser
import contextlib
import errno
import io
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NoReturn, TypeVar, cast
from urllib.parse import urlsplit

from ..errors import InvalidArgument, StoreError, StoreNotFound, StorePermissionError
from .blobs import BlobWriter, check_blob_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = [
    "DEFAULT_PART_SIZE",
    "DEFAULT_READ_BLOCK",
    "MIN_PART_SIZE",
    "S3BlobStore",
    "S3Credentials",
    "check_bucket",
    "check_endpoint",
    "check_prefix",
    "parse_s3_url",
]

MIN_PART_SIZE: Final = 5 * 1024 * 1024  # S3's smallest part but the last
DEFAULT_PART_SIZE: Final = 8 * 1024 * 1024
DEFAULT_READ_BLOCK: Final = 8 * 1024 * 1024
_MAX_PARTS: Final = 10_000
_CACHED_BLOCKS: Final = 4

_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART: Final = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_PREFIX: Final = re.compile(rf"{_PREFIX_PART}(?:/{_PREFIX_PART}){{0,7}}")
_REGION: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+)")

# S3 error codes, by what they mean for the user.
_NOT_FOUND: Final = frozenset({"NoSuchKey", "404", "NotFound"})
_NO_BUCKET: Final = frozenset({"NoSuchBucket"})
_REFUSED: Final = frozenset(
    {
        "403",
        "AccessDenied",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
    }
)
_CHANGED: Final = frozenset({"PreconditionFailed", "412"})
_NO_RANGE: Final = frozenset({"InvalidRange", "416"})

T = TypeVar("T")


@dataclass(frozen=True)
class S3Credentials:
    """An access key for the object storage. The secret is never shown (``repr``) nor
    pickled, and never written by sampledrec."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("access_key_id", "secret_access_key"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or not value.isprintable():
                raise InvalidArgument(
                    f"S3 credentials: {name} must be non-empty printable text; check the "
                    "environment variables or the credentials file"
                )

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("S3Credentials hold a secret and cannot be pickled")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Credentials:
        """The credentials in ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and (optional)
        ``AWS_SESSION_TOKEN``; :class:`StorePermissionError` if they are not set."""
        env = os.environ if environ is None else environ
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise StorePermissionError(
                "the recordings are on S3 object storage but no credentials were given: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or name a "
                "credentials file (backends.blobs.credentials_file in store.json, "
                "'sampledrec init --s3-credentials FILE'); they are never written to store.json"
            )
        return cls(key, secret, env.get("AWS_SESSION_TOKEN") or None)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], profile: str = "default") -> S3Credentials:
        """The credentials of ``profile`` in an AWS-style credentials file (INI:
        ``aws_access_key_id``, ``aws_secret_access_key``, optional ``aws_session_token``).
        The file must be readable by its owner only (0600), as the keyring's files are."""
        where = Path(path)
        try:
            mode = where.stat().st_mode
            text = where.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StoreNotFound(
                f"the S3 credentials file {where} does not exist; create it (mode 0600) or "
                "give the credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StorePermissionError(
                f"cannot read the S3 credentials file {where}: {getattr(exc, 'strerror', exc)}"
            ) from None
        if stat.S_IMODE(mode) & 0o077:
            raise StorePermissionError(
                f"the S3 credentials file {where} is readable or writable by others (mode "
                f"{stat.S_IMODE(mode):04o}); restrict it with 'chmod 600 {where}'"
            )
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text, source=str(where))
        except configparser.Error:
            raise StoreError(
                f"the S3 credentials file {where} is not an INI file with a [{profile}] section"
            ) from None
        if not parser.has_section(profile):
            raise StoreError(
                f"the S3 credentials file {where} has no [{profile}] section; "
                f"sections: {', '.join(parser.sections()) or 'none'}"
            )
        section = parser[profile]
        key = section.get("aws_access_key_id", "").strip()
        secret = section.get("aws_secret_access_key", "").strip()
        if not key or not secret:
            raise StoreError(
                f"the S3 credentials file {where}, section [{profile}], needs "
                "aws_access_key_id and aws_secret_access_key"
            )
        token = section.get("aws_session_token", "").strip() or None
        return cls(key, secret, token)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket[/prefix]``.

    >>> parse_s3_url("s3://call-recordings/node-a")
    ('call-recordings', 'node-a')
    """
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise InvalidArgument(
            f"{url!r} is not an s3:// URL; write s3://BUCKET or s3://BUCKET/PREFIX"
        )
    bucket, _, prefix = url[len("s3://") :].partition("/")
    return check_bucket(bucket), check_prefix(prefix.strip("/"))


def check_bucket(bucket: object) -> str:
    """``bucket`` if it is a valid S3 bucket name (3 to 63 lower-case letters, digits, ``.``
    and ``-``), else :class:`InvalidArgument`."""
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidArgument(
            f"bucket {bucket!r} is not a valid S3 bucket name: 3 to 63 lower-case letters, "
            "digits, '.' and '-', starting and ending with a letter or digit"
        )
    return bucket


def check_prefix(prefix: object) -> str:
    """``prefix`` if it can be a key prefix (empty, or up to 8 ``/``-separated parts of
    letters, digits, ``.``, ``_`` and ``-``, none starting with a dot)."""
    if prefix == "":
        return ""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise InvalidArgument(
            f"prefix {prefix!r} is not valid; use up to 8 '/'-separated parts of letters, "
            "digits, '.', '_' and '-', none starting with '.', such as 'node-a/recordings'"
        )
    return prefix


def check_endpoint(endpoint: object) -> str:
    """``endpoint`` if it is an http(s) URL without credentials in it (a URL that holds some
    is refused without being shown)."""
    if not isinstance(endpoint, str):
        raise InvalidArgument(f"endpoint={endpoint!r} must be an http:// or https:// URL")
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 (a bad port raises ValueError)
    except ValueError:
        parts = None
    if parts is not None and (parts.username is not None or parts.password is not None):
        raise InvalidArgument(
            "the S3 endpoint URL must not hold credentials; give them in the environment "
            "or a credentials file"
        )
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            f"endpoint={endpoint!r} must be an http:// or https:// URL, such as "
            "https://s3.eu-west-3.amazonaws.com or http://127.0.0.1:8333"
        )
    return endpoint


class S3BlobStore:
    """Blobs as objects ``<prefix>/<name>`` in one bucket of S3-compatible object storage.

    ``endpoint``: the S3 API's URL (default: AWS, for ``region``); ``credentials``: default
    :meth:`S3Credentials.from_env`. ``check`` (default) asks the server for the bucket at once,
    so that a missing bucket, refused credentials or an unreachable endpoint show when the
    store is opened, not in the middle of a call. ``client`` replaces the boto3 client (its
    settings are then the caller's).

    Thread-safe: one boto3 client serves every thread; each writer is used by one thread at a
    time (as the recorder does).
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        credentials: S3Credentials | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        read_block: int = DEFAULT_READ_BLOCK,
        max_attempts: int = 3,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_connections: int = 32,
        check: bool = True,
        client: S3Client | None = None,
    ) -> None:
        self.bucket = check_bucket(bucket)
        self.prefix = check_prefix(prefix.strip("/") if isinstance(prefix, str) else prefix)
        self.endpoint = None if endpoint is None else check_endpoint(endpoint)
        self.region = region or "us-east-1"
        if not isinstance(self.region, str) or not _REGION.fullmatch(self.region):
            raise InvalidArgument(
                f"region={region!r} is not an S3 region name, such as 'eu-west-3' (most "
                "S3-compatible servers accept the default, 'us-east-1')"
            )
        if not isinstance(part_size, int) or not MIN_PART_SIZE <= part_size <= 5 * 1024**3:
            raise InvalidArgument(
                f"part_size={part_size!r} must be an int from {MIN_PART_SIZE} (5 MiB, the "
                "smallest part S3 accepts) to 5 GiB"
            )
        if not isinstance(read_block, int) or read_block < 4096:
            raise InvalidArgument(f"read_block={read_block!r} must be an int of at least 4096")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidArgument(f"max_attempts={max_attempts!r} must be an int of at least 1")
        self.part_size = part_size
        self.read_block = read_block
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._writers: dict[str, _S3Writer] = {}
        self._lock = threading.Lock()
        try:
            import boto3.session  # noqa: F401 (the client is made in _new_client)
            import botocore.exceptions as boto_errors
        except ImportError:
            raise StoreError(
                "recordings on S3 object storage need boto3: pip install 'sampledrec[s3]'"
            ) from None
        self._errors = boto_errors
        self._client = (
            client
            if client is not None
            else self._new_client(
                credentials or S3Credentials.from_env(),
                max_attempts=max_attempts,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_connections=max_connections,
            )
        )
        if check:
            self._call(
                "open the bucket", None, lambda: self._client.head_bucket(Bucket=self.bucket)
            )

    def _new_client(
        self,
        credentials: S3Credentials,
        *,
        max_attempts: int,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
    ) -> S3Client:
        import boto3.session
        from botocore.config import Config

        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            # Path-style addressing for a named endpoint (SeaweedFS, MinIO, Ceph: no DNS per
            # bucket); AWS picks for itself.
            s3={"addressing_style": "path" if self.endpoint else "auto"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_connections,
            # Checksums only where the API requires them: S3-compatible servers do not all
            # accept the newer checksum trailers (AWS_REQUEST_CHECKSUM_CALCULATION).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            session = boto3.session.Session(
                aws_access_key_id=credentials.access_key_id,
                aws_secret_access_key=credentials.secret_access_key,
                aws_session_token=credentials.session_token,
                region_name=self.region,
            )
            return session.client("s3", endpoint_url=self.endpoint, config=config)
        except self._errors.BotoCoreError as exc:
            raise StoreError(f"cannot set up the S3 client: {_first_line(exc)}") from None

    def __repr__(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"S3BlobStore('s3://{self.bucket}/{self.prefix}'{where})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("an S3BlobStore holds credentials and cannot be pickled")

    # -- the protocol -------------------------------------------------------------------------

    def create(self, name: str) -> BlobWriter:
        key = self._key(name)

        def placeholder() -> object:
            return self._client.put_object(Bucket=self.bucket, Key=key, Body=b"", IfNoneMatch="*")

        try:
            self._call("create", name, placeholder)
        except _Changed:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name) from None
        writer = _S3Writer(self, name, key)
        with self._lock:
            self._writers[key] = writer
        return writer

    def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        body = bytes(data)
        self._call(
            "put", name, lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=body)
        )

    def upload(self, name: str, source: BinaryIO, size: int) -> None:
        """Replace blob ``name`` whole with the ``size`` bytes read from ``source``: one
        ``PutObject`` up to ``part_size``, else a multipart upload, part by part, aborted if
        any request fails (no part left stored). The object changes once, when the upload
        completes; on an error it keeps what it held. What a node's local staging uses to
        send a sealed recording (:mod:`sampledrec.vault.staging`)."""
        key = self._key(name)
        if size <= self.part_size:
            body = source.read(size)
            self._check_read(name, body, size)
            self._call(
                "upload",
                name,
                lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=body),
            )
            return
        started = self._call(
            "upload",
            name,
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=key),
        )
        upload_id = started["UploadId"]
        parts: list[CompletedPartTypeDef] = []
        try:
            left = size
            while left:
                body = source.read(min(self.part_size, left))
                self._check_read(name, body, min(self.part_size, left))
                left -= len(body)
                number = len(parts) + 1
                if number > _MAX_PARTS:
                    raise StoreError(
                        f"blob {name!r} would need more than {_MAX_PARTS} parts; raise part_size"
                    )
                parts.append(self._upload_one_part(name, key, upload_id, number, body))
            self._call(
                "upload",
                name,
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            with contextlib.suppress(StoreError, OSError):
                self._abort(name, key, upload_id)
            raise

    def _upload_one_part(
        self, name: str, key: str, upload_id: str, number: int, body: bytes
    ) -> CompletedPartTypeDef:
        done = self._call(
            "upload",
            name,
            lambda: self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            ),
        )
        return {"PartNumber": number, "ETag": done["ETag"]}

    @staticmethod
    def _check_read(name: str, body: bytes, wanted: int) -> None:
        if len(body) != wanted:
            raise StoreError(
                f"blob {name!r} changed while it was being uploaded (read {len(body)} bytes "
                f"of {wanted}); upload it again"
            )

    def open(self, name: str) -> BinaryIO:
        return cast(BinaryIO, _S3Reader(self, name, self._key(name)))

    def size(self, name: str) -> int:
        head = self._head(name)
        if head is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
        return int(head["ContentLength"])

    def exists(self, name: str) -> bool:
        return self._head(name) is not None

    def delete(self, name: str) -> bool:
        key = self._key(name)
        with self._lock:
            writer = self._writers.pop(key, None)
        if writer is not None:
            writer._discard()
        self._abort_uploads(name, key)
        if self._head(name) is None:
            return False
        self._call("delete", name, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))
        return True

    def list(self, prefix: str = "") -> list[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._root + prefix
        )
        keys = self._call(
            "list",
            None,
            lambda: [item["Key"] for page in pages for item in page.get("Contents", [])],
        )
        return sorted(
            name for name in (key[len(self._root) :] for key in keys) if _is_blob_name(name)
        )

    # -- helpers ------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self._root + check_blob_name(name)

    def _head(self, name: str) -> dict[str, Any] | None:
        key = self._key(name)
        try:
            head = self._call(
                "read", name, lambda: self._client.head_object(Bucket=self.bucket, Key=key)
            )
        except FileNotFoundError:
            return None
        return cast(dict[str, Any], head)

    def _abort_uploads(self, name: str, key: str) -> None:
        """Abort every multipart upload in progress under ``key`` (its parts are stored, if
        invisible, until then)."""
        page = self._call(
            "delete",
            name,
            lambda: self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=key),
        )
        for upload in page.get("Uploads", []):
            if upload.get("Key") == key:
                self._abort(name, key, upload["UploadId"])

    def _abort(self, name: str, key: str, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # already completed or aborted
            self._call(
                "delete",
                name,
                lambda: self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
            )

    def _forget(self, writer: _S3Writer) -> None:
        with self._lock:
            if self._writers.get(writer.key) is writer:
                del self._writers[writer.key]

    def _call(self, action: str, name: str | None, request: Callable[[], T]) -> T:
        """Run one request; vendor errors become the library's (module docstring)."""
        try:
            return request()
        except self._errors.ClientError as exc:
            raise self._client_error(action, name, exc) from None
        except (
            self._errors.EndpointConnectionError,
            self._errors.ConnectTimeoutError,
            self._errors.ReadTimeoutError,
            self._errors.ConnectionClosedError,
        ) as exc:
            raise StoreError(
                f"cannot reach the object storage at {self._where()} to {action} "
                f"{self._what(name)}: {_first_line(exc)}; check the endpoint and the network"
            ) from None
        except self._errors.NoCredentialsError:
            raise StorePermissionError(
                f"no credentials for the object storage at {self._where()}"
            ) from None
        except self._errors.BotoCoreError as exc:
            raise StoreError(
                f"the object storage at {self._where()} failed to {action} "
                f"{self._what(name)}: {_first_line(exc)}"
            ) from None

    def _client_error(self, action: str, name: str | None, exc: Any) -> Exception:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _NO_BUCKET or (name is None and code in _NOT_FOUND):
            return StoreNotFound(
                f"the bucket {self.bucket!r} does not exist at {self.endpoint or 'AWS S3'}; "
                "create it, or name another one (backends.blobs.bucket in store.json)"
            )
        if code in _NOT_FOUND:
            return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
        if code in _CHANGED:
            return _Changed(name)
        if code in _NO_RANGE:
            return _NoRange(name)
        if code in _REFUSED or status == 403:
            return StorePermissionError(
                f"the object storage at {self._where()} refused the credentials to {action} "
                f"{self._what(name)} ({code or status}); check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or the credentials file) and the key's rights on the "
                "bucket"
            )
        message = str(error.get("Message", ""))[:200]
        return StoreError(
            f"the object storage at {self._where()} failed to {action} {self._what(name)}: "
            f"{code or status} {message}".rstrip()
        )

    def _where(self) -> str:
        return f"{self.endpoint or 'AWS S3'} (bucket {self.bucket!r})"

    def _what(self, name: str | None) -> str:
        return "the bucket" if name is None else f"blob {name!r}"


class _Changed(StoreError):
    """A precondition failed: the object exists (create) or changed (a pinned read)."""


class _NoRange(StoreError):
    """A range that the object does not have (any range of an empty object)."""


class _S3Writer:
    """A blob being written (module docstring). ``_buffer`` holds what is not in a part yet;
    ``_base`` says that the object holds a prefix published by :meth:`sync` which the next
    upload must start with (a server-side copy)."""

    def __init__(self, store: S3BlobStore, name: str, key: str) -> None:
        self._store = store
        self.name = name
        self.key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._base = False
        self._dirty = False
        self._state = "open"  # open, closed, deleted, failed
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<S3 blob writer {self.name!r} {self._state}>"

    def write(self, data: bytes | memoryview) -> int:
        with self._lock:
            self._check()
            self._buffer += data
            self._dirty = True
            size = self._store.part_size
            while len(self._buffer) >= size:
                self._guarded(lambda: self._upload_part(bytes(self._buffer[:size])))
                del self._buffer[:size]
        return len(data)

    def sync(self) -> None:
        with self._lock:
            self._check()
            if self._dirty:
                self._guarded(self._publish)

    def close(self) -> None:
        with self._lock:
            if self._state == "closed":
                return
            self._check()
            if self._dirty:
                self._guarded(self._publish)
            self._state = "closed"
            self._buffer = bytearray()
        self._store._forget(self)

    def _check(self) -> None:
        if self._state != "open":
            raise ValueError(f"the writer of blob {self.name!r} is {self._state}")

    def _guarded(self, step: Callable[[], object]) -> None:
        """Run ``step``; on failure abort the upload in progress (no parts left behind) and
        refuse further writes: the object keeps what was last published."""
        try:
            step()
        except BaseException:
            self._state = "failed"
            self._abandon()
            self._store._forget(self)
            raise

    def _publish(self) -> None:
        """Make the object hold everything written so far."""
        store = self._store
        if self._upload_id is None and not self._base:
            body = bytes(self._buffer)  # all of it: kept, for the next publish
            store._call(
                "write",
                self.name,
                lambda: store._client.put_object(Bucket=store.bucket, Key=self.key, Body=body),
            )
        else:
            if self._buffer:
                self._upload_part(bytes(self._buffer))  # the last part may be small
                self._buffer = bytearray()
            elif self._upload_id is None:
                self._dirty = False  # nothing new since the object was published
                return
            upload_id, parts = self._upload_id, self._parts
            assert upload_id is not None
            store._call(
                "write",
                self.name,
                lambda: store._client.complete_multipart_upload(
                    Bucket=store.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
            self._upload_id, self._parts, self._base = None, [], True
        self._dirty = False

    def _upload_part(self, body: bytes) -> None:
        store = self._store
        if self._upload_id is None:
            started = store._call(
                "write",
                self.name,
                lambda: store._client.create_multipart_upload(Bucket=store.bucket, Key=self.key),
            )
            self._upload_id = started["UploadId"]
            self._parts = []
            if self._base:  # the published prefix (at least one full part) comes first
                copied = store._call(
                    "write",
                    self.name,
                    lambda: store._client.upload_part_copy(
                        Bucket=store.bucket,
                        Key=self.key,
                        UploadId=cast(str, self._upload_id),
                        PartNumber=1,
                        CopySource={"Bucket": store.bucket, "Key": self.key},
                    ),
                )
                self._parts.append({"PartNumber": 1, "ETag": copied["CopyPartResult"]["ETag"]})
                self._base = False
        number = len(self._parts) + 1
        if number > _MAX_PARTS:
            raise StoreError(
                f"blob {self.name!r} would need more than {_MAX_PARTS} parts; raise part_size"
            )
        upload_id = self._upload_id
        done = store._call(
            "write",
            self.name,
            lambda: store._client.upload_part(
                Bucket=store.bucket, Key=self.key, UploadId=upload_id, PartNumber=number, Body=body
            ),
        )
        self._parts.append({"PartNumber": number, "ETag": done["ETag"]})

    def _abandon(self) -> None:
        """Abort the upload in progress, if any (best effort: the store's delete aborts what
        is left under the name)."""
        upload_id, self._upload_id, self._parts = self._upload_id, None, []
        self._buffer = bytearray()
        if upload_id is not None:
            with contextlib.suppress(StoreError, OSError):
                self._store._abort(self.name, self.key, upload_id)

    def _discard(self) -> None:
        """The blob is being deleted: abort the upload and refuse further writes."""
        with self._lock:
            if self._state == "open":
                self._state = "deleted"
                self._abandon()


class _S3Reader(io.RawIOBase):
    """A seekable file over one object, read in ranged GETs (module docstring)."""

    def __init__(self, store: S3BlobStore, name: str, key: str) -> None:
        super().__init__()
        self._store = store
        self._name = name
        self._key = key
        self._position = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        first, self._size, self._etag = self._first()
        self._blocks[0] = first

    def _first(self) -> tuple[bytes, int, str]:
        store, block = self._store, self._store.read_block
        try:
            got = store._call(
                "read",
                self._name,
                lambda: store._client.get_object(
                    Bucket=store.bucket, Key=self._key, Range=f"bytes=0-{block - 1}"
                ),
            )
        except _NoRange:
            # An empty object has no byte 0: read it whole.
            got = store._call(
                "read",
                self._name,
                lambda: store._client.get_object(Bucket=store.bucket, Key=self._key),
            )
        data = got["Body"].read()
        found = _CONTENT_RANGE.fullmatch(str(got.get("ContentRange") or ""))
        size = int(found.group(3)) if found else len(data)
        return data, size, str(got.get("ETag", ""))

    def _block(self, index: int) -> bytes:
        cached = self._blocks.get(index)
        if cached is not None:
            self._blocks.move_to_end(index)
            return cached
        store, block = self._store, self._store.read_block
        start = index * block
        end = min(start + block, self._size) - 1
        try:
            got = store._call(
                "read",
                self._name,
                lambda: store._client.get_object(
                    Bucket=store.bucket,
                    Key=self._key,
                    Range=f"bytes={start}-{end}",
                    IfMatch=self._etag,
                ),
            )
            data = got["Body"].read()
        except (FileNotFoundError, _Changed):
            data = b""
        if len(data) != end - start + 1:
            raise OSError(
                errno.ESTALE,
                f"blob {self._name!r} was replaced or deleted while it was open; open it again",
            )
        self._blocks[index] = data
        while len(self._blocks) > _CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"whence={whence!r} must be 0, 1 or 2")
        if target < 0:
            raise ValueError(f"cannot seek to {target}: before the start of the blob")
        self._position = target
        return target

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed blob")
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        block = self._store.read_block
        parts = []
        while self._position < end:
            index, offset = divmod(self._position, block)
            data = self._block(index)[offset : offset + end - self._position]
            parts.append(data)
            self._position += len(data)
        return b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._blocks.clear()
        super().close()


def _is_blob_name(name: str) -> bool:
    """Whether ``name`` can name a blob (what else a bucket holds is not listed)."""
    try:
        check_blob_name(name)
    except InvalidArgument:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
