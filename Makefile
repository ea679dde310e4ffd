# TagIfAI API. `make serve` and `make test` set everything up themselves.
SHELL := /bin/bash
# The first of these that is Python 3.11 or newer builds .venv; PYTHON=/path/to/python wins.
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3
ifndef PYTHON
PYTHON := $(firstword $(foreach p,$(PYTHON_CANDIDATES),$(if $(shell command -v $(p) >/dev/null 2>&1 && $(p) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo y),$(p))))
endif
VENV := .venv
BIN := $(VENV)/bin
# three stamps: serving needs requirements.txt only; tests and benchmarks add requirements-dev.txt and
# requirements-spark.txt (PySpark and pyarrow, about 660 MB: for those who score at scale, never for serve)
STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev
SPARK_STAMP := $(VENV)/.installed-spark
PORT ?= 8000
ARTIFACTS := artifacts
export PATH := $(CURDIR)/$(BIN):$(PATH)
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install model train evaluate predict serve serve-dev test test-fast bench loadtest soak check-pins newman clean score bench-score bench-spark

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "error: no Python 3.11 or newer found (tried $(PYTHON_CANDIDATES)); set PYTHON=/path/to/python3.x" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "error: PYTHON=$(PYTHON) is not Python 3.11 or newer (or not found)" >&2; exit 1; }
	@echo "Creating $(VENV) with $(PYTHON) ($$($(PYTHON) -c 'import sys; print(sys.version.split()[0])'))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

$(SPARK_STAMP): requirements-spark.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-spark.txt
	touch $@

install: $(DEV_STAMP) $(SPARK_STAMP) ## Create .venv and install the pinned dependencies, test tools and Spark included

model: $(STAMP) ## Train the default model version unless a usable one exists
	$(BIN)/python -m tagifai_api ensure-model

train: $(STAMP) ## Train a new model version from config/args.json and make it the default
	$(BIN)/python -m tagifai_api train

evaluate: $(STAMP) ## Re-evaluate the default version on its test split
	$(BIN)/python -m tagifai_api evaluate

IN ?=
OUT ?=
score: model ## Tag every row of IN (CSV or JSON Lines, maybe .gz) into OUT; SCORE_ARGS=... for more options
	@test -n "$(IN)" -a -n "$(OUT)" || { echo "usage: make score IN=projects.csv OUT=tags.csv [SCORE_ARGS='--id-column id --resume']"; exit 2; }
	$(BIN)/python -m tagifai_api score "$(IN)" --output "$(OUT)" $(SCORE_ARGS)

serve: model ## Set up and run the service under Gunicorn on PORT (default 8000)
	PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

serve-dev: model ## Run Flask's development server with reloading
	$(BIN)/flask --app tagifai_api run --debug --port $(PORT)

test: model $(DEV_STAMP) $(SPARK_STAMP) ## Set up and run the whole test suite
	$(BIN)/python -m pytest

test-fast: $(DEV_STAMP) $(SPARK_STAMP) ## Unit and API tests only (no real servers, no Spark)
	$(BIN)/python -m pytest -m "not integration"

BASELINE ?=
BENCH_ARGS ?=
bench: model $(DEV_STAMP) ## Benchmark in-process and over HTTP, then what the prediction log costs (results in reports/bench/); BASELINE=<git rev> compares with that revision instead
	$(BIN)/python -m benchmarks.run $(if $(BASELINE),--baseline $(BASELINE)) $(BENCH_ARGS)
	$(if $(BASELINE),,$(BIN)/python -m benchmarks.predlog_cost)

bench-score: model $(DEV_STAMP) ## Benchmark `score` on 1,000,000 rows against the fast path (results in reports/bench/)
	$(BIN)/python -m benchmarks.score

bench-spark: model $(DEV_STAMP) $(SPARK_STAMP) ## Spark local[2] against the local scorer: 1M-row CSV, 10M-row Parquet, start-up (results in reports/bench/)
	$(BIN)/python -m benchmarks.spark_score

loadtest: model $(DEV_STAMP) ## Locust, headless and bounded, against a live server (reports in reports/locust/)
	$(BIN)/python -m benchmarks.loadtest

soak: model $(DEV_STAMP) ## 10 minutes of mixed traffic against 2 recycling workers: unexpected answers and worker RSS (not in CI)
	$(BIN)/python -m benchmarks.soak

PIN_PYTHONS ?= 3.12 3.13
check-pins: | $(BIN)/python ## Every pinned package has a wheel for Python 3.12 and 3.13 too (PySpark: pure-Python source; needs PyPI)
	@set -e; for v in $(PIN_PYTHONS); do \
	  dir=$$(mktemp -d); \
	  $(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version $$v \
	    -r requirements-dev.txt $$(grep -vE '^(#|-r|pyspark==|$$)' requirements-spark.txt) -d $$dir \
	    || { rm -rf $$dir; echo "error: the pins do not all install on Python $$v" >&2; exit 1; }; \
	  rm -rf $$dir; echo "pins install on Python $$v"; \
	done

clean: ## Remove the virtualenv, caches and reports (model versions stay)
	rm -rf $(VENV) .pytest_cache reports node_modules
	find . -name __pycache__ -prune -exec rm -rf {} +

BASE_URL ?= http://localhost:$(PORT)
API_KEY ?=
newman: ## Run the Postman collection against BASE_URL (default http://localhost:PORT; `make serve` first), with API_KEY and ADMIN_KEY if set
	test -x node_modules/.bin/newman || npm ci --no-audit --no-fund
	node_modules/.bin/newman run clients/postman/tagifai_api.postman_collection.json \
	  -e clients/postman/local.postman_environment.json --env-var baseUrl=$(BASE_URL) --env-var apiKey=$(API_KEY) \
	  --env-var adminKey=$(ADMIN_KEY)
