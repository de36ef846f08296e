"""The server and its HTTP door, in-process, with a real HTTP client (aiohttp's) on a free port.

Each test starts a :class:`~sampledrec.serve.Server` on ``127.0.0.1:0`` in its own event loop,
talks to it over TCP, stops it, and then reads the store's log: what the server answered must
be what the log holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sampledrec import Store, draw
from sampledrec.cli import main
from sampledrec.errors import InvalidArgument, NoOpenRecording
from sampledrec.log.format import T_DECISION
from sampledrec.log.writer import iter_entries
from sampledrec.serve import (
    HttpConfig,
    Listen,
    OpenRecordings,
    Server,
    ServerConfig,
    event_loop_factory,
    http_door,
    parse_decision_request,
)
from sampledrec.serve.events import LOGGER_NAME, JsonFormatter

TOKEN = "s3cr3t-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.25"
purpose = "quality"
retention = "6 months"

[default]
rate = "0.05"
purpose = "quality"
retention = "6 months"
"""


@pytest.fixture
def store(tmp_path: Path) -> Store:
    (tmp_path / "policy.toml").write_text(POLICY)
    return Store.init(tmp_path / "store", policy=tmp_path / "policy.toml")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


Scenario = Callable[[Server, str, aiohttp.ClientSession], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(
    store: Store, config: HttpConfig, *, ssl_client: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Server, str, aiohttp.ClientSession]]:
    server = Server(store, {"http": http_door(config)}, shutdown_grace=5)
    task = asyncio.create_task(server.run())
    try:
        addresses = await server.wait_ready()
        if task.done():
            task.result()  # raises the door's error
        connector = aiohttp.TCPConnector(limit=0, ssl=ssl_client if ssl_client else False)
        async with aiohttp.ClientSession(connector=connector) as session:
            yield server, addresses["http"], session
    finally:
        server.stop()
        await task


def run(store: Store, config: HttpConfig, scenario: Scenario, **kw: Any) -> None:
    async def go() -> None:
        async with serving(store, config, **kw) as (server, url, session):
            await scenario(server, url, session)

    asyncio.run(go())


def token_config(token_file: Path) -> HttpConfig:
    return HttpConfig(Listen("127.0.0.1", 0), token_file=token_file)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: object,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(AUTH if headers is None else headers)}
    async with session.post(f"{url}/v1/decisions", data=data, headers=headers) as r:
        assert r.content_type == "application/json"
        return r.status, await r.json()


def decisions_in_log(store: Store) -> list[str | bytes]:
    return [
        e.fields["call_ref"]
        for e in iter_entries(store.log_storage, store.keyring)
        if e.type == T_DECISION
    ]


# -- the decision service ----------------------------------------------------------------------


def test_a_decision_is_the_cli_document_and_is_in_the_log(
    store: Store, token_file: Path, tmp_path: Path
) -> None:
    answers: dict[str, Any] = {}

    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        body = {"call_ref": "c-1", "attributes": {"queue": "sales"}}
        status, doc = await post(session, url, body)
        assert status == 200, doc
        answers["doc"] = doc

    run(store, token_config(token_file), scenario)
    doc = answers["doc"]
    out = io.StringIO()
    cli = ["decide", "--store", str(store.path), "--call-ref", "c-2", "--attr", "queue=sales"]
    assert main([*cli, "--json"], out=out) == 0
    assert set(doc) == set(json.loads(out.getvalue())) | {"warnings"}
    key = store.keyring.epoch_key(doc["epoch_id"]).secret_bytes()
    assert int(doc["draw"]) == draw(key, "c-1")
    assert doc["rule"] == "sales" and doc["rate"] == "0.25" and doc["repeat"] is False
    assert doc["record"] == (int(doc["draw"]) < int(doc["threshold"]))
    assert doc["log_index"] > 0 and doc["warnings"] == []
    entries = list(iter_entries(store.log_storage, store.keyring))
    assert entries[doc["log_index"]].fields["call_ref"] == "c-1"


