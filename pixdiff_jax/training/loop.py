"""The training loop of one stage (docs/design.md section 6): restore or initialise, the pmap
step loop, and the side work after each dispatch (divergence stop, metrics and progress,
checkpoints, snapshot grids, the interrupt checkpoint).

:class:`StageRun` holds what the pieces share (the checkpointer, the replicated state, the step,
the last good checkpoint); :func:`train_stage` runs one. Orbax checkpoints per stage live in
``WORKDIR/checkpoints/<stage>``; a run resumes from the latest, a finished stage is not
retrained, and Ctrl-C / SIGTERM write a checkpoint before ending. Metrics go to
``WORKDIR/metrics.jsonl`` and TensorBoard; a PNG grid goes to ``WORKDIR/samples`` every
``training.snapshot_every`` steps. Only process 0 logs and draws progress bars.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable, Iterator, Sequence

import flax.jax_utils
import jax
import ml_collections
import numpy as np
from absl import logging

from pixdiff_jax import data
from pixdiff_jax.errors import UserError
from pixdiff_jax.storage import checkpointing
from pixdiff_jax.training import memory
from pixdiff_jax.training.stages import Stage, stage_key
from pixdiff_jax.training.state import (TrainState, create_train_state, make_optimizer,
                                        num_consecutive_skipped, run_init)
from pixdiff_jax.training.steps import get_p_train_step, replicate_for_step
from pixdiff_jax.utils import eta, image_grid, metric_writer, progress

PyTree = Any
# A hook sees (stage name, step) after every dispatch; tests use it to simulate a crash.
Hook = Callable[[str, int], None]


class TrainingDivergedError(UserError):
  """Training produced non-finite updates or parameters; the message names the stage, the step
  and the last checkpoint that is still good."""


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM during training, raised after the interrupt checkpoint was written.

  Attributes: ``signum`` (``signal.SIGINT`` or ``signal.SIGTERM``), ``stage``, ``step`` and
  ``checkpoint`` (the step folder written, or ``None`` with the reason in ``note``).
  """

  def __init__(self, signum: int, stage: str, step: int, checkpoint: str | None, note: str):
    self.signum, self.stage, self.step, self.checkpoint, self.note = (
        signum, stage, step, checkpoint, note)
    super().__init__(note)


class _Signal(KeyboardInterrupt):
  def __init__(self, signum: int):
    super().__init__(f'signal {signum}')
    self.signum = signum


class _Interrupt:
  """SIGINT / SIGTERM during training: the first one is recorded and acted on between two steps
  (:meth:`check`), so that it never lands inside a checkpoint write (an asynchronous
  KeyboardInterrupt there could leave the checkpointer's threads waiting on each other); a second
  one raises at once."""

  _SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __enter__(self):
    self.signum, self._old = None, {}
    try:
      for s in self._SIGNALS:
        self._old[s] = signal.signal(s, self._record)
    except ValueError:  # not in the main thread: Python's defaults stay
      pass
    return self

  def _record(self, signum, frame):
    if self.signum is not None:
      raise _Signal(signum)
    self.signum = signum

  def check(self):
    """Raises :class:`_Signal` if a signal arrived since the last check."""
    if self.signum is not None:
      raise _Signal(self.signum)

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)
    return False


def _all_finite(tree: PyTree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x))))
             for x in jax.tree_util.tree_leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def _stack_steps(items: list[PyTree]) -> PyTree:
  """``k`` batches ``[D, b, ...]`` (arrays or pytrees) -> one block ``[D, k, b, ...]``."""
  return jax.tree_util.tree_map(lambda *xs: np.stack(xs, axis=1), *items)


