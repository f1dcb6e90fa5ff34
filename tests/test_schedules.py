"""Tests of pixdiff_jax.schedules against float64 NumPy references written here.

The references use the plain textbook forms (powers, ratios, Bayes' rule) rather than the
``expm1``/log forms of the library, so a wrong association, sign or index shows up.
"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixdiff_jax.diffusion import parametrisation, schedules

EPS = 4e-3
SETTINGS = [(20.0, 200), (50.0, 500), (3.0, 7)]  # (gamma, T): CIFAR-10, CelebA, tiny


# ---------------------------------------------------------------------------- references
def ref(x0, i, gamma, T):
  """Float64 reference of the pixel-aware process (docs/design.md section 1), textbook forms."""
  x0 = np.asarray(x0, np.float64)
  i = np.asarray(i, np.float64)
  xd = np.exp(-gamma * x0)
  alpha = xd ** (1.0 / T)
  beta = 1.0 - alpha
  abar = xd ** (i / T)
  abar_prev = xd ** (np.maximum(i - 1, 0) / T)
  with np.errstate(divide='ignore', invalid='ignore'):
    btilde = np.where(i > 0, (1 - abar_prev) / (1 - abar) * beta, 0.0)
    c_x0 = np.where(i > 0, np.sqrt(abar_prev) * beta / (1 - abar), 0.0)
    c_xi = np.where(i > 0, np.sqrt(alpha) * (1 - abar_prev) / (1 - abar), 1.0)
  return dict(xd=xd, alpha=alpha, beta=beta, abar=abar, one_m=1 - abar, btilde=btilde,
              c_x0=c_x0, c_xi=c_xi)


def grid(T):
  x0 = np.array([EPS, 0.01, 0.1, 0.37, 0.5, 0.8, 0.999, 1.0])[:, None]
  i = np.unique(np.array([0, 1, 2, 3, T // 3, T - 1, T]))[None, :]
  return x0, i


def close(actual, expected, rtol=2e-5, atol=1e-30):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------- pixel-aware
@pytest.mark.parametrize('gamma,T', SETTINGS)
def test_pixel_formulas_match_float64_reference(gamma, T):
  x0, i = grid(T)
  r = ref(x0, i, gamma, T)
  x0_32 = jnp.asarray(x0, jnp.float32)
  xd = schedules.image_scale(x0_32, gamma)
  close(xd, r['xd'])
  close(schedules.log_image_scale(xd), -gamma * x0)
  close(schedules.x0_from_scale(xd, gamma), x0)
  close(schedules.alpha(xd, T), r['alpha'])
  close(schedules.beta(xd, T), r['beta'])
  close(schedules.alpha_bar(xd, i, T), r['abar'])
  close(schedules.one_minus_alpha_bar(xd, i, T), r['one_m'], atol=0)
  close(schedules.btilde(xd, i, T), r['btilde'], rtol=5e-5)
  c_x0, c_xi = schedules.posterior_mean_coefs(xd, i, T)
  close(c_x0, r['c_x0'], rtol=5e-5)
  close(c_xi, r['c_xi'], rtol=5e-5)
  j = i[:, 1:]  # j >= 1
  close(schedules.increment_scale(xd, j, T), np.sqrt((1 - r['abar'][:, 1:]) / r['beta']),
        rtol=5e-5)


@pytest.mark.parametrize('gamma,T', SETTINGS)
def test_posterior_is_bayes_rule(gamma, T):
  """c_x0, c_xi, btilde against the Gaussian posterior q(x_{i-1} | x_i, x0) by Bayes' rule."""
  x0, i = grid(T)
  i = i[:, i[0] >= 2]
  xd = np.exp(-gamma * x0)
  alpha = np.exp(-gamma * x0 / T)
  prior_mean_coef = np.exp(-gamma * x0 * (i - 1) / (2 * T))  # sqrt(abar_{i-1})
  prior_var = 1 - np.exp(-gamma * x0 * (i - 1) / T)
  lik_var = 1 - alpha  # x_i | x_{i-1} ~ N(sqrt(alpha) x_{i-1}, beta)
  post_var = 1 / (1 / prior_var + alpha / lik_var)
  want_c_x0 = post_var * prior_mean_coef / prior_var
  want_c_xi = post_var * np.sqrt(alpha) / lik_var
  xd32 = jnp.asarray(xd, jnp.float32)
  c_x0, c_xi = schedules.posterior_mean_coefs(xd32, i, T)
  close(c_x0, want_c_x0, rtol=5e-4)
  close(c_xi, want_c_xi, rtol=5e-4)
  close(schedules.btilde(xd32, i, T), post_var, rtol=5e-4)


