"""RFC 7865 recording metadata in both dialects SBCs send, and XML that must be refused."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sampledrec.ingest.metadata
from sampledrec.errors import InvalidArgument, InvalidSipMessage
from sampledrec.ingest.metadata import NAMESPACES, parse_metadata

from . import sipfixtures as fx
from .strategies import mutated

DOCUMENTS = {
    "rfc7865": fx.RFC_METADATA,
    "cube": fx.CUBE_METADATA,
    "audiocodes-legacy": fx.AUDIOCODES_METADATA,
    "oracle-legacy": fx.ORACLE_METADATA,
    "opensips": fx.OPENSIPS_METADATA,
    "element-ids": fx.ELEMENT_IDS_METADATA,
}


def test_module_doctests() -> None:
    assert doctest.testmod(sampledrec.ingest.metadata, raise_on_error=False).failed == 0


def test_rfc7865_dialect() -> None:
    meta = parse_metadata(fx.RFC_METADATA)
    assert meta.namespace == "urn:ietf:params:xml:ns:recording:1"
    assert meta.data_mode == "complete"
    assert meta.group_ids == ("7+OTCyoxTmqmqyA/1weDAg==",)
    assert meta.session_ids == ("hVpd7YQgRW2nD22h7q60JQ==",)
    assert meta.sip_session_ids == (
        "ab30317f1a784dc48ff824d0d3715d86;remote=00000000000000000000000000000000",
    )
    caller, agent = meta.participants
    assert (caller.participant_id, caller.aor, caller.number, caller.name) == (
        "srfBElmCRp2QB23b7Mpk0w==",
        "sip:+15550100001@example.com",
        "+15550100001",
        "Carol Caller",
    )
    assert caller.sends == ("UAAMm5GRQKSCMVvLyl4rFw==",)
    assert caller.receives == ("i1Pz3to5hGk8fuXl+PbwCw==",)
    assert (caller.send_labels, agent.send_labels) == (("1",), ("2",))
    assert (agent.number, agent.name) == ("agent-7001", "Agent 7001")
    assert [(s.stream_id, s.label, s.session_id) for s in meta.streams] == [
        ("UAAMm5GRQKSCMVvLyl4rFw==", "1", "hVpd7YQgRW2nD22h7q60JQ=="),
        ("i1Pz3to5hGk8fuXl+PbwCw==", "2", "hVpd7YQgRW2nD22h7q60JQ=="),
    ]
    assert meta.sender("1") == caller and meta.sender("2") == agent and meta.sender("3") is None
    # An extension's <name> inside <session> is not a participant's name.
    assert meta.values("name") == ("not a participant's name", "Carol Caller", "Agent 7001")
    assert meta.values("supervisor") == ("sip:alice@atlanta.com",)


def test_legacy_dialect_ids_as_attributes_send_inside_participant() -> None:
    meta = parse_metadata(fx.ORACLE_METADATA)
    assert meta.namespace == "urn:ietf:params:xml:ns:recording"
    assert meta.data_mode == "complete"  # <dataMode>
    assert meta.session_ids == ("urn:uuid:79b2fcd8-5c7f-455c-783f-db334e5d57d0",)
    assert meta.sip_session_ids == ()
    caller, queue = meta.participants
    assert (caller.aor, caller.number, caller.name, caller.send_labels) == (
        "sip:+441632960001@203.0.113.40",
        "+441632960001",
        "Dana",
        ("1",),
    )
    assert (queue.number, queue.send_labels) == ("queue-sales", ("2",))
    assert meta.values("ucid") == ("00FA080018803B69810C63;encoding=hex",)
    assert meta.values("callerOrig") == ("true",)


def test_ids_as_child_elements() -> None:
    meta = parse_metadata(fx.ELEMENT_IDS_METADATA)
    assert meta.session_ids == ("Tq0PlE1kRmGxYQ8dq2mM4g==",)
    assert meta.sip_session_ids == (
        "3F2504E04F8911D39A0C0305E82C3301;remote=7a6b5c4d3e2f10011223344556677889",
    )
    caller, agent = meta.participants
    assert (caller.participant_id, caller.aor, caller.number, caller.send_labels) == (
        "p-caller",
        "tel:+4989123456",
        "+4989123456",
        ("a1",),
    )
    assert (agent.aor, agent.name, agent.send_labels) == (
        "sip:agent-12@cc.example",
        "Agent 12",
        ("a2",),
    )


def test_audiocodes_legacy_and_cube_extension_data() -> None:
    legacy = parse_metadata(fx.AUDIOCODES_METADATA)
    assert [(p.participant_id, p.number, p.send_labels) for p in legacy.participants] == [
        ("+33140000001", "+33140000001", ("1",)),
        ("2002", "2002", ("2",)),
    ]
    cube = parse_metadata(fx.CUBE_METADATA)
    assert cube.values("gcid") == ("6F1BC9A4-7C1211EE-8A3FD1B0-5A21C0DE",)
    assert [(p.number, p.name, p.send_labels) for p in cube.participants] == [
        ("+4930555010", None, ("1",)),
        ("2001", None, ("2",)),
    ]


def test_tolerated_variants() -> None:
    # No namespace at all, sends naming labels, a participant known only from its association,
    # several stream ids in one <send>, an <aor> inside <nameID>, str input.
    meta = parse_metadata(
        "<recording><session id='s'/>"
        "<participant id='p1'><nameID><aor>sip:1@x</aor></nameID></participant>"
        "<stream id='st1'><label>L1</label></stream><stream id='st2' label='L2'/>"
        "<participantstreamassoc participant_id='p1'><send>L1 st2</send></participantstreamassoc>"
        "<participantstreamassoc><participant_id>p9</participant_id><send>st1</send>"
        "</participantstreamassoc>"
        "</recording>"
    )
    assert meta.namespace == ""
    assert [(p.participant_id, p.aor, p.send_labels) for p in meta.participants] == [
        ("p1", "sip:1@x", ("L1", "L2")),
        ("p9", None, ("L1",)),
    ]
    for namespace in NAMESPACES:
        assert (
            parse_metadata(f'<r:recording xmlns:r="{namespace}"/>'.encode()).namespace == namespace
        )


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not well-formed"),
        (b"<recording", "not well-formed"),
        (b"<recording></other>", "not well-formed"),
        (b"<html/>", "not <recording>"),
        (b'<recording xmlns="urn:example"/>', "not <recording>"),
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
            b"<recording>&b;</recording>",
            "DTD",
        ),
        (b'<!DOCTYPE recording SYSTEM "http://example.com/x.dtd"><recording/>', "DTD"),
        (b"<recording>&ext;</recording>", "not well-formed"),
        (b"<" + b"recording><a>" * 40 + b"</a>" * 40 + b"</recording>", "deeper than 32"),
        (b"<recording>" + b"<a/>" * 5000 + b"</recording>", "more than 4096"),
        (b"<recording>" + b" " * 70_000 + b"</recording>", "over the limit"),
    ],
)
def test_refused(data: bytes, needle: str) -> None:
    with pytest.raises(InvalidSipMessage) as caught:
        parse_metadata(data)
    assert needle in str(caught.value)


def test_dtd_refused_whatever_the_encoding() -> None:
    # The byte check cannot see a UTF-16 DOCTYPE; the parser's DTD handler refuses it anyway.
    bomb = (
        '<?xml version="1.0" encoding="UTF-16"?>'
        '<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        "<recording>&b;</recording>"
    ).encode("utf-16")
    with pytest.raises(InvalidSipMessage, match="DTD"):
        parse_metadata(bomb)
    assert parse_metadata('<?xml version="1.0" encoding="UTF-16"?><recording/>'.encode("utf-16"))


def test_usage_errors() -> None:
    with pytest.raises(InvalidArgument):
        parse_metadata(None)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(DOCUMENTS)).flatmap(lambda name: mutated(DOCUMENTS[name])))
def test_mutated_metadata_parses_or_raises_the_typed_error(data: bytes) -> None:
    try:
        meta = parse_metadata(data)
    except InvalidSipMessage:
        return
    for participant in meta.participants:
        assert participant.number is None or isinstance(participant.number, str)
        for label in participant.send_labels:
            assert meta.sender(label) is not None


_IDS = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=-", min_size=1, max_size=24
)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(NAMESPACES),
    st.booleans(),
    st.lists(
        st.tuples(_IDS, st.from_regex(r"\+?[0-9]{3,15}", fullmatch=True), _IDS),
        min_size=1,
        max_size=6,
        unique_by=(lambda t: t[0], lambda t: t[2]),
    ),
    st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
)
def test_generated_documents_read_back(
    namespace: str,
    ids_as_elements: bool,
    people: list[tuple[str, str, str]],
    sip_session_id: str,
) -> None:
    def ident(kind: str, value: str) -> tuple[str, str]:
        """(attribute text, child element text) for an id, one of them empty."""
        if ids_as_elements:
            return "", f"<{kind}_id>{value}</{kind}_id>"
        return f' {kind}_id="{value}"', ""

    parts = [f'<recording xmlns="{namespace}"><datamode>complete</datamode>']
    attribute, element = ident("session", "S")
    parts.append(
        f"<session{attribute}>{element}<sipSessionID>{sip_session_id}</sipSessionID></session>"
    )
    for index, (pid, number, _) in enumerate(people):
        attribute, element = ident("participant", pid)
        parts.append(
            f'<participant{attribute}>{element}<nameID aor="sip:{number}@example.com">'
            f"<name>P{index}</name></nameID></participant>"
        )
    for index, (_, _, sid) in enumerate(people):
        attribute, element = ident("stream", sid)
        parts.append(f"<stream{attribute}>{element}<label>{index}</label></stream>")
    for pid, _, sid in people:
        attribute, element = ident("participant", pid)
        parts.append(
            f"<participantstreamassoc{attribute}>{element}<send>{sid}</send>"
            "</participantstreamassoc>"
        )
    parts.append("</recording>")
    meta = parse_metadata("".join(parts))
    assert meta.sip_session_ids == (sip_session_id,)
    assert meta.session_ids == ("S",)
    assert [(p.participant_id, p.number, p.name, p.send_labels) for p in meta.participants] == [
        (pid, number, f"P{index}", (str(index),)) for index, (pid, number, _) in enumerate(people)
    ]
