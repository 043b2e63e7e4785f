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

.PHONY: install run test test-slow test-serve test-faults test-all bench rehearsal gpu-check lint lock clean help
.PHONY: flow prefect-up prefect-run prefect-down mlflow-ui

help:
	@echo "make run        install .venv and run the default pipeline (dvc repro on the embedded tiny default)"
	@echo "make test       install .venv and run the default test suite (no slow/gpu/network tests)"
	@echo "make test-slow  the slow tests (multi-process, kill -9 resume, end-to-end flow)"
	@echo "make test-serve the registered model behind the real \`mlflow models serve\` (REST, errors, load)"
	@echo "make test-faults  fault injection: kill -9 / truncation / ENOSPC / two repro at once (slow)"
	@echo "make bench      benchmarks -> reports/bench.json + reports/bench.md"
	@echo "make rehearsal  the whole pipeline on a random Qwen2-VL-2B at its real dimensions, in a separate workspace (~30 min on 2 cores)"
	@echo "make gpu-check  the GPU check on a bare GPU machine (system python3, no install; ARGS=--dry-run on CPU)"
	@echo "make lock       re-resolve requirements/lock.txt from pyproject.toml"
	@echo "make flow       the same pipeline as a Prefect flow run (temporary local server)"
	@echo "make prefect-up local Prefect server + process worker on 127.0.0.1:4200, deployment puma/full-pipeline"
	@echo "make prefect-run   prefect deployment run puma/full-pipeline --watch   (make prefect-down stops both)"
	@echo "make mlflow-ui  MLflow UI on http://127.0.0.1:5000 for the local store (params.yaml: tracking.uri)"

install: $(STAMP)

# torch is installed first and exactly, by pip (any other spec pulls a multi-GB CUDA build; pip finds the CPU
# wheel these machines keep locally; see README). The rest: uv with the lock as constraints (the same versions
# as pip resolves, ~15 s instead of ~60 s); where uv cannot install (no uv wheel, an index only pip is set up
# for) pip does it.
UV := uv==0.13.8
$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "pip==26.3"
	$(BIN)/python -m pip install -q "torch==2.13.0"
	{ $(BIN)/python -m pip install -q "$(UV)" && $(BIN)/uv pip install -q --python $(BIN)/python -c $(LOCK) -e ".[dev]"; } \
	  || { echo "uv install failed: installing with pip" >&2; $(BIN)/python -m pip install -q -c $(LOCK) -e ".[dev]"; }
	@rm -f $(VENV)/.installed-*
	@touch $@

# PUMA_PIPELINE_START: when the pipeline started, for the register stage's `pipeline.wall_s` metric.
run: install
	PUMA_PIPELINE_START=$${PUMA_PIPELINE_START:-$$(date +%s.%N)} dvc repro
	python -m flows.summary

# Orchestration (README: Pipeline, Prefect, MLflow). The flow runs the dvc.yaml stages one by one.
flow: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false python flows/puma_flow.py

prefect-up: install
	flows/prefect_local.sh up

prefect-run: install
	flows/prefect_local.sh run

prefect-down:
	flows/prefect_local.sh down

MLFLOW_PORT ?= 5000
mlflow-ui: install
	puma registry ui --host 127.0.0.1 --port $(MLFLOW_PORT)

test: install
	python -m pytest -q

test-slow: install
	python -m pytest -q -m slow

# The champion behind the real `mlflow models serve`: REST contract, 400s, 20 clients x 30 s (slow, ~3 min).
test-serve: install
	python -m pytest -q -s -m slow tests/pipeline/test_serve.py

# Fault injection on the pipeline in a clone: kill -9, truncated checkpoint, ENOSPC, concurrent repro.
test-faults: install
	python -m pytest -q -s -m faults tests/pipeline/test_faults.py tests/pipeline/test_checkpoint_integrity.py tests/pipeline/test_registry_race.py

test-all: install
	python -m pytest -q -m "not gpu and not network"

bench: install
	python bench/run_all.py

# The whole DVC pipeline on a random-weight Qwen2-VL-2B (profile rehearsal-2b) in a copy of this checkout
# (REHEARSAL_DIR, default $$TMPDIR/puma-rehearsal): this params.yaml, artifacts/, DVC cache and MLflow store
# are not touched. Per-stage wall / peak RSS / disk -> reports/rehearsal.{json,md}. Not part of `make test`.
REHEARSAL_DIR ?= $(or $(TMPDIR),/tmp)/puma-rehearsal
rehearsal: install
	nice -n 10 python bench/rehearsal.py --work $(REHEARSAL_DIR) $(ARGS)

# No `install`: it runs on the bare device machine with its own python3 (bench/README.md: GPU check).
gpu-check:
	bash bench/gpu_check.sh $(if $(OUT),--out $(OUT)) $(ARGS)

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

# Team infrastructure without Docker (README: Team infrastructure): PostgreSQL, S3 (moto), MLflow and
# Prefect servers as local processes (infra/local_stack.sh). Their server-side packages live in their own
# venv, .venv-infra/, from requirements/infra.txt, so .venv is never changed by them.
.PHONY: infra-venv infra-up infra-down test-infra
VENV_INFRA := .venv-infra
INFRA_STAMP := $(VENV_INFRA)/.installed-$(shell sha256sum requirements/infra.txt 2>/dev/null | cut -c1-16)

infra-venv: $(INFRA_STAMP)

$(INFRA_STAMP):
	@test -x $(VENV_INFRA)/bin/python || python3 -m venv $(VENV_INFRA)
	$(VENV_INFRA)/bin/python -m pip install -q --disable-pip-version-check -r requirements/infra.txt
	@rm -f $(VENV_INFRA)/.installed-*
	@touch $@

infra-up: install infra-venv
	infra/local_stack.sh up

infra-down:
	infra/local_stack.sh down

# The whole default pipeline through the stack (about 10 min on 2 cores): not part of `make test`.
test-infra: install infra-venv
	python -m pytest -q -s -m infra tests/pipeline/test_infra_stack.py
