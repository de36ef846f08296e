"""A deployment: several recording nodes that share one catalog, one bucket and one set of keys
(DESIGN.md §13, docs/decisions/0031-nodes.md).

The **deployment file** (``deployment.json``, written by ``sampledrec deployment init``) names
what the nodes share; each node (``sampledrec node init NODE --deployment FILE --name NAME``) is
a store folder of its own, with its own decision log, signing key and log sealing keys::

    {
      "format": "sampledrec-deployment", "version": 1,
      "name": "eu-callcentre",
      "deployment_id": "<32 hex digits>",
      "catalog": {"kind": "postgresql", "dsn": "postgresql://sampledrec@db.example/rec"},
      "blobs": {"kind": "s3", "bucket": "call-recordings", "prefix": "eu", "endpoint": "..."},
      "keystore": {"kind": "deployment"}          bucket keys wrapped in the database
              or  {"kind": "pkcs11", "module": ..., "token": ..., "pin_env": ...},
      "key_file": "deployment.key",               relative to this file's folder
      "policy": "policy.toml"                     optional: every new node starts with it
    }

The catalog's database holds the caps ledger, the decided-calls index and the table of shared
keys (:mod:`sampledrec.keys.shared`): epoch keys and the pseudonym key, and the bucket keys
unless the keystore is an HSM, all wrapped under the **deployment key** of ``key_file``. That
key is the one secret the operator copies to every node; it is never in the database, never in
the deployment file and never in a backup. No DSN here holds a password, no S3 credential
(the same rules as ``store.json``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ._hazmat.files import write_atomic
from ._hazmat.postgres import dsn_has_password, redact_dsn
from .errors import InvalidArgument, StoreError, StoreNotFound
from .keys.shared import DeploymentKey, SharedKeys

__all__ = ["DEPLOYMENT_FORMAT", "Deployment", "check_node_name"]

DEPLOYMENT_FORMAT: Final = "sampledrec-deployment"
DEPLOYMENT_VERSION: Final = 1
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)


def check_node_name(name: str, what: str = "node name") -> str:
    """``name`` if it can name a node or a deployment (1 to 64 letters, digits, ``.``, ``_``,
    ``-``; starting with a letter or digit), else :class:`InvalidArgument`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{what} {name!r} must be 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, such as 'node-a'"
        )
    return name


