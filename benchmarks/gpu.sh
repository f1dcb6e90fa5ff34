#!/usr/bin/env bash
# One prepared benchmark run for a GPU machine: both speed benchmarks on configs/cifar10.py at
# the paper's sizes (float32, then bfloat16 compute with float32 parameters and loss): training
# rows for the reverse stage (2 heads per example, the config's default), the one-head baseline
# and the VAE, with model FLOPs and MFU; sampler rows (pixel-aware, DDPM, DDIM, DPM-Solver++);
# last the all-heads reverse row. One table with the card's name, JSON rows in "${OUT:-/tmp}".
# Finishes in under 8 minutes: every part runs under `timeout` within a total budget
# (GPU_SH_BUDGET seconds, default 450); the benchmarks rewrite their JSON after every row, so a
# part that is cut short keeps what it measured.
#
#   bash benchmarks/gpu.sh                                   # from the repository root
#   GPU_SH_CONFIG=configs/smoke.py bash benchmarks/gpu.sh    # the same steps on a CPU, tiny
#
# Offline machines without ml-collections (and its PyYAML): fetch the wheels once on a machine
# with internet, into .whl/ (gitignored), and carry .whl along; this script installs them first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
#     -d .whl ml-collections==1.1.0 PyYAML==6.0.4
# Nothing on the benchmarks' import path needs tensorflow-datasets or tensorboardX.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp}"
CONFIG="${GPU_SH_CONFIG:-configs/cifar10.py}"
BUDGET="${GPU_SH_BUDGET:-450}"
SAMPLE_BATCH="${GPU_SH_SAMPLE_BATCH:-16}"
WHEELS="${GPU_SH_WHEELS:-.whl}"   # the wheels to install first, if any
mkdir -p "$OUT"

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH="/tmp/site:$PWD" \
    || { echo "error: installing $WHEELS/*.whl failed" >&2; exit 2; }
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

GPU_NAME="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
GPU_NAME="${GPU_NAME:-no nvidia-smi (CPU)}"
echo "# gpu.sh: $GPU_NAME; config $CONFIG; $(python3 -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -1)"

# run SECONDS_CAP NAME CMD...: runs CMD under the time left (at most SECONDS_CAP seconds).
run() {
  local cap="$1" name="$2"; shift 2
  local left=$(( BUDGET - SECONDS ))
  (( left < cap )) && cap=$left
  if (( cap < 20 )); then echo "## $name: skipped (time budget spent)"; return; fi
  echo "## $name (at most ${cap} s)"
  timeout -k 5 "$cap" "$@" 2>&1 | grep -v -e 'Unable to initialize backend' -e '^W0000' -e '^I0000'
  local rc=${PIPESTATUS[0]}
  (( rc == 124 || rc == 137 )) && echo "## $name: stopped at its time limit (rows so far kept)"
  (( rc != 0 && rc != 124 && rc != 137 )) && echo "## $name: failed with exit status $rc"
  return 0
}

BF16=(--config.model.dtype=bfloat16 --config.vae.dtype=bfloat16)
# The config's reverse stage evaluates 2 heads per example (diffusion.heads_per_example=2, heads
# on demand); reverse and baseline first (their ratio is the point), the VAE last. The
# all-heads reverse row (heads_per_example=0: 89 GiB on the H200 at batch 128, more than an
# 80 GB card holds) comes last of all.
run 130 "training float32" python3 benchmarks/training.py --config "$CONFIG" --steps 5 \
  --stages reverse,baseline,vae --out "$OUT/gpu_training_float32.json"
run 120 "training bfloat16" python3 benchmarks/training.py --config "$CONFIG" --steps 5 \
  --stages reverse,baseline,vae "${BF16[@]}" --out "$OUT/gpu_training_bfloat16.json"
