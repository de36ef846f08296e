"""``sampledrec log verify|show|checkpoint|repair``: the signed decision log."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from ..errors import InvalidArgument
from ._common import (
    CHECKPOINT_HELP,
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    Commands,
    add_command,
    add_group,
    emit,
    open_store,
    owner_name,
)
from ._progress import Progress


def register(commands: Commands) -> None:
    lsub = add_group(commands, "log", "the signed decision log")
    p = add_command(
        lsub, "verify", cmd_log_verify, "verify every byte, hash and signature of the log"
    )
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument(
        "--vkey", help="the log's verifier key (name+keyid+key), if not the store keyring's"
    )
    p = add_command(lsub, "show", cmd_log_show, "print log entries")
    p.add_argument("--since", type=int, default=0, help="first entry index (default 0)")
    p.add_argument("--limit", type=int, default=0, help="at most N entries")
    p.add_argument("--no-personal", action="store_true", help="do not open sealed fields")
    p = add_command(
        lsub, "checkpoint", cmd_log_checkpoint, "export the latest checkpoint for a DPO"
    )
    p.add_argument("--out", required=True)
    p = add_command(
        lsub,
        "repair",
        cmd_log_repair,
        "repair a damaged log: keep the damaged part aside, untouched, cut the log back to its "
        "last good batch and log the gap (the audit reports it as a FAIL, for good); stop every "
        "other process using the store first",
    )
    p.add_argument(
        "--reason", required=True, help="why the log is repaired (logged in the gap entry)"
    )


def cmd_log_verify(args: argparse.Namespace, out: TextIO) -> int:
    from ..log.checkpoint import CheckpointError, parse_vkey
    from ..log.verify import CHECKS, verify_log

    store = open_store(args.store)
    if args.vkey:
        try:
            _, public_key = parse_vkey(args.vkey)
        except CheckpointError as exc:
            raise InvalidArgument(f"--vkey: {exc}") from None
    else:
        public_key = store.public_key
    with Progress(store.log_storage.size(), "verifying") as bar:
        report = verify_log(
            store.log_storage,
            checkpoint_file=Path(args.checkpoint) if args.checkpoint else None,
            store_id=store.store_id,
            public_key=public_key,
            progress=bar.advance,
        )
    lines = [
        f"log {store.log_storage.location()}: {report.size:,} entries, "
        f"root {report.root.hex()[:16]}..., "
        f"{report.checkpoints} checkpoints (latest covers {report.latest_checkpoint})"
        + (" [SIMULATED store]" if report.simulated else "")
    ]
    for check in CHECKS:
        if check == "exported" and not report.exported_checked and not report.failed(check):
            lines.append(f"  {check:<12} -     (no --checkpoint given)")
            continue
        lines.append(f"  {check:<12} {'FAIL' if report.failed(check) else 'PASS'}")
    for f in report.findings:
        where = ", ".join(
            x for x in (f.where, None if f.index is None else f"entry {f.index}") if x
        )
        lines.append(f"FAIL {f.check}: {f.message}" + (f" ({where})" if where else ""))
    lines.extend(f"note: {n}" for n in report.notes)
    lines.append("VERIFIED" if report.ok else "VERIFICATION FAILED")
    emit(args, report.to_json(), "\n".join(lines), out)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_log_show(args: argparse.Namespace, out: TextIO) -> int:
    from ..log.writer import LogCorrupt, iter_entries

    store = open_store(args.store)
    keyring = None if args.no_personal else store.keyring
    docs = []
    try:
        for entry in iter_entries(store.log_storage, keyring, since=args.since):
            docs.append(entry.to_json())
            if args.limit and len(docs) >= args.limit:
                break
    except (LogCorrupt, ValueError) as exc:
        raise CommandFailed(f"the log cannot be read: {exc}; run 'sampledrec log verify'") from None
    if args.json:
        emit(args, {"entries": docs}, "", out)
        return EXIT_OK
    for d in docs:
        rest = {k: v for k, v in d.items() if k not in ("index", "type", "time")}
        fields = " ".join(f"{k}={_short(v)}" for k, v in rest.items())
        out.write(f"{d['index']:>8}  {d['time']}  {d['type']:<12} {fields}\n")
    return EXIT_OK


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def cmd_log_checkpoint(args: argparse.Namespace, out: TextIO) -> int:
    from ..log.format import T_KEY_COMMIT
    from ..log.verify import export_checkpoint
    from ..log.writer import iter_entries

    store = open_store(args.store)
    with store.open_log() as log:
        cp = log.checkpoint()
        public_key = log.signer.public_key
    commitments = [
        (e.index, str(e.fields["epoch_id"]), bytes(e.fields["commitment"]))
        for e in iter_entries(store.log_storage)
        if e.type == T_KEY_COMMIT and e.index < cp.size
    ]
    data = export_checkpoint(cp, public_key, commitments)
    Path(args.out).write_bytes(data)
    emit(
        args,
        json.loads(data),
        f"Exported the checkpoint of {cp.size:,} entries (root {cp.root.hex()[:16]}...) with "
        f"{len(commitments)} epoch-key commitments to {args.out}.\n"
        f"Verifier key: {store.vkey}\n"
        "Keep it outside the store: 'sampledrec log verify --checkpoint FILE' then detects a "
        "log rewritten or truncated after it.",
        out,
    )
    return EXIT_OK


def cmd_log_repair(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    report = store.repair_log(args.reason, principal=owner_name())
    emit(
        args,
        report.to_json(),
        ("Finished the interrupted repair of " if report.resumed else "Repaired ")
        + f"the log {store.log_storage.location()}.\n{report}\n"
        "The store decides and records again. 'sampledrec log verify' and the audit report "
        'the gap as a FAIL, for good: tell the DPO (docs/operations.md, "When the log is '
        "damaged\"), and export a new checkpoint for them ('sampledrec log checkpoint').",
        out,
    )
    return EXIT_OK
