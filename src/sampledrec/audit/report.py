"""The data-protection officer's report: one self-contained HTML page about a store.

:func:`build_report` reads a store (its policy, decision log and catalog) and returns an HTML
page that fetches nothing from the network (inline CSS, no scripts, plots as inline SVG, and a
Content-Security-Policy that forbids any fetch). It shows:

- the store, with a banner when the store is *simulated* (DESIGN.md §9);
- the policy in force: each rule's rate, purpose, retention, caps, justification or legal basis,
  and the roles;
- per rule, the realised rate of the draws against the declared rate, with an exact
  (Clopper-Pearson) 95% interval, as a table and a plot;
- the recordings by age against their retention limits (plot) and their counts by status;
- legal holds; data-subject requests with their one-month deadlines (overdue ones highlighted);
- accesses (from the log's ``access`` entries) by principal, action and outcome; a principal
  whose period key was destroyed shows as ``(erased)``;
- the verification verdict: the auditor's report when given (``audit``, any object with a
  ``to_json()`` giving ``{"ok", "checks", "findings"}``), else the log's own verification, and
  the revealed epoch keys checked against their logged commitments.

Plots need matplotlib (the ``plots`` extra); without it the page has the same tables and says
why the plots are missing.
"""

from __future__ import annotations

import html
import io
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from .._hazmat.files import write_atomic
from ..clock import SYSTEM_CLOCK
from ..errors import InvalidArgument
from ..keys.keyring import RevealedKey
from ..log.format import (
    T_ACCESS,
    T_KEY_COMMIT,
    T_KEY_REVEAL,
    from_micros,
    to_micros,
)
from ..retention.subjects import what_defers
from ..sampling.keyed import DRAW_BITS
from ..sampling.record import REASONS
from ..store import Store, read_revealed
from .stats import binom_cdf, clopper_pearson

__all__ = [
    "RateRow",
    "binom_cdf",
    "build_report",
    "clopper_pearson",
    "render",
    "write_page",
    "write_report",
]

_DAY_US = 86_400_000_000
_LIVE = ("open", "sealed", "truncated", "expiring")
_CHECK_CLASS = {"PASS": "pass", "FAIL": "fail"}


class _AuditLike(Protocol):
    def to_json(self) -> Mapping[str, Any]: ...


# -- what the report gathers ------------------------------------------------------------------


@dataclass
class RateRow:
    """Per rule and declared rate: the draws made and how many fell below the threshold."""

    rule: str
    declared: float
    decisions: int = 0
    below: int = 0  # draws below the threshold (selected before objections and caps)
    recorded: int = 0  # reason "sampled"
    objections: int = 0
    capped: int = 0

    @property
    def realised(self) -> float:
        return self.below / self.decisions if self.decisions else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return clopper_pearson(self.below, self.decisions)

    @property
    def consistent(self) -> bool:
        lo, hi = self.interval
        return lo <= self.declared <= hi


@dataclass
class _LogFacts:
    rates: dict[tuple[str, int], RateRow] = field(default_factory=dict)
    accesses: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    commitments: dict[str, bytes] = field(default_factory=dict)
    entries: int = 0
    error: str | None = None


class _NoKeys:
    """Decisions are tallied from their public fields: no personal field is opened for them."""

    def sealing_key(self, kid: str, *, create: bool = False) -> bytes | None:
        return None


