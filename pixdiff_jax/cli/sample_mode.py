"""``--mode sample``: images from a trained workdir into ``WORKDIR/samples/``.

A request is generated in chunks (``sampling.generate.ChunkStore``) in
``WORKDIR/samples/<name>.chunks/``: an interrupted or failed request resumes from the chunks
already written, and at most one chunk is in memory. At the end the chunks become
``<name>.npz`` (key ``images``, uint8 ``[N, H, W, C]``) and ``<name>.png`` (the first 100
images), unless the images take more than ``--max_npz_gb``: then the chunk folder is the output.

Before any work the request is stated (images, batches, chunks, disk space); after the first
batch, the estimated time. A request that needs more disk space than is free, or is estimated to
take longer than ``--max_hours`` (default 24 h), stops there unless ``--yes`` is given.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys

from pixdiff_jax.cli.errors import check_writable_dir, UsageError
from pixdiff_jax.errors import WriteError

DEFAULT_MAX_HOURS = 24.0
# Automatic chunks: at most this much memory, and this many images (an interrupt loses at most
# one chunk of work).
AUTO_CHUNK_BYTES = 256 << 20
AUTO_CHUNK_IMAGES = 10_000
GRID_IMAGES = 100


def _flags():
  # Not at import: the helpers below are used without the command line's flags (tests).
  from pixdiff_jax.cli.flags import FLAGS  # pylint: disable=g-import-not-at-top
  return FLAGS


def _gb(num_bytes: float) -> str:
  for unit, size in (('TB', 1e12), ('GB', 1e9), ('MB', 1e6)):
    if num_bytes >= size:
      return f'{num_bytes / size:.3g} {unit}'
  return f'{num_bytes / 1e3:.3g} kB'


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f'{seconds:.3g} s'
  return f'{seconds / 60:.3g} min' if seconds < 7200 else f'{seconds / 3600:.3g} h'


def check_disk(*, n: int, needed: int, free: int, where: str, yes: bool) -> None:
  """A UsageError if ``needed`` bytes exceed the ``free`` bytes at ``where`` (unless ``yes``)."""
  if needed > free and not yes:
    raise UsageError(
        f'--num_samples {n} needs about {_gb(needed)} in {where} but {_gb(free)} are free; '
        'free space, ask for fewer images, or add --yes to start anyway (an interrupted '
        'request resumes from its chunks)')


def check_time(*, n: int, batches: int, batch: int, seconds_per_batch: float, processes: int,
               max_hours: float | None, yes: bool, chunks_dir: str) -> float:
  """The estimated hours for ``batches`` more batches; a UsageError if over the limit."""
  hours = batches * seconds_per_batch / max(processes, 1) / 3600
  limit = None if yes and max_hours is None else (
      DEFAULT_MAX_HOURS if max_hours is None else float(max_hours))
  if limit is not None and hours > limit:
    which = (f'the --max_hours {limit:g} limit' if max_hours is not None else
             f'the {limit:g} h limit for requests without --yes or --max_hours')
    raise UsageError(
        f'--num_samples {n} would take about {hours:.3g} h ({batches} batches of {batch} at '
        f'{seconds_per_batch:.3g} s each, measured on the first batch), more than {which}; add '
        f'--yes to go ahead or --max_hours {max(1, int(hours) + 1)} (an interrupted request '
        f'resumes from its chunks in {chunks_dir})')
  return hours


def _name(config, settings: dict, sample_fn) -> str:
  st = dict(sample_fn.settings, preset=settings['preset'])
  if config.method == 'pixel_aware':
    default = (f"{st['sampler']}_{st['preset']}_K{st['network_calls']}_eta{st['eta']:g}_"
               f"{st['update']}")
  elif st['distilled']:
    default = f"distilled_K{st['network_calls']}"
  else:
    default = f"{st['sampler']}_S{sample_fn.network_evals}"
  return _flags().sample_name or default


def _unpack(steps: dict, workdir: str):
  from jax.experimental import checkify  # pylint: disable=g-import-not-at-top

  def unpack(out):
    err, images = out
    try:
      err.throw()
    except checkify.JaxRuntimeError as e:
      raise UsageError(f'{str(e).splitlines()[0]} (checkpoints {steps} in {workdir})') from e
    return images
  return unpack


def _open_store(config, stored, workdir: str, n: int):
  """``(sample_fn, variables, settings, name, store)``: the sampler of the request and its
  ``ChunkStore``, with the chunks a previous run wrote in ``store.done``."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from pixdiff_jax import config as config_lib, sampling
  from pixdiff_jax.sampling import generate
  from pixdiff_jax.utils import distributed
  # pylint: enable=g-import-not-at-top
  s = config.sampling
  batch = min(int(s.batch_size), n)
  if batch < 1:
    raise UsageError(f'sampling.batch_size must be >= 1, got {s.batch_size}')
  # The command line's sampling section with its preset applied is the whole sampler; passed
  # as 'custom' so that the workdir's stored sampling fields play no part.
  settings = config_lib.sampler_settings(config)
  fields = ('sampler', 'network_calls', 'eta', 'clip_denoised', 'prior', 'update', 'num_steps',
            'distilled')
  sample_fn, variables = sampling.load_sampler(
      workdir, batch_size=batch, use_ema=s.use_ema, preset='custom', check_finite=True,
      **{k: settings[k] for k in fields})
  print('sampling from checkpoints: ' + ', '.join(
      f'{stage} step {step}' for stage, step in sample_fn.checkpoint_steps.items()),
        file=sys.stderr, flush=True)
  shape = (stored.data.image_size, stored.data.image_size, stored.data.num_channels)
  chunk = _flags().chunk_images or max(batch, min(AUTO_CHUNK_IMAGES,
                                               AUTO_CHUNK_BYTES // int(np.prod(shape))))
  name = _name(config, settings, sample_fn)
  key = {'checkpoint_steps': sample_fn.checkpoint_steps, 'settings': sample_fn.settings,
         'use_ema': bool(s.use_ema), 'seed': int(_flags().sample_seed)}
  store = generate.ChunkStore(os.path.join(workdir, 'samples', f'{name}.chunks'), key,
                              num_images=n, batch_size=batch, chunk_images=chunk,
                              image_shape=shape)
  store.read_done()
  distributed.barrier('sample chunks read')  # before process 0 changes the folder
  return sample_fn, variables, settings, name, store


def sample(config, workdir: str) -> dict:
  """Runs sample mode; returns the JSON summary (process 0) or ``{}``."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from pixdiff_jax import config as config_lib
  from pixdiff_jax.sampling import generate
  # pylint: enable=g-import-not-at-top
  stored = config_lib.load_config(workdir)
  # The stored config defines the networks; the command line's config supplies the sampler.
  config_lib.check_compatible(stored, config)
  flags = _flags()
  n = flags.num_samples
  if n < 1:
    raise UsageError(f'--num_samples must be >= 1, got {n}')
  out_dir = os.path.join(workdir, 'samples')
  check_writable_dir(out_dir, 'samples folder')  # before any work
  sample_fn, variables, settings, name, store = _open_store(config, stored, workdir, n)
  todo = [c for c in range(store.num_chunks) if c not in store.done]
  image_bytes = n * int(np.prod(store.image_shape))
  assemble = image_bytes <= flags.max_npz_gb * 1e9
  needed = sum(store.bytes_per_chunk(c) for c in todo) + (image_bytes if assemble else 0)
  check_disk(n=n, needed=needed, free=shutil.disk_usage(out_dir).free, where=out_dir,
             yes=flags.yes)
  if jax.process_index() == 0:
    note = store.prepare()
    if note:
      _say(f'notice: {note}')
  _say(f'sampling {n} images: {store.num_batches} batches of {store.batch_size} in '
       f'{store.num_chunks} chunks of {store.chunk_images} images ({_gb(image_bytes)}) in '
       f'{store.directory}' + (f'; resuming: {len(store.done)} chunks are already written'
                               if store.done else ''))
  gen = generate.Generator(sample_fn, variables, seed=flags.sample_seed,
                           image_shape=(store.batch_size,) + store.image_shape,
                           unpack=_unpack(sample_fn.checkpoint_steps, workdir))
  run_chunks(gen, store, todo, max_hours=flags.max_hours, yes=flags.yes)
  if jax.process_index() != 0:
    return {}
  npz_path = os.path.join(out_dir, f'{name}.npz')
  png_path = os.path.join(out_dir, f'{name}.png')
  _finish(store, npz_path if assemble else None, png_path)
  times = gen.batch_seconds
  return {'npz': npz_path if assemble else None, 'png': png_path,
          'chunks': None if assemble else store.directory, 'num_samples': int(n),
          'num_batches': store.num_batches, 'resumed_chunks': store.num_chunks - len(todo),
          'network_evals': int(sample_fn.network_evals),
          'settings': dict(sample_fn.settings, preset=settings['preset']),
          'checkpoint_steps': sample_fn.checkpoint_steps, 'compile_seconds': gen.compile_seconds,
          # Every batch runs the executable compiled above: no compilation is timed here. None
          # when every chunk was already written.
          'seconds_per_image_after_compile': (
              float(np.sum(times)) / (len(times) * gen.image_shape[0]) if times else None)}


def _say(line: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


def run_chunks(gen, store, todo: list[int], *, max_hours: float | None, yes: bool) -> None:
  """Generates and writes the chunks ``todo`` of ``store`` with ``gen`` (process 0 writes), with
  a progress line every 10% or 30 s; the time limit is checked after the first batch
  (:func:`check_time`). A signal or a failed write ends with one line naming what is kept."""
  import jax  # pylint: disable=g-import-not-at-top
  from pixdiff_jax.utils import progress  # pylint: disable=g-import-not-at-top
  if not todo:
    return
  n = store.num_images
  batches = sum(len(store.batches_of(c)) for c in todo)
  bar = progress.progress(total=batches, desc='sample', every=max(1, batches // 10),
                          every_s=30, disable=jax.process_index() != 0)
  state = {'first': True}

  def on_batch(_):
    if state['first']:
      state['first'] = False
      hours = check_time(n=n, batches=batches, batch=store.batch_size,
                         seconds_per_batch=gen.batch_seconds[-1],
                         processes=jax.process_count(), max_hours=max_hours, yes=yes,
                         chunks_dir=store.directory)
      _say(f'first batch: {gen.batch_seconds[-1]:.3g} s after {gen.compile_seconds:.3g} s of '
           f'compilation; estimated {_duration(hours * 3600)} for {batches} batches')
    left = batches - bar.n - 1
    bar.set_postfix(eta=_duration(left * sum(gen.batch_seconds) / len(gen.batch_seconds)))
    bar.update(1)

  old = signal.signal(signal.SIGTERM, _raise_interrupt)
  try:
    for c in todo:
      images = gen.batches(store.batches_of(c), on_batch=on_batch)
      if jax.process_index() == 0:
        store.write(c, images)
    bar.close()
  except UsageError:  # e.g. refused after the first batch: leave no empty chunk folder
    if not store.done and jax.process_index() == 0:
      store.remove()
    raise
  except KeyboardInterrupt as stop:
    signum = getattr(stop, 'signum', signal.SIGINT)
    _say(f'interrupted: {signal.Signals(signum).name} while sampling; {len(store.done)} of '
         f'{store.num_chunks} chunks are written in {store.directory}; run the same command to '
         'resume')
    sys.exit(128 + signum)
  except WriteError as err:
    raise WriteError(err.path, err.reason, err.what, advice=(
        f'{len(store.done)} of {store.num_chunks} chunks are written in {store.directory} '
        '(kept); free space and run the same command to resume')) from err
  finally:
    signal.signal(signal.SIGTERM, old)


class _Interrupt(KeyboardInterrupt):
  signum = signal.SIGTERM


def _raise_interrupt(signum, frame):
  raise _Interrupt()


def _finish(store, npz_path: str | None, png_path: str) -> None:
  """The grid PNG, and the chunks assembled into ``npz_path`` (then removed), or kept."""
  from pixdiff_jax.utils import image_grid  # pylint: disable=g-import-not-at-top
  image_grid.save_grid(png_path, store.first_images(GRID_IMAGES))
  if npz_path is None:
    return
  try:
    store.assemble(npz_path)
  except WriteError as err:
    raise WriteError(err.path, err.reason, err.what, advice=(
        f'all {store.num_chunks} chunks are written in {store.directory} (kept); free space and '
        'run the same command to assemble them (or add --max_npz_gb 0 to keep the chunks as '
        'the output)')) from err
  store.remove()


def report(summary: dict) -> None:
  """The end-of-mode lines naming what was written."""
  from pixdiff_jax.cli import report as report_lib  # pylint: disable=g-import-not-at-top
  if summary['npz']:
    first = f'  images  {summary["npz"]}  (uint8 [N, H, W, C], key "images")'
  else:
    first = (f'  images  {summary["chunks"]}/chunk_*.npy  (uint8 [k, H, W, C] each, in order; '
             'manifest.json; read with pixdiff_jax.sampling.generate.read_chunks)')
  report_lib.report(f'sampling finished ({summary["num_samples"]} images, '
                    f'{summary["network_evals"]} network calls each); wrote:',
                    [first, f'  grid    {summary["png"]}'])
