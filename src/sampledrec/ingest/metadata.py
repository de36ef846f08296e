"""SIPREC recording metadata (RFC 7865, ``application/rs-metadata+xml``), sans I/O: who is on
the recorded call, its ``sipSessionID``, and whose voice each stream carries.

Real SBCs speak two dialects, and both are read: RFC 7865's (namespace
``urn:ietf:params:xml:ns:recording:1``; ``session_id``/``participant_id``/``stream_id``
attributes, ``<nameID aor=...>``, ``<participantstreamassoc>`` with ``<send>``/``<recv>``) and
the earlier drafts' that Oracle (Acme Packet) and AudioCodes "legacy" still send (namespace
``urn:ietf:params:xml:ns:recording``; ``id=`` attributes, ``<aor>`` and ``<send>`` inside
``<participant>``). Ids are taken from an attribute or a child element of the same name; element
names are matched without regard to case (``dataMode``, ``datamode``); elements in other
namespaces are vendor extensions, skipped except by :meth:`RecordingMetadata.values`, which
finds a field by name anywhere (for a call reference or an attribute named in the config).

The XML is parsed by the standard library's expat with every DTD refused: a document with
``<!DOCTYPE`` or ``<!ENTITY`` is rejected before and while parsing (no entity expansion, no
external fetch, no XML bomb), and size, depth and element count are limited.

>>> meta = parse_metadata(b'''<?xml version="1.0" encoding="UTF-8"?>
... <recording xmlns="urn:ietf:params:xml:ns:recording:1">
...   <datamode>complete</datamode>
...   <session session_id="hVpd7YQgRW2nD22h7q60JQ==">
...     <sipSessionID>ab30317f1a784dc48ff824d0d3715d86;
...       remote=47755a9de7794ba387653f2099600ef2</sipSessionID>
...   </session>
...   <participant participant_id="srfBElmCRp2QB23b7Mpk0w==">
...     <nameID aor="sip:+15551230001@example.com"><name xml:lang="en">Caller</name></nameID>
...   </participant>
...   <stream stream_id="UAAMm5GRQKSCMVvLyl4rFw==" session_id="hVpd7YQgRW2nD22h7q60JQ==">
...     <label>1</label>
...   </stream>
...   <participantstreamassoc participant_id="srfBElmCRp2QB23b7Mpk0w==">
...     <send>UAAMm5GRQKSCMVvLyl4rFw==</send>
...   </participantstreamassoc>
... </recording>''')
>>> meta.sip_session_ids
('ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2',)
>>> [(p.aor, p.number, p.name, p.send_labels) for p in meta.participants]
[('sip:+15551230001@example.com', '+15551230001', 'Caller', ('1',))]
>>> meta.sender("1").name
'Caller'
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final
from xml.parsers import expat

from ..errors import InvalidArgument, InvalidSipMessage
from .sip import uri_user

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_ELEMENTS",
    "NAMESPACES",
    "Participant",
    "RecordingMetadata",
    "Stream",
    "parse_metadata",
]

NAMESPACES: Final = ("urn:ietf:params:xml:ns:recording:1", "urn:ietf:params:xml:ns:recording")
"""RFC 7865's namespace, and the earlier drafts' that some SBCs still send."""

MAX_METADATA_BYTES: Final = 64 * 1024
"""One metadata document; a two-party call's is 1 to 4 KiB, a large conference's tens of KiB."""
MAX_METADATA_DEPTH: Final = 32
MAX_METADATA_ELEMENTS: Final = 4096

_DTD_RE: Final = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_OURS: Final = frozenset(("", *NAMESPACES))


@dataclass(slots=True)
class _Element:
    namespace: str
    name: str  # local name, lowercase
    attributes: dict[str, str]  # local name, lowercase -> value
    text: list[str] = field(default_factory=list)
    children: list[_Element] = field(default_factory=list)

    @property
    def ours(self) -> bool:
        return self.namespace in _OURS

    def content(self) -> str:
        return "".join(self.text).strip()

    def kids(self, name: str) -> Iterator[_Element]:
        return (child for child in self.children if child.ours and child.name == name)

    def first_text(self, *names: str) -> str | None:
        for name in names:
            for child in self.kids(name):
                if text := child.content():
                    return text
        return None

    def identity(self, *names: str) -> str | None:
        """An id given as an attribute or as a child element, the first of ``names`` found."""
        for name in names:
            value = self.attributes.get(name, "").strip()
            if value:
                return value
        return self.first_text(*names)


def _split_name(qualified: str) -> tuple[str, str]:
    namespace, _, local = qualified.rpartition(" ")
    return namespace, local.lower()


def _parse_tree(data: bytes) -> _Element:
    if _DTD_RE.search(data):
        raise InvalidSipMessage("recording metadata with a DTD or entity declaration is refused")
    parser = expat.ParserCreate(namespace_separator=" ")
    stack: list[_Element] = []
    roots: list[_Element] = []
    count = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_METADATA_ELEMENTS:
            raise InvalidSipMessage(
                f"recording metadata has more than {MAX_METADATA_ELEMENTS} elements", status=413
            )
        if len(stack) >= MAX_METADATA_DEPTH:
            raise InvalidSipMessage(
                f"recording metadata nests elements deeper than {MAX_METADATA_DEPTH}", status=413
            )
        namespace, local = _split_name(name)
        attributes = {_split_name(key)[1]: value for key, value in attrs.items()}
        element = _Element(namespace, local, attributes)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text.append(data)

    def refuse(*args: object) -> int:
        raise InvalidSipMessage("recording metadata with a DTD or entity declaration is refused")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:  # an InvalidSipMessage raised by a handler above passes through
        parser.Parse(data, True)
    except (expat.ExpatError, ValueError, LookupError) as exc:
        raise InvalidSipMessage(f"recording metadata is not well-formed XML: {exc}") from None
    if not roots:  # pragma: no cover (expat reports a document without an element)
        raise InvalidSipMessage("recording metadata has no root element")
    return roots[0]


@dataclass(frozen=True, slots=True)
class Stream:
    """A ``<stream>``: its id, the SDP ``a=label`` it is carried on, its session."""

    stream_id: str | None
    label: str | None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Participant:
    """A ``<participant>``: its id, address of record and name, and the streams it sends
    and receives (by stream id, and the SDP labels of those it sends)."""

    participant_id: str | None
    aor: str | None
    name: str | None = None
    aors: tuple[str, ...] = ()
    sends: tuple[str, ...] = ()
    receives: tuple[str, ...] = ()
    send_labels: tuple[str, ...] = ()

    @property
    def number(self) -> str | None:
        """The user part of the address of record (``sip:+4930123@...`` -> ``+4930123``),
        or the number of a ``tel:`` URI; None without one."""
        return uri_user(self.aor) if self.aor else None


@dataclass(frozen=True, slots=True)
class RecordingMetadata:
    """What a recorder uses from RFC 7865 metadata.

    ``session_ids`` are the metadata's ids of the recorded communication sessions (chosen by
    the recording client, so not the same on another one); ``sip_session_ids`` are the
    recorded calls' own SIP Session-IDs (RFC 7989), white space removed: the identity that
    stays the same when the recording client fails over to another recording server.
    ``participants`` and ``streams`` are in document order.
    """

    namespace: str
    data_mode: str | None
    group_ids: tuple[str, ...]
    session_ids: tuple[str, ...]
    sip_session_ids: tuple[str, ...]
    participants: tuple[Participant, ...]
    streams: tuple[Stream, ...]
    fields: tuple[tuple[str, str], ...] = ()

    def values(self, name: str) -> tuple[str, ...]:
        """The text of every element, and the value of every attribute, whose local name is
        ``name`` (any case, any namespace, vendor extensions included), in document order.

        >>> meta = parse_metadata(b'<recording xmlns="urn:ietf:params:xml:ns:recording:1">'
        ...     b'<session session_id="s1"><extensiondata xmlns:v="urn:x-vendor">'
        ...     b'<v:ucid>00001234561700000000</v:ucid></extensiondata></session></recording>')
        >>> meta.values("UCID"), meta.values("session_id")
        (('00001234561700000000',), ('s1',))
        """
        wanted = name.lower()
        return tuple(value for key, value in self.fields if key == wanted)

    def sender(self, label: str) -> Participant | None:
        """The participant that sends the stream carried on SDP ``a=label:label``, if the
        metadata says."""
        return next((p for p in self.participants if label in p.send_labels), None)


def _walk(element: _Element) -> Iterator[_Element]:
    """Every element of ours, depth first, without entering vendor extensions."""
    stack = [element]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed([child for child in current.children if child.ours]))


def _fields(root: _Element) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        current = stack.pop()
        found.extend((key, value.strip()) for key, value in current.attributes.items())
        if text := current.content():
            found.append((current.name, text))
        stack.extend(reversed(current.children))
    return tuple(found)


class _ParticipantBuilder:
    def __init__(self, participant_id: str | None) -> None:
        self.participant_id = participant_id
        self.aors: list[str] = []
        self.name: str | None = None
        self.sends: list[str] = []
        self.receives: list[str] = []

    def add(self, element: _Element) -> None:
        for name_id in element.kids("nameid"):
            aor = name_id.attributes.get("aor", "").strip() or name_id.first_text("aor")
            if aor and aor not in self.aors:
                self.aors.append(aor)
            self.name = self.name or name_id.first_text("name")
        for aor_element in element.kids("aor"):
            if (aor := aor_element.content()) and aor not in self.aors:
                self.aors.append(aor)
        self.name = self.name or element.first_text("name")
        self.add_streams(element)

    def add_streams(self, element: _Element) -> None:
        for kind, into in (("send", self.sends), ("recv", self.receives)):
            for child in element.kids(kind):
                # One stream id per element, or several separated by white space.
                into.extend(ref for ref in child.content().split() if ref not in into)

    def build(self, labels: dict[str, str | None]) -> Participant:
        send_labels = tuple(label for ref in self.sends if (label := labels.get(ref)) is not None)
        return Participant(
            participant_id=self.participant_id,
            aor=self.aors[0] if self.aors else None,
            name=self.name,
            aors=tuple(self.aors),
            sends=tuple(self.sends),
            receives=tuple(self.receives),
            send_labels=tuple(dict.fromkeys(send_labels)),
        )


def parse_metadata(data: bytes | str, *, max_bytes: int = MAX_METADATA_BYTES) -> RecordingMetadata:
    """Parse recording metadata; raise :class:`~sampledrec.errors.InvalidSipMessage` if it
    is over ``max_bytes``, not well-formed, has a DTD, or its root is not a ``<recording>``
    in one of :data:`NAMESPACES` (or in none)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgument(f"metadata of type {type(data).__name__} must be bytes or str")
    data = bytes(data)
    if len(data) > max_bytes:
        raise InvalidSipMessage(
            f"recording metadata of {len(data)} bytes, over the limit of {max_bytes}", status=413
        )
    root = _parse_tree(data)
    if root.name != "recording" or not root.ours:
        shown = f"{{{root.namespace}}}{root.name}" if root.namespace else root.name
        raise InvalidSipMessage(
            f"the metadata's root is <{shown}>, not <recording> in {' or '.join(NAMESPACES)}",
            status=415,
        )
    data_mode: str | None = None
    group_ids: list[str] = []
    session_ids: list[str] = []
    sip_session_ids: list[str] = []
    streams: list[Stream] = []
    builders: dict[str, _ParticipantBuilder] = {}
    anonymous: list[_ParticipantBuilder] = []

    def builder(participant_id: str | None) -> _ParticipantBuilder:
        if participant_id is None:
            anonymous.append(_ParticipantBuilder(None))
            return anonymous[-1]
        if participant_id not in builders:
            builders[participant_id] = _ParticipantBuilder(participant_id)
        return builders[participant_id]

    order: dict[int, _ParticipantBuilder] = {}  # by id(): first appearance, each once
    for element in _walk(root):
        name = element.name
        if name == "datamode":
            data_mode = data_mode or element.content() or None
        elif name == "group":
            if (group_id := element.identity("group_id", "id")) and group_id not in group_ids:
                group_ids.append(group_id)
        elif name == "session":
            session_id = element.identity("session_id", "id", "session")
            if session_id and session_id not in session_ids:
                session_ids.append(session_id)
        elif name == "sipsessionid":
            value = "".join(element.content().split())
            if value and value not in sip_session_ids:
                sip_session_ids.append(value)
        elif name == "stream":
            streams.append(
                Stream(
                    stream_id=element.identity("stream_id", "id"),
                    label=element.identity("label"),
                    session_id=element.identity("session_id", "session"),
                )
            )
        elif name == "participant":
            found = builder(element.identity("participant_id", "id"))
            found.add(element)
            order.setdefault(id(found), found)
        elif name == "participantstreamassoc":
            found = builder(element.identity("participant_id", "participant", "id"))
            found.add_streams(element)
            order.setdefault(id(found), found)
    labels: dict[str, str | None] = {}
    for stream in streams:
        if stream.stream_id is not None:
            labels.setdefault(stream.stream_id, stream.label)
    for stream in streams:
        # Some clients name a stream by its label in <send>; take it when no id matches.
        if stream.label is not None:
            labels.setdefault(stream.label, stream.label)
    return RecordingMetadata(
        namespace=root.namespace,
        data_mode=data_mode,
        group_ids=tuple(group_ids),
        session_ids=tuple(session_ids),
        sip_session_ids=tuple(sip_session_ids),
        participants=tuple(b.build(labels) for b in order.values()),
        streams=tuple(streams),
        fields=_fields(root),
    )
