"""``decide`` is idempotent (DESIGN.md §4, docs/decisions/0015-idempotent-decide.md): a second
request about a call already decided in the epoch gets the first decision, marked as a repeat,
in the same process or another, and the audit sees one decision per call."""

from __future__ import annotations

import io
import json
import sqlite3
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sampledrec import Decision, FixedClock, ObjectionList, Policy, Sampler, Store
from sampledrec.audit.verify import AuditReport, audit_verify
from sampledrec.cli.app import main
from sampledrec.log.writer import iter_entries
from sampledrec.sampling.decided import FirstDecision
from sampledrec.sampling.record import Reason
from sampledrec.sampling.sampler import LOGGED_EARLIER, cap_call_name
from sampledrec.testing import MemoryDecidedCalls, MemoryKeyring

from .recording import PCM, RECORD_REGULATED, new_store, write_call
from .together import run_together

POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.5"
justification = "Pilot of the new sales script: QA listens to a few calls per agent a day"
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = 2

[[rules]]
name = "never"
match = { queue = "internal" }
rate = "0"
purpose = "quality"
retention = "1 month"

[[rules]]
name = "always"
match = { queue = "regulated" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every call of this queue is recorded"
retention = "3 months"

[default]
rate = "0.1"
purpose = "quality"
retention = "6 months"
"""

T0 = "2026-11-23T09:00:00Z"
SAMPLED: Reason = "sampled"
NOT_SAMPLED: Reason = "not_sampled"
OBJECTOR = "+33 6 12 34 56 78"
OTHER = "+33 6 87 65 43 21"  # a caller who did not object


def bare(**kw: Any) -> Sampler:
    return Sampler(
        Policy.from_toml(POLICY, source="test"),
        MemoryKeyring(seed=b"i"),
        clock=FixedClock(T0),
        **kw,
    )


def two_days_ago() -> datetime:
    """9:00 UTC two days ago: a day that has ended, so its key can be revealed."""
    real_now = datetime.now(UTC)
    return (real_now - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)


def store_at(tmp_path: Path, policy: str = POLICY) -> Store:
    return new_store(tmp_path, policy, simulated=True)


def decision_entries(store: Store) -> list[dict[str, Any]]:
    return [e.fields for e in iter_entries(store.log_storage, store.keyring) if e.type == 0x05]


def audit(store: Store, day: datetime) -> AuditReport:
    keys = store.reveal_keys(now=day + timedelta(days=1), real_now=datetime.now(UTC))
    out = store.path.parent / "revealed.json"
    store.write_revealed(keys, out, replace=True)
    return audit_verify(store.path, out)


# -- in one process --------------------------------------------------------------------------


def test_deciding_again_in_one_sampler_returns_the_first_decision() -> None:
    sampler = bare()
    first = sampler.decide("c1", {"queue": "sales", "agent": "alice"})
    again = sampler.decide("c1", {"queue": "sales", "agent": "alice"})
    assert not first.repeat and again.repeat
    assert again == first  # the same decision: only ``repeat`` says how it was obtained
    assert again.to_json()["repeat"] is True and first.to_json()["repeat"] is False


def test_a_retry_with_other_attributes_gets_the_same_decision_marked_repeat() -> None:
    sampler = bare()
    refs = [f"c{i}" for i in range(60)]
    first = [sampler.decide(ref, {"queue": "internal"}) for ref in refs]  # rate 0
    assert not any(d.record for d in first)
    for ref, d in zip(refs, first, strict=True):
        again = sampler.decide(ref, {"queue": "regulated", "agent": "bob"})  # would be rate 1
        assert again.repeat and not again.record
        assert (again.reason, again.rule, again.threshold, again.policy_version) == (
            d.reason,
            d.rule,
            d.threshold,
            d.policy_version,
        )
        assert again.decided_at == d.decided_at and again.agent == "bob"
    # Text and bytes references are different calls, as for the audit.
    assert not sampler.decide(b"c0", {"queue": "regulated"}).repeat


def test_a_policy_change_does_not_change_a_decided_call() -> None:
    sampler = bare()
    first = sampler.decide("p1", {"queue": "internal"})
    raised = POLICY.replace('rate = "0"\n', 'rate = "0.2"\n')  # the "never" rule now samples
    sampler.set_policy(Policy.from_toml(raised, source="t"))
    again = sampler.decide("p1", {"queue": "internal"})
    assert again.repeat and again.policy_version == first.policy_version and not again.record
    new = [sampler.decide(f"p{i}", {"queue": "internal"}) for i in range(2, 40)]
    assert any(d.record for d in new)  # new calls: the new policy


def test_an_objection_on_a_retry_keeps_the_first_decision_but_not_the_recording() -> None:
    keyring = MemoryKeyring(seed=b"o")
    objections = ObjectionList(keyring.pseudonym_key())
    objections.add(OBJECTOR)
    policy = Policy.from_toml(POLICY, source="test")
    sampler = Sampler(policy, keyring, clock=FixedClock(T0), objections=objections)
    first = sampler.decide("r1", {"queue": "regulated"}, caller=OTHER)
    assert first.record
    again = sampler.decide("r1", {"queue": "regulated"}, caller=OBJECTOR)
    assert again.repeat and again.reason == "sampled" and not again.record
    assert again.caller_pseudonym is not None  # this request's caller, for subject requests
    # Without the number, a repeat asks about the first decision's caller (who did not object).
    unnamed = sampler.decide("r1", {"queue": "regulated"})
    assert unnamed.repeat and unnamed.record and unnamed.caller_pseudonym == first.caller_pseudonym
    # The other way round (the issue): an objection first, then a request without the number.
    objected = sampler.decide("r2", {"queue": "regulated"}, caller=OBJECTOR)
    assert objected.reason == "objection"
    later = sampler.decide("r2", {"queue": "regulated"})
    assert later.repeat and later.reason == "objection" and not later.record
    assert later.caller_pseudonym == objected.caller_pseudonym


def test_a_repeat_never_counts_against_a_cap() -> None:
    sampler = bare()
    attrs = {"queue": "sales", "agent": "carol"}
    first = [sampler.decide(f"k{i}", attrs) for i in range(30)]
    assert sum(d.record for d in first) == 2
    again = [sampler.decide(f"k{i}", {"queue": "sales", "agent": "dave"}) for i in range(30)]
    assert [d.reason for d in again] == [d.reason for d in first]
    dave = [sampler.decide(f"n{i}", {"queue": "sales", "agent": "dave"}) for i in range(30)]
    assert sum(d.record for d in dave) == 2  # dave's count was not touched by the repeats


def test_decide_batch_repeats_like_decide() -> None:
    sampler = bare()
    single = sampler.decide("b1", {"queue": "internal"})
    batch = sampler.decide_batch(
        ["b1", "b2", "b2", "b3"],
        {"queue": ["regulated", "internal", "regulated", "regulated"]},
    )
    assert batch.repeat is not None and batch.repeat.tolist() == [True, False, True, False]
    assert batch[0] == single and batch[0].repeat
    assert batch.record.tolist() == [False, False, False, True]
    assert batch.rule_names.tolist() == ["never", "never", "never", "always"]
    later = sampler.decide("b3", {"queue": "internal"})
    assert later.repeat and later.record and later.rule == "always"


def test_two_samplers_sharing_an_index_answer_alike() -> None:
    index = MemoryDecidedCalls()
    one, two = bare(decided=index), bare(decided=index)
    first = one.decide("s1", {"queue": "internal"})
    again = two.decide("s1", {"queue": "regulated"})
    assert again.repeat and again == first._replace(agent=None)


def test_a_simulation_can_forget_on_purpose() -> None:
    sampler = bare(idempotent=False)
    assert not sampler.decide("f1", {"queue": "internal"}).record
    assert sampler.decide("f1", {"queue": "regulated"}).record  # decided afresh
    with pytest.raises(ValueError, match="idempotent=False"):
        bare(idempotent=False, decided=MemoryDecidedCalls())


# -- a store: one decision entry per call ------------------------------------------------------


def test_a_stores_sampler_logs_one_entry_per_call(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    day = two_days_ago()
    clock = FixedClock(day)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        first = sampler.decide("c1", {"queue": "regulated"})
        again = sampler.decide("c1", {"queue": "internal"})
        assert again.repeat and again.record and again.log_ticket == first.log_ticket
        log.wait_durable(first.log_ticket or 0)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        later = sampler.decide("c1", {"queue": "internal"})  # another process, say
        assert later.repeat and later.record and later.log_ticket == LOGGED_EARLIER
    assert [e["call_ref"] for e in decision_entries(store)] == ["c1"]
    report = audit(store, day)
    assert report.ok, report.to_text()


def test_closing_a_sampler_writes_the_log_and_marks_its_decisions_at_once(tmp_path: Path) -> None:
    # The log waits a minute between group commits: only a flush writes it sooner. Closing the
    # sampler must make its decisions durable and tell the index so, so that a repeat in
    # another sampler (another node) logs no copy; it used to give up after a second.
    store = store_at(tmp_path)
    day = two_days_ago()
    clock = FixedClock(day)
    with store.open_log(clock=clock, group_commit=60.0) as log:
        with store.sampler(clock=clock, log=log) as sampler:
            first = sampler.decide("c1", {"queue": "regulated"})
            ignored = sampler.decide("c2", {"queue": "internal"})
            assert first.log_ticket and ignored.log_ticket
            assert not log.is_durable(ignored.log_ticket)
        assert log.is_durable(ignored.log_ticket)
        # The flush left the entry's index to whoever records the call.
        assert log.wait_durable(first.log_ticket) >= 0
        with store.sampler(clock=clock, log=log) as other:
            for ref, queue in (("c1", "internal"), ("c2", "regulated")):
                again = other.decide(ref, {"queue": queue})
                assert again.repeat and again.log_ticket == LOGGED_EARLIER
    assert [e["call_ref"] for e in decision_entries(store)] == ["c1", "c2"]


def test_a_recording_of_a_repeat_decided_elsewhere_passes_the_audit(tmp_path: Path) -> None:
    from sampledrec.vault.audio import synthetic_speech
    from sampledrec.vault.recorder import Vault

    store = store_at(tmp_path)
    day = two_days_ago()
    clock = FixedClock(day)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        assert sampler.decide("c1", {"queue": "regulated"}).record
    with (
        store.open_log(clock=clock) as log,
        store.sampler(clock=clock, log=log) as sampler,
        Vault(store, log, clock=clock) as vault,
    ):
        again = sampler.decide("c1", {"queue": "regulated"})
        assert again.repeat and again.log_ticket == LOGGED_EARLIER
        write_call(vault, again, synthetic_speech(0.2), PCM)
    assert len(decision_entries(store)) == 1
    report = audit(store, day)
    assert report.ok, report.to_text()
    assert report.counts["recordings"] == 1


def test_an_index_entry_whose_log_entry_was_lost_is_logged_once_by_a_retry(
    tmp_path: Path,
) -> None:
    """A crash between the index and the log: the first decision stands, and the retry that
    may record the call logs it (once), so that nothing is recorded without a logged decision."""
    store = store_at(tmp_path)
    day = two_days_ago()
    clock = FixedClock(day)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)  # for the epoch key and the policy
        key = sampler.epoch_key(day)
        rules = {name: sampler.policy.rule_named(name) for name in ("always", "never")}
        version = sampler.policy.version
        sampler.close()
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        lost = [
            FirstDecision(
                key.epoch_id,
                cap_call_name(key, ref),
                reason,
                rules[rule].name,
                rules[rule].purpose,
                rules[rule].rate,
                version,
                rules[rule].threshold,
                None,
                day,
                attributes=f'{{"queue":"{queue}"}}',  # what the first decision logged
            )
            for ref, reason, rule, queue in (
                ("gone", SAMPLED, "always", "regulated"),
                ("gone-too", NOT_SAMPLED, "never", "internal"),
            )
        ]
        assert sampler._decided is not None
        assert sampler._decided.remember(lost) == [None, None]  # ... then the process died
    with (
        store.open_log(clock=clock) as log,
        store.sampler(clock=clock, log=log, first_log_wait=0.05) as sampler,
    ):
        again = sampler.decide("gone", {"queue": "internal"})
        assert again.repeat and again.record and again.log_ticket not in (None, LOGGED_EARLIER)
        assert sampler.decide("gone", {"queue": "internal"}).log_ticket == again.log_ticket
        not_recorded = sampler.decide("gone-too", {"queue": "regulated"})
        assert not_recorded.repeat and not not_recorded.record
        # Not recorded, but answered: logged once too, so that no answer is in no log.
        assert not_recorded.log_ticket not in (None, LOGGED_EARLIER)
        log.wait_durable(max(again.log_ticket or 0, not_recorded.log_ticket or 0))
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        assert sampler.decide("gone", {"queue": "regulated"}).log_ticket == LOGGED_EARLIER
        assert sampler.decide("gone-too", {"queue": "regulated"}).log_ticket == LOGGED_EARLIER
    entries = decision_entries(store)
    assert [(e["call_ref"], e["rule"]) for e in entries] == [
        ("gone", "always"),
        ("gone-too", "never"),
    ]
    # The copy logs the attributes that chose the first decision's rule, not the retry's.
    assert entries[0]["attributes"] == '{"queue":"regulated"}'
    report = audit(store, day)
    assert report.ok, report.to_text()


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from sampledrec import FixedClock, Store
    path, tag, at, N = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = Store.open(path)
    clock = FixedClock(at)
    queue = "regulated" if tag == "a" else "internal"  # they disagree on every call
    with store.open_log(clock=clock) as log:
        with store.sampler(clock=clock, log=log, first_log_wait=60) as sampler:
            (path.parent / f"ready-{tag}").touch()  # both start together, not as they load
            while not all((path.parent / f"ready-{t}").exists() for t in "ab"):
                time.sleep(0.001)
            got = {}
            order = range(N) if tag == "a" else range(N - 1, -1, -1)  # they meet midway
            for i in order:
                d = sampler.decide(f"race-{i}", {"queue": queue})
                got[i] = [d.reason, d.rule, d.repeat]
            log.flush()
    print(json.dumps([got[i] for i in range(N)]), flush=True)
    """
)


