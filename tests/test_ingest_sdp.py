"""SDP offers as SBCs send them, and the recorder's answer (RFC 8866, RFC 3264)."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sampledrec.ingest.sdp
from sampledrec.errors import InvalidArgument, InvalidSipMessage
from sampledrec.ingest.sdp import RtpMap, SessionDescription, build_answer, parse_sdp

from . import sipfixtures as fx
from .strategies import mutated

OFFERS = {
    "rfc7866": fx.RFC_SDP,
    "cube": fx.CUBE_SDP,
    "audiocodes": fx.AUDIOCODES_SDP,
    "oracle": fx.ORACLE_SDP,
    "opensips": fx.OPENSIPS_SDP,
    "inactive": fx.INACTIVE_SDP,
}


def answer_lines(offer: bytes, ports: list[int | None], **kwargs: object) -> list[str]:
    answer = build_answer(
        parse_sdp(offer),
        ports,
        address="192.0.2.50",
        session_id=42,
        version=1,
        **kwargs,  # type: ignore[arg-type]
    )
    assert answer.sdp.endswith(b"\r\n") and b"\n" not in answer.sdp.replace(b"\r\n", b"")
    return answer.sdp.decode().split("\r\n")[:-1]


def test_module_doctests() -> None:
    assert doctest.testmod(sampledrec.ingest.sdp, raise_on_error=False).failed == 0


def test_two_stream_offer() -> None:
    offer = parse_sdp(fx.CUBE_SDP)
    assert offer.origin == "CiscoSystemsSIP-GW-UserAgent 6175 2514 IN IP4 198.51.100.20"
    assert offer.session_name == "SIP Call"
    assert offer.connection == "198.51.100.20"
    assert offer.direction is None
    first, second = offer.media
    assert (first.media, first.port, first.protocol, first.formats) == (
        "audio",
        16384,
        "RTP/AVP",
        ("0", "101"),
    )
    assert (first.label, second.label) == ("1", "2")
    assert first.direction == second.direction == "sendonly"
    assert first.rtpmap(101) == RtpMap(101, "telephone-event", 8000)
    assert first.rtpmap(0) == RtpMap(0, "PCMU", 8000)
    assert first.attribute("ptime") == "20"
    assert first.attribute("sendonly") is None
    assert ("sendonly", None) in first.attributes


def test_static_payload_types_without_rtpmap_and_session_level_connection() -> None:
    offer = parse_sdp(fx.RFC_SDP)
    media = offer.media[0]
    assert media.payload_types == (0, 4, 8)
    assert media.rtpmap(8) == RtpMap(8, "PCMA", 8000)
    assert media.rtpmap(4) == RtpMap(4, "G723", 8000)
    assert media.rtpmap(96) is None
    assert media.connection == "198.51.100.1"


def test_media_level_connection_and_direction_win() -> None:
    offer = parse_sdp(
        fx.sdp(
            "v=0",
            "c=IN IP4 198.51.100.1",
            "a=sendonly",
            "m=audio 5000 RTP/AVP 0",
            "m=audio 5002 RTP/AVP 0",
            "c=IN IP6 2001:db8::7",
            "a=inactive",
            "m=audio 5004/2 RTP/AVP 0",
            "c=IN IP4 233.252.0.1/127/2",
        )
    )
    assert [(m.connection, m.direction, m.port_count) for m in offer.media] == [
        ("198.51.100.1", "sendonly", 1),
        ("2001:db8::7", "inactive", 1),
        ("233.252.0.1", "sendonly", 2),
    ]
    assert offer.direction == "sendonly"
    no_direction = parse_sdp(b"v=0\nm=audio 1 RTP/AVP 0\n")
    assert no_direction.media[0].direction == "sendrecv"
    assert no_direction.media[0].connection is None


def test_a_inactive_offer_session_level() -> None:
    offer = parse_sdp(fx.INACTIVE_SDP)
    assert offer.direction == "inactive"
    assert [(m.label, m.direction) for m in offer.media] == [
        ("caller", "inactive"),
        ("agent", "inactive"),
    ]


def test_tolerated_forms() -> None:
    offer = parse_sdp(
        b"\r\nv=0  \r\n\r\no=- 1 1 IN IP4 x\r\nz=unknown type\r\nX=upper-case type\r\n"
        b"m=audio 7000  RTP/AVP  0   8\r\na=rtpmap:8 pcma/8000\r\na=rtpmap:bad\r\n"
        b"a=label:\r\nb=AS:64\r\n"
    )
    media = offer.media[0]
    assert media.formats == ("0", "8")
    assert media.rtpmap(8) == RtpMap(8, "pcma", 8000)
    assert media.label is None  # an empty label says nothing
    assert parse_sdp("v=0\nm=audio 1 RTP/AVP 0").media[0].port == 1  # str, no final newline


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"\r\n\r\n", "empty"),
        (b"o=- 1 1 IN IP4 x\r\nv=0\r\n", "starts with v=0"),
        (b"v=1\r\n", "starts with v=0"),
        (b"<html>\r\n", "'<type>=<value>'"),
        (b"v=0\r\nm=audio\r\n", "m="),
        (b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n", "port"),
        (b"v=0\r\nm=audio 7000 RTP/AVP\r\n", "no format"),
        (b"v=0\r\nm=audio x RTP/AVP 0\r\n", "m="),
        (b"v=0\r\nc=IN IP4\r\n", "c="),
        (b"v=0\r\n" + b"m=audio 1 RTP/AVP 0\r\n" * 33, "more than 32"),
        (b"v=0\r\n" + b"a=x\r\n" * 20_000, "over the limit"),
    ],
)
def test_refused(data: bytes, needle: str) -> None:
    with pytest.raises(InvalidSipMessage) as caught:
        parse_sdp(data)
    assert needle in str(caught.value)
    assert caught.value.status in (413, 488)


def test_answer_for_a_two_stream_offer() -> None:
    assert answer_lines(fx.RFC_SDP, [30000, 30002]) == [
        "v=0",
        "o=sampledrec 42 1 IN IP4 192.0.2.50",
        "s=-",
        "c=IN IP4 192.0.2.50",
        "t=0 0",
        "m=audio 30000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
        "a=recvonly",
        "m=audio 30002 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
        "a=recvonly",
    ]


def test_answer_keeps_telephone_events_and_the_offered_fmtp() -> None:
    lines = answer_lines(fx.AUDIOCODES_SDP, [30000, 30002])
    assert lines[5:10] == [
        "m=audio 30000 RTP/AVP 8 96",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:96 telephone-event/8000",
        "a=fmtp:96 0-15",
        "a=recvonly",
    ]
    assert "a=fmtp:101 0-16" in answer_lines(fx.CUBE_SDP, [30000, 30002])
    plain = answer_lines(fx.AUDIOCODES_SDP, [30000, 30002], telephone_event=False)
    assert "m=audio 30000 RTP/AVP 8" in plain and not any("telephone" in line for line in plain)


def test_answer_follows_the_offer_s_codec_order() -> None:
    # 8 first in the offer: PCMA chosen though PCMU is offered too.
    answer = build_answer(
        parse_sdp(fx.INACTIVE_SDP), [1000, 1002], address="192.0.2.50", session_id=1, version=1
    )
    assert [(m.encoding, m.payload_type) for m in answer.media] == [("PCMA", 8), ("PCMA", 8)]


def test_answer_to_inactive_streams_is_inactive_and_keeps_the_port() -> None:
    answer = build_answer(
        parse_sdp(fx.INACTIVE_SDP), [1000, 1002], address="192.0.2.50", session_id=1, version=2
    )
    assert [(m.port, m.direction, m.rejected) for m in answer.media] == [
        (1000, "inactive", None),
        (1002, "inactive", None),
    ]
    assert answer.sdp.count(b"a=inactive\r\n") == 2
    recvonly = parse_sdp(b"v=0\nm=audio 1 RTP/AVP 0\na=recvonly\nm=audio 2 RTP/AVP 0\n")
    answer = build_answer(recvonly, [10, 12], address="192.0.2.50", session_id=1, version=1)
    assert [m.direction for m in answer.media] == ["inactive", "recvonly"]


def test_answer_rejects_what_cannot_be_recorded() -> None:
    offer = fx.sdp(
        "v=0",
        "c=IN IP4 198.51.100.1",
        "m=audio 5000 RTP/AVP 18 9",
        "a=sendonly",
        "m=audio 5002 RTP/SAVP 0",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "m=video 5004 RTP/AVP 96",
        "m=audio 0 RTP/AVP 0",
        "m=audio 5008 RTP/AVP 96",
        "a=rtpmap:96 PCMU/16000",
        "m=audio 5010 RTP/AVP 0 8",
        "m=audio 5012 RTP/AVP 97 8",
        "a=rtpmap:97 PCMA/8000/2",
    )
    answer = build_answer(
        parse_sdp(offer),
        [3000, 3002, 3004, 3006, 3008, None, 3012],
        address="2001:db8::50",
        session_id=1,
        version=1,
    )
    lines = answer.sdp.decode().split("\r\n")
    assert lines[1] == "o=sampledrec 1 1 IN IP6 2001:db8::50"
    assert [line for line in lines if line.startswith("m=")] == [
        "m=audio 0 RTP/AVP 18 9",
        "m=audio 0 RTP/SAVP 0",
        "m=video 0 RTP/AVP 96",
        "m=audio 0 RTP/AVP 0",
        "m=audio 0 RTP/AVP 96",
        "m=audio 0 RTP/AVP 0 8",
        "m=audio 3012 RTP/AVP 8",
    ]
    reasons = [m.rejected for m in answer.media]
    assert reasons[0] == "no PCMU or PCMA among the offered formats"
    assert reasons[1] is not None and "SRTP" in reasons[1]
    assert reasons[2] == "media 'video' is not audio"
    assert reasons[3] == "the offer disabled the stream (port 0)"
    assert reasons[4] == "no PCMU or PCMA among the offered formats"  # PCMU at 16 kHz
    assert reasons[5] == "no port was given for it"
    assert reasons[6] is None  # stereo PCMA skipped, mono PCMA taken
    assert all(m.port == 0 for m in answer.media[:6])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"ports": [1]}, "one port"),
        ({"ports": "12"}, "one port"),
        ({"ports": [0, 70000]}, "ports[1]"),
        ({"ports": [0, True]}, "ports[1]"),
        ({"address": "rec.example"}, "address"),
        ({"address": 3232235777}, "address"),
        ({"session_id": -1}, "session_id"),
        ({"version": 2**63}, "version"),
        ({"username": "two words"}, "username"),
    ],
)
def test_build_answer_refuses_misuse(kwargs: dict[str, object], needle: str) -> None:
    arguments: dict[str, object] = {
        "ports": [1000, 1002],
        "address": "192.0.2.50",
        "session_id": 1,
        "version": 1,
    }
    arguments.update(kwargs)
    with pytest.raises(InvalidArgument) as caught:
        build_answer(parse_sdp(fx.RFC_SDP), **arguments)  # type: ignore[arg-type]
    assert needle in str(caught.value)
    with pytest.raises(InvalidArgument):
        build_answer(fx.RFC_SDP, [1, 2], address="192.0.2.50", session_id=1, version=1)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(OFFERS)).flatmap(lambda name: mutated(OFFERS[name])))
def test_mutated_offers_parse_or_raise_the_typed_error(data: bytes) -> None:
    try:
        offer = parse_sdp(data)
    except InvalidSipMessage:
        return
    check_answer(offer)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_the_typed_error(data: bytes) -> None:
    try:
        offer = parse_sdp(b"v=0\r\n" + data)
    except InvalidSipMessage:
        return
    check_answer(offer)


def check_answer(offer: SessionDescription) -> None:
    """Any offer that parses can be answered, and the answer is an SDP with the same number
    and order of m= lines, each either rejected (port 0) or G.711 on the port given."""
    ports = [20000 + 2 * i for i in range(len(offer.media))]
    answer = build_answer(offer, ports, address="192.0.2.50", session_id=9, version=3)
    again = parse_sdp(answer.sdp)
    assert len(again.media) == len(offer.media) == len(answer.media)
    for offered, answered, parsed, port in zip(
        offer.media, answer.media, again.media, ports, strict=True
    ):
        assert parsed.media == offered.media and parsed.protocol == offered.protocol
        assert parsed.port == answered.port
        if answered.rejected is None:
            assert parsed.port == port
            assert parsed.direction == answered.direction
            assert answered.direction in ("recvonly", "inactive")
            assert answered.payload_type is not None
            assert parsed.payload_types[0] == answered.payload_type
            assert (parsed.rtpmap(answered.payload_type) or RtpMap(0, "", 0)).encoding in (
                "PCMU",
                "PCMA",
            )
        else:
            assert parsed.port == 0
            assert parsed.formats == offered.formats
