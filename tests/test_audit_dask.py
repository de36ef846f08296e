"""The audit on Dask: the same report as the single-process audit, field by field.

A store is written with small log segments (several partitions), then audited from its kit in
this process and on Dask (a local cluster of two worker processes; a scheduler started here),
honest and tampered with: an entry changed, a trailer's claim about the tree before its segment
forged, a draw forged, a checkpoint's signature broken, a recording missing.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed")

from distributed import LocalCluster

import sampledrec.log.segments
from sampledrec import FixedClock, Store
from sampledrec.audit import distributed as audit_dask
from sampledrec.audit.distributed import DaskRunner, dask_runner
from sampledrec.audit.findings import AuditReport
from sampledrec.audit.kit import audit_kit, write_kit
from sampledrec.cli import main
from sampledrec.errors import StoreError
from sampledrec.log.segments import BATCH_HEADER, SEG_HEADER, TRAILER_HEAD
from sampledrec.log.storage import LocalLogStorage, segment_name
from sampledrec.sampling.record import DecisionRecord
from sampledrec.vault.audio import synthetic_speech
from sampledrec.vault.recorder import Vault

from .recording import write_call

POLICY = """
[default]
rate = "0.25"
purpose = "quality"
retention = "30 days"
"""
DAY = datetime(2026, 2, 27, 9, tzinfo=UTC)
AUDIT_AT = datetime(2026, 3, 6, 20, tzinfo=UTC)
SEGMENT = 4096  # bytes: a few dozen entries per segment


@pytest.fixture(scope="module")
def small_segments() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sampledrec.log.segments, "SEGMENT_BYTES", SEGMENT)
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, small_segments: None) -> Path:
    base = tmp_path_factory.mktemp("dask")
    (base / "p.toml").write_text(POLICY)
    store = Store.init(
        base / "store", policy=base / "p.toml", clock=FixedClock(DAY - timedelta(hours=1))
    )
    for day in range(2):
        clock = FixedClock(DAY + timedelta(days=day))
        with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
            sampler = store.sampler(clock=clock, log=log)
            for i in range(150):
                d = sampler.decide(f"d{day}-{i}", {})
                if d.record and i % 5 == 0:
                    write_call(vault, d, synthetic_speech(0.05, seed=i))
                if i % 40 == 0:
                    log.flush()
    segments = len(store.log_storage.segments())
    assert segments >= 6, f"{segments} segments: the test wants several partitions"
    return base


@pytest.fixture(scope="module")
def two_workers(built: Path) -> Iterator[DaskRunner]:
    # The runner's cluster serves every kit: each audit names its own kit folder.
    with dask_runner(built, workers=2) as runner:
        yield runner


def _same(one: AuditReport, other: AuditReport) -> None:
    a, b = one.to_json(), other.to_json()
    assert sorted(a) == sorted(b)
    for field in a:
        assert a[field] == b[field], field


def _middle_segment(kit: Path) -> tuple[Path, bytes]:
    segments = LocalLogStorage(kit / "log").segments()
    path = kit / "log" / segment_name(segments[len(segments) // 2])
    return path, path.read_bytes()


def _kit(case: Path) -> Path:
    kit = case / "kit"
    write_kit(Store.open(case / "store"), kit, now=AUDIT_AT)
    return kit


def _change_an_entry(case: Path) -> dict[str, Any]:
    kit = _kit(case)
    path, data = _middle_segment(kit)
    at = SEG_HEADER.size + BATCH_HEADER.size + 40  # inside the first batch's first entry
    path.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    return {"kit": kit}


def _forge_a_claim(case: Path) -> dict[str, Any]:
    # The first hash of a trailer in a later segment covers entries before that segment: it
    # is checked only when the segments are joined.
    kit = _kit(case)
    path, data = _middle_segment(kit)
    _, _, _, plen = BATCH_HEADER.unpack_from(data, SEG_HEADER.size)
    at = SEG_HEADER.size + BATCH_HEADER.size + plen + TRAILER_HEAD.size
    path.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    return {"kit": kit}


def _forge_a_draw(case: Path) -> dict[str, Any]:
    store = Store.open(case / "store")
    clock = FixedClock(DAY + timedelta(days=1, hours=5))
    policy = store.policy(clock.now())
    rule = policy.rule_named("default")
    with store.open_log(clock=clock) as log:
        log.append_decision(
            DecisionRecord(
                epoch_id=(DAY + timedelta(days=1)).date().isoformat(),
                policy_version=policy.version,
                rule="default",
                threshold=rule.threshold,
                reason="sampled",
                draw=0,
                call_ref="forged",
                agent=None,
                caller_pseudonym=None,
                decided_at=clock.now(),
                attributes=policy.attributes_json({}),
            )
        )
    return {"kit": _kit(case)}


def _break_a_signature(case: Path) -> dict[str, Any]:
    kit = _kit(case)
    path = kit / "log" / "checkpoints"
    data = path.read_bytes()
    at = data.index("\u2014 ".encode()) + 20  # in the first checkpoint's signature
    path.write_bytes(data[:at] + (b"A" if data[at : at + 1] != b"A" else b"B") + data[at + 1 :])
    return {"kit": kit}


def _lose_a_recording(case: Path) -> dict[str, Any]:
    kit = _kit(case)
    blobs = sorted(p for p in (case / "store" / "recordings").rglob("*") if p.is_file())
    blobs[len(blobs) // 2].unlink()
    return {"kit": kit, "recordings": case / "store"}


CASES = {
    "honest": lambda case: {"kit": _kit(case)},
    "entry changed": _change_an_entry,
    "claim forged": _forge_a_claim,
    "draw forged": _forge_a_draw,
    "signature broken": _break_a_signature,
    "recording missing": _lose_a_recording,
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_audit_on_two_workers_is_the_single_process_audit(
    built: Path, tmp_path: Path, two_workers: DaskRunner, name: str
) -> None:
    shutil.copytree(built / "store", tmp_path / "store")
    kw = CASES[name](tmp_path)
    kit = kw.pop("kit")
    alone = audit_kit(kit, now=AUDIT_AT, **kw)
    assert (alone.verdict == "PASS") == (name == "honest"), alone.to_text()
    runner = DaskRunner(two_workers.client, kit, two_workers.spool)
    # the columns come back through shared memory (where there is some)
    assert runner.spool is not None or not Path(audit_dask.SHARED_MEMORY).is_dir()
    spread = audit_kit(kit, now=AUDIT_AT, runner=runner, **kw)
    _same(alone, spread)
    if runner.spool is not None:  # every column file mapped and deleted
        assert not list(Path(runner.spool).iterdir())
    if name in ("honest", "entry changed"):  # and over the network (a remote cluster's way)
        _same(alone, audit_kit(kit, now=AUDIT_AT, runner=DaskRunner(two_workers.client, kit), **kw))


def test_columns_that_cannot_be_spooled_go_back_with_the_answer(
    built: Path, tmp_path: Path, two_workers: DaskRunner
) -> None:
    # A full or missing spool folder (a container's /dev/shm is 64 MB by default): the columns
    # come back over the network, and the report is the same.
    shutil.copytree(built / "store", tmp_path / "store")
    kit = _kit(tmp_path)
    gone = str(tmp_path / "no-such-folder")
    alone = audit_kit(kit, now=AUDIT_AT)
    _same(alone, audit_kit(kit, now=AUDIT_AT, runner=DaskRunner(two_workers.client, kit, gone)))


def _read_segments(built: Path, tmp_path: Path) -> list[Any]:
    """Every segment of a kit of the built store (copied to ``tmp_path``), read as a worker
    reads them (:func:`~sampledrec.audit.partitions.read_part`)."""
    from sampledrec.audit.kit import open_kit
    from sampledrec.audit.partitions import LogPartition, read_part

    shutil.copytree(built / "store", tmp_path / "store")
    kit = _kit(tmp_path)
    ev, _ = open_kit(kit)
    segments = LocalLogStorage(kit / "log").segments()
    return read_part(LogPartition(str(kit / "log"), tuple(segments)), ev.sealing, {})


def test_spooled_columns_come_back_as_they_were(built: Path, tmp_path: Path) -> None:
    from dataclasses import fields

    import numpy as np

    from sampledrec.audit.distributed import spool_columns, unspool_columns

    entries = _read_segments(built, tmp_path)
    before = [e.contents.decisions for e in entries]
    assert sum(map(len, before)) > 200
    assert spool_columns(entries, str(tmp_path / "no-such-folder")) == [None] * len(entries)
    assert [e.contents.decisions for e in entries] == before  # left as they were, to send
    spool = tmp_path / "spool"
    spool.mkdir()
    spooled = spool_columns(entries, str(spool))
    assert len(list(spool.iterdir())) == sum(1 for d in before if len(d))
    assert all(len(e.contents.decisions) == 0 for e in entries)  # nothing left to send
    elsewhere = [
        s if s is None else dataclasses.replace(s, path=str(tmp_path / Path(s.path).name))
        for s in spooled
    ]
    with pytest.raises(StoreError, match="not in the spool folder"):
        unspool_columns(entries, elsewhere, str(spool))  # never read nor deleted
    unspool_columns(entries, spooled, str(spool))
    assert not list(spool.iterdir())
    for e, old in zip(entries, before, strict=True):
        new = e.contents.decisions
        for f in fields(old):
            a, b = getattr(old, f.name), getattr(new, f.name)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape, f.name
                assert np.array_equal(a, b), f.name
                b[...] = b  # writable, as columns read in this process
            else:
                assert a == b, f.name


def _spooled_segments(built: Path, tmp_path: Path, refs: str) -> tuple[Any, Any, Any, Path]:
    """The built kit's segments read and spooled to ``tmp_path/spool``, and their columns
    before. ``refs``: the call references "as built" (wider in later segments: d1-149), all
    padded to one width ("equal"), or so but one segment's wider ("one wider")."""
    import numpy as np

    from sampledrec.audit.distributed import spool_columns

    entries = _read_segments(built, tmp_path)
    width = max(e.contents.decisions.refs.shape[1] for e in entries)
    for i, e in enumerate(entries):
        d = e.contents.decisions
        to = {"as built": d.refs.shape[1], "equal": width}.get(refs, width + 9 * (i == 3))
        padded = np.zeros((len(d), to), dtype=np.uint8)
        padded[:, : d.refs.shape[1]] = d.refs
        e.contents.decisions = dataclasses.replace(d, refs=padded)
    before = [e.contents.decisions for e in entries]
    spool = tmp_path / "spool"
    spool.mkdir()
    spooled = spool_columns(entries, str(spool))
    return entries, spooled, before, spool


