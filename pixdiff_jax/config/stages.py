"""Which training stages a config has, in order, and which stage each distils: a decision of the
config (its method and ``distill.steps``), read by training, checkpoints, sampling and the CLI."""
from __future__ import annotations

import ml_collections

# The stage whose trained model a stage distils (its teacher).
TEACHER_STAGE = {'pixel_aware': 'reverse', 'ddpm': 'ddpm'}


def has_distill_stage(config: ml_collections.ConfigDict) -> bool:
  """Whether the config trains the distill stage (``distill.steps > 0``)."""
  return 'distill' in config and int(config.distill.get('steps', 0)) > 0


def stages_for(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Training stages of the config's method, in order (``distill`` last, if it is on)."""
  stages = ('ddpm',) if config.method == 'ddpm' else ('vae', 'reverse')
  return stages + ('distill',) if has_distill_stage(config) else stages
