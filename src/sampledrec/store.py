"""The store directory: one folder that holds a deployment's policy, keys, log, catalog and
recordings, with no server.

::

    STORE/
      store.json        format marker, store id, creation time, simulated flag, keyring location,
                        default region for national phone numbers (optional), and the storage
                        backends (below)
      policy.toml       the policy most recently applied (for people to read)
      policies/         every applied policy, by version id, and schedule.json (when each
                        takes effect); the log records each one too
      objections.txt    pseudonyms of callers who objected (never numbers); every change is
                        logged first (docs/decisions/0018-objections-logged.md)
      objections.pending
                        a change of the list logged and not yet saved, only after a crash
      keys/             the local keyring (0700), unless the store names another folder
      log/              the decision log (sampledrec.log), every byte covered by verification
      log.lock          the log writers' lock
      recovered/        incomplete log tails set aside after a crash, and damaged parts set
                        aside by a repair, if any
      log.repair        the plan of a log repair under way, only while one is (log/,
                        log.lock, log.repair and recovered/ are LocalLogStorage's)
      catalog.sqlite    the recordings catalog (backend "sqlite")
      recordings/       sealed recordings (backend "local" of the blob store)
      staging/          recordings being recorded, and sealed ones waiting for their upload,
                        when the blob store is "s3" (sampledrec.vault.staging; encrypted)
      caps.sqlite       the per-agent caps ledger
      decided.sqlite    the decided-calls index: each call's first decision in the recent
                        epochs, so that deciding again answers the same in every process
      cosigned/         checkpoints cosigned by the store's witnesses, per witness and UTC
                        day (sampledrec.witness.client), when store.json names witnesses
      users.sqlite      the web console's accounts (sampledrec.accounts): roles, argon2id
                        password hashes, sealed TOTP secrets, hashed recovery codes
      usage.json        the console's page views per day and per role (sampledrec.accounts.usage)
      lock              the store's lock file (fcntl), outside every covered folder

``store.json``'s ``witnesses`` (optional) names the witnesses that cosign the log's checkpoints
and the quorum (:class:`~sampledrec.witness.WitnessSettings`). Its ``backends`` names each
storage backend and its settings; :meth:`Store.open` builds them, and nothing else in the
library joins a path inside the store by hand (the decision log is not named there: each store
keeps its own on local disk, and :attr:`Store.log_storage` is the one place that builds its
storage)::

    "backends": {
      "catalog":  {"kind": "sqlite", "path": "catalog.sqlite"}
              or  {"kind": "postgresql", "dsn": "postgresql://sampledrec@db.example/sampledrec"},
      "blobs":    {"kind": "local", "path": "recordings"}
              or  {"kind": "s3", "bucket": "call-recordings", "prefix": "node-a",
                   "endpoint": "https://...", "region": "...", "credentials_file": "..."}
                                                     (docs/decisions/0027-object-storage.md)
      "keystore": {"kind": "local"}                      (bucket keys in the keyring folder)
              or  {"kind": "pkcs11", "module": "/usr/lib/softhsm/libsofthsm2.so",
                   "token": "sampledrec", "pin_env": "SAMPLEDREC_PKCS11_PIN"}
    }

Relative paths are inside the store. A store without ``backends`` (made before they existed)
uses these defaults. The PIN of a PKCS#11 token is never written: ``pin_env`` names the
environment variable that holds it; nor are S3 credentials: they come from the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) or from the file ``credentials_file`` names.

A catalog on PostgreSQL (``sampledrec init --catalog DSN``) holds the caps ledger and the
decided-calls index too (tables of the same database, instead of ``caps.sqlite`` and
``decided.sqlite``), so that caps and idempotent decisions hold for every store that names it
(docs/decisions/0026-postgresql.md). Its DSN never holds a password (store.json is backed up
with the data): libpq reads it from ``PGPASSWORD`` or a password file (``~/.pgpass``,
``PGPASSFILE``), and every message shows the DSN redacted.

Folders are 0700 and files 0600. A store created by ``sampledrec demo`` (or ``init
--simulated``) is marked *simulated*: it may act at a time ahead of the real clock (reveal keys of
epochs that have not ended, sweep, release holds or erase as of a later day), and every report
says so. A real store refuses to destroy, reveal or erase anything ahead of the real clock
(:meth:`Store.act_at`, the one check every such action goes through); reads may look ahead.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from ._hazmat.files import write_atomic
from ._hazmat.locking import wait_for_flock
from ._hazmat.postgres import (
    PgConnection,
    advisory_lock,
    advisory_lock_id,
    dsn_has_password,
    redact_dsn,
)
from .clock import SYSTEM_CLOCK, Clock, FixedClock
from .deployment import Deployment, DeploymentSettings, NodeRegistry, NodeState, check_node_name
from .errors import (
    InvalidArgument,
    InvalidPolicy,
    KeyringError,
    StoreError,
    StoreLocked,
    StoreNotFound,
    StorePermissionError,
)
from .keys.keyring import EpochKey, LocalKeyring, RevealedKey, reveal
from .keys.keystore import KeyStore, LocalKeyStore, Pkcs11KeyStore
from .keys.shared import DeploymentKey, NodeKeyring, SharedKeys, SharedKeyStore
from .log.format import (
    T_ACCESS,
    T_KEY_COMMIT,
    T_KEY_REVEAL,
    T_OBJECTION,
    T_POLICY,
    from_micros,
    to_micros,
)
from .log.repair import RepairReport
from .log.storage import LocalLogStorage, LogStorage
from .log.writer import DecisionLog
from .sampling.caps import (
    KEEP_DAYS,
    CapAnswer,
    CapLedger,
    CapRequest,
    SqliteCapLedger,
    cap_agent,
    cap_periods,
)
from .sampling.changes import PolicyPreview, preview
from .sampling.decided import DecidedCalls, FirstDecision, SqliteDecidedCalls
from .sampling.objections import ObjectionChange, ObjectionList, check_region
from .sampling.policy import DEFAULT_POLICY_TOML, Policy
from .sampling.postgres import PostgresCapLedger, PostgresDecidedCalls
from .sampling.record import REASONS
from .sampling.sampler import Sampler, cap_call_name
from .vault.blobs import BlobStore, LocalBlobStore
from .vault.catalog import Catalog, SqliteCatalog
from .vault.postgres import PostgresCatalog
from .vault.staging import StagedBlobStore
from .witness.client import COSIGNED_DIR, Witnessing, WitnessSettings

__all__ = ["Store"]

STORE_FORMAT: Final = "sampledrec-store"
CAPS_FILE: Final = "caps.sqlite"  # the per-agent caps ledger (sampledrec.sampling.caps)
DECIDED_FILE: Final = "decided.sqlite"  # the decided-calls index (sampledrec.sampling.decided)
STORE_VERSION: Final = 1
REVEALED_FORMAT: Final = "sampledrec-revealed-keys"
DEFAULT_BACKENDS: Final[dict[str, dict[str, str]]] = {
    "catalog": {"kind": "sqlite", "path": "catalog.sqlite"},
    "blobs": {"kind": "local", "path": "recordings"},
    "keystore": {"kind": "local"},
}


class Store:
    """An opened store directory. Create one with :meth:`init`, open it with :meth:`open`."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self._meta = meta
        self._policies: dict[str, Policy] = {}
        keys_dir = meta.get("keys_dir")
        self.keys_path = Path(keys_dir) if keys_dir else path / "keys"
        self.backends = _backends(meta.get("backends"), path)
        self.keyring: LocalKeyring | NodeKeyring = self._open_keyring(meta, path)
        self._keystore: KeyStore | None = None
        self._blobs: BlobStore | None = None
        self._log_storage: LogStorage | None = None
        self._objections_seen: tuple[tuple[int, ...], frozenset[str]] | None = None
        self._deployment_settings: DeploymentSettings | None = None
        self._synced_generation = -1
        self.store_id = bytes.fromhex(meta["store_id"])
        self.origin = str(meta["origin"])
        owner = self.keyring.owner()
        if owner is not None and owner != self.store_id.hex():
            raise StoreError(
                f"the keyring {self.keys_path} belongs to another store ({owner[:12]}...), not "
                f"to {path} ({self.store_id.hex()[:12]}...): use this store's own keyring"
            )

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}{', simulated' if self.simulated else ''})"

    def _open_keyring(self, meta: dict[str, Any], path: Path) -> LocalKeyring | NodeKeyring:
        """The store's own keyring or, for a node of a deployment, its node keyring: the
        shared keys from the deployment's database, the log's own keys from ``keys/``."""
        local = LocalKeyring(self.keys_path)
        node = self.deployment
        if node is None:
            if self.backends["keystore"]["kind"] == "deployment":
                raise StoreError(
                    f"{path / 'store.json'}: backends.keystore of kind 'deployment' is for the "
                    "nodes of a deployment ('sampledrec node init')"
                )
            return local
        dsn = self.catalog_dsn
        if dsn is None:
            raise StoreError(f"{path / 'store.json'}: a node's catalog must be on PostgreSQL")
        # A key file is named in store.json; a key on a token, in the deployment file
        # (so that rotating to a new label is one file to copy to every node).
        key = (
            DeploymentKey(node["key_file"])
            if node["key_file"]
            else Deployment.load(node["file"]).wrapping_key()
        )
        shared = SharedKeys(dsn, node["deployment_id"], key)
        return NodeKeyring(local, shared, since=node["since"])

    @property
    def deployment(self) -> dict[str, str] | None:
        """For a node of a deployment: its deployment's name and id, the node's name, the
        deployment file and key file, and its first day (``store.json``'s ``deployment``);
        None for a store of its own."""
        raw = self._meta.get("deployment")
        if raw is None:
            return None
        wanted = ("name", "deployment_id", "node", "file", "key_file", "since")
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in wanted):
            raise StoreError(
                f"{self.path / 'store.json'}: 'deployment' must name {', '.join(wanted)}"
            )
        return {k: str(raw[k]) for k in wanted}

    @property
    def node_name(self) -> str | None:
        """The node's name in its deployment, or None for a store of its own."""
        node = self.deployment
        return None if node is None else node["node"]

    def node_registry(self) -> NodeRegistry | None:
        """For a node: a new connection to its deployment's list of nodes (the caller closes
        it); None for a store of its own."""
        node = self.deployment
        if node is None or self.catalog_dsn is None:
            return None
        return NodeRegistry(self.catalog_dsn, node["deployment_id"])

    def node_state(self) -> NodeState | None:
        """For a node: its state in the deployment's list (None for a store of its own, or a
        node made before the list existed, which counts as active)."""
        registry = self.node_registry()
        if registry is None:
            return None
        with registry:
            return registry.get(str(self.node_name))

    def _check_active(self) -> None:
        state = self.node_state()
        if state is not None and state.status != "active":
            when = from_micros(state.changed_at).isoformat()
            raise StoreError(
                f"node {state.name!r} was {state.status} on {when} (by node "
                f"{state.changed_by}{': ' + state.reason if state.reason else ''}); it no "
                "longer decides or records. Its log is kept for audits ('sampledrec audit kit "
                "--node'); to add capacity, make a new node with another name ('sampledrec "
                "node init')"
            )

    def _running_lock_id(self, node: str) -> int:
        dep = self.deployment
        assert dep is not None
        return advisory_lock_id(f"sampledrec/v1/node-running/{dep['deployment_id']}/{node}")

    def _node_running(self) -> _NodeRunning:
        """While this node's log is open, a shared advisory lock says that the node runs, so
        that no other node declares it lost meanwhile (:meth:`declare_lost`)."""
        assert self.catalog_dsn is not None and self.node_name is not None
        return _NodeRunning(
            self.catalog_dsn, self._running_lock_id(self.node_name), str(self.node_name)
        )

    def retire(self, *, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
        """Retire this node of a deployment (docs/decisions/0035): recover and seal the
        recordings its log left open, upload those still on its disk, mark it ``retired`` in
        the deployment's list (it never decides again: :meth:`sampler` refuses), then log the
        retirement and sign a final checkpoint. Run it once its server is stopped. Its log,
        keys and folder stay: its kit still joins the deployment's audits.

        Refused (:class:`StoreError`, nothing changed) while a recording waits for an upload
        that fails: nobody would upload it once the node is retired. Running it again after
        an interruption finishes the job."""
        from .vault.recorder import Vault
        from .vault.staging import StagedBlobs

        name = self.node_name
        if name is None:
            raise InvalidArgument(f"{self.path} is not a node of a deployment: nothing to retire")
        registry = self.node_registry()
        assert registry is not None and self.catalog_dsn is not None
        # No other process of this node may have its log open (a server still recording):
        # the node's running lock, held exclusively for the whole retirement.
        with (
            registry,
            _no_node_running(self.catalog_dsn, self._running_lock_id(name), name),
            self.open_log(clock=clock, _running_lock=False) as log,
            Vault(self, log, clock=clock) as vault,
        ):
            recovered = vault.recover()
            _, failed = vault.upload_pending()
            blobs = self.blobs
            waiting = blobs.pending() if isinstance(blobs, StagedBlobs) else []
            if failed or waiting:
                raise StoreError(
                    f"node {name!r} still has {len(waiting)} sealed recordings waiting for their "
                    f"upload to the object storage ({self.staging_path / 'outbox'}); make the "
                    "bucket reachable and run 'sampledrec node retire' again"
                )
            state = registry.change(
                name, "retired", now_us=to_micros(clock.now()), by=name, reason="retired"
            )
            log.append(
                T_ACCESS,
                {
                    "action": "node_retired",
                    "outcome": "granted",
                    "principal": getpass.getuser(),
                    "detail": f"node {name} retired; {len(recovered)} recordings recovered",
                },
                at=clock.now(),
            )
            checkpoint = log.checkpoint()
        return {
            "node": name,
            "status": state.status,
            "retired_at": from_micros(state.changed_at).isoformat(),
            "recovered": recovered,
            "checkpoint": {"size": checkpoint.size, "root_hash": checkpoint.root.hex()},
        }

    def declare_lost(
        self, node: str, *, reason: str, clock: Clock = SYSTEM_CLOCK
    ) -> dict[str, Any]:
        """From this node, declare ``node`` of the same deployment lost for good (its machine
        and disk are gone; docs/decisions/0035): mark it ``lost`` in the deployment's list
        first, so that it can never come back and go on recording, then deal with its
        recordings (:meth:`Vault.recover_lost <sampledrec.vault.Vault.recover_lost>`), every
        outcome logged in this node's log with the reason. Running it again after an
        interruption finishes the job."""
        from .vault.recorder import Vault

        me = self.node_name
        if me is None:
            raise InvalidArgument(f"{self.path} is not a node of a deployment")
        check_node_name(node)
        if node == me:
            raise InvalidArgument(
                f"node {node!r} is this node; declare a node lost from another node"
            )
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidArgument("say why the node is lost (reason), for the log and the audit")
        self._check_active()
        registry = self.node_registry()
        assert registry is not None and self.catalog_dsn is not None
        # While we mark it lost, no process of that node can open its log (and so decide or
        # record); one that has it open now means the node is not lost.
        with registry, _no_node_running(self.catalog_dsn, self._running_lock_id(node), node):
            state = registry.change(
                node, "lost", now_us=to_micros(clock.now()), by=me, reason=reason.strip()
            )
        with self.open_log(clock=clock) as log, Vault(self, log, clock=clock) as vault:
            outcomes = vault.recover_lost(node, reason=reason.strip())
        return {
            "node": node,
            "status": state.status,
            "declared_by": me,
            "declared_at": from_micros(state.changed_at).isoformat(),
            "recordings": outcomes,
        }

    @property
    def simulated(self) -> bool:
        return bool(self._meta.get("simulated"))

    @property
    def region(self) -> str | None:
        """The default region in which national phone numbers are read (``"FR"``), if set."""
        region = self._meta.get("region")
        return str(region) if region else None

    @property
    def created_at(self) -> str:
        return str(self._meta.get("created_at", ""))

    @property
    def policy_path(self) -> Path:
        return self.path / "policy.toml"

    @property
    def users_path(self) -> Path:
        """The web console's accounts (:mod:`sampledrec.accounts`; 0600, created on first use)."""
        return self.path / "users.sqlite"

    @property
    def usage_path(self) -> Path:
        """The console's page views per day and per role (:mod:`sampledrec.accounts.usage`;
        0600, created at the first view)."""
        return self.path / "usage.json"

    # -- the storage backends (store.json "backends") ------------------------------------------

    @property
    def keystore(self) -> KeyStore:
        """The key store of the expiry buckets' keys (built once, on first use)."""
        if self._keystore is None:
            spec = self.backends["keystore"]
            if spec["kind"] == "pkcs11":
                self._keystore = _pkcs11_keystore(spec)
            elif spec["kind"] == "deployment":
                assert isinstance(self.keyring, NodeKeyring)  # checked when the store opened
                self._keystore = SharedKeyStore(self.keyring.shared)
            else:
                self._keystore = LocalKeyStore(self.keys_path)
        return self._keystore

    @property
    def blobs(self) -> BlobStore:
        """Where sealed recordings are kept (built once, on first use)."""
        if self._blobs is None:
            if self.backends["blobs"]["kind"] == "s3":
                # Recordings in progress stay on this node's disk, encrypted, until sealed:
                # a crash mid-call leaves their prefix for recovery (0035).
                self._blobs = StagedBlobStore(
                    self.staging_path, _s3_blob_store(self.backends["blobs"], self.path)
                )
                return self._blobs
            path = self._inside(self.backends["blobs"]["path"])
            try:
                self._blobs = LocalBlobStore(path, create=True)
            except OSError as exc:  # store.json names a path that cannot be a folder here
                raise StoreError(f"cannot open the recordings folder {path}: {exc}") from exc
        return self._blobs

    @property
    def staging_path(self) -> Path:
        """Where a store whose recordings are on S3 keeps them while they are recorded, and
        sealed ones until their upload succeeds (:mod:`sampledrec.vault.staging`)."""
        return self.path / "staging"

    @property
    def catalog_dsn(self) -> str | None:
        """The PostgreSQL database of the catalog (with the caps ledger and the decided-calls
        index), or None for the embedded SQLite files. Never holds a password."""
        spec = self.backends["catalog"]
        return spec["dsn"] if spec["kind"] == "postgresql" else None

    def open_catalog(self) -> Catalog:
        """A new connection to the recordings catalog; the caller closes it."""
        if self.catalog_dsn is not None:
            return PostgresCatalog(self.catalog_dsn)
        path = self._inside(self.backends["catalog"]["path"])
        try:
            return SqliteCatalog(path)
        except OSError as exc:  # store.json names a path that cannot be a file here
            raise StoreError(f"cannot open the catalog {path}: {exc.strerror}") from exc

    @property
    def log_storage(self) -> LogStorage:
        """Where the decision log's bytes are kept: ``log/`` in the store's folder (its lock
        and set-aside tails beside it; built once, on first use)."""
        if self._log_storage is None:
            self._log_storage = LocalLogStorage.in_store(self.path)
        return self._log_storage

    def _inside(self, path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else self.path / path

    # -- creating and opening ----------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        policy: str | os.PathLike[str] | None = None,
        keys_dir: str | os.PathLike[str] | None = None,
        simulated: bool = False,
        region: str | None = None,
        backends: dict[str, dict[str, str]] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        _node: dict[str, str] | None = None,
    ) -> Store:
        """Create a new store. ``policy`` is a policy file (checked first); without it the
        default policy is written (purpose quality, rate 5%, retention 6 months). ``region``
        (``"FR"``) is where callers' national numbers (``06 12 34 56 78``) are read.
        ``backends`` replaces some of :data:`DEFAULT_BACKENDS` (module docstring)."""
        root = Path(path)
        if region is not None:
            region = check_region(region)
        if (root / "store.json").exists():
            raise StoreError(f"{root} is already a sampledrec store; open it instead")
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} exists and is not a folder; choose another path")
        if root.exists() and any(root.iterdir()):
            raise StoreError(f"{root} is not empty; create the store in a new or empty folder")
        if keys_dir is not None and LocalKeyring.owner_of(keys_dir) is not None:
            raise StoreError(
                f"the keyring {keys_dir} already belongs to another store; a keyring serves one "
                "store (its markers, signing and sealing keys are the store's own): name a new "
                "folder"
            )
        chosen = {**DEFAULT_BACKENDS, **(dict(backends) if backends else {})}
        dsn = chosen["catalog"].get("dsn")
        if isinstance(dsn, str) and dsn_has_password(dsn):
            raise InvalidArgument(
                f"the catalog's DSN {redact_dsn(dsn)!r} holds a password, which would be written "
                "to store.json (backed up with the data): leave it out and give it to libpq in "
                "the environment variable PGPASSWORD or a password file (~/.pgpass, PGPASSFILE)"
            )
        checked = _backends(chosen, root)  # refuse unknown backends before creating anything
        if checked["catalog"]["kind"] == "postgresql":
            _prepare_postgres(checked["catalog"]["dsn"])  # reachable, and its tables made
        if chosen["blobs"]["kind"] == "s3":
            _s3_blob_store(chosen["blobs"], root)  # the bucket answers, before anything is made
        if policy is not None:
            text = Path(policy).read_text(encoding="utf-8")
            Policy.from_toml(text, source=str(policy))  # refuse a bad policy before creating
        else:
            text = DEFAULT_POLICY_TOML
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(root, 0o700)
            keys_path = Path(keys_dir).resolve() if keys_dir else root / "keys"
            LocalKeyring(keys_path, create=True)
            write_atomic(root / "objections.txt", b"")
            store_id = secrets.token_bytes(16)
            meta = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "store_id": store_id.hex(),
                "origin": f"sampledrec.local/{store_id.hex()}",
                "created_at": clock.now().isoformat(),
                "simulated": simulated,
                "keys_dir": str(keys_path) if keys_dir else None,
                "backends": chosen,
                # Every change of objections.txt is logged (nothing to migrate).
                "objections_logged": True,
            }
            if _node is not None:
                meta["deployment"] = {**_node, "since": clock.now().date().isoformat()}
            if region is not None:
                meta["region"] = region
            LocalKeyring(keys_path).claim(store_id.hex())
            write_atomic(root / "store.json", json.dumps(meta, indent=2).encode() + b"\n")
            store = cls(root, meta)
            from ._version import __version__

            log = DecisionLog.create(
                store.log_storage,
                store.keyring,
                origin=store.origin,
                store_id=store_id,
                simulated=simulated,
                clock=clock,
                software=f"sampledrec {__version__}",
            )
            try:
                # The store's (or the new node's) own first policy: never published, a node
                # follows its deployment's right after (init_node).
                store._apply_policy_text(text, clock.now(), getpass.getuser(), log)
            finally:
                log.close()
        except PermissionError as exc:
            raise StorePermissionError(f"cannot create the store at {root}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot create the store at {root}: {exc}") from exc
        return store

    @classmethod
    def init_node(
        cls,
        path: str | os.PathLike[str],
        deployment: Deployment | str | os.PathLike[str],
        *,
        name: str,
        policy: str | os.PathLike[str] | None = None,
        simulated: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Store:
        """Create the node ``name`` of a deployment (a :class:`~sampledrec.deployment.Deployment`
        or its file) in the new folder ``path``: a store with its own decision log, signing key
        and log sealing keys (``path/keys``), whose catalog, caps ledger, decided-calls index,
        bucket and shared keys (epoch keys, pseudonym key, bucket keys) are the deployment's.
        ``policy`` defaults to the deployment's (else the default policy)."""
        dep = deployment if isinstance(deployment, Deployment) else Deployment.load(deployment)
        node = dep.node_settings(name)
        keys = dep.shared_keys()  # the deployment key opens the deployment's keys, first
        try:
            keys.check()
        finally:
            keys.close()
        settings = dep.settings()
        try:
            scheduled = bool(settings.policies())
        finally:
            settings.close()
        if scheduled and policy is not None:
            raise InvalidArgument(
                f"deployment {dep.name!r} has a policy schedule, which every node follows: "
                "leave --policy out, and change the deployment's policy with 'sampledrec policy "
                "apply' on any node"
            )
        with dep.registry() as registry:  # a retired or lost node's name is never reused
            registry.add(name, now_us=to_micros(clock.now()))
        store = cls.init(
            path,
            policy=policy if policy is not None else dep.policy,
            simulated=simulated,
            backends=dep.backends(),
            clock=clock,
            _node=node,
        )
        with store.open_log(clock=clock) as log:  # the deployment's policy and objections
            store.sync_deployment(log, clock=clock)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        root = Path(path)
        meta_path = root / "store.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreNotFound(
                f"{root} is not a sampledrec store (no store.json); create one with "
                f"'sampledrec init {root}'"
            ) from None
        except PermissionError as exc:
            raise StorePermissionError(f"cannot read {meta_path}: {exc.strerror}") from exc
        except (OSError, ValueError, RecursionError) as exc:
            raise StoreError(f"cannot read {meta_path}: {str(exc)[:200]}") from None
        if not isinstance(meta, dict):
            raise StoreError(f"{meta_path} must be a JSON object, not {type(meta).__name__}")
        if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
            raise StoreError(
                f"{meta_path} is not a version {STORE_VERSION} sampledrec store; "
                "upgrade sampledrec or use a store made by this version"
            )
        _check_meta(meta, meta_path)
        return cls(root, meta)

    # -- what lives in it --------------------------------------------------------------------

    def policy(self, at: datetime | None = None) -> Policy:
        """The policy in force at ``at`` (default: now): the latest applied version whose
        effective time has come."""
        when = at or SYSTEM_CLOCK.now()
        chosen = None
        for item in self._schedule():
            if datetime.fromisoformat(item["effective_at"]) <= when:
                chosen = item["version"]
        if chosen is None:
            schedule = self._schedule()
            if not schedule:
                raise StoreError(
                    f"{self.path} has no policy; apply one with 'sampledrec policy apply'"
                )
            chosen = schedule[0]["version"]  # nothing in force yet: the first one
        return self.policy_version(chosen)

    def _schedule(self) -> list[dict[str, str]]:
        try:
            data = json.loads((self.path / "policies" / "schedule.json").read_text("utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the policy schedule: {exc}") from exc
        return list(data)

    def policy_version(self, version: str) -> Policy:
        """The applied policy with version id ``version`` (checked against its hash)."""
        cached = self._policies.get(version)
        if cached is not None:
            return cached
        path = self.path / "policies" / f"{version}.toml"
        try:
            policy = Policy.load(path)
        except InvalidPolicy as exc:
            raise StoreError(f"the store's policy cannot be used: {exc}") from exc
        if policy.version != version:
            raise StoreError(f"{path} does not hash to its version id: it was edited")
        self._policies[version] = policy
        return policy

    def apply_policy(
        self,
        file: str | os.PathLike[str],
        *,
        effective_at: datetime | None = None,
        principal: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Policy:
        """Check a policy file, log it with the time it takes effect, and schedule it."""
        text = Path(file).read_text(encoding="utf-8")
        Policy.from_toml(text, source=str(file))
        with self.open_log(clock=clock) as log:
            return self.apply_policy_text(
                text,
                log=log,
                effective_at=effective_at or clock.now(),
                principal=principal or getpass.getuser(),
            )

    def preview_policy(
        self, text: str, *, at: datetime | None = None, source: str | None = None
    ) -> PolicyPreview:
        """What applying the policy ``text`` at ``at`` (default now) would change against the
        policy in force then, with the guardrail messages
        (:mod:`sampledrec.sampling.changes`): what ``sampledrec policy apply`` prints and the
        console's policy page shows. Raises :class:`~sampledrec.errors.InvalidPolicy` for a
        policy that cannot be applied at all."""
        proposed = Policy.from_toml(text, source=source)
        try:
            current: Policy | None = self.policy(at)
        except StoreError:
            current = None
        return preview(current, proposed)

    def apply_policy_text(
        self, text: str, *, log: DecisionLog, effective_at: datetime, principal: str
    ) -> Policy:
        """Apply the policy ``text`` through the open ``log`` (a running server's): checked,
        kept in ``policies/``, logged with ``principal`` and the time it takes effect, and
        scheduled. The caller checks who may (:func:`sampledrec.accounts.apply_policy` does,
        with ``manage_policy``).

        On a node of a deployment the deployment's schedule changes, which every node follows
        (:meth:`sync_deployment`, docs/decisions/0036-deployment-keys.md): this node at once,
        through ``log``; the others within about a second."""
        settings = self._settings()
        if settings is None:
            return self._apply_policy_text(text, effective_at, principal, log)
        policy = Policy.from_toml(text, source="policy.toml")
        settings.publish_policy(policy.version, text, effective_at, principal)
        # Followed as of its effective time when that is now (logged here with that time, as a
        # store logs it); one ahead is scheduled at its time. Never dated ahead of the clock.
        self.sync_deployment(log, clock=FixedClock(min(effective_at, SYSTEM_CLOCK.now())))
        return Policy.from_toml(text, source=str(self.policy_path))

    def _apply_policy_text(
        self,
        text: str,
        effective_at: datetime,
        principal: str,
        log: DecisionLog,
        *,
        locked: bool = False,
    ) -> Policy:
        """This store's own schedule: the policy kept, logged and scheduled (under the store's
        lock, unless the caller holds it: ``locked``)."""
        policy = Policy.from_toml(text, source="policy.toml")
        folder = self.path / "policies"
        folder.mkdir(mode=0o700, exist_ok=True)
        with contextlib.nullcontext() if locked else self.lock():
            target = folder / f"{policy.version}.toml"
            if not target.exists():
                write_atomic(target, text.encode("utf-8"))
            ticket = log.append(
                T_POLICY,
                {
                    "version": bytes.fromhex(policy.version),
                    "effective_at": to_micros(effective_at),
                    "canonical": policy.canonical,
                    "principal": principal,
                },
            )
            log.wait_durable(ticket)
            schedule = [s for s in self._schedule() if s["version"] != policy.version]
            schedule.append({"version": policy.version, "effective_at": effective_at.isoformat()})
            schedule.sort(key=lambda s: datetime.fromisoformat(s["effective_at"]))
            write_atomic(
                folder / "schedule.json",
                json.dumps(schedule, indent=2).encode() + b"\n",
                replace=True,
            )
            write_atomic(self.policy_path, text.encode("utf-8"), replace=True)
        return Policy.from_toml(text, source=str(self.policy_path))

    @property
    def public_key(self) -> bytes:
        """The store's log-signing public key (from the keyring, not from the log)."""
        from .log.checkpoint import LogSigner

        return LogSigner(self.origin, self.keyring.signing_seed()).public_key

    @property
    def vkey(self) -> str:
        """The verifier key of the store's log, for an auditor: ``name+keyid+base64key``."""
        from .log.checkpoint import vkey

        return vkey(self.origin, self.public_key)

    def open_log(
        self, *, clock: Clock = SYSTEM_CLOCK, _running_lock: bool = True, **kw: Any
    ) -> DecisionLog:
        """Open the decision log for appending (recovering from a crash if needed). When
        ``store.json`` names witnesses, the log asks them to cosign its checkpoints in the
        background (:class:`~sampledrec.witness.Witnessing`) until it is closed."""
        log = DecisionLog.open(
            self.log_storage,
            self.keyring,
            origin=self.origin,
            store_id=self.store_id,
            clock=clock,
            **kw,
        )
        if self.deployment is not None and _running_lock:
            try:
                log.add_listener(self._node_running())
            except BaseException:
                log.close()
                raise
        settings = self.witnesses
        if settings is not None:
            log.add_listener(
                Witnessing(
                    log.storage,
                    settings,
                    self.path / COSIGNED_DIR,
                    latest=log.latest_checkpoint(),
                )
            )
        return log

    @property
    def witnesses(self) -> WitnessSettings | None:
        """The witnesses that cosign the log's checkpoints (``store.json``), or ``None``."""
        raw = self._meta.get("witnesses")
        return None if raw is None else WitnessSettings.from_json(raw)

    def configure_witnesses(self, settings: WitnessSettings | None) -> None:
        """Name the witnesses in ``store.json`` (``None``: none); the next log opened uses them."""
        with self.lock():
            meta = json.loads((self.path / "store.json").read_text(encoding="utf-8"))
            if settings is None:
                meta.pop("witnesses", None)
            else:
                meta["witnesses"] = settings.to_json()
            write_atomic(
                self.path / "store.json", json.dumps(meta, indent=2).encode() + b"\n", replace=True
            )
            self._meta = meta

    def repair_log(
        self, reason: str, *, principal: str | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> RepairReport:
        """Repair the damaged decision log, deliberately (``sampledrec log repair``): the
        damaged part is set aside untouched, the log is cut back to its last good batch and a
        ``log_gap`` entry records the gap, by ``principal`` (default: the OS user) because of
        ``reason`` (:meth:`DecisionLog.repair`). The commitments of the keyring's epoch keys and
        the applied policies that the log kept does not hold are logged again right after it,
        so that later decisions can be checked. Every other process using the store must be
        stopped first. The audit reports the gap as a failure, for good."""
        who = principal or getpass.getuser()
        with self.lock():
            restore: list[tuple[int, Mapping[str, Any]]] = []
            for item in self._schedule():
                policy = self.policy_version(item["version"])
                restore.append(
                    (
                        T_POLICY,
                        {
                            "version": bytes.fromhex(policy.version),
                            "effective_at": to_micros(datetime.fromisoformat(item["effective_at"])),
                            "canonical": policy.canonical,
                            "principal": who,
                        },
                    )
                )
            for epoch_id in self.keyring.epoch_ids():
                key = self.keyring.epoch_key(epoch_id)
                restore.append((T_KEY_COMMIT, {"epoch_id": epoch_id, "commitment": key.commitment}))
            return DecisionLog.repair(
                self.log_storage,
                self.keyring,
                origin=self.origin,
                store_id=self.store_id,
                principal=who,
                reason=reason,
                restore=restore,
                clock=clock,
            )

    # -- a node follows its deployment's policy schedule and objection list ------------------

    def _settings(self) -> DeploymentSettings | None:
        """The deployment's policy schedule and objection list, for a node (None otherwise)."""
        node = self.deployment
        if node is None or self.catalog_dsn is None:
            return None
        if self._deployment_settings is None:
            self._deployment_settings = DeploymentSettings(self.catalog_dsn, node["deployment_id"])
        return self._deployment_settings

    def sync_deployment(
        self, log: DecisionLog, *, clock: Clock = SYSTEM_CLOCK, wait: float = 30.0
    ) -> bool:
        """For a node of a deployment: bring its policy schedule and objection list up to the
        deployment's (docs/decisions/0036-deployment-keys.md), logging every change in this
        node's log, durably, before the node's files change (so before any of its samplers
        uses it). Returns whether the deployment had changed since this process last looked
        (one query when nothing did); False for a store of its own.

        - Policies: the deployment's version in force now and every later one. A version this
          node does not have in force yet is logged and scheduled here with its effective time,
          or now if that is past: the node's log says when its decisions started using it.
        - Objections: callers on the deployment's list and not on the node's are added, and
          the other way round taken off (one ``objection`` entry each, as 0018). The first
          time a node syncs, its own list is first added to the deployment's (nodes made before
          the list was the deployment's kept one each: none is dropped).

        Holds only this node's lock, never the deployment's: a sweep on another node does not
        hold decisions up here. ``wait``: how long to wait for this node's lock
        (:class:`~sampledrec.errors.StoreLocked` after that).
        """
        settings = self._settings()
        if settings is None:
            return False
        generation = settings.generation()
        if generation == self._synced_generation and self._meta.get("deployment_synced"):
            return False
        with self._local_lock(wait):
            if not self._meta.get("deployment_synced"):
                mine = sorted(self.objection_pseudonyms())
                if mine:
                    settings.publish_objections("added", mine)
                generation = settings.generation()
            self._follow_policies(settings, log, clock)
            self._follow_objections(settings, log, clock)
            if not self._meta.get("deployment_synced"):
                self._write_meta({"deployment_synced": True})
        self._synced_generation = generation
        return True

    def _follow_policies(
        self, settings: DeploymentSettings, log: DecisionLog, clock: Clock
    ) -> None:
        shared = settings.policies()
        if not shared:
            return  # a deployment whose nodes keep their own schedules (made before 0036)
        now = clock.now()
        in_force = [p for p in shared if p.effective_at <= now]
        wanted = ([in_force[-1]] if in_force else []) + [p for p in shared if p.effective_at > now]
        mine = {s["version"]: datetime.fromisoformat(s["effective_at"]) for s in self._schedule()}
        for p in wanted:
            have = mine.get(p.version)
            if have is not None and have >= p.effective_at:
                continue  # already followed (at its time, or from when this node logged it)
            self._apply_policy_text(p.text, max(p.effective_at, now), p.principal, log, locked=True)

    def _follow_objections(
        self, settings: DeploymentSettings, log: DecisionLog, clock: Clock
    ) -> None:
        shared = settings.objections()
        mine = self.objection_pseudonyms()
        added, removed = sorted(shared - mine), sorted(mine - shared)
        if not (added or removed):
            return
        hook = self._objection_hook(clock, log, "sampledrec", publish=False)
        listed = ObjectionList.load(
            self.keyring.pseudonym_key(), self.path / "objections.txt", on_change=hook
        )  # no lock of its own: the caller holds this node's
        if added:
            listed.change_pseudonyms("added", added)
        if removed:
            listed.change_pseudonyms("removed", removed)

    def _write_meta(self, changes: Mapping[str, Any]) -> None:
        meta = json.loads((self.path / "store.json").read_text(encoding="utf-8"))
        meta.update(changes)
        write_atomic(
            self.path / "store.json", json.dumps(meta, indent=2).encode() + b"\n", replace=True
        )
        self._meta = meta

    def objections(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        log: DecisionLog | None = None,
        principal: str | None = None,
    ) -> ObjectionList:
        """The callers who objected. Every change (:meth:`ObjectionList.add_all`,
        :meth:`~ObjectionList.remove_all`) is logged durably, one ``objection`` entry per
        caller (and one ``access`` entry naming ``principal``, default the OS user), before the
        list is saved, under the store's lock, in one atomic write; into ``log`` when given,
        else into the store's log opened for the change. ``clock`` dates the entries.

        Opening it finishes a change that a crash left logged but not saved, and, the first
        time in a store made before changes were logged, logs every caller already on the
        list as ``added`` with ``migrated`` true (docs/decisions/0018-objections-logged.md).
        """
        if self._settings() is not None:
            # A node: its list follows the deployment's before anything is changed on it.
            if log is not None:
                self.sync_deployment(log, clock=clock)
            else:
                with self.open_log(clock=clock) as opened:
                    self.sync_deployment(opened, clock=clock)
        logged = self._objection_hook(clock, log, principal or getpass.getuser())
        objections = ObjectionList.load(
            self.keyring.pseudonym_key(),
            self.path / "objections.txt",
            region=self.region,
            lock=self.lock,
            on_change=logged,
        )
        if not self._meta.get("objections_logged"):
            with self.lock():
                self._migrate_objections(logged)
        return objections

    def log_objection_list(self, log: DecisionLog, at: datetime) -> int:
        """Log every caller on the objection list again, one ``objection`` entry each with
        action ``kept`` and the number on the list (``listed``), durably; returns how many.
        :meth:`Retention.sweep <sampledrec.Retention.sweep>` does it before it destroys a
        ``calls/`` key, so that the list can still be replayed once the entries that added its
        callers cannot be read. A pending change is finished, and an old store's list migrated,
        first. The caller holds the store's lock (the sweep does)."""
        logged = self._objection_hook(FixedClock(at), log, "sampledrec")
        listed = ObjectionList.load(
            self.keyring.pseudonym_key(), self.path / "objections.txt", on_change=logged
        )  # no lock of its own: the caller holds the store's
        self._migrate_objections(logged)
        kept = sorted(listed.pseudonyms())
        last = 0
        for pseudonym in kept:
            last = log.append(
                T_OBJECTION,
                {
                    "action": "kept",
                    "listed": len(kept),
                    "caller_pseudonym": bytes.fromhex(pseudonym),
                },
                at=at,
            )
        if kept:
            log.wait_durable(last)
        return len(kept)

    def _objection_hook(
        self, clock: Clock, log: DecisionLog | None, principal: str, *, publish: bool = True
    ) -> Callable[[ObjectionChange], None]:
        """What logs a change of the objection list: into ``log``, or the store's log opened
        for the change. On a node (``publish``), the change is made to the deployment's list
        first, which every other node then follows."""
        settings = self._settings() if publish else None

        def logged(change: ObjectionChange) -> None:
            if settings is not None and not change.migrated:
                settings.publish_objections(change.action, change.pseudonyms)
            if log is not None:
                self._log_objections(log, change, clock.now(), principal)
                return
            with self.open_log(clock=clock) as opened:
                self._log_objections(opened, change, clock.now(), principal)

        return logged

    def _migrate_objections(self, logged: Callable[[ObjectionChange], None]) -> None:
        """Under the store's lock: the first time in a store made before the list's changes
        were logged, log every caller on it once as ``added`` and ``migrated`` (a crash before
        the marker is saved logs them again: harmless), then mark the store."""
        if self._meta.get("objections_logged"):
            return
        meta = json.loads((self.path / "store.json").read_text(encoding="utf-8"))
        if not meta.get("objections_logged"):
            saved = sorted(self.objection_pseudonyms())
            if saved:
                logged(ObjectionChange("added", tuple(saved), migrated=True))
            meta["objections_logged"] = True
            write_atomic(
                self.path / "store.json", json.dumps(meta, indent=2).encode() + b"\n", replace=True
            )
        self._meta["objections_logged"] = True

    def objection_pseudonyms(self) -> frozenset[str]:
        """The objection list as saved (pseudonyms, hex), read only: nothing is finished,
        migrated or logged (what an audit of the store compares with the log, and what the
        vault asks before it opens a recording). Read again only when the file changed."""
        path = self.path / "objections.txt"
        try:
            st = path.stat()
            stamp: tuple[int, ...] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = ()
        cached = self._objections_seen
        if cached is None or cached[0] != stamp:
            cached = self._objections_seen = (stamp, ObjectionList.load(b"", path).pseudonyms())
        return cached[1]

    @staticmethod
    def _log_objections(
        log: DecisionLog, change: ObjectionChange, at: datetime, principal: str
    ) -> None:
        """One ``objection`` entry per caller, then an ``access`` entry saying who; durable."""
        for pseudonym in change.pseudonyms:
            log.append(
                T_OBJECTION,
                {
                    "action": change.action,
                    "migrated": True if change.migrated else None,
                    "caller_pseudonym": bytes.fromhex(pseudonym),
                },
                at=at,
            )
        n = len(change.pseudonyms)
        action = "migrated" if change.migrated else change.action
        last = log.append(
            T_ACCESS,
            {
                "action": "objections",
                "outcome": "granted",
                "principal": "sampledrec" if change.migrated else principal,
                "detail": f"{action} {n} caller{'s' if n != 1 else ''}",
            },
            at=at,
        )
        log.wait_durable(last)

    @contextlib.contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the store's exclusive lock (across threads and processes). A node of a
        deployment also holds the deployment's lock (a PostgreSQL advisory lock), so that
        sweeps, holds, releases and erasures run one at a time across the deployment."""
        with self._local_lock(timeout):
            node = self.deployment
            if node is None or self.catalog_dsn is None:
                yield
                return
            with advisory_lock(
                self.catalog_dsn,
                advisory_lock_id(f"sampledrec/v1/deployment-lock/{node['deployment_id']}"),
                what=f"the lock of deployment {node['name']!r}",
                timeout=timeout,
            ):
                yield

    @contextlib.contextmanager
    def _local_lock(self, timeout: float) -> Iterator[None]:
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                wait_for_flock(
                    fd,
                    timeout=timeout,
                    poll=0.01,
                    held=f"{self.path} is locked by another process for more than "
                    f"{timeout:g} s; wait for it to finish or check for a stuck process",
                )
            except OSError as exc:
                raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from exc
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def sampler(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        log: DecisionLog | None = None,
        first_log_wait: float = 1.0,
    ) -> Sampler:
        """A sampler for this store: its policy schedule, keyring, objection list and lock,
        its caps ledger and (with a log) its decided-calls index.

        With ``log`` every decision is logged, epoch keys are committed in the log (durably)
        before their first use, and ``decide`` is idempotent across the store's processes: a
        call already decided in the epoch, by any sampler of the store, gets its first decision
        again (``first_log_wait``: see :class:`Sampler`). Without a log, decisions are previews
        that nothing records: the sampler remembers them in its own memory only.
        """
        self._check_active()
        real_now = min(clock.now(), SYSTEM_CLOCK.now())  # a simulation ahead prunes nothing
        decided = None
        policy_source: Callable[[datetime], Policy] = self.policy
        if log is not None:
            self.sync_deployment(log, clock=clock)  # a node: the deployment's, as of now

            def following(now: datetime) -> Policy:
                # A node's sampler follows the deployment's changes as it goes (one query a
                # second when nothing changed); each is logged here before it is used. While
                # another process of the node holds its lock (a long sweep), decisions go on
                # with what this node has logged, and the next second tries again.
                with contextlib.suppress(StoreLocked):
                    self.sync_deployment(log, clock=FixedClock(now), wait=0.05)
                return self.policy(now)

            if self._settings() is not None:
                policy_source = following
            self._commit_pending(log, clock.now())
            decided = self._decided_index(real_now)
        try:
            return Sampler(
                self.policy(clock.now()),
                self.keyring,
                clock=clock,
                objections=self.objections(clock=clock, log=log),
                key_lock=self.lock,
                log=log,
                on_new_keys=(
                    None if log is None else lambda _keys: self._commit_uncommitted(log, clock)
                ),
                policy_source=policy_source,
                caps=self._caps_ledger(real_now),
                decided=decided,
                first_log_wait=first_log_wait,
                own_log=self.deployment is not None,
            )
        except BaseException:
            if decided is not None:
                decided.close()
            raise

    def _decided_index(self, now: datetime) -> DecidedCalls:
        """The store's decided-calls index, complete as far as the log goes.

        On PostgreSQL, the database's, shared with the other nodes: its commits are durable
        before a decision is returned, so it is never behind the log (and is not rebuilt from
        this store's log, which holds only this node's decisions).

        Missing (deleted, or a store from before it) while the log has decisions, it is rebuilt
        from the log into a temporary file renamed into place. Written in an earlier boot of the
        machine (:attr:`SqliteDecidedCalls.unclean`: its last commits may be lost while the
        log's fsynced entries survived), the recent decisions of the log are read back into it.
        Both under the store's lock, before any sampler decides with it: one full read of the
        log, once (per restart of the machine)."""
        if self.catalog_dsn is not None:
            return PostgresDecidedCalls(self.catalog_dsn, now=now)
        path = self._rebuilt_from_log(
            DECIDED_FILE, SqliteDecidedCalls, lambda: self._decided_from_log(now)
        )
        index = SqliteDecidedCalls(path, now=now)
        try:
            if index.unclean:
                with self.lock():
                    index.close()  # another process may have read the log back meanwhile
                    index = SqliteDecidedCalls(path)
                    if index.unclean:
                        index.replay(self._decided_from_log(now))
        except BaseException:
            index.close()
            raise
        return index

    def _decided_from_log(self, now: datetime) -> list[FirstDecision]:
        """The first decision of every call that the log shows in the index's window
        (:data:`sampledrec.sampling.caps.KEEP_DAYS`), in log order."""
        import numpy as np

        from .log.columns import call_firsts, counted_once, read_log
        from .log.format import from_micros
        from .sampling.decided import prune_before

        d = read_log(self.log_storage, self.keyring).decisions
        if not len(d):
            return []
        since = prune_before(now)
        keep = np.flatnonzero(counted_once(call_firsts(d)) & (d.ref_kind > 0) & (d.reason >= 0))
        out: list[FirstDecision] = []
        keys: dict[str, EpochKey | None] = {}
        for i in keep.tolist():
            epoch_id = d.epochs[int(d.epoch[i])]
            if epoch_id < since or int(d.reason[i]) >= len(REASONS):
                continue
            if epoch_id not in keys:
                try:
                    keys[epoch_id] = self.keyring.epoch_key(epoch_id)
                except KeyringError:
                    keys[epoch_id] = None  # a key destroyed or never here: nothing to name
            key = keys[epoch_id]
            ref = d.ref(i)
            if key is None or ref is None:
                continue
            version = d.versions[int(d.version[i])].hex()
            rule_name = d.rules[int(d.rule[i])]
            try:
                rule = self.policy_version(version).rule_named(rule_name)
                purpose, rate = rule.purpose, rule.rate
            except (StoreError, KeyError, OSError):
                purpose, rate = "", ""  # a version this store does not have: named as logged
            out.append(
                FirstDecision(
                    epoch_id,
                    cap_call_name(key, ref),
                    REASONS[int(d.reason[i])],
                    rule_name,
                    purpose,
                    rate,
                    version,
                    int(d.threshold[i]),
                    None,
                    from_micros(int(d.time_us[i])),
                    True,
                    int(d.index[i]),
                    attributes=d.attributes_text(i),
                )
            )
        return out

    def _caps_ledger(self, now: datetime) -> CapLedger:
        """The store's caps ledger. When it is missing (deleted, or a store from before it
        existed) while the log has decisions, it is rebuilt from the log first, under the
        store's lock: otherwise the day's and week's counts would start again from zero.
        On PostgreSQL, the database's (shared with the other nodes; never rebuilt from this
        store's log, which holds only this node's decisions)."""
        key = self.keyring.pseudonym_key()
        if self.catalog_dsn is not None:
            return PostgresCapLedger(self.catalog_dsn, now=now, agent_key=key)
        path = self._rebuilt_from_log(
            CAPS_FILE,
            lambda tmp: SqliteCapLedger(tmp, agent_key=key),
            lambda: self._caps_from_log(now),
        )
        return SqliteCapLedger(path, now=now, agent_key=key)

    def _rebuilt_from_log(
        self,
        name: str,
        create: Callable[[Path], _Replayable],
        from_log: Callable[[], Sequence[Any]],
    ) -> Path:
        """``STORE/name``, a SQLite file that the log can rebuild (the caps ledger, the
        decided-calls index). Missing (deleted, or a store from before it) while the log has
        entries, it is rebuilt first, under the store's lock, into a temporary file renamed
        into place: whole, or not at all."""
        path = self.path / name
        if not path.exists() and self.log_storage.segments():
            with self.lock():
                if not path.exists():
                    tmp = path.with_name(f".{name}.rebuild-{os.getpid()}")
                    for stale in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-wal", "-shm"))):
                        stale.unlink(missing_ok=True)
                    built = create(tmp)
                    try:
                        built.replay(from_log())
                    finally:
                        built.close()
                    os.replace(tmp, path)
        return path

    def _caps_from_log(self, now: datetime) -> list[tuple[CapRequest, CapAnswer]]:
        """The answers the log shows for calls that capped rules selected in the ledger's
        window (:data:`sampledrec.sampling.caps.KEEP_DAYS`), in log order, each call once."""
        import numpy as np

        from .log.columns import call_firsts, counted_once, read_log
        from .log.format import from_micros

        d = read_log(self.log_storage, self.keyring).decisions
        since = to_micros(now - timedelta(days=KEEP_DAYS))
        sampled, capped = REASONS.index("sampled"), REASONS.index("cap_reached")
        rows = np.flatnonzero(
            counted_once(call_firsts(d))
            & ((d.reason == sampled) | (d.reason == capped))
            & (d.agent >= 0)
            & (d.time_us >= np.uint64(max(0, since)))
        )
        out: list[tuple[CapRequest, CapAnswer]] = []
        for i in rows.tolist():
            try:
                rule = self.policy_version(d.versions[int(d.version[i])].hex()).rule_named(
                    d.rules[int(d.rule[i])]
                )
            except (StoreError, KeyError, OSError):
                continue  # a version or rule this store does not have: nothing to count
            if not rule.has_cap:
                continue
            when = from_micros(int(d.time_us[i]))
            epoch_id = d.epochs[int(d.epoch[i])]
            ref = d.ref(i)
            try:
                call = b"" if ref is None else cap_call_name(self.keyring.epoch_key(epoch_id), ref)
            except KeyringError:
                call = b""  # counted, but a retry of it cannot be recognised
            req = CapRequest(
                epoch_id,
                call,
                rule.name,
                cap_agent(d.agent_name(i) or ""),
                cap_periods(when, rule.max_per_agent_per_day, rule.max_per_agent_per_week),
            )
            out.append((req, "sampled" if int(d.reason[i]) == sampled else "cap_reached"))
        return out

    def _commit(self, log: DecisionLog, keys: list[EpochKey], clock: Clock) -> None:
        last = 0
        for key in keys:
            last = log.append(
                T_KEY_COMMIT,
                {"epoch_id": key.epoch_id, "commitment": key.commitment},
                at=clock.now(),
            )
        if last:
            log.wait_durable(last)
        for key in keys:
            self.keyring.mark_committed(key.epoch_id)

    def _commit_pending(self, log: DecisionLog, now: datetime) -> None:
        """Log the commitments of keys created without a log, or by a process that crashed
        before logging them."""
        with self.lock():
            self._commit_uncommitted(log, FixedClock(now))

    def _commit_uncommitted(self, log: DecisionLog, clock: Clock) -> None:
        pending = self.keyring.uncommitted_epochs()
        if pending:
            self._commit(log, [self.keyring.epoch_key(e) for e in pending], clock)

    def act_at(self, now: datetime, *, real_now: datetime | None = None, doing: str) -> datetime:
        """``now``, checked as the time to destroy, reveal or erase something at.

        A time ahead of the real clock (``real_now``, default the system clock) is a simulation:
        only a simulated store (made by ``sampledrec demo`` or ``init --simulated``) may act
        at it; a real store refuses with :class:`InvalidArgument`, so that nothing is
        destroyed, revealed or erased before its time (DESIGN.md §9). ``doing`` says what was
        asked, for the message ("sweeps", "reveals keys", ...). Reads need no such check: they
        may look ahead, and a later time only refuses more.
        """
        real = real_now if real_now is not None else SYSTEM_CLOCK.now()
        if now > real and not self.simulated:
            raise InvalidArgument(
                f"{now.isoformat()} is in the future (the real clock says {real.isoformat()}): "
                f"a real store {doing} only as of the real clock; only a store made by "
                "'sampledrec demo' may simulate the future"
            )
        return now

    def reveal_keys(
        self,
        *,
        now: datetime,
        real_now: datetime | None = None,
    ) -> list[RevealedKey]:
        """The keys of every epoch that has ended at ``now``.

        ``now`` may be later than the real clock only in a simulated store (:meth:`act_at`): a
        real store never reveals an epoch that has not ended by the real clock (DESIGN.md §9).
        """
        real = real_now if real_now is not None else SYSTEM_CLOCK.now()
        self.act_at(now, real_now=real, doing="reveals the keys of ended epochs")
        from .keys.keyring import epoch_end

        ended = [e for e in self.keyring.epoch_ids() if epoch_end(e) <= now]
        keys = reveal(self.keyring, ended, now=now)
        if keys:
            with self.open_log(clock=FixedClock(min(now, real))) as log:
                for k in keys:
                    log.append(
                        T_KEY_REVEAL,
                        {
                            "epoch_id": k.epoch_id,
                            "commitment": k.commitment,
                            "principal": getpass.getuser(),
                        },
                    )
        return keys

    def write_revealed(
        self, keys: list[RevealedKey], out: str | os.PathLike[str], *, replace: bool = False
    ) -> None:
        """Write revealed keys as JSON for an auditor (0600; the keys are still secrets until
        the auditor has them), whole or not at all. An existing file is refused
        (:class:`InvalidArgument`) and left as it was, unless ``replace`` is true."""
        doc = {
            "format": REVEALED_FORMAT,
            "version": 1,
            "store": str(self.path),
            "simulated": self.simulated,
            "epochs": [
                {"epoch_id": k.epoch_id, "key": k.key.hex(), "commitment": k.commitment.hex()}
                for k in keys
            ],
        }
        path = Path(out)
        try:
            write_atomic(path, json.dumps(doc, indent=2).encode() + b"\n", replace=replace)
        except FileExistsError:
            raise InvalidArgument(
                f"{path} exists; write the revealed keys to a new file, or replace it on purpose "
                "(replace=True)"
            ) from None


def read_revealed(path: str | os.PathLike[str]) -> list[RevealedKey]:
    """Read a revealed-keys file written by :meth:`Store.write_revealed`."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("format") != REVEALED_FORMAT:
        raise InvalidArgument(f"{path} is not a sampledrec revealed-keys file")
    return [
        RevealedKey(e["epoch_id"], bytes.fromhex(e["key"]), bytes.fromhex(e["commitment"]))
        for e in doc["epochs"]
    ]


_KINDS: Final = {
    "catalog": ("sqlite", "postgresql"),
    "blobs": ("local", "s3"),
    "keystore": ("local", "pkcs11", "deployment"),
}
_REQUIRED: Final = {
    ("catalog", "sqlite"): ("path",),
    ("catalog", "postgresql"): ("dsn",),
    ("blobs", "local"): ("path",),
    ("blobs", "s3"): ("bucket",),
    ("keystore", "local"): (),
    ("keystore", "pkcs11"): ("module", "token", "pin_env"),
    ("keystore", "deployment"): (),
}


class _Replayable(Protocol):
    """A store file that the log can fill again (see :meth:`Store._rebuilt_from_log`)."""

    def replay(self, items: Sequence[Any], /) -> None: ...

    def close(self) -> None: ...


def _check_meta(meta: dict[str, Any], where: Path) -> None:
    """Refuse a ``store.json`` whose members have the wrong types, naming the member."""
    store_id = meta.get("store_id")
    if not isinstance(store_id, str) or len(store_id) != 32 or not _is_hex(store_id):
        raise StoreError(f"{where}: 'store_id' must be 32 hex digits, not {store_id!r:.80}")
    optional = {
        "created_at": str,
        "simulated": bool,
        "keys_dir": str,
        "region": str,
        "objections_logged": bool,
    }
    for name, kind in [("origin", str), *optional.items()]:
        value = meta.get(name)
        if value is None and name in optional:
            continue
        if not isinstance(value, kind):
            what = "true or false" if kind is bool else "text"
            raise StoreError(f"{where}: '{name}' must be {what}, not {value!r:.80}")
        if isinstance(value, str) and not _plain_text(value):
            raise StoreError(
                f"{where}: '{name}' holds a NUL or an unencodable character (UTF-8 text only)"
            )
    if meta.get("witnesses") is not None:
        try:
            WitnessSettings.from_json(meta["witnesses"])
        except InvalidArgument as exc:
            raise StoreError(f"{where}: {exc}") from None
    origin = meta["origin"]
    if not origin.strip() or any(c in origin for c in "\r\n\t") or len(origin) > 256:
        # It is the first line of every signed checkpoint note (C2SP): one short line.
        raise StoreError(f"{where}: 'origin' must be one line of text, not {origin!r:.80}")


def _plain_text(value: str) -> bool:
    """Text that can be written as UTF-8 and holds no NUL (nothing to trip a file or a note)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, as JSON's \\ud800 escape allows
        return False
    return "\x00" not in value


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _backends(raw: object, root: Path) -> dict[str, dict[str, str]]:
    """The store's backends from store.json (defaults for what it does not name), checked."""
    if raw is None:
        raw = DEFAULT_BACKENDS
    where = root / "store.json"
    if not isinstance(raw, dict):
        raise StoreError(f"{where}: 'backends' must be a table of backends, not {raw!r}")
    unknown = sorted(set(raw) - set(_KINDS))
    if unknown:
        raise StoreError(
            f"{where}: unknown backend {unknown[0]!r}; backends are {', '.join(_KINDS)}"
        )
    out: dict[str, dict[str, str]] = {}
    for name, kinds in _KINDS.items():
        spec = raw.get(name, DEFAULT_BACKENDS[name])
        if not isinstance(spec, dict) or spec.get("kind") not in kinds:
            raise StoreError(
                f"{where}: backends.{name} = {_shown(spec)!r}; its kind must be one of "
                f"{', '.join(kinds)}"
            )
        missing = [k for k in _REQUIRED[(name, spec["kind"])] if not spec.get(k)]
        if missing:
            raise StoreError(
                f"{where}: backends.{name} of kind {spec['kind']!r} needs {', '.join(missing)}"
            )
        bad = [k for k, v in spec.items() if not isinstance(v, str) or len(v) > 1024]
        if bad:
            raise StoreError(
                f"{where}: backends.{name}.{bad[0]} must be text (at most 1024 characters), "
                f"not {_shown(spec)[bad[0]]!r:.80}"
            )
        dsn = spec.get("dsn")
        if isinstance(dsn, str) and dsn_has_password(dsn):
            raise StoreError(
                f"{where}: backends.{name}.dsn {redact_dsn(dsn)!r} holds a password; store.json "
                "is backed up with the data, so give the password to libpq instead: the "
                "environment variable PGPASSWORD, or a password file (~/.pgpass or PGPASSFILE)"
            )
        out[name] = {str(k): str(v) for k, v in spec.items()}
        if not all(_plain_text(v) for v in out[name].values()):
            raise StoreError(f"{where}: backends.{name} holds a NUL or an unencodable character")
    return out


def _shown(spec: object) -> Any:
    """A backend's settings as an error message may show them: a DSN redacted."""
    if isinstance(spec, dict) and isinstance(spec.get("dsn"), str):
        return {**spec, "dsn": redact_dsn(spec["dsn"])}
    return spec


def _prepare_postgres(dsn: str) -> None:
    """Connect to the database of a new store's catalog and bring its tables (catalog, caps
    ledger, decided-calls index) up to date, so that a wrong DSN is refused before the store is
    created."""
    PostgresCatalog(dsn).close()
    PostgresCapLedger(dsn).close()
    PostgresDecidedCalls(dsn).close()


def _pkcs11_keystore(spec: dict[str, str]) -> KeyStore:
    pin = os.environ.get(spec["pin_env"])
    if not pin:
        raise StoreError(
            f"the store's key store is the PKCS#11 token {spec['token']!r}; set its user PIN "
            f"in the environment variable {spec['pin_env']} (it is never written to disk)"
        )
    return Pkcs11KeyStore(
        spec["module"],
        spec["token"],
        pin,
        label_prefix=spec.get("label_prefix", "sampledrec-"),
    )


# -- recordings on S3 object storage (docs/decisions/0027-object-storage.md) ------------------

#: What backends.blobs of kind "s3" may hold. Credentials never: they come from the
#: environment or from the file named by credentials_file.
_S3_SETTINGS: Final = (
    "kind",
    "bucket",
    "prefix",
    "endpoint",
    "region",
    "credentials_file",
    "profile",
)


def s3_blobs_backend(
    url: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    credentials_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
) -> dict[str, str]:
    """The ``backends.blobs`` of a store whose recordings go to ``url`` (``s3://bucket/prefix``),
    for :meth:`Store.init`'s ``backends``.

    >>> s3_blobs_backend("s3://recordings/node-a", endpoint="http://127.0.0.1:8333")
    {'kind': 's3', 'bucket': 'recordings', 'prefix': 'node-a', 'endpoint': 'http://127.0.0.1:8333'}
    """
    from .vault.s3 import check_endpoint, parse_s3_url

    bucket, prefix = parse_s3_url(url)
    spec = {"kind": "s3", "bucket": bucket, "prefix": prefix}
    if endpoint is not None:
        spec["endpoint"] = check_endpoint(endpoint)
    if region is not None:
        spec["region"] = region
    if credentials_file is not None:
        spec["credentials_file"] = str(Path(credentials_file).resolve())
    if profile is not None:
        spec["profile"] = profile
    return spec


def _s3_blob_store(spec: dict[str, str], root: Path) -> BlobStore:
    from .vault.s3 import S3BlobStore, S3Credentials

    where = root / "store.json"
    unknown = sorted(set(spec) - set(_S3_SETTINGS))
    if unknown:
        raise StoreError(
            f"{where}: backends.blobs of kind 's3' has no setting {unknown[0]!r}; its settings "
            f"are {', '.join(_S3_SETTINGS[1:])} (credentials are never written there: they "
            "come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or from credentials_file)"
        )
    try:
        if spec.get("credentials_file"):
            file = Path(spec["credentials_file"])
            credentials = S3Credentials.from_file(
                file if file.is_absolute() else root / file, spec.get("profile") or "default"
            )
        else:
            credentials = S3Credentials.from_env()
        return S3BlobStore(
            spec["bucket"],
            prefix=spec.get("prefix", ""),
            endpoint=spec.get("endpoint") or None,
            region=spec.get("region") or None,
            credentials=credentials,
        )
    except InvalidArgument as exc:
        raise StoreError(f"{where}: backends.blobs: {exc}") from None


# -- a node's process running (docs/decisions/0035) ---------------------------------------------


class _NodeRunning:
    """A shared session-level advisory lock held while a node's log is open (a listener of the
    log, released when it closes); a process that dies releases it with its session."""

    def __init__(self, dsn: str, lock_id: int, node: str) -> None:
        self._conn = PgConnection(
            dsn, what=f"the running lock of node {node!r}", component="", migrations=()
        )

        def take(c: Any) -> None:
            c.execute("SET lock_timeout = 30000")
            c.execute("SELECT pg_advisory_lock_shared(%s)", [lock_id])

        try:
            self._conn.run(take, atomic=False)
        except StoreError as exc:
            self._conn.close()
            if "lock timeout" in str(exc):
                raise StoreError(
                    f"node {node!r} is being retired or declared lost: its log cannot be "
                    "opened meanwhile; wait, then see its state"
                ) from None
            raise

    def checkpoint_written(self, checkpoint: Any) -> None:
        pass

    def log_closed(self) -> None:
        self._conn.close()  # the session ends: the lock goes with it


@contextlib.contextmanager
def _no_node_running(dsn: str, lock_id: int, node: str) -> Iterator[None]:
    """Hold node ``node``'s running lock exclusively for the block; :class:`StoreError` if a
    process of that node has its log open."""
    conn = PgConnection(dsn, what=f"the running lock of node {node!r}", component="", migrations=())
    try:

        def take(c: Any) -> bool:
            row = c.execute("SELECT pg_try_advisory_lock(%s)", [lock_id]).fetchone()
            return bool(row and row[0])

        if not conn.run(take, atomic=False):
            raise StoreError(
                f"node {node!r} is running: a process of it has its log open (its server, or "
                "a command). Stop it first. If its machine is really gone, PostgreSQL ends "
                "its session once its TCP keepalives fail; or end the session with "
                "pg_terminate_backend (application_name 'sampledrec'), then run this again"
            )
        yield
    finally:
        conn.close()
