"""SIP messages (RFC 3261), sans I/O: bytes in, typed messages out, and responses built byte for
byte. No socket here; the asyncio shell of the recording server feeds datagrams to
:func:`parse_message` and stream bytes to a :class:`StreamFramer`.

What is accepted, beyond the letter of RFC 3261, because SBCs send it: bare LF line endings,
CRLFs before the start line, folded header lines, compact header names (``i``, ``v``, ``f``,
``t``, ``m``, ``l``, ``c``, ``k``, ...), a header given on several lines or as a comma-separated
list, a missing blank line at the end of a body-less datagram, header values that are not
UTF-8 (kept byte for byte). What is refused, with :class:`~sampledrec.errors.InvalidSipMessage`
and nothing else: a message over a size limit, control characters or a bare CR in the header
block, a start line that is not SIP/2.0, a missing or repeated Via/From/To/Call-ID/CSeq
(such a message cannot be answered), a CSeq whose method is not the request's, a
Content-Length that is not one decimal number or promises more bytes than arrived.

>>> msg = parse_message(
...     b"OPTIONS sip:rec@192.0.2.9 SIP/2.0\\r\\n"
...     b"v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK74bf9\\r\\n"
...     b"f: <sip:sbc@192.0.2.1>;tag=9fxced76sl\\r\\n"
...     b"t: <sip:rec@192.0.2.9>\\r\\n"
...     b"i: 3848276298220188511@192.0.2.1\\r\\n"
...     b"CSeq: 63104 OPTIONS\\r\\n"
...     b"l: 0\\r\\n\\r\\n"
... )
>>> msg.method, msg.call_id, msg.cseq, msg.via_branch
('OPTIONS', '3848276298220188511@192.0.2.1', CSeq(number=63104, method='OPTIONS'), 'z9hG4bK74bf9')
>>> print(build_response(msg, 200, to_tag="a6c85cf").decode())  # doctest: +NORMALIZE_WHITESPACE
SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK74bf9
From: <sip:sbc@192.0.2.1>;tag=9fxced76sl
To: <sip:rec@192.0.2.9>;tag=a6c85cf
Call-ID: 3848276298220188511@192.0.2.1
CSeq: 63104 OPTIONS
Content-Length: 0
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..errors import InvalidArgument, InvalidSipMessage

__all__ = [
    "COMPACT_FORMS",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_LINES",
    "REASON_PHRASES",
    "CSeq",
    "Headers",
    "NameAddr",
    "SipRequest",
    "SipResponse",
    "StreamFramer",
    "build_response",
    "header_key",
    "parse_headers",
    "parse_message",
    "parse_name_addr",
    "parse_params",
    "split_list",
    "uri_user",
]

MAX_HEADER_BYTES: Final = 16 * 1024
"""Start line and headers of one message; real INVITEs from SBCs carry 1 to 3 KiB."""
MAX_BODY_BYTES: Final = 128 * 1024
"""One message's body; a SIPREC INVITE's SDP and metadata for a two-party call is 2 to 6 KiB."""
MAX_HEADER_LINES: Final = 256

COMPACT_FORMS: Final[Mapping[str, str]] = {
    # RFC 3261 section 7.3.3, then the compact forms later RFCs registered.
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}
"""Compact header name -> the full name, lowercase (header names are case-insensitive)."""

REASON_PHRASES: Final[Mapping[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
    603: "Decline",
}
"""The reason phrases of RFC 3261 section 21, used when a response is built without one."""

# RFC 3261 token characters.
_TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
_HEADER_END_RE: Final = re.compile(rb"\r?\n\r?\n")
_LINE_SPLIT_RE: Final = re.compile(rb"\r?\n")
# Control characters other than HTAB (CR and LF are gone once the block is split into lines).
_CTL_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TEXT_CTL_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION_RE: Final = re.compile(r"SIP/[0-9]{1,3}\.[0-9]{1,3}", re.IGNORECASE)
_REQUEST_LINE_RE: Final = re.compile(
    rf"({_TOKEN})[ \t]+([A-Za-z][A-Za-z0-9+.\-]*:[\x21-\x7e]+)[ \t]+([\x21-\x7e]+)"
)
_STATUS_LINE_RE: Final = re.compile(r"([\x21-\x7e]+)[ \t]+([0-9]{3})(?:[ \t]+(.*))?")
_CSEQ_RE: Final = re.compile(rf"([0-9]{{1,10}})[ \t]+({_TOKEN})")
_LENGTH_RE: Final = re.compile(r"[0-9]{1,10}")
_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_WSP: Final = " \t"


def header_key(name: str) -> str:
    """The name a header is looked up by: lowercase, compact forms expanded.

    >>> header_key("i"), header_key("CALL-ID"), header_key("X-Cisco-Dial-Peer")
    ('call-id', 'call-id', 'x-cisco-dial-peer')
    """
    lowered = name.lower()
    return COMPACT_FORMS.get(lowered, lowered)


def _check_header_name(name: str) -> None:
    if not _TOKEN_RE.fullmatch(name):
        raise InvalidArgument(f"header name {name!r} is not an RFC 3261 token")


def _check_text(what: str, value: str) -> None:
    if _TEXT_CTL_RE.search(value):
        raise InvalidArgument(
            f"{what}={value!r} contains a line break or a control character; pass one line"
        )
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what}={value!r} cannot be written as UTF-8") from None


class Headers:
    """The header fields of a message or a body part, in order, looked up case-insensitively
    and by compact or full name.

    Items are ``(name, value)`` as received (the name as spelled, the value unfolded and
    stripped). :meth:`get` gives the first value of a header, :meth:`get_all` every line of it,
    :meth:`values` every element of a comma-separated list header (``Via``, ``Contact``,
    ``Require``, ``Supported``), however the sender spread them over lines.

    >>> h = Headers([("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"),
    ...              ("Via", "SIP/2.0/TCP c")])
    >>> h.values("Via")
    ('SIP/2.0/UDP a;branch=z9hG4bK1', 'SIP/2.0/UDP b', 'SIP/2.0/TCP c')
    >>> h.get("VIA"), "call-id" in h
    ('SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b', False)
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        checked: list[tuple[str, str]] = []
        index: dict[str, list[str]] = {}
        for name, value in items:
            if not isinstance(name, str) or not isinstance(value, str):
                raise InvalidArgument(f"header ({name!r}, {value!r}) must be a pair of str")
            _check_header_name(name)
            _check_text(f"header {name!r}", value)
            checked.append((name, value))
            index.setdefault(header_key(name), []).append(value)
        self._items = tuple(checked)
        self._index = {key: tuple(values) for key, values in index.items()}

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        """Every ``(name, value)`` in the order received."""
        return self._items

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (compact or full, any case), or None."""
        found = self._index.get(header_key(name))
        return found[0] if found else None

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every line of header ``name``, in order (a list header's lines are not split)."""
        return self._index.get(header_key(name), ())

    def values(self, name: str) -> tuple[str, ...]:
        """Every element of list header ``name``: its lines split at commas outside quotes and
        angle brackets (RFC 3261 section 7.3.1); empty elements dropped."""
        return tuple(
            element for line in self.get_all(name) for element in split_list(line) if element
        )

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and header_key(name) in self._index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def _scan_quoted(text: str, start: int) -> int:
    """Index just past the quoted string opening at ``text[start]`` (a backslash escapes)."""
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == '"':
            return i + 1
        i += 1
    raise InvalidSipMessage(f"unterminated quoted string in {text!r}")


