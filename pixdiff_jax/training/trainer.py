"""Staged training: the scale VAE (stage ``vae``), then the T-headed reverse model with the VAE
frozen (stage ``reverse``); or the single stage ``ddpm`` of the one-head baseline.

Design (docs/design.md section 6). The pieces live beside this module and are re-exported here:

* ``steps``: :func:`get_train_step` (a pure single-device step) and :func:`get_p_train_step`
  (``jax.pmap`` over local devices, ``lax.scan`` over ``training.steps_per_dispatch`` steps,
  ``lax.pmean`` of gradients and metrics, donated state);
* ``stages``: which stages a config has, what a stage is, its key; ``builders``: what each
  trains (:func:`build_stage`; the distill stage's: ``distill``);
* ``loop``: one stage's run (:func:`train_stage`): resume, the step loop, divergence stop,
  metrics, checkpoints, snapshots, the interrupt checkpoint.

:func:`train` runs the stages of a config in order, feeding each the frozen networks of the
stages before it: the reverse stage gets the VAE, the distill stage (``training/distill.py``)
its teacher, the trained model of the stage before it.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import jax
import ml_collections
from absl import logging

from pixdiff_jax import config as config_lib, data, models
from pixdiff_jax.errors import ConfigError, UserError
from pixdiff_jax.storage import checkpointing
from pixdiff_jax.training import distill
from pixdiff_jax.training.loop import (Hook, StageRun, TrainingDivergedError,  # noqa: F401
                                       TrainingInterrupted, _Interrupt, train_stage)
from pixdiff_jax.training.builders import build_stage  # noqa: F401
from pixdiff_jax.training.stages import (TEACHER_STAGE, Stage, stage_key,  # noqa: F401
                                         stages_for)
from pixdiff_jax.training.steps import (AXIS, get_p_train_step, get_train_step,  # noqa: F401
                                        replicate_for_step)
from pixdiff_jax.utils import distributed, metric_writer

PyTree = object


class MissingStageError(UserError, ValueError):
  """A stage needs a finished earlier stage that the workdir lacks (``stage`` names it;
  ``command_stage`` is the ``--stage`` that trains what is missing)."""

  def __init__(self, needed_by: str, stage: str, workdir: str, why: str, *,
               command_stage: str | None = None):
    self.needed_by, self.stage, self.workdir, self.why = needed_by, stage, workdir, why
    self.command_stage = command_stage or stage
    super().__init__(self.message(
        f'python main.py --workdir {workdir} --stage {self.command_stage}'))

  def message(self, command: str) -> str:
    """The one-line message, naming ``command`` as the one that trains the missing stage."""
    return (f'stage {self.needed_by!r} needs the finished stage {self.stage!r}, and '
            f'{self.why}; train it first: {command}')


def _stage_steps(config, name: str) -> int:
  t = config.training
  return int({'vae': t.vae_steps, 'distill': config.distill.steps}.get(name, t.reverse_steps))


def _check_teacher_finished(config, workdir: str, wanted: tuple[str, ...]) -> None:
  """Before anything runs: the stages the distill stage distils must be finished, or be
  trained by this run before it. The message names the teacher stage (or the first stage that
  stops short) and the command that trains what is missing (``--stage all`` when several)."""
  if 'distill' not in wanted:
    return
  needed = ('ddpm',) if config.method == 'ddpm' else ('vae', 'reverse')
  missing = []
  for name in needed:
    if name in wanted:
      continue
    directory = checkpointing.stage_dir(workdir, name)
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
        directory) else []
    if not steps:
      missing.append((name, f'{workdir} has no checkpoint of it'))
    elif steps[-1] < _stage_steps(config, name):
      missing.append((name, f'it stopped at step {steps[-1]} of {_stage_steps(config, name)}'))
  if missing:
    name, why = missing[-1] if missing[-1][0] == needed[-1] else missing[0]
    raise MissingStageError('distill', name, workdir, why,
                            command_stage=name if len(missing) == 1 else 'all')


def _distill_stage(config, workdir: str, results: dict, steps: dict) -> Stage:
  """The distill stage with its teacher: the EMA parameters this run trained, or the
  checkpoints'; refuses a teacher other than the one a started distill stage recorded."""
  needed = ('ddpm',) if config.method == 'ddpm' else ('vae', 'reverse')
  params = {}
  for name in needed:
    if name in results:
      params[name] = results[name]
    else:
      params[name], steps[name] = checkpointing.load_stage(config, workdir, name)
      if steps[name] < _stage_steps(config, name):  # newer steps were unreadable
        raise MissingStageError('distill', name, workdir,
                                f'its newest readable checkpoint is step {steps[name]} of '
                                f'{_stage_steps(config, name)}')
  identity = distill.teacher_identity(config, params, steps)
  distill.check_teacher(config, workdir, identity)
  return distill.build_distill_stage(config, workdir, distill.teacher_variables(config, params),
                                     identity)


def train(config: ml_collections.ConfigDict, workdir: str, *, stages: Iterable[str] | None = None,
          hooks: Sequence[Hook] = ()) -> dict[str, PyTree]:
  """Runs every stage of ``config`` (or just ``stages``) in ``workdir``; resumes if possible.

  Returns the final EMA parameters of each stage that was run, keyed by stage name.

  Raises:
    MissingStageError: the distill stage's teacher stage is not finished (before anything runs).
    distill.TeacherChangedError: the distill stage was started with another teacher.
  """
  config_lib.validate_config(config)
  models.validate_config(config)
  wanted = tuple(stages) if stages else stages_for(config)
  for name in wanted:
    if name == 'distill' and name not in stages_for(config) and 'distill' in config:
      raise ConfigError('stage distill is off in this config (distill.steps = 0): set '
                        '--config.distill.steps=N (docs/design.md section 7)')
    if name not in stages_for(config):
      raise ConfigError(f'stage {name!r} does not exist for method={config.method!r}; '
                        f'stages: {stages_for(config)}')
  _check_teacher_finished(config, workdir, wanted)
  stored_path = config_lib.config_path(workdir)
  if os.path.exists(stored_path):  # every process reads it; an incompatible one ends them all
    stored = config_lib.load_config(workdir)
    if checkpointing.has_checkpoints(workdir):
      config_lib.check_compatible(stored, config)
    elif config_lib.architecture_differences(stored, config):
      # Nothing was trained with the stored config (e.g. a first run failed before training):
      # the workdir is not claimed yet.
      logging.warning('replacing %s: no checkpoint was written with it', stored_path)
  # Open the data first: a missing dataset fails here, before anything is compiled or the
  # workdir is claimed (config.json is written only when training starts).
  source = data.load_source(config)
  distributed.barrier('data loaded', timeout_s=600)
  if jax.process_index() == 0:  # the others would race its write
    config_lib.save_config(config, workdir)
  writer = metric_writer.MetricWriter(workdir)
  results, steps = {}, {}
  try:
    for name in wanted:
      if name == 'distill':
        stage = _distill_stage(config, workdir, results, steps)
      else:
        vae_params = None
        if name == 'reverse':
          vae_params = results.get('vae')
          if vae_params is None:
            vae_params = checkpointing.load_stage_params(config, workdir, 'vae')
        stage = build_stage(config, name, vae_params=vae_params)
      state = train_stage(config, workdir, stage, writer=writer, hooks=hooks, source=source)
      results[name], steps[name] = state.ema_params, int(state.step)
  finally:
    writer.close()
  return results
