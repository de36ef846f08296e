"""Keep the public surface honest: everything exported exists, is sorted and documented."""

from __future__ import annotations

import sampledrec


def test_all_is_sorted_and_exported() -> None:
    names = sampledrec.__all__

    def isort_style(name: str) -> tuple[int, str]:
        # Constants, then classes, then functions (ruff's RUF022 order).
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=isort_style)
    for name in names:
        assert hasattr(sampledrec, name), name


def test_public_members_are_in_all() -> None:
    public = {
        name
        for name, value in vars(sampledrec).items()
        if not name.startswith("_")
        and not isinstance(value, type(sampledrec))
        and name not in {"annotations"}
    }
    assert public == set(sampledrec.__all__)


def test_everything_exported_has_a_docstring() -> None:
    for name in sampledrec.__all__:
        obj = getattr(sampledrec, name)
        if callable(obj):
            assert obj.__doc__, name


def test_errors_share_one_root() -> None:
    for name in sampledrec.__all__:
        obj = getattr(sampledrec, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, sampledrec.SampledrecError), name
