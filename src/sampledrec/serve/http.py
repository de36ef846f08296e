"""The HTTP front door: the decision service for dialplans and webhooks, health and metrics.

Routes (docs/operations.md, "Running the server"):

``POST /v1/decisions``
    ``{"call_ref": "...", "attributes": {...}, "caller": "+33..."}`` (``call_ref_hex`` instead
    of ``call_ref`` for a binary reference; ``caller`` optional) answers 200 with the document
    of ``sampledrec decide --json`` plus ``warnings``, once the decision is durable in the log.
    Idempotent per call: asking again returns the first decision (``repeat`` true).
``POST /v1/calls/{ref}/pause`` and ``/resume``
    Pause or resume the open recording of a call (``?encoding=hex`` when ``{ref}`` is a binary
    reference in hexadecimal); 404 when no front door records that call.
``GET /healthz``
    200 ``{"status": "ok"}``; 503 while stopping or when the log cannot be written. The one
    route that needs no token (a probe must not hold a secret; it tells nothing about calls).
``GET /metrics``
    Prometheus text exposition.

Every error is a JSON object ``{"error": "..."}`` that says what to do, with a 4xx status for
the client's mistakes (400 bad request, 401 no or wrong token, 404, 405, 413 body too large) and
503 when the server cannot decide (shutting down, log not writable): never a traceback.
Authentication is a bearer token compared in constant time, and/or mutual TLS (the TLS layer
refuses a client without a certificate signed by the configured CA).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from .._version import __version__
from ..errors import InvalidArgument, NoOpenRecording, SampledrecError, ServerStopping, StoreError
from .decisions import parse_decision_request
from .doors import (
    Door,
    DoorKind,
    Listen,
    Ready,
    Services,
    check_section,
    section_path,
    server_ssl,
)
from .events import event
from .metrics import CONTENT_TYPE

__all__ = ["HTTP", "MAX_BODY_BYTES", "HttpConfig", "build_app", "http_door"]

#: Largest request body accepted by default (bytes): a decision request is a few hundred.
MAX_BODY_BYTES: Final = 64 * 1024
_TOKEN: Final = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token
_MIN_TOKEN: Final = 16
_DOOR: Final = "http"
_WARNED_LIMIT: Final = 1000  # distinct warnings logged (then only counted in the metrics)
_JSON: Final = "application/json"
_KEYS: Final = (
    "listen",
    "token_file",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "insecure_no_auth",
    "max_body_bytes",
)


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP door's settings, validated when built (the token file is read, the TLS files
    loaded): a mistake stops ``sampledrec serve`` before it listens, with a message naming the
    setting.

    At least one of ``token_file`` and ``tls_client_ca`` is required, unless
    ``insecure_no_auth`` is set on a loopback address. With both, a client needs both.
    """

    listen: Listen
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure_no_auth: bool = False
    max_body_bytes: int = MAX_BODY_BYTES
    token: bytes | None = field(init=False, repr=False, compare=False, default=None)
    ssl_context: ssl.SSLContext | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.token_file is None and self.tls_client_ca is None:
            if not self.insecure_no_auth:
                raise InvalidArgument(
                    "the HTTP door needs authentication: give --token-file FILE (a bearer "
                    "token) or --tls-client-ca FILE (mutual TLS); --insecure-no-auth only for "
                    "tests on a loopback address"
                )
            if not self.listen.loopback:
                raise InvalidArgument(
                    f"--insecure-no-auth is refused on {self.listen}: without authentication "
                    "the door may only listen on a loopback address (127.0.0.1, ::1); give "
                    "--token-file FILE to listen on the network"
                )
        if self.insecure_no_auth and (self.token_file or self.tls_client_ca):
            raise InvalidArgument(
                "--insecure-no-auth contradicts --token-file/--tls-client-ca; drop one of them"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("give --tls-cert and --tls-key together (or neither)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidArgument(
                "--tls-client-ca (mutual TLS) needs the server's own --tls-cert and --tls-key"
            )
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            raise InvalidArgument(
                f"max_body_bytes={self.max_body_bytes} must be between 1024 and 16777216"
            )
        if self.token_file is not None:
            object.__setattr__(self, "token", read_token(self.token_file))
        if self.tls_cert is not None and self.tls_key is not None:
            object.__setattr__(
                self, "ssl_context", server_ssl(self.tls_cert, self.tls_key, self.tls_client_ca)
            )

    @property
    def auth(self) -> str:
        """How clients authenticate: ``token``, ``mtls``, ``token+mtls`` or ``none``."""
        kinds = [k for k, on in (("token", self.token), ("mtls", self.tls_client_ca)) if on]
        return "+".join(kinds) or "none"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.listen}"

    @classmethod
    def from_section(cls, section: Mapping[str, Any], base: Path) -> HttpConfig:
        """The ``[http]`` section of a config file (paths relative to ``base``)."""
        check_section("http", section, _KEYS)

        def path(key: str) -> Path | None:
            return section_path("http", section, key, base)

        insecure = section.get("insecure_no_auth", False)
        if not isinstance(insecure, bool):
            raise InvalidArgument("[http] insecure_no_auth must be true or false")
        max_body = section.get("max_body_bytes", MAX_BODY_BYTES)
        if not isinstance(max_body, int) or isinstance(max_body, bool):
            raise InvalidArgument("[http] max_body_bytes must be a whole number of bytes")
        return cls(
            Listen.parse(section["listen"], "[http] listen"),
            token_file=path("token_file"),
            tls_cert=path("tls_cert"),
            tls_key=path("tls_key"),
            tls_client_ca=path("tls_client_ca"),
            insecure_no_auth=insecure,
            max_body_bytes=max_body,
        )


