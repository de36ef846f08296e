"""A SIPREC offer (RFC 7866), sans I/O: an INVITE from a recording client read into what the
recording server decides on and answers with — the SIP request, its SDP offer, its recording
metadata when it has some, and the reference of the recorded call.

The call reference is the recorded call's, not the recording session's, so that a recording
client that fails over to another recording server gets the same decision (DESIGN.md §12): the
first ``sipSessionID`` of the metadata (:func:`session_reference`). Without metadata, or with
metadata that names no ``sipSessionID``, it is the INVITE's Call-ID, and :attr:`Offer.note`
says so (a failover then reaches a new decision).

An in-dialog re-INVITE or UPDATE is read by :func:`parse_update`: an SDP offer, new metadata
(RFC 7866 lets a recording client send a metadata snapshot alone), both, or neither (an UPDATE
that only refreshes the session). :func:`choose_legs` says which streams of an offer are the
caller's leg and the agent's, from the metadata's participants when it says so consistently,
else by ``m=`` line order.

Tolerated: the SIPREC markers in any of the forms SBCs use (``Require: siprec``,
``Supported: siprec``, a ``+sip.src`` or ``src`` feature tag on the Contact or inside its
URI), SDP and metadata as parts of ``multipart/mixed`` in any order and among parts nobody
asked for, metadata typed ``application/rs-metadata+xml``, ``application/rs-metadata`` or
marked only by ``Content-Disposition: recording-session``, a plain ``application/sdp`` body
(no metadata). Refused with :class:`~sampledrec.errors.InvalidSipMessage`: an INVITE without an
SDP offer (status 488), a body with a ``Content-Encoding``, metadata that cannot be parsed
(a recording decided on a guessed identity would not survive a failover; better to refuse it
loudly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from ..errors import InvalidArgument, InvalidSipMessage
from .metadata import MAX_METADATA_BYTES, Participant, RecordingMetadata, parse_metadata
from .multipart import BodyPart, split_body
from .sdp import MAX_SDP_BYTES, SessionDescription, parse_sdp
from .sip import SipRequest

__all__ = [
    "METADATA_TYPES",
    "NO_METADATA",
    "NO_SIP_SESSION_ID",
    "CallRefSource",
    "Legs",
    "Offer",
    "SessionUpdate",
    "choose_legs",
    "is_siprec",
    "parse_offer",
    "parse_update",
    "session_reference",
]

NO_METADATA: Final = "no metadata: decided on the Call-ID"
NO_SIP_SESSION_ID: Final = "metadata without sipSessionID: decided on the Call-ID"
METADATA_TYPES: Final = ("application/rs-metadata+xml", "application/rs-metadata")
"""The metadata's media type (RFC 7866 section 9), and the shorter one some SBCs use."""

CallRefSource: TypeAlias = Literal["sipSessionID", "Call-ID"]

_SESSION_ID_RE: Final = re.compile(r"([0-9A-Fa-f]{32})(;.*)?", re.DOTALL)
_NULL_UUID: Final = "0" * 32


def session_reference(sip_session_id: str) -> str:
    """The call reference a ``sipSessionID`` stands for.

    An RFC 7989 Session-ID (``<32 hex>;remote=<32 hex>``) gives its first UUID, lowercase: the
    ``remote`` half is the null UUID until the call is answered, so a recording client that
    sends metadata again (a re-INVITE, a failover) may change it, never the first. When the
    first is the null UUID the ``remote`` one is taken. Anything else (some clients send a
    Call-ID there) is taken as it is.

    >>> session_reference("AB30317F1A784DC48FF824D0D3715D86;remote=" + "0" * 32)
    'ab30317f1a784dc48ff824d0d3715d86'
    >>> session_reference("1-22300@192.0.2.18")
    '1-22300@192.0.2.18'
    """
    found = _SESSION_ID_RE.fullmatch(sip_session_id)
    if found is None:
        return sip_session_id
    local = found.group(1).lower()
    if local == _NULL_UUID and found.group(2):
        remote = re.search(r";\s*remote\s*=\s*([0-9A-Fa-f]{32})(?![0-9A-Fa-f])", found.group(2))
        if remote and remote.group(1) != _NULL_UUID:
            return remote.group(1).lower()
    return local