@pytest.mark.parametrize("refs", ["as built", "equal", "one wider"])
def test_spooled_segments_are_laid_out_in_place_and_joined_without_a_copy(
    built: Path, tmp_path: Path, refs: str
) -> None:
    import numpy as np

    from sampledrec.log.columns import _CODED, concat_decisions

    entries, spooled, before, spool = _spooled_segments(built, tmp_path, refs)
    laid = audit_dask._LaidOut(str(spool), sum(e.length for e in entries))
    for i in (0, 1, 2):  # partitions of one segment, then of several
        laid.add(entries[i : i + 1], spooled[i : i + 1])
    laid.add(entries[3:], spooled[3:])
    laid.close()
    assert not list(spool.iterdir())  # every file read and deleted
    assert laid.columns is not None
    segment = next(e.contents.decisions for e in entries if len(e.contents.decisions))
    with pytest.raises(ValueError, match="read-only"):  # nor through a segment's columns
        segment.time_us[:1] = 0
    joined = concat_decisions([e.contents.decisions for e in entries])
    expected = concat_decisions(before)
    coded = dict(_CODED)
    used = [d for d in before if len(d)]
    for f in dataclasses.fields(expected):
        a, b = getattr(expected, f.name), getattr(joined, f.name)
        if not isinstance(a, np.ndarray):
            assert a == b, f.name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, f.name
        assert np.array_equal(a, b), f.name
        # Laid out in place, the join is a view of the one array. The call references are
        # copied where a segment's are wider than the first's; codes are renumbered (copied)
        # where the segments list different values (the two days' epochs).
        listed = coded.get(f.name)
        copied = (
            any(getattr(d, listed) != getattr(joined, listed) for d in used)
            if listed is not None
            else f.name == "refs" and any(d.refs.shape[1] > used[0].refs.shape[1] for d in used)
        )
        assert copied == (f.name == "epoch" or (f.name == "refs" and refs != "equal"))
        assert np.shares_memory(b, laid.columns[f.name]) != copied, f.name
        with pytest.raises(ValueError, match="read-only"):
            laid.columns[f.name][:1] = laid.columns[f.name][:1]


