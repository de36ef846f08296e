"""The ``sampledrec`` command: a thin layer over the public API.

Exit codes (DESIGN.md §9): 0 done; 1 a check failed or an action was refused; 2 usage error;
3 the store could not be used at all. ``--json`` prints one JSON document, with 56-bit integers
as decimal strings. A user's mistake never prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from .._version import __version__
from ..clock import SYSTEM_CLOCK, FixedClock, parse_time
from ..errors import (
    AccessDenied,
    InvalidArgument,
    InvalidPolicy,
    KeyNotRevealable,
    KeyringError,
    SampledrecError,
    StoreError,
)
from ..sampling.policy import Policy
from ..store import Store
from ..vault.access import Principal
from ._progress import Progress

if TYPE_CHECKING:
    from ..vault.recorder import Principal

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3


class CommandFailed(Exception):
    """A check failed or an action was refused (exit 1); the message is shown as is."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str, out: TextIO) -> None:
    if getattr(args, "json", False):
        out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(text.rstrip("\n") + "\n")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _open_store(path: str) -> Store:
    return Store.open(path)


def _at(args: argparse.Namespace, store: Store | None = None) -> datetime:
    """The time to act at: ``--at`` if given (forward only, except in a simulated store)."""
    real = SYSTEM_CLOCK.now()
    if getattr(args, "at", None) is None:
        return real
    at = parse_time(args.at)
    if at < real and not (store is not None and store.simulated):
        raise InvalidArgument(
            f"--at {args.at} is in the past; --at may move the clock forward, never back "
            "(only a store made by 'sampledrec demo' may replay the past)"
        )
    return at


def _attrs(pairs: Sequence[str]) -> dict[str, str]:
    attrs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(
                f"--attr {pair!r} is not KEY=VALUE; write it like --attr queue=sales"
            )
        attrs[key.strip()] = value.strip()
    return attrs


def _read_lines(source: str) -> list[str]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# -- commands ---------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    try:
        store = Store.init(
            args.store,
            policy=args.policy,
            keys_dir=args.keys,
            simulated=args.simulated,
            region=args.region,
        )
    except InvalidPolicy as exc:
        raise CommandFailed(f"policy refused: {exc}") from None
    except FileNotFoundError as exc:
        raise InvalidArgument(f"--policy {exc.filename}: file not found") from None
    policy = store.policy()
    _emit(
        args,
        {
            "store": str(store.path),
            "keys": str(store.keys_path),
            "policy_version": policy.version,
            "simulated": store.simulated,
            "region": store.region,
            "vkey": store.vkey,
        },
        f"Created store {store.path}\n"
        f"  keys:    {store.keys_path} (keep this folder out of backups: docs/operations.md)\n"
        f"  policy:  {store.policy_path} (version {policy.version[:16]})\n"
        + (f"  region:  {store.region} (national phone numbers)\n" if store.region else "")
        + f"  log verifier key (give it to your DPO and auditor):\n    {store.vkey}"
        + ("\n  marked simulated: for demos and tests only" if store.simulated else ""),
        out,
    )
    return EXIT_OK


def cmd_policy_check(args: argparse.Namespace, out: TextIO) -> int:
    try:
        policy = Policy.load(args.file)
    except InvalidPolicy as exc:
        if args.json:
            _emit(args, {"ok": False, "error": str(exc)}, "", out)
            return EXIT_FAILED
        raise CommandFailed(str(exc)) from None
    rows = [
        (
            r.name,
            ", ".join(f"{k}={'|'.join(sorted(v))}" for k, v in r.match.items()) or "(all other)",
            r.rate,
            r.purpose,
            r.retention.text,
            _caps_text(r.max_per_agent_per_day, r.max_per_agent_per_week),
        )
        for r in policy.all_rules
    ]
    text = (
        f"{args.file}: OK, version {policy.version}\n"
        + _table(["rule", "match", "rate", "purpose", "retention", "cap/agent"], rows)
        + "".join(f"\nwarning: {w}" for w in policy.warnings)
    )
    doc = {
        "ok": True,
        "file": str(args.file),
        "version": policy.version,
        "canonical": json.loads(policy.canonical),
        "warnings": list(policy.warnings),
    }
    _emit(args, doc, text, out)
    return EXIT_OK


def _caps_text(day: int | None, week: int | None) -> str:
    parts = []
    if day is not None:
        parts.append(f"{day}/day")
    if week is not None:
        parts.append(f"{week}/week")
    return ", ".join(parts) or "-"


