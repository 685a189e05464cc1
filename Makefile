# Two commands a fresh machine needs: `make run` serves the demo app on 127.0.0.1:8000,
# `make test` runs the whole test suite. Each creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench bench-quick clean system-deps fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian tools the tests use as real clients; installed only where missing.
system-deps:
	@./scripts/system-deps.sh

# hardserve refuses to run as root unless told to; the demo says so when started as root (as
# on a fresh container). A real deployment gives --user instead (deploy/README.md).
run: $(STAMP)
	$(VENV)/bin/hardserve hardserve.demo:app $$([ "$$(id -u)" = 0 ] && echo --allow-root)

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src

typecheck: $(STAMP)
	$(PY) -m mypy

test: $(STAMP) system-deps lint typecheck
	$(PY) -m pytest -n auto

# The benchmark and every goal of issue 7 side by side with the peers (bench/RESULTS.md,
# bench/goals.png): about 30 minutes on 2 cores; bench-quick is one short round (about 9).
bench: $(STAMP)
	./bench/run.sh

bench-quick: $(STAMP)
	./bench/run.sh --quick

# Fuzz the request parser for SECONDS (security/fuzz/README.md): `make fuzz SECONDS=3600`.
# Without atheris (no wheel for the platform) the hypothesis engine runs instead.
SECONDS ?= 600
$(VENV)/.fuzz-installed: $(STAMP)
	$(PY) -m pip install --quiet -e '.[fuzz]' || echo "atheris unavailable: hypothesis engine"
	touch $@

fuzz: $(VENV)/.fuzz-installed
	$(PY) -m security.fuzz --seconds $(SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
