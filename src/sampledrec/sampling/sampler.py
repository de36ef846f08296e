"""The sampler: for each call, decide whether to record it, and why.

:meth:`Sampler.decide` applies the policy (first matching rule), the keyed draw of the current
epoch (DESIGN.md §4), objections, and per-agent caps. :meth:`Sampler.decide_batch` does the same
for whole arrays of calls with the vectorised draw, with results identical to calling
:meth:`~Sampler.decide` call by call in order.

``decide`` is idempotent (DESIGN.md §4, docs/decisions/0015-idempotent-decide.md): asking again
about a call already decided in the epoch (same reference, same kind: text or bytes) returns
the first decision, marked ``repeat``, whatever attributes the new request carries; only a
caller who objects on the new request keeps it from being recorded (``record`` false). The
sampler remembers its own decisions in memory; a store's sampler also asks the store's
:class:`~sampledrec.sampling.decided.DecidedCalls` index, so that the first decision stands in
every process. A repeat is not logged again, unless the sampler cannot tell that the first
decision's entry is in the log (then, recorded or not, it logs an identical copy, which the
audit counts once: the first decider, another process or node, may have crashed before its
entry was durable, and every answer must be in some log).

Caps count the calls *selected* under a rule per agent and per UTC day or ISO week, in decision
order, so an auditor can replay them from the log. The counts are kept by a
:class:`~sampledrec.sampling.caps.CapLedger`: the store's (shared by every sampler of the store,
in any process) or, for a bare sampler, this process's memory. A repeat never counts again. A
new call that a capped rule matches and that names no agent is refused (``InvalidArgument``):
nobody could count it, and the audit could not tell it from an agent left out on purpose
(docs/decisions/0017-rules-replayable.md); an objection needs no count and is answered.

Every decision is handed to the sampler's ``log``, a
:class:`~sampledrec.sampling.record.DecisionSink`, as a
:class:`~sampledrec.sampling.record.DecisionRecord`, with the call's attributes that the rules
match on (:meth:`Policy.attributes_json`), from which an auditor recomputes the rule.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import InvalidArgument, SampledrecError
from ..keys.keyring import EpochKey, Keyring, epoch_end, epoch_id_at, epoch_start, epochs_ahead
from .caps import CapLedger, CapRequest, MemoryCapLedger, cap_agent, cap_periods
from .decided import DecidedCalls, FirstDecision, prune_before
from .keyed import MAX_CALL_REF_BYTES, call_ref_bytes, tags_many
from .objections import ObjectionList
from .policy import Policy, Rule, attr_text
from .record import REASONS, DecisionRecord, DecisionSink, Reason

__all__ = ["LOGGED_EARLIER", "REASONS", "Decision", "DecisionBatch", "Reason", "Sampler"]

_SAMPLED, _NOT_SAMPLED, _OBJECTION, _CAP = range(4)
_TRUE_TEXT: Final = frozenset({"true", "yes", "1", "y", "on"})
_new_tuple: Final = tuple.__new__
_first_8_bytes: Final = struct.Struct(">Q").unpack_from

#: ``Decision.log_ticket`` of a repeat whose first decision is already durable in the log: there
#: is nothing to wait for (``DecisionLog.wait_durable(0)`` returns at once).
LOGGED_EARLIER: Final = 0
_MEMO_LIMIT: Final = 1 << 16  # calls a store's sampler keeps in memory (its index has them all)
_MARK_EVERY: Final = 0.05  # seconds between notes to the index that first decisions are logged


class Decision(NamedTuple):
    """Whether one call is recorded, with everything an auditor needs to recompute it.

    ``draw`` and ``threshold`` are the 56-bit integers of DESIGN.md §4: ``record`` is
    ``draw < threshold`` unless the caller objected or a cap was reached (see ``reason``).
    An immutable record (a named tuple: cheap to build on the per-call hot path).

    ``repeat`` is true when the call had already been decided in the epoch: everything that was
    decided (reason, rule, threshold, policy version, ``decided_at``) is the first decision's,
    while ``agent`` and ``caller_pseudonym`` describe the call as this request gives them (the
    first decision's caller when this request names none), and ``record`` is false if this
    request's caller objects, even when the first decision selected the call. ``log_ticket`` of
    a repeat is the first decision's ticket when this sampler logged it,
    :data:`LOGGED_EARLIER` when its entry is already durable, or the ticket of an identical
    copy logged because that could not be known. Two decisions are equal when they decide the
    same for the same call: ``repeat``, how this answer was obtained, is not compared.
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
    repeat: bool = False

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Decision):
            return self[:-1] == other[:-1]
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[:-1])

    def to_json(self, *, log_index: int | None = None) -> dict[str, Any]:
        """A JSON-ready dict; 56-bit integers as decimal strings (DESIGN.md §9).

        With ``log_index`` (what :meth:`DecisionLog.wait_durable
        <sampledrec.log.writer.DecisionLog.wait_durable>` returned for ``log_ticket``, -1 when
        nothing was to wait for), the document ends with it: that is the answer of
        ``sampledrec decide --json`` and of the server's ``POST /v1/decisions``."""
        ref = self.call_ref
        doc: dict[str, Any] = {
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
            "repeat": self.repeat,
        }
        if log_index is not None:
            doc["log_index"] = log_index
        return doc


