"""A store with a log of many decisions on one past day, for the audit benchmarks.

The decisions are made with ``Sampler.decide_batch`` in batches of 50,000 (the vectorised
path), on a day two days back, so that its epoch has ended and its key can be revealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

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
