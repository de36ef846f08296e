"""SIPREC INVITEs of the shapes real recording clients send, written for these tests.

Each is modelled on a published description of what a product sends (RFC 7866/7865 and their
call-flow RFC 8068; vendors' SIPREC configuration guides for Cisco CUBE, AudioCodes, Oracle
SBC and OpenSIPS): header sets, body layout, metadata dialect and SDP habits. Addresses are
from the documentation ranges (RFC 5737), numbers fictional.
"""

from __future__ import annotations

from collections.abc import Sequence

CRLF = "\r\n"


def message(
    start_line: str,
    headers: Sequence[tuple[str, str]],
    body: bytes = b"",
    *,
    eol: str = CRLF,
    content_length: bool = True,
    length_name: str = "Content-Length",
) -> bytes:
    """A SIP message with ``Content-Length`` computed (unless ``content_length`` is false)."""
    lines = [start_line, *(f"{name}: {value}" for name, value in headers)]
    if content_length:
        lines.append(f"{length_name}: {len(body)}")
    return (eol.join(lines) + eol + eol).encode("utf-8") + body


def replace_in_body(raw: bytes, old: bytes, new: bytes) -> bytes:
    """``raw`` with ``old`` replaced by ``new`` in its body, and Content-Length made right."""
    head, blank, body = raw.partition(b"\r\n\r\n")
    assert old in body
    body = body.replace(old, new)
    lines = [
        f"Content-Length: {len(body)}".encode() if line.startswith(b"Content-Length:") else line
        for line in head.split(b"\r\n")
    ]
    return b"\r\n".join(lines) + blank + body


def multipart(boundary: str, parts: Sequence[tuple[Sequence[tuple[str, str]], bytes]]) -> bytes:
    """A multipart body: each part's headers, a blank line, its body; the close delimiter."""
    out = b""
    for headers, body in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers)
        out += f"--{boundary}\r\n{head}\r\n".encode() + body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def sdp(*lines: str, eol: str = CRLF) -> bytes:
    return (eol.join(lines) + eol).encode()


# --- RFC 7866 section 8.1.1 shape: one stream per direction, labels, sendonly --------------------

RFC_SDP = sdp(
    "v=0",
    "o=SRC 2890844526 2890844526 IN IP4 198.51.100.1",
    "s=-",
    "c=IN IP4 198.51.100.1",
    "t=0 0",
    "m=audio 12240 RTP/AVP 0 4 8",
    "a=sendonly",
    "a=label:1",
    "m=audio 12242 RTP/AVP 0 4 8",
    "a=sendonly",
    "a=label:2",
)

RFC_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns='urn:ietf:params:xml:ns:recording:1'>
  <datamode>complete</datamode>
  <group group_id="7+OTCyoxTmqmqyA/1weDAg==">
    <associate-time>2010-12-16T23:41:07Z</associate-time>
    <call-center xmlns='urn:ietf:params:xml:ns:callcenter'>
      <supervisor>sip:alice@atlanta.com</supervisor>
    </call-center>
  </group>
  <session session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <sipSessionID>ab30317f1a784dc48ff824d0d3715d86;
      remote=00000000000000000000000000000000</sipSessionID>
    <group-ref>7+OTCyoxTmqmqyA/1weDAg==</group-ref>
    <mydata xmlns='http://example.com/my'>
      <name>not a participant's name</name>
    </mydata>
  </session>
  <participant participant_id="srfBElmCRp2QB23b7Mpk0w==">
    <nameID aor="sip:+15550100001@example.com">
      <name xml:lang="en">Carol Caller</name>
    </nameID>
  </participant>
  <participant participant_id="zSfPoSvdSDCmU3A3TRDxAw==">
    <nameID aor="sip:agent-7001@pbx.example.com">
      <name xml:lang="en">Agent 7001</name>
    </nameID>
  </participant>
  <stream stream_id="UAAMm5GRQKSCMVvLyl4rFw==" session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <label>1</label>
  </stream>
  <stream stream_id="i1Pz3to5hGk8fuXl+PbwCw==" session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <label>2</label>
  </stream>
  <sessionrecordingassoc session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <associate-time>2010-12-16T23:41:07Z</associate-time>
  </sessionrecordingassoc>
  <participantsessionassoc participant_id="srfBElmCRp2QB23b7Mpk0w=="
      session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <associate-time>2010-12-16T23:41:07Z</associate-time>
  </participantsessionassoc>
  <participantstreamassoc participant_id="srfBElmCRp2QB23b7Mpk0w==">
    <send>UAAMm5GRQKSCMVvLyl4rFw==</send>
    <recv>i1Pz3to5hGk8fuXl+PbwCw==</recv>
  </participantstreamassoc>
  <participantstreamassoc participant_id="zSfPoSvdSDCmU3A3TRDxAw==">
    <send>i1Pz3to5hGk8fuXl+PbwCw==</send>
    <recv>UAAMm5GRQKSCMVvLyl4rFw==</recv>
  </participantstreamassoc>
