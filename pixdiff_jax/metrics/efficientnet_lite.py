"""EfficientNet-Lite0 in Flax (inference only), and the mapping of its PyTorch weights.

The architecture is the one of the ``efficientnet-lite-pytorch`` package (``EfficientNet
.from_name('efficientnet-lite0')``), itself a port of TensorFlow's ``efficientnet/lite``:

* stem: 3x3 stride-2 conv to 32 channels, batch norm, ReLU6;
* 16 mobile inverted bottleneck blocks in 7 stages (:data:`LITE0_STAGES`); each block is
  [1x1 expansion conv + BN + ReLU6, when the expansion ratio is not 1] -> depthwise kxk conv
  (stride s) + BN + ReLU6 -> 1x1 projection conv + BN, plus the input when the stride is 1 and
  the channel count is unchanged (no squeeze-and-excitation in the Lite variants);
* head: 1x1 conv to 1280 channels, BN, ReLU6 -- the output of ``extract_features``.

All convolutions pad like TensorFlow's ``'SAME'`` (total padding ``max((ceil(n/s) - 1) s + k - n,
0)``, the smaller half before), which is what ``Conv2dStaticSamePadding`` computes; batch norms
use the running statistics with epsilon ``1e-3``. Convolutions run at ``Precision.HIGHEST`` so
that GPUs do not silently use TF32 and features agree with the float32 reference.

Variables: ``{'params': ..., 'batch_stats': ...}`` as built by :func:`variables_from_torch`.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from pixdiff_jax.errors import InputError

__all__ = ['StageSpec', 'LITE0_STAGES', 'EfficientNetLite', 'variables_from_torch',
           'FEATURE_DIM', 'BN_EPSILON']

FEATURE_DIM = 1280
BN_EPSILON = 1e-3
STEM_CHANNELS = 32


class StageSpec(NamedTuple):
  """One stage of blocks: ``repeats`` blocks, only the first with ``stride``."""
  repeats: int
  kernel: int
  stride: int
  expand_ratio: int
  out_channels: int


# TensorFlow's efficientnet_lite_builder block strings 'r1_k3_s11_e1_i32_o16', ... for lite0
# (width and depth multipliers 1.0, so no rounding applies).
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)


def _conv(features: int, kernel: int, stride: int = 1, name: str = '') -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding='SAME',
                 use_bias=False,
                 precision=jax.lax.Precision.HIGHEST, name=name)


def _bn(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name=name)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow ``'SAME'`` padding ``(before, after)`` of one spatial axis."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
  """Depthwise ``k x k`` convolution, ``'SAME'`` padding, no bias: ``[B,H,W,C] -> [B,H/s,W/s,C]``.

  Computed as a sum of ``k^2`` shifted, per-channel scaled copies of the padded input: XLA's CPU
  backend runs grouped convolutions (``feature_group_count = C``) roughly ten times slower. The
  kernel has torch's depthwise layout moved to Flax's: ``[k, k, 1, C]``.
  """
  kernel: int
  stride: int

  @nn.compact
  def __call__(self, x: Float[Array, 'b h w c']) -> Float[Array, 'b h2 w2 c']:
    k, s = self.kernel, self.stride
    w = self.param('kernel', nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]))
    _, h, wd, _ = x.shape
    ph, pw = same_padding(h, k, s), same_padding(wd, k, s)
    x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    out_h, out_w = -(-h // s), -(-wd // s)
    acc = None
    for i in range(k):
      for j in range(k):
        tap = x[:, i:i + (out_h - 1) * s + 1:s, j:j + (out_w - 1) * s + 1:s, :] * w[i, j, 0]
        acc = tap if acc is None else acc + tap
    return acc


class MBConvBlock(nn.Module):
  """Mobile inverted bottleneck (no squeeze-and-excitation): ``[B,H,W,Cin] -> [B,H/s,W/s,Cout]``."""
  in_channels: int
  spec: StageSpec
  stride: int

  @nn.compact
  def __call__(self, x: Float[Array, 'b h w c']) -> Float[Array, 'b h2 w2 d']:
    inputs = x
    hidden = self.in_channels * self.spec.expand_ratio
    if self.spec.expand_ratio != 1:
      x = jax.nn.relu6(_bn('bn0')(_conv(hidden, 1, name='expand_conv')(x)))
    x = DepthwiseConv(self.spec.kernel, self.stride, name='depthwise_conv')(x)
    x = jax.nn.relu6(_bn('bn1')(x))
    x = _bn('bn2')(_conv(self.spec.out_channels, 1, name='project_conv')(x))
    if self.stride == 1 and self.in_channels == self.spec.out_channels:
      x = x + inputs
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite feature extractor (``extract_features``, no classifier).

  ``__call__(x)``: ``x`` float32 ``[B, H, W, 3]`` (already normalised, e.g. ``u8/127.5 - 1``)
  -> the last feature map ``[B, ceil(H/32), ceil(W/32), 1280]``.
  """
  stages: tuple[StageSpec, ...] = LITE0_STAGES

  @nn.compact
  def __call__(self, x: Float[Array, 'b h w 3']) -> Float[Array, 'b h32 w32 1280']:
    x = jax.nn.relu6(_bn('bn0')(_conv(STEM_CHANNELS, 3, 2, name='conv_stem')(x)))
    channels, index = STEM_CHANNELS, 0
    for spec in self.stages:
      for r in range(spec.repeats):
        x = MBConvBlock(channels, spec, spec.stride if r == 0 else 1, name=f'blocks_{index}')(x)
        channels, index = spec.out_channels, index + 1
    return jax.nn.relu6(_bn('bn1')(_conv(FEATURE_DIM, 1, name='conv_head')(x)))