def test_the_same_call_twice_is_one_decision_and_one_entry(store: Store, token_file: Path) -> None:
    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        _, first = await post(session, url, {"call_ref": "c-1", "attributes": {"queue": "sales"}})
        _, again = await post(session, url, {"call_ref": "c-1", "attributes": {"queue": "x"}})
        assert again["repeat"] is True and first["repeat"] is False
        for name in ("record", "reason", "rule", "draw", "threshold", "decided_at"):
            assert again[name] == first[name], name
        _, binary = await post(session, url, {"call_ref_hex": b"c-1".hex()})
        assert binary["call_ref_hex"] == b"c-1".hex() and binary["call_ref"] is None
        assert binary["repeat"] is False  # bytes are another reference than the same text

    run(store, token_config(token_file), scenario)
    logged = decisions_in_log(store)
    assert logged.count("c-1") == 1 and logged.count(b"c-1") == 1


def test_hundreds_of_concurrent_requests_are_all_answered_and_logged_once(
    store: Store, token_file: Path
) -> None:
    refs = [f"call-{i:04d}" for i in range(300)]
    answers: list[tuple[int, Any]] = []

    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        # Every reference three times, all at once: retries racing their first request.
        bodies = [{"call_ref": r, "attributes": {"queue": "sales"}} for r in refs * 3]
        answers.extend(await asyncio.gather(*(post(session, url, b) for b in bodies)))

    run(store, token_config(token_file), scenario)
    assert all(status == 200 for status, _ in answers)
    by_ref: dict[str, set[tuple[bool, str]]] = {}
    for _, doc in answers:
        by_ref.setdefault(doc["call_ref"], set()).add((doc["record"], doc["draw"]))
    assert sorted(by_ref) == refs and all(len(v) == 1 for v in by_ref.values())
    logged = decisions_in_log(store)
    assert sorted(logged) == refs  # each call once, none lost


def test_unknown_attributes_are_answered_as_warnings(store: Store, token_file: Path) -> None:
    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        status, doc = await post(session, url, {"call_ref": "c-1", "attributes": {"quue": "x"}})
        assert status == 200
        assert len(doc["warnings"]) == 1 and "'quue'" in doc["warnings"][0]
        assert "'queue'" in doc["warnings"][0]  # the suggestion
        assert server.metrics.decision_warnings.value("http") == 1

    run(store, token_config(token_file), scenario)


def test_a_policy_that_declares_its_attributes_refuses_others(
    tmp_path: Path, token_file: Path
) -> None:
    (tmp_path / "p.toml").write_text('[attributes]\nnames = ["queue"]\n' + POLICY)
    store = Store.init(tmp_path / "declared", policy=tmp_path / "p.toml")

    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        status, doc = await post(session, url, {"call_ref": "c-1", "attributes": {"quue": "x"}})
        assert status == 400 and "'quue'" in doc["error"] and "declares" in doc["error"]

    run(store, token_config(token_file), scenario)
    assert decisions_in_log(store) == []


# -- bad input ---------------------------------------------------------------------------------

