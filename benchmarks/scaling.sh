#!/usr/bin/env bash
# What the T heads cost: training step and K=1 / K=T sampling time for several T at the
# fashion_mnist widths, with all heads evaluated (before heads on demand) and with heads on demand.
#
#   bash benchmarks/scaling.sh [T ...]          # default: 10 50 200 500; JSON in ${OUT:-runs/scaling}
#
# Per T: benchmarks/training.py --stages reverse with diffusion.heads_per_example = 0 (all T heads,
# masked) and = 2 (the diagonal head + 1 random active head), and benchmarks/sampling.py with
# paper_K1 (reads all heads either way) and x0_jump_K{T} with --all_heads and without.
# The one-head baseline does not depend on T: its training step is measured once (first T).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-runs/scaling}"
CONFIG="${SCALING_CONFIG:-configs/fashion_mnist.py}"
STEPS="${SCALING_STEPS:-3}"; REPEATS="${SCALING_REPEATS:-3}"; BATCH="${SCALING_SAMPLE_BATCH:-4}"
mkdir -p "$OUT"
Ts=("$@"); (( ${#Ts[@]} )) || Ts=(10 50 200 500)
first=1
for T in "${Ts[@]}"; do
  for n in 0 2; do
    stages=reverse; (( first && n == 0 )) && stages=reverse,baseline
    python benchmarks/training.py --config "$CONFIG" --config.diffusion.num_steps="$T" \
      --config.diffusion.heads_per_example="$n" --stages "$stages" --steps "$STEPS" \
      --out "$OUT/training_T${T}_heads${n}.json" 2>&1 | grep -e '^|' -e '^#'
  done
  first=0
  python benchmarks/sampling.py --config "$CONFIG" --config.diffusion.num_steps="$T" \
    --only "x0_jump_K$T" --all_heads --batch_size "$BATCH" --repeats "$REPEATS" \
    --out "$OUT/sampling_T${T}_all_heads.json" 2>&1 | grep -e '^|' -e '^#'
  python benchmarks/sampling.py --config "$CONFIG" --config.diffusion.num_steps="$T" \
    --only "paper_K1,x0_jump_K$T" --batch_size "$BATCH" --repeats "$REPEATS" \
    --out "$OUT/sampling_T${T}_on_demand.json" 2>&1 | grep -e '^|' -e '^#'
done
