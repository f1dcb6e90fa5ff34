"""The U-Net backbone shared by both reverse models, and the one-head baseline ``UNet``.

``UNetBackbone`` is the DDPM U-Net (Ho et al. 2020) with the fusion of Appendix C: at the input
of every encoder level, of the middle block and of every decoder level ``k`` it adds a learned
map ``P_k`` of the step embedding and, when a scale input is given, a learned map ``H_k`` of the
image-scale features average-pooled to that level's resolution. ``THeadUNet`` puts T heads on
top of it; ``UNet`` (DDPM/DDIM/DPM-Solver baselines) puts one epsilon head on it and has no scale
input.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from pixdiff_jax.models.layers import (AttnBlock, Downsample, GroupNorm, ResBlock,
                                       StepEmbedding, Upsample, avg_pool)

__all__ = ['ScaleMap', 'Fuse', 'UNetBackbone', 'UNet']


class ScaleMap(nn.Module):
  """Learned non-linear map ``H_k`` of image-scale features: ``conv3x3 -> SiLU -> conv1x1``."""
  features: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, s: Float[Array, 'B H W S']) -> Float[Array, 'B H W features']:
    h = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name='conv0')(s)
    return nn.Conv(self.features, (1, 1), dtype=self.dtype, name='conv1')(nn.silu(h))


class Fuse(nn.Module):
  """Adds ``P_k(temb)`` (broadcast over H, W) and, if given, ``H_k(scale)`` to ``h``."""
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, h: Float[Array, 'B H W C'], temb: Float[Array, 'B E'],
               scale: Optional[Float[Array, 'B H W S']]) -> Float[Array, 'B H W C']:
    c = h.shape[-1]
    h = h + nn.Dense(c, dtype=self.dtype, name='step_map')(nn.silu(temb))[:, None, None, :]
    if scale is not None:
      h = h + ScaleMap(c, dtype=self.dtype, name='scale_map')(scale)
    return h


class UNetBackbone(nn.Module):
  """DDPM-style U-Net trunk with step (and optional scale) fusion at every level.

  Attributes:
    ch: base channel count; level ``k`` has ``ch * ch_mult[k]`` channels.
    ch_mult: channel multipliers; ``len(ch_mult) - 1`` stride-2 downsamplings.
    num_res_blocks: residual blocks per encoder level (decoder levels have one more).
    attn_resolutions: spatial sizes at which every residual block is followed by self-attention.
    dropout: dropout rate inside residual blocks (rng stream ``'dropout'``).
    num_groups: GroupNorm groups.
    dtype: compute dtype (``None``: float32; parameters are float32 either way).
  """
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  num_groups: int = 32
  dtype: Optional[Any] = None

  @property
  def out_features(self) -> int:
    return self.ch * self.ch_mult[0]

  @nn.compact
  def __call__(self, x: Float[Array, 'B H W C'], t: Float[ArrayLike, 'B'],
               scale: Optional[Float[Array, 'B H W S']] = None, *, train: bool
               ) -> tuple[Float[Array, 'B H W F'], Float[Array, 'B E']]:
    """Runs the trunk.

    Args:
      x: input image ``[B, H, W, C]``.
      t: step per example ``[B]``.
      scale: optional full-resolution scale features ``[B, H, W, S]``; pooled per level.
      train: enables dropout.
    Returns:
      ``(h, temb)``: the last decoder's features after ``GroupNorm -> SiLU``,
      ``[B, H, W, ch * ch_mult[0]]``, and the step embedding ``[B, 4 * ch]``.
    """
    det = not train
    num_levels = len(self.ch_mult)
    dt = self.dtype
    temb = StepEmbedding(4 * self.ch, dtype=dt, name='step_embedding')(t)
    image_size = x.shape[1]

    def scale_at(level):
      return None if scale is None else avg_pool(scale, 2 ** level)

    def maybe_attn(h, name):
      if h.shape[1] in self.attn_resolutions:
        h = AttnBlock(self.num_groups, dtype=dt, name=name)(h)
      return h

    h = nn.Conv(self.ch, (3, 3), padding=1, dtype=dt, name='conv_in')(x)
    skips = [h]
    for k in range(num_levels):
      h = Fuse(dtype=dt, name=f'enc{k}_fuse')(h, temb, scale_at(k))
      for r in range(self.num_res_blocks):
        h = ResBlock(self.ch * self.ch_mult[k], self.num_groups, self.dropout, dtype=dt,
                     name=f'enc{k}_res{r}')(h, temb, deterministic=det)
        h = maybe_attn(h, f'enc{k}_attn{r}')
        skips.append(h)
      if k != num_levels - 1:
        h = Downsample(dtype=dt, name=f'enc{k}_down')(h)
        skips.append(h)

    h = Fuse(dtype=dt, name='mid_fuse')(h, temb, scale_at(num_levels - 1))
    c_mid = h.shape[-1]
    h = ResBlock(c_mid, self.num_groups, self.dropout, dtype=dt, name='mid_res0')(
        h, temb, deterministic=det)
    h = AttnBlock(self.num_groups, dtype=dt, name='mid_attn')(h)
    h = ResBlock(c_mid, self.num_groups, self.dropout, dtype=dt, name='mid_res1')(
        h, temb, deterministic=det)

    for k in reversed(range(num_levels)):
      h = Fuse(dtype=dt, name=f'dec{k}_fuse')(h, temb, scale_at(k))
      for r in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = ResBlock(self.ch * self.ch_mult[k], self.num_groups, self.dropout, dtype=dt,
                     name=f'dec{k}_res{r}')(h, temb, deterministic=det)
        h = maybe_attn(h, f'dec{k}_attn{r}')
      if k != 0:
        h = Upsample(dtype=dt, name=f'dec{k}_up')(h)
    assert not skips and h.shape[1] == image_size
    h = nn.silu(GroupNorm(h.shape[-1], self.num_groups, name='norm_out', dtype=dt)(h))
    return h, temb


class UNet(nn.Module):
  """One-head epsilon-prediction U-Net for the DDPM / DDIM / DPM-Solver baselines.

  Attributes: as :class:`UNetBackbone` (``dtype`` included), plus ``out_ch`` (image channels).
  The output is float32 whatever the compute dtype.
  Call: ``UNet(...).apply({'params': p}, x, t, train=..., rngs={'dropout': key})``.
  """
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  out_ch: int
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  num_groups: int = 32
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Float[Array, 'B H W C'], t: Float[ArrayLike, 'B'], *,
               train: bool) -> Float[Array, 'B H W C']:
    """Predicts the noise ``eps`` in ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.

    Args:
      x: noisy images ``[B, H, W, C]`` (data in ``[-1, 1]``).
      t: step per example ``[B]``, the step number ``n`` in ``1..T`` (fractional allowed).
      train: enables dropout (rng stream ``'dropout'``).
    Returns:
      ``eps_hat`` of shape ``[B, H, W, C]``, float32.
    """
    h, _ = UNetBackbone(self.ch, tuple(self.ch_mult), self.num_res_blocks,
                        tuple(self.attn_resolutions), self.dropout, self.num_groups,
                        dtype=self.dtype, name='backbone')(x, t, None, train=train)
    out = nn.Conv(self.out_ch, (3, 3), padding=1, dtype=self.dtype, name='conv_out')(h)
    return out.astype(jnp.float32)
