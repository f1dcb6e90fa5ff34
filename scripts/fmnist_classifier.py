"""A small Fashion-MNIST classifier used to score samples (a CPU-cheap sanity metric).

Not the evaluation issue's FID: a two-layer MLP (1024 -> 256 -> 64 -> 10) trained here, in
about 20 s on 2 CPU cores, on the 60k training images padded to 32x32 (the main job's format).
It gives two numbers for a set of images in ``[0, 1]``:

* ``classifier_score``: ``exp(E_x KL(p(y|x) || p(y)))`` (Inception-score style; 1 = no class
  information, 10 = confident and balanced over the 10 classes);
* ``feature_fd``: Frechet distance between Gaussians fitted to the 64-d penultimate features of
  the images and of the 10k test images (lower is closer; biased upwards for small sets, so
  compare settings at the same number of images only).

    python scripts/fmnist_classifier.py   # trains, prints test accuracy and real-data scores
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from pixdiff_jax import data

WIDTHS = (256, 64)


def _load(split: str) -> tuple[np.ndarray, np.ndarray]:
  prefix = {'train': 'train', 'test': 't10k'}[split]
  root = pathlib.Path(data.FASHION_MNIST_DIR)
  images = data.read_idx(root / f'{prefix}-images-idx3-ubyte.gz')
  labels = data.read_idx(root / f'{prefix}-labels-idx1-ubyte.gz').astype(np.int32)
  images = data.fit_to_size(images[..., None], image_size=32, num_channels=1, pad=True)
  return images.astype(np.float32) / 255.0, labels


def _init(rng, sizes):
  params = []
  for k, (m, n) in zip(jax.random.split(rng, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append((jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m), jnp.zeros(n)))
  return params


def _features(params, x):
  h = x.reshape(x.shape[0], -1)
  for w, b in params[:-1]:
    h = jax.nn.relu(h @ w + b)
  return h


def _logits(params, x):
  w, b = params[-1]
  return _features(params, x) @ w + b


class FashionClassifier:
  """Trains at construction; ``scores(images)`` returns the two numbers of the docstring."""

  def __init__(self, seed: int = 0, epochs: int = 4, batch_size: int = 256):
    x, y = _load('train')
    self.test_x, self.test_y = _load('test')
    rng = jax.random.PRNGKey(seed)
    params = _init(rng, (32 * 32,) + WIDTHS + (10,))
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb):
      def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(_logits(p, xb), yb).mean()
      g = jax.grad(loss)(params)
      updates, opt = tx.update(g, opt, params)
      return optax.apply_updates(params, updates), opt

    order = np.random.default_rng(seed)
    for _ in range(epochs):
      perm = order.permutation(len(x))
      for s in range(0, len(x) - batch_size + 1, batch_size):
        idx = perm[s:s + batch_size]
        params, opt = step(params, opt, x[idx], y[idx])
    self.params = params
    self._logits = jax.jit(_logits)
    self._features = jax.jit(_features)
    pred = np.argmax(np.asarray(self._logits(params, self.test_x)), -1)
    self.test_accuracy = float((pred == self.test_y).mean())
    f = np.asarray(self._features(params, self.test_x), np.float64)
    self._ref_mu, self._ref_cov = f.mean(0), np.cov(f, rowvar=False)

  def scores(self, images: np.ndarray) -> dict[str, float]:
    """``images``: float ``[N, 32, 32, 1]`` in ``[0, 1]``."""
    images = np.asarray(images, np.float32)
    p = np.asarray(jax.nn.softmax(self._logits(self.params, images)), np.float64)
    py = p.mean(0, keepdims=True)
    kl = (p * (np.log(p + 1e-12) - np.log(py + 1e-12))).sum(-1).mean()
    f = np.asarray(self._features(self.params, images), np.float64)
    return {'classifier_score': float(np.exp(kl)),
            'feature_fd': frechet_distance(f.mean(0), np.cov(f, rowvar=False),
                                           self._ref_mu, self._ref_cov)}


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  covmean = scipy.linalg.sqrtm(cov1 @ cov2)
  covmean = np.real(covmean)
  return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1 + cov2 - 2.0 * covmean))


@functools.lru_cache(maxsize=1)
def get_classifier() -> FashionClassifier:
  return FashionClassifier()


def main():
  clf = get_classifier()
  print(f'test accuracy {clf.test_accuracy:.4f}')
  rng = np.random.default_rng(0)
  for n in (64, 256, 1000):
    idx = rng.choice(len(clf.test_x), n, replace=False)
    print(f'{n} real test images:', clf.scores(clf.test_x[idx]))
  print('256 uniform-noise images:', clf.scores(rng.uniform(size=(256, 32, 32, 1))))


if __name__ == '__main__':
  main()
