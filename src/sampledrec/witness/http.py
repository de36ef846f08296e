"""The witness over HTTP (aiohttp, the ``serve`` extra): ``POST <prefix>/add-checkpoint``.

A thin shell around :meth:`~sampledrec.witness.Witness.add_checkpoint`, which runs on a worker
thread (it fsyncs): the body is read (at most 1 MiB), the answer's status, content type and
body are sent as they are. HTTP keep-alive is on, as the spec recommends.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from contextlib import suppress

from aiohttp import web

from .witness import MAX_BODY, Witness

__all__ = ["build_witness_app", "run_witness"]

_log = logging.getLogger("sampledrec.witness")


def build_witness_app(witness: Witness, prefix: str = "") -> web.Application:
    """The aiohttp application of ``witness`` (``prefix``: the submission prefix's path)."""

    async def add_checkpoint(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=400, text="the request is too large\n")
        answer = await asyncio.get_running_loop().run_in_executor(
            None, witness.add_checkpoint, body
        )
        _log.info("add-checkpoint %s from %s (%d bytes)", answer.status, request.remote, len(body))
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers={"Content-Type": answer.content_type},
        )

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(prefix.rstrip("/") + "/add-checkpoint", add_checkpoint)
    return app


async def run_witness(
    witness: Witness,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``witness`` on ``host:port`` (port 0: any free port) until ``stop`` is set, or
    SIGTERM/SIGINT when no ``stop`` is given. ``ready(url)`` is told the URL once it listens."""
    runner = web.AppRunner(build_witness_app(witness), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{bound_host}:{bound_port}"
        _log.info("witness %s listening on %s", witness.cosigner.name, url)
        if ready is not None:
            ready(url)
        await stop.wait()
    finally:
        await runner.cleanup()
