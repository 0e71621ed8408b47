# Fresh-machine entry points: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# On machines without an NVIDIA GPU, install the CPU build of torch first, from PyTorch's CPU index (PyPI's
# default build carries CUDA, gigabytes a CPU cannot use), pinned by constraints-cpu.txt. Only torch comes from
# that index (--no-deps); everything else, torch's own dependencies included, from the usual ones.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
CONSTRAINTS := $(if $(HAS_GPU),,-c constraints-cpu.txt)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install test quick demo lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(HAS_GPU),,$(PY) -m pip install -q --no-deps --index-url $(TORCH_CPU_INDEX) -c constraints-cpu.txt torch)
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m ruff check src tests bench scripts
	$(PY) -m ruff format --check src tests bench scripts
	$(PY) -m pytest -q

quick: install  ## the fast loop: everything but the tests marked slow
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/padt demo

lint: install
	$(PY) -m ruff check src tests bench scripts
	$(PY) -m ruff format --check src tests bench scripts

format: install
	$(PY) -m ruff format src tests bench scripts
	$(PY) -m ruff check --fix src tests bench scripts

clean:
	rm -rf $(VENV) build src/*.egg-info
