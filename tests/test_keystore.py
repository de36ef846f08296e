"""Tests of :mod:`sampledrec.keys.keystore` and :class:`sampledrec.testing.MemoryKeyStore`: the
keys of expiry buckets that wrap the data keys (DESIGN.md section 6), on every backend: in
memory, the local keyring folder, and PKCS#11 on a real SoftHSM2 token that the ``softhsm`` fixture
creates.

The PKCS#11 tests skip when SoftHSM2 is not installed, unless ``SAMPLEDREC_REQUIRE_SOFTHSM=1``
(set by ``./dev test`` when it runs as root and so can install it): then they fail instead.
"""

from __future__ import annotations

import contextlib
import copy
import doctest
import errno
import json
import os
import pickle
import secrets
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sampledrec.errors import (
    InvalidArgument,
    InvalidKey,
    InvalidRecording,
    KeyDestroyed,
    KeyringError,
    KeyTypeError,
    StorePermissionError,
)
from sampledrec.keys.keyring import LocalKeyring
from sampledrec.keys.keystore import (
    WRAP_AD_DOMAIN,
    WRAPPED_KEY_BYTES,
    KeyStore,
    LocalKeyStore,
    Pkcs11KeyStore,
    check_bucket_id,
)
from sampledrec.keys.shared import DeploymentKey, SharedKeys, SharedKeyStore
from sampledrec.testing import MemoryKeyStore

from .softhsm import SoftHsm

BUCKET = "bucket-2027-05-22"
OTHER = "bucket-2027-05-23"
AAD = b"sampledrec/v1/data-key\x00rec-0001\x00\x00\x06\x0b\x1c\x2d\x3e\x4f\x50"

# --------------------------------------------------------------------------------------------
# A real SoftHSM2 token, created once per test session in a temporary folder


# Runs in a separate process with the raw python-pkcs11 API, as an attacker holding the PIN
# would: nothing of sampledrec is involved, and this process's login state is not disturbed.
_PROBE = textwrap.dedent(
    """
    import json, sys
    import pkcs11
    from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

    module, token_label, pin, label, action = sys.argv[1:6]
    lib = pkcs11.lib(module)
    out = {}
    with lib.get_token(token_label=token_label).open(rw=True, user_pin=pin) as session:
        query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
        keys = list(session.get_objects(query))
        out["objects"] = len(keys)
        if action == "inspect":
            key = keys[0]

            def attempt(name, thunk):
                try:
                    thunk()
                    out[name] = "allowed"
                except pkcs11.PKCS11Error as exc:
                    out[name] = type(exc).__name__

            attempt("read_value", lambda: key[Attribute.VALUE])
            attempt("make_extractable", lambda: key.__setitem__(Attribute.EXTRACTABLE, True))
            attempt("make_insensitive", lambda: key.__setitem__(Attribute.SENSITIVE, False))
            attempt("copy_extractable", lambda: key.copy({Attribute.EXTRACTABLE: True}))
            wrapper = session.generate_key(
                KeyType.AES, 256, capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP
            )
            attempt("wrap_out", lambda: wrapper.wrap_key(key))
            out["sensitive"] = key[Attribute.SENSITIVE]
            out["extractable"] = key[Attribute.EXTRACTABLE]
        elif action == "duplicate":
            session.generate_key(
                KeyType.AES, 256, id=b"\\x00" * 16, label=label, store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            )
    print(json.dumps(out))
    """
)


