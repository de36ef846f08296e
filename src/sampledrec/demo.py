"""``sampledrec demo``: a simulated call-centre day through the whole pipeline as it stands.

The demo creates a store marked *simulated*, writes a policy with several rules, replays a day of
calls (queues, agents, directions, a few objecting callers) through the sampler, shows per rule
the calls, the recordings selected and the number expected from the declared rates, records and
exports a few calls, sweeps a year later, and ends as an auditor would: it reveals the day's key
and runs ``audit verify`` (the signed decision log, the key against its commitment, every
decision recomputed with the vectorised draw, the recordings against their expiry), then writes
the DPO's HTML report.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .audit.report import write_report
from .audit.verify import CHECKS, audit_verify
from .clock import SYSTEM_CLOCK, Clock, FixedClock
from .errors import RecordingExpired, SampledrecError
from .retention.sweep import Retention
from .sampling.sampler import Decision
from .store import Store
from .vault.access import Principal
from .vault.audio import AudioFormat, frames, synthetic_speech
from .vault.recorder import Vault

__all__ = ["DEMO_POLICY", "DemoResult", "run_demo"]

DEMO_POLICY = """\
# Demo policy: a small call centre with four queues.
rate_ceiling = "0.25"
agent_attribute = "agent"

# Every attribute the call centre's switch sends; any other is refused (a typo, say).
[attributes]
names = ["queue", "direction", "campaign", "agent_group"]

[[rules]]
name = "sales-outbound"
match = { queue = "sales", direction = "outbound" }
rate = "0.05"
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = 3

[[rules]]
name = "support"
match = { queue = "support" }
rate = "0.03"
purpose = "training"
retention = "3 months"

[[rules]]
name = "complaints"
match = { queue = "complaints" }
rate = "0.15"
purpose = "quality"
retention = "6 months"

[[rules]]
name = "disputes"
match = { queue = "billing", campaign = "dispute-callback" }
rate = "0.30"
purpose = "proof"
retention = "6 months"
justification = "Disputes are settled by phone with no written confirmation: the call is the proof"

[default]
rate = "0.02"
purpose = "quality"
retention = "6 months"
"""

_QUEUES = [("sales", 0.45), ("support", 0.30), ("billing", 0.15), ("complaints", 0.10)]
_OBJECTORS = ["+33 6 12 34 56 78", "+33 7 98 76 54 32", "+44 20 7946 0018"]


@dataclass
class DemoResult:
    store: Path
    day: str
    calls: int
    rules: list[dict[str, Any]] = field(default_factory=list)
    selected: int = 0
    objections: int = 0
    capped: int = 0
    recomputed: int = 0
    mismatches: int = 0
    key_matches_commitment: bool = False
    log_entries: int = 0
    log_ok: bool = False
    recordings: list[str] = field(default_factory=list)
    exported: Path | None = None
    log_findings: list[str] = field(default_factory=list)
    swept: int = 0
    audit_ok: bool = False
    audit_checks: dict[str, str] = field(default_factory=dict)
    report: Path | None = None
    buckets_destroyed: int = 0
    readable_after_a_year: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "store": str(self.store),
            "simulated": True,
            "day": self.day,
            "calls": self.calls,
            "selected": self.selected,
            "objections": self.objections,
            "capped": self.capped,
            "rules": self.rules,
            "audit": {
                "key_matches_commitment": self.key_matches_commitment,
                "recomputed": self.recomputed,
                "mismatches": self.mismatches,
            },
            "log": {"entries": self.log_entries, "ok": self.log_ok, "findings": self.log_findings},
            "recordings": len(self.recordings),
            "exported": None if self.exported is None else str(self.exported),
            "audit_verify": {"ok": self.audit_ok, "checks": self.audit_checks},
            "report": None if self.report is None else str(self.report),
            "a_year_later": {
                "expired": self.swept,
                "buckets_destroyed": self.buckets_destroyed,
                "readable": self.readable_after_a_year,
            },
        }


def _make_calls(n: int, day: datetime, rng: np.random.Generator) -> list[dict[str, Any]]:
    seconds = np.sort(rng.uniform(8 * 3600, 20 * 3600, n))
    names = [q for q, _ in _QUEUES]
    weights = [w for _, w in _QUEUES]
    queues = rng.choice(names, size=n, p=weights)
    calls = []
    for i in range(n):
        queue = str(queues[i])
        direction = "outbound" if queue == "sales" and rng.random() < 0.7 else "inbound"
        agent = int(rng.integers(1, 31))
        attrs: dict[str, object] = {
            "queue": queue,
            "direction": direction,
            "agent": f"agent-{agent:02d}",
            "agent_group": f"team-{'abc'[agent % 3]}",
        }
        if queue == "billing" and rng.random() < 0.4:
            attrs["campaign"] = "dispute-callback"
        if rng.random() < 0.02:
            attrs["objection"] = True  # the caller said no when told about recording
        # Every call names its caller: while anyone objects, a call whose caller is unknown is
        # not recorded (it may be an objector's).
        caller = _OBJECTORS[i % 3] if rng.random() < 0.01 else _number(i)
        ref = f"{uuid.UUID(bytes=rng.bytes(16), version=4).hex}@pbx.demo.example"
        calls.append(
            {
                "at": day + timedelta(seconds=float(seconds[i])),
                "ref": ref,
                "attrs": attrs,
                "caller": caller,
            }
        )
    return calls


def _number(i: int) -> str:
    """The demo's ``i``-th caller who did not object (a French landline number)."""
    digits = f"{40_000_000 + i:08d}"
    return f"+33 1 {digits[:2]} {digits[2:4]} {digits[4:6]} {digits[6:]}"


