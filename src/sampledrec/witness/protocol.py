"""The bytes of the C2SP tlog-witness ``add-checkpoint`` call (no I/O).

Request body: an old size line ``old <decimal>``, zero to 63 consistency proof lines (one
base64 hash each), an empty line, then the checkpoint (a signed note)::

    old 20852014
    PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=
    ...

    example.com/behind-the-sofa
    20852163
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

    — example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5...

Answers (:class:`Answer`): 200 with one or more cosignature lines; 400 a malformed request or
an old size above the checkpoint's; 403 no trusted signature; 404 an unknown origin; 409 the old
size is not the witness's (body: its size and a newline, ``Content-Type: text/x.tlog.size``) or
the same size with another root; 422 the consistency proof does not verify.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from ..errors import CheckpointError

__all__ = [
    "MAX_PROOF_LINES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpoint",
    "Answer",
]

MAX_PROOF_LINES: Final = 63
SIZE_CONTENT_TYPE: Final = "text/x.tlog.size"
TEXT_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
_OLD: Final = re.compile(rb"old (0|[1-9][0-9]{0,18})", re.ASCII)


@dataclass(frozen=True)
class AddCheckpoint:
    """An ``add-checkpoint`` request: the old size, the proof, the checkpoint note's bytes."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes

    def body(self) -> bytes:
        lines = [b"old %d\n" % self.old_size]
        lines += [base64.b64encode(h) + b"\n" for h in self.proof]
        return b"".join(lines) + b"\n" + self.checkpoint

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpoint:
        """Read a request body; raises :class:`CheckpointError` (a 400) when malformed. The
        checkpoint itself is parsed later."""
        head, sep, checkpoint = body.partition(b"\n\n")
        if not sep:
            raise CheckpointError("the request has no empty line before its checkpoint")
        lines = (head + b"\n").split(b"\n")[:-1]
        match = _OLD.fullmatch(lines[0])
        if match is None:
            raise CheckpointError(
                "the request's first line is not 'old <size>' (decimal, no leading zero)"
            )
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise CheckpointError(f"more than {MAX_PROOF_LINES} consistency proof lines")
        proof = []
        for line in lines[1:]:
            try:
                h = base64.b64decode(line, validate=True)
            except (binascii.Error, ValueError):
                raise CheckpointError("a consistency proof line is not base64") from None
            if len(h) != 32 or base64.b64encode(h) != line:
                raise CheckpointError("a consistency proof line is not one 32-byte hash")
            proof.append(h)
        return cls(int(match.group(1)), tuple(proof), checkpoint)


@dataclass(frozen=True)
class Answer:
    """What the witness answers: an HTTP status, a content type and a body."""

    status: int
    body: bytes
    content_type: str = TEXT_CONTENT_TYPE

    @classmethod
    def error(cls, status: int, message: str) -> Answer:
        return cls(status, message.encode("utf-8") + b"\n")

    @classmethod
    def conflict(cls, size: int) -> Answer:
        return cls(409, b"%d\n" % size, SIZE_CONTENT_TYPE)