@dataclass(frozen=True)
class DecisionBatch:
    """The decisions of :meth:`Sampler.decide_batch`, as arrays (one element per call).

    ``repeat`` marks the calls already decided (earlier, or earlier in the batch); their
    decisions are in ``repeats``, and ``record``, ``reason_codes`` and ``thresholds`` hold
    their first decisions' values. ``rule_index`` indexes ``rules``, the rules of this batch's
    policy version: a repeat first decided under another version keeps the rule its attributes
    match now there (``repeats[i].rule`` and :attr:`rule_names` name the first decision's).
    ``log_tickets`` are the calls' tickets in the log (as ``Decision.log_ticket``; -1 where
    there is none), when the sampler has a log.
    """

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
    repeat: npt.NDArray[np.bool_] | None = None
    repeats: Mapping[int, Decision] = field(default_factory=dict)
    log_tickets: npt.NDArray[np.int64] | None = None
    #: each call's caller pseudonym (hex; None where the caller was not given), logged with
    #: its decision; None when no callers were given
    caller_pseudonyms: Sequence[str | None] | None = None

    def __len__(self) -> int:
        return int(self.record.shape[0])

    @property
    def reasons(self) -> npt.NDArray[np.str_]:
        return np.asarray(REASONS)[self.reason_codes]

    @property
    def rule_names(self) -> npt.NDArray[np.str_]:
        if not self.repeats:
            return np.asarray([r.name for r in self.rules])[self.rule_index]
        names = np.asarray([r.name for r in self.rules], dtype=object)[self.rule_index]
        for i, d in self.repeats.items():
            names[i] = d.rule
        return names.astype(str)

    def __getitem__(self, i: int) -> Decision:
        found = self.repeats.get(i)
        if found is not None:
            return found
        rule = self.rules[int(self.rule_index[i])]
        ref = self.call_refs[i]
        if isinstance(ref, np.bytes_ | np.str_):
            ref = ref.item()
        elif isinstance(ref, np.ndarray):
            ref = ref.tobytes()
        ticket = None if self.log_tickets is None else int(self.log_tickets[i])
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
            caller_pseudonym=None if self.caller_pseudonyms is None else self.caller_pseudonyms[i],
            log_ticket=None if ticket is None or ticket < 0 else ticket,
        )

    def __iter__(self) -> Iterator[Decision]:
        for i in range(len(self)):
            yield self[i]


