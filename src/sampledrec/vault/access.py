"""Who may do what with a store: permissions, roles and their scopes, and principals.

The host application authenticates its users; the library trusts the :class:`Principal` (a
name and role names) that comes with every read, and decides from the roles of the policy in
force. A role grants *permissions*, optionally within a *scope*: call attributes that a
recording must have for the role to reach it (a reviewer's queues). Roles are declared in the
policy file (``docs/policy-format.md``, "Roles and access")::

    [roles.qa_reviewer]
    permissions = ["list", "listen"]
    scope = { queue = ["sales", "support"] }

These roles exist even when the file declares none; a ``[roles.<name>]`` table replaces the
default role of that name, or adds a role:

============  =========================================================
role          permissions (none of these roles has a scope)
============  =========================================================
qa_reviewer   list, listen
supervisor    list, listen, export
dpo           list, hold, subject_requests, read_log, verify
auditor       list, verify, read_log (metadata and the log, never audio)
admin         list, manage_policy, manage_keys, manage_users
============  =========================================================

``auditor`` can never be given ``listen`` or ``export``. ``owner`` is reserved: it holds every
permission without scope, and is the role of the store's owner, as whom the CLI acts
(DESIGN.md §9) and as whom library callers act when they pass no principal
(:meth:`Principal.owner`). A principal without roles may do nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..sampling.roles import (
    DEFAULT_OWNER_NAME,
    DEFAULT_ROLES,
    NO_SCOPE,
    OWNER,
    OWNER_ROLE,
    PERMISSIONS,
    ROLE_NAME,
    Permission,
    Role,
    parse_roles,
)

__all__ = [
    "DEFAULT_ROLES",
    "OWNER",
    "PERMISSIONS",
    "Grant",
    "Permission",
    "Principal",
    "Role",
    "grant",
    "granting_roles",
    "parse_roles",
]


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user the host application has authenticated, and their role names.

    Roles are names of the policy's roles (``docs/policy-format.md``); they are checked
    against the policy in force when the principal acts. A principal without roles may do
    nothing. :meth:`owner` is the store's owner, who may do everything.

    >>> Principal("maria", ("qa_reviewer",))
    Principal(name='maria', roles=('qa_reviewer',))
    >>> Principal.owner("root").roles
    ('owner',)
    """

    name: str
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidArgument(
                f"name={self.name!r}: a principal needs a name (the user the host "
                "application authenticated)"
            )
        roles: Any = self.roles
        if isinstance(roles, str | bytes) or not isinstance(roles, Sequence | frozenset | set):
            raise InvalidArgument(
                f"roles={roles!r} must be a sequence of role names, such as ('supervisor',)"
            )
        for role in roles:
            if not isinstance(role, str) or not ROLE_NAME.fullmatch(role):
                raise InvalidArgument(
                    f"principal {self.name!r}: role {role!r} is not a role name; use names "
                    "such as 'qa_reviewer' or 'supervisor'"
                )
        object.__setattr__(self, "roles", tuple(roles))

    @classmethod
    def owner(cls, name: str = DEFAULT_OWNER_NAME) -> Principal:
        """The store's owner (role ``owner``: every permission, no scope), named ``name``."""
        return cls(name, (OWNER,))

    @property
    def is_owner(self) -> bool:
        return OWNER in self.roles


@dataclass(frozen=True)
class Grant:
    """What one principal may do with one permission: the roles of theirs that grant it.

    False (``bool(grant)``) when no role does. :meth:`reaches` tells whether a recording is in
    the scope of at least one of those roles.
    """

    principal: Principal
    permission: str
    roles: tuple[Role, ...]

    def __bool__(self) -> bool:
        return bool(self.roles)

    @property
    def unrestricted(self) -> bool:
        """Whether one of the granting roles has no scope (it reaches every recording)."""
        return any(not r.scope for r in self.roles)

    @property
    def scope_attributes(self) -> frozenset[str]:
        return frozenset(name for r in self.roles for name in r.scope)

    def reaches(
        self,
        attrs: Mapping[str, object],
        required: Mapping[str, frozenset[str]] = NO_SCOPE,
    ) -> bool:
        return any(r.reaches(attrs, required) for r in self.roles)

    def describe(self) -> str:
        return ", ".join(r.describe() for r in self.roles) or "none"


def grant(principal: Principal, permission: str, roles: Mapping[str, Role]) -> Grant:
    """The roles of ``principal`` that grant ``permission``, looked up in ``roles`` (a
    policy's role table, :attr:`Policy.roles <sampledrec.Policy.roles>`).

    Raises :class:`~sampledrec.errors.InvalidArgument` for a permission that does not exist
    or a role the table does not declare, naming it.
    """
    if permission not in PERMISSIONS:
        raise InvalidArgument(
            f"permission {permission!r} does not exist; use one of {', '.join(PERMISSIONS)}"
        )
    held: list[Role] = []
    for name in principal.roles:
        role = OWNER_ROLE if name == OWNER else roles.get(name)
        if role is None:
            known = ", ".join(sorted({*roles, OWNER}))
            raise InvalidArgument(
                f"principal {principal.name!r} has role {name!r}, which the policy does not "
                f"declare; known roles are {known} (declare it in a [roles.{name}] table)"
            )
        if role.grants(permission):
            held.append(role)
    return Grant(principal, permission, tuple(held))


def granting_roles(permission: str, roles: Mapping[str, Role]) -> list[str]:
    """The names of the roles in ``roles`` that grant ``permission``, sorted."""
    return sorted(name for name, role in roles.items() if role.grants(permission))
