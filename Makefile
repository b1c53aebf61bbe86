# mhfgen: the README's two commands are `make tune` (the main job) and `make test`.
# Both create .venv and install pinned dependencies: the CPU build of torch where no
# NVIDIA GPU is visible, the CUDA build where one is.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_REQ := requirements/$(if $(HAS_GPU),gpu,cpu).txt
# every core; tests that share processes or GPUs run in their xdist_group (tests/conftest.py)
PYTEST_ARGS ?= -q -n auto --dist loadgroup

.PHONY: setup tune test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/common.txt $(TORCH_REQ)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=68" wheel
	$(BIN)/python -m pip install -q -r $(TORCH_REQ) -r requirements/common.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# The main job: tune the default problem into the tuning database (on the GPU when there
# is one, else through Triton's interpreter on a small problem).
tune: setup
	$(BIN)/mhfgen tune

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the edit loop: the pure-Python checks (marker `fast`), under a minute on two cores
test-fast: setup
	$(BIN)/python -m pytest -q -n auto -m fast

# ruff's lint rules and format of pyproject.toml over the code, the tests and the
# benchmarks, then the layer contracts of pyproject.toml ([tool.importlinter];
# docs/ARCHITECTURE.md)
lint: setup
	$(BIN)/ruff check mhfgen tests benchmarks cli.py
	$(BIN)/ruff format --check mhfgen tests benchmarks cli.py
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build dist *.egg-info