</recording>
"""

RFC_INVITE = message(
    "INVITE sip:recorder@example.com SIP/2.0",
    [
        ("Via", "SIP/2.0/TCP src.example.com;branch=z9hG4bKdf6b622b648d9"),
        ("From", "<sip:2000@example.com>;tag=35e195d2-947d-4585-946f-09839247"),
        ("To", "<sip:recorder@example.com>"),
        ("Call-ID", "d253c800-b0d1ea39-4a7dd-3f0e20a"),
        ("Session-ID", "ab30317f1a784dc48ff824d0d3715d86"),
        ("CSeq", "101 INVITE"),
        ("Max-Forwards", "70"),
        ("Require", "siprec"),
        ("Accept", "application/sdp, application/rs-metadata, application/rs-metadata-request"),
        ("Contact", "<sip:2000@src.example.com>;+sip.src"),
        ("Content-Type", "multipart/mixed;boundary=foobar"),
    ],
    multipart(
        "foobar",
        [
            ([("Content-Type", "application/SDP")], RFC_SDP),
            (
                [
                    ("Content-Type", "application/rs-metadata+xml"),
                    ("Content-Disposition", "recording-session"),
                ],
                RFC_METADATA,
            ),
        ],
    ),
)

# --- Cisco CUBE: TCP, Session-ID, RFC 7865 metadata with Cisco extension data, PCMU + events ----

CUBE_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
\t<datamode>complete</datamode>
\t<session session_id="Wyd7rfR6EeuHJKkmvA1jMg==">
\t\t<sipSessionID>a1b2c3d4e5f60718293a4b5c6d7e8f90;remote=0f1e2d3c4b5a69788796a5b4c3d2e1f0</sipSessionID>
\t\t<start-time>2026-03-02T09:15:02.112Z</start-time>
\t</session>
\t<extensiondata xmlns:call="urn:x-cisco:parameters:xml:ns:siprec:call">
\t\t<call:callData>
\t\t\t<call:gcid>6F1BC9A4-7C1211EE-8A3FD1B0-5A21C0DE</call:gcid>
\t\t\t<call:callid>17@198.51.100.20</call:callid>
\t\t</call:callData>
\t</extensiondata>
\t<participant participant_id="Wyd7rfR6EeuHJaqmvA1jMg==">
\t\t<nameID aor="sip:+4930555010@198.51.100.20">
\t\t</nameID>
\t</participant>
\t<participantsessionassoc participant_id="Wyd7rfR6EeuHJaqmvA1jMg=="
\t    session_id="Wyd7rfR6EeuHJKkmvA1jMg==">
\t\t<associate-time>2026-03-02T09:15:02.112Z</associate-time>
\t</participantsessionassoc>
\t<stream stream_id="Wyd7rfR6EeuHJqqmvA1jMg==" session_id="Wyd7rfR6EeuHJKkmvA1jMg==">
\t\t<label>1</label>
\t</stream>
\t<participant participant_id="Wyd7rfR6EeuHJbqmvA1jMg==">
\t\t<nameID aor="sip:2001@198.51.100.30">
\t\t</nameID>
\t</participant>
\t<participantsessionassoc participant_id="Wyd7rfR6EeuHJbqmvA1jMg=="
\t    session_id="Wyd7rfR6EeuHJKkmvA1jMg==">
\t\t<associate-time>2026-03-02T09:15:02.112Z</associate-time>
\t</participantsessionassoc>
\t<stream stream_id="Wyd7rfR6EeuHJrqmvA1jMg==" session_id="Wyd7rfR6EeuHJKkmvA1jMg==">
\t\t<label>2</label>
\t</stream>
\t<participantstreamassoc participant_id="Wyd7rfR6EeuHJaqmvA1jMg==">
\t\t<send>Wyd7rfR6EeuHJqqmvA1jMg==</send>
\t\t<recv>Wyd7rfR6EeuHJrqmvA1jMg==</recv>
\t</participantstreamassoc>
\t<participantstreamassoc participant_id="Wyd7rfR6EeuHJbqmvA1jMg==">
\t\t<send>Wyd7rfR6EeuHJrqmvA1jMg==</send>
\t\t<recv>Wyd7rfR6EeuHJqqmvA1jMg==</recv>
\t</participantstreamassoc>
</recording>
"""

