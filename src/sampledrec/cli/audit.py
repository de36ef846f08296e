"""``sampledrec audit verify|report``: independent verification for an auditor or DPO."""

from __future__ import annotations

import argparse
import contextlib
import json
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from ..errors import InvalidArgument, StoreError
from ._common import (
    CHECKPOINT_HELP,
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    add_at,
    add_command,
    add_group,
    at_time,
    emit,
    open_store,
)
from ._progress import Progress


def register(commands: Commands) -> None:
    asub = add_group(commands, "audit", "independent verification for an auditor or DPO")
    p = add_command(
        asub,
        "kit",
        cmd_audit_kit,
        "write the auditor's kit: what an outsider needs to audit, without a private key",
    )
    p.add_argument("--out", required=True, help="a new folder to write the kit into")
    p.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NODE",
        help="when --store is a node of a deployment: each other node of it (repeat); the kit "
        "then holds every node's log (a deployment kit)",
    )
    p.add_argument("--from", dest="first_day", help="first UTC day of the period (YYYY-MM-DD)")
    p.add_argument("--to", dest="last_day", help="last UTC day of the period (YYYY-MM-DD)")
    add_at(p, "reveal the epochs ended by this time (ISO 8601; forward only)")
    p = add_command(
        asub,
        "verify",
        cmd_audit_verify,
        "verify the log, revealed keys, decisions, recordings, call records and rates",
        store=False,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--kit", help="the auditor's kit (written by 'audit kit')")
    source.add_argument("--store", help="the store folder (the operator's own audit)")
    p.add_argument(
        "--revealed-keys",
        help="file written by 'keys reveal' (required with --store; with --kit it replaces "
        "the kit's own)",
    )
    p.add_argument(
        "--recordings",
        help="with --kit: the store (or its recordings folder), whose files are hashed read-only",
    )
    p.add_argument(
        "--verifier-key",
        help="with --kit: the log's verifier key as the operator gave it to you (text, or a "
        "file holding it); default: the kit's own copy",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help=f"{CHECKPOINT_HELP}; with a deployment kit, one per node (repeat), each checked "
        "against the node whose log it names",
    )
    p.add_argument(
        "--cdr",
        help="the carrier's call records (CSV, or Parquet with pyarrow); with a deployment kit, "
        "the whole deployment's, checked against every node's decisions together",
    )
    add_witness_options(p)
    engine = p.add_mutually_exclusive_group()
    engine.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="with --kit: check the log's segments on a local Dask cluster of N worker "
        "processes (needs sampledrec[dask]); the report is the same",
    )
    engine.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="with --kit: check the log's segments on the Dask cluster whose scheduler is at "
        "ADDRESS (tcp://host:8786); every worker must read the kit folder at the same path",
    )
    add_at(p, "audit time for expiry checks (ISO 8601; forward only)")
    p = add_command(
        asub,
        "report",
        cmd_audit_report,
        "write a self-contained HTML report for the data-protection officer",
    )
    p.add_argument(
        "--revealed-keys", help="file written by 'keys reveal' (then the full audit is shown)"
    )
    p.add_argument("--out", required=True, help="the HTML file to write (0600)")
    add_witness_options(p)
    add_at(p, "report as of this time (ISO 8601; forward only)")


def add_witness_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="NAME=VKEY",
        help="a witness you trust: a name for the report and its verifier key (repeat); the log "
        "is checked against the checkpoints it cosigned",
    )
    p.add_argument(
        "--quorum",
        type=int,
        help="how many of the witnesses must have cosigned the log (default: all of them)",
    )
    p.add_argument(
        "--cosigned",
        action="append",
        default=[],
        metavar="FILE",
        help="more cosigned checkpoints, such as a witness's own state file (repeat)",
    )


def _witness_kw(args: argparse.Namespace) -> dict[str, Any]:
    return {"witnesses": args.witness, "quorum": args.quorum, "cosigned": args.cosigned}


