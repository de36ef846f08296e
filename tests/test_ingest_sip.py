"""SIP messages: parsing what SBCs send, refusing what must be refused, stream framing, and
responses built byte for byte (RFC 3261)."""

from __future__ import annotations

import contextlib
import doctest

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sampledrec.ingest.sip
from sampledrec.errors import InvalidArgument, InvalidSipMessage, SampledrecError
from sampledrec.ingest.sip import (
    CSeq,
    Headers,
    SipRequest,
    SipResponse,
    StreamFramer,
    build_response,
    parse_message,
    parse_name_addr,
    split_list,
    uri_user,
)

from . import sipfixtures as fx
from .strategies import chunked, mutated, sip_requests

VENDOR_INVITES = {
    "rfc7866": fx.RFC_INVITE,
    "cube": fx.CUBE_INVITE,
    "audiocodes": fx.AUDIOCODES_INVITE,
    "oracle": fx.ORACLE_INVITE,
    "opensips": fx.OPENSIPS_INVITE,
    "compact": fx.compact_invite(),
    "compact-bare-lf": fx.compact_invite(eol="\n"),
}

OPTIONS = fx.message(
    "OPTIONS sip:rec@192.0.2.50 SIP/2.0",
    [
        ("Via", "SIP/2.0/UDP 203.0.113.70:5060;branch=z9hG4bKac1192346532"),
        ("Max-Forwards", "70"),
        ("From", "<sip:203.0.113.70>;tag=1c1079835316"),
        ("To", "<sip:rec@192.0.2.50>"),
        ("Call-ID", "11923465316122019105733@203.0.113.70"),
        ("CSeq", "1 OPTIONS"),
        ("User-Agent", "Mediant SW/v.7.40A.500.775"),
    ],
)


def request(
    *extra: tuple[str, str], method: str = "INVITE", body: bytes = b"", length: bool = True
) -> bytes:
    headers = [
        ("Via", "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK-1"),
        ("From", "<sip:src@198.51.100.1>;tag=f1"),
        ("To", "<sip:rec@192.0.2.50>"),
        ("Call-ID", "call-1@198.51.100.1"),
        ("CSeq", f"1 {method}"),
        *extra,
    ]
    return fx.message(f"{method} sip:rec@192.0.2.50 SIP/2.0", headers, body, content_length=length)


def test_module_doctests() -> None:
    assert doctest.testmod(sampledrec.ingest.sip, raise_on_error=False).failed == 0


def test_invalid_sip_message_is_under_the_one_root() -> None:
    error = InvalidSipMessage("x", status=413)
    assert isinstance(error, InvalidArgument)
    assert isinstance(error, SampledrecError)
    assert isinstance(error, ValueError)
    assert (str(error), error.status) == ("x", 413)
    assert InvalidSipMessage("y").status == 400


@pytest.mark.parametrize("name", sorted(VENDOR_INVITES))
def test_vendor_invites_parse(name: str) -> None:
    msg = parse_message(VENDOR_INVITES[name])
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE"
    assert msg.cseq.method == "INVITE"
    assert msg.via_branch is not None and msg.via_branch.startswith("z9hG4bK")
    assert msg.from_tag
    assert msg.to_tag is None
    assert msg.call_id
    assert msg.body


def test_request_fields() -> None:
    msg = parse_message(fx.CUBE_INVITE)
    assert isinstance(msg, SipRequest)
    assert msg.uri == "sip:siprec@192.0.2.50:5060"
    assert msg.call_id == "C4F3E1A2-7C1211EE-8A42D1B0-5A21C0DE@198.51.100.20"
    assert msg.cseq == CSeq(101, "INVITE")
    assert msg.via_branch == "z9hG4bK3E1A1F8B"
    assert msg.from_tag == "8B0F6A1C-1E42"
    assert msg.require == {"siprec"}
    assert "sdp-anat" in msg.supported
    (contact,) = msg.contacts
    assert contact.uri == "sip:198.51.100.20:5060;transport=tcp"
    assert contact.has_param("+sip.src")
    assert contact.uri_params == (("transport", "tcp"),)
    assert msg.content_type == "multipart/mixed;boundary=uniqueBoundary"
    assert msg.headers.get("cisco-guid") == "1863829924-2081558990-2319450544-1512161502"
    assert len(msg.body) == int(msg.headers.get("content-length") or -1)


