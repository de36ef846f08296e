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
          or "deployment_key": {"kind": "pkcs11", "module": ..., "token": ..., "pin_env": ...,
                                "label": "sampledrec-deployment"}
      "policy": "policy.toml"                     optional: every new node starts with it
    }

The catalog's database holds the caps ledger, the decided-calls index and the table of shared
keys (:mod:`sampledrec.keys.shared`): epoch keys and the pseudonym key, and the bucket keys
unless the keystore is an HSM, all wrapped under the **deployment key** of ``key_file``. That
key is the one secret the operator copies to every node; it is never in the database, never in
the deployment file and never in a backup. No DSN here holds a password, no S3 credential
(the same rules as ``store.json``).

Instead of a key file, the deployment key can be an AES key on a PKCS#11 token, never
extractable (``deployment_key``, :class:`~sampledrec.keys.keystore.Pkcs11WrappingKey`): every
node names the same token and label, and reads them from this file; the PIN comes from the
environment variable ``pin_env``. :meth:`Deployment.rotate_key` re-wraps every shared key under
a new key (file or label) in one transaction (docs/decisions/0036-deployment-keys.md).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from ._hazmat.files import write_atomic
from ._hazmat.postgres import (
    Migration,
    PgConnection,
    advisory_lock,
    advisory_lock_id,
    dsn_has_password,
    redact_dsn,
)
from .clock import SYSTEM_CLOCK
from .errors import InvalidArgument, StoreError, StoreNotFound
from .keys.keystore import Pkcs11WrappingKey
from .keys.shared import DeploymentKey, KeyWrapper, SharedKeys
from .sampling.policy import Policy

if TYPE_CHECKING:
    from ._hazmat.postgres import PgConn

__all__ = [
    "DEPLOYMENT_FORMAT",
    "Deployment",
    "DeploymentSettings",
    "NodeRegistry",
    "NodeState",
    "SharedPolicy",
    "check_node_name",
]

