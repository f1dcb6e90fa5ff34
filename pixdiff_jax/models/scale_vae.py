"""The scale estimator ``G(x_i, i) -> x_delta_hat`` of the paper (Sec. 3.2, Appendix C).

A convolutional VAE: GroupNorm residual encoder with the step embedding injected in every
residual block; level ``k`` has ``ch * ch_mult[k]`` channels and every level but the last ends
with a stride-2 downsampling (the U-Net convention), down to a 4x4 bottleneck that is
flattened and projected to a Gaussian latent ``(mean, logvar)``; a decoder from the latent
(and the step) back to full resolution. The output is always a valid image scale::

    x0_hat      = eps + (1 - eps) * sigmoid(logits)     # in [eps, 1]
    x_delta_hat = exp(-gamma * x0_hat)                  # in (0, 1]

The decoder can be run alone from a prior sample ``z ~ N(0, I)`` with :meth:`ScaleVAE.decode`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from pixdiff_jax.models.layers import (AttnBlock, Downsample, GroupNorm, ResBlock,
                                       StepEmbedding, Upsample)

__all__ = ['ScaleVAE', 'BOTTLENECK_SIZE']

# Spatial size of the VAE bottleneck (Appendix C).
BOTTLENECK_SIZE = 4
# logvar is clipped to this range before exponentiation.
_LOGVAR_RANGE = (-30.0, 20.0)


class _Encoder(nn.Module):
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  latent_dim: int
  num_groups: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, temb):
    dt = self.dtype
    h = nn.Conv(self.ch, (3, 3), padding=1, dtype=dt, name='conv_in')(x)
    for k, mult in enumerate(self.ch_mult):
      for r in range(self.num_res_blocks):
        h = ResBlock(self.ch * mult, self.num_groups, dtype=dt, name=f'down{k}_res{r}')(h, temb)
      if k != len(self.ch_mult) - 1:
        h = Downsample(dtype=dt, name=f'down{k}_down')(h)
    if h.shape[1:3] != (BOTTLENECK_SIZE, BOTTLENECK_SIZE):
      raise ValueError(f'ScaleVAE encoder reached a {h.shape[1]}x{h.shape[2]} bottleneck, needs '
                       f'{BOTTLENECK_SIZE}x{BOTTLENECK_SIZE}: adjust vae.ch_mult')
    h = ResBlock(h.shape[-1], self.num_groups, dtype=dt, name='mid_res')(h, temb)
    h = AttnBlock(self.num_groups, dtype=dt, name='mid_attn')(h)
    h = nn.silu(GroupNorm(h.shape[-1], self.num_groups, name='norm_out', dtype=dt)(h))
    h = h.reshape(h.shape[0], -1)
    stats = nn.Dense(2 * self.latent_dim, dtype=dt, name='to_latent')(h).astype(jnp.float32)
    mean, logvar = jnp.split(stats, 2, axis=-1)
    return mean, jnp.clip(logvar, *_LOGVAR_RANGE)


class _Decoder(nn.Module):
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  out_ch: int
  num_groups: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, z, temb):
    dt = self.dtype
    c_last = self.ch * self.ch_mult[-1]
    h = nn.Dense(BOTTLENECK_SIZE * BOTTLENECK_SIZE * c_last, dtype=dt, name='from_latent')(z)
    h = h.reshape(z.shape[0], BOTTLENECK_SIZE, BOTTLENECK_SIZE, c_last)
    h = ResBlock(c_last, self.num_groups, dtype=dt, name='mid_res')(h, temb)
    h = AttnBlock(self.num_groups, dtype=dt, name='mid_attn')(h)
    for k in reversed(range(len(self.ch_mult))):
      for r in range(self.num_res_blocks):
        h = ResBlock(self.ch * self.ch_mult[k], self.num_groups, dtype=dt,
                     name=f'up{k}_res{r}')(h, temb)
      if k != 0:
        h = Upsample(dtype=dt, name=f'up{k}_up')(h)
    h = nn.silu(GroupNorm(h.shape[-1], self.num_groups, name='norm_out', dtype=dt)(h))
    return nn.Conv(self.out_ch, (3, 3), padding=1, dtype=dt, name='conv_out')(h).astype(
        jnp.float32)


class ScaleVAE(nn.Module):
  """VAE scale estimator ``G``.

  Attributes:
    ch: base channels; level ``k`` has ``ch * ch_mult[k]``.
    ch_mult: multipliers, one per level; ``len(ch_mult) - 1`` stride-2 downsamplings (as in the
      U-Net), so ``image_size / 2**(len(ch_mult) - 1)`` must be 4 (``(1, 2, 2, 2)`` for 32x32).
    num_res_blocks: residual blocks per level (encoder and decoder).
    latent_dim: size ``L`` of the Gaussian latent.
    out_ch: image channels ``C``.
    gamma: pixel-aware rate (``config.diffusion.gamma``).
    eps: lower end of the image range (``config.diffusion.eps``).
    num_groups: GroupNorm groups.
    dtype: compute dtype (``None``: float32); parameters and outputs are float32.

  Rng streams: ``'latent'`` (only when ``sample_posterior=True``). Variables: ``'params'`` only.
  """
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  latent_dim: int
  out_ch: int
  gamma: float
  eps: float
  num_groups: int = 32
  dtype: Optional[Any] = None

  def setup(self):
    self.step_embedding = StepEmbedding(4 * self.ch, dtype=self.dtype)
    self.encoder = _Encoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, self.latent_dim,
                            self.num_groups, dtype=self.dtype)
    self.decoder = _Decoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, self.out_ch,
                            self.num_groups, dtype=self.dtype)

  def __call__(self, x_i: Float[Array, 'B H W C'], i: Float[ArrayLike, 'B'], *,
               sample_posterior: bool
               ) -> tuple[Float[Array, 'B H W C'], Float[Array, 'B L'], Float[Array, 'B L']]:
    """Estimates the image scale from a noisy image.

    Args:
      x_i: noisy images ``[B, H, W, C]`` at step ``i``.
      i: step per example ``[B]`` in ``1..T``.
      sample_posterior: decode ``z = mean + exp(logvar / 2) * n`` with ``n`` from rng stream
        ``'latent'``; if False decode the posterior mean (deterministic).
    Returns:
      ``(x_delta_hat [B, H, W, C] in (0, 1], mean [B, L], logvar [B, L])``.
    """
    temb = self.step_embedding(i)
    mean, logvar = self.encoder(x_i, temb)
    z = mean
    if sample_posterior:
      noise = jax.random.normal(self.make_rng('latent'), mean.shape, mean.dtype)
      z = mean + jnp.exp(0.5 * logvar) * noise
    return self._scale(self.decoder(z, temb)), mean, logvar

  def encode(self, x_i: Float[Array, 'B H W C'], i: Float[ArrayLike, 'B']
             ) -> tuple[Float[Array, 'B L'], Float[Array, 'B L']]:
    """Posterior parameters ``(mean, logvar)``, each ``[B, L]``."""
    return self.encoder(x_i, self.step_embedding(i))

  def decode(self, z: Float[Array, 'B L'], i: Float[ArrayLike, 'B']) -> Float[Array, 'B H W C']:
    """``x_delta_hat [B, H, W, C]`` from latents ``z [B, L]`` (e.g. prior samples) at step ``i``.

    Usage: ``vae.apply({'params': p}, z, i, method='decode')``.
    """
    return self._scale(self.decoder(z, self.step_embedding(i)))

  def _scale(self, logits):
    x0_hat = self.eps + (1.0 - self.eps) * jax.nn.sigmoid(logits)
    return jnp.exp(-self.gamma * x0_hat)
