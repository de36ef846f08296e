"""The console's accounts: who they are, their roles, and their secrets (never in clear).

One SQLite file, ``STORE/users.sqlite`` (0600, :attr:`Store.users_path
<sampledrec.Store.users_path>`), holds one row per account: its name, its role names (of the
policy's roles), whether it is disabled, its password's argon2id hash and when it was set, its
TOTP secret encrypted (AES-256-GCM under a key derived from the keyring's pseudonym key and
bound to the account's name), the last TOTP time step used (a code is good once), and its
recovery codes as keyed hashes (HMAC-SHA-256; they are long random strings, so a slow hash adds
nothing). A copy of the file without the keyring reveals no password, no TOTP secret and no
recovery code. WebAuthn credentials (security keys, passkeys) are rows of their own: the
credential id, its public key sealed like the TOTP secret (bound to the account and the
credential id, so a row moved to another account or given another key does not open), the
authenticator's signature counter, a label, and when it was added and last used. See
``docs/decisions/0030-console.md`` and ``0034-webauthn.md``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from argon2 import PasswordHasher
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._hazmat.sqlite import open_ledger_db
from ..errors import InvalidArgument, StoreError
from ..store import Store
from ..vault.access import Principal
from .passwords import PasswordRules, check_strength, hash_password

__all__ = [
    "RECOVERY_CODES",
    "USER_NAME",
    "SecurityKey",
    "User",
    "UserDirectory",
    "derive_secrets_key",
    "open_users",
]

USER_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
RECOVERY_CODES: Final = 10
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    roles TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT NOT NULL,
    password_set_at INTEGER NOT NULL,
    must_change INTEGER NOT NULL DEFAULT 0,
    totp_secret BLOB,
    totp_last_step INTEGER NOT NULL DEFAULT -1,
    recovery TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    last_sign_in_at INTEGER
);
CREATE TABLE IF NOT EXISTS webauthn_credentials (
    credential_id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    public_key BLOB NOT NULL,
    sign_count INTEGER NOT NULL,
    label TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE INDEX IF NOT EXISTS webauthn_by_name ON webauthn_credentials (name);
"""
_SELECT: Final = (
    "SELECT *, (SELECT COUNT(*) FROM webauthn_credentials w WHERE w.name = users.name) "
    "AS security_keys FROM users"
)
_DOMAIN: Final = b"sampledrec/v1/console-secrets"


def derive_secrets_key(pseudonym_key: bytes) -> bytes:
    """The key that seals the accounts' TOTP secrets and keys their recovery-code hashes,
    derived from the keyring's pseudonym key (a separate purpose, so a separate key)."""
    return hmac.new(pseudonym_key, _DOMAIN, hashlib.sha256).digest()


@dataclass(frozen=True)
class User:
    """One console account as stored (secrets stay sealed; see :class:`UserDirectory`)."""

    name: str
    roles: tuple[str, ...]
    disabled: bool
    password_set_at: int  # µs since 1970
    must_change: bool
    enrolled: bool  # whether a second factor (TOTP or a security key) is set up
    created_at: int
    last_sign_in_at: int | None = None
    recovery_left: int = 0
    password_hash: str = field(default="", repr=False)
    totp: bool = False  # whether TOTP is set up
    security_keys: int = 0  # WebAuthn credentials registered

    @property
    def principal(self) -> Principal:
        """Who the library sees acting for this account (:class:`~sampledrec.vault.Principal`)."""
        return Principal(self.name, self.roles)

    def password_expired(self, now_us: int, rules: PasswordRules) -> bool:
        if rules.max_age_days is None:
            return False
        return now_us - self.password_set_at >= rules.max_age_days * 86_400_000_000

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "disabled": self.disabled,
            "second_factor": "totp" if self.totp else ("webauthn" if self.security_keys else None),
            "security_keys": self.security_keys,
            "password_set_at": self.password_set_at,
            "must_change_password": self.must_change,
            "recovery_codes_left": self.recovery_left,
            "created_at": self.created_at,
            "last_sign_in_at": self.last_sign_in_at,
        }


def check_name(name: object) -> str:
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise InvalidArgument(
            f"user name {name!r} must be 2 to 64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (such as 'maria.r')"
        )
    return name


