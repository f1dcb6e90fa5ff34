"""Losses of the distill stage (docs/design.md section 7), pure single-device functions as in
``losses.py``: ``loss_fn(params, pairs, rng, *, train=True) -> (loss, metrics)``.

``pairs`` is a batch of the teacher's pairs (``training/distill.py``, ``get_teacher_fn``):

* pixel-aware: ``x_delta_hat [B, H, W, C]`` (the scale prior's draw), ``states [B, C, H, W, C]``
  (the teacher's state ``x_t`` at each call step ``t`` of :func:`call_steps`, ``x_T`` first) and
  ``x0 [B, T, H, W, C]`` (index ``j - 1``: the teacher's clipped clean-image estimate at step
  ``j``; index 0 is its final image);
* DDPM: ``x_T [B, H, W, C]`` and ``x0 [B, H, W, C]`` (the teacher's final image, in [-1, 1]).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from jaxtyping import Array

from pixdiff_jax.diffusion import samplers, schedules, students
from pixdiff_jax.training.losses import select_heads

__all__ = ['call_steps', 'get_distill_loss_fn', 'ddpm_student_inputs']

PyTree = Any
Metrics = dict[str, Array]
LossFn = Callable[..., tuple[Array, Metrics]]


def call_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The steps at which the student is called in training, descending (``T`` first).

  Pixel-aware: every block start of the block-sequential sampler with ``K`` calls,
  ``samplers.block_starts(T, K)``, for each ``K`` in ``distill.calls`` (``(1, 2)`` at T = 10:
  ``(10, 5)``). DDPM: ``(T,)``, plus the middle step (``students.mid_step``) if 2 is in
  ``distill.calls``.
  """
  T = int(config.diffusion.num_steps)
  calls = tuple(int(k) for k in config.distill.calls)
  if config.method == 'ddpm':
    if 2 not in calls:
      return (T,)
    return (T, students.mid_step(schedules.ddpm_alphas_cumprod(config),
                                 int(config.distill.mid_step)))
  steps = set()
  for k in calls:
    steps.update(int(t) for t in samplers.block_starts(T, k))
  return tuple(sorted(steps, reverse=True))


def _pixel_aware(config, net) -> LossFn:
  T = int(config.diffusion.num_steps)
  steps_table = jnp.asarray(call_steps(config), jnp.int32)
  final_weight = float(config.distill.final_weight)
  n_heads = int(config.distill.heads_per_example)

  def loss_fn(params: PyTree, pairs: dict, rng: jax.Array, *,
              train: bool = True) -> tuple[Array, Metrics]:
    states, xd, x0 = pairs['states'], pairs['x_delta_hat'], pairs['x0']
    batch = xd.shape[0]
    rng_call, rng_heads, rng_dropout = jax.random.split(rng, 3)
    c = jax.random.randint(rng_call, (batch,), 0, steps_table.shape[0])
    t = steps_table[c]                                        # [B] the call step of each example
    x_t = jnp.take_along_axis(states, c[:, None, None, None, None], axis=1)[:, 0]
    if n_heads:
      # select_heads' diagonal head t becomes head 1 (j -> t + 1 - j), its others 2..t.
      heads, w = select_heads(rng_heads, t, num_steps=T, heads_per_example=n_heads,
                              diagonal_weight=final_weight)
      heads = t[:, None] + 1 - heads
      z = net.apply({'params': params}, x_t, xd, t, train=train, heads=heads,
                    rngs={'dropout': rng_dropout})
      targets = jnp.take_along_axis(x0, (heads - 1)[:, :, None, None, None], axis=1)
    else:
      heads = jnp.broadcast_to(jnp.arange(1, T + 1, dtype=jnp.int32), (batch, T))
      active = heads <= t[:, None]
      w = jnp.where(active, 1.0, 0.0).at[:, 0].set(final_weight)
      z = net.apply({'params': params}, x_t, xd, t, train=train, rngs={'dropout': rng_dropout})
      targets = x0
    se = jnp.mean(jnp.square(z - targets), axis=(2, 3, 4))          # [B, M]
    denominator = jnp.sum(t.astype(jnp.float32)) + batch * (final_weight - 1.0)
    loss = jnp.sum(se * w) / denominator
    final = heads == 1
    mse_final = jnp.sum(jnp.where(final, se, 0.0)) / jnp.maximum(jnp.sum(final), 1)
    return loss, {'mse_final': mse_final, 'call_step': jnp.mean(t.astype(jnp.float32))}

  return loss_fn


