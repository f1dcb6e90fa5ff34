"""Forward-process schedules: the pixel-aware process of the paper and the scalar baselines.

Conventions (docs/design.md section 1):

* Images ``x0`` lie in ``[eps, 1]`` (``eps = 4e-3``); every function broadcasts over any leading
  shape, so ``x0`` may be a pixel, an image ``[H, W, C]`` or a batch ``[B, H, W, C]``.
* Steps ``i = 0..T`` (``T = num_steps``); ``i`` may be a Python int, a float array or a traced
  scalar, and broadcasts against ``x0``.
* The pixel-aware schedule is a function of the *image scale* ``x_delta = exp(-gamma * x0)``
  (eq. 7) alone, because at sampling time only an estimate ``x_delta_hat`` is known. Internally
  everything is computed from ``log(x_delta)`` with ``expm1`` forms, so that nothing is NaN/inf
  at ``x0 = eps``, ``x0 = 1``, ``i = 0`` or ``i = T``.

Pixel-aware process, per pixel::

    alpha   = x_delta ** (1/T)                          # eq. 8, constant in i
    beta    = 1 - alpha = -expm1(log(x_delta) / T)
    abar_i  = x_delta ** (i/T) = exp(-gamma i x0 / T)   # eq. 9
    x_i     = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps_tilde_i
    btilde_i = (1 - abar_{i-1}) / (1 - abar_i) * beta   # btilde_1 = 0

Scalar baselines: linear DDPM betas and the cosine schedule as discrete ``alphas_cumprod``
(NumPy float64, index ``n-1`` holds step ``n = 1..T``) and the log-SNR helpers that DPM-Solver
uses on such a discrete schedule (continuous time ``t = n / T``).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from pixdiff_jax.errors import ConfigError

__all__ = [
    'image_scale', 'log_image_scale', 'alpha', 'beta', 'alpha_bar', 'one_minus_alpha_bar',
    'btilde', 'posterior_mean_coefs', 'pixel_snr', 'min_snr_weight', 'kl_to_standard_normal',
    'q_sample',
    'forward_chain', 'increment_scale', 'x0_from_scale',
    'linear_alphas_cumprod', 'cosine_alphas_cumprod', 'ddpm_alphas_cumprod', 'vp_log_alpha',
    'vp_sigma', 'vp_lambda',
    'vp_inverse_lambda', 'np_vp_log_alpha', 'np_vp_inverse_lambda', 'check_pixel_aware_args',
]


# ---------------------------------------------------------------------------- argument checks
def check_pixel_aware_args(*, gamma=None, num_steps=None) -> None:
  """Raises ``ValueError`` for hyper-parameters that cannot define a pixel-aware process.

  ``gamma`` and ``num_steps`` are static (Python numbers) in this library, so the check runs at
  trace time and never needs a concrete array.
  """
  if num_steps is not None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
      raise ValueError(f'num_steps must be a Python int >= 1, got {num_steps!r}')
    if num_steps < 1:
      raise ValueError(f'num_steps (T) must be >= 1, got {num_steps}')
  if gamma is not None:
    if isinstance(gamma, jax.core.Tracer):
      return
    if not np.isfinite(float(gamma)) or float(gamma) <= 0:
      raise ValueError(f'gamma must be a finite number > 0, got {gamma!r}')


def as_float(name: str, x: ArrayLike) -> Array:
  """Converts to a float array; integer or bool inputs are an error that names the argument."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'{name} must be a floating-point array, got dtype {x.dtype}')
  return x


def _step(name: str, i: ArrayLike) -> Array:
  """Steps may be ints or floats; they are used as float32 exponents."""
  i = jnp.asarray(i)
  if not (jnp.issubdtype(i.dtype, jnp.integer) or jnp.issubdtype(i.dtype, jnp.floating)):
    raise ValueError(f'{name} must be an integer or float step, got dtype {i.dtype}')
  return i.astype(jnp.result_type(float))