CUBE_SDP = sdp(
    "v=0",
    "o=CiscoSystemsSIP-GW-UserAgent 6175 2514 IN IP4 198.51.100.20",
    "s=SIP Call",
    "c=IN IP4 198.51.100.20",
    "t=0 0",
    "m=audio 16384 RTP/AVP 0 101",
    "c=IN IP4 198.51.100.20",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=sendonly",
    "a=label:1",
    "m=audio 16386 RTP/AVP 0 101",
    "c=IN IP4 198.51.100.20",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=sendonly",
    "a=label:2",
)

CUBE_INVITE = message(
    "INVITE sip:siprec@192.0.2.50:5060 SIP/2.0",
    [
        ("Via", "SIP/2.0/TCP 198.51.100.20:5060;branch=z9hG4bK3E1A1F8B"),
        ("Remote-Party-ID", '"Carol" <sip:+4930555010@198.51.100.20>;party=calling;screen=no'),
        ("From", "<sip:198.51.100.20>;tag=8B0F6A1C-1E42"),
        ("To", "<sip:siprec@192.0.2.50>"),
        ("Date", "Mon, 02 Mar 2026 09:15:02 GMT"),
        ("Call-ID", "C4F3E1A2-7C1211EE-8A42D1B0-5A21C0DE@198.51.100.20"),
        ("Supported", "100rel,timer,resource-priority,replaces,sdp-anat"),
        ("Min-SE", "1800"),
        ("Cisco-Guid", "1863829924-2081558990-2319450544-1512161502"),
        ("User-Agent", "Cisco-SIPGateway/IOS-17.9.4a"),
        (
            "Allow",
            "INVITE, OPTIONS, BYE, CANCEL, ACK, PRACK, UPDATE, REFER, SUBSCRIBE, NOTIFY, INFO",
        ),
        ("CSeq", "101 INVITE"),
        ("Timestamp", "1772442902"),
        ("Contact", "<sip:198.51.100.20:5060;transport=tcp>;+sip.src"),
        ("Expires", "180"),
        ("Allow-Events", "telephone-event"),
        ("Max-Forwards", "70"),
        ("Session-ID", "a1b2c3d4e5f60718293a4b5c6d7e8f90;remote=00000000000000000000000000000000"),
        ("Require", "siprec"),
        ("Content-Type", "multipart/mixed;boundary=uniqueBoundary"),
        ("Mime-Version", "1.0"),
    ],
    b"--uniqueBoundary\r\nContent-Type: application/sdp\r\n"
    b"Content-Disposition: session;handling=required\r\n\r\n"
    + CUBE_SDP
    + b"\r\n--uniqueBoundary\r\nContent-Type: application/rs-metadata+xml\r\n"
    b"Content-Disposition: recording-session\r\n\r\n" + CUBE_METADATA + b"--uniqueBoundary--\r\n",
)

# --- AudioCodes: UDP, Contact ;src, application/rs-metadata (no +xml), PCMA + events, legacy meta -

AUDIOCODES_SDP = sdp(
    "v=0",
    "o=AudioCodesGW 921244928 921244893 IN IP4 203.0.113.70",
    "s=SBC-Call",
    "c=IN IP4 203.0.113.70",
    "t=0 0",
    "m=audio 6020 RTP/AVP 8 96",
    "c=IN IP4 203.0.113.70",
    "a=ptime:20",
    "a=sendonly",
    "a=label:1",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:96 telephone-event/8000",
    "a=fmtp:96 0-15",
    "m=audio 6030 RTP/AVP 8 96",
    "c=IN IP4 203.0.113.70",
    "a=ptime:20",
    "a=sendonly",
    "a=label:2",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:96 telephone-event/8000",
    "a=fmtp:96 0-15",
)

