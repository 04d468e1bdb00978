#!/usr/bin/env bash
# Issue 15 on a GPU host: random-weight BERT-base (NER + classifier) end to end on CUDA with 8, 4 and 12 worker
# processes by default (2026-12-04, one H200 with 16 cores: 2 workers 689 notes/s, 4 1,196, 8 1,573, 12 1,576; 8 is
# now the embedded stack's plan there), the GPU's utilisation and memory sampled every 0.5 s beside each run, every
# output line timestamped (so the utilisation of the end-to-end phase can be read off between "measuring peak" and
# "end to end"). Settings travel as EHRSTREAM_* variables (e.g. EHRSTREAM_BATCH_MAX_NOTES=256); MODELS=bert-base-shared
# runs the two tasks as heads over one encoder, which the workers run once per batch (agents/runners/shared_trunk.py).
# Usage: tools/gpu_bench.sh OUT_DIR [NOTES] [WORKER_COUNTS]   (DATASETS: where medical_abstracts/train.csv is)
set -uo pipefail
out=${1:?output directory}; notes=${2:-10000}; counts=${3:-"8 4 12"}; data=${DATASETS:-../shared/datasets}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu.csv"
nproc > "$out/cores.txt"
for w in $counts; do
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 500 > "$out/util-w$w.csv" &
  smi=$!
  timeout "${BENCH_TIMEOUT:-200}" python3 -m streams.cli --log-level WARNING bench --models "${MODELS:-bert-base}" --device "${DEVICE:-cuda}" \
    --notes "$notes" --workers "$w" --latency-seconds "${LATENCY_SECONDS:-10}" --datasets "$data" --json 2>&1 |
    while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done > "$out/bench-w$w.log"
  echo "workers $w: exit ${PIPESTATUS[0]}"
  kill "$smi"
  tail -n 1 "$out/bench-w$w.log" | cut -c 10- | python3 -c "
import json, sys
r = json.loads(sys.stdin.read())
keys = ('raw_notes_per_s', 'raw_reference_notes_per_s', 'e2e_notes_per_s', 'ratio', 'p50_ms', 'p99_ms', 'overhead_cpu_ms_per_note')
print(' '.join(f'{k}={r.get(k)}' for k in keys))" 2>/dev/null || tail -n 5 "$out/bench-w$w.log"
done
