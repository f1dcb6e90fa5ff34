"""Sampler settings side by side on one trained pixel-aware workdir.

    python scripts/compare_samplers.py --workdir runs/fmnist [--num_samples 256] [--only A,B]

For each setting (and ``vae_prior``: the VAE's scale prior decoded to an image, no reverse
model): a PNG grid of the first 64 images in ``WORKDIR/samples/compare_<name>.png``, the network
evaluations, seconds per image (median of ``--timing_repeats`` timed batches after compilation,
this machine), two cheap statistics against real training images (mean absolute difference of
the per-pixel mean image and of the per-pixel standard deviation), and for Fashion-MNIST the
scores of ``fmnist_classifier.py`` (classifier score, penultimate-feature Frechet distance).
None of these is the evaluation issue's FID; they are sanity numbers printed beside pictures.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

import fmnist_classifier
from pixdiff_jax import config as config_lib, data, models, sampling
from pixdiff_jax.storage import checkpointing
from pixdiff_jax.utils import image_grid

def _custom(K, eta, clip, update='recursion', prior='scale'):
  return dict(preset='custom', network_calls=K, eta=eta, clip_denoised=clip, prior=prior,
              update=update)


# K = -1 stands for T (one network call per step), K = -2 for T // 2.
SETTINGS = {
    'paper_K1_eta1_noclip_standard': dict(preset='paper'),
    'K1_eta1_noclip_scale': _custom(1, 1.0, False),
    'K1_eta0_noclip_scale': _custom(1, 0.0, False),
    'KT_eta0_noclip_scale': _custom(-1, 0.0, False),
    'KT_eta0_clip_scale': _custom(-1, 0.0, True),
    'KT_eta1_clip_scale': _custom(-1, 1.0, True),
    'K1_x0jump_clip_scale': _custom(1, 0.0, True, 'x0_jump'),
    'Khalf_x0jump_eta0_clip_scale': _custom(-2, 0.0, True, 'x0_jump'),
    'KT_x0jump_eta0_clip_scale': _custom(-1, 0.0, True, 'x0_jump'),
    'KT_x0jump_eta1_clip_scale': _custom(-1, 1.0, True, 'x0_jump'),
    'KT_x0jump_eta0_clip_standard': _custom(-1, 0.0, True, 'x0_jump', 'standard'),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--num_samples', type=int, default=256)
  parser.add_argument('--only', default='', help='comma-separated setting names')
  parser.add_argument('--timing_repeats', type=int, default=1)
  args = parser.parse_args()
  config = config_lib.load_config(args.workdir)
  T = config.diffusion.num_steps
  real = data.load_images(config)[:5000].astype(np.float32) / 255.0
  clf = None
  if config.data.dataset == 'fashion_mnist' and config.data.image_size == 32:
    clf = fmnist_classifier.get_classifier()
    print(json.dumps({'classifier_test_accuracy': clf.test_accuracy,
                      **{f'real_{k}': v for k, v in clf.scores(
                          clf.test_x[:args.num_samples]).items()}}), flush=True)
  names = [n for n in ['vae_prior', *SETTINGS] if not args.only or n in args.only.split(',')]
  for name in names:
    if name == 'vae_prior':
      vae_params = checkpointing.load_stage_params(config, args.workdir, 'vae',
                                           use_ema=config.sampling.use_ema)
      prior_fn = sampling.get_scale_prior_fn(config, models.build_vae(config),
                                             batch_size=args.num_samples)
      jitted = jax.jit(lambda variables, key: prior_fn(variables['vae'], key))
      variables, evals = {'vae': vae_params}, 0
    else:
      s = dict(SETTINGS[name])
      if 'network_calls' in s:
        s['network_calls'] = {-1: T, -2: max(T // 2, 1)}.get(s['network_calls'],
                                                              s['network_calls'])
      fn, variables = sampling.load_sampler(args.workdir, batch_size=args.num_samples, **s)
      jitted, evals = jax.jit(fn), fn.network_evals
    key = jax.random.PRNGKey(0)
    images = np.asarray(jax.block_until_ready(jitted(variables, key)))
    times = []
    for r in range(args.timing_repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(jitted(variables, jax.random.fold_in(key, r + 1)))
      times.append(time.perf_counter() - t0)
    path = os.path.join(args.workdir, 'samples', f'compare_{name}.png')
    image_grid.save_grid(path, data.to_uint8(images[:64]))
    row = {'setting': name, 'network_evals': evals,
           'sec_per_image': float(np.median(times)) / args.num_samples,
           'mean_image_mad': float(np.abs(images.mean(0) - real.mean(0)).mean()),
           'std_image_mad': float(np.abs(images.std(0) - real.std(0)).mean())}
    if clf is not None:
      row.update(clf.scores(images))
    row['png'] = path
    print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
