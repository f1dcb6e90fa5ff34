"""``--mode sample``: images from a trained workdir into ``WORKDIR/samples/``."""
from __future__ import annotations

import os
import sys
import time

from pixdiff_jax.cli.errors import check_writable_dir, UsageError
from pixdiff_jax.cli.flags import FLAGS


def sample(config, workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import checkify  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from pixdiff_jax import config as config_lib, data, sampling
  from pixdiff_jax.utils import distributed, image_grid, progress
  # pylint: enable=g-import-not-at-top

  stored = config_lib.load_config(workdir)
  # The stored config defines the networks; the command line's config supplies the sampler.
  config_lib.check_compatible(stored, config)
  n = FLAGS.num_samples
  if n < 1:
    raise UsageError(f'--num_samples must be >= 1, got {n}')
  out_dir = os.path.join(workdir, 'samples')
  check_writable_dir(out_dir, 'samples folder')  # before any work
  batch = min(config.sampling.batch_size, n)
  s = config.sampling
  # The command line's sampling section with its preset applied is the whole sampler; passed
  # as 'custom' so that the workdir's stored sampling fields play no part.
  settings = config_lib.sampler_settings(config)
  fields = ('sampler', 'network_calls', 'eta', 'clip_denoised', 'prior', 'update', 'num_steps',
            'distilled')
  sample_fn, variables = sampling.load_sampler(
      workdir, batch_size=batch, use_ema=s.use_ema, preset='custom', check_finite=True,
      **{k: settings[k] for k in fields})
  steps = sample_fn.checkpoint_steps
  print('sampling from checkpoints: ' + ', '.join(
      f'{stage} step {step}' for stage, step in steps.items()), file=sys.stderr, flush=True)
  key = jax.random.PRNGKey(FLAGS.sample_seed)
  t0 = time.perf_counter()
  compiled = jax.jit(sample_fn).lower(variables, key).compile()
  compile_seconds = time.perf_counter() - t0
  chunks, times = [], []
  # Batch b uses key fold_in(key, b) whichever process draws it: process p of P draws batches
  # p, p + P, ... and process 0 gathers them, so the images do not depend on the process layout.
  num_batches = -(-n // batch)
  mine = distributed.my_items(num_batches)
  bar = progress.progress(total=len(mine), desc='sample', every=max(1, len(mine) // 10),
                          disable=jax.process_index() != 0)
  for b in mine:
    t0 = time.perf_counter()
    err, images = jax.block_until_ready(compiled(variables, jax.random.fold_in(key, b)))
    times.append(time.perf_counter() - t0)
    try:
      err.throw()
    except checkify.JaxRuntimeError as e:
      raise UsageError(f'{str(e).splitlines()[0]} (checkpoints {steps} in {workdir})') from e
    chunks.append(data.to_uint8(np.asarray(images)))
    bar.update(1)
  bar.close()
  local = np.stack(chunks) if chunks else np.zeros(
      (0, batch, stored.data.image_size, stored.data.image_size, stored.data.num_channels),
      np.uint8)
  images = distributed.gather_items(local, num_batches).reshape((-1,) + local.shape[2:])[:n]
  if jax.process_index() != 0:
    return {}
  st = dict(sample_fn.settings, preset=settings['preset'])
  if config.method == 'pixel_aware':
    default_name = (f"{st['sampler']}_{st['preset']}_K{st['network_calls']}_eta{st['eta']:g}_"
                    f"{st['update']}")
  elif st['distilled']:
    default_name = f"distilled_K{st['network_calls']}"
  else:
    default_name = f"{st['sampler']}_S{sample_fn.network_evals}"
  name = FLAGS.sample_name or default_name
  npz_path = os.path.join(out_dir, f'{name}.npz')
  png_path = os.path.join(out_dir, f'{name}.png')
  np.savez_compressed(npz_path, images=images)
  image_grid.save_grid(png_path, images[:min(n, 100)])
  return {'npz': npz_path, 'png': png_path, 'num_samples': int(n),
          'network_evals': int(sample_fn.network_evals), 'settings': st,
          'checkpoint_steps': steps, 'compile_seconds': compile_seconds,
          # Every batch runs the executable compiled above: no compilation is timed here.
          'seconds_per_image_after_compile': float(np.sum(times)) / (len(times) * batch)}
