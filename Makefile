# Two commands do all the set-up on a fresh machine (only Python needed):
#   make demo   - create .venv, install, run the whole path on the embedded stack
#   make test   - create .venv if missing, lint, check the layers, type-check, run the test suite
# Another Python: make test PYTHON=python3.13 VENV=.venv313 (3.11, 3.12 and 3.13 are supported; CI tests 3.11 and 3.13)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATASETS ?= ../shared/datasets
NOTES  ?= 300

.PHONY: venv browser demo test lint layers typecheck unit models evaluate bench soak clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: pinned 2.13.0 resolves to the CPU build on this machine's disk, not a multi-GB CUDA download
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The review app's end-to-end test drives a real headless Chromium (Debian's chromium + chromium-driver).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
		$$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
		|| { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	fi
	@chromium --version 2>/dev/null | head -1

# The ICD-10-CM index the disease task codes with (ehrstream.toml: coding = "icd10cm"): built once, 1-9 minutes on 2 cores (demo, up and bench also build it when missing)
models/icd10cm/index.json: | venv
	$(BIN)/ehrstream codes build

demo: venv models/icd10cm/index.json
	$(BIN)/ehrstream demo --notes $(NOTES) --datasets $(DATASETS)

lint: venv
	$(BIN)/ruff check .

# schemas <- agents <- streams, as contracted in pyproject.toml [tool.importlinter]
layers: venv
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

# the index first: the demo tests run the demo as a user does, and would otherwise build it inside a test
unit: venv browser models/icd10cm/index.json
	$(BIN)/pytest

test: lint layers typecheck unit

# Retrain the shipped default models (GPU if present, CPU otherwise). Hyper-parameters were chosen on the
# dev splits with tools/train_sweep.sh; test splits are only read by `make evaluate`.
models: venv
	$(BIN)/ehrstream train --task disease --data $(DATASETS)/ncbi_disease/train.conll.tsv --dev $(DATASETS)/ncbi_disease/devel.conll.tsv \
		--max-length 128 --epochs 15 --lora-r 16 --learning-rate 5e-4 --out .stage/disease-ncbi
	# then clinical-note layout: silver labels from the Synthea export's coded conditions (6 patients train, 3 dev),
	# NCBI-disease train/dev alongside so the model keeps what it learned
	mkdir -p .stage
	$(BIN)/ehrstream silver-labels --export $(DATASETS)/synthea_fhir --train-out .stage/silver-train.jsonl --dev-out .stage/silver-dev.jsonl \
		--add-train $(DATASETS)/ncbi_disease/train.conll.tsv --add-dev $(DATASETS)/ncbi_disease/devel.conll.tsv
	$(BIN)/ehrstream train --task disease --data .stage/silver-train.jsonl --dev .stage/silver-dev.jsonl --init-from .stage/disease-ncbi \
		--max-length 128 --epochs 2 --lora-r 16 --learning-rate 2e-4 --out models/disease
	$(BIN)/ehrstream train --task condition --data $(DATASETS)/medical_abstracts/train.csv --dev $(DATASETS)/medical_abstracts/dev.csv \
		--max-length 256 --epochs 8 --lora-r 16 --learning-rate 5e-4 --out models/condition

evaluate: venv
	$(BIN)/ehrstream evaluate --task disease --data $(DATASETS)/ncbi_disease/test.conll.tsv --json
	$(BIN)/ehrstream evaluate --task condition --data $(DATASETS)/medical_abstracts/test.csv --json

bench: venv
	$(BIN)/python benchmarks/codec_bench.py
	$(BIN)/python benchmarks/precision_bench.py

# Memory under a steady load (a benchmark, not a test): 10 minutes at 2 notes/s on the embedded stack.
soak: venv
	$(BIN)/ehrstream --log-level WARNING soak --minutes 10 --rate 2 --sample-seconds 20 --datasets $(DATASETS)

clean:
	rm -rf $(VENV) .ehrstream .pytest_cache .ruff_cache .mypy_cache