def cmd_policy_simulate(args: argparse.Namespace, out: TextIO) -> int:
    from ..sampling.simulate import simulate_policy

    try:
        policy = Policy.load(args.file)
    except InvalidPolicy as exc:
        raise CommandFailed(str(exc)) from None
    if args.calls < 1:
        raise InvalidArgument(f"--calls {args.calls} must be at least 1")
    with Progress(args.calls, "simulating") as bar:
        result = simulate_policy(
            policy,
            args.calls,
            agents=args.agents,
            days=args.days,
            seed=args.seed,
            progress=bar.advance,
        )
    rule_rows = [
        (r.rule, r.rate, r.calls, f"{r.expected:.1f}", r.selected, r.capped) for r in result.rules
    ]
    agent_rows = [(a, f"{e:.1f}", s) for a, (e, s) in result.agents.items()]
    text = (
        f"{result.calls:,} simulated calls over {args.days} day(s), {args.agents} agents\n\n"
        + _table(["rule", "rate", "calls", "expected", "simulated", "capped"], rule_rows)
        + "\n\n"
        + _table(["agent", "expected", "simulated"], agent_rows)
    )
    _emit(args, {"version": policy.version, **result.to_json()}, text, out)
    return EXIT_OK


def cmd_decide(args: argparse.Namespace, out: TextIO) -> int:
    store = _open_store(args.store)
    at = _at(args, store)
    caller = None
    if args.caller_file is not None:
        lines = _read_lines(args.caller_file)
        if len(lines) != 1:
            raise InvalidArgument(
                f"--caller-file must hold exactly one phone number, found {len(lines)}"
            )
        caller = lines[0]
    clock = FixedClock(at)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        decision = sampler.decide(args.call_ref, _attrs(args.attr), caller=caller)
        index = log.wait_durable(decision.log_ticket) if decision.log_ticket else -1
    verdict = "RECORD" if decision.record else "do not record"
    text = (
        f"{verdict} ({decision.reason})\n"
        f"  call ref: {_ref_text(decision.call_ref)}\n"
        f"  rule:     {decision.rule} (purpose {decision.purpose}, rate {decision.rate})\n"
        f"  draw:     {decision.draw} {'<' if decision.draw < decision.threshold else '>='} "
        f"threshold {decision.threshold}\n"
        f"  epoch:    {decision.epoch_id}, policy {decision.policy_version[:16]}\n"
        f"  logged:   entry {index} of {store.path / 'log'}"
    )
    _emit(args, {**decision.to_json(), "log_index": index}, text, out)
    return EXIT_OK


def _ref_text(ref: str | bytes) -> str:
    return ref if isinstance(ref, str) else f"0x{ref.hex()}"


def cmd_keys_reveal(args: argparse.Namespace, out: TextIO) -> int:
    store = _open_store(args.store)
    real = SYSTEM_CLOCK.now()
    at = parse_time(args.at) if args.at else real
    if at < real:
        raise InvalidArgument(
            f"--at {args.at} is in the past; --at may only move the clock forward"
        )
    try:
        keys = store.reveal_keys(now=at, real_now=real)
    except KeyNotRevealable as exc:
        raise CommandFailed(str(exc)) from None
    except InvalidArgument as exc:
        raise CommandFailed(str(exc)) from None
    store.write_revealed(keys, args.out)
    epochs = [k.epoch_id for k in keys]
    text = (
        f"Revealed {len(keys)} ended epoch key(s) to {args.out}"
        + (f": {epochs[0]} .. {epochs[-1]}" if epochs else " (no epoch has ended yet)")
        + ("\nThis store is SIMULATED (made by 'sampledrec demo')." if store.simulated else "")
    )
    doc = {
        "out": str(args.out),
        "simulated": store.simulated,
        "epochs": [{"epoch_id": k.epoch_id, "commitment": k.commitment.hex()} for k in keys],
    }
    _emit(args, doc, text, out)
    return EXIT_OK


def cmd_objections_add(args: argparse.Namespace, out: TextIO) -> int:
    store = _open_store(args.store)
    numbers = _read_lines(args.file)
    if not numbers:
        raise InvalidArgument(
            f"no phone number found in {'standard input' if args.file == '-' else args.file}"
        )
    objections = store.objections()
    before = len(objections)
    for number in numbers:
        objections.add(number)
    added = len(objections) - before
    _emit(
        args,
        {"read": len(numbers), "added": added, "total": len(objections)},
        f"Added {added} caller(s) to the objection list ({len(objections)} in all); "
        "numbers are kept only as keyed pseudonyms.",
        out,
    )
    return EXIT_OK


# -- data-subject requests ----------------------------------------------------------------------
# The operator (the store's owner) confirms the requester's identity before running these
# commands: the library trusts the number it is given (docs: sampledrec.subjects).


