"""Per-agent caps are the store's: shared by every sampler, in any process, across restarts,
and what the audit replays from the log agrees with them. (What every caps ledger must do is in
the contract suite, tests/test_backends.py.)"""

from __future__ import annotations

import os
import stat
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from sampledrec import FixedClock, Sampler, Store
from sampledrec.audit.verify import AuditReport, audit_verify
from sampledrec.errors import StoreError
from sampledrec.log.writer import iter_entries
from sampledrec.sampling.caps import (
    CapRequest,
    MemoryCapLedger,
    SqliteCapLedger,
    cap_periods,
)

from .together import run_together

POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.5"
justification = "Pilot of the new sales script: QA listens to a few calls per agent a day"
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = 3
max_per_agent_per_week = 5

[default]
rate = "0.1"
purpose = "quality"
retention = "6 months"
"""

MONDAY = datetime(2026, 11, 16, 9, tzinfo=UTC)


def _req(tag: bytes, agent: str = "alice", at: datetime = MONDAY) -> CapRequest:
    return CapRequest(at.date().isoformat(), tag, "sales", agent, cap_periods(at, 2, 3))


def test_cap_periods_name_the_utc_day_and_iso_week() -> None:
    assert cap_periods(MONDAY, 2, 3) == (("D2026-11-16", 2), ("W2026-47", 3))
    assert cap_periods(datetime(2027, 1, 1, tzinfo=UTC), None, 4) == (("W2026-53", 4),)
    assert cap_periods(MONDAY, None, None) == ()


def test_sqlite_ledger_is_shared_private_and_pruned(tmp_path: Path) -> None:
    path = tmp_path / "caps.sqlite"
    a, b = SqliteCapLedger(path), SqliteCapLedger(path)
    assert a.decide([_req(b"1")]) == ["sampled"]
    assert b.decide([_req(b"2"), _req(b"1"), _req(b"3")]) == ["sampled", "sampled", "cap_reached"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    a.close()
    b.close()
    later = SqliteCapLedger(path, now=MONDAY + timedelta(days=30))  # old counts are dropped
    assert later.decide([_req(b"4"), _req(b"1")]) == ["sampled", "sampled"]
    assert later.decide([_req(b"5")]) == ["cap_reached"]


def _two_days_ago() -> datetime:
    """9:00 UTC two days ago: a day that has ended, so its key can be revealed."""
    real_now = datetime.now(UTC)
    return (real_now - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)


def _audit(store: Store, day: datetime) -> AuditReport:
    """Reveal ``day``'s key and audit the store."""
    keys = store.reveal_keys(now=day + timedelta(days=1), real_now=datetime.now(UTC))
    store.write_revealed(keys, store.path.parent / "revealed.json")
    return audit_verify(store.path, store.path.parent / "revealed.json")


def _store(tmp_path: Path) -> Store:
    (tmp_path / "p.toml").write_text(POLICY)
    return Store.init(tmp_path / "store", policy=tmp_path / "p.toml", simulated=True)


