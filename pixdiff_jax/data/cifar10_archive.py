"""CIFAR-10 from the standard python archive ``cifar-10-python.tar.gz``, without TensorFlow.

The archive (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, 170 MB, md5
:data:`CIFAR10_MD5`) holds ``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5`` (train,
50000 images) and ``cifar-10-batches-py/test_batch`` (test, 10000): pickled dicts whose
``b'data'`` is ``uint8 [10000, 3072]``, each row the 1024 red, then green, then blue values of
a 32x32 image in row-major order.

The pickles are read with an unpickler that accepts only what these files contain (dicts,
lists, bytes and NumPy arrays), and only after the archive's md5 matched; nothing else in the
archive is extracted. :func:`download` fetches the archive on request (never implicitly).
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import tarfile
import urllib.request

import numpy as np
from jaxtyping import UInt8

from pixdiff_jax.errors import ConfigError, InputError, NotFoundError

__all__ = ['CIFAR10_URL', 'CIFAR10_MD5', 'SPLIT_MEMBERS', 'ArchiveError', 'read_cifar10',
           'write_cifar10', 'file_md5', 'download']

CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
CIFAR10_MD5 = 'c58f30108f718f92721af3b95e74349a'
_DIR = 'cifar-10-batches-py'
SPLIT_MEMBERS = {
    'train': tuple(f'{_DIR}/data_batch_{i}' for i in range(1, 6)),
    'test': (f'{_DIR}/test_batch',),
}
_SIDE, _CHANNELS = 32, 3


class ArchiveError(InputError):
  """The archive is not the expected file (checksum, members, contents); names the file."""


def file_md5(path: str | os.PathLike) -> str:
  """Hex md5 of a file (read in chunks)."""
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'md5').hexdigest()


class _BatchUnpickler(pickle.Unpickler):
  """Resolves only the globals a CIFAR-10 batch needs (NumPy array reconstruction)."""

  _ALLOWED = {
      ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
      ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
      ('numpy', 'ndarray'), ('numpy', 'dtype'),
      ('_codecs', 'encode'),  # how Python 3 writes bytes at pickle protocol 2
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f'global {module}.{name} is not allowed in a CIFAR-10 batch')
    return super().find_class(module, name)


def _decode_batch(raw: bytes, where: str) -> np.ndarray:
  try:
    batch = _BatchUnpickler(io.BytesIO(raw), encoding='bytes').load()
  except Exception as e:  # pylint: disable=broad-except
    raise ArchiveError(f'{where}: not a CIFAR-10 batch pickle ({e})') from e
  if not isinstance(batch, dict):
    raise ArchiveError(f'{where}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)')
  data = batch.get(b'data', batch.get('data'))
  if data is None:
    raise ArchiveError(f'{where}: no "data" entry (keys: {sorted(map(str, batch))})')
  data = np.asarray(data)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _SIDE * _SIDE * _CHANNELS:
    raise ArchiveError(f'{where}: "data" must be uint8 [N, 3072], got {data.dtype} '
                       f'{data.shape}')
  # [N, 3072] = [N, C, H, W] row-major -> [N, H, W, C].
  return data.reshape(-1, _CHANNELS, _SIDE, _SIDE).transpose(0, 2, 3, 1)


def read_cifar10(path: str | os.PathLike, split: str = 'train', *,
                 md5: str = CIFAR10_MD5, max_examples: int = 0
                 ) -> UInt8[np.ndarray, 'n 32 32 3']:
  """Reads one split of ``cifar-10-python.tar.gz`` into memory, in the archive's order.

  Args:
    path: the ``.tar.gz`` file.
    split: ``'train'`` (50000 images, batches 1..5 in order) or ``'test'`` (10000).
    md5: the archive's expected md5 (the published one by default); ``''`` skips the check,
      for a re-packed archive you trust.
    max_examples: > 0 keeps only the first N images (later batches are then not decoded).

  Returns:
    ``uint8 [N, 32, 32, 3]``.

  Raises:
    FileNotFoundError: no file at ``path``.
    ArchiveError: wrong md5, not a tar.gz, a missing member or a malformed batch; the message
      names the file (and member).
  """
  path = pathlib.Path(path).expanduser()
  if split not in SPLIT_MEMBERS:
    raise ConfigError(f'cifar10: config.data.split must be one of {tuple(SPLIT_MEMBERS)}, '
                      f'got {split!r}')
  if not path.is_file():
    raise NotFoundError(f'{path}: no such file')
  if md5:
    got = file_md5(path)
    if got != md5.lower():
      raise ArchiveError(f'{path}: md5 {got} does not match the expected {md5} (a truncated '
                         'or different file; delete it and download again)')
  parts, count = [], 0
  try:
    with tarfile.open(path, 'r:gz') as tar:
      names = set(tar.getnames())
      for member in SPLIT_MEMBERS[split]:
        if member not in names:
          raise ArchiveError(f'{path}: member {member} is missing (not cifar-10-python.tar.gz?)')
        f = tar.extractfile(member)
        if f is None:
          raise ArchiveError(f'{path}: member {member} is not a regular file')
        parts.append(_decode_batch(f.read(), f'{path}:{member}'))
        count += len(parts[-1])
        if 0 < max_examples <= count:
          break
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ArchiveError(f'{path}: not a readable .tar.gz ({e})') from e
  images = np.concatenate(parts)
  return images[:max_examples] if max_examples > 0 else images


def write_cifar10(path: str | os.PathLike, train: np.ndarray, test: np.ndarray) -> pathlib.Path:
  """Writes images in the archive's format (``read_cifar10`` reads them back, with ``md5=''``).

  ``train`` (``uint8 [N, 32, 32, 3]``) is split over the five ``data_batch_*`` members (in
  order), ``test`` (``uint8 [M, 32, 32, 3]``) goes to ``test_batch``; labels are 0. For data
  that travels with a working tree (benchmarks/gpu_e2e.sh).
  """
  path = pathlib.Path(path).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  splits = {'train': np.array_split(np.asarray(train, np.uint8), len(SPLIT_MEMBERS['train'])),
            'test': [np.asarray(test, np.uint8)]}
  with tarfile.open(path, 'w:gz') as tar:
    for split, members in SPLIT_MEMBERS.items():
      for member, hwc in zip(members, splits[split]):
        if hwc.ndim != 4 or hwc.shape[1:] != (_SIDE, _SIDE, _CHANNELS):
          raise ValueError(f'{split} images must be uint8 [N, 32, 32, 3], got {hwc.shape}')
        batch = {b'batch_label': member.encode(), b'labels': [0] * len(hwc),
                 b'data': hwc.transpose(0, 3, 1, 2).reshape(len(hwc), -1),
                 b'filenames': [f'{i}.png'.encode() for i in range(len(hwc))]}
        raw = pickle.dumps(batch, protocol=2)
        info = tarfile.TarInfo(member)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
  return path


def download(path: str | os.PathLike, *, url: str = CIFAR10_URL,
             md5: str = CIFAR10_MD5) -> pathlib.Path:
  """Downloads the archive to ``path`` (a file name, or a directory to put it in) and checks it.

  Only called when the user asks for it (``config.data.download=True``). The file is written
  under a temporary name and renamed once its md5 matches, so an interrupted download never
  leaves a file that looks complete. A file already at ``path`` is kept if its md5 matches.

  Returns:
    the path of the verified archive.

  Raises:
    ArchiveError: the downloaded file's md5 does not match ``md5``.
    OSError: the download failed (the message names the URL).
  """
  path = pathlib.Path(path).expanduser()
  if path.is_dir() or str(path).endswith(os.sep):
    path = path / os.path.basename(url)
  if path.is_file() and (not md5 or file_md5(path) == md5):
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + '.part')
  try:
    with urllib.request.urlopen(url) as response, open(partial, 'wb') as out:
      for chunk in iter(lambda: response.read(1 << 20), b''):
        out.write(chunk)
  except OSError as e:
    partial.unlink(missing_ok=True)
    raise OSError(f'downloading {url} to {path} failed: {e}') from e
  got = file_md5(partial)
  if md5 and got != md5:
    partial.unlink(missing_ok=True)
    raise ArchiveError(f'{url}: the downloaded file has md5 {got}, expected {md5}')
  partial.replace(path)
  return path