def _read_log(store: Store) -> _LogFacts:
    import numpy as np

    from ..log.columns import read_log
    from ..log.format import decode_entry
    from ..log.writer import unsealer

    facts = _LogFacts()
    try:
        contents = read_log(store.log_storage, _NoKeys())
    except OSError as exc:
        facts.error = f"the log could not be read: {exc}"
        return facts
    facts.error = (
        None
        if contents.error is None
        else f"the log could not be read to the end: {contents.error}"
    )
    d = contents.decisions
    facts.entries = len(d) + len(contents.others)
    # Decisions, per (rule, threshold): counted column-wise.
    thresholds, thr_code = np.unique(d.threshold, return_inverse=True)
    groups, group = np.unique(
        d.rule.astype(np.int64) * max(1, thresholds.size) + thr_code.ravel(), return_inverse=True
    )
    group = group.ravel()

    def count(mask: Any) -> list[int]:
        counts: list[int] = (
            np.bincount(group, weights=mask, minlength=groups.size).astype(int).tolist()
        )
        return counts

    below = count(d.draw < d.threshold)
    reasons = {r: count(d.reason == REASONS.index(r)) for r in _TALLIED}
    total = np.bincount(group, minlength=groups.size).tolist()
    scale = float(2**DRAW_BITS)
    for j, g in enumerate(groups.tolist()):
        r, t = divmod(g, max(1, thresholds.size))
        threshold = int(thresholds[t])
        facts.rates[(d.rules[r], threshold)] = RateRow(
            d.rules[r],
            threshold / scale,
            decisions=total[j],
            below=below[j],
            recorded=reasons["sampled"][j],
            objections=reasons["objection"][j],
            capped=reasons["cap_reached"][j],
        )
    # Accesses and key reveals: their personal fields (who) are opened, they are few.
    unseal = unsealer(store.keyring)
    for entry in contents.others:
        if entry.type in (T_ACCESS, T_KEY_REVEAL) and entry.kid is not None:
            entry = decode_entry(entry.index, entry.raw, unseal)
        f = entry.fields
        if entry.type == T_ACCESS:
            who = f.get("principal")
            principal = str(who) if who is not None else "(erased)"
            facts.accesses[(principal, str(f.get("action", "?")), str(f.get("outcome", "?")))] += 1
        elif entry.type == T_KEY_REVEAL:
            who = f.get("principal")
            principal = str(who) if who is not None else "(erased)"
            facts.accesses[(principal, "keys_reveal", "granted")] += 1
        elif entry.type == T_KEY_COMMIT:
            facts.commitments.setdefault(str(f.get("epoch_id")), bytes(f.get("commitment", b"")))
    return facts


_TALLIED: Final = ("sampled", "objection", "cap_reached")


def _catalog_rows(
    store: Store, now_us: int
) -> tuple[list[Any], list[tuple[Any, int]], list[tuple[Any, tuple[str, ...]]]]:
    """(recordings, holds with member counts, subject requests with the active holds that
    lawfully defer an erasure)."""
    catalog = store.open_catalog()
    try:
        rows = catalog.find()
        holds = [(h, len(catalog.hold_members(h.hold_id))) for h in catalog.holds()]
        requests = [
            (
                q,
                what_defers(catalog, q.caller_pseudonym, now_us)[0]
                if q.status == "deferred" and q.caller_pseudonym is not None
                else (),
            )
            for q in catalog.requests()
        ]
    finally:
        catalog.close()
    return rows, holds, requests


# -- HTML helpers -----------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(us: int | None) -> str:
    if us is None:
        return "—"
    return from_micros(us).strftime("%Y-%m-%d %H:%M UTC")


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%" if x else "0%"


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    row_classes: Sequence[str] | None = None,
    empty: str = "None.",
) -> str:
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes is not None and i < len(row_classes) else ""
        attr = f' class="{_e(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    if not body:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#1d2330;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #d8dde6;padding-bottom:.2em;