# Every sampler row but x0_jump K = T (T network calls per image; measured by scaling.sh).
T="$(python3 -c "import sys; sys.path.insert(0, '.'); from pixdiff_jax import config as c; \
print(c.load_config_file('$CONFIG').diffusion.num_steps)" 2>/dev/null | tail -1)"
SAMPLERS=ddpm_1000,paper_K1,x0_jump_K1,x0_jump_K2,ddim_10,ddim_100,dpm_solver_pp_2m_10,dpm_solver_pp_2m_20
(( ${T:-0} >= 10 )) && SAMPLERS="$SAMPLERS,x0_jump_K10"
run 100 "sampling float32" python3 benchmarks/sampling.py --config "$CONFIG" \
  --batch_size "$SAMPLE_BATCH" --repeats 5 --only "$SAMPLERS" --out "$OUT/gpu_sampling_float32.json"
run 50 "sampling bfloat16 (subset)" python3 benchmarks/sampling.py --config "$CONFIG" \
  --batch_size "$SAMPLE_BATCH" --repeats 5 "${BF16[@]}" \
  --only ddpm_1000,paper_K1,x0_jump_K2,ddim_10 --out "$OUT/gpu_sampling_bfloat16.json"
run 50 "training float32, all heads" python3 benchmarks/training.py --config "$CONFIG" --steps 5 \
  --stages reverse --config.diffusion.heads_per_example=0 --out "$OUT/gpu_training_float32_all_heads.json"

python3 - "$OUT" "$GPU_NAME" "$CONFIG" <<'PY'
import json, os, sys
out, gpu, config = sys.argv[1:4]
def load(name):
  path = os.path.join(out, name)
  return json.load(open(path)) if os.path.exists(path) else []
def f(v, nd=4):
  return '-' if v is None else (f'{v:.{nd}g}' if isinstance(v, float) else str(v))
print(f'\n# {gpu} -- {config}\n')
print('| training stage | dtype | s/step | images/s | compile s | matmul GFLOP/step | TFLOP/s | MFU | XLA GFLOP/step | XLA plan GiB | peak GiB | vs baseline |')
print('|---|---|---|---|---|---|---|---|---|---|---|---|')
for name, dt in (('float32', 'float32'), ('bfloat16', 'bfloat16'),
                 ('float32_all_heads', 'float32')):
  for r in load(f'gpu_training_{name}.json'):
    stage = r['stage'] + (' (all heads)' if name.endswith('all_heads') else '')
    mfu = '-' if r.get('mfu') is None else f"{100 * r['mfu']:.1f}%"
    print(f"| {stage} | {dt} | {f(r['seconds_per_step'])} | {f(r['images_per_second'])} | "
          f"{f(r['compile_seconds'], 3)} | {f(r.get('model_gflop_per_step'))} | "
          f"{f(r.get('model_tflops_per_second'), 3)} | {mfu} | {f(r['gflop_per_step'])} | "
          f"{f(r.get('xla_memory_gib'), 3)} | {f(r['peak_memory_gib'], 3)} | "
          f"{f(r.get('ratio_to_baseline'), 3)} |")
print('\n| sampler | dtype | network evals | s/image | images/s | compile s | speed-up vs DDPM-1000 |')
print('|---|---|---|---|---|---|---|')
for dt in ('float32', 'bfloat16'):
  for r in load(f'gpu_sampling_{dt}.json'):
    print(f"| {r['sampler']} | {dt} | {r['network_evals']} | {f(r['seconds_per_image'])} | "
          f"{f(r['images_per_second'])} | {f(r['compile_seconds'], 3)} | "
          f"{f(r.get('ratio_to_ddpm1000'), 4)} |")
b = next((r['batch_size'] for r in load('gpu_sampling_float32.json')), '-')
t = next((r['batch_size'] for r in load('gpu_training_float32.json')), '-')
print(f'\ntraining batch {t}, sampling batch {b}; JSON rows in {out}/gpu_*.json. MFU: matmul '
      'FLOPs counted on the jaxpr (the same on every backend; XLA GFLOP/step is XLA\'s own count, '
      'which on a GPU misses the cuDNN convolutions) per second over the card\'s dense peak for '
      'the dtype (float32: TF32 tensor cores), benchmarks/bench_util.py PEAK_TFLOPS')
PY
echo "# gpu.sh: done in ${SECONDS} s"
