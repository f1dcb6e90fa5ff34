"""``--mode train``: checks before anything is created, the workdir lock, and the one-line ends of
a run (interrupted, diverged, a failed write)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Iterator

from pixdiff_jax.cli.errors import check_creatable_dir, fail, UsageError
from pixdiff_jax.errors import WriteError, write_failure_reason

RESUME_ADVICE = 'free space and run the same command to resume'


def last_intact_checkpoint(workdir: str, stages) -> str:
  """``'<path> (stage s, step n)'`` of the newest finished checkpoint of the latest stage that has
  one (where a rerun resumes), or a note that there is none."""
  from pixdiff_jax.storage import checkpointing  # pylint: disable=g-import-not-at-top
  checkpointing.finish_pending_writes()
  for stage in reversed(tuple(stages)):
    steps = checkpointing.finished_steps(workdir, stage)
    if steps:
      path = os.path.join(checkpointing.stage_dir(workdir, stage), str(steps[-1]))
      return f'{path} (stage {stage}, step {steps[-1]})'
  return 'none (no checkpoint was written yet)'


def _check_before_creating(config, workdir: str, stage: str) -> tuple[str, ...]:
  """Everything that can be checked before the workdir is created; returns the stages."""
  # pylint: disable=g-import-not-at-top
  from pixdiff_jax import config as config_lib, models
  from pixdiff_jax.storage import checkpointing
  # pylint: enable=g-import-not-at-top
  config_lib.validate_config(config)
  models.validate_config(config)
  stages = checkpointing.stages_for(config)
  if stage != 'all' and stage not in stages:
    raise UsageError(f'--stage {stage} does not exist for method={config.method!r}; stages: '
                     f'{", ".join(stages)}')
  check_creatable_dir(workdir, '--workdir')
  return stages


def train(config, workdir: str, stage: str = 'all') -> None:
  """Trains ``stage`` (or all) of ``config`` in ``workdir``, holding the workdir's lock."""
  import jax  # pylint: disable=g-import-not-at-top
  from pixdiff_jax.training import trainer  # pylint: disable=g-import-not-at-top
  from pixdiff_jax.storage import workdir_lock  # pylint: disable=g-import-not-at-top
  stages = _check_before_creating(config, workdir, stage)
  wanted = None if stage == 'all' else [stage]
  # Only process 0 of a multi-process job holds the lock (the others share its workdir).
  lock = (workdir_lock.hold(workdir, 'train') if jax.process_index() == 0
          else _create(workdir))
  try:
    with lock, _background_write_failures_reported_once():
      trainer.train(config, workdir, stages=wanted)
  except trainer.TrainingInterrupted as stop:
    # Ctrl-C / SIGTERM: the checkpoint is written; one line says which.
    print(f'interrupted: {stop.note}', file=sys.stderr)
    sys.exit(128 + int(stop.signum))
  except trainer.TrainingDivergedError as err:
    fail(str(err), err)
  except trainer.MissingStageError as err:
    fail(err.message(_command_for_stage(err.command_stage)), err)
  except Exception as err:  # pylint: disable=broad-except
    if write_failure_reason(err) is None:
      raise
    raise _with_resume_advice(_first_write_failure(err), workdir, stages) from err


class _HeldWriteFailures(logging.Filter):
  """Holds the records of asyncio's "exception was never retrieved" for failed writes: Orbax's
  abandoned write tasks report the same failure again when they are garbage-collected."""

  def __init__(self):
    super().__init__()
    self.held = []

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and write_failure_reason(exc) is not None:
      self.held.append(record)
      return False
    return True


@contextlib.contextmanager
def _background_write_failures_reported_once() -> Iterator[None]:
  """A failed write in a background thread (Orbax's checkpoint writer) reaches the main thread,
  which ends the run with one line; the thread's traceback and asyncio's echoes of it are not
  printed beside that line. They are held, not dropped: if the run does not end with a write
  failure they are printed when it ends; if it does, later echoes are dropped too."""
  previous = threading.excepthook
  held_threads = []

  def hook(args):
    if write_failure_reason(args.exc_value) is None:
      previous(args)
    else:
      held_threads.append(args)

  asyncio_logger = logging.getLogger('asyncio')
  held_records = _HeldWriteFailures()
  asyncio_logger.addFilter(held_records)
  threading.excepthook = hook
  reported = False
  try:
    yield
  except BaseException as err:
    reported = write_failure_reason(err) is not None
    raise
  finally:
    threading.excepthook = previous
    if not reported:
      asyncio_logger.removeFilter(held_records)
      for args in held_threads:
        previous(args)
      for record in held_records.held:
        asyncio_logger.handle(record)


def _command_for_stage(stage: str) -> str:
  """This command line with ``--stage stage`` instead of its own ``--stage``."""
  args, skip = [], False
  for arg in sys.argv[1:]:
    if skip:
      skip = False
    elif arg == '--stage':
      skip = True
    elif not arg.startswith(('--stage=', '--compilation_cache')):
      args.append(arg)
  return ' '.join(['python main.py', *args, '--stage', stage])


def _first_write_failure(err: BaseException) -> BaseException:
  """The earliest failed write among ``err`` and the exceptions it was raised during (closing
  the metrics file on the way out of a failed checkpoint write can fail too: the checkpoint is
  what the message must name)."""
  first, e = err, err
  while e is not None:
    if isinstance(e, WriteError):
      first = e
    e = e.__context__
  return first


def _with_resume_advice(err: BaseException, workdir: str, stages) -> WriteError:
  reason = write_failure_reason(err)
  if isinstance(err, WriteError):
    path, what, note = err.path, err.what, err.advice
  else:  # an OSError from a write nobody wrapped
    path, what, note = getattr(err, 'filename', None) or workdir, '', ''
  return WriteError(path, reason, what, advice=(
      (f'{note}; ' if note else '') +
      f'last intact checkpoint: {last_intact_checkpoint(workdir, stages)}; {RESUME_ADVICE}'))


@contextlib.contextmanager
def _create(workdir: str) -> Iterator[None]:
  """Processes other than 0 of a multi-process job: create the workdir, hold no lock."""
  os.makedirs(workdir, exist_ok=True)
  yield
