"""The default models' forward alone, one thread: the runner's float32, torch's dynamic int8 (the path shipped until
2026-12-02, still the ICD coder's encoder's when its index was built in int8), ONNX Runtime int8 (the ``int8`` path; for
the classifier also exported whole, without the first-position last layer) and bf16, alternating, over the bench notes
cut into the worker's batches (64 notes, windows sorted by length, token-bounded batches). Prints CPU ms per note and
the largest logit difference from float32. ``python benchmarks/precision_bench.py [--notes N] [--rounds R]``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from agents.clinical.encoder import quantize_int8
from agents.model_dir import load_model
from agents.runners import build_runner
from agents.runners.precision import native_bf16
from schemas.extraction import TaskKind
from streams.ops.bench import bench_texts

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notes", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"bf16 native on this CPU: {native_bf16()}")
    texts = bench_texts(args.notes, ROOT.parent / "shared" / "datasets")
    for task, kind in (("disease", TaskKind.ner), ("condition", TaskKind.classification)):
        plain = build_runner(task, load_model(ROOT / "models" / task, kind), device="cpu")
        torch_int8 = build_runner(task, load_model(ROOT / "models" / task, kind), device="cpu")
        torch_int8.model = quantize_int8(torch_int8.model)
        onnx_int8 = build_runner(task, load_model(ROOT / "models" / task, kind), device="cpu", quantization="int8")
        bf16 = build_runner(task, load_model(ROOT / "models" / task, kind), device="cpu", quantization="bf16")
        chunks = [plain.preprocess(texts[i : i + 64]) for i in range(0, len(texts), 64)]
        reference = [plain.window_logits(w) for w in chunks]
        runners = [("torch float32", plain), ("torch int8", torch_int8), ("onnx runtime int8", onnx_int8), ("torch bf16", bf16)]
        if onnx_int8.first_position:
            whole = build_runner(task, load_model(ROOT / "models" / task, kind), device="cpu", quantization="int8", first_position=False)
            runners.insert(3, ("onnx int8, whole", whole))
        for _ in range(args.rounds):
            for name, runner in runners:
                started = time.process_time()
                logits = [runner.window_logits(w) for w in chunks]
                cpu = time.process_time() - started
                pairs = [(a, b) for got, want in zip(logits, reference, strict=True) for a, b in zip(got, want, strict=True)]
                diff = max(float(np.abs(a - b).max()) for a, b in pairs)
                print(f"{task:9s} {name:18s} {cpu / len(texts) * 1000:7.1f} ms CPU per note   max |logit - float32| {diff:.3f}")


if __name__ == "__main__":
    main()
