"""The recording container, format v1: low-level streaming authenticated encryption.

This is a sharp tool (the "hazmat" layer, DESIGN.md §7): it takes raw 32-byte data keys and
knows nothing of key wrapping, expiry enforcement, the catalog or audio. Users call the vault;
the vault calls this module. The byte layout is specified in ``docs/container-format.md``.

A container is a header followed by chunks::

    header  = "SDRREC" | version=1 | header_len u16 | chunk_size u32 | expires_at_us u64
              | salt (32) | len u8 + recording_id | len u8 + policy_version | len u8 + audio_format
              | key_commitment (32)
    chunk i = AES-256-GCM(chunk_key, nonce_prefix (7) | i u32 | final u8, plaintext_i,
                          aad = SHA-256(header))

``chunk_key``, ``nonce_prefix`` and ``key_commitment`` are derived separately with HKDF-SHA256
from the data key and the salt, with every header byte before the commitment in the HKDF info.
Every non-final chunk holds exactly ``chunk_size`` bytes of plaintext; the final chunk holds 1 to
``chunk_size`` bytes, or 0 for an empty recording.

Reading fails closed with one opaque :class:`~sampledrec.errors.InvalidRecording`, whatever went
wrong, and no plaintext of a chunk is ever returned before that chunk's tag has verified.

>>> import io, os
>>> key, sink = os.urandom(32), io.BytesIO()
>>> writer = ContainerWriter(sink, key, recording_id="rec-1", policy_version="ab12",
...                          expires_at_us=1_700_000_000_000_000, audio_format=b"pcm16/8000/1")
>>> writer.write(b"hello, ")
>>> writer.write(b"world")
>>> info = writer.close()
>>> ContainerReader(sink.getvalue(), key).read_all()
b'hello, world'
>>> info.plaintext_bytes, info.chunks
(12, 1)
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, NoReturn, TypeAlias, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import InvalidArgument, InvalidKey, InvalidRecording, KeyTypeError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "ContainerReader",
    "ContainerWriter",
    "Header",
    "RecoveredPrefix",
    "SealInfo",
    "Source",
    "read_header",
    "recover_prefix",
]

MAGIC: Final = b"SDRREC"
FORMAT_VERSION: Final = 1
DEFAULT_CHUNK_SIZE: Final = 64 * 1024
MAX_CHUNK_SIZE: Final = 1 << 24
KEY_BYTES: Final = 32
SALT_BYTES: Final = 32
COMMITMENT_BYTES: Final = 32
NONCE_PREFIX_BYTES: Final = 7
TAG_BYTES: Final = 16
MAX_FIELD_BYTES: Final = 255
HKDF_INFO_PREFIX: Final = b"sampledrec/container/v1/"
LABEL_CHUNK_KEY: Final = b"chunk-key"
LABEL_NONCE_PREFIX: Final = b"nonce-prefix"
LABEL_COMMITMENT: Final = b"key-commitment"

# magic | version u8 | header_len u16 | chunk_size u32 | expires_at_us u64 | salt
_FIXED: Final = struct.Struct(">6sBHIQ32s")
_LEAD: Final = struct.Struct(">6sBH")  # enough to learn header_len
_MIN_HEADER: Final = _FIXED.size + 3 * 2 + COMMITMENT_BYTES  # each field at least 1 byte
_MAX_HEADER: Final = _FIXED.size + 3 * (1 + MAX_FIELD_BYTES) + COMMITMENT_BYTES
# Chunk indexes are u32, so a container has at most 2**32 chunks. Read at call time (not bound
# as a default) so that tests can lower it.
_MAX_CHUNKS = 1 << 32
_U32: Final = struct.Struct(">I")
_MESSAGE: Final = "the recording cannot be read: it is damaged, truncated, or the key is wrong"

Source: TypeAlias = bytes | bytearray | memoryview | BinaryIO
"""A container to read: its bytes, or a seekable binary file positioned anywhere."""


def _fail() -> NoReturn:
    # Raised outside any ``except`` block, so the exception has neither cause nor context.
    raise InvalidRecording(_MESSAGE)


@dataclass(frozen=True, slots=True)
class Header:
    """The parsed (not yet authenticated) header of a container.

    ``read_header`` returns it without any key, so its fields are only claims until a
    :class:`ContainerReader` with the right data key has checked the key commitment.
    """

    recording_id: str
    policy_version: str
    """Lowercase hex, as given to the writer."""
    expires_at_us: int
    """The expiry the recording was sealed with, in microseconds since 1970-01-01 UTC."""
    audio_format: bytes
    chunk_size: int
    """Plaintext bytes in every chunk but the last."""
    header_len: int
    """Bytes before the first chunk."""


@dataclass(frozen=True, slots=True)
class SealInfo:
    """What :meth:`ContainerWriter.close` wrote."""

    plaintext_bytes: int
    chunks: int
    ciphertext_bytes: int
    """Every byte written to the sink, header included."""
    sha256: bytes
    """SHA-256 of every byte written to the sink, header included (32 bytes)."""


@dataclass(frozen=True, slots=True)
class RecoveredPrefix:
    """What :func:`recover_prefix` found in a container.

    If ``sealed``, the container is whole and valid: *every* chunk verifies, each at its index,
    the last one as final; there is nothing to recover. Otherwise chunks ``0 .. chunks - 1``
    each verify as a *non-final* chunk at their index, and hold ``plaintext_bytes`` (``chunks *
    chunk_size``) bytes of audio; stream them with :meth:`ContainerReader.iter_prefix` into a
    new container, and mark that recording truncated. A container whose final chunk verifies
    but an earlier one does not is not sealed: its prefix stops before the first bad chunk.
    """

    header: Header
    sealed: bool
    chunks: int
    plaintext_bytes: int


# -- validation --------------------------------------------------------------------------------


def _key_bytes(data_key: object) -> bytes:
    if not isinstance(data_key, bytes | bytearray):
        raise KeyTypeError(
            f"data_key must be bytes, got {type(data_key).__name__}; "
            "pass the recording's 32-byte data key (os.urandom(32) when creating it)"
        )
    if len(data_key) != KEY_BYTES:
        raise InvalidKey(
            f"data_key must be {KEY_BYTES} bytes, got {len(data_key)} bytes; "
            "pass the recording's 32-byte data key (os.urandom(32) when creating it)"
        )
    return bytes(data_key)


def _field(name: str, value: bytes, shown: object) -> bytes:
    if not 1 <= len(value) <= MAX_FIELD_BYTES:
        raise InvalidArgument(
            f"{name}={shown!r} must be 1 to {MAX_FIELD_BYTES} bytes long, got {len(value)} bytes"
        )
    return bytes((len(value),)) + value


def _header_body(
    *,
    recording_id: object,
    policy_version: object,
    expires_at_us: object,
    audio_format: object,
    chunk_size: object,
    salt: bytes,
) -> bytes:
    """The header up to (not including) the key commitment, with every argument checked."""
    if not isinstance(recording_id, str):
        raise InvalidArgument(
            f"recording_id={recording_id!r} must be a str; pass the recording's id as text"
        )
    try:
        rid = recording_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"recording_id={recording_id!r} is not valid Unicode text (lone surrogate); "
            "pass text that encodes to UTF-8"
        ) from None
    pv: bytes | None = None
    if isinstance(policy_version, str) and policy_version.isascii():
        try:
            pv = bytes.fromhex(policy_version)
        except ValueError:
            pv = None
        if pv is not None and pv.hex() != policy_version:
            pv = None  # uppercase or spaces: would not read back as given
    if pv is None:
        raise InvalidArgument(
            f"policy_version={policy_version!r} must be lowercase hex text with an even number "
            "of digits; pass Policy.version"
        )
    if not isinstance(expires_at_us, int) or isinstance(expires_at_us, bool):
        raise InvalidArgument(
            f"expires_at_us={expires_at_us!r} must be an int (microseconds since 1970 UTC)"
        )
    if not 0 <= expires_at_us < 1 << 63:
        raise InvalidArgument(
            f"expires_at_us={expires_at_us} must be between 0 and 2**63 - 1 microseconds "
            "since 1970 UTC"
        )
    if not isinstance(audio_format, bytes | bytearray):
        raise InvalidArgument(
            f"audio_format={audio_format!r} must be bytes, such as b'pcm16/8000/1'"
        )
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
        raise InvalidArgument(f"chunk_size={chunk_size!r} must be an int number of bytes")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidArgument(
            f"chunk_size={chunk_size} must be between 1 and {MAX_CHUNK_SIZE} bytes; "
            f"the default, {DEFAULT_CHUNK_SIZE}, suits audio"
        )
    variable = (
        _field("recording_id", rid, recording_id)
        + _field("policy_version", pv, policy_version)
        + _field("audio_format", bytes(audio_format), bytes(audio_format))
    )
    header_len = _FIXED.size + len(variable) + COMMITMENT_BYTES
    fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, header_len, chunk_size, expires_at_us, salt)
    return fixed + variable


# -- key schedule ------------------------------------------------------------------------------


def _hkdf(data_key: bytes, salt: bytes, label: bytes, body: bytes, length: int) -> bytes:
    info = HKDF_INFO_PREFIX + label + b"\x00" + body
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(data_key)


def _key_schedule(data_key: bytes, salt: bytes, body: bytes) -> tuple[bytes, bytes, bytes]:
    """``(chunk_key, nonce_prefix, key_commitment)`` for a header body."""
    return (
        _hkdf(data_key, salt, LABEL_CHUNK_KEY, body, KEY_BYTES),
        _hkdf(data_key, salt, LABEL_NONCE_PREFIX, body, NONCE_PREFIX_BYTES),
        _hkdf(data_key, salt, LABEL_COMMITMENT, body, COMMITMENT_BYTES),
    )


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + _U32.pack(index) + (b"\x01" if final else b"\x00")


# -- writing -----------------------------------------------------------------------------------


class ContainerWriter:
    """Encrypts one recording into a container, streaming, in bounded memory.

    Nothing reaches ``sink`` until the first chunk is full and more data follows (or until
    :meth:`close`), so a caller may delay creating the file; the header is written together with
    the first chunk. At most ``chunk_size`` bytes of plaintext are held at any time. The writer
    never closes, flushes or syncs ``sink``: that is the caller's job after :meth:`close`.

    If writing to ``sink`` fails, the writer refuses all further use: the container left behind
    fails closed, and its verified prefix can be saved with :func:`recover_prefix`.

    ``salt`` exists for known-answer tests only. Leave it ``None`` (a fresh random salt): with a
    fixed salt, two containers written with the same data key and header would reuse nonces.
    Re-sealing under the same data key (as crash recovery does) is safe with a fresh salt.

    A writer is not thread-safe: use it from one thread at a time.
    """

    __slots__ = (
        "_aad",
        "_aead",
        "_buf",
        "_chunk_size",
        "_failed",
        "_hash",
        "_header",
        "_header_written",
        "_index",
        "_info",
        "_plaintext",
        "_prefix",
        "_sink",
        "_written",
        "recording_id",
    )

    def __init__(
        self,
        sink: BinaryIO,
        data_key: bytes,
        *,
        recording_id: str,
        policy_version: str,
        expires_at_us: int,
        audio_format: bytes,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        salt: bytes | None = None,
    ) -> None:
        key = _key_bytes(data_key)
        if salt is None:
            salt = os.urandom(SALT_BYTES)
        elif not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
            raise InvalidArgument(
                f"salt must be {SALT_BYTES} bytes or None; leave it None outside known-answer tests"
            )
        body = _header_body(
            recording_id=recording_id,
            policy_version=policy_version,
            expires_at_us=expires_at_us,
            audio_format=audio_format,
            chunk_size=chunk_size,
            salt=salt,
        )
        chunk_key, prefix, commitment = _key_schedule(key, salt, body)
        self.recording_id = recording_id
        self._sink = sink
        self._header = body + commitment
        self._aad = hashlib.sha256(self._header).digest()
        self._aead = AESGCM(chunk_key)
        self._prefix = prefix
        self._chunk_size = chunk_size
        self._buf = bytearray()
        self._index = 0  # the next chunk's index: every index is used once, in order
        self._hash = hashlib.sha256()
        self._plaintext = 0
        self._written = 0
        self._header_written = False
        self._failed = False
        self._info: SealInfo | None = None

    def __repr__(self) -> str:
        state = "sealed" if self._info else "failed" if self._failed else "open"
        return (
            f"ContainerWriter(recording_id={self.recording_id!r}, {state}, "
            f"plaintext_bytes={self._plaintext}, chunks_written={self._index})"
        )

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a ContainerWriter holds key material and cannot be pickled or copied")

    @property
    def buffered(self) -> int:
        """Bytes of plaintext held in memory, waiting for the next chunk (at most chunk_size)."""
        return len(self._buf)

    @property
    def plaintext_bytes(self) -> int:
        """Bytes of plaintext taken so far (buffered or written)."""
        return self._plaintext

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Take plaintext; write every chunk that is full and known not to be the last.

        A full chunk is held until more data arrives, because only :meth:`close` knows which
        chunk is the final one.
        """
        if self._info is not None or self._failed:
            self._refuse("write")
        buf = self._buf
        size = self._chunk_size
        if isinstance(data, bytes):
            n = len(data)
            if len(buf) + n <= size:  # the common case: a frame that fits
                buf += data
                self._plaintext += n
                return
            view = memoryview(data)
        elif isinstance(data, bytearray | memoryview):
            view = memoryview(data)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            n = len(view)
        else:
            raise InvalidArgument(
                f"data must be bytes, bytearray or memoryview, got {type(data).__name__}"
            )
        pos = 0
        if n > size - len(buf):
            if buf:
                pos = size - len(buf)
                buf += view[:pos]
                self._emit(buf, final=False)
                buf.clear()
            # Keep the last full chunk (or the remainder) buffered: it may be the final one.
            while n - pos > size:
                self._emit(view[pos : pos + size], final=False)
                pos += size
        buf += view[pos:]
        self._plaintext += n

    def close(self) -> SealInfo:
        """Write the final chunk (and the header, if not yet written) and return what was sealed.

        Calling it again returns the same :class:`SealInfo` and writes nothing.
        """
        if self._info is not None:
            return self._info
        if self._failed:
            self._refuse("close")
        self._emit(self._buf, final=True)
        self._buf = bytearray()
        self._info = SealInfo(
            plaintext_bytes=self._plaintext,
            chunks=self._index,
            ciphertext_bytes=self._written,
            sha256=self._hash.digest(),
        )
        return self._info

    def _refuse(self, what: str) -> NoReturn:
        if self._failed:
            raise InvalidArgument(
                f"{what}() on the ContainerWriter of recording {self.recording_id!r}, which "
                "failed earlier (its sink raised, or the recording grew too long); the container "
                "cannot be sealed: recover its prefix or destroy it"
            )
        raise InvalidArgument(
            f"{what}() on the ContainerWriter of recording {self.recording_id!r}, which is "
            "already sealed; a sealed container never changes"
        )

    def _emit(self, plaintext: bytes | bytearray | memoryview, *, final: bool) -> None:
        # Stays set if anything below raises: a chunk index is never used for two plaintexts.
        self._failed = True
        index = self._index
        if index >= _MAX_CHUNKS - (0 if final else 1):  # keep an index for the final chunk
            raise InvalidArgument(
                f"recording {self.recording_id!r} is too long for chunk_size="
                f"{self._chunk_size}: a container holds at most 2**32 chunks; "
                "use a larger chunk_size"
            )
        self._index = index + 1
        sealed = self._aead.encrypt(_nonce(self._prefix, index, final), plaintext, self._aad)
        if not self._header_written:
            self._put(self._header)
            self._header_written = True
        self._put(sealed)
        self._failed = False

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._sink.write(view)
            if n is None:  # a non-blocking raw stream would block: treat as a failed write
                raise BlockingIOError("the sink would block; pass a blocking binary file")
            view = view[n:]
        self._hash.update(data)
        self._written += len(data)


