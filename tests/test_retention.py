"""Retention: expiry sweeps (crash-safe), legal holds, log-detail key retention."""

from __future__ import annotations

import io
import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sampledrec import FixedClock, Store
from sampledrec.cli.app import main
from sampledrec.errors import InvalidArgument, RecordingExpired
from sampledrec.log.verify import verify_log
from sampledrec.log.writer import iter_entries
from sampledrec.retention.sweep import Retention, SweepReport
from sampledrec.vault.audio import AudioFormat, frames, synthetic_speech
from sampledrec.vault.recorder import Vault

PCM = AudioFormat("pcm16", 8000, 1)
POLICY = """
[default]
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call is recorded"
retention = "2 days"
"""
AT = "2030-03-04T10:00:00Z"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    (tmp_path / "p.toml").write_text(POLICY)
    return Store.init(tmp_path / "s", policy=tmp_path / "p.toml")


def record_some(store: Store, n: int, clock: FixedClock, *, seconds: float = 0.2) -> list[str]:
    ids = []
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(n):
            d = sampler.decide(f"call-{clock.now().isoformat()}-{i}", {"agent": f"a{i % 3}"})
            with vault.record(d, audio_format=PCM, chunk_size=1024) as rec:
                for frame in frames(synthetic_speech(seconds, seed=i), PCM, 20):
                    rec.write(frame)
            ids.append(rec.recording_id)
    return ids


def sweep(store: Store, at: str | FixedClock, *, dry_run: bool = False) -> SweepReport:
    clock = at if isinstance(at, FixedClock) else FixedClock(at)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        return Retention(vault, clock=clock).sweep(dry_run=dry_run)


def test_nothing_expires_early_and_everything_expires_on_time(store: Store) -> None:
    clock = FixedClock(AT)
    ids = record_some(store, 4, clock)
    before = sweep(store, "2030-03-06T09:59:00Z")  # 2 days less one minute
    assert before.expired == [] and before.buckets_destroyed == []
    report = sweep(store, "2030-03-06T10:00:01Z")
    assert sorted(report.expired) == sorted(ids)
    assert report.buckets_destroyed == []  # its day is not over
    later = sweep(store, "2030-03-07T00:00:01Z")
    assert later.buckets_destroyed == ["bucket-2030-03-06"]
    clock2 = FixedClock("2030-03-07T00:00:01Z")
    with store.open_log(clock=clock2) as log, Vault(store, log, clock=clock2) as vault:
        for rid in ids:
            row = vault.catalog.get(rid)
            assert row is not None and row.status == "expired"
            assert row.call_ref is None and row.agent is None and row.wrapped_key is None
            assert not (store.path / "recordings" / row.file).exists()
            with pytest.raises(RecordingExpired):
                vault.open(rid)
    assert not list((store.path / "recordings").rglob("*.sdr"))
    tombstones = [e for e in iter_entries(store.path / "log") if e.type_name == "expired"]
    assert sorted(e.fields["recording_id"] for e in tombstones) == sorted(ids)
    assert verify_log(store.path, public_key=store.public_key).ok


def test_a_destroyed_bucket_defeats_backups(store: Store, tmp_path: Path) -> None:
    """A copy of the recordings and the catalog, made before the sweep, is useless after it."""
    import shutil

    clock = FixedClock(AT)
    (rid,) = record_some(store, 1, clock)
    backup = tmp_path / "backup"
    shutil.copytree(store.path / "recordings", backup / "recordings")
    shutil.copy(store.path / "catalog.sqlite", backup / "catalog.sqlite")
    sweep(store, "2030-03-07T00:00:01Z")
    shutil.rmtree(store.path / "recordings")
    shutil.copytree(backup / "recordings", store.path / "recordings")
    shutil.copy(backup / "catalog.sqlite", store.path / "catalog.sqlite")
    for extra in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        (store.path / extra).unlink(missing_ok=True)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        row = vault.catalog.get(rid)
        assert row is not None and row.status == "sealed"  # the old catalog says so...
        with pytest.raises(RecordingExpired, match="destroyed"):
            vault.open(rid)  # ...but the bucket key is gone: unreadable


def test_sweep_is_idempotent(store: Store) -> None:
    clock = FixedClock(AT)
    record_some(store, 3, clock)
    first = sweep(store, "2030-03-08T00:00:00Z")
    again = sweep(store, "2030-03-08T00:00:00Z")
    assert len(first.expired) == 3
    assert again.expired == [] and again.buckets_destroyed == []


