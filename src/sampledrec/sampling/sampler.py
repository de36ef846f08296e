"""The sampler: for each call, decide whether to record it, and why.

:meth:`Sampler.decide` applies the policy (first matching rule), the keyed draw of the current
epoch (DESIGN.md §4), objections, and per-agent caps. :meth:`Sampler.decide_batch` does the same
for whole arrays of calls with the vectorised draw, with results identical to calling
:meth:`~Sampler.decide` call by call in order.

Caps count the calls *selected* under a rule per agent and per UTC day or ISO week, in decision
order, so an auditor can replay them from the log. The counts are kept by a
:class:`~sampledrec.sampling.caps.CapLedger`: the store's (shared by every sampler of the store,
in any process) or, for a bare sampler, this process's memory. A call whose draw is below the
threshold of a capped rule is remembered for its epoch, so asking again about the same reference
returns the same decision and never counts twice against a cap (retries cannot re-roll).

Every decision is handed to the sampler's ``log``, a
:class:`~sampledrec.sampling.record.DecisionSink`, as a
:class:`~sampledrec.sampling.record.DecisionRecord`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import InvalidArgument
from ..keys.keyring import EpochKey, Keyring, epoch_end, epoch_id_at, epoch_start, epochs_ahead
from .caps import CapLedger, CapRequest, MemoryCapLedger, cap_periods
from .keyed import MAX_CALL_REF_BYTES, call_ref_bytes, draw_many
from .objections import ObjectionList
from .policy import Policy, Rule, attr_text
from .record import REASONS, DecisionRecord, DecisionSink, Reason

__all__ = ["REASONS", "Decision", "DecisionBatch", "Reason", "Sampler"]

_SAMPLED, _NOT_SAMPLED, _OBJECTION, _CAP = range(4)
_TRUE_TEXT: Final = frozenset({"true", "yes", "1", "y", "on"})
_new_tuple: Final = tuple.__new__


class Decision(NamedTuple):
    """Whether one call is recorded, with everything an auditor needs to recompute it.

    ``draw`` and ``threshold`` are the 56-bit integers of DESIGN.md §4: ``record`` is
    ``draw < threshold`` unless the caller objected or a cap was reached (see ``reason``).
    An immutable record (a named tuple: cheap to build on the per-call hot path).
    """

    call_ref: str | bytes
    record: bool
    reason: Reason
    rule: str
    purpose: str
    rate: str
    threshold: int
    draw: int
    epoch_id: str
    policy_version: str
    decided_at: datetime
    agent: str | None = None
    caller_pseudonym: str | None = None
    log_ticket: int | None = None  # the queued log entry (see DecisionLog.wait_durable)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; 56-bit integers as decimal strings (DESIGN.md §9)."""
        ref = self.call_ref
        return {
            "call_ref": ref if isinstance(ref, str) else None,
            "call_ref_hex": ref.hex() if isinstance(ref, bytes) else None,
            "record": self.record,
            "reason": self.reason,
            "rule": self.rule,
            "purpose": self.purpose,
            "rate": self.rate,
            "threshold": str(self.threshold),
            "draw": str(self.draw),
            "epoch_id": self.epoch_id,
            "policy_version": self.policy_version,
            "decided_at": self.decided_at.isoformat(),
            "agent": self.agent,
        }


@dataclass(frozen=True)
class DecisionBatch:
    """The decisions of :meth:`Sampler.decide_batch`, as arrays (one element per call)."""

    call_refs: Sequence[str | bytes] | npt.NDArray[Any]
    record: npt.NDArray[np.bool_]
    reason_codes: npt.NDArray[np.uint8]
    rule_index: npt.NDArray[np.intp]
    draws: npt.NDArray[np.uint64]
    thresholds: npt.NDArray[np.uint64]
    rules: tuple[Rule, ...]
    agents: npt.NDArray[np.object_]
    epoch_id: str
    policy_version: str
    decided_at: datetime

    def __len__(self) -> int:
        return int(self.record.shape[0])

    @property
    def reasons(self) -> npt.NDArray[np.str_]:
        return np.asarray(REASONS)[self.reason_codes]

    @property
    def rule_names(self) -> npt.NDArray[np.str_]:
        return np.asarray([r.name for r in self.rules])[self.rule_index]

    def __getitem__(self, i: int) -> Decision:
        rule = self.rules[int(self.rule_index[i])]
        ref = self.call_refs[i]
        if isinstance(ref, np.bytes_ | np.str_):
            ref = ref.item()
        elif isinstance(ref, np.ndarray):
            ref = ref.tobytes()
        return Decision(
            call_ref=ref,
            record=bool(self.record[i]),
            reason=REASONS[int(self.reason_codes[i])],
            rule=rule.name,
            purpose=rule.purpose,
            rate=rule.rate,
            threshold=int(self.thresholds[i]),
            draw=int(self.draws[i]),
            epoch_id=self.epoch_id,
            policy_version=self.policy_version,
            decided_at=self.decided_at,
            agent=self.agents[i],
        )

    def __iter__(self) -> Iterator[Decision]:
        for i in range(len(self)):
            yield self[i]


