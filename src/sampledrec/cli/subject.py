"""``sampledrec objections add|remove`` and ``sampledrec subject
receive|verify|export|erase|requests``: callers' objections and data-subject requests.

Every change of the objection list is logged before the list is saved, one ``objection``
entry per caller (docs/decisions/0018-objections-logged.md), so that an audit replays it.

Nothing is exported or erased before the requester's identity is verified and recorded on the
request: ``--identity-method METHOD --identity-note TEXT`` (how it was checked; never an ID
number), by the operating-system user acting as the store's owner, now. ``subject verify``
records it later on a request received without it (``subject receive``), and ``--request ID``
then answers that request. The library decides (``SubjectRequests``); these commands read the
numbers (from a file or stdin, never the command line) and print the outcome.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import InvalidArgument
from ..retention.subjects import IDENTITY_METHODS, IdentityCheck, identity_json
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

if TYPE_CHECKING:
    from datetime import datetime

    from ..retention.subjects import PendingRequest, SubjectRequests
    from ..vault.catalog import SubjectRequest

_METHODS = ", ".join(IDENTITY_METHODS)


def register(commands: Commands) -> None:
    osub = add_group(commands, "objections", "callers who objected to recording")
    p = add_command(
        osub, "add", cmd_objections_add, "add callers' numbers, read from a file or stdin"
    )
    p.add_argument("--file", default="-", help="one number per line ('-', the default: stdin)")
    p = add_command(
        osub,
        "remove",
        cmd_objections_remove,
        "take callers off the list (they withdrew their objection); numbers from a file or stdin",
    )
    p.add_argument("--file", default="-", help="one number per line ('-', the default: stdin)")

    ssub = add_group(
        commands, "subject", "data-subject requests: receive, verify identity, export, erase"
    )
    numbers_help = "callers' numbers, one per line ('-', the default: stdin); one request each"
    p = add_command(
        ssub,
        "receive",
        cmd_subject_receive,
        "record requests when they arrive (due one month later), before answering them",
    )
    p.add_argument("--kind", required=True, choices=["export", "erase"], help="what is asked")
    p.add_argument("--file", default="-", help=numbers_help)
    _add_identity(p, required=False)
    p = add_command(
        ssub,
        "verify",
        cmd_subject_verify,
        "record how the requester's identity was verified, on a request received without it",
    )
    p.add_argument("request_id", help="the request ('subject requests' lists them)")
    _add_identity(p, required=True)
    p = add_command(
        ssub,
        "export",
        cmd_subject_export,
        "write a caller's recordings and their metadata to a ZIP, once the requester's "
        "identity is recorded",
    )
    p.add_argument("--file", default="-", help=numbers_help)
    p.add_argument(
        "--out",
        required=True,
        help="ZIP file to write (must not exist); several numbers: FILE-1.zip, FILE-2.zip, ...",
    )
    _add_identity(p, required=False)
    _add_request(p)
    p = add_command(
        ssub,
        "erase",
        cmd_subject_erase,
        "crypto-shred a caller's recordings, once the requester's identity is recorded (exit 1 "
        "if a legal hold defers any: they are erased when it ends)",
    )
    p.add_argument("--file", default="-", help=numbers_help)
    _add_identity(p, required=False)
    _add_request(p)
    p = add_command(
        ssub,
        "requests",
        cmd_subject_requests,
        "open requests with their identity check and one-month deadline",
    )
    p.add_argument("--all", action="store_true", help="also list answered requests")
    add_at(p, "deadlines as of this time (ISO 8601; forward only)")


def _add_identity(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--identity-method",
        required=required,
        choices=IDENTITY_METHODS,
        metavar="METHOD",
        help=f"how the requester's identity was verified, by you, now: {_METHODS}",
    )
    p.add_argument(
        "--identity-note",
        default="",
        metavar="TEXT",
        help="what was checked, in a few words (required with 'other'); never an ID document's "
        "number nor a copy of it",
    )


def _add_request(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--request",
        metavar="REQUEST_ID",
        help="answer this request (received earlier, one number) instead of a new one",
    )


def _identity(args: argparse.Namespace) -> IdentityCheck | None:
    if args.identity_method is None:
        if args.identity_note:
            raise InvalidArgument("--identity-note needs --identity-method; nothing was done")
        return None
    return IdentityCheck(args.identity_method, args.identity_note)


def _needs_identity(what: str) -> InvalidArgument:
    return InvalidArgument(
        f"the requester's identity must be verified before anything is {what}; nothing was "
        f"done. Check it, then add --identity-method METHOD ({_METHODS}) --identity-note TEXT "
        "(what you checked; never an ID number), or record it on a request received earlier "
        "with 'sampledrec subject verify REQUEST_ID ...' and add --request REQUEST_ID"
    )


def _request_arg(
    args: argparse.Namespace, subjects: SubjectRequests, kind: str, numbers: list[str]
) -> SubjectRequest | None:
    """The request named by ``--request``, checked: one number, the right kind, still due."""
    if args.request is None:
        return None
    if len(numbers) != 1:
        raise InvalidArgument(
            f"--request {args.request} answers one request: give exactly one number (read "
            f"{len(numbers)})"
        )
    for request in subjects.requests():
        if request.request_id == args.request:
            if request.kind != kind:
                raise InvalidArgument(
                    f"request {args.request} is an {request.kind} request, not an {kind} "
                    "request; use 'sampledrec subject " + request.kind + "'"
                )
            if request.status == "done":
                raise InvalidArgument(f"request {args.request} was answered already")
            return request
    raise InvalidArgument(
        f"no request {args.request!r}; 'sampledrec subject requests --all' lists them"
    )


def _identity_text(request: SubjectRequest) -> str:
    if request.identity_method is None:
        return "NOT VERIFIED"
    return f"{request.identity_method} ({request.identity_verified_by})"


def cmd_objections_add(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    numbers = _numbers(args, store)
    objections = store.objections()
    before = len(objections)
    objections.add_all(numbers)  # all or none: logged, then saved in one atomic write
    added = len(objections) - before
    emit(
        args,
        {"read": len(numbers), "added": added, "total": len(objections)},
        f"Added {added} caller(s) to the objection list ({len(objections)} in all); "
        "numbers are kept only as keyed pseudonyms, and each change is logged.",
        out,
    )
    return EXIT_OK


def cmd_objections_remove(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    numbers = _numbers(args, store)
    objections = store.objections()
    before = len(objections)
    objections.remove_all(numbers)  # all or none: logged, then saved in one atomic write
    removed = before - len(objections)
    emit(
        args,
        {"read": len(numbers), "removed": removed, "total": len(objections)},
        f"Removed {removed} caller(s) from the objection list ({len(objections)} left); "
        "each change is logged.",
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


def cmd_subject_receive(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.subjects import SubjectRequests
    from ..vault.recorder import Vault

    store = open_store(args.store)
    numbers = _numbers(args, store)
    identity = _identity(args)
    who = owner_principal()
    with store.open_log() as log, Vault(store, log) as vault:
        subjects = SubjectRequests(store, vault, log)
        received = [
            subjects.receive(args.kind, number, principal=who, identity=identity)
            for number in numbers
        ]
    docs = [_request_doc(r) for r in received]
    rows = [(r.request_id, r.kind, iso_us(r.deadline)[:10], _identity_text(r)) for r in received]
    text = table(["request", "kind", "deadline", "identity"], rows)
    if identity is None:
        text += (
            "\nVerify each requester's identity, record it with 'sampledrec subject verify "
            "REQUEST_ID --identity-method METHOD --identity-note TEXT', then answer with "
            f"'sampledrec subject {args.kind} --request REQUEST_ID'."
        )
    emit(args, {"requests": docs}, text, out)
    return EXIT_OK


def cmd_subject_verify(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.subjects import SubjectRequests
    from ..vault.recorder import Vault

    store = open_store(args.store)
    identity = _identity(args)
    assert identity is not None  # --identity-method is required
    with store.open_log() as log, Vault(store, log) as vault:
        subjects = SubjectRequests(store, vault, log)
        request = subjects.verify_identity(args.request_id, identity, principal=owner_principal())
    check = identity_json(request)
    assert check is not None
    text = (
        f"Request {request.request_id} ({request.kind}): identity verified by "
        f"{check['verified_by']} ({check['method']}) at {check['verified_at']}.\n"
        f"Answer it with 'sampledrec subject {request.kind} --request {request.request_id} "
        "--file NUMBER_FILE" + (" --out FILE.zip'." if request.kind == "export" else "'.")
    )
    emit(args, {"request": _request_doc(request)}, text, out)
    return EXIT_OK


def cmd_subject_export(args: argparse.Namespace, out: TextIO) -> int:
    import zipfile

    from ..errors import InvalidRecording
    from ..retention.subjects import SubjectRequests
    from ..vault.recorder import Vault

    store = open_store(args.store)
    numbers = _numbers(args, store)
    identity = _identity(args)
    if identity is None and args.request is None:
        raise _needs_identity("exported")  # before any request is recorded
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
        given = _request_arg(args, subjects, "export", numbers)
        for number, path in zip(numbers, paths, strict=True):
            request = given
            if request is None:
                request = subjects.receive("export", number, principal=who, identity=identity)
                identity_now = None  # recorded on the new request
            else:
                identity_now = identity
            try:
                subjects.subject_export(
                    number, path, principal=who, request=request, identity=identity_now
                )
            except InvalidRecording as exc:
                raise CommandFailed(f"request {request.request_id}: {exc}") from None
            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.read("metadata.json"))
            docs.append(
                {
                    "request_id": request.request_id,
                    "out": str(path),
                    "deadline": iso_us(request.deadline),
                    "identity": identity_json(request),
                    "recordings": [r["id"] for r in meta["recordings"]],
                    "not_included": meta["not_included"],
                }
            )
    rows = [
        (
            d["request_id"],
            f"{d['identity']['method']} ({d['identity']['verified_by']})",
            len(d["recordings"]),
            len(d["not_included"]),
            d["out"],
        )
        for d in docs
    ]
    text = (
        table(["request", "identity verified", "recordings", "not included", "file"], rows)
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
    identity = _identity(args)
    if identity is None and args.request is None:
        raise _needs_identity("erased")  # before any request is recorded
    who = owner_principal()
    docs: list[dict[str, Any]] = []
    with store.open_log() as log, Vault(store, log) as vault:
        subjects = SubjectRequests(store, vault, log)
        given = _request_arg(args, subjects, "erase", numbers)
        for number in numbers:
            request = given
            if request is None:
                request = subjects.receive("erase", number, principal=who, identity=identity)
                identity_now = None  # recorded on the new request
            else:
                identity_now = identity
            outcomes = subjects.subject_erase(
                number, principal=who, request=request, identity=identity_now
            )
            docs.append(
                {
                    "request_id": request.request_id,
                    "status": request.status,
                    "detail": request.detail,
                    "identity": identity_json(request),
                    "recordings": [{"id": rid, "outcome": o} for rid, o in outcomes],
                }
            )
    deferred = [d for d in docs if d["status"] == "deferred"]
    rows = [
        (d["request_id"], r["id"], r["outcome"])
        for d in docs
        for r in d["recordings"] or [{"id": "(no recording found)", "outcome": "-"}]
    ]
    text = table(["request", "recording", "outcome"], rows)
    text += "".join(
        f"\n{d['request_id']}: identity verified by {d['identity']['verified_by']} "
        f"({d['identity']['method']})"
        for d in docs
    )
    text += "".join(
        f"\n{d['request_id']} DEFERRED: {d['detail']}; it is carried out when the hold is "
        "released or ends (tell the person why, within the month)"
        for d in deferred
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
            p.state,
            _identity_text(p.request),
            p.deadline.isoformat()[:10],
            p.days_left,
            _note(p, at),
        )
        for p in pending
    ]
    for r in done:
        docs.append(_request_doc(r))
        rows.append(
            (
                r.request_id,
                iso_us(r.received_at)[:10],
                r.kind,
                r.status,
                _identity_text(r),
                "-",
                "-",
                "",
            )
        )
    overdue = sum(p.overdue for p in pending)
    unverified = sum(not p.request.identity_verified for p in pending)
    text = (
        table(
            ["request", "received", "kind", "status", "identity", "deadline", "days left", "note"],
            rows,
        )
        if rows
        else "no open data-subject request"
    )
    if overdue:
        text += f"\n{overdue} request(s) OVERDUE: answer them now (one month from receipt)."
    if unverified:
        text += (
            f"\n{unverified} request(s) without a verified identity: check it, then "
            "'sampledrec subject verify REQUEST_ID --identity-method METHOD'."
        )
    emit(args, {"at": iso_time(at), "requests": docs, "overdue": overdue}, text, out)
    return EXIT_OK


def _note(p: PendingRequest, at: datetime) -> str:
    if p.overdue:
        return "OVERDUE"
    if p.held_by and at >= p.deadline:
        return "past deadline: lawful delay (legal hold)"
    return ""


def _request_doc(r: SubjectRequest) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "kind": r.kind,
        "status": r.status,
        "detail": r.detail,
        "identity": identity_json(r),
        "received_at": iso_us(r.received_at),
        "deadline": iso_us(r.deadline),
        "completed_at": None if r.completed_at is None else iso_us(r.completed_at),
    }
