"""Training stages: what each stage of a config (``config.stages_for``) trains
(:func:`build_stage`) and the fixed randomness key of each (:func:`stage_key`).

A :class:`Stage` holds what differs between the stages (the network's initial parameters, its
loss, frozen inputs, a snapshot grid); ``training/loop.py`` runs any of them the same way.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import ml_collections

from pixdiff_jax import models, sampling
from pixdiff_jax.config.stages import (TEACHER_STAGE, has_distill_stage,  # noqa: F401
                                       stages_for)
from pixdiff_jax.training import losses

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


def teacher_sampler(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``get_sample_fn`` overrides for a snapshot of the trained model (not its student): the
  config's sampler, or, where its preset is a distilled one, the teacher's ('consistent')."""
  from pixdiff_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  if config.sampling.preset not in config_lib.DISTILLED_PRESETS:
    return {}
  if config.method == 'ddpm':
    return {'preset': 'custom', 'distilled': False}
  return {'preset': 'consistent', 'network_calls': int(config.diffusion.num_steps)}


def build_stage(config: ml_collections.ConfigDict, name: str, *,
                vae_params: PyTree = None) -> Stage:
  """Builds stage ``name`` ('vae', 'reverse' or 'ddpm') from the config."""
  if name == 'vae':
    vae = models.build_vae(config)
    loss = losses.get_vae_loss_fn(config, vae)

    # jit: run eagerly, the decoder's ops were dispatched (and compiled) one by one (~9 s for the
    # main job's VAE on 2 CPU cores; jitted, 4.4 s with its compilation).
    snapshot = jax.jit(sampling.get_scale_prior_fn(config, vae, batch_size=16))
    return Stage(name, config.training.vae_steps,
                 init_params=lambda k: models.init_params(vae, config, k),
                 loss_fn=lambda p, x, r, aux: loss(p, x, r, train=True),
                 snapshot_fn=snapshot)
  if name == 'reverse':
    vae = models.build_vae(config)
    net = models.build_reverse_model(config)
    loss = losses.get_reverse_loss_fn(config, net, vae)
    sample = sampling.get_sample_fn(config, batch_size=16, **teacher_sampler(config))
    return Stage(name, config.training.reverse_steps,
                 init_params=lambda k: models.init_params(net, config, k),
                 loss_fn=lambda p, x, r, aux: loss(p, x, r, vae_params=aux, train=True),
                 aux=vae_params,
                 snapshot_fn=lambda p, r: sample({'vae': vae_params, 'reverse': p}, r))
  if name == 'ddpm':
    net = models.build_reverse_model(config)
    loss = losses.get_ddpm_loss_fn(config, net)
    sample = sampling.get_sample_fn(config, batch_size=16, **teacher_sampler(config))
    return Stage(name, config.training.reverse_steps,
                 init_params=lambda k: models.init_params(net, config, k),
                 loss_fn=lambda p, x, r, aux: loss(p, x, r, train=True),
                 snapshot_fn=lambda p, r: sample({'model': p}, r))
  raise ValueError(f"unknown stage {name!r}; expected 'vae', 'reverse' or 'ddpm'")