def is_siprec(request: SipRequest) -> bool:
    """Whether ``request`` says it starts a recording session: ``siprec`` in ``Require`` or
    ``Supported``, or the ``+sip.src`` feature tag (or its short form ``src``) on a Contact,
    as a header parameter or, misplaced by some clients, inside the URI."""
    if "siprec" in request.require or "siprec" in request.supported:
        return True
    for contact in request.contacts:
        for name, _ in (*contact.params, *contact.uri_params):
            if name in ("+sip.src", "src"):
                return True
    return False


@dataclass(frozen=True, slots=True)
class Offer:
    """An INVITE read as a recording offer. Build it with :func:`parse_offer`.

    ``call_ref`` is what the sampler decides on; ``call_ref_source`` says where it came from,
    and ``note`` why it is the Call-ID when it is (None otherwise). ``siprec`` is whether the
    INVITE carries a SIPREC marker (:func:`is_siprec`); the server chooses what to do with an
    INVITE that carries none.
    """

    request: SipRequest
    sdp: SessionDescription
    metadata: RecordingMetadata | None
    siprec: bool
    call_ref: str
    call_ref_source: CallRefSource
    note: str | None = None

    @property
    def senders(self) -> tuple[Participant | None, ...]:
        """For each ``m=`` line of the offer, in order, the participant whose voice it carries
        (matched by ``a=label`` through the metadata), or None when the metadata does not
        say."""
        return tuple(
            self.metadata.sender(media.label) if self.metadata and media.label else None
            for media in self.sdp.media
        )


def _is_metadata(part: BodyPart) -> bool:
    if part.media_type in METADATA_TYPES:
        return True
    return part.disposition == "recording-session" and (
        part.media_type in ("", "application/xml", "text/xml") or part.media_type.endswith("+xml")
    )


def _is_sdp(part: BodyPart) -> bool:
    return part.media_type == "application/sdp" or (
        part.media_type == "" and part.body.lstrip(b"\r\n\t ").startswith(b"v=")
    )


def _read_body(
    request: SipRequest, max_sdp_bytes: int, max_metadata_bytes: int
) -> tuple[SessionDescription | None, RecordingMetadata | None, tuple[BodyPart, ...]]:
    encoding = (request.headers.get("content-encoding") or "identity").strip(" \t").lower()
    if encoding != "identity":
        raise InvalidSipMessage(f"a body with Content-Encoding {encoding!r}", status=415)
    parts = split_body(
        request.content_type,
        request.body,
        disposition=request.headers.get("content-disposition"),
    )
    sdp_part = next((part for part in parts if _is_sdp(part)), None)
    sdp = parse_sdp(sdp_part.body, max_bytes=max_sdp_bytes) if sdp_part is not None else None
    metadata_part = next((part for part in parts if _is_metadata(part)), None)
    metadata = (
        parse_metadata(metadata_part.body, max_bytes=max_metadata_bytes)
        if metadata_part is not None
        else None
    )
    return sdp, metadata, parts


