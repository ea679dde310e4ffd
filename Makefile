# TagIfAI API. `make serve` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
ARTIFACTS := artifacts
export PATH := $(CURDIR)/$(BIN):$(PATH)
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install model train evaluate predict serve serve-dev test test-fast bench loadtest soak newman clean score bench-score

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(STAMP) ## Create .venv and install the pinned dependencies

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

test: model ## Set up and run the whole test suite
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## Unit and API tests only (no real servers)
	$(BIN)/python -m pytest -m "not integration"

bench: model ## Benchmark in-process and over HTTP (results in reports/bench/)
	$(BIN)/python -m benchmarks.run

bench-score: model ## Benchmark `score` on 1,000,000 rows against the fast path (results in reports/bench/)
	$(BIN)/python -m benchmarks.score

loadtest: model ## Locust, headless and bounded, against a live server (reports in reports/locust/)
	$(BIN)/python -m benchmarks.loadtest

soak: model ## 10 minutes of mixed traffic against 2 recycling workers: unexpected answers and worker RSS (not in CI)
	$(BIN)/python -m benchmarks.soak

clean: ## Remove the virtualenv, caches and reports (model versions stay)
	rm -rf $(VENV) .pytest_cache reports node_modules
	find . -name __pycache__ -prune -exec rm -rf {} +

BASE_URL ?= http://localhost:$(PORT)
API_KEY ?=
newman: ## Run the Postman collection against BASE_URL (default http://localhost:PORT; `make serve` first), with API_KEY if set
	test -x node_modules/.bin/newman || npm ci --no-audit --no-fund
	node_modules/.bin/newman run clients/postman/tagifai_api.postman_collection.json \
	  -e clients/postman/local.postman_environment.json --env-var baseUrl=$(BASE_URL) --env-var apiKey=$(API_KEY)
