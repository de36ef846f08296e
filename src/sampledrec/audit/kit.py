"""The auditor's kit: exactly what an outsider needs to audit a store, and nothing more.

:func:`write_kit` (``sampledrec audit kit``) writes, into a new folder::

    kit.json              the manifest: store id, origin, when, the period, every file's
                          SHA-256 and size
    verifier-key.txt      the log's public verifier key (one line, name+keyid+base64)
    log/                  a byte copy of the log: its segments and checkpoints
    revealed-keys.json    the keys of the ended epochs of the period (as 'keys reveal')
    sealing-keys.json     the calls/YYYY-MM keys of the period's months: they open the sealed
                          fields that recomputation needs, and nothing about who accessed what
                          (those are sealed under access/YYYY-MM, which the kit never holds)
    policies/<id>.json    each policy version's canonical JSON (the bytes the log holds)
    recordings.json       the catalog's non-personal columns, the holds, and every file of
                          the blob store with its SHA-256 and size
    key-inventory.json    which sealing keys and bucket/hold keys exist when the kit is made
    objections.json       the objection list as it stands (keyed pseudonyms)
    cosigned/<witness>/<YYYY-MM-DD>.notes
                          the checkpoints the store's witnesses cosigned, if it has witnesses

:func:`open_kit` reads one back as :class:`~sampledrec.audit.evidence.Evidence`, refusing
(:class:`~sampledrec.errors.StoreError`, exit 3) a kit that is incomplete, damaged or of
another shape; :func:`audit_kit` audits from it without a keyring or any private key.
docs/auditor-guide.md specifies every file.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from .._hazmat.files import write_atomic
from ..clock import SYSTEM_CLOCK, FixedClock
from ..errors import InvalidArgument, SampledrecError, StoreError
from ..log.checkpoint import parse_vkey
from ..log.format import T_ACCESS, T_POLICY
from ..log.storage import LocalLogStorage, segment_name
from ..vault.blobs import LocalBlobStore
from ..vault.catalog import Hold, RecordingRow
from ..vault.recorder import hold_bucket
from .evidence import CatalogView, Evidence, StoreFiles, read_catalog, stream_sha256
from .findings import AuditReport
from .revealed import parse_revealed_keys

__all__ = ["KIT_FORMAT", "audit_kit", "open_kit", "write_kit"]

KIT_FORMAT: Final = "sampledrec-audit-kit"
KIT_VERSION: Final = 1
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_ROW_COLUMNS: Final = (
    "recording_id",
    "rule",
    "purpose",
    "policy_version",
    "epoch_id",
    "started_at",
    "expires_at_sealed",
    "expires_at",
    "bucket",
    "audio_format",
    "file",
    "status",
    "ended_at",
    "duration_ms",
    "plaintext_bytes",
    "ciphertext_bytes",
    "ciphertext_sha256",
    "truncated",
)


# -- writing -------------------------------------------------------------------------------------


def write_kit(
    store: Any,
    out: str | os.PathLike[str],
    *,
    now: datetime,
    first_day: date | None = None,
    last_day: date | None = None,
    progress: Callable[[int], None] | None = None,
    recording_ids: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Write the auditor's kit of ``store`` into the new folder ``out``; returns the manifest.

    ``first_day``/``last_day`` (UTC days, both included) limit the keys handed over to the
    epochs and months of that period; the log is copied whole (its tree covers every entry).
    The keys of the epochs that have ended by ``now`` are revealed (and the reveals logged),
    and handing over the sealing keys is logged as an access. ``progress(n)`` is told of every
    ``n`` bytes copied or hashed. ``recording_ids`` limits the recordings (catalog rows,
    holds' members, files) to those ids: a node's own, when the catalog and the bucket are
    its deployment's (:func:`sampledrec.audit.nodes.write_deployment_kit`).
    """
    if first_day is not None and last_day is not None and first_day > last_day:
        raise InvalidArgument(f"--from {first_day} is after --to {last_day}")
    target = Path(out)
    try:
        target.mkdir(mode=0o700)
    except FileExistsError:
        raise InvalidArgument(f"{target} exists; write the kit into a new folder") from None
    except OSError as exc:
        raise StoreError(f"cannot create the kit folder {target}: {exc.strerror}") from exc

    def in_period(day: date) -> bool:
        return (first_day is None or day >= first_day) and (last_day is None or day <= last_day)

    # The keys first: revealing and handing over are logged before the log is copied.
    revealed = [k for k in store.reveal_keys(now=now) if in_period(date.fromisoformat(k.epoch_id))]
    keyring = store.keyring
    sealing = {
        kid: key
        for kid in keyring.sealing_key_ids()
        if kid.startswith("calls/")
        and _month_in_period(kid[len("calls/") :], first_day, last_day)
        and (key := keyring.sealing_key(kid)) is not None
    }
    # Dated like the reveals: the real clock, or the simulated time of a simulated store.
    with store.open_log(clock=FixedClock(min(now, SYSTEM_CLOCK.now()))) as log:
        log.wait_durable(
            log.append(
                T_ACCESS,
                {
                    "action": "audit_kit",
                    "outcome": "granted",
                    "principal": getpass.getuser(),
                    "detail": f"{len(revealed)} epoch keys, sealing keys "
                    + (", ".join(sorted(sealing)) or "none"),
                },
            )
        )

    files: dict[str, dict[str, Any]] = {}

    def put(name: str, data: bytes) -> None:
        path = target / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        if progress is not None:
            progress(len(data))

    def put_json(name: str, doc: Any) -> None:
        put(name, json.dumps(doc, indent=1, ensure_ascii=False).encode() + b"\n")

    # The checkpoints witnesses cosigned, read before the log: each covers a prefix of the log
    # as it was then, so of the copy too (read after, one could cover more than the copy).
    cosigned_dir = store.path / "cosigned"
    cosigned = [
        (path.relative_to(store.path).as_posix(), path.read_bytes())
        for path in (sorted(cosigned_dir.rglob("*.notes")) if cosigned_dir.is_dir() else [])
        if path.is_file()
    ]

    # The objection list's pending change finished, an old store's list migrated (logged).
    store.objections(clock=FixedClock(min(now, SYSTEM_CLOCK.now())))
    # The log, copied under its lock so that no batch is half-written in the copy, and the
    # objection list with it, under the store's lock (which every change of the list holds
    # from its log entries to its file): the list and the log's changes of it agree.
    source = store.log_storage
    with store.lock(), source.lock():
        checkpoints = source.read_checkpoints()
        segments = [(first, source.read_segment(first)) for first in source.segments()]
        objections = sorted(store.objection_pseudonyms())
    log_size = 0
    for first, data in segments:
        put(f"log/{segment_name(first)}", data)
        log_size += len(data)
    put("log/checkpoints", checkpoints)
    for name, data in cosigned:
        put(name, data)
    put("verifier-key.txt", (store.vkey + "\n").encode())
    put_json(
        "revealed-keys.json",
        {
            "format": "sampledrec-revealed-keys",
            "version": 1,
            "simulated": store.simulated,
            "epochs": [
                {"epoch_id": k.epoch_id, "key": k.key.hex(), "commitment": k.commitment.hex()}
                for k in revealed
            ],
        },
    )
    put_json(
        "sealing-keys.json",
        {
            "format": "sampledrec-sealing-keys",
            "version": 1,
            "keys": [{"kid": kid, "key": key.hex()} for kid, key in sorted(sealing.items())],
        },
    )
    for version, canonical in _logged_policies(store):
        put(f"policies/{version}.json", canonical)
    put_json("recordings.json", _recordings_doc(store, progress, recording_ids))
    put_json(
        "key-inventory.json",
        {
            "format": "sampledrec-key-inventory",
            "version": 1,
            "sealing_keys": sorted(keyring.sealing_key_ids()),
            "keys": sorted(store.keystore.buckets()),
        },
    )
    put_json(
        "objections.json",
        {
            "format": "sampledrec-objections",
            "version": 1,
            "pseudonyms": objections,
        },
    )
    manifest = {
        "format": KIT_FORMAT,
        "version": KIT_VERSION,
        "store_id": store.store_id.hex(),
        "origin": store.origin,
        "simulated": store.simulated,
        "made_at": now.isoformat(),
        "period": None
        if first_day is None and last_day is None
        else {
            "from": None if first_day is None else first_day.isoformat(),
            "to": None if last_day is None else last_day.isoformat(),
        },
        "log_bytes": log_size,
        "files": dict(sorted(files.items())),
    }
    write_atomic(target / "kit.json", json.dumps(manifest, indent=1).encode() + b"\n")
    return manifest


