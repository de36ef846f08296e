"""The audit of a deployment: a kit that holds several node logs, checked per node log, then
joined across nodes (docs/decisions/0031-nodes.md).

:func:`write_deployment_kit` (``sampledrec audit kit --store NODE --store NODE ...``) writes::

    deployment-kit.json     the manifest: deployment name and id, when, each node (its name,
                            folder, origin, verifier key, its kit.json's SHA-256), and the
                            catalog rows and files that no node's log opened (if any)
    nodes/<name>/           each node's own auditor's kit (:func:`~sampledrec.audit.kit.write_kit`):
                            its log, verifier key, revealed keys, sealing keys, policies, and
                            the recordings its log opened (the deployment's catalog and bucket
                            restricted to them)

:func:`audit_deployment_kit` (``sampledrec audit verify --kit DIR`` on such a folder) runs the
single-log audit on each node's kit as it stands (its log, keys, decisions, time, objections,
recordings, statistics), except the replay of ``cap_reached`` decisions, which needs every
node's selections; then it joins the nodes:

- ``keys``: every epoch's commitment is the same in every node's log that logged it (the epoch
  keys are shared: one key, one commitment);
- ``decisions``: a call (epoch and reference, exact bytes and kind) decided on several nodes has
  one outcome: the first decision (by its logged time) wins, and a later decision with another
  reason, rule, policy version or threshold is a finding. Per-agent caps hold across nodes: in
  each cap period the calls selected under a capped rule by all nodes together (each call
  once) never exceed the cap, and a ``cap_reached`` is justified by the period's selections of
  all nodes reaching the cap;
- ``recordings``: a catalog row or file that no node's log opened is a finding, except a row
  aborted with a ``recording_aborted`` tombstone in some node's log (a recorder killed before
  its opened entry was durable, or a lost node's recording: docs/decisions/0035).

The report is one :class:`~sampledrec.audit.findings.AuditReport`: each node's findings with
``node`` in their evidence, its notes prefixed with the node's name, counts summed.

Evidence from outside the operator's reach (docs/decisions/0036-deployment-keys.md): exported
checkpoints go to the node whose log they name; witnesses must cosign every node's log (the
other nodes' checkpoints in a ``cosigned`` file are passed over); the carrier's call records
are checked once, against every node's decisions together.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from .._hazmat.files import write_atomic
from ..clock import SYSTEM_CLOCK
from ..errors import InvalidArgument, SampledrecError, StoreError
from ..log.columns import (
    LogContents,
    call_firsts,
    concat_decisions,
    counted_once,
    read_log,
    ref_text,
)
from ..log.format import T_KEY_COMMIT, T_RECORDING_ABORTED, T_RECORDING_OPENED, from_micros
from ..log.verify import SegmentCheck
from ..sampling.caps import cap_agent, cap_periods
from ..sampling.record import REASONS
from .evidence import read_catalog
from .findings import CHECKS, OPTIONAL_CHECKS, AuditReport
from .kit import open_kit, write_kit
from .partitions import InProcess, LogPartition, PartRunner, SegmentEntries, join_entries
from .recordings import JOINED_TYPES, OtherNodes

__all__ = [
    "DEPLOYMENT_KIT_FORMAT",
    "audit_deployment_kit",
    "is_deployment_kit",
    "write_deployment_kit",
]

DEPLOYMENT_KIT_FORMAT: Final = "sampledrec-deployment-kit"
DEPLOYMENT_KIT_VERSION: Final = 1
MANIFEST: Final = "deployment-kit.json"
_SAMPLED, _CAP = REASONS.index("sampled"), REASONS.index("cap_reached")


class _NoKeys:
    def sealing_key(self, kid: str) -> None:
        return None


def _opened_ids(store: Any) -> frozenset[str]:
    """The recordings that a node's log opened."""
    found = set()
    for e in read_log(store.log_storage, _NoKeys()).others:
        if e.type == T_RECORDING_OPENED:
            rid = e.fields.get("recording_id")
            if isinstance(rid, str):
                found.add(rid)
    return frozenset(found)