def _audit(args: argparse.Namespace, store: Any, **kw: Any) -> Any:
    """``audit_verify`` with a progress bar: the log is gone through twice (verified, then read)."""
    from ..audit.verify import audit_verify

    with Progress(2 * store.log_storage.size(), "auditing") as bar:
        return audit_verify(
            store.path,
            Path(args.revealed_keys),
            progress=bar.advance,
            now=at_time(args, store),
            **kw,
        )


def cmd_audit_verify(args: argparse.Namespace, out: TextIO) -> int:
    kw: dict[str, Any] = {"cdr": Path(args.cdr) if args.cdr else None, **_witness_kw(args)}
    if args.kit is not None and _is_deployment_kit(args.kit):
        report = _audit_deployment_kit(args, checkpoints=args.checkpoint, **kw)
        emit(args, report.to_json(), report.to_text(), out)
        return EXIT_OK if report.ok else EXIT_FAILED
    if len(args.checkpoint) > 1:
        raise InvalidArgument(
            "--checkpoint is given once for one log (repeat it only with a deployment kit)"
        )
    kw["checkpoint"] = Path(args.checkpoint[0]) if args.checkpoint else None
    if args.kit is None:
        if args.workers is not None or args.scheduler is not None:
            raise InvalidArgument(
                "--workers and --scheduler go with --kit: a distributed audit reads an "
                "auditor's kit ('sampledrec audit kit' writes one)"
            )
        if args.revealed_keys is None:
            raise InvalidArgument(
                "--revealed-keys is required with --store (the file written by 'keys reveal')"
            )
        if args.recordings is not None or args.verifier_key is not None:
            raise InvalidArgument("--recordings and --verifier-key go with --kit, not --store")
        report = _audit(args, open_store(args.store), **kw)
    else:
        report = _audit_kit(args, **kw)
    emit(args, report.to_json(), report.to_text(), out)
    return EXIT_OK if report.ok else EXIT_FAILED


def _is_deployment_kit(path: str) -> bool:
    from ..audit.nodes import is_deployment_kit

    return is_deployment_kit(path)


def _audit_deployment_kit(args: argparse.Namespace, **kw: Any) -> Any:
    """A kit of several node logs: each node's checks, then the joins across nodes."""
    from ..audit.nodes import audit_deployment_kit

    given = [
        name
        for name, value in (
            ("--revealed-keys", args.revealed_keys),
            ("--recordings", args.recordings),
            ("--verifier-key", args.verifier_key),
        )
        if value is not None
    ]
    if given:
        raise InvalidArgument(
            f"{given[0]} is not supported yet with a deployment kit (several node logs); "
            "audit each node's kit (DIR/nodes/NAME) with it"
        )
    size = sum(p.stat().st_size for p in Path(args.kit).glob("nodes/*/log/seg-*"))
    with contextlib.ExitStack() as stack:
        if args.workers is not None or args.scheduler is not None:
            from ..audit.distributed import dask_runner

            # One cluster for every node: each node's log is checked in partitions on it.
            cluster = stack.enter_context(
                dask_runner(args.kit, scheduler=args.scheduler, workers=args.workers)
            )
            kw["runner_for"] = cluster.for_kit
        bar = stack.enter_context(Progress(2 * size, "auditing"))
        return audit_deployment_kit(args.kit, progress=bar.advance, now=at_time(args), **kw)


def _audit_kit(args: argparse.Namespace, **kw: Any) -> Any:
    from ..audit.kit import audit_kit

    vkey = args.verifier_key
    if vkey is not None and Path(vkey).is_file():
        vkey = Path(vkey).read_text(encoding="utf-8").strip()
    log = Path(args.kit) / "log"
    size = sum(p.stat().st_size for p in log.glob("seg-*")) if log.is_dir() else 0
    with contextlib.ExitStack() as stack:
        if args.workers is not None or args.scheduler is not None:
            from ..audit.distributed import dask_runner

            if not (Path(args.kit) / "kit.json").is_file():
                raise StoreError(
                    f"{args.kit} is not an auditor's kit (no kit.json); make one with "
                    "'sampledrec audit kit --store STORE --out DIR'"
                )
            kw["runner"] = stack.enter_context(
                dask_runner(args.kit, scheduler=args.scheduler, workers=args.workers)
            )
        bar = stack.enter_context(Progress(2 * size, "auditing"))
        return audit_kit(
            args.kit,
            recordings=args.recordings,
            verifier_key=vkey,
            revealed_keys=args.revealed_keys,
            progress=bar.advance,
            now=at_time(args),
            **kw,
        )


