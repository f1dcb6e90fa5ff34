"""Tests of pixdiff_jax.metrics.frechet: identities of the Frechet distance, float64 statistics."""
import numpy as np
import pytest
import scipy.linalg

from pixdiff_jax import metrics


def _random_cov(d, seed, rank=None):
  a = np.random.default_rng(seed).normal(size=(d, rank or 2 * d))
  return a @ a.T / a.shape[1]


def _fd_scipy(mu1, s1, mu2, s2):
  """The textbook formula with scipy's general matrix square root (as pytorch-fid)."""
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize('d', [1, 5, 64])
def test_matches_scipy_sqrtm_formula(d):
  rng = np.random.default_rng(d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_cov(d, 1), _random_cov(d, 2)
  fd = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert isinstance(fd, float)
  np.testing.assert_allclose(fd, _fd_scipy(mu1, s1, mu2, s2), rtol=1e-9)


def test_singular_covariances_match_scipy():
  # Rank-deficient covariances (fewer samples than dimensions), as with small sample counts.
  d = 30
  s1, s2 = _random_cov(d, 3, rank=10), _random_cov(d, 4, rank=12)
  mu = np.zeros(d)
  np.testing.assert_allclose(metrics.frechet_distance(mu, s1, mu, s2),
                             _fd_scipy(mu, s1, mu, s2), rtol=1e-6)


def test_distance_to_itself_is_zero():
  d = 50
  mu, s = np.random.default_rng(0).normal(size=d), _random_cov(d, 5)
  fd = metrics.frechet_distance(mu, s, mu, s)
  assert abs(fd) < 1e-10 * np.trace(s)


@pytest.mark.parametrize('shift', [0.0, 0.5, 3.0])
def test_equal_covariances_give_squared_mean_shift(shift):
  d = 16
  s = _random_cov(d, 6)
  mu1 = np.random.default_rng(1).normal(size=d)
  direction = np.random.default_rng(2).normal(size=d)
  mu2 = mu1 + shift * direction / np.linalg.norm(direction)
  np.testing.assert_allclose(metrics.frechet_distance(mu1, s, mu2, s), shift ** 2,
                             atol=1e-10 * np.trace(s))


def test_grows_with_mean_shift():
  d = 8
  s1, s2 = _random_cov(d, 7), _random_cov(d, 8)
  mu = np.zeros(d)
  values = [metrics.frechet_distance(mu, s1, mu + t, s2) for t in (0.0, 0.5, 1.0, 2.0)]
  assert np.all(np.diff(values) > 0)
  # Shifting the mean adds exactly |shift|^2 whatever the covariances.
  np.testing.assert_allclose(np.array(values) - values[0], [0, 0.25 * d, d, 4 * d], rtol=1e-9)


def test_diagonal_closed_form():
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
  np.testing.assert_allclose(metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)),
                             expected, rtol=1e-12)


def test_gaussian_stats_float64_mean_and_unbiased_covariance():
  f = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
  mu, sigma = metrics.gaussian_stats(f)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  assert mu.shape == (6,) and sigma.shape == (6, 6)
  f64 = f.astype(np.float64)
  np.testing.assert_allclose(mu, f64.mean(0), rtol=1e-12)
  centred = f64 - f64.mean(0)
  np.testing.assert_allclose(sigma, centred.T @ centred / 39, rtol=1e-12)


def test_stats_of_two_samples_of_one_gaussian_are_close():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4))
  fd = metrics.frechet_distance(*metrics.gaussian_stats(a), *metrics.gaussian_stats(b))
  assert 0 <= fd < 0.01


@pytest.mark.parametrize('n', [0, 1])
def test_fewer_than_two_samples_is_a_clear_error(n):
  with pytest.raises(ValueError, match='at least 2 samples') as e:
    metrics.gaussian_stats(np.zeros((n, 3)))
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_features_are_a_clear_error(bad):
  f = np.ones((5, 3))
  f[2, 1] = bad
  with pytest.raises(ValueError, match='1 of 5 feature vectors contain NaN or inf') as e:
    metrics.gaussian_stats(f)
  assert '\n' not in str(e.value)


def test_mismatched_statistics_are_an_error():
  with pytest.raises(ValueError, match='different shapes'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match='NaN or inf'):
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))
