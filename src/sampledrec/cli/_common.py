"""What every command group shares: exit codes, the parser class and the helpers that add a
command and its common options, output (``--json`` or text), and reading the arguments."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeAlias

from ..clock import SYSTEM_CLOCK, parse_time
from ..errors import InvalidArgument, SampledrecError
from ..store import Store
from ..vault.access import Principal
from ..vault.catalog import Hold, RecordingRow

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3

Handler = Callable[[argparse.Namespace, TextIO], int]
"""A command: it reads its parsed arguments, writes to ``out`` and returns the exit code."""

Commands: TypeAlias = "argparse._SubParsersAction[Parser]"
"""Where a group's ``register`` adds its commands: ``add_subparsers()`` of the parent."""


class CommandFailed(SampledrecError):
    """A check failed or an action was refused (exit 1); the message is shown as is."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# -- building the parser ------------------------------------------------------------------------


def add_command(
    parent: Commands, name: str, func: Handler, help: str, *, store: bool = True
) -> argparse.ArgumentParser:
    """A command: it takes ``--store STORE`` unless ``store`` is false, and every command takes
    ``--json`` (print one JSON document).

    ``help`` is plain text: it is the command's description, and its line in the parent's list
    of commands (where argparse %-formats it, so a ``%`` is escaped there)."""
    p: argparse.ArgumentParser = parent.add_parser(
        name, help=help.replace("%", "%%"), description=help
    )
    p.set_defaults(func=func)
    if store:
        p.add_argument("--store", required=True, help="the store folder")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


def add_group(parent: Commands, name: str, help: str) -> Commands:
    """A command with subcommands (``sampledrec NAME SUBCOMMAND``): add them to what it returns."""
    group = parent.add_parser(name, help=help)
    return group.add_subparsers(dest=f"{name}_command", required=True, parser_class=Parser)


def add_at(p: argparse.ArgumentParser, help: str) -> None:
    """``--at TIME``, read by :func:`at_time` (or as the command's help says)."""
    p.add_argument("--at", help=help)


CHECKPOINT_HELP = "an exported checkpoint kept outside the store"


# -- output -------------------------------------------------------------------------------------


def emit(args: argparse.Namespace, doc: dict[str, Any], text: str, out: TextIO) -> None:
    if getattr(args, "json", False):
        out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(text.rstrip("\n") + "\n")


def fail(args: argparse.Namespace, code: int, message: str, out: TextIO) -> int:
    if getattr(args, "json", False):
        out.write(json.dumps({"error": message, "exit_code": code}, ensure_ascii=False) + "\n")
    print(f"sampledrec: {message}", file=sys.stderr)
    return code


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
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


# Times, in text and in --json alike, are ISO 8601 in UTC with an explicit offset:
# "2026-12-03T10:00:00+00:00" (microseconds only when there are some), as Python's isoformat()
# writes them and as the library's to_json() methods do; never microsecond integers.


def iso_time(moment: datetime) -> str:
    """``moment`` as ISO 8601 in UTC: ``2026-12-03T10:00:00+00:00``."""
    return moment.astimezone(UTC).isoformat()


def iso_us(us: int) -> str:
    """A time stored as microseconds since 1970 (UTC), as :func:`iso_time` writes it."""
    from ..log.format import from_micros

    return iso_time(from_micros(us))


def iso_us_or_none(us: int | None) -> str | None:
    return None if us is None else iso_us(us)


@dataclass(frozen=True)
class Expiry:
    """When a recording expires, as people and machines should read it. A legal hold puts the
    catalog's effective expiry at a sentinel far in the future (``retention.sweep.HELD_UNTIL``),
    which is no date: held, the recording expires when its last hold ends (or at its own expiry,
    if later), and never while a hold without an end date keeps it."""

    at: int | None  # µs since 1970; None: held with no end date
    held: bool

    @classmethod
    def of(cls, row: RecordingRow, holds: Callable[[str], Sequence[Hold]]) -> Expiry:
        """``row``'s expiry; ``holds(recording_id)`` gives a recording's holds (asked only
        when it is held)."""
        from ..retention.sweep import HELD_UNTIL

        if row.expires_at < HELD_UNTIL:
            return cls(row.expires_at, held=False)
        # A hold whose end has passed keeps the recording until the next sweep releases it.
        ends = [h.until for h in holds(row.recording_id) if h.released_at is None]
        if not ends:
            return cls(row.expires_at_sealed, held=False)
        if any(end is None for end in ends):
            return cls(None, held=True)
        return cls(max([row.expires_at_sealed, *(e for e in ends if e is not None)]), held=True)

    def json(self) -> str | None:
        return iso_us_or_none(self.at)

    def text(self) -> str:
        if self.at is None:
            return "held (no end date)"
        return iso_us(self.at)[:10] + (" (held)" if self.held else "")


def recording_doc(row: RecordingRow, expiry: Expiry) -> dict[str, Any]:
    """A catalog row for --json: every time ISO 8601 (:func:`iso_time`); ``expires_at`` is
    null while a hold without an end date keeps the recording, and ``held`` says whether a
    hold keeps it."""
    doc = row.to_json()
    for name in ("started_at", "ended_at", "expires_at_sealed"):
        doc[name] = iso_us_or_none(doc[name])
    doc["expires_at"] = expiry.json()
    doc["held"] = expiry.held
    return doc


def ref_text(ref: str | bytes) -> str:
    return ref if isinstance(ref, str) else f"0x{ref.hex()}"


# -- arguments ----------------------------------------------------------------------------------


def open_store(path: str) -> Store:
    return Store.open(path)


def at_time(args: argparse.Namespace, store: Store | None = None) -> datetime:
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


def parse_attrs(pairs: Sequence[str]) -> dict[str, str]:
    attrs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(
                f"--attr {pair!r} is not KEY=VALUE; write it like --attr queue=sales"
            )
        attrs[key.strip()] = value.strip()
    return attrs


def read_lines(source: str) -> list[str]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        where = "standard input" if source == "-" else source
        raise InvalidArgument(f"{where} is not UTF-8 text: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def add_attrs(p: argparse.ArgumentParser) -> None:
    """``--attr KEY=VALUE`` (repeatable), read by :func:`parse_attrs`."""
    p.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a call attribute (repeat); objection=true means the caller objected",
    )


def add_caller_file(p: argparse.ArgumentParser) -> None:
    """``--caller-file FILE|-``, read by :func:`read_caller`: a caller's number is personal data,
    so it is never taken on the command line (where ``ps`` and shell histories show it)."""
    p.add_argument(
        "--caller-file",
        metavar="FILE",
        help="file holding the caller's number ('-' for standard input); checked against the "
        "objection list and kept only as a keyed pseudonym",
    )


def read_caller(source: str | None) -> str | None:
    """The caller's number from ``--caller-file`` (exactly one), or None without it."""
    if source is None:
        return None
    lines = read_lines(source)
    if len(lines) != 1:
        raise InvalidArgument(
            f"--caller-file must hold exactly one phone number, found {len(lines)}"
        )
    return lines[0]


def owner_name() -> str:
    """The operating-system user, as whom the CLI acts: the store's owner (DESIGN.md §9)."""
    import getpass

    return getpass.getuser()


def owner_principal() -> Principal:
    return Principal.owner(owner_name())
