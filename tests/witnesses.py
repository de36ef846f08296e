"""Witnesses for the tests: one served over HTTP on a thread of the test process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from sampledrec.witness import Cosigner, VerifierKey, Witness, WitnessState
from sampledrec.witness.http import run_witness


class ThreadedWitness:
    """A :class:`Witness` served on 127.0.0.1 by a thread; :meth:`stop` and :meth:`start` it
    again (on the same port) to play a witness that is down for a while."""

    def __init__(
        self, name: str, state: Path, logs: Mapping[str, Sequence[str]], port: int = 0
    ) -> None:
        self.cosigner, _ = Cosigner.generate(name)
        self.vkey = str(self.cosigner.verifier)
        self.witness = Witness(
            self.cosigner,
            WitnessState(state),
            {o: [VerifierKey.parse(k) for k in keys] for o, keys in logs.items()},
        )
        self.port = port
        self.url = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> ThreadedWitness:
        ready = threading.Event()

        def serve() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()

                def listening(url: str) -> None:
                    self.url = url
                    self.port = int(url.rsplit(":", 1)[1])
                    ready.set()

                await run_witness(
                    self.witness, "127.0.0.1", self.port, ready=listening, stop=self._stop
                )

            asyncio.run(main())

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10), "the witness did not start"
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> ThreadedWitness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
