#!/usr/bin/env bash
# One training epoch of each default configuration, alone on the device, and the shipped models scored there.
# Usage: tools/gpu_timing.sh OUT_DIR
set -euo pipefail
out=${1:?output directory}; data=${DATASETS:-../shared/datasets}; cli=(python3 -m streams.cli --log-level WARNING)
mkdir -p "$out"
"${cli[@]}" train --task disease --data "$data/ncbi_disease/train.conll.tsv" --max-length 128 --epochs 1 --out "$out/t-disease" > "$out/timing-disease.json" 2>/dev/null
"${cli[@]}" train --task condition --data "$data/medical_abstracts/train.csv" --max-length 256 --epochs 1 --out "$out/t-condition" > "$out/timing-condition.json" 2>/dev/null
"${cli[@]}" evaluate --task disease --data "$data/ncbi_disease/test.conll.tsv" --device cuda --json > "$out/shipped-disease-cuda.json" 2>/dev/null
"${cli[@]}" evaluate --task condition --data "$data/medical_abstracts/test.csv" --device cuda --json > "$out/shipped-condition-cuda.json" 2>/dev/null
tail -n 1 "$out"/*.json