def read_token(path: Path) -> bytes:
    try:
        token = path.read_bytes().strip()
    except OSError as exc:
        raise InvalidArgument(f"--token-file {path}: {exc.strerror}") from None
    if not _TOKEN.fullmatch(token) or len(token) < _MIN_TOKEN:
        raise InvalidArgument(
            f"--token-file {path} must hold one token of at least {_MIN_TOKEN} characters "
            "(letters, digits and -._~+/); make one with: openssl rand -hex 32"
        )
    return token


class _Problem(SampledrecError):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _json(
    status: int, doc: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(doc, ensure_ascii=False).encode("utf-8"),
        content_type=_JSON,
        charset="utf-8",
        headers=headers,
    )


def _route(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "other"


# What aiohttp's own refusals mean to a client of this service.
_HTTP_ERRORS: Final = {
    404: "no such route; the routes are POST /v1/decisions, POST /v1/calls/{ref}/pause and "
    "/resume, GET /healthz and GET /metrics",
    405: "method not allowed on this route; decisions are POSTed to /v1/decisions",
}


def build_app(services: Services, config: HttpConfig) -> web.Application:
    """The aiohttp application of the door (exposed for tests and for embedding)."""
    token = config.token
    metrics = services.metrics
    too_large = (
        f"the body is larger than {config.max_body_bytes} bytes; a decision request is a "
        "small JSON object"
    )

    @web.middleware
    async def answer(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        route = _route(request)
        try:
            if token is not None and route != "/healthz":
                _check_token(request, token)
            response = await handler(request)
        except _Problem as problem:
            response = _json(problem.status, {"error": problem.message}, problem.headers)
        except web.HTTPRequestEntityTooLarge:
            response = _json(413, {"error": too_large})
        except web.HTTPException as exc:
            message = _HTTP_ERRORS.get(exc.status, exc.reason)
            response = _json(exc.status, {"error": message}, _allow(exc))
        except Exception as exc:  # never a traceback to the client
            event("request_failed", level=logging.ERROR, exc=exc, route=route)
            response = _json(
                500, {"error": "internal error; the server's log says where (not what you sent)"}
            )
        metrics.http_requests.inc(route, str(response.status))
        event(
            "http_request",
            level=logging.DEBUG,
            method=request.method,
            route=route,
            status=response.status,
            ms=round((time.perf_counter() - started) * 1e3, 3),
            peer=request.remote,
        )
        return response

    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[answer])
    handlers = _Handlers(services)
    app.router.add_post("/v1/decisions", handlers.decide)
    app.router.add_post("/v1/calls/{ref}/pause", handlers.pause)
    app.router.add_post("/v1/calls/{ref}/resume", handlers.resume)
    app.router.add_get("/healthz", handlers.healthz, allow_head=True)
    app.router.add_get("/metrics", handlers.metrics, allow_head=False)
    return app


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _check_token(request: web.Request, token: bytes) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not header or scheme.lower() != "bearer" or not given.strip():
        raise _Problem(
            401,
            "this route needs a bearer token: send the header 'Authorization: Bearer TOKEN' "
            "with the token of the server's --token-file",
            {"WWW-Authenticate": 'Bearer realm="sampledrec"'},
        )
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), token):
        raise _Problem(
            401,
            "the bearer token is not the server's; send the token of its --token-file",
            {"WWW-Authenticate": 'Bearer realm="sampledrec", error="invalid_token"'},
        )


