"""Argument checks shared by the samplers: concrete (eager) values are checked and raise
``ValueError``; traced values pass (see ``samplers``)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike


def concrete(x: Any) -> np.ndarray | None:
  """The value of ``x`` if it is known at trace time, else ``None``."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except Exception:  # pylint: disable=broad-except
    return None


def float_array(name: str, x: ArrayLike) -> Array:
  if x is None:
    raise ValueError(f'{name} must be a floating-point array, got None')
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'{name} must be a floating-point array, got dtype {x.dtype}')
  return x


def check_int(name: str, value: Any, *, lo: int, hi: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be a Python int, got {value!r}')
  if value < lo or (hi is not None and value > hi):
    bound = f'in [{lo}, {hi}]' if hi is not None else f'>= {lo}'
    raise ValueError(f'{name} must be {bound}, got {value}')
  return int(value)


def check_eta(eta: Any) -> None:
  val = concrete(eta)
  if val is not None and (val.shape != () or not np.isfinite(val) or val < 0):
    raise ValueError(f'eta must be a finite scalar >= 0, got {eta!r}')


def check_eps(eps: float) -> None:
  if not 0.0 <= float(eps) < 1.0:
    raise ValueError(f'eps must be in [0, 1), got {eps!r}')


def compute_dtype(*arrays: Array | None) -> jnp.dtype:
  """float32, or float64 when the inputs are float64 (x64 enabled); never lower than float32."""
  dt = jnp.result_type(*[a for a in arrays if a is not None])
  return jnp.promote_types(dt, jnp.float32)


def check_scale(x_delta_hat: ArrayLike, x_shape: tuple[int, ...]) -> Array:
  x_delta_hat = float_array('x_delta_hat', x_delta_hat)
  try:
    out = jnp.broadcast_shapes(x_delta_hat.shape, x_shape)
  except ValueError:
    out = None
  if out != tuple(x_shape):
    raise ValueError(f'x_delta_hat must broadcast to the image shape {tuple(x_shape)}, got '
                     f'{x_delta_hat.shape}')
  val = concrete(x_delta_hat)
  if val is not None and not (np.all(np.isfinite(val)) and np.all(val > 0) and np.all(val <= 1)):
    raise ValueError('x_delta_hat must be a valid image scale exp(-gamma * x0) in (0, 1]; got '
                     f'values in [{np.nanmin(val)}, {np.nanmax(val)}] (non-finite: '
                     f'{int(np.sum(~np.isfinite(val)))})')
  return x_delta_hat


def clamp_scale(x_delta: Array) -> Array:
  fi = jnp.finfo(x_delta.dtype)
  return jnp.clip(x_delta, fi.tiny, 1.0 - fi.epsneg)


def check_stack(name: str, z: ArrayLike, num_steps: int, x_shape: tuple[int, ...]) -> Array:
  z = float_array(name, z)
  want = (num_steps,) + tuple(x_shape)
  if z.shape != want:
    raise ValueError(f'{name} must have shape [num_steps, *x.shape] = {want} (index j-1 holds '
                     f'step j), got {z.shape}')
  return z


def check_step_arg(name: str, i: ArrayLike, x_shape: tuple[int, ...], num_steps: int) -> Array:
  i = jnp.asarray(i)
  if not (jnp.issubdtype(i.dtype, jnp.integer) or jnp.issubdtype(i.dtype, jnp.floating)):
    raise ValueError(f'{name} must be an integer (or integer-valued float) step, got dtype '
                     f'{i.dtype}')
  if i.ndim > len(x_shape) or tuple(i.shape) != tuple(x_shape[:i.ndim]):
    raise ValueError(f'{name} must be a scalar or have the leading shape of x (e.g. [B] for x '
                     f'[B, ...]); x.shape={tuple(x_shape)}, {name}.shape={i.shape}')
  val = concrete(i)
  if val is not None and (np.any(val < 0) or np.any(val > num_steps)):
    raise ValueError(f'{name} must lie in [0, num_steps={num_steps}], got values in '
                     f'[{val.min()}, {val.max()}]')
  return i
