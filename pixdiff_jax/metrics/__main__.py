"""``python -m pixdiff_jax.metrics SAMPLES.npz``: FD_efflite0 of any samples vs a dataset split.

SAMPLES.npz holds ``images``: uint8 ``[N, H, W, C]`` (or ``[N, H, W]``); 32x32 samples of the
28x28 datasets are centre-cropped to 28 (the training pipeline's padding is not data). Prints ONE
JSON object on stdout, e.g.::

    {"fd_efflite0": 31.2, "n": 2000, "dataset": "fashion_mnist", "split": "test",
     "reference_n": 10000, "crop_to": 28, "weights_sha256": "...", "floor_fd_efflite0": 29.1}

``floor_fd_efflite0`` (with ``--floor``): ``n`` random training images against the same reference,
the score of a perfect generator at this sample size. Progress bars go to stderr; a user mistake
ends in one ``error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from pixdiff_jax.errors import InputError, UserError


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m pixdiff_jax.metrics',
                              description='FD_efflite0 of SAMPLES.npz against a dataset split.')
  p.add_argument('samples', help='.npz file with key "images" (uint8 [N, H, W, C])')
  p.add_argument('--dataset', default='fashion_mnist',
                 help='reference data: fashion_mnist, mnist, or npz (with --data_path)')
  p.add_argument('--split', default='test', help='reference split (default: test, all images)')
  p.add_argument('--data_path', default='',
                 help='directory of the IDX files, or the .npz of dataset "npz"')
  p.add_argument('--n', type=int, default=0, help='use only the first N samples (default: all)')
  p.add_argument('--floor', action='store_true',
                 help='also compute the real-vs-real floor (N random training images)')
  p.add_argument('--batch_size', type=int, default=200, help='images per network call')
  p.add_argument('--resize', action='store_true',
                 help='resize samples whose size differs from the reference images\' '
                      '(bilinear; recorded as "resized_from" in the JSON); without it they are '
                      'refused')
  p.add_argument('--compilation_cache', default=os.path.expanduser('~/.cache/pixdiff_jax/xla'),
                 help="JAX's persistent compilation cache (as main.py); '' disables it")
  return p


def _load_samples(path: str, n: int) -> np.ndarray:
  from pixdiff_jax.metrics.extractor import check_images  # pylint: disable=g-import-not-at-top
  try:
    f = np.load(path)
  except (OSError, EOFError, ValueError) as e:
    raise InputError(f'cannot read {path} as a .npz file ({type(e).__name__})') from e
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise InputError(f'{path} is a .npy array, not a .npz file with key "images"')
  with f:
    if 'images' not in f.files:
      raise InputError(f'{path}: no key "images" (keys: {f.files})')
    images = f['images']
  images = check_images(images, f'{path}: "images"')
  if n < 0:
    raise InputError(f'--n must be >= 0, got {n}')
  if n > len(images):
    raise InputError(f'--n {n} but {path} holds only {len(images)} images')
  return images[:n] if n else images


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from pixdiff_jax import metrics  # pylint: disable=g-import-not-at-top
  if args.compilation_cache and not jax.config.jax_compilation_cache_dir:
    from pixdiff_jax.utils import xla_cache  # pylint: disable=g-import-not-at-top
    xla_cache.use(args.compilation_cache)
  try:
    images = _load_samples(args.samples, args.n)
    if len(images) < 2:
      raise InputError(f'a covariance needs at least 2 samples, got {len(images)}')
    reference = metrics.load_split(args.dataset, args.split, args.data_path)
    images, crop, resized_from = metrics.match_reference(
        images, reference.shape, dataset=args.dataset, split=args.split,
        what=f'the images in {args.samples}', resize=args.resize)
    ex = metrics.get_feature_extractor('efflite0')
    # = metrics.reference_stats (the same cache entry), without reading the split twice.
    mu_r, sigma_r = metrics.cached_stats(ex, reference, tag=f'{args.dataset}-{args.split}')
    mu, sigma = metrics.gaussian_stats(ex(images, crop_to=crop, batch_size=args.batch_size))
    result = {'fd_efflite0': metrics.frechet_distance(mu, sigma, mu_r, sigma_r),
              'n': len(images), 'dataset': args.dataset, 'split': args.split,
              'reference_n': len(reference), 'crop_to': crop, 'weights_sha256': ex.weights_hash}
    if resized_from is not None:
      result['resized_from'] = resized_from
      result['resized_to'] = list(reference.shape[1:3])
    if args.floor:
      result['floor_fd_efflite0'] = metrics.real_floor(
          ex, len(images), dataset=args.dataset, split=args.split, path=args.data_path)
  except UserError as e:  # includes DatasetNotFoundError and WeightsNotFoundError
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