@pytest.mark.parametrize('gamma,T', SETTINGS)
def test_first_step_is_exact(gamma, T):
  """At i=1 the posterior is the point mass at x0: coefficients exactly (1, 0), btilde 0.

  This needs ``1 - abar_1 == beta`` bit for bit in float32. schedules computes both from
  ``log(x_delta) / T`` (same association). With ``(i / T) * log`` instead, IEEE division (NumPy;
  GPU) differs in the last bit for ~30-60% of pixel values; XLA:CPU happens to rewrite ``/ T`` as
  ``* (1/T)``, so on CPU this test cannot tell the two apart - it guards the GPU path.
  """
  x0 = jnp.linspace(EPS, 1.0, 4097, dtype=jnp.float32)
  xd = schedules.image_scale(x0, gamma)
  np.testing.assert_array_equal(schedules.one_minus_alpha_bar(xd, 1, T), schedules.beta(xd, T))
  np.testing.assert_array_equal(schedules.alpha_bar(xd, 1, T), schedules.alpha(xd, T))
  c_x0, c_xi = schedules.posterior_mean_coefs(xd, 1, T)
  np.testing.assert_array_equal(c_x0, 1.0)
  np.testing.assert_array_equal(c_xi, 0.0)
  np.testing.assert_array_equal(schedules.btilde(xd, 1, T), 0.0)
  # Under jit with the scale a compile-time constant and i traced, XLA folds one of
  # beta / (1 - abar_1) at compile time and computes the other at run time (before the fix:
  # c_x0 != 1 for ~80% of pixels, up to 1 + 4e-7, which let clipped samples exceed 1).
  c_x0, c_xi = jax.jit(lambda i: schedules.posterior_mean_coefs(xd, i, T))(jnp.float32(1))
  np.testing.assert_array_equal(c_x0, 1.0)
  np.testing.assert_array_equal(c_xi, 0.0)
  c_x0, c_xi = schedules.posterior_mean_coefs(xd, 0, T)
  np.testing.assert_array_equal(c_x0, 0.0)
  np.testing.assert_array_equal(c_xi, 1.0)
  np.testing.assert_array_equal(schedules.btilde(xd, 0, T), 0.0)
  np.testing.assert_array_equal(schedules.alpha_bar(xd, 0, T), 1.0)


@pytest.mark.parametrize('gamma,T', SETTINGS)
def test_snr_and_kl(gamma, T):
  x0, i = grid(T)
  i = i[:, i[0] >= 1]
  r = ref(x0, i, gamma, T)
  x0_32 = jnp.asarray(x0, jnp.float32)
  close(schedules.pixel_snr(x0_32, i / T, gamma=gamma), r['abar'] * x0**2 / (1 - r['abar']),
        rtol=5e-5)
  # 0.5 (var + mean^2 - 1 - log var), with var = 1 - a; -log(1 - a) - a summed as a series
  # where float64 would cancel to 0 (a < 1e-3: error < a^5).
  a = r['abar']
  mean2 = a * x0**2
  rest = np.where(a < 1e-3, a**2 / 2 + a**3 / 3 + a**4 / 4, -np.log1p(-a) - a)
  want_kl = 0.5 * (mean2 + rest)
  assert np.all(want_kl > 0)
  close(schedules.kl_to_standard_normal(x0_32, i, gamma=gamma, num_steps=T), want_kl, rtol=1e-4)


