"""Policy files: parsing, guardrails, canonical form and version id, clear errors."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import pytest

from sampledrec import Policy, threshold
from sampledrec.errors import InvalidPolicy
from sampledrec.sampling import RetentionPeriod
from sampledrec.sampling.policy import DEFAULT_POLICY_TOML

BASE = """
[[rules]]
name = "sales"
match = { queue = "sales", direction = ["inbound", "outbound"] }
rate = "0.05"
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = 3

[[rules]]
name = "support"
match = { queue = "support" }
rate = 0.1
purpose = "training"
retention = "90 days"

[default]
rate = "0.02"
purpose = "quality"
retention = "P6M"
"""


def load(text: str) -> Policy:
    return Policy.from_toml(text, source="policy.toml")


def test_rules_in_order_and_default() -> None:
    policy = load(BASE)
    assert [r.name for r in policy.all_rules] == ["sales", "support", "default"]
    assert policy.rule_for({"queue": "sales", "direction": "inbound"}).name == "sales"
    assert policy.rule_for({"queue": "sales", "direction": "internal"}).name == "default"
    assert policy.rule_for({"queue": "support"}).name == "support"
    assert policy.rule_for({}).name == "default"
    sales = policy.rule_named("sales")
    assert sales.threshold == threshold("0.05")
    assert sales.max_per_agent_per_day == 3
    assert sales.has_cap
    assert not policy.rule_named("support").has_cap


def test_float_rate_means_its_decimal_text() -> None:
    support = load(BASE).rule_named("support")
    assert support.rate == "0.1"
    assert support.rate_value == Fraction(1, 10)
    assert support.threshold == 2**56 // 10


def test_match_values_compare_as_text() -> None:
    policy = load(
        BASE.replace('match = { queue = "support" }', "match = { queue = 7, vip = true }")
    )
    assert policy.rule_for({"queue": "7", "vip": "true"}).name == "support"
    assert policy.rule_for({"queue": 7, "vip": True}).name == "support"
    assert policy.rule_for({"queue": "7", "vip": False}).name == "default"


def test_version_is_sha256_of_canonical_json() -> None:
    policy = load(BASE)
    canonical = json.loads(policy.canonical)
    assert canonical["rules"][1]["rate"] == "0.1"  # TOML float written as its decimal text
    assert canonical["default"]["rate"] == "0.02"
    expected = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert policy.canonical == expected.encode()
    assert policy.version == hashlib.sha256(policy.canonical).hexdigest()


def test_version_ignores_layout_and_comments_but_not_content() -> None:
    a = load(BASE)
    b = load("# a comment\n" + BASE.replace("name = ", "name   =   "))
    assert a.version == b.version
    c = load(BASE.replace('rate = "0.02"', 'rate = "0.03"'))
    assert c.version != a.version


def test_default_policy_is_valid() -> None:
    policy = load(DEFAULT_POLICY_TOML)
    assert policy.default.rate == "0.05"
    assert policy.default.purpose == "quality"
    assert policy.default.retention.months == 6
    assert policy.warnings == ()


@pytest.mark.parametrize(
    ("text", "months", "days"),
    [
        ("6 months", 6, 0),
        ("1 month", 1, 0),
        ("90 days", 0, 90),
        ("2 weeks", 0, 14),
        ("1 year", 12, 0),
        ("P6M", 6, 0),
        ("P1Y2M3W4D", 14, 25),
    ],
)
def test_retention_parse(text: str, months: int, days: int) -> None:
    r = RetentionPeriod.parse(text)
    assert (r.months, r.days) == (months, days)


def test_retention_clamps_month_end() -> None:
    r = RetentionPeriod.parse("1 month")
    assert r.expires_at(datetime(2026, 1, 31)) == datetime(2026, 2, 28)
    assert RetentionPeriod.parse("6 months").expires_at(datetime(2026, 8, 31, 12)) == datetime(
        2027, 2, 28, 12
    )


def expect_error(text: str, *fragments: str) -> InvalidPolicy:
    with pytest.raises(InvalidPolicy) as info:
        load(text)
    message = str(info.value)
    assert message.startswith("policy.toml"), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert isinstance(info.value, ValueError)
    return info.value


def test_missing_default_rule() -> None:
    text = BASE[: BASE.index("[default]")]
    expect_error(text, "[default]", "required")


def test_rate_out_of_range_names_rule_field_value() -> None:
    err = expect_error(BASE.replace('rate = "0.05"', 'rate = "1.5"'), "'sales'", "'rate'", "1.5")
    assert err.rule == "sales"
    assert err.field == "rate"


@pytest.mark.parametrize("bad", ['"abc"', '"-0.1"', '"nan"', "true", '"inf"'])
def test_bad_rate_values(bad: str) -> None:
    expect_error(BASE.replace('rate = "0.05"', f"rate = {bad}"), "'sales'", "'rate'")


def test_rate_above_ceiling_needs_justification() -> None:
    high = BASE.replace('rate = "0.05"', 'rate = "0.5"')
    expect_error(high, "ceiling", "justification")
    ok = high.replace(
        'purpose = "quality"\nretention = "6 months"\nmax',
        'purpose = "quality"\njustification = "New sales team in its first month of coaching"\n'
        'retention = "6 months"\nmax',
        1,
    )
    assert load(ok).rule_named("sales").rate == "0.5"


def test_custom_ceiling() -> None:
    text = 'rate_ceiling = "0.6"\n' + BASE.replace('rate = "0.05"', 'rate = "0.5"')
    assert load(text).rule_named("sales").rate == "0.5"


def test_rate_one_refused_without_legal_obligation() -> None:
    everything = BASE.replace('rate = "0.05"', 'rate = "1"')
    expect_error(everything, "legal_obligation", "legal_basis")
    # Even a justification does not allow recording everything for quality.
    justified = everything.replace(
        "max_per_agent_per_day = 3", 'max_per_agent_per_day = 3\njustification = "' + "x" * 40 + '"'
    )
    expect_error(justified, "legal_obligation")
    legal = everything.replace(
        'purpose = "quality"\nretention = "6 months"\nmax',
        (
            'purpose = "legal_obligation"\nlegal_basis = "Financial services act, art. 12"\n'
            'retention = "6 months"\nmax'
        ),
        1,
    )
    assert load(legal).rule_named("sales").rate_value == 1


def test_legal_obligation_needs_legal_basis_at_any_rate() -> None:
    text = BASE.replace('purpose = "training"', 'purpose = "legal_obligation"')
    expect_error(text, "'support'", "legal_basis")


def test_proof_needs_justification() -> None:
    text = BASE.replace('purpose = "training"', 'purpose = "proof"')
    expect_error(text, "'support'", "written confirmation")
    short = text.replace('retention = "90 days"', 'retention = "90 days"\njustification = "x"')
    expect_error(short, "'support'", "justification")


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ('purpose = "training"', 'purpose = "marketing"', ("purpose", "marketing", "quality")),
        ('retention = "90 days"', 'retention = "forever"', ("retention", "forever", "months")),
        ('retention = "90 days"', 'retention = "0 days"', ("retention", "at least one day")),
        ("max_per_agent_per_day = 3", "max_per_agent_per_day = -1", ("max_per_agent_per_day",)),
        ("max_per_agent_per_day = 3", "max_per_agent_per_dya = 3", ("max_per_agent_per_dya",)),
        ('match = { queue = "support" }', "match = {}", ("match",)),
        ('match = { queue = "support" }', "match = { queue = [] }", ("empty",)),
        ('name = "support"', 'name = "sales"', ("two rules",)),
    ],
)
def test_rule_mistakes(old: str, new: str, fragments: tuple[str, ...]) -> None:
    assert old in BASE
    expect_error(BASE.replace(old, new, 1), *fragments)


def test_unknown_top_level_key() -> None:
    expect_error("colour = 'blue'\n" + BASE, "colour")


def test_invalid_toml_names_the_file() -> None:
    expect_error("[default\nrate=", "not valid TOML")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidPolicy, match="not found"):
        Policy.load(tmp_path / "nope.toml")


def test_long_retention_warns() -> None:
    policy = load(BASE.replace('retention = "90 days"', 'retention = "2 years"'))
    assert any("2 years" in w for w in policy.warnings)


# -- every duration is bounded (issue #12) -----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "99999999999 months",
        "101 years",
        "P101Y",
        "P1201M",
        "36529 days",
        "5219 weeks",
        "P100Y1D",
        "9" * 5000 + " days",  # more digits than int() reads: still a policy message
    ],
)
def test_retention_longer_than_100_years_is_refused_at_load(text: str) -> None:
    shown = text if len(text) < 50 else text[:20]
    err = expect_error(
        BASE.replace('retention = "90 days"', f'retention = "{text}"'),
        "rule 'support'",
        "field 'retention'",
        shown,
        "longer than 100 years, the longest retention sampledrec accepts",
    )
    assert err.rule == "support" and err.field == "retention"
    with pytest.raises(ValueError, match="100 years"):
        RetentionPeriod.parse(text)


@pytest.mark.parametrize("text", ["100 years", "P100Y", "1200 months", "36528 days", "5218 weeks"])
def test_retention_up_to_100_years_is_accepted_and_computes(text: str) -> None:
    period = RetentionPeriod.parse(text)
    end = period.expires_at(datetime(2026, 12, 3, 10))
    # 100 years, with months counted as 30.44 days when days are given: within a week of it.
    assert datetime(2126, 12, 3, 10) <= end <= datetime(2126, 12, 10, 10)


def test_a_retention_period_is_bounded_however_it_is_built() -> None:
    from sampledrec.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="longer than 100 years"):
        RetentionPeriod(months=99999999999)
    with pytest.raises(InvalidArgument, match="0 or more"):
        RetentionPeriod(days=-1)


def test_policy_check_refuses_a_huge_retention(tmp_path: Path) -> None:
    import contextlib
    import io

    from sampledrec.cli.app import main

    path = tmp_path / "p.toml"
    path.write_text(BASE.replace('retention = "90 days"', 'retention = "99999999999 months"'))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["policy", "check", str(path)], out=io.StringIO()) != 0
    assert "'99999999999 months' is longer than 100 years" in err.getvalue()
    assert "Traceback" not in err.getvalue()


# -- declared attributes (issue #12) -----------------------------------------------------------

DECLARED = (
    BASE
    + """