def cmd_audit_kit(args: argparse.Namespace, out: TextIO) -> int:
    from ..audit.kit import write_kit

    store = open_store(args.store)
    days = []
    for name, text in (("--from", args.first_day), ("--to", args.last_day)):
        try:
            days.append(None if text is None else date.fromisoformat(text))
        except ValueError:
            raise InvalidArgument(f"{name} {text!r} is not a day; write it as YYYY-MM-DD") from None
    now = at_time(args, store)
    if store.deployment is not None:
        return _deployment_kit(args, store, now, days, out)
    if args.node:
        raise InvalidArgument("--node goes with a --store that is a node of a deployment")
    with Progress(store.log_storage.size(), "writing the kit") as bar:
        manifest = write_kit(
            store, args.out, now=now, first_day=days[0], last_day=days[1], progress=bar.advance
        )
    revealed = json.loads((Path(args.out) / "revealed-keys.json").read_bytes())["epochs"]
    emit(
        args,
        {
            "out": args.out,
            "files": len(manifest["files"]),
            "epochs_revealed": len(revealed),
            "period": manifest["period"],
            "simulated": store.simulated,
        },
        f"Wrote the auditor's kit to {args.out}: {len(manifest['files'])} files, "
        f"{len(revealed)} epoch keys revealed"
        + (", SIMULATED store" if store.simulated else "")
        + f". Give it to the auditor with the verifier key:\n  {store.vkey}",
        out,
    )
    return EXIT_OK


def _deployment_kit(
    args: argparse.Namespace, store: Any, now: Any, days: list[Any], out: TextIO
) -> int:
    from ..audit.nodes import write_deployment_kit

    stores = [store, *(open_store(n) for n in args.node)]
    size = sum(s.log_storage.size() for s in stores)
    with Progress(size, "writing the kit") as bar:
        manifest = write_deployment_kit(
            stores, args.out, now=now, first_day=days[0], last_day=days[1], progress=bar.advance
        )
    nodes = [n["name"] for n in manifest["nodes"]]
    emit(
        args,
        {"out": args.out, "deployment": manifest["deployment"], "nodes": nodes},
        f"Wrote the kit of deployment {manifest['deployment']} to {args.out}: "
        f"{len(nodes)} nodes ({', '.join(nodes)}). Give it to the auditor with each node's "
        "verifier key:\n" + "\n".join(f"  {n['name']}: {n['vkey']}" for n in manifest["nodes"]),
        out,
    )
    return EXIT_OK


def cmd_audit_report(args: argparse.Namespace, out: TextIO) -> int:
    from ..audit.report import render, write_page

    store = open_store(args.store)
    if args.witness and not args.revealed_keys:
        raise InvalidArgument("--witness goes with --revealed-keys (the full audit)")
    audit = _audit(args, store, **_witness_kw(args)) if args.revealed_keys else None
    text, ok = render(
        store.path, revealed_keys=args.revealed_keys, audit=audit, now=at_time(args, store)
    )
    target = Path(args.out)
    write_page(target, text)
    emit(
        args,
        {"out": str(target), "ok": ok, "simulated": store.simulated},
        f"Wrote {target} (verification {'PASS' if ok else 'FAIL'}"
        + (", SIMULATED store" if store.simulated else "")
        + ")",
        out,
    )
    return EXIT_OK if ok else EXIT_FAILED