# ---------------------------------------------------------------------------- pixel-aware
def image_scale(x0: Float[ArrayLike, '*shape'], gamma: float) -> Float[Array, '*shape']:
  """Image scale ``x_delta = exp(-gamma * x0)`` (eq. 7)."""
  check_pixel_aware_args(gamma=gamma)
  return jnp.exp(-gamma * as_float('x0', x0))


def log_image_scale(x_delta: Float[ArrayLike, '*shape']) -> Float[Array, '*shape']:
  """``log(x_delta) = -gamma * x0`` (always < 0 for a valid scale)."""
  return jnp.log(as_float('x_delta', x_delta))


def x0_from_scale(x_delta: Float[ArrayLike, '*shape'], gamma: float) -> Float[Array, '*shape']:
  """Inverse of :func:`image_scale`: ``x0 = -log(x_delta) / gamma``."""
  check_pixel_aware_args(gamma=gamma)
  return -log_image_scale(x_delta) / gamma


def alpha(x_delta: Float[ArrayLike, '*shape'], num_steps: int) -> Float[Array, '*shape']:
  """Per-pixel ``alpha = x_delta ** (1/T)`` (eq. 8)."""
  check_pixel_aware_args(num_steps=num_steps)
  return jnp.exp(log_image_scale(x_delta) / num_steps)


def beta(x_delta: Float[ArrayLike, '*shape'], num_steps: int) -> Float[Array, '*shape']:
  """Per-pixel ``beta = 1 - alpha = -expm1(log(x_delta) / T)``."""
  check_pixel_aware_args(num_steps=num_steps)
  return -jnp.expm1(log_image_scale(x_delta) / num_steps)


def alpha_bar(x_delta: Float[ArrayLike, '*shape'], i: ArrayLike,
              num_steps: int) -> Float[Array, '*shape']:
  """``abar_i = x_delta ** (i/T) = exp(-gamma i x0 / T)`` (eq. 9); ``abar_0 = 1``."""
  check_pixel_aware_args(num_steps=num_steps)
  # ``i * (log x_delta / T)`` (not ``i / T * log x_delta``) so that ``abar_1 == alpha`` bit for
  # bit, exactly as :func:`alpha` / :func:`beta` compute it (see one_minus_alpha_bar).
  return jnp.exp(_step('i', i) * (log_image_scale(x_delta) / num_steps))


def one_minus_alpha_bar(x_delta: Float[ArrayLike, '*shape'], i: ArrayLike,
                        num_steps: int) -> Float[Array, '*shape']:
  """``1 - abar_i`` via ``expm1`` (exact for tiny ``gamma i x0 / T``); 0 at ``i = 0``."""
  check_pixel_aware_args(num_steps=num_steps)
  # Same association as :func:`beta` (``log x_delta / T`` first): then ``1 - abar_1 == beta``
  # exactly in float32, so ``posterior_mean_coefs`` at ``i = 1`` are exactly ``(1, 0)``.
  return -jnp.expm1(_step('i', i) * (log_image_scale(x_delta) / num_steps))


def btilde(x_delta: Float[ArrayLike, '*shape'], i: ArrayLike,
           num_steps: int) -> Float[Array, '*shape']:
  """Posterior variance ``btilde_i = (1 - abar_{i-1}) / (1 - abar_i) * beta``.

  ``btilde_1 = 0``; ``btilde_0`` is defined as 0 (no step), never ``0/0``.
  """
  i = _step('i', i)
  denom = one_minus_alpha_bar(x_delta, i, num_steps)
  numer = one_minus_alpha_bar(x_delta, jnp.maximum(i - 1.0, 0.0), num_steps)
  safe = jnp.where(i > 0, denom, 1.0)
  return jnp.where(i > 0, numer / safe * beta(x_delta, num_steps), 0.0)


