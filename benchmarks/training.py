"""Training speed per stage: seconds per step, images per second, compile time, FLOPs, memory.

    python benchmarks/training.py --config configs/fashion_mnist.py [--out FILE.json]
        [--steps 5] [--stages vae,reverse,baseline] [--config.x=y ...]

Stages, all at ``training.batch_size`` with randomly initialised networks and random images
(speed needs no data): ``vae`` (stage 1), ``reverse`` (the T-headed U-Net with the frozen VAE's
pass inside every step) and ``baseline`` (the one-head U-Net on the same backbone,
``config_lib.one_head_baseline_config``, DDPM's loss). Each is the train step of
``pixdiff_jax.train.get_p_train_step`` (optimiser, EMA and all), compiled ahead of time.

Per row: ``seconds_per_step`` (median of ``--steps`` timed dispatches after one warm-up, divided
by ``training.steps_per_dispatch``), ``images_per_second``, ``compile_seconds`` (trace + lower +
XLA compile, no persistent cache), ``gflop_per_step`` (XLA's ``compiled.cost_analysis()``;
reported only for one step per dispatch, as XLA counts a scanned body once), ``gflops_per_second``
achieved, ``xla_memory_gib`` (XLA's plan for one dispatch: arguments + outputs + temporaries),
``peak_memory_gib`` (process peak so far: device ``peak_bytes_in_use`` on an accelerator, host
peak RSS on the CPU), ``model_gflop_per_step`` (the matrix FLOPs of the step counted on its jaxpr,
``pixdiff_jax.utils.flops``: the same on every backend, where XLA's GPU count misses the cuDNN
convolutions), ``model_tflops_per_second``, ``mfu`` (those over the card's dense matrix peak for
the compute dtype, ``bench_util.PEAK_TFLOPS``; float32 = TF32 tensor cores) and
``ratio_to_baseline`` (the stage's seconds per step over the
baseline's). ``--config.model.dtype=bfloat16 --config.vae.dtype=bfloat16`` computes in bfloat16
with float32 parameters, optimiser and loss. Prints a Markdown table; ``--out`` gets a JSON list
(rewritten after every stage, so a run stopped early keeps what it measured).
"""
from __future__ import annotations

import statistics
import sys
import time

import flax.jax_utils
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import bench_util
from pixdiff_jax import config as config_lib, models
from pixdiff_jax.training import trainer
from pixdiff_jax.training.state import create_train_state, make_optimizer
from pixdiff_jax.utils import flops as flops_lib

config_flags.DEFINE_config_file('config', None, 'pixel-aware config file (configs/*.py)',
                                lock_config=True)
flags.DEFINE_string('out', None, 'write the rows as a JSON list to this file')
flags.DEFINE_integer('steps', 5, 'timed dispatches per stage (the median is reported)')
flags.DEFINE_integer('ddpm_steps', 1000, 'steps T of the one-head baseline schedule')
flags.DEFINE_list('stages', ['vae', 'reverse', 'baseline'], 'stages to measure, in this order')
FLAGS = flags.FLAGS

COLUMNS = ('stage', 'dtype', 'seconds_per_step', 'images_per_second', 'compile_seconds',
           'gflop_per_step', 'gflops_per_second', 'model_gflop_per_step',
           'model_tflops_per_second', 'mfu', 'xla_memory_gib', 'peak_memory_gib',
           'ratio_to_baseline')
STAGES = ('vae', 'reverse', 'baseline')
GIB = 2.0 ** 30


def random_batch(config, rng: np.random.Generator) -> np.ndarray:
  """``[devices, steps_per_dispatch, batch / devices, H, W, C]`` float32 images in the model's
  range (``[eps, 1]`` pixel-aware, ``[-1, 1]`` DDPM)."""
  d, t = jax.local_device_count(), config.training
  shape = (d, t.steps_per_dispatch, t.batch_size // d, config.data.image_size,
           config.data.image_size, config.data.num_channels)
  lo = config.diffusion.eps if config.method == 'pixel_aware' else -1.0
  return rng.uniform(lo, 1.0, shape).astype(np.float32)