@pytest.mark.parametrize('gamma,T', SETTINGS)
@pytest.mark.parametrize('snr_gamma', [5.0, 0.5])
def test_min_snr_weight(gamma, T, snr_gamma):
  """Hang et al.'s Min-SNR-gamma weights on the per-pixel schedule vs float64: the weighted
  loss of every target equals ``min(snr, snr_gamma)`` times the clean-image error."""
  x0, i = grid(T)
  i = i[:, i[0] >= 1]
  abar = ref(x0, i, gamma, T)['abar']
  snr = abar / (1 - abar)
  clipped = np.minimum(snr, snr_gamma)
  xd = jnp.asarray(np.exp(-gamma * x0), jnp.float32)
  for target, want in [('x0', clipped), ('cumulative', clipped / snr), ('v', clipped / (snr + 1))]:
    close(schedules.min_snr_weight(xd, i, T, snr_gamma=snr_gamma, target=target), want, rtol=2e-5)
  # An eps error e is a clean-image error e * sqrt((1 - abar) / abar) (x0 = (x_i - sqrt(1 -
  # abar) eps) / sqrt(abar)): weighted, the two losses agree.
  w_eps = np.asarray(schedules.min_snr_weight(xd, i, T, snr_gamma=snr_gamma,
                                              target='cumulative'), np.float64)
  close(w_eps, clipped * (1 - abar) / abar, rtol=2e-5)
  with pytest.raises(ValueError, match='increment'):
    schedules.min_snr_weight(xd, i, T, snr_gamma=snr_gamma, target='increment')
  with pytest.raises(ValueError, match='snr_gamma'):
    schedules.min_snr_weight(xd, i, T, snr_gamma=0.0, target='x0')


def test_design_section3_numbers():
  """docs/design.md section 3 at T=200, gamma=20 (float64 reference and the float32 library)."""
  xd = schedules.image_scale(jnp.array([0.004, 0.1]), 20.0)
  np.testing.assert_allclose(schedules.alpha_bar(xd, 200, 200), [0.923, 0.135], atol=5e-4)
  kl = schedules.kl_to_standard_normal(jnp.float32(0.004), 200, gamma=20.0, num_steps=200)
  np.testing.assert_allclose(kl, 0.82, atol=5e-3)
  # DDPM (linear, T=1000) at x0 in [-1, 1]: abar_T = 4.04e-5, so KL <= 0.5 abar_T (1 + abar_T/2)
  # = 2.02e-5 nats (the planning notes said "under 2e-5"; it is 2.02e-5 at |x0| = 1).
  ac_T = schedules.linear_alphas_cumprod(1000)[-1]
  x0 = np.linspace(-1, 1, 101)
  kl_ddpm = 0.5 * (ac_T * x0**2 - ac_T - np.log1p(-ac_T))
  assert 2.0e-5 < kl_ddpm.max() < 2.05e-5
  assert kl_ddpm.min() < 1e-9


def test_q_sample_matches_reference():
  gamma, T = 20.0, 200
  rng = np.random.default_rng(0)
  x0 = rng.uniform(EPS, 1, (3, 5)).astype(np.float32)
  noise = rng.standard_normal((3, 5)).astype(np.float32)
  i = np.array([0, 1, 77, 200])[:, None, None]
  r = ref(x0, i, gamma, T)
  want = np.sqrt(r['abar']) * x0 + np.sqrt(1 - r['abar']) * noise
  got = schedules.q_sample(jnp.broadcast_to(x0, (4, 3, 5)), i,
                           jnp.broadcast_to(noise, (4, 3, 5)), gamma=gamma, num_steps=T)
  close(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[0], x0)
  with pytest.raises(ValueError, match='noise'):
    schedules.q_sample(x0, 3, noise[:2], gamma=gamma, num_steps=T)


# ---------------------------------------------------------------------------- forward chain
N_CHAINS = 4096
CHAIN_X0 = np.array([EPS, 0.05, 0.3, 1.0], np.float32)  # both ends of [eps, 1] included


@pytest.fixture(scope='module')
def mc_chain():
  """4096 independent chains (T=200, gamma=20) for each x0 in CHAIN_X0: (x0, xs, e)."""
  x0 = jnp.broadcast_to(CHAIN_X0, (N_CHAINS, 4))
  xs, e = schedules.forward_chain(jax.random.PRNGKey(0), x0, gamma=20.0, num_steps=200)
  return x0, xs, e


