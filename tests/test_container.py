"""Tests of the recording container, format v1 (:mod:`sampledrec.vault.container`, DESIGN.md §7).

Containers here use tiny chunks (16 bytes unless said otherwise) so that every chunk boundary,
every byte and every bit of a multi-chunk container can be attacked in well under a second.
The byte layout is rebuilt independently from ``docs/container-format.md`` (see
:func:`reference_seal`), so the tests check the documented format, not just a round trip.
"""

from __future__ import annotations

import array
import doctest
import hashlib
import io
import itertools
import os
import pickle
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

import sampledrec.errors
import sampledrec.vault.container as container
from sampledrec.errors import (
    InvalidArgument,
    InvalidKey,
    InvalidRecording,
    KeyTypeError,
    SampledrecError,
)
from sampledrec.vault.container import (
    ContainerReader,
    ContainerWriter,
    Header,
    SealInfo,
    read_header,
    recover_prefix,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHUNK = 16
TAG = 16
MESSAGE = "the recording cannot be read: it is damaged, truncated, or the key is wrong"
FIELDS: dict[str, Any] = {
    "recording_id": "rec-0001",
    "policy_version": "ab12",
    "expires_at_us": 1_767_225_600_000_000,  # 2026-01-01T00:00:00Z
    "audio_format": b"pcm16/8000/1",
}


def seal(
    data: bytes,
    *,
    key: bytes = KEY,
    chunk_size: int = CHUNK,
    frame: int | None = None,
    **fields: Any,
) -> bytes:
    """A sealed container of ``data``, written in frames of ``frame`` bytes (default: at once)."""
    sink = io.BytesIO()
    writer = ContainerWriter(sink, key, chunk_size=chunk_size, **{**FIELDS, **fields})
    step = frame or max(len(data), 1)
    for i in range(0, len(data), step):
        writer.write(data[i : i + step])
    writer.close()
    return sink.getvalue()


def split(blob: bytes, chunk_size: int = CHUNK) -> tuple[bytes, list[bytes]]:
    """The header and the sealed chunks of a container, cut as the format says."""
    header_len = int.from_bytes(blob[7:9], "big")
    body = blob[header_len:]
    segment = chunk_size + TAG
    return blob[:header_len], [body[i : i + segment] for i in range(0, len(body), segment)]


def plain_chunks(data: bytes, chunk_size: int = CHUNK) -> list[bytes]:
    """The plaintext of each chunk, as the writer cuts it (the final chunk is never empty,
    except for an empty recording)."""
    if not data:
        return [b""]
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def assert_opaque(exc: BaseException) -> None:
    """The one opaque failure: exact type, fixed message, nothing chained."""
    assert type(exc) is InvalidRecording
    assert str(exc) == MESSAGE
    assert exc.__cause__ is None
    assert exc.__context__ is None


def read_fails(blob: bytes, key: bytes = KEY, *, truth: list[bytes] | None = None) -> None:
    """Every way of reading ``blob`` fails closed.

    ``iter_chunks`` yields nothing, or, given the ``truth`` (the genuine plaintext chunks), at
    most genuine chunks at their own index before it fails: never a chunk that does not verify.
    Without ``truth`` the final chunk or the length is damaged, so ``plaintext_size`` fails too;
    with it, only chunks before the final one may be, which ``plaintext_size`` does not read.
    """
    with pytest.raises(InvalidRecording) as info:
        ContainerReader(blob, key).read_all()
    assert_opaque(info.value)
    got: list[bytes] = []
    with pytest.raises(InvalidRecording) as info:
        got.extend(ContainerReader(blob, key).iter_chunks())
    assert_opaque(info.value)
    assert got == (truth or [])[: len(got)]
    if truth is None:
        with pytest.raises(InvalidRecording):
            ContainerReader(blob, key).plaintext_size()
    with pytest.raises(InvalidRecording):
        ContainerReader(blob, key).read_range(0, len(blob))  # covers every chunk


SMALL = bytes(range(40))  # three chunks: 16 + 16 + 8
SMALL_BLOB = seal(SMALL)


# -- the documented format, rebuilt independently ---------------------------------------------


def hkdf(key: bytes, salt: bytes, label: bytes, body: bytes, length: int) -> bytes:
    info = b"sampledrec/container/v1/" + label + b"\x00" + body
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def reference_seal(data: bytes, key: bytes, salt: bytes, chunk_size: int, **fields: Any) -> bytes:
    """``docs/container-format.md``, written out as plainly as possible."""
    f = {**FIELDS, **fields}
    rid = f["recording_id"].encode()
    pv = bytes.fromhex(f["policy_version"])
    fmt = f["audio_format"]
    header_len = 6 + 1 + 2 + 4 + 8 + 32 + (1 + len(rid)) + (1 + len(pv)) + (1 + len(fmt)) + 32
    body = (
        b"SDRREC"
        + bytes([1])
        + header_len.to_bytes(2, "big")
        + chunk_size.to_bytes(4, "big")
        + f["expires_at_us"].to_bytes(8, "big")
        + salt
        + bytes([len(rid)])
        + rid
        + bytes([len(pv)])
        + pv
        + bytes([len(fmt)])
        + fmt
    )
    chunk_key = hkdf(key, salt, b"chunk-key", body, 32)
    prefix = hkdf(key, salt, b"nonce-prefix", body, 7)
    header = body + hkdf(key, salt, b"key-commitment", body, 32)
    aad = hashlib.sha256(header).digest()
    chunks = plain_chunks(data, chunk_size)
    out = [header]
    for i, chunk in enumerate(chunks):
        final = i == len(chunks) - 1
        nonce = prefix + i.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
        out.append(AESGCM(chunk_key).encrypt(nonce, chunk, aad))
    return b"".join(out)


@pytest.mark.parametrize(("size", "chunk_size"), [(0, 16), (1, 16), (40, 16), (100, 7), (5, 1)])
def test_matches_the_documented_layout(size: int, chunk_size: int) -> None:
    salt = bytes(range(100, 132))
    data = os.urandom(size)
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=chunk_size, salt=salt, **FIELDS)
    writer.write(data)
    writer.close()
    assert sink.getvalue() == reference_seal(data, KEY, salt, chunk_size)


