# reditus-refunds: the two commands are `make run` and `make test`.
SHELL := /bin/bash
# The first Python 3.11+ on the PATH (the README promises 3.11, 3.12 or 3.13); PYTHON=... overrides.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
CHECKOV_VENV := .tools/checkov
STAMP := $(VENV)/.installed
BROWSER_STAMP := .tools/.browser-installed

.PHONY: install run test lint typecheck unit checks browser bench soak clean help

help:
	@echo "make run    - start the whole local system (moto, Reditus simulator, worker, console)"
	@echo "make test   - install everything, then ruff, mypy, template checks and pytest"
	@echo "make bench  - speed and cost figures into bench/results.json"
	@echo "make soak   - long fault-injection runs into soak-report.json"

$(STAMP): pyproject.toml infra/pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no Python 3.11 or newer on the PATH (python3.11, python3.12, python3.13 or python3); install one or pass PYTHON=/path/to/python3.x" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[console,dev]' -e ./infra
	@touch $(STAMP)

$(CHECKOV_VENV)/.installed: infra/checkov-requirements.txt
	@test -n "$(PYTHON)" || { echo "make: no Python 3.11 or newer on the PATH" >&2; exit 1; }
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r infra/checkov-requirements.txt
	@touch $@

$(BROWSER_STAMP): infra/install-browser.sh
	bash infra/install-browser.sh
	@mkdir -p .tools && touch $@

install: $(STAMP) $(CHECKOV_VENV)/.installed

browser: $(BROWSER_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit -q -r functions ui infra -ll  # medium and high findings fail the build

typecheck: $(STAMP)
	$(BIN)/mypy

checks: install
	$(BIN)/cfn-lint template.yaml
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation -f template.yaml

unit: $(STAMP)
	$(BIN)/pytest -q

test: install browser lint typecheck checks
	$(BIN)/pytest -q

run: $(STAMP)
	$(BIN)/reditus-refunds local up $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run

# About 12 minutes: 2,000 requests under faults, duplicates and kills; a 60 s outage with the shipped
# 360 s visibility timeout; DynamoDB write failures. Writes soak-report.json, prints it, fails if a promise broke.
soak: $(STAMP)
	@SOAK_REPORT=$(CURDIR)/soak-report.json $(BIN)/pytest -q -m soak -p no:cacheprovider tests/test_soak.py; \
	status=$$?; test -f soak-report.json && cat soak-report.json; exit $$status

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
