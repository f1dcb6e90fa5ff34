"""Reverse-time samplers: the paper's one-pass recursion (Algorithm 1), its block-sequential
generalisation, and the scalar-schedule baselines DDPM, DDIM and DPM-Solver++(2M).

Every sampler here is a pure function of (model function or predictions, PRNG key or noise,
settings): it can be wrapped in ``jax.jit`` / ``jax.vmap`` / ``pmap`` by the caller, works in
float32 (float64 only if every input is float64 and x64 is enabled) and makes a number of network
evaluations that is known statically (:func:`num_network_evals`).

Pixel-aware samplers (docs/design.md sections 1-3)
---------------------------------------------
Steps are ``j = T..1`` (``T = num_steps``). ``Z`` and ``noise`` are stacks ``[T, *x.shape]`` whose
index ``j-1`` belongs to step ``j`` (heads axis FIRST). One step of Algorithm 1 (line 9) is::

    x_{j-1} = (x_j - beta / sqrt(1 - abar_j) * Z^j) / sqrt(alpha) + eta * sqrt(btilde_j) * noise_j

with the schedule computed per pixel from ``x_delta_hat`` (``schedules.alpha`` ...). ``eta = 1``
is the paper. ``clip_denoised=True`` replaces the mean by the DDPM posterior mean of the implied
clean image, clipped into ``[eps, 1]``::

    x0_hat  = clip((x_j - sqrt(1 - abar_j) Z^j) / sqrt(abar_j), eps, 1)
    x_{j-1} = c_x0 x0_hat + c_xj x_j + eta * sqrt(btilde_j) noise_j  # posterior_mean_coefs

The implied-``x0`` formula reads ``Z^j`` as the CUMULATIVE noise ``eps_tilde_j`` of ``x_j``
(the paper's ``target='cumulative'``). For a model trained with ``target='increment'`` it is not
the clean image; with such a model use ``clip_denoised=False`` (then, with ``eta = 0`` and exact
increments, the recursion inverts the forward chain; docs/design.md section 3). At ``j = 1`` the
posterior coefficients are exactly ``(1, 0)`` and ``btilde_1 = 0``, so with ``clip_denoised`` the
output lies in ``[eps, 1]``.

Degenerate scales cannot be seen under ``jit``: ``x_delta_hat`` is clamped into
``[finfo.tiny, 1 - finfo.epsneg]`` (a no-op for every valid scale ``exp(-gamma x0)``,
``x0 in [eps, 1]``, ``gamma < 87``) so that no ``0/0`` can occur; concrete (eager) values outside
``(0, 1]`` or non-finite raise ``ValueError``.

Baselines on a scalar schedule
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

__all__ = [
    'EPS', 'parallel_reverse', 'block_sequential_reverse', 'block_starts', 'reverse_noise',
    'ddpm_sample', 'ddim_sample', 'ddim_timesteps', 'dpm_solver_pp_2m_sample',
    'dpm_solver_timesteps', 'num_network_evals',
]

EPS = 4e-3  # images x0 lie in [EPS, 1] (docs/design.md section 1)

ModelFn = Callable[[Array, Array, Array], Array]
HeadFn = Callable[[Array, Array, Array], Array]
EpsFn = Callable[[Array, Array], Array]
Update = Literal['recursion', 'x0_jump', 'x0_steps']
Target = Literal['cumulative', 'increment', 'v', 'x0']
UPDATES = ('recursion', 'x0_jump', 'x0_steps')  # block_sequential_reverse(update=...)
TARGETS = ('cumulative', 'increment', 'v', 'x0')  # what the heads predict (diffusion.target)


# ---------------------------------------------------------------------------- validation
def _concrete(x: Any) -> np.ndarray | None:
  """The value of ``x`` if it is known at trace time, else ``None``."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except Exception:  # pylint: disable=broad-except
    return None


def _float_array(name: str, x: ArrayLike) -> Array:
  if x is None:
    raise ValueError(f'{name} must be a floating-point array, got None')
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'{name} must be a floating-point array, got dtype {x.dtype}')
  return x