def test_known_answer() -> None:
    # Pins format v1: any change to the layout, the key schedule or the nonces changes this.
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=16, salt=bytes(32), **FIELDS)
    writer.write(b"sampledrec container known answer")
    info = writer.close()
    assert info.sha256 == hashlib.sha256(sink.getvalue()).digest()
    assert info.sha256.hex() == KNOWN_ANSWER_SHA256


KNOWN_ANSWER_SHA256 = "5a601a90916f652862ec01a1acf14e6a3086f338202fc5ddfb51c2dccc998cba"


DOC = Path(__file__).parent.parent / "docs" / "container-format.md"


def doc_decoder() -> Any:
    """The stand-alone decoder of ``docs/container-format.md`` section 11, loaded as written."""
    text = DOC.read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("\n```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "container_format_doc"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["decode"]


def test_the_documented_decoder_reads_what_the_writer_writes() -> None:
    decode = doc_decoder()
    for size, chunk_size in [(0, 16), (1, 16), (16, 16), (33, 16), (1000, 64), (5, 1)]:
        data = os.urandom(size)
        meta, plain = decode(seal(data, chunk_size=chunk_size), KEY)
        assert plain == data
        assert meta == {**FIELDS, "chunk_size": chunk_size}
    for bit in range(len(SMALL_BLOB) * 8):
        blob = bytearray(SMALL_BLOB)
        blob[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(Exception):  # noqa: B017, PT011 - the decoder's own errors
            decode(bytes(blob), KEY)
    for cut in range(len(SMALL_BLOB)):
        with pytest.raises(Exception):  # noqa: B017, PT011
            decode(SMALL_BLOB[:cut], KEY)


def test_the_documented_worked_example_is_current() -> None:
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=16, salt=bytes(32), **FIELDS)
    writer.write(b"sampledrec container known answer")
    writer.close()
    blob = sink.getvalue()
    text = "".join(DOC.read_text(encoding="utf-8").split())  # hex is spaced for reading
    assert KNOWN_ANSWER_SHA256 in text
    header, chunks = split(blob)
    cuts = [0, 7, 9, 13, 21, 53, 62, 65, 78, 110]  # the fields, as the example lists them
    fields = [header[a:b] for a, b in itertools.pairwise(cuts)]
    for part in [*fields, *chunks]:
        assert part.hex() in text


def test_module_doctests() -> None:
    assert doctest.testmod(container, raise_on_error=False).failed == 0


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 7 * CHUNK + 3])
def test_round_trip_sizes(size: int) -> None:
    data = os.urandom(size)
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=CHUNK, **FIELDS)
    writer.write(data)
    info = writer.close()
    blob = sink.getvalue()
    reader = ContainerReader(blob, KEY)
    assert reader.read_all() == data
    assert list(reader.iter_chunks()) == [c for c in plain_chunks(data) if c]
    assert reader.plaintext_size() == size
    assert reader.read_range(0, size) == data
    chunks = max(1, -(-size // CHUNK))
    header_len = reader.header.header_len
    assert info == SealInfo(
        plaintext_bytes=size,
        chunks=chunks,
        ciphertext_bytes=len(blob),
        sha256=hashlib.sha256(blob).digest(),
    )
    assert len(blob) == header_len + size + TAG * chunks


@settings(deadline=None, max_examples=150)
@given(
    data=st.binary(max_size=400),
    chunk_size=st.integers(1, 48),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    kinds=st.lists(st.sampled_from(["bytes", "bytearray", "memoryview"]), min_size=1),
)
def test_round_trip_any_framing(
    data: bytes, chunk_size: int, cuts: list[int], kinds: list[str]
) -> None:
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=chunk_size, **FIELDS)
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        piece = data[a:b]
        kind = kinds[i % len(kinds)]
        writer.write(
            piece
            if kind == "bytes"
            else bytearray(piece)
            if kind == "bytearray"
            else memoryview(piece)
        )
        assert writer.buffered <= chunk_size
    info = writer.close()
    reader = ContainerReader(sink.getvalue(), KEY)
    assert reader.read_all() == data
    got = list(reader.iter_chunks())
    assert b"".join(got) == data
    assert all(len(c) == chunk_size for c in got[:-1])
    assert all(1 <= len(c) <= chunk_size for c in got[-1:])
    assert info.chunks == max(1, len(got))
    assert reader.plaintext_size() == len(data)


def test_write_accepts_typed_buffers() -> None:
    samples = array.array("h", [0, 1, -1, 32767, -32768] * 10)
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=CHUNK, **FIELDS)
    writer.write(memoryview(samples))
    writer.write(bytearray(b"xyz"))
    writer.close()
    assert ContainerReader(sink.getvalue(), KEY).read_all() == samples.tobytes() + b"xyz"


