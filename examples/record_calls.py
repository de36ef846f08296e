"""Record calls as they happen: decide at call set-up, stream 20 ms frames into the vault.

An asyncio loop simulates concurrent calls sending audio frames. Each call is decided when it
starts; the selected ones are recorded, encrypted from their first byte (nothing reaches the disk
before the decision is durable in the log). One recorded call pauses for a card payment (the gap
is kept as silence and listed), one caller objects mid-call (the recording is destroyed). Then
the recordings are listed and one is exported as a WAV file by a QA lead with the
``supervisor`` role (list, listen, export).

Run it:  python examples/record_calls.py [FOLDER]
(without FOLDER it works in a temporary folder and deletes it afterwards)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from sampledrec import Principal, Sampler, Store
from sampledrec.vault.audio import AudioFormat, frames, synthetic_speech
from sampledrec.vault.recorder import Vault

POLICY = """
[[rules]]
name = "support"
match = { queue = "support" }
rate = "0.25"
purpose = "quality"
retention = "3 months"

[default]
rate = "0.05"
purpose = "quality"
retention = "6 months"
"""

FORMAT = AudioFormat("pcm16", 8000, 1)
CALLS = 60
SECONDS = 3.0


async def call(n: int, store: Store, vault: Vault, plan: dict[str, int], out: list[str]) -> None:
    """One call: decide at set-up, then (if selected) stream its frames into a recorder."""
    await asyncio.sleep(0.001 * (n % 7))  # calls start at slightly different times
    sampler = plan_sampler(store, vault)
    attrs = {"queue": "support"}
    decision = sampler.decide(f"{uuid.uuid4()}@pbx.example.com", attrs)
    if not decision.record:
        return
    order = plan["selected"]
    plan["selected"] += 1
    audio = synthetic_speech(SECONDS, sample_rate=FORMAT.sample_rate, seed=n)
    recorder = vault.record(decision, audio_format=FORMAT, attrs=attrs)  # for role scopes
    for i, frame in enumerate(frames(audio, FORMAT, 20)):
        if order == 0 and i == 50:
            recorder.pause()  # the caller reads out a card number: masked as silence
        if order == 0 and i == 100:
            recorder.resume()
        if order == 1 and i == 60:
            recorder.abort()  # the caller objects to the recording: it is destroyed
            out.append(f"call {n}: caller objected, recording {recorder.recording_id} destroyed")
            return
        recorder.write(frame)
        await asyncio.sleep(0)  # the next frame arrives 20 ms later (simulated)
    row = recorder.close()
    out.append(f"call {n}: recorded {row.recording_id} ({row.duration_ms} ms, pauses {row.pauses})")


_samplers: dict[int, Sampler] = {}


def plan_sampler(store: Store, vault: Vault) -> Sampler:
    # One sampler for the whole process (it is thread- and task-safe).
    key = id(vault)
    if key not in _samplers:
        _samplers[key] = store.sampler(log=vault.log)
    return _samplers[key]


async def main(folder: Path) -> int:
    (folder / "policy.toml").write_text(POLICY, encoding="utf-8")
    store = Store.init(folder / "store", policy=folder / "policy.toml")
    report: list[str] = []
    with store.open_log() as log, Vault(store, log) as vault:
        plan = {"selected": 0}
        await asyncio.gather(*(call(n, store, vault, plan, report) for n in range(CALLS)))
        # The host application authenticated its user and knows their roles (policy roles).
        qa_lead = Principal("qa-lead", ("supervisor",))
        rows = vault.recordings(principal=qa_lead)
        sealed = [r for r in rows if r.status == "sealed"]
        print("\n".join(report))
        print(f"{len(sealed)} recordings sealed, {len(rows) - len(sealed)} destroyed")
        if sealed:
            out = vault.export(sealed[0].recording_id, folder / "exported.wav", qa_lead)
            print(f"exported {sealed[0].recording_id} to {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        raise SystemExit(asyncio.run(main(Path(sys.argv[1]))))
    with tempfile.TemporaryDirectory() as tmp:
        raise SystemExit(asyncio.run(main(Path(tmp))))
