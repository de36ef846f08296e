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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ._hazmat.files import write_atomic
from ._hazmat.postgres import Migration, PgConnection, dsn_has_password, redact_dsn
from .errors import InvalidArgument, StoreError, StoreNotFound
from .keys.shared import DeploymentKey, SharedKeys

__all__ = ["DEPLOYMENT_FORMAT", "Deployment", "NodeRegistry", "NodeState", "check_node_name"]

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

    def registry(self) -> NodeRegistry:
        """A new connection to the deployment's list of nodes; the caller closes it."""
        return NodeRegistry(self.catalog_dsn, self.deployment_id)

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


NodeStatus = Literal["active", "retired", "lost"]

_REGISTRY_MIGRATIONS: Final = (
    Migration(
        1,
        "the nodes of each deployment and their state",
        """
CREATE TABLE deployment_nodes (
    deployment TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    status TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    changed_by TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (deployment, name)
);
""",
    ),
)


@dataclass(frozen=True)
class NodeState:
    """A node of a deployment as its list says: ``active`` (decides and records),
    ``retired`` (stopped on purpose, after sealing its recordings and a final checkpoint) or
    ``lost`` (gone for good; another node dealt with its open recordings). Times are
    microseconds since 1970; ``changed_by`` names the node that made the last change."""

    name: str
    status: NodeStatus
    added_at: int
    changed_at: int
    changed_by: str
    reason: str = ""


class NodeRegistry:
    """The deployment's list of nodes, in its PostgreSQL database (docs/decisions/0035).

    A node is listed ``active`` by ``node init``; ``node retire`` and ``node lost`` change it,
    once: a retired or lost node never decides again (its store refuses to open its log for
    writing), and its name is not reused. Nodes made before the list existed are not listed
    and count as active."""

    def __init__(self, dsn: str, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        self._db = PgConnection(
            dsn,
            what="the deployment's nodes",
            component="deployment_nodes",
            migrations=_REGISTRY_MIGRATIONS,
        )

    def __repr__(self) -> str:
        return f"NodeRegistry({self._db.where!r})"

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> NodeRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, name: str) -> NodeState | None:
        rows = self._select("AND name = %s", [name])
        return rows[0] if rows else None

    def nodes(self) -> list[NodeState]:
        """Every listed node, by name."""
        return self._select("", [])

    def _select(self, where: str, params: Sequence[Any]) -> list[NodeState]:
        sql = (
            "SELECT name, status, added_at, changed_at, changed_by, reason FROM "
            f"deployment_nodes WHERE deployment = %s {where} ORDER BY name"
        )
        rows = self._db.run(
            lambda conn: conn.execute(sql.encode(), [self.deployment_id, *params]).fetchall(),
            atomic=False,
        )
        return [NodeState(*row) for row in rows]

    def add(self, name: str, *, now_us: int) -> NodeState:
        """List ``name`` as active; :class:`InvalidArgument` if the name was retired or lost
        (a node's name names its log for ever: choose a new one)."""
        check_node_name(name)
        sql = (
            "INSERT INTO deployment_nodes (deployment, name, status, added_at, changed_at, "
            "changed_by) VALUES (%s, %s, 'active', %s, %s, %s) ON CONFLICT DO NOTHING"
        )
        self._db.run(
            lambda conn: conn.execute(
                sql.encode(), [self.deployment_id, name, now_us, now_us, name]
            ),
            atomic=False,
        )
        state = self.get(name)
        assert state is not None
        if state.status != "active":
            raise InvalidArgument(
                f"node {name!r} of this deployment is {state.status}; a node's name is never "
                "reused (its log keeps it): give the new node another name"
            )
        return state

    def change(
        self, name: str, status: NodeStatus, *, now_us: int, by: str, reason: str = ""
    ) -> NodeState:
        """Mark ``name`` retired or lost (listing it first if it was not); a node already in
        that state stays as it was (so a command interrupted midway can be run again).
        :class:`InvalidArgument` for any other change: a retired or lost node stays so."""
        if status == "active":
            raise InvalidArgument("a node becomes active only when it is made (node init)")

        def work(conn: Any) -> None:
            conn.execute(
                b"INSERT INTO deployment_nodes (deployment, name, status, added_at, changed_at, "
                b"changed_by) VALUES (%s, %s, 'active', %s, %s, %s) ON CONFLICT DO NOTHING",
                [self.deployment_id, name, now_us, now_us, by],
            )
            conn.execute(
                b"UPDATE deployment_nodes SET status = %s, changed_at = %s, changed_by = %s, "
                b"reason = %s WHERE deployment = %s AND name = %s AND status = 'active'",
                [status, now_us, by, reason, self.deployment_id, name],
            )

        self._db.run(work)
        state = self.get(name)
        assert state is not None
        if state.status != status:
            raise InvalidArgument(
                f"node {name!r} is already {state.status}; it cannot become {status}"
            )
        return state
