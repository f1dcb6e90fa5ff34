"""The reverse model ``R(x_i, x_delta_hat, i) -> Z^1..Z^T`` of the paper (eq. 14, Appendix C).

A :class:`~pixdiff_jax.models.unet.UNetBackbone` whose every level fuses a learned map of the
step embedding and of the image scale; its last decoder output ``L_{D,K}`` plus ``P(i)`` and
``H(x_delta_hat)`` feeds ``T`` parallel heads ``G_j``. The heads have separate parameters, stored
stacked along a leading head axis of size ``T`` (``nn.vmap``), so one call evaluates all of them
as one batched computation. The head mask ``M_j`` (heads ``j > i`` output exactly zero,
``j = 1..T``) is applied inside the model, so masked heads receive exactly zero gradient.

Heads on demand: ``heads=`` evaluates only the named heads (the backbone once, then each named
head with its own slice of the stacked parameters, gathered per example), so a sampler step that
reads one head, or a loss that uses a few heads per example, does not pay for all T.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
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
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, h: Float[Array, 'B H W F']) -> Float[Array, 'B H W out_ch']:
    # Heads are narrow: at most num_groups groups, and at least 4 channels per group.
    groups = min(self.num_groups, max(1, self.ch // 4))
    # ShiftConv, not nn.Conv: see its docstring (grouped convolutions under vmap).
    dt = self.dtype
    h = ShiftConv(self.ch, 1, dtype=dt, name='proj_in')(h)
    for r in range(self.num_res_blocks):
      h = ResBlock(self.ch, groups, self.dropout, shift_conv=True, dtype=dt, name=f'res{r}')(
          h, None, deterministic=self.deterministic)
      if self.attention:
        h = AttnBlock(groups, dtype=dt, name=f'attn{r}')(h)
    h = nn.silu(GroupNorm(self.ch, groups, name='norm_out', dtype=dt)(h))
    return ShiftConv(self.out_ch, 3, dtype=dt, name='conv_out')(h)


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
    residual: every head predicts a correction to the scale's implied clean image: the output
      is ``G_j(...) + (-log(x_delta_hat) / gamma)`` (for heads that predict ``x0``, so that an
      untrained head starts at the VAE's estimate; ``config.model.residual_heads``).
    dtype: compute dtype (``None``: float32); parameters and the output are float32.

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
  residual: bool = False
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x_i: Float[Array, 'B H W C'], x_delta_hat: Float[Array, 'B H W C'],
               i: Float[ArrayLike, 'B'], *, train: bool, heads: Optional[ArrayLike] = None
               ) -> Float[Array, 'B M H W C']:
    """Predicts all T head outputs in one pass, or only the heads named by ``heads``.

    Args:
      x_i: noisy images ``[B, H, W, C]`` at step ``i``.
      x_delta_hat: image-scale estimate ``[B, H, W, C]`` in ``(0, 1]``.
      i: step per example ``[B]`` in ``1..T`` (ints or floats).
      train: enables dropout (rng stream ``'dropout'``, split per head).
      heads: ``None`` (all T heads), or int head numbers ``j`` in ``1..T``: shape ``[M]`` (the
        same heads for every example) or ``[B, M]`` (per example). Only those heads are
        evaluated; they are NOT masked (the caller decides which heads it reads).
    Returns:
      ``heads=None``: ``Z`` of shape ``[B, T, H, W, C]``, index ``j-1`` is ``Z^j``; exactly 0
      for ``j > i``. Otherwise ``[B, M, H, W, C]``: ``out[b, m] = Z^{heads[(b,) m]}`` (the value
      the full call gives for an active head), float32.
    """
    if x_i.shape != x_delta_hat.shape:
      raise ValueError(f'x_i {x_i.shape} and x_delta_hat {x_delta_hat.shape} must match')
    i = jnp.asarray(i)
    scale = scale_features(x_delta_hat, self.gamma)
    h, temb = UNetBackbone(self.ch, tuple(self.ch_mult), self.num_res_blocks,
                           tuple(self.attn_resolutions), self.dropout, self.num_groups,
                           dtype=self.dtype, name='backbone')(x_i, i, scale, train=train)
    # Eq. 14: G_j(L_{D,K}, P(i), H(x_delta_hat)), the fused input shared by all heads.
    h = Fuse(dtype=self.dtype, name='head_fuse')(h, temb, scale)
    head_args = (self.head_ch, self.head_num_res_blocks, self.head_attention, self.out_ch,
                 self.num_groups, self.dropout, not train)
    all_heads = nn.vmap(
        Head, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
        in_axes=None, out_axes=1, axis_size=self.num_heads)(*head_args, dtype=self.dtype,
                                                             name='heads')
    # The scale's implied clean image, added to every head's output with residual heads.
    base = scale[..., x_i.shape[-1]:][:, None].astype(jnp.float32) if self.residual else 0.0
    if heads is not None and not self.is_initializing():
      return self._selected_heads(h, jnp.asarray(heads), head_args, train) + base
    z = all_heads(h).astype(jnp.float32) + base
    mask = head_mask(i, self.num_heads)[:, :, None, None, None]
    # where (not multiply): masked heads get exactly zero output and exactly zero cotangent.
    return jnp.where(mask, z, 0.0)

  def _selected_heads(self, h: Float[Array, 'B H W F'], heads: Array, head_args: tuple,
                      train: bool) -> Float[Array, 'B M H W C']:
    """The heads ``heads`` (``[M]`` or ``[B, M]``, numbers ``1..T``) on the fused features.

    Each head's parameters are taken from the stacked ``params['heads']`` (index ``j-1``) and
    applied with ``jax.vmap``: its convolutions (``ShiftConv``) become batched matrix products
    over (example, head), never grouped convolutions.
    """
    if not jnp.issubdtype(heads.dtype, jnp.integer) or heads.ndim not in (1, 2) or (
        heads.ndim == 2 and heads.shape[0] != h.shape[0]):
      raise ValueError(f'heads must be int head numbers of shape [M] or [B={h.shape[0]}, M], '
                       f'got {heads.dtype} {heads.shape}')
    stacked = self.variables['params']['heads']
    head = Head(*head_args, dtype=self.dtype, parent=None)
    idx = jnp.clip(heads - 1, 0, self.num_heads - 1)
    use_dropout = train and self.dropout > 0 and self.head_num_res_blocks > 0
    shape = heads.shape if heads.ndim == 2 else (h.shape[0],) + heads.shape
    keys = None
    if use_dropout:  # one dropout key per (example, head)
      keys = jax.random.split(self.make_rng('dropout'), shape[0] * shape[1])
      keys = keys.reshape(shape + keys.shape[1:])

    def one(p, h_b, key):  # one head on one example: h_b [H, W, F] -> [H, W, C]
      rngs = {'dropout': key} if key is not None else {}
      return head.apply({'params': p}, h_b[None], rngs=rngs)[0]

    params = jax.tree_util.tree_map(lambda a: a[idx], stacked)  # [M, ...] or [B, M, ...]
    if heads.ndim == 1:  # the same heads for the whole batch
      run = jax.vmap(jax.vmap(one, in_axes=(None, 0, 0 if use_dropout else None)),
                     in_axes=(0, None, 1 if use_dropout else None), out_axes=1)
    else:  # per example
      run = jax.vmap(jax.vmap(one, in_axes=(0, None, 0 if use_dropout else None)),
                     in_axes=(0, 0, 0 if use_dropout else None))
    return run(params, h, keys).astype(jnp.float32)
