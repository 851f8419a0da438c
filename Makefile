# vit-exp developer entry points. `make run` and `make test` create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
ARGS ?=

.PHONY: install run ui test test-integration test-slow test-all docs lint format clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"vit-exp needs Python 3.11, {sys.executable} is {sys.version.split()[0]} (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,sweep]"
	@# the official Optuna sweeper (pins Optuna 2.10) of an older install; ours is hydra/sweeper=optuna_study
	@$(BIN)/python -m pip uninstall --quiet -y hydra-optuna-sweeper 2>/dev/null || true
	@touch $(STAMP)

install: $(STAMP)   ## create .venv and install vit-exp with its dev and sweep extras

run: $(STAMP)       ## train the default experiment (override with ARGS="model=vit_small ...")
	$(BIN)/python -m vit_exp.run $(ARGS)

ui: $(STAMP)        ## the MLflow UI on the runs of the store (prints the link to open; ARGS="port=5001")
	$(BIN)/python -m vit_exp.ui $(ARGS)

test: $(STAMP)      ## the default tier: unit tests and in-process CLI runs (integration and slow excluded)
	$(BIN)/python -m pytest $(ARGS)

test-integration: $(STAMP)  ## the integration and fault tiers: tests marked integration or slow (CI: after `make test`)
	$(BIN)/python -m pytest -m "integration or slow" $(ARGS)

test-slow: $(STAMP) ## the fault tier alone: only the tests marked slow
	$(BIN)/python -m pytest -m slow $(ARGS)

test-all: $(STAMP)  ## every test: the default, integration and fault tiers
	$(BIN)/python -m pytest -m "" $(ARGS)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP) ## build the docs site into site/ (mkdocs, material theme); any warning fails it
	$(BIN)/python -m mkdocs build --strict

lint: $(STAMP)
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m ruff check .

format: $(STAMP)
	$(BIN)/python -m ruff format .
	$(BIN)/python -m ruff check --fix .

clean:
	rm -rf $(VENV) .cache outputs .pytest_cache .ruff_cache site