class StageRun:
  """One run of one stage; see the module docstring. ``run()`` returns the final state."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, stage: Stage, *,
               writer: metric_writer.MetricWriter | None = None, hooks: Sequence[Hook] = (),
               source: data.ImageSource | None = None):
    self.config, self.workdir, self.stage = config, workdir, stage
    self.writer, self.hooks, self.source = writer, tuple(hooks), source
    t = config.training
    self.max_skipped = int(t.get('max_skipped_updates', 10))
    self.is_main = jax.process_index() == 0
    self.key = stage_key(config, stage.name)
    self.tx = make_optimizer(stage.optim or config.optim)
    self.ckpt = checkpointing.StageCheckpointer(workdir, stage.name, keep=t.keep_checkpoints)
    self.good_step: int | None = None
    self.step = 0
    self.p_state = None

  # -------------------------------------------------------------------------- start
  def restore_or_init(self) -> TrainState:
    """The newest readable checkpoint's state, or a freshly initialised one."""
    stage, tx = self.stage, self.tx
    make_state = lambda k: create_train_state(stage.init_params(k), tx)
    init_key = jax.random.fold_in(self.key, 2**31 - 1)
    # Restore into shapes from eval_shape: no initialisation is compiled or run.
    found = self.ckpt.restore_latest(jax.eval_shape(make_state, init_key))
    if found is not None:
      state, self.good_step = found
      logging.info('stage %s: resumed from step %d', stage.name, int(state.step))
      return state
    if stage.initial_params is not None:  # given parameters (not compiled in as constants)
      return jax.jit(lambda p: create_train_state(p, tx))(stage.initial_params)
    return run_init(make_state, init_key)

  def _batches(self, start: int) -> Iterator[PyTree]:
    if self.stage.batches is not None:
      return self.stage.batches(start)
    return data.get_batch_iterator(self.config, start_step=start, source=self.source)

  # -------------------------------------------------------------------------- run
  def run(self) -> TrainState:
    """Trains (or resumes, or skips if finished) the stage; returns its unreplicated state."""
    stage = self.stage
    state = self.restore_or_init()
    self.step = start = int(state.step)
    if start >= stage.num_steps:
      logging.info('stage %s: finished (%d/%d steps); not retrained', stage.name, start,
                   stage.num_steps)
      self.ckpt.close()
      return state
    t = self.config.training
    # Compiled ahead of time at the first call; a step that cannot fit the device is one error.
    p_train_step = memory.FitCheckedStep(
        get_p_train_step(stage.loss_fn, self.tx, ema_decay=t.ema_decay,
                         ema_warmup=t.ema_warmup), self.config, stage.name)
    batch = self.config.distill.batch_size if stage.name == 'distill' else t.batch_size
    self._clock = eta.StageClock(stage.name, start=start, total=stage.num_steps,
                                 batch_size=batch, quiet=not self.is_main)
    self.p_state = replicate_for_step(state)
    p_aux = replicate_for_step(stage.aux)
    batches = self._batches(start)
    # A bar in a terminal; one plain line per log_every steps in a redirected log.
    pbar = progress.progress(total=stage.num_steps, initial=start, desc=f'train {stage.name}',
                             every=t.log_every, disable=not self.is_main)
    self._last_time, self._last_step = time.perf_counter(), start
    try:
      with _Interrupt() as interrupt:
        while self.step < stage.num_steps:
          k = min(t.steps_per_dispatch, stage.num_steps - self.step)
          block = _stack_steps([next(batches) for _ in range(k)])  # [D, k, b, ...]
          self.p_state, metrics = p_train_step(self.p_state, block, self.key, p_aux)
          self.step += k
          for hook in self.hooks:
            hook(stage.name, self.step)
          self._after_dispatch(metrics, k, pbar)
          interrupt.check()  # between two steps, after this step's checkpoint
    except KeyboardInterrupt as stop:
      raise self._interrupted(getattr(stop, 'signum', signal.SIGINT)) from None
    finally:
      pbar.close()
    self.ckpt.close()
    return flax.jax_utils.unreplicate(self.p_state)

  def _after_dispatch(self, metrics: PyTree, k: int, pbar) -> None:
    """Divergence stop, metrics, checkpoint and snapshot after a dispatch of ``k`` steps."""
    t, step = self.config.training, self.step
    done = step >= self.stage.num_steps
    # One scalar per dispatch: consecutive skipped (non-finite) updates.
    skipped = int(jax.device_get(num_consecutive_skipped(self.p_state.opt_state))[0])
    self._clock.update(step)  # the step's result is on the host: logs the projected time once
    if skipped >= self.max_skipped:
      raise self.diverged(f'{skipped} consecutive updates had non-finite gradients and were '
                          f'skipped (training.max_skipped_updates={self.max_skipped})')
    if done or step % t.log_every < k:
      self._log(metrics, pbar)
    pbar.update(k)
    if done or step % t.checkpoint_every < k:
      why_not = self.save_if_good(step)
      if why_not is not None:
        if done:  # never mark a stage finished with suspect parameters
          raise self.diverged(why_not)
        logging.warning('stage %s step %d: no checkpoint written: %s', self.stage.name, step,
                        why_not)
    if (self.stage.snapshot_fn is not None and self.is_main and t.snapshot_every > 0
        and (done or step % t.snapshot_every < k)):
      _snapshot(self.workdir, self.stage, flax.jax_utils.unreplicate(self.p_state.ema_params),
                self.key, step)

  def _log(self, metrics: PyTree, pbar) -> None:
    m = jax.tree_util.tree_map(lambda x: float(x[0]), jax.device_get(metrics))
    now = time.perf_counter()
    m['steps_per_sec'] = (self.step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, self.step
    if not np.isfinite(m['loss']):
      logging.warning('stage %s step %d: non-finite loss %s', self.stage.name, self.step,
                      m['loss'])
    if self.writer is not None:
      self.writer.write(self.stage.name, self.step, m)
    pbar.set_postfix(loss=f"{m['loss']:.4g}", steps_s=f"{m['steps_per_sec']:.2f}")

  # -------------------------------------------------------------------------- checkpoints
  def last_good(self) -> str:
    if self.good_step is None:
      return 'none (the stage has no checkpoint yet)'
    return self.ckpt.step_dir(self.good_step)

  def diverged(self, why: str) -> TrainingDivergedError:
    rerun = ('the stage starts anew' if self.good_step is None else
             'training resumes from that checkpoint')
    lr = (self.stage.optim or self.config.optim).lr
    return TrainingDivergedError(
        f'stage {self.stage.name} diverged at step {self.step}: {why}; its parameters were not '
        f'saved. Last good checkpoint: {self.last_good()}. Lower {self.stage.lr_field} (now '
        f'{lr:g}) or set optim.grad_clip, then rerun ({rerun})')

  def save_if_good(self, at_step: int) -> str | None:
    """Writes a checkpoint unless the state is suspect; returns why not, or None."""
    state = flax.jax_utils.unreplicate(self.p_state)
    skipped = int(num_consecutive_skipped(state.opt_state))
    if skipped:
      return f'the last {skipped} updates were skipped (non-finite gradients)'
    if not (_all_finite(state.params) and _all_finite(state.ema_params)):
      return 'the parameters are not finite'
    self.ckpt.save(at_step, state, force=True)
    self.good_step = at_step
    return None

  def _interrupted(self, signum: int) -> TrainingInterrupted:
    """Writes the interrupt checkpoint (unless this step's is written) and says which."""
    step = self.step
    try:
      # Not twice: the step's checkpoint may be the one just written (or the one resumed from).
      why_not = None if self.good_step == step else self.save_if_good(step)
      self.ckpt.wait()
      written = self.ckpt.step_dir(step) if why_not is None else None
      note = (f'checkpoint written: {written}' if why_not is None else
              f'no checkpoint written ({why_not}); last good checkpoint: {self.last_good()}')
    except Exception as err:  # pylint: disable=broad-except
      written, note = None, (f'could not write the interrupt checkpoint ({err}); last good '
                             f'checkpoint: {self.last_good()}')
    return TrainingInterrupted(
        signum, self.stage.name, step, written,
        f'{signal.Signals(signum).name} during stage {self.stage.name} at step {step}; {note}; '
        'run the same command to resume')


def train_stage(config: ml_collections.ConfigDict, workdir: str, stage: Stage, *,
                writer: metric_writer.MetricWriter | None = None,
                hooks: Sequence[Hook] = (), source: data.ImageSource | None = None) -> TrainState:
  """Trains (or resumes, or skips if finished) one stage; returns its unreplicated final state.

  Resumes from the newest readable checkpoint (unreadable newer ones are moved aside, see
  ``checkpointing``). Stops with :class:`TrainingDivergedError` after
  ``training.max_skipped_updates`` consecutive non-finite updates, or when the final parameters
  are not finite; a checkpoint is written only while the parameters are finite and the latest
  update was applied, so a stage is marked finished (a checkpoint at its last step) only if its
  parameters are finite. Ctrl-C / SIGTERM write a checkpoint and raise :class:`TrainingInterrupted`.
  """
  return StageRun(config, workdir, stage, writer=writer, hooks=hooks, source=source).run()


def _snapshot(workdir: str, stage: Stage, ema_params: PyTree, key: jax.Array, step: int):
  images = np.asarray(jax.device_get(stage.snapshot_fn(ema_params, jax.random.fold_in(key, 0))))
  if not np.all(np.isfinite(images)):
    logging.warning('stage %s step %d: snapshot skipped, the sampled images are not finite',
                    stage.name, step)
    return
  path = os.path.join(workdir, 'samples', f'{stage.name}_step{step:07d}.png')
  image_grid.save_grid(path, data.to_uint8(images))
