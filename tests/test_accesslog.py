"""sampledrec.accounts.access_log: every access entry read back for read_log, filtered, newest
first, the refusal logged."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sampledrec import Principal
from sampledrec.accounts import access_log
from sampledrec.errors import AccessDenied, InvalidArgument

from .console_fixtures import World, make_world

DORA = Principal("dora", ("dpo",))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


def test_the_newest_entries_come_first_and_the_count_covers_them_all(world: World) -> None:
    vault = world.console.vault
    rid = world.recordings["sales"]
    total = 0
    for n in range(5):
        world.clock.advance(seconds=1)
        total = vault.read_wav(rid, 0, 10 + n, Principal("rita", ("qa_reviewer",))).total
    found = access_log(world.store, vault, DORA, action="listen", limit=3)
    assert found.matched == 5 and len(found.events) == 3
    assert [e.detail for e in found.events] == [f"wav bytes 0-{9 + n}/{total}" for n in (4, 3, 2)]
    assert {(e.principal, e.recording_id, e.outcome) for e in found.events} == {
        ("rita", rid, "granted")
    }
    assert [e.index for e in found.events] == sorted((e.index for e in found.events), reverse=True)
    assert "listen" in found.actions and "account_change" in found.actions
    assert "granted" in found.outcomes
    later = access_log(world.store, vault, DORA, since=world.clock.now() + timedelta(seconds=1))
    assert later.matched == 0 and later.events == []
    with pytest.raises(InvalidArgument, match="limit"):
        access_log(world.store, vault, DORA, limit=0)


def test_only_read_log_reads_it_and_the_refusal_is_logged(world: World) -> None:
    with pytest.raises(AccessDenied):
        access_log(world.store, world.console.vault, Principal("sam", ("supervisor",)))
    last = world.accesses()[-1]
    assert (last["action"], last["outcome"], last["principal"]) == ("read_log", "denied", "sam")
