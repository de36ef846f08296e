"""The DPO's HTML report: content, self-containment, and rendering in headless Chromium.

The browser test runs Debian's ``chromium`` headless and takes a screenshot. It skips when
Chromium is not installed, unless ``SAMPLEDREC_REQUIRE_CHROMIUM=1`` (set by ``./dev test`` when it
runs as root and so can install it): then it fails instead.

Console errors: the page runs no script, so *any* console message means something went wrong (a
blocked fetch, a resource that did not load, a parse problem). Chromium, run with
``--enable-logging=stderr --v=0``, writes every console message to stderr as a line with
``:CONSOLE`` in it (``INFO:CONSOLE:12] "message", source: file:///... (12)``); the test fails
on any such line, and first checks on a page that does fetch something that this method sees it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from sampledrec import FixedClock, Store
from sampledrec.audit.report import binom_cdf, build_report, clopper_pearson, write_report
from sampledrec.errors import AccessDenied, InvalidArgument
from sampledrec.keys.keyring import RevealedKey
from sampledrec.retention.subjects import SubjectRequests
from sampledrec.retention.sweep import Retention
from sampledrec.sampling.sampler import Decision
from sampledrec.vault.access import Principal
from sampledrec.vault.audio import AudioFormat, frames, synthetic_speech
from sampledrec.vault.recorder import Vault

from .conftest import CliRun

PCM = AudioFormat("pcm16", 8000, 1)
T0 = "2030-01-10T09:00:00Z"
POLICY = """
rate_ceiling = "0.25"

