"""Multipart bodies (RFC 2046) as SIPREC INVITEs carry them."""

from __future__ import annotations

import contextlib
import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sampledrec.ingest.multipart
from sampledrec.errors import InvalidArgument, InvalidSipMessage
from sampledrec.ingest.multipart import parse_media_type, split_body, split_multipart

from . import sipfixtures as fx
from .strategies import mutated


def test_module_doctests() -> None:
    assert doctest.testmod(sampledrec.ingest.multipart, raise_on_error=False).failed == 0


def test_two_parts() -> None:
    body = fx.multipart(
        "foobar",
        [
            ([("Content-Type", "application/SDP")], b"v=0\r\n"),
            (
                [
                    ("Content-Type", "application/rs-metadata+xml"),
                    ("Content-Disposition", "recording-session"),
                ],
                b"<x/>",
            ),
        ],
    )
    sdp, meta = split_body("multipart/mixed;boundary=foobar", body)
    assert (sdp.media_type, sdp.disposition, sdp.body) == ("application/sdp", None, b"v=0\r\n")
    assert (meta.media_type, meta.disposition, meta.body) == (
        "application/rs-metadata+xml",
        "recording-session",
        b"<x/>",
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/mixed;boundary=b-1",
        'multipart/mixed; boundary="b-1"',
        "Multipart/Mixed ; Boundary = b-1 ; charset=utf-8",
        "multipart/related;type=application/sdp;boundary=b-1",
    ],
)
def test_boundary_forms(content_type: str) -> None:
    body = b"--b-1\r\nContent-Type: a/b\r\n\r\nx\r\n--b-1--"
    (part,) = split_body(content_type, body)
    assert part.body == b"x"


def test_preamble_epilogue_bare_lf_padding_and_no_close() -> None:
    body = (
        b"preamble --b-1 not at a line start\n"
        b"--b-1 \t\n"  # white space after the boundary (transport padding)
        b"Content-Type: application/sdp\n\nv=0\n"
        b"--b-1\r\n"
        b"\r\n"  # a part without headers
        b"bare body\r\n"
        b"--b-10\r\n"  # not our boundary: part of the body
        b"--b-1--\r\n"
        b"epilogue\r\n--b-1\r\nContent-Type: ignored/after-close\r\n\r\nz"
    )
    parts = split_body("multipart/mixed;boundary=b-1", body)
    assert [(p.media_type, p.body) for p in parts] == [
        ("application/sdp", b"v=0"),
        ("", b"bare body\r\n--b-10"),
    ]
    unclosed = split_body("multipart/mixed;boundary=q", b"--q\r\nContent-Type: a/b\r\n\r\nrest\r\n")
    assert unclosed[0].body == b"rest\r\n"
    empty_part = split_body("multipart/mixed;boundary=q", b"--q\r\n--q\r\nc: a/b\r\n\r\ny\r\n--q--")
    assert [(p.media_type, p.body) for p in empty_part] == [("", b""), ("a/b", b"y")]


def test_plain_bodies_are_one_part() -> None:
    (part,) = split_body("application/sdp", b"v=0\r\n", disposition="session")
    assert (part.media_type, part.disposition, part.body) == (
        "application/sdp",
        "session",
        b"v=0\r\n",
    )
    (untyped,) = split_body(None, b"v=0\r\n")
    assert untyped.media_type == ""
    assert split_body("application/sdp", b"") == ()


@pytest.mark.parametrize(
    ("content_type", "body", "needle"),
    [
        ("multipart/mixed", b"--x\r\n\r\n", "no boundary"),
        ("multipart/mixed;boundary=x", b"no delimiter here", "no '--x' line"),
        ("multipart/mixed;boundary=x", b"--x\r\nContent-Type: a/b\r\nbody", "blank line"),
        ('multipart/mixed;boundary=""', b"--\r\n", "boundary"),
        ("multipart/mixed;boundary=x", b"--x\r\n\r\n" * 17, "more than 16"),
        ("not a type", b"x", "type/subtype"),
        ("multipart/mixed;boundary=x", b"--x\r\nBad Header\r\n\r\nbody", "Name: value"),
    ],
)
def test_refused(content_type: str, body: bytes, needle: str) -> None:
    with pytest.raises(InvalidSipMessage) as caught:
        split_body(content_type, body)
    assert needle in str(caught.value)


def test_usage_errors() -> None:
    with pytest.raises(InvalidArgument):
        split_body("application/sdp", "v=0")  # type: ignore[arg-type]
    assert parse_media_type("application/sdp") == ("application/sdp", {})
    assert split_multipart(b"--a\r\n\r\nx", "a")[0].body == b"x"


_PART_TYPES = st.sampled_from(["application/sdp", "application/rs-metadata+xml", "text/plain"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_PART_TYPES, st.binary(max_size=80)), min_size=1, max_size=5),
    st.sampled_from(["\r\n", "\n"]),
    st.binary(max_size=20),
)
def test_split_recovers_the_parts_it_was_built_from(
    parts: list[tuple[str, bytes]], eol: str, preamble: bytes
) -> None:
    boundary = "sampledrec-7Hq2"
    # A body ending in CR before a bare-LF delimiter line reads as CRLF: ambiguous, left out.
    parts = [
        (kind, body.replace(b"--sampledrec", b"").rstrip(b"\r" if eol == "\n" else b""))
        for kind, body in parts
    ]
    body = (preamble.replace(b"--sampledrec", b"") + eol.encode()) if preamble else b""
    for kind, content in parts:
        body += f"--{boundary}{eol}Content-Type: {kind}{eol}{eol}".encode() + content + eol.encode()
    body += f"--{boundary}--{eol}".encode()
    found = split_body(f'multipart/mixed; boundary="{boundary}"', body)
    assert [(p.media_type, p.body) for p in found] == parts


@settings(max_examples=300, deadline=None)
@given(
    mutated(
        fx.multipart(
            "b",
            [
                ([("Content-Type", "application/sdp")], fx.RFC_SDP),
                ([("Content-Type", "application/rs-metadata+xml")], b"<r/>"),
            ],
        )
    )
)
def test_mutated_bodies_split_or_raise_the_typed_error(body: bytes) -> None:
    try:
        parts = split_body("multipart/mixed;boundary=b", body)
    except InvalidSipMessage:
        return
    for part in parts:
        assert isinstance(part.body, bytes)
        with contextlib.suppress(InvalidSipMessage):  # a part's type may be malformed
            assert isinstance(part.media_type, str)