def _split_outside(text: str, separator: str) -> list[str]:
    """Split at ``separator`` where it is outside quotes and angle brackets."""
    pieces: list[str] = []
    start = i = 0
    depth = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            i = _scan_quoted(text, i)
            continue
        if char == "<":
            depth += 1
        elif char == ">" and depth:
            depth -= 1
        elif char == separator and not depth:
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    pieces.append(text[start:])
    return pieces


def split_list(value: str) -> list[str]:
    """Split a list header's value at commas outside quotes and ``<...>``, each element
    stripped.

    >>> split_list('"Doe, J" <sip:j@a;x=1,2>;q=1, <sip:k@b>')
    ['"Doe, J" <sip:j@a;x=1,2>;q=1', '<sip:k@b>']
    """
    return [piece.strip(_WSP) for piece in _split_outside(value, ",")]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
    return value


def parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``;name=value;flag`` parameters: names lowercased, quoted values unquoted, a
    parameter without ``=`` has the value None.

    >>> parse_params(';tag=a6c85cf ; +sip.src;lr;x="a;b"')
    (('tag', 'a6c85cf'), ('+sip.src', None), ('lr', None), ('x', 'a;b'))
    """
    params: list[tuple[str, str | None]] = []
    for piece in _split_outside(text, ";"):
        piece = piece.strip(_WSP)
        if not piece:
            continue
        name, eq, value = piece.partition("=")
        name = name.strip(_WSP).lower()
        if not name:
            raise InvalidSipMessage(f"a parameter without a name in {text!r}")
        params.append((name, _unquote(value.strip(_WSP)) if eq else None))
    return tuple(params)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A ``From``, ``To`` or ``Contact`` value: display name, URI, header parameters.

    In the ``name-addr`` form (``"Bob" <sip:bob@b.example;transport=tcp>;tag=1``) the
    parameters after ``>`` are the header's; in the bare ``addr-spec`` form
    (``sip:bob@b.example;tag=1``) every parameter after the URI is the header's
    (RFC 3261 section 20).
    """

    display_name: str | None
    uri: str
    params: tuple[tuple[str, str | None], ...] = ()

    def param(self, name: str) -> str | None:
        """The value of header parameter ``name`` (None when absent or without a value)."""
        wanted = name.lower()
        return next((value for key, value in self.params if key == wanted), None)

    def has_param(self, name: str) -> bool:
        """Whether header parameter ``name`` is present, with or without a value."""
        wanted = name.lower()
        return any(key == wanted for key, _ in self.params)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (From and To)."""
        return self.param("tag")

    @property
    def uri_params(self) -> tuple[tuple[str, str | None], ...]:
        """The parameters inside the URI (``;user=phone``, ``;transport=tcp``)."""
        head, _, _ = self.uri.partition("?")
        _, semicolon, rest = head.partition(";")
        return parse_params(rest) if semicolon else ()


def parse_name_addr(value: str) -> NameAddr:
    """Parse a ``From``/``To``/``Contact`` value.

    >>> addr = parse_name_addr('"Agent 7" <sip:7001@pbx.example;user=phone>;tag=xy;+sip.src')
    >>> addr.display_name, addr.uri, addr.tag, addr.has_param("+sip.src")
    ('Agent 7', 'sip:7001@pbx.example;user=phone', 'xy', True)
    >>> parse_name_addr("sip:rec@192.0.2.9;tag=1").params
    (('tag', '1'),)
    """
    text = value.strip(_WSP)
    if not text:
        raise InvalidSipMessage("an empty address where a SIP address was expected")
    i = 0
    while i < len(text):  # find '<' outside a quoted display name
        if text[i] == '"':
            i = _scan_quoted(text, i)
            continue
        if text[i] == "<":
            break
        i += 1
    if i < len(text):
        close = text.find(">", i)
        if close < 0:
            raise InvalidSipMessage(f"address {value!r} has '<' without '>'")
        display = text[:i].strip(_WSP)
        uri = text[i + 1 : close].strip(_WSP)
        rest = text[close + 1 :].strip(_WSP)
        if rest and not rest.startswith(";"):
            raise InvalidSipMessage(f"address {value!r} has {rest!r} after '>'")
        params = parse_params(rest)
        name = _unquote(display) if display else None
    else:
        uri, _, rest = text.partition(";")
        uri = uri.strip(_WSP)
        params = parse_params(rest)
        name = None
    if not uri or any(char in uri for char in ' \t<>"'):
        raise InvalidSipMessage(f"address {value!r} has no usable URI")
    return NameAddr(name, uri, params)


def uri_user(uri: str) -> str | None:
    """The user part of a ``sip:``/``sips:`` URI, or the number of a ``tel:`` URI; None for
    other schemes or a URI without a user. An address without a scheme (``1001@pbx``, as some
    recording clients write an address of record) is read as a SIP URI.

    >>> uri_user("sip:+4930123456@sbc.example;user=phone"), uri_user("tel:+4930123456;ext=7")
    ('+4930123456', '+4930123456')
    >>> uri_user("1001@192.0.2.7:5060"), uri_user("sip:sbc.example"), uri_user("mailto:a@b")
    ('1001', None, None)
    """
    scheme = _SCHEME_RE.match(uri)
    if scheme is None:
        kind, rest = "sip", uri
    else:
        kind, rest = scheme.group(1).lower(), uri[scheme.end() :]
    if kind == "tel":
        number = rest.partition(";")[0].strip(_WSP)
        return number or None
    if kind not in ("sip", "sips"):
        return None
    userinfo, at, _ = rest.partition("@")
    if not at:
        return None
    user = userinfo.partition(":")[0].partition(";")[0].strip(_WSP)  # drop a password
    return user or None


class CSeq(NamedTuple):
    """The ``CSeq`` header: sequence number and method."""

    number: int
    method: str


def _parse_cseq(value: str) -> CSeq:
    match = _CSEQ_RE.fullmatch(value.strip(_WSP))
    if match is None:
        raise InvalidSipMessage(f"CSeq {value!r} is not '<number> <method>'")
    number = int(match.group(1))
    if number >= 2**31:
        raise InvalidSipMessage(f"CSeq number {number} is not below 2**31 (RFC 3261 8.1.1.5)")
    return CSeq(number, match.group(2))


_SINGLE_HEADERS: Final = ("call-id", "cseq", "from", "to")


class _Message:
    """What requests and responses share: the headers a recording server reads."""

    __slots__ = ()
    headers: Headers
    body: bytes

    def _validate(self) -> None:
        if not isinstance(self.headers, Headers):
            raise InvalidArgument(f"headers={self.headers!r} must be a Headers")
        if not isinstance(self.body, bytes):
            raise InvalidArgument(f"body of type {type(self.body).__name__} must be bytes")
        for name in ("via", *_SINGLE_HEADERS):
            if name not in self.headers:
                raise InvalidSipMessage(
                    f"no {name} header: a message without it cannot be answered"
                )
        for name in _SINGLE_HEADERS:
            if len(self.headers.get_all(name)) > 1:
                raise InvalidSipMessage(f"more than one {name} header")
        if not self.vias:
            raise InvalidSipMessage("an empty Via header")
        call_id = self.call_id
        if not call_id or any(char in call_id for char in _WSP):
            raise InvalidSipMessage(f"Call-ID {call_id!r} is empty or contains white space")
        _parse_cseq(self.headers.get("cseq") or "")
        parse_name_addr(self.headers.get("from") or "")
        parse_name_addr(self.headers.get("to") or "")
        lengths = {value.strip(_WSP) for value in self.headers.get_all("content-length")}
        if len(lengths) > 1:
            raise InvalidSipMessage(f"Content-Length headers disagree: {sorted(lengths)}")
        if lengths:
            (length,) = lengths
            if not _LENGTH_RE.fullmatch(length):
                raise InvalidSipMessage(f"Content-Length {length!r} is not a decimal number")
            if int(length) != len(self.body):
                raise InvalidSipMessage(
                    f"Content-Length {length} but the body has {len(self.body)} bytes"
                )

    @property
    def call_id(self) -> str:
        """The ``Call-ID``: this dialog's identity (the recording session's, for SIPREC)."""
        return (self.headers.get("call-id") or "").strip(_WSP)

    @property
    def cseq(self) -> CSeq:
        """The ``CSeq`` header parsed."""
        return _parse_cseq(self.headers.get("cseq") or "")

    @property
    def vias(self) -> tuple[str, ...]:
        """Every ``Via`` value, topmost first."""
        return self.headers.values("via")

    @property
    def via_branch(self) -> str | None:
        """The ``branch`` parameter of the topmost ``Via`` (the transaction's id, RFC 3261
        section 17.2.3), or None."""
        _, _, params = self.vias[0].partition(";")
        return next((value for key, value in parse_params(params) if key == "branch"), None)

    @property
    def from_addr(self) -> NameAddr:
        """The ``From`` header parsed."""
        return parse_name_addr(self.headers.get("from") or "")

    @property
    def to_addr(self) -> NameAddr:
        """The ``To`` header parsed."""
        return parse_name_addr(self.headers.get("to") or "")

    @property
    def from_tag(self) -> str | None:
        """The ``tag`` of ``From``."""
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        """The ``tag`` of ``To`` (None in a request that starts a dialog)."""
        return self.to_addr.tag

    @property
    def contacts(self) -> tuple[NameAddr, ...]:
        """Every ``Contact`` value parsed (``*`` gives a URI of ``*``)."""
        return tuple(
            NameAddr(None, "*") if value == "*" else parse_name_addr(value)
            for value in self.headers.values("contact")
        )

    @property
    def require(self) -> frozenset[str]:
        """The option tags of ``Require``, lowercase (``siprec`` for a recording session)."""
        return frozenset(tag.lower() for tag in self.headers.values("require"))

    @property
    def supported(self) -> frozenset[str]:
        """The option tags of ``Supported`` (compact ``k``), lowercase."""
        return frozenset(tag.lower() for tag in self.headers.values("supported"))

    @property
    def content_type(self) -> str | None:
        """The ``Content-Type`` header as received (compact ``c``), or None."""
        return self.headers.get("content-type")

    def _encode(self, start_line: str) -> bytes:
        lines = [start_line, *(f"{name}: {value}" for name, value in self.headers)]
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body


@dataclass(frozen=True, slots=True)
class SipRequest(_Message):
    """A SIP request. Built from :func:`parse_message`, or directly (validated when built).

    ``uri`` is the Request-URI; ``headers`` keep the order and spelling received; ``body`` is
    exactly ``Content-Length`` bytes.
    """

    method: str
    uri: str
    headers: Headers
    body: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not _TOKEN_RE.fullmatch(self.method):
            raise InvalidSipMessage(f"method {self.method!r} is not a token")
        if not isinstance(self.uri, str) or not re.fullmatch(
            r"[A-Za-z][A-Za-z0-9+.\-]*:[\x21-\x7e]+", self.uri
        ):
            raise InvalidSipMessage(f"Request-URI {self.uri!r} is not an absolute URI")
        self._validate()
        cseq = self.cseq
        if cseq.method != self.method:
            raise InvalidSipMessage(
                f"CSeq method {cseq.method!r} is not the request's method {self.method!r}"
            )

    def encode(self) -> bytes:
        """The message as bytes: CRLF line endings, headers as held, the body unchanged."""
        return self._encode(f"{self.method} {self.uri} SIP/2.0")


@dataclass(frozen=True, slots=True)
class SipResponse(_Message):
    """A SIP response (status 100 to 699)."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    def __post_init__(self) -> None:
        if (
            not isinstance(self.status, int)
            or isinstance(self.status, bool)
            or not 100 <= self.status <= 699
        ):
            raise InvalidSipMessage(f"status {self.status!r} is not between 100 and 699")
        if not isinstance(self.reason, str):
            raise InvalidArgument(f"reason={self.reason!r} must be str")
        _check_text("reason", self.reason)
        self._validate()

    def encode(self) -> bytes:
        """The message as bytes: CRLF line endings, headers as held, the body unchanged."""
        return self._encode(f"SIP/2.0 {self.status} {self.reason}")