def ddpm_student_inputs(config, pairs: dict, use_mid: Array) -> tuple[Array, Array]:
  """``(x, n)``: the student's input and step per example: ``(x_T, T)``, or where ``use_mid``
  the middle state ``students.ddim_jump(x_T, x0, T -> m)`` of the teacher's image and ``m``."""
  ac = schedules.ddpm_alphas_cumprod(config)
  T = ac.shape[0]
  m = students.mid_step(ac, int(config.distill.mid_step))
  x_mid = students.ddim_jump(pairs['x_T'], pairs['x0'], ac[T - 1], ac[m - 1])
  sel = use_mid[:, None, None, None]
  return jnp.where(sel, x_mid, pairs['x_T']), jnp.where(use_mid, m, T).astype(jnp.int32)


def _ddpm(config, net) -> LossFn:
  two_calls = 2 in tuple(config.distill.calls)
  one_call = 1 in tuple(config.distill.calls)

  def loss_fn(params: PyTree, pairs: dict, rng: jax.Array, *,
              train: bool = True) -> tuple[Array, Metrics]:
    batch = pairs['x_T'].shape[0]
    rng_call, rng_dropout = jax.random.split(rng)
    if two_calls and one_call:
      use_mid = jax.random.bernoulli(rng_call, 0.5, (batch,))
    else:
      use_mid = jnp.full((batch,), two_calls and not one_call)
    x, n = ddpm_student_inputs(config, pairs, use_mid)
    out = net.apply({'params': params}, x, n, train=train, rngs={'dropout': rng_dropout})
    se = jnp.mean(jnp.square(out - pairs['x0']), axis=(1, 2, 3))   # [B]
    mid = use_mid.astype(jnp.float32)
    return jnp.mean(se), {
        'mse_one_call': jnp.sum(se * (1 - mid)) / jnp.maximum(jnp.sum(1 - mid), 1.0),
        'mse_second_call': jnp.sum(se * mid) / jnp.maximum(jnp.sum(mid), 1.0)}

  return loss_fn


def get_distill_loss_fn(config: ml_collections.ConfigDict, net) -> LossFn:
  """The distill stage's loss for ``config.method`` (``net``: the student, the teacher's
  architecture).

  Pixel-aware: ``rng_call, rng_heads, rng_dropout = split(rng, 3)``; each example's call step
  ``t = call_steps(config)[randint(rng_call, [B], 0, C)]`` and input ``x_t`` (the teacher's
  state); ``Z = R(x_t, x_delta_hat, t)`` (heads ``j > t`` are 0); head ``j <= t`` regresses
  onto the teacher's clean-image estimate at step ``j``. Loss = ``sum_{b, j <= t_b} w_j
  se[b, j] / (sum_b t_b + B (w_1 - 1))`` with ``w_1 = distill.final_weight`` for head 1 (the
  final image) and 1 otherwise, ``se`` the per-pixel mean squared error: every active head
  alike up to head 1's weight, as the reverse loss's ``diagonal_weight``. With
  ``distill.heads_per_example = n`` only head 1 and ``n - 1`` random heads of ``2..t`` are
  evaluated, weighted by ``losses.select_heads`` (``rng_heads``) so that the expected loss is the
  full one. Metrics: ``mse_final`` (head 1), ``call_step`` (mean ``t``).

  DDPM: ``rng_call, rng_dropout = split(rng)``; with ``distill.calls = (1, 2)`` each example is
  a second-call input with probability 1/2 (``bernoulli(rng_call)``), see
  :func:`ddpm_student_inputs`; the U-Net's output is read as the clean image and the loss is its
  mean squared error to the teacher's final image. Metrics ``mse_one_call``,
  ``mse_second_call``.
  """
  if config.method == 'ddpm':
    return _ddpm(config, net)
  if getattr(net, 'num_heads', config.diffusion.num_steps) != config.diffusion.num_steps:
    raise ValueError(f'the student has {net.num_heads} heads, diffusion.num_steps is '
                     f'{config.diffusion.num_steps}')
  if config.diffusion.target != 'x0':
    raise ValueError("the pixel-aware distill stage needs diffusion.target='x0' (its heads "
                     f"regress onto clean images), got {config.diffusion.target!r}")
  return _pixel_aware(config, net)