def test_only_read_only_views_of_consecutive_rows_are_joined_without_a_copy() -> None:
    import numpy as np

    from sampledrec.log.columns import _joined

    base = np.arange(100, dtype=np.int64)
    parts = [base[:30], base[30:70], base[70:]]
    out = _joined(parts)  # writable views: somebody may write to them, so copied
    assert np.array_equal(out, base) and not np.shares_memory(out, base)
    for part in parts:
        part.flags.writeable = False
    joined = _joined(parts)
    assert np.shares_memory(joined, base) and np.array_equal(joined, base)
    assert not joined.flags.writeable
    gap = [base[:30], base[31:70]]
    swapped = [base[30:70], base[:30]]
    for case in (gap, swapped):  # not consecutive: copied, in order
        for part in case:
            part.flags.writeable = False
        got = _joined(case)
        assert np.array_equal(got, np.concatenate(case)) and not np.shares_memory(got, base)


def _cli_report(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """What ``--json`` printed, without the audit's time (the real clock's, a moment apart)."""
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, dict) and doc.pop("at")
    return doc


def test_the_cli_audits_on_a_local_cluster_and_says_the_same(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(built / "store", tmp_path / "store")
    kit = _kit(tmp_path)
    code = main(["audit", "verify", "--kit", str(kit), "--json"])
    alone = _cli_report(capsys)
    assert main(["audit", "verify", "--kit", str(kit), "--workers", "2", "--json"]) == code
    assert _cli_report(capsys) == alone


def test_the_cli_audits_on_a_running_scheduler(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(built / "store", tmp_path / "store")
    kit = _kit(tmp_path)
    code = main(["audit", "verify", "--kit", str(kit), "--json"])
    alone = _cli_report(capsys)
    cluster_class: Any = LocalCluster  # untyped
    with cluster_class(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
    ) as cluster:
        args = ["--scheduler", cluster.scheduler_address, "--json"]
        assert main(["audit", "verify", "--kit", str(kit), *args]) == code
    assert _cli_report(capsys) == alone


def test_an_unreachable_scheduler_is_a_clear_error(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_dask, "CONNECT_TIMEOUT", 1.0)
    shutil.copytree(built / "store", tmp_path / "store")
    kit = _kit(tmp_path)
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["audit", "verify", "--kit", str(kit), "--scheduler", f"tcp://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 3
    assert "cannot reach the Dask scheduler" in err and "Traceback" not in err
    assert main(["audit", "verify", "--store", str(tmp_path / "store"), "--workers", "2"]) == 2
    assert "go with --kit" in capsys.readouterr().err


def _hugepage_advice() -> bool:
    """numpy's switch: does it advise huge pages for large arrays now? (Reading it means
    setting it; it is set back at once.)"""
    multiarray: Any = importlib.import_module("numpy._core.multiarray")
    now = bool(multiarray._set_madvise_hugepage(True))
    multiarray._set_madvise_hugepage(now)
    return now


def test_the_audit_gives_its_arrays_small_pages_only_while_it_runs(
    two_workers: DaskRunner,
) -> None:
    """``small_pages`` turns numpy's huge-page advice off in the block and sets back what was
    there (on or off, also on an error); each worker's task leaves its worker as it found it."""
    start = _hugepage_advice()
    for before in (True, False):
        importlib.import_module("numpy._core.multiarray")._set_madvise_hugepage(before)
        with audit_dask.small_pages():
            assert not _hugepage_advice()
        assert _hugepage_advice() == before
    with pytest.raises(RuntimeError), audit_dask.small_pages():
        raise RuntimeError("the audit failed")
    assert _hugepage_advice() is False  # as before the block: the last loop left it off
    importlib.import_module("numpy._core.multiarray")._set_madvise_hugepage(start)

    def around_a_task() -> tuple[bool, bool]:
        seen = _hugepage_advice()
        with audit_dask.small_pages():
            inside = _hugepage_advice()
        return seen == _hugepage_advice(), inside

    for restored, inside in two_workers.client.run(around_a_task).values():
        assert restored and not inside