def test_header_fields_read_back() -> None:
    blob = seal(b"abc", recording_id="réc/ü-2", policy_version="00ff" * 16, chunk_size=9)
    expected = Header(
        recording_id="réc/ü-2",
        policy_version="00ff" * 16,
        expires_at_us=FIELDS["expires_at_us"],
        audio_format=b"pcm16/8000/1",
        chunk_size=9,
        header_len=53 + 1 + len("réc/ü-2".encode()) + 1 + 32 + 1 + 12 + 32,
    )
    assert read_header(blob) == expected
    assert read_header(memoryview(blob)) == expected
    stream = io.BytesIO(blob)
    stream.seek(5)
    assert read_header(stream) == expected
    assert ContainerReader(blob, KEY).header == expected


def test_read_header_needs_no_key_but_proves_nothing() -> None:
    header, chunks = split(SMALL_BLOB)
    forged = header[:53] + bytes([8]) + b"rec-9999" + header[62:]
    assert read_header(forged + b"".join(chunks)).recording_id == "rec-9999"
    read_fails(forged + b"".join(chunks))


@pytest.mark.parametrize(
    "raw",
    [b"", b"SDRREC", b"SDRREC\x02" + SMALL_BLOB[7:], b"XDRREC" + SMALL_BLOB[6:], b"\x00" * 200],
)
def test_read_header_rejects_what_is_not_a_v1_header(raw: bytes) -> None:
    with pytest.raises(InvalidRecording) as info:
        read_header(raw)
    assert_opaque(info.value)


def test_reads_from_files(tmp_path: Path) -> None:
    data = os.urandom(1000)
    path = tmp_path / "rec.sdr"
    with path.open("wb") as sink:
        writer = ContainerWriter(sink, KEY, chunk_size=64, **FIELDS)
        for i in range(0, len(data), 160):
            writer.write(data[i : i + 160])
        info = writer.close()
    assert hashlib.sha256(path.read_bytes()).digest() == info.sha256
    with path.open("rb") as source:
        reader = ContainerReader(source, KEY)
        assert reader.read_all() == data
        assert reader.read_range(100, 700) == data[100:700]
        assert b"".join(reader.iter_chunks()) == data
    with path.open("rb", buffering=0) as raw:
        assert ContainerReader(raw, KEY).read_all() == data


def test_non_seekable_or_odd_sources_are_refused() -> None:
    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

    with pytest.raises(InvalidArgument, match="seekable"):
        ContainerReader(Pipe(), KEY)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="source"):
        ContainerReader("rec.sdr", KEY)  # type: ignore[arg-type]


# -- the writer --------------------------------------------------------------------------------