# ---------------------------------------------------------------------------- torch weights
def _conv_kernel(w: np.ndarray) -> np.ndarray:
  """torch ``[out, in/groups, kh, kw]`` -> flax ``[kh, kw, in/groups, out]``."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)), dtype=np.float32)


def variables_from_torch(state_dict: Mapping[str, np.ndarray],
                         stages: tuple[StageSpec, ...] = LITE0_STAGES) -> dict:
  """Flax variables of :class:`EfficientNetLite` from the PyTorch state dict.

  Args:
    state_dict: ``efficientnet-lite-pytorch`` parameter names (``_conv_stem.weight``,
      ``_blocks.3._bn1.running_var``, ...) -> NumPy arrays, e.g. from
      :func:`pixdiff_jax.metrics.torch_pickle.load_state_dict`. The classifier (``_fc.*``) is
      ignored.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` (float32 NumPy leaves).

  Raises:
    KeyError: a parameter the network needs is missing (names the parameter).
    InputError: a parameter has the wrong shape.
  """
  params: dict = {}
  stats: dict = {}

  def get(name: str) -> np.ndarray:
    if name not in state_dict:
      raise KeyError(f'EfficientNet-Lite weights: missing parameter {name!r}')
    return np.asarray(state_dict[name])

  def conv(torch_prefix: str, where: dict, flax_name: str):
    where[flax_name] = {'kernel': _conv_kernel(get(f'{torch_prefix}.weight'))}

  def bn(torch_prefix: str, p: dict, s: dict, flax_name: str):
    p[flax_name] = {'scale': get(f'{torch_prefix}.weight').astype(np.float32),
                    'bias': get(f'{torch_prefix}.bias').astype(np.float32)}
    s[flax_name] = {'mean': get(f'{torch_prefix}.running_mean').astype(np.float32),
                    'var': get(f'{torch_prefix}.running_var').astype(np.float32)}

  conv('_conv_stem', params, 'conv_stem')
  bn('_bn0', params, stats, 'bn0')
  index = 0
  for spec in stages:
    for _ in range(spec.repeats):
      t, f = f'_blocks.{index}', f'blocks_{index}'
      bp, bs = params.setdefault(f, {}), stats.setdefault(f, {})
      if spec.expand_ratio != 1:
        conv(f'{t}._expand_conv', bp, 'expand_conv')
        bn(f'{t}._bn0', bp, bs, 'bn0')
      conv(f'{t}._depthwise_conv', bp, 'depthwise_conv')
      bn(f'{t}._bn1', bp, bs, 'bn1')
      conv(f'{t}._project_conv', bp, 'project_conv')
      bn(f'{t}._bn2', bp, bs, 'bn2')
      index += 1
  conv('_conv_head', params, 'conv_head')
  bn('_bn1', params, stats, 'bn1')
  variables = {'params': params, 'batch_stats': stats}
  expected = jax.eval_shape(lambda: EfficientNetLite(stages).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))
  got_shapes = jax.tree_util.tree_map(np.shape, variables)
  want_shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), expected)
  if got_shapes != want_shapes:
    raise InputError('EfficientNet-Lite weights do not match the network: shapes differ')
  return variables