def _check_int(name: str, value: Any, *, lo: int, hi: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be a Python int, got {value!r}')
  if value < lo or (hi is not None and value > hi):
    bound = f'in [{lo}, {hi}]' if hi is not None else f'>= {lo}'
    raise ValueError(f'{name} must be {bound}, got {value}')
  return int(value)


def _check_eta(eta: Any) -> None:
  val = _concrete(eta)
  if val is not None and (val.shape != () or not np.isfinite(val) or val < 0):
    raise ValueError(f'eta must be a finite scalar >= 0, got {eta!r}')


def _check_eps(eps: float) -> None:
  if not 0.0 <= float(eps) < 1.0:
    raise ValueError(f'eps must be in [0, 1), got {eps!r}')


def _compute_dtype(*arrays: Array | None) -> jnp.dtype:
  """float32, or float64 when the inputs are float64 (x64 enabled); never lower than float32."""
  dt = jnp.result_type(*[a for a in arrays if a is not None])
  return jnp.promote_types(dt, jnp.float32)


def _check_scale(x_delta_hat: ArrayLike, x_shape: tuple[int, ...]) -> Array:
  x_delta_hat = _float_array('x_delta_hat', x_delta_hat)
  try:
    out = jnp.broadcast_shapes(x_delta_hat.shape, x_shape)
  except ValueError:
    out = None
  if out != tuple(x_shape):
    raise ValueError(f'x_delta_hat must broadcast to the image shape {tuple(x_shape)}, got '
                     f'{x_delta_hat.shape}')
  val = _concrete(x_delta_hat)
  if val is not None and not (np.all(np.isfinite(val)) and np.all(val > 0) and np.all(val <= 1)):
    raise ValueError('x_delta_hat must be a valid image scale exp(-gamma * x0) in (0, 1]; got '
                     f'values in [{np.nanmin(val)}, {np.nanmax(val)}] (non-finite: '
                     f'{int(np.sum(~np.isfinite(val)))})')
  return x_delta_hat


def _clamp_scale(x_delta: Array) -> Array:
  fi = jnp.finfo(x_delta.dtype)
  return jnp.clip(x_delta, fi.tiny, 1.0 - fi.epsneg)


def _check_stack(name: str, z: ArrayLike, num_steps: int, x_shape: tuple[int, ...]) -> Array:
  z = _float_array(name, z)
  want = (num_steps,) + tuple(x_shape)
  if z.shape != want:
    raise ValueError(f'{name} must have shape [num_steps, *x.shape] = {want} (index j-1 holds '
                     f'step j), got {z.shape}')
  return z


def _check_step_arg(name: str, i: ArrayLike, x_shape: tuple[int, ...], num_steps: int) -> Array:
  i = jnp.asarray(i)
  if not (jnp.issubdtype(i.dtype, jnp.integer) or jnp.issubdtype(i.dtype, jnp.floating)):
    raise ValueError(f'{name} must be an integer (or integer-valued float) step, got dtype '
                     f'{i.dtype}')
  if i.ndim > len(x_shape) or tuple(i.shape) != tuple(x_shape[:i.ndim]):
    raise ValueError(f'{name} must be a scalar or have the leading shape of x (e.g. [B] for x '
                     f'[B, ...]); x.shape={tuple(x_shape)}, {name}.shape={i.shape}')
  val = _concrete(i)
  if val is not None and (np.any(val < 0) or np.any(val > num_steps)):
    raise ValueError(f'{name} must lie in [0, num_steps={num_steps}], got values in '
                     f'[{val.min()}, {val.max()}]')
  return i


# ---------------------------------------------------------------------------- pixel-aware core
def _pixel_step(x: Array, z: Array, n: Array | None, j: Array, *, x_delta: Array,
                num_steps: int, eta: Any, clip_denoised: bool, eps: float) -> Array:
  """One reverse step ``x_j -> x_{j-1}`` on the pixel-aware schedule (``j >= 1``, float)."""
  log_xd = jnp.log(x_delta)
  one_m_ab = schedules.one_minus_alpha_bar(x_delta, j, num_steps)
  if clip_denoised:
    # 1/sqrt(abar_j) = exp(-j log(x_delta) / (2T)); Z^j read as eps_tilde_j (cumulative).
    x0 = (x - jnp.sqrt(one_m_ab) * z) * jnp.exp(-0.5 * j * (log_xd / num_steps))
    x0 = jnp.clip(x0, eps, 1.0)
    c_x0, c_xj = schedules.posterior_mean_coefs(x_delta, j, num_steps)
    mean = c_x0 * x0 + c_xj * x
  else:
    b = schedules.beta(x_delta, num_steps)
    inv_sqrt_alpha = jnp.exp(-0.5 * (log_xd / num_steps))
    mean = (x - b * jax.lax.rsqrt(one_m_ab) * z) * inv_sqrt_alpha
  if n is None:
    return mean
  bt = schedules.btilde(x_delta, j, num_steps)
  # btilde_1 = 0: a plain sqrt would give d sqrt/d btilde = inf there, and inf * 0 = NaN grads.
  pos = bt > 0
  std = jnp.where(pos, jnp.sqrt(jnp.where(pos, bt, 1.0)), 0.0)
  return mean + eta * std * n


def _run_steps(x: Array, *, z_at: Callable[[Array, Array], Array],
               noise_at: Callable[[Array], Array] | None, hi: Array, lo: Array,
               i: Array | None, length: int, x_delta: Array, num_steps: int, eta: Any,
               clip_denoised: bool, eps: float) -> Array:
  """Runs steps ``j = hi, hi-1, ..., lo+1`` (the range ``(lo, hi]``) with ``lax.scan``.

  The scan has the static ``length`` (>= ``hi - lo``); iterations outside ``(lo, hi]``, with
  ``j < 1`` or with ``j > i`` (per example when ``i`` is ``[B]``) leave ``x`` unchanged. Their
  coefficients are evaluated at a safe ``j >= 1`` so that neither values nor gradients see 0/0.
  """
  if i is not None:
    i_b = i.reshape(i.shape + (1,) * (x.ndim - i.ndim))

  def body(x, k):
    j = hi - k
    jc = jnp.clip(j, 1, num_steps)
    active = (j > lo) & (j >= 1)
    if i is not None:
      active = active & (j <= i_b)
    n = None if noise_at is None else noise_at(jc)
    x_new = _pixel_step(x, z_at(jc, x), n, jc.astype(x.dtype), x_delta=x_delta,
                        num_steps=num_steps, eta=eta, clip_denoised=clip_denoised, eps=eps)
    return jnp.where(active, x_new, x), None

  x, _ = jax.lax.scan(body, x, jnp.arange(length, dtype=jnp.int32))
  return x


def parallel_reverse(x_i: Float[ArrayLike, '*shape'], i: ArrayLike,
                     x_delta_hat: Float[ArrayLike, '*shape'], Z: Float[ArrayLike, 'T *shape'],
                     noise: Float[ArrayLike, 'T *shape'] | None, *, num_steps: int,
                     eta: float | ArrayLike = 1.0, clip_denoised: bool = False,
                     eps: float = EPS) -> Float[Array, '*shape']:
  """Algorithm 1, lines 2-12: the element-wise reverse recursion from ``x_i`` to ``x0_hat``.

  Args:
    x_i: the noisy image(s), any shape ``S`` (e.g. ``[B, H, W, C]``), at step ``i``.
    i: the start step in ``0..T``: a Python int, a (traced) scalar, or an array of the leading
      shape of ``x_i`` (e.g. ``[B]``, one start step per example). Steps ``j > i`` are skipped;
      ``i = 0`` returns ``x_i``.
    x_delta_hat: the (estimated) image scale ``exp(-gamma x0)``, broadcastable to ``S``.
    Z: reverse-model predictions ``[T, *S]``; ``Z[j-1]`` is the head of step ``j``.
    noise: standard-normal noise ``[T, *S]``; ``noise[j-1]`` is used by step ``j``. ``None``
      means no fresh noise and requires ``eta = 0``.
    num_steps: ``T`` (static Python int >= 1).
    eta: scale of the fresh noise ``eta * sqrt(btilde_j) * noise_j`` (``1`` is the paper); may
      be traced.
    clip_denoised: step with the posterior mean of the implied ``x0`` clipped into
      ``[eps, 1]``; reads ``Z^j`` as the cumulative ``eps_tilde_j`` (see the module docstring).
    eps: lower clip bound (the data's ``eps``).
  Returns:
    ``x0_hat`` of shape ``S`` in float32 (float64 for float64 inputs under x64).
  Raises:
    ValueError: at trace time for bad shapes, dtypes, ``num_steps``, ``eta``; for concrete
      ``i`` outside ``[0, T]`` or concrete ``x_delta_hat`` outside ``(0, 1]``.
  """
  schedules.check_pixel_aware_args(num_steps=num_steps)
  x_i = _float_array('x_i', x_i)
  shape = x_i.shape
  x_delta_hat = _check_scale(x_delta_hat, shape)
  Z = _check_stack('Z', Z, num_steps, shape)
  i = _check_step_arg('i', i, shape, num_steps)
  _check_eta(eta)
  _check_eps(eps)
  if noise is None:
    if not (_concrete(eta) is not None and float(_concrete(eta)) == 0.0):
      raise ValueError(f'noise is None, which needs eta=0; got eta={eta!r}')
  else:
    noise = _check_stack('noise', noise, num_steps, shape)
  dtype = _compute_dtype(x_i, x_delta_hat, Z, noise)
  if noise is not None:
    noise = noise.astype(dtype)
  return _parallel_reverse_jit(x_i.astype(dtype), i, x_delta_hat.astype(dtype), Z.astype(dtype),
                               noise, jnp.asarray(eta, dtype), num_steps=num_steps,
                               clip_denoised=bool(clip_denoised), eps=float(eps))


@functools.partial(jax.jit, static_argnames=('num_steps', 'clip_denoised', 'eps'))
def _parallel_reverse_jit(x, i, x_delta_hat, Z, noise, eta, *, num_steps, clip_denoised, eps):
  """The validated core of :func:`parallel_reverse`; jitted so that eager calls reuse it."""
  x_delta = _clamp_scale(jnp.broadcast_to(x_delta_hat, x.shape))
  z_at = lambda j, x: jax.lax.dynamic_index_in_dim(Z, j - 1, 0, keepdims=False)
  noise_at = None
  if noise is not None:
    noise_at = lambda j: jax.lax.dynamic_index_in_dim(noise, j - 1, 0, keepdims=False)
  return _run_steps(x, z_at=z_at, noise_at=noise_at, hi=jnp.int32(num_steps), lo=jnp.int32(0),
                    i=i, length=num_steps, x_delta=x_delta, num_steps=num_steps, eta=eta,
                    clip_denoised=clip_denoised, eps=eps)


def reverse_noise(rng: jax.Array, shape: tuple[int, ...], *, num_steps: int,
                  dtype: Any = jnp.float32) -> Float[Array, 'T *shape']:
  """The noise stack that :func:`block_sequential_reverse` draws from ``rng``.

  ``noise[j-1] = normal(fold_in(rng, j), shape)``, so that ``parallel_reverse(..., noise=
  reverse_noise(rng, ...))`` and ``block_sequential_reverse(..., rng)`` use the same noise.
  """
  schedules.check_pixel_aware_args(num_steps=num_steps)
  js = jnp.arange(1, num_steps + 1, dtype=jnp.int32)
  # lax.map (not vmap): the same values, and a batched threefry compiles ~2x slower on CPU.
  return jax.lax.map(lambda j: jax.random.normal(jax.random.fold_in(rng, j), tuple(shape), dtype),
                     js)


def block_starts(num_steps: int, network_calls: int, start_step: int | None = None
                 ) -> np.ndarray:
  """The K evenly spaced steps at which the block-sequential sampler evaluates the model.

  ``t_k = s - floor(k s / K)``, ``k = 0..K-1`` (``s = start_step``, default ``T``); block ``k``
  runs the steps ``(t_{k+1}, t_k]`` with ``t_K = 0``. ``K = 1``: ``[s]``; ``K = s``: every step.
  """
  schedules.check_pixel_aware_args(num_steps=num_steps)
  s = num_steps if start_step is None else _check_int('start_step', start_step, lo=0,
                                                      hi=num_steps)
  k = _check_int('network_calls', network_calls, lo=1, hi=max(s, 1))
  return s - (np.arange(k) * s) // k


def block_sequential_reverse(model_fn: ModelFn, x_T: Float[ArrayLike, '*shape'],
                             x_delta_hat: Float[ArrayLike, '*shape'], rng: jax.Array | None, *,
                             num_steps: int, network_calls: int = 1,
                             eta: float | ArrayLike = 1.0, clip_denoised: bool = False,
                             eps: float = EPS, start_step: int | ArrayLike | None = None,
                             update: Update = 'recursion', target: Target = 'cumulative',
                             head_fn: HeadFn | None = None, return_trajectory: bool = False
                             ) -> Float[Array, '*shape'] | tuple[Array, dict[str, Array]]:
  """Block-sequential sampling: re-evaluate the T-head model at K evenly spaced steps.

  Block ``k`` evaluates ``Z = model_fn(x_{t_k}, x_delta_hat, t_k)`` once and runs the
  recursion of :func:`parallel_reverse` over its steps ``(t_{k+1}, t_k]`` (see
  :func:`block_starts`) using the heads ``Z[j-1]``, ``j <= t_k`` only. ``network_calls=1`` is the
  paper's one pass; ``network_calls=T`` is ancestral sampling on the pixel-aware schedule (one
  evaluation per step, head ``j`` at step ``j``). Exactly ``network_calls`` model evaluations are
  traced (one ``lax.scan`` over the blocks), so the whole sampler jits.

  Args:
    model_fn: ``model_fn(x_j, x_delta_hat, j) -> Z`` with ``x_j`` of ``x_T``'s shape ``S``,
      ``j`` an int32 scalar array (the current step, shared by the batch) and ``Z`` of shape
      ``[T, *S]``, HEADS AXIS FIRST (``Z[j-1]`` = head ``j``). A Flax model returning
      ``[B, T, H, W, C]`` must be wrapped with ``jnp.moveaxis(z, 1, 0)``.
    x_T: the start image(s), shape ``S``.
    x_delta_hat: image scale, broadcastable to ``S`` (kept fixed for all blocks).
    rng: PRNG key of the fresh noise, step ``j`` draws ``normal(fold_in(rng, j))``
      (:func:`reverse_noise`); may be ``None`` when ``eta = 0``.
    num_steps: ``T``.
    network_calls: ``K`` in ``[1, start_step]`` (static).
    eta, clip_denoised, eps: as in :func:`parallel_reverse`.
    start_step: the step of ``x_T``; ``None`` = ``T``. A Python int, or a traced int scalar
      (then blocks may be empty when it is < K; K evaluations happen regardless).
    update: ``'recursion'`` (above; the paper) or ``'x0_jump'``: each block estimates the clean
      image from its call at ``t_k`` (``_x0_estimate`` with ``target``), clips it into
      ``[eps, 1]`` if ``clip_denoised``, and moves to ``t_{k+1}`` with the DDIM update of the
      per-pixel schedule (``_x0_jump``; ``eta = 1`` with ``K = T`` is ancestral sampling).
      ``'x0_steps'``: every step ``j`` of a block reads head ``j`` of the block's call as the
      clean-image estimate (clipped if ``clip_denoised``) and takes that DDIM step ``j -> j-1``;
      with ``K = T`` it equals ``'x0_jump'``, with ``K = 1`` it runs the whole deterministic
      ``x0_jump`` recursion of the K = T sampler on the heads of ONE pass (the distilled
      student's read, docs/design.md section 7); the last step returns head 1's estimate.
    head_fn: optional ``head_fn(x_j, x_delta_hat, j) -> Z^jc`` of shape ``S``: the ONE head
      ``jc = clip(j, 1, T)`` of the same model called at step ``j`` (equal to
      ``model_fn(x_j, x_delta_hat, j)[jc - 1]``), evaluated without the other heads. Used
      instead of ``model_fn`` when every call reads only that head: ``update='x0_jump'`` with a
      target other than ``'increment'``, or one step per block (K equal to the start step).
      The paper's K=1 recursion reads all T heads and always calls ``model_fn``.
    return_trajectory: with ``update='x0_jump'``, also return ``{'x': [K, *S] the state at the
      start of each block (``x_{t_k}``, index 0 is ``x_T``), 'x0': [K, *S] the clean-image
      estimate each block's call made (after clipping)}`` (the distill stage's targets).
    target: what the heads predict (``config.diffusion.target``): ``'cumulative'`` and
      ``'increment'`` are read as above; ``'v'`` heads are turned into
      ``eps_tilde_j = sqrt(1 - abar_j) x_j + sqrt(abar_j) v_j`` for the recursion, and give
      ``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_t`` for ``'x0_jump'``; ``'x0'`` heads (the
      clean image itself) are turned into ``eps_tilde_j = (x_j - sqrt(abar_j) x0_j) /
      sqrt(1 - abar_j)`` for the recursion and are the clean-image estimate of ``'x0_jump'``.
  Returns:
    ``x0_hat`` of shape ``S`` (float32); with ``return_trajectory``, ``(x0_hat, trajectory)``.
  """
  schedules.check_pixel_aware_args(num_steps=num_steps)
  x = _float_array('x_T', x_T)
  shape = x.shape
  x_delta_hat = _check_scale(x_delta_hat, shape)
  _check_eta(eta)
  _check_eps(eps)
  if rng is None and not (_concrete(eta) is not None and float(_concrete(eta)) == 0.0):
    raise ValueError(f'rng is None, which needs eta=0; got eta={eta!r}')
  dtype = _compute_dtype(x, x_delta_hat)

  if start_step is None or _concrete(start_step) is not None:
    s = num_steps if start_step is None else int(_concrete(start_step))
    his = block_starts(num_steps, network_calls, s)
    los = np.append(his[1:], 0)
    length = int(np.max(his - los))
    his, los = jnp.asarray(his, jnp.int32), jnp.asarray(los, jnp.int32)
  else:
    k = _check_int('network_calls', network_calls, lo=1, hi=num_steps)
    s = jnp.clip(jnp.asarray(start_step).astype(jnp.int32), 0, num_steps)
    if s.shape != ():
      raise ValueError(f'start_step must be a scalar, got shape {s.shape}')
    ks = jnp.arange(k + 1, dtype=jnp.int32)
    bounds = s - (ks * s) // k
    his, los = bounds[:-1], bounds[1:]
    length = -(-num_steps // k)

  if update not in UPDATES:
    raise ValueError(f'update must be one of {UPDATES}, got {update!r}')
  if target not in TARGETS:
    raise ValueError(f'target must be one of {TARGETS}, got {target!r}')
  if return_trajectory and update != 'x0_jump':
    raise ValueError(f"return_trajectory needs update='x0_jump', got {update!r}")
  reads_one_head = (update == 'x0_jump' and target != 'increment') or length == 1
  return _block_sequential_jit(model_fn, x.astype(dtype), x_delta_hat, rng,
                               jnp.asarray(eta, dtype), his, los, length=length,
                               num_steps=num_steps, clip_denoised=bool(clip_denoised),
                               eps=float(eps), update=update, target=target,
                               head_fn=head_fn if reads_one_head else None,
                               trajectory=bool(return_trajectory))


@functools.partial(jax.jit, static_argnames=('model_fn', 'length', 'num_steps', 'clip_denoised',
                                             'eps', 'update', 'target', 'head_fn', 'trajectory'))
def _block_sequential_jit(model_fn, x, x_delta_hat, rng, eta, his, los, *, length, num_steps,
                          clip_denoised, eps, update, target, head_fn, trajectory=False):
  """The validated core of :func:`block_sequential_reverse` (jitted, keyed on ``model_fn``)."""
  shape, dtype = x.shape, x.dtype
  x_delta = _clamp_scale(jnp.broadcast_to(x_delta_hat.astype(dtype), shape))
  noise_at = None
  if rng is not None:
    noise_at = lambda j: jax.random.normal(jax.random.fold_in(rng, j), shape, dtype)

  def block(x, hi_lo):
    hi, lo = hi_lo
    if head_fn is None:
      Z = model_fn(x, x_delta_hat, hi)
      Z = _check_stack('model_fn output Z', Z, num_steps, shape).astype(dtype)
      head = lambda j: jax.lax.dynamic_index_in_dim(Z, j - 1, 0, keepdims=False)
    else:  # this call reads head clip(hi, 1, T) only (see block_sequential_reverse)
      z_hi = _float_array('head_fn output', head_fn(x, x_delta_hat, hi))
      if z_hi.shape != shape:
        raise ValueError(f'head_fn output must have the shape of x {shape}, got {z_hi.shape}')
      z_hi = z_hi.astype(dtype)
      head = lambda j: z_hi
    if target == 'v':  # the recursion reads eps_tilde_j = sqrt(1 - abar_j) x_j + sqrt(abar_j) v_j
      def z_at(j, x_j):
        jf = j.astype(dtype)
        return (jnp.sqrt(schedules.one_minus_alpha_bar(x_delta, jf, num_steps)) * x_j
                + jnp.sqrt(schedules.alpha_bar(x_delta, jf, num_steps)) * head(j))
    elif target == 'x0':  # eps_tilde_j = (x_j - sqrt(abar_j) x0_j) / sqrt(1 - abar_j)
      def z_at(j, x_j):
        jf = j.astype(dtype)
        return ((x_j - jnp.sqrt(schedules.alpha_bar(x_delta, jf, num_steps)) * head(j))
                * jax.lax.rsqrt(schedules.one_minus_alpha_bar(x_delta, jf, num_steps)))
    else:
      z_at = lambda j, x_j: head(j)
    if update == 'x0_jump':
      hi_safe = jnp.maximum(hi, 1)  # empty blocks (hi <= lo) leave x unchanged
      x0 = _x0_estimate(x, head, z_at, hi_safe, x_delta=x_delta, num_steps=num_steps,
                        target=target)
      if clip_denoised:
        x0 = jnp.clip(x0, eps, 1.0)
      n = None if noise_at is None else noise_at(hi_safe)
      x_lo = _x0_jump(x, x0, hi_safe, jnp.minimum(lo, hi_safe), n, x_delta=x_delta,
                      num_steps=num_steps, eta=eta)
      return jnp.where(hi > lo, x_lo, x), ({'x': x, 'x0': x0} if trajectory else None)
    if update == 'x0_steps':
      return _x0_steps(x, head, z_at, hi, lo, noise_at, length=length, x_delta=x_delta,
                       num_steps=num_steps, eta=eta, clip_denoised=clip_denoised, eps=eps,
                       target=target), None
    x = _run_steps(x, z_at=z_at, noise_at=noise_at, hi=hi, lo=lo, i=None, length=length,
                   x_delta=x_delta, num_steps=num_steps, eta=eta, clip_denoised=clip_denoised,
                   eps=eps)
    return x, None

  x, traj = jax.lax.scan(block, x, (his, los))
  return (x, traj) if trajectory else x


def _x0_steps(x, head, z_at, hi, lo, noise_at, *, length, x_delta, num_steps, eta,
              clip_denoised, eps, target):
  """Steps ``j = hi..lo+1`` of one block, each a DDIM step with head ``j``'s clean image."""

  def body(x, k):
    j = jnp.maximum(hi - k, 1)  # iterations with hi - k <= lo leave x unchanged
    x0 = _x0_estimate(x, head, z_at, j, x_delta=x_delta, num_steps=num_steps, target=target)
    if clip_denoised:
      x0 = jnp.clip(x0, eps, 1.0)
    n = None if noise_at is None else noise_at(j)
    x_new = _x0_jump(x, x0, j, j - 1, n, x_delta=x_delta, num_steps=num_steps, eta=eta)
    return jnp.where(hi - k > lo, x_new, x), None

  x, _ = jax.lax.scan(body, x, jnp.arange(length, dtype=jnp.int32))
  return x


def _x0_estimate(x, head, z_at, t, *, x_delta, num_steps, target):
  """Clean image implied by the heads of one call at step ``t`` (``t >= 1``, traced)."""
  tf = t.astype(x.dtype)
  if target == 'cumulative':
    one_m_ab = schedules.one_minus_alpha_bar(x_delta, tf, num_steps)
    return (x - jnp.sqrt(one_m_ab) * head(t)) * jnp.exp(
        -0.5 * tf * (jnp.log(x_delta) / num_steps))
  if target == 'x0':
    return head(t)
  if target == 'v':  # x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_t: no amplification
    return (jnp.sqrt(schedules.alpha_bar(x_delta, tf, num_steps)) * x
            - jnp.sqrt(schedules.one_minus_alpha_bar(x_delta, tf, num_steps)) * head(t))
  # increment: invert the chain, steps t..1, with the predicted step noises (eta = 0).
  return _run_steps(x, z_at=z_at, noise_at=None, hi=t, lo=jnp.zeros_like(t), i=None,
                    length=num_steps, x_delta=x_delta, num_steps=num_steps, eta=0.0,
                    clip_denoised=False, eps=0.0)


def _x0_jump(x, x0, hi, lo, noise, *, x_delta, num_steps, eta):
  """DDIM step ``x_hi -> x_lo`` of the per-pixel schedule for a given clean image ``x0``.

  ``x_lo = sqrt(abar_lo) x0 + sqrt(1 - abar_lo - s^2) eps_hat + s noise`` with
  ``eps_hat = (x_hi - sqrt(abar_hi) x0) / sqrt(1 - abar_hi)`` and
  ``s = eta sqrt((1 - abar_lo) / (1 - abar_hi) (1 - abar_hi / abar_lo))``; ``lo = 0`` gives ``x0``.
  """
  hf, lf = hi.astype(x.dtype), lo.astype(x.dtype)
  ab_hi = schedules.alpha_bar(x_delta, hf, num_steps)
  ab_lo = schedules.alpha_bar(x_delta, lf, num_steps)
  om_hi = schedules.one_minus_alpha_bar(x_delta, hf, num_steps)
  om_lo = schedules.one_minus_alpha_bar(x_delta, lf, num_steps)
  # 1 - abar_hi / abar_lo = 1 - x_delta^((hi - lo) / T), without cancellation.
  om_ratio = schedules.one_minus_alpha_bar(x_delta, hf - lf, num_steps)
  var = jnp.square(eta) * om_lo * om_ratio / om_hi
  if noise is None:
    var = jnp.zeros_like(var)
  # sqrt(1 - abar_lo - s^2) / sqrt(1 - abar_hi), as one ratio (both vanish for dark pixels).
  c_eps = jnp.sqrt(jnp.maximum(om_lo - var, 0.0) / om_hi)
  x_lo = jnp.sqrt(ab_lo) * x0 + c_eps * (x - jnp.sqrt(ab_hi) * x0)
  if noise is not None:
    pos = var > 0
    x_lo = x_lo + jnp.where(pos, jnp.sqrt(jnp.where(pos, var, 1.0)), 0.0) * noise
  return x_lo


# ---------------------------------------------------------------------------- scalar baselines
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
  x = _float_array('x_T', x_T)
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
  out = _float_array('eps_fn output', out)
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
  T = _check_int('num_train_steps', num_train_steps, lo=1)
  S = _check_int('num_steps', num_steps, lo=1, hi=T)
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


def _np_vp_log_alpha(t: np.ndarray, ac: np.ndarray) -> np.ndarray:
  """Float64 NumPy twin of ``schedules.vp_log_alpha`` (the same piecewise-linear function).

  The DPM-Solver++ tables are static, so they are built in float64 on the host; this also keeps
  the time grid from compiling an interpolation kernel per step count.
  """
  T = ac.shape[0]
  return np.interp(np.asarray(t, np.float64), np.arange(1, T + 1) / T, 0.5 * np.log(ac))


def _np_vp_inverse_lambda(lam: np.ndarray, ac: np.ndarray) -> np.ndarray:
  """Float64 NumPy twin of ``schedules.vp_inverse_lambda``."""
  T = ac.shape[0]
  log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, np.float64))
  return np.interp(log_alpha, (0.5 * np.log(ac))[::-1], (np.arange(1, T + 1) / T)[::-1])


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
  S = _check_int('num_steps', num_steps, lo=1)
  T = ac.shape[0]
  npts = S if denoise_to_zero else S + 1
  t_end = 1.0 / T
  if skip_type == 'time_uniform':
    t = np.linspace(1.0, t_end, npts)
  elif skip_type == 'logSNR':
    log_a = _np_vp_log_alpha(np.array([1.0, t_end]), ac)
    lam = log_a - 0.5 * np.log(-np.expm1(2.0 * log_a))
    t = _np_vp_inverse_lambda(np.linspace(lam[0], lam[1], npts), ac)
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
  S = _check_int('num_steps', num_steps, lo=1)
  t = dpm_solver_timesteps(ac, S, skip_type=skip_type, denoise_to_zero=denoise_to_zero)
  shape, x_T, dt = _check_start(rng, shape, x_T, need_noise=False)
  log_a = _np_vp_log_alpha(t, ac)
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


