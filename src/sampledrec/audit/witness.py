"""The ``witnesses`` check: the log against the checkpoints that witnesses cosigned.

The operator can rewrite its log and sign it again with its own key; it cannot make a witness
cosign the rewritten history after the witness cosigned the real one. So the audit takes the
witnesses the auditor trusts (``--witness NAME=VKEY``, a C2SP cosignature verifier key, type
0x04) and every cosigned checkpoint it is given (``cosigned/**/*.notes`` in the store or the kit,
and any ``--cosigned FILE``, such as a witness's own state file), and:

- checks every cosignature line of those witnesses (cosignature/v1: ``cosignature/v1\\n``,
  ``time <seconds>\\n``, then the checkpoint's text, Ed25519; re-implemented here from the
  spec, not taken from the witness's code) and the log's own signature on each such checkpoint;
  a cosignature that does not verify is a finding;
- recomputes the log's root at the size of each cosigned checkpoint: a log shorter than a
  cosigned size, or another root there, is a finding that says between which cosigned sizes the
  history diverges (an entry dropped, reordered or changed; the log truncated or forked);
- requires a quorum (``--quorum K``, default: every witness named) of witnesses with at least
  one cosigned checkpoint that matches the log;
- reports, per witness, how much of the audited range (the whole log: the kit copies it whole)
  its latest matching checkpoint covers, and the longest stretch of entries between two
  consecutive cosigned checkpoints (or before the first, or after the last), with how long it
  waited for its cosignature: a witness that was down shows as a long stretch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import CheckpointError, InvalidArgument, LogCorrupt
from ..log import hashing
from ..log.checkpoint import verify_checkpoint
from ..log.merkle import EMPTY_ROOT, CompactRange
from ..log.segments import iter_batches
from ..log.storage import LogStorage
from ..log.verify import LogReport
from .evidence import Evidence
from .findings import AuditReport

__all__ = [
    "TrustedWitness",
    "check_witnesses",
    "parse_witness",
    "trusted_witnesses",
    "witness_hook",
]

_COSIGNATURE_V1: Final = 0x04
_DASH: Final = "\u2014 "


@dataclass(frozen=True)
class TrustedWitness:
    """A witness the auditor trusts: a label for the report, its key name and public key."""

    label: str
    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(
            self.name.encode() + b"\n" + bytes((_COSIGNATURE_V1,)) + self.public_key
        ).digest()[:4]

    def verify(self, text: bytes, raw: bytes) -> int | None:
        """The timestamp when ``raw`` (key ID || u64 time || Ed25519 signature) is this
        witness's cosignature of the checkpoint ``text``, else None."""
        if len(raw) != 76 or raw[:4] != self.key_id:
            return None
        (stamp,) = struct.unpack_from(">Q", raw, 4)
        if stamp >= 2**63:
            return None
        message = b"cosignature/v1\ntime " + str(stamp).encode() + b"\n" + text
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(raw[12:], message)
        except InvalidSignature:
            return None
        return int(stamp)


def parse_witness(text: str) -> TrustedWitness:
    """``NAME=VKEY`` (``VKEY``: ``keyname+keyid+base64(0x04 || key)``); raises
    :class:`InvalidArgument`."""
    label, sep, vkey = text.partition("=")
    hint = (
        "give --witness NAME=VKEY with the verifier key the witness's operator gave you (as "
        "'sampledrec witness keygen' prints it)"
    )
    if not sep or not label.strip():
        raise InvalidArgument(f"--witness {text[:80]!r} is not NAME=VKEY; {hint}")
    try:
        name, kid_hex, b64 = vkey.strip().split("+", 2)
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidArgument(f"--witness {label}: {vkey[:80]!r} is not a vkey; {hint}") from None
    if len(raw) != 33 or raw[0] != _COSIGNATURE_V1:
        raise InvalidArgument(
            f"--witness {label}: the key is not an Ed25519 cosignature key (type 0x04); {hint}"
        )
    w = TrustedWitness(label.strip(), name, raw[1:])
    if w.key_id.hex() != kid_hex.lower():
        raise InvalidArgument(f"--witness {label}: the key id does not match its name and key")
    return w


@dataclass(frozen=True)
class _Cosigned:
    witness: TrustedWitness
    size: int
    root: bytes
    time: int
    where: str


def _notes(data: bytes) -> Iterable[bytes]:
    """The signed notes of a file: ``.notes`` files hold notes each followed by an empty line;
    a witness's state file is one note. (Checkpoint texts have no empty line.)"""
    blocks = data.split(b"\n\n")
    for i in range(0, len(blocks) - 1, 2):
        yield blocks[i] + b"\n\n" + blocks[i + 1].rstrip(b"\n") + b"\n"


