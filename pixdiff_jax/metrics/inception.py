"""FID proper: pytorch-fid's InceptionV3 (pool3, 2048-d) in Flax, from its weight file.

The network is the one pytorch-fid builds for FID (``fid_inception_v3``: torchvision's
Inception3 with the ``FIDInceptionA/C/E_1/E_2`` patches of TensorFlow's 2015-12-05 graph), up to
the final average pool:

* stem: ``Conv2d_1a_3x3`` (stride 2), ``2a_3x3``, ``2b_3x3`` (padding 1), 3x3/2 max pool,
  ``3b_1x1``, ``4a_3x3``, 3x3/2 max pool; every conv is conv (no bias) + BN (eps 1e-3) + ReLU;
* ``Mixed_5b/c/d`` (A), ``Mixed_6a`` (B), ``Mixed_6b..e`` (C), ``Mixed_7a`` (D), ``Mixed_7b``
  (E_1), ``Mixed_7c`` (E_2); the FID variants average-pool with ``count_include_pad=False`` and
  ``Mixed_7c`` max-pools its pool branch;
* the mean over space: ``[B, 2048]``.

Input pipeline (:class:`~pixdiff_jax.metrics.extractor.FeatureExtractor`): uint8 -> crop ->
grey to RGB -> ``x / 127.5 - 1`` -> bilinear resize to 299x299 (``align_corners=False``).
pytorch-fid resizes ``x / 255`` and then maps to ``2 x - 1``; the resize is linear with weights
summing to 1, so the two orders agree up to float rounding.

Weights: ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's release), given by path; this
project never downloads it. Flax module names equal the torch ones (``Mixed_6b/branch7x7_2/conv``),
so :func:`variables_from_torch` is a renaming plus kernel transposes.
"""
from __future__ import annotations

import os
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from pixdiff_jax.errors import InputError
from pixdiff_jax.metrics import torch_pickle
from pixdiff_jax.metrics import weights as weights_lib
from pixdiff_jax.metrics.extractor import FeatureExtractor, resize_bilinear

__all__ = ['FIDInceptionV3', 'variables_from_torch', 'inception_extractor',
           'get_inception_extractor', 'FEATURE_DIM', 'RESIZE_TO', 'WEIGHTS_FLAG']

FEATURE_DIM = 2048
RESIZE_TO = 299
WEIGHTS_FLAG = '--config.eval.inception_weights'