def test_dry_run_changes_nothing(store: Store) -> None:
    clock = FixedClock(AT)
    ids = record_some(store, 2, clock)
    report = sweep(store, "2030-03-08T00:00:00Z", dry_run=True)
    assert sorted(report.expired) == sorted(ids)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        rows = [vault.catalog.get(i) for i in ids]
        assert all(r is not None and r.status == "sealed" for r in rows)
        assert vault.open(ids[0]).audio


def test_legal_hold_keeps_recordings_past_expiry(store: Store) -> None:
    clock = FixedClock(AT)
    held, free = record_some(store, 2, clock)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        retention = Retention(vault, clock=clock)
        hold = retention.hold([held], reason="Case 2030-17: customer dispute")
        with pytest.raises(InvalidArgument):
            retention.hold([free], reason=" ")
    report = sweep(store, "2030-04-01T00:00:00Z")
    assert report.expired == [free] and report.held == 1
    assert report.buckets_destroyed == ["bucket-2030-03-06"]
    later = FixedClock("2030-04-01T00:00:00Z")
    with store.open_log(clock=later) as log, Vault(store, log, clock=later) as vault:
        assert vault.open(held).audio  # readable through the hold's key
        Retention(vault, clock=later).release(hold.hold_id)
        row = vault.catalog.get(held)
        assert row is not None and row.status == "expired"  # its expiry had passed
        with pytest.raises(RecordingExpired):
            vault.open(held)
    entries = [e for e in iter_entries(store.path / "log", store.keyring) if e.type_name == "hold"]
    assert [e.fields["action"] for e in entries] == ["placed", "released"]
    assert entries[0].fields["reason"] == "Case 2030-17: customer dispute"
    assert verify_log(store.path, public_key=store.public_key).ok


def test_two_holds_keep_a_recording_until_both_are_released(store: Store) -> None:
    clock = FixedClock(AT)
    (rid,) = record_some(store, 1, clock)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        r = Retention(vault, clock=clock)
        h1 = r.hold([rid], reason="first case")
        h2 = r.hold({"agent": "a0"}, reason="second case", until=clock.now() + timedelta(days=30))
        clock.advance(days=10)
        r.release(h1.hold_id)
        assert vault.open(rid).audio  # still held by h2
    report = sweep(store, FixedClock(clock.now() + timedelta(days=25)))
    assert report.expired == [rid]  # h2 ended on its own
    assert h2.hold_id in report.holds_released


def test_log_detail_keys_expire(store: Store) -> None:
    clock = FixedClock(AT)
    (rid,) = record_some(store, 1, clock)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        vault.open(rid)  # an access detail, sealed under access/2030-03
    periods = sorted(p.stem for p in (store.keys_path / "periods").glob("*.key"))
    assert "access-2030-03" in periods and "calls-2030-03" in periods
    r1 = sweep(store, "2031-04-01T00:00:01Z")  # 12 months after March 2030 ends
    assert "access/2030-03" in r1.log_keys_destroyed
    assert "calls/2030-03" not in r1.log_keys_destroyed
    r2 = sweep(store, "2031-05-01T00:00:01Z")
    assert "calls/2030-03" in r2.log_keys_destroyed
    # The fields are unreadable, the log still verifies.
    accesses = [
        e for e in iter_entries(store.path / "log", store.keyring) if e.type_name == "access"
    ]
    assert accesses and all(e.sealed for e in accesses if e.time.year == 2030)
    assert verify_log(store.path, public_key=store.public_key).ok


