"""Quick start: decide, call by call, which calls to record.

What a call-centre developer copies first: load a policy, build a sampler over a store's keyring,
then ask ``decide`` at call set-up for every incoming call and record only the selected ones.

Run it:  python examples/quickstart.py [STORE]
(without STORE it works in a temporary folder and deletes it afterwards)
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

from sampledrec import Policy, Store

POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.05"                 # record 5% of sales calls, at random
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = 2     # and at most 2 per agent per day

[[rules]]
name = "support-training"
match = { queue = "support", direction = "inbound" }
rate = "0.02"
purpose = "training"
retention = "3 months"

[default]
rate = "0.01"
purpose = "quality"
retention = "6 months"
"""


def incoming_calls(n: int) -> list[tuple[str, dict[str, str]]]:
    """Stand-in for your PBX: (Call-ID, attributes) for each new call."""
    queues = ["sales", "support", "billing"]
    return [
        (
            f"{uuid.uuid4()}@pbx.example.com",
            {
                "queue": queues[i % 3],
                "direction": "inbound" if i % 4 else "outbound",
                "agent": f"agent-{i % 7:02d}",
            },
        )
        for i in range(n)
    ]


def main(folder: Path) -> int:
    policy_file = folder / "policy.toml"
    policy_file.write_text(POLICY, encoding="utf-8")
    Policy.load(policy_file)  # a QA lead's mistake is caught here, with the rule and field named

    store = Store.init(folder / "store", policy=policy_file)
    sampler = store.sampler()

    recorded = 0
    for call_ref, attrs in incoming_calls(500):
        decision = sampler.decide(call_ref, attrs)
        if decision.record:
            recorded += 1
            print(f"RECORD  {call_ref[:13]}  rule={decision.rule:<16} purpose={decision.purpose}")
    print(f"{recorded} of 500 calls selected (policy version {sampler.policy.version[:12]})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        raise SystemExit(main(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory() as tmp:
        raise SystemExit(main(Path(tmp)))
