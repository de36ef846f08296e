"""``sampledrec init``: create a store."""

from __future__ import annotations

import argparse
from typing import TextIO

from ..errors import InvalidArgument, InvalidPolicy
from ..store import Store
from ._common import EXIT_OK, CommandFailed, Commands, add_command, emit


def register(commands: Commands) -> None:
    p = add_command(
        commands,
        "init",
        cmd_init,
        "create a store (default policy: quality, 5%, 6 months)",
        store=False,
    )
    p.add_argument("store", help="folder to create")
    p.add_argument("--policy", help="policy TOML file to start with")
    p.add_argument("--keys", help="keyring folder, kept apart from the store (default STORE/keys)")
    p.add_argument(
        "--simulated",
        action="store_true",
        help="mark the store as simulated (demos and tests; shown in every report)",
    )
    p.add_argument(
        "--catalog",
        metavar="DSN",
        help="keep the catalog, caps ledger and decided-calls index in this PostgreSQL "
        "database (postgresql://user@host/db; the password in PGPASSWORD or ~/.pgpass, never "
        "here) instead of SQLite files in the store",
    )
    p.add_argument(
        "--region",
        help="country whose national phone numbers callers use (ISO 3166 code, e.g. FR)",
    )


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    try:
        store = Store.init(
            args.store,
            policy=args.policy,
            keys_dir=args.keys,
            simulated=args.simulated,
            region=args.region,
            backends=(
                None
                if args.catalog is None
                else {"catalog": {"kind": "postgresql", "dsn": args.catalog}}
            ),
        )
    except InvalidPolicy as exc:
        raise CommandFailed(f"policy refused: {exc}") from None
    except FileNotFoundError as exc:
        raise InvalidArgument(f"--policy {exc.filename}: file not found") from None
    policy = store.policy()
    emit(
        args,
        {
            "store": str(store.path),
            "keys": str(store.keys_path),
            "policy_version": policy.version,
            "simulated": store.simulated,
            "region": store.region,
            "catalog_dsn": store.catalog_dsn,
            "vkey": store.vkey,
        },
        f"Created store {store.path}\n"
        f"  keys:    {store.keys_path} (keep this folder out of backups: docs/operations.md)\n"
        f"  policy:  {store.policy_path} (version {policy.version[:16]})\n"
        + (f"  region:  {store.region} (national phone numbers)\n" if store.region else "")
        + (f"  catalog: {store.catalog_dsn} (PostgreSQL)\n" if store.catalog_dsn else "")
        + f"  log verifier key (give it to your DPO and auditor):\n    {store.vkey}"
        + ("\n  marked simulated: for demos and tests only" if store.simulated else ""),
        out,
    )
    return EXIT_OK