AUDIOCODES_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns='urn:ietf:params:xml:ns:recording'>
<datamode>complete</datamode>
<session id="0000-0000-0000-0000-ef0c9d1d3d7c0a64">
<associate-time>2026-03-02T10:01:55</associate-time>
<sipSessionID>505763097241201011157@203.0.113.70</sipSessionID>
</session>
<participant id="+33140000001" session="0000-0000-0000-0000-ef0c9d1d3d7c0a64">
<nameID aor="+33140000001@203.0.113.70">
<name>+33140000001</name>
</nameID>
<associate-time>2026-03-02T10:01:55</associate-time>
<send>1</send>
<recv>2</recv>
</participant>
<participant id="2002" session="0000-0000-0000-0000-ef0c9d1d3d7c0a64">
<nameID aor="2002@203.0.113.71">
<name>2002</name>
</nameID>
<associate-time>2026-03-02T10:01:55</associate-time>
<send>2</send>
<recv>1</recv>
</participant>
<stream id="1" session="0000-0000-0000-0000-ef0c9d1d3d7c0a64">
<label>1</label>
</stream>
<stream id="2" session="0000-0000-0000-0000-ef0c9d1d3d7c0a64">
<label>2</label>
</stream>
</recording>
"""

AUDIOCODES_INVITE = message(
    "INVITE sip:VSRP@192.0.2.50 SIP/2.0",
    [
        ("Via", "SIP/2.0/UDP 203.0.113.70:5060;branch=z9hG4bKac505782914"),
        ("Max-Forwards", "10"),
        ("From", "<sip:203.0.113.70>;tag=1c505764207"),
        ("To", "<sip:VSRP@192.0.2.50>"),
        ("Call-ID", "505763097241201011157@203.0.113.70"),
        ("CSeq", "1 INVITE"),
        ("Contact", "<sip:203.0.113.70:5060>;src"),
        ("Supported", "replaces,resource-priority"),
        (
            "Allow",
            "REGISTER,OPTIONS,INVITE,ACK,CANCEL,BYE,NOTIFY,PRACK,REFER,INFO,SUBSCRIBE,UPDATE",
        ),
        ("Require", "siprec"),
        ("User-Agent", "Mediant SW/v.7.40A.500.775"),
        ("Content-Type", "multipart/mixed;boundary=boundary_ac1fffff85b"),
    ],
    multipart(
        "boundary_ac1fffff85b",
        [
            ([("Content-Type", "application/sdp")], AUDIOCODES_SDP),
            (
                [
                    ("Content-Type", "application/rs-metadata"),
                    ("Content-Disposition", "recording-session"),
                ],
                AUDIOCODES_METADATA,
            ),
        ],
    ),
)

# --- Oracle SBC: legacy namespace, ids as attributes, <aor>/<send> inside participant, metadata
# --- part first, quoted boundary, a preamble, an extra vendor part --------------------------------

ORACLE_SDP = sdp(
    "v=0",
    "o=- 171 213 IN IP4 203.0.113.2",
    "s=-",
    "c=IN IP4 203.0.113.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
    "a=label:1",
    "a=sendonly",
    "m=audio 6002 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
    "a=label:2",
    "a=sendonly",
)

ORACLE_METADATA = b"""<?xml version='1.0' encoding='UTF-8'?>
<recording xmlns='urn:ietf:params:xml:ns:recording'>
        <dataMode>complete</dataMode>
        <session id="urn:uuid:79b2fcd8-5c7f-455c-783f-db334e5d57d0">
                <start-time>2026-03-02T11:20:41</start-time>
        </session>
        <participant id="urn:uuid:10ac9063-76b7-40bb-4587-08ba290d7327"
            session="urn:uuid:79b2fcd8-5c7f-455c-783f-db334e5d57d0">
                <aor>sip:+441632960001@203.0.113.40</aor>
                <name>Dana </name>
                <send>urn:uuid:07868c77-ef8e-4d6f-6dd5-a02ff53a1329</send>
                <start-time>2026-03-02T11:20:41</start-time>
        </participant>
        <participant id="urn:uuid:797c45f5-e765-4b12-52b0-d9be31138529"
            session="urn:uuid:79b2fcd8-5c7f-455c-783f-db334e5d57d0">
                <aor>sip:queue-sales@203.0.113.60</aor>
                <name>sales</name>
                <send>urn:uuid:4a72a1ed-abb2-4d7c-5f4d-6d4c36e2d4ec</send>
        </participant>
        <stream id="urn:uuid:07868c77-ef8e-4d6f-6dd5-a02ff53a1329"
            session="urn:uuid:79b2fcd8-5c7f-455c-783f-db334e5d57d0">
                <mode>separate</mode>
                <label>1</label>
        </stream>
        <stream id="urn:uuid:4a72a1ed-abb2-4d7c-5f4d-6d4c36e2d4ec"
            session="urn:uuid:79b2fcd8-5c7f-455c-783f-db334e5d57d0">
                <mode>separate</mode>
                <label>2</label>
        </stream>
        <extensiondata xmlns:apkt="http://acmepacket.com/siprec/extensiondata">
                <apkt:ucid>00FA080018803B69810C63;encoding=hex</apkt:ucid>
                <apkt:callerOrig>true</apkt:callerOrig>
        </extensiondata>
