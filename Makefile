# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create the virtual environment in .venv when it is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[tests,style]'
	touch $(STAMP)

demo: $(STAMP)
	@echo "Writing a small synthetic corpus in the MMEarth64 layout (not MMEarth data)"
	$(BIN)/python tests/data/mmearth/data.py --root $(DEMO_DIR)/corpus --subset MMEarth64 --num-tiles 256
	$(BIN)/python examples/explore_mmearth.py --root $(DEMO_DIR)/corpus --subset MMEarth64 --output $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered -q

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy --strict torchgeo_mmearth

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache .coverage