def test_compact_forms_folding_and_lists() -> None:
    for eol in ("\r\n", "\n"):
        msg = parse_message(fx.compact_invite(eol=eol))
        assert msg.call_id == "a84b4c76e66710@198.51.100.9"
        assert msg.headers.get("Call-ID") == msg.headers.get("i")
        assert msg.vias == (
            "SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK776asdhds;rport",
            "SIP/2.0/UDP 198.51.100.8:5060;branch=z9hG4bK-proxy-1",
        )
        assert msg.via_branch == "z9hG4bK776asdhds"
        assert msg.supported == {"timer", "siprec"}
        assert msg.headers.get("subject") == "a folded subject line"
        assert msg.from_addr.display_name == "Front, Desk"
        assert msg.contacts[0].uri == "sip:frontdesk@198.51.100.9:5060"
        assert msg.content_type == "application/sdp"
        assert msg.body == fx.INACTIVE_SDP


def test_one_header_on_several_lines_and_as_a_list() -> None:
    msg = parse_message(
        request(
            ("Require", "siprec"),
            ("Require", "timer, 100rel"),
            ("Contact", '"A, B" <sip:a@x>;+sip.src, <sip:b@y>'),
        )
    )
    assert msg.require == {"siprec", "timer", "100rel"}
    assert msg.headers.get_all("require") == ("siprec", "timer, 100rel")
    assert [c.uri for c in msg.contacts] == ["sip:a@x", "sip:b@y"]


def test_response_parse() -> None:
    raw = fx.message(
        "SIP/2.0 180 Ringing",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKbye1;received=192.0.2.50"),
            ("From", "<sip:rec@192.0.2.50>;tag=r1"),
            ("To", "<sip:src@198.51.100.1>;tag=s1"),
            ("Call-ID", "x@192.0.2.50"),
            ("CSeq", "7 BYE"),
        ],
    )
    msg = parse_message(raw)
    assert isinstance(msg, SipResponse)
    assert (msg.status, msg.reason, msg.cseq, msg.to_tag) == (180, "Ringing", CSeq(7, "BYE"), "s1")
    no_reason = parse_message(raw.replace(b"180 Ringing", b"200"))
    assert isinstance(no_reason, SipResponse) and (no_reason.status, no_reason.reason) == (200, "")


def test_leading_crlf_missing_blank_line_and_extra_datagram_bytes() -> None:
    assert parse_message(b"\r\n\r\n" + OPTIONS).call_id == "11923465316122019105733@203.0.113.70"
    # A datagram that ends with its last header line (no blank line) has no body.
    assert parse_message(OPTIONS.rstrip(b"\r\n")).body == b""
    # Bytes past Content-Length are discarded (RFC 3261 section 18.3).
    msg = parse_message(request(method="MESSAGE", body=b"hello") + b"trailing junk")
    assert msg.body == b"hello"


def test_udp_without_content_length_takes_the_rest() -> None:
    raw = fx.message(
        "INVITE sip:rec@192.0.2.50 SIP/2.0",
        [
            ("Via", "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK-2"),
            ("From", "<sip:a@b>;tag=1"),
            ("To", "<sip:rec@192.0.2.50>"),
            ("Call-ID", "nolen@198.51.100.1"),
            ("CSeq", "1 INVITE"),
        ],
        fx.RFC_SDP,
        content_length=False,
    )
    assert parse_message(raw).body == fx.RFC_SDP


def test_non_utf8_header_bytes_survive_into_the_response() -> None:
    raw = request().replace(b"<sip:src@", b'"M\xfcller" <sip:src@')  # Latin-1, not UTF-8
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    response = build_response(msg, 486, to_tag="t")
    assert b'From: "M\xfcller" <sip:src@198.51.100.1>;tag=f1\r\n' in response


