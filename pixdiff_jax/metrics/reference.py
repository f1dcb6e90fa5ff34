"""Reference statistics of a real dataset split, the real-vs-real floor, and ``fd_efflite0``.

Reference statistics ``(mu, sigma, n)`` are computed from EVERY image of the split (10,000 for
the Fashion-MNIST test split), as stored (28x28 data is not padded), and cached in
``cache_dir()/reference_stats/`` under a name built from the extractor and its weights' hash,
the dataset, split and image count, and a hash of the image bytes: a new weight file or changed
data never reuse stale statistics.

The floor (:func:`real_floor`) is the distance of ``n`` random TRAINING images (without
replacement, ``np.random.default_rng(seed)``) to the reference split: what a perfect generator
scores with ``n`` samples, since the Frechet distance is biased upwards at small ``n``.
"""
from __future__ import annotations

import hashlib
import os
from typing import Literal

import ml_collections
import numpy as np
from jaxtyping import Float, UInt8

from pixdiff_jax import data as data_lib
from pixdiff_jax.errors import InputError
from pixdiff_jax.metrics import frechet
from pixdiff_jax.metrics.extractor import FeatureExtractor, center_crop, check_images
from pixdiff_jax.metrics.features import get_feature_extractor
from pixdiff_jax.metrics.weights import atomic_savez, cache_dir

__all__ = ['load_split', 'cached_stats', 'reference_stats', 'real_floor', 'sample_crop',
           'match_reference', 'fd_efflite0', 'REFERENCE_DATASETS']

# Read here by name; any other dataset of pixdiff_jax.data (cifar10, celeba, folder, tfds:...)
# through a training config's data section (``data_config``).
REFERENCE_DATASETS = ('fashion_mnist', 'mnist', 'npz')
_IDX_SIZE = 28


def load_split(dataset: str = 'fashion_mnist', split: str = 'test', path: str = '',
               max_examples: int = 0, data_config: ml_collections.ConfigDict | None = None
               ) -> UInt8[np.ndarray, 'n h w c']:
  """All images of a split, ``uint8 [N, H, W, C]``, read offline by :mod:`pixdiff_jax.data`:
  ``'fashion_mnist'``/``'mnist'`` IDX files as stored (28x28), ``'npz'`` at ``path``, or any
  other dataset as the training pipeline reads it (e.g. CelebA centre-cropped to
  ``image_size``) from ``data_config``, the workdir's ``config.data``.

  ``max_examples > 0`` keeps only the first images: non-standard, for tests only.
  """
  if dataset not in REFERENCE_DATASETS:
    if data_config is None:
      raise InputError(f'reference dataset {dataset!r}: give the training config\'s data '
                        f'section (data_config), or one of {REFERENCE_DATASETS}')
    data = data_config.copy_and_resolve_references()
    with data.unlocked():
      data.max_examples = int(max_examples)
    return data_lib.load_images(ml_collections.ConfigDict({'data': data}), split=split)
  if dataset == 'npz':
    if not path:
      raise InputError("dataset 'npz' needs the path of a .npz file with key 'images'")
    with np.load(os.path.expanduser(path)) as f:
      if 'images' not in f.files:
        raise InputError(f'{path}: no key "images" (keys: {f.files})')
      images = check_images(f['images'], f'{path}: "images"')
    return images[:max_examples] if max_examples > 0 else images
  config = ml_collections.ConfigDict(dict(
      dataset=dataset, path=path, split=split, max_examples=max_examples,
      image_size=_IDX_SIZE, num_channels=1, pad_to_image_size=False, center_crop=0))
  return data_lib.load_images(ml_collections.ConfigDict({'data': config}))


def _images_key(images: np.ndarray) -> str:
  h = hashlib.sha256(str(images.shape).encode())
  h.update(np.ascontiguousarray(images).tobytes())
  return h.hexdigest()[:16]


def cached_stats(ex: FeatureExtractor, images: UInt8[np.ndarray, 'n h w c'], *, tag: str,
                 crop_to: int | None = None
                 ) -> tuple[Float[np.ndarray, 'd'], Float[np.ndarray, 'd d']]:
  """``gaussian_stats(ex(images, crop_to=crop_to))``, cached on disk.

  The cache file is named by ``tag`` (e.g. ``'cifar10-test'``), the extractor and its weights'
  hash, the crop, the image count and a hash of the image bytes, so any image set (e.g. a
  reference split read by :mod:`pixdiff_jax.data` from a training config) can be cached safely.
  """
  images = check_images(images)
  crop = f'-crop{crop_to}' if crop_to else ''
  target = (cache_dir() / 'reference_stats' / f'{ex.name}-{ex.weights_hash[:16]}-{tag}{crop}'
            f'-n{len(images)}-{_images_key(images)}.npz')
  if target.is_file():
    with np.load(target) as f:
      return f['mu'], f['sigma']
  target.parent.mkdir(parents=True, exist_ok=True)
  mu, sigma = frechet.gaussian_stats(ex(images, crop_to=crop_to))
  atomic_savez(target, mu=mu, sigma=sigma, n=np.int64(len(images)))
  return mu, sigma


def reference_stats(ex: FeatureExtractor, *, dataset: str = 'fashion_mnist',
                    split: str = 'test', path: str = '', max_examples: int = 0,
                    data_config: ml_collections.ConfigDict | None = None
                    ) -> tuple[Float[np.ndarray, 'd'], Float[np.ndarray, 'd d'], int]:
  """``(mu [D], sigma [D, D], n)`` of ``ex``'s features over every image of the split (cached).

  Args:
    ex: the feature extractor.
    dataset, split, path, data_config: the data (see :func:`load_split`).
    max_examples: > 0 uses only the first images: NOT the standard reference (tests only).
  """
  images = load_split(dataset, split, path, max_examples, data_config)
  mu, sigma = cached_stats(ex, images, tag=f'{dataset}-{split}')
  return mu, sigma, len(images)


