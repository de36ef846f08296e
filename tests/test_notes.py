"""Review notes (sampledrec.vault.notes, Vault.write_note / Vault.notes): sealed under the
recording's data key, read and written by those who may listen to it, logged, and gone with the
recording (sweep, data-subject erasure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from sampledrec import Principal
from sampledrec.errors import AccessDenied, InvalidArgument, InvalidRecording, RecordingExpired
from sampledrec.retention import IdentityCheck, Retention, SubjectRequests
from sampledrec.vault.audio import synthetic_speech
from sampledrec.vault.notes import MAX_NOTE_CHARS, check_note_text

from .console_fixtures import PCM, World, make_world
from .recording import write_call

RITA = Principal("rita", ("qa_reviewer",))
SAM = Principal("sam", ("supervisor",))
ALDO = Principal("aldo", ("auditor",))
SECRET_TEXT = "Agent promised a refund of 57 euros zanzibar-marmalade"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


def note_accesses(world: World) -> list[dict[str, object]]:
    return [a for a in world.accesses() if a["action"] == "review_note"]


def test_a_reviewer_writes_a_note_and_those_who_may_listen_read_it(world: World) -> None:
    vault = world.console.vault
    rid = world.recordings["sales"]
    note = vault.write_note(rid, "  Greeting too quick;\r\nhold music 40 s.  ", RITA)
    assert (note.author, note.text) == ("rita", "Greeting too quick;\nhold music 40 s.")
    world.clock.advance(seconds=5)
    vault.write_note(rid, "Second remark", SAM)
    for reader in (RITA, SAM, Principal.owner()):
        assert [n.text for n in vault.notes(rid, reader)] == [note.text, "Second remark"]
    assert [n.author for n in vault.notes(rid, RITA)] == ["rita", "sam"]
    assert vault.notes(world.recordings["support"], SAM) == []
    logged = [(a["outcome"], a["principal"], a["detail"]) for a in note_accesses(world)]
    assert logged[0] == ("granted", "rita", f"write {note.note_id}")
    assert ("granted", "rita", "read 2 notes") in logged
    assert ("granted", "sam", "read 0 notes") in logged
    assert "Greeting" not in repr(world.accesses())


def test_notes_are_refused_outside_scope_and_without_listen_and_the_refusal_logged(
    world: World,
) -> None:
    vault = world.console.vault
    support = world.recordings["support"]
    with pytest.raises(AccessDenied):
        vault.write_note(support, "not mine to review", RITA)
    assert note_accesses(world)[-1]["detail"] == "out of scope"
    with pytest.raises(AccessDenied):
        vault.notes(support, RITA)
    with pytest.raises(AccessDenied):
        vault.notes(world.recordings["sales"], ALDO)  # the auditor never hears a call
    last = note_accesses(world)[-1]
    assert (last["outcome"], last["principal"], last["detail"]) == (
        "denied",
        "aldo",
        "no role grants listen",
    )
    assert world.console.vault.catalog.notes_of(support) == []


@pytest.mark.parametrize(
    ("text", "why"),
    [("   ", "empty"), ("x" * (MAX_NOTE_CHARS + 1), "2000"), ("bell \x07", "control")],
)
def test_empty_long_or_binary_notes_are_refused(world: World, text: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        world.console.vault.write_note(world.recordings["sales"], text, RITA)
    assert note_accesses(world)[-1]["outcome"] == "denied"
    assert check_note_text("a\tb\nc") == "a\tb\nc"


def test_no_plaintext_of_a_note_in_any_file_under_the_store(world: World) -> None:
    vault = world.console.vault
    rid = world.recordings["sales"]
    vault.write_note(rid, SECRET_TEXT, RITA)
    assert [n.text for n in vault.notes(rid, RITA)] == [SECRET_TEXT]
    world.log.flush()
    (sealed,) = vault.catalog.notes_of(rid)
    assert SECRET_TEXT.encode() not in sealed.sealed
    needles = [SECRET_TEXT.encode(), b"zanzibar", SECRET_TEXT.encode("utf-16-le")[:40]]
    files = [p for p in world.store.path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("catalog") for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(n in data for n in needles), path


def test_a_note_does_not_open_under_another_recording_or_altered(world: World) -> None:
    vault = world.console.vault
    sales, support = world.recordings["sales"], world.recordings["support"]
    vault.write_note(sales, "genuine", Principal.owner())
    (sealed,) = vault.catalog.notes_of(sales)
    moved = dataclasses.replace(sealed, note_id="note-moved", recording_id=support)
    vault.catalog.add_note(moved)
    with pytest.raises(InvalidRecording):
        vault.notes(support, Principal.owner())
    assert note_accesses(world)[-1]["outcome"] == "failed"
    flipped = bytearray(sealed.sealed)
    flipped[-1] ^= 1
    vault.catalog.delete_notes([sales])
    vault.catalog.add_note(dataclasses.replace(sealed, sealed=bytes(flipped)))
    with pytest.raises(InvalidRecording, match=r"^the recording cannot be read$"):
        vault.notes(sales, Principal.owner())


def test_notes_are_refused_from_expiry_on_and_the_sweep_deletes_them(world: World) -> None:
    vault = world.console.vault
    rid = world.recordings["sales"]
    vault.write_note(rid, "kept while the recording is", RITA)
    world.clock.advance(days=100)  # past the rule's 3 months
    with pytest.raises(RecordingExpired):
        vault.notes(rid, RITA)
    with pytest.raises(RecordingExpired):
        vault.write_note(rid, "too late", RITA)
    assert [a["detail"] for a in note_accesses(world)[-2:]] == ["expired", "expired"]
    assert len(vault.catalog.notes_of(rid)) == 1  # until the sweep
    report = Retention(vault, clock=world.clock).sweep()
    assert rid in report.expired
    assert vault.catalog.notes_of(rid) == []
    with pytest.raises(RecordingExpired):
        vault.notes(rid, RITA)


def test_a_data_subject_erasure_deletes_the_notes_of_the_erased_recordings(
    world: World,
) -> None:
    vault = world.console.vault
    caller = "+33612345678"
    sampler = world.store.sampler(clock=world.clock, log=world.log)
    try:
        decision = sampler.decide("call-erased", {"queue": "sales"}, caller=caller)
        rid = write_call(
            vault, decision, synthetic_speech(1.0, seed=3), PCM, attrs={"queue": "sales"}
        )
    finally:
        sampler.close()
    vault.write_note(rid, "about the caller's complaint", RITA)
    other = world.recordings["sales"]
    vault.write_note(other, "stays", RITA)
    desk = SubjectRequests(world.store, vault, world.log, clock=world.clock)
    owner = Principal.owner()
    request = desk.receive("erase", caller, principal=owner)
    desk.verify_identity(
        request.request_id, IdentityCheck("callback_to_number", "called back"), principal=owner
    )
    desk.subject_erase(caller, principal=owner, request=desk.requests()[0])
    assert vault.catalog.notes_of(rid) == []
    assert [n.text for n in vault.notes(other, RITA)] == ["stays"]
    with pytest.raises(RecordingExpired):
        vault.notes(rid, RITA)
