# rlprune — the two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlprune-setup
DATA_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test lint bench results clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# Pin the CPU build of torch that lies on local disk; a bare `torch` may pull CUDA (GBs).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The Debian package ships Fashion-MNIST as gzipped IDX files.
data:
	@if [ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null || \
		(apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else \
		echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist'" \
		     "or 'rlprune train --dataset fashion-mnist --download ...'"; \
	fi

demo: setup
	$(BIN)/python -m rlprune demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

# Two workers: most of the suite's time is single-threaded subprocess runs (crash, resume,
# distributed), which leave the second core idle when run one after another.
test: setup lint
	$(BIN)/python -m pytest -q -m "not slow" -n 2

bench: setup
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/layout.py
	$(BIN)/python bench/rollouts.py
	$(BIN)/python bench/distributed.py

# RL vs heuristics and peers (docs/RESULTS.md): hours on a 2-core CPU, resumable, split with
# `$(BIN)/python bench/results.py run --model M --seed S`; finished cells land in docs/results/.
results: setup
	$(BIN)/python bench/results.py all

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
