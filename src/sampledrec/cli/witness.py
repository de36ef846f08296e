"""``sampledrec witness keygen|serve|configure``: run a witness, and name a store's witnesses.

``keygen`` writes a witness's private key file (0600, refused if it exists) and prints its
verifier key; ``serve`` runs the witness over HTTP until SIGTERM (exit 0), 2 for a wrong
setting, 3 when the key or the state folder cannot be used; ``configure`` writes the witnesses
and the quorum into a store's ``store.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import TextIO

from ..errors import CheckpointError, InvalidArgument, StoreError
from ..witness import Cosigner, VerifierKey, Witness, WitnessEndpoint, WitnessSettings, WitnessState
from ..witness.note import ALG_COSIGNATURE_V1, ALG_ED25519
from ._common import EXIT_OK, Commands, add_command, add_group, emit, open_store


def register(commands: Commands) -> None:
    wsub = add_group(
        commands, "witness", "run a witness that cosigns logs' checkpoints, or name a store's"
    )
    p = add_command(
        wsub,
        "keygen",
        cmd_witness_keygen,
        "write a new witness key file (0600) and print its verifier key",
        store=False,
    )
    p.add_argument(
        "--name",
        required=True,
        help="the witness's key name, a schema-less URL such as witness.dpo.example/w1",
    )
    p.add_argument("--out", required=True, type=Path, help="the key file to create")
    p = add_command(
        wsub,
        "serve",
        cmd_witness_serve,
        "run the witness (C2SP tlog-witness over HTTP) until SIGTERM",
        store=False,
    )
    p.add_argument("--key", required=True, type=Path, help="the key file written by keygen")
    p.add_argument(
        "--state", required=True, type=Path, help="the folder of its state (created if new)"
    )
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to listen")
    p.add_argument(
        "--log",
        required=True,
        action="append",
        metavar="ORIGIN=VKEY",
        help="a log to witness: its origin and its verifier key (repeat for each log or key)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p = add_command(
        wsub,
        "configure",
        cmd_witness_configure,
        "name the witnesses that cosign the store's checkpoints (store.json)",
    )
    p.add_argument(
        "--witness",
        nargs=3,
        action="append",
        metavar=("NAME", "URL", "VKEY"),
        help="a witness: a short label, its submission URL and its verifier key (repeat)",
    )
    p.add_argument("--quorum", type=int, default=1, help="cosignatures required (default 1)")
    p.add_argument(
        "--interval",
        type=float,
        default=30.0,
        help="seconds between requests while appending (at most 60; default 30)",
    )
    p.add_argument("--none", action="store_true", help="remove every witness")


def cmd_witness_keygen(args: argparse.Namespace, out: TextIO) -> int:
    try:
        cosigner, key_file = Cosigner.generate(args.name)
    except CheckpointError as exc:
        raise InvalidArgument(f"--name: {exc}") from None
    path: Path = args.out
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise InvalidArgument(f"{path} exists; keygen never overwrites a key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_file)
        fh.flush()
        os.fsync(fh.fileno())
    vkey = str(cosigner.verifier)
    emit(
        args,
        {"key_file": str(path), "name": cosigner.name, "vkey": vkey},
        f"Wrote {path} (keep it secret). The witness's verifier key:\n{vkey}",
        out,
    )
    return EXIT_OK


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"--listen {text!r} is not HOST:PORT, like 127.0.0.1:8443")
    return host.strip("[]") or "0.0.0.0", int(port)


def _logs(pairs: list[str]) -> dict[str, list[VerifierKey]]:
    logs: dict[str, list[VerifierKey]] = {}
    for pair in pairs:
        origin, sep, vkey = pair.partition("=")
        if not sep or not origin:
            raise InvalidArgument(
                f"--log {pair!r} is not ORIGIN=VKEY; give the log's origin and the verifier key "
                "its operator printed (sampledrec init, or 'sampledrec log checkpoint')"
            )
        try:
            key = VerifierKey.parse(vkey, alg=ALG_ED25519)
        except CheckpointError as exc:
            raise InvalidArgument(f"--log {origin}: {exc}") from None
        logs.setdefault(origin, []).append(key)
    return logs


def cmd_witness_serve(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from ..witness.http import run_witness
    except ImportError as exc:  # the serve extra is not installed
        raise InvalidArgument(
            f"sampledrec witness serve needs aiohttp ({exc}); install it with: "
            "pip install 'sampledrec[serve]'"
        ) from None
    host, port = _listen(args.listen)
    logs = _logs(args.log)
    try:
        cosigner = Cosigner.from_key_file(Path(args.key).read_bytes())
    except CheckpointError as exc:
        raise StoreError(f"{args.key}: {exc}") from None
    except PermissionError as exc:
        raise StoreError(f"cannot read {args.key}: {exc.strerror}") from None
    if Path(args.key).stat().st_mode & 0o077:
        raise StoreError(f"{args.key} can be read by others; chmod 600 it first")
    witness = Witness(cosigner, WitnessState(args.state), logs)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("sampledrec.witness")
    root.addHandler(handler)
    root.setLevel(args.log_level.upper())
    try:
        asyncio.run(run_witness(witness, host, port))
    except OSError as exc:  # the port is in use, or the address is not ours
        raise InvalidArgument(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    finally:
        root.removeHandler(handler)
    return EXIT_OK


def cmd_witness_configure(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    if args.none:
        if args.witness:
            raise InvalidArgument("--none and --witness exclude each other")
        store.configure_witnesses(None)
        emit(args, {"witnesses": None}, "The store's log asks no witness now.", out)
        return EXIT_OK
    if not args.witness:
        raise InvalidArgument("give at least one --witness NAME URL VKEY, or --none")
    endpoints = []
    for name, url, vkey in args.witness:
        try:
            key = VerifierKey.parse(vkey, alg=ALG_COSIGNATURE_V1)
        except CheckpointError as exc:
            raise InvalidArgument(f"--witness {name}: {exc}") from None
        endpoints.append(WitnessEndpoint(name, url, key))
    settings = WitnessSettings(tuple(endpoints), quorum=args.quorum, interval=args.interval)
    store.configure_witnesses(settings)
    emit(
        args,
        {"witnesses": settings.to_json()},
        f"The store's log asks {len(endpoints)} witnesses to cosign its checkpoints "
        f"(quorum {settings.quorum}): " + ", ".join(w.name for w in endpoints),
        out,
    )
    return EXIT_OK