# ---------------------------------------------------------------------------- bookkeeping
_SAMPLER_ALIASES = {
    'parallel': 'parallel', 'block_sequential': 'parallel',
    'ddpm': 'ddpm', 'ddim': 'ddim',
    'dpm_solver': 'dpm_solver', 'dpm_solver_pp_2m': 'dpm_solver', 'dpm_solver++': 'dpm_solver',
}


def num_network_evals(sampler: str, **settings: Any) -> int:
  """Static number of network evaluations of a sampler with the given settings.

  * ``'parallel'`` / ``'block_sequential'``: ``network_calls`` (default 1) evaluations of the
    reverse model R; the scale estimator G adds one more evaluation of a (smaller) network.
  * ``'ddpm'``: ``T = len(alphas_cumprod)`` (or ``num_train_steps``).
  * ``'ddim'``, ``'dpm_solver'`` (``'dpm_solver_pp_2m'``): ``num_steps`` (S).
  Unrelated settings are ignored, so a sampler's full keyword set can be passed.
  """
  kind = _SAMPLER_ALIASES.get(sampler)
  if kind is None:
    raise ValueError(f'sampler must be one of {sorted(_SAMPLER_ALIASES)}, got {sampler!r}')
  if kind == 'parallel':
    return _check_int('network_calls', settings.get('network_calls', 1), lo=1)
  if kind == 'ddpm':
    if settings.get('alphas_cumprod') is not None:
      return int(np.shape(settings['alphas_cumprod'])[0])
    if 'num_train_steps' in settings:
      return _check_int('num_train_steps', settings['num_train_steps'], lo=1)
    raise ValueError("ddpm needs alphas_cumprod= or num_train_steps= to count evaluations")
  if 'num_steps' not in settings:
    raise ValueError(f'{sampler} needs num_steps= (S) to count evaluations')
  return _check_int('num_steps', settings['num_steps'], lo=1)
