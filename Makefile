# Two commands do all the set-up on a fresh machine (see README):
#   make serve   # venv + install + run the server on its embedded default (local files + SQLite)
#   make test    # venv + install + start Redis and PostgreSQL if missing + the whole test suite
# Install torch first so the project's range is satisfied by it: the default is the CPU wheel
# these machines carry; elsewhere override, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
#
# One install serves every target: the project with its [dev] extra (tests, examples, benchmarks),
# done once and recorded in a stamp file that is redone only when pyproject.toml changes (or with
# `make install -B`), so `make serve` after `make test` starts at once and can run the examples.
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mcnc-installed
PYTEST_ARGS ?=

.PHONY: install install-dev serve example test lint unasync clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

install-dev: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/mcnc serve

example: $(STAMP)
	$(PY) examples/train_and_bundle.py

test: $(STAMP)
	bash scripts/ensure_redis.sh
	bash scripts/ensure_postgres.sh
	bash scripts/ensure_chromium.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# client/_sync.py is generated from client/_async.py (a test fails when it is stale).
unasync: $(STAMP)
	$(PY) scripts/unasync.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