def _header_lines(block: bytes, *, start_line: bool) -> list[str]:
    """Split a header block into logical lines: checked for control characters, decoded
    (UTF-8; other bytes kept as surrogates, so a response copies them unchanged), unfolded.
    With ``start_line``, the first line is the message's start line, never a fold."""
    raw_lines = _LINE_SPLIT_RE.split(block)
    if len(raw_lines) > MAX_HEADER_LINES:
        raise InvalidSipMessage(
            f"{len(raw_lines)} header lines, over the limit of {MAX_HEADER_LINES}", status=413
        )
    lines: list[str] = []
    for number, raw in enumerate(raw_lines):
        if b"\r" in raw:
            raise InvalidSipMessage("a bare CR in the header block")
        bad = _CTL_RE.search(raw)
        if bad:
            raise InvalidSipMessage(f"control character {bad.group()!r} in a header line")
        line = raw.decode("utf-8", "surrogateescape")
        if line[:1] in (" ", "\t") and not (start_line and number == 0):
            if len(lines) <= (1 if start_line else 0):
                raise InvalidSipMessage("a continuation line with no header before it")
            lines[-1] = f"{lines[-1].rstrip(_WSP)} {line.strip(_WSP)}"
        else:
            lines.append(line)
    return lines


def _headers_from_lines(lines: list[str]) -> Headers:
    items: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.rstrip(_WSP)
        if not colon or not _TOKEN_RE.fullmatch(name):
            shown = line if len(line) <= 60 else line[:60] + "..."
            raise InvalidSipMessage(f"header line {shown!r} is not 'Name: value'")
        items.append((name, value.strip(_WSP)))
    return Headers(items)


