"""Message bodies, sans I/O: a ``multipart/mixed`` body (RFC 2046 section 5.1, as SIPREC's
INVITE carries SDP and recording metadata, RFC 7866 section 9) split into its parts, or a plain
body seen as one part.

Tolerated: a boundary quoted or not, a preamble and an epilogue, CRLF or bare LF line endings,
white space after a boundary line, a missing close delimiter, parts nobody asked for (the
caller picks the parts it knows). Refused, with :class:`~sampledrec.errors.InvalidSipMessage`: a
``multipart`` content type without a boundary, a body in which the boundary never appears, a
part without the blank line between its headers and its body, more than ``max_parts`` parts.

>>> body = (b"preamble\\r\\n--b1\\r\\nContent-Type: application/sdp\\r\\n\\r\\nv=0\\r\\n"
...         b"--b1\\nContent-Type: application/rs-metadata+xml\\n"
...         b"Content-Disposition: recording-session\\n\\n<recording/>\\n--b1--\\r\\n")
>>> for part in split_body('multipart/mixed;boundary="b1"', body):
...     print(part.media_type, part.disposition, part.body)
application/sdp None b'v=0'
application/rs-metadata+xml recording-session b'<recording/>'

"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ..errors import InvalidArgument, InvalidSipMessage
from .sip import Headers, parse_headers, parse_params

__all__ = [
    "MAX_PARTS",
    "BodyPart",
    "parse_media_type",
    "split_body",
    "split_multipart",
]

MAX_PARTS: Final = 16
"""Parts of one multipart body; a SIPREC INVITE has two (SDP and metadata), rarely three."""

_HEADER_END_RE: Final = re.compile(rb"\r?\n\r?\n")
_MEDIA_TYPE_RE: Final = re.compile(r"[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a ``Content-Type`` value into its media type (lowercase) and parameters (names
    lowercase, quoted values unquoted).

    >>> parse_media_type('Multipart/Mixed ; boundary="unique-boundary-1"; charset=utf-8')
    ('multipart/mixed', {'boundary': 'unique-boundary-1', 'charset': 'utf-8'})
    """
    media_type, _, rest = value.partition(";")
    media_type = media_type.strip(" \t").lower()
    if not _MEDIA_TYPE_RE.fullmatch(media_type):
        raise InvalidSipMessage(f"content type {value!r} is not 'type/subtype'", status=415)
    params = {name: param for name, param in parse_params(rest) if param is not None}
    return media_type, params


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One part of a body: its MIME headers and its bytes."""

    headers: Headers
    body: bytes

    @property
    def media_type(self) -> str:
        """The part's media type, lowercase and without parameters (``application/sdp``);
        ``""`` when the part has no ``Content-Type``."""
        value = self.headers.get("content-type")
        return parse_media_type(value)[0] if value else ""

    @property
    def disposition(self) -> str | None:
        """The disposition type of ``Content-Disposition``, lowercase (``recording-session``,
        ``session``), or None."""
        value = self.headers.get("content-disposition")
        if value is None:
            return None
        return value.partition(";")[0].strip(" \t").lower() or None


def _lines(data: bytes) -> list[tuple[int, int, int]]:
    """Every line as (start, end of its content, end after its line break)."""
    lines = []
    start = 0
    while start < len(data):
        newline = data.find(b"\n", start)
        if newline < 0:
            lines.append((start, len(data), len(data)))
            break
        content_end = newline - 1 if newline > start and data[newline - 1] == 0x0D else newline
        lines.append((start, content_end, newline + 1))
        start = newline + 1
    return lines


def _part(data: bytes) -> BodyPart:
    if data[:1] == b"\n" or data[:2] == b"\r\n":  # no headers: the body follows the blank line
        return BodyPart(Headers(), data[1:] if data[:1] == b"\n" else data[2:])
    end = _HEADER_END_RE.search(data)
    if end is None:
        if not data.strip(b"\r\n\t "):
            return BodyPart(Headers(), b"")
        raise InvalidSipMessage("a body part has no blank line between its headers and its body")
    return BodyPart(parse_headers(data[: end.start()]), data[end.end() :])


def split_multipart(
    body: bytes, boundary: str, *, max_parts: int = MAX_PARTS
) -> tuple[BodyPart, ...]:
    """Split a multipart body at ``--boundary`` lines; the preamble and the epilogue are
    dropped, and the line break before each delimiter belongs to the delimiter."""
    if not boundary or len(boundary) > 200 or not boundary.isascii() or not boundary.isprintable():
        raise InvalidSipMessage(f"multipart boundary {boundary!r} is not 1 to 200 printable ASCII")
    delimiter = b"--" + boundary.encode("ascii")
    cuts: list[tuple[int, int, bool]] = []  # (line start, line end with break, is the close)
    for start, content_end, end in _lines(body):
        line = body[start:content_end]
        if not line.startswith(delimiter):
            continue
        rest = line[len(delimiter) :]
        if not rest.strip(b" \t"):
            cuts.append((start, end, False))
        elif rest.startswith(b"--") and not rest[2:].strip(b" \t"):
            cuts.append((start, end, True))
            break
    if not cuts:
        raise InvalidSipMessage(f"the multipart body has no '--{boundary}' line")
    parts: list[BodyPart] = []
    for (_, part_start, close), following in zip(cuts, [*cuts[1:], None], strict=True):
        if close:
            break
        if following is None:
            part_end = len(body)  # no close delimiter: the last part runs to the end
        else:
            part_end = following[0]
            if part_end > part_start and body[part_end - 1] == 0x0A:
                part_end -= 2 if part_end - 2 >= part_start and body[part_end - 2] == 0x0D else 1
        if len(parts) == max_parts:
            raise InvalidSipMessage(f"more than {max_parts} body parts", status=413)
        parts.append(_part(body[part_start:part_end]))
    return tuple(parts)


def split_body(
    content_type: str | None,
    body: bytes,
    *,
    disposition: str | None = None,
    max_parts: int = MAX_PARTS,
) -> tuple[BodyPart, ...]:
    """The parts of a message body given its ``Content-Type`` (and ``Content-Disposition``):
    a ``multipart/*`` body split by :func:`split_multipart`, any other body as one part that
    carries the message's content headers. An empty body has no parts.
    """
    if not isinstance(body, bytes):
        raise InvalidArgument(f"body of type {type(body).__name__} must be bytes")
    if not body:
        return ()
    if content_type is not None:
        media_type, params = parse_media_type(content_type)
        if media_type.startswith("multipart/"):
            boundary = params.get("boundary")
            if boundary is None:
                raise InvalidSipMessage(f"content type {content_type!r} has no boundary")
            return split_multipart(body, boundary, max_parts=max_parts)
    items = [("Content-Type", content_type)] if content_type is not None else []
    if disposition is not None:
        items.append(("Content-Disposition", disposition))
    return (BodyPart(Headers(items), body),)