def _month_in_period(month: str, first: date | None, last: date | None) -> bool:
    """Whether the UTC month ``YYYY-MM`` has a day in the period."""
    try:
        start = date.fromisoformat(month + "-01")
    except ValueError:
        return False
    end = (start.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    return (first is None or end >= first) and (last is None or start <= last)


def _logged_policies(store: Any) -> list[tuple[str, bytes]]:
    """Each policy version the log holds, with its canonical JSON as logged."""
    from ..log.columns import read_log

    found: dict[str, bytes] = {}

    class _NoKeys:
        def sealing_key(self, kid: str) -> None:
            return None

    for e in read_log(store.log_storage, _NoKeys()).others:
        if e.type == T_POLICY:
            canonical = e.fields.get("canonical")
            if isinstance(canonical, bytes):
                found.setdefault(hashlib.sha256(canonical).hexdigest(), canonical)
    return sorted(found.items())


def _recordings_doc(
    store: Any, progress: Callable[[int], None] | None, only: frozenset[str] | None = None
) -> dict[str, Any]:
    cat = read_catalog(store)
    if only is not None:
        cat = _only(cat, only)
    rows = []
    for rid in sorted(cat.rows):
        row = cat.rows[rid]
        doc = {name: getattr(row, name) for name in _ROW_COLUMNS}
        doc["key_wrapped"] = row.wrapped_key is not None
        rows.append(doc)
    holds = []
    members: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rid, held in cat.members.items():
        for h, wrapped in held:
            members[h.hold_id].append({"recording_id": rid, "key_wrapped": wrapped is not None})
    for hold_id in sorted(cat.holds):
        h = cat.holds[hold_id]
        holds.append(
            {
                "hold_id": h.hold_id,
                "created_at": h.created_at,
                "until": h.until,
                "released_at": h.released_at,
                "members": sorted(members.get(hold_id, []), key=lambda m: m["recording_id"]),
            }
        )
    blobs = StoreFiles(store.blobs)
    files = []
    names = set(blobs.names())
    if only is not None:
        names &= {row.file for row in cat.rows.values()}
    for name in sorted(names):
        digest, size = blobs.sha256(name)
        files.append({"name": name, "sha256": digest, "bytes": size})
        if progress is not None:
            progress(size)
    return {
        "format": "sampledrec-kit-recordings",
        "version": 1,
        "recordings": rows,
        "holds": holds,
        "files": files,
    }


def _only(cat: CatalogView, ids: frozenset[str]) -> CatalogView:
    """The catalog restricted to the recordings ``ids``, and the holds that keep one of them."""
    members = {rid: held for rid, held in cat.members.items() if rid in ids}
    kept = {h.hold_id for held in members.values() for h, _ in held}
    return dataclasses.replace(
        cat,
        rows={rid: row for rid, row in cat.rows.items() if rid in ids},
        members=members,
        holds={hid: h for hid, h in cat.holds.items() if hid in kept},
    )


# -- reading -------------------------------------------------------------------------------------


def _need(cond: bool, what: str) -> None:
    """A kit file of the wrong shape: a ValueError, which :func:`open_kit` turns into a
    StoreError naming the file."""
    if not cond:
        raise ValueError(what)


def _obj(value: Any, what: str) -> dict[str, Any]:
    _need(isinstance(value, dict), f"{what} must be a JSON object")
    return dict(value)


def _list(value: Any, what: str) -> list[Any]:
    _need(isinstance(value, list), f"{what} must be a JSON list")
    return list(value)


def _str(value: Any, what: str) -> str:
    _need(isinstance(value, str), f"{what} must be text")
    return str(value)


def _int(value: Any, what: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    _need(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63,
        f"{what} must be an integer from 0 to 2^63-1",
    )
    return int(value)


def _hex64(value: Any, what: str) -> str:
    _need(
        isinstance(value, str) and bool(_HEX64.fullmatch(value)),
        f"{what} must be 64 lower-case hexadecimal digits",
    )
    return str(value)


class _KitFiles:
    """The blob store's files as the kit lists them: names, SHA-256 and sizes declared."""

    hashed = False

    def __init__(self, listed: dict[str, tuple[str, int]]) -> None:
        self._listed = listed

    def names(self) -> set[str]:
        return set(self._listed)

    def exists(self, name: str) -> bool:
        return name in self._listed

    def sha256(self, name: str) -> tuple[str, int]:
        try:
            return self._listed[name]
        except KeyError:
            raise FileNotFoundError(name) from None


class _KitKeys:
    """The key store as the kit's inventory tells it: a recording's key is readable while the
    catalog keeps a wrapped key for it and the key that wraps it exists."""

    def __init__(self, present: set[str], wrapped: set[str], held: set[tuple[str, str]]) -> None:
        self._present, self._wrapped, self._held = present, wrapped, held

    def has_key(self, name: str) -> bool:
        return name in self._present

    def readable(
        self, rid: str, bucket: str | None, expires: Sequence[int | None], cat: CatalogView
    ) -> bool:
        row = cat.rows.get(rid)
        own = row.bucket if row is not None else bucket
        if rid in self._wrapped and own is not None and own in self._present:
            return True
        return any(
            (rid, h.hold_id) in self._held and hold_bucket(h.hold_id) in self._present
            for h, _ in cat.members.get(rid, [])
        )


class _KitSealing:
    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = keys

    def __repr__(self) -> str:  # never the keys
        return f"_KitSealing({sorted(self._keys)})"

    def sealing_key(self, kid: str) -> bytes | None:
        return self._keys.get(kid)


def open_kit(
    path: str | os.PathLike[str],
    *,
    recordings: str | os.PathLike[str] | None = None,
    verifier_key: str | None = None,
) -> tuple[Evidence, list[Any]]:
    """The evidence a kit holds and its revealed keys.

    ``recordings`` (a store folder, or its recordings folder) makes the audit read and hash
    the recording files themselves, read-only, instead of the kit's list. ``verifier_key``
    pins the log's key (as printed by ``sampledrec init``): the kit's own copy is then only
    compared with it.
    """
    root = Path(path)
    if verifier_key is not None:
        try:
            parse_vkey(verifier_key.strip())
        except (SampledrecError, ValueError) as exc:
            raise InvalidArgument(
                f"--verifier-key is not a verifier key ({exc}); give the line 'sampledrec init' "
                "printed, like sampledrec.local/<store id>+<key id>+<base64>"
            ) from None
    manifest_path = root / "kit.json"
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise StoreError(
            f"{root} is not an auditor's kit (no kit.json); make one with 'sampledrec audit "
            "kit --store STORE --out DIR'"
        ) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise StoreError(f"cannot read {manifest_path}: {str(exc)[:200]}") from None
    current = "kit.json"
    try:
        manifest = _obj(manifest, "kit.json")
        _need(manifest.get("format") == KIT_FORMAT, f'format must be "{KIT_FORMAT}"')
        _need(manifest.get("version") == KIT_VERSION, f"version must be {KIT_VERSION}")
        store_id = bytes.fromhex(_hex32(manifest.get("store_id"), "store_id"))
        listed = _obj(manifest.get("files"), "files")
        for name, info in listed.items():
            info = _obj(info, f"files[{name!r}]")
            _hex64(info.get("sha256"), f"files[{name!r}].sha256")
            _int(info.get("bytes"), f"files[{name!r}].bytes")
        period = _period(manifest.get("period"))
        _check_files(root, listed)

        current = "verifier-key.txt"
        kit_vkey = (root / current).read_text(encoding="utf-8").strip()
        notes: list[str] = []
        pinned = kit_vkey if verifier_key is None else verifier_key.strip()
        if verifier_key is not None and pinned != kit_vkey:
            notes.append(
                "the kit's verifier-key.txt differs from the verifier key given: the log is "
                "checked against the one given"
            )
        elif verifier_key is None:
            notes.append(
                "the log is checked against the kit's own verifier-key.txt: compare it with the "
                "key the operator gave you outside the kit (--verifier-key)"
            )
        try:
            origin, public_key = parse_vkey(pinned)
        except (SampledrecError, ValueError) as exc:
            raise ValueError(f"not a verifier key: {exc}") from None

        current = "revealed-keys.json"
        try:
            revealed = parse_revealed_keys((root / current).read_bytes(), current)
        except InvalidArgument as exc:
            raise ValueError(str(exc).removeprefix(current + ": ")) from None

        current = "sealing-keys.json"
        doc = _obj(_load(root / current), current)
        _need(
            doc.get("format") == "sampledrec-sealing-keys",
            'format must be "sampledrec-sealing-keys"',
        )
        sealing: dict[str, bytes] = {}
        for i, item in enumerate(_list(doc.get("keys"), "keys")):
            item = _obj(item, f"keys[{i}]")
            kid = _str(item.get("kid"), f"keys[{i}].kid")
            _need(
                bool(re.fullmatch(r"calls/\d{4}-\d{2}", kid)),
                f"keys[{i}].kid must be calls/YYYY-MM (the kit never holds other sealing keys)",
            )
            sealing[kid] = bytes.fromhex(_hex64(item.get("key"), f"keys[{i}].key"))

        current = "key-inventory.json"
        doc = _obj(_load(root / current), current)
        sealing_present = {
            _str(k, "sealing_keys[]") for k in _list(doc.get("sealing_keys"), "sealing_keys")
        }
        keys_present = {_str(k, "keys[]") for k in _list(doc.get("keys"), "keys")}

        current = "recordings.json"
        cat, wrapped, held, blob_list = _read_recordings(_obj(_load(root / current), current))

        current = "objections.json"
        doc = _obj(_load(root / current), current)
        _need(
            doc.get("format") == "sampledrec-objections",
            'format must be "sampledrec-objections"',
        )
        objections = frozenset(
            _hex64(p, f"pseudonyms[{i}]")
            for i, p in enumerate(_list(doc.get("pseudonyms"), "pseudonyms"))
        )
    except ValueError as exc:
        raise StoreError(f"{root / current}: {exc}; ask the operator for a new kit") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(
            f"{root / current}: cannot read it ({exc}); the kit is incomplete"
        ) from None

    files: Any = _KitFiles(blob_list)
    if recordings is not None:
        files = StoreFiles(_recordings_folder(Path(recordings)))
    else:
        notes.append(
            "the recordings' SHA-256 are the ones the kit lists; give --recordings to hash the "
            "files themselves"
        )
    ev = Evidence(
        label=str(root),
        log=LocalLogStorage(root / "log"),
        store_id=store_id,
        public_key=public_key,
        simulated=bool(manifest.get("simulated")),
        sealing=_KitSealing(sealing),
        sealing_present=lambda: set(sealing_present),
        catalog=lambda: cat,
        files=files,
        keys=_KitKeys(keys_present, wrapped, held),
        period=period,
        kit=True,
        notes=notes,
        objections=lambda: objections,
        cosigned=root / "cosigned",
    )
    if origin != manifest.get("origin"):
        ev.notes.append(
            f"the verifier key names {origin!r}, the kit's manifest {manifest.get('origin')!r}"
        )
    return ev, revealed


def _hex32(value: Any, what: str) -> str:
    _need(
        isinstance(value, str) and bool(re.fullmatch(r"[0-9a-f]{32}", value)),
        f"{what} must be 32 lower-case hexadecimal digits",
    )
    return str(value)


def _period(value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    doc = _obj(value, "period")
    ends = []
    for end, default in (("from", "0001-01-01"), ("to", "9999-12-31")):
        day = doc.get(end)
        if day is None:
            ends.append(default)
            continue
        try:
            ends.append(date.fromisoformat(_str(day, f"period.{end}")).isoformat())
        except ValueError:
            raise ValueError(f"period.{end} must be a day, YYYY-MM-DD") from None
    return ends[0], ends[1]


def _check_files(root: Path, listed: dict[str, Any]) -> None:
    """Every file the manifest lists is there with its SHA-256 and size, and no other."""
    for name, info in listed.items():
        _need(
            ".." not in Path(name).parts and not Path(name).is_absolute() and name != "kit.json",
            f"files names {name!r}, which is not a file inside the kit",
        )
        path = root / name
        try:
            if name.startswith("log/"):
                # The log check verifies every byte of the log against its tree and signed
                # checkpoints (and a damaged log is a FAIL with evidence): hashing it here too
                # would read it once more for nothing. Its size is checked.
                digest, size = str(info["sha256"]), path.stat().st_size
            else:
                with open(path, "rb") as fh:
                    digest, size = stream_sha256(fh)
        except FileNotFoundError:
            raise ValueError(
                f"the kit has no {name}, which it lists: the kit is incomplete"
            ) from None
        _need(
            digest == info["sha256"] and size == info["bytes"],
            f"{name} is not the file the kit lists (SHA-256 or size differs): the kit is damaged",
        )
    for path in sorted(root.rglob("*")):
        if path.is_file():
            name = path.relative_to(root).as_posix()
            _need(
                name == "kit.json" or name in listed,
                f"{name} is in the kit folder but not "
                "in its list: the kit was changed after it was made",
            )


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({str(exc)[:100]})") from None


def _read_recordings(
    doc: dict[str, Any],
) -> tuple[CatalogView, set[str], set[tuple[str, str]], dict[str, tuple[str, int]]]:
    _need(
        doc.get("format") == "sampledrec-kit-recordings",
        'format must be "sampledrec-kit-recordings"',
    )
    cat = CatalogView()
    wrapped: set[str] = set()
    for i, item in enumerate(_list(doc.get("recordings"), "recordings")):
        item = _obj(item, f"recordings[{i}]")
        what = f"recordings[{i}]"
        text = {
            k: _str(item.get(k), f"{what}.{k}")
            for k in (
                "recording_id",
                "rule",
                "purpose",
                "policy_version",
                "epoch_id",
                "bucket",
                "audio_format",
                "file",
                "status",
            )
        }
        times = {
            k: _int(item.get(k), f"{what}.{k}")
            for k in ("started_at", "expires_at_sealed", "expires_at")
        }
        opt = {
            k: _int(item.get(k), f"{what}.{k}", optional=True)
            for k in ("ended_at", "duration_ms", "plaintext_bytes", "ciphertext_bytes")
        }
        sha = item.get("ciphertext_sha256")
        if sha is not None:
            _hex64(sha, f"{what}.ciphertext_sha256")
        rid = text["recording_id"]
        _need(rid not in cat.rows, f"{what}: recording {rid} is listed twice")
        cat.rows[rid] = RecordingRow(
            recording_id=rid,
            call_ref=None,
            rule=text["rule"],
            purpose=text["purpose"],
            policy_version=text["policy_version"],
            epoch_id=text["epoch_id"],
            decision_index=-1,
            started_at=times["started_at"] or 0,
            expires_at_sealed=times["expires_at_sealed"] or 0,
            expires_at=times["expires_at"] or 0,
            bucket=text["bucket"],
            wrapped_key=None,
            audio_format=text["audio_format"],
            file=text["file"],
            status=text["status"],  # type: ignore[arg-type]
            ended_at=opt["ended_at"],
            duration_ms=opt["duration_ms"],
            plaintext_bytes=opt["plaintext_bytes"],
            ciphertext_bytes=opt["ciphertext_bytes"],
            ciphertext_sha256=sha,
            truncated=bool(item.get("truncated")),
        )
        if item.get("key_wrapped") is True:
            wrapped.add(rid)
    held: set[tuple[str, str]] = set()
    members: dict[str, list[tuple[Hold, bytes | None]]] = defaultdict(list)
    for i, item in enumerate(_list(doc.get("holds"), "holds")):
        item = _obj(item, f"holds[{i}]")
        hold = Hold(
            hold_id=_str(item.get("hold_id"), f"holds[{i}].hold_id"),
            reason="",
            created_at=_int(item.get("created_at"), f"holds[{i}].created_at") or 0,
            until=_int(item.get("until"), f"holds[{i}].until", optional=True),
            released_at=_int(item.get("released_at"), f"holds[{i}].released_at", optional=True),
        )
        cat.holds[hold.hold_id] = hold
        for j, m in enumerate(_list(item.get("members"), f"holds[{i}].members")):
            m = _obj(m, f"holds[{i}].members[{j}]")
            rid = _str(m.get("recording_id"), f"holds[{i}].members[{j}].recording_id")
            members[rid].append((hold, None))
            if m.get("key_wrapped") is True:
                held.add((rid, hold.hold_id))
    cat.members = dict(members)
    blobs: dict[str, tuple[str, int]] = {}
    for i, item in enumerate(_list(doc.get("files"), "files")):
        item = _obj(item, f"files[{i}]")
        name = _str(item.get("name"), f"files[{i}].name")
        blobs[name] = (
            _hex64(item.get("sha256"), f"files[{i}].sha256"),
            _int(item.get("bytes"), f"files[{i}].bytes") or 0,
        )
    return cat, wrapped, held, blobs


def _recordings_folder(path: Path) -> Any:
    """A store's blob store (read-only), from the store's folder or its recordings folder."""
    meta = path / "store.json"
    folder = path
    if meta.is_file():
        try:
            doc = json.loads(meta.read_bytes())
            blobs = doc.get("backends", {}).get("blobs", {}).get("path", "recordings")
        except (OSError, ValueError, AttributeError) as exc:
            raise StoreError(f"cannot read {meta}: {exc}") from None
        folder = Path(blobs) if Path(str(blobs)).is_absolute() else path / str(blobs)
    return LocalBlobStore(folder)


# -- auditing ------------------------------------------------------------------------------------


def audit_kit(
    path: str | os.PathLike[str],
    *,
    recordings: str | os.PathLike[str] | None = None,
    verifier_key: str | None = None,
    revealed_keys: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    cdr: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
    witnesses: Sequence[str] = (),
    quorum: int | None = None,
    cosigned: Sequence[str | os.PathLike[str]] = (),
    runner: Any | None = None,
) -> AuditReport:
    """Audit from an auditor's kit alone: no keyring, no private key, the recordings' files
    (with ``recordings``) read-only. ``revealed_keys`` replaces the kit's own file (keys
    revealed later). ``witnesses`` (``NAME=VKEY``), ``quorum`` and ``cosigned`` (more
    cosigned-checkpoint files) check the log against what those witnesses cosigned.
    ``runner`` checks the log's partitions elsewhere
    (:func:`sampledrec.audit.distributed.dask_runner`); the report is the same."""
    from .revealed import read_revealed_keys
    from .verify import audit_evidence

    ev, revealed = open_kit(path, recordings=recordings, verifier_key=verifier_key)
    if revealed_keys is not None:
        revealed = read_revealed_keys(revealed_keys)
    return audit_evidence(
        ev,
        revealed,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        cdr=Path(cdr) if cdr is not None else None,
        progress=progress,
        now=now,
        witnesses=witnesses,
        quorum=quorum,
        cosigned=[Path(p) for p in cosigned],
        runner=runner,
    )


def made_at(path: str | os.PathLike[str]) -> datetime | None:
    """When a kit was made, from its manifest (None if it does not say)."""
    try:
        doc = json.loads((Path(path) / "kit.json").read_bytes())
        return datetime.fromisoformat(str(doc["made_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