def parse_headers(block: bytes) -> Headers:
    """Parse a block of header lines (no start line, no blank line), as in a MIME body part.

    >>> parse_headers(b"c: application/sdp\\r\\nContent-Disposition:\\r\\n session").items
    (('c', 'application/sdp'), ('Content-Disposition', 'session'))
    """
    if not block.strip(b"\r\n"):
        return Headers()
    return _headers_from_lines(_header_lines(block.strip(b"\r\n"), start_line=False))


def _strip_leading_crlf(data: bytes) -> bytes:
    # RFC 3261 section 7.5: CRLFs before the start line are ignored (keep-alives, padding).
    return data.lstrip(b"\r\n")


def _content_length(values: Iterable[str]) -> int | None:
    lengths = {value.strip(_WSP) for value in values}
    if not lengths:
        return None
    if len(lengths) > 1:
        raise InvalidSipMessage(f"Content-Length headers disagree: {sorted(lengths)}")
    (length,) = lengths
    if not _LENGTH_RE.fullmatch(length):
        raise InvalidSipMessage(f"Content-Length {length!r} is not a decimal number")
    return int(length)


def _check_type(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise InvalidArgument(f"data of type {type(data).__name__} must be bytes")


def parse_message(
    data: bytes | bytearray,
    *,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> SipRequest | SipResponse:
    """Parse one SIP message: a UDP datagram, or one frame from :class:`StreamFramer`.

    The body is ``Content-Length`` bytes; bytes beyond it are discarded (RFC 3261 section
    18.3), fewer is an error. Without ``Content-Length`` (allowed on UDP) the body is the rest
    of the datagram. Raises :class:`~sampledrec.errors.InvalidSipMessage` for anything it
    cannot use, and nothing else.
    """
    data = _strip_leading_crlf(_check_type(data))
    if not data:
        raise InvalidSipMessage("an empty message")
    end = _HEADER_END_RE.search(data, 0, max_header_bytes + 4)
    if end is None:
        if len(data) > max_header_bytes:
            raise InvalidSipMessage(
                f"no end of headers within {max_header_bytes} bytes", status=413
            )
        # A datagram that ends after its last header line (no blank line): no body.
        block, body_start = data.rstrip(b"\r\n"), len(data)
    else:
        block, body_start = data[: end.start()], end.end()
        if len(block) > max_header_bytes:
            raise InvalidSipMessage(
                f"headers of {len(block)} bytes, over the limit of {max_header_bytes}",
                status=413,
            )
    lines = _header_lines(block, start_line=True)
    start_line, header_lines = lines[0], lines[1:]
    headers = _headers_from_lines(header_lines)
    length = _content_length(headers.get_all("content-length"))
    available = len(data) - body_start
    if length is None:
        length = available
    elif length > available:
        raise InvalidSipMessage(
            f"Content-Length {length} but only {available} bytes follow the headers"
        )
    if length > max_body_bytes:
        raise InvalidSipMessage(
            f"a body of {length} bytes, over the limit of {max_body_bytes}", status=413
        )
    body = data[body_start : body_start + length]
    return _start(start_line, headers, body)


def _start(line: str, headers: Headers, body: bytes) -> SipRequest | SipResponse:
    line = line.strip(_WSP)
    if line[:4].upper() == "SIP/":  # a status line; its reason phrase may be UTF-8
        status = _STATUS_LINE_RE.fullmatch(line)
        if status is None:
            raise InvalidSipMessage(f"status line {line[:60]!r} is not 'SIP/2.0 <code> <reason>'")
        _check_version(status.group(1))
        return SipResponse(int(status.group(2)), (status.group(3) or "").strip(_WSP), headers, body)
    request = _REQUEST_LINE_RE.fullmatch(line) if line.isascii() else None
    if request is None:
        raise InvalidSipMessage(f"request line {line[:60]!r} is not '<method> <uri> SIP/2.0'")
    _check_version(request.group(3))
    return SipRequest(request.group(1), request.group(2), headers, body)


def _check_version(version: str) -> None:
    if version.upper() != "SIP/2.0":
        known = _VERSION_RE.fullmatch(version) is not None
        raise InvalidSipMessage(
            f"SIP version {version!r} is not SIP/2.0", status=505 if known else 400
        )


class StreamFramer:
    """Cut a SIP byte stream (TCP, TLS) into whole messages, by ``Content-Length``.

    :meth:`feed` takes whatever the transport delivered and returns the messages it completed,
    as bytes for :func:`parse_message`; a double-CRLF keep-alive ping comes out as ``b""``
    (answer it with one CRLF, RFC 5626 section 4.4.1). Framing needs ``Content-Length``
    (RFC 3261 section 18.3): a message without one, a header block that does not end within
    ``max_header_bytes``, or a body over ``max_body_bytes`` make the stream unusable, and
    :meth:`feed` raises :class:`~sampledrec.errors.InvalidSipMessage` (now and on every later
    call): close the connection. An error inside one framed message is :func:`parse_message`'s
    to report; the stream goes on.

    >>> framer = StreamFramer()
    >>> framer.feed(b"\\r\\n\\r\\nOPTIONS sip:a SIP/2.0\\r\\nl: 2\\r\\n\\r\\nhi")
    [b'', b'OPTIONS sip:a SIP/2.0\\r\\nl: 2\\r\\n\\r\\nhi']
    >>> framer.feed(b"BYE sip:a SIP/2.0\\r\\nContent-Length: 0\\r\\n")
    []
    >>> framer.feed(b"\\r\\n")
    [b'BYE sip:a SIP/2.0\\r\\nContent-Length: 0\\r\\n\\r\\n']
    """

    def __init__(
        self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        for name, value in (
            ("max_header_bytes", max_header_bytes),
            ("max_body_bytes", max_body_bytes),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgument(f"{name}={value!r} must be a positive int")
        self._buffer = bytearray()
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._failed: InvalidSipMessage | None = None
        # What is known of the incomplete message at the buffer's start, so that a message
        # trickling in byte by byte is not searched and measured again on every feed: the
        # bytes already searched in vain for the end of its headers, and its whole length
        # once its headers are in.
        self._searched = 0
        self._total: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a whole message."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add ``data``; return every message now complete, in order (``b""`` for a ping)."""
        if self._failed is not None:
            raise InvalidSipMessage(
                f"the stream is unusable: {self._failed}", status=self._failed.status
            )
        buffer = self._buffer
        buffer += _check_type(data)
        frames: list[bytes] = []
        pos = 0
        try:
            while pos < len(buffer):
                if buffer.startswith(b"\r\n\r\n", pos):
                    frames.append(b"")
                    pos += 4
                    continue
                if buffer[pos] in b"\r\n":
                    if b"\r\n\r\n".startswith(buffer[pos : pos + 4]):
                        break  # perhaps the start of a ping: wait for more
                    pos += 1  # a stray line break before a message (RFC 3261 section 7.5)
                    continue
                frame_end = self._frame_end(buffer, pos)
                if frame_end is None:
                    break
                frames.append(bytes(buffer[pos:frame_end]))
                pos = frame_end
                self._searched, self._total = 0, None
        except InvalidSipMessage as exc:
            self._failed = exc
            buffer.clear()
            raise
        if pos < len(buffer) and buffer[pos] in b"\r\n":
            self._searched, self._total = 0, None  # only a ping's start is left
        del buffer[:pos]
        return frames

    def _frame_end(self, buffer: bytearray, pos: int) -> int | None:
        """Where the message starting at ``pos`` ends, or None while it is incomplete (what is
        known of it is then kept, relative to ``pos``: feed() moves it to the buffer's start).
        """
        if pos == 0 and self._total is not None:
            return self._total if len(buffer) >= self._total else None
        # The end of headers may straddle what was searched before: step back 3 bytes.
        start = pos + max(0, self._searched - 3) if pos == 0 else pos
        end = _HEADER_END_RE.search(buffer, start, pos + self._max_header + 4)
        if end is None:
            if len(buffer) - pos > self._max_header:
                raise InvalidSipMessage(
                    f"no end of headers within {self._max_header} bytes", status=413
                )
            self._searched, self._total = len(buffer) - pos, None
            return None
        if end.start() - pos > self._max_header:
            raise InvalidSipMessage(
                f"headers of {end.start() - pos} bytes, over the limit of {self._max_header}",
                status=413,
            )
        length = self._frame_length(bytes(buffer[pos : end.start()]))
        if length > self._max_body:
            raise InvalidSipMessage(
                f"a body of {length} bytes, over the limit of {self._max_body}", status=413
            )
        total = end.end() + length
        if len(buffer) >= total:
            return total
        self._searched, self._total = 0, total - pos
        return None

    @staticmethod
    def _frame_length(block: bytes) -> int:
        values = []
        for raw in _LINE_SPLIT_RE.split(block)[1:]:
            name, colon, value = raw.partition(b":")
            if colon and header_key(name.strip(b" \t").decode("latin-1")) == "content-length":
                values.append(value.decode("latin-1"))
        length = _content_length(values)
        if length is None:
            raise InvalidSipMessage(
                "a message on a stream without Content-Length cannot be framed (RFC 3261 18.3)"
            )
        return length


_MANAGED: Final = frozenset(
    ("via", "from", "to", "call-id", "cseq", "content-length", "content-type", "record-route")
)


def build_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    """The bytes of a response to ``request`` (RFC 3261 section 8.2.6).

    Written in this order, each line ending in CRLF: the status line; every ``Via`` line of the
    request, in order; ``From``, ``To``, ``Call-ID``, ``CSeq`` as received (``To`` gets
    ``;tag=`` + ``to_tag`` when the request's has no tag); the request's ``Record-Route`` lines
    for a 101-299 response (they set up the dialog's route, section 12.1.1); ``headers`` in the
    order given; ``Content-Type`` when given; ``Content-Length``; a blank line; ``body``.

    ``to_tag`` is required for any status above 100 when the request's ``To`` has no tag (it is
    passed in, not drawn here, like every random value in sampledrec); it is ignored when the
    request's ``To`` already has one (an in-dialog request keeps its tags).
    """
    if not isinstance(request, SipRequest):
        raise InvalidArgument(f"request={request!r} must be a SipRequest")
    if request.method == "ACK":
        raise InvalidArgument("an ACK is never answered (RFC 3261 section 17.2.1)")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 699:
        raise InvalidArgument(f"status={status!r} must be an int between 100 and 699")
    if reason is None:
        reason = REASON_PHRASES.get(status)
        if reason is None:
            raise InvalidArgument(f"status={status} has no standard reason phrase; pass reason=")
    if not isinstance(reason, str):
        raise InvalidArgument(f"reason={reason!r} must be str")
    _check_text("reason", reason)
    if not isinstance(body, bytes):
        raise InvalidArgument(f"body of type {type(body).__name__} must be bytes")
    if body and content_type is None:
        raise InvalidArgument("a body needs its content_type= (for example 'application/sdp')")
    to_value = request.headers.get("to") or ""
    if request.to_tag is None:
        if to_tag is None and status > 100:
            raise InvalidArgument(
                f"the request's To has no tag: a {status} response needs to_tag= (RFC 3261 8.2.6.2)"
            )
        if to_tag is not None:
            if not isinstance(to_tag, str) or not _TOKEN_RE.fullmatch(to_tag):
                raise InvalidArgument(f"to_tag={to_tag!r} must be a non-empty RFC 3261 token")
            to_value = f"{to_value};tag={to_tag}"
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += (f"Via: {value}" for value in request.headers.get_all("via"))
    lines.append(f"From: {request.headers.get('from')}")
    lines.append(f"To: {to_value}")
    lines.append(f"Call-ID: {request.headers.get('call-id')}")
    lines.append(f"CSeq: {request.headers.get('cseq')}")
    if 101 <= status <= 299:
        lines += (f"Record-Route: {value}" for value in request.headers.get_all("record-route"))
    for name, value in Headers(headers):
        if header_key(name) in _MANAGED:
            raise InvalidArgument(
                f"header {name!r} is written by build_response itself; do not pass it"
            )
        lines.append(f"{name}: {value}")
    if content_type is not None:
        if not isinstance(content_type, str):
            raise InvalidArgument(f"content_type={content_type!r} must be str")
        _check_text("content_type", content_type)
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body