# -- reading -----------------------------------------------------------------------------------


class _Bytes:
    __slots__ = ("_view", "size")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self._view = view if view.ndim == 1 and view.itemsize == 1 else view.cast("B")
        self.size = len(self._view)

    def read_at(self, offset: int, n: int) -> bytes | memoryview:
        return self._view[offset : offset + n]


class _File:
    __slots__ = ("_file", "size")

    def __init__(self, file: BinaryIO) -> None:
        seekable = getattr(file, "seekable", None)
        if not callable(seekable) or not seekable():
            raise InvalidArgument(
                f"source={file!r} must be bytes or a seekable binary file opened for reading"
            )
        self._file = file
        self.size = file.seek(0, io.SEEK_END)

    def read_at(self, offset: int, n: int) -> bytes:
        self._file.seek(offset)
        parts = []
        while n > 0:
            part = self._file.read(n)
            if not part:
                break
            parts.append(part)
            n -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _open_source(source: object) -> _Bytes | _File:
    if isinstance(source, bytes | bytearray | memoryview):
        return _Bytes(source)
    if hasattr(source, "read") and hasattr(source, "seek"):
        return _File(cast(BinaryIO, source))
    raise InvalidArgument(
        f"source must be bytes, bytearray, memoryview or a seekable binary file, "
        f"got {type(source).__name__}"
    )


