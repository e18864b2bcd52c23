#!/usr/bin/env bash
# The engine and server benchmarks on one CUDA GPU, base and slots in bfloat16, within about 5 minutes;
# JSON and the printed tables under $OUT.
#
#   OUT=/tmp/gpu-bench bench/gpu.sh            # on a CUDA machine
#   OUT=/tmp/gpu-bench bench/gpu.sh --smoke    # tiny counts on the CPU: checks the wiring only
#
# $OUT gets engine.json, engine.txt, server.json and server.txt.
# PYTHON (default .venv/bin/python) must have the project importable (pip install -e . or PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for results}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"

if [[ "${1:-}" == "--smoke" ]]; then
  export T2L_DEVICE=cpu
  engine=(--tokens 4 --reps 1 --batches 8)
  server=(--n 3 --max-tokens 2 --load 1)
else
  export T2L_DEVICE=cuda
  engine=(--tokens 64 --reps 3)
  server=(--n 100 --max-tokens 8)
fi
export T2L_BASE_DTYPE=bfloat16  # read by the server bench.server starts

timeout 150 "$PYTHON" -m bench.engine --dtype bfloat16 "${engine[@]}" --json "$OUT/engine.json" \
  | tee "$OUT/engine.txt"
timeout 150 "$PYTHON" -m bench.server "${server[@]}" --json "$OUT/server.json" | tee "$OUT/server.txt"
