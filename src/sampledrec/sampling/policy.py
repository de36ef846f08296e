"""The sampling policy: a TOML file a QA lead writes, checked when it is loaded.

A policy is an ordered list of ``[[rules]]`` and a required ``[default]`` rule. The first rule
whose ``match`` table fits the call's attributes decides its rate, purpose, retention and caps::

    rate_ceiling = "0.25"          # optional; rates above it need a justification
    agent_attribute = "agent"      # optional; the attribute that names the agent, for caps

    [[rules]]
    name = "sales"
    match = { queue = "sales", direction = ["inbound", "outbound"] }
    rate = "0.05"
    purpose = "quality"            # quality | training | proof | legal_obligation
    retention = "6 months"         # N days | weeks | months | years, or ISO 8601 (P6M)
    max_per_agent_per_day = 3      # optional caps, counted over the calls selected

    [default]
    rate = "0.02"
    purpose = "quality"
    retention = "6 months"

Roles (who may list, listen to or export recordings, and within which scope) are declared in
``[roles.<name>]`` tables, checked by :func:`sampledrec.access.parse_roles`; default roles exist
even when the file declares none (:mod:`sampledrec.access`).

A policy may declare the call attributes it expects (``[attributes] names = ["queue", ...]``):
a call carrying any other attribute is then refused, naming it and the closest declared name.
Without a declaration, an attribute that no rule and no role scope uses is accepted with an
:class:`~sampledrec.errors.UnknownAttributeWarning` (:meth:`Policy.check_attributes`).

Every retention period is at most :data:`MAX_RETENTION` (100 years), checked when the policy is
loaded, so that no expiry can overflow a date later.

Guardrails (DESIGN.md §2): a rate above the ceiling needs a written ``justification``; rate 1 is
refused unless the purpose is ``legal_obligation`` with a ``legal_basis``; ``legal_obligation``
always names its ``legal_basis``; ``proof`` needs a ``justification`` saying why a written
confirmation is not available.

The **version id** of a policy is the SHA-256 (hex) of its canonical form: the parsed TOML
document as JSON with sorted keys, separators ``,`` and ``:``, UTF-8 without escapes, every rate
written as a decimal string (TOML floats through their shortest text, ``repr``; integers as
digits) and dates and times as ISO 8601 strings. See ``docs/policy-format.md``.
"""

from __future__ import annotations

import calendar
import difflib
import hashlib
import json
import re
import tomllib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal, cast

from ..errors import InvalidArgument, InvalidPolicy, InvalidRate, UnknownAttributeWarning
from .keyed import rate_fraction, threshold
from .roles import DEFAULT_ROLES, Role, parse_roles

__all__ = [
    "BUILTIN_ATTRIBUTES",
    "DEFAULT_POLICY_TOML",
    "MAX_RETENTION",
    "PURPOSES",
    "Policy",
    "Purpose",
    "RetentionPeriod",
    "Rule",
    "canonical_json",
]

Purpose = Literal["quality", "training", "proof", "legal_obligation"]
PURPOSES: Final[tuple[str, ...]] = ("quality", "training", "proof", "legal_obligation")
DEFAULT_CEILING: Final = Fraction(1, 4)
MIN_JUSTIFICATION: Final = 20
GUIDANCE_RETENTION: Final = "6 months"

_TOP_KEYS: Final = {
    "name",
    "description",
    "rate_ceiling",
    "agent_attribute",
    "rules",
    "default",
    "roles",
    "attributes",
}
_ATTRIBUTES_KEYS: Final = {"names"}
# Attributes with a meaning of their own, known to every policy: the caller's objection (and the
# agent, whose name the policy's agent_attribute gives).
BUILTIN_ATTRIBUTES: Final = frozenset({"objection"})
_RULE_KEYS: Final = {
    "name",
    "match",
    "rate",
    "purpose",
    "retention",
    "justification",
    "legal_basis",
    "max_per_agent_per_day",
    "max_per_agent_per_week",
    "description",
}
_RATE_KEYS: Final = {"rate", "rate_ceiling"}
_ATTRIBUTES_CACHE: Final = 4096  # distinct attribute values a policy remembers the JSON of

