"""Host batches for training.

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
import queue
import threading
from typing import Any, Iterator

import ml_collections
import numpy as np
from jaxtyping import Float

from pixdiff_jax.data.readers import load_source
from pixdiff_jax.data.scaling import Method, check_method, scale_images
from pixdiff_jax.data.sources import ImageSource
from pixdiff_jax.errors import ConfigError, InputError

__all__ = ['BatchIterator', 'get_batch_iterator', 'batch_indices', 'host_batch_size',
           'prefetch']


def host_batch_size(batch_size: int, *, num_local_devices: int, process_count: int) -> int:
  """Per-device batch ``B / (P * D)``; ``ValueError`` naming training.batch_size if not whole."""
  if batch_size <= 0 or batch_size % (process_count * num_local_devices):
    raise ValueError(
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
    check_method(self.method)
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
  check_method(config.method)
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
