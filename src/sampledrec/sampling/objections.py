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
import json
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, NoReturn

from .._hazmat.files import fsync_dir, write_atomic
from ..errors import InvalidArgument, StoreError

__all__ = [
    "ObjectionChange",
    "ObjectionList",
    "caller_pseudonym",
    "check_region",
    "normalize_number",
]

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


class ObjectionChange(NamedTuple):
    """One change of the objection list, as the list's ``on_change`` hook is told of it: the
    callers (their pseudonyms, hex, in order) ``added`` or ``removed``. ``migrated``: callers
    already on the list of a store made before changes were logged, logged once as added."""

    action: Literal["added", "removed"]
    pseudonyms: tuple[str, ...]
    migrated: bool = False


class ObjectionList:
    """Pseudonyms of callers who objected to recording. Numbers are never stored.

    Saved as one pseudonym per line in ``STORE/objections.txt`` (0600). Every change is one
    atomic write of the whole file (under ``lock``, the store's lock, when given), so a list is
    never saved half-changed and concurrent changes are all kept.

    ``on_change`` (a store's list has one: it logs the change durably) is called with every
    change before the file changes. A crash in between leaves the change in
    ``objections.pending`` beside the file; loading the list with a hook finishes it (the hook
    is called again, then the file changes), so a change is never saved without being logged,
    and a logged change is never lost. A list with a path re-reads its file when it changed
    (at most once a second), so that a long-running sampler sees callers added elsewhere.
    """

    def __init__(
        self,
        key: bytes,
        pseudonyms: Iterable[str] = (),
        *,
        path: Path | None = None,
        region: str | None = None,
        lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        on_change: Callable[[ObjectionChange], None] | None = None,
    ) -> None:
        self._key = key
        self._items = frozenset(pseudonyms)
        self.path = path
        self.region = region
        self._lock = lock
        self._on_change = on_change
        self._stamp = _stamp(path) if path is not None else None
        self._checked = time.monotonic()

    def __repr__(self) -> str:
        return f"ObjectionList({len(self._items)} callers)"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("an ObjectionList holds the pseudonym key and cannot be pickled")

    def __len__(self) -> int:
        self._refresh()
        return len(self._items)

    def pseudonyms(self) -> frozenset[str]:
        """Every caller on the list, as their pseudonyms (what an auditor's kit carries)."""
        self._refresh()
        return self._items

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
        pseudonyms = self._pseudonyms(numbers, "added")
        self._change("added", pseudonyms)
        return pseudonyms

    def remove(self, number: str) -> str:
        """Take a caller off the list (they withdrew their objection); returns their
        pseudonym. Saved at once when the list has a path."""
        return self.remove_all([number])[0]

    def remove_all(self, numbers: Iterable[str]) -> list[str]:
        """Take callers off the list, all or none, as :meth:`add_all` adds them; returns their
        pseudonyms, in order (callers not on the list are left as they are)."""
        pseudonyms = self._pseudonyms(numbers, "removed")
        self._change("removed", pseudonyms)
        return pseudonyms

    def change_pseudonyms(
        self, action: Literal["added", "removed"], pseudonyms: Iterable[str]
    ) -> None:
        """Add or take off callers given by their pseudonyms (hex), as :meth:`add_all` and
        :meth:`remove_all` do with numbers: what a node of a deployment does to follow the
        deployment's list, which keeps pseudonyms only."""
        items = list(pseudonyms)
        for p in items:
            if not (
                isinstance(p, str) and len(p) == 64 and all(c in "0123456789abcdef" for c in p)
            ):
                raise InvalidArgument(f"pseudonym {p!r:.80} is not 64 lowercase hex digits")
        self._change(action, items)

    def _pseudonyms(self, numbers: Iterable[str], what: str) -> list[str]:
        numbers = list(numbers)
        pseudonyms = []
        for i, number in enumerate(numbers, 1):
            try:
                pseudonyms.append(self.pseudonym(number))
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"number {i} of {len(numbers)}: {exc}; nothing was {what}"
                ) from None
        return pseudonyms

    def _change(self, action: Literal["added", "removed"], pseudonyms: list[str]) -> None:
        if self.path is None:
            wanted = set(pseudonyms)
            effective = [
                p for p in dict.fromkeys(pseudonyms) if (p in self._items) != (action == "added")
            ]
            if effective and self._on_change is not None:
                self._on_change(ObjectionChange(action, tuple(effective)))
            self._items = self._items | wanted if action == "added" else self._items - wanted
            return
        with self._locked():
            # What is on disk now: another process may have changed the list since it was read.
            saved = _read_pseudonyms(self.path)
            known = set(saved)
            effective = [
                p for p in dict.fromkeys(pseudonyms) if (p in known) != (action == "added")
            ]
            if effective:
                self._apply(ObjectionChange(action, tuple(effective)), saved)
            else:
                self._set(saved)

    def _apply(self, change: ObjectionChange, saved: list[str]) -> None:
        """Log ``change`` (through the hook), then save the list changed: under the lock."""
        assert self.path is not None
        pending = self.path.with_name(PENDING_FILE)
        if self._on_change is not None:
            doc = {"action": change.action, "pseudonyms": list(change.pseudonyms)}
            write_atomic(pending, json.dumps(doc).encode("ascii"), replace=True)
            self._on_change(change)
        if change.action == "added":
            known = set(saved)
            items = [*saved, *(p for p in change.pseudonyms if p not in known)]
        else:
            gone = set(change.pseudonyms)
            items = [p for p in saved if p not in gone]
        write_atomic(self.path, "".join(p + "\n" for p in items).encode("ascii"), replace=True)
        if self._on_change is not None:
            pending.unlink()
            fsync_dir(pending.parent)
        self._set(items)

    def finish_pending(self) -> ObjectionChange | None:
        """Finish a change that was logged (or perhaps not yet) when a crash stopped it before
        the list was saved: log it again (a change logged twice replays as once) and save it.
        Returns it, or ``None`` when there was none. Done by :meth:`load` when the list has a
        hook."""
        if self.path is None:
            return None
        pending = self.path.with_name(PENDING_FILE)
        if not pending.exists():
            return None
        with self._locked():
            change = _read_pending(pending)
            if change is None:
                return None
            self._apply(change, _read_pseudonyms(self.path))
            return change

    def contains_pseudonym(self, pseudonym: str) -> bool:
        self._refresh()
        return pseudonym in self._items

    def is_empty(self) -> bool:
        """Whether nobody is on the list (re-read at most once a second when it changed)."""
        self._refresh()
        return not self._items

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, str):
            return False
        return self.contains_pseudonym(self.pseudonym(number))

    def _refresh(self) -> None:
        """Re-read the file if it changed since it was read (checked once a second)."""
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked < REFRESH_SECONDS:
            return
        self._checked = now
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._stamp = stamp
            self._items = frozenset(_read_pseudonyms(self.path))

    def _set(self, items: Iterable[str]) -> None:
        assert self.path is not None
        self._items = frozenset(items)
        self._stamp = _stamp(self.path)
        self._checked = time.monotonic()

    def _locked(self) -> contextlib.AbstractContextManager[Any]:
        return self._lock() if self._lock is not None else contextlib.nullcontext()

    @classmethod
    def load(
        cls,
        key: bytes,
        path: Path,
        *,
        region: str | None = None,
        lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        on_change: Callable[[ObjectionChange], None] | None = None,
    ) -> ObjectionList:
        """The list saved at ``path``; with ``on_change``, a change a crash left pending is
        finished first (:meth:`finish_pending`)."""
        objections = cls(
            key, _read_pseudonyms(path), path=path, region=region, lock=lock, on_change=on_change
        )
        if on_change is not None:
            objections.finish_pending()
        return objections


#: Beside the list: a change being made (logged, perhaps, and not saved yet).
PENDING_FILE: Final = "objections.pending"
#: How often a list re-reads its file (seconds) when asked.
REFRESH_SECONDS: Final = 1.0


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_pending(path: Path) -> ObjectionChange | None:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {path}: {exc}; restore it or remove it") from None
    action = doc.get("action") if isinstance(doc, dict) else None
    items = doc.get("pseudonyms") if isinstance(doc, dict) else None
    if (
        action not in ("added", "removed")
        or not isinstance(items, list)
        or not all(isinstance(p, str) and _PSEUDONYM.fullmatch(p) for p in items)
    ):
        raise StoreError(
            f"{path} is not a pending change of the objection list (action added or removed, "
            "pseudonyms as 64 hex digits); restore it or remove it"
        )
    return ObjectionChange(action, tuple(items))


_PSEUDONYM: Final = re.compile(r"[0-9a-f]{64}")


def _read_pseudonyms(path: Path) -> list[str]:
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]
