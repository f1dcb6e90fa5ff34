#!/usr/bin/env bash
# The headline command end to end on configs/cifar10.py with a short schedule: CIFAR-10-format
# data made here (benchmarks/cifar10_like.py: synthetic images in the python-archive format,
# repeated), both training stages with checkpoints, a resume, --mode sample and --mode eval with
# few samples (FD_efflite0 only: its weights come with a pip package, nothing is downloaded).
# Prints the seconds of each part and ends with "gpu_e2e: ok" (exit 0) or the failed part
# (exit 1). Planned for under 6 minutes on one GPU.
#
#   bash benchmarks/gpu_e2e.sh                      # from the repository root; files in $OUT
#   GPU_E2E_TINY=1 bash benchmarks/gpu_e2e.sh       # the same path with tiny networks (CPU test)
#
# Environment: OUT (default /tmp/gpu_e2e, emptied first), GPU_E2E_CACHE (the XLA compilation
# cache, default $OUT/xla_cache), GPU_E2E_WHEELS (wheels to install first, as gpu.sh), PYTHON
# (the interpreter, default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_e2e}"
CACHE="${GPU_E2E_CACHE:-$OUT/xla_cache}"
WHEELS="${GPU_E2E_WHEELS:-.whl}"
CONFIG=configs/cifar10.py
PY="${PYTHON:-python3}"
rm -rf "$OUT/workdir" "$OUT/logs" && mkdir -p "$OUT/logs"

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH="/tmp/site:$PWD" \
    || { echo "error: installing $WHEELS/*.whl failed" >&2; exit 2; }
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

W="$OUT/workdir"
DATA="$OUT/cifar-10-python.tar.gz"
if [[ -n "${GPU_E2E_TINY:-}" ]]; then
  # Tiny networks and data: the same commands and code path in about a minute on 2 CPU cores.
  DATA_ARGS=(--train 80 --test 32 --distinct 40)
  VAE_STEPS=2; REV1=2; REV2=4; NUM_SAMPLES=4
  NETS=(--config.diffusion.num_steps=4
        --config.vae.ch=8 '--config.vae.ch_mult=(1,1,1,1)' --config.vae.num_res_blocks=1
        --config.vae.latent_dim=8 --config.vae.num_groups=4
        --config.model.ch=8 '--config.model.ch_mult=(1,2)' --config.model.num_res_blocks=1
        '--config.model.attn_resolutions=()' --config.model.num_groups=4
        --config.model.head_ch=4 --config.model.head_num_res_blocks=1 --config.model.dropout=0.0
        --config.training.batch_size=8 --config.sampling.batch_size=4
        --config.training.snapshot_every=0)
  EVAL=(--config.eval.samplers=consistent --config.eval.num_samples=6 --config.eval.batch_size=2
        --config.eval.reference_max_examples=16)
else
  DATA_ARGS=(--train 5000 --test 1000 --distinct 500)
  VAE_STEPS=200; REV1=200; REV2=300; NUM_SAMPLES=64
  NETS=()
  EVAL=(--config.eval.samplers=consistent,paper --config.eval.num_samples=256
        --config.eval.batch_size=64)
fi
SHORT=(--config.data.path="$DATA" --config.data.md5= --config.training.vae_steps="$VAE_STEPS"
       --config.training.log_every=10 --config.training.checkpoint_every=100
       "${NETS[@]}")
MAIN=("$PY" main.py --compilation_cache="$CACHE")

GPU_NAME="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
echo "# gpu_e2e: ${GPU_NAME:-no nvidia-smi (CPU)}; $("$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -1)${GPU_E2E_TINY:+; tiny networks}"

TIMES=()
# part NAME CMD...: runs CMD with its output in $OUT/logs/NAME.log, prints its seconds.
part() {
  local name="$1"; shift
  local t0=$SECONDS
  "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  TIMES+=("$name $((SECONDS - t0)) s")
  echo "## $name: $((SECONDS - t0)) s (exit $rc; log $OUT/logs/$name.log)"
  if (( rc != 0 )); then
    grep -v -e 'Unable to initialize backend' "$OUT/logs/$name.log" | tail -20
    echo "gpu_e2e: FAILED in $name"; exit 1
  fi
}
# expect FILE_OR_PATTERN WHAT: fails the run unless the file exists (or the log line is there).
expect() {
  if [[ "$1" == log:* ]]; then
    local spec="${1#log:}"
    grep -q -- "${spec#*:}" "$OUT/logs/${spec%%:*}.log" || { echo "gpu_e2e: FAILED: $2"; exit 1; }
  else
    [[ -e "$1" ]] || { echo "gpu_e2e: FAILED: $2 ($1 missing)"; exit 1; }
  fi
}

part data "$PY" benchmarks/cifar10_like.py "$DATA" "${DATA_ARGS[@]}"
part train "${MAIN[@]}" --config "$CONFIG" --workdir "$W" "${SHORT[@]}" \
  --config.training.reverse_steps="$REV1"
expect "$W/checkpoints/vae/$VAE_STEPS" "the VAE stage's last checkpoint"
expect "$W/checkpoints/reverse/$REV1" "the reverse stage's checkpoint"
expect "log:train:projected time" "the stage's step count line"
# The same command with a longer reverse schedule: the finished VAE stage is not retrained and
# the reverse stage resumes from its checkpoint.
part resume "${MAIN[@]}" --config "$CONFIG" --workdir "$W" "${SHORT[@]}" \
  --config.training.reverse_steps="$REV2"
expect "log:resume:stage vae: finished" "the finished VAE stage was retrained"
expect "log:resume:stage reverse: resumed from step $REV1" "the reverse stage did not resume"
expect "$W/checkpoints/reverse/$REV2" "the resumed reverse stage's checkpoint"
part sample "${MAIN[@]}" --workdir "$W" --mode sample --num_samples "$NUM_SAMPLES"
expect "log:sample:sampling finished" "the samples"
part eval "${MAIN[@]}" --workdir "$W" --mode eval "${EVAL[@]}"
expect "$W/eval/results.json" "the evaluation's results"
"$PY" - "$W/eval/results.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))['settings']:
  print(f"eval {r['setting']}: FD_efflite0 {r['fd_efflite0']:.2f} (floor {r['fd_efflite0_floor']:.2f}) "
        f"n={r['num_samples']}, {r['seconds_per_image']:.4g} s/image")
PY
echo "# times: ${TIMES[*]}; total ${SECONDS} s"
echo "gpu_e2e: ok"
