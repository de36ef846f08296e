"""The auditor's side: independent verification of a store against its log and revealed keys.

:func:`audit_verify` runs six checks, each PASS or FAIL with findings that carry their evidence
(the log entry index, the recording id, the call reference):

- ``log``: :func:`sampledrec.logverify.verify_log` (tree, signatures, checkpoints, an exported
  checkpoint when given); any finding fails the check;
- ``keys``: every revealed key matches its commitment and the commitment the log recorded;
- ``decisions``: every decision of a revealed epoch is recomputed (the draw with
  :func:`~sampledrec.draw.draw_many`, the threshold from the policy version logged before it, the
  reason, the per-agent caps replayed in log order);
- ``recordings``: the catalog against the log (a positive, durable decision per recording, no
  recording of an objecting caller, nothing readable or kept past its expiry);
- ``cdr``: with the carrier's call records, completeness both ways;
- ``statistics``: declared vs realised rates per rule and per (rule, agent), exact
  Clopper-Pearson intervals and two-sided exact binomial tests with Holm's correction. A group
  fails when its Holm-adjusted p-value is below :data:`STAT_ALPHA` (0.001): a strict threshold,
  so that a correct store fails by chance about once in a thousand audits at most.
"""

from __future__ import annotations

import csv
import hmac
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from .clock import SYSTEM_CLOCK
from .errors import InvalidArgument, KeyDestroyed, SampledrecError
from .logformat import (
    REASON_CODES,
    T_DECISION,
    T_ERASURE,
    T_EXPIRED,
    T_KEY_COMMIT,
    T_POLICY,
    T_RECORDING_OPENED,
    Entry,
    from_micros,
    to_micros,
)

__all__ = [
    "CHECKS",
    "STAT_ALPHA",
    "AuditFinding",
    "AuditReport",
    "GroupStats",
    "audit_verify",
    "binom_cdf",
    "binom_sf",
    "binom_test",
    "clopper_pearson",
    "holm",
]

CHECKS: Final = ("log", "keys", "decisions", "recordings", "cdr", "statistics")
STAT_ALPHA: Final = 0.001
MIN_GROUP: Final = 20
_SAMPLED, _NOT_SAMPLED, _OBJECTION, _CAP = range(4)
_TWO56: Final = 2**56


@dataclass
class AuditFinding:
    check: str
    message: str
    index: int | None = None
    recording_id: str | None = None
    call_ref: str | None = None
    epoch_id: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"check": self.check, "message": self.message}
        for k in ("index", "recording_id", "call_ref", "epoch_id"):
            v = getattr(self, k)
            if v is not None:
                doc[k] = v
        if self.evidence:
            doc["evidence"] = self.evidence
        return doc


@dataclass
class GroupStats:
    rule: str
    agent: str | None
    rate: float
    eligible: int
    selected: int
    low: float
    high: float
    p_value: float
    p_holm: float = 1.0

    @property
    def realised(self) -> float:
        return self.selected / self.eligible if self.eligible else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "agent": self.agent,
            "declared_rate": self.rate,
            "eligible": self.eligible,
            "selected": self.selected,
            "realised_rate": self.realised,
            "ci95": [self.low, self.high],
            "p_value": self.p_value,
            "p_holm": self.p_holm,
            "verdict": "FAIL" if self.p_holm < STAT_ALPHA else "PASS",
        }