def probe(token: SoftHsm, label: str, action: str) -> dict[str, Any]:
    argv = [sys.executable, "-c", _PROBE, token.module, token.label, token.pin, label, action]
    done = subprocess.run(argv, env=token.env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --------------------------------------------------------------------------------------------
# The three backends behind one fixture


class Backend:
    """Opens handles on one keystore: a second handle sees what the first did, as a second
    process would (for memory, there is only the one object)."""

    def __init__(self, name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.name = name
        self.keys = tmp_path / "keys"
        self.prefix = f"t{secrets.token_hex(4)}-"
        self._opened: list[Pkcs11KeyStore] = []
        self._memory: MemoryKeyStore | None = None
        self.token: SoftHsm | None = None
        self._shared: tuple[str, str, Path] | None = None
        if name == "memory":
            self._memory = MemoryKeyStore()
        elif name == "local":
            LocalKeyring(self.keys, create=True)
        elif name == "shared":  # a deployment's bucket keys, wrapped in PostgreSQL
            dsn = request.getfixturevalue("postgres").fresh_dsn()
            key = DeploymentKey.create(tmp_path / "deployment.key").path
            self._shared = (dsn, secrets.token_hex(8), key)
        else:
            self.token = request.getfixturevalue("softhsm")

    def open(self) -> KeyStore:
        if self._memory is not None:
            return self._memory
        if self._shared is not None:
            dsn, deployment, key = self._shared
            return SharedKeyStore(SharedKeys(dsn, deployment, DeploymentKey(key)))
        if self.token is None:
            return LocalKeyStore(self.keys)
        handle = Pkcs11KeyStore(
            self.token.module, self.token.label, self.token.pin, label_prefix=self.prefix
        )
        self._opened.append(handle)
        return handle

    def close(self) -> None:
        for handle in self._opened:
            handle.close()


@pytest.fixture(params=["memory", "local", "pkcs11", "shared"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    chosen = Backend(request.param, tmp_path, request)
    yield chosen
    chosen.close()


@pytest.fixture
def store(backend: Backend) -> KeyStore:
    return backend.open()


def flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def unwrap_error(store: KeyStore, bucket: str, wrapped: bytes, aad: bytes) -> InvalidRecording:
    with pytest.raises(InvalidRecording) as caught:
        store.unwrap(bucket, wrapped, aad=aad)
    return caught.value


# --------------------------------------------------------------------------------------------
# Every backend


def test_backends_implement_the_protocol(store: KeyStore) -> None:
    assert isinstance(store, KeyStore)


def test_round_trip(store: KeyStore) -> None:
    store.ensure_bucket(BUCKET)
    data_key = secrets.token_bytes(32)
    wrapped = store.wrap(BUCKET, data_key, aad=AAD)
    assert isinstance(wrapped, bytes)
    assert len(wrapped) == WRAPPED_KEY_BYTES == 61
    assert wrapped[0] == 0x01
    assert data_key not in wrapped
    assert store.unwrap(BUCKET, wrapped, aad=AAD) == data_key
    # A fresh random nonce each time: wrapping twice gives two different blobs.
    again = store.wrap(BUCKET, data_key, aad=AAD)
    assert again[1:13] != wrapped[1:13]
    assert store.unwrap(BUCKET, again, aad=AAD) == data_key


def test_a_second_handle_reads_what_the_first_wrote(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    first.ensure_bucket(BUCKET)
    data_key = secrets.token_bytes(32)
    assert second.unwrap(BUCKET, first.wrap(BUCKET, data_key, aad=AAD), aad=AAD) == data_key
    assert second.buckets() == [BUCKET]


def test_wrong_aad_or_bucket_is_one_opaque_error(store: KeyStore) -> None:
    store.ensure_bucket(BUCKET)
    store.ensure_bucket(OTHER)
    wrapped = store.wrap(BUCKET, secrets.token_bytes(32), aad=AAD)
    errors = [
        unwrap_error(store, BUCKET, wrapped, AAD + b"x"),
        unwrap_error(store, BUCKET, wrapped, AAD[:-1]),
        unwrap_error(store, BUCKET, wrapped, b"another recording"),
        unwrap_error(store, OTHER, wrapped, AAD),  # replayed under another bucket's key
    ]
    assert len({str(e) for e in errors}) == 1
    for error in errors:
        # Nothing tells which check failed: no cause, no context, no vendor error.
        assert error.__cause__ is None
        assert error.__context__ is None


def test_every_bit_flip_truncation_and_extension_is_rejected(store: KeyStore) -> None:
    store.ensure_bucket(BUCKET)
    wrapped = store.wrap(BUCKET, secrets.token_bytes(32), aad=AAD)
    messages = set()
    for bit in range(len(wrapped) * 8):
        messages.add(str(unwrap_error(store, BUCKET, flipped(wrapped, bit), AAD)))
    for length in range(len(wrapped)):
        messages.add(str(unwrap_error(store, BUCKET, wrapped[:length], AAD)))
    messages.add(str(unwrap_error(store, BUCKET, wrapped + b"\x00", AAD)))
    messages.add(str(unwrap_error(store, BUCKET, b"\x02" + wrapped[1:], AAD)))
    assert len(messages) == 1


def test_destroy_makes_wrapped_keys_unrecoverable(backend: Backend) -> None:
    store = backend.open()
    store.ensure_bucket(BUCKET)
    store.ensure_bucket(OTHER)
    wrapped = store.wrap(BUCKET, secrets.token_bytes(32), aad=AAD)
    kept_key = secrets.token_bytes(32)
    kept = store.wrap(OTHER, kept_key, aad=AAD)

    assert store.destroy_bucket(BUCKET) is True
    assert store.destroy_bucket(BUCKET) is False  # idempotent
    assert not store.has_bucket(BUCKET)
    assert store.buckets() == [OTHER]
    for handle in (store, backend.open()):
        with pytest.raises(KeyDestroyed, match=r"bucket-2027-05-22.*destroyed.*expired"):
            handle.unwrap(BUCKET, wrapped, aad=AAD)
    with pytest.raises(KeyDestroyed, match=r"ensure_bucket"):
        store.wrap(BUCKET, secrets.token_bytes(32), aad=AAD)
    # Other buckets are untouched.
    assert store.unwrap(OTHER, kept, aad=AAD) == kept_key

    # A bucket created again gets a new key, which does not bring the old one back.
    store.ensure_bucket(BUCKET)
    unwrap_error(store, BUCKET, wrapped, AAD)


def test_a_bucket_never_created_is_reported_as_missing(store: KeyStore) -> None:
    wrapped = bytes([1]) + bytes(60)
    with pytest.raises(KeyDestroyed, match="never existed"):
        store.unwrap(BUCKET, wrapped, aad=AAD)
    with pytest.raises(KeyDestroyed):
        store.wrap(BUCKET, bytes(32), aad=AAD)
    assert store.destroy_bucket(BUCKET) is False
    assert not store.has_bucket(BUCKET)
    assert store.buckets() == []


def test_ensure_bucket_is_idempotent(store: KeyStore) -> None:
    store.ensure_bucket(BUCKET)
    data_key = secrets.token_bytes(32)
    wrapped = store.wrap(BUCKET, data_key, aad=AAD)
    store.ensure_bucket(BUCKET)
    store.ensure_bucket(BUCKET)
    assert store.unwrap(BUCKET, wrapped, aad=AAD) == data_key
    assert store.buckets() == [BUCKET]


def test_concurrent_ensure_bucket_creates_one_key(backend: Backend) -> None:
    workers = 12
    handles = [backend.open() for _ in range(workers)]
    start = threading.Barrier(workers)
    results: list[tuple[bytes, bytes]] = []
    failures: list[BaseException] = []

    def work(handle: KeyStore) -> None:
        try:
            start.wait()
            handle.ensure_bucket(BUCKET)
            data_key = secrets.token_bytes(32)
            results.append((data_key, handle.wrap(BUCKET, data_key, aad=AAD)))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(h,)) for h in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    # Had two keys been created and one replaced, some of these would no longer unwrap.
    reader = backend.open()
    for data_key, wrapped in results:
        assert reader.unwrap(BUCKET, wrapped, aad=AAD) == data_key
    assert reader.buckets() == [BUCKET]
    if backend.name == "local":
        assert sorted(os.listdir(backend.keys / "buckets")) == [f"{BUCKET}.key"]
    if isinstance(reader, Pkcs11KeyStore):
        assert reader.describe_bucket(BUCKET)["objects"] == 1


def test_threads_can_share_one_handle(store: KeyStore) -> None:
    store.ensure_bucket(BUCKET)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                data_key = secrets.token_bytes(32)
                wrapped = store.wrap(BUCKET, data_key, aad=AAD)
                assert store.unwrap(BUCKET, wrapped, aad=AAD) == data_key
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_buckets_are_listed_sorted(store: KeyStore) -> None:
    for bucket in ("hold-case-17", OTHER, BUCKET):
        store.ensure_bucket(bucket)
    assert store.buckets() == [BUCKET, OTHER, "hold-case-17"]
    assert store.has_bucket("hold-case-17")


BAD_BUCKETS: list[object] = [
    "",
    "bucket-",
    "2027-05-22",
    "Bucket-2027-05-22",
    "bucket-2027/05/22",
    "bucket-../../etc/passwd",
    "hold-x\n",
    "bucket-é",
    "bucket-" + "a" * 65,
    " bucket-2027-05-22",
    None,
    b"bucket-2027-05-22",
]


@pytest.mark.parametrize("bucket", BAD_BUCKETS, ids=repr)
def test_bad_bucket_ids_are_refused(store: KeyStore, bucket: Any) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.ensure_bucket(bucket),
        lambda: store.wrap(bucket, bytes(32), aad=AAD),
        lambda: store.unwrap(bucket, bytes(61), aad=AAD),
        lambda: store.destroy_bucket(bucket),
        lambda: store.has_bucket(bucket),
    ]
    for call in calls:
        with pytest.raises(InvalidArgument, match="is not a bucket id") as caught:
            call()
        assert isinstance(caught.value, ValueError)
    assert store.buckets() == []


def test_doctests() -> None:
    import sampledrec.keys.keystore
    import sampledrec.testing

    for module in (sampledrec.keys.keystore, sampledrec.testing):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_bucket_id_grammar() -> None:
    assert check_bucket_id("bucket-2027-05-22") == "bucket-2027-05-22"
    assert check_bucket_id("hold-" + "a" * 64) == "hold-" + "a" * 64
    assert check_bucket_id("hold-case_17.v2") == "hold-case_17.v2"


def test_bad_arguments_are_refused(store: KeyStore) -> None:
    store.ensure_bucket(BUCKET)
    for bad_length in (b"", bytes(16), bytes(31), bytes(33)):
        with pytest.raises(InvalidKey, match="32 random bytes"):
            store.wrap(BUCKET, bad_length, aad=AAD)
    with pytest.raises(KeyTypeError):
        store.wrap(BUCKET, "k" * 32, aad=AAD)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="binds the wrapped key to nothing"):
        store.wrap(BUCKET, bytes(32), aad=b"")
    with pytest.raises(InvalidArgument, match="aad must be bytes"):
        store.wrap(BUCKET, bytes(32), aad="rec-1")  # type: ignore[arg-type]
    wrapped = store.wrap(BUCKET, bytes(32), aad=AAD)
    with pytest.raises(InvalidArgument, match="binds the wrapped key to nothing"):
        store.unwrap(BUCKET, wrapped, aad=b"")
    with pytest.raises(InvalidArgument, match="wrapped must be bytes"):
        store.unwrap(BUCKET, wrapped.hex(), aad=AAD)  # type: ignore[arg-type]


def test_handles_do_not_print_or_pickle_secrets(backend: Backend) -> None:
    store = backend.open()
    store.ensure_bucket(BUCKET)
    text = repr(store) + str(store)
    if backend.token is not None:
        assert backend.token.pin not in text
    if isinstance(store, LocalKeyStore):
        secret = (backend.keys / "buckets" / f"{BUCKET}.key").read_bytes()
        assert secret.hex() not in text
    for copier in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be pickled"):
            copier(store)


# --------------------------------------------------------------------------------------------
# The local keyring folder


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    LocalKeyring(tmp_path / "keys", create=True)
    return tmp_path / "keys"


def test_local_layout_and_permissions(keys: Path) -> None:
    old = os.umask(0o002)  # a lax umask must not leak into the keyring
    try:
        store = LocalKeyStore(keys)
        store.ensure_bucket(BUCKET)
    finally:
        os.umask(old)
    folder = keys / "buckets"
    key_file = folder / f"{BUCKET}.key"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.stat().st_size == 32
    assert os.listdir(folder) == [f"{BUCKET}.key"]  # no temporary file left behind
    LocalKeyring(keys)  # the epoch keyring still accepts the folder


def test_local_wrapped_format_is_as_documented(keys: Path) -> None:
    store = LocalKeyStore(keys)
    store.ensure_bucket(BUCKET)
    data_key = secrets.token_bytes(32)
    wrapped = store.wrap(BUCKET, data_key, aad=AAD)
    bucket_key = (keys / "buckets" / f"{BUCKET}.key").read_bytes()
    ad = WRAP_AD_DOMAIN + b"\x00" + BUCKET.encode() + b"\x00" + AAD
    assert wrapped[0] == 1
    assert AESGCM(bucket_key).decrypt(wrapped[1:13], wrapped[13:], ad) == data_key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_local_refuses_a_key_file_other_users_can_reach(keys: Path, mode: int) -> None:
    store = LocalKeyStore(keys)
    store.ensure_bucket(BUCKET)
    wrapped = store.wrap(BUCKET, bytes(32), aad=AAD)
    key_file = keys / "buckets" / f"{BUCKET}.key"
    key_file.chmod(mode)
    with pytest.raises(StorePermissionError, match="chmod 600"):
        store.unwrap(BUCKET, wrapped, aad=AAD)
    with pytest.raises(StorePermissionError, match="chmod 600"):
        LocalKeyStore(keys)
    key_file.chmod(0o600)
    assert store.unwrap(BUCKET, wrapped, aad=AAD) == bytes(32)


def test_local_refuses_an_open_folder(keys: Path) -> None:
    LocalKeyStore(keys).ensure_bucket(BUCKET)
    (keys / "buckets").chmod(0o750)
    with pytest.raises(StorePermissionError, match="chmod 700"):
        LocalKeyStore(keys)


def test_local_refuses_a_symbolic_link(keys: Path, tmp_path: Path) -> None:
    store = LocalKeyStore(keys)
    store.ensure_bucket(BUCKET)
    wrapped = store.wrap(BUCKET, bytes(32), aad=AAD)
    key_file = keys / "buckets" / f"{BUCKET}.key"
    elsewhere = tmp_path / "elsewhere.key"
    key_file.rename(elsewhere)
    key_file.symlink_to(elsewhere)
    with pytest.raises(StorePermissionError, match="symbolic link"):
        store.unwrap(BUCKET, wrapped, aad=AAD)
    with pytest.raises(StorePermissionError, match="symbolic link"):
        LocalKeyStore(keys)


def test_local_damaged_key_is_not_reported_as_destroyed(keys: Path) -> None:
    store = LocalKeyStore(keys)
    store.ensure_bucket(BUCKET)
    wrapped = store.wrap(BUCKET, bytes(32), aad=AAD)
    key_file = keys / "buckets" / f"{BUCKET}.key"
    key_file.write_bytes(key_file.read_bytes()[:31])
    with pytest.raises(KeyringError, match="31 bytes") as caught:
        store.unwrap(BUCKET, wrapped, aad=AAD)
    assert not isinstance(caught.value, KeyDestroyed)


def test_local_destroy_overwrites_the_key_before_unlinking(keys: Path, tmp_path: Path) -> None:
    store = LocalKeyStore(keys)
    store.ensure_bucket(BUCKET)
    key_file = keys / "buckets" / f"{BUCKET}.key"
    secret = key_file.read_bytes()
    # A second name for the same file (as a stray copy on the same inode would be): the
    # overwrite reaches it, where a plain unlink would leave the key readable there.
    twin = tmp_path / "twin"
    os.link(key_file, twin)
    assert store.destroy_bucket(BUCKET)
    assert twin.read_bytes() != secret
    assert len(twin.read_bytes()) == len(secret)
    assert os.listdir(keys / "buckets") == []


def test_local_finishes_a_destroy_interrupted_by_a_crash(keys: Path) -> None:
    LocalKeyStore(keys).ensure_bucket(BUCKET)
    folder = keys / "buckets"
    # The crash came after the rename, before the overwrite and unlink.
    os.rename(folder / f"{BUCKET}.key", folder / ".tmp-destroy-0123456789abcdef")
    store = LocalKeyStore(keys)
    assert os.listdir(folder) == []
    assert store.buckets() == []


def test_local_drops_abandoned_temporary_files_without_harming_live_keys(keys: Path) -> None:
    store = LocalKeyStore(keys)
    store.ensure_bucket(BUCKET)
    wrapped = store.wrap(BUCKET, bytes(32), aad=AAD)
    folder = keys / "buckets"
    # A creation that crashed after link(), and one that crashed before it, long ago.
    linked, unlinked = folder / ".tmp-00000000000000aa", folder / ".tmp-00000000000000bb"
    os.link(folder / f"{BUCKET}.key", linked)
    unlinked.write_bytes(bytes(32))
    unlinked.chmod(0o600)
    for leftover in (linked, unlinked):
        os.utime(leftover, (1_000_000_000, 1_000_000_000))
    LocalKeyStore(keys)
    assert os.listdir(folder) == [f"{BUCKET}.key"]
    assert store.unwrap(BUCKET, wrapped, aad=AAD) == bytes(32)


def test_local_keyring_folder_must_exist(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        LocalKeyStore(tmp_path / "nowhere")
    store = LocalKeyStore(tmp_path / "new" / "keys", create=True)
    assert stat.S_IMODE((tmp_path / "new" / "keys").stat().st_mode) == 0o700
    assert store.buckets() == []
    assert repr(store) == f"LocalKeyStore({str(tmp_path / 'new' / 'keys')!r})"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_local_unreadable_key_is_a_keyring_error(keys: Path) -> None:  # pragma: no cover
    store = LocalKeyStore(keys)
    store.ensure_bucket(BUCKET)
    (keys / "buckets" / f"{BUCKET}.key").chmod(0o000)
    with pytest.raises(KeyringError, match=os.strerror(errno.EACCES)):
        store.unwrap(BUCKET, bytes(61), aad=AAD)


# --------------------------------------------------------------------------------------------
# PKCS#11 on SoftHSM2


@pytest.fixture
def hsm(softhsm: SoftHsm) -> Iterator[Pkcs11KeyStore]:
    handle = Pkcs11KeyStore(
        softhsm.module, softhsm.label, softhsm.pin, label_prefix=f"t{secrets.token_hex(4)}-"
    )
    yield handle
    handle.close()


def test_pkcs11_key_is_sensitive_and_never_extractable(hsm: Pkcs11KeyStore) -> None:
    hsm.ensure_bucket(BUCKET)
    info = hsm.describe_bucket(BUCKET)
    assert info == {
        "label": hsm.label_prefix + BUCKET,
        "objects": 1,
        "token": True,
        "private": True,
        "sensitive": True,
        "extractable": False,
        "always_sensitive": True,
        "never_extractable": True,
        "modifiable": False,
        "encrypt": True,
        "decrypt": True,
        "wrap": False,
        "unwrap": False,
        "value_len": 32,
    }


def test_pkcs11_raw_value_cannot_be_read_even_with_the_pin(
    hsm: Pkcs11KeyStore, softhsm: SoftHsm
) -> None:
    hsm.ensure_bucket(BUCKET)
    seen = probe(softhsm, hsm.label_prefix + BUCKET, "inspect")
    assert seen["objects"] == 1
    assert seen["sensitive"] is True
    assert seen["extractable"] is False
    assert seen["read_value"] == "AttributeSensitive"
    for attempt in ("make_extractable", "make_insensitive", "copy_extractable", "wrap_out"):
        assert seen[attempt] != "allowed", attempt


def test_pkcs11_tolerates_a_duplicate_key_from_a_racing_process(
    hsm: Pkcs11KeyStore, softhsm: SoftHsm
) -> None:
    hsm.ensure_bucket(BUCKET)
    data_key = secrets.token_bytes(32)
    before = hsm.wrap(BUCKET, data_key, aad=AAD)
    # Another process lost the race and created a second key with the same label (and, here,
    # the smallest CKA_ID, so wrap switches to it).
    assert probe(softhsm, hsm.label_prefix + BUCKET, "duplicate")["objects"] == 1
    assert hsm.describe_bucket(BUCKET)["objects"] == 2
    hsm.ensure_bucket(BUCKET)
    assert hsm.describe_bucket(BUCKET)["objects"] == 2
    after = hsm.wrap(BUCKET, data_key, aad=AAD)
    assert hsm.unwrap(BUCKET, before, aad=AAD) == data_key
    assert hsm.unwrap(BUCKET, after, aad=AAD) == data_key
    assert hsm.buckets() == [BUCKET]
    assert hsm.destroy_bucket(BUCKET) is True
    assert probe(softhsm, hsm.label_prefix + BUCKET, "count")["objects"] == 0
    with pytest.raises(KeyDestroyed):
        hsm.unwrap(BUCKET, before, aad=AAD)


def test_pkcs11_destroy_deletes_the_object_on_the_token(
    hsm: Pkcs11KeyStore, softhsm: SoftHsm
) -> None:
    hsm.ensure_bucket(BUCKET)
    assert probe(softhsm, hsm.label_prefix + BUCKET, "count")["objects"] == 1
    assert hsm.destroy_bucket(BUCKET)
    assert probe(softhsm, hsm.label_prefix + BUCKET, "count")["objects"] == 0


def test_pkcs11_handles_share_one_login(hsm: Pkcs11KeyStore, softhsm: SoftHsm) -> None:
    hsm.ensure_bucket(BUCKET)
    wrapped = hsm.wrap(BUCKET, bytes(32), aad=AAD)
    with Pkcs11KeyStore(
        softhsm.module, softhsm.label, softhsm.pin, label_prefix=hsm.label_prefix
    ) as other:
        assert other.unwrap(BUCKET, wrapped, aad=AAD) == bytes(32)
        with pytest.raises(KeyringError, match="another PIN"):
            Pkcs11KeyStore(softhsm.module, softhsm.label, softhsm.pin + "0")
    # Closing one handle neither logs out nor disturbs the other.
    assert hsm.unwrap(BUCKET, wrapped, aad=AAD) == bytes(32)


# python-pkcs11 (0.10) leaves the failed search of the dead session to its finaliser, which
# reports the error as "Exception ignored in OperationContext.__del__"; harmless, upstream.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_pkcs11_recovers_a_lost_session(hsm: Pkcs11KeyStore) -> None:
    hsm.ensure_bucket(BUCKET)
    wrapped = hsm.wrap(BUCKET, bytes(32), aad=AAD)
    hsm._session()._session.close()  # as a token reset would: the handle becomes invalid
    assert hsm.unwrap(BUCKET, wrapped, aad=AAD) == bytes(32)


def test_pkcs11_works_beside_other_code_using_the_token(softhsm: SoftHsm) -> None:
    import pkcs11

    # Other code of the process logged in to the token first.
    token = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.label)
    session = token.open(rw=True, user_pin=softhsm.pin)
    try:
        with Pkcs11KeyStore(
            softhsm.module, softhsm.label, softhsm.pin, label_prefix="beside-"
        ) as keys:
            keys.ensure_bucket(BUCKET)
            wrapped = keys.wrap(BUCKET, bytes(32), aad=AAD)
            session.close()  # the other code logs out: the keystore logs in again by itself
            assert keys.unwrap(BUCKET, wrapped, aad=AAD) == bytes(32)
            assert keys.destroy_bucket(BUCKET)
    finally:
        with contextlib.suppress(pkcs11.PKCS11Error):
            session.close()


def test_pkcs11_module_loaded_under_another_name_is_reused(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    import pkcs11

    from sampledrec.keys.keystore import _load_module

    loaded = pkcs11.lib(softhsm.module)
    alias = tmp_path / "alias.so"  # a second name for the same file: a new C_Initialize fails
    alias.symlink_to(os.path.realpath(softhsm.module))
    assert _load_module(pkcs11, str(alias)) is loaded


def test_pkcs11_closed_handle(softhsm: SoftHsm) -> None:
    handle = Pkcs11KeyStore(softhsm.module, softhsm.label, softhsm.pin, label_prefix="closed-")
    handle.close()
    handle.close()
    assert "closed" in repr(handle)
    with pytest.raises(KeyringError, match="was closed"):
        handle.buckets()


def test_pkcs11_bad_configuration_fails_when_built(softhsm: SoftHsm, tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match=r"no PKCS#11 token labelled 'nope'.*sampledrec-test"):
        Pkcs11KeyStore(softhsm.module, "nope", softhsm.pin)
    with pytest.raises(KeyringError, match="cannot load the PKCS#11 module"):
        Pkcs11KeyStore(tmp_path / "missing.so", softhsm.label, softhsm.pin)
    with pytest.raises(KeyringError, match="PIN"):
        # Refused by the token, or (if another test left a handle open) by the shared login.
        Pkcs11KeyStore(softhsm.module, softhsm.label, "not-the-pin")
    with pytest.raises(InvalidArgument, match="label_prefix"):
        Pkcs11KeyStore(softhsm.module, softhsm.label, softhsm.pin, label_prefix="a b")
    with pytest.raises(InvalidArgument, match="pin"):
        Pkcs11KeyStore(softhsm.module, softhsm.label, "")


def test_pkcs11_without_python_pkcs11(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pkcs11", None)
    with pytest.raises(KeyringError, match=r"pip install 'sampledrec\[pkcs11\]'"):
        Pkcs11KeyStore("/usr/lib/softhsm/libsofthsm2.so", "token", "1234")
