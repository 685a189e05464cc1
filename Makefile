# Two commands a fresh machine needs: `make run` serves the demo app on 127.0.0.1:8000,
# `make test` runs the whole test suite. Each creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian tools the tests use as real clients; installed only where missing.
system-deps:
	@./scripts/system-deps.sh

run: $(STAMP)
	$(VENV)/bin/hardserve hardserve.demo:app

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src

typecheck: $(STAMP)
	$(PY) -m mypy

test: $(STAMP) system-deps lint typecheck
	$(PY) -m pytest -n auto

bench: $(STAMP)
	./bench/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
