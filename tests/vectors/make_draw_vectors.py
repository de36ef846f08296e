"""Generate ``draw_v1.json``, the known-answer vectors of the draw (DESIGN.md section 4, v1).

The vectors are computed *independently of sampledrec*: only pyca/cryptography's CMAC over AES,
``hashlib`` and exact ``Fraction`` arithmetic, following the spec's formulas:

- ``tag = AES-256-CMAC(K, m)``;
- ``draw = int.from_bytes(tag[:7], "big")``;
- ``T(p) = floor(p * 2**56)`` from the rate's decimal text;
- ``commitment = SHA-256(b"sampledrec/v1/epoch-commit" || epoch_id_utf8 || b"\\x00" || K)``.

Every input is fixed (keys derived from labels, references built from fixed patterns), so running
the script again writes the same file. The NIST SP 800-38B AES-256 examples are checked against
pyca here before they are written, so the file cannot carry a mistyped published value.

Usage::

    python tests/vectors/make_draw_vectors.py          # rewrite draw_v1.json
    python tests/vectors/make_draw_vectors.py --check  # exit 1 if the file is out of date
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

OUTPUT: Final = Path(__file__).with_name("draw_v1.json")

DRAW_BITS: Final = 56
COMMIT_DOMAIN: Final = b"sampledrec/v1/epoch-commit"

# NIST SP 800-38B, appendix D (AES-256 examples): key, the 64-byte example message, and the tags of
# its first 0, 16, 40 and 64 bytes (Mlen = 0, 128, 320 and 512 bits).
NIST_KEY: Final = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"
NIST_MESSAGE: Final = (
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
NIST_TAGS: Final = {
    0: "028962f61b7bf89efc6b551f4667d983",
    16: "28a7023f452e8f82bd4bf28d8c37c35c",
    40: "aaf3d8f1de5640c232f5b169b9c911e6",
    64: "e1992190549f6ed5696a2c056c315410",
}
# The same appendix's subkeys for that key.
NIST_K1: Final = "cad1ed03299eedac2e9a99808621502f"
NIST_K2: Final = "95a3da06533ddb585d3533010c42a0d9"

LENGTHS: Final = (1, 15, 16, 17, 31, 32, 33, 48, 255, 256)
RATES: Final = ("0", "1", "0.1", "0.05", "0.25", "1e-6", "0.333", "0.5", "0.999999")
SELECTION_RATES: Final = ("0.05", "0.25", "0.5")
UUID_TEXT: Final = "f47ac10b-58cc-4372-a567-0e02b2c3d479"


def aes256_cmac(key: bytes, message: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(message)
    return mac.finalize()


def spec_draw(tag: bytes) -> int:
    return int.from_bytes(tag[:7], "big")


def spec_threshold(rate_text: str) -> int:
    value = Fraction(rate_text)  # exact: Fraction parses decimal text, exponent included
    return (value.numerator << DRAW_BITS) // value.denominator


def spec_commitment(epoch_id: str, key: bytes) -> bytes:
    return hashlib.sha256(COMMIT_DOMAIN + epoch_id.encode("utf-8") + b"\x00" + key).digest()


def labelled_key(label: str) -> bytes:
    return hashlib.sha256(b"sampledrec/test-vectors/" + label.encode("utf-8")).digest()


def binary_ref(length: int, label: str) -> bytes:
    """Deterministic pseudo-random bytes (SHA-256 in counter mode over a label)."""
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:length]


def text_ref(length: int) -> str:
    """ASCII text shaped like a SIP Call-ID, exactly ``length`` bytes long."""
    pattern = "a84b4c76e66710@pc33.atlanta.example.com;"
    return (pattern * (length // len(pattern) + 1))[:length]


def keys() -> dict[str, bytes]:
    return {
        "range": bytes(range(32)),
        "label-b": labelled_key("key-b"),
        "label-c": labelled_key("key-c"),
    }


def call_refs() -> list[tuple[str, str | bytes]]:
    """``(name, reference)`` pairs: every byte length of LENGTHS as text and as bytes, and more."""
    refs: list[tuple[str, str | bytes]] = []
    for length in LENGTHS:
        refs.append((f"text-{length}", text_ref(length)))
        refs.append((f"bytes-{length}", binary_ref(length, f"bytes-{length}")))
    refs += [
        # UTF-8 text with 2-, 3- and 4-byte characters; names give the encoded length.
        ("utf8-2byte-16", "appel-été-42@p"),
        ("utf8-3byte-17", "€€€€€-@"),
        ("utf8-4byte-33", "\U0001f4de-" + "x" * 25 + "@é"),
        ("utf8-cjk-48", "通話記録" * 4),
        ("utf8-mixed-255", ("é" * 100 + "€" * 18)[:119] + "x"),
        # One UUID, two different references (DESIGN.md section 4).
        ("uuid-text", UUID_TEXT),
        ("uuid-bytes", uuid.UUID(UUID_TEXT).bytes),
        # Zero bytes count, including trailing ones; 0x80 where CMAC's padding would go.
        ("bytes-16-zero", bytes(16)),
        ("bytes-1-zero", b"\x00"),
        ("bytes-4-trailing-nul", b"abc\x00"),
        ("bytes-3-abc", b"abc"),
        ("bytes-15-x", b"x" * 15),
        ("bytes-16-x15-then-0x80", b"x" * 15 + b"\x80"),
    ]
    return refs


def build() -> dict[str, Any]:
    nist_key = bytes.fromhex(NIST_KEY)
    nist_message = bytes.fromhex(NIST_MESSAGE)
    nist = []
    for length, expected in NIST_TAGS.items():
        tag = aes256_cmac(nist_key, nist_message[:length])
        if tag.hex() != expected:
            raise SystemExit(f"pyca disagrees with NIST SP 800-38B for Mlen={8 * length} bits")
        nist.append({"key": NIST_KEY, "message": nist_message[:length].hex(), "tag": expected})
    ell = Cipher(algorithms.AES(nist_key), modes.ECB()).encryptor().update(bytes(16))
    k1 = _double(ell)
    if k1.hex() != NIST_K1 or _double(k1).hex() != NIST_K2:
        raise SystemExit("subkeys disagree with NIST SP 800-38B")

    draws = []
    for key_name, key in keys().items():
        for name, ref in call_refs():
            message = ref.encode("utf-8") if isinstance(ref, str) else ref
            if not 1 <= len(message) <= 256:
                raise SystemExit(f"{name}: {len(message)} bytes is outside 1..256")
            tag = aes256_cmac(key, message)
            value = spec_draw(tag)
            draws.append(
                {
                    "name": f"{key_name}/{name}",
                    "key": key.hex(),
                    "form": "text" if isinstance(ref, str) else "bytes",
                    "call_ref": ref if isinstance(ref, str) else ref.hex(),
                    "message": message.hex(),
                    "length": len(message),
                    "tag": tag.hex(),
                    "draw": str(value),
                    "selected": {rate: value < spec_threshold(rate) for rate in SELECTION_RATES},
                }
            )

    commitments = [
        {"epoch_id": epoch_id, "key": key.hex(), "commitment": spec_commitment(epoch_id, key).hex()}
        for epoch_id, key in [
            ("2026-11-22", bytes(range(32))),
            ("2026-11-23", bytes(range(32))),
            ("2026-11-22", labelled_key("key-b")),
            ("2028-02-29", labelled_key("key-c")),
            ("2026-11-22", bytes(32)),
        ]
    ]

    return {
        "description": (
            "Known-answer vectors for the sampledrec draw, DESIGN.md section 4 (spec v1). "
            "tag = AES-256-CMAC(key, message); draw = int.from_bytes(tag[:7], 'big'); "
            "threshold = floor(rate * 2**56) from the rate's decimal text; selected iff "
            "draw < threshold; commitment = SHA-256(b'sampledrec/v1/epoch-commit' || "
            "epoch_id_utf8 || 0x00 || key). Large integers are decimal strings; bytes are hex. "
            "For form 'text', call_ref is the text and message its UTF-8 encoding; for form "
            "'bytes', call_ref and message are the same hex."
        ),
        "generator": "tests/vectors/make_draw_vectors.py (pyca/cryptography CMAC, hashlib)",
        "cmac_aes256_nist_sp800_38b": {
            "source": "NIST SP 800-38B appendix D, AES-256 examples",
            "subkeys": {"key": NIST_KEY, "k1": NIST_K1, "k2": NIST_K2},
            "examples": nist,
        },
        "draws": draws,
        "thresholds": [{"rate": rate, "threshold": str(spec_threshold(rate))} for rate in RATES],
        "commitments": commitments,
    }


def _double(block: bytes) -> bytes:
    """Multiply by x in GF(2^128) (SP 800-38B subkey generation), for checking NIST K1/K2."""
    value = int.from_bytes(block, "big") << 1
    if value >> 128:
        value = (value ^ 0x87) & ((1 << 128) - 1)
    return value.to_bytes(16, "big")


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date; run {Path(__file__).name} again", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
