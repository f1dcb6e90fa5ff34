"""The builders of the VAE, reverse and DDPM stages (:func:`build_stage`); the distill stage's
is ``distill.build_distill_stage``. What a stage is and which stages a config has:
``stages.py``."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections

from pixdiff_jax import config as config_lib, models, sampling
from pixdiff_jax.training import losses
from pixdiff_jax.training.stages import Stage

PyTree = Any


def teacher_sampler(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``get_sample_fn`` overrides for a snapshot of the trained model (not its student): the
  config's sampler, or, where its preset is a distilled one, the teacher's ('consistent')."""
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
