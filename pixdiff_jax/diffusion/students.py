"""The DDPM baseline's distilled student sampler (docs/design.md section 7).

The student is the baseline's one-head U-Net whose output is read as the CLEAN image (not the
noise): called at step ``n = T`` on ``x_T`` it gives the image the DPM-Solver++(2M) teacher makes
from that ``x_T``. With two calls, that image is moved back to the middle step ``m`` with the
deterministic DDIM step that keeps ``x_T``'s noise direction, and the student is called once more
there::

    x0_1 = clip(f(x_T, T))                                           # one call
    x_m  = sqrt(abar_m) x0_1 + sqrt(1 - abar_m) (x_T - sqrt(abar_T) x0_1) / sqrt(1 - abar_T)
    x0_2 = clip(f(x_m, m))                                           # two calls

The distill stage trains ``f`` on exactly these inputs, with the teacher's final image in place of
``x0_1`` (``training/distill_loss.py``). Steps are 1-based (``alphas_cumprod[n - 1]`` is
``abar_n``); data in ``[-1, 1]``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

X0Fn = Callable[[Array, int], Array]


def mid_step(alphas_cumprod: np.ndarray, step: int = 0) -> int:
  """The second call's step ``m``: ``step`` if given, else the first ``n`` with ``abar_n <= 0.5``
  (``T // 2`` if none)."""
  ac = np.asarray(alphas_cumprod, np.float64)
  if step:
    if not 1 <= step < ac.shape[0]:
      raise ValueError(f'the middle step must lie in 1..T-1={ac.shape[0] - 1}, got {step}')
    return int(step)
  below = np.nonzero(ac <= 0.5)[0]
  return int(below[0]) + 1 if below.size else ac.shape[0] // 2


def ddim_jump(x_hi: Float[Array, '*s'], x0: Float[Array, '*s'], abar_hi: float,
              abar_lo: float) -> Float[Array, '*s']:
  """The deterministic DDIM step from ``x_hi`` (at ``abar_hi``) to ``abar_lo`` for the clean
  image ``x0``; the coefficients are computed in float64 on the host."""
  c_x0 = np.sqrt(abar_lo) - np.sqrt((1.0 - abar_lo) / (1.0 - abar_hi)) * np.sqrt(abar_hi)
  c_x = np.sqrt((1.0 - abar_lo) / (1.0 - abar_hi))
  return jnp.float32(c_x0) * x0 + jnp.float32(c_x) * x_hi


def student_sample(x0_fn: X0Fn, x_T: Float[Array, 'B H W C'], *, alphas_cumprod: np.ndarray,
                   network_calls: int, middle: int, clip_denoised: bool = True
                   ) -> Float[Array, 'B H W C']:
  """``network_calls`` (1 or 2) calls of the student ``x0_fn(x, n) -> x0`` (see the module
  docstring); pure and jittable."""
  ac = np.asarray(alphas_cumprod, np.float64)
  T = ac.shape[0]
  if network_calls not in (1, 2):
    raise ValueError(f'the DDPM student makes 1 or 2 network calls, got {network_calls!r}')
  clip = (lambda x: jnp.clip(x, -1.0, 1.0)) if clip_denoised else (lambda x: x)
  x0 = clip(x0_fn(x_T, T))
  if network_calls == 2:
    x_mid = ddim_jump(x_T, x0, ac[T - 1], ac[middle - 1])
    x0 = clip(x0_fn(x_mid, middle))
  return x0


def draw_x_T(rng: jax.Array, shape: tuple[int, ...]) -> Float[Array, '*shape']:
  """``x_T`` as the baseline samplers draw it from ``rng`` (``samplers._start``: the first half
  of ``split(rng)``), so that the student and its teacher start from the same noise."""
  k_init, _ = jax.random.split(rng)
  return jax.random.normal(k_init, shape, jnp.float32)
