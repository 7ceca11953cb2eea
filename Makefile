# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# `make test-fast` leaves out the tests marked slow (2 s or more each: solves, README, notebooks).
# `make docs` builds the documentation site into site/; `make notebooks` opens JupyterLab.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS_STAMP := $(VENV)/.installed-notebooks
LINTED := sst sst_cli.py tests benchmarks docs/scripts docs/hooks.py

.PHONY: demo test test-fast lint install docs notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The docs extra is part of the default install so that tests/test_docs.py builds the site in CI.
# The distribution was called `sst` before 0.2.0; an install under that name goes first, else two
# distributions would claim the package and the `sst` command.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip uninstall -q -y sst 2>/dev/null || true
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	touch $(STAMP)

$(NOTEBOOKS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,docs,notebooks]"
	touch $(NOTEBOOKS_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sst._demo --out out/demo

test: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/python -m pytest -n 2 tests

# The inner loop: no lint, and no test marked slow (pyproject.toml registers the marker): 411 of
# the 613 tests, 47 s on an idle 2-core machine (make test: 10 to 13 min from a fresh clone).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

# The notebooks are executed during the build, in their small mode: 5.8 minutes for notebooks
# 01-07 on a 2-core machine (2026-12-07, a benchmark on the other core for a minute of it).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

notebooks: $(NOTEBOOKS_STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) out site
