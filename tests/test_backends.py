"""The contract suite of the storage backends: what every
:class:`~sampledrec.vault.catalog.Catalog`, :class:`~sampledrec.vault.blobs.BlobStore`,
:class:`~sampledrec.keys.Keyring`, :class:`~sampledrec.log.storage.LogStorage` and
:class:`~sampledrec.sampling.decided.DecidedCalls` must do.

This is the suite a new backend must pass. Each protocol has one fixture parametrised over its
backends (``CATALOGS``, ``BLOB_STORES``, ``KEYRINGS``, ``LOG_STORAGES``, ``DECIDED_INDEXES``,
``CAP_LEDGERS``), built by one factory function (``open_catalog``, ``open_blob_store``,
``open_keyring``, ``open_log_storage``, ``open_decided_index``, ``open_cap_ledger``). To add a
backend (S3, ...): add its name to the list, add a branch to the factory (returning a function
that opens a new handle on one and the same backend each time it is called), and name its class
in ``SHIPPED``. Every test then runs against it; none may be skipped or weakened for it.

The PostgreSQL backends run against a real server started once per session
(``tests/postgres.py``); each test gets a new, empty schema of its own.

A second handle stands for a second process: what one handle wrote, another must see. In-memory
backends have a single handle, the object itself.

Key stores (:class:`~sampledrec.keys.KeyStore`) have their own contract suite in
``tests/test_keystore.py``, parametrised the same way over memory, local and PKCS#11 (a real
SoftHSM2 token); ``test_every_backend_the_library_ships_is_in_a_contract_suite`` checks that
its ``backend`` fixture covers every key store the library ships, as the lists here cover the
other backends.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib
import io
import itertools
import pkgutil
import random
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

import sampledrec
from sampledrec.errors import InvalidArgument, KeyringError, StoreError, StoreLocked
from sampledrec.keys.keyring import Keyring, LocalKeyring, epoch_commitment
from sampledrec.keys.keystore import KeyStore
from sampledrec.keys.shared import DeploymentKey, NodeKeyring, SharedKeys
from sampledrec.log.storage import LocalLogStorage, LogStorage, segment_name
from sampledrec.sampling.caps import (
    CapLedger,
    CapRequest,
    MemoryCapLedger,
    SqliteCapLedger,
    cap_periods,
)
from sampledrec.sampling.decided import DecidedCalls, FirstDecision, SqliteDecidedCalls
from sampledrec.sampling.postgres import PostgresCapLedger, PostgresDecidedCalls
from sampledrec.testing import (
    MemoryBlobStore,
    MemoryCatalog,
    MemoryDecidedCalls,
    MemoryKeyring,
    MemoryLogStorage,
)
from sampledrec.vault.blobs import BlobStore, BlobWriter, LocalBlobStore
from sampledrec.vault.catalog import (
    Catalog,
    Hold,
    RecordingRow,
    SealedNote,
    SqliteCatalog,
    SubjectRequest,
)
from sampledrec.vault.postgres import PostgresCatalog
from sampledrec.vault.staging import StagedBlobStore

from .seaweedfs import SeaweedFS

T = TypeVar("T")

CATALOGS = ["sqlite", "memory", "postgres"]
BLOB_STORES = ["local", "memory", "s3", "staged"]
KEYRINGS = ["local", "memory", "node"]
LOG_STORAGES = ["local", "memory"]
DECIDED_INDEXES = ["sqlite", "memory", "postgres"]
CAP_LEDGERS = ["sqlite", "memory", "postgres"]

# Every backend class the library ships, by protocol, with its name in the lists above.
SHIPPED: dict[type, dict[str, str]] = {
    Catalog: {"SqliteCatalog": "sqlite", "MemoryCatalog": "memory", "PostgresCatalog": "postgres"},
    BlobStore: {
        "LocalBlobStore": "local",
        "MemoryBlobStore": "memory",
        "S3BlobStore": "s3",
        "StagedBlobStore": "staged",
    },
    Keyring: {"LocalKeyring": "local", "MemoryKeyring": "memory", "NodeKeyring": "node"},
    KeyStore: {
        "LocalKeyStore": "local",
        "MemoryKeyStore": "memory",
        "Pkcs11KeyStore": "pkcs11",
        "SharedKeyStore": "shared",
    },
    LogStorage: {"LocalLogStorage": "local", "MemoryLogStorage": "memory"},
    DecidedCalls: {
        "SqliteDecidedCalls": "sqlite",
        "MemoryDecidedCalls": "memory",
        "PostgresDecidedCalls": "postgres",
    },
    CapLedger: {
        "SqliteCapLedger": "sqlite",
        "MemoryCapLedger": "memory",
        "PostgresCapLedger": "postgres",
    },
}
# Classes that happen to have a protocol's methods without being one of its backends (the
# protocols are runtime-checkable, which looks at method names only).
NOT_BACKENDS: dict[type, frozenset[str]] = {CapLedger: frozenset({"Sampler"})}

# A function that creates a new, empty PostgreSQL schema and returns a DSN that uses it (only
# called for the postgres backends, so that the others never start a server).
FreshDsn = Callable[[], str]


def fresh_postgres(request: pytest.FixtureRequest) -> FreshDsn:
    return lambda: request.getfixturevalue("postgres").fresh_dsn()


def open_catalog(name: str, tmp_path: Path, fresh_dsn: FreshDsn) -> Callable[[], Catalog]:
    if name == "sqlite":
        return functools.partial(SqliteCatalog, tmp_path / "catalog.sqlite")
    if name == "postgres":
        return functools.partial(PostgresCatalog, fresh_dsn())
    if name == "memory":
        only = MemoryCatalog()
        return lambda: only
    raise AssertionError(f"no factory for the catalog backend {name!r}")


def open_blob_store(
    name: str, tmp_path: Path, s3: SeaweedFS | None = None
) -> Callable[[], BlobStore]:
    if name == "local":
        return functools.partial(LocalBlobStore, tmp_path / "recordings", create=True)
    if name == "memory":
        only = MemoryBlobStore()
        return lambda: only
    if name == "s3":  # a real server (tests/seaweedfs.py); every test its own key prefix
        assert s3 is not None
        return functools.partial(s3.blob_store, s3.new_prefix("contract"))
    if name == "staged":  # local staging in front of the real server, as an S3 node has
        assert s3 is not None
        prefix = s3.new_prefix("staged")
        return lambda: StagedBlobStore(tmp_path / "staging", s3.blob_store(prefix))
    raise AssertionError(f"no factory for the blob store backend {name!r}")


def open_keyring(name: str, tmp_path: Path, fresh_dsn: FreshDsn) -> Callable[[], Keyring]:
    if name == "local":
        return functools.partial(LocalKeyring, tmp_path / "keys", create=True)
    if name == "node":  # a deployment node: shared keys in PostgreSQL, its own on disk
        dsn, key = fresh_dsn(), DeploymentKey.create(tmp_path / "deployment.key").path
        deployment = secrets.token_hex(8)
        return lambda: NodeKeyring(
            LocalKeyring(tmp_path / "keys", create=True),
            SharedKeys(dsn, deployment, DeploymentKey(key)),
            since="2000-01-01",
        )
    if name == "memory":
        only = MemoryKeyring()
        return lambda: only
    raise AssertionError(f"no factory for the keyring backend {name!r}")


def open_log_storage(name: str, tmp_path: Path) -> Callable[[], LogStorage]:
    if name == "local":
        (tmp_path / "store").mkdir()  # the store's folder: the log folder is created in it
        return functools.partial(LocalLogStorage, tmp_path / "store" / "log")
    if name == "memory":
        only = MemoryLogStorage()
        return lambda: only
    raise AssertionError(f"no factory for the log storage backend {name!r}")


def open_decided_index(
    name: str, tmp_path: Path, fresh_dsn: FreshDsn
) -> Callable[[], DecidedCalls]:
    if name == "sqlite":
        return functools.partial(SqliteDecidedCalls, tmp_path / "decided.sqlite")
    if name == "postgres":
        return functools.partial(PostgresDecidedCalls, fresh_dsn())
    if name == "memory":
        only = MemoryDecidedCalls()
        return lambda: only
    raise AssertionError(f"no factory for the decided-calls index backend {name!r}")


def open_cap_ledger(name: str, tmp_path: Path, fresh_dsn: FreshDsn) -> Callable[[], CapLedger]:
    if name == "sqlite":
        return functools.partial(SqliteCapLedger, tmp_path / "caps.sqlite")
    if name == "postgres":
        return functools.partial(PostgresCapLedger, fresh_dsn())
    if name == "memory":
        only = MemoryCapLedger()
        return lambda: only
    raise AssertionError(f"no factory for the caps ledger backend {name!r}")


class Handles(Generic[T]):
    """Opens handles on one backend; a second handle sees what the first did."""

    def __init__(self, name: str, opener: Callable[[], T]) -> None:
        self.name = name
        self._opener = opener
        self.opened: list[T] = []

    def open(self) -> T:
        handle = self._opener()
        self.opened.append(handle)
        return handle


@pytest.fixture(params=CATALOGS)
def catalogs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Handles[Catalog]]:
    handles = Handles(request.param, open_catalog(request.param, tmp_path, fresh_postgres(request)))
    yield handles
    for handle in handles.opened:
        handle.close()


@pytest.fixture
def catalog(catalogs: Handles[Catalog]) -> Catalog:
    return catalogs.open()


@pytest.fixture(params=BLOB_STORES)
def blob_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Handles[BlobStore]:
    s3 = request.getfixturevalue("seaweedfs") if request.param in ("s3", "staged") else None
    return Handles(request.param, open_blob_store(request.param, tmp_path, s3))


@pytest.fixture
def blobs(blob_stores: Handles[BlobStore]) -> BlobStore:
    return blob_stores.open()


@pytest.fixture(params=KEYRINGS)
def keyrings(request: pytest.FixtureRequest, tmp_path: Path) -> Handles[Keyring]:
    return Handles(request.param, open_keyring(request.param, tmp_path, fresh_postgres(request)))


@pytest.fixture
def keyring(keyrings: Handles[Keyring]) -> Keyring:
    return keyrings.open()


@pytest.fixture(params=LOG_STORAGES)
def log_storages(request: pytest.FixtureRequest, tmp_path: Path) -> Handles[LogStorage]:
    return Handles(request.param, open_log_storage(request.param, tmp_path))


@pytest.fixture
def log_storage(log_storages: Handles[LogStorage]) -> LogStorage:
    """A handle on a log that was created (empty: no segment yet)."""
    storage = log_storages.open()
    storage.create()
    return storage


@pytest.fixture(params=DECIDED_INDEXES)
def decided_indexes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Handles[DecidedCalls]]:
    opener = open_decided_index(request.param, tmp_path, fresh_postgres(request))
    handles = Handles(request.param, opener)
    yield handles
    for handle in handles.opened:
        handle.close()


@pytest.fixture
def decided(decided_indexes: Handles[DecidedCalls]) -> DecidedCalls:
    return decided_indexes.open()


@pytest.fixture(params=CAP_LEDGERS)
def cap_ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Handles[CapLedger]]:
    handles = Handles(
        request.param, open_cap_ledger(request.param, tmp_path, fresh_postgres(request))
    )
    yield handles
    for handle in handles.opened:
        handle.close()


@pytest.fixture
def ledger(cap_ledgers: Handles[CapLedger]) -> CapLedger:
    return cap_ledgers.open()


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so that races show up."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def in_threads(workers: int, work: Callable[[int], T]) -> list[T]:
    """``work(0)`` ... ``work(workers - 1)``, each in its own thread, started together."""
    start = threading.Barrier(workers)

    def run(index: int) -> T:
        start.wait()
        return work(index)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(workers)))


# --------------------------------------------------------------------------------------------
# Every backend is under a contract suite


@functools.cache
def shipped_implementations(protocol: type) -> frozenset[str]:
    """The names of the library's classes that implement ``protocol``."""
    found = set()
    for info in pkgutil.walk_packages(sampledrec.__path__, "sampledrec."):
        if info.name.endswith("._merklefast"):
            continue  # the compiled accelerator
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and value.__module__ == module.__name__
                and value is not protocol
                and issubclass(value, protocol)
            ):
                found.add(value.__name__)
    return frozenset(found)