def test_nothing_reaches_the_sink_until_a_chunk_is_known_not_final() -> None:
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=CHUNK, **FIELDS)
    writer.write(b"x" * CHUNK)  # a full chunk, but it may be the last one
    assert sink.getvalue() == b""
    writer.write(b"y")
    header_len = read_header(sink.getvalue()).header_len
    assert len(sink.getvalue()) == header_len + CHUNK + TAG
    assert writer.buffered == 1


def test_an_empty_recording_is_one_empty_final_chunk() -> None:
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=CHUNK, **FIELDS)
    writer.write(b"")
    assert sink.getvalue() == b""
    info = writer.close()
    blob = sink.getvalue()
    assert len(blob) == read_header(blob).header_len + TAG
    assert info.chunks == 1
    assert info.plaintext_bytes == 0
    assert ContainerReader(blob, KEY).read_all() == b""
    assert list(ContainerReader(blob, KEY).iter_chunks()) == []


def test_close_is_idempotent_and_a_sealed_writer_refuses_data() -> None:
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=CHUNK, **FIELDS)
    writer.write(b"abc")
    info = writer.close()
    size = len(sink.getvalue())
    assert writer.close() is info
    assert len(sink.getvalue()) == size
    with pytest.raises(InvalidArgument, match="already sealed"):
        writer.write(b"more")
    assert "sealed" in repr(writer)


class FailingSink(io.BytesIO):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at

    def write(self, data: Any) -> int:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(28, "No space left on device")
        return super().write(data)


def test_a_writer_whose_sink_failed_refuses_to_go_on() -> None:
    sink = FailingSink(fail_at=3)  # header, chunk 0, then chunk 1 fails
    writer = ContainerWriter(sink, KEY, chunk_size=CHUNK, **FIELDS)
    writer.write(b"a" * 2 * CHUNK)
    with pytest.raises(OSError, match="No space"):
        writer.write(b"b" * CHUNK)
    for action in (lambda: writer.write(b"c"), writer.close):
        with pytest.raises(InvalidArgument, match="failed earlier"):
            action()
    assert "failed" in repr(writer)
    found = recover_prefix(sink.getvalue(), KEY)
    assert (found.sealed, found.chunks) == (False, 1)


class ShortWrites(io.RawIOBase):
    """A raw stream that takes at most 5 bytes per call."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        taken = bytes(b[:5])
        self.data += taken
        return len(taken)


def test_short_writes_are_completed() -> None:
    sink = ShortWrites()
    writer = ContainerWriter(sink, KEY, chunk_size=CHUNK, **FIELDS)  # type: ignore[arg-type]
    writer.write(SMALL)
    info = writer.close()
    assert ContainerReader(bytes(sink.data), KEY).read_all() == SMALL
    assert info.sha256 == hashlib.sha256(sink.data).digest()


def test_the_writer_refuses_more_chunks_than_indexes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "_MAX_CHUNKS", 3)
    assert ContainerReader(seal(b"a" * 3 * CHUNK), KEY).read_all() == b"a" * 3 * CHUNK
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=CHUNK, **FIELDS)
    writer.write(b"a" * 3 * CHUNK)
    with pytest.raises(InvalidArgument, match="too long"):
        writer.write(b"a")
    with pytest.raises(InvalidArgument, match="failed earlier"):
        writer.close()
    monkeypatch.setattr(container, "_MAX_CHUNKS", 1 << 32)
    four = seal(b"a" * 4 * CHUNK)
    monkeypatch.setattr(container, "_MAX_CHUNKS", 3)
    read_fails(four)


class Discard:
    """A sink that keeps only a count and a hash, like writing to a file we never read."""

    def __init__(self) -> None:
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


@pytest.mark.slow
def test_memory_stays_bounded_over_20_mib_of_frames() -> None:
    sink = Discard()
    writer = ContainerWriter(sink, KEY, **FIELDS)  # type: ignore[arg-type]
    frame = os.urandom(160)
    frames = 20 * 1024 * 1024 // 160
    tracemalloc.start()
    try:
        for _ in range(frames):
            writer.write(frame)
            assert writer.buffered <= 65536
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    info = writer.close()
    # One chunk of plaintext, one of ciphertext, and change: nowhere near the 20 MiB written.
    assert peak < 512 * 1024
    assert info.plaintext_bytes == frames * 160
    assert info.ciphertext_bytes == sink.size
    assert info.sha256 == sink.hash.digest()
    assert info.chunks == -(-frames * 160 // 65536)


# -- (key, nonce) pairs never repeat -----------------------------------------------------------


@dataclass(frozen=True)
class Call:
    op: str
    key: bytes
    nonce: bytes

    @property
    def index(self) -> int:
        return int.from_bytes(self.nonce[7:11], "big")

    @property
    def final(self) -> bool:
        return self.nonce[11] == 1


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every AES-GCM call the container module makes, with its key and nonce."""
    calls: list[Call] = []

    class SpyAESGCM:
        def __init__(self, key: bytes) -> None:
            self._key = bytes(key)
            self._inner = AESGCM(key)

        def encrypt(self, nonce: bytes, data: Any, associated_data: bytes) -> bytes:
            calls.append(Call("encrypt", self._key, bytes(nonce)))
            return self._inner.encrypt(nonce, data, associated_data)

        def decrypt(self, nonce: bytes, data: Any, associated_data: bytes) -> bytes:
            calls.append(Call("decrypt", self._key, bytes(nonce)))
            return self._inner.decrypt(nonce, data, associated_data)

    monkeypatch.setattr(container, "AESGCM", SpyAESGCM)
    return calls


