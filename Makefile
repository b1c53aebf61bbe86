# mhfgen: the README's two commands are `make tune` (the main job) and `make test`.
# Both create .venv and install pinned dependencies: the CPU build of torch where no
# NVIDIA GPU is visible, the CUDA build where one is.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_REQ := requirements/$(if $(HAS_GPU),gpu,cpu).txt
PYTEST_ARGS ?= -q

.PHONY: setup tune test clean

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

clean:
	rm -rf $(VENV) build dist *.egg-info
