"""Random-access image sources of ``uint8 [N, H, W, C]`` images, and fitting images to the
configured size (zero padding, centre crop, channels)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from jaxtyping import UInt8

from pixdiff_jax.errors import ConfigError, InputError

__all__ = ['ImageSource', 'ArraySource', 'TfdsSource', 'LazySource', 'fit_to_size']


class ImageSource:
  """Random-access ``uint8`` images, already padded to the configured size.

  Attributes:
    num_examples: ``N``.
    image_shape: ``(H, W, C)``.
  """
  num_examples: int
  image_shape: tuple[int, int, int]

  def __len__(self) -> int:
    return self.num_examples

  def get(self, indices: Sequence[int] | np.ndarray) -> UInt8[np.ndarray, 'n h w c']:
    """Returns the images at ``indices`` (int array ``[n]``), ``uint8 [n, H, W, C]``."""
    raise NotImplementedError


class ArraySource(ImageSource):
  """An in-memory ``uint8 [N, H, W, C]`` array."""

  def __init__(self, images: UInt8[np.ndarray, 'n h w c']):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ConfigError(f'ArraySource needs uint8 [N, H, W, C], got {images.dtype} '
                       f'{images.shape}')
    self.images = images
    self.num_examples = int(images.shape[0])
    self.image_shape = tuple(int(s) for s in images.shape[1:])

  def get(self, indices):
    return self.images[np.asarray(indices, np.int64)]


class TfdsSource(ImageSource):
  """Lazy reads from a ``tfds.data_source`` (ArrayRecord); only requested rows are decoded."""

  def __init__(self, data_source: Any, *, key: str, image_size: int, num_channels: int,
               pad: bool, max_examples: int = 0, name: str = 'tfds', center_crop: int = 0):
    self.data_source = data_source
    self.key = key
    self.name = name
    self._size = (image_size, num_channels, pad, center_crop)
    n = len(data_source)
    self.num_examples = int(min(n, max_examples) if max_examples > 0 else n)
    self.image_shape = (image_size, image_size, num_channels)

  def get(self, indices):
    indices = np.asarray(indices, np.int64)
    rows = []
    for i in indices.tolist():
      if not 0 <= i < self.num_examples:
        raise IndexError(f'index {i} out of range for {self.num_examples} examples')
      rows.append(np.asarray(self.data_source[i][self.key]))
    out = np.empty((len(rows),) + self.image_shape, np.uint8)
    image_size, num_channels, pad, center_crop = self._size
    for j, row in enumerate(rows):
      if row.dtype != np.uint8:
        raise InputError(f'{self.name}: feature {self.key!r} has dtype {row.dtype}, not uint8')
      out[j] = fit_to_size(row[None], image_size=image_size, num_channels=num_channels,
                           pad=pad, what=self.name, center_crop=center_crop)[0]
    return out


class LazySource(ImageSource):
  """Images decoded one at a time by ``reader.read(i)`` (e.g. CelebA's JPEGs), then fitted.

  ``reader`` has ``len(reader)`` and ``reader.read(i) -> uint8 [h, w, c]``; every image is
  passed through :func:`fit_to_size` (padding or centre crop) when it is read.
  """

  def __init__(self, reader: Any, *, image_size: int, num_channels: int, pad: bool,
               center_crop: int = 0, name: str = 'dataset'):
    self.reader = reader
    self.name = name
    self._fit = dict(image_size=image_size, num_channels=num_channels, pad=pad,
                     center_crop=center_crop, what=name)
    self.num_examples = len(reader)
    self.image_shape = (image_size, image_size, num_channels)
    # Fail on a size / channel mismatch now rather than at the first batch.
    self.get([0])

  def get(self, indices):
    indices = np.asarray(indices, np.int64)
    out = np.empty((len(indices),) + self.image_shape, np.uint8)
    for j, i in enumerate(indices.tolist()):
      if not 0 <= i < self.num_examples:
        raise IndexError(f'index {i} out of range for {self.num_examples} examples')
      image = self.reader.read(i)
      image = image[..., None] if image.ndim == 2 else image
      out[j] = fit_to_size(image[None], **self._fit)[0]
    return out


def fit_to_size(images: UInt8[np.ndarray, 'n h w c'], *, image_size: int, num_channels: int,
                pad: bool, what: str = 'dataset', center_crop: int = 0
                ) -> UInt8[np.ndarray, 'n s s c']:
  """Checks the stored image size / channels; zero-pads, or centre-crops and resizes.

  With ``center_crop = K > 0`` (``config.data.center_crop``) every image is cropped to its
  central ``K x K`` square and resized (Pillow, antialiased bicubic) to ``image_size``; the
  usual CelebA preparation is ``K = 140`` from 218x178.

  Args:
    images: ``uint8 [N, H, W, C]``.
    image_size: target ``S`` (``config.data.image_size``).
    num_channels: required ``C`` (``config.data.num_channels``).
    pad: zero-pad smaller images to ``S x S``, centred, the extra row/column (odd difference)
      at the bottom/right (``config.data.pad_to_image_size``).
    what: dataset name for error messages.

  Returns:
    ``uint8 [N, S, S, C]`` (the input itself when nothing is to be done).

  Raises:
    ValueError: naming the config field when the images cannot be made to fit.
  """
  _, h, w, c = images.shape
  if c != num_channels:
    raise ConfigError(f'{what}: images have {c} channels but config.data.num_channels = '
                      f'{num_channels}')
  if center_crop:
    return _crop_and_resize(images, center_crop, image_size, what)
  if (h, w) == (image_size, image_size):
    return images
  if h > image_size or w > image_size or not pad:
    hint = ('' if pad or h > image_size or w > image_size else
            ' (set config.data.pad_to_image_size=True to zero-pad)')
    raise ConfigError(f'{what}: images are {h}x{w} but config.data.image_size = {image_size}'
                      f'{hint}; only zero-padding to a larger size is supported')
  top, left = (image_size - h) // 2, (image_size - w) // 2
  return np.pad(images, ((0, 0), (top, image_size - h - top), (left, image_size - w - left),
                         (0, 0)))


def _crop_and_resize(images: np.ndarray, crop: int, size: int, what: str) -> np.ndarray:
  n, h, w, c = images.shape
  if not 0 < crop <= min(h, w):
    raise ConfigError(f'{what}: config.data.center_crop = {crop} does not fit {h}x{w} images')
  top, left = (h - crop) // 2, (w - crop) // 2
  images = images[:, top:top + crop, left:left + crop]
  if crop == size:
    return np.ascontiguousarray(images)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = np.empty((n, size, size, c), np.uint8)
  for k in range(n):
    img = Image.fromarray(images[k, ..., 0] if c == 1 else images[k])
    out[k] = np.asarray(img.resize((size, size), Image.BICUBIC, reducing_gap=None)).reshape(
        size, size, c)
  return out


def with_channels(images: np.ndarray) -> np.ndarray:
  return images[..., None] if images.ndim == 3 else images
