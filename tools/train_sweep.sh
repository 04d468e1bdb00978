#!/usr/bin/env bash
# Hyper-parameter sweep for the default models, scored on the dev splits only.
# Usage: tools/train_sweep.sh OUT_DIR   (runs every configuration in parallel; meant for a GPU machine)
set -euo pipefail
out=${1:?output directory}
data=${DATASETS:-../shared/datasets}
mkdir -p "$out"
export CUBLAS_WORKSPACE_CONFIG=:4096:8 PYTHONUNBUFFERED=1
run() {
  local name=$1; shift
  python3 -m streams.cli --log-level WARNING train "$@" --out "$out/$name" >"$out/$name.json" 2>"$out/$name.log" || echo "{\"failed\": \"$name\"}" >"$out/$name.json"
}
ner=(--task disease --data "$data/ncbi_disease/train.conll.tsv" --dev "$data/ncbi_disease/devel.conll.tsv" --max-length 128 --epochs 15)
cls=(--task condition --data "$data/medical_abstracts/train.csv" --dev "$data/medical_abstracts/dev.csv" --max-length 256 --epochs 8)
run disease-r16-lr5e-4 "${ner[@]}" --lora-r 16 --learning-rate 5e-4 &
run disease-r16-lr1e-3 "${ner[@]}" --lora-r 16 --learning-rate 1e-3 &
run disease-r32-lr1e-3 "${ner[@]}" --lora-r 32 --learning-rate 1e-3 &
run disease-r32-lr2e-3 "${ner[@]}" --lora-r 32 --learning-rate 2e-3 &
run condition-r16-lr5e-4 "${cls[@]}" --lora-r 16 --learning-rate 5e-4 &
run condition-r16-lr1e-3 "${cls[@]}" --lora-r 16 --learning-rate 1e-3 &
wait
cat "$out"/*.json
