"""``sampledrec record`` and ``sampledrec recordings list|export|recover``: the vault."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TextIO

from ..clock import FixedClock
from ..errors import InvalidArgument
from ..vault.catalog import Hold
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    Commands,
    Expiry,
    add_at,
    add_attrs,
    add_caller_file,
    add_command,
    add_group,
    at_time,
    emit,
    iso_us,
    open_store,
    owner_principal,
    parse_attrs,
    read_caller,
    recording_doc,
    ref_text,
    table,
)


def register(commands: Commands) -> None:
    p = add_command(
        commands,
        "record",
        cmd_record,
        "decide, and if selected record an audio file (20 ms frames)",
    )
    p.add_argument("--call-ref", required=True)
    add_attrs(p)
    add_caller_file(p)
    p.add_argument("--audio", required=True, help="WAV (or any format ffmpeg reads)")
    p.add_argument(
        "--format",
        default=DEFAULT_FORMAT,
        metavar="ENCODING/RATE/CHANNELS",
        help="the recording's format: the audio is converted to it (default "
        f"{DEFAULT_FORMAT}, telephone quality; encodings pcm16, mulaw, alaw)",
    )
    p.add_argument(
        "--pause",
        action="append",
        default=[],
        metavar="START-END",
        help="mask a span (seconds) as silence, e.g. a card payment (repeatable)",
    )
    add_at(p, "act at this time (ISO 8601; forward only)")

    rsub = add_group(commands, "recordings", "list, export and recover recordings")
    add_command(rsub, "list", cmd_recordings_list, "list the recordings")
    p = add_command(rsub, "export", cmd_recordings_export, "export a recording as a WAV file")
    p.add_argument("id")
    p.add_argument("--out", required=True, help="the WAV file to write (must not exist)")
    add_at(p, "as of this time (forward only): expired recordings are refused")
    add_command(rsub, "recover", cmd_recordings_recover, "re-seal or destroy recordings left open")


DEFAULT_FORMAT = "pcm16/8000/1"


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
    from ..vault.audio import AudioFormat, frames, read_audio_file_as
    from ..vault.recorder import Vault

    store = open_store(args.store)
    spans = _pause_spans(args.pause)
    caller = read_caller(args.caller_file)
    fmt = AudioFormat.from_text(args.format)
    source = read_audio_file_as(args.audio, fmt)  # converted, or refused with the reason
    at = at_time(args, store)
    clock = FixedClock(at)
    # The sampler closes before the log (as in decide): it then tells the store's decided-calls
    # index that its entry is durable, so that a repeat elsewhere need not wait for it.
    with store.open_log(clock=clock) as log, store.sampler(clock=clock, log=log) as sampler:
        attrs = parse_attrs(args.attr)
        decision = sampler.decide(args.call_ref, attrs, caller=caller)
        with Vault(store, log, clock=clock) as vault:
            try:
                recorder = vault.record(decision, audio_format=fmt, attrs=attrs)
            except NotSelected as exc:
                log.flush()
                if args.json:
                    emit(args, {"recorded": False, **decision.to_json()}, "", out)
                    return EXIT_FAILED
                raise CommandFailed(f"{exc} (the decision is logged)") from None
            ms = 0
            with recorder:
                for frame in frames(source.audio, fmt, 20):
                    seconds = ms / 1000
                    if any(a <= seconds < b for a, b in spans):
                        recorder.pause()
                    else:
                        recorder.resume()
                    recorder.write(frame)
                    ms += 20
                row = recorder.close(truncated=source.truncated)
    expiry = Expiry.of(row, lambda _rid: ())  # just recorded: no hold yet
    doc = {
        "recorded": True,
        **decision.to_json(),
        "recording": recording_doc(row, expiry),
        "source_format": source.source.to_text(),
    }
    text = (
        f"RECORDED {row.recording_id}\n"
        f"  call ref: {ref_text(decision.call_ref)} (rule {decision.rule}, purpose "
        f"{decision.purpose})\n"
        f"  audio:    {row.duration_ms / 1000 if row.duration_ms else 0:.2f} s, "
        f"{row.audio_format}"
        + ("" if source.source == fmt else f" (converted from {source.source.to_text()})")
        + f", encrypted ({row.ciphertext_bytes} bytes, sha256 "
        f"{(row.ciphertext_sha256 or '')[:16]}...)\n"
        + (
            "  TRUNCATED: the file ends before the audio its header announces; what it holds "
            "is kept, and the recording is marked truncated\n"
            if source.truncated
            else ""
        )
        + f"  pauses:   {', '.join(f'{a}-{b} ms' for a, b in row.pauses) or 'none'}\n"
        f"  expires:  {expiry.text()}"
    )
    emit(args, doc, text, out)
    return EXIT_OK


def cmd_recordings_list(args: argparse.Namespace, out: TextIO) -> int:
    from ..vault.recorder import Vault

    store = open_store(args.store)
    with store.open_log() as log, Vault(store, log) as vault:
        rows = vault.recordings(principal=owner_principal())

        def holds(recording_id: str) -> list[Hold]:
            return [h for h, _ in vault.catalog.holds_of(recording_id)]

        expiries = [Expiry.of(r, holds) for r in rows]
    if args.json:
        docs = [recording_doc(r, e) for r, e in zip(rows, expiries, strict=True)]
        emit(args, {"recordings": docs}, "", out)
        return EXIT_OK
    lines = [
        (
            r.recording_id,
            r.status,
            r.rule,
            f"{(r.duration_ms or 0) / 1000:.1f}s",
            iso_us(r.started_at)[:19],
            e.text(),
        )
        for r, e in zip(rows, expiries, strict=True)
    ]
    out.write(
        table(["id", "status", "rule", "duration", "started (UTC)", "expires"], lines) + "\n"
        if lines
        else "no recordings\n"
    )
    return EXIT_OK


def cmd_recordings_export(args: argparse.Namespace, out: TextIO) -> int:
    from ..errors import InvalidRecording, RecordingExpired, RecordingNotFound
    from ..vault.recorder import Vault

    store = open_store(args.store)
    at = at_time(args, store)
    with store.open_log() as log, Vault(store, log) as vault:
        try:
            path = vault.export(args.id, args.out, owner_principal(), at=at)
        except (RecordingExpired, RecordingNotFound, InvalidRecording) as exc:
            raise CommandFailed(str(exc)) from None
    emit(args, {"id": args.id, "out": str(path)}, f"Exported {args.id} to {path}", out)
    return EXIT_OK


def cmd_recordings_recover(args: argparse.Namespace, out: TextIO) -> int:
    from ..vault.recorder import Vault

    store = open_store(args.store)
    with store.open_log() as log, Vault(store, log) as vault:
        outcomes = vault.recover()
    damaged = [i for i, o in outcomes if o == "damaged"]
    lines = [f"{i}: {o}" for i, o in outcomes]
    if damaged:
        lines.append(
            f"{len(damaged)} recording(s) left as they are: the file changed after its recovery "
            "was logged; compare it with the log's recording_sealed entry "
            "('sampledrec log show') before doing anything else"
        )
    emit(
        args,
        {"recovered": [{"id": i, "outcome": o} for i, o in outcomes], "damaged": damaged},
        "\n".join(lines) or "no recording was left open",
        out,
    )
    return EXIT_FAILED if damaged else EXIT_OK
