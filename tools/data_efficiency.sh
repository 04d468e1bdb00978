#!/usr/bin/env bash
# Data-efficiency curve: train on 50, 100, 200, 300, 500 and all examples (seeded subsets of the train
# split; documents for NER, abstracts for condition), choose the epoch on the dev split, score on the test split.
# Small subsets get at least 300 optimiser steps. Runs every point in parallel (meant for a GPU machine).
# Usage: tools/data_efficiency.sh OUT_DIR ; then tools/efficiency_report.py OUT_DIR
set -uo pipefail
out=${1:?output directory}; data=${DATASETS:-../shared/datasets}; cli=(python3 -m streams.cli --log-level WARNING)
device=${DEVICE:-auto}
mkdir -p "$out"
point() {
  local task=$1 n=$2 train=$3 dev=$4 test=$5 len=$6 epochs=$7
  "${cli[@]}" train --task "$task" --data "$train" --dev "$dev" --max-length "$len" --epochs "$epochs" --min-steps 300 \
      --train-size "$n" --device "$device" --out "$out/$task-$n" > "$out/$task-$n.train.json" 2> "$out/$task-$n.log" &&
  "${cli[@]}" evaluate --task "$task" --model "$out/$task-$n" --data "$test" --device "$device" --json > "$out/$task-$n.eval.json" 2>> "$out/$task-$n.log"
}
tasks=${TASKS:-disease condition}
for n in 50 100 200 300 500 0; do
  [[ " $tasks " == *" disease "* ]] && point disease "$n" "$data/ncbi_disease/train.pubtator.txt" "$data/ncbi_disease/devel.pubtator.txt" "$data/ncbi_disease/test.conll.tsv" 128 15 &
  [[ " $tasks " == *" condition "* ]] && point condition "$n" "$data/medical_abstracts/train.csv" "$data/medical_abstracts/dev.csv" "$data/medical_abstracts/test.csv" 256 8 &
done
wait
tail -n 1 "$out"/*.eval.json