DEPLOYMENT_FORMAT: Final = "sampledrec-deployment"
DEPLOYMENT_VERSION: Final = 1
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_PKCS11_KEY: Final = ("kind", "module", "token", "pin_env", "label")


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
    key_file: Path | None
    policy: Path | None = None
    deployment_key: dict[str, str] | None = None

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
        deployment_key: dict[str, str] | None = None,
    ) -> Deployment:
        """Write a new deployment file at ``path``, make the deployment key (``key_file``,
        default ``deployment.key`` beside it; an existing key file is used as it is, so a
        deployment can be written again for the same key) and the shared keys' table.

        ``deployment_key`` (``{"kind": "pkcs11", "module", "token", "pin_env", "label"}``)
        keeps the deployment key on a PKCS#11 token instead of a file: the key labelled
        ``label`` is generated on the token (non-extractable) unless it exists."""
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
        policy_text = None
        if policy is not None:  # refused before anything is made
            policy_text = Path(policy).read_text(encoding="utf-8")
            Policy.from_toml(policy_text, source=str(policy))
        keystore = dict(keystore or {"kind": "deployment"})
        if keystore.get("kind") not in ("deployment", "pkcs11"):
            raise InvalidArgument(f"keystore kind {keystore.get('kind')!r}: deployment or pkcs11")
        folder = target.resolve().parent
        deployment_id = secrets.token_hex(16)
        doc: dict[str, Any] = {
            "format": DEPLOYMENT_FORMAT,
            "version": DEPLOYMENT_VERSION,
            "name": name,
            "deployment_id": deployment_id,
            "catalog": {"kind": "postgresql", "dsn": catalog_dsn},
            "blobs": blobs,
            "keystore": keystore,
        }
        if deployment_key is not None:
            if key_file is not None:
                raise InvalidArgument(
                    "give the deployment key as a file or on a PKCS#11 token, not both"
                )
            spec = _check_pkcs11_key(deployment_key, "deployment_key")
            wrapper = pkcs11_wrapping_key(spec)
            try:
                wrapper.ensure()
            finally:
                wrapper.close()
            doc["deployment_key"] = spec
        else:
            key_path = Path(key_file) if key_file is not None else folder / "deployment.key"
            if not key_path.exists():
                DeploymentKey.create(key_path)
            doc["key_file"] = _relative(key_path.resolve(), folder)
        if policy is not None:
            doc["policy"] = _relative(Path(policy).resolve(), folder)
        made = cls._from_json(doc, target)
        keys = made.shared_keys()  # the database answers, and the pseudonym key is made once
        try:
            keys.check()
        finally:
            keys.close()
        if policy_text is not None:  # the deployment's policy, which every node follows
            checked = Policy.from_toml(policy_text, source=str(policy))
            settings = made.settings()
            try:
                settings.publish_policy(
                    checked.version, policy_text, SYSTEM_CLOCK.now(), getpass.getuser()
                )
            finally:
                settings.close()
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
        deployment_key = doc.get("deployment_key")
        if deployment_key is not None:
            if key_file is not None:
                raise bad('"key_file" and "deployment_key" both name a deployment key')
            try:
                deployment_key = _check_pkcs11_key(deployment_key, '"deployment_key"')
            except InvalidArgument as exc:
                raise bad(str(exc)) from None
        elif not isinstance(key_file, str) or not key_file:
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
            key_file=folder / key_file if isinstance(key_file, str) else None,
            policy=None if policy is None else folder / policy,
            deployment_key=deployment_key,
        )

    def wrapping_key(self) -> KeyWrapper:
        """The deployment key: its file, or its key on the PKCS#11 token (logged in with the
        PIN of the environment variable the file names)."""
        if self.deployment_key is not None:
            return pkcs11_wrapping_key(self.deployment_key)
        assert self.key_file is not None
        return DeploymentKey(self.key_file)

    def settings(self) -> DeploymentSettings:
        """A new connection to the deployment's policy schedule and objection list; the
        caller closes it."""
        return DeploymentSettings(self.catalog_dsn, self.deployment_id)

    def registry(self) -> NodeRegistry:
        """A new connection to the deployment's list of nodes; the caller closes it."""
        return NodeRegistry(self.catalog_dsn, self.deployment_id)

    def shared_keys(self) -> SharedKeys:
        """A new connection to the deployment's shared keys; the caller closes it."""
        return SharedKeys(self.catalog_dsn, self.deployment_id, self.wrapping_key())

    def rotate_key(
        self,
        *,
        new_key_file: str | os.PathLike[str] | None = None,
        new_label: str | None = None,
        principal: str,
        timeout: float = 30.0,
    ) -> tuple[Deployment, int]:
        """Wrap every shared key again under a new deployment key, then name it in the
        deployment file; returns the deployment as now written and how many keys were
        re-wrapped.

        ``new_key_file``: a key file (made, 0600, if it does not exist). ``new_label``: for a
        deployment whose key is on a PKCS#11 token, a new key on the same token (generated if
        no key has that label). The re-wrap is one transaction (:meth:`SharedKeys.rotate`:
        all or nothing) under the deployment's lock, which every node's sweeps, holds and
        erasures take too. The old key still opens nothing afterwards: nodes that have it are
        refused with a message saying the key was rotated, until the operator installs the
        new one on each (and destroys every copy of the old)."""
        if (new_key_file is None) == (new_label is None):
            raise InvalidArgument("give the new deployment key: a key file or a token label")
        new: KeyWrapper
        doc = json.loads(self.path.read_text(encoding="utf-8"))
        folder = self.path.resolve().parent
        if new_label is not None:
            if self.deployment_key is None:
                raise InvalidArgument(
                    "--new-key-label goes with a deployment whose key is on a PKCS#11 token; "
                    f"{self.path} keeps it in a file: rotate to a new file (--new-key-file)"
                )
            if new_label == self.deployment_key["label"]:
                raise InvalidArgument(
                    f"{new_label!r} is the deployment key's current label; give a new one"
                )
            spec = {**self.deployment_key, "label": new_label}
            made = pkcs11_wrapping_key(spec)
            made.ensure()
            new = made
            doc["deployment_key"] = spec
        else:
            assert new_key_file is not None
            target = Path(new_key_file)
            new = DeploymentKey(target) if target.exists() else DeploymentKey.create(target)
            doc.pop("deployment_key", None)
            doc["key_file"] = _relative(target.resolve(), folder)
        rotated = False
        try:
            keys = self.shared_keys()
            try:
                with advisory_lock(
                    self.catalog_dsn,
                    advisory_lock_id(f"sampledrec/v1/deployment-lock/{self.deployment_id}"),
                    what=f"the lock of deployment {self.name!r}",
                    timeout=timeout,
                ):
                    count = keys.rotate(new, principal=principal)
                    rotated = True  # the new key is the keys' now: closed with them
            finally:
                keys.close()
        finally:
            if not rotated and isinstance(new, Pkcs11WrappingKey):
                new.close()
        try:
            write_atomic(self.path, json.dumps(doc, indent=2).encode() + b"\n", replace=True)
        except OSError as exc:
            raise StoreError(
                f"the keys were re-wrapped under the new key, but the deployment file {self.path} "
                f"could not be rewritten ({exc}): name the new key in it by hand"
            ) from None
        return Deployment._from_json(doc, self.path), count

    def node_settings(self, node: str) -> dict[str, str]:
        """What a node's ``store.json`` keeps of its deployment (``"deployment"``)."""
        return {
            "name": self.name,
            "deployment_id": self.deployment_id,
            "node": check_node_name(node),
            "file": str(self.path.resolve()),
            # empty for a key on a token: the node reads the token and label from the file
            "key_file": "" if self.key_file is None else str(self.key_file.resolve()),
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


def _check_pkcs11_key(spec: Any, what: str) -> dict[str, str]:
    if (
        not isinstance(spec, dict)
        or spec.get("kind") != "pkcs11"
        or set(spec) != set(_PKCS11_KEY)
        or not all(isinstance(v, str) and v for v in spec.values())
    ):
        raise InvalidArgument(
            f"{what} must be {{'kind': 'pkcs11', 'module': ..., 'token': ..., 'pin_env': ..., "
            "'label': ...}} (the PIN is never written: 'pin_env' names its environment "
            "variable)"
        )
    return {k: str(spec[k]) for k in _PKCS11_KEY}


def pkcs11_wrapping_key(spec: dict[str, str]) -> Pkcs11WrappingKey:
    """The deployment key on a PKCS#11 token, from its settings (``deployment_key``)."""
    pin = os.environ.get(spec["pin_env"])
    if not pin:
        raise StoreError(
            f"the deployment key is on the PKCS#11 token {spec['token']!r}; set its user PIN in "
            f"the environment variable {spec['pin_env']} (it is never written to disk)"
        )
    return Pkcs11WrappingKey(spec["module"], spec["token"], pin, label=spec["label"])


# -- the deployment's policy schedule and objection list (docs/decisions/0036) ----------------

SETTINGS_MIGRATIONS: Final = (
    Migration(
        1,
        "a deployment's policy schedule and objection list, which every node follows",
        """
CREATE TABLE deployment_policies (
    deployment TEXT COLLATE "C" NOT NULL,
    version TEXT COLLATE "C" NOT NULL,
    policy TEXT NOT NULL,
    effective_at TIMESTAMPTZ NOT NULL,
    principal TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, version)
);
CREATE TABLE deployment_objections (
    deployment TEXT COLLATE "C" NOT NULL,
    pseudonym TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (deployment, pseudonym)
);
CREATE TABLE deployment_generation (
    deployment TEXT COLLATE "C" PRIMARY KEY,
    generation BIGINT NOT NULL
);
""",
    ),
)


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
class SharedPolicy:
    """One version of the deployment's policy schedule."""

    version: str
    text: str
    effective_at: datetime
    principal: str  # who applied it, on whichever node


class DeploymentSettings:
    """The policy schedule and the objection list of a deployment, in its PostgreSQL database
    (component ``deployment_settings``): what ``policy apply`` and ``objections add|remove``
    change on any node, and what every node follows (:meth:`sampledrec.Store.sync_deployment`
    copies them into the node's own files, logging each change in the node's log first).

    Objections are kept as the callers' pseudonyms (keyed with the deployment's shared
    pseudonym key), never as numbers. Every change bumps the deployment's *generation*, so a
    node asks one cheap question (:meth:`generation`) to know whether anything changed.
    """

    def __init__(self, dsn: str, deployment_id: str) -> None:
        self._deployment = deployment_id
        self._lock_id = advisory_lock_id(f"sampledrec/v1/deployment-settings/{deployment_id}")
        self._conn = PgConnection(
            dsn,
            what="the deployment's policy and objections",
            component="deployment_settings",
            migrations=SETTINGS_MIGRATIONS,
        )
        self._closer = weakref.finalize(self, self._conn.close)

    def __repr__(self) -> str:
        return f"DeploymentSettings({self._conn.where!r}, deployment={self._deployment!r})"

    def close(self) -> None:
        self._closer()

    def generation(self) -> int:
        """How many changes the deployment's settings have had (0: never set)."""
        row = self._conn.run(
            lambda c: c.execute(
                "SELECT generation FROM deployment_generation WHERE deployment = %s",
                [self._deployment],
            ).fetchone(),
            atomic=False,
        )
        return 0 if row is None else int(row[0])

    def _bump(self, conn: PgConn) -> None:
        conn.execute(
            "INSERT INTO deployment_generation (deployment, generation) VALUES (%s, 1) "
            "ON CONFLICT (deployment) DO UPDATE "
            "SET generation = deployment_generation.generation + 1",
            [self._deployment],
        )

    def policies(self) -> list[SharedPolicy]:
        """The deployment's policy schedule, by effective time."""
        rows = self._conn.run(
            lambda c: c.execute(
                "SELECT version, policy, effective_at, principal FROM deployment_policies "
                "WHERE deployment = %s ORDER BY effective_at, applied_at",
                [self._deployment],
            ).fetchall(),
            atomic=False,
        )
        return [SharedPolicy(str(v), str(t), e, str(w)) for v, t, e, w in rows]

    def publish_policy(
        self, version: str, text: str, effective_at: datetime, principal: str
    ) -> None:
        """Schedule the policy ``text`` (version id ``version``) for every node."""

        def work(conn: PgConn) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._lock_id])
            conn.execute(
                "INSERT INTO deployment_policies "
                "(deployment, version, policy, effective_at, principal) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (deployment, version) DO UPDATE SET "
                "effective_at = excluded.effective_at, principal = excluded.principal, "
                "applied_at = now()",
                [self._deployment, version, text, effective_at, principal],
            )
            self._bump(conn)

        self._conn.run(work)

    def objections(self) -> frozenset[str]:
        """The deployment's objection list (pseudonyms, hex)."""
        rows = self._conn.run(
            lambda c: c.execute(
                "SELECT pseudonym FROM deployment_objections WHERE deployment = %s",
                [self._deployment],
            ).fetchall(),
            atomic=False,
        )
        return frozenset(str(r[0]) for r in rows)

    def publish_objections(self, action: str, pseudonyms: Sequence[str]) -> None:
        """Add (``"added"``) or take off (``"removed"``) callers of the deployment's list."""
        if action not in ("added", "removed"):
            raise InvalidArgument(f"action={action!r}: 'added' or 'removed'")

        def work(conn: PgConn) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._lock_id])
            if action == "added":
                conn.execute(
                    "INSERT INTO deployment_objections (deployment, pseudonym) "
                    "SELECT %s, p FROM unnest(%s::text[]) AS t(p) ON CONFLICT DO NOTHING",
                    [self._deployment, list(pseudonyms)],
                )
            else:
                conn.execute(
                    "DELETE FROM deployment_objections WHERE deployment = %s "
                    "AND pseudonym = ANY(%s::text[])",
                    [self._deployment, list(pseudonyms)],
                )
            self._bump(conn)

        self._conn.run(work)


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
