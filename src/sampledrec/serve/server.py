"""The server process: one event loop, one sampler and one log, and the front doors around them.

:meth:`Server.run` opens the store's log and a sampler over it, starts every door, and serves
until :meth:`Server.stop` (SIGTERM or SIGINT when ``handle_signals``). Stopping is graceful and
loses nothing: every door stops accepting and finishes what it has in flight (within
``shutdown_grace`` seconds), the decider waits for the decisions under way, then the sampler
and the log close, the log flushing its queue and signing a last checkpoint. Every decision a
door answered is then durable (it was before the answer: see :mod:`.decisions`).

:func:`run_server` runs one on the event loop the command line asks for (``--event-loop``):
uvloop when it is installed (the ``serve`` extra installs it), otherwise asyncio's own
(docs/decisions/0041-uvloop.md).

Under systemd (``Type=notify``) the server says ``READY=1`` once every door listens and
``STOPPING=1`` when it begins to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final

from .._version import __version__
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import InvalidArgument
from ..log.writer import DecisionLog
from ..sampling.sampler import Sampler
from ..store import Store
from ..vault.recorder import Vault
from ..vault.staging import StagedBlobs
from .config import EVENT_LOOPS
from .decisions import Decider
from .doors import Door, Services
from .events import event
from .metrics import Metrics
from .recordings import OpenRecordings

__all__ = ["Server", "event_loop_factory", "run_server"]

_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def event_loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the event loop named ``choice`` (one of :data:`EVENT_LOOPS`). uvloop runs the
    doors with about a tenth less CPU and a shorter tail than asyncio's loop (measured: decision
    p99 at 1,000 requests/s); asyncio's is the fallback where uvloop is not installed. Raises
    InvalidArgument for ``uvloop`` when it is not installed, or an unknown name."""
    if choice not in EVENT_LOOPS:
        raise InvalidArgument(
            f"event loop {choice!r}: choose one of {', '.join(EVENT_LOOPS)} (auto: uvloop when "
            "it is installed)"
        )
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise InvalidArgument(
                    "the uvloop event loop is not installed; install it with: pip install "
                    "'sampledrec[serve]', or run on asyncio's (--event-loop asyncio, or "
                    'event_loop = "asyncio" in [server])'
                ) from None
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    # asyncio's own loop, whatever event loop policy the process has set (and without the
    # policy classes, deprecated from Python 3.14).
    return asyncio.SelectorEventLoop


def run_server(server: Server, event_loop: str = "auto") -> None:
    """Run ``server`` until it stops, on a new loop made by :func:`event_loop_factory`; the
    loop is closed afterwards."""
    with asyncio.Runner(loop_factory=event_loop_factory(event_loop)) as runner:
        runner.run(server.run())


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


