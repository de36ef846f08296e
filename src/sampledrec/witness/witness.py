"""The witness: checks each new checkpoint of a log against the last one it verified, and cosigns
it (c2sp.org/tlog-witness), without any I/O but its state folder.

:meth:`Witness.add_checkpoint` takes a request body and returns the :class:`Answer`; the HTTP
shell (:mod:`sampledrec.witness.http`) only moves bytes. The checks run in the order the spec
gives; the check of the old size against the stored checkpoint, the saving of the new one and
the cosignature happen under one lock per origin, and the cosignature is made only once the new
checkpoint is durable.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Final

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import CheckpointError
from ..log.merkle import verify_consistency
from .note import (
    ALG_ED25519,
    Cosigner,
    NoteCheckpoint,
    VerifierKey,
    parse_note,
    verify_cosignature,
)
from .protocol import AddCheckpoint, Answer
from .state import WitnessState

__all__ = ["Witness"]

MAX_BODY: Final = 1 << 20


class Witness:
    """A witness of the logs in ``logs`` (origin -> the verifier keys it trusts for it)."""

    def __init__(
        self,
        cosigner: Cosigner,
        state: WitnessState,
        logs: Mapping[str, Sequence[VerifierKey]],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not logs:
            raise CheckpointError("a witness needs at least one log (--log ORIGIN=VKEY)")
        for origin, keys in logs.items():
            if not keys or any(k.alg != ALG_ED25519 for k in keys):
                raise CheckpointError(
                    f"the log {origin!r} needs Ed25519 verifier keys (type 0x01), as "
                    "'sampledrec init' prints them"
                )
        self.cosigner = cosigner
        self.state = state
        self.logs = {origin: list(keys) for origin, keys in logs.items()}
        self._clock = clock
        self._locks = {origin: threading.Lock() for origin in self.logs}

    def __repr__(self) -> str:
        return f"Witness({self.cosigner.name!r}, {len(self.logs)} logs)"

    def add_checkpoint(self, body: bytes) -> Answer:
        """Answer one ``add-checkpoint`` request (module docstring of
        :mod:`sampledrec.witness.protocol`)."""
        if len(body) > MAX_BODY:
            return Answer.error(400, "the request is too large")
        try:
            request = AddCheckpoint.parse(body)
            cp = parse_note(request.checkpoint)
        except CheckpointError as exc:
            return Answer.error(400, f"malformed request: {exc}")
        keys = self.logs.get(cp.origin)
        if keys is None:
            return Answer.error(404, f"unknown log {cp.origin[:200]!r}")
        try:
            cp.signed_by(keys)
        except CheckpointError as exc:
            return Answer.error(403, f"{exc}")
        if request.old_size > cp.size:
            return Answer.error(
                400, f"old size {request.old_size} is above the checkpoint's size {cp.size}"
            )
        with self._locks[cp.origin], self.state.lock(cp.origin):
            latest = self.state.latest(cp.origin)
            known = 0 if latest is None else latest.size
            if request.old_size != known:
                return Answer.conflict(known)
            if latest is not None and cp.size == latest.size:
                if cp.root != latest.root:
                    return Answer.error(
                        409, f"another root hash for size {cp.size}: the log forked"
                    )
            elif latest is None:
                if request.proof:
                    return Answer.error(422, "the proof must be empty from size 0")
            elif not verify_consistency(latest.size, cp.size, request.proof, latest.root, cp.root):
                return Answer.error(
                    422, f"the consistency proof from size {latest.size} does not verify"
                )
            timestamp = int(self._clock.now().timestamp())
            if latest is not None:
                # A later cosignature never carries an earlier time than the one stored.
                timestamp = max(timestamp, _stored_time(latest, self.cosigner))
            line = self.cosigner.cosign(cp.text, timestamp)
            self.state.save(_trusted_only(cp, keys), line)
        return Answer(200, line)


def _trusted_only(cp: NoteCheckpoint, keys: Sequence[VerifierKey]) -> NoteCheckpoint:
    """``cp`` with only one signature per trusted log key (all verified by ``signed_by``).

    The request's other signature lines are the client's: stored, they could fill the state
    file past what :func:`parse_note` reads back (64 lines: the origin is then stuck), or pass
    for this witness's own cosignature with any time in them."""
    kept: dict[tuple[str, bytes], tuple[str, bytes]] = {}
    trusted = {(k.name, k.key_id) for k in keys}
    for name, raw in cp.signatures:
        if (name, raw[:4]) in trusted:
            kept.setdefault((name, raw[:4]), (name, raw))
    return dataclasses.replace(cp, signatures=tuple(kept.values()))


def _stored_time(cp: NoteCheckpoint, cosigner: Cosigner) -> int:
    """The latest time of this witness's own cosignatures stored with ``cp`` (verified: a
    line that only looks like one does not count)."""
    return max(
        (
            ts
            for name, raw in cp.signatures
            if name == cosigner.name
            and (ts := verify_cosignature(cosigner.verifier, cp.text, raw)) is not None
        ),
        default=0,
    )
