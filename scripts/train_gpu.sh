#!/usr/bin/env bash
# T2L and the multi-task LoRA on one CUDA GPU with the same sampler, steps and batches (bf16 base), then
# both evaluation splits for each, all within about 9 minutes; results under $OUT.
#
#   OUT=/tmp/gpu scripts/train_gpu.sh            # on a CUDA machine
#   OUT=/tmp/gpu scripts/train_gpu.sh --smoke    # a few steps on the CPU: checks the wiring only
#
# $OUT gets gpu-run.tar.gz (the fp16 checkpoint, the fp16 baseline, every result.json/md, the metrics)
# and summary.txt (the tables and paired intervals): two files, as a device call brings back.
# PYTHON (default .venv/bin/python) must have the project importable (pip install -e . or PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for results}
PYTHON=${PYTHON:-.venv/bin/python}
t2l() { "$PYTHON" -m server.cli "$@"; }

if [[ "${1:-}" == "--smoke" ]]; then
  export T2L_DEVICE=cpu OMP_NUM_THREADS=1  # the two runs side by side, one core each
  train=(--steps 2 --tasks-per-step 2 --examples-per-task 1 --max-len 64 --val-every 2 --ckpt-every 1
         --val-examples 1 --warmup-steps 1)
  evals=(--tasks 2 --examples 1 --max-new-tokens 4)
  held=(--tasks 2 --examples 1 --max-new-tokens 4)
  limit=600
else
  # one H200: both runs side by side; 32 tasks x 2 examples per step, 2,000 steps (128,000 examples)
  train=(--steps 2000 --tasks-per-step 32 --examples-per-task 2 --max-len 192 --lr 2e-4 --warmup-steps 100
         --val-every 100 --ckpt-every 250 --val-examples 8)
  evals=(--tasks 150 --examples 3 --max-new-tokens 32 --batch-size 64)
  held=(--examples 30 --max-new-tokens 32 --batch-size 64)
  limit=330  # seconds of training; a run cut short still has its best-by-validation weights in best/
fi

work="$OUT/work"
rm -rf "$work" && mkdir -p "$work"
init=$work/untrained
t2l init -o "$init" >/dev/null
timeout "$limit" "$PYTHON" -m server.cli train sft --out "$work/sft" --init "$init" "${train[@]}" \
  > "$work/sft.log" 2>&1 &
sft=$!
timeout "$limit" "$PYTHON" -m server.cli train lora --out "$work/mt-lora" --init "$init" "${train[@]}" \
  > "$work/mt-lora.log" 2>&1 &
lora=$!
wait $sft || echo "sft stopped (exit $?): using its best checkpoint"
wait $lora || echo "mt-lora stopped (exit $?): using its last saved state"

# model selection on the val tasks' loss only: the best checkpoint; the baseline's last saved state
checkpoint=$work/sft/best/checkpoint
adapter=$work/mt-lora/state/adapter
[[ -d $work/mt-lora/best/adapter ]] && adapter=$work/mt-lora/best/adapter
for split in train-test eval; do
  args=("${evals[@]}"); [[ $split == eval ]] && args=("${held[@]}")
  t2l eval sni --out "$work/eval-$split" --split "$split" --checkpoint "$checkpoint" \
    --adapter "mt-lora=$adapter" "${args[@]}" > "$work/eval-$split.log" 2>&1
done
t2l export "$checkpoint" -o "$work/t2l-smollm2-135m" --dtype float16 \
  --result "$work/eval-train-test/result.json" --result "$work/eval-eval/result.json"
t2l export "$adapter" -o "$work/mt-lora-smollm2-135m" --dtype float16

{
  for split in train-test eval; do
    echo "## $split"; cat "$work/eval-$split/result.md"; echo
  done
  tail -n 3 "$work/sft/metrics.jsonl" "$work/mt-lora/metrics.jsonl"
} > "$OUT/summary.txt"
tar -czf "$OUT/gpu-run.tar.gz" -C "$work" t2l-smollm2-135m mt-lora-smollm2-135m \
  eval-train-test eval-eval sft/metrics.jsonl mt-lora/metrics.jsonl sft.log mt-lora.log
rm -rf "$work"
cat "$OUT/summary.txt"
