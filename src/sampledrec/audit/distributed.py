"""The audit of an auditor's kit on Dask: its log's partitions checked by Dask workers.

``sampledrec audit verify --kit DIR --workers N`` starts a local cluster of ``N`` worker
processes (one thread each); ``--scheduler ADDRESS`` uses a running one. Dask comes with the
optional extra ``dask`` (``pip install 'sampledrec[dask]'``).

What goes over the network is small: each task names a partition (the kit's log folder and
some segments), the checkpoints' tree sizes, and the revealed epoch keys (of ended epochs, as
the kit holds them). The workers read the log's segments and the kit's ``sealing-keys.json``
from the kit folder themselves: with a remote scheduler, the kit must be on storage that every
worker reads at the same path. What comes back is each segment's compact range and claims,
its decision columns and the few draws that disagree with the log. The join, and every check
that spans the log, run in this process, exactly as in the single-process audit
(:mod:`sampledrec.audit.partitions`): the report is the same.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument, StoreError
from ..log.storage import segment_name
from ..log.verify import SegmentCheck
from .kit import open_kit
from .partitions import LogPartition, SegmentEntries, read_part, verify_part

__all__ = ["CONNECT_TIMEOUT", "DaskRunner", "dask_runner"]

#: Seconds to wait for a scheduler given by its address.
CONNECT_TIMEOUT = 10.0


@functools.lru_cache(maxsize=4)
def _kit_sealing(kit: str, made: float) -> Any:
    """The kit's sealing keys, as :func:`~sampledrec.audit.kit.open_kit` reads them (once per
    worker process and kit)."""
    return open_kit(kit)[0].sealing


def check_kit_part(
    part: LogPartition, wanted: frozenset[int], kit: str, keys: Mapping[str, Sequence[bytes]]
) -> tuple[list[SegmentCheck], list[SegmentEntries]]:
    """One partition's whole work on a worker, in one task: :func:`~.partitions.verify_part`
    then :func:`~.partitions.read_part` (the segments' pages read from disk once, still in
    the page cache for the second pass), the kit's sealing keys read from the kit folder."""
    made = (Path(kit) / "kit.json").stat().st_mtime
    return verify_part(part, wanted), read_part(part, _kit_sealing(kit, made), keys)


class DaskRunner:
    """Runs the partitions of a kit's log on a Dask cluster through ``client``."""

    def __init__(self, client: Any, kit: str | Path) -> None:
        self.client = client
        self.kit = str(Path(kit).resolve())

    def run(
        self,
        parts: Sequence[LogPartition],
        wanted: frozenset[int],
        sealing: Any,
        keys: Mapping[str, Sequence[bytes]],
        progress: Callable[[int], None] | None,
    ) -> tuple[list[SegmentCheck], list[SegmentEntries]]:
        as_completed: Any = importlib.import_module("distributed").as_completed  # untyped

        log = Path(self.kit) / "log"
        # Workers are told where the log is, never given its bytes.
        remote = [LogPartition(str(log), p.segments) for p in parts]
        sizes = [sum((log / segment_name(s)).stat().st_size for s in p.segments) for p in parts]
        # One task per partition; the biggest first, so that the last to finish are small.
        order = sorted(range(len(remote)), key=lambda i: -sizes[i])
        futures = self.client.map(
            check_kit_part,
            [remote[i] for i in order],
            wanted=wanted,
            kit=self.kit,
            keys=keys,
            pure=False,
        )
        slot = {f.key: i for f, i in zip(futures, order, strict=True)}
        got: list[tuple[list[SegmentCheck], list[SegmentEntries]] | None] = [None] * len(remote)
        # Each answer is fetched as soon as it is ready, while the workers go on with the
        # others (not all at the end), and released from its worker at once.
        for future, answer in as_completed(futures, with_results=True):
            got[slot[future.key]] = answer
            future.release()
            if progress is not None:
                progress(2 * sizes[slot[future.key]])  # both passes over its bytes
        done = [g for g in got if g is not None]
        if len(done) != len(got):  # as_completed yields every future, or raises
            raise RuntimeError("a partition's answer is missing")
        return [c for g in done for c in g[0]], [e for g in done for e in g[1]]


@contextmanager
def dask_runner(
    kit: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    timeout: float | None = None,
) -> Iterator[DaskRunner]:
    """A :class:`DaskRunner` for the kit ``kit``: on the cluster whose scheduler listens at
    ``scheduler``, or on a local cluster of ``workers`` processes started (and stopped) here.
    :class:`~sampledrec.errors.StoreError` when the scheduler cannot be reached in ``timeout``
    seconds (default :data:`CONNECT_TIMEOUT`), :class:`~sampledrec.errors.InvalidArgument`
    when Dask is not installed."""
    if (scheduler is None) == (workers is None):
        raise InvalidArgument("give either scheduler= (an address) or workers= (a number)")
    if workers is not None and workers < 1:
        raise InvalidArgument(f"--workers {workers} must be 1 or more")
    try:
        dd: Any = importlib.import_module("distributed")  # untyped: called as Any
    except ImportError:
        raise InvalidArgument(
            "--workers and --scheduler run the audit on Dask, which is not installed: "
            "pip install 'sampledrec[dask]'"
        ) from None
    if scheduler is not None:
        try:
            client = dd.Client(scheduler, timeout=timeout or CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise StoreError(
                f"cannot reach the Dask scheduler at {scheduler!r} ({exc}); start one "
                "('dask scheduler', and 'dask worker ADDRESS' on each machine) or audit on "
                "this machine with --workers N"
            ) from None
        with client:
            yield DaskRunner(client, kit)
        return
    with (
        dd.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            # No dashboard, and the scheduler's HTTP routes on any free port (not 8787).
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
        ) as cluster,
        dd.Client(cluster) as client,
    ):
        yield DaskRunner(client, kit)
