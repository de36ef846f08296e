"""The seam between the sampler and the log: the sampler hands each decision to its
:class:`DecisionSink` as a :class:`DecisionRecord`; the log is one such sink, and its two
encoders of records (C and Python) write the same bytes, with the layout of ``format.DECISION``."""

from __future__ import annotations

import gc
import importlib
import types
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from sampledrec import Decision, ObjectionList
from sampledrec.errors import InvalidArgument
from sampledrec.log import hashing as _hashing
from sampledrec.log.format import (
    DECISION,
    T_CHECKPOINT,
    DecisionFields,
    decision_layout,
    split_personal,
)
from sampledrec.log.segments import U32
from sampledrec.log.writer import DecisionLog, _Prepared, _Queued
from sampledrec.sampling import DecisionRecord, DecisionSink
from sampledrec.sampling.record import REASONS
from sampledrec.testing import MemoryKeyring

from .test_sampler import make

T0 = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)


class ListSink:
    """A sink that keeps the records; its tickets are positions in ``records``, from 1."""

    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []

    def append_decision(self, record: DecisionRecord) -> int:
        self.records.append(record)
        return len(self.records)


def _as_sink(log: DecisionLog) -> DecisionSink:
    return log  # mypy checks that DecisionLog has the protocol's structure


def test_the_decision_log_is_a_decision_sink(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path, MemoryKeyring(seed=b"k"), origin="o", store_id=bytes(16))
    assert isinstance(_as_sink(log), DecisionSink)
    assert isinstance(ListSink(), DecisionSink)


def test_a_log_that_is_not_a_sink_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="DecisionSink"):
        make(log=object())


def _record_of(d: Decision, attributes: str | None) -> DecisionRecord:
    return DecisionRecord(
        epoch_id=d.epoch_id,
        policy_version=d.policy_version,
        rule=d.rule,
        threshold=d.threshold,
        reason=d.reason,
        draw=d.draw,
        call_ref=d.call_ref,
        agent=d.agent,
        caller_pseudonym=d.caller_pseudonym,
        decided_at=d.decided_at,
        attributes=attributes,
    )


def test_the_sampler_hands_every_decision_to_its_sink() -> None:
    sink = ListSink()
    objections = ObjectionList(b"o" * 32)
    objections.add("+33 6 12 34 56 78")
    sampler, _ = make(log=sink, objections=objections)
    calls: list[tuple[str | bytes, str, str | None, str | None]] = [
        ("c1", "sales", "a1", None),
        (b"\x00c2", "support", None, "+33 6 12 34 56 78"),  # objected
        ("c3", "internal", "a2", "+33 6 00 00 00 00"),
    ]
    made = [
        sampler.decide(ref, {"queue": queue, "agent": agent}, caller=caller)
        for ref, queue, agent, caller in calls
    ]
    assert [d.log_ticket for d in made] == [1, 2, 3]
    policy = sampler.policy
    assert policy.rule_attributes == ("direction", "queue")
    assert sink.records == [
        _record_of(d, policy.attributes_json({"queue": queue, "agent": agent}))
        for d, (_, queue, agent, _) in zip(made, calls, strict=True)
    ]
    assert [r.attributes for r in sink.records] == [
        '{"queue":"sales"}',
        '{"queue":"support"}',
        '{"queue":"internal"}',
    ]
    assert made[1].reason == "objection" and sink.records[1].caller_pseudonym is not None


def test_decide_batch_hands_the_records_decide_would() -> None:
    refs: list[str | bytes] = [f"call-{i}" for i in range(60)] + [b"\x01raw"]
    queues = ["sales", "support", "other", None] * 15 + ["sales"]
    # the capped sales rule needs an agent; the others may lack one
    agents = [f"a{i % 3}" if i % 5 or queues[i] == "sales" else None for i in range(61)]
    directions = [("inbound", "outbound", None)[i % 3] for i in range(61)]
    one, batch = ListSink(), ListSink()
    single, _ = make(log=one)
    for ref, queue, agent, direction in zip(refs, queues, agents, directions, strict=True):
        single.decide(ref, {"queue": queue, "agent": agent, "direction": direction})
    many, _ = make(log=batch)
    many.decide_batch(refs, {"queue": queues, "agent": agents, "direction": directions})
    assert batch.records == one.records
    assert {r.attributes for r in one.records} >= {
        "{}",
        '{"queue":"sales"}',
        '{"direction":"inbound","queue":"support"}',
    }
    assert {r.rule for r in one.records} >= {"sales", "support", "default"}
    assert {r.reason for r in one.records} >= {"sampled", "not_sampled", "cap_reached"}


def test_the_record_names_the_fields_of_a_decision_entry() -> None:
    # The log's field for each recorded value has the value's name; the time is the entry's.
    assert DecisionFields._fields == tuple(f.name for f in DECISION)
    assert set(DecisionRecord._fields) == {f.name for f in DECISION} | {"decided_at"}
    assert decision_layout()["tags"] == {f.name: f.tag for f in DECISION} | {"sealed": 0xF0}


# -- the writer's two encoders -------------------------------------------------------------------


def _records(n: int) -> list[DecisionRecord]:
    """Decisions of every shape the C encoder takes: text and bytes references (up to 256
    bytes, so some fields use the long length form), agents or none, every reason, the lowest
    and highest draws and thresholds."""
    out = []
    for i in range(n):
        ref: str | bytes = f"call-{i}@pbx.example" if i % 3 else b"\x00bin" + bytes([i % 256])
        if i % 17 == 0:
            ref = "é" * (i % 129) + "x"
        if i == 5:
            ref = "y" * 256
        out.append(
            DecisionRecord(
                epoch_id="2030-03-04",
                policy_version="ab" * 32,
                rule=("default", "sales", "légal")[i % 3],
                threshold=(0, 2**56, 12345)[i % 3],
                reason=REASONS[i % 4],
                draw=(0, 2**56 - 1, i * 0x9E3779B97F4A7)[i % 3] % 2**56,
                call_ref=ref,
                agent=None if i % 4 == 0 else f"agent-{i % 5}",
                caller_pseudonym=None,
                decided_at=T0 + timedelta(microseconds=i),
                attributes=(None, "{}", '{"queue":"équipe"}', '{"c":"' + "y" * (i % 300) + '"}')[
                    i % 4
                ],
            )
        )
    return out