class Server:
    """``sampledrec serve`` in a process: a store and its front doors.

    Parameters
    ----------
    store:
        The store whose sampler decides and whose log records.
    doors:
        Front doors by name (see :mod:`.doors`), started in this order.
    clock:
        Time source of the sampler and the log (keyword-only; tests pass a fixed one).
    shutdown_grace:
        Seconds a door has, once stopping, to finish its requests in flight.
    decide_workers:
        Threads that decide and wait for the log (see :class:`.decisions.Decider`).
    handle_signals:
        Stop on SIGTERM and SIGINT (the command line; not for a server embedded in a program
        that handles its own signals).
    """

    def __init__(
        self,
        store: Store,
        doors: Mapping[str, Door],
        *,
        clock: Clock = SYSTEM_CLOCK,
        shutdown_grace: float = 10.0,
        decide_workers: int = 1,
        handle_signals: bool = False,
    ) -> None:
        if not doors:
            raise InvalidArgument("a server needs at least one front door")
        if shutdown_grace <= 0:
            raise InvalidArgument(f"shutdown_grace={shutdown_grace} must be positive seconds")
        self.store = store
        self._doors = dict(doors)
        self._clock = clock
        self._grace = shutdown_grace
        self._workers = decide_workers
        self._handle_signals = handle_signals
        self.metrics = Metrics()
        self.recordings = OpenRecordings()
        #: Each door's address once it listens (``"http://127.0.0.1:8480"``).
        self.addresses: dict[str, str] = {}
        self._stopping: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self.services: Services | None = None

    def stop(self) -> None:
        """Begin a graceful stop; safe from any thread, and before :meth:`run` got going."""
        self._stop_requested = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stopping.set)

    async def wait_ready(self) -> dict[str, str]:
        """Wait until every door listens; their addresses."""
        while self._ready is None:
            await asyncio.sleep(0.005)
        await self._ready.wait()
        return dict(self.addresses)

    async def run(self) -> None:
        """Serve until stopped (see the module docstring). A door that fails to start, or
        fails later, stops the server, and its error is raised once everything is closed."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        stopping = self._stopping = asyncio.Event()
        ready = self._ready = asyncio.Event()
        if self._stop_requested:
            stopping.set()
        if self._handle_signals:
            for signum in _STOP_SIGNALS:
                loop.add_signal_handler(signum, self._on_signal, signum)
        clock = self._clock
        try:
            log = await asyncio.to_thread(self.store.open_log, clock=clock)
            try:
                sampler = await asyncio.to_thread(self.store.sampler, clock=clock, log=log)
            except BaseException:
                await asyncio.to_thread(log.close)
                raise
        except BaseException:
            self._remove_signals(loop)
            ready.set()
            raise
        decider = Decider(sampler, log, workers=self._workers)
        services = self.services = Services(
            store=self.store,
            log=log,
            sampler=sampler,
            decider=decider,
            recordings=self.recordings,
            metrics=self.metrics,
            stopping=stopping,
            shutdown_grace=self._grace,
        )
        self._add_gauges(services)
        failure: BaseException | None = None
        tasks: dict[asyncio.Task[None], str] = {}
        uploads: asyncio.Task[None] | None = None
        try:
            if isinstance(self.store.blobs, StagedBlobs):
                # Recordings that a crash left on this node's disk are sealed (truncated)
                # and uploaded before the doors open; failed uploads are retried meanwhile.
                await asyncio.to_thread(_recover_staged, services, self.store.blobs, clock)
                uploads = loop.create_task(_retry_uploads(services, clock))
            for name, door in self._doors.items():
                tasks[loop.create_task(door(services, self._ready_callback(name)))] = name
            stop_wait = loop.create_task(stopping.wait())
            pending: set[asyncio.Future[Any]] = {stop_wait, *tasks}
            while not stopping.is_set():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is stop_wait:
                        continue
                    error = task.exception()
                    if error is None and stopping.is_set():
                        continue  # it saw the stop first: a door is meant to return then
                    name = tasks[task]  # type: ignore[index]  # a door's task
                    failure = error or RuntimeError(f"the {name} door stopped by itself")
                    event("door_failed", level=logging.ERROR, door=name, exc=failure)
                    stopping.set()
            stop_wait.cancel()
            _sd_notify("STOPPING=1")
            event("stopping", grace_seconds=self._grace)
            await self._wait_doors(tasks)
        finally:
            stopping.set()
            ready.set()
            if uploads is not None:
                uploads.cancel()
                await asyncio.gather(uploads, return_exceptions=True)
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await decider.aclose()
            await asyncio.to_thread(_close, sampler, log)
            self._remove_signals(loop)
            event(
                "stopped",
                decided=int(sum(self.metrics.calls_decided.value(n) for n in self._doors)),
                log_entries=log.size,
            )
        if failure is not None:
            raise failure

    async def _wait_doors(self, tasks: Mapping[asyncio.Task[None], str]) -> None:
        """Let the doors finish their requests in flight (a little more than the grace, which
        each door applies itself), then cancel what is left."""
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._grace + 5)
        for task in late:
            event("door_cancelled", level=logging.WARNING, door=tasks[task])
            task.cancel()

    def _ready_callback(self, name: str) -> Callable[[str], None]:
        def ready(address: str) -> None:
            self.addresses[name] = address
            if len(self.addresses) == len(self._doors) and self._ready is not None:
                if self._ready.is_set() or (self._stopping and self._stopping.is_set()):
                    return
                self._ready.set()
                if self._handle_signals:  # the process is ours (the command line)
                    # What start-up built lives as long as the server: out of the collector's
                    # sight, its full collections take a few milliseconds instead of tens,
                    # which a decision answered meanwhile would wait for (measured: 37 ms).
                    gc.freeze()
                event(
                    "ready",
                    version=__version__,
                    doors=sorted(self.addresses),
                    event_loop=_loop_name(asyncio.get_running_loop()),
                )
                _sd_notify("READY=1")

        return ready

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle_signals:
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        event("signal", signal=signal.Signals(signum).name)
        self.stop()

    def _add_gauges(self, services: Services) -> None:
        m = self.metrics
        m.add_gauge(
            "sampledrec_calls_open",
            "Recordings open now in a front door (the registry that pause and resume act on).",
            lambda: len(services.recordings),
        )
        blobs = self.store.blobs
        if isinstance(blobs, StagedBlobs):
            staged = blobs
            m.add_gauge(
                "sampledrec_recordings_awaiting_upload",
                "Sealed recordings kept on this node's disk because their upload to the object "
                "storage has not succeeded yet (retried every 30 s).",
                lambda: len(staged.pending()),
            )
            m.add_gauge(
                "sampledrec_upload_failures",
                "Uploads of sealed recordings to the object storage that failed since the "
                "server started (each is kept on disk and retried).",
                lambda: staged.upload_failures,
            )
        m.add_gauge(
            "sampledrec_log_queue_depth",
            "Decision log entries queued and not yet durable (group commit).",
            lambda: services.log.pending,
        )
        m.add_gauge(
            "sampledrec_log_failed",
            "1 when the decision log cannot be written (nothing can be decided), else 0.",
            lambda: 0 if services.log.failure is None else 1,
        )
        m.add_gauge(
            "sampledrec_build_info",
            "The running version (value 1).",
            lambda: [((__version__,), 1.0)],
            labels=("version",),
        )


def _close(sampler: Sampler, log: DecisionLog) -> None:
    """The sampler first (it tells the decided-calls index which entries are durable), then
    the log (it flushes its queue and signs a last checkpoint)."""
    try:
        sampler.close()
    finally:
        log.close()


def _sd_notify(state: str) -> None:
    """Tell systemd (``Type=notify``) about the service's state; nothing outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


