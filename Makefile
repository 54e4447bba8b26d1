# One command surface for the README, CI (.ci/run) and developers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install fraudserve with the tested versions (constraints.txt)

demo: install ## the whole path on the embedded redis-server: data, feast apply, backfill, materialize, read back
	$(BIN)/fraudserve demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit

test: lint typecheck ## lint, type checks, then every test (they start their own redis-server processes)
	$(BIN)/pytest

bench: install ## offline pipeline and materialize throughput (bench/README.md)
	$(BIN)/python -m bench.pipeline

clean:
	rm -rf $(VENV) .fraudserve .mypy_cache .ruff_cache .pytest_cache
