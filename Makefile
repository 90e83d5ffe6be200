# medxp: the README's commands. `make run` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
DATASET ?= glaucoma
ARGS ?=

.PHONY: install run test test-fast bench ui clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e ".[test]"
	touch $@

run: install
	. $(VENV)/bin/activate && mlflow run . -P dataset=$(DATASET) --env-manager local --experiment-name $(DATASET) $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: install
	$(PY) bench/trainer_overhead.py

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db