@pytest.fixture
def c_encoder_used(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each call of the C encoder encoded the batch (False: it left it to Python)."""
    if _hashing.encode_decisions is None:
        pytest.skip("the C accelerator sampledrec.log._merklefast is not built")
    used: list[bool] = []
    real: Callable[..., Any] = _hashing.encode_decisions

    def spy(*args: Any) -> Any:
        got = real(*args)
        used.append(got is not None)
        return got

    monkeypatch.setattr(_hashing, "encode_decisions", spy)
    return used


def _both_ways(batch: list[_Queued]) -> tuple[bytes, bytes]:
    """The batch framed by ``_records`` (C when it can) and by the Python encoder, from the
    same keystream position."""
    log = DecisionLog(
        Path("/nonexistent"), MemoryKeyring(seed=b"k"), origin="o", store_id=bytes(16)
    )
    counter = log._sealer.counter = 77
    fast = log._records(batch)
    after = log._sealer.counter
    log._sealer.counter = counter
    slow = b"".join(U32.pack(len(e)) + e for e in log._encode(batch))
    assert log._sealer.counter == after, "both moved the keystream by as many blocks"
    return fast, slow


def test_the_c_encoder_writes_what_the_python_encoder_writes(c_encoder_used: list[bool]) -> None:
    records = _records(300)
    fast, slow = _both_ways([(i + 1, r) for i, r in enumerate(records)])
    assert c_encoder_used == [True]
    assert fast == slow


@pytest.mark.parametrize(
    "odd",
    [
        "a checkpoint entry",
        "a caller pseudonym",
        "a reference over 256 bytes",
        "a time not in UTC",
        "two months",
    ],
)
def test_batches_the_c_encoder_leaves_to_python(c_encoder_used: list[bool], odd: str) -> None:
    records = _records(40)
    batch: list[_Queued] = [(i + 1, r) for i, r in enumerate(records)]
    r = records[20]
    if odd == "a checkpoint entry":
        public, _ = split_personal(T_CHECKPOINT, {"size": 3, "root": bytes(32)})
        batch.insert(20, (0, _Prepared(T_CHECKPOINT, 1, public, b"", None)))
    elif odd == "a caller pseudonym":
        batch[20] = (21, r._replace(caller_pseudonym="cd" * 32))
    elif odd == "a reference over 256 bytes":
        batch[20] = (21, r._replace(call_ref="z" * 257))
    elif odd == "a time not in UTC":
        batch[20] = (
            21,
            r._replace(decided_at=r.decided_at.astimezone(timezone(timedelta(hours=2)))),
        )
    else:
        batch[20] = (21, r._replace(decided_at=datetime(2030, 4, 1, tzinfo=UTC)))
    fast, slow = _both_ways(batch)
    assert c_encoder_used == [False]
    assert fast == slow


# -- an accelerator built for another layout -----------------------------------------------------


@pytest.mark.parametrize("layout", ["another", "none"])
def test_an_accelerator_with_another_layout_is_not_used(
    monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    other = decision_layout() | {"draw_size": 8}
    fake = types.SimpleNamespace(__file__="_merklefast.so")
    if layout == "another":
        fake.decision_layout = lambda: other  # a build from before a change of the layout
    monkeypatch.setattr(importlib, "import_module", lambda name: fake)
    monkeypatch.delenv("SAMPLEDREC_NO_ACCEL", raising=False)
    with pytest.warns(RuntimeWarning, match="another decision layout"):
        assert _hashing._load_accelerator() is None


# -- queued records and the garbage collector ----------------------------------------------------


@pytest.fixture
def untrack() -> Callable[[Any], Any]:
    if _hashing.native is None:
        pytest.skip("the C accelerator sampledrec.log._merklefast is not built")
    return _hashing.untrack


@pytest.mark.usefixtures("untrack")
def test_queued_decisions_are_not_traversed_by_the_collector() -> None:
    log = DecisionLog(
        Path("/nonexistent"), MemoryKeyring(seed=b"k"), origin="o", store_id=bytes(16)
    )
    record = _records(1)[0]
    assert gc.is_tracked(record)  # a named tuple: the collector never untracks it by itself
    log.append_decision(record)
    (item,) = log._queue
    assert item[1] is record
    assert not gc.is_tracked(record) and not gc.is_tracked(item)


class _WithDict(tuple[Any, ...]):
    """A tuple with storage of its own (a ``__dict__``)."""


def test_untrack_leaves_what_could_be_part_of_a_cycle(untrack: Any) -> None:
    record = _records(1)[0]
    holding: list[Any] = []
    for t in [
        record._replace(call_ref=holding),  # type: ignore[arg-type]  # a mutable value
        (1, record._replace(agent=(2, holding))),  # type: ignore[arg-type]  # deeper down
        _WithDict((1, 2)),
        (1, holding),
    ]:
        assert untrack(t) is t and gc.is_tracked(t), t
    assert gc.is_tracked(record)
    pair = (1, record)
    assert untrack(pair) is pair
    assert not gc.is_tracked(pair) and not gc.is_tracked(record)
    holding.append(pair)  # a tracked list may hold an untracked tuple: no cycle through it
