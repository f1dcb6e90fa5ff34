"""Building blocks shared by the scale VAE, the T-headed U-Net and the one-head U-Net.

All modules are Flax linen, NHWC, with float32 parameters; ``dtype`` (default ``None``: float32
like the parameters) is the compute dtype, e.g. ``jnp.bfloat16`` (normalisation statistics and
the attention softmax stay in float32). Paper Appendix C: group normalisation at the input of
every convolution, a sinusoidal step embedding of size 128 followed by an MLP, residual blocks
that receive the step embedding, single-head self-attention, stride-2 down- and nearest-neighbour
up-sampling.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = [
    'SINUSOIDAL_DIM', 'num_groups_for', 'sinusoidal_embedding', 'StepEmbedding', 'GroupNorm',
    'ResBlock', 'AttnBlock', 'Downsample', 'Upsample', 'avg_pool', 'ShiftConv',
]

# Size of the sinusoidal step encoding (Appendix C).
SINUSOIDAL_DIM = 128


def num_groups_for(channels: int, num_groups: int) -> int:
  """Largest group count ``<= num_groups`` that divides ``channels`` (GroupNorm needs one)."""
  g = max(1, min(num_groups, channels))
  while channels % g:
    g -= 1
  return g


def GroupNorm(channels: int, num_groups: int,  # noqa: N802 (reads like the module it builds)
              name: Optional[str] = None, dtype: Optional[Any] = None) -> nn.GroupNorm:
  """``nn.GroupNorm`` with a group count that always divides ``channels``."""
  return nn.GroupNorm(num_groups=num_groups_for(channels, num_groups), epsilon=1e-6, name=name,
                      dtype=dtype)


def sinusoidal_embedding(t: Float[ArrayLike, 'B'], dim: int = SINUSOIDAL_DIM,
                         max_period: float = 10_000.0) -> Float[Array, 'B dim']:
  """Transformer sinusoidal encoding of (possibly fractional) steps ``t``.

  Args:
    t: steps, shape ``[B]`` (ints or floats; the raw step number, not rescaled).
    dim: even embedding size.
  Returns:
    ``[B, dim]`` float32: ``[sin(t * f_k), cos(t * f_k)]`` with ``f_k = max_period**(-k/(dim/2))``.
  """
  if dim % 2:
    raise ValueError(f'sinusoidal embedding size must be even, got {dim}')
  t = jnp.asarray(t, jnp.float32)
  if t.ndim != 1:
    raise ValueError(f'steps must have shape [B], got {t.shape}')
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class StepEmbedding(nn.Module):
  """Sinusoidal encoding of size 128 followed by ``Dense -> SiLU -> Dense``.

  Attributes:
    features: output size (``4 * ch`` in the U-Nets, as in DDPM).
  """
  features: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, t: Float[ArrayLike, 'B']) -> Float[Array, 'B features']:
    h = sinusoidal_embedding(t, SINUSOIDAL_DIM)
    h = nn.Dense(self.features, dtype=self.dtype, name='dense0')(h)
    h = nn.Dense(self.features, dtype=self.dtype, name='dense1')(nn.silu(h))
    return h


class ShiftConv(nn.Module):
  """Stride-1 'SAME' convolution computed as ``k*k`` shifted matrix products.

  Same parameters as ``nn.Conv(features, (k, k))`` (``kernel [k, k, Cin, features]``, ``bias``).
  Used inside the T heads: under ``nn.vmap`` with stacked per-head kernels, ``nn.Conv`` becomes
  a grouped convolution, whose gradient XLA:CPU compiles and runs orders of magnitude slower
  (docs/performance.md, "CPU efficiency"), while this form becomes a batched ``dot_general``.
  """
  features: int
  kernel_size: int = 3
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Float[Array, 'B H W Cin']) -> Float[Array, 'B H W features']:
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    if self.dtype is not None:
      x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    p = k // 2
    hgt, wid = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
    out = bias
    for dy in range(k):
      for dx in range(k):
        out = out + jnp.einsum('bhwc,cf->bhwf', xp[:, dy:dy + hgt, dx:dx + wid], kernel[dy, dx])
    return out


class ResBlock(nn.Module):
  """``GN -> SiLU -> conv3x3 (+ Dense(step emb)) -> GN -> SiLU -> dropout -> conv3x3`` + skip.

  Attributes:
    out_ch: output channels; a 1x1 convolution maps the skip path when they change.
    num_groups: GroupNorm groups (reduced to a divisor of the channel count if needed).
    dropout: dropout rate (rng stream ``'dropout'`` when ``deterministic`` is False).
  """
  out_ch: int
  num_groups: int = 32
  dropout: float = 0.0
  # Convolutions as shifted matmuls (:class:`ShiftConv`); for blocks inside the vmapped heads.
  shift_conv: bool = False
  dtype: Optional[Any] = None

  def _conv(self, features: int, k: int, name: str) -> nn.Module:
    if self.shift_conv:
      return ShiftConv(features, k, dtype=self.dtype, name=name)
    return nn.Conv(features, (k, k), padding=k // 2, dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, x: Float[Array, 'B H W Cin'], temb: Optional[Float[Array, 'B E']] = None,
               *, deterministic: bool = True) -> Float[Array, 'B H W out_ch']:
    h = nn.silu(GroupNorm(x.shape[-1], self.num_groups, name='norm0', dtype=self.dtype)(x))
    h = self._conv(self.out_ch, 3, 'conv0')(h)
    if temb is not None:
      h = h + nn.Dense(self.out_ch, dtype=self.dtype, name='temb_proj')(
          nn.silu(temb))[:, None, None, :]
    h = nn.silu(GroupNorm(self.out_ch, self.num_groups, name='norm1', dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = self._conv(self.out_ch, 3, 'conv1')(h)
    if x.shape[-1] != self.out_ch:
      x = self._conv(self.out_ch, 1, 'skip')(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all ``H*W`` positions, with a residual connection.

  Memory: the attention matrix is ``[B, H*W, H*W]`` floats.
  """
  num_groups: int = 32
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Float[Array, 'B H W C']) -> Float[Array, 'B H W C']:
    b, hgt, wid, c = x.shape
    h = GroupNorm(c, self.num_groups, name='norm', dtype=self.dtype)(x).reshape(b, hgt * wid, c)
    q = nn.Dense(c, dtype=self.dtype, name='q')(h)
    k = nn.Dense(c, dtype=self.dtype, name='k')(h)
    v = nn.Dense(c, dtype=self.dtype, name='v')(h)
    w = jnp.einsum('bqc,bkc->bqk', q, k) * (c ** -0.5)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
    h = jnp.einsum('bqk,bkc->bqc', w, v)
    h = nn.Dense(c, dtype=self.dtype, name='proj_out')(h)
    return x + h.reshape(b, hgt, wid, c)


class Downsample(nn.Module):
  """Stride-2 3x3 convolution (halves H and W; both must be even)."""
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Float[Array, 'B H W C']) -> Float[Array, 'B H/2 W/2 C']:
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=1, dtype=self.dtype,
                   name='conv')(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Float[Array, 'B H W C']) -> Float[Array, 'B 2*H 2*W C']:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return nn.Conv(x.shape[-1], (3, 3), padding=1, dtype=self.dtype, name='conv')(x)


def avg_pool(x: Float[Array, 'B H W C'], factor: int) -> Float[Array, 'B H/factor W/factor C']:
  """Exact ``factor x factor`` average pooling (``H`` and ``W`` divisible by ``factor``)."""
  if factor == 1:
    return x
  b, hgt, wid, c = x.shape
  if hgt % factor or wid % factor:
    raise ValueError(f'cannot average-pool {hgt}x{wid} by a factor {factor}')
  return x.reshape(b, hgt // factor, factor, wid // factor, factor, c).mean(axis=(2, 4))