def write_deployment_kit(
    stores: Sequence[Any],
    out: str | os.PathLike[str],
    *,
    now: datetime,
    first_day: date | None = None,
    last_day: date | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the kit of a deployment from its nodes ``stores`` (every node, each once) into the
    new folder ``out``; returns the manifest (module docstring)."""
    nodes = [(s.deployment, s) for s in stores]
    if not nodes or any(d is None for d, _ in nodes):
        raise InvalidArgument("a deployment kit is made from the nodes of a deployment (--store)")
    ids = {d["deployment_id"] for d, _ in nodes if d is not None}
    names = [d["node"] for d, _ in nodes if d is not None]
    if len(ids) != 1:
        raise InvalidArgument("the nodes given belong to several deployments; give one's nodes")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"a node is given twice ({sorted(names)}); give each node once")
    target = Path(out)
    try:
        target.mkdir(mode=0o700)
    except FileExistsError:
        raise InvalidArgument(f"{target} exists; write the kit into a new folder") from None
    (target / "nodes").mkdir(mode=0o700)
    listed = []
    attributed: set[str] = set()
    for dep, store in nodes:
        assert dep is not None
        own = _opened_ids(store)
        attributed |= own
        folder = f"nodes/{dep['node']}"
        write_kit(
            store,
            target / folder,
            now=now,
            first_day=first_day,
            last_day=last_day,
            progress=progress,
            recording_ids=own,
        )
        listed.append(
            {
                "name": dep["node"],
                "folder": folder,
                "origin": store.origin,
                "vkey": store.vkey,
                "kit_sha256": hashlib.sha256(
                    (target / folder / "kit.json").read_bytes()
                ).hexdigest(),
            }
        )
    store = nodes[0][1]
    cat = read_catalog(store)
    files_named = {row.file for rid, row in cat.rows.items() if rid in attributed}
    first = nodes[0][0]
    assert first is not None
    unattributed = sorted(set(cat.rows) - attributed)
    manifest = {
        "format": DEPLOYMENT_KIT_FORMAT,
        "version": DEPLOYMENT_KIT_VERSION,
        "deployment": first["name"],
        "deployment_id": first["deployment_id"],
        "made_at": now.isoformat(),
        "nodes": listed,
        "node_states": _node_states(store),
        "unattributed": {
            "recordings": unattributed,
            "opened_by": {
                rid: str(getattr(cat.rows[rid], "node", None))
                for rid in unattributed
                if getattr(cat.rows[rid], "node", None)
            },
            "status": {rid: str(cat.rows[rid].status) for rid in unattributed},
            "files": sorted(set(store.blobs.list()) - files_named),
        },
    }
    write_atomic(target / MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
    return manifest


def is_deployment_kit(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def audit_deployment_kit(
    path: str | os.PathLike[str],
    *,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    checkpoints: Sequence[str | os.PathLike[str]] = (),
    cdr: str | os.PathLike[str] | None = None,
    witnesses: Sequence[str] = (),
    quorum: int | None = None,
    cosigned: Sequence[str | os.PathLike[str]] = (),
    runner_for: Callable[[Path], PartRunner] | None = None,
) -> AuditReport:
    """Audit a deployment kit: each node's kit, then the joins across nodes (module
    docstring).

    ``runner_for``: the runner of a node's kit folder (such as one Dask cluster's
    :meth:`~sampledrec.audit.distributed.DaskRunner.for_kit`), which checks that node's log
    partitions; by default, in this process. The report is the same either way.

    ``checkpoints``: checkpoints exported from the nodes' logs (``sampledrec log checkpoint``),
    each checked against the node whose origin it names (at most one per node). ``witnesses``
    (``NAME=VKEY``), ``quorum`` and ``cosigned``: every node's log must be cosigned by the
    quorum, from the checkpoints its kit holds and those of the ``cosigned`` files that name
    its origin. ``cdr``: the carrier's call records of the whole deployment, checked against
    every node's decisions together (a call decided on any node is decided)."""
    from .cdr import check_cdr, read_cdr
    from .verify import audit_evidence, check_statistics
    from .witness import trusted_witnesses

    root = Path(path)
    at = now or SYSTEM_CLOCK.now()
    trusted_witnesses(witnesses, quorum, [Path(c) for c in cosigned])  # usage, before work
    cdr_rows = read_cdr(Path(cdr)) if cdr is not None else None
    try:
        manifest = json.loads((root / MANIFEST).read_bytes())
        if manifest.get("format") != DEPLOYMENT_KIT_FORMAT:
            raise ValueError(f'format must be "{DEPLOYMENT_KIT_FORMAT}"')
        if manifest.get("version") != DEPLOYMENT_KIT_VERSION:
            raise ValueError(f"version must be {DEPLOYMENT_KIT_VERSION}")
        nodes = [
            (str(n["name"]), root / str(n["folder"]), str(n["kit_sha256"]))
            for n in manifest["nodes"]
        ]
        origins = {str(n["origin"]): str(n["name"]) for n in manifest["nodes"]}
        named = [name for name, _, _ in nodes]
        if len(set(named)) != len(named):
            raise ValueError(f"it names a node twice ({sorted(named)})")
        unattributed = manifest.get("unattributed", {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{root / MANIFEST}: {exc}; ask the operator for a new kit") from None
    exported = _route_checkpoints(checkpoints, origins)
    rep = AuditReport(store=f"deployment {manifest.get('deployment')} ({root})", at=at)
    joined: list[tuple[str, Any, Any]] = []  # (node, decisions, others)
    kits = []
    runners: list[_ReadFirst] = []
    for name, folder, digest in nodes:
        if hashlib.sha256((folder / "kit.json").read_bytes()).hexdigest() != digest:
            rep.add("log", f"node {name}: its kit.json is not the one the manifest lists")
        ev, revealed = open_kit(folder)
        kits.append((name, folder, ev, revealed))
        # Each node's log is read once: here, by the runner its audit will use, which hands
        # the audit what it read (the joins below need every node's entries first).
        runners.append(_ReadFirst(InProcess() if runner_for is None else runner_for(folder)))
    # On a cluster, every node's partitions are submitted at once, and their columns laid
    # out one node after the other (the nodes' decisions then join without a copy).
    together = getattr(runners[0].runner, "lay_out_together", None) if runners else None
    if together is not None:
        together(sum(f.stat().st_size for _, folder, _ in nodes for f in _log_files(folder)))
    try:
        for (name, _, ev, revealed), runner in zip(kits, runners, strict=True):
            runner.submit(ev, revealed, exported.get(name), progress)
        for (name, _, _), runner in zip(nodes, runners, strict=True):
            contents = runner.read()
            joined.append((name, contents.decisions, contents.others))
    finally:
        if together is not None:
            together(None)
    # A sweep, an erasure, a hold or a recovery runs on one node and logs there, about
    # recordings any node opened: each node's recordings are checked with every log's word.
    opened = _opened_by(joined)
    said = [(other, e) for other, _, others in joined for e in others if e.type in JOINED_TYPES]
    node_reports = []
    for (name, _folder, ev, revealed), runner in zip(kits, runners, strict=True):
        elsewhere = OtherNodes(
            entries=[(other, e) for other, e in said if other != name], opened=opened
        )
        node_reports.append(
            (
                name,
                audit_evidence(
                    ev,
                    revealed,
                    now=at,
                    progress=progress,
                    caps_across_nodes=True,
                    checkpoint=exported.get(name),
                    witnesses=witnesses,
                    quorum=quorum,
                    cosigned=[Path(c) for c in cosigned],
                    other_logs=frozenset(o for o, n in origins.items() if n != name),
                    elsewhere=elsewhere,
                    runner=runner,
                ),
            )
        )
    _merge(rep, node_reports)
    policies = _policies(nodes)
    _join_commitments(rep, joined)
    every = concat_decisions([d for _, d, _ in joined])  # node after node
    every_firsts = call_firsts(every)
    _join_decisions(rep, joined, every, every_firsts, policies)
    _join_recordings(rep, joined)
    # The statistics over the deployment: each call once, whichever node logged it first.
    rep.skipped.pop("statistics", None)
    rep.ran.add("statistics")
    check_statistics(rep, every, counted_once(every_firsts))
    if cdr_rows is not None:
        # Against every node's decisions at once: a carrier call decided on any node has its
        # decision, and one call decided under two references on two nodes is a re-roll.
        rep.skipped.pop("cdr", None)
        rep.ran.add("cdr")
        before = len(rep.findings)
        check_cdr(rep, every, cdr_rows, policies, counted_once(every_firsts))
        _name_nodes(rep.findings[before:], joined)
    states = {str(n.get("name")): n for n in manifest.get("node_states", [])}
    _check_node_states(rep, states, {name for name, _, _ in nodes})
    opened_by = unattributed.get("opened_by", {})
    status = unattributed.get("status", {})
    # A recorder killed before its opened entry was durable leaves a row that its node's
    # recovery aborts, with a tombstone in its log (the single-log audit's rule, 0035).
    aborted = {
        str(e.fields.get("recording_id"))
        for _, _, others in joined
        for e in others
        if e.type == T_RECORDING_ABORTED
    }
    for rid in unattributed.get("recordings", []):
        if status.get(rid) == "aborted" and rid in aborted:
            counts = rep.checked.setdefault("recordings", {})
            counts["aborted_before_opened"] = counts.get("aborted_before_opened", 0) + 1
            continue
        node = opened_by.get(rid)
        state = states.get(str(node), {})
        if node is None:
            why = "a catalog row that no node's log opened"
        elif state.get("status") == "lost":
            why = (
                f"a catalog row that node {node} opened, whose log is not in the kit (lost on "
                f"{_when(state.get('changed_at'))}): restore its log from its last backup"
            )
        else:
            why = f"a catalog row that node {node} opened, but no node's log in the kit did"
        rep.add("recordings", why, recording_id=str(rid), evidence={"opened_by": node})
    for name in unattributed.get("files", []):
        rep.add(
            "recordings",
            "a file in the deployment's bucket that no node's log opened",
            evidence={"file": str(name)},
        )
    rep.counts["nodes"] = len(nodes)
    return rep


def _log_files(kit: Path) -> list[Path]:
    """The files of a node's kit's log (none if it has no log folder)."""
    try:
        return [f for f in (kit / "log").iterdir() if f.is_file()]
    except OSError:
        return []


class _ReadFirst:
    """A node's part runner that reads the node's log before its audit: :meth:`submit` starts
    the partitions that :func:`~.verify.audit_evidence` will ask for (on a cluster, every
    node's are submitted before the first is waited for), :meth:`read` returns the log's
    contents as that audit joins them, and the audit's :meth:`run` of the same partitions
    then gets those results instead of reading the log again (other partitions are run)."""

    def __init__(self, runner: PartRunner) -> None:
        self.runner = runner
        self._args: tuple[Any, ...] | None = None
        self._pending: Callable[[], tuple[list[SegmentCheck], list[SegmentEntries]]] | None
        self._pending = None
        self._ran: tuple[list[SegmentCheck], list[SegmentEntries]] | None = None

    def submit(
        self,
        ev: Any,
        revealed: Sequence[Any],
        checkpoint: Path | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        from .verify import log_partitions

        plan, parts, keys = log_partitions(ev, revealed, checkpoint)
        self._args = (parts, plan.wanted, ev.sealing, keys)
        submit = getattr(self.runner, "submit", None)
        if submit is not None:
            self._pending = submit(*self._args, progress)
        else:
            self._pending = functools.partial(self.runner.run, *self._args, progress)

    def read(self) -> LogContents:
        assert self._pending is not None, "submit first"
        self._ran = self._pending()
        self._pending = None
        return join_entries(self._ran[1]).contents

    def run(
        self,
        parts: Sequence[LogPartition],
        wanted: frozenset[int],
        sealing: Any,
        keys: Mapping[str, Sequence[bytes]],
        progress: Callable[[int], None] | None,
    ) -> tuple[list[SegmentCheck], list[SegmentEntries]]:
        ran, args = self._ran, self._args
        self._ran = self._args = None
        if ran is not None and args is not None:
            p, w, s, k = args
            if list(parts) == list(p) and w == wanted and s is sealing and dict(keys) == k:
                return ran
        return self.runner.run(parts, wanted, sealing, keys, progress)


def _route_checkpoints(
    files: Sequence[str | os.PathLike[str]], origins: dict[str, str]
) -> dict[str, Path]:
    """Each exported checkpoint to the node whose log it names (by origin)."""
    routed: dict[str, Path] = {}
    for file in files:
        path = Path(file)
        try:
            origin = json.loads(path.read_bytes()).get("origin")
        except (OSError, ValueError, AttributeError) as exc:
            raise InvalidArgument(
                f"--checkpoint {path}: not a checkpoint exported by 'sampledrec log checkpoint' "
                f"({exc})"
            ) from None
        node = origins.get(origin) if isinstance(origin, str) else None
        if node is None:
            raise InvalidArgument(
                f"--checkpoint {path} is of the log {origin!r}, which is no node of this kit "
                f"({', '.join(sorted(origins.values()))}); give the checkpoints of its nodes"
            )
        if node in routed:
            raise InvalidArgument(
                f"--checkpoint {routed[node]} and {path} are both of node {node}'s log; give "
                "one per node (the latest you hold)"
            )
        routed[node] = path
    return routed


def _name_nodes(findings: Sequence[Any], joined: Sequence[tuple[str, Any, Any]]) -> None:
    """The node (or nodes) whose log holds the decision a finding of the joined checks names:
    their log indexes alone are ambiguous across nodes."""
    for f in findings[:1000]:
        if f.call_ref is None:
            continue
        found = []
        for name, d, _ in joined:
            if not len(d):
                continue
            rows = np.flatnonzero(d.index == f.index) if f.index is not None else np.arange(len(d))
            if any(d.ref_text(int(i)) == f.call_ref for i in rows[:100_000].tolist()):
                found.append(name)
        if found:
            f.evidence = {"nodes": found, **f.evidence}


def _merge(rep: AuditReport, reports: Sequence[tuple[str, AuditReport]]) -> None:
    """Each node's report into the deployment's."""
    for name, r in reports:
        rep.simulated = rep.simulated or r.simulated
        rep.ran |= r.ran
        for key, value in r.counts.items():
            rep.counts[key] += value
        for check, counts in r.checked.items():
            merged = rep.checked.setdefault(check, {})
            for key, value in counts.items():
                merged[key] = merged.get(key, 0) + value
        for check, why in r.expected.items():
            rep.expected.setdefault(check, f"node {name}: {why}")
        for f in r.findings:
            f.evidence = {"node": name, **f.evidence}
            f.message = f"node {name}: {f.message}"
            rep.findings.append(f)
        rep.notes.extend(f"node {name}: {note}" for note in r.notes)
        rep.groups.extend(r.groups)
        rep.witness_coverage.extend({"node": name, **w} for w in r.witness_coverage)
    for check in (*CHECKS, *OPTIONAL_CHECKS):
        skipped = [(n, r.why(check)) for n, r in reports if r.status(check) == "SKIPPED"]
        if skipped and len(skipped) == len(reports):
            rep.skip(check, "; ".join(f"node {n}: {why}" for n, why in skipped[:3]))


def _policies(nodes: Sequence[tuple[str, Path, str]]) -> dict[bytes, Any]:
    from ..sampling.policy import Policy

    found: dict[bytes, Any] = {}
    for _, folder, _ in nodes:
        for path in sorted((folder / "policies").glob("*.json")):
            try:
                policy = Policy.from_dict(json.loads(path.read_bytes()))
            except (SampledrecError, ValueError, TypeError):
                continue  # the node's own audit reports a policy it cannot read
            found.setdefault(bytes.fromhex(policy.version), policy)
    return found


def _join_commitments(rep: AuditReport, joined: Sequence[tuple[str, Any, Any]]) -> None:
    seen: dict[str, tuple[str, int, bytes]] = {}
    compared = 0
    for name, _, others in joined:
        for e in others:
            if e.type != T_KEY_COMMIT:
                continue
            epoch = str(e.fields.get("epoch_id"))
            commitment = bytes(e.fields.get("commitment", b""))
            first = seen.setdefault(epoch, (name, e.index, commitment))
            if first[0] != name:
                compared += 1
            if first[2] != commitment:
                rep.add(
                    "keys",
                    f"node {name} committed to another key for epoch {epoch} than node "
                    f"{first[0]}: the nodes of a deployment share one key per epoch",
                    index=e.index,
                    epoch_id=epoch,
                    evidence={"node": name, "first_node": first[0], "first_index": first[1]},
                )
    rep.checked.setdefault("keys", {})["commitments_joined_across_nodes"] = compared


def _join_decisions(
    rep: AuditReport,
    joined: Sequence[tuple[str, Any, Any]],
    every: Any,
    every_firsts: Any,
    policies: dict[bytes, Any],
) -> None:
    """One outcome per call across nodes (first wins), and per-agent caps across nodes.

    ``every``: the nodes' decisions one node after the other (:func:`concat_decisions` of
    ``joined``'s), and ``every_firsts`` its :func:`call_firsts`. Each node's first decision of
    each call (with a reference) takes part; a call's decisions on several nodes are ordered by
    time, then node name, then index, and the first wins: another node's decision with another
    outcome (reason, rule, policy version, threshold) is a finding. In columns: the work grows
    with the decisions but the Python loops only with the findings and the capped winners."""
    names = [name for name, _, _ in joined]
    sizes = [len(d) for _, d, _ in joined]
    node_of = np.repeat(np.arange(len(joined), dtype=np.int64), sizes)
    # Most calls have one decision in the whole deployment: it wins alone, and nothing is
    # ordered for it. Only the others' rows (retries, and calls decided on several nodes) are
    # sorted: each node's first decision of each call, then those by time, node name, index.
    has = np.flatnonzero(every.ref_kind > 0)
    call_all = every_firsts[has]  # the call's first row in ``every``: one number per call
    alone = np.bincount(call_all, minlength=len(every))[call_all] == 1
    single = has[alone]  # its call's first row, so also the call's number
    rows, call = has[~alone], call_all[~alone]
    by_node = np.lexsort((rows, node_of[rows], call))
    rows, call = rows[by_node], call[by_node]
    node_first = np.ones(rows.size, dtype=bool)  # each node's first decision of each call
    node_first[1:] = (call[1:] != call[:-1]) | (node_of[rows[1:]] != node_of[rows[:-1]])
    rows, call = rows[node_first], call[node_first]
    rank = np.argsort(np.argsort(np.asarray(names, dtype=object)))  # node names in order
    order = np.lexsort((every.index[rows], rank[node_of[rows]], every.time_us[rows], call))
    rows, call = rows[order], call[order]
    first = np.ones(rows.size, dtype=bool)
    first[1:] = call[1:] != call[:-1]
    winner = rows[first][np.cumsum(first) - 1]  # each row's call's first decision
    size = np.diff(np.flatnonzero(np.r_[first, True]))
    differs = (
        (every.reason[rows] != every.reason[winner])
        | (every.rule[rows] != every.rule[winner])
        | (every.version[rows] != every.version[winner])
        | (every.threshold[rows] != every.threshold[winner])
    ) & ~first
    for i, w in zip(rows[differs].tolist(), winner[differs].tolist(), strict=True):
        node, node0 = names[int(node_of[i])], names[int(node_of[w])]
        rep.add(
            "decisions",
            f"decided {REASONS[int(every.reason[i])]} under rule "
            f"{every.rules[int(every.rule[i])]!r} on node {node}, after node {node0} decided it "
            f"{REASONS[int(every.reason[w])]} under rule {every.rules[int(every.rule[w])]!r}: "
            "a call decided on two nodes must get the first decision",
            index=int(every.index[i]),
            call_ref=every.ref_text(i),
            epoch_id=every.epochs[int(every.epoch[i])],
            evidence={"node": node, "first_node": node0, "first_index": int(every.index[w])},
        )
    rep.checked.setdefault("decisions", {})["calls_decided_on_several_nodes"] = int(
        np.count_nonzero(size > 1)
    )
    won = np.concatenate([single, rows[first]])
    won_call = np.concatenate([single, call[first]])
    capped = ((every.reason[won] == _SAMPLED) | (every.reason[won] == _CAP)) & (
        every.agent[won] >= 0
    )
    won = won[capped][np.argsort(won_call[capped], kind="stable")]  # in the order of the calls
    _join_caps(
        rep,
        [
            (int(every.time_us[i]), names[int(node_of[i])], int(every.index[i]), every, i)
            for i in won.tolist()
        ],
        policies,
    )


def _outcome(d: Any, i: int) -> tuple[int, str, bytes, int]:
    return (
        int(d.reason[i]),
        d.rules[int(d.rule[i])],
        bytes(d.versions[int(d.version[i])]),
        int(d.threshold[i]),
    )


def _join_caps(
    rep: AuditReport, winners: Sequence[tuple[int, str, int, Any, int]], policies: dict[bytes, Any]
) -> None:
    """Caps across nodes: selections per (rule, agent, period) at most the cap; a cap_reached
    justified by the period's selections on all nodes."""
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    limits: dict[tuple[str, str, str], int] = {}
    reached = []
    for _, node, index, d, i in winners:
        reason = int(d.reason[i])
        agent = d.agent_name(i)
        if reason not in (_SAMPLED, _CAP) or agent is None:
            continue
        policy = policies.get(bytes(d.versions[int(d.version[i])]))
        if policy is None:
            continue  # the node's own audit reports a decision under an unknown policy
        try:
            rule = policy.rule_named(d.rules[int(d.rule[i])])
        except KeyError:
            continue
        if not rule.has_cap:
            continue
        periods = cap_periods(
            from_micros(int(d.time_us[i])), rule.max_per_agent_per_day, rule.max_per_agent_per_week
        )
        groups = [((rule.name, cap_agent(agent), p), cap) for p, cap in periods]
        if reason == _SAMPLED:
            for g, cap in groups:
                counts[g] += 1
                limits[g] = cap
        else:
            reached.append((node, index, d, i, groups))
    for g, n in sorted(counts.items()):
        if n > limits[g]:
            rep.add(
                "decisions",
                f"agent {g[1]!r} has {n} calls selected under rule {g[0]!r} in {g[2]} across the "
                f"nodes, over the cap of {limits[g]}",
                evidence={"rule": g[0], "period": g[2], "selected": n, "cap": limits[g]},
            )
    for node, index, d, i, groups in reached:
        if not any(counts.get(g, 0) >= cap for g, cap in groups):
            rep.add(
                "decisions",
                f"logged as cap reached on node {node}, but the nodes together selected fewer "
                "calls of its agent under its rule than the cap in each of its periods",
                index=index,
                call_ref=d.ref_text(i),
                epoch_id=d.epochs[int(d.epoch[i])],
                evidence={"node": node, "counts": {g[2]: counts.get(g, 0) for g, _ in groups}},
            )
    rep.counts["decisions_cap_reached_replayed"] += len(reached)


def _opened_by(joined: Sequence[tuple[str, Any, Any]]) -> dict[str, str]:
    """Every recording some node's log opened, with the first such node."""
    opened: dict[str, str] = {}
    for name, _, others in joined:
        for e in others:
            if e.type == T_RECORDING_OPENED:
                opened.setdefault(str(e.fields.get("recording_id")), name)
    return opened


def _join_recordings(rep: AuditReport, joined: Sequence[tuple[str, Any, Any]]) -> None:
    """At most one recording per decided call across nodes: each node's audit checks its own
    log; here recordings of one call (epoch and reference) opened by several nodes are a
    finding. A recording's call is the latest positive decision its node logged for the
    reference before opening it (every node logs the decision of a call it records)."""
    per_call: dict[tuple[str, str], list[tuple[str, str, int]]] = defaultdict(list)
    for name, d, others in joined:
        opened = [
            (e, ref_text(ref))
            for e in others
            if e.type == T_RECORDING_OPENED
            and isinstance(ref := e.fields.get("call_ref"), str | bytes)
            and ref  # else sealed away, or missing: the node's own audit says which
        ]
        if not opened:
            continue  # no recording: none of its decisions is looked up
        wanted = {text for _, text in opened}
        positive: dict[str, list[tuple[int, str]]] = defaultdict(list)  # ref -> (index, epoch)
        if len(d):
            for i in (d.reason == _SAMPLED).nonzero()[0].tolist():
                ref = d.ref(i)
                if ref is not None and (text := ref_text(ref)) in wanted:
                    positive[text].append((int(d.index[i]), d.epochs[int(d.epoch[i])]))
        for e, text in opened:
            earlier = [epoch for index, epoch in positive.get(text, []) if index < e.index]
            if not earlier:
                continue  # the node's own audit reports a recording without a decision
            rid = str(e.fields.get("recording_id"))
            per_call[(earlier[-1], text)].append((name, rid, e.index))
    several = 0
    for (epoch, ref), found in sorted(per_call.items()):
        if len({node for node, _, _ in found}) < 2:
            continue  # one node's recordings: its own audit counts them
        several += 1
        node, rid, index = found[-1]
        rep.add(
            "recordings",
            f"{len(found)} recordings of one decided call, opened by nodes "
            f"{', '.join(sorted({n for n, _, _ in found}))} (at most one per call across the "
            "nodes)",
            index=index,
            recording_id=rid,
            call_ref=ref,
            epoch_id=epoch,
            evidence={"recordings": {r: n for n, r, _ in found}, "node": node},
        )
    rep.checked.setdefault("recordings", {})["calls_recorded_on_several_nodes"] = several


def _node_states(store: Any) -> list[dict[str, Any]]:
    """The deployment's list of nodes (docs/decisions/0035), as the kit's manifest keeps it."""
    registry = store.node_registry()
    if registry is None:
        return []
    with registry:
        return [
            {
                "name": n.name,
                "status": n.status,
                "changed_at": n.changed_at,
                "changed_by": n.changed_by,
                "reason": n.reason,
            }
            for n in registry.nodes()
        ]


def _when(us: object) -> str:
    try:
        return from_micros(int(us)).isoformat()  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown date"


def _check_node_states(
    rep: AuditReport, states: dict[str, dict[str, Any]], in_kit: set[str]
) -> None:
    """Every node of the deployment's list is in the kit, except one lost for good whose log
    is gone; retired and lost nodes are named in the notes."""
    for name, state in sorted(states.items()):
        status = str(state.get("status"))
        if status in ("retired", "lost"):
            rep.notes.append(
                f"node {name} was {status} on {_when(state.get('changed_at'))} by node "
                f"{state.get('changed_by')}"
                + (f" ({state.get('reason')})" if state.get("reason") else "")
                + ("" if name in in_kit else "; its log is not in the kit")
            )
        if name not in in_kit and status != "lost":
            rep.add(
                "log",
                f"node {name} ({status}) of the deployment is not in the kit: its decisions and "
                "recordings were not audited; make the kit with every node (--node), retired "
                "ones too",
                evidence={"node": name, "status": status},
            )
    rep.checked.setdefault("log", {})["nodes_listed"] = len(states)
