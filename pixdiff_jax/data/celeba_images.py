"""CelebA's aligned images from ``img_align_celeba.zip`` or its unpacked folder, without TensorFlow.

The official "Align&Cropped Images" download is ``img_align_celeba.zip``: 202,599 JPEGs of
178x218 (width x height) named ``img_align_celeba/000001.jpg`` ... ``202599.jpg``. Either the
zip or the folder it unpacks to works; images are decoded one at a time on request (the
whole set would be 23 GB as ``uint8``), so opening is cheap and memory stays small.

Splits follow the official ``list_eval_partition.txt``, which is a partition by image number:
``train`` = 1..162770, ``validation`` = 162771..182637, ``test`` = 182638..202599; ``all``
takes every image. The paper's centre crop is applied by the caller
(:func:`pixdiff_jax.data.fit_to_size` with ``config.data.center_crop = 140``).
"""
from __future__ import annotations

import io
import os
import pathlib
import threading
import zipfile

import numpy as np
from jaxtyping import UInt8
from PIL import Image

from pixdiff_jax.errors import ConfigError, InputError, NotFoundError

__all__ = ['SPLIT_RANGES', 'CelebAImages', 'NoImagesError']

SPLIT_RANGES = {
    'train': (1, 162770),
    'validation': (162771, 182637),
    'test': (182638, 202599),
    'all': (1, float('inf')),
}
_SUFFIXES = ('.jpg', '.jpeg', '.png')


class NoImagesError(NotFoundError):
  """The zip or folder holds no images of the requested split; the message names it."""


def _image_number(name: str, where: str) -> int:
  stem = pathlib.PurePosixPath(name).stem
  if not stem.isdigit():
    raise InputError(f'{where}: image {name!r} is not named by its CelebA number (000001.jpg); '
                     "use config.data.split='all' for other names")
  return int(stem)


class CelebAImages:
  """Random access to CelebA's aligned images, in image-number order.

  ``len(x)`` is the number of images of the split; ``x.read(i)`` decodes image ``i`` as
  ``uint8 [H, W, 3]`` (RGB; ``[218, 178, 3]`` for the real data). Safe to use from one
  thread at a time per instance (a lock guards the zip file).
  """

  def __init__(self, path: str | os.PathLike, split: str = 'train', max_examples: int = 0):
    self.path = pathlib.Path(path).expanduser()
    if split not in SPLIT_RANGES:
      raise ConfigError(f'celeba: config.data.split must be one of {tuple(SPLIT_RANGES)}, '
                        f'got {split!r}')
    self._zip = None
    self._lock = threading.Lock()
    if self.path.is_dir():
      names = [str(p.relative_to(self.path)) for p in self.path.rglob('*')
               if p.suffix.lower() in _SUFFIXES and p.is_file()]
    elif self.path.is_file():
      try:
        self._zip = zipfile.ZipFile(self.path)
      except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f'{self.path}: not a readable zip file ({e})') from e
      names = [n for n in self._zip.namelist()
               if pathlib.PurePosixPath(n).suffix.lower() in _SUFFIXES]
    else:
      raise NotFoundError(f'{self.path}: no such file or directory')
    if split != 'all':
      lo, hi = SPLIT_RANGES[split]
      names = [n for n in names if lo <= _image_number(n, str(self.path)) <= hi]
      names.sort(key=lambda n: _image_number(n, str(self.path)))
    else:
      names.sort()
    if not names:
      raise NoImagesError(f'{self.path}: no .jpg/.jpeg/.png images'
                          + ('' if split == 'all' else f' of the {split!r} split'))
    self.names = names[:max_examples] if max_examples > 0 else names

  def __len__(self) -> int:
    return len(self.names)

  def read(self, i: int) -> UInt8[np.ndarray, 'h w 3']:
    """Decodes image ``i`` (0-based position in the split) as RGB ``uint8 [H, W, 3]``."""
    name = self.names[i]
    if self._zip is not None:
      with self._lock:
        raw = self._zip.read(name)
      where, source = f'{self.path}:{name}', io.BytesIO(raw)
    else:
      where = source = self.path / name
    try:
      with Image.open(source) as im:
        return np.asarray(im.convert('RGB'), np.uint8)
    except OSError as e:
      raise InputError(f'{where}: cannot decode image ({e})') from e
