# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# They create .venv, install the pinned CPU torch FIRST (so that pip never pulls a multi-GB CUDA
# build), then this package with its dependencies. On a GPU machine, override TORCH_SPEC
# (e.g. `make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"`).

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: demo mechanism test test-fast clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "grpo-guard needs Python >= 3.11, found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# OpenCLIP's model code, the reference tests/test_hpsv2.py checks HPSv2 against; without its
	# dependencies (its torchvision would not work beside this torch)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps open_clip_torch==3.3.0
	@touch $(STAMP)

# The main job: Flow-GRPO vs GRPO-Guard on the toy world, then runs/demo/report.html.
demo: $(STAMP)
	$(BIN)/grpo-guard demo --out runs/demo --resume

# The Monte-Carlo study of the ratio mechanism (no training).
mechanism: $(STAMP)
	$(BIN)/grpo-guard mechanism --out runs/mechanism

# The whole test suite, slow end-to-end tests included (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow"

# The fast default suite for development.
test-fast: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