def run_demo(
    store: str | Path | None = None,
    *,
    calls: int = 2000,
    seed: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    progress: Callable[[int], None] | None = None,
) -> DemoResult:
    """Run the demo in a new simulated store (a fresh temporary folder when ``store`` is None)."""
    if calls < 1:
        raise SampledrecError(f"calls={calls} must be at least 1")
    path = Path(store) if store is not None else Path(tempfile.mkdtemp(prefix="sampledrec-demo-"))
    rng = np.random.default_rng(seed)
    real_now = clock.now()
    day = (real_now - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        policy_file = Path(tmp) / "policy.toml"
        policy_file.write_text(DEMO_POLICY, encoding="utf-8")
        st = Store.init(path, policy=policy_file, simulated=True, clock=clock)
    # Logged at the start of the simulated day, before its calls.
    st.objections(clock=FixedClock(day)).add_all(_OBJECTORS)
    sim_clock = FixedClock(day)
    decisions: list[Decision] = []
    result = DemoResult(store=path, day=day.date().isoformat(), calls=calls)
    fmt = AudioFormat("pcm16", 8000, 1)
    export_path = Path(str(path).rstrip("/") + "-sample.wav")
    with st.open_log(clock=sim_clock) as log, Vault(st, log, clock=sim_clock) as vault:
        sampler = st.sampler(clock=sim_clock, log=log)
        for n, call in enumerate(_make_calls(calls, day, rng)):
            sim_clock.set(call["at"])
            decision = sampler.decide(call["ref"], call["attrs"], caller=call["caller"])
            decisions.append(decision)
            if decision.record:
                # The selected calls are recorded as they stream in, 20 ms at a time.
                speech = synthetic_speech(2.0, sample_rate=fmt.sample_rate, seed=n)
                with vault.record(decision, audio_format=fmt, attrs=call["attrs"]) as recorder:
                    for frame in frames(speech, fmt, 20):
                        recorder.write(frame)
                result.recordings.append(recorder.recording_id)
            if progress is not None:
                progress(1)
        if result.recordings and not export_path.exists():
            owner = Principal.owner("demo")  # the demo acts as its store's owner
            vault.export(result.recordings[0], export_path, owner, at=sim_clock.now())
            result.exported = export_path

    policy = sampler.policy
    for rule in policy.all_rules:
        mine = [d for d in decisions if d.rule == rule.name]
        result.rules.append(
            {
                "rule": rule.name,
                "purpose": rule.purpose,
                "rate": rule.rate,
                "calls": len(mine),
                "selected": sum(d.record for d in mine),
                "expected": round(len(mine) * float(rule.rate_value), 2),
                "objections": sum(d.reason == "objection" for d in mine),
                "capped": sum(d.reason == "cap_reached" for d in mine),
            }
        )
    result.selected = sum(d.record for d in decisions)
    result.objections = sum(d.reason == "objection" for d in decisions)
    result.capped = sum(d.reason == "cap_reached" for d in decisions)

    # The day has ended (by the simulated clock): its key can be revealed to the auditor.
    revealed = st.reveal_keys(now=day + timedelta(days=1), real_now=real_now)
    st.write_revealed(revealed, path / "revealed-keys.json")

    # A year later, every recording has passed its retention: a sweep crypto-shreds them all.
    later = day + timedelta(days=366)
    year_clock = FixedClock(later)
    with st.open_log(clock=year_clock) as log, Vault(st, log, clock=year_clock) as vault:
        sweep = Retention(vault, clock=year_clock).sweep(later)
        result.swept = len(sweep.expired)
        result.buckets_destroyed = len(sweep.buckets_destroyed)
        for rid in result.recordings:
            try:
                vault.open(rid, at=later)
            except RecordingExpired:
                continue
            result.readable_after_a_year += 1

    # The auditor's verdict, as of a year later: the log verifies, the revealed key matches its
    # commitment, every decision is recomputed from it, nothing is readable past its expiry.
    audit = audit_verify(path, path / "revealed-keys.json", now=later)
    result.key_matches_commitment = audit.counts["keys_verified"] == len(revealed)
    result.recomputed = audit.counts["decisions_recomputed"]
    result.mismatches = sum(f.check == "decisions" for f in audit.findings)
    result.log_entries = audit.counts["log_entries"]
    result.log_ok = audit.status("log") == "PASS"
    result.log_findings = [f.message for f in audit.findings if f.check == "log"]
    result.audit_ok = audit.ok
    result.audit_checks = {c: audit.status(c) for c in CHECKS}
    report_path = Path(str(path).rstrip("/") + "-report.html")
    if not report_path.exists():
        result.report = write_report(
            path, report_path, revealed_keys=path / "revealed-keys.json", audit=audit, now=later
        )
    return result