def posterior_mean_coefs(x_delta: Float[ArrayLike, '*shape'], i: ArrayLike, num_steps: int
                         ) -> tuple[Float[Array, '*shape'], Float[Array, '*shape']]:
  """Coefficients of ``mu(x_i, x0) = c_x0 * x0 + c_xi * x_i`` of ``q(x_{i-1} | x_i, x0)``.

  ``c_x0 = sqrt(abar_{i-1}) beta / (1 - abar_i)``, ``c_xi = sqrt(alpha) (1 - abar_{i-1}) /
  (1 - abar_i)``. At ``i = 1`` they are ``(1, 0)``; at ``i = 0`` (no step) ``(0, 1)``.
  """
  i = _step('i', i)
  denom = one_minus_alpha_bar(x_delta, i, num_steps)
  safe = jnp.where(i > 0, denom, 1.0)
  im1 = jnp.maximum(i - 1.0, 0.0)
  b = beta(x_delta, num_steps)
  c_x0 = jnp.sqrt(alpha_bar(x_delta, im1, num_steps)) * b / safe
  # At i = 1, c_x0 = beta / (1 - abar_1) is 1 only if both are rounded identically; XLA does not
  # guarantee that (constant folding divides exactly, run-time code multiplies by 1/T; docs/
  # design.md section 3), so pin it: the posterior at i = 1 is the point mass at x0.
  c_x0 = jnp.where(i == 1, 1.0, c_x0)
  c_xi = jnp.sqrt(alpha(x_delta, num_steps)) * one_minus_alpha_bar(x_delta, im1, num_steps) / safe
  return jnp.where(i > 0, c_x0, 0.0), jnp.where(i > 0, c_xi, 1.0)


def pixel_snr(x0: Float[ArrayLike, '*shape'], t: ArrayLike, *, gamma: float
              ) -> Float[Array, '*shape']:
  """Per-pixel SNR of eq. 11 at continuous time ``t = i/T`` in ``(0, 1]``.

  ``SNR = abar x0^2 / (1 - abar) = x0^2 / expm1(gamma t x0)``; ``inf`` at ``t = 0``.
  """
  check_pixel_aware_args(gamma=gamma)
  x0 = as_float('x0', x0)
  return jnp.square(x0) / jnp.expm1(gamma * _step('t', t) * x0)


def min_snr_weight(x_delta: Float[ArrayLike, '*shape'], i: ArrayLike, num_steps: int, *,
                   snr_gamma: float, target: str) -> Float[Array, '*shape']:
  """Per-pixel Min-SNR-gamma loss weight at step ``i`` (Hang et al. 2023, arXiv:2303.09556).

  With the schedule's own signal-to-noise ratio ``snr = abar_i / (1 - abar_i)`` (per pixel;
  the ratio of the squared coefficients of ``x0`` and of the noise in ``x_i``, as in the paper,
  which assumes data of unit scale), the weight that makes a loss on ``target`` equal to
  ``min(snr, snr_gamma)`` times the clean-image error:

  * ``'x0'``: ``min(snr, snr_gamma)``;
  * ``'cumulative'`` (eps-like): ``min(snr, snr_gamma) / snr``;
  * ``'v'``: ``min(snr, snr_gamma) / (snr + 1)``.

  ``'increment'`` has no clean-image reading and raises. ``i >= 1`` (``snr`` is infinite at 0).
  """
  check_pixel_aware_args(num_steps=num_steps)
  if not snr_gamma > 0:
    raise ValueError(f'snr_gamma must be > 0, got {snr_gamma!r}')
  snr = alpha_bar(x_delta, i, num_steps) / one_minus_alpha_bar(x_delta, i, num_steps)
  clipped = jnp.minimum(snr, snr_gamma)
  if target == 'x0':
    return clipped
  if target == 'cumulative':
    return clipped / snr
  if target == 'v':
    return clipped / (snr + 1.0)
  raise ValueError(f"Min-SNR weights are defined for the targets 'x0', 'cumulative' and 'v', "
                   f"got {target!r}")