@pytest.mark.slow
def test_processes_racing_on_the_same_calls_get_one_decision_each(tmp_path: Path) -> None:
    # On a loaded machine one process may decide every call before the other starts: then they
    # did not race, so try again (at most three times) until both have won some calls.
    met = False
    for attempt in range(3):
        met = _race(tmp_path / f"attempt-{attempt}")
        if met:
            break
    assert met, "the two processes never met midway in three attempts"


def _race(tmp_path: Path) -> bool:
    """Two processes decide the same calls in opposite orders; returns whether they met."""
    tmp_path.mkdir()
    store = store_at(tmp_path)
    day = two_days_ago()
    with store.open_log(clock=FixedClock(day)) as log:
        store.sampler(clock=FixedClock(day), log=log).close()  # the epoch's key, committed
    n = 2000  # enough for the two processes to meet, however late one of them starts
    argvs = [[str(store.path), tag, day.isoformat(), str(n)] for tag in ("a", "b")]
    a, b = (json.loads(out) for out in run_together(WORKER, argvs, tmp_path / "go"))
    assert [x[:2] for x in a] == [y[:2] for y in b]  # the same decisions
    assert all(x[2] != y[2] for x, y in zip(a, b, strict=True))  # each call: one first, one repeat
    counts = Counter(e["call_ref"] for e in decision_entries(store))
    assert counts == Counter({f"race-{i}": 1 for i in range(n)})  # one entry per call
    report = audit(store, day)
    assert report.ok, report.to_text()
    return {x[1] for x in a} == {"always", "never"}  # both won races (they met midway)