def test_no_key_nonce_pair_ever_repeats(spy: list[Call]) -> None:
    sizes = [0, 1, 15, 16, 17, 100, 1000]
    # The worst case: every recording under the same data key and the same header fields.
    for size in sizes:
        for _ in range(10):
            seal(os.urandom(size), frame=7)
            seal(os.urandom(size), frame=7, recording_id="rec-0002")
    pairs = [(c.key, c.nonce) for c in spy if c.op == "encrypt"]
    assert len(pairs) == len(set(pairs))
    # Within one recording: indexes 0, 1, 2, ... and the final flag on the last chunk only.
    by_key: dict[bytes, list[bytes]] = {}
    for key, nonce in pairs:
        by_key.setdefault(key, []).append(nonce)
    assert len(by_key) == 20 * len(sizes)
    for nonces in by_key.values():
        assert len({n[:7] for n in nonces}) == 1
        assert [int.from_bytes(n[7:11], "big") for n in nonces] == list(range(len(nonces)))
        assert [n[11] for n in nonces] == [0] * (len(nonces) - 1) + [1]


# -- tampering ---------------------------------------------------------------------------------


def test_every_single_bit_flip_is_rejected() -> None:
    truth = plain_chunks(SMALL)
    header_len = read_header(SMALL_BLOB).header_len
    for bit in range(len(SMALL_BLOB) * 8):
        blob = bytearray(SMALL_BLOB)
        blob[bit // 8] ^= 1 << (bit % 8)
        damaged = bytes(blob)
        with pytest.raises(InvalidRecording) as info:
            ContainerReader(damaged, KEY).read_all()
        assert_opaque(info.value)
        got: list[bytes] = []
        with pytest.raises(InvalidRecording):
            got.extend(ContainerReader(damaged, KEY).iter_chunks())
        # Only genuine chunks before the damaged one may have been released.
        assert got == truth[: len(got)]
        offset = bit // 8
        if offset >= header_len:
            assert len(got) <= (offset - header_len) // (CHUNK + TAG)
        with pytest.raises(InvalidRecording):
            ContainerReader(damaged, KEY).read_range(0, len(SMALL))


def test_truncation_at_every_offset_is_rejected() -> None:
    for cut in range(len(SMALL_BLOB)):
        read_fails(SMALL_BLOB[:cut])


def test_a_container_cut_after_a_full_non_final_chunk_is_rejected() -> None:
    header, chunks = split(SMALL_BLOB)
    for keep in (1, 2):
        read_fails(header + b"".join(chunks[:keep]))
    # Also when the plaintext is a whole number of chunks (the final chunk is full).
    data = os.urandom(3 * CHUNK)
    header, chunks = split(seal(data))
    assert [len(c) for c in chunks] == [CHUNK + TAG] * 3
    read_fails(header + b"".join(chunks[:2]))


@pytest.mark.parametrize(
    "extra",
    [b"\x00", os.urandom(15), bytes(16), os.urandom(16), os.urandom(CHUNK + TAG), os.urandom(99)],
)
def test_appended_bytes_are_rejected(extra: bytes) -> None:
    read_fails(SMALL_BLOB + extra)


def test_appending_a_genuine_chunk_is_rejected() -> None:
    _, chunks = split(SMALL_BLOB)
    read_fails(SMALL_BLOB + chunks[0])
    read_fails(SMALL_BLOB + chunks[-1])


def test_reordered_dropped_or_duplicated_chunks_are_rejected() -> None:
    data = os.urandom(4 * CHUNK + 5)
    header, chunks = split(seal(data))
    a, b, c, d, last = chunks
    for arrangement in [
        [b, a, c, d, last],  # swap
        [a, c, b, d, last],
        [a, b, c, last, d],  # final chunk moved
        [a, c, d, last],  # drop
        [b, c, d, last],
        [a, b, c, d],  # drop the final chunk
        [a, a, b, c, d, last],  # duplicate
        [a, b, c, d, last, last],
        [a, b, b, d, last],  # duplicate over another
        [last],
    ]:
        read_fails(header + b"".join(arrangement), truth=plain_chunks(data))


def test_header_swapped_between_recordings_is_rejected() -> None:
    # Same data key, same fields: only the random salts differ.
    twin_a, twin_b = seal(SMALL), seal(SMALL)
    # Same data key, another recording id.
    other = seal(SMALL, recording_id="rec-0002")
    for x, y in [(twin_a, twin_b), (twin_a, other), (other, twin_b)]:
        hx, cx = split(x)
        hy, cy = split(y)
        read_fails(hx + b"".join(cy))
        read_fails(hy + b"".join(cx))
        # One chunk spliced in at its own index: the chunk before it is genuine and may be read.
        read_fails(hx + cx[0] + cy[1] + cx[2], truth=plain_chunks(SMALL))


@pytest.mark.parametrize(
    "change",
    [
        {"recording_id": "rec-0002"},
        {"policy_version": "ab13"},
        {"expires_at_us": FIELDS["expires_at_us"] + 1},
        {"audio_format": b"pcm16/8000/2"},
    ],
)
def test_each_bound_field_matters(change: dict[str, Any]) -> None:
    # Rewrite one header field (with a consistent header_len) over genuine chunks and commitment.
    salt = bytes(32)
    genuine = reference_seal(SMALL, KEY, salt, CHUNK)
    altered = reference_seal(SMALL, KEY, salt, CHUNK, **change)
    h1, c1 = split(genuine)
    h2, _ = split(altered)
    read_fails(h2[:-32] + h1[-32:] + b"".join(c1))  # old commitment
    read_fails(h2 + b"".join(c1))  # a commitment that matches, over the old chunks


def test_a_wrong_data_key_fails_at_the_commitment(spy: list[Call]) -> None:
    with pytest.raises(InvalidRecording) as info:
        ContainerReader(SMALL_BLOB, OTHER_KEY)
    assert_opaque(info.value)
    assert spy == []  # no chunk was even tried
    with pytest.raises(InvalidRecording):
        recover_prefix(SMALL_BLOB, OTHER_KEY)


def test_errors_are_opaque_and_share_the_root() -> None:
    assert issubclass(InvalidRecording, SampledrecError)
    assert not issubclass(InvalidRecording, ValueError)
    assert "InvalidRecording" in sampledrec.errors.__all__


# -- random access -----------------------------------------------------------------------------


@settings(deadline=None, max_examples=100)
@given(
    data=st.binary(max_size=300),
    chunk_size=st.integers(1, 40),
    ranges=st.lists(st.tuples(st.integers(0, 320), st.integers(0, 320)), max_size=8),
)
def test_read_range_matches_slices(
    data: bytes, chunk_size: int, ranges: list[tuple[int, int]]
) -> None:
    reader = ContainerReader(seal(data, chunk_size=chunk_size), KEY)
    whole = reader.read_all()
    for a, b in ranges:
        start, end = min(a, b), max(a, b)
        assert reader.read_range(start, end) == whole[start:end]


def test_read_range_decrypts_only_the_chunks_needed(spy: list[Call]) -> None:
    data = os.urandom(10 * CHUNK + 3)
    reader = ContainerReader(seal(data), KEY)
    spy.clear()
    assert reader.read_range(2 * CHUNK + 5, 4 * CHUNK) == data[2 * CHUNK + 5 : 4 * CHUNK]
    # The final chunk first, then only chunks 2 and 3.
    assert [(c.index, c.final) for c in spy] == [(10, True), (2, False), (3, False)]
    spy.clear()
    assert reader.read_range(10 * CHUNK, 10 * CHUNK + 2) == data[160:162]
    assert [(c.index, c.final) for c in spy] == [(10, True)]  # the final chunk, checked once


def test_read_range_fails_if_the_final_chunk_is_tampered_with() -> None:
    blob = bytearray(seal(os.urandom(5 * CHUNK + 1)))
    blob[-1] ^= 0x80
    reader = ContainerReader(bytes(blob), KEY)
    with pytest.raises(InvalidRecording) as info:
        reader.read_range(0, 4)  # far from the damaged chunk
    assert_opaque(info.value)
    with pytest.raises(InvalidRecording):
        reader.read_range(0, 0)


def test_read_range_checks_its_arguments() -> None:
    reader = ContainerReader(SMALL_BLOB, KEY)
    with pytest.raises(InvalidArgument, match="start=-1"):
        reader.read_range(-1, 3)
    with pytest.raises(InvalidArgument, match="end=2"):
        reader.read_range(5, 2)
    with pytest.raises(InvalidArgument, match="end="):
        reader.read_range(0, 2.5)  # type: ignore[arg-type]
    assert reader.read_range(100, 200) == b""


# -- crash recovery ----------------------------------------------------------------------------


def crashed(data: bytes, chunk_size: int = CHUNK) -> bytes:
    """What a writer left on disk when the process died before close()."""
    sink = io.BytesIO()
    writer = ContainerWriter(sink, KEY, chunk_size=chunk_size, **FIELDS)
    for i in range(0, len(data), 5):
        writer.write(data[i : i + 5])
    return sink.getvalue()


def test_recover_prefix_after_a_crash_mid_stream() -> None:
    data = os.urandom(100)  # chunks 0..5 written (96 bytes), 4 bytes still buffered
    blob = crashed(data)
    read_fails(blob)
    found = recover_prefix(blob, KEY)
    assert (found.sealed, found.chunks, found.plaintext_bytes) == (False, 6, 96)
    assert found.header == read_header(blob)
    # Re-seal the verified prefix into a new container.
    sink = io.BytesIO()
    new_key = os.urandom(32)
    writer = ContainerWriter(sink, new_key, chunk_size=CHUNK, **FIELDS)
    for part in ContainerReader(blob, KEY).iter_prefix(found.chunks):
        writer.write(part)
    writer.close()
    assert ContainerReader(sink.getvalue(), new_key).read_all() == data[:96]


def test_recover_prefix_at_every_cut() -> None:
    data = os.urandom(100)
    blob = crashed(data)
    header_len = read_header(blob).header_len
    for cut in range(len(blob) + 1):
        if cut < header_len:
            with pytest.raises(InvalidRecording):
                recover_prefix(blob[:cut], KEY)
            continue
        found = recover_prefix(blob[:cut], KEY)
        assert not found.sealed
        assert found.chunks == (cut - header_len) // (CHUNK + TAG)
        got = b"".join(ContainerReader(blob[:cut], KEY).iter_prefix(found.chunks))
        assert got == data[: found.plaintext_bytes]


def test_recover_prefix_stops_at_damage_and_sees_sealed_containers() -> None:
    data = os.urandom(100)
    blob = bytearray(crashed(data))
    header_len = read_header(bytes(blob)).header_len
    blob[header_len + 3 * (CHUNK + TAG) + 4] ^= 1
    found = recover_prefix(bytes(blob), KEY)
    assert (found.sealed, found.chunks) == (False, 3)
    with pytest.raises(InvalidRecording):
        list(ContainerReader(bytes(blob), KEY).iter_prefix(4))
    found = recover_prefix(seal(data), KEY)
    assert (found.sealed, found.chunks, found.plaintext_bytes) == (True, 7, 100)
    # A full final chunk never passes as a non-final one.
    sealed = seal(data[: 7 * CHUNK])
    assert recover_prefix(sealed, KEY).sealed
    assert len(list(ContainerReader(sealed, KEY).iter_prefix(6))) == 6
    with pytest.raises(InvalidRecording):
        list(ContainerReader(sealed, KEY).iter_prefix(7))
    with pytest.raises(InvalidArgument):
        list(ContainerReader(sealed, KEY).iter_prefix(-1))


@pytest.mark.parametrize("frame", [None, 5])
def test_recover_prefix_authenticates_every_chunk_not_only_the_final_one(
    frame: int | None,
) -> None:
    # A whole container with one earlier chunk damaged: its final chunk still verifies, so
    # the length is right, but it is never "sealed"; the prefix stops before the bad chunk.
    data = os.urandom(100)  # 7 chunks: 6 full, a final one of 4 bytes
    blob = seal(data, frame=frame)
    header_len = read_header(blob).header_len
    for bad in range(6):
        damaged = bytearray(blob)
        damaged[header_len + bad * (CHUNK + TAG) + 3] ^= 0x80
        reader = ContainerReader(bytes(damaged), KEY)
        assert reader.plaintext_size() == 100  # what a final-chunk-only check accepts
        found = recover_prefix(bytes(damaged), KEY)
        assert (found.sealed, found.chunks, found.plaintext_bytes) == (False, bad, bad * CHUNK)
        got = b"".join(ContainerReader(bytes(damaged), KEY).iter_prefix(found.chunks))
        assert got == data[: bad * CHUNK]
    # A damaged final chunk: every earlier chunk verifies as non-final, the prefix is 6 chunks.
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    found = recover_prefix(bytes(damaged), KEY)
    assert (found.sealed, found.chunks) == (False, 6)


def test_recover_prefix_of_whole_containers_of_every_length() -> None:
    for size in range(5 * CHUNK + 2):
        data = os.urandom(size)
        found = recover_prefix(seal(data), KEY)
        assert found.sealed, size
        assert found.chunks == max(1, -(-size // CHUNK))
        assert found.plaintext_bytes == size


def test_recover_prefix_of_a_crash_before_any_chunk() -> None:
    assert crashed(b"abc") == b""  # nothing was written: nothing to recover, or to leak
    with pytest.raises(InvalidRecording):
        recover_prefix(b"", KEY)


# -- arguments and handles ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"data_key": b"short"}, InvalidKey, "32 bytes"),
        ({"data_key": "k" * 32}, KeyTypeError, "data_key must be bytes"),
        ({"recording_id": ""}, InvalidArgument, "recording_id=''"),
        ({"recording_id": "x" * 256}, InvalidArgument, "1 to 255 bytes"),
        ({"recording_id": 7}, InvalidArgument, "recording_id=7"),
        ({"recording_id": "\ud800"}, InvalidArgument, "Unicode"),
        ({"policy_version": "AB12"}, InvalidArgument, "lowercase hex"),
        ({"policy_version": "abc"}, InvalidArgument, "policy_version='abc'"),
        ({"policy_version": ""}, InvalidArgument, "policy_version=''"),
        ({"policy_version": "zz"}, InvalidArgument, "lowercase hex"),
        ({"expires_at_us": -1}, InvalidArgument, "expires_at_us=-1"),
        ({"expires_at_us": True}, InvalidArgument, "expires_at_us=True"),
        ({"expires_at_us": 1.5}, InvalidArgument, "must be an int"),
        ({"audio_format": b""}, InvalidArgument, "audio_format"),
        ({"audio_format": "pcm16"}, InvalidArgument, "must be bytes"),
        ({"chunk_size": 0}, InvalidArgument, "chunk_size=0"),
        ({"chunk_size": (1 << 24) + 1}, InvalidArgument, "chunk_size="),
        ({"chunk_size": True}, InvalidArgument, "chunk_size=True"),
        ({"salt": b"x" * 31}, InvalidArgument, "salt"),
    ],
)
def test_writer_arguments_are_checked_when_built(
    change: dict[str, Any], error: type[Exception], match: str
) -> None:
    kwargs: dict[str, Any] = {"data_key": KEY, **FIELDS, "chunk_size": CHUNK, **change}
    data_key = kwargs.pop("data_key")
    sink = io.BytesIO()
    with pytest.raises(error, match=match) as info:
        ContainerWriter(sink, data_key, **kwargs)
    assert isinstance(info.value, ValueError)
    assert sink.getvalue() == b""


def test_reader_key_is_checked() -> None:
    with pytest.raises(InvalidKey):
        ContainerReader(SMALL_BLOB, KEY[:16])
    with pytest.raises(KeyTypeError):
        ContainerReader(SMALL_BLOB, None)  # type: ignore[arg-type]


def test_write_refuses_text() -> None:
    writer = ContainerWriter(io.BytesIO(), KEY, **FIELDS)
    with pytest.raises(InvalidArgument, match="got str"):
        writer.write("audio")  # type: ignore[arg-type]


def test_handles_refuse_pickling_and_hide_keys() -> None:
    writer = ContainerWriter(io.BytesIO(), KEY, **FIELDS)
    reader = ContainerReader(SMALL_BLOB, KEY)
    for handle in (writer, reader):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(handle)
        assert KEY.hex() not in repr(handle)
        assert "rec-0001" in repr(handle)


def chunks_of(blob: bytes) -> Iterator[bytes]:
    yield from ContainerReader(blob, KEY).iter_chunks()


def test_iter_chunks_checks_the_final_chunk_before_yielding() -> None:
    damaged = bytearray(SMALL_BLOB)
    damaged[-3] ^= 4
    it = chunks_of(bytes(damaged))
    with pytest.raises(InvalidRecording):
        next(it)
    assert list(chunks_of(SMALL_BLOB)) == plain_chunks(SMALL)
