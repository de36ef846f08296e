"""``sampledrec objections add`` and ``sampledrec subject export|erase|requests``: callers'
objections and data-subject requests.

The operator (the store's owner) confirms the requester's identity before running these
commands: the library trusts the number it is given (docs: sampledrec.subjects).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from ..errors import InvalidArgument
from ..store import Store
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    Commands,
    add_at,
    add_command,
    add_group,
    at_time,
    emit,
    iso_time,
    iso_us,
    open_store,
    owner_principal,
    read_lines,
    table,
)


def register(commands: Commands) -> None:
    osub = add_group(commands, "objections", "callers who objected to recording")
    p = add_command(
        osub, "add", cmd_objections_add, "add callers' numbers, read from a file or stdin"
    )
    p.add_argument("--file", default="-", help="one number per line ('-', the default: stdin)")

    ssub = add_group(commands, "subject", "data-subject requests: export, erase, deadlines")
    numbers_help = "callers' numbers, one per line ('-', the default: stdin); one request each"
    p = add_command(
        ssub,
        "export",
        cmd_subject_export,
        "write a caller's recordings and their metadata to a ZIP (identity checked first)",
    )
    p.add_argument("--file", default="-", help=numbers_help)
    p.add_argument(
        "--out",
        required=True,
        help="ZIP file to write (must not exist); several numbers: FILE-1.zip, FILE-2.zip, ...",
    )
    p = add_command(
        ssub,
        "erase",
        cmd_subject_erase,
        "crypto-shred a caller's recordings (exit 1 if a legal hold defers any)",
    )
    p.add_argument("--file", default="-", help=numbers_help)
    p = add_command(
        ssub, "requests", cmd_subject_requests, "open requests with their one-month deadline"
    )
    p.add_argument("--all", action="store_true", help="also list answered requests")
    add_at(p, "deadlines as of this time (ISO 8601; forward only)")


def cmd_objections_add(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    numbers = _numbers(args, store)
    objections = store.objections()
    before = len(objections)
    objections.add_all(numbers)  # all or none, in one atomic write
    added = len(objections) - before
    emit(
        args,
        {"read": len(numbers), "added": added, "total": len(objections)},
        f"Added {added} caller(s) to the objection list ({len(objections)} in all); "
        "numbers are kept only as keyed pseudonyms.",
        out,
    )
    return EXIT_OK


def _numbers(args: argparse.Namespace, store: Store) -> list[str]:
    """The numbers to act on, from a file or stdin (DESIGN.md §9), all checked before anything
    is saved or any request recorded, so that a typo does not leave half the list done."""
    from ..sampling.objections import normalize_number

    where = "standard input" if args.file == "-" else args.file
    numbers = read_lines(args.file)
    if not numbers:
        raise InvalidArgument(f"no phone number found in {where}; write one number per line")
    for i, number in enumerate(numbers, 1):
        try:
            normalize_number(number, region=store.region)
        except InvalidArgument as exc:
            raise InvalidArgument(f"number {i} of {where}: {exc}; nothing was done") from None
    return numbers


def cmd_subject_export(args: argparse.Namespace, out: TextIO) -> int:
    import zipfile

    from ..errors import InvalidRecording
    from ..retention.subjects import SubjectRequests
    from ..vault.recorder import Vault

    store = open_store(args.store)
    numbers = _numbers(args, store)
    target = Path(args.out)
    # One file per person: never two people's recordings in one archive.
    paths = (
        [target]
        if len(numbers) == 1
        else [
            target.with_name(f"{target.stem}-{i}{target.suffix}")
            for i in range(1, len(numbers) + 1)
        ]
    )
    for path in paths:
        if path.exists():
            raise InvalidArgument(f"{path} exists; choose a new --out file")
    who = owner_principal()
    docs = []
    with store.open_log() as log, Vault(store, log) as vault:
        subjects = SubjectRequests(store, vault, log)
        for number, path in zip(numbers, paths, strict=True):
            request = subjects.receive("export", number, principal=who)
            try:
                subjects.subject_export(number, path, principal=who, request=request)
            except InvalidRecording as exc:
                raise CommandFailed(f"request {request.request_id}: {exc}") from None
            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.read("metadata.json"))
            docs.append(
                {
                    "request_id": request.request_id,
                    "out": str(path),
                    "deadline": iso_us(request.deadline),
                    "recordings": [r["id"] for r in meta["recordings"]],
                    "not_included": meta["not_included"],
                }
            )
    rows = [(d["request_id"], len(d["recordings"]), len(d["not_included"]), d["out"]) for d in docs]
    text = (
        table(["request", "recordings", "not included", "file"], rows)
        + "\nEach file holds one person's recordings (WAV) and metadata.json; it is not "
        "encrypted: hand it over securely, then delete it."
    )
    emit(args, {"requests": docs}, text, out)
    return EXIT_OK


def cmd_subject_erase(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.subjects import SubjectRequests
    from ..vault.recorder import Vault

    store = open_store(args.store)
    numbers = _numbers(args, store)
    who = owner_principal()
    docs: list[dict[str, Any]] = []
    with store.open_log() as log, Vault(store, log) as vault:
        subjects = SubjectRequests(store, vault, log)
        for number in numbers:
            request = subjects.receive("erase", number, principal=who)
            outcomes = subjects.subject_erase(number, principal=who, request=request)
            docs.append(
                {
                    "request_id": request.request_id,
                    "status": request.status,
                    "detail": request.detail,
                    "recordings": [{"id": rid, "outcome": o} for rid, o in outcomes],
                }
            )
    deferred = [d for d in docs if d["status"] == "deferred"]
    rows = [
        (d["request_id"], r["id"], r["outcome"])
        for d in docs
        for r in d["recordings"] or [{"id": "(no recording found)", "outcome": "-"}]
    ]
    text = table(["request", "recording", "outcome"], rows) + "".join(
        f"\n{d['request_id']} DEFERRED: {d['detail']}" for d in deferred
    )
    emit(args, {"requests": docs}, text, out)
    return EXIT_FAILED if deferred else EXIT_OK


def cmd_subject_requests(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.subjects import SubjectRequests
    from ..vault.recorder import Vault

    store = open_store(args.store)
    at = at_time(args, store)
    with store.open_log() as log, Vault(store, log) as vault:
        subjects = SubjectRequests(store, vault, log)
        pending = subjects.open_requests(at)
        done = [r for r in subjects.requests() if r.status == "done"] if args.all else []
    docs = [p.to_json() for p in pending]
    rows: list[tuple[object, ...]] = [
        (
            p.request.request_id,
            p.received_at.isoformat()[:10],
            p.request.kind,
            p.request.status,
            p.deadline.isoformat()[:10],
            p.days_left,
            "OVERDUE" if p.overdue else "",
        )
        for p in pending
    ]
    for r in done:
        docs.append(
            {
                "request_id": r.request_id,
                "kind": r.kind,
                "status": r.status,
                "detail": r.detail,
                "received_at": iso_us(r.received_at),
                "deadline": iso_us(r.deadline),
                "completed_at": None if r.completed_at is None else iso_us(r.completed_at),
            }
        )
        rows.append((r.request_id, iso_us(r.received_at)[:10], r.kind, r.status, "-", "-", ""))
    overdue = sum(p.overdue for p in pending)
    text = (
        table(["request", "received", "kind", "status", "deadline", "days left", "note"], rows)
        if rows
        else "no open data-subject request"
    )
    if overdue:
        text += f"\n{overdue} request(s) OVERDUE: answer them now (one month from receipt)."
    emit(args, {"at": iso_time(at), "requests": docs, "overdue": overdue}, text, out)
    return EXIT_OK
