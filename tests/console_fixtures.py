"""What the console's tests share: a store with recordings in two queues, accounts of every
role, and a signed-in HTTP client (Starlette's TestClient over HTTPS, so that the session cookie
is ``Secure`` and ``__Host-`` as in production)."""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from argon2 import PasswordHasher
from starlette.testclient import TestClient

from sampledrec import FixedClock, Principal, Store
from sampledrec.accounts import Accounts, UserDirectory
from sampledrec.accounts.totp import code_at
from sampledrec.accounts.users import derive_secrets_key
from sampledrec.log.writer import DecisionLog, iter_entries
from sampledrec.serve.console import Console
from sampledrec.vault.audio import AudioFormat, synthetic_speech
from sampledrec.vault.recorder import Vault

from .recording import write_call

AT = "2030-03-04T10:00:00Z"
POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every sales call is recorded"
retention = "3 months"

[[rules]]
name = "support"
match = { queue = "support" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every support call is recorded"
retention = "3 months"

[default]
rate = "0"
purpose = "quality"
retention = "6 months"

[roles.qa_reviewer]
permissions = ["list", "listen"]
scope = { queue = "sales" }
"""
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "violet lantern across the quiet harbour"
#: Cheap argon2id parameters: the tests check the flows, not the cost.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
ROLES = {
    "rita": ["qa_reviewer"],
    "sam": ["supervisor"],
    "dora": ["dpo"],
    "aldo": ["auditor"],
    "ada": ["admin"],
}
PCM = AudioFormat("pcm16", 8000, 1)


@dataclass
class World:
    store: Store
    log: DecisionLog
    clock: FixedClock
    console: Console
    users: UserDirectory
    recordings: dict[str, str]  # queue -> recording id
    tmp: Path

    def client(self) -> TestClient:
        return TestClient(self.console.app, base_url="https://testserver", follow_redirects=False)

    def accesses(self) -> list[dict[str, Any]]:
        self.log.flush()
        return [
            e.fields
            for e in iter_entries(self.store.log_storage, self.store.keyring)
            if e.type_name == "access"
        ]

    def code(self, name: str) -> str:
        secret = self.users.totp_secret(name)
        assert secret is not None
        return code_at(secret, self.clock.now())

    def export(self, recording_id: str) -> bytes:
        out = self.tmp / f"export-{recording_id}.wav"
        if not out.exists():
            with Vault(self.store, self.log, clock=self.clock) as vault:
                vault.export(recording_id, out)
        return out.read_bytes()


def settings(**changes: Any) -> SimpleNamespace:
    base = {
        "tls": True,
        "idle_minutes": 15,
        "session_hours": 12,
        "password_min_length": 12,
        "password_max_age_days": 90,
    }
    return SimpleNamespace(**{**base, **changes})


def make_world(tmp: Path, *, seconds: float = 3.0, **changes: Any) -> Generator[World, None, None]:
    (tmp / "p.toml").write_text(POLICY)
    store = Store.init(tmp / "s", policy=tmp / "p.toml")
    clock = FixedClock(AT)
    log = store.open_log(clock=clock)
    sampler = store.sampler(clock=clock, log=log)
    recordings = {}
    with Vault(store, log, clock=clock) as vault:
        for n, queue in enumerate(("sales", "support")):
            attrs = {"queue": queue}
            decision = sampler.decide(f"call-{queue}", attrs)
            audio = synthetic_speech(seconds, seed=n)
            recordings[queue] = write_call(vault, decision, audio, PCM, attrs=attrs)
    key = derive_secrets_key(store.keyring.pseudonym_key())
    users = UserDirectory(store.users_path, key, hasher=FAST_HASHER)
    console = Console(store, log, settings(**changes), clock=clock, users=users)
    accounts = Accounts(users, console.vault, clock=clock)
    for name, roles in ROLES.items():
        accounts.add(Principal.owner(), name, roles, PASSWORD)
    world = World(store, log, clock, console, users, recordings, tmp)
    try:
        yield world
    finally:
        console.close()
        sampler.close()
        log.close()


CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SECRET = re.compile(r'<code id="secret">([A-Z2-7]+)</code>')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, html
    return match.group(1)


def sign_in(world: World, client: TestClient, name: str, *, enrolled: bool = False) -> None:
    """Sign ``name`` in through every step (enrolment and the password change the first time)."""
    page = client.get("/sign-in")
    r = client.post(
        "/sign-in",
        data={"csrf": csrf_of(page.text), "name": name, "password": _password(world, name)},
    )
    assert r.status_code == 303, r.text
    if r.headers["location"].startswith("/sign-in/enrol"):
        page = client.get(r.headers["location"])
        secret = SECRET.search(page.text)
        assert secret
        code = code_at(secret.group(1), world.clock.now())
        r = client.post("/sign-in/enrol", data={"csrf": csrf_of(page.text), "code": code})
        assert r.status_code == 200, r.text
        then = re.search(r'id="continue" href="([^"]+)"', r.text)
        assert then
        if then.group(1).startswith("/sign-in/password"):
            page = client.get(then.group(1))
            r = client.post(
                "/sign-in/password",
                data={
                    "csrf": csrf_of(page.text),
                    "password": NEW_PASSWORD,
                    "confirm": NEW_PASSWORD,
                },
            )
            assert r.status_code == 303, r.text
        world.clock.advance(seconds=31)  # the next code is a new time step
        return
    assert r.headers["location"].startswith("/sign-in/code")
    page = client.get(r.headers["location"])
    r = client.post("/sign-in/code", data={"csrf": csrf_of(page.text), "code": world.code(name)})
    assert r.status_code == 303, r.text
    world.clock.advance(seconds=31)


def _password(world: World, name: str) -> str:
    user = world.users.get(name)
    assert user is not None
    return PASSWORD if user.must_change else NEW_PASSWORD


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files in ``folder``)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "console.pem", folder / "console.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def recorded_store(tmp: Path, seconds: float = 4.0) -> tuple[Store, dict[str, str]]:
    """A store (real clock) with one recording in each queue."""
    (tmp / "p.toml").write_text(POLICY)
    store = Store.init(tmp / "s", policy=tmp / "p.toml")
    recordings = {}
    with store.open_log() as log, Vault(store, log) as vault:
        sampler = store.sampler(log=log)
        try:
            for n, queue in enumerate(("sales", "support")):
                attrs = {"queue": queue}
                decision = sampler.decide(f"call-{queue}", attrs)
                audio = synthetic_speech(seconds, seed=n)
                recordings[queue] = write_call(vault, decision, audio, PCM, attrs=attrs)
        finally:
            sampler.close()
    return store, recordings