def _read_header_bytes(src: _Bytes | _File) -> bytes:
    lead = bytes(src.read_at(0, _LEAD.size))
    if len(lead) < _LEAD.size:
        _fail()
    magic, version, header_len = _LEAD.unpack(lead)
    if magic != MAGIC or version != FORMAT_VERSION:
        _fail()
    if not _MIN_HEADER <= header_len <= _MAX_HEADER:
        _fail()
    raw = bytes(src.read_at(0, header_len))
    if len(raw) != header_len:
        _fail()
    return raw


def _parse_header(raw: bytes) -> tuple[Header, bytes, bytes]:
    """``(header, salt, commitment)`` of the exact header bytes, or :func:`_fail`."""
    magic, version, header_len, chunk_size, expires, salt = _FIXED.unpack_from(raw, 0)
    if magic != MAGIC or version != FORMAT_VERSION or header_len != len(raw):
        _fail()
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE or expires >= 1 << 63:
        _fail()
    pos = _FIXED.size
    fields = []
    for _ in range(3):
        n = raw[pos]
        pos += 1
        if n == 0 or pos + n > header_len - COMMITMENT_BYTES:
            _fail()
        fields.append(raw[pos : pos + n])
        pos += n
    if pos != header_len - COMMITMENT_BYTES:
        _fail()
    try:
        recording_id = fields[0].decode("utf-8")
    except UnicodeDecodeError:
        recording_id = None
    if recording_id is None:
        _fail()
    header = Header(
        recording_id=recording_id,
        policy_version=fields[1].hex(),
        expires_at_us=expires,
        audio_format=fields[2],
        chunk_size=chunk_size,
        header_len=header_len,
    )
    return header, salt, raw[pos:]