@dataclass
class AuditReport:
    store: str
    at: datetime
    simulated: bool = False
    findings: list[AuditFinding] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    groups: list[GroupStats] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def failed(self, check: str) -> bool:
        return any(f.check == check for f in self.findings)

    def status(self, check: str) -> str:
        if self.failed(check):
            return "FAIL"
        return "PASS" if check in self.ran else "SKIPPED"

    def add(self, check: str, message: str, **kw: Any) -> None:
        self.findings.append(AuditFinding(check, message, **kw))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": "PASS" if self.ok else "FAIL",
            "store": self.store,
            "at": self.at.isoformat(),
            "simulated": self.simulated,
            "checks": {c: self.status(c) for c in CHECKS},
            "counts": dict(self.counts),
            "statistics": {"alpha_holm": STAT_ALPHA, "groups": [g.to_json() for g in self.groups]},
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
        }

    def to_text(self) -> str:
        lines = [f"audit of {self.store} at {self.at.isoformat()}"]
        if self.simulated:
            lines[0] += " [SIMULATED store]"
        for c in CHECKS:
            lines.append(f"  {c:<12} {self.status(c)}")
        for k, v in sorted(self.counts.items()):
            lines.append(f"  {k}: {v:,}")
        for f in self.findings:
            where = ", ".join(
                x
                for x in (
                    None if f.index is None else f"entry {f.index}",
                    None if f.recording_id is None else f"recording {f.recording_id}",
                    None if f.call_ref is None else f"call {f.call_ref}",
                    None if f.epoch_id is None else f"epoch {f.epoch_id}",
                )
                if x
            )
            lines.append(f"FAIL {f.check}: {f.message}" + (f" ({where})" if where else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append("AUDIT PASSED" if self.ok else "AUDIT FAILED")
        return "\n".join(lines)


# -- exact binomial statistics -------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1_000_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), exactly (to double precision)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return _betainc(n - k, k + 1, 1.0 - p)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X > k), computed directly (no cancellation in the far tail)."""
    if k < 0:
        return 1.0
    if k >= n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return _betainc(k + 1, n - k, p)


def _log_pmf(i: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == n else -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )


def binom_test(k: int, n: int, p: float) -> float:
    """Two-sided exact binomial test: the probability of outcomes no more likely than ``k``."""
    if n == 0:
        return 1.0
    if p <= 0.0:
        return 1.0 if k == 0 else 0.0
    if p >= 1.0:
        return 1.0 if k == n else 0.0
    lk = _log_pmf(k, n, p) + 1e-7  # relative tolerance, as in the usual implementations
    mode = min(n, math.floor((n + 1) * p))
    if k == mode:
        return 1.0
    if k < mode:
        # smallest j in (mode, n] with pmf(j) <= pmf(k); pmf decreases there
        lo, hi = mode, n + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _log_pmf(mid, n, p) <= lk:
                hi = mid
            else:
                lo = mid
        total = binom_cdf(k, n, p) + (binom_sf(hi - 1, n, p) if hi <= n else 0.0)
    else:
        # largest j in [0, mode) with pmf(j) <= pmf(k); pmf increases there
        lo, hi = -1, mode
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _log_pmf(mid, n, p) <= lk:
                lo = mid
            else:
                hi = mid
        total = (binom_cdf(lo, n, p) if lo >= 0 else 0.0) + binom_sf(k - 1, n, p)
    return min(1.0, total)


def _bisect(f: Callable[[float], float], target: float, increasing: bool) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) confidence interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else _bisect(lambda p: binom_sf(k - 1, n, p), alpha / 2, True)
    high = 1.0 if k == n else _bisect(lambda p: binom_cdf(k, n, p), alpha / 2, False)
    return low, high


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


# -- the audit -----------------------------------------------------------------------------------


def _ref_text(ref: str | bytes) -> str:
    return ref if isinstance(ref, str) else "hex:" + ref.hex()


@dataclass(slots=True)
class _Dec:
    index: int
    time_us: int
    epoch: str
    version: bytes
    rule: str
    threshold: int
    draw: int | None
    reason: int
    ref: str | bytes | None
    agent: str | None


def _entries(log_path: Path, keyring: Any) -> Iterator[Entry | list[_Dec]]:
    """:func:`sampledrec.log.iter_entries` with the sealing keys and their check values looked
    up once per key id instead of once per entry, in log order; decision entries come already
    read (column-wise, per batch: :func:`_fast_decisions`) in runs, as lists of :class:`_Dec`."""
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from .log import (
        BATCH_HEADER,
        BATCH_MAGIC,
        SEG_HEADER,
        LogCorrupt,
        _read_trailer,
        _split_records,
    )
    from .logformat import decode_entry, key_check_value

    keys: dict[str, tuple[bytes, bytes] | None] = {}

    def key_for(kid: str) -> tuple[bytes, bytes] | None:
        if kid not in keys:
            try:
                key = keyring.sealing_key(kid)
            except SampledrecError:
                key = None
            keys[kid] = None if key is None else (key, key_check_value(key))
        return keys[kid]

    def unseal(kid: str, kcv: bytes, iv: bytes, ciphertext: bytes) -> bytes | None:
        got = key_for(kid)
        if got is None or not hmac.compare_digest(got[1], kcv):
            return None
        dec = Cipher(algorithms.AES(got[0]), modes.CTR(iv)).decryptor()
        return dec.update(ciphertext)

    for seg in sorted(log_path.glob("seg-*.log")):
        data = seg.read_bytes()
        pos = SEG_HEADER.size
        while pos + BATCH_HEADER.size <= len(data):
            magic, bfirst, _count, plen = BATCH_HEADER.unpack_from(data, pos)
            start = pos + BATCH_HEADER.size
            trailer = _read_trailer(data, start + plen)
            if magic != BATCH_MAGIC or trailer is None:
                raise LogCorrupt(f"{seg.name}: damaged batch at offset {pos}")
            payload = data[start : start + plen]
            records, _ = _split_records(payload)
            at, decs = _fast_decisions(payload, records, bfirst, key_for)
            done = 0  # the records before this one are out
            if len(decs):
                cuts = (np.flatnonzero(np.diff(at) != 1) + 1).tolist()
                for s, e in zip([0, *cuts], [*cuts, len(decs)], strict=True):
                    for i in range(done, int(at[s])):
                        yield decode_entry(bfirst + i, records[i], unseal)
                    yield decs[s:e]  # a run of consecutive decisions
                    done = int(at[e - 1]) + 1
            for i in range(done, len(records)):
                yield decode_entry(bfirst + i, records[i], unseal)
            pos = trailer[1]


# -- column-wise reading of decision entries -----------------------------------------------------

_F_SEQ: Final = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0xF0)
_F_OPTIONAL: Final = frozenset({0x05})


