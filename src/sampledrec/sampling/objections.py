"""Callers who objected to being recorded, kept as keyed pseudonyms (never numbers in clear).

A phone number is normalised to E.164 and turned into ``HMAC-SHA-256(pseudonym_key,
b"sampledrec/v1/caller\\x00" || e164)`` (hex). With the optional ``phonenumbers`` package
(``pip install sampledrec[phone]``) national forms such as ``06 12 34 56 78`` are read in the
store's default region; without it, numbers must be international (``+33 6 ...`` or
``0033 6 ...``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, NoReturn

from .._hazmat.files import write_atomic
from ..errors import InvalidArgument

__all__ = ["ObjectionList", "caller_pseudonym", "check_region", "normalize_number"]

_DOMAIN: Final = b"sampledrec/v1/caller\x00"
_SEPARATORS = re.compile(r"[\s().\-/]")


def normalize_number(number: str, *, region: str | None = None) -> str:
    """Normalise a phone number to E.164 (``+`` and digits).

    >>> normalize_number("0033 6 12-34-56-78")
    '+33612345678'
    """
    if not isinstance(number, str):
        raise InvalidArgument(f"a phone number must be text, got {type(number).__name__}")
    text = number.strip()
    try:
        import phonenumbers
    except ImportError:
        return _international(text)
    compact = _SEPARATORS.sub("", text)
    if region is None and compact.startswith("00"):
        # Without a region phonenumbers knows no international prefix; "00" is the ITU one,
        # and the one the fallback accepts, so both paths read it alike.
        text = "+" + compact[2:]
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise InvalidArgument(
            f"{_mask(text)} is not a phone number; write it in international form "
            "(+33 6 12 34 56 78) or set the store's default region"
        ) from None
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidArgument(f"{_mask(text)} is not a possible phone number")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def _international(text: str) -> str:
    """E.164 without the ``phonenumbers`` package: international forms only."""
    compact = _SEPARATORS.sub("", text)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not re.fullmatch(r"\+[1-9]\d{6,14}", compact):
        raise InvalidArgument(
            f"{_mask(text)} is not an international phone number; write it as +<country code>"
            "<number> (for example +33 6 12 34 56 78), or install sampledrec[phone] to read "
            "national numbers"
        )
    return compact


def check_region(region: object) -> str:
    """A default region for national numbers: an ISO 3166 two-letter code, upper-cased.

    >>> check_region("fr")
    'FR'
    """
    text = region.strip().upper() if isinstance(region, str) else ""
    if not re.fullmatch(r"[A-Z]{2}", text):
        raise InvalidArgument(
            f"region={region!r} is not a country code; give the two-letter ISO 3166 code of the "
            "country whose national numbers callers use (for example FR)"
        )
    try:
        import phonenumbers
    except ImportError:
        return text
    if text not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidArgument(
            f"region={region!r} is not a region phonenumbers knows; give the two-letter ISO 3166 "
            "code of a country (for example FR)"
        )
    return text


def _mask(text: str) -> str:
    # Error messages must not echo a whole phone number.
    digits = re.sub(r"\D", "", text)
    return f"the number ending in {digits[-2:]!r}" if len(digits) >= 2 else "the number given"


def caller_pseudonym(key: bytes, number: str, *, region: str | None = None) -> str:
    """The keyed pseudonym of a caller's number (hex), stable for one store's key."""
    e164 = normalize_number(number, region=region)
    return hmac.new(key, _DOMAIN + e164.encode("ascii"), hashlib.sha256).hexdigest()


class ObjectionList:
    """Pseudonyms of callers who objected to recording. Numbers are never stored.

    Saved as one pseudonym per line in ``STORE/objections.txt`` (0600). Every change is one
    atomic write of the whole file (under ``lock``, the store's lock, when given), so a list is
    never saved half-changed and concurrent additions are all kept.
    """

    def __init__(
        self,
        key: bytes,
        pseudonyms: Iterable[str] = (),
        *,
        path: Path | None = None,
        region: str | None = None,
        lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self._key = key
        self._items = set(pseudonyms)
        self.path = path
        self.region = region
        self._lock = lock

    def __repr__(self) -> str:
        return f"ObjectionList({len(self._items)} callers)"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("an ObjectionList holds the pseudonym key and cannot be pickled")

    def __len__(self) -> int:
        return len(self._items)

    def pseudonyms(self) -> frozenset[str]:
        """Every caller on the list, as their pseudonyms (what an auditor's kit carries)."""
        return frozenset(self._items)

    def pseudonym(self, number: str) -> str:
        return caller_pseudonym(self._key, number, region=self.region)

    def add(self, number: str) -> str:
        """Add a caller; returns their pseudonym. Saved at once when the list has a path."""
        return self.add_all([number])[0]

    def add_all(self, numbers: Iterable[str]) -> list[str]:
        """Add callers, all or none: every number is checked first, then the list is saved in
        one atomic write (when it has a path). Returns their pseudonyms, in order.

        Raises
        ------
        InvalidArgument
            A number is not a phone number; the message gives its position (never the number)
            and nothing is added.
        """
        numbers = list(numbers)
        pseudonyms = []
        for i, number in enumerate(numbers, 1):
            try:
                pseudonyms.append(self.pseudonym(number))
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"number {i} of {len(numbers)}: {exc}; nothing was added"
                ) from None
        if self.path is None:
            self._items.update(pseudonyms)
            return pseudonyms
        with self._lock() if self._lock is not None else contextlib.nullcontext():
            # What is on disk now: another process may have added callers since this was read.
            saved = _read_pseudonyms(self.path)
            known = set(saved)
            new = [p for p in dict.fromkeys(pseudonyms) if p not in known]
            if new:
                text = "".join(p + "\n" for p in [*saved, *new])
                write_atomic(self.path, text.encode("ascii"), replace=True)
            self._items.update(saved, new)
        return pseudonyms

    def contains_pseudonym(self, pseudonym: str) -> bool:
        return pseudonym in self._items

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, str):
            return False
        return self.pseudonym(number) in self._items

    @classmethod
    def load(
        cls,
        key: bytes,
        path: Path,
        *,
        region: str | None = None,
        lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> ObjectionList:
        return cls(key, _read_pseudonyms(path), path=path, region=region, lock=lock)


def _read_pseudonyms(path: Path) -> list[str]:
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]
