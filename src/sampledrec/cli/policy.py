"""``sampledrec policy check|simulate|apply``: policy files, and applying one to a store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from ..errors import InvalidArgument, InvalidPolicy
from ..sampling.policy import Policy
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    Commands,
    add_at,
    add_command,
    add_group,
    at_time,
    emit,
    open_store,
    owner_principal,
    table,
)
from ._progress import Progress


def register(commands: Commands) -> None:
    psub = add_group(commands, "policy", "check or simulate a policy file")
    p = add_command(
        psub, "check", cmd_policy_check, "check a policy file and show its rules", store=False
    )
    p.add_argument("file")
    p = add_command(
        psub,
        "simulate",
        cmd_policy_simulate,
        "expected and simulated recordings per rule and per agent",
        store=False,
    )
    p.add_argument("file")
    p.add_argument("--calls", type=int, required=True, help="number of calls to simulate")
    p.add_argument("--agents", type=int, default=20, help="number of agents (default 20)")
    p.add_argument("--days", type=int, default=1, help="spread the calls over D days")
    p.add_argument("--seed", type=int, help="random seed, for a repeatable simulation")
    p = add_command(
        psub,
        "apply",
        cmd_policy_apply,
        "show what a new policy changes (rules, rates, caps, roles, retention) and its "
        "warnings, then log it and schedule it",
    )
    p.add_argument("file")
    p.add_argument(
        "--dry-run", action="store_true", help="only show what would change; apply nothing"
    )
    add_at(p, "when it takes effect (ISO 8601; default now, forward only)")


def cmd_policy_check(args: argparse.Namespace, out: TextIO) -> int:
    try:
        policy = Policy.load(args.file)
    except InvalidPolicy as exc:
        if args.json:
            emit(args, {"ok": False, "error": str(exc)}, "", out)
            return EXIT_FAILED
        raise CommandFailed(str(exc)) from None
    rows = [
        (
            r.name,
            ", ".join(f"{k}={'|'.join(sorted(v))}" for k, v in r.match.items()) or "(all other)",
            r.rate,
            r.purpose,
            r.retention.text,
            _caps_text(r.max_per_agent_per_day, r.max_per_agent_per_week),
        )
        for r in policy.all_rules
    ]
    text = (
        f"{args.file}: OK, version {policy.version}\n"
        + table(["rule", "match", "rate", "purpose", "retention", "cap/agent"], rows)
        + "".join(f"\nwarning: {w}" for w in policy.warnings)
    )
    doc = {
        "ok": True,
        "file": str(args.file),
        "version": policy.version,
        "canonical": json.loads(policy.canonical),
        "warnings": list(policy.warnings),
    }
    emit(args, doc, text, out)
    return EXIT_OK


def _caps_text(day: int | None, week: int | None) -> str:
    parts = []
    if day is not None:
        parts.append(f"{day}/day")
    if week is not None:
        parts.append(f"{week}/week")
    return ", ".join(parts) or "-"


def cmd_policy_simulate(args: argparse.Namespace, out: TextIO) -> int:
    from ..sampling.simulate import simulate_policy

    try:
        policy = Policy.load(args.file)
    except InvalidPolicy as exc:
        raise CommandFailed(str(exc)) from None
    if args.calls < 1:
        raise InvalidArgument(f"--calls {args.calls} must be at least 1")
    with Progress(args.calls, "simulating") as bar:
        result = simulate_policy(
            policy,
            args.calls,
            agents=args.agents,
            days=args.days,
            seed=args.seed,
            progress=bar.advance,
        )
    rule_rows = [
        (r.rule, r.rate, r.calls, f"{r.expected:.1f}", r.selected, r.capped) for r in result.rules
    ]
    agent_rows = [(a, f"{e:.1f}", s) for a, (e, s) in result.agents.items()]
    text = (
        f"{result.calls:,} simulated calls over {args.days} day(s), {args.agents} agents\n\n"
        + table(["rule", "rate", "calls", "expected", "simulated", "capped"], rule_rows)
        + "\n\n"
        + table(["agent", "expected", "simulated"], agent_rows)
    )
    emit(args, {"version": policy.version, **result.to_json()}, text, out)
    return EXIT_OK


def cmd_policy_apply(args: argparse.Namespace, out: TextIO) -> int:
    from ..accounts import apply_policy, open_users, preview_policy
    from ..vault.recorder import Vault

    store = open_store(args.store)
    effective = at_time(args, store)
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{args.file}: cannot read the policy file ({exc})") from None
    owner = owner_principal()
    with store.open_log() as log, Vault(store, log) as vault:
        users = open_users(store) if store.users_path.exists() else None
        try:
            preview = preview_policy(store, vault, owner, text, users=users, effective_at=effective)
            if args.dry_run or preview.unchanged:
                policy = None
            else:
                policy = apply_policy(
                    store,
                    vault,
                    owner,
                    text,
                    version=preview.proposed.version,
                    replacing=preview.current.version if preview.current else None,
                    effective_at=effective,
                )
        except InvalidPolicy as exc:
            raise CommandFailed(f"policy refused: {exc}") from None
        finally:
            if users is not None:
                users.close()
    doc = {
        "version": preview.proposed.version,
        "effective_at": effective.isoformat(),
        "applied": policy is not None,
        **preview.to_json(),
    }
    if policy is not None:
        then = (
            f"Applied policy {policy.version} (effective {effective.isoformat()}); it is in the "
            "decision log, and running samplers pick it up within a second."
        )
    elif preview.unchanged:
        then = "Nothing applied: it is the policy in force."
    else:
        then = "Dry run: nothing applied."
    emit(args, doc, preview.to_text() + "\n" + then, out)
    return EXIT_OK
