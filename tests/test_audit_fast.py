"""The auditor's column-wise decision reader gives exactly what decoding entry by entry gives."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sampledrec import FixedClock, Store
from sampledrec import audit as audit_mod
from sampledrec.audio import AudioFormat, frames, synthetic_speech
from sampledrec.errors import SampledrecError
from sampledrec.vault import Vault

PCM = AudioFormat("pcm16", 8000, 1)

POLICY = """
[[rules]]
name = "sales"
match = { queue = "sales" }
rate = "0.25"
purpose = "quality"
retention = "6 months"
max_per_agent_per_day = 3

[default]
rate = "0.2"
purpose = "quality"
retention = "2 days"
"""


class _NoKeys:
    def sealing_key(self, kid: str, *, create: bool = False) -> bytes | None:
        raise SampledrecError("no keys here")


def _build(tmp_path: Path) -> Store:
    (tmp_path / "p.toml").write_text(POLICY)
    store = Store.init(tmp_path / "store", policy=tmp_path / "p.toml", simulated=True)
    clock = FixedClock("2030-03-04T10:00:00Z")
    refs: list[str | bytes] = [f"call-{i:03d}" for i in range(40)]
    refs += ["é-ünïcode-" + "x" * 40, "y" * 256, b"\x00\x01binary\x00", "w" * 200, "z" * 17]
    with store.open_log(clock=clock) as log, Vault(store, log, clock=clock) as vault:
        sampler = store.sampler(clock=clock, log=log)
        for i, ref in enumerate(refs):
            attrs: dict[str, object] = {"queue": "sales" if i % 2 else "support"}
            if i % 3:
                attrs["agent"] = f"agent-{i % 4}" * (1 + i % 5)
            attrs["objection"] = i == 7
            d = sampler.decide(ref, attrs, caller="+33 6 12 34 56 78" if i % 5 == 0 else None)
            if d.record and i % 2:  # other entries between the decisions
                with vault.record(d, audio_format=PCM, chunk_size=1024) as rec:
                    for frame in frames(synthetic_speech(0.05, seed=i), PCM, 20):
                        rec.write(frame)
            if i == 20:
                clock.advance(hours=30)
        refs_b = np.asarray([f"{i:08x}@pbx" for i in range(500)], dtype="S")
        sampler.decide_batch(refs_b, {"queue": np.asarray(["sales", "x"] * 250)})
    return store


def _slow_decs(
    store: Store, keyring: Any, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[Any, ...]]:
    with monkeypatch.context() as m:
        m.setattr(
            audit_mod, "_fast_decisions", lambda p, recs, f, k: (np.empty(0, dtype=np.int64), [])
        )
        out: list[tuple[Any, ...]] = []
        for e in audit_mod._entries(store.path / "log", keyring):
            assert not isinstance(e, list)
            if e.type != 0x05:
                out.append(("other", e.index))
            else:
                fl = e.fields
                ref = fl.get("call_ref")
                out.append(
                    (
                        e.index,
                        e.time_us,
                        str(fl.get("epoch_id", "")),
                        bytes(fl.get("policy_version", b"")),
                        str(fl.get("rule", "")),
                        int(fl.get("threshold", -1)),
                        fl.get("draw"),
                        int(fl.get("reason", -1)),
                        ref if isinstance(ref, str | bytes) and not e.sealed else None,
                        fl.get("agent"),
                    )
                )
    return out


def _fast_decs(store: Store, keyring: Any) -> tuple[list[tuple[Any, ...]], int]:
    out: list[tuple[Any, ...]] = []
    fallback = 0
    for e in audit_mod._entries(store.path / "log", keyring):
        if isinstance(e, list):
            out.extend(tuple(getattr(d, s) for s in audit_mod._Dec.__slots__) for d in e)
        elif e.type != 0x05:
            out.append(("other", e.index))
        else:
            fallback += 1
            fl = e.fields
            ref = fl.get("call_ref")
            out.append(
                (
                    e.index,
                    e.time_us,
                    str(fl.get("epoch_id", "")),
                    bytes(fl.get("policy_version", b"")),
                    str(fl.get("rule", "")),
                    int(fl.get("threshold", -1)),
                    fl.get("draw"),
                    int(fl.get("reason", -1)),
                    ref if isinstance(ref, str | bytes) and not e.sealed else None,
                    fl.get("agent"),
                )
            )
    return out, fallback


@pytest.mark.parametrize("keys", ["store", "none"])
def test_column_wise_reading_matches_entry_by_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: str
) -> None:
    store = _build(tmp_path)
    keyring: Any = store.keyring if keys == "store" else _NoKeys()
    slow = _slow_decs(store, keyring, monkeypatch)
    fast, fallback = _fast_decs(store, keyring)
    assert fast == slow
    assert sum(d[0] == "other" for d in slow) > 10, "entries other than decisions in between"
    assert sum(d[0] != "other" for d in slow) == 545
    fast = [d for d in fast if d[0] != "other"]
    assert fallback < 10, "nearly every decision is read column-wise"
    if keys == "store":
        assert {d[8] for d in fast} >= {"call-000", "y" * 256, b"\x00\x01binary\x00"}
        assert any(d[9] is not None for d in fast)
    else:
        assert all(d[8] is None and d[9] is None for d in fast)


def test_ctr_keystream_matches_aes_ctr_across_counter_carries() -> None:
    key = os.urandom(32)
    ivs = [
        os.urandom(16),
        b"\x00" * 8 + b"\xff" * 8,
        b"\xff" * 16,
        b"\x01" * 8 + b"\xff" * 7 + b"\xfe",
    ]
    got = audit_mod._ctr_keystream(
        key, np.frombuffer(b"".join(ivs), dtype=np.uint8).reshape(-1, 16), 3
    )
    for row, iv in zip(got, ivs, strict=True):
        enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        assert row.tobytes() == enc.update(b"\x00" * 48)


def test_unusual_sealed_fields_are_left_to_the_entry_by_entry_path() -> None:
    from sampledrec.logformat import (
        T_DECISION,
        decode_entry,
        encode_fields,
        field_bytes,
        header,
        key_check_value,
        sealed_field,
    )

    key = os.urandom(32)
    kcv = key_check_value(key)
    public = encode_fields(
        T_DECISION,
        {
            "epoch_id": "2030-03-04",
            "policy_version": b"v" * 32,
            "rule": "r",
            "threshold": 5,
            "draw": 7,
            "reason": 1,
        },
    )

    def entry(personal: bytes) -> bytes:
        iv = os.urandom(16)
        ct = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(personal)
        return header(T_DECISION, 123) + public + sealed_field("k/1", kcv, iv, ct)

    personals = [
        field_bytes(0x20, b"\x01ok") + field_bytes(0x21, b"\xff\xfe"),  # agent not UTF-8
        field_bytes(0x20, b"\x01\xff"),  # text reference not UTF-8
        field_bytes(0x20, b"\x00\x00bin\x00"),  # binary, ends with NUL
        field_bytes(0x20, b"\x01x") + field_bytes(0x21, b"agent"),
        b"",  # no personal fields
        field_bytes(0x21, b"a") + field_bytes(0x20, b"\x01x"),  # out of order
        field_bytes(0x20, b"\x02odd kind"),
    ]
    records = [entry(p) for p in personals]
    payload = b"".join(len(r).to_bytes(4, "big") + r for r in records)
    at, decs = audit_mod._fast_decisions(
        payload, records, 100, lambda kid: (key, kcv) if kid == "k/1" else None
    )
    assert at.tolist() == [2, 3, 4, 6]

    def unseal(kid: str, kcv_: bytes, iv: bytes, ct: bytes) -> bytes | None:
        return Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor().update(ct)

    for j, d in zip(at.tolist(), decs, strict=True):
        e = decode_entry(100 + j, records[j], unseal)
        ref = e.fields.get("call_ref")
        assert (d.index, d.time_us, d.epoch, d.version, d.rule) == (
            e.index,
            e.time_us,
            e.fields["epoch_id"],
            e.fields["policy_version"],
            e.fields["rule"],
        )
        assert (d.threshold, d.draw, d.reason, d.ref, d.agent) == (
            e.fields["threshold"],
            e.fields["draw"],
            e.fields["reason"],
            ref,
            e.fields.get("agent"),
        )
    assert decs[0].ref == b"\x00bin\x00"
    assert decs[3].ref == b"odd kind"
