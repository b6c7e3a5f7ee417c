# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := runs/demo
# torch/torchvision pinned where this project is developed (files on disk); any torch>=2.4 works.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-unit faults bench gpu-bench gpu-check clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN) || $(PY) -m pip install -q "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

.venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m wikiart.cli.demo --out $(DEMO)

# Tests run in parallel (one worker per core, at most 4), a module per worker at a time
# (`loadscope`), so module- and session-scoped fixtures - trained reference runs, the throwaway
# SLURM cluster - are built once. Single-threaded torch per test process.
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadscope

# The fast inner loop: tests/unit, the in-process tests of each stage package (no train.py,
# no `accelerate launch`). `make test` still runs everything.
test-unit: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadscope tests/unit

# The fault suite alone (tests/faults; also part of `make test`): processes killed mid-step/
# -checkpoint/-push, dead and hung ranks, Hub outages, corrupt shards, full disks, bad input.
faults: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadscope tests/faults

bench: $(VENV)/.installed
	$(PY) -m benchmarks.run_all

# On a GPU machine: model step alone vs the full pipeline at 384 px (benchmarks/gpu.py).
gpu-bench: $(VENV)/.installed
	$(PY) -m benchmarks.gpu

# On a GPU machine: what only CUDA shows (tests/gpu; skipped elsewhere), then gpu-bench.
gpu-check: $(VENV)/.installed
	$(PY) -m pytest -q -rs tests/gpu
	$(PY) -m benchmarks.gpu

clean:
	rm -rf runs bench_out
