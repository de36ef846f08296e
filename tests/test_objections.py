"""The objection list: keyed pseudonyms only, saved all or nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sampledrec.errors import InvalidArgument
from sampledrec.sampling.objections import ObjectionList

KEY = b"k" * 32


def test_add_all_checks_every_number_before_saving(tmp_path: Path) -> None:
    path = tmp_path / "objections.txt"
    path.write_text("")
    objections = ObjectionList.load(KEY, path)
    with pytest.raises(InvalidArgument, match=r"number 2 of 3: .*nothing was added"):
        objections.add_all(["+33 6 12 34 56 78", "12", "+33 6 98 76 54 32"])
    assert path.read_text() == "" and len(objections) == 0
    pseudonyms = objections.add_all(["+33 6 12 34 56 78", "0033 6 98 76 54 32"])
    assert path.read_text().splitlines() == pseudonyms
    assert "+33 6 12 34 56 78" in objections and len(objections) == 2
    assert ObjectionList.load(KEY, path).contains_pseudonym(pseudonyms[1])


def test_additions_from_two_lists_are_all_kept(tmp_path: Path) -> None:
    # Two processes (here: two lists loaded before either adds) each add callers; the store's
    # lock and the re-read before the atomic write keep both sets.
    path = tmp_path / "objections.txt"
    lock = threading.Lock()
    first = ObjectionList.load(KEY, path, lock=lambda: lock)
    second = ObjectionList.load(KEY, path, lock=lambda: lock)
    a = first.add("+33 6 12 34 56 78")
    b = second.add("+33 6 98 76 54 32")
    assert ObjectionList.load(KEY, path).contains_pseudonym(a)
    assert ObjectionList.load(KEY, path).contains_pseudonym(b)
    assert sorted(path.read_text().splitlines()) == sorted([a, b])