@pytest.mark.parametrize(
    ("raw", "needle", "status"),
    [
        (b"", "empty", 400),
        (b"\r\n\r\n", "empty", 400),
        (b"hello\r\n\r\n", "request line", 400),
        (request().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), "SIP/2.0", 505),
        (request().replace(b"SIP/2.0\r\n", b"HTTP/1.1\r\n", 1), "SIP/2.0", 400),
        (request().replace(b"INVITE sip:", b"INVITE  ", 1), "request line", 400),
        (request().replace(b"Call-ID: call-1@198.51.100.1\r\n", b""), "no call-id", 400),
        (request().replace(b"Via: ", b"X-Via: "), "no via", 400),
        (request().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), "not the request's method", 400),
        (request().replace(b"CSeq: 1 INVITE", b"CSeq: INVITE"), "CSeq", 400),
        (request().replace(b"CSeq: 1 INVITE", b"CSeq: 2147483648 INVITE"), "2**31", 400),
        (request(("Call-ID", "other@x")), "more than one call-id", 400),
        (request(("To", "<sip:z@x>")), "more than one to", 400),
        (request().replace(b"call-1@", b"call 1@"), "white space", 400),
        (request().replace(b"To: <sip:rec@192.0.2.50>", b"To: <sip:rec@x"), "without '>'", 400),
        (request().replace(b"To: <sip:rec@192.0.2.50>", b"To: <a b>"), "no usable URI", 400),
        (request(("Content-Length", "5"), length=False), "Content-Length 5 but only 0 bytes", 400),
        (request(("Content-Length", "-1"), length=False), "not a decimal", 400),
        (request(("Content-Length", "0x10"), length=False), "not a decimal", 400),
        (request(("l", "1"), ("Content-Length", "2"), length=False), "disagree", 400),
        (request(("X-Evil", "a\x00b")), "control character", 400),
        (request(("X-Evil", "a\rb")), "bare CR", 400),
        (request().replace(b"\r\nVia", b"\r\n Via", 1), "continuation line", 400),
        (request(("Bad Header", "x")), "not 'Name: value'", 400),
        (request(("NoColon", "x")).replace(b"NoColon: x", b"NoColon x"), "Name: value", 400),
    ],
)
def test_refused(raw: bytes, needle: str, status: int) -> None:
    with pytest.raises(InvalidSipMessage, match=None) as caught:
        parse_message(raw)
    assert needle.lower() in str(caught.value).lower()
    assert caught.value.status == status


def test_limits() -> None:
    big_header = request(("X-Padding", "p" * 20_000))
    with pytest.raises(InvalidSipMessage) as caught:
        parse_message(big_header)
    assert caught.value.status == 413
    assert parse_message(big_header, max_header_bytes=32_000).headers.get("x-padding")
    big_body = request(method="MESSAGE", body=b"b" * 200_000)
    with pytest.raises(InvalidSipMessage) as caught:
        parse_message(big_body)
    assert caught.value.status == 413
    many = request(*[("X-N", str(n)) for n in range(300)])
    with pytest.raises(InvalidSipMessage, match="header lines"):
        parse_message(many)


def test_non_bytes_is_a_usage_error() -> None:
    with pytest.raises(InvalidArgument):
        parse_message("INVITE sip:a SIP/2.0")  # type: ignore[arg-type]
    assert parse_message(bytearray(OPTIONS)).cseq == CSeq(1, "OPTIONS")


# --- helpers --------------------------------------------------------------------------------------


def test_name_addr_forms() -> None:
    plain = parse_name_addr("sip:rec@192.0.2.50;tag=abc")
    assert (plain.display_name, plain.uri, plain.tag) == (None, "sip:rec@192.0.2.50", "abc")
    quoted = parse_name_addr(r'"Doe \"JD\" <x>" <sips:jd@example.com;transport=tls>;tag=9;lr')
    assert quoted.display_name == 'Doe "JD" <x>'
    assert quoted.uri == "sips:jd@example.com;transport=tls"
    assert quoted.params == (("tag", "9"), ("lr", None))
    token_name = parse_name_addr("Agent <sip:a@b>")
    assert token_name.display_name == "Agent"
    for bad in ("", "<>", "<sip:a@b> junk", '"unterminated <sip:a@b>', "<sip:a@b"):
        with pytest.raises(InvalidSipMessage):
            parse_name_addr(bad)


