"""Orbax checkpoints: one ``CheckpointManager`` per training stage in ``WORKDIR/checkpoints/<stage>``.

Both training (resume) and sampling (``load_stage_params``) restore through this module.

Each step holds two Orbax items: ``default`` (the train state) and ``checksums`` (a CRC-32 of
every array's bytes, written at save time). Orbax/TensorStore alone does not notice every
damaged byte: an overwritten stretch of a data file can come back as different but finite
numbers, so a restored array is compared with its checksum. Checkpoints written before the
checksums existed are read without that comparison.

Reading is defensive. :meth:`StageCheckpointer.restore_latest` tries the newest step first; a
step that cannot be read (missing or truncated files, undecodable metadata, a checksum that does
not match, non-finite values) is
*moved aside* to ``WORKDIR/checkpoints/<stage>-broken/<step>`` (never deleted), a warning names
it and the reason, and the next older step is tried. A checkpoint whose arrays do not have the
shapes of the network built from the config is a :class:`CheckpointMismatchError` (the config
differs; nothing is moved). Training never writes non-finite parameters (see
``training/loop.py``), so a non-finite value read back means the files were damaged.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import weakref
import zlib
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from pixdiff_jax import models
from pixdiff_jax.errors import (ConfigError, NotFoundError, UserError, WriteError,
                                write_failure_reason)
from pixdiff_jax.storage import partial_steps
from pixdiff_jax.config.stages import stages_for  # noqa: F401  (also re-exported from here)

PyTree = Any


class CheckpointMismatchError(UserError, ValueError):
  """A checkpoint's arrays do not match the network built from the config."""


class CheckpointUnreadableError(UserError, ValueError):
  """A checkpoint step's files cannot be read back (damaged or incomplete)."""


class NoReadableCheckpointError(NotFoundError):
  """A stage has checkpoints, but none of them can be read."""


class CheckpointWriteError(WriteError):
  """A checkpoint step could not be written (a full disk, a quota); its partial files are gone."""


# Orbax writes step N into this folder and renames it to N when the write is complete.
# Checkpointers that may have a write in flight (see finish_pending_writes).
_WRITERS = weakref.WeakSet()


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints', stage)


def broken_dir(workdir: str, stage: str) -> str:
  """Where unreadable steps of ``stage`` are moved: ``WORKDIR/checkpoints/<stage>-broken``."""
  return stage_dir(workdir, stage) + '-broken'


def finished_steps(workdir: str, stage: str) -> list[int]:
  """The steps of ``stage`` whose writes completed (``<step>/_CHECKPOINT_METADATA`` exists),
  in order; nothing is read beyond the folder names."""
  d = stage_dir(workdir, stage)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d)
                if n.isdigit() and os.path.exists(os.path.join(d, n, '_CHECKPOINT_METADATA')))


