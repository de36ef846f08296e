"""The dialplan examples and the operations guide's server config agree with the server.

No Asterisk, FreeSWITCH or Twilio runs here, so the request each dialplan sends is taken from
the example file as written, its channel variables replaced with sample values, posted to a real
server the way the platform would (a form), and the dialplan's own test of the answer (a
regular expression on the response text) is applied to what the server answered. The media
examples then open the stream they configure (the AudioSocket UUID, the TwiML's url and
parameters, the fork's url and metadata) with the tests' protocol clients, and the recording
is read back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import tomllib
import urllib.parse
import uuid
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest

from sampledrec import Store
from sampledrec.ingest.mediastreams import parse_fork_metadata
from sampledrec.serve import HttpConfig, Listen, ServerConfig
from sampledrec.serve.streams import StreamsConfig

from .test_serve import AUTH, _certificates, run, token_config
from .test_serve_media import TOKEN as MEDIA_TOKEN
from .test_serve_media import audiosocket_call, mulaw, pcm, recordings, serving, twilio_call

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {"UNIQUEID": "1733224800.42", "ARG1": "sales", "CALLERID(num)": "+33612345678"}


def asterisk_body() -> str:
    text = (ROOT / "examples" / "asterisk-decide.conf").read_text()
    (line,) = [x for x in text.splitlines() if "CURL(${SAMPLEDREC_URL}," in x]
    data = line.split("CURL(${SAMPLEDREC_URL},", 1)[1].rsplit(")})", 1)[0]

    def value(m: re.Match[str]) -> str:
        return urllib.parse.quote(SAMPLES[m[1]], safe="")  # URIENCODE

    return re.sub(r"\$\{URIENCODE\(\$\{(.+?)\}\)\}", value, data)


def asterisk_regex() -> str:
    text = (ROOT / "examples" / "asterisk-decide.conf").read_text()
    return re.search(r'REGEX\("([^"]+)" \$\{DECISION\}\)', text)[1]  # type: ignore[index]


def freeswitch_body_and_regex() -> tuple[str, str]:
    text = (ROOT / "examples" / "freeswitch-decide.xml").read_text()
    data = re.search(r'application="curl" data="([^"]+)"', text)[1]  # type: ignore[index]
    body = data.split(" post ", 1)[1].replace("&amp;", "&").replace("${uuid}", "8f0c-uuid")
    regex = re.search(r"curl_response_data\}\" expression='([^']+)'", text)[1]  # type: ignore[index]
    return body, regex


@pytest.mark.parametrize("platform", ["asterisk", "freeswitch"])
def test_the_dialplans_request_is_answered_and_their_test_reads_the_answer(
    tmp_path: Path, platform: str
) -> None:
    store = Store.init(tmp_path / "store")
    token = tmp_path / "token"
    token.write_text(AUTH["Authorization"].split()[1])
    if platform == "asterisk":
        body, regex = asterisk_body(), asterisk_regex()
    else:
        body, regex = freeswitch_body_and_regex()
    answers: list[tuple[int, str]] = []

    async def scenario(server: object, url: str, session: aiohttp.ClientSession) -> None:
        headers = {"Content-Type": "application/x-www-form-urlencoded", **AUTH}
        async with session.post(f"{url}/v1/decisions", data=body, headers=headers) as r:
            answers.append((r.status, await r.text()))

    run(store, token_config(token), scenario)
    ((status, text),) = answers
    assert status == 200, text
    doc = json.loads(text)
    assert doc["call_ref"] in ("1733224800.42", "8f0c-uuid") and doc["rule"] == "default"
    assert bool(re.search(regex, text)) == doc["record"]
    # The dialplan's test also tells a selected call from one that is not: try both answers.
    assert re.search(regex, text.replace('"record": false', '"record": true'))
    assert not re.search(regex, text.replace('"record": true', '"record": false'))


def test_the_operations_guide_config_loads(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    section = guide.split("## Running the server", 1)[1]
    toml = re.search(r"```toml\n(.*?)```", section, re.DOTALL)[1]  # type: ignore[index]
    (tmp_path / "serve.toml").write_text(toml)
    (tmp_path / "token").write_text("a" * 32)
    pem = _certificates(tmp_path)  # server.crt and server.key, as the file names them
    assert pem["server.crt"] == tmp_path / "server.crt"
    config = ServerConfig.load(tmp_path / "serve.toml")
    http = config.settings["http"]
    assert isinstance(http, HttpConfig) and http.auth == "token" and http.ssl_context
    assert http.listen == Listen("0.0.0.0", 8443)
    assert tomllib.loads(toml)["server"]["shutdown_grace"] == config.shutdown_grace


# -- the media-stream examples: each platform's configuration, exercised against a server -------

SALES_POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "1"
purpose = "legal_obligation"
legal_basis = "Test: every sales call of the examples is recorded"
retention = "3 months"

[default]
rate = "0"
purpose = "quality"
retention = "6 months"
"""
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def sales_store(tmp_path: Path) -> Store:
    (tmp_path / "policy.toml").write_text(SALES_POLICY)
    return Store.init(tmp_path / "media-store", policy=tmp_path / "policy.toml")


@pytest.fixture
def media_token(tmp_path: Path) -> Path:
    path = tmp_path / "streams-token"
    path.write_text(MEDIA_TOKEN)
    return path


