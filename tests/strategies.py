"""Hypothesis strategies shared by the tests, and helpers that present one batch of call
references in every form :func:`sampledrec.draw_many` accepts.

Call references follow DESIGN.md section 4: 1 to 256 bytes, ``str`` encoded as UTF-8 (never a
lone surrogate) or ``bytes`` as given. Rates are exact values in [0, 1] written as decimal text,
``Fraction``, ``Decimal``, ``int`` or ``float``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st

MAX_REF_BYTES: Final = 256
KEY_BYTES: Final = 32

CallRef: TypeAlias = str | bytes
CallRefInput: TypeAlias = Iterable[str | bytes] | npt.NDArray[Any]
Rate: TypeAlias = str | int | Decimal | Fraction | float


def encode(ref: CallRef) -> bytes:
    """The bytes a reference stands for: UTF-8 for ``str``, as given for ``bytes``."""
    return ref.encode("utf-8") if isinstance(ref, str) else ref


def _truncate_utf8(text: str, max_bytes: int) -> str:
    # Cut on a character boundary; the first character always fits (at most 4 bytes).
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def _no_trailing_nul_text(text: str) -> str:
    return text[:-1] + "\x01" if text.endswith("\x00") else text


def _no_trailing_nul_bytes(raw: bytes) -> bytes:
    return raw[:-1] + b"\x01" if raw.endswith(b"\x00") else raw


def text_refs(
    *, max_bytes: int = MAX_REF_BYTES, array_safe: bool = False
) -> st.SearchStrategy[str]:
    """Text references of 1 to ``max_bytes`` UTF-8 bytes, ASCII and beyond.

    ``array_safe`` avoids a trailing NUL character, which numpy ``"U"`` arrays treat as padding.
    """
    ascii_chars = st.characters(codec="ascii")
    any_chars = st.characters(codec="utf-8")  # every code point but surrogates
    strategy = st.one_of(
        st.text(ascii_chars, min_size=1, max_size=max_bytes),
        st.integers(1, max_bytes).flatmap(lambda n: st.text(ascii_chars, min_size=n, max_size=n)),
        st.text(any_chars, min_size=1, max_size=max_bytes).map(
            lambda s: _truncate_utf8(s, max_bytes)
        ),
    )
    return strategy.map(_no_trailing_nul_text) if array_safe else strategy


def bytes_refs(
    *, max_bytes: int = MAX_REF_BYTES, array_safe: bool = False
) -> st.SearchStrategy[bytes]:
    """Binary references of 1 to ``max_bytes`` bytes, zeros included.

    ``array_safe`` avoids a trailing NUL byte, which numpy ``"S"`` arrays treat as padding.
    """
    strategy = st.one_of(
        st.binary(min_size=1, max_size=max_bytes),
        # An explicit length spreads references over every CMAC block count (1 to 16 blocks).
        st.integers(1, max_bytes).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    )
    return strategy.map(_no_trailing_nul_bytes) if array_safe else strategy


def call_refs(*, array_safe: bool = False) -> st.SearchStrategy[CallRef]:
    """Any valid call reference, ``str`` or ``bytes``."""
    return st.one_of(text_refs(array_safe=array_safe), bytes_refs(array_safe=array_safe))


def call_ref_batches(
    *, min_size: int = 1, max_size: int = 24, array_safe: bool = False
) -> st.SearchStrategy[list[CallRef]]:
    """Batches mixing ``str`` and ``bytes`` references of different lengths (and so of
    different CMAC block counts)."""
    return st.lists(call_refs(array_safe=array_safe), min_size=min_size, max_size=max_size)


def same_length_batches(*, max_size: int = 24) -> st.SearchStrategy[list[bytes]]:
    """Batches of binary references that all have one length, 1 to 256 bytes, so that they
    can also be given as an ``(n, w)`` uint8 array."""
    return st.integers(1, MAX_REF_BYTES).flatmap(
        lambda w: st.lists(st.binary(min_size=w, max_size=w), min_size=1, max_size=max_size)
    )


def keys() -> st.SearchStrategy[bytes]:
    """Raw 32-byte AES-256 keys."""
    return st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES)


@st.composite
def rate_texts(pick: st.DrawFn) -> str:
    """Decimal text of a rate in [0, 1]: ``"0.05"``, ``"1"``, ``"0.000"``, ``"25e-2"``..."""
    places = pick(st.integers(0, 24))
    units = pick(st.integers(0, 10**places))
    if pick(st.booleans()):
        return f"{units}e-{places}"
    whole, frac = divmod(units, 10**places)
    return f"{whole}.{frac:0{places}d}" if places else str(whole)


def rate_fractions() -> st.SearchStrategy[Fraction]:
    """Exact rates in [0, 1], including ones with no finite decimal expansion."""
    return st.one_of(
        st.sampled_from([Fraction(0), Fraction(1)]),
        st.fractions(min_value=0, max_value=1, max_denominator=2**64),
    )


def rates() -> st.SearchStrategy[Rate]:
    """A rate in any accepted form."""
    return st.one_of(
        rate_texts(),
        rate_fractions(),
        rate_texts().map(Decimal),
        st.floats(min_value=0, max_value=1),
        st.sampled_from([0, 1]),
    )


def exact_rate(rate: Rate) -> Fraction:
    """The value a rate stands for, computed without sampledrec: a float through its shortest
    decimal text (``repr``), so that ``0.1`` is exactly one tenth."""
    if isinstance(rate, float):
        return Fraction(repr(rate))
    return Fraction(rate)


def ordered_rate_pairs() -> st.SearchStrategy[tuple[Rate, Rate]]:
    """Two rates ``(low, high)`` with ``low <= high``."""
    return st.tuples(rates(), rates()).map(
        lambda pair: (
            (pair[0], pair[1]) if exact_rate(pair[0]) <= exact_rate(pair[1]) else (pair[1], pair[0])
        )
    )


def _offsets() -> st.SearchStrategy[tzinfo]:
    return st.one_of(
        st.just(UTC),
        st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m))),
    )


def aware_datetimes() -> st.SearchStrategy[datetime]:
    """Aware datetimes in fixed-offset time zones from UTC-23:59 to UTC+23:59."""
    return st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=_offsets(),
    )


def input_forms(refs: Sequence[CallRef]) -> dict[str, CallRefInput]:
    """The same batch in every form ``draw_many`` accepts that can represent it exactly.

    Always: list, tuple, iterator, object array. Fixed-width ``"S"`` arrays when no reference
    ends in a NUL byte (numpy drops trailing NULs); ``"U"`` arrays when every reference is text
    without a trailing NUL; ``(n, w)`` uint8 arrays (C order, Fortran order, read-only) when
    every reference has the same byte length.
    """
    encoded = [encode(ref) for ref in refs]
    objects = np.empty(len(refs), dtype=object)
    objects[:] = list(refs)
    forms: dict[str, CallRefInput] = {
        "list": list(refs),
        "tuple": tuple(refs),
        "iterator": iter(list(refs)),
        "object-array": objects,
    }
    if encoded and not any(raw.endswith(b"\x00") for raw in encoded):
        forms["S-array"] = np.array(encoded, dtype=np.bytes_)
        forms["S-array-wide"] = np.array(encoded, dtype=f"S{max(map(len, encoded)) + 7}")
    if refs and all(isinstance(ref, str) and not ref.endswith("\x00") for ref in refs):
        forms["U-array"] = np.array(list(refs), dtype=np.str_)
    if encoded and len({len(raw) for raw in encoded}) == 1:
        rows = np.frombuffer(b"".join(encoded), dtype=np.uint8).reshape(len(encoded), -1)
        forms["uint8-readonly"] = rows
        forms["uint8-copy"] = rows.copy()
        forms["uint8-fortran"] = np.asfortranarray(rows)
    return forms


# --- SIP, SDP and metadata: mutated messages, streams cut anywhere, generated requests ----------

# Byte strings that tend to break parsers of text protocols: line breaks, quotes, separators,
# huge or negative numbers, invalid UTF-8, XML declarations and entities, SDP and MIME syntax.
NASTY_BYTES: Final = (
    b"",
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b"<",
    b">",
    b'"',
    b"\\",
    b";",
    b",",
    b":",
    b"=",
    b"/",
    b"--",
    b"-1",
    b"0",
    b"4294967296",
    b"9" * 40,
    b"\xff\xfe",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xe2\x80\xa8",
    b"<!DOCTYPE r [<!ENTITY a 'aaaa'>]>",
    b"&a;",
    b"&#0;",
    b"<![CDATA[",
    b"]]>",
    b"<?xml version='1.0' encoding='UTF-16'?>",
    b"xmlns='urn:x'",
    b"v=0",
    b"m=audio 0 RTP/AVP",
    b"a=rtpmap:0 PCMU/8000",
    b"a=inactive",
    b"c=IN IP4",
    b"sip:",
    b"tel:",
    b";tag=",
    b";boundary=",
    b"l: 99\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Type: multipart/mixed;boundary=x\r\n",
)

_MUTATIONS: Final = ("flip", "insert", "delete", "duplicate", "truncate", "bare-lf", "splice")


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_mutations: int = 4) -> bytes:
    """``data`` after 1 to ``max_mutations`` random edits: a byte changed, bytes inserted
    (often from :data:`NASTY_BYTES`), a range deleted, duplicated or replaced, the tail cut,
    CRLF turned into LF."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_mutations))):
        kind = draw(st.sampled_from(_MUTATIONS))
        pos = draw(st.integers(0, len(out)))
        end = draw(st.integers(pos, min(len(out), pos + 64)))
        snippet = draw(st.one_of(st.sampled_from(NASTY_BYTES), st.binary(max_size=8)))
        if kind == "flip" and out:
            out[min(pos, len(out) - 1)] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[pos:pos] = snippet
        elif kind == "delete":
            del out[pos:end]
        elif kind == "duplicate":
            out[pos:pos] = bytes(out[pos:end])
        elif kind == "truncate":
            del out[pos:]
        elif kind == "bare-lf":
            out = bytearray(bytes(out).replace(b"\r\n", b"\n"))
        else:
            out[pos:end] = snippet
    return bytes(out)