def has_checkpoints(workdir: str) -> bool:
  """Whether any stage of ``workdir`` holds a checkpoint step folder."""
  root = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(root):
    return False
  for stage in os.listdir(root):
    d = os.path.join(root, stage)
    if stage.endswith('-broken') or not os.path.isdir(d):
      continue
    if any(name.isdigit() for name in os.listdir(d)):
      return True
  return False


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
  """``[('ema_params/encoder/conv/kernel', leaf), ...]``: dataclass fields, dict keys and
  namedtuple fields all become path parts, so a target and Orbax's stored metadata compare
  equal."""
  return [('/'.join(_key_name(k) for k in path), leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def shapes_by_path(tree: PyTree) -> dict[str, tuple[int, ...]]:
  """``{'ema_params/encoder/conv/kernel': shape}`` (names as :func:`_named_leaves`)."""
  return {name: tuple(np.shape(leaf)) for name, leaf in _named_leaves(tree)}


def describe_mismatch(stored: dict, wanted: dict, limit: int = 3,
                      what: str = 'the checkpoint') -> str:
  """Names the differences between two :func:`shapes_by_path` results."""
  missing = sorted(set(wanted) - set(stored))
  extra = sorted(set(stored) - set(wanted))
  differ = sorted(p for p in set(stored) & set(wanted) if stored[p] != wanted[p])
  parts = []
  if differ:
    parts.append('shapes differ: ' + ', '.join(
        f'{p} {stored[p]} in {what} vs {wanted[p]} from the config'
        for p in differ[:limit]) + (f' (+{len(differ) - limit} more)' if len(differ) > limit
                                    else ''))
  if missing:
    parts.append(f'{len(missing)} arrays of the config\'s network are not in {what} '
                 f'(e.g. {missing[0]})')
  if extra:
    parts.append(f'{len(extra)} arrays in {what} are not in the config\'s network '
                 f'(e.g. {extra[0]})')
  return '; '.join(parts)


def _first_non_finite(tree: PyTree) -> str | None:
  for name, leaf in _named_leaves(tree):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
      return f'{int(a.size - np.isfinite(a).sum())} non-finite values in {name}'
  return None


def array_checksums(tree: PyTree) -> dict[str, str]:
  """``{'params/encoder/conv/kernel': '1a2b3c4d'}``: CRC-32 (hex) of each leaf's C-order bytes."""
  return {name: format(zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).tobytes()), '08x')
          for name, leaf in _named_leaves(tree)}


def _first_checksum_mismatch(tree: PyTree, expected: dict[str, str]) -> str | None:
  actual = array_checksums(tree)
  if set(actual) != set(expected):
    return 'its checksum list does not name the same arrays as its state'
  bad = sorted(k for k in actual if actual[k] != expected[k])
  if bad:
    more = f' (+{len(bad) - 1} more)' if len(bad) > 1 else ''
    return f'the bytes of {bad[0]}{more} do not match the checksum written with them'
  return None


def _one_line(err: BaseException, limit: int = 300) -> str:
  text = ' '.join(str(err).split()) or type(err).__name__
  return text if len(text) <= limit else text[:limit] + '...'


