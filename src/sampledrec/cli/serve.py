"""``sampledrec serve``: run the server (its front doors) until SIGTERM or SIGINT.

The command reads the options and the ``--config`` file into a
:class:`~sampledrec.serve.ServerConfig`, sends every log line of the process to stderr as JSON,
and runs a :class:`~sampledrec.serve.Server`. Exit codes: 0 after a graceful stop; 2 a setting
is wrong (a missing token, a port in use); 3 the store cannot be used.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import InvalidArgument
from ..store import Store

if TYPE_CHECKING:
    from ..serve import ServerConfig
from ._common import EXIT_OK, Commands, add_command, open_store


def register(commands: Commands) -> None:
    p = add_command(
        commands,
        "serve",
        cmd_serve,
        "run the server: the decision service over HTTP and the SIPREC recording server, "
        "until SIGTERM",
    )
    p.add_argument("--http", metavar="HOST:PORT", help="open the HTTP door (decision service)")
    p.add_argument(
        "--siprec",
        metavar="HOST:PORT",
        help="open the SIPREC door (recording server for SBCs; SIP over UDP and TCP, and TLS "
        "with --siprec-tls-cert)",
    )
    p.add_argument(
        "--siprec-tls-cert",
        metavar="FILE",
        type=Path,
        help="SIP over TLS too, with this certificate (PEM); it listens on the --siprec port + 1 "
        "unless [siprec] tls_listen says otherwise",
    )
    p.add_argument("--siprec-tls-key", metavar="FILE", type=Path, help="its private key (PEM)")
    p.add_argument(
        "--rtp-ports",
        metavar="LO-HI",
        help="UDP ports the SIPREC door receives RTP on (default 40000-40999)",
    )
    p.add_argument(
        "--audiosocket", metavar="HOST:PORT", help="open the AudioSocket door (Asterisk)"
    )
    p.add_argument(
        "--streams",
        metavar="HOST:PORT",
        help="open the WebSocket media-stream door (Twilio, SignalWire, Telnyx, FreeSWITCH fork)",
    )
    p.add_argument(
        "--web",
        metavar="HOST:PORT",
        help="open the web console (needs TLS, --tls-cert and --tls-key, off loopback); its "
        "accounts: sampledrec users",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings ([server], [http], [siprec], [audiosocket], [streams], [web])",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        type=Path,
        help="file holding the bearer token that HTTP clients must send",
    )
    p.add_argument("--tls-cert", metavar="FILE", type=Path, help="the HTTP door's certificate")
    p.add_argument("--tls-key", metavar="FILE", type=Path, help="its private key")
    p.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        type=Path,
        help="require client certificates signed by this CA (mutual TLS)",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="no authentication (only on a loopback address; for tests)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),  # serve.EVENT_LOOPS (imported only when run)
        help="the event loop (default auto: uvloop when it is installed, else asyncio's)",
    )


def store_audit(store: Store, *, clock: Clock = SYSTEM_CLOCK) -> Callable[[], dict[str, Any]]:
    """The store's audit as the console runs it (its audit report page): the eight checks of
    ``sampledrec audit verify --store``, with the keys of the epochs ended by ``clock`` revealed
    in memory (never written, never logged as a reveal: they do not leave the process), and
    the report as JSON. The console may not import the audit package (an import-linter
    contract: the audit is the CLI's), so the CLI hands it this function
    (docs/decisions/0033-console-admin.md)."""

    def run() -> dict[str, Any]:
        from ..audit.evidence import store_evidence
        from ..audit.verify import audit_evidence
        from ..keys.keyring import epoch_end, reveal

        now = clock.now()
        ended = [e for e in store.keyring.epoch_ids() if epoch_end(e) <= now]
        keys = reveal(store.keyring, ended, now=now)
        report: dict[str, Any] = audit_evidence(store_evidence(store), keys, now=now).to_json()
        return report

    return run


def console_audit(config: ServerConfig, store: Store) -> None:
    """Give ``config``'s web door, if it has one, the store's audit (:func:`store_audit`)."""
    from ..serve import WebConfig, web_door

    web = config.settings.get("web")
    if isinstance(web, WebConfig):
        config.doors["web"] = web_door(web, audit=store_audit(store))


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from ..serve import Server, ServerConfig, event_loop_factory, run_server
        from ..serve.events import configure_logging
    except ImportError as exc:  # the serve extra is not installed
        raise InvalidArgument(
            f"sampledrec serve needs aiohttp ({exc}); install it with: "
            "pip install 'sampledrec[serve]'"
        ) from None
    overrides = {
        "http": {
            "listen": args.http,
            "token_file": args.token_file,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "tls_client_ca": args.tls_client_ca,
            "insecure_no_auth": args.insecure_no_auth,
        },
        "siprec": {
            "listen": args.siprec,
            "rtp_ports": args.rtp_ports,
            "tls_cert": args.siprec_tls_cert,
            "tls_key": args.siprec_tls_key,
        },
        "server": {"log_level": args.log_level, "event_loop": args.event_loop},
        "audiosocket": {"listen": args.audiosocket},
    }
    if args.streams:  # the token and TLS options serve the streams door too
        overrides["streams"] = {
            "listen": args.streams,
            "token_file": args.token_file,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "insecure_no_auth": args.insecure_no_auth,
        }
    if args.web:  # the TLS options serve the console too
        overrides["web"] = {
            "listen": args.web,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
        }
    config = ServerConfig.load(args.config, overrides=overrides)
    event_loop_factory(config.event_loop)  # an event loop that is not installed: say so first
    store = open_store(args.store)
    console_audit(config, store)
    handler = configure_logging(level=config.log_level)
    try:
        server = Server(
            store,
            config.doors,
            shutdown_grace=config.shutdown_grace,
            decide_workers=config.decide_workers,
            handle_signals=True,
        )
        run_server(server, config.event_loop)
    finally:
        logging.getLogger().removeHandler(handler)
    return EXIT_OK