def _gather_rows(buf: Any, start: Any, n: Any) -> Any:
    """A ``(rows, max(n))`` uint8 array of ``buf[start:start+n]`` per row, zero-padded."""
    import numpy as np

    width = int(n.max()) if n.size else 0
    cols = np.arange(width, dtype=np.int64)
    idx = start[:, None] + cols[None, :]
    inside = cols[None, :] < n[:, None]
    out = buf[np.where(inside, idx, 0)]
    out[~inside] = 0
    return out


def _distinct(buf: Any, start: Any, n: Any) -> tuple[Any, list[bytes]]:
    """Codes and distinct values of the byte strings ``buf[start:start+n]`` (few distinct)."""
    import numpy as np

    rows = _gather_rows(buf, start, n)
    lens = n.astype(">u2").view(np.uint8).reshape(-1, 2)
    keyed = np.ascontiguousarray(np.concatenate([lens, rows], axis=1))
    if bool((keyed == keyed[0]).all()):  # the usual case: one value for the whole batch
        return np.zeros(keyed.shape[0], dtype=np.intp), [bytes(keyed[0, 2 : 2 + int(n[0])])]
    void = keyed.view(np.dtype((np.void, keyed.shape[1]))).ravel()
    uniq, codes = np.unique(void, return_inverse=True)
    values = []
    for u in uniq:
        b = bytes(u)
        values.append(b[2 : 2 + int.from_bytes(b[:2], "big")])
    return codes.ravel(), values


def _uints(buf: Any, start: Any, n: Any) -> Any:
    """Big-endian unsigned integers of at most 8 bytes, as uint64."""
    import numpy as np

    out = np.zeros(start.shape[0], dtype=np.uint64)
    for k in range(8):
        have = k < n
        byte = buf[np.where(have, start + k, 0)].astype(np.uint64)
        out = np.where(have, (out << np.uint64(8)) | byte, out)
    return out


def _ctr_keystream(key: bytes, ivs: Any, blocks: int) -> Any:
    """AES-CTR keystreams, ``blocks`` blocks from each 16-byte IV (a 128-bit big-endian counter),
    as a ``(rows, 16 * blocks)`` uint8 array; one AES-ECB call for all of them."""
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    m = ivs.shape[0]
    hi = np.ascontiguousarray(ivs[:, :8]).view(">u8").ravel().astype(np.uint64)
    lo = np.ascontiguousarray(ivs[:, 8:]).view(">u8").ravel().astype(np.uint64)
    counters = np.empty((m, blocks, 2), dtype=">u8")
    for j in range(blocks):
        lo_j = lo + np.uint64(j)
        counters[:, j, 0] = hi + (lo_j < lo).astype(np.uint64)
        counters[:, j, 1] = lo_j
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # CTR by hand: ECB over the counters
    stream = enc.update(counters.tobytes()) + enc.finalize()
    return np.frombuffer(stream, dtype=np.uint8).reshape(m, blocks * 16)