def measure_stage(config, stage: trainer.Stage, params, num_dispatches: int,
                  dtype: str = 'float32') -> dict:
  """Compiles and times ``stage``'s train step from ``params``; returns its row."""
  t = config.training
  tx = make_optimizer(config.optim)
  state = jax.jit(lambda p: create_train_state(p, tx))(params)
  p_state = flax.jax_utils.replicate(state)
  p_aux = flax.jax_utils.replicate(stage.aux)
  step_fn = trainer.get_p_train_step(stage.loss_fn, tx, ema_decay=t.ema_decay,
                                   ema_warmup=t.ema_warmup)
  block = random_batch(config, np.random.default_rng(0))
  key = jax.random.PRNGKey(1)
  # Matrix FLOPs of one step on one device (traced only; pmap's body is one device's program;
  # a scanned block counts every step).
  model_flop = flops_lib.matmul_flops(step_fn, p_state, block, key, p_aux) / t.steps_per_dispatch
  compiled, compile_s = bench_util.compile_timed(step_fn, p_state, block, key, p_aux)
  p_state, metrics = compiled(p_state, block, key, p_aux)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(num_dispatches):
    t0 = time.perf_counter()
    p_state, metrics = compiled(p_state, block, key, p_aux)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  k = t.steps_per_dispatch
  sec = statistics.median(times) / k
  flop = bench_util.flops(compiled) if k == 1 else None
  mem = bench_util.xla_memory_bytes(compiled)
  loss = float(np.asarray(metrics['loss']).ravel()[0])
  per_device_tflops = model_flop / sec / 1e12
  peak = bench_util.peak_tflops(jax.local_devices()[0].device_kind, dtype)
  row = {'stage': stage.name, 'seconds_per_step': sec, 'images_per_second': t.batch_size / sec,
         'compile_seconds': compile_s,
         'gflop_per_step': None if flop is None else flop / 1e9,
         'gflops_per_second': None if flop is None else flop / 1e9 / sec,
         'model_gflop_per_step': model_flop / 1e9,
         'model_tflops_per_second': per_device_tflops,
         'mfu': None if peak is None else per_device_tflops / peak,
         'xla_memory_gib': None if mem is None else mem / GIB,
         'peak_memory_gib': bench_util.peak_memory_bytes() / GIB,
         'batch_size': t.batch_size, 'steps_per_dispatch': k, 'loss_finite': bool(np.isfinite(loss))}
  return row


def main(_):
  config = FLAGS.config
  if config.method != 'pixel_aware':
    print(f'error: --config must be a pixel-aware config (method={config.method!r}); the '
          'baseline stage is built from its backbone', file=sys.stderr)
    sys.exit(2)
  unknown = set(FLAGS.stages) - set(STAGES)
  if unknown:
    print(f'error: --stages names unknown stages {sorted(unknown)}; known: {list(STAGES)}',
          file=sys.stderr)
    sys.exit(2)
  config_lib.validate_config(config)
  baseline_config = config_lib.one_head_baseline_config(config, num_steps=FLAGS.ddpm_steps)
  device = bench_util.device_name()
  dtype = f"vae {config.vae.get('dtype', 'float32')}, model {config.model.get('dtype', 'float32')}"
  print(f'# training, {device}, batch {config.training.batch_size}, '
        f'T={config.diffusion.num_steps}, model.ch={config.model.ch}, {dtype}', flush=True)
  # The reverse stage's frozen VAE: randomly initialised too (its values do not change speed).
  vae_params = models.random_params(models.build_vae(config), config, seed=0)
  rows, failed = [], []
  for name in dict.fromkeys(FLAGS.stages):  # in the order given
    if name == 'baseline':
      stage = trainer.build_stage(baseline_config, 'ddpm')
      stage.name = 'baseline'
      cfg = baseline_config
      params = models.random_params(models.build_reverse_model(cfg), cfg, seed=2)
    else:
      stage = trainer.build_stage(config, name, vae_params=vae_params)
      cfg = config
      params = (vae_params if name == 'vae' else
                models.random_params(models.build_reverse_model(cfg), cfg, seed=1))
    net = 'vae' if name == 'vae' else 'model'
    try:
      row = measure_stage(cfg, stage, params, FLAGS.steps,
                          dtype=cfg[net].get('dtype', 'float32'))
    except Exception as err:  # pylint: disable=broad-except  (e.g. out of device memory)
      # One line, then the other stages: a time-boxed GPU run should not lose them.
      print(f'error: stage {name} failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}',
            file=sys.stderr, flush=True)
      failed.append(name)
      continue
    row.update(dtype=cfg[net].get('dtype', 'float32'), num_steps=config.diffusion.num_steps,
               device=device)
    rows.append(row)
    print(f'{name}: {row["seconds_per_step"]:.4g} s/step, compile {row["compile_seconds"]:.1f} s',
          flush=True)
    ref = {r['stage']: r['seconds_per_step'] for r in rows}.get('baseline')
    for r in rows:
      r['ratio_to_baseline'] = None if ref is None else r['seconds_per_step'] / ref
    bench_util.write_json(rows, FLAGS.out, quiet=True)  # after every row: a cut run keeps them
  bench_util.print_table(rows, COLUMNS)
  if FLAGS.out:
    print(f'wrote {FLAGS.out}')
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
