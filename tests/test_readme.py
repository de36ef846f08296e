"""README.md's code blocks run, in order, in a new folder, as a reader would run them.

* ```toml: the policy the text asks to save as ``policy.toml``: written there, and checked;
* ```python: run one after the other in one namespace (later snippets use earlier names);
* ```console: every ``$ sampledrec ...`` line is run through the CLI's ``main()``, exit code 0;
* ```sh: command synopses; every ``sampledrec ...`` line must name a real command and only
  options that command has (``./dev`` lines are for a developer's clone, not run here).

A block in any other language fails the test: it would not be checked.
"""

from __future__ import annotations

import argparse
import io
import re
import shlex
from pathlib import Path

import pytest

from sampledrec.cli.app import build_parser, main

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str, int]]:
    """(language, code, line) of every fenced block of the README, in order."""
    text = README.read_text(encoding="utf-8")
    return [(m[1], m[2], text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def test_every_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    kinds = []
    for language, code, line in blocks():
        kinds.append(language)
        where = f"README.md, block at line {line}"
        if language == "toml":
            _write_policy(code, where)
        elif language == "python":
            exec(compile(code, where, "exec"), namespace)  # the README's own code
        elif language == "console":
            _run_session(code, where)
        elif language == "sh":
            _check_synopsis(code, where)
        else:
            raise AssertionError(f"{where}: a ```{language} block is not checked by this test")
    assert kinds.count("python") >= 3 and "console" in kinds
    assert (tmp_path / "call.wav").stat().st_size > 44  # the recording snippet did record


def _write_policy(code: str, where: str) -> None:
    from sampledrec import Policy

    Path("policy.toml").write_text(code, encoding="utf-8")
    Policy.load("policy.toml")  # a policy the README shows must be valid


def _run_session(code: str, where: str) -> None:
    for line in code.splitlines():
        if not line.startswith("$ "):
            continue  # output shown in the README
        argv = shlex.split(line[2:], comments=True)
        assert argv[0] == "sampledrec", f"{where}: {line!r} is not a sampledrec command"
        out = io.StringIO()
        code_ = main(argv[1:], out=out)
        assert code_ == 0, f"{where}: {line!r} exited {code_}: {out.getvalue()}"


def _check_synopsis(code: str, where: str) -> None:
    # Backslash continuations joined; comments (whole lines or after a command) dropped.
    joined = re.sub(r"\\\n", " ", code)
    for raw in joined.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("sampledrec "):
            continue
        words = line.split()[1:]
        options = set(re.findall(r"--[a-z][a-z-]*", line))
        for parser, name in _commands(words):
            known = {o for action in parser._actions for o in action.option_strings}
            unknown = sorted(options - known)
            assert not unknown, f"{where}: 'sampledrec {name}' has no option {unknown}"


def _commands(words: list[str]) -> list[tuple[argparse.ArgumentParser, str]]:
    """The parser of the command the synopsis names, for each alternative of ``a|b``."""
    found = []
    parsers: list[tuple[argparse.ArgumentParser, str]] = [(build_parser(), "")]
    for word in words:
        if word.startswith(("-", "[")) or word.isupper() or not parsers:
            break
        following = []
        for parser, name in parsers:
            choices = _subcommands(parser)
            if choices is None:
                found.append((parser, name))
                continue
            for alternative in word.split("|"):
                assert alternative in choices, f"no command 'sampledrec {name} {alternative}'"
                following.append((choices[alternative], f"{name} {alternative}".strip()))
        parsers = following
    return found + parsers


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None
