"""The ``sampledrec`` command: a thin layer over the public API.

Exit codes (DESIGN.md §9): 0 done; 1 a check failed or an action was refused; 2 usage error;
3 the store could not be used at all. ``--json`` prints one JSON document, with 56-bit integers
as decimal strings. A user's mistake never prints a traceback.

This module builds the parser from the command groups (one module each, a ``register`` that adds
its commands) and runs the command, turning the library's errors into exit codes and its warnings
(:class:`~sampledrec.errors.SampledrecWarning`) into ``warning: ...`` lines on stderr, for every
command.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn, TextIO

from .._version import __version__
from ..errors import (
    AccessDenied,
    InvalidArgument,
    KeyNotRevealable,
    KeyringError,
    SampledrecError,
    SampledrecWarning,
    StoreError,
)
from . import (
    audit,
    decide,
    demo,
    init,
    keys,
    log,
    node,
    policy,
    recordings,
    retention,
    serve,
    subject,
    users,
    witness,
)
from ._common import (
    EXIT_FAILED,
    EXIT_STORE,
    EXIT_USAGE,
    CommandFailed,
    Commands,
    Parser,
    fail,
)

# Each command group adds its commands, in the order ``sampledrec --help`` lists them.
REGISTER: tuple[Callable[[Commands], None], ...] = (
    init.register,
    policy.register,
    log.register,
    recordings.register,
    retention.register,
    decide.register,
    audit.register,
    keys.register,
    subject.register,
    serve.register,
    users.register,
    node.register,
    witness.register,
    demo.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sampledrec",
        description="Auditable random sampling of call recordings.",
        epilog="Exit codes: 0 done, 1 check failed or refused, 2 usage error, 3 store unusable.",
    )
    parser.add_argument("--version", action="version", version=f"sampledrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for register in REGISTER:
        register(sub)
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
        with library_warnings_on_stderr():
            return int(args.func(args, stdout))
    except (CommandFailed, AccessDenied) as exc:
        return fail(args, EXIT_FAILED, str(exc), stdout)
    except KeyNotRevealable as exc:
        return fail(args, EXIT_FAILED, str(exc), stdout)
    except (StoreError, KeyringError) as exc:
        return fail(args, EXIT_STORE, str(exc), stdout)
    except InvalidArgument as exc:
        return fail(args, EXIT_USAGE, str(exc), stdout)
    except SampledrecError as exc:
        return fail(args, EXIT_FAILED, str(exc), stdout)
    except (FileNotFoundError, IsADirectoryError) as exc:
        return fail(args, EXIT_USAGE, f"{exc.filename}: {exc.strerror}", stdout)
    except PermissionError as exc:
        return fail(args, EXIT_STORE, f"{exc.filename}: {exc.strerror}", stdout)
    except KeyboardInterrupt:
        return 130


@contextlib.contextmanager
def library_warnings_on_stderr() -> Iterator[None]:
    """Show each warning the library issues while a command runs as one ``warning: ...`` line
    on stderr, as it happens (each distinct message once per command, never turned into an
    error); other warnings are left to Python's filters."""
    with warnings.catch_warnings():
        shown = warnings.showwarning
        seen: set[str] = set()

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if issubclass(category, SampledrecWarning):
                if str(message) not in seen:
                    seen.add(str(message))
                    print(f"warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.simplefilter("always", SampledrecWarning)
        warnings.showwarning = show
        yield


def entry_point() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry_point()