def kl_to_standard_normal(x0: Float[ArrayLike, '*shape'], i: ArrayLike, *, gamma: float,
                          num_steps: int) -> Float[Array, '*shape']:
  """Per-pixel ``KL(q(x_i | x0) || N(0, 1))`` in nats.

  The marginal is ``N(sqrt(abar) x0, 1 - abar)``, so
  ``KL = 0.5 * (abar x0^2 - abar - log(1 - abar))`` (``inf`` at ``i = 0``). The last two terms
  cancel to ``abar^2 / 2 + ...`` for small ``abar`` (bright pixels, late steps); they are summed
  as a series there, so the KL is never negative from float32 cancellation.
  """
  x_delta = image_scale(x0, gamma)
  ab = alpha_bar(x_delta, i, num_steps)
  one_m = one_minus_alpha_bar(x_delta, i, num_steps)
  x0 = jnp.asarray(x0)
  # -log(1 - a) - a = a^2 (1/2 + a/3 + a^2/4 + ...); 7 terms are float32-exact for a < 0.1.
  series = jnp.square(ab) * (1 / 2 + ab * (1 / 3 + ab * (1 / 4 + ab * (1 / 5 + ab * (
      1 / 6 + ab * (1 / 7 + ab / 8))))))
  rest = jnp.where(ab < 0.1, series, -jnp.log(one_m) - ab)
  return 0.5 * (ab * jnp.square(x0) + rest)


def q_sample(x0: Float[ArrayLike, '*shape'], i: ArrayLike, noise: Float[ArrayLike, '*shape'], *,
             gamma: float, num_steps: int) -> Float[Array, '*shape']:
  """Draws ``x_i`` from the marginal of eq. 9 given standard-normal ``noise``."""
  x0 = as_float('x0', x0)
  noise = as_float('noise', noise)
  if x0.shape != noise.shape:
    raise ValueError(f'noise must have the shape of x0 {x0.shape}, got {noise.shape}')
  x_delta = image_scale(x0, gamma)
  ab = alpha_bar(x_delta, i, num_steps)
  return jnp.sqrt(ab) * x0 + jnp.sqrt(one_minus_alpha_bar(x_delta, i, num_steps)) * noise


def forward_chain(rng: jax.Array, x0: Float[ArrayLike, '*shape'], *, gamma: float,
                  num_steps: int
                  ) -> tuple[Float[Array, 'T+1 *shape'], Float[Array, 'T *shape']]:
  """Simulates one Markov forward chain ``x_j = sqrt(alpha) x_{j-1} + sqrt(beta) e_j``.

  Args:
    rng: a PRNG key.
    x0: clean image(s) in ``[eps, 1]``, any shape ``S``.
  Returns:
    ``xs`` of shape ``[T+1, *S]`` (``xs[0] = x0``, ``xs[j] = x_j``) and the step noises
    ``e`` of shape ``[T, *S]`` (``e[j-1] = e_j``), computed with ``lax.scan``.
  """
  check_pixel_aware_args(gamma=gamma, num_steps=num_steps)
  x0 = as_float('x0', x0)
  x_delta = image_scale(x0, gamma)
  sqrt_a = jnp.sqrt(alpha(x_delta, num_steps))
  sqrt_b = jnp.sqrt(beta(x_delta, num_steps))
  e = jax.random.normal(rng, (num_steps,) + x0.shape, x0.dtype)

  def step(x, e_j):
    x_next = sqrt_a * x + sqrt_b * e_j
    return x_next, x_next

  _, xs = jax.lax.scan(step, x0, e)
  return jnp.concatenate([x0[None], xs], axis=0), e


def increment_scale(x_delta: Float[ArrayLike, '*shape'], j: ArrayLike,
                    num_steps: int) -> Float[Array, '*shape']:
  """``sqrt((1 - abar_j) / beta)``: maps a chain's own step noise ``e_j`` to the target ``u_j``.

  With ``Z^j = u_j`` the update of Algorithm 1 subtracts exactly ``sqrt(beta) e_j``.
  """
  return jnp.sqrt(one_minus_alpha_bar(x_delta, j, num_steps) / beta(x_delta, num_steps))


# ---------------------------------------------------------------------------- scalar baselines
def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> np.ndarray:
  """DDPM's linear schedule (Ho et al. 2020); float64 ``[T]``, index ``n-1`` is step ``n``."""
  check_pixel_aware_args(num_steps=num_steps)
  if not 0 < beta_start <= beta_end < 1:
    raise ValueError(f'need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}')
  betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
  return np.cumprod(1.0 - betas)