def _subject_numbers(args: argparse.Namespace, store: Store) -> list[str]:
    """The numbers to act on, from a file or stdin (DESIGN.md §9), all checked before any
    request is recorded, so that a typo does not leave half the list answered."""
    from ..sampling.objections import normalize_number

    where = "standard input" if args.file == "-" else args.file
    numbers = _read_lines(args.file)
    if not numbers:
        raise InvalidArgument(f"no phone number found in {where}; write one number per line")
    for i, number in enumerate(numbers, 1):
        try:
            normalize_number(number, region=store.region)
        except InvalidArgument as exc:
            raise InvalidArgument(f"number {i} of {where}: {exc}") from None
    return numbers


def _owner_principal() -> Principal:
    from ..vault.recorder import Principal

    return Principal.owner(_owner())


def cmd_subject_export(args: argparse.Namespace, out: TextIO) -> int:
    import zipfile

    from ..errors import InvalidRecording
    from ..retention.subjects import SubjectRequests
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    numbers = _subject_numbers(args, store)
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
    who = _owner_principal()
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
                    "deadline": _iso_us(request.deadline),
                    "recordings": [r["id"] for r in meta["recordings"]],
                    "not_included": meta["not_included"],
                }
            )
    rows = [(d["request_id"], len(d["recordings"]), len(d["not_included"]), d["out"]) for d in docs]
    text = (
        _table(["request", "recordings", "not included", "file"], rows)
        + "\nEach file holds one person's recordings (WAV) and metadata.json; it is not "
        "encrypted: hand it over securely, then delete it."
    )
    _emit(args, {"requests": docs}, text, out)
    return EXIT_OK


def cmd_subject_erase(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.subjects import SubjectRequests
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    numbers = _subject_numbers(args, store)
    who = _owner_principal()
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
    text = _table(["request", "recording", "outcome"], rows) + "".join(
        f"\n{d['request_id']} DEFERRED: {d['detail']}" for d in deferred
    )
    _emit(args, {"requests": docs}, text, out)
    return EXIT_FAILED if deferred else EXIT_OK


def cmd_subject_requests(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.subjects import SubjectRequests
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    at = _at(args, store)
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
                "received_at": _iso_us(r.received_at),
                "deadline": _iso_us(r.deadline),
                "completed_at": None if r.completed_at is None else _iso_us(r.completed_at),
            }
        )
        rows.append((r.request_id, _iso_us(r.received_at)[:10], r.kind, r.status, "-", "-", ""))
    overdue = sum(p.overdue for p in pending)
    text = (
        _table(["request", "received", "kind", "status", "deadline", "days left", "note"], rows)
        if rows
        else "no open data-subject request"
    )
    if overdue:
        text += f"\n{overdue} request(s) OVERDUE: answer them now (one month from receipt)."
    _emit(args, {"at": at.isoformat(), "requests": docs, "overdue": overdue}, text, out)
    return EXIT_OK


def cmd_policy_apply(args: argparse.Namespace, out: TextIO) -> int:
    store = _open_store(args.store)
    effective = _at(args, store)
    try:
        policy = store.apply_policy(args.file, effective_at=effective)
    except InvalidPolicy as exc:
        raise CommandFailed(f"policy refused: {exc}") from None
    _emit(
        args,
        {"version": policy.version, "effective_at": effective.isoformat()},
        f"Applied policy {policy.version} (effective {effective.isoformat()}); "
        "it is in the decision log, and running samplers pick it up within a second.",
        out,
    )
    return EXIT_OK


