# reditus-refunds: the two commands are `make run` and `make test`.
SHELL := /bin/bash
# The first Python 3.11+ on the PATH (the README promises 3.11, 3.12 or 3.13); PYTHON=... overrides.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
CHECKOV_VENV := .tools/checkov
UV_VENV := .tools/uv
STAMP := $(VENV)/.installed
BROWSER_STAMP := .tools/.browser-installed
DEV_LOCK := requirements/dev.lock
CHECKOV_LOCK := requirements/checkov.lock
LAMBDA_LOCK := functions/requirements.lock
# The locks: no release below a published advisory; the header of each says to run `make lock`.
UV_COMPILE = $(UV_VENV)/bin/uv pip compile --quiet --generate-hashes -c requirements/advisory-floors.txt \
	--custom-compile-command "make lock"
NO_PYTHON := make: no Python 3.11 or newer on the PATH (python3.11, python3.12, python3.13 or python3); \
	install one or pass PYTHON=/path/to/python3.x

.PHONY: install run test lint typecheck unit checks browser bench soak lock lock-upgrade clean help

help:
	@echo "make run    - start the whole local system (moto, Reditus simulator, worker, console)"
	@echo "make test   - install everything, then ruff, mypy, template checks and every test"
	@echo "make unit   - the tests without the slow and packaging ones (a quick check while working)"
	@echo "make lock   - write the locks again after a dependency change (lock-upgrade: newest releases)"
	@echo "make bench  - speed and cost figures into bench/results.json"
	@echo "make soak   - long fault-injection runs into soak-report.json"

# Exactly the locked releases, each checked against its hash; then the project itself, without
# resolving anything (--no-deps) and built by the locked setuptools (--no-build-isolation).
$(STAMP): pyproject.toml infra/pyproject.toml $(DEV_LOCK)
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e '.[console,dev]' -e ./infra
	@touch $(STAMP)

$(CHECKOV_VENV)/.installed: $(CHECKOV_LOCK)
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)" >&2; exit 1; }
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --require-hashes -r $(CHECKOV_LOCK)
	@touch $@

$(UV_VENV)/.installed: requirements/tools.lock
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)" >&2; exit 1; }
	@test -x $(UV_VENV)/bin/python || $(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --require-hashes -r requirements/tools.lock
	@touch $@

# The Lambda's lock is resolved for where it runs (Python 3.12 on arm64 Linux), the development lock
# for any of Python 3.11-3.13 on any platform. Pins already in a lock are kept unless an input needs
# otherwise; lock-upgrade moves every pin to the newest release the inputs allow.
lock: $(UV_VENV)/.installed
	$(UV_COMPILE) $(LOCK_ARGS) functions/requirements.txt --python-version 3.12 \
		--python-platform aarch64-manylinux2014 -o $(LAMBDA_LOCK)
	$(UV_COMPILE) $(LOCK_ARGS) requirements/dev.in --universal --python-version 3.11 \
		--no-emit-package reditus-refunds --no-emit-package reditus-refunds-local -o $(DEV_LOCK)
	$(UV_COMPILE) $(LOCK_ARGS) requirements/checkov.in --universal --python-version 3.11 -o $(CHECKOV_LOCK)

lock-upgrade:
	$(MAKE) --no-print-directory lock LOCK_ARGS=--upgrade

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

# The fast path: everything but the tests marked slow or packaging (make test runs those too).
unit: $(STAMP)
	$(BIN)/pytest -q -m 'not soak and not slow and not packaging'

test: install browser lint typecheck checks
	$(BIN)/pytest -q

run: $(STAMP)
	$(BIN)/reditus-refunds local up $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run

# About 32 minutes here (2026-11-30: faults 17.5, outage 7, store 1, webhooks 2, plus each scenario's
# start and final checks): 10,000 requests (each sent twice) under 30 % transient faults, day-counter
# write failures, Lambda timeouts mid-batch, worker kills and 404s inside the grace window; a 60 s outage
# with the shipped visibility timeout (361 s: 6 x 60 s + the 1 s batching window); DynamoDB write
# failures; billing webhooks. Bounded: stopped after 45 minutes whatever happens. Writes
# soak-report.json, prints it, fails if a promise broke.
soak: $(STAMP)
	@SOAK_REPORT=$(CURDIR)/soak-report.json timeout --kill-after=30 2700 \
		$(BIN)/pytest -q -m soak -p no:cacheprovider tests/test_soak.py; \
	status=$$?; test -f soak-report.json && cat soak-report.json; exit $$status

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