def _fast_decisions(
    payload: bytes,
    records: list[bytes],
    first: int,
    key_for: Callable[[str], tuple[bytes, bytes] | None],
) -> tuple[Any, list[_Dec]]:
    """The batch's decision entries read column-wise: ``(positions, decisions)``, the positions
    in the batch (ascending) of the decisions read. The entries left out (not decisions, or
    decisions of an unusual shape) are decoded one by one, with exactly the same results."""
    import numpy as np

    count = len(records)
    if not count:
        return np.empty(0, dtype=np.int64), []
    lens = np.fromiter(map(len, records), dtype=np.int64, count=count)
    offs = np.cumsum(lens + 4) - lens
    buf = np.concatenate([np.frombuffer(payload, dtype=np.uint8), np.zeros(16, dtype=np.uint8)])
    okh = lens >= 10
    safe = np.where(okh, offs, 0)
    is_dec = okh & (buf[safe] == 1) & (buf[safe + 1] == T_DECISION)
    rows = np.flatnonzero(is_dec)
    if not rows.size:
        return rows, []
    o = offs[rows]
    end = o + lens[rows]
    good = np.ones(rows.size, dtype=bool)
    pos = o + 10
    fpos: dict[int, Any] = {}
    flen: dict[int, Any] = {}
    for tag in _F_SEQ:
        inb = pos + 2 <= end
        p = np.where(inb, pos, 0)
        present = inb & (buf[p] == tag)
        n = buf[p + 1].astype(np.int64)
        if tag in _F_OPTIONAL:
            good &= ~present | ((n != 0xFF) & (pos + 2 + n <= end))
        else:
            good &= present & (n != 0xFF) & (pos + 2 + n <= end)
        fpos[tag] = np.where(present & good, pos + 2, 0)
        flen[tag] = np.where(present & good, n, -1)
        pos = np.where(present & good, pos + 2 + n, pos)
    good &= pos == end
    for tag in (0x04, 0x05, 0x06):
        good &= flen[tag] <= 8
    # the sealed field: kid_len | kid | kcv (4) | iv (16) | ciphertext
    sp, sn = fpos[0xF0], flen[0xF0]
    klen = np.where(good & (sn >= 1), buf[sp], 0).astype(np.int64)
    good &= (sn >= 1) & (sn >= 1 + klen + 20)
    rows, o, sp, sn, klen = rows[good], o[good], sp[good], sn[good], klen[good]
    for tag in _F_SEQ:
        fpos[tag], flen[tag] = fpos[tag][good], flen[tag][good]
    if not rows.size:
        return rows, []
    bad = np.zeros(rows.size, dtype=bool)

    times = _gather_rows(buf, o + 2, np.full(rows.size, 8)).view(">u8").ravel()
    text_cols: list[Any] = []
    for tag in (0x01, 0x03):
        codes, values = _distinct(buf, fpos[tag], flen[tag])
        names: list[str] = []
        for u, v in enumerate(values):
            try:
                names.append(v.decode("utf-8"))
            except UnicodeDecodeError:  # decode_entry raises: let it
                names.append("")
                bad |= codes == u
        text_cols.append(_objects(names)[codes])
    epochs, rules = text_cols
    vcodes, version_values = _distinct(buf, fpos[0x02], flen[0x02])
    versions = _objects(version_values)[vcodes]
    thresholds = _uints(buf, fpos[0x04], flen[0x04])
    draws = _uints(buf, fpos[0x05], flen[0x05]).tolist()
    has_draw = flen[0x05] >= 0
    reasons = _uints(buf, fpos[0x06], flen[0x06])

    refs = np.full(rows.size, None, dtype=object)
    agents = np.full(rows.size, None, dtype=object)
    kcodes, kids = _distinct(buf, sp + 1, klen)
    ct_start = sp + 21 + klen
    ct_len = sn - 21 - klen
    for code, kid_b in enumerate(kids):
        sel = np.flatnonzero(kcodes == code)
        got = key_for(kid_b.decode("ascii", "replace"))
        if got is None:
            continue  # unreadable: call_ref and agent stay None
        key, kcv = got
        kcv_rows = _gather_rows(buf, sp[sel] + 1 + klen[sel], np.full(sel.size, 4))
        sel = sel[np.all(kcv_rows == np.frombuffer(kcv, dtype=np.uint8), axis=1)]
        if not sel.size:
            continue
        clen = ct_len[sel]
        blocks = int((clen.max() + 15) // 16)
        if blocks == 0:
            continue  # empty plaintext: no personal fields
        ivs = _gather_rows(buf, sp[sel] + 5 + klen[sel], np.full(sel.size, 16))
        ct = _gather_rows(buf, ct_start[sel], clen)
        width = blocks * 16
        plain = np.zeros((sel.size, width + 2), dtype=np.uint8)
        plain[:, : ct.shape[1]] = ct
        plain[:, :width] ^= _ctr_keystream(key, ivs, blocks)
        plain[np.arange(width + 2)[None, :] >= clen[:, None]] = 0
        rix = np.arange(sel.size)
        ppos = np.zeros(sel.size, dtype=np.int64)
        pgood = np.ones(sel.size, dtype=bool)
        pp: dict[int, Any] = {}
        pl: dict[int, Any] = {}
        for tag in (0x20, 0x21, 0x22):
            inb = ppos + 2 <= clen
            p = np.where(inb, ppos, 0)
            present = inb & (plain[rix, p] == tag)
            n = plain[rix, p + 1].astype(np.int64)
            pgood &= ~present | ((n != 0xFF) & (ppos + 2 + n <= clen))
            pp[tag] = np.where(present & pgood, ppos + 2, 0)
            pl[tag] = np.where(present & pgood, n, -1)
            ppos = np.where(present & pgood, ppos + 2 + n, ppos)
        pgood &= (ppos == clen) & (pl[0x20] != 0)
        kinds = plain[rix, pp[0x20]]
        has_ref = pl[0x20] > 0
        has_agent = pl[0x21] >= 0
        ref_raw = _bytes_at(plain, pp[0x20] + 1, pl[0x20] - 1)
        agent_raw = _bytes_at(plain, pp[0x21], pl[0x21])
        try:
            ref_sel = [
                (v.decode("utf-8") if k == 1 else v) if h else None
                for v, k, h in zip(ref_raw, kinds.tolist(), has_ref.tolist(), strict=True)
            ]
            agent_sel = [
                v.decode("utf-8") if h else None
                for v, h in zip(agent_raw, has_agent.tolist(), strict=True)
            ]
        except UnicodeDecodeError:  # rare: those rows are decoded one by one
            ref_sel, agent_sel = [], []
            for v, k, h, av, ah in zip(
                ref_raw,
                kinds.tolist(),
                has_ref.tolist(),
                agent_raw,
                has_agent.tolist(),
                strict=True,
            ):
                ref_v: str | bytes | None = None
                agent_v: str | None = None
                try:
                    ref_v = (v.decode("utf-8") if k == 1 else v) if h else None
                    agent_v = av.decode("utf-8") if ah else None
                except UnicodeDecodeError:
                    bad[sel[len(ref_sel)]] = True
                ref_sel.append(ref_v)
                agent_sel.append(agent_v)
        bad[sel[~pgood]] = True
        refs[sel] = _objects(ref_sel)
        agents[sel] = _objects(agent_sel)

    draws_obj = _objects(draws)
    draws_obj[~has_draw] = None
    cols = [rows, times, epochs, versions, rules, thresholds, draws_obj, reasons, refs, agents]
    if bad.any():
        keep = np.flatnonzero(~bad)
        cols = [c[keep] for c in cols]
    decs = list(map(_Dec, (cols[0] + first).tolist(), *(c.tolist() for c in cols[1:])))
    return cols[0], decs


def _objects(values: list[Any]) -> Any:
    """A 1-D object array of ``values`` (as they are: no nesting into a 2-D array)."""
    import numpy as np

    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _bytes_at(mat: Any, start: Any, n: Any) -> list[bytes]:
    """Per row ``j``, the bytes ``mat[j, start[j] : start[j] + n[j]]`` (empty where ``n <= 0``)."""
    import numpy as np

    m = mat.shape[0]
    width = int(n.max()) if m else 0
    if width <= 0:
        return [b""] * m
    cols = np.arange(width, dtype=np.int64)
    inside = cols[None, :] < n[:, None]
    got = np.take_along_axis(mat, np.where(inside, start[:, None] + cols[None, :], 0), axis=1)
    got[~inside] = 0
    vals: list[bytes] = np.ascontiguousarray(got).view(f"S{width}").ravel().tolist()
    # numpy drops trailing NUL bytes: take those rows one by one
    last = got[np.arange(m), np.maximum(n - 1, 0)]
    for j in np.flatnonzero((n > 0) & (last == 0)).tolist():
        vals[j] = got[j, : int(n[j])].tobytes()
    return vals


def _read_cdr(path: Path) -> list[tuple[str, str]]:
    """``(call_ref, start_time)`` rows of a carrier's call records (CSV or Parquet)."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise InvalidArgument(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow); "
                "or give the call records as CSV"
            ) from None
        table = pq.read_table(path)
        names = set(table.column_names)
        if not {"call_ref", "start_time"} <= names:
            raise InvalidArgument(f"{path}: the columns call_ref and start_time are required")
        refs = [str(v) for v in table.column("call_ref").to_pylist()]
        starts = [str(v) for v in table.column("start_time").to_pylist()]
        return list(zip(refs, starts, strict=True))
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or ())
        if not {"call_ref", "start_time"} <= cols:
            raise InvalidArgument(
                f"{path}: a CSV with a header naming at least call_ref and start_time is needed"
            )
        return [(row["call_ref"], row["start_time"]) for row in reader if row.get("call_ref")]


def audit_verify(
    store_path: str | Path,
    revealed_keys_path: str | Path,
    *,
    checkpoint: str | Path | None = None,
    cdr: str | Path | None = None,
    keyring: Any | None = None,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> AuditReport:
    """Audit a store; raises :class:`StoreError` / :class:`InvalidArgument` when it cannot run.

    ``keyring`` opens the log's sealed call references (default: the store's own keyring);
    ``now`` is the audit time for expiry checks (default: the real clock).
    """
    from .log import LogCorrupt
    from .logverify import verify_log
    from .store import Store, read_revealed

    store = Store.open(store_path)
    at = now or SYSTEM_CLOCK.now()
    rep = AuditReport(store=str(store.path), at=at, simulated=store.simulated)
    try:
        revealed = read_revealed(revealed_keys_path)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"{revealed_keys_path}: not a revealed-keys file ({exc})") from None
    if cdr is not None:
        cdr_rows = _read_cdr(Path(cdr))

    # 1. log ------------------------------------------------------------------------------------
    logrep = verify_log(
        store.path,
        checkpoint_file=Path(checkpoint) if checkpoint is not None else None,
        store_id=store.store_id,
        public_key=store.public_key,
        progress=progress,
    )
    rep.ran.add("log")
    rep.simulated = rep.simulated or logrep.simulated
    rep.counts["log_entries"] = logrep.size
    for f in logrep.findings:
        rep.add(
            "log",
            f"{f.check}: {f.message}",
            index=f.index,
            evidence={"where": f.where} if f.where else {},
        )

    # Read the log once.
    kr = keyring if keyring is not None else store.keyring
    commits: dict[str, tuple[int, bytes]] = {}
    policies: dict[bytes, Any] = {}
    decisions: list[_Dec] = []
    opened: dict[str, tuple[int, str | bytes | None]] = {}
    tombstones: dict[str, int] = {}
    from .policy import Policy

    try:
        for e in _entries(store.path / "log", kr):
            if isinstance(e, list):
                decisions.extend(e)
                continue
            fl = e.fields
            if e.type == T_DECISION:
                ref = fl.get("call_ref")
                decisions.append(
                    _Dec(
                        e.index,
                        e.time_us,
                        str(fl.get("epoch_id", "")),
                        bytes(fl.get("policy_version", b"")),
                        str(fl.get("rule", "")),
                        int(fl.get("threshold", -1)),
                        fl.get("draw"),
                        int(fl.get("reason", -1)),
                        ref if isinstance(ref, str | bytes) and not e.sealed else None,
                        fl.get("agent"),
                    )
                )
            elif e.type == T_KEY_COMMIT:
                commits.setdefault(str(fl.get("epoch_id")), (e.index, bytes(fl["commitment"])))
            elif e.type == T_POLICY:
                version = bytes(fl.get("version", b""))
                try:
                    pol = Policy.from_dict(json.loads(bytes(fl.get("canonical", b""))))
                except (SampledrecError, ValueError) as exc:
                    rep.add("decisions", f"a logged policy cannot be read: {exc}", index=e.index)
                    continue
                if pol.version != version.hex():
                    rep.add(
                        "decisions",
                        "a logged policy does not rebuild to its version id",
                        index=e.index,
                        evidence={"logged": version.hex(), "rebuilt": pol.version},
                    )
                    continue
                policies.setdefault(version, pol)
            elif e.type == T_RECORDING_OPENED:
                ref = fl.get("call_ref")
                opened[str(fl.get("recording_id"))] = (
                    e.index,
                    ref if isinstance(ref, str | bytes) else None,
                )
            elif e.type in (T_EXPIRED, T_ERASURE):
                if e.type == T_ERASURE and fl.get("outcome") not in (None, "erased"):
                    continue
                tombstones.setdefault(str(fl.get("recording_id")), e.index)
    except (LogCorrupt, ValueError) as exc:
        rep.add("log", f"the log cannot be decoded: {exc}")
        rep.notes.append("the log could not be read to the end: later checks are incomplete")

    # 2. keys -----------------------------------------------------------------------------------
    rep.ran.add("keys")
    keys: dict[str, bytes] = {}
    for k in revealed:
        logged = commits.get(k.epoch_id)
        if not k.matches_commitment():
            rep.add(
                "keys",
                "the revealed key does not match its commitment",
                epoch_id=k.epoch_id,
                evidence={"commitment": k.commitment.hex()},
            )
        elif logged is None:
            rep.add("keys", "no commitment for this epoch in the log", epoch_id=k.epoch_id)
        elif logged[1] != k.commitment:
            rep.add(
                "keys",
                "the revealed key's commitment is not the one the log recorded",
                index=logged[0],
                epoch_id=k.epoch_id,
                evidence={"logged": logged[1].hex(), "revealed": k.commitment.hex()},
            )
        else:
            keys[k.epoch_id] = k.key
    rep.counts["keys_revealed"] = len(revealed)
    rep.counts["keys_verified"] = len(keys)

    # 3. decisions ------------------------------------------------------------------------------
    rep.ran.add("decisions")
    _check_decisions(rep, decisions, keys, policies)

    # 4. recordings -----------------------------------------------------------------------------
    rep.ran.add("recordings")
    _check_recordings(rep, store, decisions, opened, tombstones, at)

    # 5. cdr ------------------------------------------------------------------------------------
    if cdr is not None:
        rep.ran.add("cdr")
        carrier = {r for r, _ in cdr_rows}
        decided: dict[str, int] = {}
        for d in decisions:
            if d.ref is not None:
                decided.setdefault(_ref_text(d.ref), d.index)
        rep.counts["cdr_calls"] = len(carrier)
        for ref in sorted(carrier - decided.keys()):
            rep.add("cdr", "a carrier call has no decision in the log", call_ref=ref)
        for ref in sorted(decided.keys() - carrier):
            rep.add(
                "cdr",
                "a decision for a reference that is not a carrier call (a re-rolled or "
                "invented reference)",
                index=decided[ref],
                call_ref=ref,
            )
        unreadable = sum(1 for d in decisions if d.ref is None)
        if unreadable:
            rep.notes.append(
                f"{unreadable} decisions have erased call references and were not matched "
                "against the call records"
            )

    # 6. statistics -----------------------------------------------------------------------------
    rep.ran.add("statistics")
    _check_statistics(rep, decisions)
    if rep.simulated:
        rep.notes.append("this store is SIMULATED (made by 'sampledrec demo' or init --simulated)")
    return rep


def _unique(decisions: Iterable[_Dec]) -> list[_Dec]:
    """One decision per (epoch, call reference): retries of the same call count once."""
    seen: set[tuple[str, str | bytes]] = set()
    out = []
    for d in decisions:
        if d.ref is not None:
            key = (d.epoch, d.ref)
            if key in seen:
                continue
            seen.add(key)
        out.append(d)
    return out


# (logged reason, draw below the threshold) -> what is wrong with that decision.
_REASON_CONTRADICTIONS: Final = {
    (_SAMPLED, False): "logged as sampled but the draw is not below the threshold",
    (_NOT_SAMPLED, True): "logged as not sampled but the draw is below the threshold",
    (_CAP, False): "logged as cap reached but the draw is not below the threshold",
}


def _check_decisions(
    rep: AuditReport, decisions: list[_Dec], keys: dict[str, bytes], policies: dict[bytes, Any]
) -> None:
    from .draw import draw_many

    rep.counts["decisions"] = len(decisions)
    by_epoch: dict[str, list[_Dec]] = defaultdict(list)
    first_reason: dict[tuple[str, str | bytes], tuple[int, int]] = {}
    rules_seen: dict[tuple[bytes, str], tuple[bool, int]] = {}
    for d in decisions:
        if d.ref is not None:
            key = (d.epoch, d.ref)
            prev = first_reason.get(key)
            if prev is None:
                first_reason[key] = (d.index, d.reason)
            elif prev[1] != d.reason:
                rep.add(
                    "decisions",
                    f"the same call was decided twice in one epoch with different reasons "
                    f"(first at entry {prev[0]})",
                    index=d.index,
                    call_ref=_ref_text(d.ref),
                    epoch_id=d.epoch,
                )
        if d.reason == _OBJECTION:
            rep.counts["decisions_objection"] += 1
        elif d.reason == _CAP:
            rep.counts["decisions_cap_reached"] += 1
        if d.epoch not in keys:
            rep.counts["decisions_not_yet_verifiable"] += 1
        elif d.ref is None:
            rep.counts["decisions_not_recomputable"] += 1
        else:
            by_epoch[d.epoch].append(d)
        # Policy and threshold: checked for every decision (the rule is public).
        pol = policies.get(d.version)
        if pol is not None:
            rkey = (d.version, d.rule)
            known = rules_seen.get(rkey)
            if known is None:
                try:
                    known = rules_seen[rkey] = (True, pol.rule_named(d.rule).threshold)
                except KeyError:
                    known = rules_seen[rkey] = (False, 0)
            if known[0] and known[1] == d.threshold and 0 <= d.reason < len(REASON_CODES):
                continue  # the usual case: nothing to report
        if pol is None:
            rep.add(
                "decisions",
                "the decision names a policy version that was not logged",
                index=d.index,
                evidence={"policy_version": d.version.hex()},
            )
            continue
        try:
            rule = pol.rule_named(d.rule)
        except KeyError:
            rep.add(
                "decisions",
                f"rule {d.rule!r} is not in the policy version in force",
                index=d.index,
                evidence={"policy_version": d.version.hex()},
            )
            continue
        if rule.threshold != d.threshold:
            rep.add(
                "decisions",
                f"the threshold does not match rule {d.rule!r} (rate {rule.rate})",
                index=d.index,
                evidence={"logged": str(d.threshold), "expected": str(rule.threshold)},
            )
        if not 0 <= d.reason < len(REASON_CODES):
            rep.add("decisions", f"unknown reason code {d.reason}", index=d.index)

    recomputed = 0
    for epoch, group in by_epoch.items():
        draws = draw_many(keys[epoch], [d.ref for d in group if d.ref is not None])
        for d, r in zip(group, draws.tolist(), strict=True):
            recomputed += 1
            below = r < d.threshold
            if (d.draw is None or d.draw == r) and (
                below if d.reason in (_SAMPLED, _CAP) else not below or d.reason != _NOT_SAMPLED
            ):
                continue  # the usual case: nothing to report
            ev = {"draw": str(r), "threshold": str(d.threshold), "reason": _reason(d.reason)}
            ref = _ref_text(d.ref) if d.ref is not None else None
            if d.draw is not None and d.draw != r:
                ev["logged_draw"] = str(d.draw)
                rep.add(
                    "decisions",
                    "the logged draw is not the draw recomputed from the revealed key",
                    index=d.index,
                    call_ref=ref,
                    epoch_id=epoch,
                    evidence=ev,
                )
            wrong = _REASON_CONTRADICTIONS.get((d.reason, below))
            if wrong is not None:
                rep.add(
                    "decisions", wrong, index=d.index, call_ref=ref, epoch_id=epoch, evidence=ev
                )
    rep.counts["decisions_recomputed"] = recomputed

    # Caps, replayed in log order over unique calls.
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for d in _unique(decisions):
        if d.reason != _SAMPLED or d.agent is None:
            continue
        pol = policies.get(d.version)
        try:
            rule = pol.rule_named(d.rule) if pol is not None else None
        except KeyError:
            rule = None
        if rule is None or not rule.has_cap:
            continue
        when = from_micros(d.time_us)
        periods = []
        if rule.max_per_agent_per_day is not None:
            periods.append((f"D{when.date().isoformat()}", rule.max_per_agent_per_day))
        if rule.max_per_agent_per_week is not None:
            year, week, _ = when.isocalendar()
            periods.append((f"W{year}-{week:02d}", rule.max_per_agent_per_week))
        for period, limit in periods:
            k = (d.rule, d.agent, period)
            counts[k] += 1
            if counts[k] > limit:
                rep.add(
                    "decisions",
                    f"agent {d.agent!r} has {counts[k]} selected calls under rule {d.rule!r} "
                    f"in {period}, over the cap of {limit}",
                    index=d.index,
                    call_ref=_ref_text(d.ref) if d.ref is not None else None,
                    epoch_id=d.epoch,
                )


def _reason(code: int) -> str:
    return REASON_CODES[code] if 0 <= code < len(REASON_CODES) else f"#{code}"


def _check_recordings(
    rep: AuditReport,
    store: Any,
    decisions: list[_Dec],
    opened: dict[str, tuple[int, str | bytes | None]],
    tombstones: dict[str, int],
    at: datetime,
) -> None:
    from .catalog import SqliteCatalog
    from .keystore import LocalKeyStore
    from .vault import data_key_aad

    path = store.path / "catalog.sqlite"
    if not path.exists():
        rep.counts["recordings"] = 0
        return
    catalog = SqliteCatalog(path)
    try:
        rows = catalog.find()
        holds = {r.recording_id: catalog.holds_of(r.recording_id) for r in rows}
    finally:
        catalog.close()
    keystore = LocalKeyStore(store.keys_path)
    by_ref: dict[str, list[_Dec]] = defaultdict(list)
    for d in decisions:
        if d.ref is not None:
            by_ref[_ref_text(d.ref)].append(d)
    objecting = {ref for ref, ds in by_ref.items() if any(d.reason == _OBJECTION for d in ds)}
    now_us = to_micros(at)
    rep.counts["recordings"] = len(rows)

    def readable(row: Any) -> bool:
        aad = data_key_aad(row.recording_id, row.expires_at_sealed)
        wrapped = [(row.bucket, row.wrapped_key)] if row.wrapped_key is not None else []
        from .vault import hold_bucket

        wrapped += [(hold_bucket(h.hold_id), w) for h, w in holds[row.recording_id] if w]
        for bucket, w in wrapped:
            try:
                keystore.unwrap(bucket, w, aad=aad)
                return True
            except (KeyDestroyed, SampledrecError, ValueError):
                continue
        return False

    for row in rows:
        rid = row.recording_id
        if row.status == "aborted":
            continue
        op = opened.get(rid)
        if op is None:
            rep.add(
                "recordings",
                "the recording has no recording_opened entry in the log",
                recording_id=rid,
                call_ref=row.call_ref,
            )
        ref = row.call_ref
        if ref is None and op is not None and op[1] is not None:
            ref = _ref_text(op[1])
        if (
            op is not None
            and op[1] is not None
            and row.call_ref is not None
            and _ref_text(op[1]) != row.call_ref
        ):
            rep.add(
                "recordings",
                "the catalog's call reference differs from the logged one",
                index=op[0],
                recording_id=rid,
                call_ref=row.call_ref,
            )
        if ref is None:
            rep.counts["recordings_ref_erased"] += 1
        else:
            limit = op[0] if op is not None else None
            positive = [
                d
                for d in by_ref.get(ref, [])
                if d.reason == _SAMPLED and (limit is None or d.index < limit)
            ]
            if not positive:
                seen = by_ref.get(ref, [])
                rep.add(
                    "recordings",
                    "no positive decision earlier in the log for the recorded call",
                    index=op[0] if op is not None else None,
                    recording_id=rid,
                    call_ref=ref,
                    evidence={"decisions": {str(d.index): _reason(d.reason) for d in seen}},
                )
            if ref in objecting:
                rep.add(
                    "recordings",
                    "a recording of a caller who objected",
                    recording_id=rid,
                    call_ref=ref,
                )
        # Expiry.
        if row.expires_at <= now_us:
            file_there = (store.path / row.file).exists()
            can_read = readable(row)
            ev = {
                "expires_at": from_micros(row.expires_at).isoformat(),
                "status": row.status,
                "file_present": file_there,
                "key_unwraps": can_read,
            }
            if row.status not in ("expired", "erased"):
                rep.add(
                    "recordings",
                    "kept past its expiry (not expired in the catalog)",
                    recording_id=rid,
                    evidence=ev,
                )
            if file_there and can_read:
                rep.add(
                    "recordings",
                    "still readable after its expiry (file present and key unwraps)",
                    recording_id=rid,
                    evidence=ev,
                )
            if row.status in ("expired", "erased") and rid not in tombstones:
                rep.add(
                    "recordings",
                    f"{row.status} without a tombstone in the log",
                    recording_id=rid,
                    evidence=ev,
                )
            rep.counts["recordings_past_expiry"] += 1
        elif row.status in ("expired", "erased"):
            if rid not in tombstones:
                rep.add(
                    "recordings",
                    f"{row.status} without a tombstone in the log",
                    recording_id=rid,
                )
            elif readable(row) and (store.path / row.file).exists():
                rep.add("recordings", f"{row.status} but still readable", recording_id=rid)


def _check_statistics(rep: AuditReport, decisions: list[_Dec]) -> None:
    groups: dict[tuple[str, int, str | None], list[int]] = defaultdict(lambda: [0, 0])
    for d in _unique(decisions):
        if d.reason in (_OBJECTION,) or not 0 <= d.reason < len(REASON_CODES):
            continue
        hit = 1 if d.reason in (_SAMPLED, _CAP) else 0
        for agent in (None, d.agent) if d.agent is not None else (None,):
            tally = groups[(d.rule, d.threshold, agent)]
            tally[0] += 1
            tally[1] += hit
    stats: list[GroupStats] = []
    for (rule, thr, agent), (n, k) in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
    ):
        if n < MIN_GROUP:
            rep.counts["statistics_groups_skipped"] += 1
            continue
        p = thr / _TWO56
        low, high = clopper_pearson(k, n)
        stats.append(GroupStats(rule, agent, p, n, k, low, high, binom_test(k, n, p)))
    for g, adj in zip(stats, holm([g.p_value for g in stats]), strict=True):
        g.p_holm = adj
        if adj < STAT_ALPHA:
            rep.add(
                "statistics",
                f"rule {g.rule!r}"
                + (f" agent {g.agent!r}" if g.agent else "")
                + f": realised rate {g.realised:.4f} vs declared {g.rate:.4f} "
                f"(Holm-adjusted p = {adj:.3g} < {STAT_ALPHA})",
                evidence=g.to_json(),
            )
    rep.groups = stats
