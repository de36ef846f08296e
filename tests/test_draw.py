"""Tests of :mod:`sampledrec.sampling.keyed` and the vectorised CMAC under it (DESIGN.md section 4).

Expected values come from ``vectors/draw_v1.json`` (made by ``vectors/make_draw_vectors.py``
with pyca/cryptography alone) and from an oracle written here with pyca's CMAC, never from
sampledrec itself.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sampledrec import draw, draw_many, threshold
from sampledrec._hazmat import cmac as _cmac
from sampledrec.errors import (
    CallRefTypeError,
    InvalidCallRef,
    InvalidKey,
    InvalidRate,
    KeyTypeError,
    SampledrecError,
)
from sampledrec.keys.keyring import EpochKey
from sampledrec.sampling.keyed import call_ref_bytes
from tests import strategies as sx

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS: dict[str, Any] = json.loads((VECTORS_DIR / "draw_v1.json").read_text(encoding="utf-8"))
DRAW_VECTORS: list[dict[str, Any]] = VECTORS["draws"]
NIST: dict[str, Any] = VECTORS["cmac_aes256_nist_sp800_38b"]

KEY = bytes(range(32))
TWO_56 = 2**56

# The public functions, typed to accept anything: the error tests pass values of wrong types.
draw_any = cast(Callable[[object, object], int], draw)
draw_many_any = cast(Callable[[object, object], npt.NDArray[np.uint64]], draw_many)
threshold_any = cast(Callable[[object], int], threshold)


def oracle_tag(key: bytes, message: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(message)
    return mac.finalize()


def oracle_draw(key: bytes, ref: sx.CallRef) -> int:
    return int.from_bytes(oracle_tag(key, sx.encode(ref))[:7], "big")


def vector_ref(vector: dict[str, Any]) -> sx.CallRef:
    if vector["form"] == "text":
        text: str = vector["call_ref"]
        return text
    return bytes.fromhex(vector["call_ref"])


def vectors_by_key() -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for vector in DRAW_VECTORS:
        groups.setdefault(vector["key"], []).append(vector)
    return groups


def as_ints(draws: npt.NDArray[np.uint64]) -> list[int]:
    return [int(value) for value in draws]


# --- known-answer vectors ---------------------------------------------------------------------


def test_vector_file_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location(
        "make_draw_vectors", VECTORS_DIR / "make_draw_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == (VECTORS_DIR / "draw_v1.json").read_text(encoding="utf-8")


def test_vectors_cover_the_brief() -> None:
    lengths = {v["length"] for v in DRAW_VECTORS}
    assert {1, 15, 16, 17, 31, 32, 33, 48, 255, 256} <= lengths
    forms = {(v["form"], v["length"]) for v in DRAW_VECTORS}
    assert {("text", 256), ("bytes", 256), ("text", 1), ("bytes", 1)} <= forms
    assert any(v["form"] == "text" and not v["call_ref"].isascii() for v in DRAW_VECTORS)
    assert len({v["key"] for v in DRAW_VECTORS}) >= 3


@pytest.mark.parametrize("vector", DRAW_VECTORS, ids=[v["name"] for v in DRAW_VECTORS])
def test_draw_known_answer(vector: dict[str, Any]) -> None:
    key = bytes.fromhex(vector["key"])
    ref = vector_ref(vector)
    assert call_ref_bytes(ref).hex() == vector["message"]
    assert len(call_ref_bytes(ref)) == vector["length"]
    expected = int(vector["draw"])
    assert expected == int.from_bytes(bytes.fromhex(vector["tag"])[:7], "big")
    assert draw(key, ref) == expected
    assert draw(EpochKey("2026-11-22", key), ref) == expected
    assert _cmac.cmac(key, call_ref_bytes(ref)).hex() == vector["tag"]
    for rate, selected in vector["selected"].items():
        assert (draw(key, ref) < threshold(rate)) is selected


def test_uuid_text_and_uuid_bytes_are_different_references() -> None:
    by_name = {v["name"]: v for v in DRAW_VECTORS}
    text, raw = by_name["range/uuid-text"], by_name["range/uuid-bytes"]
    assert text["length"] == 36 and raw["length"] == 16
    assert draw(KEY, vector_ref(text)) == int(text["draw"])
    assert draw(KEY, vector_ref(raw)) == int(raw["draw"])
    assert text["draw"] != raw["draw"]


@pytest.mark.parametrize("key_hex", sorted(vectors_by_key()))
def test_draw_many_known_answers_in_one_mixed_batch(key_hex: str) -> None:
    key = bytes.fromhex(key_hex)
    vectors = vectors_by_key()[key_hex]
    refs = [vector_ref(v) for v in vectors]
    expected = [int(v["draw"]) for v in vectors]
    assert len({v["length"] for v in vectors}) > 10  # lengths with different block counts
    for name, form in sx.input_forms(refs).items():
        assert as_ints(draw_many(key, form)) == expected, name
    assert as_ints(draw_many(EpochKey("2026-11-22", key), refs)) == expected


@pytest.mark.parametrize("key_hex", sorted(vectors_by_key()))
def test_draw_many_known_answers_by_length_and_form(key_hex: str) -> None:
    """Groups of one length (uint8 rows), text only ('U' arrays), no trailing NUL ('S')."""
    key = bytes.fromhex(key_hex)
    vectors = vectors_by_key()[key_hex]
    groups: dict[str, list[dict[str, Any]]] = {
        "text": [v for v in vectors if v["form"] == "text"],
        "bytes-no-trailing-nul": [
            v for v in vectors if v["form"] == "bytes" and not v["message"].endswith("00")
        ],
    }
    for length in {v["length"] for v in vectors}:
        groups[f"length-{length}"] = [v for v in vectors if v["length"] == length]
    seen_forms: set[str] = set()
    for group_name, group in groups.items():
        refs = [vector_ref(v) for v in group]
        expected = [int(v["draw"]) for v in group]
        for name, form in sx.input_forms(refs).items():
            seen_forms.add(name)
            assert as_ints(draw_many(key, form)) == expected, (group_name, name)
    assert {"S-array", "U-array", "uint8-copy", "uint8-fortran", "object-array"} <= seen_forms


@pytest.mark.parametrize("key_hex", sorted(vectors_by_key()))
def test_cmac_rows_known_answers_with_lengths(key_hex: str) -> None:
    key = bytes.fromhex(key_hex)
    vectors = vectors_by_key()[key_hex]
    messages = [bytes.fromhex(v["message"]) for v in vectors]
    rows = np.zeros((len(messages), 256), dtype=np.uint8)
    for i, message in enumerate(messages):
        rows[i, : len(message)] = np.frombuffer(message, dtype=np.uint8)
    lengths = np.array([len(m) for m in messages], dtype=np.int64)
    tags = _cmac.cmac_rows(key, rows, lengths)
    assert tags.dtype == np.uint64 and tags.shape == (len(messages), 2)
    tag_bytes = tags.view(np.uint8)
    assert [tag_bytes[i].tobytes().hex() for i in range(len(messages))] == [
        v["tag"] for v in vectors
    ]
    expected = [int(v["draw"]) for v in vectors]
    assert as_ints(_cmac.draws_from_tags(tags)) == expected
    assert as_ints(_cmac.draws_rows(key, rows, lengths)) == expected


def nist_examples() -> list[tuple[bytes, bytes, bytes]]:
    return [
        (bytes.fromhex(e["key"]), bytes.fromhex(e["message"]), bytes.fromhex(e["tag"]))
        for e in NIST["examples"]
    ]


def test_nist_vectors_agree_with_pyca() -> None:
    assert [len(m) for _, m, _ in nist_examples()] == [0, 16, 40, 64]
    for key, message, tag in nist_examples():
        assert oracle_tag(key, message) == tag


def test_nist_subkeys() -> None:
    sub = NIST["subkeys"]
    k1, k2 = _cmac.subkeys(bytes.fromhex(sub["key"]))
    assert (k1.hex(), k2.hex()) == (sub["k1"], sub["k2"])


@pytest.mark.parametrize("length", [16, 40, 64])
def test_nist_cmac_scalar_and_rows(length: int) -> None:
    key, message, tag = next(e for e in nist_examples() if len(e[1]) == length)
    assert _cmac.cmac(key, message) == tag
    rows = np.tile(np.frombuffer(message, dtype=np.uint8), (5, 1))
    tags = _cmac.cmac_rows(key, rows)
    assert all(tags.view(np.uint8)[i].tobytes() == tag for i in range(5))
    assert as_ints(_cmac.draws_rows(key, rows)) == [int.from_bytes(tag[:7], "big")] * 5


def test_nist_cmac_rows_mixed_lengths_in_one_batch() -> None:
    examples = [e for e in nist_examples() if e[1]]
    key = examples[0][0]
    rows = np.zeros((len(examples), 64), dtype=np.uint8)
    for i, (_, message, _) in enumerate(examples):
        rows[i, : len(message)] = np.frombuffer(message, dtype=np.uint8)
    lengths = np.array([len(m) for _, m, _ in examples], dtype=np.int64)
    tags = _cmac.cmac_rows(key, rows, lengths).view(np.uint8)
    assert [tags[i].tobytes() for i in range(len(examples))] == [t for _, _, t in examples]


def test_nist_cmac_empty_message() -> None:
    key, message, tag = nist_examples()[0]
    assert message == b""
    assert _cmac.cmac(key, message) == tag


@pytest.mark.parametrize("pair", VECTORS["thresholds"], ids=lambda p: p["rate"])
def test_threshold_known_answers(pair: dict[str, str]) -> None:
    expected = int(pair["threshold"])
    assert threshold(pair["rate"]) == expected
    assert threshold(Decimal(pair["rate"])) == expected
    assert threshold(Fraction(pair["rate"])) == expected


# --- output dtype and shape -------------------------------------------------------------------


@pytest.mark.parametrize(
    "refs",
    [
        ["a", "bb", "é" * 20, "x" * 256],
        [b"\x01" * 16, b"\x02" * 16, b"\x03" * 16],
        ["only"],
    ],
    ids=["text", "uuid-bytes", "one"],
)
def test_draw_many_returns_a_uint64_vector(refs: list[sx.CallRef]) -> None:
    for name, form in sx.input_forms(refs).items():
        result = draw_many(KEY, form)
        assert isinstance(result, np.ndarray), name
        assert result.dtype == np.uint64, name
        assert result.shape == (len(refs),), name
        assert int(result.max()) < TWO_56, name


@pytest.mark.parametrize(
    "empty",
    [
        [],
        (),
        np.array([], dtype="S4"),
        np.array([], dtype="U4"),
        np.zeros((0, 16), dtype=np.uint8),
        np.empty(0, dtype=object),
    ],
    ids=["list", "tuple", "S", "U", "uint8", "object"],
)
def test_draw_many_of_nothing_is_an_empty_uint64_vector(empty: sx.CallRefInput) -> None:
    result = draw_many(KEY, empty)
    assert result.dtype == np.uint64
    assert result.shape == (0,)


def test_draw_returns_a_python_int_in_range() -> None:
    result = draw(KEY, "call-1")
    assert type(result) is int
    assert 0 <= result < TWO_56


# --- properties -------------------------------------------------------------------------------


@settings(deadline=None)
@given(key=sx.keys(), refs=sx.call_ref_batches())
def test_batch_equals_single_mixed_batches(key: bytes, refs: list[sx.CallRef]) -> None:
    expected = [oracle_draw(key, ref) for ref in refs]
    assert [draw(key, ref) for ref in refs] == expected
    for name, form in sx.input_forms(refs).items():
        assert as_ints(draw_many(key, form)) == expected, name


@settings(deadline=None)
@given(key=sx.keys(), refs=sx.call_ref_batches(array_safe=True))
def test_batch_equals_single_fixed_width_bytes(key: bytes, refs: list[sx.CallRef]) -> None:
    expected = [draw(key, ref) for ref in refs]
    forms = sx.input_forms(refs)
    assert "S-array" in forms
    for name, form in forms.items():
        assert as_ints(draw_many(key, form)) == expected, name


@settings(deadline=None)
@given(key=sx.keys(), refs=st.lists(sx.text_refs(array_safe=True), min_size=1, max_size=24))
def test_batch_equals_single_text_arrays(key: bytes, refs: list[str]) -> None:
    expected = [oracle_draw(key, ref) for ref in refs]
    forms = sx.input_forms(refs)
    assert "U-array" in forms
    for name, form in forms.items():
        assert as_ints(draw_many(key, form)) == expected, name


@settings(deadline=None)
@given(key=sx.keys(), refs=sx.same_length_batches())
def test_batch_equals_single_uint8_rows(key: bytes, refs: list[bytes]) -> None:
    expected = [oracle_draw(key, ref) for ref in refs]
    forms = sx.input_forms(refs)
    assert "uint8-copy" in forms
    for name, form in forms.items():
        assert as_ints(draw_many(key, form)) == expected, name


@settings(deadline=None)
@given(
    key=sx.keys(),
    refs=sx.call_ref_batches(min_size=2, max_size=30),
    chunk_rows=st.integers(1, 7),
)
def test_batch_equals_single_across_chunk_boundaries(
    key: bytes, refs: list[sx.CallRef], chunk_rows: int
) -> None:
    expected = [oracle_draw(key, ref) for ref in refs]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_cmac, "CHUNK_ROWS", chunk_rows)
        for name, form in sx.input_forms(refs).items():
            assert as_ints(draw_many(key, form)) == expected, name


@settings(deadline=None)
@given(key=sx.keys(), refs=sx.call_ref_batches(min_size=2), data=st.data())
def test_draw_many_commutes_with_reordering(
    key: bytes, refs: list[sx.CallRef], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(range(len(refs))))
    draws = draw_many(key, refs)
    assert as_ints(draw_many(key, [refs[i] for i in order])) == [int(draws[i]) for i in order]


@given(key=sx.keys(), ref=sx.call_refs())
def test_draw_is_deterministic(key: bytes, ref: sx.CallRef) -> None:
    first = draw(key, ref)
    assert draw(key, ref) == first
    assert draw(bytearray(key), ref) == first
    assert draw(memoryview(key), ref) == first
    epoch_key = EpochKey("2026-11-22", key)
    assert draw(epoch_key, ref) == first
    assert draw(epoch_key, ref) == first  # the cached CMAC state is copied, never consumed
    assert as_ints(draw_many(key, [ref, ref])) == [first, first]


@given(k1=sx.keys(), k2=sx.keys(), ref=sx.call_refs())
def test_another_key_gives_another_draw(k1: bytes, k2: bytes, ref: sx.CallRef) -> None:
    assume(k1 != k2)
    assert draw(k1, ref) != draw(k2, ref)  # equal with probability 2**-56


@settings(deadline=None)
@given(key=sx.keys(), refs=sx.call_ref_batches(), rates=sx.ordered_rate_pairs())
def test_samples_are_nested_when_the_rate_rises(
    key: bytes, refs: list[sx.CallRef], rates: tuple[sx.Rate, sx.Rate]
) -> None:
    low, high = rates
    assert threshold(low) <= threshold(high)
    draws = draw_many(key, refs)
    selected_low = draws < np.uint64(threshold(low))
    selected_high = draws < np.uint64(threshold(high))
    assert not np.any(selected_low & ~selected_high)
    for ref in refs:
        r = draw(key, ref)
        assert not (r < threshold(low)) or r < threshold(high)


@settings(deadline=None)
@given(key=sx.keys(), refs=sx.call_ref_batches())
def test_rate_zero_never_and_rate_one_always_selects(key: bytes, refs: list[sx.CallRef]) -> None:
    draws = draw_many(key, refs)
    zeros: tuple[sx.Rate, ...] = (0, "0", "0.0", Decimal(0), Fraction(0), 0.0)
    ones: tuple[sx.Rate, ...] = (1, "1", "1.000", Decimal(1), Fraction(1), 1.0)
    for zero in zeros:
        assert not any(int(r) < threshold(zero) for r in draws)
    for one in ones:
        assert all(int(r) < threshold(one) for r in draws)
    assert all(0 <= draw(key, ref) < threshold(1) for ref in refs)


def test_selection_frequency_matches_the_rate() -> None:
    # 2**17 distinct 16-byte references; a fixed key keeps this deterministic.
    n = 1 << 17
    rows = np.zeros((n, 16), dtype=np.uint8)
    rows[:, 8:] = np.arange(n, dtype=">u8").view(np.uint8).reshape(n, 8)
    draws = draw_many(KEY, rows)
    assert len(np.unique(draws)) == n
    for rate in ("0.05", "0.25", "0.5"):
        p = float(Fraction(rate))
        count = int(np.count_nonzero(draws < np.uint64(threshold(rate))))
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(count - n * p) < 6 * sigma, rate


# --- threshold --------------------------------------------------------------------------------


@given(rate=sx.rates())
def test_threshold_is_floor_of_rate_times_two_to_the_56(rate: sx.Rate) -> None:
    exact = sx.exact_rate(rate)
    expected = (exact.numerator * TWO_56) // exact.denominator
    assert threshold(rate) == expected
    assert threshold(rate) == math.floor(exact * TWO_56)
    assert 0 <= threshold(rate) <= TWO_56


@given(text=sx.rate_texts())
def test_threshold_reads_decimal_text_exactly(text: str) -> None:
    assert threshold(text) == threshold(Decimal(text)) == threshold(Fraction(text))
    assert threshold(f"  {text}\n") == threshold(text)


@given(value=st.floats(min_value=0, max_value=1))
def test_threshold_of_a_float_is_that_of_its_shortest_decimal_text(value: float) -> None:
    assert threshold(value) == threshold(repr(value))


@given(rates=sx.ordered_rate_pairs())
def test_threshold_is_monotonic(rates: tuple[sx.Rate, sx.Rate]) -> None:
    assert threshold(rates[0]) <= threshold(rates[1])


def test_threshold_of_one_tenth_in_every_form() -> None:
    tenth = TWO_56 // 10
    assert tenth == 7205759403792793
    forms: tuple[sx.Rate, ...] = ("0.1", " 0.1 ", "1e-1", "0.10", Decimal("0.1"), Fraction(1, 10))
    for rate in (*forms, 0.1):
        assert threshold(rate) == tenth, rate
    # The binary double nearest 0.1 is a little more than one tenth: reading it exactly
    # would give one more.
    assert math.floor(Fraction(0.1) * TWO_56) == tenth + 1


def test_threshold_edges() -> None:
    assert threshold(0) == 0
    assert threshold(1) == TWO_56
    assert threshold("0.25") == 2**54
    assert threshold("1/3") == TWO_56 // 3
    assert threshold(Fraction(1, 3)) == TWO_56 // 3
    assert threshold("0.99999999999999999999") == TWO_56 - 1
    assert threshold("1e-17") == 0  # below 2**-56
    assert threshold(Fraction(1, TWO_56)) == 1
    assert threshold("-0") == 0


@pytest.mark.parametrize(
    "rate",
    [
        "-0.1",
        "1.0000001",
        "2",
        -1,
        2,
        Fraction(3, 2),
        Fraction(-1, 10),
        Decimal("1.5"),
        1.5,
        -0.0001,
        float("nan"),
        float("inf"),
        float("-inf"),
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        "nan",
        "inf",
        "-Infinity",
        True,
        False,
        "abc",
        "",
        "   ",
        "0.1.2",
        "5%",
        "0x1",
        "1/0",
        "one/two",
        None,
        [0.1],
    ],
    ids=repr,
)
def test_invalid_rates_are_refused(rate: object) -> None:
    with pytest.raises(InvalidRate) as info:
        threshold_any(rate)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, SampledrecError)
    assert "rate" in str(info.value)


def test_numpy_float_rate_is_read_or_refused_cleanly() -> None:
    rate = np.float64(0.1)
    try:
        value = threshold(rate)
    except InvalidRate:
        return
    assert value == threshold("0.1")


# --- call reference errors --------------------------------------------------------------------


def assert_refused(
    call: Callable[[], object], error: type[Exception], builtin: type[Exception]
) -> Exception:
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, builtin)
    assert isinstance(info.value, SampledrecError)
    return info.value


def both_apis(ref: object) -> Iterator[Callable[[], object]]:
    yield lambda: draw_any(KEY, ref)
    yield lambda: draw_many_any(KEY, ["fine", ref])
    yield lambda: draw_many(KEY, np.array(["fine", ref], dtype=object))


@pytest.mark.parametrize("ref", ["", b""], ids=["str", "bytes"])
def test_empty_reference_is_refused(ref: sx.CallRef) -> None:
    for call in both_apis(ref):
        error = assert_refused(call, InvalidCallRef, ValueError)
        assert "empty" in str(error)


@pytest.mark.parametrize(
    "array",
    [
        np.array([b"ab", b""]),
        np.array(["ab", ""]),
        np.array(["é", ""]),
        np.array([b"\x00\x00", b"ab"]),
        np.array([b"\x00"]),
        np.array(["\x00"]),
    ],
    ids=["S-empty", "U-empty", "U-nonascii-empty", "S-all-nul", "S-one-nul", "U-one-nul"],
)
def test_empty_element_of_an_array_is_refused(array: npt.NDArray[Any]) -> None:
    error = assert_refused(lambda: draw_many(KEY, array), InvalidCallRef, ValueError)
    assert "empty" in str(error)


@pytest.mark.parametrize(
    "ref",
    [b"x" * 257, "x" * 257, "€" * 86, "\U0001f4de" * 65, bytes(300)],
    ids=["bytes-257", "text-257", "euro-86-chars-258-bytes", "emoji-65-chars", "zeros-300"],
)
def test_reference_over_256_bytes_is_refused(ref: sx.CallRef) -> None:
    for call in both_apis(ref):
        error = assert_refused(call, InvalidCallRef, ValueError)
        assert "256" in str(error)


def test_reference_of_256_bytes_is_accepted_in_every_form() -> None:
    refs: list[sx.CallRef] = [b"\xff" * 256, b"\x01" * 256]
    expected = [oracle_draw(KEY, ref) for ref in refs]
    for name, form in sx.input_forms(refs).items():
        assert as_ints(draw_many(KEY, form)) == expected, name
    text = "é" * 128
    assert draw(KEY, text) == oracle_draw(KEY, text)
    assert as_ints(draw_many(KEY, np.array([text, "a"]))) == [
        oracle_draw(KEY, text),
        oracle_draw(KEY, "a"),
    ]


@pytest.mark.parametrize(
    "array",
    [
        np.array([b"y" * 257, b"z" * 257]),  # every element fills its 257-byte slot
        np.array([b"short", b"y" * 257]),  # one long element among short ones
        np.array(["x" * 257]),  # ASCII text
        np.array(["ok", "€" * 86]),  # UTF-8 over 256 bytes, 86 characters
        np.zeros((2, 257), dtype=np.uint8),
    ],
    ids=["S-full", "S-mixed", "U-ascii", "U-utf8", "uint8-257"],
)
def test_array_element_over_256_bytes_is_refused(array: npt.NDArray[Any]) -> None:
    error = assert_refused(lambda: draw_many(KEY, array), InvalidCallRef, ValueError)
    assert "256" in str(error)


def test_wide_fixed_width_array_of_short_references_is_accepted() -> None:
    array = np.array([b"abc", b"x" * 10], dtype="S300")
    assert as_ints(draw_many(KEY, array)) == [oracle_draw(KEY, b"abc"), oracle_draw(KEY, b"x" * 10)]


@pytest.mark.parametrize(
    "ref",
    [5, None, ["abc"], 1.5, ("a",), {"a": 1}, np.uint8(7)],
    ids=["int", "None", "list", "float", "tuple", "dict", "numpy-int"],
)
def test_reference_of_the_wrong_type_is_refused(ref: object) -> None:
    for call in both_apis(ref):
        error = assert_refused(call, CallRefTypeError, TypeError)
        assert isinstance(error, InvalidCallRef)
        assert "str or bytes" in str(error)


@pytest.mark.parametrize(
    "refs",
    [
        5,
        None,
        "abc",
        b"abc",
        [1, 2],
        [None],
        [["a"]],
        np.array([1.0, 2.0]),
        np.array([1, 2], dtype=np.int64),
        np.array([[1, 2]], dtype=np.uint16),
        np.array([True]),
    ],
    ids=["int", "None", "str", "bytes", "ints", "Nones", "nested", "float64", "int64", "u16", "b"],
)
def test_draw_many_of_the_wrong_type_is_refused(refs: object) -> None:
    assert_refused(lambda: draw_many_any(KEY, refs), CallRefTypeError, TypeError)


@pytest.mark.parametrize(
    "shape",
    [(16,), (2, 0), (2, 257), (2, 4, 4)],
    ids=["1d", "zero-width", "too-wide", "3d"],
)
def test_uint8_array_of_the_wrong_shape_is_refused(shape: tuple[int, ...]) -> None:
    array = np.ones(shape, dtype=np.uint8)
    error = assert_refused(lambda: draw_many(KEY, array), InvalidCallRef, ValueError)
    assert "shape" in str(error)


def test_uint8_rows_count_every_byte() -> None:
    rows = np.array([[97, 98, 99, 0], [0, 0, 0, 0]], dtype=np.uint8)
    result = as_ints(draw_many(KEY, rows))
    assert result == [oracle_draw(KEY, b"abc\x00"), oracle_draw(KEY, bytes(4))]
    assert result[0] != draw(KEY, b"abc")


def test_fixed_width_bytes_drop_trailing_nul_as_documented() -> None:
    array = np.array([b"abc\x00", b"abc", b"a\x00c"])
    assert array.dtype == np.dtype("S4")
    result = as_ints(draw_many(KEY, array))
    assert result == [draw(KEY, b"abc"), draw(KEY, b"abc"), draw(KEY, b"a\x00c")]
    # Outside an 'S' array the trailing NUL is part of the reference.
    assert as_ints(draw_many(KEY, [b"abc\x00"])) == [draw(KEY, b"abc\x00")]
    assert draw(KEY, b"abc\x00") != draw(KEY, b"abc")


@pytest.mark.parametrize("ref", ["\ud800", "call-\udfff-1", "\udc80abc"])
def test_lone_surrogate_is_refused(ref: str) -> None:
    for call in [*both_apis(ref), lambda: draw_many(KEY, np.array(["ok", ref]))]:
        error = assert_refused(call, InvalidCallRef, ValueError)
        assert not isinstance(error, UnicodeError)
        assert "bytes" in str(error)


def test_call_ref_bytes_encodes_text_as_utf8() -> None:
    assert call_ref_bytes("é") == b"\xc3\xa9"
    assert call_ref_bytes(b"\x00\xff") == b"\x00\xff"
    assert call_ref_bytes(bytearray(b"ab")) == b"ab"


# --- key errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 16, 24, 31, 33, 64])
def test_key_of_the_wrong_length_is_refused(length: int) -> None:
    for key in (bytes(length), bytearray(length), memoryview(bytes(length))):
        for call in (partial(draw, key, "call"), partial(draw_many, key, ["call"])):
            error = assert_refused(call, InvalidKey, ValueError)
            assert not isinstance(error, TypeError)
            assert "32" in str(error)


@pytest.mark.parametrize(
    "key",
    ["k" * 32, 32, None, list(range(32)), np.zeros(32, dtype=np.uint8), 1.0],
    ids=["str", "int", "None", "list", "ndarray", "float"],
)
def test_key_of_the_wrong_type_is_refused(key: object) -> None:
    for call in (partial(draw_any, key, "call"), partial(draw_many_any, key, ["call"])):
        error = assert_refused(call, KeyTypeError, TypeError)
        assert isinstance(error, InvalidKey)
        assert "EpochKey" in str(error)


# --- large batches ----------------------------------------------------------------------------


def test_batches_larger_than_one_chunk() -> None:
    n = 2 * _cmac.CHUNK_ROWS + 321
    base = CMAC(algorithms.AES(KEY))

    def expected(messages: list[bytes]) -> list[int]:
        out = []
        for message in messages:
            mac = base.copy()
            mac.update(message)
            out.append(int.from_bytes(mac.finalize()[:7], "big"))
        return out

    # Mixed lengths (1 to 40 bytes, so 1 to 3 blocks) spread over every chunk.
    mixed = [(f"call-{i:06x}-" * 4).encode()[: 1 + (i * 7) % 40] for i in range(n)]
    want = expected(mixed)
    assert len({len(m) for m in mixed}) == 40
    assert as_ints(draw_many(KEY, mixed)) == want
    assert as_ints(draw_many(KEY, np.array(mixed, dtype=np.bytes_))) == want

    # 16-byte binary references take the one-block fast path in every chunk.
    rows = np.zeros((n, 16), dtype=np.uint8)
    rows[:, :8] = np.arange(n, dtype=">u8").view(np.uint8).reshape(n, 8)
    rows[:, 8:] = 0xA5
    assert as_ints(draw_many(KEY, rows)) == expected([bytes(row) for row in rows])