CHILD = textwrap.dedent(
    """
    import sys
    from sampledrec import FixedClock, Store
    from sampledrec.retention.sweep import Retention, SweepReport
    from sampledrec.vault.recorder import Vault
    store = Store.open(sys.argv[1])
    clock = FixedClock("2030-04-01T00:00:00Z")
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        print("start", flush=True)
        Retention(vault, clock=clock).sweep()
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_a_sweep_killed_at_random_points_finishes_when_run_again(
    store: Store, tmp_path: Path
) -> None:
    clock = FixedClock(AT)
    ids = record_some(store, 60, clock, seconds=0.04)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(7)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(store.path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # "start": the store is open
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    report = sweep(store, "2030-04-01T00:00:00Z")
    assert set(report.expired) <= set(ids)
    later = FixedClock("2030-04-01T00:00:00Z")
    with store.open_log(clock=later) as log, Vault(store, log, clock=later) as vault:
        for rid in ids:
            row = vault.catalog.get(rid)
            assert row is not None and row.status == "expired" and row.wrapped_key is None
            assert row.call_ref is None
    assert not list((store.path / "recordings").rglob("*.sdr"))
    assert not list((store.keys_path / "buckets").glob("bucket-*.key"))
    tombstoned = {
        e.fields["recording_id"]
        for e in iter_entries(store.path / "log")
        if e.type_name == "expired"
    }
    assert tombstoned == set(ids)
    assert verify_log(store.path, public_key=store.public_key).ok


def test_sweep_and_hold_cli(tmp_path: Path) -> None:
    # Sweeping at a later --at is a simulation: a simulated store (sampledrec demo) may.
    (tmp_path / "p.toml").write_text(POLICY)
    store = Store.init(tmp_path / "sim", policy=tmp_path / "p.toml", simulated=True)
    clock = FixedClock(AT)
    held, free = record_some(store, 2, clock)
    out = io.StringIO()
    code = main(
        ["hold", "add", held, "--store", str(store.path), "--reason", "audit 2030", "--json"],
        out=out,
    )
    assert code == 0, out.getvalue()
    hold_id = json.loads(out.getvalue())["hold_id"]
    out = io.StringIO()
    assert main(["hold", "list", "--store", str(store.path), "--json"], out=out) == 0
    assert json.loads(out.getvalue())["holds"][0]["recordings"] == 1
    out = io.StringIO()
    code = main(
        ["sweep", "--store", str(store.path), "--at", "2030-04-01T00:00:00Z", "--json"], out=out
    )
    assert code == 0
    assert json.loads(out.getvalue())["expired_ids"] == [free]
    assert main(["hold", "release", hold_id, "--store", str(store.path)]) == 0


# -- time: reads never look back, destruction never runs ahead (issue #12) ---------------------


def _accesses(store: Store) -> list[tuple[str, str, str | None]]:
    return [
        (e.fields["action"], e.fields["outcome"], e.fields["detail"])
        for e in iter_entries(store.path / "log", store.keyring)
        if e.type_name == "access"
    ]


def test_a_read_at_an_earlier_time_is_judged_by_the_clock(store: Store, tmp_path: Path) -> None:
    """Red team: vault.open(rid, at=<before expiry>) read an expired recording while the real
    clock was past its expiry, and logged the read as granted."""
    clock = FixedClock(AT)
    (rid,) = record_some(store, 1, clock)  # retention 2 days: expires 2030-03-06T10:00
    before = datetime(2030, 3, 5, 10, tzinfo=UTC)
    past_expiry = FixedClock("2030-03-06T12:00:00Z")  # not swept yet: the key still exists
    with store.open_log(clock=past_expiry) as log, Vault(store, log, clock=past_expiry) as vault:
        seen = len(_accesses(store))
        reads: list[Callable[[], object]] = [
            lambda: vault.open(rid, at=before),
            lambda: vault.read_range(rid, 0, 50, at=before),
            lambda: vault.export(rid, tmp_path / "x.wav", at=before),
            lambda: vault.open(rid, at=before.replace(tzinfo=None)),  # naive: UTC
            lambda: vault.open(rid),
        ]
        for read in reads:
            with pytest.raises(RecordingExpired, match="expired at 2030-03-06T10:00:00"):
                read()
        log.flush()
        assert [outcome for _, outcome, _ in _accesses(store)[seen:]] == ["denied"] * len(reads)
        assert not (tmp_path / "x.wav").exists()
        assert vault.read_time(before) == past_expiry.now()  # never back...
        ahead = datetime(2030, 3, 7, tzinfo=UTC)
        assert vault.read_time(ahead) == ahead  # ...but ahead, yes
    # Looking ahead is honoured: before its expiry by the clock, a read as of later is refused.
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        assert vault.open(rid).audio
        with pytest.raises(RecordingExpired):
            vault.open(rid, at=datetime(2030, 3, 6, 10, tzinfo=UTC))


def test_a_hold_that_has_ended_keeps_nothing_readable(store: Store) -> None:
    clock = FixedClock(AT)
    (rid,) = record_some(store, 1, clock)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        until = clock.now() + timedelta(days=5)
        Retention(vault, clock=clock).hold([rid], reason="case 12", until=until)
    # Past the hold's end and the recording's own expiry, before any sweep: expired, whatever
    # time is asked for.
    later = FixedClock(until + timedelta(hours=1))
    with store.open_log(clock=later) as log, Vault(store, log, clock=later) as vault:
        for at in (None, until - timedelta(days=1)):
            with pytest.raises(RecordingExpired):
                vault.open(rid, at=at)


def test_reads_are_authorized_by_the_policy_in_force_now_not_at_a_later_at(
    store: Store, tmp_path: Path
) -> None:
    clock = FixedClock(AT)
    (rid,) = record_some(store, 1, clock)
    generous = tmp_path / "generous.toml"
    generous.write_text(POLICY + '\n[roles.qa_reviewer]\npermissions = ["list", "export"]\n')
    store.apply_policy(generous, effective_at=clock.now() + timedelta(days=1), clock=clock)
    from sampledrec import Principal
    from sampledrec.errors import AccessDenied

    quinn = Principal("quinn", ("qa_reviewer",))
    with (
        store.open_log(clock=clock) as log,
        Vault(store, log, clock=clock) as vault,
        pytest.raises(AccessDenied, match="may not export"),
    ):
        vault.export(rid, tmp_path / "q.wav", quinn, at=clock.now() + timedelta(days=1))
    assert not (tmp_path / "q.wav").exists()


def test_a_simulated_store_may_replay_an_earlier_time(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(POLICY)
    sim = Store.init(tmp_path / "sim", policy=tmp_path / "p.toml", simulated=True)
    (rid,) = record_some(sim, 1, FixedClock(AT))
    later = FixedClock("2030-03-06T12:00:00Z")
    with sim.open_log(clock=later) as log, Vault(sim, log, clock=later) as vault:
        assert vault.open(rid, at=datetime(2030, 3, 5, tzinfo=UTC)).audio  # a replay
        with pytest.raises(RecordingExpired):
            vault.open(rid)


def test_a_real_store_never_sweeps_ahead_of_the_clock(store: Store) -> None:
    clock = FixedClock(AT)
    ids = record_some(store, 2, clock)
    future = datetime(2030, 4, 1, tzinfo=UTC)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        retention = Retention(vault, clock=clock)
        with pytest.raises(InvalidArgument, match=r"in the future.*'sampledrec demo'"):
            retention.sweep(future)
        preview = retention.sweep(future, dry_run=True)  # a dry run may look ahead
        assert sorted(preview.expired) == sorted(ids) and preview.dry_run
        assert preview.buckets_destroyed == ["bucket-2030-03-06"]
        assert retention.sweep(clock.now()).expired == []  # the clock's time: nothing due
        assert all(r.status == "sealed" for r in vault.catalog.find())
        assert store.keystore.has_bucket("bucket-2030-03-06")
        hold = retention.hold([ids[0]], reason="case 12")
        with pytest.raises(InvalidArgument, match="in the future"):
            retention.release(hold.hold_id, now=future)
        assert vault.catalog.get_hold(hold.hold_id).released_at is None  # type: ignore[union-attr]
        assert vault.open(ids[0]).audio


def test_a_simulated_store_sweeps_ahead_of_the_clock(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(POLICY)
    sim = Store.init(tmp_path / "sim", policy=tmp_path / "p.toml", simulated=True)
    clock = FixedClock(AT)
    ids = record_some(sim, 2, clock)
    with sim.open_log(clock=clock) as log, Vault(sim, log, clock=clock) as vault:
        report = Retention(vault, clock=clock).sweep(datetime(2030, 4, 1, tzinfo=UTC))
    assert sorted(report.expired) == sorted(ids)


def test_cli_sweep_at_a_future_time_refuses_on_a_real_store(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """New user: `sampledrec sweep --at <future>` shredded recordings and keys not yet due."""
    ids = record_some(store, 2, FixedClock(AT))  # expiring in 2030, after the real clock
    argv = ["sweep", "--store", str(store.path), "--at", "2030-04-01T00:00:00Z"]
    out = io.StringIO()
    assert main(argv, out=out) == 2
    err = capsys.readouterr().err
    assert "in the future" in err and "'sampledrec demo'" in err and "Traceback" not in err
    catalog = store.open_catalog()
    try:
        assert sorted(r.recording_id for r in catalog.find(status=["sealed"])) == sorted(ids)
    finally:
        catalog.close()
    assert store.keystore.has_bucket("bucket-2030-03-06")
    out = io.StringIO()
    assert main([*argv, "--dry-run", "--json"], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["dry_run"] and sorted(doc["expired_ids"]) == sorted(ids)
    out = io.StringIO()
    assert main(["sweep", "--store", str(store.path), "--json"], out=out) == 0  # real time
    assert json.loads(out.getvalue())["expired"] == 0