def read_header(source: Source) -> Header:
    """Parse a container's header without any key and without authenticating it.

    Raises :class:`~sampledrec.errors.InvalidRecording` if the bytes are not a v1 header.
    A file is read from its start, whatever its position.
    """
    header, _, _ = _parse_header(_read_header_bytes(_open_source(source)))
    return header


class ContainerReader:
    """Opens a container with its data key, and reads it back only as far as it verifies.

    Building the reader parses the header and checks the key commitment in constant time, so a
    wrong data key or an altered header fails here, and :attr:`header` is authentic once the
    reader exists (the commitment is derived from the data key and every other header byte).
    The chunks are checked as they are read:
    the final chunk is authenticated first (by :meth:`plaintext_size`, :meth:`iter_chunks` and
    :meth:`read_range`; :meth:`read_all` authenticates every chunk anyway), which proves that the
    container is complete; every other chunk is authenticated before any of its plaintext is
    returned. Every failure raises the one opaque :class:`~sampledrec.errors.InvalidRecording`.

    A bytes source is used in place (not copied); a file source is read with ``seek`` and
    ``read`` (so share it with no other thread) and its size is taken once, here. I/O errors
    from a file propagate as they are; only what the bytes say is collapsed into
    InvalidRecording.
    """

    __slots__ = (
        "_aad",
        "_aead",
        "_body",
        "_checked",
        "_prefix",
        "_segment",
        "_src",
        "header",
    )

    def __init__(self, source: Source, data_key: bytes) -> None:
        key = _key_bytes(data_key)
        self._src = _open_source(source)
        raw = _read_header_bytes(self._src)
        header, salt, commitment = _parse_header(raw)
        chunk_key, prefix, expected = _key_schedule(key, salt, raw[:-COMMITMENT_BYTES])
        if not hmac.compare_digest(expected, commitment):
            _fail()
        self.header: Header = header
        self._aad = hashlib.sha256(raw).digest()
        self._aead = AESGCM(chunk_key)
        self._prefix = prefix
        self._segment = header.chunk_size + TAG_BYTES
        self._body = self._src.size - header.header_len  # chunk bytes after the header
        self._checked: tuple[int, int] | None = None  # (chunks, plaintext size) once verified

    def __repr__(self) -> str:
        return f"ContainerReader(recording_id={self.header.recording_id!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a ContainerReader holds key material and cannot be pickled or copied")

    # -- geometry and single chunks

    def _chunk_count(self) -> int:
        """The number of chunks the container's length implies, if the length is possible."""
        body, segment = self._body, self._segment
        if body < TAG_BYTES:
            _fail()
        count = -(-body // segment)
        last = body - (count - 1) * segment
        # The writer never leaves a partial tag, nor an empty final chunk after a full one.
        if last < TAG_BYTES or (count > 1 and last == TAG_BYTES) or count > _MAX_CHUNKS:
            _fail()
        return count

    def _open_chunk(self, index: int, *, final: bool, length: int | None = None) -> bytes:
        """The plaintext of chunk ``index``, authenticated as final or non-final."""
        if length is None:
            length = self._segment
        sealed = self._src.read_at(self.header.header_len + index * self._segment, length)
        if len(sealed) != length:
            _fail()
        try:
            plain: bytes | None = self._aead.decrypt(
                _nonce(self._prefix, index, final), sealed, self._aad
            )
        except InvalidTag:
            plain = None
        if plain is None:
            _fail()
        return plain

    def _last_length(self, count: int) -> int:
        return self._body - (count - 1) * self._segment

    def _check_final(self) -> tuple[int, int]:
        """``(chunks, plaintext size)``, after authenticating the final chunk (once)."""
        if self._checked is None:
            count = self._chunk_count()
            last = self._open_chunk(count - 1, final=True, length=self._last_length(count))
            self._checked = (count, (count - 1) * self.header.chunk_size + len(last))
        return self._checked

    # -- public reading

    def plaintext_size(self) -> int:
        """The recording's length in bytes of plaintext, after authenticating the final chunk."""
        return self._check_final()[1]

    def read_all(self) -> bytes:
        """The whole plaintext, returned only after every chunk has been authenticated."""
        count = self._chunk_count()
        parts = [self._open_chunk(i, final=False) for i in range(count - 1)]
        parts.append(self._open_chunk(count - 1, final=True, length=self._last_length(count)))
        self._checked = (count, (count - 1) * self.header.chunk_size + len(parts[-1]))
        return b"".join(parts)

    def iter_chunks(self) -> Iterator[bytes]:
        """Yield the plaintext chunk by chunk, in order; nothing for an empty recording.

        The final chunk is authenticated before the first chunk is yielded (so a truncated
        container yields nothing), and each chunk is authenticated before it is yielded. If the
        source changes meanwhile, iteration stops with InvalidRecording at the first bad chunk.
        """
        count, _ = self._check_final()
        for i in range(count - 1):
            yield self._open_chunk(i, final=False)
        last = self._open_chunk(count - 1, final=True, length=self._last_length(count))
        if last:
            yield last

    def read_range(self, start: int, end: int) -> bytes:
        """Plaintext bytes ``[start, end)``, like ``read_all()[start:end]`` with ``0 <= start``.

        Authenticates the final chunk, then decrypts and authenticates only the chunks that
        overlap the range, before returning anything. ``end`` past the end of the recording is
        clipped, as in slicing.
        """
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"{name}={value!r} must be an int byte offset, 0 or more")
        if end < start:
            raise InvalidArgument(f"end={end} must not be less than start={start}")
        count, size = self._check_final()
        end = min(end, size)
        if start >= end:
            return b""
        chunk_size = self.header.chunk_size
        first, last = start // chunk_size, (end - 1) // chunk_size
        parts = [
            self._open_chunk(i, final=False)
            if i < count - 1
            else self._open_chunk(i, final=True, length=self._last_length(count))
            for i in range(first, last + 1)
        ]
        joined = b"".join(parts)
        offset = first * chunk_size
        return joined[start - offset : end - offset]

    # -- crash recovery

    def recover_prefix(self) -> RecoveredPrefix:
        """See :func:`recover_prefix`."""
        # Every chunk is authenticated, from index 0 on: a final chunk that verifies proves the
        # length, not that the chunks before it are intact.
        count = 0
        while (count + 1) * self._segment <= self._body and count < _MAX_CHUNKS - 1:
            if not self._verifies(count, final=False, length=self._segment):
                break
            count += 1
        total = self._geometry()
        if total is not None and count == total - 1:
            last = self._last_length(total)
            if self._verifies(total - 1, final=True, length=last):
                size = (total - 1) * self.header.chunk_size + last - TAG_BYTES
                self._checked = (total, size)
                return RecoveredPrefix(self.header, sealed=True, chunks=total, plaintext_bytes=size)
        return RecoveredPrefix(
            self.header,
            sealed=False,
            chunks=count,
            plaintext_bytes=count * self.header.chunk_size,
        )

    def _geometry(self) -> int | None:
        """The number of chunks the container's length implies, or None if it is impossible."""
        try:
            return self._chunk_count()
        except InvalidRecording:
            return None

    def _verifies(self, index: int, *, final: bool, length: int) -> bool:
        """Whether chunk ``index`` authenticates (as final or not); its plaintext is dropped."""
        try:
            self._open_chunk(index, final=final, length=length)
        except InvalidRecording:
            return False
        return True

    def iter_prefix(self, chunks: int) -> Iterator[bytes]:
        """Yield the plaintext of chunks ``0 .. chunks - 1``, each authenticated as a non-final
        chunk before it is yielded; raises InvalidRecording at the first that is not.

        Meant for crash recovery, with ``chunks`` from :meth:`recover_prefix`.
        """
        if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 0:
            raise InvalidArgument(f"chunks={chunks!r} must be an int, 0 or more")
        for i in range(chunks):
            yield self._open_chunk(i, final=False)


