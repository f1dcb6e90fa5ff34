"""``--mode train``: the one-line ends of a run (interrupted, diverged, a failed write)."""
from __future__ import annotations

import os
import sys

from pixdiff_jax.cli.errors import check_writable_dir, fail
from pixdiff_jax.errors import WriteError, write_failure_reason

RESUME_ADVICE = 'free space and run the same command to resume'


def last_intact_checkpoint(workdir: str, stages) -> str:
  """``'<path> (stage s, step n)'`` of the newest finished checkpoint of the latest stage that has
  one (where a rerun resumes), or a note that there is none."""
  from pixdiff_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  checkpointing.finish_pending_writes()
  for stage in reversed(tuple(stages)):
    steps = checkpointing.finished_steps(workdir, stage)
    if steps:
      path = os.path.join(checkpointing.stage_dir(workdir, stage), str(steps[-1]))
      return f'{path} (stage {stage}, step {steps[-1]})'
  return 'none (no checkpoint was written yet)'


def train(config, workdir: str, stage: str = 'all') -> None:
  """Trains ``stage`` (or all) of ``config`` in ``workdir``."""
  from pixdiff_jax.training import trainer  # pylint: disable=g-import-not-at-top
  stages = trainer.stages_for(config)
  wanted = None if stage == 'all' else [stage]
  check_writable_dir(workdir, '--workdir')
  try:
    trainer.train(config, workdir, stages=wanted)
  except trainer.TrainingInterrupted as stop:
    # Ctrl-C / SIGTERM: the checkpoint is written; one line says which.
    print(f'interrupted: {stop.note}', file=sys.stderr)
    sys.exit(128 + int(stop.signum))
  except trainer.TrainingDivergedError as err:
    fail(str(err), err)
  except Exception as err:  # pylint: disable=broad-except
    if write_failure_reason(err) is None:
      raise
    raise _with_resume_advice(_first_write_failure(err), workdir, stages) from err


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
