"""Legal holds in the audit: a recording's expiry is extended only by logged holds that name it.

The honest store of ``test_audit_attacks`` (one hold kept, one placed and released) is reused:
each test takes a copy and cheats on the catalog's hold membership as an operator would.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from sampledrec.log.format import T_HOLD, hold_recording_ids, parse_hold_recording_ids
from sampledrec.log.writer import iter_entries
from sampledrec.retention.sweep import HELD_UNTIL, Retention
from sampledrec.vault.catalog import Hold

from . import test_audit_attacks as attacks
from .test_audit_attacks import Honest, _audit, _catalog, _found, operator

honest = attacks.honest
case = attacks.case
LATER = datetime(2026, 3, 20, tzinfo=UTC)  # past every logged expiry of the honest store


def _holds(store: Path) -> list[dict[str, object]]:
    return [dict(e.fields) for e in iter_entries(store / "log") if e.type == T_HOLD]


def test_the_recording_ids_field_is_a_compact_sorted_json_list() -> None:
    assert hold_recording_ids(["b", "a", "b"]) == '["a","b"]'
    assert hold_recording_ids([]) == "[]"
    assert parse_hold_recording_ids('["a","b"]') == ["a", "b"]
    for bad in (None, 3, "", "{}", '["a",1]', "not json"):
        assert parse_hold_recording_ids(bad) is None


def test_hold_entries_name_their_recordings_placed_and_released(honest: Honest) -> None:
    entries = _holds(honest.base / "store")
    placed = [e for e in entries if e["action"] == "placed"]
    released = [e for e in entries if e["action"] == "released"]
    assert [json.loads(str(e["recording_ids"])) for e in placed] == [
        [honest.held],
        [honest.released],
    ]
    assert [e["recordings"] for e in placed] == [1, 1]  # the count is still there
    (rel,) = released
    assert rel["hold_id"] == placed[1]["hold_id"]
    assert json.loads(str(rel["recording_ids"])) == [honest.released]


def test_honest_holds_pass_from_the_log(honest: Honest, case: Path) -> None:
    rep = _audit(case)
    assert rep.status("recordings") == "PASS", rep.to_text()
    checked = rep.to_json()["results"]["recordings"]["checked"]
    assert checked["held_past_expiry"] == 1 and checked["hold_members"] == 2
    assert not any("before hold entries named" in n for n in rep.notes)
    later = _audit(case, now=LATER)  # unswept: the live recordings are late, not the held one
    kept = {f["recording_id"] for f in _found(later, "recordings", "kept past its expiry")}
    assert set(honest.live) <= kept and honest.held not in kept


def test_a_recording_swapped_into_a_hold_in_the_catalog_only(honest: Honest, case: Path) -> None:
    """Same member count as logged: only the names catch it."""
    catalog = _catalog(case)
    ((hold, _),) = catalog.holds_of(honest.held)
    catalog.close()
    victim = honest.live[0]
    with sqlite3.connect(case / "store" / "catalog.sqlite") as db:
        db.execute(
            "UPDATE hold_members SET recording_id=? WHERE hold_id=? AND recording_id=?",
            (victim, hold.hold_id, honest.held),
        )
        db.execute("UPDATE recordings SET expires_at=? WHERE recording_id=?", (HELD_UNTIL, victim))
    db.close()
    rep = _audit(case)
    assert rep.status("recordings") == "FAIL"
    (bad,) = _found(rep, "recordings", "but the log's hold entry does not name it")
    assert bad["recording_id"] == victim
    assert bad["evidence"] == {
        "hold_id": hold.hold_id,
        "catalog_member": victim,
        "logged_recordings": [honest.held],
    }
    assert not _found(rep, "recordings", f"hold {hold.hold_id} keeps 2 recordings")
    (ext,) = _found(rep, "recordings", "the catalog extends the recording's expiry")
    assert ext["recording_id"] == victim
    # Past its logged expiry, the catalog's membership does not keep it; the log's still
    # keeps the recording it names (no longer in the catalog's hold).
    kept = {f["recording_id"] for f in _found(_audit(case, now=LATER), "recordings", "kept past")}
    assert victim in kept and honest.held not in kept


def test_a_recording_added_to_a_logged_hold_in_the_catalog(honest: Honest, case: Path) -> None:
    catalog = _catalog(case)
    ((hold, _),) = catalog.holds_of(honest.held)
    victim = honest.live[1]
    catalog.add_hold_member(hold.hold_id, victim, b"")
    catalog.update(victim, expires_at=HELD_UNTIL)
    catalog.close()
    rep = _audit(case)
    (bad,) = _found(rep, "recordings", "but the log's hold entry does not name it")
    assert bad["recording_id"] == victim and bad["evidence"]["hold_id"] == hold.hold_id
    assert _found(rep, "recordings", f"hold {hold.hold_id} keeps 2 recordings")


def test_a_hold_extended_in_the_catalog_ends_when_the_log_says(honest: Honest, case: Path) -> None:
    """A hold placed with an end: lengthening it in the catalog keeps nothing longer."""
    rid = honest.live[0]
    until = datetime(2026, 3, 10, tzinfo=UTC)
    with operator(case) as op:
        r = Retention(op.vault, clock=op.clock)
        hold = r.hold([rid], reason="Case 3", until=until)
    catalog = _catalog(case)
    catalog.update_hold(hold.hold_id, until=None)  # the operator drops the end
    catalog.close()
    assert _audit(case).status("recordings") == "PASS"  # still within the logged hold
    kept = _found(_audit(case, now=LATER), "recordings", "kept past its expiry")
    assert rid in {f["recording_id"] for f in kept}


def test_a_hold_logged_before_holds_named_recordings_keeps_the_catalog_rule(
    honest: Honest, case: Path
) -> None:
    rid = honest.live[0]
    catalog = _catalog(case)
    catalog.add_hold(Hold("old-hold", "an old case", created_at=0))
    catalog.add_hold_member("old-hold", rid, b"")
    catalog.update(rid, expires_at=HELD_UNTIL)
    catalog.close()
    with operator(case) as op:  # as an older version logged it: a count, no names
        op.log.append(
            T_HOLD,
            {
                "hold_id": "old-hold",
                "action": "placed",
                "recordings": 1,
                "reason": "an old case",
                "principal": "sampledrec",
            },
            at=op.clock.now(),
        )
        op.log.flush()
    rep = _audit(case)
    assert rep.status("recordings") == "PASS", rep.to_text()
    assert any("old-hold" in n and "from the catalog" in n for n in rep.notes)
    later = _audit(case, now=LATER)
    assert rid not in {f["recording_id"] for f in _found(later, "recordings", "kept past")}
