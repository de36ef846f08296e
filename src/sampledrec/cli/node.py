"""``sampledrec deployment init|rotate-key`` and ``sampledrec node init``: several nodes, one
deployment (docs/decisions/0031-nodes.md, 0036-deployment-keys.md, docs/operations.md)."""

from __future__ import annotations

import argparse
import getpass
from collections import Counter
from typing import TextIO

from ..deployment import Deployment
from ..errors import InvalidArgument, InvalidPolicy
from ..store import Store, s3_blobs_backend
from ._common import (
    EXIT_OK,
    CommandFailed,
    Commands,
    add_command,
    add_group,
    emit,
    open_store,
)


def register(commands: Commands) -> None:
    group = add_group(commands, "deployment", "a deployment of several nodes: create its file")
    p = add_command(
        group,
        "init",
        cmd_deployment_init,
        "write a deployment file: the PostgreSQL catalog, the bucket and the deployment key "
        "that its nodes share",
        store=False,
    )
    p.add_argument("file", help="the deployment file to write (deployment.json)")
    p.add_argument("--name", required=True, help="the deployment's name (eu-callcentre)")
    p.add_argument(
        "--catalog",
        metavar="DSN",
        required=True,
        help="the PostgreSQL database (postgresql://user@host/db; no password here)",
    )
    p.add_argument("--blobs", metavar="s3://BUCKET/PREFIX", required=True, help="the bucket")
    p.add_argument("--s3-endpoint", metavar="URL", help="the S3 API's URL (default: AWS)")
    p.add_argument("--s3-region", metavar="REGION", help="the bucket's region")
    p.add_argument("--s3-credentials", metavar="FILE", help="AWS-style credentials file (0600)")
    p.add_argument("--s3-profile", metavar="NAME", help="section of that file (default)")
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="the deployment key (default: deployment.key beside the file; made if missing). "
        "Copy it to every node; never back it up",
    )
    p.add_argument("--policy", help="the policy TOML file every new node starts with")
    hsm = p.add_argument_group(
        "deployment key on a PKCS#11 token (instead of --key-file; every node uses the same "
        "token and label)"
    )
    hsm.add_argument("--key-pkcs11-module", metavar="PATH", help="the token's PKCS#11 library")
    hsm.add_argument("--key-token", metavar="LABEL", help="the token's label")
    hsm.add_argument(
        "--key-pin-env",
        metavar="VAR",
        default="SAMPLEDREC_PKCS11_PIN",
        help="the environment variable holding the token's user PIN (never written)",
    )
    hsm.add_argument(
        "--key-label",
        metavar="LABEL",
        default="sampledrec-deployment",
        help="the label of the deployment key on the token (made, non-extractable, if missing)",
    )
    p = add_command(
        group,
        "rotate-key",
        cmd_deployment_rotate_key,
        "wrap every shared key again under a new deployment key (one transaction), and name it "
        "in the deployment file",
        store=False,
    )
    p.add_argument("--deployment", required=True, metavar="FILE", help="the deployment file")
    new = p.add_mutually_exclusive_group(required=True)
    new.add_argument(
        "--new-key-file", metavar="F", help="the new key file (made, 0600, if it does not exist)"
    )
    new.add_argument(
        "--new-key-label",
        metavar="LABEL",
        help="for a deployment key on a PKCS#11 token: a new key on the same token",
    )

    group = add_group(commands, "node", "the nodes of a deployment")
    p = add_command(
        group,
        "init",
        cmd_node_init,
        "create a node of a deployment: a store with its own log and signing key, sharing the "
        "deployment's catalog, bucket and keys",
        store=False,
    )
    p.add_argument("node", help="the node's folder to create")
    p.add_argument("--deployment", required=True, metavar="FILE", help="the deployment file")
    p.add_argument("--name", required=True, help="the node's name in the deployment (node-a)")
    p.add_argument("--policy", help="policy TOML file (default: the deployment's)")
    p.add_argument("--simulated", action="store_true", help="mark the node as simulated")
    p = add_command(
        group,
        "retire",
        cmd_node_retire,
        "retire this node (its server stopped): seal and upload its recordings, mark it "
        "retired in the deployment so that it never decides again, sign a final checkpoint; "
        "its log stays for audits",
    )
    p = add_command(
        group,
        "lost",
        cmd_node_lost,
        "from this node, declare another node of the deployment lost for good: mark it lost "
        "(it can never come back), and tombstone in this node's log the recordings that were "
        "only on its disk",
    )
    p.add_argument("node", help="the lost node's name in the deployment (node-c)")
    p.add_argument("--reason", required=True, help="why it is lost, for the log and the audit")


