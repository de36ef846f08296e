"""Front doors from telephony (SIPREC, AudioSocket, media streams, HTTP decisions). Each front
door is a sans-I/O parser plus a thin asyncio shell, and reaches the rest of the library only
through the sampler, the log and the vault.

The SIPREC front door's parsers are here (docs/decisions/0020-sip-parsing.md): SIP messages and
stream framing (:mod:`.sip`), multipart bodies (:mod:`.multipart`), SDP offers and answers
(:mod:`.sdp`), RFC 7865 recording metadata (:mod:`.metadata`), and the INVITE read as a
recording offer, an in-dialog update, and the choice of its legs (:mod:`.siprec`). They take
bytes and return values, and raise :class:`~sampledrec.errors.InvalidSipMessage` and nothing
else for whatever bytes they are given.
"""

from .metadata import Participant, RecordingMetadata, Stream, parse_metadata
from .multipart import BodyPart, split_body
from .sdp import Answer, AnsweredMedia, Media, SessionDescription, build_answer, parse_sdp
from .sip import (
    CSeq,
    Headers,
    NameAddr,
    SipRequest,
    SipResponse,
    StreamFramer,
    build_response,
    parse_message,
)
from .siprec import (
    Legs,
    Offer,
    SessionUpdate,
    choose_legs,
    is_siprec,
    parse_offer,
    parse_update,
    session_reference,
)

__all__ = [
    "Answer",
    "AnsweredMedia",
    "BodyPart",
    "CSeq",
    "Headers",
    "Legs",
    "Media",
    "NameAddr",
    "Offer",
    "Participant",
    "RecordingMetadata",
    "SessionDescription",
    "SessionUpdate",
    "SipRequest",
    "SipResponse",
    "Stream",
    "StreamFramer",
    "build_answer",
    "build_response",
    "choose_legs",
    "is_siprec",
    "parse_message",
    "parse_metadata",
    "parse_offer",
    "parse_sdp",
    "parse_update",
    "session_reference",
    "split_body",
]
