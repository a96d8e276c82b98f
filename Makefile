# The front door. `make train` and `make test` set themselves up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/tiny-passkey.yaml
ARGS ?=
SUITE ?= evals/niah.yaml
TORCH_VERSION ?= 2.13.0

.PHONY: setup train lint test check summary eval report push plan validate clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so no dependency pulls a several-GB CUDA build on CPU machines
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(PY) -m toolkit train $(RECIPE) $(ARGS)

# The linter and the type checker (settings in pyproject.toml); `make test` runs them before the tests.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

check: setup
	$(PY) -m toolkit report $(or $(RUN),runs/tiny-passkey) --check

summary: setup
	@test -n "$(RUNS)" || { echo "usage: make summary RUNS=\"runs/a runs/b ...\""; exit 2; }
	$(PY) -m toolkit report --summary $(RUNS)

eval: setup
	@test -n "$(MODEL)" || { echo "usage: make eval MODEL=path-or-hub-id [SUITE=evals/niah.yaml] [ADAPTER=path] [MAX_LENGTH=N]"; exit 2; }
	$(PY) -m toolkit eval --model $(MODEL) --suite $(SUITE) $(if $(ADAPTER),--adapter $(ADAPTER)) $(if $(MAX_LENGTH),--max-length $(MAX_LENGTH)) $(ARGS)

report: setup
	@test -n "$(RUN)" || { echo "usage: make report RUN=runs/NAME"; exit 2; }
	$(PY) -m toolkit report $(RUN)

push: setup
	@test -n "$(RUN)" -a -n "$(REPO)" || { echo "usage: make push RUN=runs/NAME REPO=org/name [ARGS=--dry-run]"; exit 2; }
	$(PY) -m toolkit push $(RUN) --repo-id $(REPO) $(ARGS)

plan: setup
	$(PY) -m toolkit plan $(RECIPE) $(ARGS)

validate: setup
	$(PY) -m toolkit validate recipes/*.yaml

clean:
	rm -rf $(VENV) runs eval-results .pytest_cache .mypy_cache .ruff_cache
