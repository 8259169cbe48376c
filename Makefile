# Two commands do everything on a fresh machine: `make demo` and `make test` (both run `make setup`).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-fast lint bench docs clean

setup: $(STAMP)

# The CPU PyTorch build goes in first, so the project's torch range is already satisfied
# and pip never reaches for a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,all]"
	touch $(STAMP)

demo: setup
	rm -rf runs/demo
	$(VENV)/bin/explorl train --out runs/demo

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

# The layers import only downward (the contract is in pyproject.toml, [tool.importlinter]).
lint: setup
	$(VENV)/bin/lint-imports

bench: setup
	$(VENV)/bin/explorl bench throughput
	$(VENV)/bin/explorl bench trl

# The documentation site (docs/, mkdocs.yml): the methods reference is generated from the registry.
docs: setup
	$(VENV)/bin/explorl docs-pages --out docs/methods
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf runs .pytest_cache .import_linter_cache site