def real_floor(ex: FeatureExtractor, n: int, *, dataset: str = 'fashion_mnist',
               split: str = 'test', train_split: str = 'train', path: str = '',
               seed: int = 0, max_examples: int = 0,
               data_config: ml_collections.ConfigDict | None = None) -> float:
  """The real-vs-real floor: FD of ``n`` random ``train_split`` images to the reference split.

  Raises:
    InputError: ``n`` < 2 or more than the training split holds.
  """
  train = load_split(dataset, train_split, path, max_examples, data_config)
  if not 2 <= n <= len(train):
    raise InputError(f'the floor needs 2 <= n <= {len(train)} (the {train_split} split), got {n}')
  pick = np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))
  mu_t, sigma_t = cached_stats(ex, train[pick], tag=f'{dataset}-{train_split}-seed{seed}')
  mu_r, sigma_r, _ = reference_stats(ex, dataset=dataset, split=split, path=path,
                                     max_examples=max_examples, data_config=data_config)
  return frechet.frechet_distance(mu_t, sigma_t, mu_r, sigma_r)


def sample_crop(dataset: str, images: np.ndarray) -> int | None:
  """The crop that undoes the training pipeline's padding: 28 for 32x32 samples of the 28x28
  datasets (``'fashion_mnist'``, ``'mnist'``), else None."""
  if dataset in ('fashion_mnist', 'mnist') and images.shape[1:3] == (32, 32):
    return _IDX_SIZE
  return None


def _resize_uint8(images: np.ndarray, h: int, w: int, batch: int = 1000) -> np.ndarray:
  """uint8 ``[N, H, W, C]`` -> uint8 ``[N, h, w, C]``: bilinear (antialiased when shrinking),
  rounded."""
  import jax  # pylint: disable=g-import-not-at-top
  out = []
  for i in range(0, len(images), batch):
    x = images[i:i + batch].astype(np.float32)
    y = jax.image.resize(x, (len(x), h, w, x.shape[-1]), method='linear', antialias=True)
    out.append(np.clip(np.round(np.asarray(y)), 0, 255).astype(np.uint8))
  return np.concatenate(out)


def match_reference(images: np.ndarray, reference_shape, *, dataset: str,
                    split: str, what: str = 'the samples', resize: bool = False
                    ) -> tuple[np.ndarray, int | None, list[int] | None]:
  """uint8 ``[N, H, W, C]`` samples made comparable with the reference split (of shape
  ``reference_shape``): ``(images, crop_to, resized_from)``.

  32x32 samples of the 28x28 datasets are centre-cropped (:func:`sample_crop`). Otherwise the
  samples must have the reference's ``H x W`` and channel count: a Frechet distance between
  images of different sizes measures the size, not the generator. With ``resize`` the samples
  are resized (bilinear) to the reference's size and ``resized_from`` is their ``[H, W]``;
  channels are never converted.

  Raises:
    InputError: the sizes or channel counts differ (and ``resize`` is off, for sizes).
  """
  _, rh, rw, rc = (int(d) for d in reference_shape)
  crop = sample_crop(dataset, images)
  h, w, c = (crop, crop, images.shape[-1]) if crop else images.shape[1:]
  ref = f'the {dataset} {split} split holds {rh}x{rw}x{rc} images'
  if c != rc:
    raise InputError(f'{what} are {h}x{w}x{c} images but {ref}: a different channel count '
                     f'(give {rc}-channel images; channels are not converted)')
  if (h, w) == (rh, rw):
    return images, crop, None
  if not resize:
    raise InputError(f'{what} are {h}x{w}x{c} images but {ref}: a distance between images of '
                     f'different sizes measures the size; give {rh}x{rw} images, or add --resize '
                     'to resize them (bilinear; the JSON then says "resized_from")')
  return _resize_uint8(center_crop(images, crop), rh, rw), None, [int(h), int(w)]


def fd_efflite0(images: UInt8[np.ndarray, 'n h w c'], *, dataset: str = 'fashion_mnist',
                split: str = 'test', path: str = '',
                crop_to: int | None | Literal['auto'] = 'auto') -> float:
  """``FD_efflite0`` of ``images`` against every image of the reference split.

  Args:
    images: ``uint8 [N, H, W, C]``, ``N >= 2``.
    dataset, split, path: the reference data (see :func:`load_split`).
    crop_to: ``'auto'`` = :func:`sample_crop` (32x32 samples of 28x28 data -> 28), or explicit.
      With ``'auto'``, images of another size or channel count than the reference's are refused
      (:func:`match_reference`).
  """
  images = check_images(images)
  if len(images) < 2:
    raise InputError(f'a covariance needs at least 2 samples, got {len(images)}')
  reference = load_split(dataset, split, path)
  if crop_to == 'auto':  # images of another size or channel count are refused
    images, crop, _ = match_reference(images, reference.shape, dataset=dataset, split=split)
  else:
    crop = crop_to
  ex = get_feature_extractor('efflite0')
  mu, sigma = frechet.gaussian_stats(ex(images, crop_to=crop))
  mu_r, sigma_r = cached_stats(ex, reference, tag=f'{dataset}-{split}')  # = reference_stats
  return frechet.frechet_distance(mu, sigma, mu_r, sigma_r)
