"""The web console's accounts: passwords, second factor, sign-in, sessions, connection log.

Individual accounts (``sampledrec users``; the console's admin page) hold roles of the policy;
the library checks every action an account takes (:func:`authorize`, which asks the vault and
logs the outcome). Passwords are argon2id hashes checked for a minimum strength when set
(:mod:`.passwords`); the second factor is TOTP with hashed recovery codes (:mod:`.totp`,
:mod:`.users`); sign-in is throttled by growing delays per account and per address
(:mod:`.throttle`) and every step is logged with its outcome (:mod:`.connections`), the
address as a keyed pseudonym. Sessions rotate their id at each sign-in step and time out when
idle (:mod:`.sessions`). Page views are counted per day and per role only
(:mod:`.usage`). Nothing here knows HTTP: the console's pages are
:mod:`sampledrec.serve.console`.

Applying a policy (:mod:`.policies`: a preview, then the apply, both needing
``manage_policy``) is shared by ``sampledrec policy apply`` and the console's policy page.

The access log (:mod:`.accesslog`, ``read_log``) reads back every ``access`` entry.

Layout: ``policies`` and ``accesslog`` over ``admin`` and ``signin``, over ``users``,
``connections``, ``sessions``, ``throttle``, ``totp``, ``passwords`` and ``usage``.
"""

from .accesslog import AccessEvent, AccessLog, access_log
from .admin import Accounts, authorize, permitted
from .connections import CONNECTION_ACTIONS, Connection, address_pseudonym, connections
from .passwords import PasswordRules, check_strength
from .policies import apply_policy, preview_policy
from .sessions import Session, SessionStore, Stage
from .signin import Authenticator, PasswordChecked
from .throttle import Throttle
from .usage import Usage
from .users import User, UserDirectory, open_users

__all__ = [
    "CONNECTION_ACTIONS",
    "AccessEvent",
    "AccessLog",
    "Accounts",
    "Authenticator",
    "Connection",
    "PasswordChecked",
    "PasswordRules",
    "Session",
    "SessionStore",
    "Stage",
    "Throttle",
    "Usage",
    "User",
    "UserDirectory",
    "access_log",
    "address_pseudonym",
    "apply_policy",
    "authorize",
    "check_strength",
    "connections",
    "open_users",
    "permitted",
    "preview_policy",
]