def test_asterisk_audiosocket_example(sales_store: Store, media_token: Path) -> None:
    text = (ROOT / "examples" / "asterisk-audiosocket.conf").read_text()
    assert "Set(CALLREF=${UUID()})" in text  # AudioSocket() names its stream with a UUID
    (curl,) = [x for x in text.splitlines() if "CURL(${SAMPLEDREC_URL}," in x]
    data = curl.split("CURL(${SAMPLEDREC_URL},", 1)[1].rsplit(")})", 1)[0]
    regex = re.search(r'REGEX\("([^"]+)" \$\{DECISION\}\)', text)[1]  # type: ignore[index]
    socket = re.search(r"AudioSocket\((\$\{\w+\}),\$\{(\w+)\}\)", text)
    assert socket is not None and "call_ref=" + socket[1] in data  # one reference for both
    (listen,) = re.findall(rf"^{socket[2]}=(\S+)$", text, re.M)
    assert Listen.parse(listen, "the example's AudioSocket address").loopback
    call = uuid.uuid4()
    body = data.replace(socket[1], str(call))
    audio = pcm(1.0, 41)

    async def go() -> None:
        async with serving(sales_store, media_token) as s:
            async with s.session.post(f"{s.http}/v1/decisions", data=body, headers=FORM) as r:
                answer = await r.text()
            assert r.status == 200 and json.loads(answer)["record"]
            assert re.search(regex, answer)  # the dialplan takes the recording branch
            await audiosocket_call(s.audiosocket, call, audio)

    asyncio.run(go())
    _, recorded = recordings(sales_store)[str(call)]
    assert recorded == audio


def test_twiml_stream_example(sales_store: Store, media_token: Path, tmp_path: Path) -> None:
    root = ElementTree.parse(ROOT / "examples" / "twiml-stream.xml").getroot()
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None
    url = stream.attrib["url"]
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.path, parts.query) == ("wss", "/v1/streams/twilio", "")
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    assert set(params) == {StreamsConfig.call_ref_parameter}  # what the door reads
    auth = tmp_path / "twilio-auth-token"
    auth.write_text("f" * 32)
    ref = "CA" + uuid.uuid4().hex
    params = {name: value.replace("{{CallSid}}", ref) for name, value in params.items()}
    inbound = mulaw(8000, 42)

    async def go() -> None:
        # As the comment says: twilio_stream_url is exactly the example's url, and Twilio signs it.
        options: dict[str, Any] = {"twilio_auth_token_file": auth, "twilio_stream_url": url}
        async with serving(sales_store, media_token, **options) as s:
            body = {"call_ref": ref, "attributes": {"queue": "sales"}}
            async with s.session.post(f"{s.http}/v1/decisions", json=body) as r:
                assert (await r.json())["record"]
            mac = hmac.new(b"f" * 32, url.encode(), hashlib.sha1).digest()
            headers = {"X-Twilio-Signature": base64.b64encode(mac).decode()}
            await twilio_call(s, params, inbound, inbound, headers=headers)

    asyncio.run(go())
    _, recorded = recordings(sales_store)[ref]
    assert recorded[0::2] == inbound


def test_freeswitch_audio_fork_example(sales_store: Store, media_token: Path) -> None:
    text = (ROOT / "examples" / "freeswitch-audio-fork.xml").read_text()
    data = re.search(r'application="curl" data="([^"]+)"', text)[1]  # type: ignore[index]
    ref = "8f0c2e9a-fork-example"
    body = data.split(" post ", 1)[1].replace("&amp;", "&").replace("${uuid}", ref)
    regex = re.search(r"curl_response_data\}\" expression='([^']+)'", text)[1]  # type: ignore[index]
    fork = re.search(r"\$\{uuid_audio_fork\(\$\{uuid\} start (\S+) (\w+) (\w+) (\{.*\})\)\}", text)
    assert fork is not None
    url, mix, rate, metadata = fork.groups()
    assert urllib.parse.urlsplit(url).path == "/v1/streams/fork"
    meta = parse_fork_metadata(metadata.replace("${uuid}", ref))
    assert meta.call_ref == ref
    assert (meta.channels, meta.sample_rate) == ({"mono": 1, "mixed": 1, "stereo": 2}[mix],
                                                 {"8k": 8000, "16k": 16000}[rate])  # fmt: skip
    user = re.search(r"MOD_AUDIO_BASIC_AUTH_USERNAME=(\w+)", text)[1]  # type: ignore[index]
    assert "MOD_AUDIO_BASIC_AUTH_PASSWORD=$${sampledrec_token}" in text
    audio = pcm(1.0, 43, meta.sample_rate * meta.channels)

    async def go() -> None:
        async with serving(sales_store, media_token) as s:
            async with s.session.post(f"{s.http}/v1/decisions", data=body, headers=FORM) as r:
                answer = await r.text()
            assert r.status == 200 and re.search(regex, answer)
            basic = base64.b64encode(f"{user}:{MEDIA_TOKEN}".encode()).decode()
            ws = await s.session.ws_connect(
                f"{s.ws}/v1/streams/fork", headers={"Authorization": f"Basic {basic}"}
            )
            await ws.send_str(metadata.replace("${uuid}", ref))
            step = meta.sample_rate // 50 * 2 * meta.channels
            for i in range(0, len(audio), step):
                await ws.send_bytes(audio[i : i + step])
            await ws.close()
            await s.settled(1)

    asyncio.run(go())
    row, recorded = recordings(sales_store)[ref]
    assert recorded == audio and not row.truncated and "16000/2" in row.audio_format
