"""Orbax checkpoints: one ``CheckpointManager`` per training stage in ``WORKDIR/checkpoints/<stage>``."""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints', stage)


class StageCheckpointer:
  """Saves and restores a stage's (unreplicated) train state, keeping the last ``keep``."""

  def __init__(self, workdir: str, stage: str, *, keep: int = 2, read_only: bool = False):
    self.directory = stage_dir(workdir, stage)
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(
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
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    finally:
      absl_logger.setLevel(level)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> None:
    """Saves ``state`` (host or single-device arrays) under ``step``; asynchronous."""
    state = jax.tree_util.tree_map(np.asarray, jax.device_get(state))
    self.manager.save(int(step), args=ocp.args.StandardSave(state), force=force)

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores into the structure of ``target`` (arrays or ShapeDtypeStructs), latest by default."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
        if not isinstance(x, jax.ShapeDtypeStruct) else x, target)
    try:
      restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as err:
      raise ValueError(
          f'checkpoint {self.directory}/{step} does not match the network built from this '
          f'config (did model/vae/diffusion settings change since it was written?): {err}'
      ) from err
    return restored

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
