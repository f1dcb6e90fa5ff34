"""Training stages: what a stage is (:class:`Stage`) and the fixed randomness key of each
(:func:`stage_key`). Which stages a config has is the config's decision (``config.stages_for``,
re-exported here); the builders of each stage are in ``builders.py`` (the distill stage's in
``distill.py``)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import ml_collections

from pixdiff_jax.config.stages import (TEACHER_STAGE, has_distill_stage,  # noqa: F401
                                       stages_for)

PyTree = Any
LossFn = Callable[[PyTree, Any, jax.Array, PyTree], tuple[jax.Array, dict]]

# Step randomness of stage s is fold_in(fold_in(fold_in(PRNGKey(seed), STAGE_KEYS[s]), device),
# step). The keys of 'vae', 'reverse' and 'ddpm' are the numbers the earlier code derived from
# the name as sum(map(ord, name)); they are kept as they were so that every run trained before
# this table existed resumes, and retrains, bit-identically. That sum gave two names with the
# same letters the same key, so every later stage gets a number of its own here.
STAGE_KEYS: dict[tuple[str, str], int] = {
    ('pixel_aware', 'vae'): 316,      # sum(map(ord, 'vae'))
    ('pixel_aware', 'reverse'): 764,  # sum(map(ord, 'reverse'))
    ('ddpm', 'ddpm'): 421,            # sum(map(ord, 'ddpm'))
    ('pixel_aware', 'distill'): 1001,
    ('ddpm', 'distill'): 1002,
}
def stage_key(config: ml_collections.ConfigDict, name: str) -> jax.Array:
  """The PRNG key of stage ``name`` (see ``STAGE_KEYS``)."""
  try:
    number = STAGE_KEYS[(config.method, name)]
  except KeyError:
    raise ValueError(f'stage {name!r} has no key for method={config.method!r}; '
                     f'stages: {stages_for(config)}') from None
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), number)


@dataclasses.dataclass
class Stage:
  """What differs between the stages: the network, its loss, frozen inputs and a snapshot."""
  name: str
  num_steps: int
  init_params: Callable[[jax.Array], PyTree]
  loss_fn: LossFn
  aux: PyTree = None
  # (ema params, rng) -> float images [N, H, W, C] in [0, 1], for the snapshot grid.
  snapshot_fn: Callable[[PyTree, jax.Array], jax.Array] | None = None
  # start step -> iterator of this process's batches [D, b, ...] (arrays or pytrees); None =
  # the training images (data.get_batch_iterator).
  batches: Callable[[int], Iterator[PyTree]] | None = None
  # Parameters to start from instead of init_params(key) (the distill stage's teacher).
  initial_params: PyTree = None
  # The optimiser settings (None = config.optim) and the field that sets its learning rate.
  optim: ml_collections.ConfigDict | None = None
  lr_field: str = 'optim.lr'