</recording>
"""

ORACLE_INVITE = message(
    "INVITE sip:srs@192.0.2.50:5060;transport=tcp SIP/2.0",
    [
        ("Via", "SIP/2.0/TCP 203.0.113.2:5060;branch=z9hG4bK08b2mo300gq0d6tmc6e0.1"),
        ("From", "<sip:203.0.113.2:5060>;tag=ba1c9e7d4c4a35ec7b3f1ff0e4b73b56000g70"),
        ("To", "<sip:srs@192.0.2.50:5060>"),
        ("Call-ID", "f2d3a90f26bd7d3e21b2e2d8d6e44fcb0000g70@203.0.113.2"),
        ("CSeq", "2 INVITE"),
        ("Contact", "<sip:203.0.113.2:5060;transport=tcp>;+sip.src"),
        ("Max-Forwards", "70"),
        ("Require", "siprec"),
        ("Content-Type", 'multipart/mixed; boundary="unique-boundary-1"'),
        ("MIME-Version", "1.0"),
    ],
    b"This is a multi-part message in MIME format.\r\n\r\n"
    + multipart(
        "unique-boundary-1",
        [
            (
                [
                    ("Content-Type", "application/rs-metadata+xml"),
                    ("Content-Disposition", "recording-session"),
                ],
                ORACLE_METADATA,
            ),
            ([("Content-Type", "application/sdp")], ORACLE_SDP),
            ([("Content-Type", "application/vnd.example.call-info+json")], b'{"queue":"sales"}'),
        ],
    )
    + b"epilogue, ignored\r\n",
)

# --- OpenSIPS siprec module: no +sip.src (Require only), bare boundary, ICE junk, a=label:0 -------

OPENSIPS_SDP = sdp(
    "v=0",
    "o=- 1544577455 0 IN IP4 0.0.0.0",
    "s=-",
    "t=0 0",
    "c=IN IP4 198.51.100.4",
    "m=audio 35011 RTP/AVP 0 8 101",
    "a=ice-pwd:b19c2d010392714e82b8223e",
    "a=ice-ufrag:ade56ecb",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=sendonly",
    "a=label:0",
    "m=audio 35013 RTP/AVP 0 8 101",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=sendonly",
    "a=label:1",
)

OPENSIPS_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
\t<datamode>complete</datamode>
\t<group group_id="Xtmm1m6ERu2m5pPPXl3v9g==">
\t\t<associate-time>2026-03-02T12:00:00+00:00</associate-time>
\t</group>
\t<session session_id="Xtmm1m6ERu2m5pPPXl3v9w==">
\t\t<sipSessionID>B2B.312.8159596.1544577178</sipSessionID>
\t\t<start-time>2026-03-02T12:00:00+00:00</start-time>
\t</session>
\t<participant participant_id="Xtmm1m6ERu2m5pPPXl3v+A==">
\t\t<nameID aor="sip:caller@example.org">
\t\t\t<name>Eve</name>
\t\t</nameID>
\t</participant>
\t<participant participant_id="Xtmm1m6ERu2m5pPPXl3v+Q==">
\t\t<nameID aor="sip:1003@example.org"></nameID>
\t</participant>
\t<stream stream_id="Xtmm1m6ERu2m5pPPXl3v+g==" session_id="Xtmm1m6ERu2m5pPPXl3v9w==">
\t\t<label>0</label>
\t</stream>
\t<stream stream_id="Xtmm1m6ERu2m5pPPXl3v+w==" session_id="Xtmm1m6ERu2m5pPPXl3v9w==">
\t\t<label>1</label>
\t</stream>
\t<participantstreamassoc participant_id="Xtmm1m6ERu2m5pPPXl3v+A==">
\t\t<send>Xtmm1m6ERu2m5pPPXl3v+g==</send>
\t</participantstreamassoc>
\t<participantstreamassoc participant_id="Xtmm1m6ERu2m5pPPXl3v+Q==">
\t\t<send>Xtmm1m6ERu2m5pPPXl3v+w==</send>
\t</participantstreamassoc>
</recording>
"""