def chunked(data: bytes, max_cuts: int = 12) -> st.SearchStrategy[list[bytes]]:
    """``data`` cut at random places into consecutive chunks (some may be empty)."""
    return st.lists(st.integers(0, len(data)), max_size=max_cuts).map(
        lambda cuts: [
            data[start:end]
            for start, end in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True)
        ]
    )


_TOKEN_CHARS: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"


def sip_tokens(max_size: int = 16) -> st.SearchStrategy[str]:
    """RFC 3261 tokens."""
    return st.text(st.sampled_from(_TOKEN_CHARS), min_size=1, max_size=max_size)


def header_values(max_size: int = 40) -> st.SearchStrategy[str]:
    """One-line header values as a parser keeps them: any text without control characters or
    surrogates, not starting or ending with white space."""
    chars = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))
    return st.text(chars, max_size=max_size).map(lambda text: text.strip(" \t"))


@st.composite
def sip_requests(draw: st.DrawFn) -> Any:
    """Valid SIP requests (a :class:`sampledrec.ingest.sip.SipRequest`) with random tokens,
    display names, extra headers and bodies, and a Content-Length."""
    from sampledrec.ingest.sip import Headers, SipRequest

    method = draw(sip_tokens(10))
    host = draw(sip_tokens(12))
    display = draw(
        st.text(
            st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters='"\\'),
            max_size=12,
        )
    )
    body = draw(st.binary(max_size=200))
    headers = [
        ("Via", f"SIP/2.0/UDP {host};branch=z9hG4bK{draw(sip_tokens())}"),
        (
            draw(st.sampled_from(["From", "f"])),
            f'"{display}" <sip:{host}>;tag={draw(sip_tokens())}',
        ),
        (draw(st.sampled_from(["To", "t"])), f"<sip:rec@{host}>"),
        (draw(st.sampled_from(["Call-ID", "i"])), f"{draw(sip_tokens(24))}@{host}"),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    extra = draw(
        st.lists(st.tuples(sip_tokens(12).map(lambda n: "X-" + n), header_values()), max_size=5)
    )
    order = draw(st.permutations(headers + extra))
    order.append((draw(st.sampled_from(["Content-Length", "l"])), str(len(body))))
    return SipRequest(method, f"sip:rec@{host}", Headers(order), body)


#: Any JSON value (no NaN), a few levels deep.
json_values: Final = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def json_paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (keys and indexes from the root; ``()`` is the root)."""
    out = [here]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += json_paths(v, (*here, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += json_paths(v, (*here, i))
    return out


@st.composite
def mutated_document(
    draw: st.DrawFn,
    valid: Any,
    values: st.SearchStrategy[Any] = json_values,
    *,
    marker: str | None = None,
    extra_keys: bool = False,
) -> Any:
    """``valid`` (a JSON document) with one to three members replaced by a value of ``values``
    or removed; with ``marker``, a member is sometimes set to that string (for the caller to
    replace in the text: deep nesting); with ``extra_keys``, unknown keys are sometimes added."""
    doc: Any = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(json_paths(doc)))
        if not where:
            doc = draw(values)
            continue
        parent = doc
        try:
            for step in where[:-1]:
                parent = parent[step]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(where[-1], None)
            elif marker is not None and draw(st.integers(0, 9)) == 0:
                parent[where[-1]] = marker
            else:
                parent[where[-1]] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation changed the shape: try another
        if extra_keys and isinstance(parent, dict) and draw(st.integers(0, 4)) == 0:
            parent[draw(st.text(max_size=8))] = draw(values)  # an extra key
    return doc
