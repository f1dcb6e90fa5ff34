"""pixdiff_jax command line.

    python main.py --config configs/fashion_mnist.py --workdir runs/fmnist            # train
    python main.py --config configs/fashion_mnist.py --workdir runs/fmnist --mode sample
    python main.py --config configs/cifar10.py --mode info                            # sizes

Any config field can be overridden on the command line, e.g.
``--config.training.batch_size=32`` or ``--config.sampling.preset=paper``.
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, samples and metrics.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'info'], 'What to do.')
flags.DEFINE_enum('stage', 'all', ['all', 'vae', 'reverse', 'ddpm'],
                  'Which training stage(s) to run (train mode).')
flags.DEFINE_integer('num_samples', 64, 'Number of images to generate (sample mode).')
flags.DEFINE_string('sample_name', None,
                    'Base name of WORKDIR/samples/<name>.npz/.png (default: from the sampler).')
flags.DEFINE_integer('sample_seed', 0, 'Seed of the sampling RNG (sample mode).')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() first (multi-host launches).')


flags.DEFINE_string('compilation_cache', os.path.expanduser('~/.cache/pixdiff_jax/xla'),
                    "JAX persistent compilation cache directory ('' disables it).")


class UsageError(Exception):
  """A user mistake: printed as one line, no traceback."""


def _info(config) -> dict:
  from pixdiff_jax import models  # pylint: disable=g-import-not-at-top
  return models.count_params(config)


def _sample(config, workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from pixdiff_jax import config_utils, image_grid, sampling  # pylint: disable=g-import-not-at-top

  stored = config_utils.load_config(workdir)
  # The stored config defines the networks; the command line's config supplies the sampler.
  config_utils.check_compatible(stored, config)
  n = FLAGS.num_samples
  if n < 1:
    raise UsageError(f'--num_samples must be >= 1, got {n}')
  batch = min(config.sampling.batch_size, n)
  s = config.sampling
  # The command line's sampling section with its preset applied is the whole sampler; passed
  # as 'custom' so that the workdir's stored sampling fields play no part.
  settings = config_utils.sampler_settings(config)
  fields = ('sampler', 'network_calls', 'eta', 'clip_denoised', 'prior', 'update', 'num_steps')
  sample_fn, variables = sampling.load_sampler(
      workdir, batch_size=batch, use_ema=s.use_ema, preset='custom',
      **{k: settings[k] for k in fields})
  jitted = jax.jit(sample_fn)
  key = jax.random.PRNGKey(FLAGS.sample_seed)
  chunks, times = [], []
  for b in tqdm(range(-(-n // batch)), desc='sample', disable=jax.process_index() != 0):
    t0 = time.perf_counter()
    images = jax.block_until_ready(jitted(variables, jax.random.fold_in(key, b)))
    times.append(time.perf_counter() - t0)
    chunks.append(image_grid.to_uint8(np.asarray(images)))
  images = np.concatenate(chunks)[:n]
  st = dict(sample_fn.settings, preset=settings['preset'])
  name = FLAGS.sample_name or (
      f"{st['sampler']}_{st['preset']}_K{st['network_calls']}_eta{st['eta']:g}_{st['update']}"
      if config.method == 'pixel_aware' else f"{st['sampler']}_S{sample_fn.network_evals}")
  out_dir = os.path.join(workdir, 'samples')
  os.makedirs(out_dir, exist_ok=True)
  npz_path = os.path.join(out_dir, f'{name}.npz')
  png_path = os.path.join(out_dir, f'{name}.png')
  np.savez_compressed(npz_path, images=images)
  image_grid.save_grid(png_path, images[:min(n, 100)])
  steady = times[1:] if len(times) > 1 else times
  return {'npz': npz_path, 'png': png_path, 'num_samples': int(n),
          'network_evals': int(sample_fn.network_evals), 'settings': st,
          'seconds_per_image_after_compile': float(np.median(steady)) / batch}


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax and JAX internals; their warnings and errors still show."""

  def filter(self, record):
    if record.levelno >= std_logging.WARNING:
      return True
    path = record.pathname.replace(os.sep, '/')
    return not any(f'/{lib}/' in path for lib in ('orbax', 'jax', 'jaxlib', 'etils'))


def _setup_runtime():
  std_logging.getLogger('absl').addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _setup_runtime()
  config = FLAGS.config
  if config is None:
    raise app.UsageError('--config is required, e.g. --config configs/fashion_mnist.py')
  try:
    if FLAGS.mode == 'info':
      print(json.dumps(_info(config), indent=2))
      return
    if FLAGS.workdir is None:
      raise UsageError(f'--workdir is required for --mode {FLAGS.mode}')
    if FLAGS.distributed:
      import jax  # pylint: disable=g-import-not-at-top
      jax.distributed.initialize()
    if FLAGS.mode == 'train':
      from pixdiff_jax import train  # pylint: disable=g-import-not-at-top
      stages = None if FLAGS.stage == 'all' else [FLAGS.stage]
      train.train(config, FLAGS.workdir, stages=stages)
      logging.info('training finished; workdir %s', FLAGS.workdir)
    else:
      print(json.dumps(_sample(config, FLAGS.workdir), indent=2))
  except (UsageError, ValueError, FileNotFoundError) as err:
    # User mistakes (bad config, missing data or checkpoints) end in one readable line.
    if os.environ.get('PIXDIFF_TRACEBACK'):
      raise
    print(f'error: {err}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
