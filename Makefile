# Baton: `make demo` runs the example locally, `make test` runs the tests. No Docker needed for either.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install servers demo test test-unit lint docs up down dev-down clean

install: $(STAMP)  ## create the virtualenv and install Baton with its test tools (pinned)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

servers: install  ## make sure a Redis-compatible server and MinIO exist (builds MinIO once, minutes)
	$(BIN)/baton servers install

demo: servers  ## start everything locally, run the content factory, print where the outputs are
	-@$(BIN)/baton dev down >/dev/null 2>&1
	@mkdir -p .baton
	$(BIN)/baton dev up --workers 2 > .baton/env
	@echo "--- submitting examples/briefs/topic.md to the content-factory workflow"
	$(BIN)/baton submit content-factory --input brief=examples/briefs/topic.md --wait > .baton/demo-run
	@echo "--- downloading run $$(cat .baton/demo-run)'s outputs into ./demo-output"
	$(BIN)/baton get $$(cat .baton/demo-run) --out demo-output
	@echo "--- the stack is still running; its client settings are in .baton/env."
	@echo "--- stop it with: $(BIN)/baton dev down"

test: servers  ## all tests: unit, and end to end on real Redis and MinIO
	$(BIN)/python -m pytest

test-unit: install  ## the fast tests only (no servers)
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check shared services baton examples tests

docs: install  ## AsyncAPI documents per service, generated from the code
	$(BIN)/python -m baton.docs --out docs/asyncapi

up:  ## the same stack in Docker (needs a Docker engine)
	docker compose up -d --build

down:
	docker compose down

dev-down:
	$(BIN)/baton dev down

clean: dev-down
	rm -rf .baton demo-output
