"""The ICD-10-CM coder alone, on each device: what it costs per note and whether the devices agree.

``mentions OUT.json``: runs the configured worker pipeline (default models, one worker's batches of 48 notes) over
the bench's notes (the medical abstracts' train split) and writes the mentions the coder was asked to code, batch by
batch. ``time MENTIONS.json``: a fresh coder per device codes those batches twice, the second time with its cache
emptied (shapes it has seen, none of its answers); per pass, the process's CPU ms and wall ms per note, and how many
first codes differ from the first device's. One torch thread, as a worker with one core. Prints one JSON object.

Usage (repository root): ``python tools/coder_probe.py mentions /tmp/mentions.json [--notes 300]``, then
``python tools/coder_probe.py time /tmp/mentions.json --devices cpu,cuda [--index models/icd10cm]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def record_mentions(out: Path, notes: int, datasets: Path) -> None:
    from agents.clinical.coding import Icd10Coder
    from agents.types import InRecord
    from schemas.clinical_note import ClinicalNote
    from schemas.codec import Codecs
    from streams.ops.bench import bench_texts
    from streams.settings import Settings
    from streams.worker import build_pipeline

    settings = Settings.load(Path("ehrstream.toml"))
    codecs = Codecs()
    pipeline, _ = build_pipeline(settings, codecs)
    seen: list[list[str]] = []
    original = Icd10Coder.candidates

    def recording(self: Icd10Coder, mentions: list[str]) -> list[list[dict[str, Any]]]:
        seen.append(list(mentions))
        return original(self, mentions)

    Icd10Coder.candidates = recording  # type: ignore[method-assign]
    encode = codecs.of(ClinicalNote).encode
    records = [
        InRecord(
            encode(ClinicalNote(note_id=f"n{i}", patient_id="p", note_type="t", created_at="2026-11-01T00:00:00Z", text=t, source="s")),
            b"k",
            "ehr.notes",
            0,
            i,
        )
        for i, t in enumerate(bench_texts(notes, datasets))
    ]
    for lo in range(0, len(records), 48):
        pipeline.process(records[lo : lo + 48])
    out.write_text(json.dumps({"notes": notes, "batches": seen}), encoding="utf-8")
    print(json.dumps({"notes": notes, "batches": len(seen), "mentions": sum(map(len, seen))}))


def time_coder(mentions: Path, devices: list[str], index: Path) -> None:
    import torch

    from agents.clinical.coding import Icd10Coder

    torch.set_num_threads(1)
    data = json.loads(mentions.read_text(encoding="utf-8"))
    notes, batches = int(data["notes"]), data["batches"]
    from agents.runners.precision import native_bf16

    report: dict[str, Any] = {"notes": notes, "mentions": sum(map(len, batches)), "cpu_bf16": native_bf16()}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
    first: list[str] | None = None
    for device in devices:
        started = time.perf_counter()
        coder = Icd10Coder.load(index, device=device)
        passes = []
        for _ in range(2):
            coder._cache.clear()
            cpu, wall = time.process_time(), time.perf_counter()
            found = [c for batch in batches for c in coder.candidates(batch)]
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            codes = [row[0]["code"] if row else "" for row in found]
            first = codes if first is None else first
            differ = sum(a != b for a, b in zip(first, codes, strict=True))
            per_note = {"cpu_ms_per_note": round(1000 * cpu / notes, 3), "wall_ms_per_note": round(1000 * wall / notes, 3)}
            passes.append({**per_note, "first_codes_differ": differ})
        report[device] = {"load_s": round(time.perf_counter() - started, 2), "encoder": coder.encoder.quantization, "passes": passes}
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mentions")
    m.add_argument("out", type=Path)
    m.add_argument("--notes", type=int, default=300)
    m.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    t = sub.add_parser("time")
    t.add_argument("mentions", type=Path)
    t.add_argument("--devices", default="cpu")
    t.add_argument("--index", type=Path, default=Path("models/icd10cm"))
    args = parser.parse_args()
    if args.command == "mentions":
        record_mentions(args.out, args.notes, args.datasets)
    else:
        time_coder(args.mentions, args.devices.split(","), args.index)


if __name__ == "__main__":
    main()
