"""Pixel-aware samplers (docs/design.md sections 1-3)
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
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from pixdiff_jax.diffusion import parametrisation, schedules
from pixdiff_jax.diffusion.parametrisation import TARGETS, Target
from pixdiff_jax.diffusion.validation import (check_eps, check_eta, check_int, check_scale,
                                              check_stack, check_step_arg, clamp_scale,
                                              compute_dtype, concrete, float_array)

__all__ = ['EPS', 'UPDATES', 'TARGETS', 'parallel_reverse', 'block_sequential_reverse',
           'block_starts', 'reverse_noise']

EPS = 4e-3  # images x0 lie in [EPS, 1] (docs/design.md section 1)

ModelFn = Callable[[Array, Array, Array], Array]
HeadFn = Callable[[Array, Array, Array], Array]
Update = Literal['recursion', 'x0_jump', 'x0_steps']
UPDATES = ('recursion', 'x0_jump', 'x0_steps')  # block_sequential_reverse(update=...)


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
  x_i = float_array('x_i', x_i)
  shape = x_i.shape
  x_delta_hat = check_scale(x_delta_hat, shape)
  Z = check_stack('Z', Z, num_steps, shape)
  i = check_step_arg('i', i, shape, num_steps)
  check_eta(eta)
  check_eps(eps)
  if noise is None:
    if not (concrete(eta) is not None and float(concrete(eta)) == 0.0):
      raise ValueError(f'noise is None, which needs eta=0; got eta={eta!r}')
  else:
    noise = check_stack('noise', noise, num_steps, shape)
  dtype = compute_dtype(x_i, x_delta_hat, Z, noise)
  if noise is not None:
    noise = noise.astype(dtype)
  return _parallel_reverse_jit(x_i.astype(dtype), i, x_delta_hat.astype(dtype), Z.astype(dtype),
                               noise, jnp.asarray(eta, dtype), num_steps=num_steps,
                               clip_denoised=bool(clip_denoised), eps=float(eps))


@functools.partial(jax.jit, static_argnames=('num_steps', 'clip_denoised', 'eps'))
def _parallel_reverse_jit(x, i, x_delta_hat, Z, noise, eta, *, num_steps, clip_denoised, eps):
  """The validated core of :func:`parallel_reverse`; jitted so that eager calls reuse it."""
  x_delta = clamp_scale(jnp.broadcast_to(x_delta_hat, x.shape))
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
  s = num_steps if start_step is None else check_int('start_step', start_step, lo=0,
                                                      hi=num_steps)
  k = check_int('network_calls', network_calls, lo=1, hi=max(s, 1))
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
      ``[B, T, H, W, C]`` must be wrapped with ``parametrisation.heads_first``.
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
  x = float_array('x_T', x_T)
  shape = x.shape
  x_delta_hat = check_scale(x_delta_hat, shape)
  check_eta(eta)
  check_eps(eps)
  if rng is None and not (concrete(eta) is not None and float(concrete(eta)) == 0.0):
    raise ValueError(f'rng is None, which needs eta=0; got eta={eta!r}')
  dtype = compute_dtype(x, x_delta_hat)

  his, los, length = _block_bounds(num_steps, network_calls, start_step)

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


def _block_bounds(num_steps: int, network_calls: int, start_step) -> tuple[Array, Array, int]:
  """``(his, los, length)``: each call's start step ``t_k`` and the next call's ``t_{k+1}``
  (int32 ``[K]``), and the longest block (static). ``start_step`` may be traced."""
  if start_step is None or concrete(start_step) is not None:
    s = num_steps if start_step is None else int(concrete(start_step))
    his = block_starts(num_steps, network_calls, s)
    los = np.append(his[1:], 0)
    length = int(np.max(his - los))
    his, los = jnp.asarray(his, jnp.int32), jnp.asarray(los, jnp.int32)
  else:
    k = check_int('network_calls', network_calls, lo=1, hi=num_steps)
    s = jnp.clip(jnp.asarray(start_step).astype(jnp.int32), 0, num_steps)
    if s.shape != ():
      raise ValueError(f'start_step must be a scalar, got shape {s.shape}')
    ks = jnp.arange(k + 1, dtype=jnp.int32)
    bounds = s - (ks * s) // k
    his, los = bounds[:-1], bounds[1:]
    length = -(-num_steps // k)
  return his, los, length



@functools.partial(jax.jit, static_argnames=('model_fn', 'length', 'num_steps', 'clip_denoised',
                                             'eps', 'update', 'target', 'head_fn', 'trajectory'))
def _block_sequential_jit(model_fn, x, x_delta_hat, rng, eta, his, los, *, length, num_steps,
                          clip_denoised, eps, update, target, head_fn, trajectory=False):
  """The validated core of :func:`block_sequential_reverse` (jitted, keyed on ``model_fn``)."""
  shape, dtype = x.shape, x.dtype
  x_delta = clamp_scale(jnp.broadcast_to(x_delta_hat.astype(dtype), shape))
  noise_at = None
  if rng is not None:
    noise_at = lambda j: jax.random.normal(jax.random.fold_in(rng, j), shape, dtype)

  def block(x, hi_lo):
    hi, lo = hi_lo
    if head_fn is None:
      Z = model_fn(x, x_delta_hat, hi)
      Z = check_stack('model_fn output Z', Z, num_steps, shape).astype(dtype)
      head = lambda j: jax.lax.dynamic_index_in_dim(Z, j - 1, 0, keepdims=False)
    else:  # this call reads head clip(hi, 1, T) only (see block_sequential_reverse)
      z_hi = float_array('head_fn output', head_fn(x, x_delta_hat, hi))
      if z_hi.shape != shape:
        raise ValueError(f'head_fn output must have the shape of x {shape}, got {z_hi.shape}')
      z_hi = z_hi.astype(dtype)
      head = lambda j: z_hi
    def z_at(j, x_j):  # what the recursion reads as Z^j (eps_tilde_j)
      return parametrisation.eps_tilde_from_head(target, head(j), x_j, x_delta=x_delta,
                                                 j=j.astype(dtype), num_steps=num_steps)
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
  if target != 'increment':
    return parametrisation.x0_from_head(target, head(t), x, x_delta=x_delta,
                                        j=t.astype(x.dtype), num_steps=num_steps)
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
