"""What applying a policy would change: :func:`policy_changes` and :class:`PolicyPreview`.

``sampledrec policy apply`` prints a preview before it applies, and the console's policy page
shows the same one before the admin confirms: the rules added, removed, moved (the first rule
that matches decides, so order matters) or changed (match, rate, purpose, retention, caps,
justification, legal basis), the default rule, the roles (permissions and scopes) and the
policy-wide settings (rate ceiling, agent attribute, declared attributes), then the
guardrail messages: the new policy's own warnings (:attr:`Policy.warnings
<sampledrec.sampling.policy.Policy.warnings>`) and what the change itself calls for attention
to (a rate raised several times over, a role removed). A policy that breaks a guardrail
outright never gets this far: :class:`~sampledrec.errors.InvalidPolicy` names the rule.

Pure functions of two :class:`~sampledrec.sampling.policy.Policy` objects: no store, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final, Literal

from .policy import Policy, Rule
from .roles import Role

__all__ = ["PolicyChange", "PolicyPreview", "policy_changes", "preview"]

ChangeKind = Literal["added", "removed", "changed", "moved"]
Subject = Literal["rule", "default", "role", "policy"]
#: A rate multiplied by at least this much gets a guardrail message of its own.
RATE_JUMP: Final = 2
_RULE_FIELDS: Final = (
    "match",
    "rate",
    "purpose",
    "retention",
    "max_per_agent_per_day",
    "max_per_agent_per_week",
    "justification",
    "legal_basis",
)


@dataclass(frozen=True)
class PolicyChange:
    """One difference between the policy in force and a new one. ``name`` is the rule's or
    the role's name (``default`` for the default rule, the setting's for the policy); ``field``
    the field that changed (None for a whole rule or role added, removed or moved); ``before``
    and ``after`` their text (None for what does not exist on that side)."""

    kind: ChangeKind
    subject: Subject
    name: str
    field: str | None = None
    before: str | None = None
    after: str | None = None

    def text(self) -> str:
        """One line for people: ``rule 'sales': rate 0.05 -> 0.1``."""
        what = "default rule" if self.subject == "default" else f"{self.subject} {self.name!r}"
        if self.subject == "policy":
            what = f"setting {self.name}"
        if self.kind == "added":
            return f"{what} added: {self.after}"
        if self.kind == "removed":
            return f"{what} removed (was: {self.before})"
        if self.kind == "moved":
            return f"{what} moved from position {self.before} to {self.after}"
        return f"{what}: {self.field or 'value'} {self.before} -> {self.after}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "name": self.name,
            "field": self.field,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True)
class PolicyPreview:
    """The policy in force (``current``; None in a store that has none yet), the one proposed,
    what would change, and the guardrail messages to read before applying it."""

    current: Policy | None
    proposed: Policy
    changes: tuple[PolicyChange, ...]
    warnings: tuple[str, ...]

    @property
    def unchanged(self) -> bool:
        """Whether the proposed policy is the one in force (same version id)."""
        return self.current is not None and self.current.version == self.proposed.version

    def to_json(self) -> dict[str, Any]:
        return {
            "current_version": self.current.version if self.current is not None else None,
            "version": self.proposed.version,
            "unchanged": self.unchanged,
            "changes": [c.to_json() for c in self.changes],
            "warnings": list(self.warnings),
        }

    def to_text(self) -> str:
        head = f"policy {self.proposed.version[:12]}"
        if self.current is not None:
            head += f" (in force: {self.current.version[:12]})"
        if self.unchanged:
            lines = [head + ": the same as the policy in force; nothing changes"]
        else:
            lines = [head + f": {len(self.changes)} change(s)"]
            lines += [f"  {c.text()}" for c in self.changes]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def preview(current: Policy | None, proposed: Policy) -> PolicyPreview:
    """The preview of replacing ``current`` by ``proposed`` (module docstring)."""
    changes = policy_changes(current, proposed) if current is not None else []
    warnings = list(proposed.warnings)
    for change in changes:
        note = _attention(change, current, proposed)
        if note:
            warnings.append(note)
    return PolicyPreview(current, proposed, tuple(changes), tuple(warnings))


def policy_changes(old: Policy, new: Policy) -> list[PolicyChange]:
    """Every difference between ``old`` and ``new``, in reading order: policy settings, rules
    (by name), the default rule, roles (by name)."""
    out: list[PolicyChange] = []
    for name, before, after in (
        ("rate_ceiling", _rate(old.rate_ceiling), _rate(new.rate_ceiling)),
        ("agent_attribute", old.agent_attribute, new.agent_attribute),
        ("attributes", _names(old.attribute_names), _names(new.attribute_names)),
    ):
        if before != after:
            out.append(PolicyChange("changed", "policy", name, name, before, after))
    old_rules = {r.name: r for r in old.rules}
    new_rules = {r.name: r for r in new.rules}
    for rule in old.rules:
        if rule.name not in new_rules:
            out.append(PolicyChange("removed", "rule", rule.name, before=_rule_text(rule)))
    kept_old = [r.name for r in old.rules if r.name in new_rules]
    kept_new = [r.name for r in new.rules if r.name in old_rules]
    for rule in new.rules:
        if rule.name not in old_rules:
            out.append(PolicyChange("added", "rule", rule.name, after=_rule_text(rule)))
            continue
        if kept_old.index(rule.name) != kept_new.index(rule.name):
            out.append(
                PolicyChange(
                    "moved",
                    "rule",
                    rule.name,
                    before=str(old_rules[rule.name].index + 1),
                    after=str(rule.index + 1),
                )
            )
        out += _rule_changes("rule", old_rules[rule.name], rule)
    out += _rule_changes("default", old.default, new.default)
    for name in sorted(set(old.roles) | set(new.roles)):
        was, now = old.roles.get(name), new.roles.get(name)
        if was is None and now is not None:
            out.append(PolicyChange("added", "role", name, after=_role_text(now)))
        elif now is None and was is not None:
            out.append(PolicyChange("removed", "role", name, before=_role_text(was)))
        elif was is not None and now is not None:
            for fld, before, after in (
                ("permissions", _perms(was), _perms(now)),
                ("scope", _scope(was.scope), _scope(now.scope)),
            ):
                if before != after:
                    out.append(PolicyChange("changed", "role", name, fld, before, after))
    return out


def _rule_changes(subject: Subject, old: Rule, new: Rule) -> list[PolicyChange]:
    name = "default" if subject == "default" else new.name
    return [
        PolicyChange("changed", subject, name, fld, before, after)
        for fld in _RULE_FIELDS
        if (before := _field(old, fld)) != (after := _field(new, fld))
    ]


def _attention(change: PolicyChange, old: Policy | None, new: Policy) -> str | None:
    """A guardrail message that a change itself calls for, or None."""
    where = "the default rule" if change.subject == "default" else f"rule {change.name!r}"
    if change.kind == "changed" and change.field == "rate" and old is not None:
        before, after = Fraction(change.before or "0"), Fraction(change.after or "0")
        if before == 0 and after > 0:
            return f"{where} starts recording (rate 0 -> {change.after})"
        if before > 0 and after >= before * RATE_JUMP:
            return (
                f"{where}: rate {change.before} -> {change.after} records "
                f"{float(after / before):.1f} times as many calls; check that the purpose "
                "still needs that many"
            )
    if change.kind == "changed" and change.field == "retention":
        rule = new.default if change.subject == "default" else new.rule_named(change.name)
        old_rule = None
        if old is not None:
            old_rule = old.default if change.subject == "default" else old.rule_named(change.name)
        if old_rule is not None and rule.retention.approx_days() > old_rule.retention.approx_days():
            return (
                f"{where}: retention lengthened ({change.before} -> "
                f"{change.after}); it applies to recordings made from now on"
            )
    if change.kind == "removed" and change.subject == "role":
        return (
            f"role {change.name!r} is removed: accounts that hold it lose what it granted "
            "(reassign them on the users page or with sampledrec users roles)"
        )
    if change.kind == "removed" and change.subject == "rule":
        return (
            f"rule {change.name!r} is removed: the calls it matched go to the next rule that "
            "matches, or to the default rule"
        )
    return None


def _field(rule: Rule, name: str) -> str:
    if name == "match":
        return _scope(rule.match)
    if name == "retention":
        return rule.retention.text
    value = getattr(rule, name)
    return "-" if value is None else str(value)


def _rule_text(rule: Rule) -> str:
    parts = [f"match {_scope(rule.match)}", f"rate {rule.rate}", rule.purpose]
    parts.append(f"kept {rule.retention.text}")
    if rule.max_per_agent_per_day is not None:
        parts.append(f"at most {rule.max_per_agent_per_day}/agent/day")
    if rule.max_per_agent_per_week is not None:
        parts.append(f"at most {rule.max_per_agent_per_week}/agent/week")
    return ", ".join(parts)


def _role_text(role: Role) -> str:
    return f"{_perms(role)}; scope {_scope(role.scope)}"


def _perms(role: Role) -> str:
    return ", ".join(sorted(role.permissions)) or "no permission"


def _scope(scope: Mapping[str, frozenset[str]]) -> str:
    if not scope:
        return "(all)"
    return ", ".join(f"{k}={'|'.join(sorted(v))}" for k, v in sorted(scope.items()))


def _names(names: frozenset[str] | None) -> str:
    return "(not declared)" if names is None else ", ".join(sorted(names))


def _rate(value: Fraction) -> str:
    # A ceiling is a fraction from decimal text: shown back as a short decimal.
    return format(float(value), ".6g")