class UserDirectory:
    """The accounts of one store's console, in one SQLite file (see the module docstring).

    Parameters
    ----------
    path:
        The SQLite file (created 0600 when missing).
    secrets_key:
        :func:`derive_secrets_key` of the store's keyring.
    rules:
        The minimum strength of new passwords and their maximum age.
    hasher:
        The argon2id hasher (its default parameters unless tests pass lighter ones).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        secrets_key: bytes,
        *,
        rules: PasswordRules | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        if len(secrets_key) != 32:
            raise InvalidArgument("secrets_key must be 32 bytes (derive_secrets_key)")
        self.path = Path(path)
        self.rules = rules or PasswordRules()
        self.hasher = hasher or PasswordHasher()
        self._key = secrets_key
        self._db = open_ledger_db(self.path, what="the accounts file", synchronous="FULL")
        try:
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot open the accounts file {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"UserDirectory({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"accounts file {self.path}: {exc}") from exc

    # -- reading

    def get(self, name: str) -> User | None:
        cur = self._exec(_SELECT + " WHERE name = ?", (name,))
        row = cur.fetchone()
        return None if row is None else _user(cur, row)

    def require(self, name: str) -> User:
        user = self.get(check_name(name))
        if user is None:
            raise InvalidArgument(
                f"there is no account {name!r}; list them with: sampledrec users list"
            )
        return user

    def all(self) -> list[User]:
        cur = self._exec(_SELECT + " ORDER BY name")
        return [_user(cur, row) for row in cur.fetchall()]

    # -- changing

    def add(self, name: str, roles: Sequence[str], password: str, *, now_us: int) -> User:
        """A new account that must change its password and enrol a second factor at its first
        sign-in. Raises WeakPassword, or InvalidArgument for a name taken or malformed."""
        check_name(name)
        check_strength(password, name, self.rules)
        roles = _roles(roles)
        try:
            self._exec(
                "INSERT INTO users (name, roles, password_hash, password_set_at, must_change, "
                "created_at) VALUES (?, ?, ?, ?, 1, ?)",
                (name, json.dumps(roles), hash_password(password, self.hasher), now_us, now_us),
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise InvalidArgument(
                    f"an account {name!r} exists already; reset it with: sampledrec users reset "
                    f"{name}"
                ) from None
            raise
        return self.require(name)

    def set_password(
        self, name: str, password: str, *, now_us: int, must_change: bool = False
    ) -> None:
        check_strength(password, name, self.rules)
        self.require(name)
        self._exec(
            "UPDATE users SET password_hash = ?, password_set_at = ?, must_change = ? "
            "WHERE name = ?",
            (hash_password(password, self.hasher), now_us, int(must_change), name),
        )

    def set_roles(self, name: str, roles: Sequence[str]) -> None:
        self.require(name)
        self._exec("UPDATE users SET roles = ? WHERE name = ?", (json.dumps(_roles(roles)), name))

    def set_disabled(self, name: str, disabled: bool) -> None:
        self.require(name)
        self._exec("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))

    def reset_second_factor(self, name: str) -> None:
        """Forget the account's TOTP secret, security keys and recovery codes: it enrols again
        at its next sign-in (after the password)."""
        self.require(name)
        self._exec("DELETE FROM webauthn_credentials WHERE name = ?", (name,))
        self._exec(
            "UPDATE users SET totp_secret = NULL, totp_last_step = -1, recovery = '[]' "
            "WHERE name = ?",
            (name,),
        )

    def signed_in(self, name: str, now_us: int) -> None:
        self._exec("UPDATE users SET last_sign_in_at = ? WHERE name = ?", (now_us, name))

    # -- the second factor

    def enrol_totp(self, name: str, secret: str) -> list[str]:
        """Keep ``secret`` (base32) as the account's TOTP secret, sealed; returns new recovery
        codes, shown once (only their keyed hashes are kept)."""
        self.require(name)
        sealed = self._seal(name, secret.encode("ascii"))
        codes = [_recovery_code() for _ in range(RECOVERY_CODES)]
        hashes = [self._code_hash(name, code) for code in codes]
        self._exec(
            "UPDATE users SET totp_secret = ?, totp_last_step = -1, recovery = ? WHERE name = ?",
            (sealed, json.dumps(hashes), name),
        )
        return codes

    def totp_secret(self, name: str) -> str | None:
        row = self._exec("SELECT totp_secret FROM users WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] is None:
            return None
        return self._open(name, bytes(row[0])).decode("ascii")

    def use_totp_step(self, name: str, step: int) -> bool:
        """Mark TOTP time step ``step`` used; False if it (or a later one) was used already, so
        that a code seen over a shoulder cannot be replayed."""
        cur = self._exec(
            "UPDATE users SET totp_last_step = ? WHERE name = ? AND totp_last_step < ?",
            (step, name, step),
        )
        return cur.rowcount == 1

    def use_recovery_code(self, name: str, code: str) -> bool:
        """Whether ``code`` is one of the account's unused recovery codes (then it is used)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT recovery FROM users WHERE name = ?", (name,)
                ).fetchone()
                hashes: list[str] = json.loads(row[0]) if row else []
                given = self._code_hash(name, code)
                found = [h for h in hashes if hmac.compare_digest(h, given)]
                if found:
                    hashes.remove(found[0])
                    self._db.execute(
                        "UPDATE users SET recovery = ? WHERE name = ?", (json.dumps(hashes), name)
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"accounts file {self.path}: {exc}") from exc
        return bool(found)

    def _seal(self, name: str, data: bytes, context: bytes = b"totp\x00") -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self._key).encrypt(nonce, data, context + name.encode())

    def _open(self, name: str, sealed: bytes) -> bytes:
        try:
            return AESGCM(self._key).decrypt(sealed[:12], sealed[12:], b"totp\x00" + name.encode())
        except (InvalidTag, ValueError):
            raise StoreError(
                f"the TOTP secret of {name!r} cannot be opened with this keyring; reset the "
                f"account's second factor: sampledrec users reset {name} --second-factor"
            ) from None

    # -- WebAuthn credentials

    def user_handle(self, name: str) -> bytes:
        """The account's WebAuthn user handle: 32 bytes keyed from its name (stable, and
        telling nothing about the name without the keyring)."""
        return hmac.new(self._key, b"webauthn-user\x00" + name.encode(), hashlib.sha256).digest()

    def new_recovery_codes(self, name: str) -> list[str]:
        """Replace the account's recovery codes by ten new ones, shown once (only their keyed
        hashes are kept)."""
        self.require(name)
        codes = [_recovery_code() for _ in range(RECOVERY_CODES)]
        hashes = [self._code_hash(name, code) for code in codes]
        self._exec("UPDATE users SET recovery = ? WHERE name = ?", (json.dumps(hashes), name))
        return codes

    def add_credential(
        self, name: str, credential_id: bytes, public_key: bytes, sign_count: int, *, now_us: int
    ) -> SecurityKey:
        """Keep a WebAuthn credential for ``name`` (its public key sealed to the account and the
        credential id). InvalidArgument if that credential is registered already."""
        self.require(name)
        labels = self._exec(
            "SELECT label FROM webauthn_credentials WHERE name = ?", (name,)
        ).fetchall()
        numbers = [int(n) for (text,) in labels for n in re.findall(r"\d+$", text)]
        label = f"security key {max(numbers, default=0) + 1}"  # one more than the highest kept
        sealed = self._seal(name, public_key, _key_context(credential_id))
        try:
            self._exec(
                "INSERT INTO webauthn_credentials (credential_id, name, public_key, sign_count, "
                "label, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (credential_id, name, sealed, sign_count, label, now_us),
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise InvalidArgument("this security key is registered already") from None
            raise
        return SecurityKey(credential_id, label, sign_count, now_us, None)

    def credentials(self, name: str) -> list[SecurityKey]:
        """The account's WebAuthn credentials, oldest first."""
        rows = self._exec(
            "SELECT credential_id, label, sign_count, created_at, last_used_at "
            "FROM webauthn_credentials WHERE name = ? ORDER BY created_at, label",
            (name,),
        ).fetchall()
        return [SecurityKey(bytes(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    def credential_key(self, name: str, credential_id: bytes) -> tuple[bytes, int] | None:
        """The public key and last signature counter of ``name``'s credential
        ``credential_id``, or None when the account has no such credential."""
        row = self._exec(
            "SELECT public_key, sign_count FROM webauthn_credentials "
            "WHERE name = ? AND credential_id = ?",
            (name, credential_id),
        ).fetchone()
        if row is None:
            return None
        try:
            key = AESGCM(self._key).decrypt(
                bytes(row[0])[:12], bytes(row[0])[12:], _key_context(credential_id) + name.encode()
            )
        except (InvalidTag, ValueError):
            return None  # moved from another account, or altered: not this account's key
        return key, int(row[1])

    def use_credential(self, name: str, credential_id: bytes, sign_count: int, now_us: int) -> bool:
        """Record a sign-in with the credential and its new counter; False when the counter
        does not grow over the stored one (a clone, or a replay racing this one). Counters
        that stay 0 are authenticators without one: allowed, the challenge being single-use."""
        cur = self._exec(
            "UPDATE webauthn_credentials SET sign_count = ?, last_used_at = ? "
            "WHERE name = ? AND credential_id = ? AND (sign_count < ? OR (sign_count = 0 "
            "AND ? = 0))",
            (sign_count, now_us, name, credential_id, sign_count, sign_count),
        )
        return cur.rowcount == 1

    def remove_credential(self, name: str, credential_id: bytes) -> bool:
        """Forget one of the account's credentials; False if it had no such one."""
        cur = self._exec(
            "DELETE FROM webauthn_credentials WHERE name = ? AND credential_id = ?",
            (name, credential_id),
        )
        return cur.rowcount == 1

    def _code_hash(self, name: str, code: str) -> str:
        normal = code.strip().lower().replace("-", "").replace(" ", "")
        msg = b"recovery\x00" + name.encode() + b"\x00" + normal.encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()


def _key_context(credential_id: bytes) -> bytes:
    return b"webauthn\x00" + hashlib.sha256(credential_id).digest() + b"\x00"


@dataclass(frozen=True)
class SecurityKey:
    """A WebAuthn credential of an account, as listed (its public key stays in the file)."""

    credential_id: bytes
    label: str
    sign_count: int
    created_at: int
    last_used_at: int | None

    @property
    def key_id(self) -> str:
        """The credential id as base64url text (in pages and forms)."""
        return base64.urlsafe_b64encode(self.credential_id).decode("ascii").rstrip("=")


def _recovery_code() -> str:
    raw = base64.b32encode(secrets.token_bytes(8)).decode("ascii").lower()[:10]
    return f"{raw[:5]}-{raw[5:]}"


def _roles(roles: Sequence[str]) -> list[str]:
    if isinstance(roles, str):
        raise InvalidArgument(f"roles={roles!r} must be a list of role names, such as ['dpo']")
    out = sorted(set(roles))
    Principal("check", tuple(out))  # validates each role name
    return out


def _user(cur: sqlite3.Cursor, row: Sequence[Any]) -> User:
    doc = {d[0]: v for d, v in zip(cur.description, row, strict=True)}
    return User(
        name=doc["name"],
        roles=tuple(json.loads(doc["roles"])),
        disabled=bool(doc["disabled"]),
        password_set_at=doc["password_set_at"],
        must_change=bool(doc["must_change"]),
        enrolled=doc["totp_secret"] is not None or bool(doc["security_keys"]),
        created_at=doc["created_at"],
        last_sign_in_at=doc["last_sign_in_at"],
        recovery_left=len(json.loads(doc["recovery"])),
        password_hash=doc["password_hash"],
        totp=doc["totp_secret"] is not None,
        security_keys=int(doc["security_keys"]),
    )


def open_users(
    store: Store, *, rules: PasswordRules | None = None, hasher: PasswordHasher | None = None
) -> UserDirectory:
    """The accounts of ``store``'s console (``STORE/users.sqlite``); the caller closes it."""
    key = derive_secrets_key(store.keyring.pseudonym_key())
    return UserDirectory(store.users_path, key, rules=rules, hasher=hasher)