def test_split_list_and_uri_user() -> None:
    assert split_list("a, b ,c") == ["a", "b", "c"]
    assert split_list('"x,y" <sip:a@b>, <sip:c@d;p=1,2>') == ['"x,y" <sip:a@b>', "<sip:c@d;p=1,2>"]
    assert uri_user("sips:alice:secret@example.com") == "alice"
    assert uri_user("SIP:+1555@x") == "+1555"
    assert uri_user("tel:") is None
    assert uri_user("") is None


def test_headers_validate_and_compare() -> None:
    headers = Headers([("i", "x"), ("Call-ID", "y")])
    assert headers.get_all("CALL-ID") == ("x", "y")
    assert headers == Headers([("i", "x"), ("Call-ID", "y")])
    assert headers != Headers([("Call-ID", "y"), ("i", "x")])
    assert len(headers) == 2 and next(iter(headers)) == ("i", "x")
    assert "Content-Length" not in headers
    for bad in ([("Bad Name", "x")], [("X", "a\r\nInjected: 1")], [("X", "\ud800")]):
        with pytest.raises(InvalidArgument):
            Headers(bad)


def test_messages_validate_when_built() -> None:
    msg = parse_message(OPTIONS)
    assert isinstance(msg, SipRequest)
    with pytest.raises(InvalidSipMessage, match="Content-Length"):
        SipRequest(msg.method, msg.uri, msg.headers, b"unexpected body")
    with pytest.raises(InvalidSipMessage, match="method"):
        SipRequest("BAD METHOD", msg.uri, msg.headers)
    with pytest.raises(InvalidSipMessage, match="Request-URI"):
        SipRequest("OPTIONS", "not a uri", msg.headers)
    with pytest.raises(InvalidSipMessage, match="status"):
        SipResponse(700, "x", msg.headers)


# --- responses ------------------------------------------------------------------------------------


def test_response_to_options_byte_exact() -> None:
    msg = parse_message(OPTIONS)
    assert isinstance(msg, SipRequest)
    expected = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 203.0.113.70:5060;branch=z9hG4bKac1192346532\r\n"
        b"From: <sip:203.0.113.70>;tag=1c1079835316\r\n"
        b"To: <sip:rec@192.0.2.50>;tag=8f3ac2\r\n"
        b"Call-ID: 11923465316122019105733@203.0.113.70\r\n"
        b"CSeq: 1 OPTIONS\r\n"
        b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n"
        b"Accept: application/sdp, application/rs-metadata+xml\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    assert (
        build_response(
            msg,
            200,
            to_tag="8f3ac2",
            headers=[
                ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS"),
                ("Accept", "application/sdp, application/rs-metadata+xml"),
            ],
        )
        == expected
    )


def test_response_to_invite_byte_exact_with_record_route_and_body() -> None:
    raw = fx.compact_invite().replace(
        b"CSeq: 314159 INVITE\r\n",
        b"CSeq: 314159 INVITE\r\n"
        b"Record-Route: <sip:p1.example;lr>\r\nRecord-Route: <sip:p2;lr>\r\n",
    )
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    sdp = b"v=0\r\n"
    expected_head = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK776asdhds;rport\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.8:5060;branch=z9hG4bK-proxy-1\r\n"
        b'From: "Front, Desk" <sip:frontdesk@198.51.100.9>;tag=1928301774\r\n'
        b"To: <sip:rec@192.0.2.50>;tag=srs-1\r\n"
        b"Call-ID: a84b4c76e66710@198.51.100.9\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Record-Route: <sip:p1.example;lr>\r\n"
        b"Record-Route: <sip:p2;lr>\r\n"
        b"Contact: <sip:rec@192.0.2.50:5060>;+sip.srs\r\n"
        b"Require: siprec\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
    )
    response = build_response(
        msg,
        200,
        to_tag="srs-1",
        headers=[("Contact", "<sip:rec@192.0.2.50:5060>;+sip.srs"), ("Require", "siprec")],
        body=sdp,
        content_type="application/sdp",
    )
    assert response == expected_head + sdp
    # Parsed back: the same dialog identifiers, the tag added.
    parsed = parse_message(response)
    assert isinstance(parsed, SipResponse)
    assert (parsed.call_id, parsed.cseq, parsed.to_tag, parsed.from_tag) == (
        msg.call_id,
        msg.cseq,
        "srs-1",
        msg.from_tag,
    )
    assert parsed.vias == msg.vias
    # A final error response does not copy Record-Route.
    refusal = build_response(msg, 403, to_tag="srs-1", headers=[("Warning", '399 rec "declined"')])
    assert b"Record-Route" not in refusal
    assert refusal.startswith(b"SIP/2.0 403 Forbidden\r\n")