DEFAULT_POLICY_TOML: Final = """\
# sampledrec sampling policy.
# Rules are tried in order; the first whose `match` fits the call decides. [default] is required.
# Rates are decimal text ("0.05" = 5%). Rates above rate_ceiling need a `justification`.
# Purposes: quality, training, proof, legal_obligation. Retention: "6 months", "90 days", "P6M".

rate_ceiling = "0.25"
agent_attribute = "agent"

[default]
rate = "0.05"
purpose = "quality"
retention = "6 months"
"""


_UNITS: Final = {"day": (0, 1), "week": (0, 7), "month": (1, 0), "year": (12, 0)}
_DAYS_PER_MONTH: Final = 30.44  # to compare a mix of months and days (approx_days)


@dataclass(frozen=True, slots=True)
class RetentionPeriod:
    """How long a recording is kept: whole calendar months plus days.

    >>> RetentionPeriod.parse("6 months").expires_at(datetime(2026, 8, 31)).date().isoformat()
    '2027-02-28'
    """

    months: int = 0
    days: int = 0
    text: str = ""

    def __post_init__(self) -> None:
        # Every period is bounded when it is built, not when an expiry is computed: a huge one
        # would pass `policy check` and overflow a date only once a call is recorded.
        for name in ("months", "days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(
                    f"{name}={value!r}: a retention period counts whole {name}, 0 or more"
                )
        if (
            self.months > _MAX_MONTHS
            or self.days > _MAX_DAYS
            or self.months * _DAYS_PER_MONTH + self.days > _MAX_DAYS
        ):
            shown = self.text or f"{self.months} months and {self.days} days"
            raise InvalidArgument(
                f"{shown!r} is longer than {MAX_RETENTION_TEXT}, the longest retention "
                f"sampledrec accepts (about {int(_MAX_DAYS)} days); keep recordings only as long "
                "as their purpose needs (6 months is the usual guidance)"
            )

    @classmethod
    def parse(cls, text: str) -> RetentionPeriod:
        if not isinstance(text, str):
            raise ValueError(f"must be text like '6 months' or 'P6M', got {text!r}")
        raw = text.strip()
        m = re.fullmatch(r"(\d+)\s*(day|week|month|year)s?", raw, re.IGNORECASE)
        if m:
            months, days = _UNITS[m.group(2).lower()]
            count = _count(m.group(1))
            result = cls(months * count, days * count, raw)
        else:
            iso = re.fullmatch(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?", raw.upper())
            if not iso or raw.upper() == "P":
                raise ValueError(
                    f"{text!r} is not a period; write it like '6 months', '90 days', '1 year' "
                    "or in ISO 8601 ('P6M')"
                )
            y, mo, w, d = (_count(g) if g else 0 for g in iso.groups())
            result = cls(12 * y + mo, 7 * w + d, raw)
        if result.months == 0 and result.days == 0:
            raise ValueError(f"{text!r} is zero; a retention period must be at least one day")
        return result

    def expires_at(self, start: datetime) -> datetime:
        """``start`` plus the period; a month step keeps the day, clamped to the month's end."""
        total = start.month - 1 + self.months
        year, month = start.year + total // 12, total % 12 + 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        return start.replace(year=year, month=month, day=day) + timedelta(days=self.days)

    def approx_days(self) -> float:
        return self.months * _DAYS_PER_MONTH + self.days

    def __str__(self) -> str:
        return self.text


def _count(digits: str) -> int:
    # Past 9 digits a count is over any bound (and int() of thousands of digits would fail
    # with a message about Python, not about the policy): the bound check names the value.
    return int(digits) if len(digits) <= 9 else 10**9


MAX_RETENTION_TEXT: Final = "100 years"
_MAX_MONTHS: Final = 1200
_MAX_DAYS: Final = _MAX_MONTHS * _DAYS_PER_MONTH  # 36528 days: 100 years, counted as months
MAX_RETENTION: Final = RetentionPeriod(_MAX_MONTHS, 0, MAX_RETENTION_TEXT)
"""The longest retention period a policy may give (every duration is checked against it)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a policy, validated. ``threshold`` is ``T(rate)`` from DESIGN.md §4."""

    name: str
    index: int
    match: Mapping[str, frozenset[str]]
    rate: str
    rate_value: Fraction
    threshold: int
    purpose: str
    retention: RetentionPeriod
    justification: str | None = None
    legal_basis: str | None = None
    max_per_agent_per_day: int | None = None
    max_per_agent_per_week: int | None = None
    is_default: bool = False

    def matches(self, attrs: Mapping[str, object]) -> bool:
        for name, allowed in self.match.items():
            value = attrs.get(name)
            if value is None or _attr_text(value) not in allowed:
                return False
        return True

    @property
    def has_cap(self) -> bool:
        return self.max_per_agent_per_day is not None or self.max_per_agent_per_week is not None


def attr_text(value: object) -> str:
    """An attribute value as the text rules match (and caps count agents by): text as is,
    bytes as UTF-8, booleans as ``true``/``false``, numbers as written by ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


_attr_text = attr_text


def _normalise(value: Any, key: str | None = None) -> Any:
    """The canonical JSON value of a parsed TOML value (module docstring)."""
    if isinstance(value, dict):
        return {k: _normalise(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, key) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int) and key in _RATE_KEYS:
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The canonical form of a parsed policy document, whose SHA-256 is the version id."""
    return json.dumps(
        _normalise(dict(document)), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


@dataclass(frozen=True)
class Policy:
    """A validated sampling policy. Build it with :meth:`load`, :meth:`from_toml` or
    :meth:`from_dict`; every mistake raises :class:`~sampledrec.errors.InvalidPolicy` naming the
    file, the rule, the field, the value and what to do.

    ``roles`` is the role table (:mod:`sampledrec.access`): the default roles, replaced or
    extended by the file's ``[roles.<name>]`` tables. ``attribute_names`` is the file's
    ``[attributes] names`` declaration, or None when it declares none (see
    :meth:`check_attributes`)."""

    rules: tuple[Rule, ...]
    default: Rule
    version: str
    canonical: bytes
    rate_ceiling: Fraction = DEFAULT_CEILING
    agent_attribute: str = "agent"
    name: str | None = None
    source: str | None = None
    warnings: tuple[str, ...] = field(default=())
    roles: Mapping[str, Role] = field(default_factory=lambda: DEFAULT_ROLES)
    attribute_names: frozenset[str] | None = None

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and check a policy file."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InvalidPolicy(
                "file not found; pass the path of a policy TOML file "
                "(sampledrec init writes a default one)",
                file=str(p),
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidPolicy(f"cannot read the file: {exc}", file=str(p)) from None
        return cls.from_toml(text, source=str(p))

    @classmethod
    def from_toml(cls, text: str, *, source: str | None = None) -> Policy:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidPolicy(
                f"not valid TOML ({exc}); check quotes and brackets near that line",
                file=source,
            ) from None
        except RecursionError:
            raise InvalidPolicy(
                "arrays or tables are nested too deeply to be a policy", file=source
            ) from None
        return cls.from_dict(document, source=source)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], *, source: str | None = None) -> Policy:
        return _build(document, source)

    def rule_for(self, attrs: Mapping[str, object]) -> Rule:
        """The first rule whose ``match`` fits ``attrs``, else the default rule."""
        for rule, conditions in self.compiled:
            for name, allowed in conditions:
                value = attrs.get(name)
                if (
                    value is None
                    or (value if value.__class__ is str else _attr_text(value)) not in allowed
                ):
                    break
            else:
                return rule
        return self.default

    @property
    def compiled(self) -> tuple[tuple[Rule, tuple[tuple[str, frozenset[str]], ...]], ...]:
        """The rules with their conditions as tuples: what the per-call matching loop reads."""
        cached: Any = self.__dict__.get("_compiled")
        if cached is None:
            cached = tuple((r, tuple(r.match.items())) for r in self.rules)
            object.__setattr__(self, "_compiled", cached)
        return cached  # type: ignore[no-any-return]

    @property
    def all_rules(self) -> tuple[Rule, ...]:
        """The rules in order, then the default rule."""
        return (*self.rules, self.default)

    @property
    def attributes_used(self) -> frozenset[str]:
        """The call attributes that some rule's ``match`` or some role's ``scope`` names: the
        ones that can change a decision or who may reach a recording."""
        cached: Any = self.__dict__.get("_attributes_used")
        if cached is None:
            cached = _attributes_used(self.rules, self.roles)
            object.__setattr__(self, "_attributes_used", cached)
        return cached  # type: ignore[no-any-return]

    @property
    def rule_attributes(self) -> tuple[str, ...]:
        """The call attributes that some rule's ``match`` names, sorted: those a decision logs
        (:meth:`attributes_json`), so that an auditor can recompute which rule applied."""
        cached: Any = self.__dict__.get("_rule_attributes")
        if cached is None:
            cached = tuple(sorted({name for rule in self.rules for name in rule.match}))
            object.__setattr__(self, "_rule_attributes", cached)
        return cached  # type: ignore[no-any-return]

    def attributes_json(self, attrs: Mapping[str, object]) -> str:
        """The call's :attr:`rule_attributes` as a decision logs them: a compact JSON object
        (sorted keys, no spaces, UTF-8 rather than ``\\u`` escapes) of each such attribute
        that the call has, its value as the rules compare it (:func:`attr_text`). ``{}`` when
        the call has none of them. :meth:`rule_for` of the parsed object gives the call's
        rule: the audit relies on it.

        >>> policy = Policy.from_toml(
        ...     '[[rules]]\\nname = "s"\\nmatch = { queue = "sales", vip = true }\\nrate = "0.2"\\n'
        ...     'purpose = "quality"\\nretention = "6 months"\\n'
        ...     '[default]\\nrate = "0.05"\\npurpose = "quality"\\nretention = "6 months"'
        ... )
        >>> policy.attributes_json({"vip": True, "queue": "sales", "agent": "a7"})
        '{"queue":"sales","vip":"true"}'
        """
        # On the per-call hot path: a cached text costs one lookup.
        known = self.__dict__.get("_attributes_json")
        values = tuple(
            map(attrs.get, self.__dict__.get("_rule_attributes") or self.rule_attributes)
        )
        if known is not None:
            try:
                found = known.get(values)
            except TypeError:  # a value that cannot be hashed
                found = None
            if found is not None:
                return found  # type: ignore[no-any-return]
        return self.attributes_json_of(values)

    def attributes_json_rows(self, columns: Mapping[str, Sequence[object]], n: int) -> list[str]:
        """:meth:`attributes_json` of ``n`` calls given as attribute columns (one value per
        call, ``None`` where a call lacks it; a column not given: no call has it)."""
        names = self.rule_attributes
        if not names:
            return [self.attributes_json_of(())] * n
        missing = [None] * n
        rows = list(zip(*(columns.get(a, missing) for a in names), strict=True))
        known, of = self._attributes_cache().get, self.attributes_json_of
        try:  # texts seen before (the usual case) cost one lookup
            return [known(values) or of(values) for values in rows]
        except TypeError:  # a value that cannot be hashed
            return [of(values) for values in rows]

    def _attributes_cache(self) -> dict[tuple[object, ...], str]:
        cache: dict[tuple[object, ...], str] | None = self.__dict__.get("_attributes_json")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_attributes_json", cache)
        return cache

    def attributes_json_of(self, values: tuple[object, ...]) -> str:
        """:meth:`attributes_json` of a call whose :attr:`rule_attributes` have ``values``
        (in that order, ``None`` where the call lacks one)."""
        # On the per-call hot path: the values, as given, key a cache of the texts.
        names = self.rule_attributes
        cache = self.__dict__.get("_attributes_json")
        if cache is None:
            cache = self._attributes_cache()
        try:
            found = cache.get(values)
        except TypeError:  # a value that cannot be hashed: no cache
            found = None
        if found is not None:
            return found
        texts = {n: attr_text(v) for n, v in zip(names, values, strict=True) if v is not None}
        text = json.dumps(texts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: the log keeps UTF-8 only
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        # Only values that are all text (or absent) are cached: True and 1 are equal keys,
        # but not the same text ("true", "1").
        if all(v is None or v.__class__ is str for v in values):
            if len(cache) >= _ATTRIBUTES_CACHE:
                cache.clear()
            cache[values] = text
        return text

    @property
    def known_attributes(self) -> frozenset[str]:
        """The call attributes a call may carry without a warning or a refusal: the declared
        ``[attributes] names`` if the file has them, else :attr:`attributes_used`; with the
        agent attribute and :data:`BUILTIN_ATTRIBUTES` either way."""
        cached: Any = self.__dict__.get("_known_attributes")
        if cached is None:
            base = self.attributes_used if self.attribute_names is None else self.attribute_names
            cached = base | BUILTIN_ATTRIBUTES | {self.agent_attribute}
            object.__setattr__(self, "_known_attributes", cached)
        return cached  # type: ignore[no-any-return]

    def check_attributes(self, names: Iterable[object], *, stacklevel: int = 2) -> None:
        """Check the names of a call's attributes against the policy.

        With an ``[attributes] names`` declaration, a name it does not declare raises
        :class:`~sampledrec.errors.InvalidArgument`, naming it and the closest known name.
        Without one, a name that no rule and no role scope uses (it cannot change anything)
        issues an :class:`~sampledrec.errors.UnknownAttributeWarning`, with the same
        suggestion: often a typo that silently sends calls to the default rule.
        ``stacklevel`` is passed to :func:`warnings.warn` (2: the caller of this method).
        """
        for message in self.attribute_warnings(names):
            warnings.warn(UnknownAttributeWarning(message), stacklevel=stacklevel)

    def attribute_warnings(self, names: Iterable[object]) -> list[str]:
        """What :meth:`check_attributes` would warn about ``names``, as messages, without
        warning (for a server that answers them to its client); raises
        :class:`~sampledrec.errors.InvalidArgument` as it does."""
        known = self.known_attributes
        unknown = sorted({str(n) for n in names if n not in known})
        if not unknown:
            return []
        if self.attribute_names is not None:
            name = unknown[0]
            hint = _suggestion(name, known) or "; fix the name, or declare it in the policy"
            raise InvalidArgument(
                f"attribute {name!r} is not one of the attributes the policy declares "
                f"([attributes] names: {', '.join(sorted(self.attribute_names))}){hint}"
            )
        messages = []
        for name in unknown:
            hint = _suggestion(name, known)
            messages.append(
                f"attribute {name!r} is not used by any rule or role scope of the policy, "
                "so it changes nothing"
                + (
                    hint
                    if hint
                    else "; declare it in the policy's [attributes] names if it is "
                    "passed on purpose"
                )
            )
        return messages

    def rule_named(self, name: str) -> Rule:
        for rule in self.all_rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    def canonical_text(self) -> str:
        return self.canonical.decode("utf-8")


def _build(document: Mapping[str, Any], source: str | None) -> Policy:
    def fail(message: str, rule: str | None = None, fld: str | None = None) -> InvalidPolicy:
        return InvalidPolicy(message, file=source, rule=rule, field=fld)

    if not isinstance(document, Mapping):
        raise fail("a policy must be a TOML document (a table at the top)")
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise fail(
            f"unknown top-level key {unknown[0]!r}; allowed keys are "
            f"{', '.join(sorted(_TOP_KEYS))} (rules go in [[rules]] tables)",
            fld=unknown[0],
        )
    ceiling = DEFAULT_CEILING
    if "rate_ceiling" in document:
        try:
            ceiling = rate_fraction(document["rate_ceiling"])
        except InvalidRate as exc:
            raise fail(str(exc), fld="rate_ceiling") from None
    agent_attribute = document.get("agent_attribute", "agent")
    if not isinstance(agent_attribute, str) or not agent_attribute:
        raise fail(
            f"value {agent_attribute!r} must be the name of a call attribute, such as 'agent'",
            fld="agent_attribute",
        )
    raw_rules = document.get("rules", [])
    if not isinstance(raw_rules, list):
        raise fail("'rules' must be an array of tables: write each rule as [[rules]]", fld="rules")
    if "default" not in document:
        raise fail(
            "a [default] rule is required, for calls that no rule matches; add for example\n"
            '[default]\nrate = "0.05"\npurpose = "quality"\nretention = "6 months"'
        )
    warnings: list[str] = []
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        label = raw.get("name") if isinstance(raw, dict) else None
        label = label if isinstance(label, str) and label else f"#{i + 1}"
        rule = _build_rule(raw, i, label, ceiling, fail, warnings, is_default=False)
        if rule.name in seen:
            raise fail(f"two rules are named {rule.name!r}; give each rule its own name", label)
        seen.add(rule.name)
        if not rule.match:
            raise fail(
                "this rule has no `match` table, so it would take every call and hide the "
                'rules after it; add match = { queue = "..." } or move its settings to '
                "[default]",
                label,
                "match",
            )
        rules.append(rule)
    default = _build_rule(
        document["default"], len(rules), "default", ceiling, fail, warnings, is_default=True
    )
    if default.match:
        raise fail("the default rule takes every call; remove its `match`", "default", "match")
    if default.name in seen:
        raise fail(f"a rule is named {default.name!r} like the default rule; rename it", "default")
    roles = parse_roles(document.get("roles", {}), source=source)
    attribute_names = _build_attributes(document.get("attributes"), fail)
    if attribute_names is not None:
        declared = attribute_names | BUILTIN_ATTRIBUTES | {agent_attribute}
        for where, rule_name, names in (
            *((f"rules.{r.name}.match", r.name, r.match) for r in rules),
            *((f"roles.{n}.scope", None, role.scope) for n, role in roles.items()),
        ):
            for attr in sorted(names):
                if attr not in declared:
                    hint = _suggestion(attr, declared) or "; declare it, or fix the name"
                    raise fail(
                        f"attribute {attr!r} is not declared in [attributes] names{hint}",
                        rule_name,
                        where if rule_name is None else "match",
                    )
    canonical = canonical_json(document)
    return Policy(
        rules=tuple(rules),
        default=default,
        version=hashlib.sha256(canonical).hexdigest(),
        canonical=canonical,
        rate_ceiling=ceiling,
        agent_attribute=agent_attribute,
        name=document.get("name") if isinstance(document.get("name"), str) else None,
        source=source,
        warnings=tuple(warnings),
        roles=roles,
        attribute_names=attribute_names,
    )


def _build_attributes(raw: object, fail: Any) -> frozenset[str] | None:
    """The ``[attributes]`` table: ``names``, the call attributes the policy expects."""
    if raw is None:
        return None
    example = '[attributes]\nnames = ["queue", "direction", "campaign"]'
    if not isinstance(raw, Mapping):
        raise fail(f"value {raw!r} must be a table such as\n{example}", fld="attributes")
    unknown = sorted(set(raw) - _ATTRIBUTES_KEYS)
    if unknown:
        raise fail(
            f"unknown key {unknown[0]!r}; [attributes] has names, the list of the call "
            "attributes the policy expects",
            fld=f"attributes.{unknown[0]}",
        )
    names = raw.get("names")
    if not isinstance(names, list) or not names:
        raise fail(
            f"value {names!r} must be a non-empty list of attribute names, such as\n{example}",
            fld="attributes.names",
        )
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise fail(
                f"value {name!r} must be an attribute name (text without surrounding spaces)",
                fld="attributes.names",
            )
        if name in seen:
            raise fail(f"{name!r} is listed twice", fld="attributes.names")
        seen.add(name)
    return frozenset(seen)


def _attributes_used(rules: Iterable[Rule], roles: Mapping[str, Role]) -> frozenset[str]:
    used = {name for rule in rules for name in rule.match}
    used.update(name for role in roles.values() for name in role.scope)
    return frozenset(used)


def _suggestion(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'queue'?"`` for the known name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _build_rule(
    raw: object,
    index: int,
    label: str,
    ceiling: Fraction,
    fail: Any,
    warnings: list[str],
    *,
    is_default: bool,
) -> Rule:
    if not isinstance(raw, dict):
        raise fail("a rule must be a table with rate, purpose and retention", label)
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise fail(
            f"unknown field {unknown[0]!r}; a rule may have {', '.join(sorted(_RULE_KEYS))}",
            label,
            unknown[0],
        )
    name = raw.get("name", "default" if is_default else None)
    if not isinstance(name, str) or not name.strip():
        raise fail(
            f'value {name!r}: every rule needs a name, such as name = "sales"', label, "name"
        )
    for required in ("rate", "purpose", "retention"):
        if required not in raw:
            raise fail("missing; every rule needs rate, purpose and retention", label, required)
    try:
        value = rate_fraction(raw["rate"])
    except InvalidRate as exc:
        raise fail(str(exc), label, "rate") from None
    rate = repr(raw["rate"]) if isinstance(raw["rate"], float) else str(raw["rate"]).strip()
    purpose = raw["purpose"]
    if purpose not in PURPOSES:
        raise fail(
            f"value {purpose!r} is not a purpose; use one of {', '.join(PURPOSES)}",
            label,
            "purpose",
        )
    try:
        retention = RetentionPeriod.parse(raw["retention"])
    except ValueError as exc:
        raise fail(f"value {exc}", label, "retention") from None
    match = _build_match(raw.get("match", {}), label, fail)
    justification = _text_field(raw, "justification", label, fail)
    legal_basis = _text_field(raw, "legal_basis", label, fail)
    caps = {}
    for cap in ("max_per_agent_per_day", "max_per_agent_per_week"):
        if cap in raw:
            n = raw[cap]
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise fail(
                    f"value {n!r} must be a whole number of recordings (0 or more)", label, cap
                )
            caps[cap] = n

    # Guardrails (DESIGN.md §2).
    if value == 1:
        if purpose != "legal_obligation" or not legal_basis:
            raise fail(
                f"value {rate!r} records every call, which is refused unless purpose = "
                '"legal_obligation" and legal_basis names the law that requires it; '
                'for quality control sample a few calls instead (for example rate = "0.05")',
                label,
                "rate",
            )
    elif value > ceiling and (justification is None or len(justification) < MIN_JUSTIFICATION):
        raise fail(
            f"value {rate!r} is above the rate ceiling {_fraction_text(ceiling)}; "
            'lower it, or add a written justification = "..." explaining why this rate is '
            f"necessary (at least {MIN_JUSTIFICATION} characters)",
            label,
            "justification" if justification else "rate",
        )
    if purpose == "legal_obligation" and not legal_basis:
        raise fail(
            'purpose "legal_obligation" needs legal_basis = "..." naming the law or '
            "regulation that requires the recording",
            label,
            "legal_basis",
        )
    if purpose == "proof" and (justification is None or len(justification) < MIN_JUSTIFICATION):
        raise fail(
            'purpose "proof" needs justification = "..." saying why a written confirmation '
            "of the contract is not available (recording to prove a contract is unnecessary "
            f"when the law requires a written confirmation; at least {MIN_JUSTIFICATION} "
            "characters)",
            label,
            "justification",
        )
    if retention.approx_days() > RetentionPeriod.parse(GUIDANCE_RETENTION).approx_days() + 0.5:
        warnings.append(
            f"rule {name!r}: retention {retention.text!r} is longer than the "
            f"{GUIDANCE_RETENTION} usually recommended for call recordings"
        )
    return Rule(
        name=name.strip(),
        index=index,
        match=match,
        rate=rate,
        rate_value=value,
        threshold=threshold(value),
        purpose=cast(str, purpose),
        retention=retention,
        justification=justification,
        legal_basis=legal_basis,
        max_per_agent_per_day=caps.get("max_per_agent_per_day"),
        max_per_agent_per_week=caps.get("max_per_agent_per_week"),
        is_default=is_default,
    )


def _text_field(raw: Mapping[str, Any], key: str, label: str, fail: Any) -> str | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, str):
        raise fail(f"value {value!r} must be text in quotes", label, key)
    return value.strip() or None


def _build_match(raw: object, label: str, fail: Any) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict):
        raise fail(
            f'value {raw!r} must be a table such as match = {{ queue = "sales" }}',
            label,
            "match",
        )
    match: dict[str, frozenset[str]] = {}
    for attr, allowed in raw.items():
        values = allowed if isinstance(allowed, list) else [allowed]
        if not values:
            raise fail(
                f"match.{attr} is an empty list, so the rule can never match", label, "match"
            )
        texts = []
        for v in values:
            if isinstance(v, dict | list | float):
                raise fail(
                    f"match.{attr} = {v!r}: attribute values are text, numbers or true/false",
                    label,
                    "match",
                )
            texts.append(_attr_text(v))
        match[attr] = frozenset(texts)
    return match


def _fraction_text(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):g}"