def parse_offer(
    request: SipRequest,
    *,
    max_sdp_bytes: int = MAX_SDP_BYTES,
    max_metadata_bytes: int = MAX_METADATA_BYTES,
) -> Offer:
    """Read an INVITE (initial or re-INVITE) as a recording offer.

    >>> from sampledrec.ingest.sip import parse_message
    >>> invite = parse_message(
    ...     b"INVITE sip:rec@192.0.2.9 SIP/2.0\\r\\n"
    ...     b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\\r\\n"
    ...     b"From: <sip:sbc@192.0.2.1>;tag=1\\r\\nTo: <sip:rec@192.0.2.9>\\r\\n"
    ...     b"Call-ID: 505763097241201011157@192.0.2.1\\r\\nCSeq: 1 INVITE\\r\\n"
    ...     b"Contact: <sip:192.0.2.1:5060>;src\\r\\nContent-Type: application/sdp\\r\\n\\r\\n"
    ...     b"v=0\\r\\nc=IN IP4 192.0.2.1\\r\\nm=audio 6020 RTP/AVP 8\\r\\na=label:1\\r\\n")
    >>> offer = parse_offer(invite)
    >>> offer.siprec, offer.call_ref, offer.note
    (True, '505763097241201011157@192.0.2.1', 'no metadata: decided on the Call-ID')
    """
    if not isinstance(request, SipRequest) or request.method != "INVITE":
        raise InvalidArgument(f"request={request!r} must be an INVITE (a SipRequest)")
    sdp, metadata, parts = _read_body(request, max_sdp_bytes, max_metadata_bytes)
    if sdp is None:
        types = ", ".join(part.media_type or "untyped" for part in parts) or "no body"
        raise InvalidSipMessage(
            f"the INVITE carries no SDP offer ({types}); a recorder needs one", status=488
        )
    siprec = is_siprec(request)
    if metadata is None:
        return Offer(request, sdp, None, siprec, request.call_id, "Call-ID", NO_METADATA)
    if not metadata.sip_session_ids:
        return Offer(request, sdp, metadata, siprec, request.call_id, "Call-ID", NO_SIP_SESSION_ID)
    call_ref = session_reference(metadata.sip_session_ids[0])
    return Offer(request, sdp, metadata, siprec, call_ref, "sipSessionID")


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    """An in-dialog re-INVITE or UPDATE, read by :func:`parse_update`: its SDP offer and its
    metadata snapshot, each None when the request carries none."""

    request: SipRequest
    sdp: SessionDescription | None
    metadata: RecordingMetadata | None


def parse_update(
    request: SipRequest,
    *,
    max_sdp_bytes: int = MAX_SDP_BYTES,
    max_metadata_bytes: int = MAX_METADATA_BYTES,
) -> SessionUpdate:
    """Read an in-dialog re-INVITE or UPDATE (RFC 3311): an SDP offer (streams paused or
    resumed), a metadata snapshot (RFC 7866 section 9.2: a participant joined or left), both,
    or neither. A body with neither is refused (415), a body part of another type among them
    is skipped.

    >>> from sampledrec.ingest.sip import parse_message
    >>> update = parse_update(parse_message(
    ...     b"UPDATE sip:rec@192.0.2.9 SIP/2.0\\r\\n"
    ...     b"Via: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK2\\r\\n"
    ...     b"From: <sip:sbc@192.0.2.1>;tag=1\\r\\nTo: <sip:rec@192.0.2.9>;tag=2\\r\\n"
    ...     b"Call-ID: 5057@192.0.2.1\\r\\nCSeq: 3 UPDATE\\r\\nContent-Length: 0\\r\\n\\r\\n"))
    >>> update.sdp, update.metadata
    (None, None)
    """
    if not isinstance(request, SipRequest) or request.method not in ("INVITE", "UPDATE"):
        raise InvalidArgument(f"request={request!r} must be an INVITE or an UPDATE (a SipRequest)")
    sdp, metadata, parts = _read_body(request, max_sdp_bytes, max_metadata_bytes)
    if parts and sdp is None and metadata is None:
        types = ", ".join(part.media_type or "untyped" for part in parts)
        raise InvalidSipMessage(
            f"the {request.method} carries neither SDP nor recording metadata ({types})",
            status=415,
        )
    return SessionUpdate(request, sdp, metadata)


