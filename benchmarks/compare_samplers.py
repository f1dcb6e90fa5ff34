"""Sampler settings side by side on one trained pixel-aware workdir.

    python benchmarks/compare_samplers.py --workdir runs/fmnist [--num_samples 64]

For each setting: a PNG grid in ``WORKDIR/samples/compare_<name>.png``, the network
evaluations, seconds per image (median of 3 timed batches after compilation, this machine), and
two cheap statistics of the samples against real training images: the mean absolute
difference of the per-pixel mean image and of the per-pixel standard deviation (lower is closer;
NOT a quality metric like FID, only a sanity check that is printed beside the pictures).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from pixdiff_jax import config_utils, data, image_grid, sampling

SETTINGS = {
    'paper_K1_eta1_noclip_standard': dict(preset='paper'),
    'K1_eta0_noclip_scale': dict(preset='custom', network_calls=1, eta=0.0,
                                 clip_denoised=False, prior='scale'),
    'K1_eta0_clip_scale': dict(preset='custom', network_calls=1, eta=0.0, clip_denoised=True,
                               prior='scale'),
    'K10_eta0_clip_scale': dict(preset='custom', network_calls=10, eta=0.0,
                                clip_denoised=True, prior='scale'),
    'K10_eta0_noclip_scale': dict(preset='custom', network_calls=10, eta=0.0,
                                  clip_denoised=False, prior='scale'),
    'KT_eta0_noclip_scale': dict(preset='custom', network_calls=-1, eta=0.0,
                                 clip_denoised=False, prior='scale'),
    'KT_eta1_clip_scale': dict(preset='custom', network_calls=-1, eta=1.0, clip_denoised=True,
                               prior='scale'),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--num_samples', type=int, default=64)
  parser.add_argument('--only', default='', help='comma-separated setting names')
  args = parser.parse_args()
  config = config_utils.load_config(args.workdir)
  T = config.diffusion.num_steps
  real = data.load_images(config)[:5000].astype(np.float32) / 255.0
  names = [n for n in SETTINGS if not args.only or n in args.only.split(',')]
  rows = []
  for name in names:
    s = dict(SETTINGS[name])
    if s.get('network_calls') == -1:
      s['network_calls'] = T
    fn, variables = sampling.load_sampler(args.workdir, batch_size=args.num_samples, **s)
    jitted = jax.jit(fn)
    key = jax.random.PRNGKey(0)
    images = np.asarray(jax.block_until_ready(jitted(variables, key)))
    times = []
    for r in range(3):
      t0 = time.perf_counter()
      jax.block_until_ready(jitted(variables, jax.random.fold_in(key, r + 1)))
      times.append(time.perf_counter() - t0)
    path = os.path.join(args.workdir, 'samples', f'compare_{name}.png')
    image_grid.save_grid(path, image_grid.to_uint8(images))
    rows.append({
        'setting': name, 'network_evals': fn.network_evals,
        'sec_per_image': float(np.median(times)) / args.num_samples,
        'mean_image_mad': float(np.abs(images.mean(0) - real.mean(0)).mean()),
        'std_image_mad': float(np.abs(images.std(0) - real.std(0)).mean()),
        'png': path})
    print(json.dumps(rows[-1]), flush=True)


if __name__ == '__main__':
  main()