# What a sampler remembers of a call it decided: the decision, or where it is in a batch.
_Memo = Decision | tuple[DecisionBatch, int]


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
    >>> policy = Policy.from_toml(
    ...     '[[rules]]\\nname = "sales"\\nmatch = { queue = "sales" }\\nrate = "0.2"\\n'
    ...     'purpose = "quality"\\nretention = "6 months"\\n'
    ...     '[default]\\nrate = "0.05"\\npurpose = "quality"\\nretention = "6 months"',
    ...     source="example",
    ... )
    >>> sampler = Sampler(policy, MemoryKeyring(), clock=FixedClock("2026-11-22T10:00Z"))
    >>> first = sampler.decide("call-1", {"queue": "sales"})
    >>> first.rule, first.reason in ("sampled", "not_sampled")
    ('sales', True)
    >>> again = sampler.decide("call-1", {"queue": "support"})  # the first decision stands
    >>> again.rule, again == first, again.repeat
    ('sales', True, True)

    Parameters
    ----------
    policy:
        The policy in force.
    keyring:
        Where epoch keys are created (``ahead`` epochs at a time) and read.
    clock:
        Time source (keyword-only); decisions use the epoch of ``clock.now()``.
    objections:
        Callers who objected; a call whose ``caller`` is on it is never recorded. While
        anyone is on it, a new call whose caller is not given is not recorded either (reason
        ``objection``): the sampler cannot rule out that its caller objected, and the audit
        can then tell a selection made without the caller from an objector's
        (docs/decisions/0018-objections-logged.md). Its decisions log the caller's pseudonym.
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
    caps:
        The :class:`~sampledrec.sampling.caps.CapLedger` that counts capped selections (the
        store's); without it, this process's memory.
    decided:
        A :class:`~sampledrec.sampling.decided.DecidedCalls` index shared with other samplers
        (the store's, in every process), written before each new decision is returned; without
        it, the sampler remembers its decisions in its own memory only.
    first_log_wait:
        Seconds that a repeat which may be recorded waits, when another sampler made the first
        decision, for that decision's log entry to be known durable; after that, an identical
        copy is logged (the first decider may have crashed before its entry was written).
    own_log:
        True for a node of a deployment, whose log is one of several: a call that may be
        recorded must be decided in this sampler's own log, so a repeat of another node's
        selected decision logs a copy at once (the index cannot say *which* log holds the
        first), and :meth:`recall` gives no ticket for a decision this sampler did not log
        (a door then refuses the stream; deciding again on this node logs the copy).
    idempotent:
        False only for simulations of calls known to be distinct (:func:`simulate_policy`):
        nothing is remembered, and a reference given again is decided afresh.
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
        decided: DecidedCalls | None = None,
        first_log_wait: float = 1.0,
        own_log: bool = False,
        idempotent: bool = True,
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
        if decided is not None and not isinstance(decided, DecidedCalls):
            raise InvalidArgument(
                f"decided must implement the DecidedCalls protocol, got {type(decided).__name__}"
            )
        if decided is not None and not idempotent:
            raise InvalidArgument(
                "idempotent=False is for simulations: a sampler that forgets its decisions "
                "cannot share them through a decided-calls index (decided=None)"
            )
        if ahead < 1:
            raise InvalidArgument(f"ahead={ahead} must be at least 1 epoch")
        if not first_log_wait >= 0:
            raise InvalidArgument(f"first_log_wait={first_log_wait!r} must be 0 or more seconds")
        self._policy = policy
        # Per call: are the attribute names all known? (a bound method, looked up once)
        self._attrs_known: Callable[[Iterable[object]], bool] = policy.known_attributes.issuperset
        self._keyring = keyring
        self._clock = clock
        self._objections = objections
        self._ahead = ahead
        self._on_new_keys = on_new_keys
        self._key_lock = key_lock
        # The current epoch: its start, end, key, and this sampler's memory of its calls.
        self._epoch: tuple[datetime, datetime, EpochKey, dict[bytes, _Memo] | None] | None = None
        self._caps: CapLedger = caps if caps is not None else MemoryCapLedger()
        # The sink's method, looked up once: it is called for every decision.
        self._append: Callable[[DecisionRecord], int] | None = (
            None if log is None else log.append_decision
        )
        self._policy_source = policy_source
        self._policy_checked = time.monotonic()
        self._decided = decided
        self._idempotent = idempotent
        self._memos: dict[str, dict[bytes, _Memo]] = {}
        self._first_log_wait = float(first_log_wait)
        self._own_log = own_log
        # First decisions (and copies) that this sampler logged and the index does not
        # know to be durable yet, in the order they were logged: (epoch_id, call) -> ticket.
        self._pending: dict[tuple[str, bytes], int] = {}
        self._pending_lock = threading.Lock()
        self._marked_at = time.monotonic()
        is_durable = getattr(log, "is_durable", None) if decided is not None else None
        self._is_durable: Callable[[int], bool] | None = (
            is_durable if callable(is_durable) else None
        )
        flush_through = getattr(log, "flush_through", None) if decided is not None else None
        self._flush_through: Callable[[int, float | None], bool] | None = (
            flush_through if callable(flush_through) else None
        )
        self._closed = False

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def clock(self) -> Clock:
        return self._clock

    def close(self) -> None:
        """Release the caps ledger and the decided-calls index (a store's sampler holds SQLite
        connections to them), after telling the index which of this sampler's selected first
        decisions are durable in the log. A log that can (``flush_through``, as
        :class:`~sampledrec.log.writer.DecisionLog` does) is asked to write its queue at once,
        so the index hears of every decision before the sampler is gone; another sink is
        waited for up to a second."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._decided is not None and self._is_durable is not None and self._pending:
                # The log (usually closed just after the sampler) writes its queue within its
                # group commit: then no repeat elsewhere has to wait for us, or log a copy.
                with self._pending_lock:
                    last = max(self._pending.values(), default=0)
                if self._flush_through is not None:
                    self._flush_through(last, 10.0)
                else:
                    deadline = time.monotonic() + 1.0
                    while not self._is_durable(last) and time.monotonic() < deadline:
                        time.sleep(0.002)
                self._mark_logged(force=True)
        finally:
            try:
                self._caps.close()
            finally:
                if self._decided is not None:
                    self._decided.close()

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
        real_now = min(now, SYSTEM_CLOCK.now())  # a simulation ahead in time prunes nothing
        memo = None
        if self._idempotent:
            cutoff = prune_before(real_now)
            for old in [e for e in self._memos if e < cutoff and e != epoch_id]:
                del self._memos[old]
            memo = self._memos.setdefault(epoch_id, {})
        if cached is not None and self._decided is not None:
            self._decided.prune(real_now)  # a new epoch: a long-running sampler prunes here
        self._epoch = (epoch_start(epoch_id), epoch_end(epoch_id), key, memo)
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
        caller's phone number, checked against the objection list and never stored in clear
        (its keyed pseudonym is logged); without it, while anyone is on the list, a new call
        is decided ``objection`` (and a repeat asks about the first decision's caller).
        An attribute the policy does not know is refused (a policy that declares its
        attributes) or warned about (:meth:`Policy.check_attributes`).

        A call already decided in the epoch gets its first decision again, with ``repeat``
        true (see :class:`Decision`): nothing is counted or, usually, logged again. A new call
        that a rule with a per-agent cap matches must carry the agent attribute, or object:
        otherwise it is refused with :class:`~sampledrec.errors.InvalidArgument`.
        """
        # This is the per-call hot path: a few inlined steps instead of helper calls.
        if call_ref.__class__ is str:
            text = True
            try:
                raw = call_ref.encode()
            except UnicodeEncodeError:
                raw = b""
            if not 0 < len(raw) <= MAX_CALL_REF_BYTES:
                raw = call_ref_bytes(call_ref)  # raises the error that says what is wrong
        else:
            text = False
            raw = call_ref_bytes(call_ref)
        now = self._clock.now()
        cached = self._epoch
        if cached is None or not cached[0] <= now < cached[1]:
            self.epoch_key(now)
            cached = self._epoch
            assert cached is not None
        key = cached[2]
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
        r = _first_8_bytes(tag)[0] >> 8  # the first 7 bytes, big-endian
        agent_value = attrs.get(policy.agent_attribute)
        agent = (
            agent_value
            if agent_value.__class__ is str or agent_value is None
            else attr_text(agent_value)
        )
        if agent is not None and not agent.isascii():
            _check_agent(agent, policy.agent_attribute)  # the log must be able to encode it
        pseudonym = None
        objection = attrs.get("objection")
        # None: the caller is unknown while someone objected (resolved from the first decision
        # for a repeat; a new decision cannot rule out an objection, so it records nothing).
        objected: bool | None = objection is not None and _is_true(objection)
        objections = self._objections
        if objections is not None and not objected:
            if caller is not None:
                pseudonym = objections.pseudonym(caller)
                objected = objections.contains_pseudonym(pseudonym)
            elif not objections.is_empty():
                objected = None
        elif caller is not None and objections is not None:
            pseudonym = objections.pseudonym(caller)
        decided = self._decided
        # What the log keeps of the call's attributes (and the index, for a copy of the entry).
        attributes = (
            policy.attributes_json(attrs)
            if self._append is not None or decided is not None
            else None
        )
        # How this sampler remembers the call (its tag; bytes references apart, as the audit
        # tells "c1" from b"c1"), and how the store's index names it (kind, then tag).
        name = tag if text else _BYTES + tag
        memo = cached[3]
        if agent is None and objected is False and rule.has_cap:
            # A capped rule counts calls per agent: a call without one is refused (the audit
            # would report it), unless it was decided before, and that first decision stands.
            first = None if memo is None else memo.get(name)
            if first is not None:
                return self._repeat(first, call_ref, name, agent, pseudonym, objected, memo)
            if decided is not None:
                call = _STR + tag if text else name
                earlier = decided.get(key.epoch_id, call)
                if earlier is not None:
                    return self._repeat_indexed(
                        earlier, call_ref, name, call, agent, pseudonym, objected, memo
                    )
            raise InvalidArgument(_no_agent(policy, rule))
        if objected is not False:
            reason: Reason = "objection"
        elif r < rule.threshold:
            if rule.has_cap and agent is not None:
                call = _STR + tag if text else name
                first = None if memo is None else memo.get(name)
                if first is not None:  # a repeat must not count against the cap again
                    return self._repeat(first, call_ref, name, agent, pseudonym, objected, memo)
                if decided is not None:
                    earlier = decided.get(key.epoch_id, call)
                    if earlier is not None:
                        return self._repeat_indexed(
                            earlier, call_ref, name, call, agent, pseudonym, objected, memo
                        )
                # The store's ledger counts it, or gives the answer it gave this call before.
                (reason,) = self._caps.decide([_cap_request(key, call, rule, agent, now)])
            else:
                reason = "sampled"
        else:
            reason = "not_sampled"
        if decided is not None:
            return self._first_shared(
                call_ref, name, _STR + tag if text else name, reason, rule, r, key, now, agent,
                pseudonym, policy.version, objected, memo, attributes,
            )  # fmt: skip
        if self._append is None:
            decision: Decision = _new_tuple(
                Decision,
                (
                    call_ref if text else bytes(cast(bytes, call_ref)),
                    reason == "sampled",
                    reason,
                    rule.name,
                    rule.purpose,
                    rule.rate,
                    rule.threshold,
                    r,
                    key.epoch_id,
                    policy.version,
                    now,
                    agent,
                    pseudonym,
                    None,
                    False,
                ),
            )
            if memo is not None:
                # Another thread may have decided the same call in between: its answer stands.
                first = memo.setdefault(name, decision)
                if first is not decision:
                    return self._repeat(first, call_ref, name, agent, pseudonym, objected, memo)
            return decision
        return self._first_logged(
            call_ref, name, reason, rule, r, key, now, agent, pseudonym, policy.version,
            objected, memo, attributes,
        )  # fmt: skip

    def recall(self, call_ref: str | bytes, *, overlap: float = 300.0) -> Decision | None:
        """The call's decision, if it was decided in the current epoch; None if it was not.

        For a front door that records a call decided elsewhere (a dialplan asked the decision
        service, then opens a media stream naming the call): it is answered like a repeat of
        :meth:`decide` (``repeat`` true, the first decision's reason, rule, draw and time; no
        agent, and the first decision's caller for the objection check), but **never makes a
        decision**: no draw, no cap counted, nothing logged. A call not decided in the epoch is
        ``None``, and must not be recorded. Within ``overlap`` seconds after an epoch begins,
        the previous epoch is asked too (a call decided just before midnight UTC).

        ``log_ticket`` says what a recorder waits for before anything is on disk: this
        sampler's own entry, :data:`LOGGED_EARLIER`, or ``None`` when another sampler made the
        decision and its entry is not known to be durable after ``first_log_wait`` seconds (a
        repeat through :meth:`decide` would log a copy then; this logs nothing, and
        :meth:`Vault.record <sampledrec.vault.Vault.record>` refuses a decision without one).
        """
        raw = call_ref_bytes(call_ref)  # raises the error that says what is wrong
        text = call_ref.__class__ is str
        now = self._clock.now()
        self.epoch_key(now)
        cached = self._epoch
        assert cached is not None
        epochs = [(cached[2], cached[3])]
        if overlap > 0 and (now - cached[0]).total_seconds() < overlap:
            previous = epoch_id_at(cached[0] - timedelta(microseconds=1))
            try:
                key = self._keyring.epoch_key(previous)
            except SampledrecError:
                pass  # no key for it: nothing was decided in it
            else:
                epochs.append((key, self._memos.get(previous)))
        for key, memo in epochs:
            found = self._recall_in(call_ref, raw, text, key, memo)
            if found is not None:
                return found
        return None

    def _recall_in(
        self,
        call_ref: str | bytes,
        raw: bytes,
        text: bool,
        key: EpochKey,
        memo: dict[bytes, _Memo] | None,
    ) -> Decision | None:
        mac = key.new_cmac()
        mac.update(raw)
        tag = mac.finalize()
        name = tag if text else _BYTES + tag
        known = None if memo is None else memo.get(name)
        if known is not None and not isinstance(known, Decision):
            batch, i = known
            known = batch[i]
        if known is not None and (known.log_ticket is not None or self._append is None):
            first = (
                known.epoch_id, known.reason, known.rule, known.purpose, known.rate,
                known.threshold, known.draw, known.policy_version, known.decided_at,
                known.caller_pseudonym,
            )  # fmt: skip
            ticket = known.log_ticket
        else:
            decided = self._decided
            if decided is None:
                return None
            call = _STR + tag if text else name
            earlier = decided.get(key.epoch_id, call)
            if earlier is None:
                return None
            first = (
                earlier.epoch_id, earlier.reason, earlier.rule, earlier.purpose, earlier.rate,
                earlier.threshold, earlier.draw, earlier.policy_version, earlier.decided_at,
                earlier.caller_pseudonym,
            )  # fmt: skip
            if self._append is None:
                ticket = None
            elif self._own_log:
                with self._pending_lock:
                    ticket = self._pending.get((earlier.epoch_id, earlier.call))
            else:
                ticket = self._recall_ticket(earlier)
        epoch_id, reason, rule, purpose, rate, threshold, draw, version, at, pseudonym = first
        objections = self._objections
        objected = (
            objections is not None
            and not objections.is_empty()
            and self._first_caller_objects(pseudonym)
        )
        ref = call_ref if text else bytes(cast(bytes, call_ref))
        return _new_tuple(
            Decision,
            (
                ref, reason == "sampled" and not objected, reason, rule, purpose, rate,
                threshold, draw, epoch_id, version, at, None, pseudonym, ticket, True,
            ),
        )  # fmt: skip

    def _recall_ticket(self, earlier: FirstDecision) -> int | None:
        """What a recorder of a recalled decision waits for (see :meth:`recall`)."""
        decided = self._decided
        assert decided is not None
        name = (earlier.epoch_id, earlier.call)
        deadline = time.monotonic() + self._first_log_wait
        while True:
            with self._pending_lock:
                own = self._pending.get(name)
            if own is not None:
                return own
            if earlier.logged:
                return LOGGED_EARLIER
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)
            now = decided.get(*name)
            if now is None:
                return None
            earlier = now

    def _first_logged(
        self,
        call_ref: str | bytes,
        name: bytes,
        reason: Reason,
        rule: Rule,
        r: int,
        key: EpochKey,
        now: datetime,
        agent: str | None,
        pseudonym: str | None,
        version: str,
        objected: bool | None,
        memo: dict[bytes, _Memo] | None,
        attributes: str | None,
    ) -> Decision:
        """A new decision of a sampler that logs, without a shared index."""
        if memo is None:
            return self._make(
                call_ref, reason, rule, r, key, now, agent, pseudonym, version, attributes
            )
        # Claim the call before logging, so that two threads never log two first decisions;
        # the claim (without a ticket yet) is replaced once the entry is queued.
        claim = self._make(
            call_ref, reason, rule, r, key, now, agent, pseudonym, version, attributes, False
        )
        first = memo.setdefault(name, claim)
        if first is not claim:
            return self._repeat(first, call_ref, name, agent, pseudonym, objected, memo)
        decision = self._make(
            call_ref, reason, rule, r, key, now, agent, pseudonym, version, attributes
        )
        memo[name] = decision
        return decision

    def _first_shared(
        self,
        call_ref: str | bytes,
        name: bytes,
        call: bytes,
        reason: Reason,
        rule: Rule,
        r: int,
        key: EpochKey,
        now: datetime,
        agent: str | None,
        pseudonym: str | None,
        version: str,
        objected: bool | None,
        memo: dict[bytes, _Memo] | None,
        attributes: str | None,
    ) -> Decision:
        """A new decision, unless the store's index already has one for the call."""
        decided = self._decided
        assert decided is not None
        if memo is not None:
            known = memo.get(name)
            if known is not None:  # decided (or seen) in this process: no query
                return self._repeat(known, call_ref, name, agent, pseudonym, objected, memo)
        first = FirstDecision(
            key.epoch_id,
            call,
            reason,
            rule.name,
            rule.purpose,
            rule.rate,
            version,
            rule.threshold,
            pseudonym,
            now,
            False,
            None,
            attributes,
        )
        # Durable in the index before the decision is returned or logged: a crash in between
        # leaves a first decision that a retry will repeat (and log, if it may be recorded).
        (earlier,) = decided.remember((first,))
        if earlier is not None:
            return self._repeat_indexed(
                earlier, call_ref, name, call, agent, pseudonym, objected, memo
            )
        decision = self._make(
            call_ref, reason, rule, r, key, now, agent, pseudonym, version, attributes
        )
        ticket = decision.log_ticket
        if ticket is not None and self._is_durable is not None:
            with self._pending_lock:
                self._pending[(key.epoch_id, call)] = ticket
        self._memoize(memo, name, decision)
        if self._pending:
            self._mark_logged()
        return decision

    def _memoize(self, memo: dict[bytes, _Memo] | None, name: bytes, value: _Memo) -> None:
        if memo is None:
            return
        if self._decided is not None and len(memo) >= _MEMO_LIMIT:
            memo.clear()  # the index remembers them all; memory only saves a query
        memo[name] = value

    def _repeat(
        self,
        first: _Memo,
        call_ref: str | bytes,
        name: bytes,
        agent: str | None,
        pseudonym: str | None,
        objected: bool | None,
        memo: dict[bytes, _Memo] | None,
        deadline: float | None = None,
    ) -> Decision:
        """The answer to a call this sampler remembers (``first``: its first decision).
        ``deadline``: see :meth:`_ticket_for`."""
        if not isinstance(first, Decision):
            batch, i = first
            first = batch[i]
        if objected is None:
            objected = self._first_caller_objects(first.caller_pseudonym)
        record = first.reason == "sampled" and not objected
        ticket = first.log_ticket
        if ticket is None and self._append is not None:
            call = _call_of(name)
            if self._decided is not None:
                earlier = self._decided.get(first.epoch_id, call)
                if earlier is not None:
                    return self._repeat_indexed(
                        earlier, call_ref, name, call, agent, pseudonym, objected, memo, deadline
                    )
            elif memo is not None:
                ticket = _claimed_ticket(memo, name)
        return _new_tuple(
            Decision,
            (
                call_ref if call_ref.__class__ is str else bytes(cast(bytes, call_ref)),
                record,
                first.reason,
                first.rule,
                first.purpose,
                first.rate,
                first.threshold,
                first.draw,
                first.epoch_id,
                first.policy_version,
                first.decided_at,
                agent,
                pseudonym if pseudonym is not None else first.caller_pseudonym,
                ticket,
                True,
            ),
        )

    def _repeat_indexed(
        self,
        earlier: FirstDecision,
        call_ref: str | bytes,
        name: bytes,
        call: bytes,
        agent: str | None,
        pseudonym: str | None,
        objected: bool | None,
        memo: dict[bytes, _Memo] | None,
        deadline: float | None = None,
    ) -> Decision:
        """The answer to a call that the store's index says was decided (``earlier``).
        ``deadline``: see :meth:`_ticket_for`."""
        ref = call_ref if call_ref.__class__ is str else bytes(cast(bytes, call_ref))
        if objected is None:
            objected = self._first_caller_objects(earlier.caller_pseudonym)
        record = earlier.reason == "sampled" and not objected
        ticket: int | None = None
        if self._append is not None:
            with self._pending_lock:
                ticket = self._pending.get((earlier.epoch_id, call))
            if ticket is not None:
                pass  # this sampler logged it: a recorder waits for that entry
            elif record and self._own_log:
                ticket = self._ticket_for(earlier, ref, agent, pseudonym, time.monotonic())
            elif earlier.logged:
                ticket = LOGGED_EARLIER
            else:
                # Recorded or not, the answer must be in some log: the first decider may have
                # crashed before its entry was durable (several nodes, or processes, on one
                # PostgreSQL index never rebuild it from a log).
                ticket = self._ticket_for(earlier, ref, agent, pseudonym, deadline)
        self._memoize(
            memo,
            name,
            _new_tuple(
                Decision,
                (
                    ref,
                    earlier.reason == "sampled",
                    earlier.reason,
                    earlier.rule,
                    earlier.purpose,
                    earlier.rate,
                    earlier.threshold,
                    earlier.draw,
                    earlier.epoch_id,
                    earlier.policy_version,
                    earlier.decided_at,
                    None,
                    earlier.caller_pseudonym,
                    ticket,
                    False,
                ),
            ),
        )
        return _new_tuple(
            Decision,
            (
                ref,
                record,
                earlier.reason,
                earlier.rule,
                earlier.purpose,
                earlier.rate,
                earlier.threshold,
                earlier.draw,
                earlier.epoch_id,
                earlier.policy_version,
                earlier.decided_at,
                agent,
                pseudonym if pseudonym is not None else earlier.caller_pseudonym,
                ticket,
                True,
            ),
        )

    def _first_caller_objects(self, pseudonym: str | None) -> bool:
        """Whether a repeat that does not name its caller is an objector's: the first
        decision's caller is asked about; an unknown caller may be one (someone objected)."""
        objections = self._objections
        if pseudonym is None or objections is None:
            return True
        return objections.contains_pseudonym(pseudonym)

    def _ticket_for(
        self,
        earlier: FirstDecision,
        ref: str | bytes,
        agent: str | None,
        pseudonym: str | None,
        deadline: float | None = None,
    ) -> int:
        """A ticket for a repeat that may be recorded, whose first decision another sampler
        made and the index does not know to be logged: wait (``first_log_wait``, or until
        ``deadline``, one for a whole batch) for that sampler to say its entry is durable, else
        log an identical copy."""
        decided = self._decided
        assert decided is not None and self._append is not None
        name = (earlier.epoch_id, earlier.call)
        if deadline is None:
            deadline = time.monotonic() + self._first_log_wait
        while True:
            with self._pending_lock:
                own = self._pending.get(name)
            if own is not None:
                return own  # another thread of this sampler logged it meanwhile
            self._mark_logged(force=True)  # so that a sampler waiting for us is not kept
            now = decided.get(*name)
            if now is not None and now.logged and not self._own_log:
                return LOGGED_EARLIER
            if now is None or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        # The first decider may be gone with its entry: the call must be in the log before
        # anything of it is recorded. The copy agrees with the first decision in every field
        # the audit compares, so it counts once.
        ticket = self._append(
            _new_tuple(
                DecisionRecord,
                (
                    earlier.epoch_id,
                    earlier.policy_version,
                    earlier.rule,
                    earlier.threshold,
                    earlier.reason,
                    earlier.draw,
                    ref,
                    agent,
                    pseudonym if pseudonym is not None else earlier.caller_pseudonym,
                    earlier.decided_at,
                    earlier.attributes,  # the first decision's: its rule was drawn from them
                ),
            )
        )
        if self._is_durable is not None:
            with self._pending_lock:
                self._pending[name] = ticket
        return ticket

    def _mark_logged(self, *, force: bool = False) -> None:
        """Tell the index which first decisions of this sampler are durable in the
        log (at most every ``_MARK_EVERY`` seconds unless forced): a repeat in another process
        then needs neither to wait nor to log a copy."""
        is_durable = self._is_durable
        decided = self._decided
        if is_durable is None or decided is None or not self._pending:
            return
        now = time.monotonic()
        if not force and now - self._marked_at < _MARK_EVERY:
            return
        self._marked_at = now
        with self._pending_lock:
            ready = []
            for name, ticket in self._pending.items():  # in the order they were logged
                if not is_durable(ticket):
                    break
                ready.append((name, ticket))
        if ready:
            decided.mark_logged([name for name, _ in ready])
            with self._pending_lock:
                for name, ticket in ready:
                    if self._pending.get(name) == ticket:
                        del self._pending[name]

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
        attributes: str | None = None,
        log: bool = True,
    ) -> Decision:
        ref = call_ref if call_ref.__class__ is str else bytes(cast(bytes, call_ref))
        ticket = None
        append = self._append
        if append is not None and log:
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
                        attributes,
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
                False,
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
        :meth:`decide` for each call in order: a call decided before, or earlier in the batch,
        is a repeat (``DecisionBatch.repeat``).
        """
        now = self._clock.now()
        key = self.epoch_key(now)
        cached = self._epoch
        assert cached is not None
        memo = cached[3]
        if self._policy_source is not None and time.monotonic() - self._policy_checked >= 1.0:
            self._refresh_policy(now)
        policy = self._policy
        if attrs:
            policy.check_attributes(attrs, stacklevel=3)
        tags, draws = tags_many(key, call_refs)
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
        # Each call's caller pseudonym (as decide computes it), and the calls whose caller is
        # unknown while someone objected (None in objected_list below: as in decide).
        pseudonyms: list[str | None] = [None] * n
        caller_unknown = np.zeros(n, dtype=bool)
        objections = self._objections
        if objections is not None:
            if callers is not None:
                if len(callers) != n:
                    raise InvalidArgument(f"callers has {len(callers)} entries for {n} calls")
                pseudonyms = [None if c is None else objections.pseudonym(c) for c in callers]
                objected |= np.asarray(
                    [p is not None and objections.contains_pseudonym(p) for p in pseudonyms],
                    dtype=bool,
                )
            if not objections.is_empty():
                caller_unknown = np.asarray([p is None for p in pseudonyms], dtype=bool)
                caller_unknown &= ~objected
        below = draws < thresholds
        codes = np.where(below, _SAMPLED, _NOT_SAMPLED).astype(np.uint8)
        codes[objected | caller_unknown] = _OBJECTION
        agent_col = columns.get(policy.agent_attribute)
        agents = (
            np.full(n, None, dtype=object)
            if agent_col is None
            else np.asarray([None if a is None else str(a) for a in agent_col], dtype=object)
        )
        if agent_col is not None:
            for a in agents.tolist():
                if a is not None and not a.isascii():
                    _check_agent(a, policy.agent_attribute)
        capped_rules = [i for i, r in enumerate(rules) if r.has_cap]
        decided = self._decided
        # What the log keeps of each call's attributes (and the index, for copies of entries).
        attributes: Sequence[str | None] = (
            _attributes_rows(policy, columns, n)
            if self._append is not None or decided is not None
            else [None] * n
        )
        # The references as Python objects: only if the calls are remembered or logged.
        refs = _refs_list(call_refs) if memo is not None or self._append is not None else []
        deadline = time.monotonic() + self._first_log_wait  # one wait for the whole batch
        agent_list = agents.tolist()
        objected_list: list[bool | None] = [
            None if u else o
            for o, u in zip(objected.tolist(), caller_unknown.tolist(), strict=True)
        ]
        # Each call's names (as in decide) and whether it is new, a repeat of a call this
        # sampler remembers, or a repeat of a call earlier in the batch.
        # How this sampler remembers each call (as in decide), and how the store's index (and
        # the caps ledger) names it; a simulation that remembers nothing names only the calls
        # that the caps ledger needs.
        names: list[bytes] = []
        calls: list[bytes] = []
        if memo is not None:
            for i, ref in enumerate(refs):
                tag = tags[16 * i : 16 * i + 16]
                if isinstance(ref, str):
                    names.append(tag)
                    calls.append(_STR + tag)
                else:
                    names.append(_BYTES + tag)
                    calls.append(names[-1])

        def call_at(i: int) -> bytes:
            if calls:
                return calls[i]
            ref = refs[i] if refs else _item(call_refs, i)
            return (_STR if isinstance(ref, str) else _BYTES) + tags[16 * i : 16 * i + 16]

        if capped_rules:  # calls without an agent under a capped rule: as in decide
            unnamed = np.flatnonzero(
                np.isin(rule_index, capped_rules)
                & (agents == None)  # noqa: E711
                & ~(objected | caller_unknown)
            ).tolist()
            if unnamed:
                first_of: dict[bytes, int] = {}
                for j, called in enumerate(names):
                    first_of.setdefault(called, j)
                for i in unnamed:
                    if memo is not None and (first_of[names[i]] < i or names[i] in memo):
                        continue  # a repeat: its first decision stands
                    if decided is not None and decided.get(key.epoch_id, call_at(i)) is not None:
                        continue
                    raise InvalidArgument(
                        f"call {i} of the batch: " + _no_agent(policy, rules[int(rule_index[i])])
                    )

        repeats: dict[int, Decision] = {}
        fresh: list[int] = []
        later: list[tuple[int, int]] = []
        if memo is None:
            fresh = list(range(n))
        else:
            first_row: dict[bytes, int] = {}
            for i, called in enumerate(names):
                first = memo.get(called)
                if first is not None:
                    repeats[i] = self._repeat(
                        first, refs[i], called, agent_list[i], pseudonyms[i], objected_list[i],
                        memo, deadline,
                    )  # fmt: skip
                    continue
                j = first_row.setdefault(called, i)
                if j != i:
                    later.append((i, j))
                else:
                    fresh.append(i)
        if capped_rules and fresh:
            rows = np.asarray(fresh, dtype=np.intp)
            candidates = rows[
                (codes[rows] == _SAMPLED)
                & np.isin(rule_index[rows], capped_rules)
                & (agents[rows] != None)  # noqa: E711
            ].tolist()
            if decided is not None:  # a repeat must not count against the cap again
                unknown = []
                for i in candidates:
                    earlier = decided.get(key.epoch_id, calls[i])
                    if earlier is None:
                        unknown.append(i)
                    else:
                        repeats[i] = self._repeat_indexed(
                            earlier, refs[i], names[i], calls[i], agent_list[i], pseudonyms[i],
                            objected_list[i], memo, deadline,
                        )  # fmt: skip
                candidates = unknown
            # The store's ledger counts them in array order, or gives earlier answers again.
            answers = self._caps.decide(
                [
                    _cap_request(key, call_at(i), rules[int(rule_index[i])], agents[i], now)
                    for i in candidates
                ]
            )
            for i, reason in zip(candidates, answers, strict=True):
                codes[i] = REASONS.index(reason)
            if repeats:
                fresh = [i for i in fresh if i not in repeats]
        if decided is not None and fresh:
            version = policy.version
            known = decided.remember(
                [
                    FirstDecision(
                        key.epoch_id,
                        calls[i],
                        REASONS[int(codes[i])],
                        rules[int(rule_index[i])].name,
                        rules[int(rule_index[i])].purpose,
                        rules[int(rule_index[i])].rate,
                        version,
                        int(thresholds[i]),
                        pseudonyms[i],
                        now,
                        False,
                        None,
                        attributes[i],
                    )
                    for i in fresh
                ]
            )
            for i, earlier in zip(fresh, known, strict=True):
                if earlier is not None:
                    repeats[i] = self._repeat_indexed(
                        earlier, refs[i], names[i], calls[i], agent_list[i], pseudonyms[i],
                        objected_list[i], memo, deadline,
                    )  # fmt: skip
            fresh = [i for i in fresh if i not in repeats]
        tickets = None
        if self._append is not None:
            tickets = np.full(n, -1, dtype=np.int64)
            logged = self._log_rows(
                fresh, refs, codes, rule_index, draws, thresholds, rules, agent_list, key, now,
                policy, pseudonyms, attributes,
            )  # fmt: skip
            tickets[fresh] = logged
            if decided is not None and self._is_durable is not None:
                with self._pending_lock:
                    for i, ticket in zip(fresh, logged, strict=True):
                        self._pending[(key.epoch_id, calls[i])] = ticket
        record = codes == _SAMPLED
        repeat = np.zeros(n, dtype=bool)
        batch = DecisionBatch(
            call_refs=call_refs,
            record=record,
            reason_codes=codes,
            rule_index=rule_index,
            draws=draws,
            thresholds=thresholds,
            rules=rules,
            agents=agents,
            epoch_id=key.epoch_id,
            policy_version=policy.version,
            decided_at=now,
            repeat=repeat,
            repeats=repeats,
            log_tickets=tickets,
            caller_pseudonyms=pseudonyms if callers is not None else None,
        )
        for i, j in later:  # after the first of them in the batch has its final answer
            repeats[i] = self._repeat(
                batch[j], refs[i], names[i], agent_list[i], pseudonyms[i], objected_list[i],
                memo, deadline,
            )  # fmt: skip
        rule_names = [r.name for r in rules]
        for i, d in repeats.items():
            repeat[i] = True
            record[i] = d.record
            codes[i] = REASONS.index(d.reason)
            thresholds[i] = d.threshold
            if d.policy_version == policy.version:
                rule_index[i] = rule_names.index(d.rule)
            if tickets is not None:
                tickets[i] = -1 if d.log_ticket is None else d.log_ticket
        if memo is not None and decided is None:
            for i in fresh:
                memo.setdefault(names[i], (batch, i))
        if self._pending:
            self._mark_logged()
        return batch

    def _log_rows(
        self,
        rows: list[int],
        refs: list[str | bytes],
        codes: npt.NDArray[np.uint8],
        rule_index: npt.NDArray[np.intp],
        draws: npt.NDArray[np.uint64],
        thresholds: npt.NDArray[np.uint64],
        rules: tuple[Rule, ...],
        agents: list[str | None],
        key: EpochKey,
        now: datetime,
        policy: Policy,
        pseudonyms: list[str | None],
        attributes: Sequence[str | None],
    ) -> list[int]:
        """Log the decisions of ``rows``, in order; their tickets."""
        append = self._append
        assert append is not None
        version = policy.version  # the version the rules were taken from
        epoch_id = key.epoch_id
        names = [r.name for r in rules]
        codes_l, rule_l = codes.tolist(), rule_index.tolist()
        draws_l, thr_l = draws.tolist(), thresholds.tolist()
        return [
            append(
                _new_tuple(
                    DecisionRecord,
                    (
                        epoch_id,
                        version,
                        names[rule_l[i]],
                        thr_l[i],
                        REASONS[codes_l[i]],
                        draws_l[i],
                        refs[i],
                        agents[i],
                        pseudonyms[i],
                        now,
                        attributes[i],
                    ),
                )
            )
            for i in rows
        ]


def _no_agent(policy: Policy, rule: Rule) -> str:
    """Why a call without an agent is refused under a capped rule."""
    return (
        f"rule {rule.name!r} caps recordings per agent, and the call has no "
        f"{policy.agent_attribute!r} attribute: a call that nobody is counted for would escape "
        f"the cap (and the audit reports it); decide once the agent is known and pass it as "
        f"{policy.agent_attribute!r}, or take the cap off the rule"
    )


def _attributes_rows(policy: Policy, columns: Mapping[str, npt.NDArray[Any]], n: int) -> list[str]:
    """:meth:`Policy.attributes_json` of each call of a batch (``columns``: attribute texts)."""
    wanted = {a: columns[a].tolist() for a in policy.rule_attributes if a in columns}
    return policy.attributes_json_rows(wanted, n)


def _check_agent(agent: str, attribute: str) -> None:
    """Refuse an agent that is not valid Unicode text (a lone surrogate, which JSON and
    Python strings allow): the log keeps the agent as UTF-8, and its writer, which encodes for
    every caller at once, must never be handed a record it cannot encode."""
    try:
        agent.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"attribute {attribute!r} (the agent) is not valid Unicode text: {agent!r} holds a "
            "lone surrogate; send the agent's name as UTF-8 text"
        ) from None


def _call_of(name: bytes) -> bytes:
    """The index's name of a call from the sampler's: a text reference's is its bare tag."""
    return _STR + name if len(name) == 16 else name