[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.2"
purpose = "quality"
retention = "6 months"

[[rules]]
name = "support"
match = { queue = "support" }
rate = "0.25"
purpose = "training"
retention = "7 days"

[[rules]]
name = "disputes"
match = { queue = "billing" }
rate = "0.1"
purpose = "proof"
retention = "6 months"
justification = "Disputes <settled> by phone & no written confirmation exists"

[default]
rate = "0.05"
purpose = "quality"
retention = "6 months"
"""
QUEUES = ("sales", "support", "billing", "other")


class Built:
    def __init__(self, path: Path, decisions: list[Decision], recordings: list[str]) -> None:
        self.path = path
        self.decisions = decisions
        self.recordings = recordings
        self.revealed: list[RevealedKey] = []
        self.hold_id = ""
        self.request_id = ""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("report")
    (root / "p.toml").write_text(POLICY)
    store = Store.init(root / "store", policy=root / "p.toml", simulated=True)
    clock = FixedClock(T0)
    decisions: list[Decision] = []
    recordings: list[str] = []
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        for i in range(400):
            attrs = {"queue": QUEUES[i % 4], "agent": f"agent-{i % 5}"}
            if i == 7:
                attrs["objection"] = "true"
            d = sampler.decide(f"call-{i}", attrs)
            decisions.append(d)
            if d.record and len(recordings) < 6:
                with vault.record(d, audio_format=PCM, attrs=attrs) as rec:
                    for frame in frames(synthetic_speech(0.1, seed=i), PCM, 20):
                        rec.write(frame)
                recordings.append(rec.recording_id)
            clock.advance(seconds=30)
        owner = Principal.owner("dpo-maria")
        vault.recordings(principal=owner)  # an access, granted
        with pytest.raises(AccessDenied):  # an access, denied
            vault.authorize(Principal("eve", ("qa_reviewer",)), "export")
        hold = Retention(vault, clock=clock).hold(
            recordings[:1], reason="Case 42 <court> & co", principal=owner
        )
        requests = SubjectRequests(store, vault, log, clock=clock)
        req = requests.receive(
            "export",
            "+33 6 12 34 56 78",
            principal=owner,
            received_at=clock.now() - timedelta(days=20),
        )
    out = Built(store.path, decisions, recordings)
    out.hold_id = hold.hold_id
    out.request_id = req.request_id
    out.revealed = store.reveal_keys(now=clock.now() + timedelta(days=2))
    store.write_revealed(out.revealed, root / "revealed.json")
    return out


REPORT_AT = FixedClock("2030-01-30T12:00:00Z").now()  # the request is overdue, support expired


@pytest.fixture(scope="module")
def report_html(built: Built) -> str:
    return build_report(
        built.path, revealed_keys=built.path.parent / "revealed.json", now=REPORT_AT
    )


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%" if x else "0%"


# -- statistics -------------------------------------------------------------------------------


def test_binomial_cdf_is_exact() -> None:
    for k, n, p in [(3, 20, 0.1), (50, 1000, 0.05), (0, 5, 0.3), (12, 40, 0.37), (99, 100, 0.99)]:
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert binom_cdf(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-15)
    assert binom_cdf(-1, 5, 0.5) == 0.0 and binom_cdf(5, 5, 0.5) == 1.0


def test_clopper_pearson_known_values() -> None:
    lo, hi = clopper_pearson(5, 10)
    assert (round(lo, 5), round(hi, 5)) == (0.18709, 0.81291)
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025**0.1, abs=1e-12)
    lo, hi = clopper_pearson(10, 10)
    assert lo == pytest.approx(0.025**0.1, abs=1e-12) and hi == 1.0
    lo, hi = clopper_pearson(50_000, 1_000_000)  # fast for large n too
    assert lo < 0.05 < hi and hi - lo < 0.001
    assert clopper_pearson(0, 0) == (0.0, 1.0)


# -- content ----------------------------------------------------------------------------------


def test_report_content(built: Built, report_html: str) -> None:
    page = report_html
    assert page.startswith("<!DOCTYPE html>")
    assert 'id="simulated"' in page and "SIMULATED store" in page
    for section in ("policy", "rates", "retention", "holds", "requests", "accesses"):
        assert f'<section id="{section}">' in page
    assert '<section id="verification">' in page
    # the policy, escaped
    assert "Disputes &lt;settled&gt; by phone &amp; no written confirmation exists" in page
    assert "<settled>" not in page
    assert "<td>7 days</td>" in page and "<td>training</td>" in page
    # realised vs declared: the numbers of the decisions made
    for rule, rate in (("sales", 0.2), ("support", 0.25), ("disputes", 0.1), ("default", 0.05)):
        mine = [d for d in built.decisions if d.rule == rule]
        below = sum(d.draw < d.threshold for d in mine)
        assert f"<td>{rule}</td><td>{_pct(rate)}</td><td>{len(mine)}</td><td>{below}</td>" in page
        lo, hi = clopper_pearson(below, len(mine))
        assert f"<td>{_pct(lo)} to {_pct(hi)}</td>" in page
    assert "<td>objection</td>" not in page  # reasons are counted, not listed
    # retention: the support recordings (7 days) are past their limit at REPORT_AT
    assert page.count("<svg") == 2  # rate plot and retention plot
    rules = [d.rule for d in built.decisions if d.record][: len(built.recordings)]
    past = sum(rule == "support" for rule in rules[1:])  # the first one is held
    if past:
        assert f"{past} recording(s) are past their retention limit" in page
    else:
        assert "past their retention limit" not in page
    # hold, escaped
    assert f"<td>{built.hold_id}</td>" in page and "Case 42 &lt;court&gt; &amp; co" in page
    # the subject request is overdue (received 20 days before T0, report 20 days after)
    assert re.search(
        rf'<tr class="overdue"><td>{built.request_id}</td><td>export</td>.*?OVERDUE by \d+ day',
        page,
    )
    # accesses by principal, action and outcome
    assert "<td>dpo-maria</td><td>list</td><td>granted</td><td>1</td>" in page
    assert '<tr class="fail"><td>eve</td><td>export</td><td>denied</td><td>1</td>' in page
    # verdict: the log verifies and the revealed keys match their logged commitments
    assert '<p class="verdict ok" id="verdict">PASS</p>' in page
    for k in built.revealed:
        assert f'<tr class="pass"><td>{k.epoch_id}</td><td>yes</td><td>yes</td></tr>' in page
    # self-contained: no URL at all, no script, no external style or image
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"url\(\s*['\"]?\s*[^#'\"\s]", page)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", page)


class _Audit:
    def to_json(self) -> dict[str, object]:
        return {
            "ok": False,
            "checks": {"decisions": "PASS", "catalog": "FAIL"},
            "findings": [
                {"check": "catalog", "message": "recording <x> not selected", "index": 12}
            ],
        }


def test_report_shows_an_auditors_verdict(built: Built) -> None:
    page = build_report(built.path, audit=_Audit(), now=REPORT_AT)
    assert '<p class="verdict bad" id="verdict">FAIL</p>' in page
    assert '<tr class="fail"><td>catalog</td><td>FAIL</td></tr>' in page
    assert '<tr class="pass"><td>decisions</td><td>PASS</td></tr>' in page
    assert "recording &lt;x&gt; not selected</td><td>entry 12</td>" in page
    assert "Revealed epoch keys" not in page


def test_report_without_matplotlib(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = build_report(built.path, now=REPORT_AT)
    assert "<svg" not in page and "Plot not drawn: matplotlib is not installed" in page
    assert '<section id="rates">' in page


def test_report_shows_erased_principals(built: Built, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(built.path, copy)
    assert Store.open(copy).keyring.destroy_sealing_key("access/2030-01")  # as after 12 months
    page = build_report(copy, now=REPORT_AT)
    assert "<td>(erased)</td><td>list</td><td>granted</td><td>1</td>" in page
    assert "dpo-maria" not in page and "<td>eve</td>" not in page
    assert '<p class="verdict ok" id="verdict">PASS</p>' in page  # erasure keeps the log valid


def test_cli_audit_report(built: Built, cli: CliRun, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code, text = cli("audit", "report", "--store", built.path, "--out", out)
    assert code == 0, text
    assert "PASS" in text and "SIMULATED" in text
    assert out.stat().st_mode & 0o777 == 0o600
    assert "SIMULATED store" in out.read_text(encoding="utf-8")
    code, _ = cli("audit", "report", "--store", tmp_path / "nope", "--out", out)
    assert code == 3
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="revealed-keys"):
        build_report(built.path, revealed_keys=tmp_path / "bad.json", now=REPORT_AT)


# -- rendering --------------------------------------------------------------------------------


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("SAMPLEDREC_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed, and SAMPLEDREC_REQUIRE_CHROMIUM=1 requires it")
        pytest.skip("chromium is not installed (./dev test installs it when run as root)")
    return exe


def _render(exe: str, page: Path, tmp: Path) -> tuple[Path, list[str]]:
    """Screenshot ``page``; returns the PNG and the console messages Chromium logged."""
    shot = tmp / f"{page.stem}.png"
    proc = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / ('profile-' + page.stem)}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            "--enable-logging=stderr",
            "--v=0",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return shot, console


def test_report_renders_in_headless_chromium(built: Built, tmp_path: Path) -> None:
    exe = _chromium()
    image = pytest.importorskip("matplotlib.image")
    # The method sees console errors: a page that tries to fetch an image logs one.
    probe = tmp_path / "probe.html"
    probe.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'\"></head><body><p>probe</p>"
        '<img src="missing.png"></body></html>',
        encoding="utf-8",
    )
    _, console = _render(exe, probe, tmp_path)
    assert any("missing.png" in line for line in console), console

    page = write_report(built.path, tmp_path / "report.html", now=REPORT_AT)
    shot, console = _render(exe, page, tmp_path)
    assert console == []
    assert shot.exists() and shot.stat().st_size > 10_000
    pixels = image.imread(str(shot))
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    gray = pixels[..., :3].mean(axis=2)
    assert float(gray.var()) > 0.005  # not blank
    assert float((gray < 0.5).mean()) > 0.005  # some dark text and lines on the page
