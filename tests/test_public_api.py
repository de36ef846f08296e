"""Keep the public surface honest: everything exported exists, is sorted and documented."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import types
from pathlib import Path

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


def test_top_level_api_stays_small() -> None:
    # The top level is what a user reads first: at most 30 names, the rest in each stage's
    # package (sampledrec.keys, .sampling, .log, .vault, .retention, .audit) and the errors in
    # sampledrec.errors.
    assert len(sampledrec.__all__) <= 30


def _library_modules() -> list[types.ModuleType]:
    import sampledrec.audit
    import sampledrec.cli
    import sampledrec.demo
    import sampledrec.ingest
    import sampledrec.testing

    found = []
    for info in pkgutil.walk_packages(sampledrec.__path__, "sampledrec."):
        if info.name.endswith("._merklefast"):
            continue  # the compiled accelerator
        found.append(importlib.import_module(info.name))
    return found


def test_every_error_has_the_one_root_and_lives_in_errors() -> None:
    import sampledrec.errors

    for module in _library_modules():
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException):
                if not value.__module__.startswith("sampledrec"):
                    continue  # a built-in or a dependency's error, imported to be caught
                assert issubclass(value, sampledrec.SampledrecError), value
                if not value.__module__.startswith("sampledrec.cli") and value.__name__[0] != "_":
                    # Every error a library caller can see is documented in errors.py; the
                    # CLI's CommandFailed never leaves main(), private ones never leave their
                    # module.
                    assert value.__module__ == "sampledrec.errors", value
    for name in sampledrec.errors.__all__:
        assert issubclass(getattr(sampledrec.errors, name), sampledrec.SampledrecError), name


# A named tuple's own public API starts with an underscore (so as not to clash with fields).
_NAMED_TUPLE_API = {"_fields", "_field_defaults", "_make", "_replace", "_asdict"}


def test_no_module_uses_another_modules_private_names() -> None:
    # A name with a leading underscore is its module's own business: other modules go through
    # the public API (or the module is split so that what they need becomes public).
    src = Path(sampledrec.__file__).parent
    offences = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                internal = node.level > 0 or (node.module or "").startswith("sampledrec")
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if internal and private and (node.module or "") != "":
                        offences.append(f"{path.relative_to(src)}: imports {alias.name}")
                    if internal:
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("sampledrec"):
                        modules.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in _NAMED_TUPLE_API
            ):
                offences.append(f"{path.relative_to(src)}: uses {node.value.id}.{node.attr}")
    assert offences == []


def test_nothing_outside_the_library_imports_the_sharp_tools() -> None:
    # sampledrec._hazmat (raw CMAC, key wrapping, durable files) is fenced: examples, benchmarks
    # and the documentation use the public API. (Tests may test it directly.)
    root = Path(sampledrec.__file__).parents[2]
    found = [
        str(path.relative_to(root))
        for folder in ("examples", "benchmarks", "docs")
        for path in sorted((root / folder).rglob("*"))
        if path.suffix in (".py", ".md")
        and re.search(r"(import|from) sampledrec(\.| import )_hazmat", path.read_text("utf-8"))
    ]
    assert found == []
