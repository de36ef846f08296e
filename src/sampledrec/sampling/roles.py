"""The policy's role table: permissions, roles and their scopes (``[roles.<name>]`` tables).

A role grants *permissions*, optionally within a *scope*: call attributes that a recording must
have for the role to reach it (a reviewer's queues). Default roles exist even when the policy
declares none; ``owner`` is reserved and holds every permission without scope. Who holds which
role, and whether a request is granted, is :mod:`sampledrec.vault.access`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from ..errors import InvalidArgument, InvalidPolicy

__all__ = [
    "DEFAULT_OWNER_NAME",
    "DEFAULT_ROLES",
    "NO_SCOPE",
    "OWNER",
    "OWNER_ROLE",
    "PERMISSIONS",
    "ROLE_NAME",
    "Permission",
    "Role",
    "parse_roles",
]

Permission = Literal[
    "list",
    "listen",
    "export",
    "hold",
    "subject_requests",
    "verify",
    "read_log",
    "manage_policy",
    "manage_keys",
    "manage_users",
]
PERMISSIONS: Final[tuple[str, ...]] = get_args(Permission)
OWNER: Final = "owner"
DEFAULT_OWNER_NAME: Final = "sampledrec"

# What an auditor checks must not depend on hearing the calls (DESIGN.md §2, issue 5).
_NEVER: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {"auditor": frozenset({"listen", "export"})}
)
_ROLE_KEYS: Final = {"permissions", "scope", "description"}
ROLE_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
NO_SCOPE: Final[Mapping[str, frozenset[str]]] = MappingProxyType({})


def _attr_text(value: object) -> str:
    # The same text as a policy rule's `match` compares (booleans as true/false).
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Role:
    """A named set of permissions, reaching only the recordings within its ``scope``.

    ``scope`` maps a call attribute to the values allowed; an empty scope reaches every
    recording.

    >>> r = Role("reviewer", frozenset({"list", "listen"}), {"queue": frozenset({"sales"})})
    >>> r.grants("listen"), r.reaches({"queue": "sales"}), r.reaches({"queue": "support"})
    (True, True, False)
    """

    name: str
    permissions: frozenset[str]
    scope: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not ROLE_NAME.fullmatch(self.name):
            raise InvalidArgument(
                f"role name {self.name!r} must be letters, digits, '_', '-' or '.', "
                "such as 'qa_reviewer'"
            )
        unknown = sorted(set(self.permissions) - set(PERMISSIONS))
        if unknown:
            raise InvalidArgument(
                f"role {self.name!r}: {unknown[0]!r} is not a permission; use one of "
                f"{', '.join(PERMISSIONS)}"
            )
        object.__setattr__(self, "permissions", frozenset(self.permissions))
        given: Mapping[str, Any] = self.scope  # a lone value (str) stands for itself
        scope = {k: frozenset([v] if isinstance(v, str) else v) for k, v in given.items()}
        object.__setattr__(self, "scope", MappingProxyType(scope))

    def grants(self, permission: str) -> bool:
        return permission in self.permissions

    def reaches(
        self,
        attrs: Mapping[str, object],
        required: Mapping[str, frozenset[str]] = NO_SCOPE,
    ) -> bool:
        """Whether a recording with call attributes ``attrs`` is in this role's scope.

        An attribute of the scope that the recording did not store is judged by ``required``,
        the values its policy rule demanded of the call: the recording is in scope only if
        every value the rule allowed is (so an unknown attribute never widens a scope).
        """
        for name, allowed in self.scope.items():
            value = attrs.get(name)
            if value is not None:
                if _attr_text(value) not in allowed:
                    return False
            else:
                demanded = required.get(name)
                if not demanded or not demanded <= allowed:
                    return False
        return True

    def describe(self) -> str:
        """``name`` and, when scoped, its scope: ``qa_reviewer (queue in sales, support)``."""
        if not self.scope:
            return self.name
        parts = [f"{k} in {', '.join(sorted(v))}" for k, v in sorted(self.scope.items())]
        return f"{self.name} ({'; '.join(parts)})"


def _role(name: str, *permissions: str) -> Role:
    return Role(name, frozenset(permissions))


DEFAULT_ROLES: Final[Mapping[str, Role]] = MappingProxyType(
    {
        r.name: r
        for r in (
            _role("qa_reviewer", "list", "listen"),
            _role("supervisor", "list", "listen", "export"),
            _role("dpo", "list", "hold", "subject_requests", "read_log", "verify"),
            _role("auditor", "list", "verify", "read_log"),
            _role("admin", "list", "manage_policy", "manage_keys", "manage_users"),
        )
    }
)
OWNER_ROLE: Final = Role(OWNER, frozenset(PERMISSIONS))


def parse_roles(raw: object, *, source: str | None = None) -> Mapping[str, Role]:
    """The role table of a policy: the default roles, replaced or extended by the file's
    ``[roles.<name>]`` tables (``raw`` is the parsed ``roles`` value). Every mistake raises
    :class:`~sampledrec.errors.InvalidPolicy` naming the file, the role, the value and what
    is allowed."""

    def fail(message: str, fld: str) -> InvalidPolicy:
        return InvalidPolicy(message, file=source, field=fld)

    if not isinstance(raw, Mapping):
        raise fail(
            f"value {raw!r} must be a table of roles; write each role as [roles.<name>] with "
            'permissions = ["list", ...]',
            "roles",
        )
    table = dict(DEFAULT_ROLES)
    for name, body in raw.items():
        where = f"roles.{name}"
        if name == OWNER:
            raise fail(
                "the role 'owner' is reserved for the store's owner (every permission); give "
                "this role another name",
                where,
            )
        if not ROLE_NAME.fullmatch(name):
            raise fail(
                f"role name {name!r} must be letters, digits, '_', '-' or '.', such as "
                "'qa_reviewer'",
                where,
            )
        if not isinstance(body, Mapping):
            raise fail(
                f'value {body!r} must be a table such as permissions = ["list", "listen"]', where
            )
        unknown = sorted(set(body) - _ROLE_KEYS)
        if unknown:
            raise fail(
                f"unknown key {unknown[0]!r}; a role may have {', '.join(sorted(_ROLE_KEYS))}",
                f"{where}.{unknown[0]}",
            )
        if "permissions" not in body:
            raise fail(
                'missing; every role lists its permissions, such as permissions = ["list"] '
                "(an empty list grants nothing)",
                f"{where}.permissions",
            )
        permissions = body["permissions"]
        if not isinstance(permissions, list):
            raise fail(
                f'value {permissions!r} must be a list such as ["list", "listen"]',
                f"{where}.permissions",
            )
        for permission in permissions:
            if permission not in PERMISSIONS:
                raise fail(
                    f"value {permission!r} is not a permission; allowed permissions are "
                    f"{', '.join(PERMISSIONS)}",
                    f"{where}.permissions",
                )
        forbidden = sorted(set(permissions) & _NEVER.get(name, frozenset()))
        if forbidden:
            raise fail(
                f"value {forbidden[0]!r}: the {name} role may read metadata and the log but "
                "never hear or export a recording; give that permission to another role",
                f"{where}.permissions",
            )
        if "description" in body and not isinstance(body["description"], str):
            raise fail(f"value {body['description']!r} must be text", f"{where}.description")
        scope = _parse_scope(body.get("scope", {}), where, fail)
        table[name] = Role(name, frozenset(permissions), scope)
    return MappingProxyType(table)


def _parse_scope(raw: object, where: str, fail: Any) -> dict[str, frozenset[str]]:
    if not isinstance(raw, Mapping):
        raise fail(
            f'value {raw!r} must be a table such as scope = {{ queue = ["sales", "support"] }}',
            f"{where}.scope",
        )
    scope: dict[str, frozenset[str]] = {}
    for attr, allowed in raw.items():
        values = allowed if isinstance(allowed, list) else [allowed]
        if not values:
            raise fail(
                f"scope.{attr} is an empty list, so the role would reach no recording; list "
                "the values it may reach, or remove the role",
                f"{where}.scope",
            )
        texts = []
        for v in values:
            if isinstance(v, dict | list | float):
                raise fail(
                    f"scope.{attr} = {v!r}: attribute values are text, numbers or true/false",
                    f"{where}.scope",
                )
            texts.append(_attr_text(v))
        scope[attr] = frozenset(texts)
    return scope