def test_response_keeps_an_existing_to_tag_and_needs_one_otherwise() -> None:
    in_dialog = parse_message(
        request(method="BYE").replace(
            b"To: <sip:rec@192.0.2.50>", b"To: <sip:rec@192.0.2.50>;tag=ours"
        )
    )
    assert isinstance(in_dialog, SipRequest)
    response = build_response(in_dialog, 200, to_tag="ignored")
    assert b"\r\nTo: <sip:rec@192.0.2.50>;tag=ours\r\n" in response
    initial = parse_message(request())
    assert isinstance(initial, SipRequest)
    assert b"\r\nTo: <sip:rec@192.0.2.50>\r\n" in build_response(initial, 100)
    with pytest.raises(InvalidArgument, match="to_tag"):
        build_response(initial, 180)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"status": 99}, "status"),
        ({"status": True}, "status"),
        ({"status": 299}, "reason phrase"),
        ({"status": 200, "reason": "OK\r\nX: y"}, "line break"),
        ({"status": 200, "to_tag": "a b"}, "to_tag"),
        ({"status": 200, "to_tag": "t", "body": b"x"}, "content_type"),
        ({"status": 200, "to_tag": "t", "headers": [("Via", "x")]}, "written by build_response"),
        ({"status": 200, "to_tag": "t", "headers": [("l", "0")]}, "written by build_response"),
        ({"status": 200, "to_tag": "t", "headers": [("X", "a\nb")]}, "line break"),
    ],
)
def test_build_response_refuses_misuse(kwargs: dict[str, object], needle: str) -> None:
    msg = parse_message(request())
    assert isinstance(msg, SipRequest)
    with pytest.raises(InvalidArgument, match=needle):
        build_response(msg, **kwargs)  # type: ignore[arg-type]


def test_no_response_to_ack() -> None:
    ack = parse_message(request(method="ACK"))
    assert isinstance(ack, SipRequest)
    with pytest.raises(InvalidArgument, match="ACK"):
        build_response(ack, 200, to_tag="t")


# --- stream framing -------------------------------------------------------------------------------


def test_framer_splits_pipelined_messages_and_pings() -> None:
    stream = b"\r\n\r\n" + fx.CUBE_INVITE + OPTIONS + b"\r\n\r\n" + fx.ORACLE_INVITE
    framer = StreamFramer()
    assert framer.feed(stream) == [b"", fx.CUBE_INVITE, OPTIONS, b"", fx.ORACLE_INVITE]
    assert framer.buffered == 0


def test_framer_waits_for_the_whole_body() -> None:
    framer = StreamFramer()
    cut = len(fx.CUBE_INVITE) - 10
    assert framer.feed(fx.CUBE_INVITE[:cut]) == []
    assert framer.buffered == cut
    assert framer.feed(fx.CUBE_INVITE[cut:]) == [fx.CUBE_INVITE]


def test_framer_byte_by_byte() -> None:
    # A peer that trickles its messages in one byte at a time gets the same frames, and the
    # framer does not search or measure a message again on every byte.
    stream = b"".join([*VENDOR_INVITES.values(), b"\r\n\r\n", OPTIONS])  # bare LF too
    framer = StreamFramer()
    frames = [frame for i in range(len(stream)) for frame in framer.feed(stream[i : i + 1])]
    assert b"".join(frame or b"\r\n\r\n" for frame in frames) == stream
    assert frames.count(b"") == 1 and len(frames) == len(VENDOR_INVITES) + 2
    big = request(method="MESSAGE", body=b"x" * 100_000)
    assert [f for i in range(0, len(big), 7) for f in framer.feed(big[i : i + 7])] == [big]