def _is_true(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_TEXT
    return value is not None and value == 1


class Sampler:
    """Decides, call by call, whether to record, under a policy and the epoch keys of a keyring.

    >>> from sampledrec.testing import MemoryKeyring
    >>> from sampledrec.clock import FixedClock
    >>> policy = Policy.from_toml('[default]\\nrate = "0.5"\\npurpose = "quality"\\n'
    ...                           'retention = "6 months"\\nrate_ceiling = "0.5"'.replace(
    ...                           'rate_ceiling = "0.5"', ''), source="example")
    >>> sampler = Sampler(policy, MemoryKeyring(), clock=FixedClock("2026-11-22T10:00Z"))
    >>> sampler.decide("call-1", {"queue": "sales"}).reason in ("sampled", "not_sampled")
    True

    Parameters
    ----------
    policy:
        The policy in force.
    keyring:
        Where epoch keys are created (``ahead`` epochs at a time) and read.
    clock:
        Time source (keyword-only); decisions use the epoch of ``clock.now()``.
    objections:
        Callers who objected; a call whose ``caller`` is on it is never recorded.
    on_new_keys:
        Called (under ``key_lock``) with the keys just created, each time the sampler moves to
        an epoch and before it uses its key: the store logs every commitment not yet logged.
    key_lock:
        A context manager factory held while keys are created (the store's lock).
    log:
        A :class:`~sampledrec.sampling.record.DecisionSink`, usually the store's
        :class:`~sampledrec.log.writer.DecisionLog`: every decision is handed to it as a
        :class:`~sampledrec.sampling.record.DecisionRecord`, and ``Decision.log_ticket`` (its
        ticket) lets a recorder wait until the entry is durable.
    policy_source:
        ``policy_source(now)`` returns the policy in force at ``now``; consulted at most once a
        second, so that a policy applied to the store is picked up by running samplers.
    """

    def __init__(
        self,
        policy: Policy,
        keyring: Keyring,
        *,
        clock: Clock = SYSTEM_CLOCK,
        objections: ObjectionList | None = None,
        ahead: int = 7,
        on_new_keys: Callable[[list[EpochKey]], None] | None = None,
        key_lock: Callable[[], Any] | None = None,
        log: DecisionSink | None = None,
        policy_source: Callable[[datetime], Policy] | None = None,
        caps: CapLedger | None = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise InvalidArgument(
                f"policy must be a Policy (Policy.load(path)), got {type(policy).__name__}"
            )
        if not isinstance(keyring, Keyring):
            raise InvalidArgument(
                f"keyring must implement the Keyring protocol, got {type(keyring).__name__}"
            )
        if log is not None and not isinstance(log, DecisionSink):
            raise InvalidArgument(
                f"log must implement the DecisionSink protocol (append_decision), got "
                f"{type(log).__name__}"
            )
        if ahead < 1:
            raise InvalidArgument(f"ahead={ahead} must be at least 1 epoch")
        self._policy = policy
        # Per call: are the attribute names all known? (a bound method, looked up once)
        self._attrs_known: Callable[[Iterable[object]], bool] = policy.known_attributes.issuperset
        self._keyring = keyring
        self._clock = clock
        self._objections = objections
        self._ahead = ahead
        self._on_new_keys = on_new_keys
        self._key_lock = key_lock
        self._epoch: tuple[datetime, datetime, EpochKey] | None = None
        self._caps: CapLedger = caps if caps is not None else MemoryCapLedger()
        # The sink's method, looked up once: it is called for every decision.
        self._append: Callable[[DecisionRecord], int] | None = (
            None if log is None else log.append_decision
        )
        self._policy_source = policy_source
        self._policy_checked = time.monotonic()

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def clock(self) -> Clock:
        return self._clock

    def close(self) -> None:
        """Release the caps ledger (the store's sampler holds a SQLite connection to it)."""
        self._caps.close()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_policy(self, policy: Policy) -> None:
        """Switch to a new policy version; later decisions name it."""
        self._attrs_known = policy.known_attributes.issuperset
        self._policy = policy

    def epoch_key(self, now: datetime) -> EpochKey:
        """The key of the epoch containing ``now``, creating it (and those ahead) if needed."""
        cached = self._epoch
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        epoch_id = epoch_id_at(now)
        wanted = epochs_ahead(now, self._ahead)
        with self._key_lock() if self._key_lock is not None else _nolock():
            created = self._keyring.ensure_epochs(wanted)
            if self._on_new_keys is not None:
                # Still under the lock, and also when another sampler created the keys: the
                # hook makes sure commitments are durable before any of them is used.
                self._on_new_keys(created)
        key = self._keyring.epoch_key(epoch_id)
        self._epoch = (epoch_start(epoch_id), epoch_end(epoch_id), key)
        return key

    # -- one call ----------------------------------------------------------------------------

    def decide(
        self,
        call_ref: str | bytes,
        attrs: Mapping[str, object] | None = None,
        *,
        caller: str | None = None,
    ) -> Decision:
        """Decide whether to record one call.

        ``attrs`` are the call's attributes (queue, campaign, direction, agent, ...); an
        ``objection`` attribute that is true means the caller objected. ``caller`` is the
        caller's phone number, checked against the objection list and never stored in clear.
        An attribute the policy does not know is refused (a policy that declares its
        attributes) or warned about (:meth:`Policy.check_attributes`).
        """
        # This is the per-call hot path: a few inlined steps instead of helper calls.
        if call_ref.__class__ is str:
            try:
                raw = call_ref.encode()
            except UnicodeEncodeError:
                raw = b""
            if not 0 < len(raw) <= MAX_CALL_REF_BYTES:
                raw = call_ref_bytes(call_ref)  # raises the error that says what is wrong
        else:
            raw = call_ref_bytes(call_ref)
        now = self._clock.now()
        cached = self._epoch
        if cached is not None and cached[0] <= now < cached[1]:
            key = cached[2]
        else:
            key = self.epoch_key(now)
        if self._policy_source is not None and time.monotonic() - self._policy_checked >= 1.0:
            self._refresh_policy(now)
        policy = self._policy
        if attrs is None:
            attrs = {}
        elif not self._attrs_known(attrs):
            policy.check_attributes(attrs, stacklevel=3)  # a typo must not pass in silence
        rule = policy.rule_for(attrs)
        mac = key.new_cmac()
        mac.update(raw)
        tag = mac.finalize()
        r = int.from_bytes(tag[:7], "big")
        agent_value = attrs.get(policy.agent_attribute)
        agent = (
            agent_value
            if agent_value.__class__ is str or agent_value is None
            else attr_text(agent_value)
        )
        pseudonym = None
        objection = attrs.get("objection")
        objected = objection is not None and _is_true(objection)
        if caller is not None and self._objections is not None:
            pseudonym = self._objections.pseudonym(caller)
            objected = objected or self._objections.contains_pseudonym(pseudonym)
        if objected:
            reason: Reason = "objection"
        elif r < rule.threshold:
            if rule.has_cap and agent is not None:
                # The store's ledger counts it, or gives the answer it gave this call before.
                kind = _STR if call_ref.__class__ is str else _BYTES
                (reason,) = self._caps.decide([_cap_request(key, kind + tag, rule, agent, now)])
            else:
                reason = "sampled"
        else:
            reason = "not_sampled"
        return self._make(call_ref, reason, rule, r, key, now, agent, pseudonym, policy.version)

    def _make(
        self,
        call_ref: str | bytes,
        reason: Reason,
        rule: Rule,
        r: int,
        key: EpochKey,
        now: datetime,
        agent: str | None,
        pseudonym: str | None,
        version: str,
    ) -> Decision:
        ref = call_ref if call_ref.__class__ is str else bytes(cast(bytes, call_ref))
        ticket = None
        append = self._append
        if append is not None:
            # tuple.__new__ skips the named tuple's argument binding (half the cost, per call).
            ticket = append(
                _new_tuple(
                    DecisionRecord,
                    (
                        key.epoch_id,
                        version,
                        rule.name,
                        rule.threshold,
                        reason,
                        r,
                        ref,
                        agent,
                        pseudonym,
                        now,
                    ),
                )
            )
        return _new_tuple(
            Decision,
            (
                ref,
                reason == "sampled",
                reason,
                rule.name,
                rule.purpose,
                rule.rate,
                rule.threshold,
                r,
                key.epoch_id,
                version,
                now,
                agent,
                pseudonym,
                ticket,
            ),
        )

    def _refresh_policy(self, now: datetime) -> None:
        self._policy_checked = time.monotonic()
        assert self._policy_source is not None
        policy = self._policy_source(now)
        if policy.version != self._policy.version:
            self.set_policy(policy)

    # -- many calls --------------------------------------------------------------------------

    def decide_batch(
        self,
        call_refs: Sequence[str | bytes] | npt.NDArray[Any],
        attrs: Mapping[str, Sequence[object] | npt.NDArray[Any]] | None = None,
        *,
        callers: Sequence[str | None] | None = None,
    ) -> DecisionBatch:
        """Decide for many calls at once (all at the clock's current time).

        ``attrs`` maps an attribute name to a column with one value per call (a list or numpy
        array; ``None`` where a call lacks the attribute). Results are identical to calling
        :meth:`decide` for each call in order.
        """
        now = self._clock.now()
        key = self.epoch_key(now)
        if self._policy_source is not None and time.monotonic() - self._policy_checked >= 1.0:
            self._refresh_policy(now)
        policy = self._policy
        if attrs:
            policy.check_attributes(attrs, stacklevel=3)
        draws = draw_many(key, call_refs)
        n = draws.shape[0]
        columns = {name: _column(name, col, n) for name, col in (attrs or {}).items()}
        rules = policy.all_rules
        rule_index = np.full(n, len(rules) - 1, dtype=np.intp)
        unassigned = np.ones(n, dtype=bool)
        for i, rule in enumerate(policy.rules):
            mask = unassigned.copy()
            for name, allowed in rule.match.items():
                col = columns.get(name)
                if col is None:
                    mask[:] = False
                    break
                mask &= np.isin(col, np.asarray(sorted(allowed), dtype=object))
            rule_index[mask] = i
            unassigned &= ~mask
        thresholds = np.asarray([r.threshold for r in rules], dtype=np.uint64)[rule_index]
        objected = np.zeros(n, dtype=bool)
        if "objection" in columns:
            objected |= np.asarray([_is_true(v) for v in columns["objection"]], dtype=bool)
        if callers is not None and self._objections is not None:
            if len(callers) != n:
                raise InvalidArgument(f"callers has {len(callers)} entries for {n} calls")
            objected |= np.asarray(
                [c is not None and c in self._objections for c in callers], dtype=bool
            )
        below = draws < thresholds
        codes = np.where(below, _SAMPLED, _NOT_SAMPLED).astype(np.uint8)
        codes[objected] = _OBJECTION
        agent_col = columns.get(policy.agent_attribute)
        agents = (
            np.full(n, None, dtype=object)
            if agent_col is None
            else np.asarray([None if a is None else str(a) for a in agent_col], dtype=object)
        )
        capped_rules = [i for i, r in enumerate(rules) if r.has_cap]
        if capped_rules:
            candidates = np.flatnonzero(
                (codes == _SAMPLED) & np.isin(rule_index, capped_rules) & (agents != None)  # noqa: E711
            )
            # The store's ledger counts them in array order, or gives earlier answers again.
            answers = self._caps.decide(
                [
                    _cap_request(
                        key,
                        cap_call_name(key, _item(call_refs, i)),
                        rules[int(rule_index[i])],
                        agents[i],
                        now,
                    )
                    for i in candidates.tolist()
                ]
            )
            for i, reason in zip(candidates.tolist(), answers, strict=True):
                codes[i] = REASONS.index(reason)
        if self._append is not None:
            self._log_batch(
                call_refs, codes, rule_index, draws, thresholds, rules, agents, key, now, policy
            )
        return DecisionBatch(
            call_refs=call_refs,
            record=codes == _SAMPLED,
            reason_codes=codes,
            rule_index=rule_index,
            draws=draws,
            thresholds=thresholds,
            rules=rules,
            agents=agents,
            epoch_id=key.epoch_id,
            policy_version=policy.version,
            decided_at=now,
        )

    def _log_batch(
        self,
        call_refs: Sequence[str | bytes] | npt.NDArray[Any],
        codes: npt.NDArray[np.uint8],
        rule_index: npt.NDArray[np.intp],
        draws: npt.NDArray[np.uint64],
        thresholds: npt.NDArray[np.uint64],
        rules: tuple[Rule, ...],
        agents: npt.NDArray[np.object_],
        key: EpochKey,
        now: datetime,
        policy: Policy,
    ) -> None:
        append = self._append
        assert append is not None
        version = policy.version  # the version the rules were taken from
        epoch_id = key.epoch_id
        names = [r.name for r in rules]
        for ref, code, ri, r, thr, agent in zip(
            _refs_list(call_refs),
            codes.tolist(),
            rule_index.tolist(),
            draws.tolist(),
            thresholds.tolist(),
            agents.tolist(),
            strict=True,
        ):
            append(
                _new_tuple(
                    DecisionRecord,
                    (epoch_id, version, names[ri], thr, REASONS[code], r, ref, agent, None, now),
                )
            )


def _refs_list(call_refs: Sequence[str | bytes] | npt.NDArray[Any]) -> list[str | bytes]:
    if isinstance(call_refs, np.ndarray):
        if call_refs.dtype == np.uint8 and call_refs.ndim == 2:
            return [row.tobytes() for row in call_refs]
        return [_item(call_refs, i) for i in range(call_refs.shape[0])]
    return list(call_refs)


def _nolock() -> Any:
    import contextlib

    return contextlib.nullcontext()


_STR: Final = b"\x01"  # the kind of a call reference, in the caps ledger's key: the audit
_BYTES: Final = b"\x02"  # tells a text reference from the same bytes given as bytes


def _ref_kind(ref: str | bytes) -> bytes:
    return _STR if isinstance(ref, str) else _BYTES


def cap_call_name(key: EpochKey, ref: str | bytes) -> bytes:
    """How the caps ledger names a call: its reference's kind, then its full CMAC tag."""
    return _ref_kind(ref) + _tag(key, call_ref_bytes(ref))


def _tag(key: EpochKey, raw: bytes) -> bytes:
    """The call's full AES-CMAC tag under the epoch key (its draw is the first 7 bytes)."""
    mac = key.new_cmac()
    mac.update(raw)
    return mac.finalize()


def _cap_request(key: EpochKey, call: bytes, rule: Rule, agent: str, now: datetime) -> CapRequest:
    """``call``: the reference's kind and full CMAC tag, which names the call in the ledger."""
    limits = cap_periods(now, rule.max_per_agent_per_day, rule.max_per_agent_per_week)
    return CapRequest(key.epoch_id, call, rule.name, agent, limits)


def _item(call_refs: Sequence[str | bytes] | npt.NDArray[Any], i: int) -> str | bytes:
    ref = call_refs[i]
    if isinstance(ref, np.ndarray):
        return ref.tobytes()
    if isinstance(ref, np.bytes_ | np.str_):
        return ref.item()
    return ref


def _column(name: str, col: Sequence[object] | npt.NDArray[Any], n: int) -> npt.NDArray[Any]:
    """An attribute column as an object array of text (None where missing)."""
    if len(col) != n:
        raise InvalidArgument(
            f"attribute column {name!r} has {len(col)} values for {n} calls; give one value "
            "per call (None where a call lacks it)"
        )
    arr = np.asarray(col)
    if arr.dtype.kind == "U":
        return arr.astype(object)
    if arr.dtype.kind == "S":  # bytes as UTF-8, as attr_text reads them
        return np.char.decode(arr, "utf-8", "replace").astype(object)
    if arr.dtype.kind == "b":
        return np.where(arr, "true", "false").astype(object)
    out = np.empty(n, dtype=object)
    for i, v in enumerate(col):
        out[i] = None if v is None else attr_text(v)
    return out