def cmd_log_verify(args: argparse.Namespace, out: TextIO) -> int:
    from ..log.checkpoint import CheckpointError, parse_vkey
    from ..log.verify import CHECKS, verify_log

    store = _open_store(args.store)
    if args.vkey:
        try:
            _, public_key = parse_vkey(args.vkey)
        except CheckpointError as exc:
            raise InvalidArgument(f"--vkey: {exc}") from None
    else:
        public_key = store.public_key
    total = sum(p.stat().st_size for p in (store.path / "log").glob("seg-*.log"))
    with Progress(total, "verifying") as bar:
        report = verify_log(
            store.path,
            checkpoint_file=Path(args.checkpoint) if args.checkpoint else None,
            store_id=store.store_id,
            public_key=public_key,
            progress=bar.advance,
        )
    lines = [
        f"log {store.path / 'log'}: {report.size:,} entries, root {report.root.hex()[:16]}..., "
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
    _emit(args, report.to_json(), "\n".join(lines), out)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_log_show(args: argparse.Namespace, out: TextIO) -> int:
    from ..log.writer import LogCorrupt, iter_entries

    store = _open_store(args.store)
    keyring = None if args.no_personal else store.keyring
    docs = []
    try:
        for entry in iter_entries(store.path / "log", keyring, since=args.since):
            docs.append(entry.to_json())
            if args.limit and len(docs) >= args.limit:
                break
    except (LogCorrupt, ValueError) as exc:
        raise CommandFailed(f"the log cannot be read: {exc}; run 'sampledrec log verify'") from None
    if args.json:
        _emit(args, {"entries": docs}, "", out)
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

    store = _open_store(args.store)
    with store.open_log() as log:
        cp = log.checkpoint()
        public_key = log.signer.public_key
    commitments = [
        (e.index, str(e.fields["epoch_id"]), bytes(e.fields["commitment"]))
        for e in iter_entries(store.path / "log")
        if e.type == T_KEY_COMMIT and e.index < cp.size
    ]
    data = export_checkpoint(cp, public_key, commitments)
    Path(args.out).write_bytes(data)
    _emit(
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


def _pause_spans(texts: Sequence[str]) -> list[tuple[float, float]]:
    spans = []
    for text in texts:
        start, sep, end = text.partition("-")
        try:
            a, b = float(start), float(end)
        except ValueError:
            a = b = -1.0
        if not sep or not 0 <= a < b:
            raise InvalidArgument(
                f"--pause {text!r} is not START-END in seconds (for example --pause 12.5-31)"
            )
        spans.append((a, b))
    return spans


def cmd_record(args: argparse.Namespace, out: TextIO) -> int:
    from ..errors import NotSelected
    from ..vault.audio import frames, read_audio_file
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    spans = _pause_spans(args.pause)
    fmt, audio = read_audio_file(args.audio)
    at = _at(args, store)
    clock = FixedClock(at)
    with store.open_log(clock=clock) as log:
        sampler = store.sampler(clock=clock, log=log)
        attrs = _attrs(args.attr)
        decision = sampler.decide(args.call_ref, attrs)
        with Vault(store, log, clock=clock) as vault:
            try:
                recorder = vault.record(decision, audio_format=fmt, attrs=attrs)
            except NotSelected as exc:
                log.flush()
                if args.json:
                    _emit(args, {"recorded": False, **decision.to_json()}, "", out)
                    return EXIT_FAILED
                raise CommandFailed(f"{exc} (the decision is logged)") from None
            ms = 0
            with recorder:
                for frame in frames(audio, fmt, 20):
                    seconds = ms / 1000
                    if any(a <= seconds < b for a, b in spans):
                        recorder.pause()
                    else:
                        recorder.resume()
                    recorder.write(frame)
                    ms += 20
            row = recorder.row
    doc = {"recorded": True, **decision.to_json(), "recording": row.to_json()}
    text = (
        f"RECORDED {row.recording_id}\n"
        f"  call ref: {_ref_text(decision.call_ref)} (rule {decision.rule}, purpose "
        f"{decision.purpose})\n"
        f"  audio:    {row.duration_ms / 1000 if row.duration_ms else 0:.2f} s, "
        f"{row.audio_format}, encrypted ({row.ciphertext_bytes} bytes, sha256 "
        f"{(row.ciphertext_sha256 or '')[:16]}...)\n"
        f"  pauses:   {', '.join(f'{a}-{b} ms' for a, b in row.pauses) or 'none'}\n"
        f"  expires:  {_iso_us(row.expires_at)}"
    )
    _emit(args, doc, text, out)
    return EXIT_OK


def _iso_us(us: int) -> str:
    from ..log.format import from_micros

    return from_micros(us).isoformat()


def cmd_recordings_list(args: argparse.Namespace, out: TextIO) -> int:
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    with store.open_log() as log, Vault(store, log) as vault:
        rows = vault.recordings(principal=Principal.owner(_owner()))
    docs = [r.to_json() for r in rows]
    if args.json:
        _emit(args, {"recordings": docs}, "", out)
        return EXIT_OK
    table = [
        (
            r.recording_id,
            r.status,
            r.rule,
            f"{(r.duration_ms or 0) / 1000:.1f}s",
            _iso_us(r.started_at)[:19],
            _iso_us(r.expires_at)[:10],
        )
        for r in rows
    ]
    out.write(
        _table(["id", "status", "rule", "duration", "started (UTC)", "expires"], table) + "\n"
        if table
        else "no recordings\n"
    )
    return EXIT_OK


def cmd_recordings_export(args: argparse.Namespace, out: TextIO) -> int:
    from ..errors import InvalidRecording, RecordingExpired, RecordingNotFound
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    at = _at(args, store)
    with store.open_log() as log, Vault(store, log) as vault:
        try:
            path = vault.export(args.id, args.out, Principal.owner(_owner()), at=at)
        except (RecordingExpired, RecordingNotFound, InvalidRecording) as exc:
            raise CommandFailed(str(exc)) from None
    _emit(args, {"id": args.id, "out": str(path)}, f"Exported {args.id} to {path}", out)
    return EXIT_OK


def cmd_recordings_recover(args: argparse.Namespace, out: TextIO) -> int:
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    with store.open_log() as log, Vault(store, log) as vault:
        outcomes = vault.recover()
    _emit(
        args,
        {"recovered": [{"id": i, "outcome": o} for i, o in outcomes]},
        "\n".join(f"{i}: {o}" for i, o in outcomes) or "no recording was left open",
        out,
    )
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.sweep import Retention
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    at = _at(args, store)
    clock = FixedClock(at)
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        total = len(vault.catalog.find(status=["sealed", "truncated", "expiring"]))
        with Progress(total, "sweeping") as bar:
            report = Retention(vault, clock=clock).sweep(
                at, dry_run=args.dry_run, progress=bar.advance
            )
    rows = [
        ("recordings expired", len(report.expired)),
        ("kept by legal holds", report.held),
        ("expiry buckets destroyed", len(report.buckets_destroyed)),
        ("holds ended", len(report.holds_released)),
        ("log detail keys destroyed", len(report.log_keys_destroyed)),
    ]
    text = (
        f"Sweep at {at.isoformat()}{' (dry run: nothing changed)' if args.dry_run else ''}\n"
        + _table(["", "count"], rows)
    )
    _emit(args, report.to_json(), text, out)
    return EXIT_OK


def _hold_doc(hold: Any) -> dict[str, Any]:
    return {
        "hold_id": hold.hold_id,
        "reason": hold.reason,
        "created_at": _iso_us(hold.created_at),
        "until": None if hold.until is None else _iso_us(hold.until),
        "released_at": None if hold.released_at is None else _iso_us(hold.released_at),
    }


def cmd_hold_add(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.sweep import Retention
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    query: dict[str, Any] = {}
    if args.rule:
        query["rule"] = args.rule
    if args.agent:
        query["agent"] = args.agent
    if args.since:
        query["from"] = parse_time(args.since)
    if args.before:
        query["to"] = parse_time(args.before)
    if not args.ids and not query:
        raise InvalidArgument(
            "name the recordings to hold: ids, or --rule/--agent/--since/--before"
        )
    until = parse_time(args.until) if args.until else None
    with store.open_log() as log, Vault(store, log) as vault:
        retention = Retention(vault)
        selector: Any = args.ids if args.ids else query
        if args.ids and query:
            selector = {**query, "ids": args.ids}
        hold = retention.hold(selector, reason=args.reason, until=until, principal=_owner())
        members = vault.catalog.hold_members(hold.hold_id)
    doc = {**_hold_doc(hold), "recordings": [rid for rid, _ in members]}
    _emit(
        args,
        doc,
        f"Hold {hold.hold_id} placed on {len(members)} recording(s): {hold.reason}"
        + (f" (until {doc['until']})" if hold.until else " (until released)"),
        out,
    )
    return EXIT_OK


def cmd_hold_release(args: argparse.Namespace, out: TextIO) -> int:
    from ..retention.sweep import Retention
    from ..vault.recorder import Vault

    store = _open_store(args.store)
    with store.open_log() as log, Vault(store, log) as vault:
        hold = Retention(vault).release(args.hold_id, principal=_owner())
    _emit(args, _hold_doc(hold), f"Hold {hold.hold_id} released", out)
    return EXIT_OK


def cmd_hold_list(args: argparse.Namespace, out: TextIO) -> int:
    from ..vault.catalog import SqliteCatalog

    store = _open_store(args.store)
    catalog = SqliteCatalog(store.path / "catalog.sqlite")
    try:
        holds = [
            {**_hold_doc(h), "recordings": len(catalog.hold_members(h.hold_id))}
            for h in catalog.holds()
        ]
    finally:
        catalog.close()
    if args.json:
        _emit(args, {"holds": holds}, "", out)
        return EXIT_OK
    rows = [
        (
            h["hold_id"],
            h["recordings"],
            h["created_at"][:10],
            h["until"] or "-",
            "released" if h["released_at"] else "active",
            h["reason"],
        )
        for h in holds
    ]
    out.write(
        (
            _table(["hold", "recordings", "placed", "until", "status", "reason"], rows)
            if rows
            else "no holds"
        )
        + "\n"
    )
    return EXIT_OK


def _owner() -> str:
    """The operating-system user, as whom the CLI acts: the store's owner (DESIGN.md §9)."""
    import getpass

    return getpass.getuser()


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from ..demo import run_demo

    if args.calls < 1:
        raise InvalidArgument(f"--calls {args.calls} must be at least 1")
    with Progress(args.calls, "deciding") as bar:
        result = run_demo(args.store, calls=args.calls, seed=args.seed, progress=bar.advance)
    rows = [
        (
            r["rule"],
            r["purpose"],
            r["rate"],
            r["calls"],
            r["selected"],
            f"{r['expected']:.1f}",
            r["objections"],
            r["capped"],
        )
        for r in result.rules
    ]
    ok = (
        result.key_matches_commitment
        and result.mismatches == 0
        and result.log_ok
        and result.readable_after_a_year == 0
        and result.audit_ok
    )
    text = (
        f"sampledrec demo: a SIMULATED call-centre day ({result.day}) in {result.store}\n\n"
        + _table(
            ["rule", "purpose", "rate", "calls", "selected", "expected", "objected", "capped"],
            rows,
        )
        + f"\n\n{result.selected} of {result.calls} calls selected for recording; "
        f"{result.objections} callers objected and were not recorded; "
        f"{result.capped} calls hit an agent's daily cap.\n"
        f"Auditor check: the day's key matches its commitment: "
        f"{'yes' if result.key_matches_commitment else 'NO'}; "
        f"{result.recomputed} decisions recomputed from the revealed key, "
        f"{result.mismatches} mismatches.\n"
        f"Decision log: {result.log_entries:,} entries, signed and verified: "
        f"{'PASS' if result.log_ok else 'FAIL ' + '; '.join(result.log_findings)}.\n"
        f"Recorded {len(result.recordings)} calls, encrypted in the vault"
        + (f"; one exported to {result.exported}" if result.exported else "")
        + ".\n"
        f"A year later: the sweep expired {result.swept} recordings and destroyed "
        f"{result.buckets_destroyed} expiry-bucket keys; recordings still readable: "
        f"{result.readable_after_a_year}.\n"
        f"Audit verify: {'PASS' if result.audit_ok else 'FAIL'} ("
        + ", ".join(f"{k} {v}" for k, v in result.audit_checks.items())
        + ")"
        + (f"; DPO report: {result.report}" if result.report else "")
        + ".\n"
        f"Revealed keys: {result.store / 'revealed-keys.json'}\n"
        f"Try: sampledrec decide --store {result.store} --call-ref my-call-1 --attr queue=sales"
    )
    _emit(args, result.to_json(), text, out)
    return EXIT_OK if ok else EXIT_FAILED


def _audit(args: argparse.Namespace, store: Any, **kw: Any) -> Any:
    """``audit_verify`` with a progress bar: the log is gone through twice (verified, then read)."""
    from ..audit.verify import audit_verify

    total = sum(p.stat().st_size for p in (store.path / "log").glob("seg-*.log"))
    with Progress(2 * total, "auditing") as bar:
        return audit_verify(
            store.path,
            Path(args.revealed_keys),
            progress=bar.advance,
            now=_at(args, store),
            **kw,
        )


def cmd_audit_verify(args: argparse.Namespace, out: TextIO) -> int:
    store = _open_store(args.store)
    report = _audit(
        args,
        store,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        cdr=Path(args.cdr) if args.cdr else None,
    )
    _emit(args, report.to_json(), report.to_text(), out)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_audit_report(args: argparse.Namespace, out: TextIO) -> int:
    from ..audit.report import render, write_page

    store = _open_store(args.store)
    audit = _audit(args, store) if args.revealed_keys else None
    text, ok = render(
        store.path, revealed_keys=args.revealed_keys, audit=audit, now=_at(args, store)
    )
    target = Path(args.out)
    write_page(target, text)
    _emit(
        args,
        {"out": str(target), "ok": ok, "simulated": store.simulated},
        f"Wrote {target} (verification {'PASS' if ok else 'FAIL'}"
        + (", SIMULATED store" if store.simulated else "")
        + ")",
        out,
    )
    return EXIT_OK if ok else EXIT_FAILED


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sampledrec",
        description="Auditable random sampling of call recordings.",
        epilog="Exit codes: 0 done, 1 check failed or refused, 2 usage error, 3 store unusable.",
    )
    parser.add_argument("--version", action="version", version=f"sampledrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(
        name: str,
        func: Callable[[argparse.Namespace, TextIO], int],
        help: str,
        parent: Any = sub,
        *,
        store: bool = False,
        json: bool = False,
    ) -> argparse.ArgumentParser:
        """A command; ``store``: it takes ``--store STORE``; ``json``: it can answer in JSON."""
        p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if store:
            p.add_argument("--store", required=True, help="the store folder")
        if json:
            p.add_argument("--json", action="store_true", help="print one JSON document")
        return p

    p = add("init", cmd_init, "create a store (default policy: quality, 5%, 6 months)", json=True)
    p.add_argument("store", help="folder to create")
    p.add_argument("--policy", help="policy TOML file to start with")
    p.add_argument("--keys", help="keyring folder, kept apart from the store (default STORE/keys)")
    p.add_argument(
        "--simulated",
        action="store_true",
        help="mark the store as simulated (demos and tests; shown in every report)",
    )
    p.add_argument(
        "--region",
        help="country whose national phone numbers callers use (ISO 3166 code, e.g. FR)",
    )

    policy = sub.add_parser("policy", help="check or simulate a policy file")
    psub = policy.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    p = add("check", cmd_policy_check, "check a policy file and show its rules", psub, json=True)
    p.add_argument("file")
    p = add(
        "simulate",
        cmd_policy_simulate,
        "expected and simulated recordings per rule and per agent",
        psub,
        json=True,
    )
    p.add_argument("file")
    p.add_argument("--calls", type=int, required=True, help="number of calls to simulate")
    p.add_argument("--agents", type=int, default=20, help="number of agents (default 20)")
    p.add_argument("--days", type=int, default=1, help="spread the calls over D days")
    p.add_argument("--seed", type=int, help="random seed, for a repeatable simulation")

    p = add(
        "apply",
        cmd_policy_apply,
        "log a new policy version and schedule it",
        psub,
        store=True,
        json=True,
    )
    p.add_argument("file")
    p.add_argument("--at", help="when it takes effect (ISO 8601; default now, forward only)")

    logp = sub.add_parser("log", help="the signed decision log")
    lsub = logp.add_subparsers(dest="log_command", required=True, parser_class=_Parser)
    p = add(
        "verify",
        cmd_log_verify,
        "verify every byte, hash and signature of the log",
        lsub,
        store=True,
        json=True,
    )
    p.add_argument("--checkpoint", help="an exported checkpoint kept outside the store")
    p.add_argument(
        "--vkey", help="the log's verifier key (name+keyid+key), if not the store keyring's"
    )
    p = add("show", cmd_log_show, "print log entries", lsub, store=True, json=True)
    p.add_argument("--since", type=int, default=0, help="first entry index (default 0)")
    p.add_argument("--limit", type=int, default=0, help="at most N entries")
    p.add_argument("--no-personal", action="store_true", help="do not open sealed fields")
    p = add(
        "checkpoint",
        cmd_log_checkpoint,
        "export the latest checkpoint for a DPO",
        lsub,
        store=True,
        json=True,
    )
    p.add_argument("--out", required=True)

    p = add(
        "record",
        cmd_record,
        "decide, and if selected record an audio file (20 ms frames)",
        store=True,
        json=True,
    )
    p.add_argument("--call-ref", required=True)
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--audio", required=True, help="WAV (or any format ffmpeg reads)")
    p.add_argument(
        "--pause",
        action="append",
        default=[],
        metavar="START-END",
        help="mask a span (seconds) as silence, e.g. a card payment (repeatable)",
    )
    p.add_argument("--at", help="act at this time (ISO 8601; forward only)")

    recs = sub.add_parser("recordings", help="list, export and recover recordings")
    rsub = recs.add_subparsers(dest="recordings_command", required=True, parser_class=_Parser)
    p = add("list", cmd_recordings_list, "list the recordings", rsub, store=True, json=True)
    p = add(
        "export",
        cmd_recordings_export,
        "export a recording as a WAV file",
        rsub,
        store=True,
        json=True,
    )
    p.add_argument("id")
    p.add_argument("--out", required=True, help="the WAV file to write (must not exist)")
    p.add_argument("--at", help="as of this time (forward only): expired recordings are refused")
    p = add(
        "recover",
        cmd_recordings_recover,
        "re-seal or destroy recordings left open",
        rsub,
        store=True,
        json=True,
    )

    p = add(
        "sweep",
        cmd_sweep,
        "expire what is due: crypto-shred recordings and keys",
        store=True,
        json=True,
    )
    p.add_argument("--at", help="sweep as of this time (ISO 8601; forward only)")
    p.add_argument(
        "--dry-run", action="store_true", help="report what would expire, change nothing"
    )

    holds = sub.add_parser("hold", help="legal holds")
    hsub = holds.add_subparsers(dest="hold_command", required=True, parser_class=_Parser)
    p = add(
        "add",
        cmd_hold_add,
        "hold recordings (ids or a query) past their expiry",
        hsub,
        store=True,
        json=True,
    )
    p.add_argument("ids", nargs="*", help="recording ids")
    p.add_argument("--reason", required=True, help="the case or request behind the hold")
    p.add_argument("--until", help="when the hold ends (default: until released)")
    p.add_argument("--rule", help="hold the recordings of this rule")
    p.add_argument("--agent", help="hold the recordings of this agent")
    p.add_argument("--since", help="recordings started at or after this time")
    p.add_argument("--before", help="recordings started before this time")
    p = add("release", cmd_hold_release, "release a hold", hsub, store=True, json=True)
    p.add_argument("hold_id")
    p = add("list", cmd_hold_list, "list the holds", hsub, store=True, json=True)

    p = add("decide", cmd_decide, "decide whether to record one call", store=True, json=True)
    p.add_argument("--call-ref", required=True, help="the call's reference (SIP Call-ID, ...)")
    p.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a call attribute (repeat); objection=true means the caller objected",
    )
    p.add_argument(
        "--caller-file",
        metavar="FILE",
        help="file holding the caller's number ('-' for standard input)",
    )
    p.add_argument("--at", help="decide at this time (ISO 8601; forward only)")

    # audit verify (the auditor's checks); other audit commands go in the same ``asub`` group
    audit = sub.add_parser("audit", help="independent verification for an auditor or DPO")
    asub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    p = add(
        "verify",
        cmd_audit_verify,
        "verify the log, revealed keys, decisions, recordings, call records and rates",
        asub,
        store=True,
        json=True,
    )
    p.add_argument("--revealed-keys", required=True, help="file written by 'keys reveal'")
    p.add_argument("--checkpoint", help="an exported checkpoint kept outside the store")
    p.add_argument("--cdr", help="the carrier's call records (CSV, or Parquet with pyarrow)")
    p.add_argument("--at", help="audit time for expiry checks (ISO 8601; forward only)")
    p = add(
        "report",
        cmd_audit_report,
        "write a self-contained HTML report for the data-protection officer",
        asub,
        store=True,
        json=True,
    )
    p.add_argument(
        "--revealed-keys", help="file written by 'keys reveal' (then the full audit is shown)"
    )
    p.add_argument("--out", required=True, help="the HTML file to write (0600)")
    p.add_argument("--at", help="report as of this time (ISO 8601; forward only)")

    keys = sub.add_parser("keys", help="epoch keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    p = add(
        "reveal",
        cmd_keys_reveal,
        "write the keys of ended epochs for an auditor",
        ksub,
        store=True,
        json=True,
    )
    p.add_argument("--out", required=True, help="JSON file to write (0600)")
    p.add_argument("--at", help="reveal as of this time (simulated stores only may go ahead)")

    obj = sub.add_parser("objections", help="callers who objected to recording")
    osub = obj.add_subparsers(dest="objections_command", required=True, parser_class=_Parser)
    p = add(
        "add",
        cmd_objections_add,
        "add callers' numbers, read from a file or stdin",
        osub,
        store=True,
        json=True,
    )
    p.add_argument("--file", default="-", help="one number per line ('-', the default: stdin)")

    subj = sub.add_parser("subject", help="data-subject requests: export, erase, deadlines")
    ssub = subj.add_subparsers(dest="subject_command", required=True, parser_class=_Parser)
    numbers_help = "callers' numbers, one per line ('-', the default: stdin); one request each"
    p = add(
        "export",
        cmd_subject_export,
        "write a caller's recordings and their metadata to a ZIP (identity checked first)",
        ssub,
        store=True,
        json=True,
    )
    p.add_argument("--file", default="-", help=numbers_help)
    p.add_argument(
        "--out",
        required=True,
        help="ZIP file to write (must not exist); several numbers: FILE-1.zip, FILE-2.zip, ...",
    )
    p = add(
        "erase",
        cmd_subject_erase,
        "crypto-shred a caller's recordings (exit 1 if a legal hold defers any)",
        ssub,
        store=True,
        json=True,
    )
    p.add_argument("--file", default="-", help=numbers_help)
    p = add(
        "requests",
        cmd_subject_requests,
        "open requests with their one-month deadline",
        ssub,
        store=True,
        json=True,
    )
    p.add_argument("--all", action="store_true", help="also list answered requests")
    p.add_argument("--at", help="deadlines as of this time (ISO 8601; forward only)")

    p = add("demo", cmd_demo, "simulate a call-centre day in a new simulated store", json=True)
    p.add_argument("store", nargs="?", help="folder to create (default: a new temporary folder)")
    p.add_argument("--calls", type=int, default=2000, help="calls in the day (default 2000)")
    p.add_argument("--seed", type=int, help="random seed, for a repeatable demo")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    stdout = out if out is not None else sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.func(args, stdout))
    except (CommandFailed, AccessDenied) as exc:
        return _fail(args, EXIT_FAILED, str(exc), stdout)
    except KeyNotRevealable as exc:
        return _fail(args, EXIT_FAILED, str(exc), stdout)
    except (StoreError, KeyringError) as exc:
        return _fail(args, EXIT_STORE, str(exc), stdout)
    except InvalidArgument as exc:
        return _fail(args, EXIT_USAGE, str(exc), stdout)
    except SampledrecError as exc:
        return _fail(args, EXIT_FAILED, str(exc), stdout)
    except (FileNotFoundError, IsADirectoryError) as exc:
        return _fail(args, EXIT_USAGE, f"{exc.filename}: {exc.strerror}", stdout)
    except PermissionError as exc:
        return _fail(args, EXIT_STORE, f"{exc.filename}: {exc.strerror}", stdout)
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, code: int, message: str, out: TextIO) -> int:
    if getattr(args, "json", False):
        out.write(json.dumps({"error": message, "exit_code": code}, ensure_ascii=False) + "\n")
    print(f"sampledrec: {message}", file=sys.stderr)
    return code


def entry_point() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry_point()