def test_framer_stray_line_breaks_and_partial_pings() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [b""]
    assert framer.feed(b"\n\r\n" + OPTIONS) == [OPTIONS]


def test_framer_refuses_what_cannot_be_framed_and_stays_refused() -> None:
    no_length = fx.message("OPTIONS sip:a SIP/2.0", [("Call-ID", "x")], content_length=False)
    framer = StreamFramer()
    with pytest.raises(InvalidSipMessage, match="Content-Length"):
        framer.feed(OPTIONS + no_length)
    with pytest.raises(InvalidSipMessage, match="unusable"):
        framer.feed(OPTIONS)
    with pytest.raises(InvalidSipMessage) as caught:
        StreamFramer(max_header_bytes=1024).feed(b"INVITE sip:a SIP/2.0\r\n" + b"X: y\r\n" * 400)
    assert caught.value.status == 413
    with pytest.raises(InvalidSipMessage) as caught:
        StreamFramer(max_body_bytes=10).feed(request(method="MESSAGE", body=b"x" * 11))
    assert caught.value.status == 413
    with pytest.raises(InvalidArgument):
        StreamFramer(max_body_bytes=0)


def test_framer_a_bad_message_does_not_end_the_stream() -> None:
    bad = fx.message("OPTIONS sip:a SIP/2.0", [("Via", "x")])  # frames, but cannot be answered
    framer = StreamFramer()
    frames = framer.feed(bad + OPTIONS)
    assert frames == [bad, OPTIONS]
    with pytest.raises(InvalidSipMessage):
        parse_message(frames[0])
    assert parse_message(frames[1]).cseq == CSeq(1, "OPTIONS")


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_parse_or_raise_the_typed_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except InvalidSipMessage:
        return
    assert parse_message(msg.encode()) == msg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([*sorted(VENDOR_INVITES), "options"]).flatmap(
        lambda name: mutated(OPTIONS if name == "options" else VENDOR_INVITES[name])
    )
)
def test_mutated_messages_parse_or_raise_the_typed_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except InvalidSipMessage:
        return
    # Whatever parses encodes to bytes that parse to the same message, and can be answered.
    assert parse_message(msg.encode()) == msg
    if isinstance(msg, SipRequest) and msg.method != "ACK":
        response = parse_message(build_response(msg, 500, to_tag="t"))
        assert response.call_id == msg.call_id and response.cseq == msg.cseq


@settings(max_examples=200, deadline=None)
@given(sip_requests())
def test_built_requests_round_trip(msg: SipRequest) -> None:
    assert parse_message(msg.encode()) == msg
    assert StreamFramer().feed(msg.encode()) == [msg.encode()]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([OPTIONS, fx.CUBE_INVITE, fx.AUDIOCODES_INVITE, b"\r\n\r\n"]),
        min_size=1,
        max_size=6,
    ).flatmap(lambda items: chunked(b"".join(items)).map(lambda chunks: (items, chunks)))
)
def test_framer_is_independent_of_how_the_stream_is_cut(
    case: tuple[list[bytes], list[bytes]],
) -> None:
    items, chunks = case
    framer = StreamFramer()
    frames = [frame for chunk in chunks for frame in framer.feed(chunk)]
    assert frames == [b"" if item == b"\r\n\r\n" else item for item in items]
    assert framer.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 64))
def test_framer_any_bytes_frame_or_raise_the_typed_error(data: bytes, step: int) -> None:
    framer = StreamFramer(max_header_bytes=512, max_body_bytes=512)
    try:
        for start in range(0, len(data), step):
            for frame in framer.feed(data[start : start + step]):
                if frame:
                    with contextlib.suppress(InvalidSipMessage):
                        parse_message(frame)
    except InvalidSipMessage:
        pass