@dataclass(frozen=True, slots=True)
class Legs:
    """Which ``m=`` lines of an offer a recording keeps, and how that was chosen.

    ``streams`` are indices into the offer's media: the caller's leg (channel 1), then the
    agent's (channel 2), or one stream alone. ``by`` is ``"metadata"`` when the recording
    metadata said whose voice each carries, ``"m-lines"`` when they are the first two audio
    streams in the offer's order; ``note`` then says why the metadata was not used (None when
    the offer has no metadata at all).
    """

    streams: tuple[int, ...]
    by: Literal["metadata", "m-lines"]
    note: str | None = None


def _recordable(offer: Offer) -> list[int]:
    return [
        index
        for index, media in enumerate(offer.sdp.media)
        if media.media.lower() == "audio" and media.port != 0
    ]


def choose_legs(offer: Offer, caller: Participant | None) -> Legs:
    """The streams of ``offer`` to record, the caller's first.

    ``caller`` is the participant of the offer's metadata (one of
    ``offer.metadata.participants``) who is the caller; the server picks it by its
    configuration. When the metadata is consistent (the caller sends exactly one audio stream
    of the offer, which no other participant claims; the agent's is the first other stream
    that another participant sends, or the only other stream when the metadata names none),
    the legs follow it, whatever the order of the ``m=`` lines. Otherwise they are the first
    two audio streams in order, and :attr:`Legs.note` says what did not fit.

    >>> from sampledrec.ingest.metadata import Participant
    >>> from sampledrec.ingest.sdp import parse_sdp
    >>> sdp = parse_sdp(b"v=0\\r\\nc=IN IP4 192.0.2.1\\r\\n"
    ...     b"m=audio 6000 RTP/AVP 0\\r\\na=label:agent\\r\\n"
    ...     b"m=audio 6002 RTP/AVP 0\\r\\na=label:caller\\r\\n")
    >>> meta = parse_metadata(b'<recording xmlns="urn:ietf:params:xml:ns:recording:1">'
    ...     b'<participant participant_id="p1"/><participant participant_id="p2"/>'
    ...     b'<stream stream_id="s1"><label>caller</label></stream>'
    ...     b'<stream stream_id="s2"><label>agent</label></stream>'
    ...     b'<participantstreamassoc participant_id="p1"><send>s1</send>'
    ...     b'</participantstreamassoc><participantstreamassoc participant_id="p2">'
    ...     b'<send>s2</send></participantstreamassoc></recording>')
    >>> offer = Offer(None, sdp, meta, True, "ref", "sipSessionID")  # type: ignore[arg-type]
    >>> choose_legs(offer, meta.participants[0])
    Legs(streams=(1, 0), by='metadata', note=None)
    >>> choose_legs(offer, None)
    Legs(streams=(0, 1), by='m-lines', note="the caller is not among the metadata's participants")
    """
    candidates = _recordable(offer)
    fallback = tuple(candidates[:2])
    metadata = offer.metadata
    if metadata is None:
        return Legs(fallback, "m-lines")
    if caller is None:
        return Legs(fallback, "m-lines", "the caller is not among the metadata's participants")
    labels = {index: offer.sdp.media[index].label for index in candidates}
    mine = [index for index in candidates if labels[index] in caller.send_labels]
    if len(mine) != 1:
        return Legs(
            fallback, "m-lines", f"the caller sends {len(mine)} of the offer's audio streams"
        )
    (own,) = mine
    claimed = [p for p in metadata.participants if labels[own] in p.send_labels]
    if len(claimed) > 1:
        return Legs(fallback, "m-lines", "the caller's stream is sent by several participants")
    others = [
        index
        for index in candidates
        if index != own
        and (sender := metadata.sender(labels[index] or "")) is not None
        and sender is not caller
    ]
    if others:
        return Legs((own, others[0]), "metadata")
    unknown = [index for index in candidates if index != own]
    if len(unknown) == 1:  # the metadata names the caller's stream; the other is the agent's
        return Legs((own, unknown[0]), "metadata")
    if not unknown:
        return Legs((own,), "metadata")
    return Legs(fallback, "m-lines", "no other participant's stream is named in the metadata")
