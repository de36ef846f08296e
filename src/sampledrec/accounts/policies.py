"""Applying a policy as an account: preview, then apply, both checked for ``manage_policy``.

``sampledrec policy apply`` (as the store's owner) and the console's policy page (as an admin
account) call the same two functions, so that both print the same changes and guardrail
messages and apply the same way:

- :func:`preview_policy` is :meth:`Store.preview_policy <sampledrec.Store.preview_policy>`
  (rules, rates, caps, roles and retention that change; the policy's own warnings) plus what
  only the accounts know: the accounts holding a role that the new policy no longer declares;
- :func:`apply_policy` applies exactly the policy that was previewed: its version id must be the
  one confirmed, and the policy in force must still be the one the preview compared against
  (another admin may have applied one in between); it goes through the open log, with the
  account's name as the principal of the ``policy`` entry.

Both are refused (:class:`~sampledrec.errors.AccessDenied`, logged by the vault) without the
``manage_policy`` permission (default role ``admin``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ..errors import InvalidArgument, StoreError
from ..sampling.changes import PolicyPreview
from ..sampling.policy import Policy
from ..store import Store
from ..vault.access import Principal
from ..vault.recorder import Vault
from .admin import authorize
from .users import User, UserDirectory

__all__ = ["apply_policy", "preview_policy"]


def _who(by: User | Principal) -> Principal:
    return by.principal if isinstance(by, User) else by


def preview_policy(
    store: Store,
    vault: Vault,
    by: User | Principal,
    text: str,
    *,
    users: UserDirectory | None = None,
    effective_at: datetime | None = None,
) -> PolicyPreview:
    """What applying ``text`` would change (module docstring). ``users``: the console's
    accounts, to name those that would lose a role. Raises
    :class:`~sampledrec.errors.InvalidPolicy` (the guardrail that refuses it) or
    :class:`~sampledrec.errors.AccessDenied`."""
    authorize(vault, _who(by), "manage_policy")
    found = store.preview_policy(
        text, at=effective_at or vault.clock.now(), source="the new policy"
    )
    if users is None:
        return found
    extra = []
    for account in users.all():
        lost = sorted(r for r in account.roles if r not in found.proposed.roles)
        if lost:
            extra.append(
                f"account {account.name!r} holds role(s) {', '.join(lost)}, which the new policy "
                "does not declare: it would lose what they grant"
            )
    return replace(found, warnings=found.warnings + tuple(extra))


def apply_policy(
    store: Store,
    vault: Vault,
    by: User | Principal,
    text: str,
    *,
    version: str,
    replacing: str | None,
    effective_at: datetime | None = None,
) -> Policy:
    """Apply ``text``, whose preview the account confirmed: ``version`` is the version id it
    saw, ``replacing`` the version of the policy in force the preview compared against (None
    when there was none). Logged (the ``policy`` entry names the account). Raises
    :class:`~sampledrec.errors.InvalidArgument` when the text or the policy in force has
    changed since the preview, :class:`~sampledrec.errors.InvalidPolicy`, or
    :class:`~sampledrec.errors.AccessDenied`."""
    who = _who(by)
    authorize(vault, who, "manage_policy")
    when = effective_at or vault.clock.now()
    proposed = Policy.from_toml(text, source="the new policy")
    if proposed.version != version:
        raise InvalidArgument(
            "the policy text is not the one previewed; preview it again, then confirm"
        )
    try:
        current = store.policy(when).version
    except StoreError:
        current = None
    if current != replacing:
        raise InvalidArgument(
            "the policy in force changed since this preview (someone applied another); "
            "preview again to see what your policy would change now"
        )
    return store.apply_policy_text(text, log=vault.log, effective_at=when, principal=who.name)