def test_forward_chain_is_the_markov_recursion(mc_chain):
  gamma, T = 20.0, 200
  x0, xs, e = mc_chain
  chex.assert_shape(xs, (T + 1, N_CHAINS, 4))
  chex.assert_shape(e, (T, N_CHAINS, 4))
  chex.assert_tree_all_finite((xs, e))
  xs64, e64 = np.asarray(xs[:, :64], np.float64), np.asarray(e[:, :64], np.float64)
  np.testing.assert_array_equal(xs64[0], np.asarray(x0[:64]))
  alpha = np.exp(-gamma * CHAIN_X0.astype(np.float64) / T)
  want = np.sqrt(alpha) * xs64[:-1] + np.sqrt(1 - alpha) * e64
  np.testing.assert_allclose(xs64[1:], want, rtol=0, atol=1e-6)


def test_forward_chain_marginals_match_eq9(mc_chain):
  """Monte Carlo mean/variance of x_i and Cov(x_i, x_k) within 4 standard errors."""
  gamma, T, n = 20.0, 200, N_CHAINS
  x0_vals = CHAIN_X0
  _, xs, e = mc_chain
  xs = np.asarray(xs, np.float64)
  for i in [1, 10, 100, 200]:
    abar = np.exp(-gamma * x0_vals.astype(np.float64) * i / T)
    mean_true, var_true = np.sqrt(abar) * x0_vals, 1 - abar
    xi = xs[i]
    m, v = xi.mean(0), xi.var(0, ddof=1)
    assert np.all(np.abs(m - mean_true) <= 4 * np.sqrt(var_true / n)), (i, m, mean_true)
    assert np.all(np.abs(v - var_true) <= 4 * var_true * np.sqrt(2 / (n - 1))), (i, v, var_true)
  # Markov structure: Cov(x_i, x_k) = alpha^{(k-i)/2} Var(x_i) for i < k.
  i, k = 50, 150
  alpha = np.exp(-gamma * x0_vals.astype(np.float64) / T)
  var_i = 1 - alpha**i
  cov_true = alpha ** ((k - i) / 2) * var_i
  cov = ((xs[i] - xs[i].mean(0)) * (xs[k] - xs[k].mean(0))).sum(0) / (n - 1)
  var_k = 1 - alpha**k
  se = np.sqrt((var_i * var_k + cov_true**2) / n)
  assert np.all(np.abs(cov - cov_true) <= 4 * se), (cov, cov_true)
  e = np.asarray(e, np.float64)
  assert abs(e.mean()) < 4 / math.sqrt(e.size) and abs(e.var() - 1) < 4 * math.sqrt(2 / e.size)


def test_chain_targets(mc_chain):
  gamma, T = 20.0, 200
  x0, xs, e = (a[..., :8, :] for a in mc_chain)  # 8 chains per x0 value
  x0_np = np.asarray(x0, np.float64)
  xs64, e64 = np.asarray(xs, np.float64), np.asarray(e, np.float64)
  j = np.arange(1, T + 1)[:, None, None]
  r = ref(x0_np, j, gamma, T)
  cum = parametrisation.chain_targets(xs, e, x0, gamma=gamma, num_steps=T, target='cumulative')
  want_cum = (xs64[1:] - np.sqrt(r['abar']) * x0_np) / np.sqrt(1 - r['abar'])
  np.testing.assert_allclose(cum, want_cum, rtol=1e-4, atol=2e-4)
  inc = parametrisation.chain_targets(xs, e, x0, gamma=gamma, num_steps=T, target='increment')
  want_inc = np.sqrt((1 - r['abar']) / r['beta']) * e64
  np.testing.assert_allclose(inc, want_inc, rtol=5e-5, atol=1e-6)
  v = parametrisation.chain_targets(xs, e, x0, gamma=gamma, num_steps=T, target='v')
  want_v = np.sqrt(r['abar']) * want_cum - np.sqrt(1 - r['abar']) * x0_np
  np.testing.assert_allclose(v, want_v, rtol=1e-4, atol=2e-4)
  # ... and x0 = sqrt(abar_j) x_j - sqrt(1 - abar_j) v_j for every step of the chain.
  np.testing.assert_allclose(np.sqrt(r['abar']) * xs64[1:] - np.sqrt(1 - r['abar']) * v,
                             np.broadcast_to(x0_np, want_v.shape), atol=2e-4)
  x0_heads = parametrisation.chain_targets(xs, e, x0, gamma=gamma, num_steps=T, target='x0')
  chex.assert_shape(x0_heads, want_v.shape)
  np.testing.assert_array_equal(x0_heads, np.broadcast_to(x0, want_v.shape))
  chex.assert_tree_all_finite((cum, inc, v))
  # Algorithm 1's subtraction beta / sqrt(1 - abar_j) * u_j is exactly the chain's increment.
  np.testing.assert_allclose(r['beta'] / np.sqrt(1 - r['abar']) * np.asarray(inc, np.float64),
                             np.sqrt(r['beta']) * e64, rtol=5e-5, atol=1e-7)
  with pytest.raises(ValueError, match='target'):
    parametrisation.chain_targets(xs, e, x0, gamma=gamma, num_steps=T, target='eps')
  with pytest.raises(ValueError, match='xs'):
    parametrisation.chain_targets(xs[1:], e, x0, gamma=gamma, num_steps=T, target='increment')