def test_a_lost_index_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    day = two_days_ago()
    clock = FixedClock(day)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        first = [sampler.decide(f"c{i}", {"queue": "internal"}) for i in range(20)]
    for f in tmp_path.glob("s/decided.sqlite*"):
        f.unlink()  # deleted by mistake, or a store from before the index
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        again = [sampler.decide(f"c{i}", {"queue": "regulated"}) for i in range(20)]
    assert all(d.repeat and not d.record for d in again)
    assert [d.reason for d in again] == [d.reason for d in first]
    assert not list(tmp_path.glob("s/.decided*"))  # no leftover of the rebuild
    assert len(decision_entries(store)) == 20
    report = audit(store, day)
    assert report.ok, report.to_text()


def test_an_index_written_before_a_restart_of_the_machine_is_read_back_from_the_log(
    tmp_path: Path,
) -> None:
    """Commits are not fsynced one by one: after a crash of the machine the index may miss
    decisions whose log entries (fsynced) survived. The boot it was written in tells."""
    store = store_at(tmp_path)
    day = two_days_ago()
    clock = FixedClock(day)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        first = sampler.decide("c1", {"queue": "internal"})
    db = sqlite3.connect(store.path / "decided.sqlite")
    with db:
        db.execute("DELETE FROM decided_calls")  # what a crash of the machine may leave
        db.execute("UPDATE meta SET value = 'an-earlier-boot' WHERE name = 'boot_id'")
    db.close()
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        again = sampler.decide("c1", {"queue": "regulated"})
    assert again.repeat and again.reason == first.reason == "not_sampled"
    assert len(decision_entries(store)) == 1


