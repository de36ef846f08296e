"""The decision service's core, without HTTP: reading a request, and deciding off the event loop.

:func:`parse_decision_request` turns a request body (JSON bytes) into a
:class:`DecisionRequest` or raises :class:`~sampledrec.errors.InvalidArgument` with a message
that says what to send instead. It never echoes a caller's number.

:class:`Decider` runs :meth:`Sampler.decide <sampledrec.sampling.Sampler.decide>` off the event
loop (it is synchronous: SQLite writes to the store's decided-calls index, sometimes an fsync of
the caps ledger), on a thread that takes every request waiting, decides them, then waits once
until their log entries are durable and answers them together: concurrent requests share each
group commit's fsync, and a request changes threads only twice. An answer is therefore only
given for a decision that a crash can no longer lose (docs/decisions/0021-serve.md).

Warnings about attributes the policy does not use are answered to the client (``warnings``)
instead of going to the process's warning machinery (:meth:`Policy.attribute_warnings
<sampledrec.sampling.Policy.attribute_warnings>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import json
import math
import queue
import re
import threading
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import InvalidArgument, ServerStopping, StoreError, UnknownAttributeWarning
from ..log.writer import DecisionLog
from ..sampling.keyed import call_ref_bytes
from ..sampling.sampler import Decision, Sampler

__all__ = [
    "FIELDS",
    "FORM",
    "MAX_ATTRIBUTES",
    "Answer",
    "Decider",
    "DecisionRequest",
    "parse_decision_request",
]

#: The fields of a decision request (exactly one of the first two).
FIELDS: Final = ("call_ref", "call_ref_hex", "attributes", "caller")
#: At most this many attributes in one request.
MAX_ATTRIBUTES: Final = 64
_MAX_TEXT: Final = 1024  # characters in an attribute name, an attribute value or a caller
_HEX: Final = re.compile(r"(?:[0-9a-fA-F]{2})+")
FORM: Final = "application/x-www-form-urlencoded"
_ATTR: Final = "attr."  # a form field naming an attribute: attr.queue=sales
_EXAMPLE: Final = (
    'send a JSON object like {"call_ref": "a84b4c76e66710", "attributes": {"queue": "sales"}}'
)

AttributeValue = str | int | float | bool


@dataclass(frozen=True)
class DecisionRequest:
    """One request to decide: the call's reference (text, or bytes from ``call_ref_hex``), its
    attributes and, optionally, the caller's number (checked against the objection list, kept
    only as a pseudonym; never shown by ``repr``)."""

    call_ref: str | bytes
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    caller: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Answer:
    """A decision, the index of its durable log entry (-1: it was durable before this request
    waited, as a repeat's often is), and the warnings to pass on to the client."""

    decision: Decision
    log_index: int
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The document answered: ``sampledrec decide --json``'s, plus ``warnings``."""
        return {**self.decision.to_json(log_index=self.log_index), "warnings": list(self.warnings)}


def _no_constant(name: str) -> Any:
    raise InvalidArgument(f"the body holds {name}, which is not JSON; send finite numbers only")


# One decoder for every request (``json.loads`` with an option builds one per call).
_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be text (a JSON string), got {_json_type(value)}")
    if len(value) > _MAX_TEXT:
        raise InvalidArgument(f"{what} is {len(value)} characters long; at most {_MAX_TEXT}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"{what} is not valid Unicode text (it holds a lone surrogate escape such as "
            "\\ud800); send UTF-8 text"
        ) from None
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_decision_request(body: bytes, content_type: str = "application/json") -> DecisionRequest:
    """Read a ``POST /v1/decisions`` body; raises InvalidArgument saying what is wrong.

    The body is JSON when ``content_type`` says so or it starts with ``{`` or ``[``; otherwise,
    with ``application/x-www-form-urlencoded`` (what a dialplan's ``CURL()`` sends by default)
    or no type, a form: ``call_ref=...&attr.queue=sales&caller=...``, each field once, every
    attribute as text (``attr.NAME``).

    >>> parse_decision_request(b'{"call_ref": "c-1", "attributes": {"queue": "sales"}}')
    DecisionRequest(call_ref='c-1', attributes={'queue': 'sales'})
    >>> parse_decision_request(b'{"call_ref_hex": "00ff"}').call_ref
    b'\\x00\\xff'
    >>> form = "application/x-www-form-urlencoded"
    >>> parse_decision_request(b"call_ref=c-1&attr.queue=sales", form)
    DecisionRequest(call_ref='c-1', attributes={'queue': 'sales'})
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    starts = body.lstrip()[:1]
    if kind.endswith("json") or starts in (b"{", b"["):
        doc = _json_document(body)
    elif kind in (FORM, ""):
        doc = _form_document(body)
    else:
        raise InvalidArgument(
            f"Content-Type {content_type!r} is neither JSON nor a form; {_EXAMPLE} with "
            "Content-Type: application/json"
        )
    return _request(doc)


def _json_document(body: bytes) -> Any:
    try:
        return _DECODER.decode(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidArgument(f"the body is not UTF-8 text; {_EXAMPLE}") from None
    except RecursionError:
        raise InvalidArgument(f"the body nests too deeply; {_EXAMPLE}") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"the body is not JSON ({exc.msg} at character {exc.pos}); {_EXAMPLE}"
        ) from None


def _form_document(body: bytes) -> dict[str, Any]:
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(body.strip()),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_ATTRIBUTES + len(FIELDS),
        )
    except (UnicodeError, ValueError) as exc:
        raise InvalidArgument(
            f"the body is not a form of UTF-8 fields ({exc}); send call_ref=...&attr.queue=..."
            ", percent-encoded, or JSON with Content-Type: application/json"
        ) from None
    doc: dict[str, Any] = {}
    attrs: dict[str, str] = {}
    for name, value in pairs:
        if name.startswith(_ATTR):
            target, key = attrs, name[len(_ATTR) :]
        elif name == "attributes":
            raise InvalidArgument("in a form, give each attribute as attr.NAME=value")
        else:
            target, key = doc, name
        if key in target:
            raise InvalidArgument(f"the form gives {name!r} twice; give each field once")
        target[key] = value
    if attrs:
        doc["attributes"] = attrs
    return doc


def _request(doc: Any) -> DecisionRequest:
    if not isinstance(doc, dict):
        raise InvalidArgument(f"the body is {_json_type(doc)}, not a JSON object; {_EXAMPLE}")
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidArgument(
            f"unknown field {unknown[0]!r}{hint}; the fields are call_ref (or call_ref_hex), "
            "attributes and caller (in a form, each attribute is a field attr.NAME)"
        )
    ref: str | bytes
    if ("call_ref" in doc) == ("call_ref_hex" in doc):
        raise InvalidArgument(
            "give the call's reference as call_ref (text, such as a SIP Call-ID or a PBX unique "
            "id) or as call_ref_hex (bytes, in hexadecimal), exactly one of them"
        )
    if "call_ref" in doc:
        if not isinstance(doc["call_ref"], str):
            raise InvalidArgument(
                f"call_ref must be text (a JSON string), got {_json_type(doc['call_ref'])}; "
                "send binary references as call_ref_hex"
            )
        ref = doc["call_ref"]
    else:
        hex_ref = doc["call_ref_hex"]
        if not isinstance(hex_ref, str) or not _HEX.fullmatch(hex_ref):
            raise InvalidArgument(
                "call_ref_hex must be the reference's bytes as an even number of hexadecimal "
                'digits, such as "3f2a09c1"'
            )
        ref = bytes.fromhex(hex_ref)
    call_ref_bytes(ref)  # raises InvalidCallRef: empty, over 256 bytes, not valid text
    attrs = _attributes(doc.get("attributes"))
    caller = doc.get("caller")
    if caller is not None:
        if not isinstance(caller, str) or not caller.strip() or len(caller) > 64:
            raise InvalidArgument(
                "caller must be the caller's phone number as text (at most 64 characters), or "
                "left out"
            )
        try:
            caller.encode()
        except UnicodeEncodeError:
            raise InvalidArgument(
                "caller is not valid Unicode text; send the number as text"
            ) from None
    return DecisionRequest(ref, attrs, caller)


def _attributes(raw: object) -> dict[str, AttributeValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument(
            f'attributes must be a JSON object such as {{"queue": "sales"}}, got {_json_type(raw)}'
        )
    if len(raw) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"{len(raw)} attributes; send at most {MAX_ATTRIBUTES}")
    attrs: dict[str, AttributeValue] = {}
    for name, value in raw.items():
        _text(name, "an attribute's name")
        if not name.strip():
            raise InvalidArgument("an attribute's name is empty; name it, such as queue")
        if value is None:
            continue  # a missing attribute
        if isinstance(value, str):
            _text(value, f"attribute {name!r}")
        elif isinstance(value, float) and not math.isfinite(value):  # 1e999 reads as inf
            raise InvalidArgument(f"attribute {name!r} is not a finite number")
        elif not isinstance(value, int | float | bool):
            raise InvalidArgument(
                f"attribute {name!r} must be text, a number or true/false, got {_json_type(value)}"
            )
        attrs[name] = value
    return attrs


# The sampler warns (warnings.warn) about attributes the policy does not use, attributing the
# warning to the caller of decide: this module. The decider answers those warnings to the
# client instead, so it ignores exactly the warnings raised at its own call, and no others.
_OWN_MODULE: Final = re.escape(__name__)


class Decider:
    """Decides for the front doors, off the event loop, and answers once the entry is durable.

    Requests go to a few threads (``workers``). Each takes every request waiting at that moment,
    decides them one by one, and hands the batch's answers to the log
    (:meth:`DecisionLog.when_durable`, which makes the log write at once rather than after its
    group-commit delay); the log's writer thread settles them all on the event loop in one call
    once their entries are durable, while the deciding thread goes on with what arrived
    meanwhile. No thread waits for the disk per batch, and a request crosses threads as few
    times as possible: the loop, the deciding thread, the writer, the loop.

    Parameters
    ----------
    sampler:
        The server's sampler (a store's, with ``log``).
    log:
        The sampler's log; ``decide`` returns once the decision's entry is durable in it.
    workers:
        Threads that decide and wait (keyword-only). One is fastest (measured: each thread
        hand-over costs more than deciding); more only help when deciding itself waits on a
        slow disk (the caps ledger's fsync).
    """

    def __init__(self, sampler: Sampler, log: DecisionLog, *, workers: int = 1) -> None:
        if workers < 1:
            raise InvalidArgument(f"workers={workers} must be at least 1")
        self._sampler = sampler
        self._log = log
        self._workers = workers
        # Requests, and one None per thread once closing (a queue in C: putting a request
        # costs the event loop no lock in Python, and a waiting thread wakes without one).
        self._queue: queue.SimpleQueue[tuple[DecisionRequest, asyncio.Future[Answer]] | None]
        self._queue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending: set[asyncio.Future[Answer]] = set()  # answers not yet settled
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        warnings.filterwarnings("ignore", category=UnknownAttributeWarning, module=_OWN_MODULE)

    @property
    def closing(self) -> bool:
        return self._closing

    async def decide(self, request: DecisionRequest) -> Answer:
        """Decide for ``request`` (idempotent per call: the sampler is) and wait until its log
        entry is durable. Raises InvalidArgument for a refused request, :class:`StoreError`
        when the log cannot be written, :class:`ServerStopping` once :meth:`aclose` began."""
        if self._closing:
            raise ServerStopping("the server is shutting down; send the request to another node")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            for n in range(self._workers):
                thread = threading.Thread(
                    target=self._run, name=f"sampledrec-decide-{n}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        answer: asyncio.Future[Answer] = loop.create_future()
        self._pending.add(answer)
        answer.add_done_callback(self._pending.discard)
        self._queue.put((request, answer))
        return await answer

    def _decide_now(self, request: DecisionRequest) -> tuple[Decision, tuple[str, ...]]:
        attrs = request.attributes
        messages: tuple[str, ...] = ()
        policy = self._sampler.policy
        if attrs and not policy.known_attributes.issuperset(attrs):
            messages = tuple(policy.attribute_warnings(attrs))  # or InvalidArgument
        decision = self._sampler.decide(request.call_ref, attrs, caller=request.caller)
        return decision, messages

    def _run(self) -> None:
        log = self._log
        while True:
            # Every request waiting now. Requests are put on the event loop, which puts the
            # Nones only after the last (aclose), so none follows a None.
            first = self._queue.get()
            if first is None:
                return  # closing, and nothing left to decide
            batch, closing = [first], False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            outcomes: list[tuple[asyncio.Future[Answer], Answer | BaseException]] = []
            waiting: dict[int, list[tuple[asyncio.Future[Answer], Answer]]] = {}
            for request, future in batch:
                try:
                    decision, messages = self._decide_now(request)
                except BaseException as exc:
                    outcomes.append((future, exc))
                    continue
                answer = Answer(decision, -1, messages)
                ticket = decision.log_ticket or 0
                if ticket <= 0:  # nothing was logged for this answer, or it was durable before
                    outcomes.append((future, answer))
                else:
                    waiting.setdefault(ticket, []).append((future, answer))
            loop = self._loop
            assert loop is not None
            if waiting:
                try:
                    log.when_durable(list(waiting), _Answers(loop, outcomes, waiting))
                except BaseException as exc:  # the log is closed or failed: every waiter hears
                    _fail(loop, outcomes, waiting, exc)
            elif outcomes:
                _send(loop, outcomes)
            if closing:
                return

    async def aclose(self) -> None:
        """Take no new request; finish the decisions under way and wait for their entries."""
        self._closing = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        if self._pending:  # decided; their answers come once the log has them on disk
            await asyncio.wait(set(self._pending))


class _Answers:
    """The answers of one batch, sent to the event loop once their log entries are durable
    (:meth:`DecisionLog.when_durable` calls it on the log's writer thread)."""

    __slots__ = ("_loop", "_outcomes", "_waiting")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        outcomes: list[tuple[asyncio.Future[Answer], Answer | BaseException]],
        waiting: dict[int, list[tuple[asyncio.Future[Answer], Answer]]],
    ) -> None:
        self._loop = loop
        self._outcomes = outcomes
        self._waiting = waiting

    def __call__(self, indexes: dict[int, int] | BaseException) -> None:
        if isinstance(indexes, BaseException):
            _fail(self._loop, self._outcomes, self._waiting, indexes)
            return
        outcomes = self._outcomes
        for t, pending in self._waiting.items():
            outcomes += [(f, dataclasses.replace(a, log_index=indexes[t])) for f, a in pending]
        _send(self._loop, outcomes)


def _fail(
    loop: asyncio.AbstractEventLoop,
    outcomes: list[tuple[asyncio.Future[Answer], Answer | BaseException]],
    waiting: dict[int, list[tuple[asyncio.Future[Answer], Answer]]],
    exc: BaseException,
) -> None:
    """Every answer waiting for the log hears that it cannot be written."""
    error = (
        exc
        if isinstance(exc, StoreError)
        else StoreError(f"the decision log cannot be written: {exc}")
    )
    _send(loop, outcomes + [(f, error) for pending in waiting.values() for f, _ in pending])


def _send(
    loop: asyncio.AbstractEventLoop,
    outcomes: list[tuple[asyncio.Future[Answer], Answer | BaseException]],
) -> None:
    """Settle ``outcomes`` on the event loop (from another thread), in one call."""
    with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
        loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[asyncio.Future[Answer], Answer | BaseException]]) -> None:
    for future, outcome in outcomes:
        if future.done():  # the request was cancelled (its client went away)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