def cosine_alphas_cumprod(num_steps: int = 1000, s: float = 0.008,
                          max_beta: float = 0.999) -> np.ndarray:
  """Cosine schedule (Nichol & Dhariwal 2021), betas clipped at ``max_beta``; float64 ``[T]``."""
  check_pixel_aware_args(num_steps=num_steps)
  t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
  betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, max_beta)
  return np.cumprod(1.0 - betas)


def ddpm_alphas_cumprod(config) -> np.ndarray:
  """The baseline's scalar ``abar`` for a config (``config.diffusion``): float64 ``[T]``, index
  ``n-1`` is step ``n``.

  ``config.diffusion.schedule``: ``'linear'`` (``beta_start..beta_end``) or ``'cosine'``.
  """
  d = config.diffusion
  if d.schedule == 'linear':
    return linear_alphas_cumprod(d.num_steps, d.beta_start, d.beta_end)
  if d.schedule == 'cosine':
    return cosine_alphas_cumprod(d.num_steps)
  raise ConfigError(f"diffusion.schedule={d.schedule!r} is unknown; known: ['cosine', 'linear']")


def _vp_tables(alphas_cumprod: np.ndarray) -> tuple[Array, Array]:
  ac = np.asarray(alphas_cumprod, np.float64)
  t_array = np.arange(1, ac.shape[0] + 1, dtype=np.float64) / ac.shape[0]
  return jnp.asarray(t_array, jnp.float32), jnp.asarray(0.5 * np.log(ac), jnp.float32)


def vp_log_alpha(t: ArrayLike, alphas_cumprod: np.ndarray) -> Array:
  """``log alpha_t = 0.5 log abar`` piecewise-linear in continuous ``t = n/T`` (Lu et al.)."""
  t_array, log_alpha_array = _vp_tables(alphas_cumprod)
  return jnp.interp(jnp.asarray(t, jnp.float32), t_array, log_alpha_array)


def vp_sigma(t: ArrayLike, alphas_cumprod: np.ndarray) -> Array:
  """``sigma_t = sqrt(1 - alpha_t^2)``."""
  return jnp.sqrt(-jnp.expm1(2.0 * vp_log_alpha(t, alphas_cumprod)))


def vp_lambda(t: ArrayLike, alphas_cumprod: np.ndarray) -> Array:
  """Half log-SNR ``lambda_t = log alpha_t - log sigma_t``."""
  log_a = vp_log_alpha(t, alphas_cumprod)
  return log_a - 0.5 * jnp.log(-jnp.expm1(2.0 * log_a))


def vp_inverse_lambda(lam: ArrayLike, alphas_cumprod: np.ndarray) -> Array:
  """Continuous ``t`` with ``lambda_t = lam`` (inverse of :func:`vp_lambda`)."""
  t_array, log_alpha_array = _vp_tables(alphas_cumprod)
  log_alpha = -0.5 * jnp.logaddexp(0.0, -2.0 * jnp.asarray(lam, jnp.float32))
  return jnp.interp(log_alpha, jnp.flip(log_alpha_array), jnp.flip(t_array))


def np_vp_log_alpha(t: np.ndarray, ac: np.ndarray) -> np.ndarray:
  """Float64 NumPy twin of :func:`vp_log_alpha` (the same piecewise-linear function).

  The DPM-Solver++ tables are static, so they are built in float64 on the host; this also keeps
  the time grid from compiling an interpolation kernel per step count.
  """
  T = ac.shape[0]
  return np.interp(np.asarray(t, np.float64), np.arange(1, T + 1) / T, 0.5 * np.log(ac))


def np_vp_inverse_lambda(lam: np.ndarray, ac: np.ndarray) -> np.ndarray:
  """Float64 NumPy twin of :func:`vp_inverse_lambda`."""
  T = ac.shape[0]
  log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, np.float64))
  return np.interp(log_alpha, (0.5 * np.log(ac))[::-1], (np.arange(1, T + 1) / T)[::-1])