def test_samplers_of_one_store_share_the_caps(tmp_path: Path) -> None:
    store = _store(tmp_path)
    clock = FixedClock(MONDAY)
    attrs = {"queue": "sales", "agent": "alice"}
    first = store.sampler(clock=clock)
    second = Store.open(store.path).sampler(clock=clock)  # another sampler (or a restart)
    ds = [(first if i % 2 else second).decide(f"c{i}", attrs) for i in range(60)]
    assert sum(d.reason == "sampled" for d in ds) == 3
    assert sum(d.reason == "cap_reached" for d in ds) > 0
    # A retry in the other sampler gets the same decision.
    for i, d in enumerate(ds):
        assert (second if i % 2 else first).decide(f"c{i}", attrs).reason == d.reason
    batch = second.decide_batch(
        [f"c{i}" for i in range(60)], {"queue": ["sales"] * 60} | {"agent": ["alice"] * 60}
    )
    assert list(batch.reasons) == [d.reason for d in ds]


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sampledrec import FixedClock, Store
    path, tag, n, at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = Store.open(path)
    clock = FixedClock(at)
    while not (path.parent / "go").exists():
        time.sleep(0.01)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(n):
            sampler.decide(f"{tag}-{i}", {"queue": "sales", "agent": f"a{i % 2}"})
        sampler.decide_batch(
            [f"{tag}-b{i}" for i in range(n)],
            {"queue": ["sales"] * n, "agent": [f"a{i % 2}" for i in range(n)]},
        )
    print("done", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_processes_deciding_at_once_respect_the_caps_and_pass_the_audit(
    tmp_path: Path, catalog: str, request: pytest.FixtureRequest
) -> None:
    if catalog == "postgres":  # the ledger and the index in the database, not in the store
        pg = request.getfixturevalue("postgres")
        (tmp_path / "p.toml").write_text(POLICY)
        store = Store.init(
            tmp_path / "store",
            policy=tmp_path / "p.toml",
            simulated=True,
            backends={"catalog": {"kind": "postgresql", "dsn": pg.url(pg.new_schema())}},
        )
    else:
        store = _store(tmp_path)
    day = _two_days_ago()
    with (
        store.open_log(clock=FixedClock(day)) as log,
        store.sampler(clock=FixedClock(day), log=log) as sampler,
    ):
        sampler.decide("warm-up", {"queue": "x"})
    argvs = [[str(store.path), f"p{k}", "40", day.isoformat()] for k in range(3)]
    assert run_together(WORKER, argvs, tmp_path / "go") == ["done\n"] * 3
    reasons: dict[str, list[int]] = {"a0": [], "a1": []}
    for e in iter_entries(store.path / "log", store.keyring):
        if e.type == 0x05 and e.fields.get("agent") in reasons:
            reasons[e.fields["agent"]].append(int(e.fields["reason"]))
    for agent, got in reasons.items():
        assert got.count(0) == 3, agent  # 3 selected a day, whichever process asked
        assert got.count(3) > 0, agent  # and the others refused: the cap was reached
    report = _audit(store, day)
    assert report.ok, report.to_text()
    assert report.counts["decisions_cap_reached"] > 0


def test_cap_periods_are_utc_whatever_the_clock_zone() -> None:
    paris = timezone(timedelta(hours=2))
    late = datetime(2026, 11, 16, 23, 30, tzinfo=paris)  # 21:30 UTC
    assert cap_periods(late, 1, None) == (("D2026-11-16", 1),)
    early = datetime(2026, 11, 17, 0, 30, tzinfo=paris)  # still the 16th in UTC
    assert cap_periods(early, 1, None) == (("D2026-11-16", 1),)


def test_sqlite_ledger_keeps_agents_as_pseudonyms_and_fixes_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "caps.sqlite"
    ledger = SqliteCapLedger(path, agent_key=b"k" * 32)
    assert ledger.decide([_req(b"1", agent="alice.martin")]) == ["sampled"]
    ledger.close()
    for f in tmp_path.iterdir():
        assert b"alice" not in f.read_bytes()
    os.chmod(path, 0o644)
    again = SqliteCapLedger(path, agent_key=b"k" * 32)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert again.decide([_req(b"2", agent="alice.martin"), _req(b"3", agent="alice.martin")]) == [
        "sampled",
        "cap_reached",
    ]


def test_text_and_bytes_references_are_different_calls_as_for_the_audit(tmp_path: Path) -> None:
    store = _store(tmp_path)
    clock = FixedClock(MONDAY)
    attrs = {"queue": "sales", "agent": "alice"}
    sampler = store.sampler(clock=clock)
    text = [sampler.decide(f"c{i}", attrs) for i in range(60)]
    as_bytes = [sampler.decide(f"c{i}".encode(), attrs) for i in range(60)]
    assert sum(d.reason == "sampled" for d in text) == 3
    assert sum(d.reason == "sampled" for d in as_bytes) == 0  # new calls: the cap is full


def test_a_store_sampler_closes_its_ledger(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.sampler(clock=FixedClock(MONDAY)) as sampler:
        sampler.decide("c1", {"queue": "sales", "agent": "alice"})
    with pytest.raises(StoreError):  # the connection is gone
        sampler.decide_batch(
            [f"c{i}" for i in range(40)], {"queue": ["sales"] * 40, "agent": ["alice"] * 40}
        )


def test_a_simulated_future_does_not_prune_todays_counts(tmp_path: Path) -> None:
    store = _store(tmp_path)
    now = datetime.now(UTC).replace(hour=10)
    attrs = {"queue": "sales", "agent": "alice"}
    first = store.sampler(clock=FixedClock(now))
    ds = [first.decide(f"c{i}", attrs) for i in range(60)]
    store.sampler(clock=FixedClock(now + timedelta(days=40)))  # e.g. decide --at, far ahead
    again = store.sampler(clock=FixedClock(now))
    assert [again.decide(f"c{i}", attrs).reason for i in range(60)] == [d.reason for d in ds]


def test_batch_then_single_decision_of_a_capped_call_is_logged(tmp_path: Path) -> None:
    store = _store(tmp_path)
    clock = FixedClock(MONDAY)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        refs = [f"c{i}" for i in range(40)]
        batch = sampler.decide_batch(refs, {"queue": ["sales"] * 40, "agent": [b"alice"] * 40})
        chosen = [r for r, reason in zip(refs, batch.reasons, strict=True) if reason == "sampled"]
        assert len(chosen) == 3
        # the agent given as bytes, True or text is the same agent in both paths
        d = sampler.decide(chosen[0], {"queue": "sales", "agent": b"alice"})
        assert d.reason == "sampled" and d.log_ticket is not None
        assert sampler.decide("new-call", {"queue": "sales", "agent": "alice"}).reason in (
            "cap_reached",
            "not_sampled",
        )
        flag = sampler.decide_batch(["f1"], {"queue": ["sales"], "agent": [True]})
        assert flag.agents[0] == sampler.decide("f2", {"queue": "sales", "agent": True}).agent


def test_a_lost_ledger_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    store = _store(tmp_path)
    day = _two_days_ago()
    clock = FixedClock(day)
    attrs = {"queue": "sales", "agent": "alice"}
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        first = [sampler.decide(f"c{i}", attrs) for i in range(40)]
    assert sum(d.reason == "sampled" for d in first) == 3
    for f in tmp_path.glob("store/caps.sqlite*"):
        f.unlink()  # deleted by mistake (or a store from before the ledger)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        assert (tmp_path / "store" / "caps.sqlite").exists()
        more = [sampler.decide(f"n{i}", attrs) for i in range(40)]  # new calls: the cap is full
        assert not any(d.reason == "sampled" for d in more)
        assert any(d.reason == "cap_reached" for d in more)
        again = [sampler.decide(f"c{i}", attrs) for i in range(40)]  # retries: same answers
        assert [d.reason for d in again] == [d.reason for d in first]
    assert not list(tmp_path.glob("store/.caps*"))  # no leftover of the rebuild
    report = _audit(store, day)
    assert report.ok, report.to_text()


def test_the_audit_reports_a_sampler_that_ignored_the_stores_caps(tmp_path: Path) -> None:
    store = _store(tmp_path)
    day = _two_days_ago()
    clock = FixedClock(day)
    attrs = {"queue": "sales", "agent": "alice"}
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as honest:
        rogue = Sampler(  # its own counts, not the store's
            store.policy(day), store.keyring, clock=clock, log=log, caps=MemoryCapLedger()
        )
        ds = [(honest if i % 2 else rogue).decide(f"c{i}", attrs) for i in range(80)]
    assert sum(d.reason == "sampled" for d in ds) > 3
    report = _audit(store, day)
    over = [f for f in report.findings if "over the cap" in f.message]
    assert over and report.status("decisions") == "FAIL"
    assert f"in D{day.date().isoformat()}, over the cap of 3" in over[0].message
    assert over[0].call_ref is not None and over[0].index is not None