class BasicConv(nn.Module):
  """conv (no bias, explicit symmetric padding) + batch norm (eps 1e-3) + ReLU."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride),
                padding=((self.padding[0],) * 2, (self.padding[1],) * 2), use_bias=False,
                precision=jax.lax.Precision.HIGHEST, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return jax.nn.relu(x)


def _max_pool(x, stride: int, pad: int = 0):
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


def _avg_pool_valid_count(x):
  """3x3 stride-1 average over the in-image neighbours only (``count_include_pad=False``)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name='branch1x1')(x)
    b5 = BasicConv(48, (1, 1), name='branch5x5_1')(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = BasicConv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_valid_count(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name='branch3x3')(x)
    bd = BasicConv(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv(96, (3, 3), stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name='branch1x1')(x)
    b7 = BasicConv(c7, (1, 1), name='branch7x7_1')(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv(192, (1, 1), name='branch_pool')(_avg_pool_valid_count(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name='branch3x3_1')(x)
    b3 = BasicConv(320, (3, 3), stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """``max_pool_branch=False``: FIDInceptionE_1 (average pool); True: FIDInceptionE_2."""
  max_pool_branch: bool

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name='branch1x1')(x)
    b3 = BasicConv(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], -1)
    bd = BasicConv(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], -1)
    pooled = _max_pool(x, 1, 1) if self.max_pool_branch else _avg_pool_valid_count(x)
    bp = BasicConv(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """``[B, H, W, 3]`` in ``[-1, 1]`` (299x299 for FID) -> pool3 features ``[B, 2048]``."""

  @nn.compact
  def __call__(self, x: Float[Array, 'b h w 3']) -> Float[Array, 'b 2048']:
    x = BasicConv(32, (3, 3), stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool(x, 2)
    x = BasicConv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = BasicConv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool(x, 2)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(False, name='Mixed_7b')(x)
    x = InceptionE(True, name='Mixed_7c')(x)
    return x.mean(axis=(1, 2))


# ---------------------------------------------------------------------------- weights
_BN_LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def variables_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Flax variables of :class:`FIDInceptionV3` from pytorch-fid's state dict.

  ``X.conv.weight [O, I, kh, kw]`` -> ``params/X/conv/kernel [kh, kw, I, O]``; ``X.bn.{weight,
  bias, running_mean, running_var}`` -> ``params/X/bn/{scale, bias}``, ``batch_stats/X/bn/{mean,
  var}``. The classifier (``fc.*``), ``AuxLogits.*`` and ``num_batches_tracked`` are ignored.

  Raises:
    InputError: parameters missing, left over or of the wrong shape (the message names them).
  """
  variables: dict = {'params': {}, 'batch_stats': {}}
  for key, value in state_dict.items():
    parts = key.split('.')
    if parts[0] in ('fc', 'AuxLogits') or parts[-1] == 'num_batches_tracked':
      continue
    *path, layer, leaf = parts
    if layer == 'conv' and leaf == 'weight':
      collection, name = 'params', 'kernel'
      value = np.transpose(value, (2, 3, 1, 0))
    elif layer == 'bn' and leaf in _BN_LEAVES:
      collection, name = _BN_LEAVES[leaf]
    else:
      raise InputError(f'Inception weights: unexpected parameter {key!r}')
    node = variables[collection]
    for p in path + [layer]:
      node = node.setdefault(p, {})
    node[name] = np.ascontiguousarray(value, dtype=np.float32)
  expected = jax.eval_shape(lambda: FIDInceptionV3().init(
      jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3), jnp.float32)))
  want = {'/'.join(str(k.key) for k in p): tuple(v.shape)
          for p, v in jax.tree_util.tree_leaves_with_path(expected)}
  got = {'/'.join(str(k.key) for k in p): tuple(np.shape(v))
         for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if missing or extra or wrong:
    raise InputError(f'Inception weights do not match the FID InceptionV3: missing {missing[:3]}, '
                     f'unexpected {extra[:3]}, wrong shape {wrong[:3]}')
  return variables


def _inception_features(variables, x: jax.Array) -> jax.Array:
  return FIDInceptionV3().apply(variables, resize_bilinear(x, RESIZE_TO))


def inception_extractor(variables, weights_hash: str) -> FeatureExtractor:
  """A :class:`FeatureExtractor` (``'inception'``, 2048-d) from Flax variables."""
  return FeatureExtractor('inception', FEATURE_DIM, weights_hash, _inception_features, variables,
                          default_batch_size=50)


def _convert(path: str) -> dict:
  return variables_from_torch(torch_pickle.load_state_dict(path))


def missing_weights_message(path: str | os.PathLike | None) -> str:
  where = 'no Inception weights file given' if not path else f'Inception weights {path} not found'
  return (f'{where}: FID needs pytorch-fid\'s {weights_lib.INCEPTION_WEIGHTS_NAME}; download it '
          f'from {weights_lib.INCEPTION_URL} and pass {WEIGHTS_FLAG}=PATH')


def get_inception_extractor(weights_path: str | os.PathLike | None) -> FeatureExtractor:
  """The FID extractor from pytorch-fid's weight file (converted once, cached by its hash).

  Raises:
    WeightsNotFoundError: no path or no file (one line naming the flag and the download URL).
  """
  if not weights_path or not os.path.isfile(weights_path):
    raise weights_lib.WeightsNotFoundError(missing_weights_message(weights_path))
  variables, digest = weights_lib.converted_variables('inception', weights_path, _convert)
  return inception_extractor(variables, digest)
