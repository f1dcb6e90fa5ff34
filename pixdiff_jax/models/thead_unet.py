"""The reverse model ``R(x_i, x_delta_hat, i) -> Z^1..Z^T`` of the paper (eq. 14, Appendix C).

A :class:`~pixdiff_jax.models.unet.UNetBackbone` whose every level fuses a learned map of the
step embedding and of the image scale; its last decoder output ``L_{D,K}`` plus ``P(i)`` and
``H(x_delta_hat)`` feeds ``T`` parallel heads ``G_j``. The heads have separate parameters, stored
stacked along a leading head axis of size ``T`` (``nn.vmap``), so one call evaluates all of them
as one batched computation. The head mask ``M_j`` (heads ``j > i`` output exactly zero,
``j = 1..T``) is applied inside the model, so masked heads receive exactly zero gradient.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from pixdiff_jax.models.layers import AttnBlock, GroupNorm, ResBlock, ShiftConv
from pixdiff_jax.models.unet import Fuse, UNetBackbone

__all__ = ['Head', 'THeadUNet', 'scale_features', 'head_mask']

# Smallest x_delta used when taking its log (float32 normal range; exp(-gamma) >> this).
_TINY = 1e-30


def scale_features(x_delta: Float[Array, 'B H W C'], gamma: float) -> Float[Array, 'B H W 2C']:
  """Fixed part of the scale maps ``H_k``: ``[x_delta, -log(x_delta) / gamma]``.

  The second half is the implied ``x0`` in ``[eps, 1]``; the raw scale alone is ~0 for every
  bright pixel (``exp(-gamma)``), so the log form keeps the input well conditioned.
  """
  return jnp.concatenate([x_delta, -jnp.log(jnp.maximum(x_delta, _TINY)) / gamma], axis=-1)


def head_mask(i: Float[ArrayLike, 'B'], num_heads: int) -> Array:
  """Boolean ``[B, T]`` mask ``M[b, j-1] = (j <= i_b)`` for heads ``j = 1..T``."""
  j = jnp.arange(1, num_heads + 1)
  return j[None, :] <= jnp.asarray(i)[:, None]


class Head(nn.Module):
  """One head ``G_j``: ``1x1 conv -> ResBlocks [-> self-attention] -> GN -> SiLU -> conv3x3``.

  Used only through ``nn.vmap`` (parameters stacked on a leading head axis).
  """
  ch: int
  num_res_blocks: int
  attention: bool
  out_ch: int
  num_groups: int
  dropout: float
  deterministic: bool

  @nn.compact
  def __call__(self, h: Float[Array, 'B H W F']) -> Float[Array, 'B H W out_ch']:
    # Heads are narrow: at most num_groups groups, and at least 4 channels per group.
    groups = min(self.num_groups, max(1, self.ch // 4))
    # ShiftConv, not nn.Conv: see its docstring (grouped convolutions under vmap).
    h = ShiftConv(self.ch, 1, name='proj_in')(h)
    for r in range(self.num_res_blocks):
      h = ResBlock(self.ch, groups, self.dropout, shift_conv=True, name=f'res{r}')(
          h, None, deterministic=self.deterministic)
      if self.attention:
        h = AttnBlock(groups, name=f'attn{r}')(h)
    h = nn.silu(GroupNorm(self.ch, groups, name='norm_out')(h))
    return ShiftConv(self.out_ch, 3, name='conv_out')(h)


class THeadUNet(nn.Module):
  """T-headed U-Net ``R(x_i, x_delta_hat, i)``.

  Attributes:
    ch, ch_mult, num_res_blocks, attn_resolutions, dropout, num_groups: backbone (see
      :class:`UNetBackbone`).
    out_ch: image channels.
    num_heads: ``T``, one head per reverse step.
    head_ch: channels inside each head.
    head_num_res_blocks: residual blocks per head.
    head_attention: self-attention after every head residual block. Memory: an attention
      matrix of ``[B, T, H*W, H*W]`` floats.
    gamma: the pixel-aware rate (used to form ``-log(x_delta_hat) / gamma``).

  Parameters: ``params['heads']`` holds every head's parameters with a leading axis of size
  ``num_heads`` (index ``j-1`` is head ``j``).
  """
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  out_ch: int
  num_heads: int
  gamma: float
  head_ch: int = 16
  head_num_res_blocks: int = 2
  head_attention: bool = False
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  num_groups: int = 32

  @nn.compact
  def __call__(self, x_i: Float[Array, 'B H W C'], x_delta_hat: Float[Array, 'B H W C'],
               i: Float[ArrayLike, 'B'], *, train: bool) -> Float[Array, 'B T H W C']:
    """Predicts all T head outputs in one pass.

    Args:
      x_i: noisy images ``[B, H, W, C]`` at step ``i``.
      x_delta_hat: image-scale estimate ``[B, H, W, C]`` in ``(0, 1]``.
      i: step per example ``[B]`` in ``1..T`` (ints or floats).
      train: enables dropout (rng stream ``'dropout'``, split per head).
    Returns:
      ``Z`` of shape ``[B, T, H, W, C]``, index ``j-1`` is ``Z^j``; exactly 0 for ``j > i``.
    """
    if x_i.shape != x_delta_hat.shape:
      raise ValueError(f'x_i {x_i.shape} and x_delta_hat {x_delta_hat.shape} must match')
    i = jnp.asarray(i)
    scale = scale_features(x_delta_hat, self.gamma)
    h, temb = UNetBackbone(self.ch, tuple(self.ch_mult), self.num_res_blocks,
                           tuple(self.attn_resolutions), self.dropout, self.num_groups,
                           name='backbone')(x_i, i, scale, train=train)
    # Eq. 14: G_j(L_{D,K}, P(i), H(x_delta_hat)), the fused input shared by all heads.
    h = Fuse(name='head_fuse')(h, temb, scale)
    heads = nn.vmap(
        Head, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
        in_axes=None, out_axes=1, axis_size=self.num_heads)
    z = heads(self.head_ch, self.head_num_res_blocks, self.head_attention, self.out_ch,
              self.num_groups, self.dropout, not train, name='heads')(h)
    mask = head_mask(i, self.num_heads)[:, :, None, None, None]
    # where (not multiply): masked heads get exactly zero output and exactly zero cotangent.
    return jnp.where(mask, z, 0.0)