[attributes]
names = ["queue", "direction", "campaign"]
"""
)


def test_attributes_declaration_is_read_and_part_of_the_version() -> None:
    policy = load(DECLARED)
    assert policy.attribute_names == frozenset({"queue", "direction", "campaign"})
    assert policy.known_attributes == {"queue", "direction", "campaign", "agent", "objection"}
    assert policy.attributes_used == {"queue", "direction"}
    assert policy.version != load(BASE).version
    undeclared = load(BASE)
    assert undeclared.attribute_names is None
    assert undeclared.known_attributes == {"queue", "direction", "agent", "objection"}


@pytest.mark.parametrize(
    ("table", "fragments"),
    [
        ("[attributes]\nnames = []", ("field 'attributes.names'", "non-empty list")),
        ('[attributes]\nnames = "queue"', ("field 'attributes.names'", "non-empty list")),
        ('[attributes]\nnames = ["queue", 3]', ("field 'attributes.names'", "value 3")),
        ('[attributes]\nnames = ["queue", "queue"]', ("'queue' is listed twice",)),
        ('[attributes]\nknown = ["queue"]', ("field 'attributes.known'", "unknown key 'known'")),
        ('attributes = ["queue"]', ("field 'attributes'", "must be a table")),
    ],
)
def test_attributes_declaration_mistakes(table: str, fragments: tuple[str, ...]) -> None:
    expect_error(table + "\n" + BASE, *fragments)


def test_rules_and_scopes_may_name_only_declared_attributes() -> None:
    expect_error(
        DECLARED.replace('names = ["queue", "direction", "campaign"]', 'names = ["queue"]'),
        "rule 'sales'",
        "field 'match'",
        "attribute 'direction' is not declared in [attributes] names",
    )
    expect_error(
        DECLARED + '\n[roles.reviewer]\npermissions = ["list"]\nscope = { campain = "x" }\n',
        "field 'roles.reviewer.scope'",
        "attribute 'campain' is not declared",
        "did you mean 'campaign'?",
    )


def test_check_attributes_warns_or_refuses_with_a_suggestion() -> None:
    from sampledrec.errors import InvalidArgument, UnknownAttributeWarning

    undeclared = load(BASE)
    undeclared.check_attributes(["queue", "agent", "objection"])  # silent: all known
    with pytest.warns(UnknownAttributeWarning, match=r"'quue' .*did you mean 'queue'\?$"):
        undeclared.check_attributes(["quue"])
    with pytest.warns(UnknownAttributeWarning, match="'colour'.* declare it in the policy's"):
        undeclared.check_attributes(["colour"])
    declared = load(DECLARED)
    declared.check_attributes(["campaign"])  # declared, although no rule uses it yet
    with pytest.raises(InvalidArgument, match=r"'quue' is not one of .*did you mean 'queue'\?"):
        declared.check_attributes(["queue", "quue"])
