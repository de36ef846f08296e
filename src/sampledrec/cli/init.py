"""``sampledrec init``: create a store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from ..errors import InvalidArgument, InvalidPolicy
from ..store import Store, s3_blobs_backend
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
    s3 = p.add_argument_group(
        "recordings on object storage (default: the folder STORE/recordings)",
        "credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or from "
        "--s3-credentials; they are never written to store.json",
    )
    s3.add_argument("--blobs", metavar="s3://BUCKET/PREFIX", help="keep recordings in a bucket")
    s3.add_argument("--s3-endpoint", metavar="URL", help="the S3 API's URL (default: AWS)")
    s3.add_argument("--s3-region", metavar="REGION", help="the bucket's region (us-east-1)")
    s3.add_argument(
        "--s3-credentials",
        metavar="FILE",
        help="AWS-style credentials file (mode 0600); store.json keeps its path only",
    )
    s3.add_argument("--s3-profile", metavar="NAME", help="section of that file (default)")


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    backends = None
    if args.blobs is not None:
        backends = {
            "blobs": s3_blobs_backend(
                args.blobs,
                endpoint=args.s3_endpoint,
                region=args.s3_region,
                credentials_file=args.s3_credentials,
                profile=args.s3_profile,
            )
        }
    elif any((args.s3_endpoint, args.s3_region, args.s3_credentials, args.s3_profile)):
        raise InvalidArgument("--s3-endpoint, --s3-region, --s3-credentials need --blobs s3://...")
    if args.catalog is not None:
        backends = {**(backends or {}), "catalog": {"kind": "postgresql", "dsn": args.catalog}}
    try:
        store = Store.init(
            args.store,
            policy=args.policy,
            keys_dir=args.keys,
            simulated=args.simulated,
            region=args.region,
            backends=backends,
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
            "recordings": _recordings(store),
            "vkey": store.vkey,
        },
        f"Created store {store.path}\n"
        f"  keys:    {store.keys_path} (keep this folder out of backups: docs/operations.md)\n"
        f"  policy:  {store.policy_path} (version {policy.version[:16]})\n"
        + (f"  region:  {store.region} (national phone numbers)\n" if store.region else "")
        + (f"  catalog: {store.catalog_dsn} (PostgreSQL)\n" if store.catalog_dsn else "")
        + (f"  recordings: {_recordings(store)}\n" if args.blobs is not None else "")
        + f"  log verifier key (give it to your DPO and auditor):\n    {store.vkey}"
        + ("\n  marked simulated: for demos and tests only" if store.simulated else ""),
        out,
    )
    return EXIT_OK


def _recordings(store: Store) -> str:
    """Where the store keeps its recordings, for people (never a credential)."""
    spec = store.backends["blobs"]
    if spec["kind"] == "s3":
        where = f" at {spec['endpoint']}" if spec.get("endpoint") else ""
        return f"s3://{spec['bucket']}/{spec.get('prefix', '')}{where}"
    path = Path(spec["path"])
    return str(path if path.is_absolute() else store.path / path)
