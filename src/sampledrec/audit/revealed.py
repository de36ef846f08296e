"""The revealed-keys file as the auditor reads it: strictly, from its specification.

The file (written by ``sampledrec keys reveal``; docs/auditor-guide.md) is one JSON object::

    {"format": "sampledrec-revealed-keys", "version": 1,
     "epochs": [{"epoch_id": "2026-11-22", "key": "<64 hex digits>",
                 "commitment": "<64 hex digits>"}, ...], ...}

Other members (``store``, ``simulated``) are allowed and ignored. Anything else, a file of the
wrong shape or type included, is refused with :class:`~sampledrec.errors.InvalidArgument`
naming the member at fault: the audit never fails with a Python error on a bad file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Final

from ..errors import InvalidArgument
from ..keys.keyring import RevealedKey, check_epoch_id

__all__ = ["REVEALED_FORMAT", "parse_revealed_keys", "read_revealed_keys"]

REVEALED_FORMAT: Final = "sampledrec-revealed-keys"
_HEX32: Final = re.compile(r"[0-9a-fA-F]{64}")


def read_revealed_keys(path: str | os.PathLike[str]) -> list[RevealedKey]:
    """The keys of a revealed-keys file; :class:`InvalidArgument` if it cannot be read or is
    not one."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(
            f"{path}: cannot read the revealed-keys file ({exc.strerror or exc}); give the "
            "file written by 'sampledrec keys reveal'"
        ) from None
    return parse_revealed_keys(raw, str(path))


def parse_revealed_keys(raw: bytes | str, source: str = "revealed keys") -> list[RevealedKey]:
    """The keys of a revealed-keys document (its bytes or text)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise InvalidArgument(f"{source}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(
            f"{source}: a revealed-keys file is a JSON object, not {_kind(doc)}; give the file "
            "written by 'sampledrec keys reveal'"
        )
    if doc.get("format") != REVEALED_FORMAT:
        raise InvalidArgument(
            f"{source}: 'format' is {doc.get('format')!r}, not {REVEALED_FORMAT!r}: not a "
            "sampledrec revealed-keys file"
        )
    version = doc.get("version", 1)
    if type(version) is not int or version != 1:
        raise InvalidArgument(f"{source}: 'version' is {version!r}; this auditor reads version 1")
    epochs = doc.get("epochs")
    if not isinstance(epochs, list):
        raise InvalidArgument(f"{source}: 'epochs' must be a list of epochs, not {_kind(epochs)}")
    return [_epoch(item, f"{source}: epochs[{i}]") for i, item in enumerate(epochs)]


def _epoch(item: Any, where: str) -> RevealedKey:
    if not isinstance(item, dict):
        raise InvalidArgument(
            f"{where} must be an object with epoch_id, key and commitment, not {_kind(item)}"
        )
    epoch_id = item.get("epoch_id")
    if not isinstance(epoch_id, str):
        raise InvalidArgument(f"{where}.epoch_id must be text (YYYY-MM-DD), not {_kind(epoch_id)}")
    try:
        check_epoch_id(epoch_id)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}.epoch_id: {exc}") from None
    return RevealedKey(
        epoch_id,
        _hex32(item.get("key"), f"{where}.key"),
        _hex32(item.get("commitment"), f"{where}.commitment"),
    )


def _hex32(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        shown = repr(value) if isinstance(value, str) and len(value) <= 80 else _kind(value)
        raise InvalidArgument(f"{where} must be 64 hexadecimal digits (32 bytes), not {shown}")
    return bytes.fromhex(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null (or missing)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__
