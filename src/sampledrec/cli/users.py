"""``sampledrec users``: the web console's accounts (add, roles, disable, enable, reset, list).

Passwords are read from ``--password-file FILE`` (``-``: standard input) or typed at a prompt,
never taken on the command line (where ``ps`` and shell histories show them). Every change is
logged (an ``access`` entry naming the account and the change, under the OS user as the store's
owner), so it needs the store's log, as holds do.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from ..accounts import Accounts, open_users
from ..errors import InvalidArgument
from ..vault.recorder import Vault
from ._common import (
    EXIT_OK,
    Commands,
    add_command,
    add_group,
    emit,
    iso_us_or_none,
    open_store,
    owner_principal,
    table,
)


def register(commands: Commands) -> None:
    usub = add_group(commands, "users", "the web console's accounts and their roles")
    p = add_command(usub, "add", cmd_users_add, "create an account with roles of the policy")
    p.add_argument("name", help="the account's name (lower-case letters, digits, . _ -)")
    p.add_argument(
        "--role", action="append", default=[], required=True, help="a role (repeat for more)"
    )
    _password_option(p)
    p = add_command(usub, "roles", cmd_users_roles, "replace an account's roles")
    p.add_argument("name")
    p.add_argument("--role", action="append", default=[], help="a role (repeat; none: no role)")
    p = add_command(usub, "disable", cmd_users_disable, "disable an account (it cannot sign in)")
    p.add_argument("name")
    p = add_command(usub, "enable", cmd_users_enable, "enable a disabled account again")
    p.add_argument("name")
    p = add_command(
        usub,
        "reset",
        cmd_users_reset,
        "give an account a new password (changed at its next sign-in) and/or make it enrol a "
        "new second factor",
    )
    p.add_argument("name")
    _password_option(p, required=False)
    p.add_argument(
        "--second-factor",
        action="store_true",
        help="forget its TOTP secret and recovery codes: it enrols again at next sign-in",
    )
    add_command(usub, "list", cmd_users_list, "list the accounts (no secret is shown)")


def _password_option(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="file whose first line is the password ('-': standard input); without it, a "
        "prompt asks twice" + ("" if required else " (with --password)"),
    )
    if not required:
        p.add_argument("--password", action="store_true", help="set a new password")


def _read_password(source: str | None) -> str:
    if source is not None:
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text("utf-8")
        except OSError as exc:
            raise InvalidArgument(f"--password-file {source}: {exc.strerror}") from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise InvalidArgument(f"--password-file {source} is empty")
        return lines[0]
    if not sys.stdin.isatty():
        raise InvalidArgument("give --password-file FILE (or '-' for standard input)")
    first = getpass.getpass("New password: ")
    if getpass.getpass("The same again: ") != first:
        raise InvalidArgument("the two passwords differ; nothing was changed")
    return first


@contextlib.contextmanager
def _accounts(args: argparse.Namespace) -> Iterator[Accounts]:
    store = open_store(args.store)
    with store.open_log() as log, Vault(store, log) as vault:
        users = open_users(store)
        try:
            yield Accounts(users, vault)
        finally:
            users.close()


def _done(args: argparse.Namespace, out: TextIO, doc: dict[str, object], text: str) -> int:
    emit(args, doc, text, out)
    return EXIT_OK


def _change(args: argparse.Namespace, out: TextIO, what: str) -> int:
    with _accounts(args) as accounts:
        by = owner_principal()
        if what == "add":
            password = _read_password(args.password_file)
            user = accounts.add(by, args.name, args.role, password)
            text = (
                f"account {user.name} added with roles {', '.join(user.roles)}; at its first "
                "sign-in it changes its password and sets up its second factor"
            )
        elif what == "roles":
            user = accounts.set_roles(by, args.name, args.role)
            text = f"account {user.name}: roles {', '.join(user.roles) or 'none'}"
        elif what in ("disable", "enable"):
            user = accounts.set_disabled(by, args.name, what == "disable")
            text = f"account {user.name} {what}d"
        else:
            new = _read_password(args.password_file) if args.password else None
            user = accounts.reset(by, args.name, password=new, second_factor=args.second_factor)
            parts = (["a new password"] if new else []) + (
                ["a new second factor"] if args.second_factor else []
            )
            text = f"account {user.name}: {' and '.join(parts)} at its next sign-in"
    return _done(args, out, user.to_json(), text)


def cmd_users_add(args: argparse.Namespace, out: TextIO) -> int:
    return _change(args, out, "add")


def cmd_users_roles(args: argparse.Namespace, out: TextIO) -> int:
    return _change(args, out, "roles")


def cmd_users_disable(args: argparse.Namespace, out: TextIO) -> int:
    return _change(args, out, "disable")


def cmd_users_enable(args: argparse.Namespace, out: TextIO) -> int:
    return _change(args, out, "enable")


def cmd_users_reset(args: argparse.Namespace, out: TextIO) -> int:
    if not args.password and not args.second_factor:
        raise InvalidArgument("reset what? give --password, --second-factor, or both")
    return _change(args, out, "reset")


def cmd_users_list(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    users = open_users(store)
    try:
        found = users.all()
    finally:
        users.close()
    rows = [
        (
            u.name,
            ",".join(u.roles) or "-",
            "disabled" if u.disabled else "active",
            "totp" if u.enrolled else "not set up",
            iso_us_or_none(u.last_sign_in_at) or "never",
        )
        for u in found
    ]
    text = table(("account", "roles", "status", "second factor", "last sign-in"), rows)
    return _done(args, out, {"users": [u.to_json() for u in found]}, text)
