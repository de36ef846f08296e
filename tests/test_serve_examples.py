"""The dialplan examples and the operations guide's server config agree with the server.

No Asterisk or FreeSWITCH runs here, so the request each dialplan sends is taken from the
example file as written, its channel variables replaced with sample values, posted to a real
server the way the platform would (a form), and the dialplan's own test of the answer (a
regular expression on the response text) is applied to what the server answered.
"""

from __future__ import annotations

import json
import re
import tomllib
import urllib.parse
from pathlib import Path

import aiohttp
import pytest

from sampledrec import Store
from sampledrec.serve import HttpConfig, Listen, ServerConfig

from .test_serve import AUTH, _certificates, run, token_config

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
