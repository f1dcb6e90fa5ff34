"""Structural similarity (SSIM) of two images, as the paper's figure 5 reports it."""
from __future__ import annotations

import numpy as np


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0, sigma: float = 1.5
         ) -> float:
  """Mean structural similarity of two 2-D images (Wang et al. 2004).

  Gaussian window (``sigma`` 1.5, truncated at 3.5 sigma: the 11x11 window), ``K1 = 0.01``,
  ``K2 = 0.03``, population covariances, border of half a window excluded from the mean (as
  ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``).
  """
  from scipy.ndimage import gaussian_filter  # pylint: disable=g-import-not-at-top
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f'ssim needs two 2-D images of one shape, got {a.shape} and {b.shape}')
  f = lambda x: gaussian_filter(x, sigma, truncate=3.5, mode='reflect')
  mu_a, mu_b = f(a), f(b)
  var_a = f(a * a) - mu_a ** 2
  var_b = f(b * b) - mu_b ** 2
  cov = f(a * b) - mu_a * mu_b
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) *
                                                   (var_a + var_b + c2))
  pad = int(3.5 * sigma + 0.5)
  if min(a.shape) > 2 * pad:
    s = s[pad:-pad, pad:-pad]
  return float(s.mean())