class StageCheckpointer:
  """Saves and restores a stage's (unreplicated) train state, keeping the last ``keep``."""

  def __init__(self, workdir: str, stage: str, *, keep: int = 2, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.stage = stage
    self.directory = stage_dir(workdir, stage)
    if read_only and not os.path.isdir(self.directory):
      raise NotFoundError(
          f'no checkpoints for stage {stage!r} in {self.directory}; train it first with '
          f'`python main.py --config CONFIG --workdir {workdir} --mode train`')
    if read_only:
      options = ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=0,
                                             create=False, read_only=True)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    absl_logger = logging.getLogger('absl')
    level = absl_logger.level
    if read_only:  # orbax warns "Given directory is read only" on every read-only manager
      absl_logger.setLevel(logging.ERROR)
    try:
      # The handler is named so that item metadata can be read before any restore.
      self.manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={'default': ocp.StandardCheckpointHandler(),
                         'checksums': ocp.JsonCheckpointHandler()})
    finally:
      absl_logger.setLevel(level)
    if not read_only:
      _WRITERS.add(self)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, *, force: bool = False) -> None:
    """Saves ``state`` (host or single-device arrays) and its :func:`array_checksums` under
    ``step``; asynchronous. A failed write (of this step or of the one still in flight) is a
    :class:`CheckpointWriteError`, see :meth:`_writing`."""
    state = jax.tree_util.tree_map(np.asarray, jax.device_get(state))
    with self._writing(step):
      self.manager.save(int(step), args=ocp.args.Composite(
          default=ocp.args.StandardSave(state),
          checksums=ocp.args.JsonSave(array_checksums(state))), force=force)

  @contextlib.contextmanager
  def _writing(self, step: int | None):
    """Turns a failed checkpoint write into a :class:`CheckpointWriteError` naming the step,
    after removing the step's partial folder (so that nothing half-written is left beside the
    intact steps; Orbax would skip it, but it holds the space the user must free)."""
    try:
      yield
    except Exception as err:  # pylint: disable=broad-except
      reason = write_failure_reason(err)
      if reason is None:
        raise
      self._settle()
      failed = self._remove_partial_steps()
      step = failed[-1] if failed else step
      where = self.step_dir(step) if step is not None else self.directory
      raise CheckpointWriteError(where, reason, 'checkpoint',
                                 'its partial files were removed' if failed else '') from err

  def _settle(self) -> None:
    """Waits until Orbax's background threads stop writing (a failed ``save`` can return while
    the write it started is still running and creating files); their error is the caller's."""
    try:
      self.manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass

  def _remove_partial_steps(self) -> list[int]:
    """Deletes Orbax's unfinished ``<step>.orbax-checkpoint-tmp*`` folders; returns the steps."""
    if jax.process_index() != 0:
      return []
    return partial_steps.remove_partial_steps(self.directory)

  def restore(self, target: Any, step: int | None = None, *, params_only: bool = False) -> Any:
    """Restores ``step`` (latest by default) into the structure of ``target`` (arrays or
    ShapeDtypeStructs).

    With ``params_only``, ``target`` is ``{'params': P, 'ema_params': P}`` for the network's
    parameter tree ``P``: only those two are checked against the stored arrays, and the whole
    stored state is read in its stored structure (whatever optimiser wrote it) and returned as
    a dict, so that sampling does not depend on the optimiser config.

    Raises:
      CheckpointMismatchError: the stored arrays do not have the target's paths and shapes.
      CheckpointUnreadableError: the step's files cannot be read, or hold non-finite values.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise NotFoundError(f'no checkpoint in {self.directory}')
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
        if not isinstance(x, jax.ShapeDtypeStruct) else x, target)
    where = self.step_dir(step)
    try:
      items = self.manager.item_metadata(step)
      metadata = items.get('default') if items is not None else None
    except Exception as err:  # pylint: disable=broad-except  (any failure = unreadable)
      raise CheckpointUnreadableError(f'cannot read its metadata: {_one_line(err)}') from err
    has_checksums = os.path.isdir(os.path.join(where, 'checksums'))
    if metadata is None or not jax.tree_util.tree_leaves(metadata):
      raise CheckpointUnreadableError('no saved state in it (item folder or metadata missing)')
    stored, wanted = shapes_by_path(metadata), shapes_by_path(abstract)
    if params_only:
      stored = {k: v for k, v in stored.items() if k.split('/')[0] in abstract}
      abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                        metadata)
    if stored != wanted:
      raise CheckpointMismatchError(
          f'checkpoint {where} does not match the network built from this config '
          f'({describe_mismatch(stored, wanted)}); it was written with another '
          'model/vae/diffusion/data config')
    args = {'default': ocp.args.StandardRestore(abstract)}
    if has_checksums:
      args['checksums'] = ocp.args.JsonRestore()
    try:
      items = self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as err:  # pylint: disable=broad-except
      raise CheckpointUnreadableError(f'cannot read its arrays: {_one_line(err)}') from err
    restored = items['default']
    if has_checksums:
      bad = _first_checksum_mismatch(restored, items['checksums'])
      if bad is not None:
        raise CheckpointUnreadableError(f'{bad} (the files are damaged)')
    bad = _first_non_finite(restored)
    if bad is not None:
      raise CheckpointUnreadableError(f'{bad} (training never saves those: the files are '
                                      'damaged)')
    return restored

  def move_aside(self, step: int) -> str:
    """Moves step folder ``step`` to ``broken_dir`` (a fresh name if taken); returns the path."""
    dest_root = broken_dir(self.workdir, self.stage)
    os.makedirs(dest_root, exist_ok=True)
    dest = os.path.join(dest_root, str(step))
    n = 1
    while os.path.exists(dest):
      dest = os.path.join(dest_root, f'{step}.{n}')
      n += 1
    shutil.move(self.step_dir(step), dest)
    self.manager.reload()
    return dest

  def restore_latest(self, target: Any, *, warn: Callable[[str], None] | None = None,
                     params_only: bool = False) -> tuple[Any, int] | None:
    """Restores the newest readable step; ``None`` if the stage has no checkpoint at all.

    Every unreadable newer step is moved aside (process 0 moves; every process skips it) and
    reported through ``warn`` (default: ``logging.warning``) with its path and the reason.

    Raises:
      CheckpointMismatchError: see :meth:`restore` (nothing is moved).
      NoReadableCheckpointError: there were steps, and none could be read.
    """
    warn = warn or (lambda msg: logging.getLogger('absl').warning('%s', msg))
    broken = []
    for step in reversed(self.all_steps()):
      try:
        return self.restore(target, step, params_only=params_only), step
      except CheckpointUnreadableError as err:
        where = self.step_dir(step)
        note = f'checkpoint {where} is unreadable: {err}'
        if jax.process_index() == 0:
          try:
            note += f'; moved it to {self.move_aside(step)}'
          except OSError as move_err:
            note += f'; could not move it aside ({move_err})'
        warn(note + '; trying the previous checkpoint')
        broken.append(f'step {step} ({err})')
    if broken:
      raise NoReadableCheckpointError(
          f'no readable checkpoint of stage {self.stage!r} in {self.directory}: '
          f'{"; ".join(broken)}. The broken steps are kept in '
          f'{broken_dir(self.workdir, self.stage)}; run training again to start the stage anew')
    return None

  def wait(self) -> None:
    with self._writing(None):
      self.manager.wait_until_finished()

  def close(self) -> None:
    with self._writing(None):
      self.manager.wait_until_finished()
    self.manager.close()


def finish_pending_writes() -> None:
  """Waits for every checkpoint write still in flight (e.g. when training stops on another
  error); a write that fails too leaves no partial folder. Used before naming the last intact
  checkpoint."""
  for ckpt in list(_WRITERS):
    # A failed background write is reported by whoever stopped training; once nothing is in
    # flight, a '<step>.orbax-checkpoint-tmp' folder is a write that will never finish.
    ckpt._settle()  # pylint: disable=protected-access
    ckpt._remove_partial_steps()  # pylint: disable=protected-access


def abstract_params(config: ml_collections.ConfigDict, name: str) -> PyTree:
  """Shapes and dtypes of stage ``name``'s network parameters (``jax.eval_shape``: nothing is
  run); the optimiser plays no part."""
  net = models.build_vae(config) if name == 'vae' else models.build_reverse_model(config)
  return jax.eval_shape(lambda k: models.init_params(net, config, k), jax.random.PRNGKey(0))


def load_stage(config: ml_collections.ConfigDict, workdir: str, name: str, *,
               use_ema: bool = True) -> tuple[PyTree, int]:
  """``(params, step)``: the (EMA) parameters of the newest readable checkpoint of a trained
  stage and its step. Unreadable newer steps are moved aside with a warning (see
  :meth:`StageCheckpointer.restore_latest`)."""
  if name not in stages_for(config):
    raise ConfigError(f'stage {name!r} does not exist for method={config.method!r}')
  ckpt = StageCheckpointer(os.fspath(workdir), name, keep=config.training.keep_checkpoints,
                           read_only=True)
  try:
    params = abstract_params(config, name)
    found = ckpt.restore_latest({'params': params, 'ema_params': params}, params_only=True)
  finally:
    ckpt.close()
  if found is None:
    raise NotFoundError(f'no checkpoint for stage {name!r} in {ckpt.directory}')
  state, step = found
  return state['ema_params' if use_ema else 'params'], step


def load_stage_params(config: ml_collections.ConfigDict, workdir: str, name: str, *,
                      use_ema: bool = True) -> PyTree:
  """The (EMA) parameters of the newest readable checkpoint of stage ``name``."""
  return load_stage(config, workdir, name, use_ema=use_ema)[0]