#: Seconds between two tries of the uploads that failed (:func:`_retry_uploads`).
UPLOAD_RETRY_EVERY: Final = 30.0


def _recover_staged(services: Services, blobs: StagedBlobs, clock: Clock) -> None:
    """At start-up: recover the recordings a crash left being written on this node's disk
    (no recorder runs yet, and the log's lock keeps other writers of this store out), then
    upload the sealed ones still waiting."""
    with Vault(services.store, services.log, clock=clock) as vault:
        if blobs.abandoned():
            outcomes = vault.recover()
            event("recovered", recordings=len(outcomes), outcomes=sorted(o for _, o in outcomes))
        uploaded, failed = vault.upload_pending()
    if uploaded or failed:
        event(
            "uploads_retried",
            level=logging.WARNING if failed else logging.INFO,
            uploaded=uploaded,
            failed=failed,
        )


async def _retry_uploads(services: Services, clock: Clock) -> None:
    """Every :data:`UPLOAD_RETRY_EVERY` seconds, upload the sealed recordings whose upload
    failed (the object storage was unreachable); never stops the server."""
    blobs = services.store.blobs
    assert isinstance(blobs, StagedBlobs)
    while not services.stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(services.stopping.wait(), UPLOAD_RETRY_EVERY)
        if services.stopping.is_set() or not blobs.pending():
            continue
        try:
            uploaded, failed = await asyncio.to_thread(_upload_pending, services, clock)
        except Exception as exc:  # the catalog unreachable: tried again next time
            event("uploads_retried", level=logging.WARNING, uploaded=0, failed=-1, exc=exc)
            continue
        event(
            "uploads_retried",
            level=logging.WARNING if failed else logging.INFO,
            uploaded=uploaded,
            failed=failed,
        )


def _upload_pending(services: Services, clock: Clock) -> tuple[int, int]:
    with Vault(services.store, services.log, clock=clock) as vault:
        return vault.upload_pending()
