# The two commands a newcomer needs:  `make run` (install + default pipeline)  and  `make test`.
# Both create .venv/ at the repo root; an up-to-date .venv is not reinstalled (stamp keyed on the lock).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0

.PHONY: install run test test-slow test-all bench lint lock clean help

help:
	@echo "make run        install .venv and run the default pipeline (dvc repro on the embedded tiny default)"
	@echo "make test       install .venv and run the default test suite (no slow/gpu/network tests)"
	@echo "make test-slow  the slow tests (multi-process, kill -9 resume, end-to-end flow)"
	@echo "make bench      benchmarks -> reports/bench.json + reports/bench.md"
	@echo "make lock       re-resolve requirements/lock.txt from pyproject.toml"

install: $(STAMP)

# torch is installed first and exactly (any other spec pulls a multi-GB CUDA build; see README).
$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "pip==26.3"
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

run: install
	dvc repro

test: install
	python -m pytest -q

test-slow: install
	python -m pytest -q -m slow

test-all: install
	python -m pytest -q -m "not gpu and not network"

bench: install
	python bench/run_all.py

lint: install
	ruff check puma flows tests bench

# Re-resolve the lock in a scratch venv (review the diff, then commit it).
lock:
	rm -rf /tmp/puma-lock-venv && $(PYTHON) -m venv /tmp/puma-lock-venv
	/tmp/puma-lock-venv/bin/python -m pip install -q "pip==26.3" "torch==2.13.0"
	/tmp/puma-lock-venv/bin/python -m pip install -q ".[dev]"
	/tmp/puma-lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^puma-retriever' \
	  | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/' > $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache
