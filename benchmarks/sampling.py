"""Sampling speed of every sampler on the same backbone, with randomly initialised networks.

    python benchmarks/sampling.py --config configs/fashion_mnist.py [--out FILE.json]
        [--batch_size 8] [--repeats 5] [--only x0_jump_K10,ddim_10] [--config.x=y ...]

Speed needs no training: the networks of ``--config`` (the scale VAE and the T-headed U-Net)
and the one-head U-Net on the same backbone (``config_lib.one_head_baseline_config``: DDPM's
linear schedule with ``--ddpm_steps`` steps) are initialised at random, and every sampler runs
through the public ``pixdiff_jax.get_sample_fn`` in this one process:

* pixel-aware: ``paper_K1`` (the paper's preset: one network call, the recursion of
  Algorithm 1), ``x0_jump_K{K}`` for K = 1, 2, 10, T (the ``consistent`` preset),
  ``distilled_K1`` and ``distilled_K2`` (the distill stage's student: the same network, read
  with one or two calls);
* one-head baseline: ``ddpm_1000`` (ancestral), ``ddim_10``, ``ddim_100``,
  ``dpm_solver_pp_2m_10``, ``dpm_solver_pp_2m_20``, ``ddpm_distilled_K1`` and
  ``ddpm_distilled_K2`` (its student, one or two calls).

Per row: ``network_evals``, ``seconds_per_image`` (median of ``--repeats`` timed batches of
``--batch_size`` images after compilation and one warm-up batch), ``images_per_second``,
``compile_seconds`` (trace + lower + XLA compile, no persistent cache) and
``ratio_to_ddpm1000`` (DDPM-1000's seconds per image over the row's, same run; DDPM runs
first). Prints a Markdown table and writes the rows as a JSON list to ``--out`` (rewritten after
every row, so a run stopped early keeps what it measured).
"""
from __future__ import annotations

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

import bench_util
import pixdiff_jax
from pixdiff_jax import config as config_lib, models

config_flags.DEFINE_config_file('config', None, 'pixel-aware config file (configs/*.py)',
                                lock_config=True)
flags.DEFINE_string('out', None, 'write the rows as a JSON list to this file')
flags.DEFINE_integer('batch_size', 8, 'images per timed batch')
flags.DEFINE_integer('repeats', 5, 'timed batches per sampler (the median is reported)')
flags.DEFINE_integer('warmup', 1, 'untimed batches after compilation')
flags.DEFINE_integer('ddpm_steps', 1000, 'steps T of the one-head baseline schedule')
flags.DEFINE_list('only', [], 'run only these samplers (names as in the table)')
flags.DEFINE_bool('all_heads', False, 'pixel-aware samplers evaluate all T heads at every call '
                  '(as before heads on demand), for before/after comparisons')
FLAGS = flags.FLAGS

COLUMNS = ('sampler', 'network_evals', 'seconds_per_image', 'images_per_second',
           'compile_seconds', 'ratio_to_ddpm1000')


def sampler_settings(num_steps: int, ddpm_steps: int) -> list[tuple[str, str, dict]]:
  """``(name, which networks, get_sample_fn overrides)`` of every row, in table order."""
  base = dict(preset='custom', clip_denoised=True, eta=0.0)
  # DDPM first: every ratio needs it, and a run cut short (gpu.sh's time limit) still has it.
  rows = [(f'ddpm_{ddpm_steps}', 'baseline', dict(base, sampler='ddpm')),
          ('paper_K1', 'pixel_aware', dict(preset='paper'))]
  for k in sorted({1, 2, 10, num_steps}):
    if k <= num_steps:
      rows.append((f'x0_jump_K{k}', 'pixel_aware', dict(preset='consistent', network_calls=k)))
  rows += [('distilled_K1', 'pixel_aware', dict(preset='distilled')),
           ('distilled_K2', 'pixel_aware', dict(preset='distilled_K2'))]
  for s in (10, 100):
    rows.append((f'ddim_{s}', 'baseline', dict(base, sampler='ddim', num_steps=s)))
  for s in (10, 20):
    rows.append((f'dpm_solver_pp_2m_{s}', 'baseline', dict(base, sampler='dpm_solver',
                                                           num_steps=s)))
  rows += [('ddpm_distilled_K1', 'baseline', dict(preset='distilled')),
           ('ddpm_distilled_K2', 'baseline', dict(preset='distilled_K2'))]
  return rows


