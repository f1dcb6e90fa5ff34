"""Baselines on a scalar schedule
------------------------------
``alphas_cumprod`` is a concrete NumPy float64 array ``[T]`` whose index ``n-1`` holds step
``n = 1..T`` (``schedules.linear_alphas_cumprod``). The model is ``eps_fn(x, n) -> eps`` with ``x``
of the sampler's ``shape`` and ``n`` a float32 SCALAR array (shape ``[]``, one step for the whole
batch): the 1-based DDPM step, integer-valued for DDPM/DDIM and possibly fractional for
DPM-Solver++ (``n = t * T`` for continuous ``t``, as Lu et al.'s discrete-time wrapper). A network
that embeds a per-example 0-based index ``[B]`` wraps it as
``lambda x, n: net(x, jnp.full((x.shape[0],), n - 1))``. Baseline data live in ``[-1, 1]``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from pixdiff_jax.diffusion import schedules
from pixdiff_jax.diffusion.validation import check_int, float_array

__all__ = ['ddpm_sample', 'ddim_sample', 'ddim_timesteps', 'dpm_solver_pp_2m_sample',
           'dpm_solver_timesteps']

EpsFn = Callable[[Array, Array], Array]


def _check_alphas_cumprod(alphas_cumprod: Any) -> np.ndarray:
  if isinstance(alphas_cumprod, jax.core.Tracer):
    raise ValueError('alphas_cumprod must be a concrete NumPy array (it defines static tables), '
                     'got a traced value')
  ac = np.asarray(alphas_cumprod, dtype=np.float64)
  if ac.ndim != 1 or ac.shape[0] < 1:
    raise ValueError(f'alphas_cumprod must be 1-D with T >= 1 entries, got shape {ac.shape}')
  if not (np.all(np.isfinite(ac)) and np.all(ac > 0) and np.all(ac < 1)):
    raise ValueError('alphas_cumprod must lie in (0, 1) (index n-1 = step n >= 1)')
  if np.any(np.diff(ac) > 0):
    raise ValueError('alphas_cumprod must be non-increasing')
  return ac


def _check_start(rng: jax.Array | None, shape: Any, x_T: ArrayLike | None, need_noise: bool
                 ) -> tuple[tuple[int, ...], Array | None, Any]:
  """Validates ``(rng, shape, x_T)``; returns ``(shape, x_T or None, dtype)``."""
  try:
    shape = tuple(int(d) for d in shape)
  except TypeError as e:
    raise ValueError(f'shape must be a tuple of ints, got {shape!r}') from e
  if rng is None and (need_noise or x_T is None):
    raise ValueError('rng is None, but this sampler needs random numbers (x_T is None or the '
                     'sampler is stochastic)')
  if x_T is None:
    return shape, None, jnp.dtype(jnp.float32)
  x = float_array('x_T', x_T)
  if x.shape != shape:
    raise ValueError(f'x_T must have shape {shape}, got {x.shape}')
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  return shape, x.astype(dtype), dtype


def _start(rng: jax.Array | None, shape: tuple[int, ...], x_T: Array | None, dtype: Any
           ) -> tuple[Array, jax.Array | None]:
  """``(x_T, k_steps)``: ``rng`` is split as ``(k_init, k_steps)`` by every baseline sampler and
  ``x_T = normal(k_init, shape)`` unless given."""
  k_init = k_steps = None
  if rng is not None:
    k_init, k_steps = jax.random.split(rng)
  x = jax.random.normal(k_init, shape, dtype) if x_T is None else x_T
  return x, k_steps


def _call_eps(eps_fn: EpsFn, x: Array, n: Array) -> Array:
  out = eps_fn(x, n)
  out = float_array('eps_fn output', out)
  if out.shape != x.shape:
    raise ValueError(f'eps_fn output must have the shape of x {x.shape}, got {out.shape}')
  return out.astype(x.dtype)


def ddpm_sample(eps_fn: EpsFn, rng: jax.Array, shape: tuple[int, ...], *,
                alphas_cumprod: np.ndarray, clip_denoised: bool = True,
                x_T: Float[ArrayLike, '*shape'] | None = None) -> Float[Array, '*shape']:
  """Ancestral DDPM sampling (Ho et al. 2020), T network evaluations.

  For ``n = T..1``: ``x0 = (x - sqrt(1 - abar_n) eps) / sqrt(abar_n)`` (clipped into
  ``[-1, 1]`` if ``clip_denoised``, as Ho et al.), then
  ``x_{n-1} = c_x0 x0 + c_xn x + sqrt(btilde_n) z`` (posterior mean and variance;
  ``btilde_1 = 0``). Without clipping this equals Ho et al.'s eps-form update.

  Args:
    eps_fn: ``eps_fn(x, n) -> eps``; ``n`` a float32 scalar step in ``1..T``.
    rng: PRNG key, split as ``(k_init, k_steps)``: ``x_T = normal(k_init)`` unless given,
      step ``k`` (``n = T - k``) uses ``split(k_steps, T)[k]``.
    shape: the output shape, e.g. ``(B, H, W, C)``.
    alphas_cumprod: NumPy ``[T]`` (static).
    clip_denoised: clip the predicted ``x0`` into ``[-1, 1]``.
    x_T: optional start, shape ``shape``.
  Returns:
    float32 samples of shape ``shape``.
  """
  ac = _check_alphas_cumprod(alphas_cumprod)
  T = ac.shape[0]
  shape, x_T, dt = _check_start(rng, shape, x_T, need_noise=True)
  ac_prev = np.append(1.0, ac[:-1])
  betas = 1.0 - ac / ac_prev
  tab = dict(
      n=np.arange(T, 0, -1, dtype=np.float64),
      sqrt_recip=np.sqrt(1.0 / ac), sqrt_recipm1=np.sqrt(1.0 / ac - 1.0),
      c_x0=np.sqrt(ac_prev) * betas / (1.0 - ac),
      c_xn=np.sqrt(1.0 - betas) * (1.0 - ac_prev) / (1.0 - ac),
      sigma=np.sqrt(betas * (1.0 - ac_prev) / (1.0 - ac)))
  tab = {k: jnp.asarray(v if k == 'n' else v[::-1], dt) for k, v in tab.items()}
  return _ddpm_jit(eps_fn, rng, x_T, tab, shape=shape, dtype=dt,
                   clip_denoised=bool(clip_denoised))


@functools.partial(jax.jit, static_argnames=('eps_fn', 'shape', 'dtype', 'clip_denoised'))
def _ddpm_jit(eps_fn, rng, x_T, tab, *, shape, dtype, clip_denoised):
  x, k_steps = _start(rng, shape, x_T, dtype)
  keys = jax.random.split(k_steps, tab['n'].shape[0])

  def body(x, xs):
    c, key = xs
    eps = _call_eps(eps_fn, x, c['n'])
    x0 = c['sqrt_recip'] * x - c['sqrt_recipm1'] * eps
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
    z = jax.random.normal(key, x.shape, x.dtype)
    return c['c_x0'] * x0 + c['c_xn'] * x + c['sigma'] * z, None

  x, _ = jax.lax.scan(body, x, (tab, keys))
  return x


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
  """S evenly spaced 1-based steps ``n_k = round(T - k T / S)``, ``k = 0..S-1`` (descending).

  Starts at ``n = T`` ("trailing" spacing; Lin et al. 2024) and ends at ``n = T/S``; the last
  DDIM step jumps from there to ``abar = 1``. ``S = T`` gives every step.
  """
  T = check_int('num_train_steps', num_train_steps, lo=1)
  S = check_int('num_steps', num_steps, lo=1, hi=T)
  return np.round(T - np.arange(S) * (T / S)).astype(np.int64)


def ddim_sample(eps_fn: EpsFn, rng: jax.Array | None, shape: tuple[int, ...], *,
                alphas_cumprod: np.ndarray, num_steps: int, eta: float = 0.0,
                clip_denoised: bool = False,
                x_T: Float[ArrayLike, '*shape'] | None = None) -> Float[Array, '*shape']:
  """DDIM (Song et al. 2021, eq. 12) on S evenly spaced steps (:func:`ddim_timesteps`).

  From step ``n`` to the next ``p`` (``abar_0 = 1`` after the last)::

      x0    = (x - sqrt(1 - abar_n) eps) / sqrt(abar_n)        # clipped to [-1, 1] if asked,
                                                               # eps then recomputed from it
      sigma = eta sqrt((1 - abar_p) / (1 - abar_n)) sqrt(1 - abar_n / abar_p)
      x_p   = sqrt(abar_p) x0 + sqrt(1 - abar_p - sigma^2) eps + sigma z

  ``eta = 0`` is deterministic (``rng`` may then be ``None`` if ``x_T`` is given); ``eta = 1``
  with ``S = T`` is DDPM with posterior variance. S network evaluations.

  Args:
    eps_fn, shape, alphas_cumprod, clip_denoised, x_T: as in :func:`ddpm_sample`.
    rng: split as ``(k_init, k_steps)``; step ``k`` uses ``split(k_steps, S)[k]``.
    num_steps: S in ``[1, T]``.
    eta: static Python float >= 0.
  """
  ac = _check_alphas_cumprod(alphas_cumprod)
  T = ac.shape[0]
  ns = ddim_timesteps(T, num_steps)
  if isinstance(eta, jax.core.Tracer) or not np.isfinite(float(eta)) or float(eta) < 0:
    raise ValueError(f'eta must be a static finite float >= 0, got {eta!r}')
  eta = float(eta)
  shape, x_T, dt = _check_start(rng, shape, x_T, need_noise=eta > 0)
  a_n = ac[ns - 1]
  a_p = np.append(ac[ns[1:] - 1], 1.0)
  sigma = eta * np.sqrt((1.0 - a_p) / (1.0 - a_n) * -np.expm1(np.log(a_n) - np.log(a_p)))
  tab = dict(n=ns.astype(np.float64), sqrt_an=np.sqrt(a_n), sqrt_1m_an=np.sqrt(1.0 - a_n),
             sqrt_ap=np.sqrt(a_p), dir=np.sqrt(np.maximum(1.0 - a_p - sigma**2, 0.0)),
             sigma=sigma)
  tab = {k: jnp.asarray(v, dt) for k, v in tab.items()}
  return _ddim_jit(eps_fn, rng, x_T, tab, shape=shape, dtype=dt, stochastic=eta > 0,
                   clip_denoised=bool(clip_denoised))


@functools.partial(jax.jit, static_argnames=('eps_fn', 'shape', 'dtype', 'stochastic',
                                             'clip_denoised'))
def _ddim_jit(eps_fn, rng, x_T, tab, *, shape, dtype, stochastic, clip_denoised):
  x, k_steps = _start(rng, shape, x_T, dtype)
  S = tab['n'].shape[0]
  keys = jax.random.split(k_steps, S) if stochastic else jnp.zeros((S,), jnp.uint32)

  def body(x, xs):
    c, key = xs
    eps = _call_eps(eps_fn, x, c['n'])
    x0 = (x - c['sqrt_1m_an'] * eps) / c['sqrt_an']
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - c['sqrt_an'] * x0) / c['sqrt_1m_an']
    x_p = c['sqrt_ap'] * x0 + c['dir'] * eps
    if stochastic:
      x_p = x_p + c['sigma'] * jax.random.normal(key, x.shape, x.dtype)
    return x_p, None

  x, _ = jax.lax.scan(body, x, (tab, keys))
  return x


def dpm_solver_timesteps(alphas_cumprod: np.ndarray, num_steps: int, *,
                         skip_type: Literal['time_uniform', 'logSNR'] = 'time_uniform',
                         denoise_to_zero: bool = True) -> np.ndarray:
  """Continuous times ``t`` (``n = t T``) of DPM-Solver++ for S steps, descending from 1.

  ``denoise_to_zero=False`` (Lu et al.): S+1 points from ``t = 1`` to ``t = 1/T``, uniform in
  ``t`` or in ``lambda`` (``schedules.vp_lambda``); the sampler returns ``x_{1/T}``.
  ``denoise_to_zero=True``: S points from ``1`` to ``1/T`` (the S evaluation points); the sampler
  returns the data prediction at ``1/T`` (a last step to ``sigma = 0``, as diffusers'
  ``final_sigmas_type='zero'``). Returns the S (or S+1) times, float64.
  """
  ac = _check_alphas_cumprod(alphas_cumprod)
  S = check_int('num_steps', num_steps, lo=1)
  T = ac.shape[0]
  npts = S if denoise_to_zero else S + 1
  t_end = 1.0 / T
  if skip_type == 'time_uniform':
    t = np.linspace(1.0, t_end, npts)
  elif skip_type == 'logSNR':
    log_a = schedules.np_vp_log_alpha(np.array([1.0, t_end]), ac)
    lam = log_a - 0.5 * np.log(-np.expm1(2.0 * log_a))
    t = schedules.np_vp_inverse_lambda(np.linspace(lam[0], lam[1], npts), ac)
    t[0] = 1.0
    if npts > 1:
      t[-1] = t_end
  else:
    raise ValueError(f"skip_type must be 'time_uniform' or 'logSNR', got {skip_type!r}")
  return t


def dpm_solver_pp_2m_sample(eps_fn: EpsFn, rng: jax.Array | None, shape: tuple[int, ...], *,
                            alphas_cumprod: np.ndarray, num_steps: int,
                            skip_type: Literal['time_uniform', 'logSNR'] = 'time_uniform',
                            lower_order_final: bool = True, denoise_to_zero: bool = True,
                            clip_denoised: bool = False,
                            x_T: Float[ArrayLike, '*shape'] | None = None
                            ) -> Float[Array, '*shape']:
  """DPM-Solver++(2M) (Lu et al. 2023, Algorithm 2), discrete-time, data-prediction form.

  The noise schedule is Lu et al.'s discrete ``NoiseScheduleVP`` (``schedules.vp_*``: piecewise
  linear ``log alpha_t`` in ``t = n/T``; the static tables use its float64 NumPy twin); the
  model is called at ``n = t T``. With
  ``D_k = (x - sigma_k eps) / alpha_k`` (clipped into ``[-1, 1]`` if ``clip_denoised``),
  ``h_k = lambda_{k+1} - lambda_k``, ``r_k = h_{k-1} / h_k``::

      x_{k+1} = sigma_{k+1}/sigma_k x_k - alpha_{k+1} expm1(-h_k) (D_k + (D_k - D_{k-1})/(2 r_k))

  The first step is first order (no ``D_{-1}``). ``denoise_to_zero=False`` is Lu et al.'s
  ``sample(steps=S, order=2, method='multistep', denoise_to_zero=False)``: S solver steps on S+1
  grid points ending at ``t = 1/T``. ``denoise_to_zero=True`` (default) is their
  ``denoise_to_zero=True`` with ``steps=S-1``: S-1 solver steps on S grid points, then the data
  prediction ``D`` at ``t = 1/T`` is returned (a first-order step to ``sigma = 0``). With
  ``lower_order_final`` and fewer than 10 solver steps the last solver step is first order
  (Lu et al.). Either way S network evaluations.

  Args:
    eps_fn, shape, alphas_cumprod, clip_denoised, x_T: as in :func:`ddpm_sample`.
    rng: only used to draw ``x_T`` (split as ``(k_init, _)``); may be ``None`` if ``x_T`` is
      given.
    num_steps: S >= 1.
    skip_type: ``'time_uniform'`` or ``'logSNR'`` step spacing.
  """
  ac = _check_alphas_cumprod(alphas_cumprod)
  T = ac.shape[0]
  S = check_int('num_steps', num_steps, lo=1)
  t = dpm_solver_timesteps(ac, S, skip_type=skip_type, denoise_to_zero=denoise_to_zero)
  shape, x_T, dt = _check_start(rng, shape, x_T, need_noise=False)
  log_a = schedules.np_vp_log_alpha(t, ac)
  alpha = np.exp(log_a)
  sigma = np.sqrt(-np.expm1(2.0 * log_a))
  lam = log_a - np.log(sigma)
  if denoise_to_zero:  # virtual end point sigma = 0, alpha = 1, lambda = +inf
    alpha, sigma = np.append(alpha, 1.0), np.append(sigma, 0.0)
  with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
    lam_next = np.append(lam[1:], np.inf) if denoise_to_zero else lam[1:]
    h = lam_next - lam[:S]
    phi = np.expm1(-h)  # -1 for h = inf
    A = sigma[1:] / sigma[:S]
    B = -alpha[1:] * phi
    r = np.append(np.nan, h[:-1]) / h
    C = -0.5 * alpha[1:] * phi / r
  # M solver steps between grid points (+ the final data prediction with denoise_to_zero).
  M = S - 1 if denoise_to_zero else S
  order2 = np.arange(S) >= 1
  if lower_order_final and 1 <= M < 10:
    order2[M - 1] = False
  if denoise_to_zero:
    order2[-1] = False
  C = np.where(order2, C, 0.0)
  tab = dict(n=t[:S] * T, alpha=alpha[:S], sigma=sigma[:S], A=A, B=B, C=C)
  if not all(np.all(np.isfinite(v)) for v in tab.values()):
    raise ValueError('DPM-Solver++ coefficients are not finite; check alphas_cumprod and '
                     f'num_steps={S}')
  tab = {k: jnp.asarray(v, dt) for k, v in tab.items()}
  return _dpm_jit(eps_fn, rng, x_T, tab, shape=shape, dtype=dt,
                  clip_denoised=bool(clip_denoised))


@functools.partial(jax.jit, static_argnames=('eps_fn', 'shape', 'dtype', 'clip_denoised'))
def _dpm_jit(eps_fn, rng, x_T, tab, *, shape, dtype, clip_denoised):
  x, _ = _start(rng, shape, x_T, dtype)

  def body(carry, c):
    x, d_prev = carry
    eps = _call_eps(eps_fn, x, c['n'])
    d = (x - c['sigma'] * eps) / c['alpha']
    if clip_denoised:
      d = jnp.clip(d, -1.0, 1.0)
    x = c['A'] * x + c['B'] * d + c['C'] * (d - d_prev)
    return (x, d), None

  (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), tab)
  return x