def test_a_sampler_without_a_log_previews_without_touching_the_index(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    clock = FixedClock(two_days_ago())
    with store.sampler(clock=clock) as preview:
        assert not preview.decide("v1", {"queue": "internal"}).record
        assert preview.decide("v1", {"queue": "regulated"}).repeat  # its own memory
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        real = sampler.decide("v1", {"queue": "regulated"})
    assert real.record and not real.repeat  # the preview decided nothing for the store


def test_a_batch_and_single_decisions_of_a_store_share_one_decision_per_call(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path)
    day = two_days_ago()
    clock = FixedClock(day)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        sampler.decide("m0", {"queue": "internal"})
        refs = np.asarray([f"m{i}" for i in range(10)] * 2, dtype="U")
        batch = sampler.decide_batch(refs, {"queue": ["regulated"] * 20})
        assert batch.repeat is not None
        assert batch.repeat.tolist() == [True] + [False] * 9 + [True] * 10
        assert batch.record.tolist() == ([False] + [True] * 9) * 2
        assert batch.log_tickets is not None and int(batch.log_tickets[1]) > 0
        single = sampler.decide("m1", {"queue": "internal"})
        assert single.repeat and single.record and single.log_ticket == int(batch.log_tickets[1])
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        again = sampler.decide_batch(["m1", "m0"], {"queue": ["internal", "regulated"]})
        assert again.record.tolist() == [True, False]
        assert again.log_tickets is not None and again.log_tickets.tolist()[0] == LOGGED_EARLIER
    assert len(decision_entries(store)) == 10
    report = audit(store, day)
    assert report.ok, report.to_text()


def test_decisions_compare_without_repeat() -> None:
    d = bare().decide("e1", {"queue": "internal"})
    again = d._replace(repeat=True)
    assert d == again and (d != again) is False and hash(d) == hash(again)
    assert d != d._replace(reason="sampled") and d != tuple(d)[:-1]
    assert isinstance(again, Decision)


# -- the CLI: decide, then record (issue #12) ----------------------------------------------------


def cli(*argv: str | Path) -> tuple[int, Any]:
    out = io.StringIO()
    code = main([*(str(a) for a in argv), "--json"], out=out)
    return code, json.loads(out.getvalue())


def cli_text(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


@pytest.fixture
def regulated(tmp_path: Path) -> Store:
    """A store recording every call of the queue "regulated", with one objector."""
    store = new_store(tmp_path, RECORD_REGULATED, simulated=True)
    (tmp_path / "objector.txt").write_text(OBJECTOR + "\n")
    (tmp_path / "other.txt").write_text(OTHER + "\n")  # while one objects, callers are named
    assert (
        cli("objections", "add", "--store", store.path, "--file", tmp_path / "objector.txt")[0] == 0
    )
    return store


def record_cli(store: Store, ref: str, *extra: str | Path) -> tuple[int, Any]:
    from sampledrec.vault.audio import encode_wav, synthetic_speech

    wav = store.path.parent / f"{ref}.wav"
    wav.write_bytes(encode_wav(PCM, synthetic_speech(0.3, seed=1)))
    return cli("record", "--store", store.path, "--call-ref", ref, "--attr", "queue=regulated",
               "--audio", wav, *extra)  # fmt: skip


def audit_cli(store: Store) -> tuple[int, Any]:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    keys = store.path.parent / "keys.json"
    code, _ = cli(
        "keys", "reveal", "--store", store.path, "--out", keys, "--at", tomorrow.isoformat()
    )
    assert code == 0
    return cli("audit", "verify", "--store", store.path, "--revealed-keys", keys)


def test_decide_with_caller_file_then_record_passes_the_audit(regulated: Store) -> None:
    objector = regulated.path.parent / "objector.txt"
    code, first = cli("decide", "--store", regulated.path, "--call-ref", "call-1", "--attr",
                      "queue=regulated", "--caller-file", objector)  # fmt: skip
    assert code == 0 and first["reason"] == "objection" and first["repeat"] is False
    code, doc = record_cli(regulated, "call-1")  # the recorder does not hear the number
    assert code == 1 and doc["recorded"] is False
    assert doc["reason"] == "objection" and doc["repeat"] is True
    assert not list((regulated.path / "recordings").rglob("*.sdr"))
    code, report = audit_cli(regulated)
    assert code == 0 and report["ok"], report
    assert not any("decided twice" in f["message"] for f in report["findings"])


def test_decide_then_record_with_an_objecting_caller_records_nothing(regulated: Store) -> None:
    objector = regulated.path.parent / "objector.txt"
    other = regulated.path.parent / "other.txt"
    code, first = cli("decide", "--store", regulated.path, "--call-ref", "call-2", "--attr",
                      "queue=regulated", "--caller-file", other)  # fmt: skip
    assert code == 0 and first["record"] is True
    code, doc = record_cli(regulated, "call-2", "--caller-file", objector)
    assert code == 1 and doc["recorded"] is False and doc["reason"] == "sampled"
    code, report = audit_cli(regulated)
    assert code == 0 and report["ok"], report


def test_decide_then_record_records_under_the_first_decision(regulated: Store) -> None:
    other = regulated.path.parent / "other.txt"
    code, first = cli("decide", "--store", regulated.path, "--call-ref", "call-3", "--attr",
                      "queue=regulated", "--caller-file", other)  # fmt: skip
    assert code == 0 and first["record"] is True
    code, text = cli_text("decide", "--store", regulated.path, "--call-ref", "call-3", "--attr",
                          "queue=other")  # fmt: skip
    assert code == 0
    assert f"already decided at {first['decided_at']}: same decision" in text
    assert text.startswith("RECORD (sampled)") and "logged:   not again" in text
    code, doc = record_cli(regulated, "call-3")
    assert code == 0 and doc["recorded"] is True and doc["repeat"] is True
    assert doc["decided_at"] == first["decided_at"]
    code, report = audit_cli(regulated)
    assert code == 0 and report["ok"], report
    assert report["counts"]["decisions"] == 1 and report["counts"]["recordings"] == 1


def test_the_index_is_private_and_never_holds_a_reference(tmp_path: Path) -> None:
    import os
    import stat

    store = store_at(tmp_path)
    clock = FixedClock(two_days_ago())
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        sampler.decide("secret-call-id-4711@pbx", {"queue": "regulated", "agent": "alice.m"})
        sampler.decide(b"raw-ref-0815", {"queue": "regulated"})
    path = store.path / "decided.sqlite"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for f in tmp_path.glob("s/decided.sqlite*"):
        content = f.read_bytes()
        assert b"secret-call-id" not in content and b"raw-ref" not in content
        assert b"alice" not in content
    os.chmod(path, 0o644)
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_batch_waits_once_for_first_decisions_that_are_not_known_logged(tmp_path: Path) -> None:
    import time

    store = store_at(tmp_path)
    day = two_days_ago()
    clock = FixedClock(day)
    refs = [f"lost-{i}" for i in range(50)]
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        key = sampler.epoch_key(day)
        rule = sampler.policy.rule_named("always")
        assert sampler._decided is not None
        sampler._decided.remember(
            [
                FirstDecision(
                    key.epoch_id,
                    cap_call_name(key, ref),
                    SAMPLED,
                    rule.name,
                    rule.purpose,
                    rule.rate,
                    sampler.policy.version,
                    rule.threshold,
                    None,
                    day,
                )
                for ref in refs
            ]
        )  # ... and the process that decided them died before logging them
    with (
        store.open_log(clock=clock) as log,
        store.sampler(clock=clock, log=log, first_log_wait=0.3) as sampler,
    ):
        started = time.monotonic()
        batch = sampler.decide_batch(refs, {"queue": ["internal"] * len(refs)})
        assert time.monotonic() - started < 0.3 * 5  # not 0.3 s for each of the 50
        assert batch.record.all() and batch.repeat is not None and batch.repeat.all()
    assert sorted(e["call_ref"] for e in decision_entries(store)) == sorted(refs)
    report = audit(store, day)
    assert report.ok, report.to_text()