def random_variables(config, baseline_config):
  """Randomly initialised ``{'pixel_aware': {'vae', 'reverse'}, 'baseline': {'model'}}``."""
  return {
      'pixel_aware': {'vae': models.random_params(models.build_vae(config), config, 0),
                      'reverse': models.random_params(models.build_reverse_model(config),
                                                      config, 1)},
      'baseline': {'model': models.random_params(models.build_reverse_model(baseline_config),
                                                 baseline_config, 2)},
  }


def main(_):
  config = FLAGS.config
  if config.method != 'pixel_aware':
    print(f'error: --config must be a pixel-aware config (method={config.method!r}); the '
          'one-head baseline is built from its backbone', file=sys.stderr)
    sys.exit(2)
  ddpm_name = f'ddpm_{FLAGS.ddpm_steps}'
  baseline_config = config_lib.one_head_baseline_config(config, num_steps=FLAGS.ddpm_steps)
  configs = {'pixel_aware': config, 'baseline': baseline_config}
  variables = random_variables(config, baseline_config)
  specs = sampler_settings(config.diffusion.num_steps, FLAGS.ddpm_steps)
  unknown = set(FLAGS.only) - {name for name, _, _ in specs}
  if unknown:
    print(f'error: --only names unknown samplers {sorted(unknown)}; known: '
          f'{[name for name, _, _ in specs]}', file=sys.stderr)
    sys.exit(2)
  device = bench_util.device_name()
  print(f'# sampling, {device}, batch {FLAGS.batch_size}, T={config.diffusion.num_steps}, '
        f'model.ch={config.model.ch}', flush=True)
  rows, failed = [], []
  key = jax.random.PRNGKey(1)
  for name, which, overrides in specs:
    if FLAGS.only and name not in FLAGS.only:
      continue
    if which == 'pixel_aware':
      overrides = dict(overrides, all_heads=FLAGS.all_heads)
    fn = pixdiff_jax.get_sample_fn(configs[which], batch_size=FLAGS.batch_size, **overrides)
    try:
      compiled, compile_s = bench_util.compile_timed(jax.jit(fn), variables[which], key)
      sec = bench_util.median_seconds(
          lambda r, c=compiled, v=variables[which]: c(v, jax.random.fold_in(key, r + 100)),
          FLAGS.repeats, FLAGS.warmup)
    except Exception as err:  # pylint: disable=broad-except  (e.g. out of device memory)
      # One line, then the other samplers: a time-boxed GPU run should not lose them.
      print(f'error: sampler {name} failed: {type(err).__name__}: '
            f'{str(err).splitlines()[0][:300]}', file=sys.stderr, flush=True)
      failed.append(name)
      continue
    row = {'sampler': name, 'network_evals': int(fn.network_evals),
           'seconds_per_image': sec / FLAGS.batch_size,
           'images_per_second': FLAGS.batch_size / sec, 'compile_seconds': compile_s,
           'batch_size': FLAGS.batch_size, 'num_steps': config.diffusion.num_steps,
           'all_heads': FLAGS.all_heads and which == 'pixel_aware', 'device': device}
    rows.append(row)
    print(f'{name}: {row["seconds_per_image"]:.4g} s/image, compile {compile_s:.1f} s',
          flush=True)
    ref = {r['sampler']: r['seconds_per_image'] for r in rows}.get(ddpm_name)
    for r in rows:
      r['ratio_to_ddpm1000'] = None if ref is None else ref / r['seconds_per_image']
    bench_util.write_json(rows, FLAGS.out, quiet=True)  # after every row: a cut run keeps them
  bench_util.print_table(rows, COLUMNS)
  if FLAGS.out:
    print(f'wrote {FLAGS.out}')
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
