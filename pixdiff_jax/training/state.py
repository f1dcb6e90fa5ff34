"""Training state, optimiser and EMA: everything a train step carries from one step to the next."""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from pixdiff_jax.errors import ConfigError

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """State of one training stage. Everything needed to resume lives here (no stored RNG keys:
  randomness is ``fold_in(fold_in(seed_key, device), step)``, so resuming at ``step`` replays it).

  Attributes:
    step: int32 scalar, number of optimiser steps taken (applied or skipped).
    params: model parameters.
    ema_params: exponential moving average of ``params`` (used for sampling).
    opt_state: optax state; includes the count of skipped non-finite updates.
  """
  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: optax.OptState


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with linear warmup and global-norm clipping; non-finite updates are skipped.

  ``optax.apply_if_finite`` leaves params and Adam moments untouched for a step whose gradient
  has a NaN/inf and counts it in ``total_notfinite`` (see :func:`num_skipped_updates`).
  """
  if optim.lr <= 0:
    raise ConfigError(f'optim.lr must be > 0, got {optim.lr}')
  if optim.warmup_steps > 0:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, optim.warmup_steps),
         optax.constant_schedule(optim.lr)], [optim.warmup_steps])
  else:
    schedule = optax.constant_schedule(optim.lr)
  parts = []
  if optim.grad_clip and optim.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip))
  parts.append(optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps))
  # A very large limit: keep skipping rather than applying a NaN update after N failures.
  return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)


def num_skipped_updates(opt_state: optax.OptState) -> jax.Array:
  """Total number of updates skipped because the gradient was not finite."""
  return opt_state.total_notfinite


def num_consecutive_skipped(opt_state: optax.OptState) -> jax.Array:
  """Number of updates skipped in a row (reset by the next finite update)."""
  return opt_state.notfinite_count


def create_train_state(params: PyTree, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=tx.init(params))


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """EMA decay, with the usual warm-up ``min(decay, (1 + n) / (10 + n))`` for short runs."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  n = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def update_ema(ema_params: PyTree, params: PyTree, decay: jax.Array) -> PyTree:
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


# XLA:CPU compiles the initialisers' random number generator separately for every parameter:
# at LLVM's optimisation level 1 the initialisation program compiles several times faster than
# at the default level 2 and makes the same parameters to the bit (docs/performance.md, "The
# test suite's time"). The program runs once, so its run time does not matter.
_INIT_CPU_OPTIONS = {'xla_backend_optimization_level': 1}


def run_init(init_fn: Callable[[jax.Array], PyTree], key: jax.Array) -> PyTree:
  """``jax.jit(init_fn)(key)``, compiled with ``_INIT_CPU_OPTIONS`` on the CPU.

  jitted: Flax's eager init dispatches op by op, which costs tens of seconds on a CPU.
  """
  options = _INIT_CPU_OPTIONS if jax.default_backend() == 'cpu' else None
  return jax.jit(init_fn).lower(key).compile(compiler_options=options)(key)
