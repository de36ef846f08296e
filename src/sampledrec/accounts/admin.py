"""Managing the console's accounts, and checking what an account may do.

:class:`Accounts` is what the CLI (``sampledrec users``) and the console's admin pages call:
each change is allowed only to a principal with the ``manage_users`` permission (checked and
logged by the vault, like every access), then logged itself as an ``access`` entry with action
``account_change`` and a detail naming the account and what changed (sealed, as every access
detail). Roles given to an account must be roles of the policy in force.

:func:`authorize` is the one check of every console action: it takes the account and the
permission (and the recording, if any), and asks the vault, which logs the outcome. The web
layer calls it for every page; hiding a link is never the check.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import InvalidArgument
from ..log.format import T_ACCESS, to_micros
from ..vault.access import OWNER, PERMISSIONS, Grant, Principal, grant
from ..vault.recorder import Vault
from .users import User, UserDirectory

__all__ = ["Accounts", "authorize", "permitted"]


def authorize(
    vault: Vault,
    user: User | Principal,
    permission: str | Sequence[str],
    *,
    recording_id: str | None = None,
) -> Grant:
    """Check that ``user`` may ``permission`` (on ``recording_id``); logged either way by the
    vault. Given several permissions, the first one the account holds is used (so a page open
    to ``read_log`` or ``manage_users`` is logged under the one that let the user in); when it
    holds none, the first is the one refused and logged. Raises
    :class:`~sampledrec.errors.AccessDenied`."""
    who = user.principal if isinstance(user, User) else user
    wanted = [permission] if isinstance(permission, str) else list(permission)
    if not wanted:
        raise InvalidArgument("permission: give at least one permission")
    held = permitted(vault, who)
    chosen = next((p for p in wanted if p in held), wanted[0])
    return vault.authorize(who, chosen, recording_id=recording_id)


def permitted(vault: Vault, who: User | Principal) -> frozenset[str]:
    """The permissions that ``who``'s roles grant under the policy in force (no logging: for
    showing what a page offers; every action still goes through :func:`authorize`)."""
    principal = who.principal if isinstance(who, User) else who
    if principal.is_owner:
        roles: Any = {}
    else:
        roles = vault.store.policy(vault.clock.now()).roles
    out = set()
    for permission in PERMISSIONS:
        try:
            if grant(principal, permission, roles):
                out.add(permission)
        except InvalidArgument:
            return frozenset()  # a role the policy no longer declares grants nothing
    return frozenset(out)


class Accounts:
    """The accounts of a store's console, changed by a principal with ``manage_users``."""

    def __init__(self, users: UserDirectory, vault: Vault, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.users = users
        self.vault = vault
        self.clock = clock

    def _now_us(self) -> int:
        return to_micros(self.clock.now())

    def _check_roles(self, roles: Sequence[str]) -> list[str]:
        if isinstance(roles, str):
            raise InvalidArgument(f"roles={roles!r} must be a list of role names")
        known = self.vault.store.policy(self.clock.now()).roles
        for role in roles:
            if role == OWNER:
                raise InvalidArgument(
                    "the role 'owner' is the store's own (the CLI); give an account the roles "
                    "it needs, such as admin"
                )
            if role not in known:
                raise InvalidArgument(
                    f"role {role!r} is not a role of the policy in force; the roles are "
                    f"{', '.join(sorted(known))} (declare others in [roles.<name>])"
                )
        return sorted(set(roles))

    def _changed(self, by: Principal, name: str, change: str, **detail: Any) -> None:
        self.vault.log.append(
            T_ACCESS,
            {
                "action": "account_change",
                "outcome": "done",
                "principal": by.name,
                "recording_id": None,
                "detail": json.dumps(
                    {"account": name, "change": change, **detail},
                    separators=(",", ":"),
                    sort_keys=True,
                ),
            },
            at=self.clock.now(),
        )

    def add(self, by: Principal, name: str, roles: Sequence[str], password: str) -> User:
        """A new account (it changes its password and enrols a second factor at its first
        sign-in)."""
        authorize(self.vault, by, "manage_users")
        checked = self._check_roles(roles)
        user = self.users.add(name, checked, password, now_us=self._now_us())
        self._changed(by, name, "added", roles=checked)
        return user

    def set_roles(self, by: Principal, name: str, roles: Sequence[str]) -> User:
        """Replace the account's roles. An account may not take ``manage_users`` away from
        itself (it would lock itself out of this page): another admin does that."""
        authorize(self.vault, by, "manage_users")
        checked = self._check_roles(roles)
        if (
            by.name == name
            and not by.is_owner
            and "manage_users" not in permitted(self.vault, Principal(name, tuple(checked)))
        ):
            raise InvalidArgument(
                "these roles would take managing users away from your own account; ask "
                "another admin to change your roles"
            )
        before = self.users.require(name).roles
        self.users.set_roles(name, checked)
        self._changed(by, name, "roles", before=list(before), after=checked)
        return self.users.require(name)

    def set_disabled(self, by: Principal, name: str, disabled: bool) -> User:
        """Disable (or enable again) an account; an account may not disable itself."""
        authorize(self.vault, by, "manage_users")
        if disabled and by.name == name and not by.is_owner:
            raise InvalidArgument(
                "you cannot disable your own account; ask another admin (or: sampledrec users "
                f"disable {name})"
            )
        self.users.set_disabled(name, disabled)
        self._changed(by, name, "disabled" if disabled else "enabled")
        return self.users.require(name)

    def reset(
        self,
        by: Principal,
        name: str,
        *,
        password: str | None = None,
        second_factor: bool = False,
    ) -> User:
        """A new password (to change at next sign-in) and/or a new second-factor enrolment."""
        authorize(self.vault, by, "manage_users")
        if password is None and not second_factor:
            raise InvalidArgument("reset what? give a new password, or the second factor, or both")
        changes = []
        if password is not None:
            self.users.set_password(name, password, now_us=self._now_us(), must_change=True)
            changes.append("password")
        if second_factor:
            self.users.reset_second_factor(name)
            changes.append("second_factor")
        self._changed(by, name, "reset", what=changes)
        return self.users.require(name)

    def list(self, by: Principal) -> list[User]:
        authorize(self.vault, by, "manage_users")
        return self.users.all()