OPENSIPS_INVITE = message(
    "INVITE sip:siprec@192.0.2.50:5080 SIP/2.0",
    [
        ("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKe9d6.561a3765.0"),
        ("To", "sip:siprec@192.0.2.50:5080"),
        ("From", "<sip:siprec@192.0.2.50:5080>;tag=8001af8a579bb7e1a4c5a353eb991891-ce21"),
        ("CSeq", "2 INVITE"),
        ("Call-ID", "B2B.312.8159596.1544577178"),
        ("Max-Forwards", "70"),
        ("User-Agent", "OpenSIPS (3.4.3 (x86_64/linux))"),
        ("Require", "siprec"),
        ("Content-Type", "multipart/mixed;boundary=OSS-unique-boundary-42"),
        ("Contact", "<sip:198.51.100.7:5060>"),
    ],
    multipart(
        "OSS-unique-boundary-42",
        [
            ([("Content-Type", "application/sdp")], OPENSIPS_SDP),
            (
                [
                    ("Content-Type", "application/rs-metadata+xml"),
                    ("Content-Disposition", "recording-session"),
                ],
                OPENSIPS_METADATA,
            ),
        ],
    ),
)

# --- ids as child elements rather than attributes (seen from some recording clients) ------------

ELEMENT_IDS_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <dataMode>complete</dataMode>
  <session>
    <session_id>Tq0PlE1kRmGxYQ8dq2mM4g==</session_id>
    <sipSessionID>  3F2504E04F8911D39A0C0305E82C3301 ;
      remote=7a6b5c4d3e2f10011223344556677889  </sipSessionID>
  </session>
  <participant>
    <participant_id>p-caller</participant_id>
    <nameID aor="tel:+4989123456"><name>Frank</name></nameID>
  </participant>
  <participant>
    <participant_id>p-agent</participant_id>
    <nameID><aor>sip:agent-12@cc.example</aor><name>Agent 12</name></nameID>
  </participant>
  <stream><stream_id>s-a</stream_id><label>a1</label></stream>
  <stream><stream_id>s-b</stream_id><label>a2</label></stream>
  <participantstreamassoc>
    <participant_id>p-caller</participant_id>
    <send>s-a</send><recv>s-b</recv>
  </participantstreamassoc>
  <participantstreamassoc>
    <participant_id>p-agent</participant_id>
    <send>s-b</send><recv>s-a</recv>
  </participantstreamassoc>
</recording>
"""

# --- the forms that make a parser's life hard: compact headers, bare LF, folding ------------------

INACTIVE_SDP = sdp(
    "v=0",
    "o=- 3 3 IN IP4 198.51.100.9",
    "s=-",
    "c=IN IP4 198.51.100.9",
    "t=0 0",
    "a=inactive",
    "m=audio 40000 RTP/AVP 8 0 13",
    "a=label:caller",
    "m=audio 40002 RTP/AVP 8 0 13",
    "a=label:agent",
    eol="\n",
)


def compact_invite(*, eol: str = CRLF, body: bytes | None = None) -> bytes:
    """An INVITE in compact headers and folded lines, SDP only (no metadata)."""
    body = INACTIVE_SDP if body is None else body
    lines = [
        "INVITE sip:rec@192.0.2.50 SIP/2.0",
        "v: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK776asdhds;rport",
        "v: SIP/2.0/UDP 198.51.100.8:5060;branch=z9hG4bK-proxy-1",
        'f: "Front, Desk" <sip:frontdesk@198.51.100.9>;tag=1928301774',
        "t: <sip:rec@192.0.2.50>",
        "i: a84b4c76e66710@198.51.100.9",
        "CSeq: 314159 INVITE",
        "m: <sip:frontdesk@198.51.100.9:5060>",
        "k: timer,",
        " siprec",
        "Subject: a folded",
        "\tsubject line",
        "c: application/sdp",
        f"l: {len(body)}",
    ]
    return (eol.join(lines) + eol + eol).encode() + body