def recover_prefix(source: Source, data_key: bytes) -> RecoveredPrefix:
    """Find what can be saved from a container whose writer never closed it (a crash mid-call).

    Checks the header and key commitment (raising InvalidRecording if they fail: nothing can be
    saved, destroy the file), then authenticates the chunks from index 0 on, each as a
    *non-final* chunk at its index, stopping at the first that does not verify (or that the
    file cuts short):

    - if every chunk before the last verified and the last verifies as the final chunk, the
      container is whole: ``sealed=True``, and ``chunks`` and ``plaintext_bytes`` describe the
      whole recording. Every chunk was authenticated, not only the final one;
    - otherwise ``sealed=False`` and ``chunks`` is the number of leading chunks that verified.
      Bytes after them are ignored, even a final chunk that verifies after a damaged one.

    The prefix is exactly what the writer had written before the crash, or less if the file
    was also damaged: chunk tags bind the index, so no chunk can be moved or repeated into it.
    Nothing shows that the prefix is *all* that was written; that is why the re-sealed copy
    must be marked truncated. Re-seal with :meth:`ContainerReader.iter_prefix`::

        found = recover_prefix(source, key)
        for data in ContainerReader(source, key).iter_prefix(found.chunks):
            new_writer.write(data)
    """
    return ContainerReader(source, data_key).recover_prefix()
