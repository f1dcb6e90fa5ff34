"""The one batched image generator of ``--mode sample`` and ``--mode eval``, and the chunked,
resumable writing of large requests.

:class:`Generator` compiles a sampler once; batch ``b`` of a request is drawn with the key
``fold_in(PRNGKey(seed), b)`` whichever process draws it (process ``p`` of ``P`` draws the
batches ``p, p + P, ...`` of each group and every process gets the group back in order,
``utils.distributed.my_items`` / ``gather_items``), so the images depend on the seed and the
batch size only. Only batches after compilation are timed.

:class:`ChunkStore` keeps a request of ``n`` images as consecutive chunks (whole batches) in a
folder beside the final file, ``<name>.chunks/``::

    manifest.json      {"key": {...what defines the images...}, "num_images": n,
                        "batch_size": B, "chunk_batches": k, "num_chunks": m,
                        "image_shape": [H, W, C], "done": [0, 1, ...]}
    chunk_00000.npy    uint8 [k * B, H, W, C] (the last chunk may run past n: trim at n)

Each chunk is written whole (a temporary file, then a rename) before the manifest names it, so
an interrupted or failed request resumes from the chunks that are done; a manifest with another
``key`` (other checkpoints, settings, seed, count) is discarded. :meth:`ChunkStore.assemble`
streams the chunks into one ``.npz`` (key ``images``) without holding more than one chunk in
memory; :func:`read_chunks` reads a kept chunk folder the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from pixdiff_jax.errors import writing

__all__ = ['Generator', 'generate', 'ChunkStore', 'read_chunks']

MANIFEST = 'manifest.json'


class Generator:
  """A sampler ``fn(variables, key)`` compiled once; :meth:`batch` gives uint8 images.

  Args:
    fn: jittable ``(variables, key) -> out``.
    variables: its first argument.
    seed: batch ``b`` uses ``fold_in(PRNGKey(seed), b)``.
    image_shape: one batch's images ``(B, H, W, C)``.
    unpack: ``out -> float images [B, H, W, C] in [0, 1]`` (e.g. ``checkify``'s
      ``(err, images)``: throw the error); raises on unusable output. Default: ``out`` itself.
  Attributes: ``compile_seconds``; ``batch_seconds``, one entry per batch run (post-compile).
  """

  def __init__(self, fn: Callable, variables: Any, *, seed: int,
               image_shape: Sequence[int], unpack: Callable[[Any], Any] | None = None):
    import jax  # pylint: disable=g-import-not-at-top
    self._jax = jax
    self.variables = variables
    self.image_shape = tuple(int(d) for d in image_shape)
    self.unpack = unpack or (lambda out: out)
    self.key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    self.compiled = jax.jit(fn).lower(variables, self.key).compile()
    self.compile_seconds = time.perf_counter() - t0
    self.batch_seconds: list[float] = []

  def batch(self, b: int) -> np.ndarray:
    """Batch ``b``: uint8 ``[B, H, W, C]``."""
    from pixdiff_jax import data  # pylint: disable=g-import-not-at-top
    jax = self._jax
    t0 = time.perf_counter()
    out = jax.block_until_ready(self.compiled(self.variables, jax.random.fold_in(self.key, b)))
    self.batch_seconds.append(time.perf_counter() - t0)
    return data.to_uint8(np.asarray(self.unpack(out)))

  def batches(self, indices: Sequence[int], *,
              on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """The batches ``indices`` as uint8 ``[len(indices) * B, H, W, C]``, on every process (each
    computes its share); ``on_batch(b)`` after each batch this process runs."""
    from pixdiff_jax.utils import distributed  # pylint: disable=g-import-not-at-top
    local = []
    for i in distributed.my_items(len(indices)):
      local.append(self.batch(indices[i]))
      if on_batch is not None:
        on_batch(indices[i])
    local = np.stack(local) if local else np.zeros((0,) + self.image_shape, np.uint8)
    gathered = distributed.gather_items(local, len(indices))
    return gathered.reshape((-1,) + self.image_shape[1:])


def generate(gen: Generator, n: int, *, desc: str | None = None) -> np.ndarray:
  """All ``n`` images in memory, uint8 ``[n, H, W, C]`` (for requests that fit: eval); with
  ``desc``, a progress bar (process 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  from pixdiff_jax.utils import distributed, progress  # pylint: disable=g-import-not-at-top
  num_batches = -(-n // gen.image_shape[0])
  mine = len(distributed.my_items(num_batches))
  bar = progress.progress(total=mine, desc=desc or '', every=max(1, mine // 10), every_s=30,
                          disable=desc is None or jax.process_index() != 0)
  images = gen.batches(range(num_batches), on_batch=lambda _: bar.update(1))[:n]
  bar.close()
  return images


class ChunkStore:
  """The chunk folder of one request (see the module docstring).

  Args:
    directory: the folder, e.g. ``WORKDIR/samples/<name>.chunks``.
    key: what defines the images (JSON-able); a stored manifest with another key is discarded.
    num_images: ``n``.
    batch_size: ``B``.
    chunk_images: images per chunk, rounded down to whole batches (at least one).
    image_shape: ``(H, W, C)``.
  """

  def __init__(self, directory: str, key: dict, *, num_images: int, batch_size: int,
               chunk_images: int, image_shape: Sequence[int]):
    self.directory, self.key = directory, json.loads(json.dumps(key))
    self.num_images, self.batch_size = int(num_images), int(batch_size)
    self.chunk_batches = max(1, int(chunk_images) // self.batch_size)
    self.num_batches = -(-self.num_images // self.batch_size)
    self.num_chunks = -(-self.num_batches // self.chunk_batches)
    self.image_shape = tuple(int(d) for d in image_shape)
    self.done: list[int] = []

  # ------------------------------------------------------------------ layout
  @property
  def chunk_images(self) -> int:
    return self.chunk_batches * self.batch_size

  def batches_of(self, chunk: int) -> range:
    start = chunk * self.chunk_batches
    return range(start, min(start + self.chunk_batches, self.num_batches))

  def path(self, chunk: int) -> str:
    return os.path.join(self.directory, f'chunk_{chunk:05d}.npy')

  def bytes_per_chunk(self, chunk: int) -> int:
    return len(self.batches_of(chunk)) * self.batch_size * int(np.prod(self.image_shape))

  def _manifest(self) -> dict:
    return {'key': self.key, 'num_images': self.num_images, 'batch_size': self.batch_size,
            'chunk_batches': self.chunk_batches, 'num_chunks': self.num_chunks,
            'image_shape': list(self.image_shape), 'done': sorted(self.done)}

  # ------------------------------------------------------------------ state
  def read_done(self) -> list[int]:
    """The chunks a previous run of the same request wrote (``[]`` if none or another request);
    sets :attr:`done`."""
    self.done = []
    try:
      with open(os.path.join(self.directory, MANIFEST), encoding='utf-8') as f:
        stored = json.load(f)
    except (OSError, ValueError):
      return self.done
    mine = self._manifest()
    if any(stored.get(k) != mine[k] for k in mine if k != 'done'):
      return self.done
    for c in stored.get('done', []):
      if (isinstance(c, int) and 0 <= c < self.num_chunks and os.path.isfile(self.path(c))
          and os.path.getsize(self.path(c)) >= self.bytes_per_chunk(c)):
        self.done.append(c)
    return self.done

  def prepare(self) -> str | None:
    """Makes the folder ready for this request (process 0 only); returns a note when a folder
    of another request was discarded."""
    note = None
    if os.path.isdir(self.directory) and not self.done:
      stale = [f for f in os.listdir(self.directory) if f.endswith('.npy')]
      if stale:
        note = (f'discarding {self.directory}: its {len(stale)} chunks belong to another '
                'request (other checkpoints, settings, seed or count)')
      shutil.rmtree(self.directory)
    elif os.path.isdir(self.directory):  # partial chunks of an interrupted write
      for f in os.listdir(self.directory):
        if f.endswith('.tmp'):
          os.remove(os.path.join(self.directory, f))
    with writing(self.directory, 'sample chunks'):
      os.makedirs(self.directory, exist_ok=True)
    self._write_manifest()
    return note

  def _write_manifest(self) -> None:
    path = os.path.join(self.directory, MANIFEST)
    with writing(path, 'sample manifest'):
      with open(path + '.tmp', 'w', encoding='utf-8') as f:
        json.dump(self._manifest(), f)
      os.replace(path + '.tmp', path)

  def write(self, chunk: int, images: np.ndarray) -> None:
    """Writes chunk ``chunk`` (uint8 ``[k * B, H, W, C]``) whole, then names it done."""
    path = self.path(chunk)
    try:
      with writing(path, 'sample chunk'):
        with open(path + '.tmp', 'wb') as f:
          np.save(f, np.ascontiguousarray(images, np.uint8))
        os.replace(path + '.tmp', path)
    except BaseException:
      if os.path.exists(path + '.tmp'):
        os.remove(path + '.tmp')  # a partial chunk holds the space the user must free
      raise
    self.done.append(chunk)
    self._write_manifest()

  def first_images(self, count: int) -> np.ndarray:
    """The first ``min(count, n)`` images, read from as few chunks as needed."""
    parts, have = [], 0
    for images in read_chunks(self.directory):
      parts.append(images[:count - have])
      have += len(parts[-1])
      if have >= count:
        break
    return np.concatenate(parts)

  def assemble(self, npz_path: str) -> None:
    """Streams the chunks into ``npz_path`` (key ``images``, uint8 ``[n, H, W, C]``, deflated
    like ``np.savez_compressed``); one chunk in memory at a time."""
    header = {'descr': np.dtype(np.uint8).str, 'fortran_order': False,
              'shape': (self.num_images,) + self.image_shape}
    tmp = npz_path + '.tmp'
    try:
      with writing(npz_path, 'samples'):
        with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
          with zf.open('images.npy', 'w', force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for images in read_chunks(self.directory):
              f.write(np.ascontiguousarray(images).tobytes())
        os.replace(tmp, npz_path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise

  def remove(self) -> None:
    shutil.rmtree(self.directory, ignore_errors=True)


def read_chunks(directory: str) -> Iterator[np.ndarray]:
  """The images of a chunk folder in order, one chunk at a time (memory-mapped), trimmed to the
  request's ``num_images``: uint8 ``[<= k * B, H, W, C]`` each.

  Raises ``ValueError`` if a chunk is missing (the request was not finished).
  """
  with open(os.path.join(directory, MANIFEST), encoding='utf-8') as f:
    manifest = json.load(f)
  left = int(manifest['num_images'])
  missing = sorted(set(range(manifest['num_chunks'])) - set(manifest['done']))
  if missing:
    raise ValueError(f'{directory}: chunks {missing[:5]} of {manifest["num_chunks"]} are not '
                     'written yet (run the same sample command to finish the request)')
  for c in range(manifest['num_chunks']):
    if left <= 0:
      return
    images = np.load(os.path.join(directory, f'chunk_{c:05d}.npy'), mmap_mode='r')
    yield images[:left]
    left -= len(images)
