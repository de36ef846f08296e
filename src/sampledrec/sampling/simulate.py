"""What a policy would record: expected and simulated recordings per rule and per agent.

:func:`simulate_policy` draws synthetic calls whose attributes take the values named in the
policy's rules (plus one value no rule names), spreads them over working hours, and runs them
through a :class:`~sampledrec.Sampler` with a throw-away in-memory key, so caps are applied as
in production. Expected counts are the sums of the rates; simulated counts include caps and
objections.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import numpy as np

from ..clock import FixedClock
from ..errors import InvalidArgument
from .policy import Policy
from .sampler import REASONS, Sampler

__all__ = ["RuleStats", "SimulationResult", "simulate_policy", "synthetic_calls"]

OTHER = "other"


@dataclass
class RuleStats:
    rule: str
    rate: str
    calls: int = 0
    expected: float = 0.0
    selected: int = 0
    capped: int = 0
    objections: int = 0


@dataclass
class SimulationResult:
    calls: int
    rules: list[RuleStats]
    agents: dict[str, tuple[float, int]] = field(default_factory=dict)  # agent -> (exp, sel)

    def to_json(self) -> dict[str, object]:
        return {
            "calls": self.calls,
            "rules": [vars(r) for r in self.rules],
            "agents": [
                {"agent": a, "expected": e, "selected": s} for a, (e, s) in self.agents.items()
            ],
        }


def synthetic_calls(
    policy: Policy, n: int, *, agents: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Attribute columns for ``n`` synthetic calls: each attribute named in a rule takes one of
    the values rules name for it, or ``"other"``; agents are ``agent-01`` to ``agent-NN``."""
    values: dict[str, set[str]] = {}
    for rule in policy.rules:
        for attr, allowed in rule.match.items():
            values.setdefault(attr, set()).update(allowed)
    columns: dict[str, np.ndarray] = {}
    for attr, vals in sorted(values.items()):
        choices = np.asarray([*sorted(vals), OTHER], dtype=object)
        columns[attr] = choices[rng.integers(0, len(choices), n)]
    if policy.agent_attribute not in columns:
        names = np.asarray([f"agent-{i + 1:02d}" for i in range(agents)], dtype=object)
        columns[policy.agent_attribute] = names[rng.integers(0, agents, n)]
    return columns


def simulate_policy(
    policy: Policy,
    calls: int,
    *,
    agents: int = 20,
    days: int = 1,
    seed: int | None = None,
    start: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    batch: int = 100_000,
) -> SimulationResult:
    """Simulate ``calls`` calls over ``days`` days through the policy."""
    from ..keys.memory import MemoryKeyring

    if calls < 0 or agents < 1 or days < 1:
        raise InvalidArgument(
            f"calls={calls}, agents={agents}, days={days}: calls must be 0 or more, "
            "agents and days at least 1"
        )
    rng = np.random.default_rng(seed)
    day0 = start or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    clock = FixedClock(day0)
    # Synthetic calls are all distinct: nothing to remember (millions of calls, in memory).
    sampler = Sampler(policy, MemoryKeyring(), clock=clock, ahead=1, idempotent=False)
    stats = {r.name: RuleStats(r.name, r.rate) for r in policy.all_rules}
    rates = {r.name: Fraction(r.rate_value) for r in policy.all_rules}
    agent_exp: dict[str, float] = {}
    agent_sel: Counter[str] = Counter()
    per_day = [calls // days + (1 if d < calls % days else 0) for d in range(days)]
    serial = 0
    for d, n_day in enumerate(per_day):
        done = 0
        while done < n_day:
            m = min(batch, n_day - done)
            clock.set(day0 + timedelta(days=d, hours=9))
            cols = synthetic_calls(policy, m, agents=agents, rng=rng)
            refs = np.asarray([f"sim-{serial + i:012d}" for i in range(m)], dtype="S")
            serial += m
            result = sampler.decide_batch(refs, cols)
            names = result.rule_names
            reasons = result.reason_codes
            for name in stats:
                in_rule = names == name
                st = stats[name]
                k = int(in_rule.sum())
                st.calls += k
                st.expected += float(k * rates[name])
                st.selected += int((in_rule & result.record).sum())
                st.capped += int((in_rule & (reasons == REASONS.index("cap_reached"))).sum())
            agent_col = cols[policy.agent_attribute]
            rate_of_call = np.asarray([float(rates[n]) for n in names.tolist()])
            for agent in np.unique(agent_col):
                mine = agent_col == agent
                agent_exp[str(agent)] = agent_exp.get(str(agent), 0.0) + float(
                    rate_of_call[mine].sum()
                )
                agent_sel[str(agent)] += int((mine & result.record).sum())
            done += m
            if progress is not None:
                progress(m)
    return SimulationResult(
        calls=calls,
        rules=list(stats.values()),
        agents={a: (agent_exp[a], agent_sel[a]) for a in sorted(agent_exp)},
    )
