"""Prediction targets of the pixel-aware heads, and the conversions between them.

A head ``Z^j`` of the T-headed reverse model predicts, per ``diffusion.target``, one of (docs/
design.md section 3; ``abar_j``, ``1 - abar_j`` per pixel from the image scale ``x_delta``):

* ``'cumulative'`` (the paper): ``eps_tilde_j``, the standardised total noise in ``x_j``;
* ``'increment'``: ``u_j``, the chain's own step-``j`` noise scaled so that Algorithm 1 with
  ``eta = 0`` inverts the chain;
* ``'v'``: ``v_j = sqrt(abar_j) eps_tilde_j - sqrt(1 - abar_j) x0``;
* ``'x0'``: the clean image.

Here: the training targets of one simulated chain (:func:`chain_targets`) and the two readings
the samplers need, the clean image (:func:`x0_from_head`) and the cumulative noise
(:func:`eps_tilde_from_head`) implied by a head at step ``j``. ``increment`` heads have no
pointwise reading; the samplers run the recursion for them.

Axis convention: networks are batch-first (the T-headed U-Net returns ``[B, T, H, W, C]``);
the diffusion math is step-first (stacks ``[T, *shape]``, index ``j-1`` = step ``j``), because it
works on any image shape. :func:`heads_first` / :func:`heads_last` are the one crossing.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from pixdiff_jax.diffusion import schedules

__all__ = ['TARGETS', 'Target', 'chain_targets', 'x0_from_head', 'eps_tilde_from_head',
           'heads_first', 'heads_last']

Target = Literal['cumulative', 'increment', 'v', 'x0']
TARGETS = ('cumulative', 'increment', 'v', 'x0')  # what the heads predict (diffusion.target)


def heads_first(z: Float[Array, 'B T *rest']) -> Float[Array, 'T B *rest']:
  """A network's batch-first heads ``[B, T, ...]`` as the samplers' stack ``[T, B, ...]``."""
  return jnp.moveaxis(z, 1, 0)


def heads_last(z: Float[Array, 'T B *rest']) -> Float[Array, 'B T *rest']:
  """A step-first stack ``[T, B, ...]`` (e.g. :func:`chain_targets`) as ``[B, T, ...]``."""
  return jnp.moveaxis(z, 0, 1)


def chain_targets(xs: Float[ArrayLike, 'T+1 *shape'], e: Float[ArrayLike, 'T *shape'],
                  x0: Float[ArrayLike, '*shape'], *, gamma: float, num_steps: int,
                  target: Literal['cumulative', 'increment', 'v', 'x0']
                  ) -> Float[Array, 'T *shape']:
  """Head targets for every step ``j = 1..T`` of one simulated chain (index ``j-1``).

  * ``'cumulative'`` (paper, "similar to DDPM"): ``eps_tilde_j = (x_j - sqrt(abar_j) x0) /
    sqrt(1 - abar_j)``, the standardised total noise in ``x_j``.
  * ``'increment'``: ``u_j = sqrt((1 - abar_j) / beta) * e_j``, which makes Algorithm 1 with
    ``eta = 0`` invert the chain exactly.
  * ``'v'``: ``v_j = sqrt(abar_j) eps_tilde_j - sqrt(1 - abar_j) x0`` (Salimans & Ho's
    v-parametrisation on the per-pixel schedule): ``x0 = sqrt(abar_j) x_j - sqrt(1 - abar_j) v_j``
    and ``eps_tilde_j = sqrt(1 - abar_j) x_j + sqrt(abar_j) v_j``, with coefficients at most 1,
    where reading ``x0`` off an ``eps_tilde`` prediction multiplies its error by
    ``sqrt((1 - abar_j) / abar_j)``.
  * ``'x0'``: the clean image itself for every head (``x0`` broadcast to ``[T, *shape]``); the
    loss is then the image-space error, the usual x0-parametrisation of DDPM.
  """
  schedules.check_pixel_aware_args(gamma=gamma, num_steps=num_steps)
  x0 = schedules.as_float('x0', x0)
  xs = schedules.as_float('xs', xs)
  e = schedules.as_float('e', e)
  if xs.shape != (num_steps + 1,) + x0.shape or e.shape != (num_steps,) + x0.shape:
    raise ValueError(f'xs must be [T+1, *x0.shape] and e [T, *x0.shape] with T={num_steps}, '
                     f'x0.shape={x0.shape}; got xs {xs.shape}, e {e.shape}')
  x_delta = schedules.image_scale(x0, gamma)
  j = jnp.arange(1, num_steps + 1, dtype=x0.dtype).reshape((-1,) + (1,) * x0.ndim)
  if target == 'increment':
    return schedules.increment_scale(x_delta, j, num_steps) * e
  if target == 'x0':
    return jnp.broadcast_to(x0, (num_steps,) + x0.shape)
  if target in ('cumulative', 'v'):
    ab = schedules.alpha_bar(x_delta, j, num_steps)
    om = schedules.one_minus_alpha_bar(x_delta, j, num_steps)
    eps_tilde = (xs[1:] - jnp.sqrt(ab) * x0) / jnp.sqrt(om)
    if target == 'cumulative':
      return eps_tilde
    return jnp.sqrt(ab) * eps_tilde - jnp.sqrt(om) * x0
  raise ValueError(f"target must be 'cumulative', 'increment', 'v' or 'x0', got {target!r}")


def x0_from_head(target: Target, z: Float[Array, '*shape'], x_j: Float[Array, '*shape'], *,
                 x_delta: Float[Array, '*shape'], j: Array, num_steps: int
                 ) -> Float[Array, '*shape']:
  """The clean image implied by head value ``z`` at step ``j`` (float, ``>= 1``) for ``x_j``.

  ``cumulative``: ``(x_j - sqrt(1 - abar_j) z) / sqrt(abar_j)``; ``x0``: ``z``; ``v``:
  ``sqrt(abar_j) x_j - sqrt(1 - abar_j) z`` (no amplification of the error).
  """
  if target == 'cumulative':
    one_m_ab = schedules.one_minus_alpha_bar(x_delta, j, num_steps)
    # 1/sqrt(abar_j) = exp(-j log(x_delta) / (2T))
    return (x_j - jnp.sqrt(one_m_ab) * z) * jnp.exp(-0.5 * j * (jnp.log(x_delta) / num_steps))
  if target == 'x0':
    return z
  if target == 'v':
    return (jnp.sqrt(schedules.alpha_bar(x_delta, j, num_steps)) * x_j
            - jnp.sqrt(schedules.one_minus_alpha_bar(x_delta, j, num_steps)) * z)
  raise ValueError(f"x0_from_head reads 'cumulative', 'x0' or 'v' heads, got {target!r}")


def eps_tilde_from_head(target: Target, z: Float[Array, '*shape'], x_j: Float[Array, '*shape'],
                        *, x_delta: Float[Array, '*shape'], j: Array, num_steps: int
                        ) -> Float[Array, '*shape']:
  """What Algorithm 1's recursion reads as ``Z^j``: the cumulative noise implied by ``z``.

  ``cumulative`` and ``increment`` heads are read as they are; ``v``: ``sqrt(1 - abar_j) x_j +
  sqrt(abar_j) z``; ``x0``: ``(x_j - sqrt(abar_j) z) / sqrt(1 - abar_j)``.
  """
  if target in ('cumulative', 'increment'):
    return z
  if target == 'v':
    return (jnp.sqrt(schedules.one_minus_alpha_bar(x_delta, j, num_steps)) * x_j
            + jnp.sqrt(schedules.alpha_bar(x_delta, j, num_steps)) * z)
  if target == 'x0':
    return ((x_j - jnp.sqrt(schedules.alpha_bar(x_delta, j, num_steps)) * z)
            * jax.lax.rsqrt(schedules.one_minus_alpha_bar(x_delta, j, num_steps)))
  raise ValueError(f'unknown target {target!r}; known: {TARGETS}')
