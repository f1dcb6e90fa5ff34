"""Gaussian statistics of feature vectors and the Frechet distance between two Gaussians, float64.

``FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace of the matrix square
root is computed without ``sqrtm`` of the non-symmetric product: ``S1 S2`` is similar to the
symmetric PSD matrix ``M = S1^(1/2) S2 S1^(1/2)``, so
``tr((S1 S2)^(1/2)) = sum_k sqrt(lambda_k(M))``
with ``S1^(1/2)`` from the eigendecomposition of ``S1`` (tiny negative eigenvalues from rounding
are clipped to 0).
"""
from __future__ import annotations

import numpy as np
from jaxtyping import Float

__all__ = ['gaussian_stats', 'frechet_distance']


def gaussian_stats(features: Float[np.ndarray, 'n d']
                   ) -> tuple[Float[np.ndarray, 'd'], Float[np.ndarray, 'd d']]:
  """Mean and covariance (unbiased, ``N - 1``) of feature rows, in float64.

  Args:
    features: ``[N, D]`` feature vectors, ``N >= 2``.

  Returns:
    ``(mu [D], sigma [D, D])``, float64.

  Raises:
    ValueError: not a 2-D array, fewer than 2 rows, or non-finite values.
  """
  f = np.asarray(features, dtype=np.float64)
  if f.ndim != 2:
    raise ValueError(f'features must be [N, D], got shape {f.shape}')
  if f.shape[0] < 2:
    raise ValueError(f'a covariance needs at least 2 samples, got {f.shape[0]}')
  bad = ~np.isfinite(f).all(axis=1)
  if bad.any():
    raise ValueError(f'{int(bad.sum())} of {f.shape[0]} feature vectors contain NaN or inf '
                     '(non-finite images or network outputs)')
  mu = f.mean(axis=0)
  sigma = np.cov(f, rowvar=False)
  return mu, np.atleast_2d(sigma)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(a)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: Float[np.ndarray, 'd'], sigma1: Float[np.ndarray, 'd d'],
                     mu2: Float[np.ndarray, 'd'], sigma2: Float[np.ndarray, 'd d']) -> float:
  """Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``, float64.

  Raises:
    ValueError: shapes that do not match ``[D]`` / ``[D, D]``, or non-finite statistics.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0] if mu1.ndim == 1 else -1
  if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
    raise ValueError(f'frechet_distance: statistics of different shapes: mu {mu1.shape} / '
                     f'{mu2.shape}, sigma {s1.shape} / {s2.shape}')
  for name, a in (('mu1', mu1), ('sigma1', s1), ('mu2', mu2), ('sigma2', s2)):
    if not np.isfinite(a).all():
      raise ValueError(f'frechet_distance: {name} contains NaN or inf')
  # Symmetrise: covariances from np.cov are symmetric up to rounding.
  s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
  root1 = _sqrt_psd(s1)
  m = root1 @ s2 @ root1
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
