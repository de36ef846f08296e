"""``sampledrec serve``: one asyncio process, one sampler and one log, several front doors.

The package owns the server process (:class:`Server`: lifecycle, signals, graceful stop), what
its front doors share (:class:`Services`), how a kind of door is configured and added
(:class:`DoorKind`, :data:`DOOR_KINDS`, :class:`ServerConfig`), the registry of open
recordings that pause and resume act on (:class:`OpenRecordings`), the metrics, the structured
log, and the front doors: HTTP with the decision service (:mod:`.http`), SIPREC for SBCs
(:mod:`.siprec`), AudioSocket for Asterisk (:mod:`.audiosocket`) and WebSocket media streams
for cloud platforms and FreeSWITCH (:mod:`.streams`), and the web console (:mod:`.web`, its
pages in :mod:`.console`, which needs the ``console`` extra). The protocol parsers of the
telephony doors are sans-I/O state machines in :mod:`sampledrec.ingest`; their asyncio shells
are doors here. Needs the ``serve`` extra (aiohttp): ``pip install 'sampledrec[serve]'``.

Layout: ``server`` over ``config`` over the doors (``http``, ``siprec``, ``audiosocket``,
``streams``, ``web``) over ``doors`` over ``decisions``, ``recordings``, ``metrics`` and ``events``.
"""

from .audiosocket import AUDIOSOCKET, AudioSocketConfig, audiosocket_door
from .config import DOOR_KINDS, EVENT_LOOPS, ServerConfig
from .decisions import Answer, Decider, DecisionRequest, parse_decision_request
from .doors import Door, DoorKind, Listen, Ready, Services
from .http import HttpConfig, build_app, http_door
from .metrics import Metrics
from .recordings import OpenRecording, OpenRecordings, PauseState
from .server import Server, event_loop_factory, run_server
from .siprec import SIPREC, SiprecConfig, siprec_door
from .streams import STREAMS, StreamsConfig, streams_door
from .web import WEB, WebConfig, web_door

__all__ = [
    "AUDIOSOCKET",
    "DOOR_KINDS",
    "EVENT_LOOPS",
    "SIPREC",
    "STREAMS",
    "WEB",
    "Answer",
    "AudioSocketConfig",
    "Decider",
    "DecisionRequest",
    "Door",
    "DoorKind",
    "HttpConfig",
    "Listen",
    "Metrics",
    "OpenRecording",
    "OpenRecordings",
    "PauseState",
    "Ready",
    "Server",
    "ServerConfig",
    "Services",
    "SiprecConfig",
    "StreamsConfig",
    "WebConfig",
    "audiosocket_door",
    "build_app",
    "event_loop_factory",
    "http_door",
    "parse_decision_request",
    "run_server",
    "siprec_door",
    "streams_door",
    "web_door",
]
