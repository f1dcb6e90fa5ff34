"""Staged training: the scale VAE (stage ``vae``), then the T-headed reverse model with the VAE
frozen (stage ``reverse``); or the single stage ``ddpm`` of the one-head baseline.

Design (docs/design.md section 6). The pieces live beside this module and are re-exported here:

* ``steps``: :func:`get_train_step` (a pure single-device step) and :func:`get_p_train_step`
  (``jax.pmap`` over local devices, ``lax.scan`` over ``training.steps_per_dispatch`` steps,
  ``lax.pmean`` of gradients and metrics, donated state);
* ``stages``: which stages a config has, what each trains (:func:`build_stage`) and its key;
* ``loop``: one stage's run (:func:`train_stage`): resume, the step loop, divergence stop,
  metrics, checkpoints, snapshots, the interrupt checkpoint.

:func:`train` runs the stages of a config in order, feeding each the frozen networks of the
stages before it.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import jax
import ml_collections
from absl import logging

from pixdiff_jax import config as config_lib, data, models
from pixdiff_jax.errors import ConfigError
from pixdiff_jax.training import checkpointing
from pixdiff_jax.training.loop import (Hook, StageRun, TrainingDivergedError,  # noqa: F401
                                       TrainingInterrupted, _Interrupt, train_stage)
from pixdiff_jax.training.stages import Stage, build_stage, stage_key, stages_for  # noqa: F401
from pixdiff_jax.training.steps import (AXIS, get_p_train_step, get_train_step,  # noqa: F401
                                        replicate_for_step)
from pixdiff_jax.utils import distributed, metric_writer

PyTree = object


def train(config: ml_collections.ConfigDict, workdir: str, *, stages: Iterable[str] | None = None,
          hooks: Sequence[Hook] = ()) -> dict[str, PyTree]:
  """Runs every stage of ``config`` (or just ``stages``) in ``workdir``; resumes if possible.

  Returns the final EMA parameters of each stage that was run, keyed by stage name.
  """
  config_lib.validate_config(config)
  models.validate_config(config)
  wanted = tuple(stages) if stages else stages_for(config)
  for name in wanted:
    if name not in stages_for(config):
      raise ConfigError(f'stage {name!r} does not exist for method={config.method!r}; '
                       f'stages: {stages_for(config)}')
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
  results = {}
  try:
    for name in wanted:
      vae_params = None
      if name == 'reverse':
        vae_params = results.get('vae')
        if vae_params is None:
          vae_params = checkpointing.load_stage_params(config, workdir, 'vae')
      state = train_stage(config, workdir, build_stage(config, name, vae_params=vae_params),
                          writer=writer, hooks=hooks, source=source)
      results[name] = state.ema_params
  finally:
    writer.close()
  return results