def keystore_suite_params() -> list[str]:
    """The params of the ``backend`` fixture of tests/test_keystore.py (read, not imported)."""
    tree = ast.parse((Path(__file__).parent / "test_keystore.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "backend":
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call):
                    for keyword in decorator.keywords:
                        if keyword.arg == "params":
                            params: list[str] = ast.literal_eval(keyword.value)
                            return params
    raise AssertionError("tests/test_keystore.py has no backend fixture with params")


@pytest.mark.parametrize(
    ("protocol", "params"),
    [
        (Catalog, CATALOGS),
        (BlobStore, BLOB_STORES),
        (Keyring, KEYRINGS),
        (KeyStore, keystore_suite_params()),
        (LogStorage, LOG_STORAGES),
        (DecidedCalls, DECIDED_INDEXES),
        (CapLedger, CAP_LEDGERS),
    ],
    ids=["Catalog", "BlobStore", "Keyring", "KeyStore", "LogStorage", "DecidedCalls", "CapLedger"],
)
def test_every_backend_the_library_ships_is_in_a_contract_suite(
    protocol: type, params: list[str]
) -> None:
    shipped = shipped_implementations(protocol) - NOT_BACKENDS.get(protocol, frozenset())
    assert shipped == set(SHIPPED[protocol]), (
        f"the library's {protocol.__name__} backends are {sorted(shipped)}: name each in "
        "SHIPPED and add it to its contract suite"
    )
    assert {SHIPPED[protocol][name] for name in shipped} <= set(params)


# --------------------------------------------------------------------------------------------
# Catalog

T0 = 1_811_000_000_000_000  # µs since 1970 (2027-05-22)
DAY = 86_400_000_000


def row(recording_id: str = "rec-0001", **changes: Any) -> RecordingRow:
    """A row with only the required fields set; None and empty everywhere else."""
    sparse = RecordingRow(
        recording_id=recording_id,
        call_ref=None,
        rule="regulated",
        purpose="quality",
        policy_version="v1",
        epoch_id="2027-05-22",
        decision_index=0,
        started_at=T0,
        expires_at_sealed=T0 + 90 * DAY,
        expires_at=T0 + 90 * DAY,
        bucket="bucket-2027-08-20",
        wrapped_key=None,
        audio_format="pcm_s16le/8000/1",
        file=f"bucket-2027-08-20/{recording_id}.sdr",
    )
    return dataclasses.replace(sparse, **changes)


# Every field set, and none to its default: a backend that loses one is caught.
FULL = row(
    "rec-full",
    call_ref="hex:00ff7f",
    rule="sales",
    purpose="training",
    policy_version="v7",
    epoch_id="2027-05-23",
    decision_index=41,
    started_at=T0 + 7,
    expires_at_sealed=T0 + 30 * DAY,
    expires_at=T0 + 400 * DAY,
    bucket="bucket-2027-06-22",
    wrapped_key=b"\x01\x00\xff" + bytes(range(58)),
    audio_format="pcm_s16le/16000/2",
    file="bucket-2027-06-22/rec-full.sdr",
    status="sealed",
    ended_at=T0 + 312_500_000,
    duration_ms=312_500,
    plaintext_bytes=10_000_000,
    ciphertext_bytes=10_000_925,
    ciphertext_sha256="ab" * 32,
    caller_pseudonym="p-7f3a",
    agent="agent-12",
    pauses=[(1_000, 2_500), (9_000, 9_100)],
    truncated=True,
    attrs={"queue": "sales", "lang": "fr", "région": "Île-de-France"},
    recovery="truncated",
    recovery_sha256="cd" * 32,
    recovery_log_size=1_234,
    node="node-b",
)


def test_the_full_sample_row_sets_every_field() -> None:
    defaults = row("rec-full")
    for f in dataclasses.fields(RecordingRow):
        if f.name != "recording_id":
            assert getattr(FULL, f.name) != getattr(defaults, f.name), f.name
            assert getattr(FULL, f.name) not in (None, [], {}, False, "open"), f.name


def ids(rows: list[RecordingRow]) -> list[str]:
    return [r.recording_id for r in rows]


def test_catalog_implements_the_protocol(catalog: Catalog) -> None:
    assert isinstance(catalog, Catalog)


@pytest.mark.parametrize("sample", [FULL, row("rec-sparse")], ids=["full", "sparse"])
def test_a_row_comes_back_as_it_was_added(catalogs: Handles[Catalog], sample: RecordingRow) -> None:
    first = catalogs.open()
    first.add(sample)
    for handle in (first, catalogs.open()):
        got = handle.get(sample.recording_id)
        assert got is not None
        assert got == sample
        assert got is not sample
        assert isinstance(got.wrapped_key, bytes | None)
        assert all(type(p) is tuple for p in got.pauses)
        assert type(got.truncated) is bool


def test_get_of_an_unknown_id_is_none(catalog: Catalog) -> None:
    assert catalog.get("rec-none") is None
    catalog.add(row("rec-1"))
    assert catalog.get("rec-none") is None
    assert catalog.get("REC-1") is None


def test_adding_an_existing_id_is_a_store_error(catalog: Catalog) -> None:
    catalog.add(row("rec-1", agent="first"))
    with pytest.raises(StoreError):
        catalog.add(row("rec-1", agent="second"))
    assert catalog.get("rec-1") == row("rec-1", agent="first")
    assert ids(catalog.find()) == ["rec-1"]


def test_rows_are_copies_not_live_objects(catalog: Catalog) -> None:
    mine = dataclasses.replace(FULL, pauses=list(FULL.pauses), attrs=dict(FULL.attrs))
    catalog.add(mine)
    mine.status = "erased"
    mine.pauses.append((1, 2))
    mine.attrs["queue"] = "changed"
    for got in (catalog.get(FULL.recording_id), catalog.find()[0]):
        assert got is not None
        got.status = "expired"
        got.pauses.clear()
        got.attrs.clear()
    assert catalog.get(FULL.recording_id) == FULL


def test_update_changes_the_given_columns_of_one_row(catalog: Catalog) -> None:
    catalog.add(row("rec-1", wrapped_key=b"key-1"))
    catalog.add(row("rec-2", wrapped_key=b"key-2"))
    catalog.update(
        "rec-1",
        status="sealed",
        ended_at=T0 + 5,
        pauses=[[10, 20]],  # as lists, as JSON would give them: stored as tuples
        attrs={"queue": "q1"},
        truncated=1,
        wrapped_key=None,
        caller_pseudonym="p-1",
    )
    expected = row(
        "rec-1",
        status="sealed",
        ended_at=T0 + 5,
        pauses=[(10, 20)],
        attrs={"queue": "q1"},
        truncated=True,
        wrapped_key=None,
        caller_pseudonym="p-1",
    )
    assert catalog.get("rec-1") == expected
    assert catalog.get("rec-2") == row("rec-2", wrapped_key=b"key-2")


def test_update_of_an_unknown_id_does_nothing(catalog: Catalog) -> None:
    catalog.add(row("rec-1"))
    catalog.update("rec-none", status="sealed")
    catalog.update_many(["rec-none", "rec-other"], status="sealed")
    assert catalog.get("rec-none") is None
    assert catalog.find() == [row("rec-1")]


def test_unknown_columns_are_refused(catalog: Catalog) -> None:
    catalog.add(row("rec-1"))
    catalog.add_hold(Hold("hold-1", "case 17", created_at=T0))
    catalog.add_request(SubjectRequest("req-1", "erase", "p-1", T0, T0 + 30 * DAY, "open"))
    with pytest.raises(ValueError, match="unknown"):
        catalog.update("rec-1", status="sealed", colour="red")
    with pytest.raises(ValueError, match="unknown"):
        catalog.update_many(["rec-1"], colour="red")
    with pytest.raises(ValueError, match="unknown"):
        catalog.update_many([], colour="red")  # even with nothing to update
    with pytest.raises(ValueError, match="unknown"):
        catalog.update_hold("hold-1", created_at=0)
    with pytest.raises(ValueError, match="unknown"):
        catalog.update_request("req-1", kind="export")
    assert catalog.get("rec-1") == row("rec-1")
    assert catalog.holds() == [Hold("hold-1", "case 17", created_at=T0)]
    assert catalog.requests()[0].kind == "erase"


def test_an_update_without_changes_does_nothing(catalog: Catalog) -> None:
    catalog.add(row("rec-1"))
    catalog.add_hold(Hold("hold-1", "case 17", created_at=T0))
    catalog.add_request(SubjectRequest("req-1", "erase", "p-1", T0, T0 + 30 * DAY, "open"))
    catalog.update("rec-1")
    catalog.update_many(["rec-1"])
    catalog.update_hold("hold-1")
    catalog.update_request("req-1")
    assert catalog.get("rec-1") == row("rec-1")
    assert catalog.get_hold("hold-1") == Hold("hold-1", "case 17", created_at=T0)
    assert catalog.requests() == [
        SubjectRequest("req-1", "erase", "p-1", T0, T0 + 30 * DAY, "open")
    ]


def test_update_many_changes_every_listed_row(catalog: Catalog) -> None:
    for rid in ("rec-1", "rec-2", "rec-3"):
        catalog.add(row(rid, wrapped_key=b"k"))
    catalog.update_many(["rec-3", "rec-none", "rec-1"], status="expired", wrapped_key=None)
    assert catalog.get("rec-1") == row("rec-1", status="expired")
    assert catalog.get("rec-2") == row("rec-2", wrapped_key=b"k")
    assert catalog.get("rec-3") == row("rec-3", status="expired")
    catalog.update_many([], status="erased")
    assert [r.status for r in catalog.find()] == ["expired", "open", "expired"]


def test_find_filters_by_status_and_caller_in_start_order(catalog: Catalog) -> None:
    catalog.add(row("rec-c", started_at=T0 + 1, status="expired", caller_pseudonym="p-1"))
    catalog.add(row("rec-a", started_at=T0 + 3, status="sealed", caller_pseudonym="p-1"))
    catalog.add(row("rec-d", started_at=T0 + 2, status="sealed"))
    catalog.add(row("rec-b", started_at=T0 + 1, status="open", caller_pseudonym="p-2"))
    # By start time, then id.
    assert ids(catalog.find()) == ["rec-b", "rec-c", "rec-d", "rec-a"]
    assert ids(catalog.find(status=["sealed"])) == ["rec-d", "rec-a"]
    assert ids(catalog.find(status=("open", "expired"))) == ["rec-b", "rec-c"]
    assert catalog.find(status=[]) == []
    assert catalog.find(status=["erased"]) == []
    assert ids(catalog.find(caller_pseudonym="p-1")) == ["rec-c", "rec-a"]
    assert ids(catalog.find(status=["sealed"], caller_pseudonym="p-1")) == ["rec-a"]
    assert catalog.find(caller_pseudonym="p-9") == []
    catalog.update("rec-a", caller_pseudonym=None)  # personal fields removed on expiry
    assert ids(catalog.find(caller_pseudonym="p-1")) == ["rec-c"]


def test_holds_come_back_in_creation_order(catalogs: Handles[Catalog]) -> None:
    catalog = catalogs.open()
    late = Hold("hold-late", "audit", created_at=T0 + 5, until=T0 + 90 * DAY)
    tie_b = Hold("hold-b", "case 18", created_at=T0)
    tie_a = Hold("hold-a", "case 17", created_at=T0, released_at=T0 + 1)
    for hold in (late, tie_b, tie_a):
        catalog.add_hold(hold)
    with pytest.raises(StoreError):
        catalog.add_hold(Hold("hold-a", "again", created_at=T0 + 9))
    for handle in (catalog, catalogs.open()):
        assert handle.holds() == [tie_a, tie_b, late]
        assert handle.get_hold("hold-late") == late
        assert handle.get_hold("hold-none") is None


def test_update_hold(catalog: Catalog) -> None:
    catalog.add_hold(Hold("hold-1", "case 17", created_at=T0))
    catalog.update_hold("hold-1", released_at=T0 + 10, until=T0 + 20, reason="closed")
    catalog.update_hold("hold-none", released_at=T0)
    assert catalog.holds() == [Hold("hold-1", "closed", T0, until=T0 + 20, released_at=T0 + 10)]
    got = catalog.get_hold("hold-1")
    assert got is not None
    got.reason = "changed by the caller"
    assert catalog.get_hold("hold-1") == catalog.holds()[0]
    assert catalog.holds()[0].reason == "closed"


def test_hold_members_keep_their_wrapped_keys(catalog: Catalog) -> None:
    catalog.add_hold(Hold("hold-1", "case 17", created_at=T0))
    catalog.add_hold(Hold("hold-2", "case 18", created_at=T0))
    catalog.add_hold_member("hold-1", "rec-2", b"\x00wrapped-2")
    catalog.add_hold_member("hold-1", "rec-1", b"wrapped-1")
    catalog.add_hold_member("hold-2", "rec-1", b"other")
    assert catalog.hold_members("hold-1") == [("rec-1", b"wrapped-1"), ("rec-2", b"\x00wrapped-2")]
    catalog.add_hold_member("hold-1", "rec-1", b"rewrapped-1")  # again: the key is replaced
    catalog.forget_hold_key("hold-1", "rec-2")
    catalog.forget_hold_key("hold-1", "rec-none")
    catalog.forget_hold_key("hold-none", "rec-1")
    assert catalog.hold_members("hold-1") == [("rec-1", b"rewrapped-1"), ("rec-2", None)]
    assert catalog.hold_members("hold-2") == [("rec-1", b"other")]
    assert catalog.hold_members("hold-none") == []


def test_holds_of_a_recording_with_their_keys(catalog: Catalog) -> None:
    late = Hold("hold-late", "audit", created_at=T0 + 5)
    tie_b = Hold("hold-b", "case 18", created_at=T0, until=T0 + DAY)
    tie_a = Hold("hold-a", "case 17", created_at=T0)
    for hold in (late, tie_b, tie_a):
        catalog.add_hold(hold)
    for hold in (late, tie_b, tie_a):  # members added in an order that is neither
        catalog.add_hold_member(hold.hold_id, "rec-1", f"key-{hold.hold_id}".encode())
    catalog.add_hold_member("hold-a", "rec-2", b"key-2")
    catalog.add_hold_member("hold-gone", "rec-1", b"orphan")  # no such hold: not listed
    catalog.forget_hold_key("hold-b", "rec-1")
    assert catalog.holds_of("rec-1") == [
        (tie_a, b"key-hold-a"),
        (tie_b, None),
        (late, b"key-hold-late"),
    ]
    assert catalog.holds_of("rec-2") == [(tie_a, b"key-2")]
    assert catalog.holds_of("rec-none") == []
    catalog.update_hold("hold-a", released_at=T0 + 3)
    assert catalog.holds_of("rec-2")[0][0].released_at == T0 + 3


def test_requests_in_receipt_order_by_status(catalogs: Handles[Catalog]) -> None:
    catalog = catalogs.open()
    month = 30 * DAY
    late = SubjectRequest("req-late", "export", "p-1", T0 + 9, T0 + 9 + month, "open")
    tie_b = SubjectRequest("req-b", "erase", None, T0, T0 + month, "deferred", detail="hold")
    tie_a = SubjectRequest("req-a", "erase", "p-2", T0, T0 + month, "open")
    for request in (late, tie_b, tie_a):
        catalog.add_request(request)
    with pytest.raises(StoreError):
        catalog.add_request(dataclasses.replace(tie_a, kind="export"))
    assert catalog.requests() == [tie_a, tie_b, late]
    assert catalog.requests(status=["open"]) == [tie_a, late]
    assert catalog.requests(status=["deferred", "done"]) == [tie_b]
    assert catalog.requests(status=[]) == []
    catalog.update_request("req-a", status="done", completed_at=T0 + 4, detail="3 erased")
    catalog.update_request("req-late", caller_pseudonym=None)
    catalog.update_request("req-none", status="done")
    done = dataclasses.replace(tie_a, status="done", completed_at=T0 + 4, detail="3 erased")
    for handle in (catalog, catalogs.open()):
        assert handle.requests(status=["done"]) == [done]
        assert handle.requests(status=["open"]) == [
            dataclasses.replace(late, caller_pseudonym=None)
        ]
        assert len(handle.requests()) == 3
    catalog.requests()[0].status = "changed by the caller"
    assert catalog.requests()[0] == done


def test_sealed_notes_come_back_per_recording_in_time_order_and_are_deleted_with_it(
    catalogs: Handles[Catalog],
) -> None:
    catalog = catalogs.open()
    later = SealedNote("note-b", "rec-1", T0 + 5, b"\x00sealed b")
    tie_z = SealedNote("note-z", "rec-1", T0, b"sealed z")
    tie_a = SealedNote("note-a", "rec-1", T0, b"sealed a")
    other = SealedNote("note-c", "rec-2", T0, b"sealed c")
    for note in (later, tie_z, tie_a, other):
        catalog.add_note(note)
    with pytest.raises(StoreError):
        catalog.add_note(dataclasses.replace(tie_a, sealed=b"again"))
    for handle in (catalog, catalogs.open()):
        assert handle.notes_of("rec-1") == [tie_a, tie_z, later]
        assert handle.notes_of("rec-2") == [other]
        assert handle.notes_of("rec-3") == []
    assert catalog.delete_notes(["rec-1", "rec-3"]) == 3
    assert catalog.delete_notes([]) == 0
    for handle in (catalog, catalogs.open()):
        assert handle.notes_of("rec-1") == []
        assert handle.notes_of("rec-2") == [other]


def test_a_request_keeps_how_the_identity_was_verified(catalogs: Handles[Catalog]) -> None:
    catalog = catalogs.open()
    month = 30 * DAY
    given = SubjectRequest(
        "req-given",
        "export",
        "p-1",
        T0,
        T0 + month,
        "open",
        identity_method="in_person_id_document",
        identity_note="passport seen at the front desk — Île-de-France office",
        identity_verified_by="dana",
        identity_verified_at=T0 + 5,
    )
    later = SubjectRequest("req-later", "erase", "p-2", T0 + 1, T0 + 1 + month, "open")
    catalog.add_request(given)
    catalog.add_request(later)
    assert not later.identity_verified and given.identity_verified
    assert catalog.requests()[1] == later  # no identity yet: None, "", None, None
    catalog.update_request(
        "req-later",
        identity_method="callback_to_number",
        identity_note="called back",
        identity_verified_by="owner",
        identity_verified_at=T0 + 9,
    )
    verified = dataclasses.replace(
        later,
        identity_method="callback_to_number",
        identity_note="called back",
        identity_verified_by="owner",
        identity_verified_at=T0 + 9,
    )
    for handle in (catalog, catalogs.open()):
        assert handle.requests() == [given, verified]
        assert handle.requests()[1].identity_verified
    for column in ("kind", "received_at", "deadline"):
        with pytest.raises(ValueError, match="unknown"):
            catalog.update_request("req-later", **{column: "changed"})
    assert catalog.requests() == [given, verified]


def test_sqlite_catalog_of_an_earlier_version_gains_the_identity_columns(tmp_path: Path) -> None:
    """SQLite only: a catalog made before identity checks were recorded is migrated in place."""
    import sqlite3

    from sampledrec.vault.catalog import _SCHEMA

    path = tmp_path / "catalog.sqlite"
    old = _SCHEMA.replace(
        ",\n    identity_method TEXT,\n    identity_note TEXT NOT NULL DEFAULT '',"
        "\n    identity_verified_by TEXT,\n    identity_verified_at INTEGER",
        "",
    )
    assert old != _SCHEMA and "identity" not in old
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute(
        "INSERT INTO requests (request_id, kind, caller_pseudonym, received_at, deadline, "
        "status, detail) VALUES ('req-old', 'erase', 'p-1', 1, 2, 'deferred', 'held')"
    )
    db.commit()
    db.close()
    catalog = SqliteCatalog(path)
    assert catalog.requests() == [
        SubjectRequest("req-old", "erase", "p-1", 1, 2, "deferred", "held")
    ]
    catalog.update_request("req-old", identity_method="signed_letter", identity_verified_at=3)
    catalog.close()
    catalog = SqliteCatalog(path)  # opening it again changes nothing
    (request,) = catalog.requests()
    assert (request.identity_method, request.identity_note, request.identity_verified_at) == (
        "signed_letter",
        "",
        3,
    )
    catalog.close()


def test_a_closed_catalog_refuses_to_be_used(catalog: Catalog) -> None:
    catalog.add(row("rec-1"))
    catalog.close()
    with pytest.raises(StoreError):
        catalog.get("rec-1")
    with pytest.raises(StoreError):
        catalog.add(row("rec-2"))
    with pytest.raises(StoreError):
        catalog.holds()
    catalog.close()  # closing again is harmless


def test_threads_can_share_a_catalog(catalog: Catalog, busy_switching: None) -> None:
    each = 10

    def work(worker: int) -> None:
        for i in range(each):
            rid = f"rec-{worker}-{i:02d}"
            catalog.add(row(rid, started_at=T0 + i, caller_pseudonym=f"p-{worker}"))
            catalog.update(rid, status="sealed", duration_ms=worker * 100 + i)
            got = catalog.get(rid)
            assert got is not None
            assert (got.status, got.duration_ms) == ("sealed", worker * 100 + i)

    in_threads(6, work)
    assert len(catalog.find(status=["sealed"])) == 6 * each
    for worker in range(6):
        assert ids(catalog.find(caller_pseudonym=f"p-{worker}")) == [
            f"rec-{worker}-{i:02d}" for i in range(each)
        ]


def test_readers_see_update_many_whole_or_not_at_all(
    catalogs: Handles[Catalog], busy_switching: None
) -> None:
    writer, reader = catalogs.open(), catalogs.open()
    rids = [f"rec-{i:02d}" for i in range(20)]
    for rid in rids:
        writer.add(row(rid, status="sealed"))
    stop = threading.Event()
    seen: list[set[str]] = []

    def read() -> None:
        while not stop.is_set():
            seen.append({r.status for r in reader.find()})

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in itertools.count():
            writer.update_many(rids, status="expiring" if i % 2 == 0 else "sealed")
            if i >= 10 and len(seen) >= 50:
                break
    finally:
        stop.set()
        thread.join()
    mixed = [s for s in seen if len(s) != 1]
    assert mixed == []


def test_a_recovery_journal_is_kept_and_cleared_with_the_status(
    catalogs: Handles[Catalog],
) -> None:
    # Vault.recover writes its journal into an open row, then seals the row and clears the
    # journal in one update: a reader sees the journal, or the sealed row, never half of each.
    catalog, other = catalogs.open(), catalogs.open()
    catalog.add(row("rec-1", wrapped_key=b"k"))
    catalog.add(row("rec-2", wrapped_key=b"k"))
    journal = {"recovery": "truncated", "recovery_sha256": "ef" * 32, "recovery_log_size": 17}
    catalog.update("rec-1", **journal)
    for handle in (catalog, other):
        assert handle.get("rec-1") == row("rec-1", wrapped_key=b"k", **journal)
        assert ids(handle.find(status=["open"])) == ["rec-1", "rec-2"]  # still open meanwhile
    catalog.update(
        "rec-1",
        status="truncated",
        truncated=True,
        ciphertext_sha256="ef" * 32,
        recovery=None,
        recovery_sha256=None,
        recovery_log_size=None,
    )
    sealed = row("rec-1", wrapped_key=b"k", status="truncated", truncated=True)
    sealed.ciphertext_sha256 = "ef" * 32
    for handle in (catalog, other):
        assert handle.get("rec-1") == sealed
        assert handle.get("rec-2") == row("rec-2", wrapped_key=b"k")
    catalog.update("rec-2", recovery="destroyed", recovery_log_size=0)
    got = other.get("rec-2")
    assert got is not None
    assert (got.recovery, got.recovery_sha256, got.recovery_log_size) == ("destroyed", None, 0)


def test_the_recovery_journal_is_not_in_a_rows_json() -> None:
    doc = FULL.to_json()
    assert not {"recovery", "recovery_sha256", "recovery_log_size", "wrapped_key"} & set(doc)
    assert doc["id"] == "rec-full" and doc["status"] == "sealed"


# The recordings table as the first released catalogs made it, before call attributes and the
# recovery journal: SqliteCatalog adds the columns when it opens one.
OLD_RECORDINGS_TABLE = """
CREATE TABLE recordings (
    recording_id TEXT PRIMARY KEY, call_ref TEXT, rule TEXT NOT NULL, purpose TEXT NOT NULL,
    policy_version TEXT NOT NULL, epoch_id TEXT NOT NULL, decision_index INTEGER NOT NULL,
    started_at INTEGER NOT NULL, expires_at_sealed INTEGER NOT NULL,
    expires_at INTEGER NOT NULL, bucket TEXT NOT NULL, wrapped_key BLOB,
    audio_format TEXT NOT NULL, file TEXT NOT NULL, status TEXT NOT NULL, ended_at INTEGER,
    duration_ms INTEGER, plaintext_bytes INTEGER, ciphertext_bytes INTEGER,
    ciphertext_sha256 TEXT, caller_pseudonym TEXT, agent TEXT,
    pauses TEXT NOT NULL DEFAULT '[]', truncated INTEGER NOT NULL DEFAULT 0
);
INSERT INTO recordings (recording_id, rule, purpose, policy_version, epoch_id, decision_index,
    started_at, expires_at_sealed, expires_at, bucket, wrapped_key, audio_format, file, status)
VALUES ('rec-old', 'regulated', 'quality', 'v1', '2027-05-22', 0, 1811000000000000,
    1818776000000000, 1818776000000000, 'bucket-2027-08-20', x'6b',
    'pcm_s16le/8000/1', 'recordings/bucket-2027-08-20/rec-old.sdr', 'open');
"""


def test_sqlite_catalog_migrates_an_old_catalog(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "catalog.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(OLD_RECORDINGS_TABLE)
    for _ in range(2):  # and opening it again changes nothing more
        catalog = SqliteCatalog(path)
        try:
            expected = row("rec-old", wrapped_key=b"k")
            assert catalog.get("rec-old") == expected
            catalog.update("rec-old", recovery="sealed", recovery_sha256="01" * 32)
            got = catalog.get("rec-old")
            assert got is not None and (got.recovery, got.recovery_log_size) == ("sealed", None)
            catalog.update("rec-old", recovery=None, recovery_sha256=None)
        finally:
            catalog.close()


# --------------------------------------------------------------------------------------------
# BlobStore

NAME = "bucket-2027-05-22/rec-0001.sdr"


def read(blobs: BlobStore, name: str) -> bytes:
    with blobs.open(name) as fh:
        return fh.read()


def test_blob_store_implements_the_protocol(blobs: BlobStore) -> None:
    assert isinstance(blobs, BlobStore)
    writer = blobs.create(NAME)
    assert isinstance(writer, BlobWriter)
    writer.close()


def test_what_a_writer_synced_is_readable_as_a_prefix(blob_stores: Handles[BlobStore]) -> None:
    blobs, other = blob_stores.open(), blob_stores.open()
    writer = blobs.create(NAME)
    assert other.exists(NAME)
    assert other.size(NAME) == 0
    assert read(other, NAME) == b""
    assert other.list() == [NAME]
    assert writer.write(b"head-") == 5
    writer.sync()
    assert read(other, NAME) == b"head-"
    body = (b"body-" * 100)[:250]
    assert writer.write(memoryview(b"body-" * 100)[:250]) == 250
    assert writer.write(b"tail") == 4
    writer.sync()
    assert read(other, NAME)[:5] == b"head-"
    assert other.size(NAME) == 5 + 250 + 4
    writer.close()
    assert read(other, NAME) == b"head-" + body + b"tail"
    assert blobs.size(NAME) == 259


def test_open_gives_a_seekable_file_for_ranged_reads(blob_stores: Handles[BlobStore]) -> None:
    data = random.Random(7).randbytes(100_000)
    blob_stores.open().put(NAME, data)
    with blob_stores.open().open(NAME) as fh:
        assert fh.seekable()
        assert fh.seek(40_000) == 40_000
        assert fh.read(1_000) == data[40_000:41_000]
        assert fh.tell() == 41_000
        assert fh.seek(-16, io.SEEK_END) == len(data) - 16
        assert fh.read() == data[-16:]
        assert fh.read(5) == b""
        assert fh.seek(10) == 10
        assert fh.seek(5, io.SEEK_CUR) == 15
        assert fh.read(3) == data[15:18]
        fh.seek(0)
        assert fh.read() == data


def test_an_open_blob_is_not_changed_by_put_or_delete(blobs: BlobStore) -> None:
    old, new = random.Random(1).randbytes(200_000), random.Random(2).randbytes(30_000)
    blobs.put(NAME, old)
    with blobs.open(NAME) as fh:
        assert fh.read(10) == old[:10]
        blobs.put(NAME, new)
        assert fh.read() == old[10:]
    with blobs.open(NAME) as fh:
        blobs.delete(NAME)
        fh.seek(20_000)
        assert fh.read() == new[20_000:]


def test_create_of_an_existing_blob_is_refused(blobs: BlobStore) -> None:
    writer = blobs.create(NAME)
    writer.write(b"in progress")
    writer.sync()
    with pytest.raises(FileExistsError):
        blobs.create(NAME)  # while it is being written
    writer.close()
    blobs.put("bucket-2027-05-22/whole.sdr", b"whole")
    with pytest.raises(FileExistsError):
        blobs.create("bucket-2027-05-22/whole.sdr")
    assert read(blobs, NAME) == b"in progress"
    assert read(blobs, "bucket-2027-05-22/whole.sdr") == b"whole"


def test_put_creates_or_replaces_a_blob_whole(blob_stores: Handles[BlobStore]) -> None:
    blobs = blob_stores.open()
    blobs.put(NAME, b"x" * 1_000)
    blobs.put(NAME, b"shorter")
    other = blob_stores.open()
    assert read(other, NAME) == b"shorter"
    assert other.size(NAME) == 7
    assert other.list() == [NAME]
    writer = blobs.create("bucket-2027-05-22/rec-0002.sdr")
    writer.write(b"partial")
    writer.close()
    blobs.put("bucket-2027-05-22/rec-0002.sdr", b"resealed")  # as recovery does
    assert read(other, "bucket-2027-05-22/rec-0002.sdr") == b"resealed"
    blobs.put("bucket-2027-05-22/empty.sdr", b"")
    assert other.exists("bucket-2027-05-22/empty.sdr")
    assert other.size("bucket-2027-05-22/empty.sdr") == 0


def test_delete_says_whether_there_was_a_blob(blob_stores: Handles[BlobStore]) -> None:
    blobs, other = blob_stores.open(), blob_stores.open()
    blobs.put(NAME, b"sealed")
    blobs.put("bucket-2027-05-22/keep.sdr", b"kept")
    assert other.delete(NAME) is True
    assert other.delete(NAME) is False
    assert not blobs.exists(NAME)
    with pytest.raises(FileNotFoundError):
        blobs.open(NAME)
    assert blobs.list() == ["bucket-2027-05-22/keep.sdr"]
    assert read(blobs, "bucket-2027-05-22/keep.sdr") == b"kept"


def test_a_missing_blob_is_not_found(blobs: BlobStore) -> None:
    for store in ("empty", "with others"):
        assert not blobs.exists(NAME), store
        with pytest.raises(FileNotFoundError):
            blobs.open(NAME)
        with pytest.raises(FileNotFoundError):
            blobs.size(NAME)
        assert blobs.delete(NAME) is False
        blobs.put("bucket-2027-05-22/other.sdr", b"x")


def test_a_folder_or_a_name_below_a_blob_is_not_a_blob(blobs: BlobStore) -> None:
    blobs.put("bucket-2027-05-22/rec-0001.sdr", b"sealed")
    blobs.put("lone.sdr", b"alone")
    for name in ("bucket-2027-05-22", "lone.sdr/x", "bucket-2027-05-22/rec-0001.sdr/x"):
        assert not blobs.exists(name), name
        with pytest.raises(FileNotFoundError):
            blobs.open(name)
        with pytest.raises(FileNotFoundError):
            blobs.size(name)
        assert blobs.delete(name) is False, name
    assert blobs.list() == ["bucket-2027-05-22/rec-0001.sdr", "lone.sdr"]


def test_list_is_sorted_and_filtered_by_prefix(blobs: BlobStore) -> None:
    names = [
        "top.sdr",
        "bucket-10/b.sdr",
        "bucket-1/z.sdr",
        "Bucket-1/a.sdr",
        "bucket-2/x/y/z.sdr",
        "bucket-1/a.sdr",
    ]
    for name in names:
        blobs.put(name, name.encode())
    writer = blobs.create("bucket-1/m.sdr")  # being written: listed too
    assert blobs.list() == sorted([*names, "bucket-1/m.sdr"])
    assert blobs.list("bucket-1/") == ["bucket-1/a.sdr", "bucket-1/m.sdr", "bucket-1/z.sdr"]
    assert blobs.list("bucket-1") == [
        "bucket-1/a.sdr",
        "bucket-1/m.sdr",
        "bucket-1/z.sdr",
        "bucket-10/b.sdr",
    ]
    assert blobs.list("bucket-2/x/") == ["bucket-2/x/y/z.sdr"]
    assert blobs.list("B") == ["Bucket-1/a.sdr"]
    assert blobs.list("top.sdr") == ["top.sdr"]
    assert blobs.list("nothing") == []
    writer.close()


BAD_NAMES: list[Any] = [
    "",
    ".hidden",
    "bucket/.hidden.sdr",
    "../escape.sdr",
    "bucket/../../escape.sdr",
    "/absolute.sdr",
    "bucket//a.sdr",
    "bucket/",
    "a/b/c/d/e.sdr",
    "x" * 129,
    "with space.sdr",
    "back\\slash.sdr",
    "naïve.sdr",
    "nul\x00.sdr",
    "line\n.sdr",
    None,
    b"bucket/a.sdr",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_refused(blobs: BlobStore, name: Any) -> None:
    calls: list[Callable[[], object]] = [
        lambda: blobs.create(name),
        lambda: blobs.put(name, b"data"),
        lambda: blobs.open(name),
        lambda: blobs.size(name),
        lambda: blobs.exists(name),
        lambda: blobs.delete(name),
    ]
    for call in calls:
        with pytest.raises(InvalidArgument, match="not valid") as caught:
            call()
        assert isinstance(caught.value, ValueError)
    assert blobs.list() == []


def test_the_longest_names_are_accepted(blobs: BlobStore) -> None:
    name = "/".join(["a" * 128, "-" * 128, "_" * 128, "Z9.x" * 32])
    blobs.put(name, b"deep")
    assert blobs.list() == [name]
    assert read(blobs, name) == b"deep"


def test_threads_write_their_own_blobs(blobs: BlobStore, busy_switching: None) -> None:
    def work(worker: int) -> None:
        writer = blobs.create(f"bucket-{worker}/stream.sdr")
        for _ in range(20):
            writer.write(bytes([worker]) * 100)
        writer.sync()
        writer.close()
        blobs.put(f"bucket-{worker}/whole.sdr", bytes([worker]) * 50)

    in_threads(8, work)
    assert blobs.list() == sorted(
        f"bucket-{w}/{kind}.sdr" for w in range(8) for kind in ("stream", "whole")
    )
    for worker in range(8):
        assert read(blobs, f"bucket-{worker}/stream.sdr") == bytes([worker]) * 2_000
        assert read(blobs, f"bucket-{worker}/whole.sdr") == bytes([worker]) * 50


def test_readers_see_a_put_whole_or_not_at_all(
    blob_stores: Handles[BlobStore], busy_switching: None
) -> None:
    writer, reader = blob_stores.open(), blob_stores.open()
    old, new = b"o" * 100_000, b"n" * 60_000
    writer.put(NAME, old)
    stop = threading.Event()
    seen: list[bool] = []

    def read_all() -> None:
        while not stop.is_set():
            data = read(reader, NAME)
            seen.append(data in (old, new))

    thread = threading.Thread(target=read_all)
    thread.start()
    until = time.monotonic() + 0.3
    try:
        for i in itertools.count():
            writer.put(NAME, new if i % 2 == 0 else old)
            if i >= 20 and len(seen) >= 100 and time.monotonic() > until:
                break
    finally:
        stop.set()
        thread.join()
    assert all(seen)


# --------------------------------------------------------------------------------------------
# Keyring

EPOCHS = ["2027-05-22", "2027-05-23", "2027-05-24"]


def days(first: date, count: int) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range(count)]


def test_keyring_implements_the_protocol(keyring: Keyring) -> None:
    assert isinstance(keyring, Keyring)


def test_ensure_epochs_creates_each_key_once(keyrings: Handles[Keyring]) -> None:
    first = keyrings.open()
    created = first.ensure_epochs(["2027-05-23", "2027-05-22", "2027-05-23"])
    assert sorted(k.epoch_id for k in created) == ["2027-05-22", "2027-05-23"]
    assert all(k == first.epoch_key(k.epoch_id) for k in created)
    later = first.ensure_epochs(EPOCHS)
    assert [k.epoch_id for k in later] == ["2027-05-24"]
    assert first.ensure_epochs(EPOCHS) == []
    second = keyrings.open()
    assert second.ensure_epochs(reversed(EPOCHS)) == []  # any iterable
    for handle in (first, second):
        assert handle.epoch_ids() == EPOCHS
    for key in [*created, *later]:
        assert second.epoch_key(key.epoch_id) == key


def test_each_epoch_has_its_own_32_byte_key(keyring: Keyring) -> None:
    keyring.ensure_epochs(EPOCHS)
    secrets = [keyring.epoch_key(e).secret_bytes() for e in EPOCHS]
    assert all(isinstance(s, bytes) and len(s) == 32 for s in secrets)
    assert len(set(secrets)) == len(EPOCHS)
    for epoch_id, secret in zip(EPOCHS, secrets, strict=True):
        key = keyring.epoch_key(epoch_id)
        assert key.epoch_id == epoch_id
        assert key.commitment == epoch_commitment(epoch_id, secret)


def test_the_key_of_an_unknown_epoch_is_a_keyring_error(keyring: Keyring) -> None:
    with pytest.raises(KeyringError):
        keyring.epoch_key("2027-05-22")
    keyring.ensure_epochs(["2027-05-22"])
    with pytest.raises(KeyringError):
        keyring.epoch_key("2027-05-23")


@pytest.mark.parametrize("epoch_id", ["2027-5-22", "2027-02-30", "", "tomorrow", "2027-05-22x"])
def test_bad_epoch_ids_are_refused(keyring: Keyring, epoch_id: str) -> None:
    with pytest.raises(InvalidArgument):
        keyring.ensure_epochs([epoch_id])
    assert keyring.epoch_ids() == []


def test_pseudonym_and_signing_keys_are_stable_32_byte_secrets(keyrings: Handles[Keyring]) -> None:
    first = keyrings.open()
    pseudonym, signing = first.pseudonym_key(), first.signing_seed()
    for secret in (pseudonym, signing):
        assert isinstance(secret, bytes)
        assert len(secret) == 32
        assert secret != bytes(32)
    assert pseudonym != signing
    first.ensure_epochs(EPOCHS)
    first.sealing_key("calls/2027-05", create=True)
    for handle in (first, keyrings.open()):
        assert handle.pseudonym_key() == pseudonym
        assert handle.signing_seed() == signing


def test_sealing_keys_are_created_listed_and_destroyed(keyrings: Handles[Keyring]) -> None:
    keyring = keyrings.open()
    assert keyring.sealing_key("calls/2027-05") is None
    assert keyring.sealing_key_ids() == []
    key = keyring.sealing_key("calls/2027-05", create=True)
    assert isinstance(key, bytes)
    assert len(key) == 32
    assert keyring.sealing_key("calls/2027-05") == key
    assert keyring.sealing_key("calls/2027-05", create=True) == key
    access = keyring.sealing_key("access/2027-05", create=True)
    april = keyring.sealing_key("calls/2027-04", create=True)
    assert len({key, access, april, keyring.pseudonym_key(), keyring.signing_seed()}) == 5
    other = keyrings.open()
    assert other.sealing_key_ids() == ["access/2027-05", "calls/2027-04", "calls/2027-05"]
    assert other.sealing_key("calls/2027-05") == key

    assert keyring.destroy_sealing_key("calls/2027-05") is True
    assert keyring.sealing_key("calls/2027-05") is None
    assert keyring.sealing_key_ids() == ["access/2027-05", "calls/2027-04"]
    assert keyring.destroy_sealing_key("calls/2027-05") is False
    assert keyring.destroy_sealing_key("calls/2027-06") is False
    assert keyring.sealing_key("calls/2027-04") == april
    again = keyring.sealing_key("calls/2027-05", create=True)
    assert again is not None
    assert again != key  # a destroyed key never comes back


def test_a_destroyed_sealing_key_is_gone_for_every_handle(keyrings: Handles[Keyring]) -> None:
    first, second = keyrings.open(), keyrings.open()
    key = first.sealing_key("calls/2027-05", create=True)
    assert second.sealing_key("calls/2027-05") == key  # the second handle has used it
    assert first.destroy_sealing_key("calls/2027-05") is True
    assert second.sealing_key("calls/2027-05") is None


@pytest.mark.parametrize(
    "kid", ["calls/2027-5", "other/2027-05", "calls-2027-05", "", "calls/2027-05/x"]
)
def test_bad_sealing_key_ids_are_refused(keyrings: Handles[Keyring], kid: str) -> None:
    keyring = keyrings.open()
    with pytest.raises(InvalidArgument):
        keyring.sealing_key(kid, create=True)
    with pytest.raises(InvalidArgument):
        keyring.destroy_sealing_key(kid)
    assert keyring.sealing_key_ids() == []


def test_epochs_are_uncommitted_until_marked(keyrings: Handles[Keyring]) -> None:
    keyring = keyrings.open()
    assert keyring.uncommitted_epochs() == []
    keyring.ensure_epochs(reversed(EPOCHS))
    assert keyring.uncommitted_epochs() == EPOCHS
    keyring.mark_committed("2027-05-23")
    keyring.mark_committed("2027-05-23")  # again: no change
    assert keyring.uncommitted_epochs() == ["2027-05-22", "2027-05-24"]
    keyring.ensure_epochs(["2027-05-25"])
    other = keyrings.open()
    assert other.uncommitted_epochs() == ["2027-05-22", "2027-05-24", "2027-05-25"]
    for epoch_id in EPOCHS:
        other.mark_committed(epoch_id)
    assert keyring.uncommitted_epochs() == ["2027-05-25"]
    assert other.epoch_ids() == [*EPOCHS, "2027-05-25"]  # markers are not epochs


def test_only_an_epoch_with_a_key_can_be_marked_committed(keyrings: Handles[Keyring]) -> None:
    keyring = keyrings.open()
    with pytest.raises(KeyringError):
        keyring.mark_committed("2027-05-22")
    keyring.ensure_epochs(["2027-05-22"])
    assert keyring.uncommitted_epochs() == ["2027-05-22"]


def test_threads_racing_for_epochs_end_with_one_key_each(
    keyrings: Handles[Keyring], busy_switching: None
) -> None:
    workers = 8
    for round_ in range(20):  # each round, memory fails about 2 times in 3
        epochs = days(date(2028, 1, 1) + timedelta(days=100 * round_), 30)
        handles = [keyrings.open() for _ in range(workers)]

        def race(
            worker: int, epochs: list[str] = epochs, handles: list[Keyring] = handles
        ) -> list[tuple[str, bytes]]:
            order = random.Random(worker).sample(epochs, len(epochs))
            created = handles[worker].ensure_epochs(order)
            return [(k.epoch_id, k.secret_bytes()) for k in created]

        results = in_threads(workers, race)
        created = sorted(pair for result in results for pair in result)
        final = keyrings.open()
        assert [epoch_id for epoch_id, _ in created] == epochs
        assert created == [(e, final.epoch_key(e).secret_bytes()) for e in epochs]


# --------------------------------------------------------------------------------------------
# LogStorage

SEGMENT = b"SDRLOG01" + bytes(24) + b"BTCH and the first batch, then its trailer"


def test_log_storage_implements_the_protocol(log_storage: LogStorage) -> None:
    assert isinstance(log_storage, LogStorage)
    assert isinstance(log_storage.location(), str)
    assert log_storage.location()


def test_a_new_log_is_empty_and_created_once(log_storages: Handles[LogStorage]) -> None:
    first = log_storages.open()
    assert not first.exists()
    assert first.segments() == []
    assert first.strays() == []
    with pytest.raises(FileNotFoundError):
        first.read_checkpoints()
    first.create()
    second = log_storages.open()
    for handle in (first, second):
        assert handle.exists()
        assert handle.segments() == []
        assert handle.read_checkpoints() == b""
        assert handle.size() == 0
        assert handle.strays() == []
        assert handle.set_aside_tails() == {}
    with pytest.raises(FileExistsError):
        second.create()
    assert first.read_checkpoints() == b""


def test_a_segment_is_born_whole_and_seen_by_another_handle(
    log_storages: Handles[LogStorage],
) -> None:
    first = log_storages.open()
    first.create()
    with first.lock():
        first.create_segment(0, SEGMENT)
    second = log_storages.open()
    assert second.segments() == [0]
    assert second.read_segment(0) == SEGMENT
    assert bytes(second.map_segment(0)) == SEGMENT
    assert second.read_segment(0, 32) == SEGMENT[32:]
    assert second.read_segment(0, len(SEGMENT)) == b""
    assert second.size() == len(SEGMENT)
    assert second.strays() == []  # whatever a backend keeps while a segment is born


def test_creating_an_existing_segment_is_refused(log_storage: LogStorage) -> None:
    with log_storage.lock():
        log_storage.create_segment(0, SEGMENT)
        with pytest.raises(FileExistsError):
            log_storage.create_segment(0, b"another segment 0")
    assert log_storage.read_segment(0) == SEGMENT
    assert log_storage.segments() == [0]


def test_writes_land_at_the_given_offset_durably(log_storages: Handles[LogStorage]) -> None:
    writer = log_storages.open()
    writer.create()
    with writer.lock():
        writer.create_segment(0, SEGMENT)
        writer.write_segment(0, len(SEGMENT), b"second batch")
    reader = log_storages.open()
    assert reader.read_segment(0) == SEGMENT + b"second batch"
    # A torn write at the end is overwritten by the next batch, written where the writer knows
    # the whole batches end.
    with writer.lock():
        writer.write_segment(0, len(SEGMENT), b"SECOND")
    assert reader.read_segment(0) == SEGMENT + b"SECOND batch"
    assert reader.size() == len(SEGMENT) + 12
    big = random.Random(3).randbytes(3 << 20)  # more than one write(2) may take
    with writer.lock():
        writer.write_segment(0, len(SEGMENT) + 12, big)
    assert reader.read_segment(0, len(SEGMENT) + 12) == big


def test_truncate_cuts_a_segment(log_storages: Handles[LogStorage]) -> None:
    writer = log_storages.open()
    writer.create()
    with writer.lock():
        writer.create_segment(0, SEGMENT + b"torn tail")
        writer.truncate_segment(0, len(SEGMENT))
    reader = log_storages.open()
    assert reader.read_segment(0) == SEGMENT
    assert reader.size() == len(SEGMENT)
    with writer.lock():
        writer.write_segment(0, len(SEGMENT), b"next batch")
    assert reader.read_segment(0) == SEGMENT + b"next batch"


def test_tail_sizes_follow_every_writer(log_storages: Handles[LogStorage]) -> None:
    """What the log's writer checks before each batch: another handle's appends, checkpoints
    and truncations all show in the sizes."""
    writer = log_storages.open()
    writer.create()
    with writer.lock():
        writer.create_segment(0, SEGMENT)
    other = log_storages.open()
    assert writer.tail_sizes(0) == (len(SEGMENT), 0)
    with other.lock():
        other.write_segment(0, len(SEGMENT), b"by another writer")
        other.write_checkpoints(0, b"a checkpoint")
    assert writer.tail_sizes(0) == (len(SEGMENT) + 17, 12)
    with other.lock():
        other.truncate_segment(0, 5)
    assert writer.tail_sizes(0) == (5, 12)
    with pytest.raises(FileNotFoundError):
        writer.tail_sizes(99)


def test_segments_are_listed_by_first_index(log_storage: LogStorage) -> None:
    firsts = [1_048_576, 0, 999_999_999_999, 20_000, 3]
    with log_storage.lock():
        for first in firsts:
            log_storage.create_segment(first, segment_name(first).encode())
    assert log_storage.segments() == sorted(firsts)
    for first in firsts:
        assert log_storage.read_segment(first) == segment_name(first).encode()
    assert log_storage.size() == sum(len(segment_name(f)) for f in firsts)
    assert log_storage.strays() == []


def test_a_missing_segment_is_not_found(log_storage: LogStorage) -> None:
    for state in ("no segment", "another segment"):
        calls: list[Callable[[], object]] = [
            lambda: log_storage.read_segment(20),
            lambda: log_storage.read_segment(20, 5),
            lambda: log_storage.map_segment(20),
            lambda: log_storage.write_segment(20, 0, b"x"),
            lambda: log_storage.truncate_segment(20, 0),
        ]
        for call in calls:
            with pytest.raises(FileNotFoundError):
                call()
        assert 20 not in log_storage.segments(), state
        if not log_storage.segments():
            with log_storage.lock():
                log_storage.create_segment(0, SEGMENT)
    assert log_storage.segments() == [0]


def test_checkpoints_are_written_read_and_truncated(log_storages: Handles[LogStorage]) -> None:
    writer = log_storages.open()
    writer.create()
    one, two = b"\x00\x00\x00\x05note1", b"\x00\x00\x00\x05note2"
    with writer.lock():
        writer.write_checkpoints(0, one)
        writer.write_checkpoints(len(one), two)
    reader = log_storages.open()
    assert reader.read_checkpoints() == one + two
    assert reader.read_checkpoints(len(one)) == two
    assert reader.read_checkpoints(len(one + two)) == b""
    with writer.lock():
        writer.write_checkpoints(len(one + two), b"\x00\x00\x00\x05no")  # torn
        writer.truncate_checkpoints(len(one + two))
    assert reader.read_checkpoints() == one + two
    assert reader.size() == 0  # the size counts segments only
    assert reader.segments() == []


def test_the_checkpoints_of_a_log_never_created_are_not_found(
    log_storages: Handles[LogStorage],
) -> None:
    storage = log_storages.open()
    calls: list[Callable[[], object]] = [
        storage.read_checkpoints,
        lambda: storage.write_checkpoints(0, b"x"),
        lambda: storage.truncate_checkpoints(0),
    ]
    for call in calls:
        with pytest.raises(FileNotFoundError):
            call()
    assert not storage.exists()


def test_tails_set_aside_are_kept_outside_the_log(log_storages: Handles[LogStorage]) -> None:
    storage = log_storages.open()
    storage.create()
    with storage.lock():
        storage.create_segment(0, SEGMENT + b"torn")
        first = storage.set_aside(segment_name(0), len(SEGMENT), b"torn")
        storage.truncate_segment(0, len(SEGMENT))
        second = storage.set_aside("checkpoints", 0, b"\x00\x00\x01")
    assert isinstance(first, str)
    assert first != second
    assert segment_name(0) in first
    other = log_storages.open()
    assert other.set_aside_tails() == {first: b"torn", second: b"\x00\x00\x01"}
    # Not log data: the log holds what it held, and nothing else.
    assert other.segments() == [0]
    assert other.read_segment(0) == SEGMENT
    assert other.read_checkpoints() == b""
    assert other.size() == len(SEGMENT)
    assert other.strays() == []


def test_a_whole_segment_is_set_aside_out_of_the_log(log_storages: Handles[LogStorage]) -> None:
    # What a repair does to the segments after a log's damaged point: they leave the log whole,
    # byte for byte, and are kept where the tails are.
    storage = log_storages.open()
    storage.create()
    later = SEGMENT.replace(bytes(8), (20).to_bytes(8, "big"), 1)
    with storage.lock():
        storage.create_segment(0, SEGMENT)
        storage.create_segment(20, later)
        tail = storage.set_aside(segment_name(0), 32, SEGMENT[32:])
        moved = storage.set_aside_segment(20)
    assert isinstance(moved, str)
    assert moved != tail
    assert segment_name(20) in moved
    other = log_storages.open()
    assert other.segments() == [0]
    assert other.set_aside_tails() == {tail: SEGMENT[32:], moved: later}
    assert other.size() == len(SEGMENT)
    assert other.strays() == []
    with pytest.raises(FileNotFoundError), storage.lock():
        storage.set_aside_segment(20)  # it is gone from the log
    with pytest.raises(FileNotFoundError), storage.lock():
        other.read_segment(20)
    # A segment of the same name can be born again (a repaired log goes on from there).
    with storage.lock():
        storage.create_segment(20, later[:40])
    assert other.segments() == [0, 20]
    assert other.read_segment(20) == later[:40]
    assert other.set_aside_tails()[moved] == later


def test_a_pending_repair_is_kept_beside_the_log(log_storages: Handles[LogStorage]) -> None:
    storage = log_storages.open()
    storage.create()
    assert storage.pending_repair() is None
    with storage.lock():
        storage.create_segment(0, SEGMENT)
        storage.set_pending_repair(b'{"plan": 1}')
        storage.set_pending_repair(b'{"plan": 2}')  # replaced whole
    other = log_storages.open()
    assert other.pending_repair() == b'{"plan": 2}'
    # Not log data: the log holds what it held, and nothing else.
    assert other.segments() == [0]
    assert other.read_segment(0) == SEGMENT
    assert other.read_checkpoints() == b""
    assert other.strays() == []
    assert other.set_aside_tails() == {}
    with storage.lock():
        storage.set_pending_repair(None)
        storage.set_pending_repair(None)  # removing what is not there is no error
    assert other.pending_repair() is None


def test_the_lock_excludes_a_second_holder(log_storages: Handles[LogStorage]) -> None:
    first, second = log_storages.open(), log_storages.open()
    first.create()
    with first.lock():
        started = time.monotonic()
        with pytest.raises(StoreLocked) as caught, second.lock(timeout=0.2):
            pass
        assert time.monotonic() - started >= 0.2
        assert isinstance(caught.value, StoreError)
        with pytest.raises(StoreLocked), first.lock(timeout=0):  # not re-entrant either
            pass
    with second.lock(timeout=0):  # released
        pass
    with first.lock(timeout=0):
        pass


def test_a_waiting_holder_gets_the_lock_when_it_is_released(
    log_storages: Handles[LogStorage],
) -> None:
    first, second = log_storages.open(), log_storages.open()
    first.create()
    held, order = threading.Event(), []

    def hold() -> None:
        with first.lock():
            held.set()
            time.sleep(0.1)
            order.append("first")

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    with second.lock(timeout=5):
        order.append("second")
    thread.join()
    assert order == ["first", "second"]


def test_writers_holding_the_lock_never_interleave(
    log_storages: Handles[LogStorage], busy_switching: None
) -> None:
    setup = log_storages.open()
    setup.create()
    with setup.lock():
        setup.create_segment(0, SEGMENT)
    handles = [log_storages.open() for _ in range(6)]

    def append(worker: int) -> None:
        storage = handles[worker]
        for i in range(15):
            with storage.lock(timeout=10):
                end = len(storage.read_segment(0))  # read, then write at the end: atomic
                storage.write_segment(0, end, f"<{worker}:{i:02d}>".encode())
                cps = storage.read_checkpoints()
                storage.write_checkpoints(len(cps), bytes([worker]))

    in_threads(len(handles), append)
    data = setup.read_segment(0)[len(SEGMENT) :]
    pieces = sorted(data[k : k + 6] for k in range(0, len(data), 6))
    assert pieces == sorted(f"<{w}:{i:02d}>".encode() for w in range(6) for i in range(15))
    assert sorted(setup.read_checkpoints()) == sorted(bytes(range(6)) * 15)


# --------------------------------------------------------------------------------------------
# Decided-calls index

DECIDED_AT = datetime(2027, 5, 22, 9, 30, 0, 123456, tzinfo=UTC)


def first(
    call: bytes = b"\x01" + bytes(range(16)), epoch_id: str = "2027-05-22", **changes: Any
) -> FirstDecision:
    """A first decision with every field set (``changes`` replace some)."""
    d = FirstDecision(
        epoch_id=epoch_id,
        call=call,
        reason="sampled",
        rule="sales",
        purpose="quality",
        rate="0.05",
        policy_version="ab" * 32,
        threshold=(5 << 56) // 100,
        caller_pseudonym="c0ffee" * 5,
        decided_at=DECIDED_AT,
        attributes='{"queue":"sales"}',
    )
    return d._replace(**changes)


def test_decided_index_implements_the_protocol(decided: DecidedCalls) -> None:
    assert isinstance(decided, DecidedCalls)


def test_a_new_call_is_remembered_and_comes_back_as_it_was(
    decided_indexes: Handles[DecidedCalls],
) -> None:
    index = decided_indexes.open()
    d = first()
    assert index.remember([d]) == [None]
    other = decided_indexes.open()  # another process
    got = other.get(d.epoch_id, d.call)
    assert got == d and got is not None and got.decided_at.tzinfo is not None
    assert got.draw == int.from_bytes(bytes(range(7)), "big")  # the tag's first 7 bytes
    assert other.get(d.epoch_id, b"\x01" + bytes(16)) is None


def test_the_first_decision_of_a_call_stands(decided_indexes: Handles[DecidedCalls]) -> None:
    index = decided_indexes.open()
    d = first()
    index.remember([d])
    later = DECIDED_AT + timedelta(minutes=5)
    retry = first(reason="not_sampled", rule="default", caller_pseudonym=None,
                  decided_at=later, policy_version="cd" * 32)  # fmt: skip
    assert decided_indexes.open().remember([retry]) == [d]
    assert index.get(d.epoch_id, d.call) == d


def test_calls_are_told_apart_by_epoch_and_kind(decided: DecidedCalls) -> None:
    tag = bytes(range(16))
    text, raw = first(b"\x01" + tag), first(b"\x02" + tag, reason="objection")
    tomorrow = first(b"\x01" + tag, epoch_id="2027-05-23", reason="not_sampled")
    assert decided.remember([text, raw, tomorrow]) == [None, None, None]
    assert decided.get("2027-05-22", b"\x02" + tag) == raw
    assert decided.get("2027-05-23", b"\x01" + tag) == tomorrow


def test_each_first_decision_keeps_its_attributes(decided: DecidedCalls) -> None:
    # What the decision logged of the call's attributes: a copy of its entry logs the same.
    texts = ['{"queue":"sales"}', "{}", None, '{"queue":"sales"}', '{"q":"é"}']
    calls = [first(b"\x01" + bytes([i]) * 16, attributes=t) for i, t in enumerate(texts)]
    assert decided.remember(calls) == [None] * len(calls)
    assert [decided.get(c.epoch_id, c.call) for c in calls] == calls


def test_an_index_from_before_attributes_gets_their_column(tmp_path: Path) -> None:
    path = tmp_path / "decided.sqlite"
    old = SqliteDecidedCalls(path)
    d = first(attributes=None)
    old.remember([d])
    old.close()
    db = sqlite3.connect(path)
    columns = "epoch_id, call, reason, rule_id, caller_pseudonym, decided_at, logged, log_index"
    db.executescript(  # the table as it was before decisions logged attributes
        "CREATE TABLE c (epoch_id TEXT NOT NULL, call BLOB NOT NULL, reason INTEGER NOT NULL, "
        "rule_id INTEGER NOT NULL, caller_pseudonym TEXT, decided_at INTEGER NOT NULL, "
        "logged INTEGER NOT NULL DEFAULT 0, log_index INTEGER, PRIMARY KEY (epoch_id, call)) "
        f"WITHOUT ROWID; INSERT INTO c SELECT {columns} FROM decided_calls; "
        "DROP TABLE decided_calls; ALTER TABLE c RENAME TO decided_calls;"
    )
    db.close()
    index = SqliteDecidedCalls(path)
    assert index.get(d.epoch_id, d.call) == d
    assert index.remember([d._replace(attributes="{}")]) == [d]  # still the first
    new = first(b"\x01" + b"n" * 16)
    assert index.remember([new]) == [None] and index.get(new.epoch_id, new.call) == new
    index.close()


def test_a_call_twice_in_one_list_is_a_repeat_of_the_first(decided: DecidedCalls) -> None:
    a, b = first(b"\x01" + b"a" * 16), first(b"\x01" + b"b" * 16)
    again = a._replace(reason="cap_reached")
    assert decided.remember([a, b, again]) == [None, None, a]
    assert decided.remember([b._replace(reason="objection"), first(b"\x01" + b"c" * 16)]) == [
        b,
        None,
    ]


def test_marks_say_which_first_decisions_are_logged(decided_indexes: Handles[DecidedCalls]) -> None:
    index = decided_indexes.open()
    a, b = first(b"\x01" + b"a" * 16), first(b"\x01" + b"b" * 16, log_index=7, logged=True)
    index.remember([a, b])
    got = index.get(a.epoch_id, a.call)
    assert got is not None and not got.logged and got.log_index is None
    index.mark_logged([(a.epoch_id, a.call), ("2027-05-22", b"\x01" + b"z" * 16)])  # z: unknown
    got = decided_indexes.open().get(a.epoch_id, a.call)
    assert got is not None and got.logged
    assert index.get(b.epoch_id, b.call) == b
    assert index.get("2027-05-22", b"\x01" + b"z" * 16) is None


def test_prune_forgets_epochs_older_than_the_window(decided: DecidedCalls) -> None:
    from sampledrec.sampling.caps import KEEP_DAYS

    days = [(date(2027, 5, 22) - timedelta(days=k)).isoformat() for k in (0, KEEP_DAYS, 16, 40)]
    decided.remember([first(epoch_id=e) for e in days])
    decided.prune(DECIDED_AT)
    assert [decided.get(e, first().call) is not None for e in days] == [True, True, False, False]


def test_threads_racing_on_one_call_get_one_first_decision(
    decided_indexes: Handles[DecidedCalls], busy_switching: None
) -> None:
    handles = [decided_indexes.open() for _ in range(6)]
    calls = [b"\x01" + bytes([i]) * 16 for i in range(20)]

    def race(worker: int) -> list[FirstDecision | None]:
        mine = [first(c, rule=f"rule-{worker}") for c in calls]
        return [handles[worker].remember([d])[0] for d in mine]

    answers = in_threads(len(handles), race)
    for k, call in enumerate(calls):
        got = [answers[w][k] for w in range(len(handles))]
        assert got.count(None) == 1  # one of them decided first
        winner = handles[0].get("2027-05-22", call)
        assert winner is not None
        assert all(a == winner for a in got if a is not None)
        assert winner.rule == f"rule-{got.index(None)}"


def test_a_closed_index_refuses_to_be_used(decided: DecidedCalls) -> None:
    decided.close()
    with pytest.raises(StoreError):
        decided.remember([first()])
    with pytest.raises(StoreError):
        decided.get("2027-05-22", first().call)


# --------------------------------------------------------------------------------------------
# Caps ledger

MONDAY = datetime(2026, 11, 16, 9, tzinfo=UTC)


def capped(call: bytes, agent: str = "alice", at: datetime = MONDAY, **changes: Any) -> CapRequest:
    """A call selected under the rule "sales", capped at 2 a day and 3 a week per agent."""
    req = CapRequest(at.date().isoformat(), call, "sales", agent, cap_periods(at, 2, 3))
    return req._replace(**changes)


def test_cap_ledger_implements_the_protocol(ledger: CapLedger) -> None:
    assert isinstance(ledger, CapLedger)


def test_ledger_counts_per_agent_day_and_week(ledger: CapLedger) -> None:
    got = ledger.decide([capped(bytes([i])) for i in range(4)])
    assert got == ["sampled", "sampled", "cap_reached", "cap_reached"]  # 2 a day
    assert ledger.decide([capped(b"b", agent="bob")]) == ["sampled"]  # bob has his own
    tuesday = MONDAY + timedelta(days=1)
    got = ledger.decide([capped(bytes([10 + i]), at=tuesday) for i in range(3)])
    assert got == ["sampled", "cap_reached", "cap_reached"]  # the week's 3rd, then full
    next_week = MONDAY + timedelta(days=7)
    assert ledger.decide([capped(b"n", at=next_week)]) == ["sampled"]
    assert ledger.decide([]) == []


def test_each_rule_counts_apart(ledger: CapLedger) -> None:
    assert ledger.decide([capped(b"1"), capped(b"2"), capped(b"3")]) == [
        "sampled",
        "sampled",
        "cap_reached",
    ]
    assert ledger.decide([capped(b"4", rule="support"), capped(b"5", rule="support")]) == [
        "sampled",
        "sampled",
    ]


def test_a_retry_gets_the_same_answer_and_counts_once(ledger: CapLedger) -> None:
    assert ledger.decide([capped(b"a"), capped(b"a"), capped(b"b")]) == ["sampled"] * 3
    assert ledger.decide([capped(b"c"), capped(b"a")]) == ["cap_reached", "sampled"]
    assert ledger.decide([capped(b"c")]) == ["cap_reached"]  # a refusal is remembered too
    # The same call in another epoch is another call.
    assert ledger.decide([capped(b"a", epoch_id="2026-11-17")]) == ["cap_reached"]


def test_a_cap_of_zero_refuses_every_call(ledger: CapLedger) -> None:
    req = CapRequest("2026-11-16", b"x", "sales", "alice", cap_periods(MONDAY, 0, None))
    assert ledger.decide([req, req._replace(call=b"y")]) == ["cap_reached"] * 2


def test_a_second_handle_shares_the_counts(cap_ledgers: Handles[CapLedger]) -> None:
    a, b = cap_ledgers.open(), cap_ledgers.open()
    assert a.decide([capped(b"1")]) == ["sampled"]
    assert b.decide([capped(b"2"), capped(b"1"), capped(b"3")]) == [
        "sampled",
        "sampled",
        "cap_reached",
    ]
    assert a.decide([capped(b"3"), capped(b"2")]) == ["cap_reached", "sampled"]


def test_threads_counting_one_agent_never_exceed_its_cap(
    cap_ledgers: Handles[CapLedger], busy_switching: None
) -> None:
    handles = [cap_ledgers.open() for _ in range(6)]
    shared = [b"s" + bytes([i]) for i in range(4)]  # asked by every thread: one answer each

    def count(worker: int) -> list[str]:
        mine = [capped(b"w" + bytes([worker, i])) for i in range(5)]
        pairs = zip(mine[:4], [capped(c) for c in shared], strict=True)
        reqs = [r for pair in pairs for r in pair] + mine[4:]
        out: list[str] = []
        for k in range(0, len(reqs), 1 + worker % 3):  # batches of 1 to 3
            out.extend(handles[worker].decide(reqs[k : k + 1 + worker % 3]))
        return out

    answers = in_threads(len(handles), count)
    for k in range(4):
        assert len({a[2 * k + 1] for a in answers}) == 1  # the shared calls: one answer each
    own = [a for w in answers for i, a in enumerate(w) if i % 2 == 0 or i >= 8]
    shared_sampled = sum(a == "sampled" for a in answers[0][1:8:2])
    assert sum(a == "sampled" for a in own) + shared_sampled == 2  # the day's cap, exactly


# --------------------------------------------------------------------------------------------
# Regressions of one backend


def test_local_blob_store_lists_blobs_under_a_hidden_folder(tmp_path: Path) -> None:
    # Blobs were left out of list() when a folder above the store's root started with a dot
    # (such as ~/.sampledrec/recordings), as if they were temp files.
    blobs = LocalBlobStore(tmp_path / ".sampledrec" / "recordings", create=True)
    blobs.put("top.sdr", b"1")
    blobs.put("bucket-2027-05-22/rec-0001.sdr", b"2")
    (tmp_path / ".sampledrec" / "recordings" / "bucket-2027-05-22" / ".tmp-put").write_bytes(b"")
    assert blobs.list() == ["bucket-2027-05-22/rec-0001.sdr", "top.sdr"]


def test_local_log_storage_keeps_the_store_layout(tmp_path: Path) -> None:
    # The layout of docs/log-format.md section 1: log/ holds segments and checkpoints only;
    # the lock, segments being born and the tails set aside are beside it. Folders are 0700,
    # files 0600.
    storage = LocalLogStorage.in_store(tmp_path)
    assert storage.location() == str(tmp_path / "log")
    storage.create()
    with storage.lock():
        storage.create_segment(0, SEGMENT + b"torn")
        moved = storage.set_aside(segment_name(0), len(SEGMENT), b"torn")
        storage.truncate_segment(0, len(SEGMENT))
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert files == [
        "log",
        "log.lock",
        "log/checkpoints",
        "log/seg-000000000000.log",
        "recovered",
        Path(moved).relative_to(tmp_path).as_posix(),
    ]
    assert Path(moved).name.startswith(f"seg-000000000000.log.{len(SEGMENT)}.")
    for path in tmp_path.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


def test_local_log_storage_keeps_a_repair_beside_the_log(tmp_path: Path) -> None:
    # A repair's plan is STORE/log.repair while it runs; whole segments it sets aside go to
    # recovered/ like the tails, under a name that never replaces another.
    storage = LocalLogStorage.in_store(tmp_path)
    storage.create()
    with storage.lock():
        storage.create_segment(0, SEGMENT)
        storage.create_segment(20, SEGMENT)
        storage.set_pending_repair(b"plan")
        first = storage.set_aside(segment_name(20), 0, SEGMENT)
        moved = storage.set_aside_segment(20)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert files == sorted(
        [
            "log",
            "log.lock",
            "log.repair",
            "log/checkpoints",
            "log/seg-000000000000.log",
            "recovered",
            Path(first).relative_to(tmp_path).as_posix(),
            Path(moved).relative_to(tmp_path).as_posix(),
        ]
    )
    assert first != moved
    assert Path(moved).read_bytes() == Path(first).read_bytes() == SEGMENT
    for path in tmp_path.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    with storage.lock():
        storage.set_pending_repair(None)
    assert not (tmp_path / "log.repair").exists()


def test_local_log_storage_reports_what_else_is_in_the_log_folder(tmp_path: Path) -> None:
    storage = LocalLogStorage.in_store(tmp_path)
    storage.create()
    with storage.lock():
        storage.create_segment(0, SEGMENT)
    folder = tmp_path / "log"
    (folder / ".hidden").write_bytes(b"x")
    (folder / "seg-1.log").write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "seg-000000000009.log").symlink_to(folder / "seg-000000000000.log")
    assert storage.strays() == [".hidden", "seg-000000000009.log", "seg-1.log", "sub"]
    assert storage.segments() == [0]  # none of them is taken for a segment


def test_local_log_storage_doctests() -> None:
    import doctest

    import sampledrec.log.storage

    assert doctest.testmod(sampledrec.log.storage).failed == 0