@dataclass(frozen=True)
class Deployment:
    """A deployment file, read and checked (:meth:`load`) or created (:meth:`init`)."""

    path: Path
    name: str
    deployment_id: str
    catalog_dsn: str
    blobs: dict[str, str]
    keystore: dict[str, str]
    key_file: Path
    policy: Path | None = None

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str,
        catalog_dsn: str,
        blobs: dict[str, str],
        key_file: str | os.PathLike[str] | None = None,
        keystore: dict[str, str] | None = None,
        policy: str | os.PathLike[str] | None = None,
    ) -> Deployment:
        """Write a new deployment file at ``path``, make the deployment key (``key_file``,
        default ``deployment.key`` beside it; an existing key file is used as it is, so a
        deployment can be written again for the same key) and the shared keys' table."""
        target = Path(path)
        if target.exists():
            raise InvalidArgument(f"{target} exists; a deployment file is written once")
        check_node_name(name, "deployment name")
        if dsn_has_password(catalog_dsn):
            raise InvalidArgument(
                f"the catalog's DSN {redact_dsn(catalog_dsn)!r} holds a password, which would be "
                "written to the deployment file: give it to libpq in PGPASSWORD or ~/.pgpass"
            )
        if blobs.get("kind") != "s3":
            raise InvalidArgument(
                "the nodes of a deployment keep their recordings in one bucket: give --blobs "
                "s3://BUCKET/PREFIX"
            )
        keystore = dict(keystore or {"kind": "deployment"})
        if keystore.get("kind") not in ("deployment", "pkcs11"):
            raise InvalidArgument(f"keystore kind {keystore.get('kind')!r}: deployment or pkcs11")
        folder = target.resolve().parent
        key_path = Path(key_file) if key_file is not None else folder / "deployment.key"
        if not key_path.exists():
            DeploymentKey.create(key_path)
        deployment_id = secrets.token_hex(16)
        doc: dict[str, Any] = {
            "format": DEPLOYMENT_FORMAT,
            "version": DEPLOYMENT_VERSION,
            "name": name,
            "deployment_id": deployment_id,
            "catalog": {"kind": "postgresql", "dsn": catalog_dsn},
            "blobs": blobs,
            "keystore": keystore,
            "key_file": _relative(key_path.resolve(), folder),
        }
        if policy is not None:
            doc["policy"] = _relative(Path(policy).resolve(), folder)
        made = cls._from_json(doc, target)
        keys = made.shared_keys()  # the database answers, and the pseudonym key is made once
        try:
            keys.check()
        finally:
            keys.close()
        try:
            write_atomic(target, json.dumps(doc, indent=2).encode() + b"\n")
        except OSError as exc:
            raise StoreError(f"cannot write the deployment file {target}: {exc}") from None
        return made

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Deployment:
        target = Path(path)
        try:
            doc = json.loads(target.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreNotFound(
                f"{target} does not exist; a deployment file is made by 'sampledrec deployment "
                "init' and copied to every node"
            ) from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the deployment file {target}: {exc}") from None
        return cls._from_json(doc, target)

    @classmethod
    def _from_json(cls, doc: Any, where: Path) -> Deployment:
        def bad(what: str) -> StoreError:
            return StoreError(f"{where}: {what}; it is not a sampledrec deployment file")

        if not isinstance(doc, dict) or doc.get("format") != DEPLOYMENT_FORMAT:
            raise bad(f'"format" must be "{DEPLOYMENT_FORMAT}"')
        if doc.get("version") != DEPLOYMENT_VERSION:
            raise bad(f'"version" must be {DEPLOYMENT_VERSION}')
        dep_id = doc.get("deployment_id")
        if not isinstance(dep_id, str) or not re.fullmatch(r"[0-9a-f]{32}", dep_id):
            raise bad('"deployment_id" must be 32 hexadecimal digits')
        catalog = doc.get("catalog")
        if not isinstance(catalog, dict) or not isinstance(catalog.get("dsn"), str):
            raise bad('"catalog" must be {"kind": "postgresql", "dsn": ...}')
        if dsn_has_password(catalog["dsn"]):
            raise bad("the catalog's DSN holds a password (give it in PGPASSWORD or ~/.pgpass)")
        specs = {}
        for member in ("blobs", "keystore"):
            spec = doc.get(member)
            if not isinstance(spec, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in spec.items()
            ):
                raise bad(f'"{member}" must be a table of text settings')
            specs[member] = dict(spec)
        key_file = doc.get("key_file")
        if not isinstance(key_file, str) or not key_file:
            raise bad('"key_file" must name the deployment key file')
        policy = doc.get("policy")
        if policy is not None and not isinstance(policy, str):
            raise bad('"policy" must be a path')
        folder = where.resolve().parent
        return cls(
            path=where,
            name=check_node_name(str(doc.get("name")), "deployment name"),
            deployment_id=dep_id,
            catalog_dsn=catalog["dsn"],
            blobs=specs["blobs"],
            keystore=specs["keystore"],
            key_file=folder / key_file,
            policy=None if policy is None else folder / policy,
        )

    def shared_keys(self) -> SharedKeys:
        """A new connection to the deployment's shared keys; the caller closes it."""
        return SharedKeys(self.catalog_dsn, self.deployment_id, DeploymentKey(self.key_file))

    def node_settings(self, node: str) -> dict[str, str]:
        """What a node's ``store.json`` keeps of its deployment (``"deployment"``)."""
        return {
            "name": self.name,
            "deployment_id": self.deployment_id,
            "node": check_node_name(node),
            "file": str(self.path.resolve()),
            "key_file": str(self.key_file.resolve()),
        }

    def backends(self) -> dict[str, dict[str, str]]:
        """A node's storage backends: the deployment's catalog, bucket and key store."""
        return {
            "catalog": {"kind": "postgresql", "dsn": self.catalog_dsn},
            "blobs": dict(self.blobs),
            "keystore": dict(self.keystore),
        }


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)