def _claimed_ticket(memo: dict[bytes, _Memo], name: bytes) -> int | None:
    """The ticket of a first decision that another thread has claimed and is logging."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        found = memo.get(name)
        if isinstance(found, Decision) and found.log_ticket is not None:
            return found.log_ticket
        time.sleep(0.0005)
    return None


def _refs_list(call_refs: Sequence[str | bytes] | npt.NDArray[Any]) -> list[str | bytes]:
    if isinstance(call_refs, np.ndarray):
        if call_refs.dtype == np.uint8 and call_refs.ndim == 2:
            return [row.tobytes() for row in call_refs]
        return [_item(call_refs, i) for i in range(call_refs.shape[0])]
    return list(call_refs)


def _nolock() -> Any:
    import contextlib

    return contextlib.nullcontext()


_STR: Final = b"\x01"  # the kind of a call reference, in the store's names of calls: the audit
_BYTES: Final = b"\x02"  # tells a text reference from the same bytes given as bytes


def _ref_kind(ref: str | bytes) -> bytes:
    return _STR if isinstance(ref, str) else _BYTES


def cap_call_name(key: EpochKey, ref: str | bytes) -> bytes:
    """How the caps ledger and the decided-calls index name a call: its reference's kind, then
    its full CMAC tag."""
    return _ref_kind(ref) + _tag(key, call_ref_bytes(ref))


def _tag(key: EpochKey, raw: bytes) -> bytes:
    """The call's full AES-CMAC tag under the epoch key (its draw is the first 7 bytes)."""
    mac = key.new_cmac()
    mac.update(raw)
    return mac.finalize()


def _cap_request(key: EpochKey, call: bytes, rule: Rule, agent: str, now: datetime) -> CapRequest:
    """``call``: the reference's kind and full CMAC tag, which names the call in the ledger."""
    limits = cap_periods(now, rule.max_per_agent_per_day, rule.max_per_agent_per_week)
    return CapRequest(key.epoch_id, call, rule.name, cap_agent(agent), limits)


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