class _Handlers:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._warned: set[str] = set()

    async def decide(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        services = self.services
        body = await request.read()  # HTTPRequestEntityTooLarge past client_max_size
        try:
            parsed = parse_decision_request(body, request.headers.get("Content-Type", ""))
            answer = await services.decider.decide(parsed)
        except InvalidArgument as exc:
            raise _Problem(400, str(exc)) from None
        except ServerStopping as exc:
            raise _Problem(503, str(exc), {"Connection": "close", "Retry-After": "1"}) from None
        except StoreError as exc:
            raise _Problem(
                503,
                f"the call was not decided: {exc}; the operator must look at the server",
            ) from None
        metrics = services.metrics
        metrics.calls_decided.inc(_DOOR)
        if not answer.decision.record:
            metrics.calls_declined.inc(_DOOR)
        if answer.warnings:
            metrics.decision_warnings.inc(_DOOR, by=len(answer.warnings))
            for message in answer.warnings:
                if message not in self._warned and len(self._warned) < _WARNED_LIMIT:
                    self._warned.add(message)  # once per distinct warning, as the CLI does
                    event("decision_warning", level=logging.WARNING, door=_DOOR, warning=message)
        metrics.decision_seconds.observe(time.perf_counter() - started, _DOOR)
        return _json(200, answer.to_json())

    async def pause(self, request: web.Request) -> web.Response:
        return await self._pause(request, pause=True)

    async def resume(self, request: web.Request) -> web.Response:
        return await self._pause(request, pause=False)

    async def _pause(self, request: web.Request, *, pause: bool) -> web.Response:
        ref = _path_ref(request)
        recordings = self.services.recordings
        try:
            if pause:
                state = await recordings.pause(ref, by=_DOOR)
            else:
                state = await recordings.resume(ref, by=_DOOR)
        except NoOpenRecording as exc:
            raise _Problem(404, str(exc)) from None
        event(
            "recording_paused" if pause else "recording_resumed",
            door=state.door,
            by=_DOOR,
            changed=state.changed,
        )
        return _json(200, state.to_json())

    async def healthz(self, request: web.Request) -> web.Response:
        services = self.services
        failure = services.log.failure
        if failure is not None:
            return _json(503, {"status": "failing", "error": "the decision log cannot be written"})
        if services.stopping.is_set():
            return _json(503, {"status": "stopping"})
        return _json(200, {"status": "ok", "version": __version__})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.services.metrics.render().encode("utf-8"),
            headers={"Content-Type": CONTENT_TYPE},
        )


def _path_ref(request: web.Request) -> str | bytes:
    ref = request.match_info["ref"]
    encoding = request.query.get("encoding", "text")
    if encoding == "hex":
        if not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", ref):
            raise _Problem(400, "with ?encoding=hex the reference must be hexadecimal bytes")
        return bytes.fromhex(ref)
    if encoding != "text":
        raise _Problem(400, f"encoding={encoding!r}: use text (the default) or hex")
    return ref


def http_door(config: HttpConfig) -> Door:
    """The HTTP door for ``config``: serves until the server stops, then stops accepting and
    lets the requests in flight finish (within the server's shutdown grace)."""

    async def run(services: Services, ready: Ready) -> None:
        runner = web.AppRunner(
            build_app(services, config),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=services.shutdown_grace,
        )
        await runner.setup()
        try:
            site = web.TCPSite(
                runner,
                config.listen.host,
                config.listen.port,
                ssl_context=config.ssl_context,
                backlog=1024,
            )
            try:
                await site.start()
            except OSError as exc:
                raise InvalidArgument(
                    f"--http {config.listen}: cannot listen there ({exc.strerror}); pick another "
                    "address or stop the process that holds it"
                ) from None
            host, port = runner.addresses[0][:2]
            address = Listen(host, port)
            scheme = "https" if config.ssl_context else "http"
            event("listening", door=_DOOR, address=f"{scheme}://{address}", auth=config.auth)
            if (
                config.token is not None
                and config.ssl_context is None
                and not config.listen.loopback
            ):
                event(
                    "token_in_clear",
                    level=logging.WARNING,
                    door=_DOOR,
                    advice="the bearer token crosses the network unencrypted; give --tls-cert "
                    "and --tls-key",
                )
            ready(f"{scheme}://{address}")
            await services.stopping.wait()
        finally:
            await runner.cleanup()  # stop listening, then finish the requests in flight

    return run


HTTP: Final = DoorKind[HttpConfig](
    name=_DOOR,
    help="the decision service (POST /v1/decisions), pause/resume, /healthz and /metrics",
    parse=HttpConfig.from_section,
    door=http_door,
)
