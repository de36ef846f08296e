"""A SIPREC INVITE read as a recording offer: the recorded call's reference, its streams, and
the tolerance real recording clients need."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sampledrec.ingest
import sampledrec.ingest.siprec
from sampledrec.errors import InvalidArgument, InvalidSipMessage
from sampledrec.ingest import (
    Headers,
    Offer,
    Participant,
    SipRequest,
    build_answer,
    build_response,
    parse_message,
    parse_offer,
)
from sampledrec.ingest.siprec import (
    NO_METADATA,
    NO_SIP_SESSION_ID,
    Legs,
    choose_legs,
    is_siprec,
    parse_update,
    session_reference,
)

from . import sipfixtures as fx
from .strategies import mutated

INVITES = {
    "rfc7866": fx.RFC_INVITE,
    "cube": fx.CUBE_INVITE,
    "audiocodes": fx.AUDIOCODES_INVITE,
    "oracle": fx.ORACLE_INVITE,
    "opensips": fx.OPENSIPS_INVITE,
    "compact": fx.compact_invite(),
    "compact-bare-lf": fx.compact_invite(eol="\n"),
}


def invite(raw: bytes) -> SipRequest:
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    return msg


def test_module_doctests() -> None:
    assert doctest.testmod(sampledrec.ingest.siprec, raise_on_error=False).failed == 0


def test_package_exports_are_sorted_and_documented() -> None:
    names = sampledrec.ingest.__all__
    assert names == sorted(names, key=lambda name: (0 if name[0].isupper() else 1, name))
    for name in names:
        assert getattr(sampledrec.ingest, name).__doc__, name


@pytest.mark.parametrize(
    ("name", "call_ref", "source", "numbers"),
    [
        (
            "rfc7866",
            "ab30317f1a784dc48ff824d0d3715d86",
            "sipSessionID",
            ["+15550100001", "agent-7001"],
        ),
        ("cube", "a1b2c3d4e5f60718293a4b5c6d7e8f90", "sipSessionID", ["+4930555010", "2001"]),
        (
            "audiocodes",
            "505763097241201011157@203.0.113.70",
            "sipSessionID",
            ["+33140000001", "2002"],
        ),
        (
            "oracle",
            "f2d3a90f26bd7d3e21b2e2d8d6e44fcb0000g70@203.0.113.2",
            "Call-ID",
            ["+441632960001", "queue-sales"],
        ),
        ("opensips", "B2B.312.8159596.1544577178", "sipSessionID", ["caller", "1003"]),
    ],
)
def test_vendor_invites(name: str, call_ref: str, source: str, numbers: list[str]) -> None:
    offer = parse_offer(invite(INVITES[name]))
    assert offer.siprec
    assert offer.metadata is not None
    assert (offer.call_ref, offer.call_ref_source) == (call_ref, source)
    assert offer.note == (NO_SIP_SESSION_ID if source == "Call-ID" else None)
    assert len(offer.sdp.media) == 2
    assert [sender.number if sender else None for sender in offer.senders] == numbers
    answer = build_answer(offer.sdp, [40000, 40002], address="192.0.2.50", session_id=5, version=1)
    assert [m.direction for m in answer.media] == ["recvonly", "recvonly"]
    assert all(m.encoding in ("PCMU", "PCMA") for m in answer.media)


def test_missing_metadata_decides_on_the_call_id_and_says_so() -> None:
    for eol in ("\r\n", "\n"):
        offer = parse_offer(invite(fx.compact_invite(eol=eol)))
        assert offer.metadata is None
        assert (offer.call_ref, offer.call_ref_source, offer.note) == (
            "a84b4c76e66710@198.51.100.9",
            "Call-ID",
            "no metadata: decided on the Call-ID",
        )
        assert offer.note == NO_METADATA
        assert offer.siprec  # Supported: siprec (folded over two lines)
        assert [m.direction for m in offer.sdp.media] == ["inactive", "inactive"]
        assert offer.senders == (None, None)


def test_the_call_reference_survives_a_failover() -> None:
    # The same recorded call offered again (another recording session: new Call-ID, tags,
    # branch; the remote half of the Session-ID now known): the same reference.
    first = parse_offer(invite(fx.RFC_INVITE))
    retry = parse_offer(
        invite(
            fx.RFC_INVITE.replace(b"d253c800-b0d1ea39-4a7dd-3f0e20a", b"f00-retry-on-srs-2")
            .replace(b"z9hG4bKdf6b622b648d9", b"z9hG4bKffff")
            .replace(
                b"remote=00000000000000000000000000000000",
                b"remote=47755a9de7794ba387653f2099600ef2",
            )
        )
    )
    assert retry.request.call_id != first.request.call_id
    assert retry.call_ref == first.call_ref == "ab30317f1a784dc48ff824d0d3715d86"


def test_session_reference() -> None:
    assert (
        session_reference("AB30317F1A784DC48FF824D0D3715D86") == "ab30317f1a784dc48ff824d0d3715d86"
    )
    null_local = "0" * 32 + ";remote=47755A9DE7794BA387653F2099600EF2"
    assert session_reference(null_local) == "47755a9de7794ba387653f2099600ef2"
    assert session_reference("0" * 32) == "0" * 32
    assert session_reference("0" * 32 + ";remote=" + "0" * 32) == "0" * 32
    assert session_reference("not-a-uuid;remote=x") == "not-a-uuid;remote=x"


@pytest.mark.parametrize(
    ("change", "siprec"),
    [
        ((b"Contact: <sip:203.0.113.70:5060>;src", b"Contact: <sip:203.0.113.70:5060>;src"), True),
        ((b"Require: siprec\r\n", b""), True),  # ;src on the Contact is enough
        ((b";src\r\n", b";+sip.src\r\n"), True),
        ((b"<sip:203.0.113.70:5060>;src", b"<sip:203.0.113.70:5060;+sip.src>"), True),
        ((b"<sip:203.0.113.70:5060>;src", b"sip:203.0.113.70:5060;src"), True),
    ],
)
def test_siprec_markers(change: tuple[bytes, bytes], siprec: bool) -> None:
    assert is_siprec(invite(fx.AUDIOCODES_INVITE.replace(*change))) is siprec


def test_no_siprec_marker_is_reported_not_refused() -> None:
    raw = fx.AUDIOCODES_INVITE.replace(b"Require: siprec\r\n", b"").replace(b";src\r\n", b"\r\n")
    offer = parse_offer(invite(raw))
    assert not offer.siprec
    assert offer.call_ref == "505763097241201011157@203.0.113.70"


def test_metadata_typed_by_disposition_only_and_extra_parts() -> None:
    raw = fx.message(
        "INVITE sip:rec@192.0.2.50 SIP/2.0",
        [
            ("Via", "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK-x"),
            ("From", "<sip:src@198.51.100.1>;tag=1"),
            ("To", "<sip:rec@192.0.2.50>"),
            ("Call-ID", "disp@198.51.100.1"),
            ("CSeq", "1 INVITE"),
            ("Require", "siprec"),
            ("Content-Type", "multipart/mixed;boundary=zz"),
        ],
        fx.multipart(
            "zz",
            [
                ([("Content-Type", "application/pidf+xml")], b"<presence/>"),
                ([("Content-Disposition", "recording-session")], fx.OPENSIPS_METADATA),
                ([("Content-Type", "application/sdp")], fx.OPENSIPS_SDP),
                ([("Content-Type", "application/sdp")], b"v=0\r\nm=video 1 RTP/AVP 96\r\n"),
            ],
        ),
    )
    offer = parse_offer(invite(raw))
    assert offer.metadata is not None and offer.call_ref == "B2B.312.8159596.1544577178"
    assert [m.label for m in offer.sdp.media] == ["0", "1"]  # the first SDP part


def test_plain_sdp_and_untyped_sdp_bodies() -> None:
    plain = parse_offer(invite(fx.compact_invite(body=fx.RFC_SDP)))
    assert [m.port for m in plain.sdp.media] == [12240, 12242]
    untyped = fx.compact_invite(body=fx.RFC_SDP).replace(b"c: application/sdp\r\n", b"")
    assert [m.port for m in parse_offer(invite(untyped)).sdp.media] == [12240, 12242]


@pytest.mark.parametrize(
    ("raw", "needle", "status"),
    [
        (fx.compact_invite(body=b""), "no SDP offer (no body)", 488),
        (
            fx.compact_invite(body=b"<recording/>").replace(
                b"c: application/sdp", b"c: application/rs-metadata+xml"
            ),
            "no SDP offer (application/rs-metadata+xml)",
            488,
        ),
        (
            fx.compact_invite().replace(b"c: application/sdp", b"c: application/sdp\r\ne: gzip"),
            "Content-Encoding",
            415,
        ),
        (
            fx.replace_in_body(fx.RFC_INVITE, b"<datamode>complete</datamode>", b"<datamode>"),
            "not well-formed",
            400,
        ),
        (
            fx.replace_in_body(fx.RFC_INVITE, b"m=audio 12242 RTP/AVP 0 4 8", b"m=audio 1"),
            "m=",
            488,
        ),
    ],
)
def test_refused(raw: bytes, needle: str, status: int) -> None:
    with pytest.raises(InvalidSipMessage) as caught:
        parse_offer(invite(raw))
    assert needle in str(caught.value)
    assert caught.value.status == status


def test_only_an_invite_is_an_offer() -> None:
    bye = fx.message(
        "BYE sip:rec@192.0.2.50 SIP/2.0",
        [
            ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
            ("From", "<sip:a@h>;tag=1"),
            ("To", "<sip:rec@h>;tag=2"),
            ("Call-ID", "c@h"),
            ("CSeq", "2 BYE"),
        ],
    )
    with pytest.raises(InvalidArgument, match="INVITE"):
        parse_offer(invite(bye))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(INVITES)).flatmap(lambda name: mutated(INVITES[name], 3)))
def test_mutated_invites_give_an_offer_or_the_typed_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
        if not isinstance(msg, SipRequest) or msg.method != "INVITE":
            return
        offer = parse_offer(msg)
    except InvalidSipMessage:
        return
    assert offer.call_ref
    assert offer.call_ref_source in ("sipSessionID", "Call-ID")
    assert (offer.note is None) == (offer.call_ref_source == "sipSessionID")
    assert len(offer.senders) == len(offer.sdp.media)
    ports = [30000 + 2 * i for i in range(len(offer.sdp.media))]
    answer = build_answer(offer.sdp, ports, address="192.0.2.50", session_id=1, version=1)
    response = build_response(
        msg, 200, to_tag="rec", body=answer.sdp, content_type="application/sdp"
    )
    assert parse_message(response).body == answer.sdp


# -- legs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rfc7866", "cube", "audiocodes", "oracle", "opensips"])
def test_vendor_legs_follow_the_participants(name: str) -> None:
    offer = parse_offer(invite(INVITES[name]))
    assert offer.metadata is not None
    caller, agent = offer.metadata.participants[:2]
    assert choose_legs(offer, caller) == Legs((0, 1), "metadata")
    assert choose_legs(offer, agent) == Legs((1, 0), "metadata")


def _rfc_offer(*changes: tuple[bytes, bytes]) -> Offer:
    raw = fx.RFC_INVITE
    for old, new in changes:
        raw = fx.replace_in_body(raw, old, new)
    return parse_offer(invite(raw))


def _participants(offer: Offer) -> tuple[Participant, ...]:
    assert offer.metadata is not None
    return offer.metadata.participants


AGENT_SENDS = b"<send>i1Pz3to5hGk8fuXl+PbwCw==</send>"
CALLER_SENDS = b"<send>UAAMm5GRQKSCMVvLyl4rFw==</send>"


def test_legs_follow_the_metadata_when_the_m_lines_are_the_other_way_round() -> None:
    # The agent's stream (label 2) comes first in the SDP: the caller's is still channel 1.
    offer = _rfc_offer(
        (b"a=label:1", b"a=label:X"), (b"a=label:2", b"a=label:1"), (b"a=label:X", b"a=label:2")
    )
    assert [m.label for m in offer.sdp.media] == ["2", "1"]
    caller, agent = _participants(offer)
    assert choose_legs(offer, caller) == Legs((1, 0), "metadata")
    assert choose_legs(offer, agent) == Legs((0, 1), "metadata")


def test_legs_fall_back_to_m_line_order_and_say_why() -> None:
    assert choose_legs(parse_offer(invite(fx.compact_invite())), None) == Legs((0, 1), "m-lines")
    offer = _rfc_offer()
    assert choose_legs(offer, None) == Legs(
        (0, 1), "m-lines", "the caller is not among the metadata's participants"
    )
    unknown = _rfc_offer((b"a=label:1", b"a=label:9"))  # the caller's label is not in the SDP
    assert choose_legs(unknown, _participants(unknown)[0]) == Legs(
        (0, 1), "m-lines", "the caller sends 0 of the offer's audio streams"
    )
    twice = _rfc_offer((b"a=label:2", b"a=label:1"))  # both m-lines carry the caller's label
    assert choose_legs(twice, _participants(twice)[0]).note == (
        "the caller sends 2 of the offer's audio streams"
    )
    shared = _rfc_offer((AGENT_SENDS, CALLER_SENDS))  # the agent claims the caller's stream
    assert choose_legs(shared, _participants(shared)[0]).note == (
        "the caller's stream is sent by several participants"
    )


def test_legs_when_the_metadata_names_only_the_callers_stream() -> None:
    # The other audio stream, whoever sends it, is the agent's.
    offer = _rfc_offer(
        (b"a=label:1", b"a=label:X"), (b"a=label:2", b"a=label:1"), (AGENT_SENDS, b"")
    )
    assert choose_legs(offer, _participants(offer)[0]) == Legs((1, 0), "metadata")
    # One audio stream only: the caller's, recorded alone.
    single = _rfc_offer((b"m=audio 12242 RTP/AVP 0 4 8", b"m=audio 0 RTP/AVP 0 4 8"))
    assert choose_legs(single, _participants(single)[0]) == Legs((0,), "metadata")


def test_parse_update_reads_sdp_metadata_both_or_neither() -> None:
    base = invite(fx.RFC_INVITE)
    cseq = [(n, "102 UPDATE" if n == "CSeq" else v) for n, v in base.headers]
    both = parse_update(SipRequest("UPDATE", base.uri, Headers(cseq), base.body))
    assert both.sdp == parse_offer(base).sdp and both.metadata == parse_offer(base).metadata
    assert parse_update(base).sdp == both.sdp  # a re-INVITE reads the same way
    bare = [(n, v) for n, v in cseq if n not in ("Content-Type", "Content-Length")]
    empty = parse_update(SipRequest("UPDATE", base.uri, Headers(bare), b""))
    assert (empty.sdp, empty.metadata) == (None, None)
    metadata_only = Headers([*bare, ("Content-Type", "application/rs-metadata+xml")])
    snapshot = parse_update(SipRequest("UPDATE", base.uri, metadata_only, fx.RFC_METADATA))
    assert snapshot.sdp is None and snapshot.metadata == both.metadata
    other = Headers([*bare, ("Content-Type", "application/dtmf-relay")])
    with pytest.raises(InvalidSipMessage, match="neither SDP nor recording metadata") as caught:
        parse_update(SipRequest("UPDATE", base.uri, other, b"Signal=5\r\n"))
    assert caught.value.status == 415
    bye = SipRequest(
        "BYE", base.uri, Headers([(n, "103 BYE" if n == "CSeq" else v) for n, v in bare]), b""
    )
    with pytest.raises(InvalidArgument, match="INVITE or an UPDATE"):
        parse_update(bye)
