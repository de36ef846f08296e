"""A store, or a deployment of several nodes, with a log of many decisions on one past day,
for the audit benchmarks.

The decisions are made with ``Sampler.decide_batch`` in batches of 50,000 (the vectorised
path), on a day two days back, so that its epoch has ended and its key can be revealed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from _scale_nodes import new_deployment

from sampledrec import FixedClock, Store

POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.05"
purpose = "quality"
retention = "6 months"

[default]
rate = "0.02"
purpose = "quality"
retention = "6 months"
"""
BATCH = 50_000


@dataclass
class DecidedStore:
    store: Store
    day: datetime  # when every decision was made
    real_now: datetime
    refs: npt.NDArray[np.bytes_]  # the call references, in log order


def call_refs(n: int) -> npt.NDArray[np.bytes_]:
    """The call references of :func:`decided_store`'s ``n`` decisions, in log order."""
    return np.asarray([f"{i:016x}@pbx.example.com" for i in range(n)], dtype="S")


def decided_store(folder: Path, n: int) -> DecidedStore:
    """A new simulated store in ``folder/store`` whose log holds ``n`` decisions."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.toml").write_text(POLICY, encoding="utf-8")
    store = Store.init(folder / "store", policy=folder / "policy.toml", simulated=True)
    real_now = datetime.now(UTC)
    day = (real_now - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)
    clock = FixedClock(day)
    refs = call_refs(n)
    queues = np.asarray(["sales", "support"])[np.arange(n) % 2]
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for s in range(0, n, BATCH):
            sampler.decide_batch(refs[s : s + BATCH], {"queue": queues[s : s + BATCH]})
        log.flush()
    return DecidedStore(store, day, real_now, refs)


@dataclass
class DecidedDeployment:
    nodes: list[Store]
    day: datetime
    real_now: datetime
    refs: npt.NDArray[np.bytes_]  # every node's call references, node after node


def decided_deployment(
    folder: Path, n: int, pg: Any, weed: Any, nodes: int = 3
) -> DecidedDeployment:
    """A new deployment in ``folder`` on the PostgreSQL ``pg`` and the SeaweedFS ``weed`` (the
    test suite's helpers), with ``nodes`` simulated nodes whose logs hold ``n`` decisions in
    all: node k decides the k-th share of ``call_refs(n)``, on one past day."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.toml").write_text(POLICY, encoding="utf-8")
    dep = new_deployment(folder / "deployment.json", pg, weed, folder / "policy.toml", "audit")
    real_now = datetime.now(UTC)
    day = (real_now - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)
    clock = FixedClock(day)
    refs = call_refs(n)
    stores = [
        Store.init_node(folder / f"node-{k}", dep, name=f"node-{k}", simulated=True, clock=clock)
        for k in range(nodes)
    ]
    bounds = [n * k // nodes for k in range(nodes + 1)]
    for k, store in enumerate(stores):
        share = refs[bounds[k] : bounds[k + 1]]
        _decide_all(store, clock, share)
    return DecidedDeployment(stores, day, real_now, refs)


def _decide_all(
    store: Store, clock: FixedClock, refs: Sequence[bytes] | npt.NDArray[np.bytes_]
) -> None:
    queues = np.asarray(["sales", "support"])[np.arange(len(refs)) % 2]
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        for s in range(0, len(refs), BATCH):
            sampler.decide_batch(refs[s : s + BATCH], {"queue": queues[s : s + BATCH]})
        log.flush()
