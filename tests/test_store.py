"""The store directory: permissions, locking, refusal of unsafe keyrings."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from sampledrec import FixedClock, Store
from sampledrec.errors import StoreError, StoreLocked, StoreNotFound, StorePermissionError


def test_open_missing(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound, match="sampledrec init"):
        Store.open(tmp_path)


def test_refuses_keyring_readable_by_others(tmp_path: Path) -> None:
    Store.init(tmp_path / "s")
    os.chmod(tmp_path / "s" / "keys", 0o755)
    with pytest.raises(StorePermissionError, match="chmod"):
        Store.open(tmp_path / "s")


def test_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "file").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        Store.init(tmp_path / "s")


def test_lock_is_exclusive(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s")
    other = Store.open(tmp_path / "s")
    with store.lock(), pytest.raises(StoreLocked), other.lock(timeout=0.1):
        pass
    with other.lock(timeout=0.1):
        pass


def test_concurrent_samplers_share_epoch_keys(tmp_path: Path) -> None:
    Store.init(tmp_path / "s")
    draws: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            sampler = Store.open(tmp_path / "s").sampler(clock=FixedClock("2030-01-01T10:00Z"))
            draws.append(sampler.decide("shared-call").draw)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(draws)) == 1


def test_a_keyring_serves_one_store(tmp_path: Path) -> None:
    Store.init(tmp_path / "a", keys_dir=tmp_path / "keys")
    with pytest.raises(StoreError, match="belongs to another store"):
        Store.init(tmp_path / "b", keys_dir=tmp_path / "keys")
    assert not (tmp_path / "b").exists()


def test_a_store_refuses_another_stores_keyring(tmp_path: Path) -> None:
    import json

    a = Store.init(tmp_path / "a", keys_dir=tmp_path / "ka")
    Store.init(tmp_path / "b", keys_dir=tmp_path / "kb")
    meta = json.loads((a.path / "store.json").read_text())
    meta["keys_dir"] = str(tmp_path / "kb")
    (a.path / "store.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="belongs to another store"):
        Store.open(a.path)


@pytest.mark.parametrize("origin", ["\ud800", "a\nb", " ", "x" * 300])
def test_a_store_json_origin_must_be_one_line_of_utf8(tmp_path: Path, origin: str) -> None:
    # Found by the loaders' property test: a lone surrogate in the origin (JSON allows the
    # \ud800 escape) reached the checkpoint signer as a UnicodeEncodeError traceback.
    Store.init(tmp_path / "s")
    meta_path = tmp_path / "s" / "store.json"
    meta = json.loads(meta_path.read_text())
    meta["origin"] = origin
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="origin"):
        Store.open(tmp_path / "s")


@pytest.mark.parametrize("path", [["x"] * 3, 7, "y" * 2000, "z" * 300])
def test_a_backend_path_must_be_text_that_can_name_a_file(tmp_path: Path, path: object) -> None:
    # Found by the loaders' property test: a list as the catalog's path became its text, too
    # long a file name, and the first command ended in an OSError traceback.
    Store.init(tmp_path / "s")
    meta_path = tmp_path / "s" / "store.json"
    meta = json.loads(meta_path.read_text())
    meta["backends"]["catalog"]["path"] = path
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="catalog"):
        Store.open(tmp_path / "s").open_catalog().close()
