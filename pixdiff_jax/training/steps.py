"""The train step: a pure single-device step (:func:`get_train_step`) and its data-parallel,
several-steps-per-dispatch form (:func:`get_p_train_step`); docs/design.md section 6.

Randomness of step ``s`` on device ``d`` is ``fold_in(fold_in(stage_key, d), s)``: no RNG is
stored, and a resumed run replays exactly what an uninterrupted run would have drawn. The batch
``x0`` may be any pytree of arrays (images, or the distill stage's pairs) with the batch axes
leading as documented.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.jax_utils
import jax
import jax.numpy as jnp
import optax

from pixdiff_jax.training.state import (TrainState, ema_decay_at, num_skipped_updates,
                                        update_ema)

PyTree = Any
LossFn = Callable[[PyTree, Any, jax.Array, PyTree], tuple[jax.Array, dict]]

AXIS = 'batch'


def get_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, ema_decay: float,
                   ema_warmup: bool, axis_name: str | None = AXIS):
  """Pure single-device train step ``(state, x0 [b,H,W,C], key, aux) -> (state, metrics)``
  (``x0`` may also be a pytree whose leaves have the batch axis ``b`` first).

  ``loss_fn(params, x0, rng, aux) -> (loss, metrics)``. With ``axis_name`` set, the step must
  run under ``pmap``/``shard_map`` with that axis: gradients and metrics are averaged over it and
  the RNG is folded with the device index.
  """

  def train_step(state: TrainState, x0: jax.Array, key: jax.Array, aux: PyTree):
    device = jax.lax.axis_index(axis_name) if axis_name else 0
    rng = jax.random.fold_in(jax.random.fold_in(key, device), state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, x0, rng, aux)
    metrics = dict(metrics, loss=loss)
    if axis_name:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay, ema_warmup)
    ema_params = update_ema(state.ema_params, params, decay)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['skipped_updates'] = num_skipped_updates(opt_state).astype(jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def get_p_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, ema_decay: float,
                     ema_warmup: bool):
  """Data-parallel train step over local devices, ``lax.scan`` over a block of steps.

  Takes ``(state [D,...], x0 [D, k, b, H, W, C], key, aux [D,...])`` (``x0`` may be a pytree
  of such leaves) and returns the state and the metrics averaged over the ``k`` steps (``[D]``
  each). The state buffers are donated.

  With several devices this is ``jax.pmap`` over the local ones (gradients ``pmean``-ed over
  the devices of every process of a multi-process job; ``axis_index`` is the global device
  index, so process ``p`` of a 2-process job with one device each draws what device ``p`` of a
  single process with 2 devices draws). With one device in all it is ``jax.jit`` of the same
  step without a device axis (device index 0, so the randomness is the same): on XLA:CPU a
  pmapped step runs about 16x slower than the jitted one (4.0 s vs 0.25 s per VAE step of
  configs/fashion_mnist.py), and ``vmap`` over a size-1 device axis is as slow (the replicated
  kernels turn convolutions into grouped ones).
  """
  n_dev = jax.device_count()
  train_step = get_train_step(loss_fn, tx, ema_decay=ema_decay, ema_warmup=ema_warmup,
                              axis_name=AXIS if n_dev > 1 else None)

  first = lambda tree: jax.tree_util.tree_map(lambda a: a[0], tree)

  def multi_step(state, x0_block, key, aux):
    if jax.tree_util.tree_leaves(x0_block)[0].shape[0] == 1:
      # No scan for a single step: XLA:CPU runs a train step inside a while loop ~13x slower
      # (measured 3.7 s vs 0.28 s per VAE step of configs/fashion_mnist.py), so CPU configs
      # use steps_per_dispatch=1; accelerators profit from several steps per dispatch.
      return train_step(state, first(x0_block), key, aux)

    def body(s, x0):
      return train_step(s, x0, key, aux)
    state, metrics = jax.lax.scan(body, state, x0_block)
    return state, jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=0), metrics)

  if n_dev > 1:
    return jax.pmap(multi_step, axis_name=AXIS, in_axes=(0, 0, None, 0), donate_argnums=(0,))

  def single_device(state, x0_block, key, aux):
    state, metrics = multi_step(first(state), first(x0_block), key, first(aux))
    return jax.tree_util.tree_map(lambda a: a[None], (state, metrics))

  return jax.jit(single_device, donate_argnums=(0,))


def replicate_for_step(tree: PyTree) -> PyTree:
  """``tree`` with a leading local-device axis, laid out as :func:`get_p_train_step` returns
  its state, so that the step's second call reuses the first call's executable.

  ``flax.jax_utils.replicate`` puts the copies on a mesh axis named ``'_device_put_sharded'``
  while ``pmap`` returns arrays on its own axis (``'batch'``): a different input sharding, so
  step 2 traced and compiled the whole train step once more (tens of seconds on a CPU). An
  identity ``pmap`` with the step's axis name gives the step's own layout; with one device the
  step is ``jit`` and returns single-device arrays.
  """
  replicated = flax.jax_utils.replicate(tree)
  if not jax.tree_util.tree_leaves(replicated):
    return replicated
  if jax.device_count() > 1:
    return jax.pmap(lambda x: x, axis_name=AXIS)(replicated)
  device = jax.local_devices()[0]
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, device), replicated)
