# Two commands do all the set-up on a fresh machine (see README):
#   make serve   # venv + install + run the server on its embedded default (local files + SQLite)
#   make test    # venv + install with [dev] + start Redis and PostgreSQL if missing + the whole test suite
# Install torch first so the project's range is satisfied by it: the default is the CPU wheel
# these machines carry; elsewhere override, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install install-dev serve example test lint bench-quick clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e .

install-dev: $(PY)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"

serve: install
	$(VENV)/bin/mcnc serve

example: install-dev
	$(PY) examples/train_and_bundle.py

test: install-dev
	bash scripts/ensure_redis.sh
	bash scripts/ensure_postgres.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