def _signature_lines(note: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    text, _, sigs = note.rpartition(b"\n\n")
    out = []
    for line in sigs.decode("utf-8", "replace").split("\n"):
        if not line.startswith(_DASH):
            continue
        name, _, b64 = line[len(_DASH) :].rpartition(" ")
        try:
            out.append((name, base64.b64decode(b64, validate=True)))
        except (binascii.Error, ValueError):
            out.append((name, b""))
    return text + b"\n", out


def _files(folder: Path | None, extra: Sequence[Path]) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    if folder is not None and folder.is_dir():
        found += [
            (f"{folder.name}/{p.relative_to(folder).as_posix()}", p)
            for p in sorted(folder.rglob("*.notes"))
            if p.is_file()
        ]
    found += [(str(p), p) for p in extra]
    return found


def trusted_witnesses(
    witnesses: Sequence[str], quorum: int | None, cosigned: Sequence[str | Path]
) -> list[TrustedWitness]:
    """The ``--witness NAME=VKEY`` given, checked with ``--quorum`` and ``--cosigned`` before
    the audit starts; raises :class:`InvalidArgument`."""
    trusted = [parse_witness(w) for w in witnesses]
    if not trusted:
        if quorum is not None or cosigned:
            raise InvalidArgument("--quorum and --cosigned go with --witness NAME=VKEY")
        return trusted
    if quorum is not None and not 1 <= quorum <= len(trusted):
        raise InvalidArgument(
            f"--quorum {quorum} must be between 1 and the number of --witness given "
            f"({len(trusted)})"
        )
    labels = [w.label for w in trusted]
    # By public key, not key ID: a cosignature/v1 does not sign the witness's key name, so one
    # key given under two names would verify as two witnesses (tlog-cosignature).
    if len(set(labels)) != len(labels) or len({w.public_key for w in trusted}) != len(trusted):
        raise InvalidArgument("two --witness share a name or a key; name each witness once")
    for path in cosigned:
        if not Path(path).is_file():
            raise InvalidArgument(f"--cosigned {path}: no such file")
    return trusted


def witness_hook(
    rep: AuditReport,
    ev: Evidence,
    logrep: LogReport,
    trusted: Sequence[TrustedWitness],
    quorum: int | None,
    extra: Sequence[Path],
    other_logs: frozenset[str] = frozenset(),
) -> None:
    """The ``witnesses`` check when witnesses are named; otherwise a note when the evidence
    holds cosigned checkpoints that nobody asked to check. ``other_logs``: the origins of the
    other logs audited with this one (a deployment's nodes), whose checkpoints ``extra`` may
    hold too (a witness's state file): those are left to their own log's check."""
    if trusted:
        check_witnesses(
            rep,
            ev.log,
            origin=logrep.origin,
            public_key=ev.public_key,
            log_size=logrep.size,
            witnesses=trusted,
            quorum=quorum,
            folder=ev.cosigned,
            extra=extra,
            other_logs=other_logs,
        )
    elif ev.cosigned is not None and any(ev.cosigned.rglob("*.notes")):
        rep.notes.append(
            "witnesses: the evidence holds checkpoints cosigned by witnesses (cosigned/); give "
            "--witness NAME=VKEY for each witness you trust to check the log against them"
        )


def check_witnesses(
    rep: AuditReport,
    log: LogStorage,
    *,
    origin: str | None,
    public_key: bytes,
    log_size: int,
    witnesses: Sequence[TrustedWitness],
    quorum: int | None,
    folder: Path | None,
    extra: Sequence[Path] = (),
    other_logs: frozenset[str] = frozenset(),
) -> None:
    """The ``witnesses`` check (module docstring) over the log of ``log_size`` entries;
    checkpoints of the logs whose origins are ``other_logs`` are passed over."""
    rep.ran.add("witnesses")
    if quorum is None:
        quorum = len(witnesses)
    cosigned: list[_Cosigned] = []
    notes_read = 0
    for where, path in _files(folder, extra):
        try:
            data = path.read_bytes()
        except OSError as exc:
            rep.add("witnesses", f"cannot read {where}: {exc.strerror}", evidence={"file": where})
            continue
        for note in _notes(data):
            if other_logs and note.split(b"\n", 1)[0].decode("utf-8", "replace") in other_logs:
                continue  # another node's checkpoint: checked with that node's log
            notes_read += 1
            text, sigs = _signature_lines(note)
            ours = [
                (w, raw)
                for name, raw in sigs
                for w in witnesses
                if name == w.name and raw[:4] == w.key_id
            ]
            if not ours:
                continue
            try:
                if origin is None:
                    raise CheckpointError("the log's origin is unknown")
                cp = verify_checkpoint(note, origin, public_key)
            except CheckpointError as exc:
                rep.add(
                    "witnesses",
                    f"a cosigned checkpoint is not signed by the log's key: {exc}",
                    evidence={"file": where, "checkpoint": note.decode("utf-8", "replace")},
                )
                continue
            for w, raw in ours:
                stamp = w.verify(text, raw)
                if stamp is None:
                    rep.add(
                        "witnesses",
                        f"a cosignature of witness {w.label} does not verify",
                        evidence={"file": where, "size": cp.size, "witness": w.name},
                    )
                    continue
                cosigned.append(_Cosigned(w, cp.size, cp.root, stamp, where))

    roots = _roots_at(log, sorted({c.size for c in cosigned if c.size <= log_size}), log_size)
    _check_forks(rep, cosigned)
    matching: dict[str, list[_Cosigned]] = {w.label: [] for w in witnesses}
    for w in witnesses:
        mine = sorted((c for c in cosigned if c.witness == w), key=lambda c: (c.size, c.time))
        bad = []
        for c in mine:
            got = roots.get(c.size)
            if isinstance(got, bytes) and got == c.root:
                matching[w.label].append(c)
            else:
                bad.append(c)
        if bad:
            _report_divergence(rep, w, bad, matching[w.label], roots, log_size)

    covering = [w for w in witnesses if matching[w.label]]
    rep.counts["witnesses_cosigning"] = len(covering)
    rep.checked["witnesses"] = {
        "witnesses": len(witnesses),
        "quorum": quorum,
        "cosigning": len(covering),
        "cosignatures": len(cosigned),
        "log_entries": log_size,
    }
    if len(covering) < quorum:
        rep.add(
            "witnesses",
            f"{len(covering)} of the witnesses named cosigned a checkpoint that matches the log; "
            f"the quorum is {quorum}",
            evidence={
                "quorum": quorum,
                "cosigning": [w.label for w in covering],
                "without": [w.label for w in witnesses if w not in covering],
                "notes_read": notes_read,
            },
        )
    rep.witness_coverage = [_coverage(w, matching[w.label], log_size) for w in witnesses]
    # What the quorum vouches for: the entries up to the K-th largest cosigned size. Past it,
    # fewer than K witnesses saw the log (a witness down, or cosignatures withheld): a rewrite
    # there would not be caught, and the report says how many entries that is.
    reach = sorted((min(c["latest_size"], log_size) for c in rep.witness_coverage), reverse=True)
    quorum_size = reach[quorum - 1] if 0 < quorum <= len(reach) else 0
    rep.checked["witnesses"]["quorum_covered_entries"] = quorum_size
    if quorum_size < log_size:
        rep.notes.append(
            f"entries {quorum_size}..{log_size - 1} ({log_size - quorum_size:,} entries) are "
            f"cosigned by fewer than {quorum} of the witnesses named (the quorum): the witnesses "
            "cannot vouch for them; ask the witnesses for their latest cosigned checkpoints "
            "(--cosigned FILE) to cover them"
        )
    for cov in rep.witness_coverage:
        gap = cov["longest_uncovered"]
        if gap is not None and gap["entries"]:
            rep.notes.append(
                f"witness {cov['witness']}: the longest stretch without its cosignature is "
                f"entries {gap['from']}..{gap['to'] - 1} ({gap['entries']:,} entries"
                + (f", {gap['seconds']:,} s" if gap.get("seconds") is not None else "")
                + ")"
            )


def _roots_at(log: LogStorage, sizes: list[int], log_size: int) -> dict[int, bytes | str]:
    """The root of the log's first ``s`` entries for each ``s`` in ``sizes`` (ascending),
    recomputed from the entries; where the log cannot be read that far, why."""
    out: dict[int, bytes | str] = {}
    if not sizes:
        return out
    want = iter(sizes)
    nxt = next(want, None)
    while nxt == 0:
        out[0] = EMPTY_ROOT
        nxt = next(want, None)
    cr = CompactRange()
    try:
        for b in iter_batches(log):
            if nxt is None:
                break
            got = hashing.leaf_records(memoryview(b.data), b.start, b.entries)
            if got is None:
                raise LogCorrupt(f"the batch at entry {b.first} does not parse")
            leaves = got[3]
            done = 0
            while nxt is not None and nxt <= b.first + b.entries:
                k = nxt - b.first
                hashing.extend_concat(cr, leaves[32 * done : 32 * k])
                done = k
                out[nxt] = cr.root()
                nxt = next(want, None)
            hashing.extend_concat(cr, leaves[32 * done :])
    except (LogCorrupt, ValueError) as exc:
        for s in sizes:
            out.setdefault(s, f"the log cannot be read up to entry {s}: {exc}")
    for s in sizes:
        out.setdefault(s, f"the log holds {log_size} entries")
    return out


def _check_forks(rep: AuditReport, cosigned: list[_Cosigned]) -> None:
    by_size: dict[int, dict[bytes, _Cosigned]] = {}
    for c in cosigned:
        by_size.setdefault(c.size, {}).setdefault(c.root, c)
    for size, found in sorted(by_size.items()):
        if len(found) > 1:
            views = list(found.values())
            rep.add(
                "witnesses",
                f"two different checkpoints of size {size} were cosigned: the log forked "
                "(it showed two histories)",
                evidence={
                    "size": size,
                    "cosigned": [
                        {
                            "witness": c.witness.label,
                            "root": c.root.hex(),
                            "time": _iso(c.time),
                            "file": c.where,
                        }
                        for c in views
                    ],
                },
            )


def _report_divergence(
    rep: AuditReport,
    w: TrustedWitness,
    bad: list[_Cosigned],
    good: list[_Cosigned],
    roots: dict[int, bytes | str],
    log_size: int,
) -> None:
    """One finding per witness: its first cosigned checkpoint that the log contradicts, and
    between which sizes the log's history left the one it cosigned."""
    first = bad[0]
    below = max((c.size for c in good if c.size < first.size), default=0)
    got = roots.get(first.size)
    if first.size > log_size:
        message = (
            f"witness {w.label} cosigned a checkpoint of {first.size:,} entries, but the log "
            f"holds {log_size:,}: entries were dropped after the witness saw them (truncation "
            "or rollback)"
        )
    else:
        message = (
            f"the log's first {first.size:,} entries are not the ones witness {w.label} "
            f"cosigned: an entry among {below}..{first.size - 1} was dropped, reordered or "
            "changed after the witness saw it, even if the log's own signatures verify"
        )
    rep.add(
        "witnesses",
        message,
        index=below,
        evidence={
            "witness": w.label,
            "cosigned_size": first.size,
            "cosigned_root": first.root.hex(),
            "log_root": got.hex() if isinstance(got, bytes) else None,
            "log_entries": log_size,
            "cosigned_at": _iso(first.time),
            "file": first.where,
            "last_matching_size": below,
            "contradicted_checkpoints": len(bad),
        },
    )


def _coverage(w: TrustedWitness, good: list[_Cosigned], log_size: int) -> dict[str, Any]:
    sizes: dict[int, int] = {}  # size -> the earliest time it was cosigned
    for c in good:
        sizes[c.size] = min(sizes.get(c.size, c.time), c.time)
    points = sorted(sizes.items())
    latest = points[-1] if points else None
    longest: dict[str, Any] | None = None
    prev_size, prev_time = 0, None
    for size, stamp in [*points, (log_size, None)]:
        if size <= prev_size and size != log_size:
            continue
        span = size - prev_size
        if longest is None or span > longest["entries"]:
            longest = {
                "from": prev_size,
                "to": size,
                "entries": span,
                "seconds": None if stamp is None or prev_time is None else stamp - prev_time,
                "cosigned_at": None if stamp is None else _iso(stamp),
            }
        prev_size, prev_time = max(prev_size, size), stamp
    covered = latest[0] if latest else 0
    return {
        "witness": w.label,
        "key": w.name,
        "cosigned_checkpoints": len(good),
        "latest_size": covered,
        "latest_at": None if latest is None else _iso(latest[1]),
        "covered_entries": min(covered, log_size),
        "covered_fraction": 1.0 if log_size == 0 else min(covered, log_size) / log_size,
        "uncovered_tail": max(0, log_size - covered),
        "longest_uncovered": longest,
    }


def _iso(stamp: int) -> str:
    try:
        return datetime.fromtimestamp(stamp, UTC).isoformat()
    except (OverflowError, ValueError, OSError):  # a cosignature dated past year 9999
        return f"{stamp} s after 1970 (out of range)"