# ---------------------------------------------------------------------------- scalar baselines
def test_linear_and_cosine_alphas_cumprod():
  T = 1000
  betas = [1e-4 + (0.02 - 1e-4) * k / (T - 1) for k in range(T)]
  prod, want = 1.0, []
  for b in betas:
    prod *= 1.0 - b
    want.append(prod)
  ac = schedules.linear_alphas_cumprod(T)
  assert ac.dtype == np.float64 and ac.shape == (T,)
  np.testing.assert_allclose(ac, want, rtol=1e-12)
  np.testing.assert_allclose(ac[-1], 4.0358e-5, rtol=1e-3)
  cos = schedules.cosine_alphas_cumprod(T)
  f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  want_cos = np.array([f(n / T) / f(0) for n in range(1, T + 1)])
  np.testing.assert_allclose(cos[:-1], want_cos[:-1], rtol=1e-9)
  np.testing.assert_allclose(1 - cos[-1] / cos[-2], 0.999, rtol=1e-12)  # clipped last beta
  assert np.all(np.diff(cos) < 0) and np.all(np.diff(ac) < 0)


@pytest.mark.parametrize('kind', ['linear', 'cosine'])
def test_vp_helpers(kind):
  T = 1000
  ac = (schedules.linear_alphas_cumprod(T) if kind == 'linear' else
        schedules.cosine_alphas_cumprod(T))
  n = np.array([1, 2, 37, 500, 999, 1000])
  log_a = schedules.vp_log_alpha(n / T, ac)
  np.testing.assert_allclose(log_a, 0.5 * np.log(ac[n - 1]), rtol=1e-5, atol=1e-9)
  t = np.array([0.0015, 0.3337, 0.77777, 0.9995])  # between grid points: linear interpolation
  lo = np.floor(t * T).astype(int)
  w = t * T - lo
  want = 0.5 * ((1 - w) * np.log(ac[lo - 1]) + w * np.log(ac[lo]))
  # t is rounded to float32 before the look-up: |d log_alpha / dt| * 6e-8 reaches 2e-4 at the
  # steep end of the cosine schedule.
  np.testing.assert_allclose(schedules.vp_log_alpha(t, ac), want, rtol=1e-5, atol=5e-4)
  alpha = np.exp(want)
  sigma = np.sqrt(1 - alpha**2)
  np.testing.assert_allclose(schedules.vp_sigma(t, ac), sigma, rtol=2e-5)
  lam = np.log(alpha / sigma)
  np.testing.assert_allclose(schedules.vp_lambda(t, ac), lam, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(schedules.vp_inverse_lambda(lam, ac), t, rtol=1e-4)
  # The float64 host twins (DPM-Solver++'s tables) are the same functions, to float64 precision.
  np.testing.assert_allclose(schedules.np_vp_log_alpha(t, ac), want, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(schedules.np_vp_inverse_lambda(lam, ac), t, rtol=1e-9)


# ---------------------------------------------------------------------------- robustness
def test_bad_hyper_parameters_raise():
  x0 = jnp.full((2,), 0.5)
  for gamma in [0.0, -1.0, float('nan'), float('inf')]:
    with pytest.raises(ValueError, match='gamma'):
      schedules.image_scale(x0, gamma)
    with pytest.raises(ValueError, match='gamma'):
      schedules.forward_chain(jax.random.PRNGKey(0), x0, gamma=gamma, num_steps=4)
  for T in [0, -3, 2.0, True]:
    with pytest.raises(ValueError, match='num_steps'):
      schedules.alpha_bar(x0, 1, T)
    with pytest.raises(ValueError, match='num_steps'):
      schedules.forward_chain(jax.random.PRNGKey(0), x0, gamma=20.0, num_steps=T)
    with pytest.raises(ValueError, match='num_steps'):
      schedules.linear_alphas_cumprod(T)
  with pytest.raises(ValueError, match='x0'):
    schedules.image_scale(jnp.array([0, 1]), 20.0)
  with pytest.raises(ValueError, match='x_delta'):
    schedules.beta(jnp.array([1, 0]), 10)
  with pytest.raises(ValueError, match='i'):
    schedules.alpha_bar(x0, jnp.array([True, False]), 10)
  with pytest.raises(ValueError, match='beta_start'):
    schedules.linear_alphas_cumprod(10, beta_start=0.5, beta_end=0.1)


@pytest.mark.parametrize('gamma,T', [(20.0, 200), (50.0, 500)])
def test_finite_at_the_ends(gamma, T):
  """No NaN/inf for x0 in {eps, 1}, i in {0, 1, T}; gradients finite too.

  (pixel_snr at t=0 and the KL at i=0 are +inf by definition and are excluded.)
  """
  x0 = jnp.array([EPS, 1.0])

  @jax.jit
  def everything(x0, i):
    xd = schedules.image_scale(x0, gamma)
    always = [xd, schedules.alpha(xd, T), schedules.beta(xd, T), schedules.alpha_bar(xd, i, T),
              schedules.one_minus_alpha_bar(xd, i, T), schedules.btilde(xd, i, T),
              *schedules.posterior_mean_coefs(xd, i, T),
              schedules.q_sample(x0, i, jnp.ones(2), gamma=gamma, num_steps=T)]
    step_positive = [schedules.pixel_snr(x0, i / T, gamma=gamma),
                     schedules.kl_to_standard_normal(x0, i, gamma=gamma, num_steps=T),
                     schedules.increment_scale(xd, i, T)]

    def f(x0):
      xd = schedules.image_scale(x0, gamma)
      c0, c1 = schedules.posterior_mean_coefs(xd, i, T)
      return jnp.sum(schedules.btilde(xd, i, T) + c0 + c1 +
                     schedules.one_minus_alpha_bar(xd, i, T))
    return always, step_positive, jax.grad(f)(x0)

  for i in [0, 1, T]:
    always, step_positive, grads = everything(x0, jnp.int32(i))
    chex.assert_tree_all_finite((always, grads))
    if i > 0:
      chex.assert_tree_all_finite(step_positive)
  # (forward_chain / chain_targets at x0 in {eps, 1}: see test_forward_chain_is_the_markov_
  # recursion and test_chain_targets.)


def test_jit_and_vmap_match_eager():
  gamma, T = 20.0, 200
  x0 = jnp.linspace(EPS, 1, 7)
  noise = jnp.linspace(-2, 2, 7)

  def f(x0, i, noise):
    xd = schedules.image_scale(x0, gamma)
    return (schedules.q_sample(x0, i, noise, gamma=gamma, num_steps=T),
            schedules.btilde(xd, i, T), schedules.posterior_mean_coefs(xd, i, T))

  jf = jax.jit(f)
  for i in [0, 1, 50, 200]:
    chex.assert_trees_all_close(jf(x0, jnp.int32(i), noise), f(x0, i, noise), rtol=1e-6,
                                atol=1e-7)
  i_b = jnp.array([0, 3, 200, 9, 1, 77, 150])
  batched = jax.vmap(f)(x0, i_b, noise)
  looped = [f(x0[k], int(i_b[k]), noise[k]) for k in range(7)]
  chex.assert_trees_all_close(batched, jax.tree.map(lambda *a: jnp.stack(a), *looped),
                              rtol=1e-6, atol=1e-7)