BAD_BODIES: list[tuple[bytes, str]] = [
    (b"", "not JSON"),
    (b"{call_ref: 1}", "not JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
    (b'"c-1"', "not a JSON object"),
    (b"[" * 5000 + b"]" * 5000, "nests too deeply"),
    (b'{"call_ref": "c", "attributes": {"n": NaN}}', "finite"),
    (b'{"call_ref": "c", "attributes": {"n": 1e999}}', "finite"),
    (b"{}", "exactly one"),
    (b'{"call_ref": "c", "call_ref_hex": "00"}', "exactly one"),
    (b'{"call_ref": 3}', "must be text"),
    (b'{"call_ref": ""}', "empty"),
    (json.dumps({"call_ref": "x" * 257}).encode(), "256"),
    (b'{"call_ref": "a\\ud800"}', "Unicode"),
    (b'{"call_ref_hex": "0g"}', "hexadecimal"),
    (b'{"call_ref_hex": "abc"}', "hexadecimal"),
    (b'{"call_ref_hex": 12}', "hexadecimal"),
    (b'{"callref": "c"}', "did you mean 'call_ref'"),
    (b'{"call_ref": "c", "attributes": ["queue"]}', "JSON object"),
    (b'{"call_ref": "c", "attributes": {"queue": {"a": 1}}}', "text, a number or true/false"),
    (b'{"call_ref": "c", "attributes": {"queue": ["a"]}}', "text, a number or true/false"),
    (b'{"call_ref": "c", "attributes": {"agent": "a\\udfff"}}', "Unicode"),
    (b'{"call_ref": "c", "attributes": {"": "a"}}', "empty"),
    (b'{"call_ref": "c", "caller": 33612345678}', "phone number as text"),
    (b'{"call_ref": "c", "caller": ""}', "phone number as text"),
    (
        json.dumps({"call_ref": "c", "attributes": {f"a{i}": "v" for i in range(65)}}).encode(),
        "at most 64",
    ),
]


def test_bad_input_is_a_400_with_a_json_error_that_says_what_to_do(
    store: Store, token_file: Path
) -> None:
    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        for body, says in BAD_BODIES:
            status, doc = await post(session, url, body)
            assert status == 400, (body[:40], doc)
            assert set(doc) == {"error"} and says in doc["error"], (body[:40], doc)
            assert "Traceback" not in doc["error"] and "33612345678" not in doc["error"]
        # The server still answers, and the log has no decision from those bodies.
        status, _ = await post(session, url, {"call_ref": "fine"})
        assert status == 200

    run(store, token_config(token_file), scenario)
    assert decisions_in_log(store) == ["fine"]


def test_a_dialplan_may_send_a_form(store: Store, token_file: Path) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded", **AUTH}

    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        body = b"call_ref=1733224800.42&attr.queue=sales&caller=%2B33612345678"
        status, doc = await post(session, url, body, form)
        assert status == 200 and doc["call_ref"] == "1733224800.42" and doc["rule"] == "sales"
        status, doc = await post(session, url, b"call_ref_hex=00ff&attr.queue=", form)
        assert status == 200 and doc["call_ref_hex"] == "00ff" and doc["rule"] == "default"
        for body, says in [
            (b"call_ref=a&call_ref=b", "twice"),
            (b"call_ref=a&attr.q=1&attr.q=2", "twice"),
            (b"call_ref=a&attributes=x", "attr.NAME"),
            (b"call_ref=a&queue=sales", "attr.NAME"),
            (b"call_ref=%FF", "UTF-8"),
            (b"call_ref", "form"),
            (b"", "exactly one"),
        ]:
            status, doc = await post(session, url, body, form)
            assert status == 400 and says in doc["error"], (body, doc)
        status, doc = await post(session, url, b"call_ref=a", {"Content-Type": "text/csv", **AUTH})
        assert status == 400 and "neither JSON nor a form" in doc["error"]

    run(store, token_config(token_file), scenario)


def test_too_large_bodies_wrong_routes_and_methods(store: Store, token_file: Path) -> None:
    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        big = json.dumps({"call_ref": "c", "attributes": {"a": "x" * 70_000}}).encode()
        status, doc = await post(session, url, big)
        assert status == 413 and "larger than 65536 bytes" in doc["error"]
        async with session.get(f"{url}/v1/decisions", headers=AUTH) as r:
            assert r.status == 405 and "POST" in (await r.json())["error"]
            assert r.headers["Allow"] == "POST"
        async with session.post(f"{url}/v2/decide", headers=AUTH) as r:
            assert r.status == 404 and "/v1/decisions" in (await r.json())["error"]

    run(store, token_config(token_file), scenario)


# -- authentication ----------------------------------------------------------------------------


def test_the_bearer_token_is_required_except_for_healthz(store: Store, token_file: Path) -> None:
    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        body = {"call_ref": "c-1"}
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"},
                        {"Authorization": f"Bearer {TOKEN}x"}):  # fmt: skip
            async with session.post(f"{url}/v1/decisions", json=body, headers=headers) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert "token" in (await r.json())["error"]
        async with session.get(f"{url}/metrics") as r:
            assert r.status == 401
        async with session.get(f"{url}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        status, doc = await post(session, url, body, {"Authorization": f"bearer  {TOKEN} "})
        assert status == 200 and doc["call_ref"] == "c-1"

    run(store, token_config(token_file), scenario)
    assert decisions_in_log(store) == ["c-1"]


def test_the_http_door_refuses_to_start_without_authentication(
    tmp_path: Path, token_file: Path
) -> None:
    with pytest.raises(InvalidArgument, match="needs authentication"):
        HttpConfig(Listen("127.0.0.1", 0))
    with pytest.raises(InvalidArgument, match="loopback"):
        HttpConfig(Listen("0.0.0.0", 8480), insecure_no_auth=True)
    assert HttpConfig(Listen("::1", 0), insecure_no_auth=True).auth == "none"
    weak = tmp_path / "weak"
    weak.write_text("short")
    with pytest.raises(InvalidArgument, match="at least 16 characters"):
        HttpConfig(Listen("127.0.0.1", 0), token_file=weak)
    with pytest.raises(InvalidArgument, match="No such file"):
        HttpConfig(Listen("127.0.0.1", 0), token_file=tmp_path / "missing")
    with pytest.raises(InvalidArgument, match="together"):
        HttpConfig(Listen("127.0.0.1", 0), token_file=token_file, tls_cert=token_file)
    with pytest.raises(InvalidArgument, match="cannot be loaded"):
        HttpConfig(Listen("127.0.0.1", 0), token_file=token_file, tls_cert=weak, tls_key=weak)
    assert "TOKEN" not in repr(token_config(token_file)) and TOKEN not in repr(
        token_config(token_file)
    )


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, Any] | None, **ext: Any
    ) -> x509.Certificate:
        issuer_name, issuer_key = issuer if issuer else (subject, key)
        b = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if issuer is None:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
        if "san" in ext:
            b = b.add_extension(x509.SubjectAlternativeName(ext["san"]), critical=False)
        if "usage" in ext:
            b = b.add_extension(x509.ExtendedKeyUsage([ext["usage"]]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    files = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("test CA", ca_key, None)
    pairs = {
        "ca": (ca, ca_key),
        "server": (
            None,
            ec.generate_private_key(ec.SECP256R1()),
        ),
        "client": (None, ec.generate_private_key(ec.SECP256R1())),
    }
    server_key, client_key = pairs["server"][1], pairs["client"][1]
    pairs["server"] = (
        cert("sampledrec", server_key, ("test CA", ca_key),
             san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
             usage=ExtendedKeyUsageOID.SERVER_AUTH),
        server_key,
    )  # fmt: skip
    pairs["client"] = (
        cert("pbx-1", client_key, ("test CA", ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH),
        client_key,
    )
    for label, (c, k) in pairs.items():
        assert c is not None
        files[f"{label}.crt"] = folder / f"{label}.crt"
        files[f"{label}.crt"].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        files[f"{label}.key"] = folder / f"{label}.key"
        files[f"{label}.key"].write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


def test_mutual_tls_refuses_a_client_without_a_certificate(store: Store, tmp_path: Path) -> None:
    pem = _certificates(tmp_path)
    config = HttpConfig(
        Listen("127.0.0.1", 0),
        tls_cert=pem["server.crt"],
        tls_key=pem["server.key"],
        tls_client_ca=pem["ca.crt"],
    )
    assert config.auth == "mtls"
    anonymous = ssl.create_default_context(cafile=pem["ca.crt"])
    with_cert = ssl.create_default_context(cafile=pem["ca.crt"])
    with_cert.load_cert_chain(pem["client.crt"], pem["client.key"])

    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        assert url.startswith("https://")
        status, doc = await post(session, url, {"call_ref": "c-1"}, headers={})
        assert status == 200 and doc["call_ref"] == "c-1"
        connector = aiohttp.TCPConnector(ssl=anonymous)
        async with aiohttp.ClientSession(connector=connector) as bare:
            with pytest.raises(aiohttp.ClientError):
                async with bare.post(f"{url}/v1/decisions", json={"call_ref": "c-2"}) as r:
                    await r.read()

    run(store, config, scenario, ssl_client=with_cert)
    assert decisions_in_log(store) == ["c-1"]


# -- pause and resume --------------------------------------------------------------------------


class FakeRecording:
    """A recording as a recording door would register it: it only notes the calls."""

    def __init__(self) -> None:
        self.paused = False
        self.calls: list[tuple[str, str]] = []

    async def pause(self, *, by: str) -> bool:
        self.calls.append(("pause", by))
        was, self.paused = self.paused, True
        return not was

    async def resume(self, *, by: str) -> bool:
        self.calls.append(("resume", by))
        was, self.paused = self.paused, False
        return was


def test_pause_and_resume_act_on_an_open_recording(store: Store, token_file: Path) -> None:
    recording, binary = FakeRecording(), FakeRecording()

    async def call(session: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
        async with session.post(path, headers=AUTH) as r:
            return r.status, await r.json()

    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        status, doc = await call(session, f"{url}/v1/calls/c%2F1/pause")
        assert (status, doc) == (404, {"error": "no open recording for this call"})
        server.recordings.open("c/1", recording, door="test")
        server.recordings.open(b"\x00\xff", binary, door="test")
        metrics = await scrape(session, url)
        assert metrics["sampledrec_calls_open"] == 2
        status, doc = await call(session, f"{url}/v1/calls/c%2F1/pause")
        assert status == 200
        assert doc == {"call_ref": "c/1", "call_ref_hex": None, "paused": True,
                       "changed": True, "door": "test"}  # fmt: skip
        _, doc = await call(session, f"{url}/v1/calls/c%2F1/pause")
        assert doc["paused"] is True and doc["changed"] is False
        _, doc = await call(session, f"{url}/v1/calls/c%2F1/resume")
        assert doc["paused"] is False and doc["changed"] is True
        _, doc = await call(session, f"{url}/v1/calls/00ff/pause?encoding=hex")
        assert doc["call_ref_hex"] == "00ff" and doc["paused"] is True
        status, _ = await call(session, f"{url}/v1/calls/00ff/pause")  # the text "00ff"
        assert status == 404
        status, doc = await call(session, f"{url}/v1/calls/0/pause?encoding=hex")
        assert status == 400 and "hexadecimal" in doc["error"]
        server.recordings.close("c/1")
        status, _ = await call(session, f"{url}/v1/calls/c%2F1/resume")
        assert status == 404

    run(store, token_config(token_file), scenario)
    assert recording.calls == [("pause", "http"), ("pause", "http"), ("resume", "http")]
    assert binary.calls == [("pause", "http")]


def test_the_registry_of_open_recordings() -> None:
    changes: list[int] = []
    registry = OpenRecordings(on_change=lambda: changes.append(len(registry)))
    registry.open("c1", FakeRecording(), door="siprec")
    with pytest.raises(InvalidArgument, match="already open"):
        registry.open("c1", FakeRecording(), door="siprec")
    registry.open(b"c1", FakeRecording(), door="siprec")  # another reference
    with pytest.raises(InvalidArgument, match="OpenRecording"):
        registry.open("c2", object(), door="x")  # type: ignore[arg-type]
    assert "c1" in registry and sorted(map(repr, registry)) == ["'c1'", "b'c1'"]
    with pytest.raises(NoOpenRecording, match="no open recording for this call"):
        asyncio.run(registry.pause("c2", by="dtmf"))
    registry.close("c1")
    registry.close("c1")  # closing twice is harmless
    assert changes == [1, 2, 1]


# -- health, metrics, logs ---------------------------------------------------------------------


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics", headers=AUTH) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def test_metrics_are_prometheus_text_and_tell_the_truth(store: Store, token_file: Path) -> None:
    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        before = await scrape(session, url)
        assert before["sampledrec_calls_open"] == 0
        assert before["sampledrec_log_queue_depth"] >= 0
        assert before["sampledrec_log_failed"] == 0
        refs = [f"m-{i}" for i in range(40)]
        docs = [(await post(session, url, {"call_ref": r}))[1] for r in refs]
        await post(session, url, {"call_ref": refs[0]})  # a repeat is answered, and counted
        await post(session, url, b"{")
        after = await scrape(session, url)
        declined = sum(not d["record"] for d in docs) + (not docs[0]["record"])
        assert after["sampledrec_calls_decided_total{door=http}"] == 41
        assert after["sampledrec_calls_declined_total{door=http}"] == declined
        assert "sampledrec_calls_recorded_total{door=http}" not in after  # no door records yet
        assert after["sampledrec_http_requests_total{code=200,route=/v1/decisions}"] == 41
        assert after["sampledrec_http_requests_total{code=400,route=/v1/decisions}"] == 1
        assert after["sampledrec_decision_seconds_count{door=http}"] == 41
        assert after["sampledrec_decision_seconds_bucket{door=http,le=+Inf}"] == 41
        assert any(k.startswith("sampledrec_build_info{version=") for k in after)

    run(store, token_config(token_file), scenario)


def test_logs_are_json_lines_without_tokens_callers_or_references(
    store: Store, token_file: Path
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    caller, ref = "+33612345678", "secret-call-ref-4711"

    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        await post(session, url, {"call_ref": ref, "caller": caller, "attributes": {"q": "v"}})
        await post(session, url, {"call_ref": ref, "caller": "+33"}, {"Authorization": "x"})
        async with session.post(f"{url}/v1/calls/{ref}/pause", headers=AUTH) as r:
            assert r.status == 404

    try:
        run(store, token_config(token_file), scenario)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    lines = stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    names = [e["event"] for e in events]
    assert {"listening", "ready", "http_request", "stopping", "stopped"} <= set(names)
    assert {"decision_warning"} <= set(names)
    requests = [e for e in events if e["event"] == "http_request"]
    assert {e["route"] for e in requests} == {"/v1/decisions", "/v1/calls/{ref}/pause"}
    assert {e["status"] for e in requests} == {200, 401, 404}
    text = stream.getvalue()
    for secret in (caller, "33612345678", ref, TOKEN):
        assert secret not in text
    assert all({"ts", "level", "event"} <= set(e) for e in events)


def test_a_log_that_cannot_be_written_is_a_503_and_an_unhealthy_server(
    store: Store, token_file: Path
) -> None:
    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        assert server.services is not None
        await asyncio.to_thread(server.services.log.close)
        status, doc = await post(session, url, {"call_ref": "c-1"})
        assert status == 503 and "not decided" in doc["error"]

    run(store, token_config(token_file), scenario)


def test_a_request_in_flight_when_stopping_is_answered_and_durable(
    store: Store, token_file: Path
) -> None:
    answers: list[tuple[int, Any]] = []

    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        assert server.services is not None
        sampler = server.services.sampler
        decide = sampler.decide
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow(*args: Any, **kw: Any) -> Any:
            loop.call_soon_threadsafe(gate.set)
            import time

            time.sleep(0.3)  # the stop arrives while this decision is under way
            return decide(*args, **kw)

        sampler.decide = slow  # type: ignore[method-assign]
        pending = asyncio.ensure_future(post(session, url, {"call_ref": "late"}))
        await gate.wait()
        server.stop()
        answers.append(await pending)

    run(store, token_config(token_file), scenario)
    assert answers and answers[0][0] == 200
    assert decisions_in_log(store) == ["late"]


# -- configuration -----------------------------------------------------------------------------


def test_the_config_file_and_its_mistakes(tmp_path: Path, token_file: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        '[server]\nshutdown_grace = 3\ndecide_workers = 2\nevent_loop = "asyncio"\n\n[http]\n'
        'listen = "127.0.0.1:0"\ntoken_file = "token"\n'
    )
    loaded = ServerConfig.load(config)
    assert list(loaded.doors) == ["http"] and loaded.shutdown_grace == 3.0
    assert loaded.event_loop == "asyncio"
    over = ServerConfig.load(config, overrides={"server": {"event_loop": "uvloop"}})
    assert over.event_loop == "uvloop"
    http = loaded.settings["http"]
    assert isinstance(http, HttpConfig) and http.token_file == token_file
    over = ServerConfig.load(config, overrides={"http": {"listen": "[::1]:9000"}})
    http = over.settings["http"]
    assert isinstance(http, HttpConfig) and str(http.listen) == "[::1]:9000"
    for text, says in [
        ("[htp]\n", "no [htp] section"),
        ('[http]\nlisten = "127.0.0.1:0"\ntoken = "x"\n', "no setting 'token'"),
        ('[http]\nlisten = "localhost"\ninsecure_no_auth = true\n', "not HOST:PORT"),
        ("[server]\nshutdown_grace = -1\n", "shutdown_grace"),
        ("[server]\ndecide_workers = 0\n", "decide_workers"),
        ('[server]\nlog_level = "loud"\n', "log_level"),
        ('[server]\nevent_loop = "trio"\n', "event_loop must be one of auto, uvloop, asyncio"),
        ("[server]\n", "no front door"),
        ("[http\n", "not TOML"),
    ]:
        config.write_text(text)
        with pytest.raises(InvalidArgument, match=re.escape(says)):
            ServerConfig.load(config)
    with pytest.raises(InvalidArgument, match="No such file"):
        ServerConfig.load(tmp_path / "none.toml")


def test_the_event_loop_is_the_one_asked_for(store: Store, token_file: Path) -> None:
    """``event_loop_factory`` makes the loop named; the in-process tests run on the loop the test
    command's pass asks for (SAMPLEDREC_TEST_EVENT_LOOP: asyncio's, then uvloop)."""
    import uvloop

    wanted = os.environ.get("SAMPLEDREC_TEST_EVENT_LOOP", "asyncio")

    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        is_uv = isinstance(asyncio.get_running_loop(), uvloop.Loop)
        assert is_uv == (wanted == "uvloop")
        status, doc = await post(session, url, {"call_ref": "loop-1"})
        assert status == 200 and doc["call_ref"] == "loop-1"

    run(store, token_config(token_file), scenario)
    # What run_server runs on (the command's ready event names it: test_serve_process).
    for name, uv in [("auto", True), ("uvloop", True), ("asyncio", False)]:
        loop = event_loop_factory(name)()
        try:
            assert isinstance(loop, uvloop.Loop) == uv
            assert isinstance(loop, asyncio.SelectorEventLoop) == (not uv)
        finally:
            loop.close()
    with pytest.raises(InvalidArgument, match="choose one of auto, uvloop, asyncio"):
        event_loop_factory("trio")


def test_without_uvloop_auto_falls_back_and_uvloop_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    loop = event_loop_factory("auto")()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    with pytest.raises(InvalidArgument, match=r"pip install 'sampledrec\[serve\]'"):
        event_loop_factory("uvloop")


def test_the_cli_refuses_mistakes_before_listening(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve = ["serve", "--store", str(store.path)]
    assert main([*serve, "--http", "127.0.0.1:0"]) == 2
    assert "needs authentication" in capsys.readouterr().err
    assert main([*serve, "--http", "0.0.0.0:0", "--insecure-no-auth"]) == 2
    assert main(["serve", "--store", str(tmp_path / "none"), "--http", "127.0.0.1:0",
                 "--insecure-no-auth"]) == 3  # fmt: skip
    assert main([*serve]) == 2
    assert "no front door" in capsys.readouterr().err


def test_a_port_in_use_is_a_usage_error(store: Store, token_file: Path) -> None:
    async def scenario(server: Server, url: str, session: aiohttp.ClientSession) -> None:
        port = int(url.rsplit(":", 1)[1])
        other = Server(
            store, {"http": http_door(HttpConfig(Listen("127.0.0.1", port), token_file=token_file))}
        )
        with pytest.raises(InvalidArgument, match="cannot listen"):
            await other.run()

    run(store, token_config(token_file), scenario)


def test_parse_decision_request_never_echoes_the_caller() -> None:
    request = parse_decision_request(b'{"call_ref": "c", "caller": "+33612345678"}')
    assert request.caller == "+33612345678" and "3361" not in repr(request)
    assert parse_decision_request(b'{"call_ref": "c", "attributes": {"x": null}}').attributes == {}


def test_module_doctests() -> None:
    import doctest

    import sampledrec.serve.decisions
    import sampledrec.serve.metrics
    import sampledrec.serve.recordings

    for module in (
        sampledrec.serve.decisions,
        sampledrec.serve.metrics,
        sampledrec.serve.recordings,
    ):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
