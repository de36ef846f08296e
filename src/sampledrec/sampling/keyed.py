"""The keyed draw of DESIGN.md §4, normative specification v1.

``tag = AES-256-CMAC(K, m)``, ``r = int.from_bytes(tag[:7], "big")``, and a call is selected iff
``r < T(p)`` with ``T(p) = floor(p * 2**56)`` computed exactly from the rate's decimal text.

:func:`draw` computes one draw, :func:`draw_many` a whole array of them in a handful of batched
AES calls (see :mod:`sampledrec._cmac`), and :func:`threshold` turns a rate into ``T(p)``.

Examples
--------
>>> key = bytes(range(32))
>>> r = draw(key, "1700000000.42@pbx")
>>> 0 <= r < 2**56
True
>>> threshold("0.1") == 2**56 // 10
True
>>> bool(r < threshold(1)) and not r < threshold(0)
True
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import TYPE_CHECKING, Final, TypeAlias

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import cmac as _pyca_cmac
from cryptography.hazmat.primitives.ciphers import algorithms

from .._hazmat import cmac as _cmac
from ..errors import (
    CallRefTypeError,
    InvalidCallRef,
    InvalidKey,
    InvalidRate,
    KeyTypeError,
    RateTypeError,
)

if TYPE_CHECKING:
    from ..keys.keyring import EpochKey

__all__ = [
    "DRAW_BITS",
    "MAX_CALL_REF_BYTES",
    "KeyLike",
    "RateLike",
    "call_ref_bytes",
    "draw",
    "draw_many",
    "rate_fraction",
    "rate_text",
    "tags_many",
    "threshold",
]

DRAW_BITS: Final = 56
MAX_CALL_REF_BYTES: Final = 256
KEY_BYTES: Final = 32
MAX_RATE_DIGITS: Final = 400  # enough for any float (5e-324); bounds the work
_DECIMAL_TEXT: Final = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII
)
_FRACTION_TEXT: Final = re.compile(r"[0-9]+/[0-9]+", re.ASCII)

KeyLike: TypeAlias = "bytes | bytearray | memoryview | EpochKey"
RateLike: TypeAlias = "str | int | Decimal | Fraction | float"
CallRefs: TypeAlias = "Iterable[str | bytes] | npt.NDArray[np.generic]"


def _key_bytes(key: object) -> bytes:
    from ..keys.keyring import EpochKey

    if isinstance(key, EpochKey):
        return key.secret_bytes()
    if isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
        if len(raw) != KEY_BYTES:
            raise InvalidKey(
                f"key must be {KEY_BYTES} bytes for AES-256-CMAC, got {len(raw)} bytes; "
                "use the epoch key from the keyring (Keyring.epoch_key) or os.urandom(32)"
            )
        return raw
    raise KeyTypeError(
        f"key must be bytes or an EpochKey, got {type(key).__name__}; "
        "pass the 32 raw key bytes or the EpochKey from the keyring"
    )


def call_ref_bytes(call_ref: object) -> bytes:
    """Return the bytes of a call reference, validated: a ``str`` as UTF-8, ``bytes`` as given.

    Raises :class:`~sampledrec.errors.InvalidCallRef` for an empty or over-long reference and
    :class:`~sampledrec.errors.CallRefTypeError` for anything but ``str``/``bytes``.
    """
    if isinstance(call_ref, str):
        try:
            raw = call_ref.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidCallRef(
                f"call_ref={_show(call_ref)} is not valid Unicode text ({exc.reason}); "
                "pass the reference as bytes if it is not text"
            ) from None
    elif isinstance(call_ref, bytes | bytearray | memoryview):
        raw = bytes(call_ref)
    else:
        raise CallRefTypeError(
            f"call_ref must be str or bytes, got {type(call_ref).__name__}; "
            "pass the switch's Call-ID or unique id as text, or 16 raw bytes for a binary UUID"
        )
    if not raw:
        raise InvalidCallRef(
            "call_ref is empty; pass the identifier the switch or carrier gives the call "
            "(a SIP Call-ID, a PBX unique id, a UUID)"
        )
    if len(raw) > MAX_CALL_REF_BYTES:
        raise InvalidCallRef(
            f"call_ref={_show(call_ref)} is {len(raw)} bytes, more than the "
            f"{MAX_CALL_REF_BYTES} allowed; use a shorter identifier for the call, such as "
            "the PBX unique id or a UUID"
        )
    return raw


def _show(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def draw(key: KeyLike, call_ref: str | bytes) -> int:
    """The 56-bit draw of one call: ``int.from_bytes(AES-256-CMAC(key, call_ref)[:7], "big")``.

    ``call_ref`` is 1 to 256 bytes; a ``str`` is encoded as UTF-8.
    """
    from ..keys.keyring import EpochKey

    msg = call_ref_bytes(call_ref)
    if isinstance(key, EpochKey):
        mac = key.new_cmac()
    else:
        mac = _pyca_cmac.CMAC(algorithms.AES(_key_bytes(key)))
    mac.update(msg)
    return int.from_bytes(mac.finalize()[:7], "big")


def draw_many(key: KeyLike, call_refs: CallRefs) -> npt.NDArray[np.uint64]:
    """The draws of many calls at once, as a uint64 array equal to :func:`draw` element-wise.

    ``call_refs`` may be:

    - a list (or any iterable) of ``str``/``bytes`` references;
    - a numpy array of fixed-width bytes (dtype ``"S…"``). numpy pads such strings with NUL
      bytes and drops trailing NULs when reading an element, so a reference that really ends in
      ``b"\\x00"`` cannot be given this way: pass it in a list or as an ``(n, w)`` uint8 array;
    - a numpy array of str (dtype ``"U…"``), encoded as UTF-8 (trailing NUL characters are
      padding, as for ``"S…"``);
    - an ``(n, w)`` uint8 array whose rows are ``w``-byte references (``w`` from 1 to 256),
      such as 16-byte binary UUIDs; every byte of a row counts, zeros included.

    The computation is vectorised over the whole array (batched AES-ECB per CMAC column).
    """
    raw_key = _key_bytes(key)
    msgs, lengths = _as_rows(call_refs)
    if msgs.shape[0] == 0:
        return np.empty(0, dtype=np.uint64)
    return _cmac.draws_rows(raw_key, msgs, lengths)


def tags_many(key: KeyLike, call_refs: CallRefs) -> tuple[bytes, npt.NDArray[np.uint64]]:
    """The full AES-CMAC tags of many calls, and their draws (as :func:`draw_many`).

    The tags are one ``bytes`` object, 16 bytes per call in order (``tags[16 * i:16 * i + 16]``
    is the tag of call ``i``): what the sampler remembers a call by. ``call_refs`` as for
    :func:`draw_many`.
    """
    raw_key = _key_bytes(key)
    msgs, lengths = _as_rows(call_refs)
    if msgs.shape[0] == 0:
        return b"", np.empty(0, dtype=np.uint64)
    tags = _cmac.cmac_rows(raw_key, msgs, lengths)
    return tags.tobytes(), _cmac.draws_from_tags(tags)


def _as_rows(call_refs: object) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64] | None]:
    """Normalise every accepted input form to ``(rows, lengths)`` for :func:`_cmac.cmac_rows`."""
    if isinstance(call_refs, str | bytes | bytearray):
        raise CallRefTypeError(
            f"call_refs must be a sequence of references, got a single {type(call_refs).__name__}; "
            "use draw() for one reference or wrap it in a list"
        )
    if isinstance(call_refs, np.ndarray):
        arr = call_refs
        if arr.dtype == np.uint8:
            if arr.ndim != 2 or not 1 <= arr.shape[1] <= MAX_CALL_REF_BYTES:
                raise InvalidCallRef(
                    f"a uint8 array of call references must have shape (n, w) with w from 1 to "
                    f"{MAX_CALL_REF_BYTES}, got shape {arr.shape}; give one reference per row"
                )
            return np.ascontiguousarray(arr), None
        if arr.dtype.kind not in "USO":
            raise CallRefTypeError(
                f"call_refs array has dtype {arr.dtype}; use dtype 'S' (bytes), 'U' (str), "
                "object holding str/bytes, or an (n, w) uint8 array"
            )
        if arr.ndim != 1:
            raise InvalidCallRef(
                f"an array of call references must be one-dimensional, got shape {arr.shape}; "
                "flatten it first (or give an (n, w) uint8 array of binary references)"
            )
        if arr.dtype.kind == "U":
            return _rows_from_unicode(arr)
        if arr.dtype.kind == "S":
            return _rows_from_fixed_bytes(arr)
        call_refs = arr.tolist()
    if not isinstance(call_refs, Iterable):
        raise CallRefTypeError(
            f"call_refs must be a list or numpy array of references, got {type(call_refs).__name__}"
        )
    encoded = list(map(call_ref_bytes, call_refs))
    n = len(encoded)
    if n == 0:
        return np.zeros((0, 1), dtype=np.uint8), None
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
    width = int(lengths.max())
    # numpy copies each reference into a NUL-padded slot of an 'S' array in C, tens of times
    # faster than scattering the bytes with fancy indexing. Every byte is kept in memory (only
    # *reading* an element drops trailing NULs), and ``lengths`` says where each one ends.
    rows = np.array(encoded, dtype=f"S{width}").view(np.uint8).reshape(n, width)
    return rows, None if int(lengths.min()) == width else lengths


def _rows_from_fixed_bytes(
    arr: npt.NDArray[np.bytes_],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64] | None]:
    n = arr.shape[0]
    width = arr.dtype.itemsize
    if n == 0:
        return np.zeros((0, 1), dtype=np.uint8), None
    rows = np.ascontiguousarray(arr).view(np.uint8).reshape(n, width)
    # Checking the last byte of every row is a pass over all of the array's memory; a NUL
    # there in the first row already shows that some rows are shorter, so skip it then.
    if width and rows[0, -1] and np.all(rows[:, -1]):
        if width > MAX_CALL_REF_BYTES:
            _too_long(arr, np.full(n, width))
        return rows, None
    # numpy's own reading of an 'S' element: everything up to the last non-NUL byte.
    lengths = np.strings.str_len(arr).astype(np.int64)
    _check_lengths(arr, lengths)
    return rows, lengths


def _rows_from_unicode(
    arr: npt.NDArray[np.str_],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64] | None]:
    n = arr.shape[0]
    if n == 0:
        return np.zeros((0, 1), dtype=np.uint8), None
    chars = np.ascontiguousarray(arr).view(np.uint32).reshape(n, arr.dtype.itemsize // 4)
    if chars.size and int(chars.max()) < 0x80:
        # ASCII: UTF-8 is one byte per character, so narrow the code points in one pass.
        return _rows_from_fixed_bytes(chars.astype(np.uint8).view(f"S{chars.shape[1]}").reshape(n))
    try:
        encoded = np.char.encode(arr, "utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: let the scalar path name the offending reference.
        return _as_rows(arr.tolist())
    return _rows_from_fixed_bytes(encoded)


def _check_lengths(arr: npt.NDArray[np.generic], lengths: npt.NDArray[np.int64]) -> None:
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise InvalidCallRef(
            f"call_refs[{int(empty[0])}] is empty ({empty.size} empty references in all); "
            "every call needs the identifier the switch or carrier gives it"
        )
    if int(lengths.max()) > MAX_CALL_REF_BYTES:
        _too_long(arr, lengths)


def _too_long(arr: npt.NDArray[np.generic], lengths: npt.NDArray[np.int64]) -> None:
    bad = int(np.flatnonzero(lengths > MAX_CALL_REF_BYTES)[0])
    raise InvalidCallRef(
        f"call_refs[{bad}]={_show(arr[bad])} is {int(lengths[bad])} bytes, more than the "
        f"{MAX_CALL_REF_BYTES} allowed; use a shorter identifier for the call"
    )


def rate_fraction(rate: object) -> Fraction:
    """The exact value of a rate: decimal text, int, ``Decimal``, ``Fraction``, or a float read
    through its shortest decimal text (``repr``), so ``0.1`` means exactly one tenth."""
    if isinstance(rate, bool):
        raise InvalidRate(f"rate={rate!r} is a boolean; write the rate as a number such as '0.05'")
    value: Fraction
    if isinstance(rate, Fraction):
        value = rate
    elif isinstance(rate, int):
        value = Fraction(rate)
    elif isinstance(rate, float):
        if not math.isfinite(rate):
            raise InvalidRate(f"rate={rate!r} is not a finite number; use a value from 0 to 1")
        # float.__repr__, not repr(): numpy's float64 reprs as 'np.float64(0.1)'.
        value = Fraction(Decimal(float.__repr__(rate)))
    elif isinstance(rate, str) and "/" in rate:
        if not _FRACTION_TEXT.fullmatch(rate.strip()):
            raise InvalidRate(
                f"rate={rate!r} is not a fraction; write it like '1/3' or as a decimal '0.05'"
            )
        try:
            value = Fraction(rate.strip())
        except (ValueError, ZeroDivisionError):
            raise InvalidRate(
                f"rate={rate!r} is not a fraction; write it like '1/3' or as a decimal '0.05'"
            ) from None
    elif isinstance(rate, Decimal | str):
        if isinstance(rate, str) and not _DECIMAL_TEXT.fullmatch(rate.strip()):
            raise InvalidRate(f"rate={rate!r} is not a decimal number; write it like '0.05' for 5%")
        try:
            dec = Decimal(rate.strip() if isinstance(rate, str) else rate)
        except InvalidOperation:
            raise InvalidRate(
                f"rate={rate!r} is not a decimal number; write it like '0.05' for 5%"
            ) from None
        if not dec.is_finite():
            raise InvalidRate(f"rate={rate!r} is not a finite number; use a value from 0 to 1")
        # Bound the exponent before converting: '1e-999999999' would build a huge integer.
        exponent = dec.as_tuple().exponent
        if dec.adjusted() > 0 or (isinstance(exponent, int) and exponent < -MAX_RATE_DIGITS):
            raise InvalidRate(
                f"rate={rate!r} must be between 0 and 1 with at most {MAX_RATE_DIGITS} "
                "decimal places; write it like '0.05' for 5%"
            )
        value = Fraction(dec)
    else:
        raise RateTypeError(
            f"rate must be a decimal string, int, Decimal or Fraction, got {type(rate).__name__}"
        )
    if not 0 <= value <= 1:
        raise InvalidRate(
            f"rate={rate!r} must be between 0 and 1; use 0 to disable recording for this rule "
            "and, for example, '0.05' for 5%"
        )
    return value


def rate_text(rate: object) -> str:
    """The decimal text of a rate, as stored in logs and canonical policies.

    Strings are kept as written (stripped); floats use ``repr``; exact values that have no
    finite decimal expansion (``Fraction(1, 3)``) are written as ``"1/3"``.
    """
    rate_fraction(rate)  # validates
    if isinstance(rate, str):
        return rate.strip()
    if isinstance(rate, float):
        return float.__repr__(rate)
    if isinstance(rate, Fraction):
        den = rate.denominator
        while den % 2 == 0:
            den //= 2
        while den % 5 == 0:
            den //= 5
        if den != 1:
            return f"{rate.numerator}/{rate.denominator}"
        digits = 0
        while (rate * 10**digits).denominator != 1:
            digits += 1
        return f"{Decimal(rate.numerator) / Decimal(rate.denominator):.{digits}f}"
    return str(rate)


def threshold(rate: RateLike) -> int:
    """``T(p) = floor(p * 2**56)``, computed exactly; a call is selected iff ``draw < T(p)``.

    >>> threshold("0.25") == 2**54
    True
    >>> threshold(0.1) == threshold("0.1") == (2**56) // 10
    True
    """
    value = rate_fraction(rate)
    return (value.numerator << DRAW_BITS) // value.denominator