margin-top:2em}
.meta{color:#555;font-size:.9em}
.banner{background:#fff3cd;border:2px solid #e0a800;color:#6b4d00;padding:.8em 1em;
font-weight:bold;font-size:1.1em;margin:1em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;width:100%}
th,td{border:1px solid #d8dde6;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f1f3f7}
tr.overdue td,tr.fail td,tr.outside td{background:#fde2e1;color:#8a1c14}
tr.pass td{background:#e3f4e8}
.verdict{font-size:1.3em;font-weight:bold;padding:.5em 1em;display:inline-block}
.verdict.ok{background:#e3f4e8;color:#17602d;border:2px solid #2e8b57}
.verdict.bad{background:#fde2e1;color:#8a1c14;border:2px solid #c0392b}
.empty,.note{color:#666;font-style:italic}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}
"""


# -- plots ------------------------------------------------------------------------------------


def _svg(fig: Any) -> str:
    """A matplotlib figure as inline SVG: no XML prolog, no namespace URLs, no metadata."""
    from matplotlib import rc_context

    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "sampledrec"}):
        fig.savefig(
            buf,
            format="svg",
            bbox_inches="tight",
            metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
        )
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # Inline SVG in HTML needs no namespace declarations (the parser knows <svg>); dropping
    # them leaves the page without any URL at all.
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    return text


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # the Agg canvas, without touching pyplot's global backend
    return fig


def _rates_plot(rows: Sequence[RateRow]) -> str:
    fig = _figure(8, 0.6 * len(rows) + 1.4)
    ax = fig.add_subplot()
    labels = []
    for y, r in enumerate(rows):
        lo, hi = r.interval
        ax.plot([lo, hi], [y, y], color="#2b5797", linewidth=3, solid_capstyle="butt")
        ax.plot(
            [r.realised], [y], "o", color="#2b5797", label="realised (95% CI)" if y == 0 else None
        )
        ax.plot(
            [r.declared],
            [y],
            "|",
            color="#c0392b",
            markersize=18,
            markeredgewidth=2.5,
            label="declared" if y == 0 else None,
        )
        labels.append(f"{r.rule} ({r.decisions} calls)")
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("share of calls drawn for recording")
    ax.xaxis.set_major_formatter(lambda x, _pos: f"{100 * x:.3g}%")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Realised vs declared rate per rule (exact 95% interval)")
    return _svg(fig)


def _retention_plot(rows: Sequence[Any], now_us: int) -> str:
    """Per rule, each kept recording's age (days) against the rule's retention limit."""
    rules = sorted({r.rule for r in rows})
    fig = _figure(8, 0.6 * len(rules) + 1.6)
    ax = fig.add_subplot()
    kinds = {
        "within": ("#2b5797", "within its limit"),
        "held": ("#8e44ad", "held past its limit"),
        "past": ("#c0392b", "past its limit, not yet expired"),
    }
    labelled: set[str] = set()
    for y, rule in enumerate(rules):
        mine = [r for r in rows if r.rule == rule]
        groups: dict[str, list[float]] = defaultdict(list)
        limits = set()
        for r in mine:
            age = (now_us - r.started_at) / _DAY_US
            limit = (r.expires_at_sealed - r.started_at) / _DAY_US
            limits.add(round(limit, 1))
            if r.expires_at <= now_us:
                groups["past"].append(age)
            elif age >= limit:
                groups["held"].append(age)
            else:
                groups["within"].append(age)
        for kind, ages in groups.items():
            color, label = kinds[kind]
            ax.plot(
                ages,
                [y] * len(ages),
                "o",
                color=color,
                alpha=0.7,
                label=None if kind in labelled else label,
            )
            labelled.add(kind)
        for lim in sorted(limits):
            ax.plot(
                [lim],
                [y],
                "|",
                color="#e0a800",
                markersize=22,
                markeredgewidth=3,
                label=None if "limit" in labelled else "retention limit",
            )
            labelled.add("limit")
    ax.set_yticks(range(len(rules)), rules)
    ax.set_ylim(len(rules) - 0.5, -0.5)
    ax.set_xlabel("days since the call")
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Recordings kept: age against retention limit")
    return _svg(fig)


def _plot(make: Any, *args: Any) -> str:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            '<p class="note">Plot not drawn: matplotlib is not installed '
            "(pip install 'sampledrec[plots]'); the table has the same numbers.</p>"
        )
    return f"<figure>{make(*args)}</figure>"


# -- the page ---------------------------------------------------------------------------------


def _revealed(revealed_keys: Any) -> list[RevealedKey] | None:
    if revealed_keys is None:
        return None
    if isinstance(revealed_keys, str | os.PathLike):
        try:
            return read_revealed(revealed_keys)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(
                f"{revealed_keys} is not a readable revealed-keys file ({exc}); write it with "
                "'sampledrec keys reveal'"
            ) from None
    return list(revealed_keys)


def build_report(
    store_path: str | os.PathLike[str],
    *,
    revealed_keys: str | os.PathLike[str] | Sequence[RevealedKey] | None = None,
    audit: _AuditLike | None = None,
    now: datetime | None = None,
) -> str:
    """The HTML report of the store at ``store_path``, as of ``now`` (default: the clock).

    ``revealed_keys`` is a revealed-keys file (or the keys); each is checked against the
    commitment logged for its epoch. ``audit`` is an auditor's report (``to_json()`` with
    ``ok``, ``checks`` and ``findings``); without it the log is verified here.
    """
    return render(store_path, revealed_keys=revealed_keys, audit=audit, now=now)[0]


def render(
    store_path: str | os.PathLike[str],
    *,
    revealed_keys: str | os.PathLike[str] | Sequence[RevealedKey] | None = None,
    audit: _AuditLike | None = None,
    now: datetime | None = None,
) -> tuple[str, bool]:
    """:func:`build_report`, with the verdict shown on the page (True: PASS)."""
    store = Store.open(store_path)
    when = (now or SYSTEM_CLOCK.now()).astimezone(UTC)
    now_us = to_micros(when)
    policy = store.policy(when)
    facts = _read_log(store)
    recordings, holds, requests = _catalog_rows(store, now_us)
    keys = _revealed(revealed_keys)

    parts: list[str] = []
    add = parts.append
    title = f"sampledrec report — {store.path}"
    add("<!DOCTYPE html>")
    add('<html lang="en"><head><meta charset="utf-8">')
    add(
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
    )
    add('<meta name="viewport" content="width=device-width, initial-scale=1">')
    add(f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>")
    add(f"<h1>{_e(title)}</h1>")
    if store.simulated:
        add(
            '<div class="banner" id="simulated">SIMULATED store: made by sampledrec demo or for '
            "tests. Its calls, recordings and dates are simulated, and its keys may have been "
            "revealed before their epoch ended. Nothing here describes real calls.</div>"
        )
    add(
        f'<p class="meta">Store id {_e(store.store_id.hex())} · created {_e(store.created_at)} · '
        f"report as of {_e(when.strftime('%Y-%m-%d %H:%M UTC'))} · {facts.entries:,} log "
        f"entries · {len(recordings):,} recordings in the catalog</p>"
    )
    if facts.error:
        add(f'<p class="banner">{_e(facts.error)}</p>')

    # policy
    add('<section id="policy"><h2>Policy in force</h2>')
    add(
        f'<p class="meta">Version {_e(policy.version)}'
        + (f" · {_e(policy.name)}" if policy.name else "")
        + f" · rate ceiling {_e(_pct(float(policy.rate_ceiling)))} without justification</p>"
    )
    prows = []
    for rule in policy.all_rules:
        match = "; ".join(f"{k} in {', '.join(sorted(v))}" for k, v in sorted(rule.match.items()))
        caps = ", ".join(
            t
            for t in (
                None if rule.max_per_agent_per_day is None else f"{rule.max_per_agent_per_day}/day",
                None
                if rule.max_per_agent_per_week is None
                else f"{rule.max_per_agent_per_week}/week",
            )
            if t
        )
        basis = " — ".join(
            x
            for x in (
                rule.justification,
                None if rule.legal_basis is None else f"Legal basis: {rule.legal_basis}",
            )
            if x
        )
        prows.append(
            [
                rule.name,
                match or "(every other call)",
                f"{rule.rate} ({_pct(float(rule.rate_value))})",
                rule.purpose,
                str(rule.retention),
                caps or "—",
                basis or "—",
            ]
        )
    add(
        _table(
            [
                "Rule",
                "Calls",
                "Rate",
                "Purpose",
                "Retention",
                "Per-agent caps",
                "Justification / legal basis",
            ],
            prows,
        )
    )
    add("<h3>Roles</h3>")
    add(
        _table(
            ["Role (scope)", "Permissions"],
            [[r.describe(), ", ".join(sorted(r.permissions))] for r in policy.roles.values()],
        )
    )
    add("</section>")

    # rates
    rates = sorted(facts.rates.values(), key=lambda r: (r.rule, r.declared))
    add('<section id="rates"><h2>Realised vs declared rates</h2>')
    add(
        '<p class="note">Per rule, the share of calls whose keyed draw fell below the '
        "threshold of the declared rate (before objections and per-agent caps), with its exact "
        "Clopper-Pearson 95% interval. A declared rate outside the interval is highlighted.</p>"
    )
    rate_rows = []
    rate_classes = []
    for r in rates:
        lo, hi = r.interval
        rate_rows.append(
            [
                r.rule,
                _pct(r.declared),
                r.decisions,
                r.below,
                _pct(r.realised),
                f"{_pct(lo)} to {_pct(hi)}",
                "yes" if r.consistent else "NO",
                r.recorded,
                r.objections,
                r.capped,
            ]
        )
        rate_classes.append("" if r.consistent else "outside")
    add(
        _table(
            [
                "Rule",
                "Declared",
                "Calls",
                "Drawn",
                "Realised",
                "95% interval",
                "Declared in interval",
                "Recorded",
                "Objections",
                "Capped",
            ],
            rate_rows,
            row_classes=rate_classes,
            empty="No decisions in the log yet.",
        )
    )
    if rates:
        add(_plot(_rates_plot, rates))
    add("</section>")

    # retention
    add('<section id="retention"><h2>Recordings and retention</h2>')
    live = [r for r in recordings if r.status in _LIVE]
    past = [r for r in live if r.expires_at <= now_us]
    status_counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in recordings:
        status_counts[r.rule][r.status] += 1
    statuses = sorted({s for c in status_counts.values() for s in c})
    add(
        _table(
            ["Rule", *statuses, "Total"],
            [
                [rule, *(c.get(s, 0) for s in statuses), sum(c.values())]
                for rule, c in sorted(status_counts.items())
            ],
            empty="No recordings.",
        )
    )
    if past:
        add(
            f'<p class="banner">{len(past)} recording(s) are past their retention limit and '
            "not yet expired: run 'sampledrec sweep'.</p>"
        )
    if live:
        add(_plot(_retention_plot, live, now_us))
    add("</section>")

    # holds
    add('<section id="holds"><h2>Legal holds</h2>')
    add(
        _table(
            ["Hold", "Reason", "Placed", "Until", "Released", "Recordings", "Active"],
            [
                [
                    h.hold_id,
                    h.reason,
                    _when(h.created_at),
                    _when(h.until),
                    _when(h.released_at),
                    members,
                    "yes" if h.active(now_us) else "no",
                ]
                for h, members in holds
            ],
            empty="No legal holds.",
        )
    )
    add("</section>")

    # subject requests
    add('<section id="requests"><h2>Data-subject requests</h2>')
    req_rows, req_classes = [], []
    for q, held_by in requests:
        pending = q.status in ("open", "deferred")
        # A legal hold that keeps the person's recordings defers an erasure lawfully.
        overdue = pending and now_us >= q.deadline and not held_by
        late = q.completed_at is not None and q.completed_at > q.deadline
        if held_by:
            state = f"deferred by hold {', '.join(held_by)} (a lawful delay)"
        elif overdue:
            state = f"OVERDUE by {(now_us - q.deadline) // _DAY_US} day(s)"
        elif pending:
            state = f"{(q.deadline - now_us) // _DAY_US} day(s) left"
        else:
            state = "answered late" if late else "answered in time"
        req_rows.append(
            [
                q.request_id,
                q.kind,
                _when(q.received_at),
                _when(q.deadline),
                q.status,
                _when(q.completed_at),
                state,
            ]
        )
        req_classes.append("overdue" if overdue or late else "")
    add(
        _table(
            ["Request", "Kind", "Received", "Deadline", "Status", "Answered", "Deadline status"],
            req_rows,
            row_classes=req_classes,
            empty="No data-subject requests.",
        )
    )
    add("</section>")

    # accesses
    add('<section id="accesses"><h2>Accesses</h2>')
    add(
        '<p class="note">From the log\'s access entries. Principals are sealed under the '
        "access key of their month; once that key is destroyed (12 months) they show as "
        "(erased). Roles are those the host application gave the principal at the time.</p>"
    )
    by_outcome: Counter[str] = Counter()
    for (_, _, outcome), n in facts.accesses.items():
        by_outcome[outcome] += n
    if by_outcome:
        add(
            '<p class="meta">'
            + " · ".join(f"{_e(o)}: {n}" for o, n in sorted(by_outcome.items()))
            + "</p>"
        )
    add(
        _table(
            ["Principal", "Action", "Outcome", "Count"],
            [[p, a, o, n] for (p, a, o), n in sorted(facts.accesses.items())],
            row_classes=[
                "fail" if o in ("denied", "failed") else "" for (_, _, o) in sorted(facts.accesses)
            ],
            empty="No accesses logged.",
        )
    )
    add("</section>")

    # verdict
    add('<section id="verification"><h2>Verification</h2>')
    if audit is not None:
        doc = dict(audit.to_json())
        source = "auditor's verification (audit verify)"
    else:
        from ..log.verify import verify_log

        doc = verify_log(
            store.log_storage, public_key=store.public_key, store_id=store.store_id
        ).to_json()
        source = "log verification (files, structure, tree, signatures, keys, policies)"
    checks: Mapping[str, Any] = doc.get("checks", {}) or {}
    findings: list[Any] = list(doc.get("findings", []) or [])
    key_rows, key_classes = [], []
    keys_ok = True
    for k in keys or []:
        logged = facts.commitments.get(k.epoch_id)
        good = k.matches_commitment() and logged == k.commitment
        keys_ok &= good
        key_rows.append(
            [
                k.epoch_id,
                "yes" if k.matches_commitment() else "NO",
                "yes" if logged == k.commitment else ("not logged" if logged is None else "NO"),
            ]
        )
        key_classes.append("pass" if good else "fail")
    ok = bool(doc.get("ok")) and keys_ok
    # An auditor's report says FAIL, or INCOMPLETE when a core check could not run yet.
    verdict = "PASS" if ok else "INCOMPLETE" if doc.get("verdict") == "INCOMPLETE" else "FAIL"
    add(
        f'<p class="verdict {"ok" if ok else "bad"}" id="verdict">{verdict}</p>'
        f'<p class="meta">Source: {_e(source)}</p>'
    )
    for reason in doc.get("verdict_reasons", []) or []:
        add(f'<p class="meta">{_e(reason)}</p>')
    results: Mapping[str, Any] = doc.get("results", {}) or {}
    if results:  # what each check checked, or why it was skipped
        rows: list[list[object]] = []
        for name, result in checks.items():
            got = results.get(name, {}) if isinstance(results.get(name), Mapping) else {}
            counted = ", ".join(
                f"{v:,} {str(k).replace('_', ' ')}" for k, v in (got.get("checked") or {}).items()
            )
            rows.append([name, result, got.get("why") or counted])
        add(
            _table(
                ["Check", "Result", "Checked (or why not)"],
                rows,
                row_classes=[_CHECK_CLASS.get(str(v), "") for v in checks.values()],
                empty="No checks reported.",
            )
        )
    else:
        add(
            _table(
                ["Check", "Result"],
                [[name, result] for name, result in checks.items()],
                row_classes=[_CHECK_CLASS.get(str(v), "") for v in checks.values()],
                empty="No checks reported.",
            )
        )
    if keys is not None:
        add("<h3>Revealed epoch keys</h3>")
        add(
            _table(
                ["Epoch", "Key matches its commitment", "Commitment is the one logged"],
                key_rows,
                row_classes=key_classes,
                empty="The revealed-keys file holds no keys.",
            )
        )
    add("<h3>Findings</h3>")
    add(
        _table(
            ["Check", "Finding", "Where"],
            [_finding_row(f) for f in findings],
            row_classes=["fail"] * len(findings),
            empty="No findings.",
        )
    )
    add("</section>")
    add(
        f'<p class="meta">Generated by sampledrec from {_e(store.path)}; this page fetches '
        "nothing and runs no script.</p></body></html>"
    )
    return "\n".join(parts) + "\n", ok


def _finding_row(f: Any) -> list[object]:
    if not isinstance(f, Mapping):
        return ["", str(f), ""]
    where = ", ".join(
        str(x)
        for x in (
            f.get("where"),
            None if f.get("index") is None else f"entry {f.get('index')}",
            None if f.get("recording_id") is None else f"recording {f.get('recording_id')}",
        )
        if x
    )
    return [f.get("check", ""), f.get("message", f.get("detail", "")), where]


def write_page(path: Path, text: str) -> None:
    """Write a rendered page whole (0600: it names who accessed what, which is personal data)."""
    write_atomic(path, text.encode("utf-8"), replace=True)


def write_report(
    store_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    revealed_keys: str | os.PathLike[str] | Sequence[RevealedKey] | None = None,
    audit: _AuditLike | None = None,
    now: datetime | None = None,
) -> Path:
    """Write :func:`build_report` to ``out`` (UTF-8, mode 0600); returns the path."""
    text = build_report(store_path, revealed_keys=revealed_keys, audit=audit, now=now)
    path = Path(out)
    write_page(path, text)
    return path
