"""A torch-free reader of PyTorch weight files (``torch.save`` of a state dict) into NumPy.

Both on-disk formats are read:

* legacy (torch < 1.6, e.g. ``efficientnet-lite0-57934424.pth``): a stream of pickles -- magic
  number, protocol version, system info, the state dict (tensors refer to storages through
  persistent ids ``('storage', storage_type, key, location, numel[, view_metadata])``), the list
  of storage keys in file order -- followed by each storage as ``int64 numel`` + raw
  little-endian bytes.
* zip (torch >= 1.6): ``<archive>/data.pkl`` with the same persistent ids and each storage's raw
  bytes in ``<archive>/data/<key>``.

Tensors are rebuilt from ``(storage, storage_offset, size, stride)`` as in
``torch._utils._rebuild_tensor_v2``. Only plain containers, tensors and numbers are allowed:
any other global in the pickle is refused (``UnpicklingError``), so reading a file cannot run
code from it.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

__all__ = ['load_state_dict', 'LEGACY_MAGIC_NUMBER']

LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c

_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class _StorageType:
  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder('<')


class _StorageRef:
  """A storage named by a persistent id; ``data`` (a flat NumPy array) is filled in later."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.data: np.ndarray | None = None


class _PendingTensor:
  """A tensor waiting for its storage's bytes."""

  def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def materialize(self) -> np.ndarray:
    flat = self.storage.data
    if flat is None:
      raise pickle.UnpicklingError(f'storage {self.storage.key} has no data in the file')
    if not self.size:
      return flat[self.offset].copy()
    needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
    if min(self.size) > 0 and needed > flat.size:
      raise pickle.UnpicklingError(f'tensor of size {self.size} overruns storage '
                                   f'{self.storage.key} ({flat.size} elements)')
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                           strides=tuple(s * item for s in self.stride))
    return np.array(view, dtype=flat.dtype.newbyteorder('='))


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  """Resolves only the globals a state dict needs; records every storage it meets."""

  _ALLOWED = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
  }

  def __init__(self, file, storages: dict[str, _StorageRef]):
    super().__init__(file)
    self.storages = storages

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(f'unsupported global {module}.{name} in a torch weight file')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f'unsupported storage type {storage_type!r}')
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError('storage views (pre-1.0 torch files) are not supported')
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _StorageRef(key, storage_type.dtype, int(numel))
    return self.storages[key]


def _resolve(obj: Any) -> Any:
  if isinstance(obj, _PendingTensor):
    return obj.materialize()
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  return obj


def _load_legacy(f: io.BufferedIOBase) -> Any:
  magic = pickle.load(f)
  if magic != LEGACY_MAGIC_NUMBER:
    raise pickle.UnpicklingError('not a torch weight file (bad magic number)')
  protocol = pickle.load(f)
  if protocol != 1001:
    raise pickle.UnpicklingError(f'unsupported torch legacy protocol {protocol}')
  sys_info = pickle.load(f)
  if not sys_info.get('little_endian', True):
    raise pickle.UnpicklingError('big-endian torch files are not supported')
  storages: dict[str, _StorageRef] = {}
  result = _Unpickler(f, storages).load()
  keys = pickle.load(f)
  for key in keys:
    ref = storages[str(key)]
    (numel,) = struct.unpack('<q', f.read(8))
    nbytes = numel * ref.dtype.itemsize
    buf = f.read(nbytes)
    if len(buf) != nbytes:
      raise pickle.UnpicklingError(f'torch weight file truncated in storage {key}')
    ref.data = np.frombuffer(buf, dtype=ref.dtype)
  return _resolve(result)


def _load_zip(path: str | os.PathLike) -> Any:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pkl) != 1:
      raise pickle.UnpicklingError(f'{path}: no single data.pkl in the zip archive')
    prefix = pkl[0][:-len('data.pkl')]
    storages: dict[str, _StorageRef] = {}
    result = _Unpickler(io.BytesIO(z.read(pkl[0])), storages).load()
    for key, ref in storages.items():
      buf = z.read(f'{prefix}data/{key}')
      ref.data = np.frombuffer(buf, dtype=ref.dtype, count=ref.numel)
  return _resolve(result)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a ``torch.save``d state dict without torch.

  Args:
    path: a ``.pth`` / ``.pt`` file (legacy or zip format).

  Returns:
    the pickled mapping (usually an ``OrderedDict``) with every tensor as a NumPy array of its
    dtype and shape (e.g. a conv weight ``float32 [out, in, kh, kw]``).

  Raises:
    pickle.UnpicklingError: the file is not a torch weight file this reader understands.
  """
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  with open(path, 'rb') as f:
    return _load_legacy(f)
