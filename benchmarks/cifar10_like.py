"""Writes a CIFAR-10-format archive of synthetic images (benchmarks/gpu_e2e.sh's data).

    python benchmarks/cifar10_like.py OUT.tar.gz [--train 5000] [--test 1000] [--distinct 500]

Each image is a smooth random picture (a coloured background and a few soft coloured blobs); a
set of ``--distinct`` images is drawn once and repeated to fill the splits. The file has the
real archive's members and pickled ``[N, 3072]`` batches (``pixdiff_jax.data.cifar10_archive``),
so ``--config.data.path=OUT.tar.gz --config.data.md5=`` feeds it to configs/cifar10.py. The
repository carries the generator, not the file; the same arguments give the same images.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pixdiff_jax.data import cifar10_archive  # noqa: E402  pylint: disable=wrong-import-position


def synthetic_images(n: int, seed: int = 0) -> np.ndarray:
  """``uint8 [n, 32, 32, 3]`` smooth pictures: background colour plus 1-4 Gaussian blobs."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 31.0
  out = np.empty((n, 32, 32, 3), np.uint8)
  for k in range(n):
    img = np.broadcast_to(rng.uniform(0, 1, 3), (32, 32, 3)).copy()
    for _ in range(rng.integers(1, 5)):
      cy, cx = rng.uniform(0.1, 0.9, 2)
      r = rng.uniform(0.08, 0.3)
      w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
      img = (1 - w) * img + w * rng.uniform(0, 1, 3)
    out[k] = np.clip(np.round(255 * img), 0, 255).astype(np.uint8)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('out', help='the .tar.gz to write')
  parser.add_argument('--train', type=int, default=5000, help='train images (5 batches)')
  parser.add_argument('--test', type=int, default=1000, help='test images')
  parser.add_argument('--distinct', type=int, default=500, help='distinct images, repeated')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if min(args.train, args.test, args.distinct) < 1 or args.train < 5:
    parser.error('--train (>= 5), --test and --distinct must be positive')
  base = synthetic_images(args.distinct, args.seed)
  pick = lambda n, off: base[(np.arange(n) + off) % len(base)]
  path = cifar10_archive.write_cifar10(args.out, pick(args.train, 0), pick(args.test, 7))
  print(f'wrote {path}: {args.train} train and {args.test} test images '
        f'({args.distinct} distinct, repeated)')


if __name__ == '__main__':
  main()