def cmd_deployment_init(args: argparse.Namespace, out: TextIO) -> int:
    blobs = s3_blobs_backend(
        args.blobs,
        endpoint=args.s3_endpoint,
        region=args.s3_region,
        credentials_file=args.s3_credentials,
        profile=args.s3_profile,
    )
    on_token = None
    if args.key_pkcs11_module or args.key_token:
        if not (args.key_pkcs11_module and args.key_token):
            raise InvalidArgument(
                "a deployment key on a token needs --key-pkcs11-module and --key-token"
            )
        if args.key_file:
            raise InvalidArgument("give --key-file or a key on a PKCS#11 token, not both")
        on_token = {
            "kind": "pkcs11",
            "module": args.key_pkcs11_module,
            "token": args.key_token,
            "pin_env": args.key_pin_env,
            "label": args.key_label,
        }
    dep = Deployment.init(
        args.file,
        name=args.name,
        catalog_dsn=args.catalog,
        blobs=blobs,
        key_file=args.key_file,
        policy=args.policy,
        deployment_key=on_token,
    )
    if dep.key_file is not None:
        where = (
            f"{dep.key_file}\n    copy it to every node (mode 0600) and keep it out of every backup"
        )
    else:
        where = f"{_key_name(dep)}\n    every node must reach that token (or a replica of it)"
    emit(
        args,
        {
            "deployment": str(dep.path),
            "name": dep.name,
            "deployment_id": dep.deployment_id,
            "key_file": None if dep.key_file is None else str(dep.key_file),
            "deployment_key": dep.deployment_key,
        },
        f"Created deployment {dep.name} ({dep.path})\n"
        f"  deployment key: {where}\n"
        f"  add a node: sampledrec node init NODE --deployment {dep.path} --name NAME",
        out,
    )
    return EXIT_OK


def _key_name(dep: Deployment) -> str:
    if dep.deployment_key is not None:
        return (
            f"key {dep.deployment_key['label']!r} on PKCS#11 token {dep.deployment_key['token']!r}"
        )
    return str(dep.key_file)


def cmd_deployment_rotate_key(args: argparse.Namespace, out: TextIO) -> int:
    dep = Deployment.load(args.deployment)
    old = _key_name(dep)
    rotated, count = dep.rotate_key(
        new_key_file=args.new_key_file,
        new_label=args.new_key_label,
        principal=getpass.getuser(),
    )
    if rotated.key_file is not None:
        todo = (
            f"  now, on every node: copy {rotated.key_file} over the node's deployment key file "
            "(the 'key_file' of its store.json; mode 0600) and restart the node; then destroy "
            f"every copy of the old key ({old})"
        )
    else:
        todo = (
            f"  now, on every node: copy {rotated.path} over the node's deployment file and "
            f"restart the node; then destroy the old key ({old}) on the token"
        )
    emit(
        args,
        {
            "deployment": str(rotated.path),
            "rotated": count,
            "old_key": old,
            "new_key": _key_name(rotated),
        },
        f"Re-wrapped {count} shared keys of deployment {rotated.name} under "
        f"{_key_name(rotated)} (one transaction; checked)\n"
        f"  {rotated.path} names the new key\n"
        f"{todo}\n"
        "  until then, a node with the old key is refused (it says the key was rotated)",
        out,
    )
    return EXIT_OK


def cmd_node_init(args: argparse.Namespace, out: TextIO) -> int:
    try:
        store = Store.init_node(
            args.node,
            args.deployment,
            name=args.name,
            policy=args.policy,
            simulated=args.simulated,
        )
    except InvalidPolicy as exc:
        raise CommandFailed(f"policy refused: {exc}") from None
    except FileNotFoundError as exc:
        raise InvalidArgument(f"{exc.filename}: file not found") from None
    node = store.deployment
    assert node is not None
    emit(
        args,
        {
            "node": str(store.path),
            "name": node["node"],
            "deployment": node["name"],
            "policy_version": store.policy().version,
            "vkey": store.vkey,
        },
        f"Created node {node['node']} of deployment {node['name']} at {store.path}\n"
        f"  its own keys: {store.keys_path} (log signing and sealing keys; never back up)\n"
        f"  log verifier key (give it to your DPO and auditor):\n    {store.vkey}",
        out,
    )
    return EXIT_OK


def cmd_node_retire(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    done = store.retire()
    outcomes = Counter(outcome for _, outcome in done["recovered"])
    emit(
        args,
        {**done, "recovered": [list(pair) for pair in done["recovered"]]},
        f"Retired node {done['node']} at {done['retired_at']}\n"
        f"  recordings left open, recovered: {dict(outcomes) or 'none'}\n"
        f"  final checkpoint: size {done['checkpoint']['size']}, root "
        f"{done['checkpoint']['root_hash'][:16]}...\n"
        "  it no longer decides or records; keep its folder (its log and keys) for audits:\n"
        f"    sampledrec audit kit --store NODE ... --node {store.path}",
        out,
    )
    return EXIT_OK


def cmd_node_lost(args: argparse.Namespace, out: TextIO) -> int:
    store = open_store(args.store)
    done = store.declare_lost(args.node, reason=args.reason)
    outcomes = Counter(outcome for _, outcome in done["recordings"])
    emit(
        args,
        {**done, "recordings": [list(pair) for pair in done["recordings"]]},
        f"Node {done['node']} declared lost by node {done['declared_by']} at "
        f"{done['declared_at']}\n"
        f"  its recordings dealt with (logged in this node's log): {dict(outcomes) or 'none'}\n"
        "  it can never decide again; give a new node another name",
        out,
    )
    return EXIT_OK
